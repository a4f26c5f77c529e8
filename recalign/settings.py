"""One settings object: every path recalign writes comes from here, never from the cwd by accident."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def safe_name(name: str, what: str = "name") -> str:
    """Reject names that could escape their folder (used for dataset and run names)."""
    if not _SAFE_NAME.match(name or ""):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class Settings:
    home: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None) -> Settings:
        root = home or os.environ.get("RECALIGN_HOME") or "./.recalign"
        return cls(home=Path(root).expanduser().resolve())

    def _dir(self, *parts: str) -> Path:
        path = self.home.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def raw_dir(self, dataset: str) -> Path:
        return self._dir("raw", safe_name(dataset, "dataset"))

    def warehouse_path(self, dataset: str) -> Path:
        return self._dir("warehouse") / f"{safe_name(dataset, 'dataset')}.duckdb"

    @property
    def metrics_path(self) -> Path:
        return self._dir("warehouse") / "metrics.duckdb"

    def lancedb_dir(self, dataset: str) -> Path:
        return self._dir("lancedb", safe_name(dataset, "dataset"))

    def registry_dir(self, dataset: str) -> Path:
        return self._dir("registry", safe_name(dataset, "dataset"))

    def reports_dir(self, dataset: str) -> Path:
        return self._dir("reports", safe_name(dataset, "dataset"))

    @property
    def landing_dir(self) -> Path:
        return self._dir("landing", "interactions")

    @property
    def cache_dir(self) -> Path:
        return self._dir("cache")

    @property
    def models_dir(self) -> Path:
        """Converted model weights (e.g. SmolLM2 from GGUF); RECALIGN_MODEL_CACHE can share it across homes."""
        env = os.environ.get("RECALIGN_MODEL_CACHE")
        if env:
            path = Path(env).expanduser().resolve()
            path.mkdir(parents=True, exist_ok=True)
            return path
        return self._dir("cache", "models")

    @property
    def downloads_dir(self) -> Path:
        return self._dir("downloads")

    # --- the stores under this home (one place builds them) ----------------------------------

    def warehouse(self, dataset: str):
        """The dataset's DuckDB warehouse (validated tables, sequences, summaries)."""
        from .warehouse import Warehouse

        return Warehouse(self.warehouse_path(dataset))

    def vectors(self, dataset: str):
        """The dataset's LanceDB vector tables."""
        from .vectors import VectorStore

        return VectorStore(self.lancedb_dir(dataset))

    def registry(self, dataset: str):
        """The dataset's model registry (immutable versions + the published pointer)."""
        from .registry import Registry

        return Registry(self.registry_dir(dataset))

    def metrics(self):
        """The metrics store every training run and report reads and writes."""
        from .metrics_store import MetricsStore

        return MetricsStore(self.metrics_path)


def shared_data_dir() -> Path | None:
    """The team's ../shared/data beside the checkout, when present (tests and benchmarks only)."""
    env = os.environ.get("RECALIGN_SHARED_DATA")
    if env is not None and env.lower() in ("", "none"):
        return None  # as in a user's clone without ../shared (RECALIGN_SHARED_DATA=none)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None
