"""Two-stage trainer of the sequential track, in trl's style: a config dataclass, the loss variant
chosen by config, small overridable methods.

Stage 1 (`sft`): cross-entropy next-item prediction at every position (the reference policy).
Stage 2 (`dpo`): L = sft_weight * CE + lambda * DPO against the frozen stage-1 model, y_l from a sampler
(RoDPO Eq. 6, Algorithm 1).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..device import autocast, pick_device, retain_freed_memory, seed_everything
from ..smoke import small
from .checkpoint import load_training_state, save_model, save_training_state
from .data import EvalSet, length_buckets, position_rows, trim
from .distributed import all_mean, barrier, broadcast, global_batch, rank_and_world, shard_batches, wrap
from .ensemble import SnapshotEnsemble, choose_late_weight
from .evaluate import evaluate
from .losses import (
    LOSSES,
    NEGATIVES,
    PREFERENCES,
    dpo_logit_loss,
    make_objective,
    sdpo_logit_loss,
    simpo_logit_loss,
)
from .model import MultimodalSASRec
from .samplers import SAMPLERS
from .scores import PositionScores, later_items

LR_SCHEDULES = ("constant", "cosine")
KEEP = ("best", "last")
SWA_WINDOWS = ("tail", "trailing")
CHOSEN = ("next", "later")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass
class SeqRecTrainConfig:
    """Stage 1 (CE warm-up, the reference policy). The single home of its defaults: the default recipe."""

    stage: str = field(default="sft", init=False)
    epochs: int = 30  # the most epochs: early stopping on the trailing average decides (keep="best")
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: per step, to 0 at the last epoch
    weight_decay: float = 0.1  # AdamW's decoupled decay (Loshchilov & Hutter 2019) of the matrices and embedding
    # tables; biases and LayerNorm gains are not decayed (0: AdamW is Adam). It shrinks the ID rows and moves each
    # score's weight to the shared text tower: rare targets gain (docs/results.md, eighth session)
    ema_decay: float | None = None  # evaluate and keep an exponential moving average of the weights (e.g. 0.999)
    swa_last: int | None = 7  # evaluate and keep the uniform average of the weights after N epochs (SWA, Izmailov
    # et al. 2018), the window set by swa_window
    swa_window: Literal["tail", "trailing"] = "trailing"  # trailing: after every epoch, the average of the swa_last
    # epochs up to it, validated and early-stopped (keep="best"): the epochs are chosen on validation, per dataset;
    # tail: the last swa_last epochs of the budget (7 of 15 averages 9-15; N >= epochs averages every epoch)
    patience: int = 3  # evaluations without a better valid NDCG@10 (with keep="best")
    keep: Literal["best", "last"] = "best"  # "best": the best-validated weights (early stopping); "last": train all
    # epochs and keep the final weights (RoDPO's fixed-length warm-up, Algorithm 1)
    snapshot_late: int | None = 8  # keep="best": train on N epochs past the validation-best window, then mix the
    # last window's scores with the best's (snapshot ensemble, ensemble.py), the weight chosen on validation (0: the
    # best alone); N is also the patience where larger. None: no late snapshot (early stopping at `patience`)
    markov_order: int | None = 3  # after training: add the training split's transition counts over the last N
    # items to every score (transitions.py, Fossil's Markov chain by counts), the weight chosen on validation
    # (0: the model alone); None: no prior
    markov_window: int = 3  # C_w counts j within w steps after i
    markov_decay: float = 0.7  # the k-th last item's counts weigh decay^k
    min_epochs: int = 0
    eval_every: int = 1  # validate every N epochs (RecBole's eval_step); patience counts validations
    seed: int = 42  # the model's initial weights, batching and dropout
    mask_history: bool = True  # CE's softmax and the negative pool skip the items already in each prefix,
    # as the evaluation and the serving API do
    loss: Literal["ce", "sampled_softmax", "gbce"] = "ce"  # ce: softmax over the whole catalogue (memory grows
    # with it); sampled_softmax (logQ-corrected) and gbce: K negatives shared by a batch's positions (losses.py)
    n_negatives: int = 256  # K of sampled_softmax (uniform) and gbce
    negatives: Literal["uniform", "in_batch", "mixed"] = "uniform"  # sampled_softmax's negatives: uniform over the
    # catalogue, K per sequence, or the batch's other targets (corrected by their training frequency), or both (mixed)
    gbce_t: float = 0.75  # gBCE calibration t (0: BCE, 1: the sampled distribution's beta)
    device: str = "auto"
    retain_freed_memory: bool = True  # CPU: glibc keeps freed memory for the next step instead of unmapping it
    # (the per-step logits skip page faults: faster steps, same numbers); full CE only
    max_minutes: float | None = None  # wall-clock budget; stops after the current epoch
    show_progress: bool = True

    def __post_init__(self):
        self.epochs = small(self.epochs, 1)
        _check_choice("keep", self.keep, KEEP)
        _check_choice("swa_window", self.swa_window, SWA_WINDOWS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("negatives", self.negatives, NEGATIVES)
        if self.loss == "gbce" and self.negatives != "uniform":
            raise ValueError("gbce's calibration assumes uniform negatives: set negatives='uniform'")
        if self.ema_decay and self.swa_last:
            raise ValueError("ema_decay and swa_last are two weight averages: set one (swa_last=None for EMA)")
        if self.swa_last is not None and self.swa_last < 1:
            raise ValueError(f"swa_last must be a number of epochs >= 1 (or None: no average), got {self.swa_last!r}")
        if self.markov_order is not None and (self.markov_order < 1 or self.markov_window < 1):
            raise ValueError("markov_order and markov_window must be >= 1 (markov_order None: no prior)")
        if not 0 < self.markov_decay <= 1:
            raise ValueError(f"markov_decay must lie in (0, 1], got {self.markov_decay!r}")
        if self.snapshot_late is not None and self.snapshot_late < 1:
            raise ValueError(f"snapshot_late must be a number of epochs >= 1 (or None), got {self.snapshot_late!r}")

    @property
    def stop_after(self) -> int:
        """Validations without a better valid NDCG@10 that stop training (keep="best")."""
        return max(self.patience, self.snapshot_late or 0)

    @property
    def swa_start(self) -> int | None:
        """The first averaged epoch of the budget's tail (1-based), or None without it (no SWA, or a trailing one)."""
        if not self.swa_last or self.swa_window == "trailing":
            return None
        return max(1, self.epochs - self.swa_last + 1)

    @property
    def trailing_swa(self) -> int | None:
        """The trailing window's length in epochs, or None."""
        return self.swa_last if self.swa_last and self.swa_window == "trailing" else None


@dataclass
class SeqRecDPOConfig(SeqRecTrainConfig):
    """Stage 2: L = sft_weight * CE + lam * DPO against the frozen stage-1 model (RoDPO Eq. 6 at sft_weight 1).
    The home of its defaults."""

    stage: str = field(default="dpo", init=False)
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.0  # 0.1 measured within noise of 0 here (docs/results.md, ninth session)
    swa_last: int | None = 3  # the running average of every DPO epoch's weights
    swa_window: Literal["tail", "trailing"] = "tail"
    keep: Literal["best", "last"] = "best"
    snapshot_late: int | None = None  # stage 2 trains the reference's best member; an SFT ensemble's late member
    # is mixed with the policy afterwards, the weight chosen again on validation
    eval_every: int = 1
    sampler: Literal["random", "argmax", "stochastic_topk"] = "stochastic_topk"
    topk: int = 50  # K of the stochastic top-K pool (Eq. 4)
    beta: float = 1.0  # DPO beta (Eq. 5)
    lam: float = 1.0  # lambda of L = CE + lambda * DPO (Eq. 6)
    sft_weight: float = 1.0  # the CE term's weight in L = sft_weight * CE + lambda * DPO: 1 is RoDPO's Eq. 6,
    # 0 trains the preference term alone (DPO as Rafailov et al. and trl's DPOTrainer define it)
    preference: Literal["dpo", "sdpo", "simpo"] = "dpo"  # dpo: one rejected item per context (RoDPO Eq. 5);
    # sdpo: n_rejected items in one softmax term (S-DPO); simpo: reference-free with margin simpo_gamma
    disable_dropout: bool = False  # train the policy without dropout (trl's DPOConfig default); off here: on Beauty
    # the margins then start at 0 as DPO assumes, but stage 2's CE loses its regularisation and overfits
    # (test NDCG@5 -3.0% vs +1.1% with dropout; docs/results.md)
    exclude_future: bool = False  # the negative pool skips the window's later targets: the user's own future
    # items, positives the sampler would otherwise reject (false negatives)
    n_rejected: int = 4  # sdpo: rejected items per context, each drawn by the sampler
    chosen: Literal["next", "later"] = "next"  # y_w: the next item (RoDPO), or one of the user's later items in
    # the window drawn uniformly (the next included; PinnerFormer's dense all-action target): a preference CE
    # does not see at that position. "later" implies exclude_future (a later item is never y_l)
    simpo_gamma: float = 0.5  # simpo: the target margin gamma
    precompute_ref: bool = True  # encode every training position with the frozen reference once, before DPO
    # (trl's precompute_ref_log_probs); y_l is sampled per step, so the reference's
    # fused queries and item table are kept rather than its scores

    def __post_init__(self):
        super().__post_init__()
        _check_choice("sampler", self.sampler, tuple(SAMPLERS))
        _check_choice("preference", self.preference, PREFERENCES)
        _check_choice("chosen", self.chosen, CHOSEN)
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        if self.snapshot_late is not None:
            raise ValueError("snapshot_late is stage 1's: stage 2 mixes its policy with the SFT's late member")


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: weight_decay on the parameters of 2 or more dimensions, 0 on biases and gains."""
    params = list(model.parameters())
    groups = [[p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]]
    return [{"params": g, "weight_decay": wd} for g, wd in zip(groups, (weight_decay, 0.0)) if g]


class SeqRecTrainer:
    def __init__(
        self,
        model: MultimodalSASRec,
        cfg: SeqRecTrainConfig | SeqRecDPOConfig,
        train_inputs: torch.Tensor,
        train_targets: torch.Tensor,
        valid: EvalSet,
        reference: MultimodalSASRec | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        late: MultimodalSASRec | None = None,
    ):
        """`late`: a fixed late member to mix the trained model with after training (stage 2 on an ensemble SFT)."""
        seed_everything(cfg.seed)
        self.cfg, self.device = cfg, pick_device(cfg.device)
        if self.device.type == "cpu" and cfg.retain_freed_memory and cfg.loss == "ce":
            retain_freed_memory()  # sampled losses: the big per-step tensors are table-sized, and the kept heap
            # fragments and grows step after step (docs/results.md)
        self.model = model.to(self.device)
        self.rank, self.world = rank_and_world()
        self.loss_module = wrap(self.model, self.device)  # DDP under torchrun
        self.inputs, self.targets, self.valid = train_inputs, train_targets, valid
        self.objective = make_objective(cfg.loss, cfg.n_negatives, cfg.negatives, cfg.gbce_t, train_targets)
        self.reference = None
        if cfg.stage == "dpo":
            ref = reference if reference is not None else copy.deepcopy(model)
            self.reference = ref.to(self.device).eval().requires_grad_(False)
            if cfg.disable_dropout:
                self.model.disable_dropout()
        self.reference_cache: dict | None = None
        # fused: one kernel per step, no table-sized temporaries (1.6x faster epochs at 1M items, docs/results.md)
        self.optimizer = torch.optim.AdamW(decay_groups(self.model, cfg.weight_decay), lr=cfg.lr, fused=True)
        self.average = self.weight_average()
        self.window = TrailingAverage(self.model, cfg.trailing_swa) if cfg.trailing_swa else None
        self.ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_epoch = on_epoch
        self.history: list[dict] = []
        self.best = {"epoch": -1, "ndcg@10": -1.0}
        self.best_state: dict | None = None
        self.late = late
        self.ensemble: SnapshotEnsemble | None = None  # after fit: the model with its late member, where it mixes
        self.generator = torch.Generator(device="cpu")

    # --- overridable pieces --------------------------------------------------------------------

    def weight_average(self):
        """The weight average that is validated and kept: EMA per step, or SWA's uniform average per epoch."""
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if self.cfg.ema_decay:
            return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay))
        return AveragedModel(self.model) if self.cfg.swa_start else None

    @property
    def averaged(self):
        """The weight average a training state saves and resumes: EMA / tail SWA, or the trailing window."""
        return self.average if self.average is not None else self.window

    @property
    def eval_model(self) -> MultimodalSASRec:
        """What is validated and kept: the weight average once it holds weights, else the trained weights."""
        if self.window is not None and self.window.epochs:
            return self.window.module
        return self.model if self.average is None or int(self.average.n_averaged) == 0 else self.average.module

    def learning_rate(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The configured schedule as a function of the global step (stateless, so resuming needs no scheduler state)."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        t = (epoch * steps_per_epoch + step) / max(self.cfg.epochs * steps_per_epoch, 1)
        return self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    def sample_negatives(self, scored: PositionScores) -> torch.Tensor:
        """y_l per position; with the full-catalogue loss from the score matrix it built, else from `scored` itself
        (the top-K pool computed chunk by chunk: large catalogues). `exclude_future` removes each row's later items."""
        future = bool(getattr(self.cfg, "exclude_future", False)) or getattr(self.cfg, "chosen", "next") == "later"
        if self.cfg.loss == "ce":
            scores = (scored.logits if scored.logits is not None else scored.materialise()).detach()
            if future:
                scores = scores.clone()
                scores[scored.future()] = float("-inf")
        else:
            scores = replace(scored, mask_future=future).detach()
        return SAMPLERS[self.cfg.sampler](scores, scored.targets, k=self.cfg.topk, generator=self.generator)

    @torch.no_grad()
    def precompute_reference(self, batch_size: int = 512) -> dict:
        """The frozen reference's fused query at every training position, and its fused item table."""
        ref = self.reference
        tables = ref.item_tables()
        table = ref.fused_table(tables)
        counts = (self.targets > 0).sum(1)
        offsets = counts.cumsum(0) - counts
        queries = torch.full((int(counts.sum()), table.shape[1]), float("nan"), dtype=table.dtype, device=self.device)
        for idx in length_buckets(self.inputs, batch_size):
            seq, tgt = trim(self.inputs[idx], self.targets[idx])
            hidden = ref.encode(seq.to(self.device), tables)
            queries[position_rows(offsets, counts, idx).to(self.device)] = ref.query(
                {m: h[tgt.to(self.device) > 0] for m, h in hidden.items()}
            )
        return {"queries": queries, "table": table, "offsets": offsets, "counts": counts}

    def reference_scores(
        self, seq: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """s_ref(x, i) of given (N, C) items at each position: only they are scored (the partition cancels).

        `rows` (the batch's window indices) reads the reference from `reference_cache`; without it, or without a
        cache, the reference encodes the batch.
        """
        with torch.no_grad():
            cache = self.reference_cache
            if cache is not None and rows is not None:
                q = cache["queries"][position_rows(cache["offsets"], cache["counts"], rows).to(items.device)]
                return self.reference.score(q, cache["table"], items)
            tables = self.reference.item_tables()
            hidden = self.reference.encode(seq, tables)
            return self.reference.fuse({m: h[targets > 0] for m, h in hidden.items()}, tables, items)

    def reference_margin(self, seq, targets, pos, neg, rows=None) -> torch.Tensor:
        """s_ref(x, y_w) - s_ref(x, y_l)."""
        s = self.reference_scores(seq, targets, torch.stack([pos, neg], 1), rows)
        return s[:, 0] - s[:, 1]

    def preference_loss(self, scored: PositionScores, seq, targets, rows) -> torch.Tensor:
        """The configured preference term, mean over positions; y_l from the sampler (n_rejected of them: sdpo)."""
        cfg, tgt = self.cfg, scored.targets
        m = cfg.n_rejected if cfg.preference == "sdpo" else 1
        neg = torch.stack([self.sample_negatives(scored) for _ in range(m)], 1)  # (N, M)
        chosen = later_chosen(scored, self.generator) if cfg.chosen == "later" else tgt
        items = torch.cat([chosen[:, None], neg], 1)
        policy = scored.of(items)
        if cfg.preference == "simpo":
            return simpo_logit_loss(policy[:, 0], policy[:, 1], cfg.beta, cfg.simpo_gamma).mean()
        ref = self.reference_scores(seq, targets, items, rows)
        if cfg.preference == "sdpo":
            return sdpo_logit_loss(policy[:, 0], policy[:, 1:], ref[:, 0], ref[:, 1:], cfg.beta).mean()
        return dpo_logit_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], cfg.beta).mean()

    def compute_loss(
        self, seq: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        loss, scored = self.loss_module(seq, targets, self.cfg.mask_history, self.objective)
        parts = {"ce": (loss - self.model.aux_loss()).item()}
        if self.cfg.stage == "dpo":
            dpo = self.preference_loss(scored, seq, targets, rows)
            ce = loss if self.cfg.sft_weight else loss.detach()  # at 0 the all-item CE backward is skipped
            loss = self.cfg.sft_weight * ce + self.cfg.lam * dpo
            parts["dpo"] = dpo.item()
        return loss, parts

    # --- loop ----------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training windows; under DDP each rank takes its rows of every global batch and its
        loss is weighted by its share of the batch's positions, so the averaged gradient is the global batch's."""
        self.model.train()
        torch.manual_seed(self.cfg.seed * 1_000_003 + epoch * 101 + self.rank)  # dropout: resumable, per rank
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        self.generator.manual_seed(self.cfg.seed * 7919 + epoch + 104729 * self.rank)
        batches = length_buckets(self.inputs, self.cfg.batch_size, g)
        mine = shard_batches(batches, self.rank, self.world)
        sums, steps, t0 = {}, 0, time.perf_counter()
        bar = tqdm(
            mine,
            desc=f"{self.cfg.stage} epoch {epoch}",
            leave=False,
            disable=not self.cfg.show_progress or self.rank != 0,
        )
        for step, idx in enumerate(bar):
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(epoch, step, len(mine))
            seq, tgt = trim(self.inputs[idx], self.targets[idx])
            seq, tgt = seq.to(self.device), tgt.to(self.device)
            with autocast(self.device):
                loss, parts = self.compute_loss(seq, tgt, idx)
            raw = loss.item()
            if self.world > 1:
                share = int((tgt > 0).sum()) / int((self.targets[global_batch(batches[step], self.world)] > 0).sum())
                loss = loss * share * self.world
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.cfg.ema_decay:
                self.average.update_parameters(self.model)
            steps += 1
            for k, v in {"loss": raw, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}")
        means = all_mean({k: v / max(steps, 1) for k, v in sums.items()})
        return means | {"train_seconds": time.perf_counter() - t0}

    def resume(self) -> tuple[int, int]:
        """(first epoch, evaluations without improvement) from the last training state in `checkpoint_dir`."""
        if self.ckpt is None:
            return 0, 0
        state = load_training_state(self.ckpt / f"last-{self.cfg.stage}", self.model, self.optimizer, self.averaged)
        barrier()  # every rank has read the state before rank 0 writes the next one
        if state is None:
            return 0, 0
        self.best, self.history = state["best"], state["history"]
        best_dir = self.ckpt / f"best-{self.cfg.stage}"
        if (best_dir / "model.safetensors").exists():
            from safetensors.torch import load_file

            self.best_state = load_file(str(best_dir / "model.safetensors"))
        return state["epoch"] + 1, state["bad"]

    def validate(self, epoch: int, row: dict, bad: int) -> tuple[dict, int]:
        """Rank 0 validates the kept weights and saves the best; returns the row with its metrics and `bad`."""
        t0 = time.perf_counter()
        metrics = evaluate(self.eval_model, self.valid, device=self.device)
        row |= {f"valid_{k}": v for k, v in metrics.items()} | {"eval_seconds": time.perf_counter() - t0}
        if metrics["ndcg@10"] > self.best["ndcg@10"]:
            self.best, bad = {"epoch": epoch, **metrics}, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.eval_model.state_dict().items()}
            if self.ckpt is not None:
                save_model(
                    self.eval_model,
                    self.ckpt / f"best-{self.cfg.stage}",
                    {"train": asdict(self.cfg), "best": self.best},
                )
        elif epoch >= self.cfg.min_epochs:
            bad += 1
        return row, bad

    def fit(self) -> dict:
        start_epoch, bad = self.resume()
        t_start = time.perf_counter()
        if self.reference is not None and self.cfg.precompute_ref and self.reference_cache is None:
            self.reference_cache = self.precompute_reference()
        for epoch in range(start_epoch, self.cfg.epochs):
            row = {"epoch": epoch, "stage": self.cfg.stage, **self.train_epoch(epoch)}
            if self.cfg.swa_start and epoch + 1 >= self.cfg.swa_start:
                self.average.update_parameters(self.model)
                row["swa_epochs"] = int(self.average.n_averaged)
            if self.window is not None:
                row["swa_epochs"] = self.window.add(self.model)
            if self.rank == 0 and ((epoch + 1) % self.cfg.eval_every == 0 or epoch == self.cfg.epochs - 1):
                row, bad = self.validate(epoch, row, bad)
            over_budget = self.cfg.max_minutes and (time.perf_counter() - t_start) / 60 > self.cfg.max_minutes
            stop = bool((bad >= self.cfg.stop_after and self.cfg.keep == "best") or over_budget)
            row, bad, stop, self.best = broadcast((row, bad, stop, self.best))  # every rank stops together
            self.history.append(row)
            if self.on_epoch and self.rank == 0:
                self.on_epoch(row)
            if self.ckpt is not None and self.rank == 0:
                save_training_state(
                    self.ckpt / f"last-{self.cfg.stage}",
                    self.model,
                    self.optimizer,
                    {"epoch": epoch, "bad": bad, "best": self.best, "history": self.history},
                    self.averaged,
                )
            barrier()
            if stop:
                break
        late = self.late_snapshot()
        if self.cfg.keep == "last" and self.eval_model is not self.model:
            self.model.load_state_dict(self.eval_model.state_dict())
        elif self.cfg.keep == "best" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        kept = self.history[-1]["epoch"] if self.cfg.keep == "last" and self.history else self.best["epoch"]
        return {
            "best": self.best,
            "history": self.history,
            "epochs_run": len(self.history),
            "kept_epoch": kept,
            "averaged_epochs": self.window_of(kept),  # 0-based epochs whose weights are kept
            "snapshot": self.mix_late(late) if late is not None and self.rank == 0 else None,
        }

    def window_of(self, epoch: int) -> list[int]:
        """The 0-based epochs whose weights the validated model after `epoch` averages."""
        n_avg = next((r.get("swa_epochs") or 1 for r in self.history if r["epoch"] == epoch), 1)
        return list(range(epoch - n_avg + 1, epoch + 1))

    def late_snapshot(self) -> MultimodalSASRec | None:
        """The late member: the given one (stage 2), or the last validated window where it is past the best one."""
        if self.late is not None:
            return self.late
        past_best = self.history and self.history[-1]["epoch"] > self.best["epoch"]
        if not (self.cfg.snapshot_late and self.cfg.keep == "best" and past_best):
            return None
        return copy.deepcopy(self.eval_model).eval()

    def mix_late(self, late: MultimodalSASRec) -> dict:
        """Choose the late member's weight on validation (ensemble.py); the mix becomes `ensemble` where w > 0."""
        weight, scores = choose_late_weight(self.model, late, self.valid)
        self.ensemble = SnapshotEnsemble(self.model, late, weight) if weight > 0 else None
        last = self.history[-1]["epoch"] if self.history else -1
        return {
            "late_weight": weight,
            "late_epochs": self.window_of(last) if self.late is None else None,  # None: the reference's late member
            "valid_ndcg@10_by_weight": {str(w): round(v, 5) for w, v in scores.items()},
        }


def later_chosen(scored: PositionScores, generator: torch.Generator) -> torch.Tensor:
    """y_w per position: one of its next and later window targets, uniformly (dense all-action, PinnerFormer)."""
    later = later_items(scored.window_targets)
    later[:, 0] = scored.targets  # column 0 is never after a position: the next item goes there
    weights = (later > 0).float()
    pick = torch.multinomial(weights.cpu(), 1, generator=generator)[:, 0].to(later.device)
    return later.gather(1, pick[:, None])[:, 0]


class TrailingAverage:
    """The uniform average of the parameters after each of the last `size` epochs (SWA over a sliding window):
    validated after every epoch, so early stopping picks the window, not the budget."""

    def __init__(self, model: MultimodalSASRec, size: int):
        self.size, self.snapshots = size, []
        self.module = copy.deepcopy(model).eval()

    @property
    def epochs(self) -> int:
        return len(self.snapshots)

    @torch.no_grad()
    def add(self, model: MultimodalSASRec) -> int:
        """Append this epoch's parameters, drop the oldest beyond `size`, average into `module`; the window's size."""
        self.snapshots = [*self.snapshots, [p.detach().clone() for p in model.parameters()]][-self.size :]
        self.average()
        return self.epochs

    @torch.no_grad()
    def average(self) -> None:
        for i, p in enumerate(self.module.parameters()):
            p.copy_(torch.stack([snap[i] for snap in self.snapshots]).mean(0))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The window's snapshots (what a resumed run needs to continue the same averages)."""
        return {f"{j}.{i}": p for j, snap in enumerate(self.snapshots) for i, p in enumerate(snap)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        n_params = len(list(self.module.parameters()))
        n_snaps = len({k.split(".")[0] for k in state})
        self.snapshots = [[state[f"{j}.{i}"] for i in range(n_params)] for j in range(n_snaps)]
        if self.snapshots:
            self.average()
