"""Iterative k-core filtering and time-ordered leave-one-out sequences, in DuckDB SQL (linear in interactions:
hash aggregates and one sort, spilled to disk by DuckDB if they outgrow memory)."""

from __future__ import annotations

import duckdb
import pandas as pd

LOO_SQL = """
SELECT user_id, position, item_id, ts,
       CASE WHEN n < 3 THEN 'train' WHEN n - position = 1 THEN 'test' WHEN n - position = 2 THEN 'valid'
            ELSE 'train' END AS split
FROM (SELECT user_id, item_id, ts,
             (row_number() OVER (PARTITION BY user_id ORDER BY ts, row_order) - 1)::BIGINT AS position,
             count(*) OVER (PARTITION BY user_id) AS n
      FROM {src})
ORDER BY user_id, position
"""


def _typed(seq: pd.DataFrame) -> pd.DataFrame:
    """`split` as text even when there are no rows (DuckDB gives an empty text column the object dtype)."""
    return seq.assign(split=seq["split"].astype("str"))


def _kcore_sql(con: duckdb.DuckDBPyConnection, src: str, k: int) -> int:
    """Leave table `core` holding `src` filtered until every user and item has >= k rows; returns the rounds."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE core AS SELECT * FROM {src}")
    if k <= 1:
        return 0
    rounds = 0
    while True:
        rounds += 1
        n_before = con.execute("SELECT count(*) FROM core").fetchone()[0]
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE core AS SELECT c.* FROM core c
            SEMI JOIN (SELECT user_id FROM core GROUP BY user_id HAVING count(*) >= {int(k)}) u USING (user_id)
            SEMI JOIN (SELECT item_id FROM core GROUP BY item_id HAVING count(*) >= {int(k)}) i USING (item_id)""")
        if con.execute("SELECT count(*) FROM core").fetchone()[0] == n_before:
            return rounds


def kcore(inter: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Drop users and items with fewer than k interactions until none remain; returns rounds."""
    with duckdb.connect() as con:
        con.register("inter", inter)
        rounds = _kcore_sql(con, "inter", k)
        return con.execute("SELECT * FROM core").df(), rounds


def leave_one_out(inter: pd.DataFrame) -> pd.DataFrame:
    """Order each user's events by (ts, source order); last = test, second-last = valid.

    Users with fewer than 3 events keep everything in train (they cannot be evaluated).
    """
    with duckdb.connect() as con:
        con.register("inter", inter)
        return _typed(con.execute(LOO_SQL.format(src="inter")).df())


def compute_sequences(inter: pd.DataFrame, k: int) -> tuple[pd.DataFrame, dict]:
    """k-core filter + leave-one-out of (user_id, item_id, ts, row_order) rows, and their statistics."""
    with duckdb.connect() as con:
        con.register("inter", inter)
        rounds = _kcore_sql(con, "inter", k)
        seq = _typed(con.execute(LOO_SQL.format(src="core")).df())
        kept, users, items, evaluable, mean_len, max_len = con.execute("""
            SELECT (SELECT count(*) FROM core), count(*), (SELECT count(DISTINCT item_id) FROM core),
                   count(*) FILTER (n >= 3), coalesce(avg(n), 0), coalesce(max(n), 0)
            FROM (SELECT user_id, count(*) AS n FROM core GROUP BY user_id)""").fetchone()
    stats = {
        "kcore": k,
        "kcore_rounds": rounds,
        "interactions_in": len(inter),
        "interactions_kept": int(kept),
        "removed_by_kcore": len(inter) - int(kept),
        "users": int(users),
        "items": int(items),
        "evaluable_users": int(evaluable),
        "mean_length": float(mean_len),
        "max_length": int(max_len),
    }
    return seq, stats
