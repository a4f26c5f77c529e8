"""Snapshot ensemble (Huang et al., ICLR 2017, "Snapshot Ensembles: Train 1, get M for free"): the scores of
two weight snapshots of one training run, mixed with a weight chosen on validation.

Why two snapshots: full-softmax CE fits the popular targets first and the rare ones late; the validation-best
snapshot is the head's optimum, a later one ranks rare targets better and popular ones worse (docs/results.md)."""

from __future__ import annotations

import torch
from torch import nn

from .data import EvalSet
from .evaluate import evaluate

MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # weights of the late snapshot tried on validation


class SnapshotEnsemble(nn.Module):
    """s(i | seq) = (1 - w) * s_best(i | seq) + w * s_late(i | seq): one matrix product per member."""

    def __init__(self, best: nn.Module, late: nn.Module, late_weight: float):
        super().__init__()
        if not 0.0 <= late_weight <= 1.0:
            raise ValueError(f"late_weight must lie in [0, 1], got {late_weight!r}")
        if best.cfg.n_items != late.cfg.n_items:
            raise ValueError(f"the snapshots score different catalogues: {best.cfg.n_items} vs {late.cfg.n_items}")
        self.best, self.late, self.late_weight, self.cfg = best, late, float(late_weight), best.cfg

    def full_sort_predict(self, seq: torch.Tensor) -> torch.Tensor:
        """Every item's mixed score after the last position, (B, n_items + 1); padding stays at -inf."""
        out = self.best.full_sort_predict(seq)
        if self.late_weight == 0.0:
            return out
        mixed = (1 - self.late_weight) * out + self.late_weight * self.late.full_sort_predict(seq)
        mixed[:, 0] = float("-inf")  # the padding id (0 * -inf would be NaN at a weight of 0 or 1)
        return mixed

    def predict(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        w = self.late_weight
        return (1 - w) * self.best.predict(seq, items) + w * self.late.predict(seq, items)


def choose_late_weight(best: nn.Module, late: nn.Module, valid: EvalSet, grid=MIX_GRID) -> tuple[float, dict]:
    """The grid weight with the highest validation NDCG@10 (ties: the smaller weight) and each weight's score."""
    scores = {w: evaluate(SnapshotEnsemble(best, late, w), valid)["ndcg@10"] for w in grid}
    chosen = max(grid, key=lambda w: (scores[w], -w))
    return chosen, scores
