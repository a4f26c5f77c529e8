"""The published model, swapped atomically when the registry pointer changes; bad models are refused."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recalign.item_index import ItemIndex, ensure_item_index
from recalign.registry import Registry
from training.seqrec.checkpoint import load_model
from training.seqrec.transitions import prior_of, sparse_prior_of

from .histories import LRU

TRACK = "seqrec"  # registry names of the sequential track: seqrec_sft*, seqrec_dpo*

log = logging.getLogger("recalign.serving")


@dataclass
class Loaded:
    model: torch.nn.Module
    name: str
    version: str
    path: str
    loaded_at: float
    users: dict[int, int] | None = None  # user id -> row of the cached states
    user_states: dict[str, torch.Tensor] | None = None  # modality -> (U, d) last-position hidden states
    tables: dict[str, torch.Tensor] | None = None  # modality -> (n_items + 1, d) item tables
    top: list[tuple[np.ndarray, np.ndarray]] | None = None  # per cached user: best items and scores, best first
    index: ItemIndex | None = None  # ANN mode: the model's item index (LanceDB)
    fused: torch.Tensor | None = None  # ANN mode: (n_items + 1, D) fused item table for exact re-scoring
    queries: LRU | None = None  # ANN mode: user id -> query vector, bounded


@torch.no_grad()
def precompute_users(model, histories: dict[int, np.ndarray], batch_size: int = 1024):
    """Each known user's last-position hidden state per modality (the encoder part of scoring), so a
    request for a known user is one product with the item tables. Same length bucketing as evaluation."""
    from training.seqrec.data import left_pad, length_buckets, trim

    users = sorted(histories)
    max_len = model.cfg.max_len
    inputs = torch.from_numpy(left_pad([histories[u] for u in users], max_len))
    tables = model.item_tables()
    states = {}  # keyed as the model's encode keys them (a snapshot ensemble: "<member>.<modality>")
    for idx in length_buckets(inputs, batch_size):
        hidden = model.encode(trim(inputs[idx]), tables)
        for m, h in hidden.items():
            states.setdefault(m, torch.zeros(len(users), h.shape[-1]))[idx] = h[:, -1]
    return {u: i for i, u in enumerate(users)}, states, tables


@torch.no_grad()
def precompute_top(
    model,
    states: dict[str, torch.Tensor],
    tables: dict[str, torch.Tensor],
    history_lengths: np.ndarray,
    depth: int,
    batch_size: int = 1024,
    histories: list[np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each cached user's best `depth + len(history)` items (history not removed, so any k <= depth survives
    excluding it) with their scores: a known user's request is then a lookup and a filter, no scoring.
    `histories` (the cached users' histories, in their order) feed a model's Markov prior, where it has one."""
    n = len(history_lengths)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, n, batch_size):
        rows = slice(lo, min(n, lo + batch_size))
        scores = model.fuse({m: s[rows] for m, s in states.items()}, tables)
        if histories is not None:
            scores = with_prior(model, scores, histories[rows])
        scores[:, 0] = float("-inf")
        want = depth + history_lengths[rows]
        vals, idx = torch.topk(scores, min(scores.shape[1] - 1, int(want.max())), dim=1)
        vals, idx = vals.numpy(), idx.numpy()
        out.extend((idx[r, :w].copy(), vals[r, :w].copy()) for r, w in enumerate(want))
    return out


def with_prior(model, scores: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
    """Scores from the encoder interface plus the model's Markov prior of each history (transitions.py), if any."""
    from training.seqrec.data import left_pad

    prior = prior_of(model, torch.from_numpy(left_pad(histories, model.cfg.max_len)))
    return scores if prior is None else scores + prior


def plus_prior(ids: np.ndarray, scores: np.ndarray, reached: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The scores of the sorted `ids` plus the prior's value at each of them that it reaches."""
    pos = np.searchsorted(ids, reached)
    hit = pos < len(ids)
    hit[hit] = ids[pos[hit]] == reached[hit]
    out = scores.copy()
    out[pos[hit]] += values[hit]
    return out


def without_paths(message: str) -> str:
    """An error message for a status page: absolute paths cut to their last component."""
    return re.sub(r"(?:/[^/\s'\"]+)+/([^/\s'\"]+)", r"\1", message)[:500]


def _model_of(raw: str) -> str | None:
    try:
        entry = json.loads(raw)
        return f"{entry['name']}/{entry['version']}"
    except (ValueError, KeyError, TypeError):
        return None


class ModelHolder:
    def __init__(
        self,
        registry_root: Path,
        n_items: int,
        poll_seconds: float = 2.0,
        histories: dict[int, np.ndarray] | None = None,
        top_depth: int = 100,
        ann: bool = False,
        candidates: int = 100,
        cache_users: int = 50_000,
    ):
        self.pointer = Path(registry_root) / "published.json"
        self.n_items = n_items
        self.poll_seconds = poll_seconds
        self.current: Loaded | None = None
        self.last_error: dict | None = None
        self._seen: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.switches = 0
        self.refusals = 0
        self.histories = histories or {}
        self.top_depth = top_depth
        self.ann, self.n_candidates, self.cache_users = ann, candidates, cache_users

    def check(self) -> bool:
        """Load the pointer's model if it changed; keep the old one when the new one is bad."""
        try:
            raw = self.pointer.read_text()
        except FileNotFoundError:  # nothing published yet: the newest model of the sequential track, any variant
            newest = Registry(self.pointer.parent).newest(TRACK)
            if newest is None:
                return False
            raw = json.dumps(
                {
                    "name": newest.name,
                    "version": newest.version,
                    "path": str(newest.path),
                    "source": "newest (nothing published)",
                }
            )
        if raw == self._seen:
            return False
        self._seen = raw
        try:
            entry = json.loads(raw)
            model, meta = load_model(entry["path"])
            if model.cfg.n_items != self.n_items:
                raise ValueError(f"model scores {model.cfg.n_items} items, the catalogue has {self.n_items}")
            with torch.no_grad():  # a smoke prediction: the model must produce finite scores
                probe = model.full_sort_predict(torch.tensor([[1]]))
            if not torch.isfinite(probe[:, 1:]).all():
                raise ValueError("model produces non-finite scores")
        except Exception as exc:  # noqa: BLE001 - any failure means: refuse and keep serving the old model
            self.refusals += 1
            self.last_error = {
                "at": time.time(),
                "model": _model_of(raw),
                "error": without_paths(f"{type(exc).__name__}: {exc}"),
            }
            log.error(
                "refused new model: %s (still serving %s)",
                self.last_error["error"],
                self.current.version if self.current else None,
            )
            return False
        users, states, tables, top = None, None, None, None
        index = fused = queries = None
        if self.ann:  # nothing per user: query vectors on request, candidates from the item index
            with torch.no_grad():
                tables = model.item_tables()
                fused = model.fused_table(tables).detach()
            index, queries = ensure_item_index(model, entry["path"]), LRU(self.cache_users)
        elif self.histories:
            users, states, tables = precompute_users(model, self.histories)
            ordered = [self.histories[u] for u in users]
            lengths = np.array([len(h) for h in ordered], dtype=np.int64)
            top = precompute_top(model, states, tables, lengths, self.top_depth, histories=ordered)
        # everything is ready before the swap: one reference assignment, requests never see half a model
        self.current = Loaded(
            model,
            entry["name"],
            entry["version"],
            entry["path"],
            time.time(),
            users,
            states,
            tables,
            top,
            index,
            fused,
            queries,
        )
        self.switches += 1
        self.last_error = None  # a good model is serving again
        log.info("serving model %s/%s", entry["name"], entry["version"])
        return True

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()

    def top(self, user_id: int) -> tuple[np.ndarray, np.ndarray, Loaded] | None:
        """A known user's precomputed best items and scores (best first), or None when not cached."""
        loaded = self.current
        if loaded is None or loaded.top is None or user_id not in loaded.users:
            return None
        ids, scores = loaded.top[loaded.users[user_id]]
        return ids, scores, loaded

    @torch.no_grad()
    def ann_top_batch(self, jobs: list[tuple[np.ndarray, int | None, int, bool]]):
        """Best k items by exact score among the item index's candidates (ANN mode), for a batch of requests (history,
        user id, k, exclude_seen): users without a cached query vector encoded in one forward, every request's
        candidates in one index search, then exact re-scoring with the history left out if asked."""
        from training.seqrec.data import left_pad, trim

        loaded = self.current
        if loaded is None or loaded.index is None:
            raise RuntimeError("no model loaded in ANN mode")
        model, max_len = loaded.model, loaded.model.cfg.max_len
        queries = [loaded.queries.get(u) if u is not None else None for _, u, _, _ in jobs]
        todo = [i for i, q in enumerate(queries) if q is None]
        if todo:
            seqs = torch.from_numpy(left_pad([jobs[i][0][-max_len:] for i in todo], max_len))
            hidden = model.encode(trim(seqs), loaded.tables)
            fresh = model.query({m: h[:, -1] for m, h in hidden.items()})
            for row, i in enumerate(todo):
                queries[i] = fresh[row].clone()
                if jobs[i][1] is not None:
                    loaded.queries.put(jobs[i][1], queries[i])
        want = max(k + (len(h) if excl else 0) for h, _, k, excl in jobs)
        found = loaded.index.candidates(
            torch.stack(queries).numpy(), min(self.n_items, max(self.n_candidates, want)), depth=want
        )
        priors = sparse_prior_of(model, torch.from_numpy(left_pad([h[-max_len:] for h, _, _, _ in jobs], max_len)))
        out = []
        for row, ((history, _, k, exclude_seen), query, ids) in enumerate(zip(jobs, queries, found)):
            if priors is not None:  # the prior's own candidates: the items its counts reach from this history
                ids = np.union1d(ids, priors[row][0])
            if exclude_seen:
                ids = ids[~np.isin(ids, history)]
            scores = (loaded.fused[torch.tensor(ids)] @ query).numpy()
            if priors is not None:
                scores = plus_prior(ids, scores, *priors[row])
            best = np.argsort(-scores, kind="stable")[:k]
            out.append((ids[best], scores[best]))
        return out, loaded

    @torch.no_grad()
    def scores(self, history: np.ndarray, user_id: int | None = None) -> tuple[np.ndarray, Loaded]:
        loaded = self.current  # one reference for the whole request: a switch never mixes models
        if loaded is None:
            raise RuntimeError("no model loaded")
        if user_id is not None and loaded.users is not None and user_id in loaded.users:
            row = loaded.users[user_id]
            hidden = {m: s[row : row + 1] for m, s in loaded.user_states.items()}
            scores = with_prior(loaded.model, loaded.model.fuse(hidden, loaded.tables), [np.asarray(history)])[0]
            scores[0] = float("-inf")
            return scores.numpy(), loaded
        max_len = loaded.model.cfg.max_len
        seq = torch.from_numpy(np.asarray(history[-max_len:], dtype=np.int64)).view(1, -1)
        return loaded.model.full_sort_predict(seq)[0].numpy(), loaded
