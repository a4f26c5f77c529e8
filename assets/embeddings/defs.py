"""Dagster layer of the embedding tables: item_text, item_image, user_text (LanceDB)."""

import dagster as dg

from assets.common import to_metadata
from assets.resources import DatasetResource, RecalignHome, datasets

from .encoders import MINILM_ID
from .pipeline import coverage, embed_item_images, embed_text_table

OWNERS = ["team:recalign"]


class TextEmbeddingConfig(dg.Config):
    model: str = MINILM_ID  # any sentence-transformers name or local path
    device: str = "cpu"
    batch_size: int = 256


def _result(stats: dict) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=to_metadata(stats))


def _embed_text(
    context, table: str, config: TextEmbeddingConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    stats = embed_text_table(
        recalign.settings(), dataset.dataset, table, config.model, config.device, config.batch_size
    )
    context.log.info(f"{table}: {stats}")
    return _result(stats)


@dg.asset(
    partitions_def=datasets,
    deps=["items"],
    group_name="embeddings",
    owners=OWNERS,
    kinds={"lancedb"},
    description="Item text vectors (title | attributes | description) in LanceDB, incremental by content hash.",
)
def item_text(
    context: dg.AssetExecutionContext, config: TextEmbeddingConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    return _embed_text(context, "item_text", config, recalign, dataset)


@dg.asset(
    partitions_def=datasets,
    deps=["item_images"],
    group_name="embeddings",
    owners=OWNERS,
    kinds={"lancedb"},
    description="Item image vectors (EfficientNet-Lite0 pooled 1280-d); items without an image get no row.",
)
def item_image(
    context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    stats = embed_item_images(recalign.settings(), dataset.dataset)
    context.log.info(f"item_image: {stats}")
    return _result(stats)


@dg.asset(
    partitions_def=datasets,
    deps=["item_summaries"],
    group_name="embeddings",
    owners=OWNERS,
    kinds={"lancedb"},
    description="Item summary vectors (the newest MLLM summary of each item), incremental by content hash.",
)
def item_summary_text(
    context: dg.AssetExecutionContext, config: TextEmbeddingConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    return _embed_text(context, "item_summary_text", config, recalign, dataset)


@dg.asset(
    partitions_def=datasets,
    deps=["sequences", "items", "user_summaries"],
    group_name="embeddings",
    owners=OWNERS,
    kinds={"lancedb"},
    description="User text vectors: the newest preference summary, else the last training titles.",
)
def user_text(
    context: dg.AssetExecutionContext, config: TextEmbeddingConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    return _embed_text(context, "user_text", config, recalign, dataset)


@dg.asset_check(asset=item_text, blocking=True, description="Every item with text has a text vector.")
def every_item_with_text_has_a_vector(recalign: RecalignHome, dataset: DatasetResource) -> dg.AssetCheckResult:
    cov = coverage(recalign.settings(), dataset.dataset, "item_text")
    return dg.AssetCheckResult(passed=cov["missing"] == 0, metadata=to_metadata(cov))


assets = [item_text, item_image, item_summary_text, user_text]
asset_checks = [every_item_with_text_has_a_vector]
