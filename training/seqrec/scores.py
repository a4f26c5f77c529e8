"""The (N, n_items + 1) score matrix of N training positions, kept as its two factors.

A step's scores are `query @ table.T`, with padding and (optionally) the items already in each prefix at -inf.
Materialising that matrix costs N x n_items floats per step (12.8 GB at 1M items x 3,200 positions), so the
losses and samplers ask this object for what they need instead: the scores of given items (sampled losses), the
top-K of each row computed chunk by chunk (the DPO pool), or the whole matrix when the catalogue is small.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .gathered import dense

CHUNK_ELEMENTS = 1 << 24  # scores held at once by the chunked top-K: N positions x chunk items (64 MB of fp32)
ROW_ALIGN = 16  # all-item score rows computed padded to a multiple of 16 floats (64 bytes)


def row_aligned(table: torch.Tensor) -> torch.Tensor:
    """`table` with zero rows appended up to a multiple of ROW_ALIGN rows: BLAS writes and reads score rows of that
    length much faster than rows of an odd catalogue size (docs/results.md, seventh session)."""
    return F.pad(table, (0, 0, 0, -len(table) % ROW_ALIGN))


def all_item_scores(query: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """query @ table.T, computed on the row-aligned table: an (N, n_items + 1) view of aligned rows."""
    return (query @ row_aligned(table).T)[:, : len(table)]


def seen_mask(seq: torch.Tensor, targets: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(N, K): whether each position's prefix seq[b, :t+1] holds items[k], N = the positions with a target."""
    hit = (seq[:, :, None] == items[None, None, :]).to(torch.uint8)
    return hit.cummax(1).values[targets > 0].bool()


def seen_pairs(seq: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) pairs of positions whose prefix seq[b, :t+1] holds the item, the row's own target excepted."""
    sel = targets > 0
    B, L = seq.shape
    row_of = torch.full((B, L), -1, dtype=torch.long, device=seq.device)
    row_of[sel] = torch.arange(int(sel.sum()), device=seq.device)
    prefix = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
    b, t, s = (prefix[None] & (seq > 0)[:, None, :]).nonzero(as_tuple=True)
    rows, cols = row_of[b, t], seq[b, s]
    keep = (rows >= 0) & (cols != targets[b, t])
    return rows[keep], cols[keep]


def later_items(window_targets: torch.Tensor) -> torch.Tensor:
    """(N, L): for each target position (b, t), the window's targets after t (0 elsewhere): the same user's
    later items, positives that a negative pool can exclude."""
    b, t = (window_targets > 0).nonzero(as_tuple=True)
    L = window_targets.shape[1]
    after = torch.arange(L, device=window_targets.device)[None, :] > t[:, None]
    return torch.where(after, window_targets[b], torch.zeros_like(window_targets[b]))


@dataclass
class PositionScores:
    """Scores of N positions against every item, as query (N, D) and table (n_items + 1, D)."""

    query: torch.Tensor
    table: torch.Tensor  # or a GatheredFusedTable (gathered.py): rows built on indexing, for the sampled losses
    targets: torch.Tensor  # (N,) the item each position must predict
    seq: torch.Tensor  # (B, L) the batch the positions come from (for the seen-item masks)
    window_targets: torch.Tensor  # (B, L) its targets, 0 where a position has none
    mask_seen: bool = False
    mask_future: bool = False  # also exclude the window's later targets (the user's own future positives)
    logits: torch.Tensor | None = field(default=None, repr=False)  # the materialised matrix, once built

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.query), len(self.table)

    @property
    def n_items(self) -> int:
        return len(self.table) - 1

    def detach(self) -> PositionScores:
        logits = None if self.logits is None else self.logits.detach()
        return replace(self, query=self.query.detach(), table=self.table.detach(), logits=logits)

    def of(self, items: torch.Tensor) -> torch.Tensor:
        """Scores of given items: (N, C) for per-position items, (N, K) for one shared (K,) set."""
        if items.dim() == 1:
            return self.query @ self.table[items].T
        return torch.einsum("nd,ncd->nc", self.query, self.table[items])

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, t) of each position, in the order of `targets`."""
        return (self.window_targets > 0).nonzero(as_tuple=True)

    def of_sequence_items(self, items: torch.Tensor) -> torch.Tensor:
        """(N, K) scores of K items drawn per sequence (B, K), each position scored against its sequence's items:
        one batched product (B, L, d) x (B, d, K), never a (N, K, d) gather."""
        b, t = self.positions()
        B, L = self.window_targets.shape
        q = self.query.new_zeros(B, L, self.query.shape[1])
        q[b, t] = self.query
        return torch.bmm(q, self.table[items].transpose(1, 2))[b, t]

    def masked_sequence_items(self, items: torch.Tensor) -> torch.Tensor:
        """`masked` for K items per sequence (B, K) -> (N, K), the prefix test done per sequence: B x L x K
        comparisons, not N x L x K."""
        b, t = self.positions()
        grid = items[b]
        out = (grid == 0) | (grid == self.targets[:, None])
        if self.mask_future:
            out = out | (later_items(self.window_targets)[:, :, None] == grid[:, None, :]).any(1)
        if self.mask_seen:
            hit = (self.seq[:, :, None] == items[:, None, :]).to(torch.uint8).cummax(1).values
            out = out | hit[b, t].bool()
        return out

    def masked(self, items: torch.Tensor) -> torch.Tensor:
        """(N, K) for a shared (K,) item set or per-position (N, K) items: True where the item may not compete
        (padding, an item of the position's prefix, the position's own target)."""
        shared = items.dim() == 1
        grid = items[None, :] if shared else items
        out = (grid == 0) | (grid == self.targets[:, None])
        if self.mask_future:
            out = out | (later_items(self.window_targets)[:, :, None] == grid[:, None, :]).any(1)
        if not self.mask_seen:
            return out
        if shared:
            return out | seen_mask(self.seq, self.window_targets, items)
        b, t = (self.window_targets > 0).nonzero(as_tuple=True)  # the positions, in the order of `targets`
        prefix = torch.arange(self.seq.shape[1], device=items.device)[None, :] <= t[:, None]
        return out | ((self.seq[b][:, :, None] == items[:, None, :]) & prefix[:, :, None]).any(1)

    def seen(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(row, item) pairs excluded from each row: its prefix's items (mask_seen), its later targets (mask_future)."""
        pairs = [seen_pairs(self.seq, self.window_targets)] if self.mask_seen else []
        if self.mask_future:
            pairs.append(self.future())
        if not pairs:
            return None
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def future(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) pairs of each row's later targets in its window, its own target excepted."""
        later = later_items(self.window_targets)
        rows, cols = ((later > 0) & (later != self.targets[:, None])).nonzero(as_tuple=True)
        return rows, later[rows, cols]

    def materialise(self) -> torch.Tensor:
        """The whole (N, n_items + 1) matrix, padding and seen items at -inf (small catalogues); kept in `logits`
        so that the DPO pool reuses the matrix the CE loss built.

        The -inf writes are not recorded by autograd: a masked item's softmax probability is 0, so its gradient is
        0 either way, and unrecorded writes spare the backward two copies of the whole matrix."""
        logits = all_item_scores(self.query, dense(self.table))
        with torch.no_grad():
            self.mask_(logits)
        self.logits = logits
        return logits

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """Padding and the excluded items (`seen`) of an (N, n_items + 1) matrix set to -inf, in place."""
        logits[:, 0] = float("-inf")
        seen = self.seen()
        if seen is not None:
            logits[seen] = float("-inf")
        return logits

    @torch.no_grad()
    def topk_excluding(self, k: int, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
        """(N, k) best items per row other than padding, seen items and the target, scored chunk by chunk:
        memory N x chunk, never N x n_items."""
        n, N = self.n_items, len(self.query)
        chunk = max(k + 1, chunk_elements // max(N, 1))
        seen = self.seen()
        rows = torch.arange(N, device=self.query.device)
        best_v = torch.full((N, 0), float("-inf"), device=self.query.device)
        best_i = torch.zeros((N, 0), dtype=torch.long, device=self.query.device)
        for lo in range(1, n + 1, chunk):
            hi = min(lo + chunk, n + 1)
            s = self.query @ self.table[lo:hi].T
            if seen is not None:
                inside = (seen[1] >= lo) & (seen[1] < hi)
                s[seen[0][inside], seen[1][inside] - lo] = float("-inf")
            own = (self.targets >= lo) & (self.targets < hi)
            s[rows[own], self.targets[own] - lo] = float("-inf")
            v = torch.cat([best_v, s], 1)
            i = torch.cat([best_i, torch.arange(lo, hi, device=s.device).expand(N, -1)], 1)
            best_v, top = v.topk(min(k, v.shape[1]), dim=1)
            best_i = i.gather(1, top)
        return best_i
