"""Negative samplers for DPO: the losing item y_l for each (context, y_w) pair.

`scores` is the (N, n_items + 1) score matrix, materialised (a tensor) or as its factors (`PositionScores`, whose
top-K is computed chunk by chunk for large catalogues)."""

from __future__ import annotations

import torch

from .scores import PositionScores


def topk_excluding(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best items other than padding and y_w, best first (no copy of the score matrix)."""
    if isinstance(scores, PositionScores):
        return scores.topk_excluding(k)
    idx = scores.topk(min(k + 2, scores.shape[1]), dim=1).indices
    keep = (idx != 0) & (idx != target.view(-1, 1))
    keep &= keep.cumsum(1) <= k  # each row has at most two exclusions, so exactly k survive
    return idx[keep].view(len(target), k)


def random_negatives(
    scores: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None, **_
) -> torch.Tensor:
    """Uniform over all items except padding and y_w."""
    n = scores.shape[1]
    neg = torch.randint(1, n - 1, target.shape, generator=generator).to(target.device)
    return neg + (neg >= target).long()  # skip the target without rejection sampling


def argmax_negatives(scores: torch.Tensor, target: torch.Tensor, **_) -> torch.Tensor:
    """The hardest non-target item: argmax over I \\ {y_w}."""
    return topk_excluding(scores.detach(), target, 1).squeeze(1)


def stochastic_topk_negatives(
    scores: torch.Tensor, target: torch.Tensor, k: int, generator: torch.Generator | None = None, **_
) -> torch.Tensor:
    """y_l ~ U(C_K(x)), C_K(x) = TopK({s(x,i) | i != y_w}, K)  (RoDPO Eq. 4)."""
    k = min(k, scores.shape[1] - 2)  # a catalogue smaller than K + 2: the pool is every other item
    pool = topk_excluding(scores.detach(), target, k)
    pick = torch.randint(0, k, (len(target), 1), generator=generator).to(target.device)
    return pool.gather(1, pick).squeeze(1)


SAMPLERS = {"random": random_negatives, "argmax": argmax_negatives, "stochastic_topk": stochastic_topk_negatives}
