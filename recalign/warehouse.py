"""DuckDB warehouse access: write the validated tables, read sequences back for training."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from .schemas import Interactions, Items, Sequences, Users


@dataclass
class Tables:
    """One build of the base tables, written to the warehouse in one transaction."""

    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    item_images: pd.DataFrame
    id_map: pd.DataFrame
    rejected: pd.DataFrame
    reconciliation: pd.DataFrame
    info: dict = field(default_factory=dict)


TABLES = ("items", "users", "interactions", "item_images", "id_map", "rejected_rows", "reconciliation")


@dataclass
class Warehouse:
    path: Path

    @contextmanager
    def connect(self, read_only: bool = False):
        if read_only and not Path(self.path).exists():
            raise FileNotFoundError(f"warehouse {self.path} does not exist yet: materialise the tables first")
        con = duckdb.connect(str(self.path), read_only=read_only)
        try:
            yield con
        finally:
            con.close()

    def write(self, name: str, df: pd.DataFrame, con=None) -> None:
        def _do(c):
            c.register("_df", df)
            c.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _df')
            c.unregister("_df")

        if con is not None:
            return _do(con)
        with self.connect() as c:
            _do(c)

    def read(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def has_table(self, name: str) -> bool:
        if not Path(self.path).exists():
            return False
        with self.connect(read_only=True) as con:
            return bool(
                con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0]
            )

    def info(self) -> dict:
        df = self.read("SELECT key, value FROM dataset_info")
        return {k: json.loads(v) for k, v in zip(df["key"], df["value"])}

    # --- writing ----------------------------------------------------------------------------

    def write_tables(
        self,
        tables: Tables,
        info: dict,
        sequences: tuple[pd.DataFrame, dict] | None = None,
        log_batches: pd.DataFrame | None = None,
    ) -> None:
        """Replace the base tables, and the sequences built from them, in one transaction (readers never see a
        half-written build, nor sequences that disagree with the interactions)."""
        Items.validate(tables.items)
        Users.validate(tables.users)
        Interactions.validate(tables.interactions)
        rejected = tables.rejected if "batch" in tables.rejected.columns else tables.rejected.assign(batch="base")
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            for name, df in [
                ("items", tables.items),
                ("users", tables.users),
                ("interactions", tables.interactions),
                ("item_images", tables.item_images),
                ("id_map", tables.id_map),
                ("rejected_rows", rejected),
                ("reconciliation", tables.reconciliation),
            ]:
                self.write(name, df, con)
            meta = {**info, **tables.info, "built_at": time.time()}
            self.write(
                "dataset_info", pd.DataFrame({"key": list(meta), "value": [json.dumps(v) for v in meta.values()]}), con
            )
            if sequences is not None:
                self.write_sequences(*sequences, con=con)
            if log_batches is not None:  # the landed batches' counts after a rebuild of the base
                self.write("log_batches", log_batches, con)
            con.execute("COMMIT")

    def write_sequences(self, seq: pd.DataFrame, stats: dict, con=None) -> None:
        """Replace the sequences and their statistics: in `con`'s open transaction, or in one of their own."""
        Sequences.validate(seq)
        if con is not None:
            self.write("sequences", seq, con)
            self.write("sequence_stats", pd.DataFrame([stats]), con)
            return
        with self.connect() as c:
            c.execute("BEGIN TRANSACTION")
            self.write_sequences(seq, stats, c)
            c.execute("COMMIT")

    # --- reading ----------------------------------------------------------------------------

    def interactions(self) -> pd.DataFrame:
        return self.read("SELECT user_id, item_id, ts, row_order FROM interactions")

    def n_items(self) -> int:
        return int(self.read("SELECT max(item_id) AS n FROM items")["n"].iloc[0])


@dataclass
class SequenceData:
    """Per-user time-ordered item lists (numpy) with the leave-one-out targets."""

    user_ids: np.ndarray  # (U,)
    train: list[np.ndarray]  # items before valid (the training part)
    valid: np.ndarray  # (U,) valid target, 0 when none
    test: np.ndarray  # (U,) test target, 0 when none
    n_items: int  # max item id (ids are 1..n_items, 0 = padding)

    def first_users(self, n: int) -> SequenceData:
        """The first n users (a small form of the data: RECALIGN_SMOKE)."""
        return SequenceData(self.user_ids[:n], self.train[:n], self.valid[:n], self.test[:n], self.n_items)

    def history(self, split: str) -> list[np.ndarray]:
        """The input sequence for predicting the split's target (valid: train; test: train+valid)."""
        if split == "valid":
            return self.train
        return [np.append(t, v) if v else t for t, v in zip(self.train, self.valid)]


def load_sequences(wh: Warehouse) -> SequenceData:
    df = wh.read("SELECT user_id, item_id, split FROM sequences ORDER BY user_id, position")
    n_items = wh.n_items()
    users = df["user_id"].to_numpy()
    bounds = np.flatnonzero(np.diff(users)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(df)]])
    items = df["item_id"].to_numpy(dtype=np.int64)
    split = df["split"].to_numpy()
    train, valid, test = [], np.zeros(len(starts), np.int64), np.zeros(len(starts), np.int64)
    for k, (s, e) in enumerate(zip(starts, ends)):
        sp = split[s:e]
        train.append(items[s:e][sp == "train"])
        if (sp == "valid").any():
            valid[k] = items[s:e][sp == "valid"][0]
        if (sp == "test").any():
            test[k] = items[s:e][sp == "test"][0]
    return SequenceData(
        user_ids=users[starts] if len(df) else np.zeros(0, np.int64),
        train=train,
        valid=valid,
        test=test,
        n_items=n_items,
    )
