"""The metrics store: one DuckDB table every training asset writes to; nothing parsed from logs."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, family VARCHAR, variant VARCHAR, dataset VARCHAR, config JSON,
  code_version VARCHAR, upstream JSON, model_path VARCHAR, started_at DOUBLE, finished_at DOUBLE);
CREATE TABLE IF NOT EXISTS metrics (
  run_id VARCHAR, family VARCHAR, variant VARCHAR, dataset VARCHAR, split VARCHAR, protocol VARCHAR,
  metric VARCHAR, k INTEGER, value DOUBLE, created_at DOUBLE);
CREATE TABLE IF NOT EXISTS user_ranks (run_id VARCHAR, split VARCHAR, user_id BIGINT, rank BIGINT, history_length INTEGER);
ALTER TABLE user_ranks ADD COLUMN IF NOT EXISTS target_count INTEGER;
CREATE TABLE IF NOT EXISTS training_curves (run_id VARCHAR, stage VARCHAR, epoch INTEGER, metric VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS score_samples (run_id VARCHAR, kind VARCHAR, value DOUBLE);
"""


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def split_metric(name: str) -> tuple[str, int | None]:
    metric, _, k = name.partition("@")
    return metric, int(k) if k.isdigit() else None


@dataclass
class MetricsStore:
    path: Path

    def connect(self, read_only: bool = False):
        if not read_only:
            con = duckdb.connect(str(self.path))
            con.execute(SCHEMA)
            return con
        return duckdb.connect(str(self.path), read_only=True)

    def new_run(self, family: str, variant: str, dataset: str, config: dict, upstream: dict | None = None) -> str:
        run_id = f"{family}-{variant}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        with self.connect() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL)",
                [
                    run_id,
                    family,
                    variant,
                    dataset,
                    json.dumps(config, default=str),
                    code_version(),
                    json.dumps(upstream or {}, default=str),
                    time.time(),
                ],
            )
        return run_id

    def finish_run(self, run_id: str, model_path: str | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, model_path = ? WHERE run_id = ?", [time.time(), model_path, run_id]
            )

    def log_metrics(self, run_id: str, split: str, values: dict[str, float], protocol: str) -> None:
        with self.connect() as con:
            fam, var, ds = con.execute(
                "SELECT family, variant, dataset FROM runs WHERE run_id = ?", [run_id]
            ).fetchone()
            rows = [
                (run_id, fam, var, ds, split, protocol, *split_metric(name), float(v), time.time())
                for name, v in values.items()
            ]
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def log_ranks(
        self,
        run_id: str,
        split: str,
        user_ids: np.ndarray,
        ranks: np.ndarray,
        lengths: np.ndarray,
        target_counts: np.ndarray | None = None,
    ) -> None:
        """One row per user; target_counts: training interactions of each user's target item (its popularity)."""
        counts = pd.array([None] * len(ranks) if target_counts is None else target_counts, dtype="Int32")
        df = pd.DataFrame(
            {
                "run_id": run_id,
                "split": split,
                "user_id": np.asarray(user_ids, np.int64),
                "rank": np.asarray(ranks, np.int64),
                "history_length": np.asarray(lengths, np.int32),
                "target_count": counts,
            }
        )
        with self.connect() as con:
            con.register("df", df)
            con.execute(
                "INSERT INTO user_ranks (run_id, split, user_id, rank, history_length, target_count) "
                "SELECT run_id, split, user_id, rank, history_length, target_count FROM df"
            )

    def log_curve(self, run_id: str, stage: str, rows: list[dict]) -> None:
        long = [
            (run_id, stage, int(r["epoch"]), k, float(v))
            for r in rows
            for k, v in r.items()
            if k not in ("epoch", "stage") and isinstance(v, (int, float))
        ]
        with self.connect() as con:
            con.executemany("INSERT INTO training_curves VALUES (?, ?, ?, ?, ?)", long)

    def log_scores(self, run_id: str, kind: str, values: np.ndarray) -> None:
        df = pd.DataFrame({"run_id": run_id, "kind": kind, "value": np.asarray(values, np.float64)})
        with self.connect() as con:
            con.register("df", df)
            con.execute("INSERT INTO score_samples SELECT * FROM df")

    def read(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(sql, params or []).df()
