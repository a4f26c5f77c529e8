"""Dagster layer of ingest: raw_dataset -> items/users/interactions/item_images -> sequences."""

import dagster as dg
import pandera.pandas as pa

from assets.common import md_table, to_metadata
from assets.resources import DatasetResource, RecalignHome, datasets
from recalign.schemas import Interactions, Items, Sequences, Users
from recalign.warehouse import Warehouse

from .landing import ingest_batch, scan
from .pipeline import build_sequences, build_warehouse, land_raw, sequence_problems

OWNERS = ["team:recalign"]
NULL_TITLES = 0.01  # the share of untitled items above which the items check warns
BASE_TABLES = ["items", "users", "interactions", "item_images"]


@dg.asset(
    partitions_def=datasets,
    group_name="ingest",
    owners=OWNERS,
    kinds={"python", "files"},
    description="The source files landed under $RECALIGN_HOME/raw/{dataset}/ with a manifest (path, bytes, sha256).",
)
def raw_dataset(
    context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    spec = dataset.spec_for(recalign.settings())
    manifest = land_raw(recalign.settings(), spec)
    context.log.info(f"landed {len(manifest['files'])} files ({manifest['copied']} copied) for {spec.dataset}")
    return dg.MaterializeResult(
        metadata={
            "dataset": spec.dataset,
            "source": spec.source,
            "files": len(manifest["files"]),
            "bytes": manifest["total_bytes"],
            "copied": manifest["copied"],
            "fingerprint": manifest["fingerprint"],
            "path": dg.MetadataValue.path(str(recalign.settings().raw_dir(spec.dataset))),
        },
        data_version=dg.DataVersion(manifest["fingerprint"]),
    )


@dg.multi_asset(
    partitions_def=datasets,
    specs=[
        dg.AssetSpec(
            name,
            deps=[raw_dataset],
            group_name="tables",
            owners=OWNERS,
            kinds={"duckdb"},
            description=f"pandera-validated `{name}` table; bad rows go to rejected_rows with a reason.",
        )
        for name in BASE_TABLES
    ],
    name="base_tables",
)
def base_tables(context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource):
    md = build_warehouse(recalign.settings(), dataset.spec_for(recalign.settings()))
    context.log.info(
        f"{md['dataset']}: {md['users']} users, {md['items']} items, {md['interactions']} "
        f"interactions, {md['rejected']} rejected, reconciled={md['reconciled']}"
    )
    shared = {
        "dataset": md["dataset"],
        "warehouse": dg.MetadataValue.path(md["warehouse"]),
        "rejected_total": md["rejected"],
        "reconciled": md["reconciled"],
        "reconciliation": md_table(md["reconciliation"]),
        "seconds": md["seconds"],
    }
    yield dg.MaterializeResult(
        asset_key="items",
        metadata={**shared, "rows": md["items"], "preview": md_table(md["items_preview"])},
        data_version=dg.DataVersion(md["raw_fingerprint"]),
    )
    yield dg.MaterializeResult(
        asset_key="users", metadata={**shared, "rows": md["users"]}, data_version=dg.DataVersion(md["raw_fingerprint"])
    )
    yield dg.MaterializeResult(
        asset_key="interactions",
        metadata={**shared, "rows": md["interactions"], "rejected_preview": md_table(md["rejected_preview"])},
        data_version=dg.DataVersion(md["raw_fingerprint"]),
    )
    yield dg.MaterializeResult(
        asset_key="item_images",
        metadata={**shared, "rows": md["item_images"]},
        data_version=dg.DataVersion(md["raw_fingerprint"]),
    )


@dg.asset(
    partitions_def=datasets,
    deps=["interactions"],
    group_name="tables",
    owners=OWNERS,
    kinds={"duckdb"},
    description="k-core-filtered, time-ordered histories with the leave-one-out split (last = test, second-last = valid).",
)
def sequences(
    context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    stats = build_sequences(recalign.settings(), dataset.spec_for(recalign.settings()))
    context.log.info(f"sequences: {stats}")
    return dg.MaterializeResult(metadata=to_metadata(stats))


def _wh(recalign: RecalignHome, dataset: DatasetResource) -> Warehouse:
    return recalign.warehouse(dataset.dataset)


@dg.asset_check(
    asset="interactions",
    blocking=True,
    description="raw rows = accepted + rejected for every table (nothing silently lost).",
)
def rows_reconcile(recalign: RecalignHome, dataset: DatasetResource) -> dg.AssetCheckResult:
    recon = _wh(recalign, dataset).read("SELECT * FROM reconciliation")
    return dg.AssetCheckResult(passed=bool(recon["reconciled"].all()), metadata={"reconciliation": md_table(recon)})


@dg.asset_check(
    asset="interactions",
    blocking=True,
    description="every interaction points to a known user and item; pandera schema holds.",
)
def referential_integrity(recalign: RecalignHome, dataset: DatasetResource) -> dg.AssetCheckResult:
    wh = _wh(recalign, dataset)
    orphans = wh.read("""SELECT count(*) AS n FROM interactions i
                         LEFT JOIN users u USING (user_id) LEFT JOIN items t USING (item_id)
                         WHERE u.user_id IS NULL OR t.item_id IS NULL""")["n"].iloc[0]
    schemas = {}
    for model, sql in (
        (Interactions, "SELECT user_id, item_id, ts FROM interactions"),
        (Items, "SELECT item_id, item_key, title FROM items"),
        (Users, "SELECT user_id, user_key FROM users"),
    ):
        try:
            model.validate(wh.read(sql))
            schemas[model.__name__] = "holds"
        except pa.errors.SchemaError as err:
            schemas[model.__name__] = str(err).splitlines()[0][:300]
    passed = int(orphans) == 0 and all(v == "holds" for v in schemas.values())
    return dg.AssetCheckResult(passed=passed, metadata={"orphan_interactions": int(orphans), **schemas})


@dg.asset_check(
    asset="items",
    description=f"Item titles are there: at most {NULL_TITLES:.0%} of items without one (a source file missing its "
    "title column, or a reader that lost it, leaves them all NULL).",
)
def items_have_titles(recalign: RecalignHome, dataset: DatasetResource) -> dg.AssetCheckResult:
    row = _wh(recalign, dataset).read("SELECT count(*) AS n, count(*) FILTER (title IS NULL) AS missing FROM items")
    n, missing = int(row["n"].iloc[0]), int(row["missing"].iloc[0])
    share = missing / n if n else 0.0
    return dg.AssetCheckResult(
        passed=share <= NULL_TITLES,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"items": n, "without_title": missing, "share": round(share, 4)},
    )


@dg.asset_check(
    asset="sequences",
    blocking=True,
    description="Sequences schema holds (one valid and one test item per evaluable user), every sequence "
    "user and item is in the tables, and the split is leave-one-out: valid, then test, last.",
)
def sequences_valid(recalign: RecalignHome, dataset: DatasetResource) -> dg.AssetCheckResult:
    wh = _wh(recalign, dataset)
    problems = sequence_problems(wh)
    try:
        Sequences.validate(wh.read("SELECT user_id, position, item_id, split FROM sequences"))
        schema = "holds"
    except pa.errors.SchemaError as err:
        schema = str(err).splitlines()[0][:300]
    return dg.AssetCheckResult(
        passed=schema == "holds" and not any(problems.values()), metadata={**problems, "schema": schema}
    )


# --- incremental interaction logs: one dynamic partition per landed file ---------------------------

landing_files = dg.DynamicPartitionsDefinition(name="landing_files")


@dg.asset(
    partitions_def=landing_files,
    deps=[dg.AssetDep("interactions", partition_mapping=dg.AllPartitionMapping())],
    group_name="ingest",
    owners=OWNERS,
    kinds={"duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            "batch_reconciles",
            asset="interaction_log_batch",
            blocking=True,
            description="raw rows = accepted + rejected for this batch.",
        )
    ],
    description="One interaction-log file from $RECALIGN_HOME/landing/interactions/ (partition = name@sha256), "
    "validated and appended to the deployment's dataset (the dataset resource's config); the sequences are rebuilt "
    "after it.",
)
def interaction_log_batch(
    context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    settings = recalign.settings()
    spec = dataset.spec_for(settings)
    key = context.partition_key
    files = scan(settings.landing_dir)
    if key not in files:
        raise dg.Failure(f"landed file for partition {key!r} is gone or changed; drop it again to ingest it")
    stats = ingest_batch(settings.warehouse(spec.dataset), files[key], key, spec.k)
    seq = stats.pop("sequences")
    context.log.info(f"batch {key}: {stats}; sequences: {seq}")
    return dg.MaterializeResult(
        metadata={**to_metadata(stats), "users_after": seq["users"], "interactions_after": seq["interactions_kept"]},
        check_results=[
            dg.AssetCheckResult(
                check_name="batch_reconciles",
                passed=bool(stats["reconciled"]),
                metadata={
                    "batch": key,
                    "raw_rows": stats["raw_rows"],
                    "accepted": stats["accepted"],
                    "rejected": stats["rejected"],
                },
            )
        ],
    )


assets = [raw_dataset, base_tables, sequences, interaction_log_batch]
asset_checks = [rows_reconcile, referential_integrity, items_have_titles, sequences_valid]
