"""Markdown tables for metadata and notes (no extra dependency)."""

from __future__ import annotations

import math

import pandas as pd


def markdown_table(df: pd.DataFrame, max_rows: int = 20, max_width: int = 80) -> str:
    df = df.head(max_rows)
    cols = [str(c) for c in df.columns]

    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        s = "" if v is None or (not isinstance(v, (list, dict)) and pd.isna(v)) else str(v)
        return s.replace("|", "\\|").replace("\n", " ")[:max_width]

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
