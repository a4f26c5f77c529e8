"""Dagster layer of the sequential track: seqrec_sft -> seqrec_dpo -> publish_candidate_model -> published_model."""

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.common import dataclass_config, from_pipes, md_table
from assets.resources import DatasetResource, RecalignHome, datasets
from training.seqrec.distributed import LaunchConfig
from training.seqrec.model import SeqRecConfig
from training.seqrec.recipe import DERIVED, get_recipe
from training.seqrec.trainer import SeqRecDPOConfig, SeqRecTrainConfig

from .launch import launch_spec, torchrun_command
from .pipeline import stage_metadata, train_stage
from .publish import STAGES, evaluate_gate, publish_candidate, served_vs_replaced, stage_two_verdict

OWNERS = ["team:recalign"]
RECIPE = get_recipe("default")

SeqRecSFTRunConfig = dataclass_config(
    "SeqRecSFTRunConfig",
    "Stage 1 (CE warm-up): the model and its training, defaults from the default recipe "
    "(training/seqrec/recipe.py, SeqRecConfig, SeqRecTrainConfig).",
    (SeqRecConfig, RECIPE.model_config()),
    (SeqRecTrainConfig, asdict(RECIPE.sft)),
    (LaunchConfig, asdict(LaunchConfig())),
    skip=DERIVED,
)
SeqRecDPORunConfig = dataclass_config(
    "SeqRecDPORunConfig",
    "Stage 2 (CE + lambda * DPO), defaults from the default recipe (SeqRecDPOConfig).",
    (SeqRecDPOConfig, asdict(RECIPE.dpo)),
    (LaunchConfig, asdict(LaunchConfig())),
    skip=DERIVED,
)


def _metadata(out: dict) -> dict:
    return from_pipes(stage_metadata(out))


def run_stage(context, pipes, recalign, dataset, nproc: int, stage: str, model_cfg: dict, train, reference=None):
    """The stage in this process (nproc 1), or in `nproc` torchrun processes through Dagster Pipes: they send
    each epoch as a log line and the summary as this materialisation's metadata."""
    settings = recalign.settings()
    if nproc <= 1:
        out = train_stage(settings, dataset.dataset, model_cfg, train, reference=reference, log=context.log.info)
        return dg.MaterializeResult(metadata=_metadata(out))
    spec = launch_spec(settings, dataset.dataset, stage, model_cfg, asdict(train), reference)
    with tempfile.TemporaryDirectory(dir=settings.cache_dir) as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        context.log.info(f"torchrun with {nproc} processes; checkpoints in {spec['checkpoint_dir']}")
        return pipes.run(command=torchrun_command(nproc, path), context=context).get_materialize_result()


@dg.asset(
    partitions_def=datasets,
    deps=["sequences", "item_text", "item_image"],
    group_name="training",
    owners=OWNERS,
    kinds={"pytorch"},
    tags={"track": "sequential"},
    description="Stage 1: multimodal SASRec-style encoder trained with cross-entropy (the reference policy).",
)
def seqrec_sft(
    context: dg.AssetExecutionContext,
    config: SeqRecSFTRunConfig,
    recalign: RecalignHome,
    dataset: DatasetResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    model_cfg = config.pick(SeqRecConfig)
    train = SeqRecTrainConfig(**config.pick(SeqRecTrainConfig), show_progress=False)
    return run_stage(context, pipes_subprocess_client, recalign, dataset, config.nproc, "sft", model_cfg, train)


@dg.asset(
    partitions_def=datasets,
    deps=[seqrec_sft],
    group_name="training",
    owners=OWNERS,
    kinds={"pytorch"},
    tags={"track": "sequential"},
    description="Stage 2: L = CE + lambda * DPO against the frozen stage-1 model, y_l from the configured sampler.",
)
def seqrec_dpo(
    context: dg.AssetExecutionContext,
    config: SeqRecDPORunConfig,
    recalign: RecalignHome,
    dataset: DatasetResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    sft = recalign.registry(dataset.dataset).newest("seqrec_sft")
    if sft is None:
        raise dg.Failure("no seqrec_sft model in the registry: materialise seqrec_sft first")
    train = SeqRecDPOConfig(**config.pick(SeqRecDPOConfig), show_progress=False)
    result = run_stage(
        context, pipes_subprocess_client, recalign, dataset, config.nproc, "dpo", {}, train, (sft.name, sft.version)
    )
    extra = {"reference": f"{sft.name}/{sft.version}", "sampler": train.sampler, "preference": train.preference}
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **extra})


# --- publishing: the gate is computed once, on the candidate; its blocking check gates the pointer swap ------


@dg.asset(
    partitions_def=datasets,
    deps=[seqrec_sft, seqrec_dpo],
    group_name="serving",
    owners=OWNERS,
    kinds={"python"},
    check_specs=[
        dg.AssetCheckSpec(
            "candidate_beats_baselines",
            asset="publish_candidate_model",
            blocking=True,
            description="The candidate beats popularity and the published model on valid NDCG@10 (a stage-2 model "
            "is a candidate only when it beats its own SFT on validation beyond noise).",
        )
    ],
    description=f"The newer of the {' and '.join(STAGES)} models with the better valid NDCG@10, proposed for "
    "serving; the gate's verdict is recorded in the registry.",
)
def publish_candidate_model(context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource):
    gate = evaluate_gate(recalign.settings(), dataset.dataset)
    context.log.info(f"gate: {gate['reason']}")
    cand = gate.get("candidate") or {}
    yield dg.MaterializeResult(
        metadata={
            "candidate": f"{cand.get('name')}/{cand.get('version')}",
            "verdict": gate["reason"],
            "candidate_valid_ndcg@10": cand.get("valid_ndcg@10", -1.0),
            "popularity_valid_ndcg@10": gate["popularity_valid_ndcg@10"],
            "published_valid_ndcg@10": gate.get("published_valid_ndcg@10", -1.0),
            "stage_two_vs_its_sft": stage_two_verdict(cand.get("stage_two")),
        }
    )
    yield dg.AssetCheckResult(
        check_name="candidate_beats_baselines", passed=bool(gate["passed"]), metadata={"reason": gate["reason"]}
    )


@dg.asset(
    partitions_def=datasets,
    deps=[publish_candidate_model, "evaluation_report"],
    group_name="serving",
    owners=OWNERS,
    kinds={"python"},
    description="The model the API serves: registry pointer swapped atomically (only after the gate passed); its "
    "page shows its metrics beside the model it replaced, the gate's verdict and the evaluation report.",
)
def published_model(
    context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    settings = recalign.settings()
    entry = publish_candidate(settings, dataset.dataset)
    gate = recalign.registry(dataset.dataset).proposal()
    context.log.info(f"published {entry['name']}/{entry['version']}")
    cand = gate["candidate"]
    page = served_vs_replaced(settings, dataset.dataset, entry)
    return dg.MaterializeResult(
        metadata={
            "model": f"{entry['name']}/{entry['version']}",
            "verdict": gate["reason"],
            "valid_ndcg@10": cand["valid_ndcg@10"],
            "test_ndcg@10": cand.get("test_ndcg@10"),
            "replaced": gate.get("published") or "nothing",
            "replaced_valid_ndcg@10": gate.get("published_valid_ndcg@10"),
            "replaced_test_ndcg@10": gate.get("published_test_ndcg@10"),
            "served_vs_replaced": md_table(pd.DataFrame(page["metrics"])),
            "report": dg.MetadataValue.path(page["report"] or "no report yet"),
            "path": dg.MetadataValue.path(entry["path"]),
            **({"item_index": dg.MetadataValue.json(entry["item_index"])} if "item_index" in entry else {}),
            # the ANN index's self-checked recall (absent when every row is scored exactly)
            **(
                {"item_index_recall@10": entry["item_index"]["recall@10"]}
                if "recall@10" in entry.get("item_index", {})
                else {}
            ),
        }
    )


assets = [seqrec_sft, seqrec_dpo, publish_candidate_model, published_model]
asset_checks = []
