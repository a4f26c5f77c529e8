"""An ANN index over a model's fused item table, in LanceDB: candidates for serving millions of users.

The model scores an item by a dot product (query . [E_id, a E_txt, ...]). An IVF index partitions by L2, so the
table is first made an L2 problem (Bachrach et al., RecSys 2014, Eq. 6): every item gets one more coordinate
sqrt(M^2 - |x|^2) (M the largest norm) and queries a 0; then |q - x|^2 = |q|^2 + M^2 - 2 q.x, so the nearest items
in L2 are exactly the best by dot product. Candidates are re-scored exactly by the caller.

One M for a whole catalogue fails when norms are uneven (a large catalogue where most items were rarely trained):
the short rows all get a large extra coordinate and crowd one pole of the sphere, the few long rows that win by dot
product share partitions with them. The table is therefore split by norm (norm-ranging, Yan et al., NeurIPS 2018,
Sec. 4): the longest rows are scored exactly in memory (one product per batch); the rest go to ranges of norms
within a factor of 2 (merged up to a minimum size: every range is one more search), each with its own M and index.
A query searches the ranges from the longest rows down and skips a range once its depth-th best dot product so far
(the served k plus the history it will drop) is at least |q| M_range, which no item of the range can beat.

LanceDB trains each IVF index by k-means without a seed, and an unlucky build can lose half the best items of
some queries. A build therefore checks itself: the recall@10 of sample queries (the model's own, of one-item
histories) against exact scoring, with the IVF indexes trained again while it is under `min_recall`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

TABLE = "items"
META = "item_index.json"
HEAD_IDS, HEAD_ROWS = "exact_ids.npy", "exact_rows.npy"  # the longest rows, scored exactly
ITEM_INDEX_DIR = "item_index"  # inside a registered model's folder: built by the publishing asset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemIndexConfig:
    """How the index is built and searched (the single home of these defaults)."""

    index_type: str = "IVF_FLAT"  # exact distances inside the probed partitions
    min_rows_for_index: int = 5_000  # below this a flat scan (exact; LanceDB searches it slower than an IVF)
    nprobes: int = 32  # partitions searched per query
    rows_per_partition: int = 1_000  # IVF partitions = rows / this (at least 1)
    exact_rows: int = 20_000  # the longest rows, scored exactly in memory (the first norm range)
    norm_ratio: float = 2.0  # the other rows: ranges of norms within this factor, each its own M and index,
    rows_per_norm_range: int = 250_000  # merged up to at least this many rows (each range is one more search)
    check_queries: int = 256  # recall self-check after a build: each query's exact top 10 against the index's
    min_recall: float = 0.95  # a build under it has its IVF indexes trained again (LanceDB's k-means is unseeded),
    build_attempts: int = 3  # at most this many builds in all

    def __post_init__(self):
        if self.build_attempts < 1:
            raise ValueError(f"build_attempts must be at least 1, got {self.build_attempts}")


def mips_to_l2(table: np.ndarray) -> tuple[np.ndarray, float]:
    """Items with one more coordinate sqrt(M^2 - |x|^2) (Bachrach et al. 2014, Eq. 6), and M."""
    norms = np.linalg.norm(table, axis=1)
    big = float(norms.max()) if len(norms) else 0.0
    extra = np.sqrt(np.maximum(big**2 - norms**2, 0.0)).astype(np.float32)
    return np.hstack([table.astype(np.float32), extra[:, None]]), big


def norm_ranges(norms: np.ndarray, cfg: ItemIndexConfig) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row positions by norm: the exact_rows longest, then the rest in ranges of norms within a factor norm_ratio,
    grown to at least rows_per_norm_range rows each (Yan et al. 2018, Sec. 4; a range is one more search)."""
    order = np.argsort(-norms, kind="stable")
    head, rest = order[: cfg.exact_rows], order[cfg.exact_rows :]
    if not len(rest):
        return head, []
    top = max(float(norms[rest[0]]), 1e-12)
    band = np.floor(np.log(top / np.maximum(norms[rest], 1e-12)) / np.log(cfg.norm_ratio))
    ranges: list[np.ndarray] = []
    for rows in np.split(rest, np.flatnonzero(np.diff(band)) + 1):
        if ranges and len(ranges[-1]) < cfg.rows_per_norm_range:
            ranges[-1] = np.concatenate([ranges[-1], rows])
        else:
            ranges.append(rows)
    if len(ranges) > 1 and len(ranges[-1]) < cfg.rows_per_norm_range:
        ranges[-2:] = [np.concatenate(ranges[-2:])]
    return head, ranges


def write_range(db, name: str, ids: np.ndarray, table: np.ndarray, cfg: ItemIndexConfig) -> dict:
    """One norm range as a LanceDB table (its rows MIPS -> L2 with the range's own M), IVF-indexed when large."""
    vectors, big = mips_to_l2(table)
    dim = vectors.shape[1]
    data = pa.table(
        {
            "id": ids.astype(np.int64),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).ravel()), dim),
        }
    )
    tbl = db.create_table(name, data, mode="overwrite")
    indexed = len(vectors) >= cfg.min_rows_for_index
    if indexed:
        train_ivf(tbl, len(vectors), cfg)
    return {"table": name, "rows": len(vectors), "max_norm": big, "indexed": indexed}


def train_ivf(tbl, rows: int, cfg: ItemIndexConfig) -> None:
    """(Re)train a range's IVF index: k-means over its rows, rows / rows_per_partition partitions."""
    partitions = max(1, rows // cfg.rows_per_partition)
    tbl.create_index(
        metric="l2", vector_column_name="vector", index_type=cfg.index_type, num_partitions=partitions, replace=True
    )


def kth_best(items: np.ndarray, queries: np.ndarray, k: int, chunk: int = 32) -> np.ndarray:
    """(Q,) each query's k-th best dot product over the rows, a few queries at a time."""
    out = [np.zeros(0, np.float32)]
    for lo in range(0, len(queries), chunk):
        s = queries[lo : lo + chunk] @ items.T
        out.append(-np.partition(-s, k - 1, axis=1)[:, k - 1])
    return np.concatenate(out)


def recall_at_k(found: list[np.ndarray], items: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the k exact best that each query's first k candidates hold: a candidate counts when its dot
    product reaches the k-th best (ties with it included)."""
    kth = kth_best(items, queries, k)
    hits = [np.sum(items[f[:k] - 1] @ q >= t - 1e-5 * max(abs(t), 1.0)) / k for f, q, t in zip(found, queries, kth)]
    return float(np.mean(hits))


def check_recall(dest: Path, items: np.ndarray, queries: np.ndarray, ranges: list[dict], cfg: ItemIndexConfig):
    """Recall@10 of the index against exact scoring on `queries`; while under cfg.min_recall the IVF indexes are
    trained again (a fresh k-means), up to cfg.build_attempts builds, and the best build is kept. Returns the meta
    fields it adds."""
    import lancedb

    k = min(10, len(items))
    db, by_build, versions = lancedb.connect(str(dest)), [], []
    indexed = [r for r in ranges if r["indexed"]]
    for attempt in range(cfg.build_attempts):
        if attempt:
            for r in indexed:
                train_ivf(db.open_table(r["table"]), r["rows"], cfg)
        versions.append({r["table"]: db.open_table(r["table"]).version for r in indexed})
        by_build.append(recall_at_k(ItemIndex(dest, cfg).candidates(queries, k), items, queries, k))
        if by_build[-1] >= cfg.min_recall:
            break
    best = int(np.argmax(by_build))
    if by_build[-1] < cfg.min_recall:
        keep_build(db, versions[best])
        log.warning(
            "item index %s: recall@10 %.3f after %d builds, under %s; kept build %d (%.3f)",
            dest,
            by_build[-1],
            len(by_build),
            cfg.min_recall,
            best + 1,
            by_build[best],
        )
    return {
        "recall@10": round(by_build[best], 4),
        "recall@10_by_build": [round(r, 4) for r in by_build],
        "kept_build": best + 1,
        "recall_queries": len(queries),
    }


def keep_build(db, versions: dict[str, int]) -> None:
    """Make each range's table version of one build (its data and IVF index) the latest again."""
    for name, version in versions.items():
        tbl = db.open_table(name)
        if tbl.version != version:
            tbl.restore(version)


def build_item_index(
    table: np.ndarray, dest: Path, cfg: ItemIndexConfig = ItemIndexConfig(), queries: np.ndarray | None = None
) -> dict:
    """Write the (n_items + 1, D) table's rows 1..n (row 0 is padding) as LanceDB tables in dest (one per norm
    range), indexed; with `queries` (Q, D), the recall self-check (`check_recall`) is run and recorded."""
    import lancedb

    t0 = time.perf_counter()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    items = np.asarray(table[1:], dtype=np.float32)
    db = lancedb.connect(str(dest))
    norms = np.linalg.norm(items, axis=1)
    head, rest = norm_ranges(norms, cfg)
    np.save(dest / HEAD_IDS, (head + 1).astype(np.int64))
    np.save(dest / HEAD_ROWS, items[head])
    ranges = [write_range(db, f"{TABLE}_{j}", rows + 1, items[rows], cfg) for j, rows in enumerate(rest)]
    indexed = any(r["indexed"] for r in ranges)
    meta = {
        "rows": len(items),
        "dim": items.shape[1] + 1,
        "max_norm": float(norms.max()) if len(norms) else 0.0,
        "exact_rows": len(head),
        "indexed": indexed,
        "index_type": cfg.index_type if indexed else "flat",
        "ranges": ranges,
    }
    (dest / META).write_text(json.dumps(meta))
    if queries is not None and indexed:
        meta |= check_recall(dest, items, np.asarray(queries, dtype=np.float32), ranges, cfg)
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    (dest / META).write_text(json.dumps(meta))
    return meta


class ItemIndex:
    """Nearest items by dot product to a model query vector (candidates, best first)."""

    def __init__(self, path: Path, cfg: ItemIndexConfig = ItemIndexConfig()):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        import lancedb

        db = lancedb.connect(str(self.path))
        if "ranges" in self.meta:
            self.ranges = self.meta["ranges"]
            self.head_ids = np.load(self.path / HEAD_IDS, allow_pickle=False)
            self.head = np.load(self.path / HEAD_ROWS, allow_pickle=False)
        else:  # an index written before norm ranges: one table, one M, nothing scored exactly
            self.ranges = [{"table": TABLE, "max_norm": self.meta["max_norm"], "indexed": self.meta["indexed"]}]
            self.head_ids, self.head = np.empty(0, np.int64), np.empty((0, self.meta.get("dim", 1) - 1), np.float32)
        self.tables = [db.open_table(r["table"]) for r in self.ranges]
        self.cfg = cfg

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / META).exists()

    def candidates(self, queries: np.ndarray, n: int, depth: int | None = None) -> list[np.ndarray]:
        """Each query's n best items by dot product, best first: the longest rows exactly, then the norm ranges from
        the longest down, each searched once for the batch's queries whose depth-th best so far (default n) it can
        still beat (|q| M_range above it)."""
        q = np.atleast_2d(queries).astype(np.float32)
        depth = min(n, depth or n)
        norm = np.maximum(np.linalg.norm(q, axis=1), 1e-12)
        exact = q @ self.head.T if len(self.head) else np.empty((len(q), 0), np.float32)
        ids, dots = [], []
        for row in exact:
            keep = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
            keep = keep[np.argsort(-row[keep], kind="stable")]
            ids.append(self.head_ids[keep])
            dots.append(row[keep])
        for r, tbl in zip(self.ranges, self.tables):
            todo = [i for i in range(len(q)) if len(dots[i]) < depth or dots[i][depth - 1] < norm[i] * r["max_norm"]]
            if not todo:
                break  # the ranges' M only fall from here
            for i, (got_ids, got_dots) in zip(todo, self.search(tbl, r, q[todo], norm[todo], n)):
                both_ids, both_dots = np.concatenate([ids[i], got_ids]), np.concatenate([dots[i], got_dots])
                keep = np.argsort(-both_dots, kind="stable")[:n]
                ids[i], dots[i] = both_ids[keep], both_dots[keep]
        return ids

    def search(self, tbl, r: dict, q: np.ndarray, norm: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """One LanceDB search of a range for the whole (B, D) batch (one search per query costs several times more:
        its fixed overhead dominates on a small host): each query's n nearest, with their dot products."""
        big = r["max_norm"]
        scaled = q * (big / norm[:, None])
        scaled = np.hstack([scaled, np.zeros((len(q), 1), np.float32)])  # on the range's sphere: probes pick by angle
        search = tbl.search(list(scaled) if len(q) > 1 else scaled[0]).metric("l2").limit(n).select(["id", "_distance"])
        if r["indexed"]:
            search = search.nprobes(self.cfg.nprobes)
        got = search.to_arrow()
        found = got.column("id").to_numpy()
        distance = got.column("_distance").to_numpy()
        which = got.column("query_index").to_numpy() if len(q) > 1 else np.zeros(len(found), np.int64)
        order = np.argsort(which, kind="stable")  # rows of one query stay in their order (nearest first)
        bounds = np.searchsorted(which[order], np.arange(len(q) + 1))
        out = []
        for i in range(len(q)):
            rows = order[bounds[i] : bounds[i + 1]]
            # |q' - x'|^2 = 2 M^2 - 2 (M / |q|) q.x on the range's sphere
            dot = (2 * big**2 - distance[rows]) * norm[i] / (2 * big) if big > 0 else np.zeros(len(rows))
            out.append((found[rows], dot.astype(np.float32)))
        return out


def probe_queries(model, n: int, seed: int = 0, tables: dict | None = None) -> np.ndarray:
    """(n, D) query vectors of one-item histories, the items drawn at random (seeded): the model's own queries,
    for the index's recall self-check without any user data (`tables`: the model's item_tables(), if built)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, model.cfg.n_items + 1, (n, 1), generator=g)
    model.eval()
    with torch.no_grad():
        hidden = model.encode(seq, tables or model.item_tables())
        return model.query({m: h[:, -1] for m, h in hidden.items()}).float().numpy()


def ensure_item_index(model, model_path: str | Path, cfg: ItemIndexConfig = ItemIndexConfig()) -> ItemIndex:
    """A sequential model's item index, built (and its recall checked) next to its weights unless it is there."""
    import torch

    path = Path(model_path) / ITEM_INDEX_DIR
    if not ItemIndex.exists(path):
        model.eval()
        with torch.no_grad():
            tables = model.item_tables()
            table = model.fused_table(tables).detach().float().numpy()
        build_item_index(table, path, cfg, probe_queries(model, cfg.check_queries, tables=tables))
    return ItemIndex(path, cfg)
