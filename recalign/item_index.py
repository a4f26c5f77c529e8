"""An ANN index over a model's fused item table, in LanceDB: candidates for serving millions of users.

The model scores an item by a dot product (query . [E_id, a E_txt, ...]). An IVF index partitions by L2, so the
table is first made an L2 problem (Bachrach et al., RecSys 2014, Eq. 6): every item gets one more coordinate
sqrt(M^2 - |x|^2) (M the largest norm) and queries a 0; then |q - x|^2 = |q|^2 + M^2 - 2 q.x, so the nearest items
in L2 are exactly the best by dot product. Candidates are re-scored exactly by the caller.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

TABLE = "items"
META = "item_index.json"
ITEM_INDEX_DIR = "item_index"  # inside a registered model's folder: built by the publishing asset


@dataclass(frozen=True)
class ItemIndexConfig:
    """How the index is built and searched (the single home of these defaults)."""

    index_type: str = "IVF_FLAT"  # exact distances inside the probed partitions
    min_rows_for_index: int = 5_000  # below this a flat scan (exact; LanceDB searches it slower than an IVF)
    nprobes: int = 32  # partitions searched per query
    rows_per_partition: int = 1_000  # IVF partitions = rows / this (at least 1)


def mips_to_l2(table: np.ndarray) -> tuple[np.ndarray, float]:
    """Items with one more coordinate sqrt(M^2 - |x|^2) (Bachrach et al. 2014, Eq. 6), and M."""
    norms = np.linalg.norm(table, axis=1)
    big = float(norms.max()) if len(norms) else 0.0
    extra = np.sqrt(np.maximum(big**2 - norms**2, 0.0)).astype(np.float32)
    return np.hstack([table.astype(np.float32), extra[:, None]]), big


def build_item_index(table: np.ndarray, dest: Path, cfg: ItemIndexConfig = ItemIndexConfig()) -> dict:
    """Write the (n_items + 1, D) table's rows 1..n (row 0 is padding) as a LanceDB table in dest, indexed."""
    t0 = time.perf_counter()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vectors, big = mips_to_l2(np.asarray(table[1:], dtype=np.float32))
    dim = vectors.shape[1]
    data = pa.table(
        {
            "id": np.arange(1, len(table), dtype=np.int64),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).ravel()), dim),
        }
    )
    import lancedb

    db = lancedb.connect(str(dest))
    tbl = db.create_table(TABLE, data, mode="overwrite")
    indexed = len(vectors) >= cfg.min_rows_for_index
    if indexed:
        partitions = max(1, len(vectors) // cfg.rows_per_partition)
        tbl.create_index(metric="l2", vector_column_name="vector", index_type=cfg.index_type, num_partitions=partitions)
    meta = {
        "rows": len(vectors),
        "dim": dim,
        "max_norm": big,
        "indexed": indexed,
        "index_type": cfg.index_type if indexed else "flat",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (dest / META).write_text(json.dumps(meta))
    return meta


class ItemIndex:
    """Nearest items by dot product to a model query vector (candidates, best first)."""

    def __init__(self, path: Path, cfg: ItemIndexConfig = ItemIndexConfig()):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        import lancedb

        self.table = lancedb.connect(str(self.path)).open_table(TABLE)
        self.cfg = cfg

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / META).exists()

    def candidates(self, queries: np.ndarray, n: int) -> list[np.ndarray]:
        """Each query's n nearest items, best first: one LanceDB search for the whole (B, D) batch of queries (one
        search per query costs several times more: its fixed overhead dominates a search's time on a small host)."""
        q = np.atleast_2d(queries).astype(np.float32)
        q = q * (self.meta["max_norm"] / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12))
        q = np.hstack([q, np.zeros((len(q), 1), np.float32)])  # on the items' sphere: probes pick by angle
        search = self.table.search(list(q) if len(q) > 1 else q[0]).metric("l2").limit(n).select(["id", "_distance"])
        if self.meta["indexed"]:
            search = search.nprobes(self.cfg.nprobes)
        got = search.to_arrow()
        ids = got.column("id").to_numpy()
        if len(q) == 1:
            return [ids]
        which = got.column("query_index").to_numpy()
        order = np.argsort(which, kind="stable")  # rows of one query stay in their order (nearest first)
        bounds = np.searchsorted(which[order], np.arange(len(q) + 1))
        return [ids[order[bounds[i] : bounds[i + 1]]] for i in range(len(q))]


def ensure_item_index(model, model_path: str | Path) -> ItemIndex:
    """A sequential model's item index, built next to its weights unless it is there already."""
    import torch

    path = Path(model_path) / ITEM_INDEX_DIR
    if not ItemIndex.exists(path):
        with torch.no_grad():
            build_item_index(model.fused_table(model.item_tables()).detach().numpy(), path)
    return ItemIndex(path)
