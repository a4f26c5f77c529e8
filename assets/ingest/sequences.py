"""Iterative k-core filtering and time-ordered leave-one-out sequences (no database here)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def kcore(inter: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Drop users and items with fewer than k interactions until none remain; returns rounds."""
    if k <= 1:
        return inter, 0
    rounds = 0
    while True:
        rounds += 1
        u = inter["user_id"].map(inter["user_id"].value_counts())
        i = inter["item_id"].map(inter["item_id"].value_counts())
        keep = (u >= k) & (i >= k)
        if keep.all():
            return inter, rounds
        inter = inter[keep]


def leave_one_out(inter: pd.DataFrame) -> pd.DataFrame:
    """Order each user's events by (ts, source order); last = test, second-last = valid.

    Users with fewer than 3 events keep everything in train (they cannot be evaluated).
    """
    df = inter.sort_values(["user_id", "ts", "row_order"], kind="stable")[["user_id", "item_id", "ts"]].copy()
    df["position"] = df.groupby("user_id").cumcount().astype("int64")
    n = df["user_id"].map(df["user_id"].value_counts())
    from_end = n - df["position"]
    split = np.where(n < 3, "train", np.where(from_end == 1, "test", np.where(from_end == 2, "valid", "train")))
    df["split"] = split
    return df[["user_id", "position", "item_id", "ts", "split"]].reset_index(drop=True)


def compute_sequences(inter: pd.DataFrame, k: int) -> tuple[pd.DataFrame, dict]:
    """k-core filter + leave-one-out of (user_id, item_id, ts, row_order) rows, and their statistics."""
    filtered, rounds = kcore(inter, k)
    seq = leave_one_out(filtered)
    lengths = seq.groupby("user_id").size()
    stats = {
        "kcore": k,
        "kcore_rounds": rounds,
        "interactions_in": len(inter),
        "interactions_kept": len(filtered),
        "removed_by_kcore": len(inter) - len(filtered),
        "users": int(seq["user_id"].nunique()),
        "items": int(seq["item_id"].nunique()),
        "evaluable_users": int((seq["split"] == "test").sum()),
        "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
        "max_length": int(lengths.max()) if len(lengths) else 0,
    }
    return seq, stats
