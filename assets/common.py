"""Small helpers shared by the thin Dagster layers of every asset family."""

from __future__ import annotations

import dataclasses
import math
import typing

import dagster as dg
import pandas as pd
import pydantic


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


class DataclassConfig(dg.Config):
    """A run config whose fields are those of library config dataclasses (see `dataclass_config`)."""

    def pick(self, cls) -> dict:
        """This config's values of `cls`'s fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in self.model_dump().items() if k in names}


def dataclass_config(name: str, doc: str, *sources: tuple[type, dict], skip=()) -> type[DataclassConfig]:
    """A dg.Config built from dataclasses: each (cls, defaults) adds cls's fields, typed by its annotations
    (a Literal fails at launch, listing the allowed values), with the given defaults (the recipe's values)."""
    spec = {}
    for cls, defaults in sources:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip or f.name not in defaults or not f.init:
                continue
            spec[f.name] = (hints[f.name], defaults[f.name])
    return pydantic.create_model(name, __base__=DataclassConfig, __doc__=doc, **spec)
