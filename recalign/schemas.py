"""pandera contracts of the warehouse tables: what every reader (training, serving, reports) may rely on."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

MAX_TS = 4_102_444_800  # 2100-01-01: anything later is a unit error (ms or ns timestamps)


class Items(pa.DataFrameModel):
    item_id: Series[int] = pa.Field(ge=1, unique=True)
    item_key: Series[str] = pa.Field(unique=True)
    title: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = False


class Users(pa.DataFrameModel):
    user_id: Series[int] = pa.Field(ge=1, unique=True)
    user_key: Series[str] = pa.Field(unique=True)


class Interactions(pa.DataFrameModel):
    user_id: Series[int] = pa.Field(ge=1)
    item_id: Series[int] = pa.Field(ge=1)
    ts: Series[int] = pa.Field(ge=0, le=MAX_TS)

    @pa.dataframe_check
    @classmethod
    def no_duplicate_events(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["user_id", "item_id", "ts"]).any()


class Sequences(pa.DataFrameModel):
    user_id: Series[int] = pa.Field(ge=1)
    position: Series[int] = pa.Field(ge=0)
    item_id: Series[int] = pa.Field(ge=1)
    split: Series[str] = pa.Field(isin=["train", "valid", "test"])

    @pa.dataframe_check
    @classmethod
    def one_valid_and_test_per_user(cls, df: pd.DataFrame) -> bool:
        counts = df[df["split"] != "train"].groupby(["user_id", "split"]).size()
        return bool((counts == 1).all())
