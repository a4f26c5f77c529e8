"""Small helpers shared by the thin Dagster layers of every asset family."""

from __future__ import annotations

import math

import dagster as dg
import pandas as pd


def md_table(df: pd.DataFrame, max_rows: int = 20, max_width: int = 80) -> dg.MetadataValue:
    """A Markdown table for asset metadata (no extra dependency)."""
    df = df.head(max_rows)
    cols = [str(c) for c in df.columns]

    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        s = "" if v is None or (not isinstance(v, (list, dict)) and pd.isna(v)) else str(v)
        return s.replace("|", "\\|").replace("\n", " ")[:max_width]

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return dg.MetadataValue.md("\n".join(lines))


def to_metadata(values: dict) -> dict:
    """Plain values as metadata; DataFrames as Markdown tables."""
    out = {}
    for key, value in values.items():
        if isinstance(value, pd.DataFrame):
            out[key] = md_table(value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        else:
            out[key] = str(value)
    return out
