"""A count-based higher-order Markov chain beside the sequential model (Fossil, He & McAuley, ICDM 2016, "Fusing
Similarity Models with Markov Chains for Sparse Sequential Recommendation": the score of the next item adds an
L-order Markov chain term over the last L items; here each order's term is the training split's transition counts
instead of factors):

    s(j | x) = s_model(j | x) + g * sum_{k < L} decay^k * log(1 + C_w[x_{t-k}, j])          (markov_prior)

C_w[i, j]: how often j follows i within w steps in the training sequences. g is chosen on validation (0: the model
alone). Why: an early-stopped d-64 model does not memorise the sparse item-to-item transitions that the counts hold
(docs/results.md, fifteenth session)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import EvalSet
from .evaluate import best_weight

PRIOR_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # weights g of the prior tried on validation


class TransitionCounts(nn.Module):
    """log(1 + C_w[i, j]) as CSR buffers (indptr, indices, values) over items 0..n_items (row 0, padding, empty)."""

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, window: int):
        super().__init__()
        self.window = int(window)
        if indptr.ndim != 1 or indptr[-1] != len(indices) or len(indices) != len(values):
            raise ValueError(f"inconsistent transition counts: indptr[-1] {int(indptr[-1])}, {len(indices)} indices")
        if len(indices) and not (0 < int(indices.min()) and int(indices.max()) < len(indptr) - 1):
            raise ValueError(f"transition counts name items outside 1..{len(indptr) - 2}")
        if not torch.isfinite(values).all():
            raise ValueError("transition counts contain NaN or inf")
        self.register_buffer("indptr", indptr.long())
        self.register_buffer("indices", indices.long())
        self.register_buffer("values", values.float())

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 2

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], n_items: int, window: int) -> TransitionCounts:
        """C_w from the training sequences: every (s[t], s[t + k]) for 1 <= k <= window; padding (0) skipped."""
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        n = n_items + 1
        pairs = [(s[:-k], s[k:]) for s in map(np.asarray, sequences) for k in range(1, window + 1) if len(s) > k]
        src = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
        dst = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
        keep = (src > 0) & (dst > 0)
        keys, counts = np.unique(src[keep].astype(np.int64) * n + dst[keep], return_counts=True)
        rows = keys // n
        indptr = np.zeros(n + 1, np.int64)
        np.add.at(indptr, rows + 1, 1)
        return cls(
            torch.from_numpy(np.cumsum(indptr)),
            torch.from_numpy(keys % n),
            torch.from_numpy(np.log1p(counts).astype(np.float32)),
            window,
        )

    def rows(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch row, item j, log(1 + C[items[b], j])) of every stored entry of the given rows."""
        start = self.indptr[items]
        lens = self.indptr[items + 1] - start
        batch = torch.repeat_interleave(torch.arange(len(items), device=items.device), lens)
        offset = torch.arange(int(lens.sum()), device=items.device) - torch.repeat_interleave(
            lens.cumsum(0) - lens, lens
        )
        pos = torch.repeat_interleave(start, lens) + offset
        return batch, self.indices[pos], self.values[pos]

    def terms(self, seq: torch.Tensor, order: int, decay: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch row, item j, decay^k log(1 + C[seq[:, -1 - k], j])) for k < order: markov_prior's non-zero terms."""
        parts = [self.rows(seq[:, -1 - k]) for k in range(min(order, seq.shape[1]))]
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=seq.device)
            return empty, empty, torch.zeros(0, device=seq.device)
        return (
            torch.cat([b for b, _, _ in parts]),
            torch.cat([i for _, i, _ in parts]),
            torch.cat([v * decay**k for k, (_, _, v) in enumerate(parts)]),
        )

    def prior(self, seq: torch.Tensor, order: int, decay: float) -> torch.Tensor:
        """sum_{k < order} decay^k log(1 + C[seq[:, -1 - k], j]) for every item j, (B, n_items + 1) (markov_prior)."""
        out = torch.zeros(seq.shape[0], self.n_items + 1, device=seq.device)
        batch, items, values = self.terms(seq, order, decay)
        return out.index_put_((batch, items), values, accumulate=True)

    def sparse_prior(self, seq: torch.Tensor, order: int, decay: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """markov_prior row by row as (items, values) over the items it reaches only: a catalogue-sized row is never
        built (serving's ANN mode)."""
        batch, items, values = (t.cpu().numpy() for t in self.terms(seq, order, decay))
        keys, where = np.unique(batch * (self.n_items + 1) + items, return_inverse=True)  # sorted by row, then item
        rows, cols = np.divmod(keys, self.n_items + 1)
        vals = np.bincount(where, weights=values, minlength=len(keys)).astype(np.float32)
        cut = np.searchsorted(rows, np.arange(len(seq) + 1))
        return [(cols[a:b], vals[a:b]) for a, b in zip(cut[:-1], cut[1:])]


class MarkovMixed(nn.Module):
    """s(j | x) = s_model(j | x) + weight * markov_prior(x): a model (or snapshot ensemble) with the count prior.
    The encoder interface (item_tables / encode / query / fused_table / fuse) is the model's; the serving paths that
    score from it add `prior(seq)` themselves."""

    def __init__(self, model: nn.Module, counts: TransitionCounts, weight: float, order: int, decay: float):
        super().__init__()
        if counts.n_items != model.cfg.n_items:
            raise ValueError(f"transition counts over {counts.n_items} items, the model scores {model.cfg.n_items}")
        if weight < 0 or order < 1 or not 0 < decay <= 1:
            raise ValueError(f"markov prior needs weight >= 0, order >= 1, 0 < decay <= 1: {weight}, {order}, {decay}")
        self.model, self.counts, self.cfg = model, counts, model.cfg
        self.weight, self.order, self.decay = float(weight), int(order), float(decay)

    def settings(self) -> dict:
        return {"weight": self.weight, "order": self.order, "decay": self.decay, "window": self.counts.window}

    def prior(self, seq: torch.Tensor) -> torch.Tensor:
        """weight * markov_prior(seq), (B, n_items + 1)."""
        return self.weight * self.counts.prior(seq, self.order, self.decay)

    def full_sort_predict(self, seq: torch.Tensor) -> torch.Tensor:
        return self.model.full_sort_predict(seq) + self.prior(seq)  # padding stays at -inf

    def predict(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.predict(seq, items) + self.prior(seq).gather(1, items)

    def item_tables(self):
        return self.model.item_tables()

    def encode(self, seq, tables=None):
        return self.model.encode(seq, tables)

    def query(self, hidden):
        return self.model.query(hidden)

    def fused_table(self, tables):
        return self.model.fused_table(tables)

    def fuse(self, hidden, tables, items=None):
        return self.model.fuse(hidden, tables, items)

    def item_table(self, modality: str) -> torch.Tensor:
        return self.model.item_table(modality)


def without_prior(model: nn.Module) -> nn.Module:
    """The learnt model under a Markov prior (a model or snapshot ensemble), or the model itself."""
    return model.model if isinstance(model, MarkovMixed) else model


def prior_of(model: nn.Module, seq: torch.Tensor) -> torch.Tensor | None:
    """What a scoring path from the encoder interface adds: the model's weighted prior of `seq`, or None."""
    return model.prior(seq) if isinstance(model, MarkovMixed) and model.weight > 0 else None


def sparse_prior_of(model: nn.Module, seq: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """prior_of row by row as (items it reaches, weighted values), or None without a prior."""
    if not (isinstance(model, MarkovMixed) and model.weight > 0):
        return None
    return [(i, model.weight * v) for i, v in model.counts.sparse_prior(seq, model.order, model.decay)]


def choose_prior_weight(
    model: nn.Module, counts: TransitionCounts, valid: EvalSet, order: int, decay: float, grid=PRIOR_GRID
) -> tuple[float, dict]:
    """The grid weight with the highest validation NDCG@10 (ties: the smaller) and each weight's score; the model
    scores the validation users once, every weight ranks its sum."""
    model.eval()

    def mixes(seq):
        base, prior = model.full_sort_predict(seq), counts.prior(seq, order, decay)
        return ((g, base + g * prior) for g in grid)

    return best_weight(mixes, model, valid, grid)


def add_markov_prior(
    model: nn.Module, sequences: list[np.ndarray], valid: EvalSet, order: int, window: int, decay: float
) -> tuple[nn.Module, dict]:
    """The model with the training split's Markov prior at the weight validation chooses (the model itself at 0),
    and what was decided, for the model card."""
    counts = TransitionCounts.from_sequences(sequences, model.cfg.n_items, window).to(next(model.parameters()).device)
    weight, scores = choose_prior_weight(model, counts, valid, order, decay)
    card = {
        "weight": weight,
        "order": order,
        "window": window,
        "decay": decay,
        "transitions": len(counts.values),
        "valid_ndcg@10_by_weight": {str(g): round(v, 5) for g, v in scores.items()},
    }
    return (MarkovMixed(model, counts, weight, order, decay) if weight > 0 else model), card
