"""Item tables built only at the rows a step gathers, for the sampled losses on large catalogues.

A training step with ID dropout scales every row of the (n_items + 1, d) ID table by its keep factor (RowDropout):
at a million items that is a table-sized product forward and another backward, while a sampled loss reads only the
rows of the batch's items and its negatives. Here the factor is applied to the gathered rows instead: the same
draw (one keep factor per item per step, in the input and the output table at once), the same values, no
table-sized tensor besides the weights and their gradient. The gathers' row gradients are folded into that one
dense gradient (FoldedRows), and a side modality's projection of item features runs on the gathered rows (RowsOf).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Term = tuple[torch.Tensor, torch.Tensor | None]  # (table, per-row factor (n, 1) or None)


class GatheredTable:
    """One modality's item table as a sum of terms, each a table times an optional per-row factor, built on
    indexing: `table[idx]` gathers the rows of idx only. A step gathers a table several times (inputs, targets,
    negatives); each gather's gradient is kept as its rows (sparse) and folded into one dense table gradient
    (`FoldedRows`), not written table-sized once per gather."""

    def __init__(self, terms: list[Term]):
        self.terms = [(FoldedRows.apply(t) if t.requires_grad else t, s) for t, s in terms]

    def __getitem__(self, idx) -> torch.Tensor:
        return added(rows(t, idx) if s is None else rows(t, idx) * rows(s, idx) for t, s in self.terms)

    def __len__(self) -> int:
        return len(self.terms[0][0])

    def dense(self) -> torch.Tensor:
        return added(t if s is None else t * s for t, s in self.terms)

    def detach(self) -> GatheredTable:
        return GatheredTable([(t.detach(), s) for t, s in self.terms])


class RowsOf(GatheredTable):
    """A table given by a function of its rows (a side modality's projection of item features), computed at the
    gathered rows only; `whole()` builds it in full."""

    def __init__(self, rows_of: Callable, whole: Callable, n: int, grad: bool = True):
        self.rows_of, self.whole, self.n, self.grad = rows_of, whole, n, grad

    def __getitem__(self, idx) -> torch.Tensor:
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            return self.rows_of(idx)

    def __len__(self) -> int:
        return self.n

    def dense(self) -> torch.Tensor:
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            return self.whole()

    def detach(self) -> RowsOf:
        return RowsOf(self.rows_of, self.whole, self.n, grad=False)


class GatheredFusedTable(GatheredTable):
    """[E_id, E_txt, ...] of GatheredTables, rows L2-normalised when the model has a temperature (`fused_table`)."""

    def __init__(self, parts: list[GatheredTable], normalise: bool):
        self.parts, self.normalise = parts, normalise

    def __getitem__(self, idx) -> torch.Tensor:
        rows = torch.cat([p[idx] for p in self.parts], -1)
        return F.normalize(rows, dim=-1, eps=1e-12) if self.normalise else rows

    def __len__(self) -> int:
        return len(self.parts[0])

    def dense(self) -> torch.Tensor:
        rows = torch.cat([p.dense() for p in self.parts], -1)
        return F.normalize(rows, dim=-1, eps=1e-12) if self.normalise else rows

    def detach(self) -> GatheredFusedTable:
        return GatheredFusedTable([p.detach() for p in self.parts], self.normalise)


class FoldedRows(torch.autograd.Function):
    """The identity on a table; its backward receives the sum of every gather's row gradient (sparse, `rows`)
    and writes it as one dense table gradient."""

    @staticmethod
    def forward(ctx, table: torch.Tensor) -> torch.Tensor:
        return table.view_as(table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.to_dense() if grad.is_sparse else grad


def rows(table: torch.Tensor, idx) -> torch.Tensor:
    """table[idx]: F.embedding for an index tensor, its gradient the gathered rows (sparse) when the table
    learns (a FoldedRows table folds them once)."""
    if not isinstance(idx, torch.Tensor):
        return table[idx]
    return F.embedding(idx, table, sparse=table.requires_grad)


def added(tensors) -> torch.Tensor:
    """The sum of the tensors, a single one returned as it is (no copy)."""
    first, *rest = tensors
    for t in rest:
        first = first + t
    return first


def dense(table) -> torch.Tensor:
    """The whole table as a tensor (a GatheredTable built in full)."""
    return table.dense() if isinstance(table, GatheredTable) else table
