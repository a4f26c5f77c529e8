"""The plain functions behind the ingest assets: land, build tables, build sequences."""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from recalign.settings import Settings, safe_name
from recalign.warehouse import Warehouse

from .errors import SourceError
from .landing import carry_landed, landed_state
from .raw import MANIFEST, land
from .sequences import compute_sequences
from .sources.base import get_source
from .tables import build_tables


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset to build: a source reader, its folder (none for synthetic), k-core."""

    source: str = "synthetic"
    path: str | None = None
    name: str | None = None
    kcore: int | None = None  # None: the source's default (0 = off, for already-filtered data)
    options: dict = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        default = Path(self.path).name if self.path else self.source
        if not self.name and self.options.get("n_items"):
            default += f"-{self.options['n_items']}x{self.options.get('n_users', 'd')}"
        return safe_name(self.name or default, "dataset")

    @property
    def k(self) -> int:
        return get_source(self.source).default_kcore if self.kcore is None else self.kcore

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "path": self.path,
            "name": self.dataset,
            "kcore": self.kcore,
            "options": self.options,
        }


def register_dataset(settings: Settings, spec: DatasetSpec) -> Path:
    """Record a dataset (its source, folder, k-core, options) under <home>/datasets/<name>.json: one per partition
    of the lineage; registering the same name again replaces it."""
    folder = settings.home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.dataset}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def registered_datasets(settings: Settings) -> dict[str, DatasetSpec]:
    """The registered datasets by name (empty when none is)."""
    out = {}
    for path in sorted((settings.home / "datasets").glob("*.json")):
        raw = json.loads(path.read_text())
        out[path.stem] = DatasetSpec(
            source=raw["source"],
            path=raw.get("path"),
            name=path.stem,
            kcore=raw.get("kcore"),
            options=raw.get("options") or {},
        )
    return out


def land_raw(settings: Settings, spec: DatasetSpec) -> dict:
    return land(spec.source, spec.path, settings.raw_dir(spec.dataset), dict(spec.options))


def build_warehouse(settings: Settings, spec: DatasetSpec) -> dict:
    """Read the landed files, validate, write the base tables; returns metadata for the asset."""
    t0 = time.perf_counter()
    raw = settings.raw_dir(spec.dataset)
    if not (raw / MANIFEST).exists():
        land_raw(settings, spec)
    manifest = json.loads((raw / MANIFEST).read_text())
    try:
        data = get_source(spec.source).read(raw, dict(spec.options))
    except SourceError as err:  # name the file the user gave, not its landed copy
        raise err.relocated(raw, manifest.get("origin") or "") from None
    tables = build_tables(data)
    wh = settings.warehouse(spec.dataset)
    landed, batches = landed_state(wh), None
    if landed is not None:  # a re-ingest of the base keeps what landed log batches added
        tables, batches = carry_landed(tables, landed)
    sequences = compute_sequences(tables.interactions[["user_id", "item_id", "ts", "row_order"]], spec.k)
    wh.write_tables(
        tables,
        {
            "dataset": spec.dataset,
            "source": spec.source,
            "origin": manifest["origin"],
            "raw_fingerprint": manifest["fingerprint"],
        },
        sequences=sequences,  # in the same transaction: a reader never sees tables and sequences disagree
        log_batches=batches,
    )
    recon = tables.reconciliation
    return {
        "dataset": spec.dataset,
        "warehouse": str(wh.path),
        "users": len(tables.users),
        "items": len(tables.items),
        "interactions": len(tables.interactions),
        "item_images": len(tables.item_images),
        "rejected": len(tables.rejected),
        "reconciled": bool(recon["reconciled"].all()),
        "reconciliation": recon,
        "rejected_preview": tables.rejected.head(10),
        "items_preview": tables.items.head(5),
        "raw_fingerprint": manifest["fingerprint"],
        "seconds": round(time.perf_counter() - t0, 2),
        "sequence_stats": sequences[1],  # the sequences written with the tables, in the same transaction
    }


def build_sequences(settings: Settings, spec: DatasetSpec) -> dict:
    """Rebuild the sequences from the stored interactions (one transaction)."""
    wh = settings.warehouse(spec.dataset)
    seq, stats = compute_sequences(wh.interactions(), spec.k)
    wh.write_sequences(seq, stats)
    return stats


def sequence_problems(wh: Warehouse) -> dict[str, int]:
    """Counts of what must be zero in the sequences: users or items missing from their tables, evaluable users
    without exactly one valid and one test item, and valid / test items that are not the last two positions."""
    return (
        wh.read("""
        WITH per_user AS (
            SELECT user_id, max(position) AS last, count(*) FILTER (split = 'valid') AS n_valid,
                   count(*) FILTER (split = 'test') AS n_test,
                   max(position) FILTER (split = 'valid') AS p_valid, max(position) FILTER (split = 'test') AS p_test
            FROM sequences GROUP BY user_id)
        SELECT
          (SELECT count(DISTINCT s.user_id) FROM sequences s LEFT JOIN users u USING (user_id)
            WHERE u.user_id IS NULL) AS users_not_in_users,
          (SELECT count(DISTINCT s.item_id) FROM sequences s LEFT JOIN items i USING (item_id)
            WHERE i.item_id IS NULL) AS items_not_in_items,
          (SELECT count(*) FROM per_user WHERE n_valid <> n_test OR n_valid > 1) AS users_without_one_valid_one_test,
          (SELECT count(*) FROM per_user WHERE n_test = 1 AND (p_test <> last OR p_valid <> last - 1))
            AS users_split_not_last
        """)
        .iloc[0]
        .astype(int)
        .to_dict()
    )


def ingest(settings: Settings, spec: DatasetSpec, only_if_missing: bool = False) -> dict:
    """Land, build the tables and the sequences: the whole ingest part of the lineage, without Dagster."""
    if only_if_missing and settings.warehouse_path(spec.dataset).exists():
        return {"dataset": spec.dataset, "skipped": True}
    manifest = land_raw(settings, spec)
    md = build_warehouse(settings, spec)  # writes the sequences too: no second pass over the interactions
    return {**md, "sequences": md.pop("sequence_stats"), "landed_files": len(manifest["files"])}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
