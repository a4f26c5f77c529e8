"""Losses of the sequential track."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_logit_loss(
    policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """-log sigma(beta * [(s_w - s_l) - (s_ref_w - s_ref_l)]) on logit margins (RoDPO Eq. 5), per pair."""
    return -F.logsigmoid(beta * ((policy_w - policy_l) - (ref_w - ref_l)))
