"""pandera models of the warehouse tables, and row-level validation that rejects with reasons."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from recalign.schemas import MAX_TS

from .errors import SourceError
from .frames import Rejects

KEY = r"^[^\x00-\x1f\x7f]+$"  # a key holds no control character (a NUL would make a second, distinct user)


class ItemsIn(pa.DataFrameModel):
    """A catalogue row: a non-empty source key; text fields optional."""

    item_key: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 256}, str_matches=KEY)
    title: Series[str] = pa.Field(nullable=True)
    categories: Series[str] = pa.Field(nullable=True)
    description: Series[str] = pa.Field(nullable=True)


class UsersIn(pa.DataFrameModel):
    user_key: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 256}, str_matches=KEY)
    age: Series[float] = pa.Field(nullable=True, ge=0, le=130)


class InteractionsIn(pa.DataFrameModel):
    """One event: who, what, when (unix seconds or an ordinal position), optional rating."""

    user_key: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 256}, str_matches=KEY)
    item_key: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 256}, str_matches=KEY)
    ts: Series[int] = pa.Field(ge=0, le=MAX_TS)
    rating: Series[float] = pa.Field(nullable=True, ge=-10, le=10)


def _reason(cases: pd.DataFrame) -> str:
    return "; ".join(f"{c.column}: {c.check} (value {str(c.failure_case)[:200]!r})" for c in cases.itertuples())


CHUNK_ROWS = 1_000_000  # pandera validates this many rows at a time: its failure tables stay bounded


def _failure_cases(model: type[pa.DataFrameModel], chunk: pd.DataFrame) -> pd.DataFrame | None:
    try:
        model.validate(chunk, lazy=True)
        return None
    except pa.errors.SchemaErrors as err:
        return err.failure_cases


def validate_rows(
    model: type[pa.DataFrameModel], df: pd.DataFrame, table: str, rejects: Rejects, source: str
) -> pd.DataFrame:
    """Validate lazily, chunk by chunk; rows that fail go to rejects with every failed check as the reason.

    A failure that is not about a row (a missing column, a wrong dtype for the whole column) is
    one SourceError naming the file.
    """
    failures = [_failure_cases(model, df.iloc[lo : lo + CHUNK_ROWS]) for lo in range(0, max(len(df), 1), CHUNK_ROWS)]
    failures = [f for f in failures if f is not None]
    if not failures:
        return df
    cases = pd.concat(failures, ignore_index=True)
    row_cases = cases[cases["index"].notna()]
    frame_cases = cases[cases["index"].isna()].drop_duplicates(["column", "check"])  # once, not once per chunk
    if len(frame_cases):
        raise SourceError(source, f"table {table!r} failed validation: {_reason(frame_cases)}")
    reasons = row_cases.groupby("index").apply(_reason, include_groups=False)
    bad = df.index.isin(reasons.index)
    rejects.add_frame(table, df[bad], reasons.reindex(df.index[bad]))
    return df[~bad]
