"""HaNoRec on trl's DPOTrainer: HaRS (hardness-aware, responsiveness-gated beta) and NoDO (LoRA noise).

The paper gives the mechanisms, not closed forms; ours, documented here and tested:
- hardness   lambda_i = |N_K(chosen) & N_K(rejected)| / K, the overlap of the two items' Top-K neighbourhoods;
- responsiveness eta_i = clip(1 + alpha * z_i, eta_min, eta_max), z_i the batch-standardised implicit reward gap
  R_i = beta0 * (log pi/pi_ref (y_w) - log pi/pi_ref (y_l)) (detached, as beta-DPO);
- hardness_beta  beta_i = beta0 * eta_i * (1 - gamma * lambda_i): harder pairs get the smaller beta (a looser KL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference


def neighbourhood_hardness(chosen_nbrs: list[set], rejected_nbrs: list[set], k: int) -> torch.Tensor:
    """lambda_i: overlap of the Top-K neighbourhoods of chosen and rejected items, in [0, 1]."""
    return torch.tensor([len(a & b) / k for a, b in zip(chosen_nbrs, rejected_nbrs)], dtype=torch.float32)


def responsiveness(reward_gap: torch.Tensor, alpha: float = 0.5, lo: float = 0.5, hi: float = 1.5) -> torch.Tensor:
    """eta_i from the batch-standardised implicit reward gap (HaRS model responsiveness)."""
    gap = reward_gap.detach().float()
    z = (gap - gap.mean()) / (gap.std(unbiased=False) + 1e-6) if gap.numel() > 1 else torch.zeros_like(gap)
    return (1 + alpha * z).clamp(lo, hi)


def hardness_beta(
    beta0: float, hardness: torch.Tensor, reward_gap: torch.Tensor, gamma: float = 0.5, alpha: float = 0.5
) -> torch.Tensor:
    """beta_i = beta0 * eta_i * (1 - gamma * lambda_i) (HaRS)."""
    return beta0 * responsiveness(reward_gap, alpha) * (1 - gamma * hardness.to(reward_gap.device).float())


class HardnessAwareBeta:
    """Stands in for trl's scalar `beta`: `beta * delta` gives beta_i * delta_i with beta_i from HaRS.

    trl multiplies `self.beta` by the pair's log-ratio margin in the loss first, then by the chosen and rejected
    log-ratios for its logged rewards; the per-pair beta is computed at the first product of a batch and reused."""

    def __init__(self, beta0: float, gamma: float, alpha: float):
        self.beta0, self.gamma, self.alpha = beta0, gamma, alpha
        self.hardness: torch.Tensor | None = None
        self.current: torch.Tensor | None = None

    def new_batch(self, hardness: torch.Tensor) -> None:
        self.hardness, self.current = hardness, None

    def __mul__(self, delta: torch.Tensor) -> torch.Tensor:
        if self.current is None:
            self.current = hardness_beta(
                self.beta0, self.hardness, self.beta0 * delta.detach(), self.gamma, self.alpha
            ).to(delta.dtype)
        return self.current * delta

    __rmul__ = __mul__

    def __float__(self) -> float:
        raise TypeError(
            "HaNoRec's beta is per pair: a trl code path that reads it as one number would silently "
            "train plain DPO (trl's DPOTrainer changed; see the pinned range in pyproject.toml)"
        )


# --- NoDO -----------------------------------------------------------------------------------------


def lora_noise(model: torch.nn.Module, sigma: float, adapter: str = "default") -> list:
    """NoDO: Gaussian noise N(0, sigma^2) on the LoRA A and B weights in the policy's training forward only.

    The noise is drawn per forward and never written to the weights, so saved adapters are untouched; eval mode,
    no-grad forwards (the reference, scoring) and other adapters see the clean weights."""
    handles = []

    def hook(module, inputs, output):
        if not (module.training and torch.is_grad_enabled()) or sigma <= 0:
            return output
        w = module.weight
        return F.linear(inputs[0], w + sigma * torch.randn_like(w), module.bias)

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (name.endswith((f"lora_A.{adapter}", f"lora_B.{adapter}"))):
            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise ValueError(f"no LoRA A/B modules of adapter {adapter!r} found for NoDO")
    return handles


# --- trainer --------------------------------------------------------------------------------------


@dataclass
class HaNoRecConfig(DPOConfig):
    """DPOConfig plus HaNoRec's knobs (paper: beta0 0.1, sigma 0.05-0.1; Top-K 10 is used where hardness is computed)."""

    hardness_gamma: float = 0.5
    responsiveness_alpha: float = 0.5
    noise_sigma: float = 0.05


class HardnessCollator(DataCollatorForPreference):
    """trl's preference collator, carrying each pair's hardness through to the loss."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        out["hardness"] = torch.tensor([float(e["hardness"]) for e in examples])
        return out


class HaNoRecTrainer(DPOTrainer):
    """trl's DPOTrainer with a per-pair HaRS beta and NoDO noise on the policy's LoRA weights."""

    def __init__(self, *args, **kwargs):
        cfg, tok = kwargs["args"], kwargs["processing_class"]
        kwargs.setdefault("data_collator", HardnessCollator(pad_token_id=tok.pad_token_id, max_length=cfg.max_length))
        super().__init__(*args, **kwargs)
        self.beta = HardnessAwareBeta(cfg.beta, cfg.hardness_gamma, cfg.responsiveness_alpha)
        self._noise = lora_noise(self.accelerator.unwrap_model(self.model), cfg.noise_sigma)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "hardness" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "hardness"]

    def _compute_loss(self, model, inputs, return_outputs):
        self.beta.new_batch(inputs.pop("hardness"))
        return super()._compute_loss(model, inputs, return_outputs)

    def remove_noise(self) -> None:
        for h in self._noise:
            h.remove()
        self._noise = []
