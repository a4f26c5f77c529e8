"""Popularity: each item's number of training interactions. The one definition behind the publish gate's
baseline, the report's popularity buckets, the LLM track's reference row and the serving fallback."""

from __future__ import annotations

import numpy as np

from .warehouse import Warehouse


def item_counts(wh: Warehouse) -> np.ndarray:
    """Training interactions per item id: (n_items + 1,), index 0 (padding) is 0."""
    df = wh.read("SELECT item_id, count(*) AS n FROM sequences WHERE split = 'train' GROUP BY item_id")
    counts = np.zeros(wh.n_items() + 1, dtype=np.int64)
    counts[df["item_id"].to_numpy(dtype=np.int64)] = df["n"].to_numpy(dtype=np.int64)
    return counts


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Item ids, most popular first, ties by id; the padding id 0 left out."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[order != 0]
