"""SFT, DPO and HaNoRec on question groups (transformers' Trainer loop): a prompt prefix shared by its continuations.

Each training item is one question: a prefix, its continuations, and for the preference stages the (chosen,
rejected) pairs among them with the reference's log-probabilities (precomputed once, as trl's
`precompute_ref_log_probs`). `shared_prefix` runs the prefix once per question (training.llm.prefix); off, each
continuation runs with its own copy of the prefix: the same loss, the cost trl pays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Trainer

from .hanorec import hardness_beta
from .prefix import Group, completion_logps, encode_group

OBJECTIVES = ("sft", "dpo", "hanorec")


@dataclass
class TrainGroup:
    group: Group
    pairs: list[tuple[int, int]] = field(default_factory=list)
    hardness: list[float] = field(default_factory=list)
    ref: torch.Tensor | None = None  # reference log-probabilities of the continuations' completions


def train_groups(tok, rows: Sequence[dict]) -> list[TrainGroup]:
    """Rows {prefix, contexts, completions[, pairs, hardness]} -> tokenised groups."""
    out = []
    for r in rows:
        pairs = [tuple(p) for p in r.get("pairs", [])]
        hard = r.get("hardness", [0.0] * len(pairs))
        out.append(TrainGroup(encode_group(tok, r["prefix"], r["contexts"], r["completions"]), pairs, list(hard)))
    return out


@torch.no_grad()
def attach_reference(model, groups: list[TrainGroup], shared: bool, pad: int) -> None:
    """The reference's completion log-probabilities (the model as loaded: the SFT adapter), once, in eval mode."""
    was_training = model.training
    model.eval()
    for g in tqdm(groups, desc="reference log-probs", unit="question"):
        g.ref = completion_logps(model, g.group, shared, pad)[0].detach().cpu()
    model.train(was_training)


def dpo_loss(delta: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """-log sigma(beta * delta), delta the chosen's minus the rejected's policy/reference log-ratio (DPO Eq. 7)."""
    return -F.logsigmoid(beta * delta).mean()


class GroupedTrainer(Trainer):
    """compute_loss on a batch of questions; objective `sft` (completion NLL), `dpo` or `hanorec` (HaRS beta)."""

    def __init__(self, *args, objective: str, shared_prefix: bool, pad_id: int, beta: float = 0.1,
                 hardness_gamma: float = 0.5, responsiveness_alpha: float = 0.5, **kwargs):  # fmt: skip
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: one of {', '.join(OBJECTIVES)}")
        kwargs.setdefault("data_collator", lambda items: {"groups": items})
        super().__init__(*args, **kwargs)
        self.objective, self.shared, self.pad_id = objective, shared_prefix, pad_id
        self.beta, self.gamma, self.alpha = beta, hardness_gamma, responsiveness_alpha
        self.example_tokens = self.computed_tokens = 0
        self._margins: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        groups: list[TrainGroup] = inputs["groups"]
        self.example_tokens += sum(g.group.plain_tokens for g in groups)
        self.computed_tokens += sum(g.group.shared_tokens if self.shared else g.group.plain_tokens for g in groups)
        outs = [completion_logps(model, g.group, self.shared, self.pad_id) for g in groups]
        if self.objective == "sft":
            loss = -torch.cat([lp for lp, _ in outs]).sum() / torch.cat([n for _, n in outs]).sum()
        else:
            loss = self._preference_loss(groups, [lp for lp, _ in outs])
        return (loss, {}) if return_outputs else loss

    def _preference_loss(self, groups: list[TrainGroup], logps: list[torch.Tensor]) -> torch.Tensor:
        deltas, hardness = [], []
        for g, lp in zip(groups, logps):
            ratio = lp - g.ref.to(lp.device)
            deltas += [ratio[c] - ratio[r] for c, r in g.pairs]
            hardness += g.hardness
        delta = torch.stack(deltas)
        self._margins.append(float(delta.detach().mean()))
        if self.objective == "dpo":
            return dpo_loss(delta, self.beta)
        beta = hardness_beta(self.beta, torch.tensor(hardness), self.beta * delta.detach(), self.gamma, self.alpha)
        return dpo_loss(delta, beta.to(delta.dtype))

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._margins and "loss" in logs:
            logs["log_ratio_margin"] = round(float(np.mean(self._margins)), 5)
            self._margins = []
        super().log(logs, *args, **kwargs)
