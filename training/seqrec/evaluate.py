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
    batch_size = batch_size or max(1, min(2048, SCORES_AT_ONCE // (model.cfg.n_items + 1)))
    device = device or next(model.parameters()).device
    ranks = np.zeros(len(data.targets), dtype=np.int64)
    for idx in length_buckets(data.inputs, batch_size):
        seq = trim(data.inputs[idx]).to(device)
        tgt = data.targets[idx].to(device)
        scores = model.full_sort_predict(seq).float()
        if mask_history:
            hist = [data.histories[i] for i in idx.tolist()]
            rows = torch.from_numpy(np.repeat(np.arange(len(hist)), [len(h) for h in hist])).to(device)
            cols = torch.from_numpy(np.concatenate(hist) if hist else np.zeros(0, np.int64)).to(device)
            target_scores = scores.gather(1, tgt.view(-1, 1))
            scores[rows, cols] = float("-inf")
            scores.scatter_(1, tgt.view(-1, 1), target_scores)  # a repeated target stays rankable
        ranks[idx.numpy()] = ranks_from_scores(scores, tgt).cpu().numpy()
    return ranks


def evaluate(model, data: EvalSet, **kw) -> dict[str, float]:
    return metrics_from_ranks(full_ranking_ranks(model, data, **kw))
