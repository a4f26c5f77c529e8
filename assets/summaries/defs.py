"""Dagster layer of the summaries: item_summaries -> user_summaries (DuckDB, cached and resumable)."""

import dagster as dg

from assets.common import to_metadata
from assets.resources import DatasetResource, RecalignHome, datasets
from recalign.warehouse import Warehouse

from .backends import make_summarizer
from .summarize import sample_users, summarize_items, summarize_users

OWNERS = ["team:recalign"]


class SummarizerConfig(dg.Config):
    """Which summarizer writes the text. `auto`: the VLM (Qwen2.5-VL-3B-Instruct) on a GPU, `template` on a CPU
    (fast, deterministic); pick `llm` for SmolLM2-135M-Instruct with the vision bridge on a CPU."""

    backend: str = "auto"  # auto | vlm | llm | template
    model: str | None = None  # name or path; None = the backend's default
    max_new_tokens: int = 64
    batch_size: int = 32  # batched generation: about 4x the items/s of one at a time on a CPU
    ocr: bool = True  # llm backend: OCR text from images in the vision bridge
    device: str = "auto"
    user_sample: int | None = None  # summarise a seeded sample of users (and only their items)
    seed: int = 0


class UserSummaryConfig(SummarizerConfig):
    block_size: int = 3
    session_gap_seconds: int | None = None  # blocks split by a time gap instead of a fixed size
    max_blocks: int | None = 10  # the most recent blocks of each user's training history


def _summarizer(cfg: SummarizerConfig, recalign: RecalignHome):
    import torch

    cuda = torch.cuda.is_available()
    backend = cfg.backend if cfg.backend != "auto" else ("vlm" if cuda else "template")
    device = cfg.device if cfg.device != "auto" else ("cuda" if cuda else "cpu")
    return make_summarizer(backend, cfg.model, recalign.settings().models_dir, cfg.max_new_tokens, device, cfg.ocr)


def _warehouse(recalign: RecalignHome, dataset: DatasetResource) -> Warehouse:
    return recalign.warehouse(dataset.dataset)


def _sampled_items(wh: Warehouse, users: list[int]) -> list[int]:
    return wh.read("SELECT DISTINCT item_id FROM sequences WHERE user_id IN (SELECT unnest(?))", [users])[
        "item_id"
    ].tolist()


@dg.asset(
    partitions_def=datasets,
    deps=["items", "item_images", "sequences"],
    group_name="summaries",
    owners=OWNERS,
    kinds={"duckdb"},
    description="MLLM-MSR item summaries from image + title/metadata; cached by item, model, prompt, input hash.",
)
def item_summaries(
    context: dg.AssetExecutionContext, config: SummarizerConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    wh = _warehouse(recalign, dataset)
    items = None
    if config.user_sample:
        items = _sampled_items(wh, sample_users(wh, config.user_sample, config.seed))
    stats = summarize_items(wh, _summarizer(config, recalign), items, config.batch_size, log=context.log.info)
    return dg.MaterializeResult(metadata=to_metadata(stats))


@dg.asset(
    partitions_def=datasets,
    deps=["item_summaries", "sequences"],
    group_name="summaries",
    owners=OWNERS,
    kinds={"duckdb"},
    description="Recurrent user-preference summaries over blocks of each user's training history (no leakage).",
)
def user_summaries(
    context: dg.AssetExecutionContext, config: UserSummaryConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    wh = _warehouse(recalign, dataset)
    users = sample_users(wh, config.user_sample, config.seed)
    stats = summarize_users(
        wh,
        _summarizer(config, recalign),
        users,
        config.block_size,
        config.session_gap_seconds,
        config.batch_size,
        config.max_blocks,
        log=context.log.info,
    )
    return dg.MaterializeResult(metadata=to_metadata(stats))


assets = [item_summaries, user_summaries]
