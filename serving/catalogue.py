"""What the service knows besides the model: items, user histories, popularity (read once from DuckDB)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from recalign.popularity import item_counts, popularity_order
from recalign.warehouse import Warehouse

from .histories import HistoryStore, build_history_store


@dataclass
class Catalogue:
    titles: dict[int, str | None]
    categories: dict[int, str | None]
    histories: dict[int, np.ndarray] | HistoryStore  # in memory, or memory-mapped from disk (millions of users)
    popular: np.ndarray  # item ids, most popular first (training interactions)
    n_items: int
    _masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, warehouse: Path, history_dir: Path | None = None) -> Catalogue:
        """Items and popularity; histories in memory, or (history_dir given) in a memory-mapped store there."""
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            items = con.execute("SELECT item_id, title, categories FROM items ORDER BY item_id").df()
            seq = (
                None
                if history_dir is not None
                else con.execute(
                    "SELECT user_id, list(item_id ORDER BY position) AS items FROM sequences GROUP BY user_id"
                ).df()
            )
        finally:
            con.close()
        counts = item_counts(Warehouse(warehouse))
        popular = popularity_order(counts)[: int((counts > 0).sum())]  # items with training interactions

        def text(col):  # missing text is None (NaN would break the JSON responses)
            return [None if v is None or v != v else str(v) for v in items[col].tolist()]

        return cls(
            titles=dict(zip(items["item_id"].tolist(), text("title"))),
            categories=dict(zip(items["item_id"].tolist(), text("categories"))),
            histories=HistoryStore(build_history_store(warehouse, history_dir))
            if seq is None
            else {int(u): np.asarray(s, dtype=np.int64) for u, s in zip(seq["user_id"], seq["items"])},
            popular=popular,
            n_items=int(items["item_id"].max()),
        )

    @staticmethod
    def n_users(warehouse: Path) -> int:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return int(con.execute("SELECT count(DISTINCT user_id) FROM sequences").fetchone()[0])

    def category_mask(self, category: str) -> np.ndarray:
        """Items whose category path contains `category` (case-insensitive); computed once per category."""
        needle = category.lower()
        if needle in self._masks:
            return self._masks[needle]
        mask = np.zeros(self.n_items + 1, dtype=bool)
        for item, cats in self.categories.items():
            if cats and needle in cats.lower():
                mask[item] = True
        self._masks[needle] = mask
        return mask
