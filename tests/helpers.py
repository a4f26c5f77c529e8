"""Shared test helpers: a warehouse built from ../shared/data, and the tiny model configuration."""

import pytest

from assets.ingest.pipeline import DatasetSpec, ingest
from recalign.settings import Settings, shared_data_dir

TINY = {"d": 16, "n_layers": 1, "dropout": 0.2, "attn_dropout": 0.2, "modalities": ["id"]}


def real_home(tmp_path_factory, source: str, folder: str, name: str) -> Settings:
    """A fresh RECALIGN_HOME with one real dataset ingested; skips in a clone without ../shared/data."""
    if shared_data_dir() is None:
        pytest.skip("needs ../shared/data (the team's real datasets), absent in this clone")
    home = Settings.from_env(tmp_path_factory.mktemp(name))
    spec = DatasetSpec(source, str(shared_data_dir() / folder), name=name)
    ingest(home, spec)
    return home
