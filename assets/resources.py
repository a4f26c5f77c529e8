"""The resources every asset asks for by type: where recalign lives (and the stores there) and which dataset a
run builds. A leaf module: it imports the library, never the Definitions; `resources_for` picks a deployment's set."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from assets.ingest.pipeline import DatasetSpec, registered_datasets
from recalign.metrics_store import MetricsStore
from recalign.registry import Registry
from recalign.settings import Settings
from recalign.vectors import VectorStore
from recalign.warehouse import Warehouse


class RecalignHome(dg.ConfigurableResource):
    """RECALIGN_HOME and the stores under it: DuckDB warehouse, LanceDB vectors, model registry, metrics."""

    home: str | None = None  # None: $RECALIGN_HOME when the run starts, else ./.recalign

    def settings(self) -> Settings:
        return Settings.from_env(self.home or None)

    def warehouse(self, dataset: str) -> Warehouse:
        return self.settings().warehouse(dataset)

    def vectors(self, dataset: str) -> VectorStore:
        return self.settings().vectors(dataset)

    def registry(self, dataset: str) -> Registry:
        return self.settings().registry(dataset)

    def metrics(self) -> MetricsStore:
        return self.settings().metrics()


DATASETS = "datasets"  # the dynamic partitions of the lineage: one per dataset
datasets = dg.DynamicPartitionsDefinition(name=DATASETS)


class DatasetResource(dg.ConfigurableResource):
    """Which dataset a run builds. In a run of a `datasets` partition: that dataset (its registered source, or this
    config when the config names it); otherwise the dataset this config describes (source, folder, k-core)."""

    source: str = "synthetic"
    path: str | None = None  # "" counts as none (an empty environment variable)
    name: str | None = None
    kcore: int | None = None
    synthetic_items: int | None = None  # size of the synthetic catalogue (tests, quick demos)
    synthetic_users: int | None = None
    _partition: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """The run's dataset partition, if it is one (a landed-file partition is not a dataset)."""
        run, instance = context.dagster_run, context.instance
        key = run.tags.get("dagster/partition") if run is not None else None
        if key and instance is not None and instance.has_dynamic_partition(DATASETS, key):
            self._partition = key

    def spec_for(self, settings) -> DatasetSpec:
        """The spec of the run's dataset: this config's when it names it (or no partition), else the registered."""
        own = self.spec()
        if self._partition is None or self._partition == own.dataset:
            return own
        registered = registered_datasets(settings)
        if self._partition not in registered:
            raise dg.Failure(
                f"dataset {self._partition!r} is a partition but not registered in {settings.home}/datasets: run "
                f"`recalign datasets add {self._partition} --source ... --path ...` (registered: {sorted(registered)})"
            )
        return registered[self._partition]

    def spec(self) -> DatasetSpec:
        options = {k: v for k, v in (("n_items", self.synthetic_items), ("n_users", self.synthetic_users)) if v}
        return DatasetSpec(
            source=self.source, path=self.path or None, name=self.name or None, kcore=self.kcore, options=options
        )

    @property
    def dataset(self) -> str:
        """The dataset's name (the run's partition, if any): its folder in raw/, warehouse/, lancedb/, registry/ and
        reports/."""
        return self._partition or self.spec().dataset


DEPLOYMENTS = ("local", "docker")


def _pipes() -> dg.PipesSubprocessClient:
    """Launches multi-process training (torchrun) and reads its logs and metadata back; a Kubernetes deployment
    swaps in dagster_k8s.PipesK8sClient, whose pod runs the same command."""
    return dg.PipesSubprocessClient()


def resources_for(deployment: str = "local") -> dict:
    """A deployment's resources. `local`: the home from $RECALIGN_HOME at run time (else ./.recalign) and the
    synthetic dataset unless run config says otherwise. `docker`: home and dataset from the container's
    environment (RECALIGN_HOME, RECALIGN_DATASET_SOURCE, RECALIGN_DATASET_PATH), required, read by dg.EnvVar
    when a run starts."""
    if deployment == "local":
        return {"recalign": RecalignHome(), "dataset": DatasetResource(), "pipes_subprocess_client": _pipes()}
    if deployment == "docker":
        return {
            "pipes_subprocess_client": _pipes(),
            "recalign": RecalignHome(home=dg.EnvVar("RECALIGN_HOME")),
            "dataset": DatasetResource(
                source=dg.EnvVar("RECALIGN_DATASET_SOURCE"), path=dg.EnvVar("RECALIGN_DATASET_PATH")
            ),
        }
    raise ValueError(f"unknown deployment {deployment!r}: one of {', '.join(DEPLOYMENTS)}")
