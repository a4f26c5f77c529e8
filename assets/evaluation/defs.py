"""Dagster layer of evaluation: the evaluation_report asset (HTML + Markdown + metadata tables)."""

import time

import dagster as dg

from assets.common import md_table
from assets.resources import DatasetResource, RecalignHome, datasets
from recalign.report import build_report, write_report

OWNERS = ["team:recalign"]


@dg.asset(
    partitions_def=datasets,
    deps=["seqrec_sft", "seqrec_dpo"],
    group_name="evaluation",
    owners=OWNERS,
    kinds={"duckdb", "html"},
    description="Every model on the same split side by side, the papers' numbers beside ours, ablations, "
    "plots and bootstrap intervals, as reports/{dataset}/{run}/report.html and .md.",
)
def evaluation_report(
    context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    settings, name = recalign.settings(), dataset.dataset
    rep = build_report(recalign.metrics(), name)
    out_dir = settings.reports_dir(name) / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    paths = write_report(rep, out_dir)
    context.log.info(f"report written to {paths['html']}")
    meta = {
        "html": dg.MetadataValue.path(paths["html"]),
        "markdown": dg.MetadataValue.path(paths["markdown"]),
        "plots": paths["plots"],
    }
    for title, table in rep.tables.items():
        if table is not None and not table.empty:
            meta[title[:60]] = md_table(table.drop(columns=["run_id"], errors="ignore").round(4))
    return dg.MaterializeResult(metadata=meta)


assets = [evaluation_report]
