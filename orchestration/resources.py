"""Resources chosen per deployment (`local`, `docker`) from the environment, configurable per run."""

from __future__ import annotations

import os

import dagster as dg

from recalign.settings import Settings


class RecalignHome(dg.ConfigurableResource):
    """Where everything lives: raw files, DuckDB warehouse, LanceDB, model registry, reports."""

    home: str = os.environ.get("RECALIGN_HOME", "./.recalign")

    def settings(self) -> Settings:
        return Settings.from_env(self.home)


class DatasetResource(dg.ConfigurableResource):
    """Which dataset this run builds: a source reader, its folder, k-core (run configuration)."""

    source: str = os.environ.get("RECALIGN_DATASET_SOURCE", "synthetic")
    path: str | None = os.environ.get("RECALIGN_DATASET_PATH") or None
    name: str | None = os.environ.get("RECALIGN_DATASET_NAME") or None
    kcore: int | None = None
    synthetic_items: int | None = None  # size of the synthetic catalogue (tests, quick demos)
    synthetic_users: int | None = None

    def spec(self):
        from assets.ingest.pipeline import DatasetSpec

        options = {k: v for k, v in (("n_items", self.synthetic_items), ("n_users", self.synthetic_users)) if v}
        return DatasetSpec(source=self.source, path=self.path, name=self.name, kcore=self.kcore, options=options)


def deployment() -> str:
    return os.environ.get("RECALIGN_DEPLOYMENT", "local")


def resources_for(env: str | None = None) -> dict:
    """The resource set of a deployment; `docker` reads the same keys from the container env."""
    env = env or deployment()
    if env not in ("local", "docker"):
        raise ValueError(f"unknown RECALIGN_DEPLOYMENT {env!r} (local or docker)")
    return {"recalign": RecalignHome(), "dataset": DatasetResource()}
