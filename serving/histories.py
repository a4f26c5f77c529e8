"""Every user's history on disk, memory-mapped: a lookup per request, nothing per user held at start-up.

Built once per warehouse build (streamed from DuckDB in record batches): `items.npy` holds all users' items in
(user, position) order and `offsets.npy` where each dense user id's run starts. Pages are read on demand, so the
service's resident memory does not grow with the number of users.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import duckdb
import numpy as np

BATCH_ROWS = 1_000_000


def _fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    built = con.execute("SELECT value FROM dataset_info WHERE key = 'built_at'").fetchone()
    rows, users = con.execute("SELECT count(*), max(user_id) FROM sequences").fetchone()
    return f"{json.loads(built[0]) if built else 0}-{rows}-{users}"


def build_history_store(warehouse: Path, dest: Path) -> Path:
    """Write items.npy / offsets.npy for the warehouse's sequences into dest/<fingerprint> (reused when there)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        out = Path(dest) / _fingerprint(con)
        if (out / "offsets.npy").exists():
            return out
        out.mkdir(parents=True, exist_ok=True)
        n_rows, n_users = con.execute("SELECT count(*), coalesce(max(user_id), 0) FROM sequences").fetchone()
        items = np.lib.format.open_memmap(out / "items.tmp.npy", mode="w+", dtype=np.int64, shape=(n_rows,))
        counts = np.zeros(n_users + 2, dtype=np.int64)
        reader = (
            con.cursor()
            .sql("SELECT user_id, item_id FROM sequences ORDER BY user_id, position")
            .to_arrow_reader(BATCH_ROWS)
        )
        at = 0
        for batch in reader:
            users = batch.column(0).to_numpy()
            items[at : at + len(users)] = batch.column(1).to_numpy()
            counts += np.bincount(users, minlength=n_users + 2)
            at += len(users)
        items.flush()
        del items
    offsets = np.zeros(n_users + 2, dtype=np.int64)
    offsets[1:] = np.cumsum(counts[:-1])  # user u's items: offsets[u] : offsets[u + 1]
    np.save(out / "offsets.tmp.npy", offsets)
    os.replace(out / "items.tmp.npy", out / "items.npy")
    os.replace(out / "offsets.tmp.npy", out / "offsets.npy")  # last: its presence means complete
    for old in Path(dest).iterdir():  # stores of earlier builds (a service still mapping one keeps its pages)
        if old.is_dir() and old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


class HistoryStore:
    """`get(user_id)`: the user's items, oldest first, or None for an unknown user (a dict-like lookup)."""

    def __init__(self, path: Path):
        self.items = np.load(Path(path) / "items.npy", mmap_mode="r")
        self.offsets = np.load(Path(path) / "offsets.npy", mmap_mode="r")

    def __len__(self) -> int:
        return int(np.count_nonzero(np.diff(self.offsets)))

    def get(self, user_id: int, default=None):
        if not 0 < user_id < len(self.offsets) - 1:
            return default
        lo, hi = int(self.offsets[user_id]), int(self.offsets[user_id + 1])
        return np.array(self.items[lo:hi]) if hi > lo else default

    def __contains__(self, user_id: int) -> bool:
        return self.get(user_id) is not None


class LRU:
    """A bounded least-recently-used cache (user query vectors)."""

    def __init__(self, size: int):
        self.size, self.data = size, OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        value = self.data.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self.data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)
