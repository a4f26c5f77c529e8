"""Ranking metrics of the fixed protocol: full ranking (sequential) and 1+N candidates (LLM).

Ties are counted pessimistically: rank = 1 + #(items scoring strictly higher) + #(other items
scoring equal), so a constant scorer never looks good.
"""

from __future__ import annotations

import numpy as np
import torch

KS = (5, 10, 20)


def ranks_from_scores(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among the row's scores (pessimistic ties)."""
    t = scores.gather(1, target.view(-1, 1))
    # 1 + #higher + #(equal others) = #(s >= t): one pass, counted in int32 (int64 doubles the traffic)
    return (scores >= t).sum(1, dtype=torch.int32).long()


def metrics_from_ranks(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    """NDCG@K, MRR@K, HR@K (RoDPO Eq. 7-8) averaged over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0))) if len(ranks) else 0.0
        out[f"mrr@{k}"] = float(np.mean(np.where(hit, 1.0 / ranks, 0.0))) if len(ranks) else 0.0
        out[f"hr@{k}"] = float(np.mean(hit)) if len(ranks) else 0.0
    return out


def per_user_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per-user values (for bootstrap intervals and paired tests)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    return {
        f"ndcg@{k}": np.where(hit, 1.0 / np.log2(ranks + 1), 0.0),
        f"mrr@{k}": np.where(hit, 1.0 / ranks, 0.0),
        f"hr@{k}": hit.astype(np.float64),
    }


def auc_from_candidate_scores(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of one positive against its negatives, averaged over users (ties count one half)."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 1)
    neg = np.asarray(neg, dtype=np.float64)
    return float(np.mean((pos > neg).mean(1) + 0.5 * (pos == neg).mean(1)))
