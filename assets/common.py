"""Small helpers shared by the thin Dagster layers of every asset family."""

from __future__ import annotations

import dataclasses
import typing

import dagster as dg
import pandas as pd
import pydantic

from recalign.markdown import markdown_table


def md_table(df: pd.DataFrame, max_rows: int = 20, max_width: int = 80) -> dg.MetadataValue:
    """A Markdown table for asset metadata (no extra dependency)."""
    return dg.MetadataValue.md(markdown_table(df, max_rows, max_width))


def from_pipes(metadata: dict) -> dict:
    """Metadata in Dagster Pipes' form ({"raw_value", "type"}) as Dagster metadata values, for in-process runs."""
    kinds = {"md": dg.MetadataValue.md, "path": dg.MetadataValue.path, "json": dg.MetadataValue.json}
    return {k: kinds[v["type"]](v["raw_value"]) if v["type"] in kinds else v["raw_value"] for k, v in metadata.items()}


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
