"""Sensors and schedules: new logs are ingested once each; the nightly retrain runs only when they arrived."""

import json
import time

import dagster as dg

from assets.ingest.defs import landing_files
from assets.ingest.landing import last_ingest_time, scan
from assets.ingest.pipeline import registered_datasets
from assets.resources import DATASETS, DatasetResource, RecalignHome, datasets

MAX_ATTEMPTS = 3  # runs of one landed batch before the sensor stops trying it

ingest_logs = dg.define_asset_job(
    "ingest_logs",
    selection=dg.AssetSelection.assets("interaction_log_batch"),
    partitions_def=landing_files,
    description="Validate and append one landed interaction-log file.",
)
retrain = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets(
        "user_text", "seqrec_sft", "seqrec_dpo", "publish_candidate_model", "published_model", "evaluation_report"
    ),
    description="Retrain, re-evaluate and publish through the gate.",
)


@dg.sensor(
    job=ingest_logs,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Each file in landing/interactions/ once, keyed by name + sha256 (a changed file is a new batch); "
    f"a batch whose runs all failed (a killed worker) is tried again, {MAX_ATTEMPTS} runs at most.",
)
def landing_sensor(context: dg.SensorEvaluationContext, recalign: RecalignHome):
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    files = scan(recalign.settings().landing_dir)
    new = [k for k in files if k not in seen]
    failed = failed_batches(context.instance, [k for k in files if k in seen])
    retry = {k: n for k, n in failed.items() if n < MAX_ATTEMPTS}
    if not new and not retry:
        given_up = sorted(set(failed) - set(retry))
        return dg.SkipReason(
            f"no new files ({len(files)} landed, all ingested)"
            + (
                f"; {len(given_up)} failed {MAX_ATTEMPTS} times, fix and drop them again: {given_up[:5]}"
                if given_up
                else ""
            )
        )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=k) for k in new]
        + [dg.RunRequest(partition_key=k, run_key=f"{k}#attempt{n + 1}") for k, n in retry.items()],
        dynamic_partitions_requests=[landing_files.build_add_request(new)] if new else [],
        cursor=json.dumps(sorted(seen | set(new))),
    )


def failed_batches(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, int]:
    """Landed batches none of whose runs succeeded or is still going, with how many runs failed."""
    out = {}
    for key in keys:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=ingest_logs.name, tags={"dagster/partition": key}))
        if runs and all(r.status == dg.DagsterRunStatus.FAILURE for r in runs):
            out[key] = len(runs)
    return out


def retrain_decision(recalign: RecalignHome, name: str) -> tuple[bool, str]:
    """Retrain a dataset only when interactions arrived after its newest trained model."""
    settings = recalign.settings()
    wh = settings.warehouse(name)
    if not wh.path.exists():
        return False, f"no warehouse for {name!r} yet: run the full lineage first"
    latest = settings.registry(name).newest("seqrec_sft")
    arrived = last_ingest_time(wh)
    if latest is None:
        return True, "no trained model yet"
    trained_at = (latest.path / "card.json").stat().st_mtime
    if arrived is None or arrived <= trained_at:
        return False, f"no new interactions since {latest.name}/{latest.version} was trained"
    return True, f"new interactions at {time.strftime('%Y-%m-%d %H:%M', time.gmtime(arrived))} after {latest.version}"


@dg.schedule(
    job=retrain,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly, per dataset partition: retrain, re-evaluate and publish when new interactions arrived, "
    "else skip with the reason.",
)
def nightly_retrain(context: dg.ScheduleEvaluationContext, recalign: RecalignHome, dataset: DatasetResource):
    keys = context.instance.get_dynamic_partitions(DATASETS) or [dataset.dataset]
    requests, skipped = [], []
    for key in keys:
        go, reason = retrain_decision(recalign, key)
        if go:
            requests.append(
                dg.RunRequest(
                    partition_key=key,
                    run_key=f"retrain-{key}-{context.scheduled_execution_time:%Y%m%dT%H%M}",
                    tags={"reason": reason[:200]},
                )
            )
        else:
            skipped.append(f"{key}: {reason}")
    if not requests:
        return dg.SkipReason("; ".join(skipped))
    return requests


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Each dataset registered under $RECALIGN_HOME/datasets/ (`recalign datasets add`) becomes a partition "
    "of the lineage, and the deployment's configured dataset too.",
)
def dataset_partitions(context: dg.SensorEvaluationContext, recalign: RecalignHome, dataset: DatasetResource):
    have = set(context.instance.get_dynamic_partitions(DATASETS))
    wanted = set(registered_datasets(recalign.settings())) | {dataset.dataset}
    new = sorted(wanted - have)
    if not new:
        return dg.SkipReason(f"no new dataset ({len(have)} partitions)")
    return dg.SensorResult(dynamic_partitions_requests=[datasets.build_add_request(new)])
