import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# converted model weights (SmolLM2 from GGUF, tiny test models) are shared by every test home and kept between runs
os.environ.setdefault("RECALIGN_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".recalign" / "models"))

from recalign.settings import shared_data_dir

SHARED = shared_data_dir()


@pytest.fixture
def shared() -> Path:
    if SHARED is None:
        pytest.skip("needs ../shared/data (the team's real datasets), absent in this clone")
    return SHARED


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh RECALIGN_HOME per test."""
    path = tmp_path / "home"
    monkeypatch.setenv("RECALIGN_HOME", str(path))
    from recalign.settings import Settings

    return Settings.from_env(path)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = Path(os.environ["RECALIGN_MODEL_CACHE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    from recalign.settings import Settings

    return Settings.from_env(tmp_path_factory.mktemp("session_home"))
