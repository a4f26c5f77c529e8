"""What text gets embedded, chosen per table. New text sources plug in by adding a recipe here."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from recalign.vectors import content_hash
from recalign.warehouse import Warehouse


def _with_hash(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["content"].fillna("").str.strip() != ""].copy()
    df["content_hash"] = [content_hash(c) for c in df["content"]]
    return df.reset_index(drop=True)


def item_metadata_text(wh: Warehouse) -> pd.DataFrame:
    """Title | attributes | description or plot (first 600 characters)."""
    return _with_hash(
        wh.read("""
        SELECT item_id AS id, concat_ws(' | ', title, categories, left(description, 600)) AS content
        FROM items ORDER BY item_id""")
    )


def item_summary_text(wh: Warehouse) -> pd.DataFrame:
    """The newest MLLM item summary of each item (summaries asset)."""
    if not wh.has_table("item_summaries"):
        return pd.DataFrame(columns=["id", "content", "content_hash"])
    return _with_hash(
        wh.read("""
        SELECT item_id AS id, arg_max(summary, created_at) AS content FROM item_summaries
        GROUP BY item_id ORDER BY item_id""")
    )


def user_text(wh: Warehouse, last_n: int = 10) -> pd.DataFrame:
    """The user's newest preference summary when summaries exist, else their last training titles."""
    if wh.has_table("user_summaries"):
        df = wh.read("""SELECT user_id AS id, arg_max(summary, block_index) AS content
                        FROM user_summaries GROUP BY user_id ORDER BY user_id""")
        if len(df):
            return _with_hash(df)
    return _with_hash(
        wh.read(f"""
        SELECT s.user_id AS id, string_agg(coalesce(i.title, i.categories, i.item_key), ' ; ' ORDER BY s.position) AS content
        FROM (SELECT * FROM sequences WHERE split = 'train'
              QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY position DESC) <= {int(last_n)}) s
        JOIN items i USING (item_id) GROUP BY s.user_id ORDER BY s.user_id""")
    )


TEXT_RECIPES: dict[str, Callable[[Warehouse], pd.DataFrame]] = {
    "item_text": item_metadata_text,
    "item_summary_text": item_summary_text,
    "user_text": user_text,
}
