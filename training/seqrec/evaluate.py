"""Full-ranking evaluation: all items scored by one matrix product, history masked, in batches."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import metrics_from_ranks, ranks_from_scores
from .data import EvalSet, length_buckets, trim

SCORES_AT_ONCE = 1 << 26  # 256 MB of fp32 scores per evaluation batch


@torch.no_grad()
def full_ranking_ranks(
    model, data: EvalSet, batch_size: int | None = None, device: torch.device | None = None, mask_history: bool = True
) -> np.ndarray:
    """1-based rank of each user's target among all items; the user's other history items masked. Users are
    scored in batches of `batch_size` (default: 2,048, fewer on large catalogues: at most 2^26 scores at once)."""
    model.eval()
    scored = ranks_of_scorer(
        lambda seq: [(None, model.full_sort_predict(seq))], model, data, batch_size, device, mask_history
    )
    return scored[None]


@torch.no_grad()
def ranks_of_scorer(
    scorer, model, data: EvalSet, batch_size: int | None = None, device=None, mask_history: bool = True
) -> dict:
    """{key: ranks} for every (key, scores) that `scorer(seq)` yields per batch of users: several score matrices
    (a mix at several weights) ranked from one pass over the users. `model` sets the catalogue size and device."""
    batch_size = batch_size or max(1, min(2048, SCORES_AT_ONCE // (model.cfg.n_items + 1)))
    device = device or next(model.parameters()).device
    ranks: dict = {}
    for idx in length_buckets(data.inputs, batch_size):
        seq = trim(data.inputs[idx]).to(device)
        tgt = data.targets[idx].to(device)
        hist = [data.histories[i] for i in idx.tolist()] if mask_history else None
        for key, scores in scorer(seq):
            out = ranks.setdefault(key, np.zeros(len(data.targets), dtype=np.int64))
            out[idx.numpy()] = _ranks(scores.float(), tgt, hist).cpu().numpy()
    return ranks


def _ranks(scores: torch.Tensor, tgt: torch.Tensor, hist: list[np.ndarray] | None) -> torch.Tensor:
    """The targets' ranks, each user's other history items at -inf first (when `hist` is given)."""
    if hist is not None:
        device = scores.device
        rows = torch.from_numpy(np.repeat(np.arange(len(hist)), [len(h) for h in hist])).to(device)
        cols = torch.from_numpy(np.concatenate(hist) if hist else np.zeros(0, np.int64)).to(device)
        target_scores = scores.gather(1, tgt.view(-1, 1))
        scores[rows, cols] = float("-inf")
        scores.scatter_(1, tgt.view(-1, 1), target_scores)  # a repeated target stays rankable
    return ranks_from_scores(scores, tgt)


def evaluate(model, data: EvalSet, **kw) -> dict[str, float]:
    return metrics_from_ranks(full_ranking_ranks(model, data, **kw))


def best_weight(mixes, model, valid: EvalSet, grid) -> tuple[float, dict]:
    """The grid weight whose scores (`mixes(seq)` yields (weight, scores) per batch) have the highest validation
    NDCG@10, of equals the smaller, and each weight's NDCG@10: one pass over the validation users for the grid."""
    ranks = ranks_of_scorer(mixes, model, valid)
    scores = {w: metrics_from_ranks(ranks[w])["ndcg@10"] for w in grid}
    return max(grid, key=lambda w: (scores[w], -w)), scores
