"""The Definitions: every asset, check, job, schedule and sensor of recalign."""

from __future__ import annotations

import os

import dagster as dg

from assets.embeddings import defs as embeddings
from assets.evaluation import defs as evaluation
from assets.ingest import defs as ingest
from assets.llmrec import defs as llmrec
from assets.resources import resources_for
from assets.seqrec import defs as seqrec
from assets.summaries import defs as summaries
from orchestration.automation import dataset_partitions, ingest_logs, landing_sensor, nightly_retrain, retrain

all_assets = [*ingest.assets, *summaries.assets, *embeddings.assets, *seqrec.assets, *llmrec.assets, *evaluation.assets]
all_checks = [*ingest.asset_checks, *embeddings.asset_checks, *seqrec.asset_checks]

full_lineage = dg.define_asset_job(
    "full_lineage",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("interaction_log_batch")
    - dg.AssetSelection.groups("llm"),
    description="Rebuild the whole lineage of one dataset partition (the LLM track is its own job: llm_track).",
)
llm_track = dg.define_asset_job(
    "llm_track",
    selection=dg.AssetSelection.groups("llm"),
    description="LoRA SFT, then DPO / HaNoRec / GRPO, then the 1+20 candidate evaluation.",
)
ingest_job = dg.define_asset_job(
    "ingest",
    selection=dg.AssetSelection.groups("ingest", "tables") - dg.AssetSelection.assets("interaction_log_batch"),
    description="Land the raw dataset and build the validated tables.",
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[full_lineage, ingest_job, llm_track, ingest_logs, retrain],
    sensors=[landing_sensor, dataset_partitions],
    schedules=[nightly_retrain],
    resources=resources_for(os.environ.get("RECALIGN_DEPLOYMENT", "local")),
    executor=dg.in_process_executor,
)
