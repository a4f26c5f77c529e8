"""Shared test helpers: a warehouse built from ../shared/data, and the tiny model configuration."""

import importlib.util
import sys
from pathlib import Path

import pytest

from assets.ingest.pipeline import DatasetSpec, ingest
from recalign.settings import Settings, shared_data_dir

TINY = {"d": 16, "n_layers": 1, "dropout": 0.2, "attn_dropout": 0.2, "modalities": ["id"], "attributes": False}


def dataset_home(tmp_path_factory, source: str, folder: str, name: str) -> tuple[Settings, bool]:
    """A fresh RECALIGN_HOME with the real dataset ingested when ../shared/data is here (True), else the
    synthetic dataset under the same name (False): tests that need no particular data run in any clone."""
    if shared_data_dir() is not None:
        return real_home(tmp_path_factory, source, folder, name), True
    home = Settings.from_env(tmp_path_factory.mktemp(name))
    ingest(home, DatasetSpec("synthetic", None, name=name))
    return home, False


def real_home(tmp_path_factory, source: str, folder: str, name: str) -> Settings:
    """A fresh RECALIGN_HOME with one real dataset ingested; skips in a clone without ../shared/data."""
    if shared_data_dir() is None:
        pytest.skip("needs ../shared/data (the team's real datasets), absent in this clone")
    home = Settings.from_env(tmp_path_factory.mktemp(name))
    spec = DatasetSpec(source, str(shared_data_dir() / folder), name=name)
    ingest(home, spec)
    return home


def sft_config(**given):
    """A stage-1 config for short test runs: no weight averaging, no late snapshot, no weight decay (the toy tasks'
    seeded trajectories were set without it), validate every epoch, keep the best."""
    from training.seqrec.trainer import SeqRecTrainConfig

    kw = {"swa_last": None, "snapshot_late": None, "weight_decay": 0.0, "eval_every": 1, "keep": "best", "patience": 10}
    kw |= given
    return SeqRecTrainConfig(**kw)


def dpo_config(**kw):
    """A stage-2 config for short test runs: no weight averaging."""
    from training.seqrec.trainer import SeqRecDPOConfig

    return SeqRecDPOConfig(**{"swa_last": None, **kw})


def load_benchmark(name: str):
    """A benchmarks/ script as a module, loaded as a file: benchmarks/ never stays on sys.path (its serving.py
    would shadow ours)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    )
    module, path = importlib.util.module_from_spec(spec), list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module
