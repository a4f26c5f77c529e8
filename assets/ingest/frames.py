"""The normalised frames every source returns, and the collector for rejected rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ITEM_COLUMNS = ["item_key", "title", "categories", "description", "source_file", "line_no", "raw"]
USER_COLUMNS = ["user_key", "gender", "age", "occupation", "zip", "source_file", "line_no", "raw"]
INTERACTION_COLUMNS = ["user_key", "item_key", "ts", "rating", "source_file", "line_no", "raw"]
IMAGE_COLUMNS = ["item_key", "path", "source_file", "line_no", "raw"]
REJECT_COLUMNS = ["table_name", "source_file", "line_no", "raw", "reason"]


MAX_ID_DIGITS = 18  # ids and timestamps fit an int64; longer digit strings are data errors


def digits(text: str) -> bool:
    """An ASCII decimal number of at most 18 digits: what `int()` of an id or a timestamp may be given.
    (`str.isdigit` also accepts '²' or '³', which int() refuses, and int() refuses over 4,300 digits.)"""
    return 0 < len(text) <= MAX_ID_DIGITS and text.isascii() and text.isdigit()


def empty_frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def frame(rows: list[dict] | dict[str, list], columns: list[str]) -> pd.DataFrame:
    """Build a frame with exactly `columns` (missing ones filled with None), keys as strings."""
    df = pd.DataFrame(rows) if len(rows) else empty_frame(columns)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    return df[columns].reset_index(drop=True)


@dataclass
class Rejects:
    """Rows that failed, kept with their reason: raw rows = accepted + rejected, per table."""

    rows: list[dict] = field(default_factory=list)

    def add(self, table: str, source_file: str | Path, line_no: int | None, raw: str, reason: str):
        self.rows.append(
            {
                "table_name": table,
                "source_file": str(source_file),
                "line_no": line_no,
                "raw": raw if raw is None else str(raw)[:2000],
                "reason": reason,
            }
        )

    def add_frame(self, table: str, df: pd.DataFrame, reasons: pd.Series | str):
        if df.empty:
            return
        reasons = reasons if isinstance(reasons, pd.Series) else pd.Series(reasons, index=df.index)
        for (_, row), reason in zip(df.iterrows(), reasons.loc[df.index]):
            line = None if pd.isna(row.get("line_no")) else int(row["line_no"])
            self.add(table, row.get("source_file"), line, row.get("raw"), reason)

    def frame(self) -> pd.DataFrame:
        df = frame(self.rows, REJECT_COLUMNS)
        for col in ("table_name", "source_file", "raw", "reason"):
            df[col] = df[col].astype("string")  # typed even when empty (DuckDB would store NULL type)
        df["line_no"] = pd.array(df["line_no"], dtype="Int64")
        return df

    def count(self, table: str) -> int:
        return sum(1 for r in self.rows if r["table_name"] == table)


@dataclass
class SourceData:
    """What a reader returns: the four normalised frames, rejects so far and raw row counts."""

    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    item_images: pd.DataFrame
    rejects: Rejects
    raw_counts: dict[str, int]
    has_item_catalogue: bool = True
    has_user_catalogue: bool = False
    has_timestamps: bool = True
    notes: dict = field(default_factory=dict)  # reader facts for metadata (not table rows)
