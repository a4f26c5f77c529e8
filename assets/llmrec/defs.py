"""Dagster layer of the LLM track: llm_sft -> llm_dpo, llm_hanorec, llm_grpo -> llm_eval (model registry + metrics)."""

import dataclasses
from typing import Literal

import dagster as dg

from assets.common import md_table, to_metadata
from assets.resources import DatasetResource, RecalignHome, datasets
from training.llm.rewards import RewardWeights
from training.llm.trainers import GRPOStageConfig, LoRAConfig, PreferenceStageConfig, SFTStageConfig, StageConfig

from .pipeline import TrackConfig, evaluate_track, grpo_stage, preference_stage, sft_stage

OWNERS = ["team:recalign"]


_T, _S, _L = TrackConfig, StageConfig, LoRAConfig  # every default below is read from these dataclasses


class LLMStageConfig(dg.Config):
    """Base model, user sample and optimisation of one LLM stage. `deepspeed` names a ZeRO config
    (infra/deepspeed/zero2.json or zero3.json), used where CUDA exists; on a CPU the stage runs without it."""

    base_model: str = _T.base_model  # SmolLM2-135M-Instruct offline; any causal LM name or path
    n_users: int | None = _T.n_users
    seed: int = _T.seed
    train_negatives: int = _T.train_negatives
    targets_per_user: int = _T.targets_per_user
    history_len: int = _T.history_len
    item_notes: bool = _T.item_notes
    formulation: Literal["listwise", "pointwise"] = _T.formulation
    epochs: float = _S.epochs
    lr: float = _S.lr
    batch_size: int = _S.batch_size
    grad_accum: int = _S.grad_accum
    max_steps: int = _S.max_steps
    max_length: int = _S.max_length
    lora_r: int = _L.r
    lora_alpha: int | None = _L.alpha
    deepspeed: str | None = _S.deepspeed
    engine: Literal["grouped", "trl"] = _S.engine
    shared_prefix: bool = _S.shared_prefix

    def track(self, stage_cls=StageConfig, **stage_fields) -> TrackConfig:
        """The TrackConfig of this run, its stage config of `stage_cls` from this config's fields of that class."""
        names = {f.name for f in dataclasses.fields(stage_cls)} - {"lora", "seed"}
        given = {k: v for k, v in self.model_dump().items() if k in names}
        stage = stage_cls(
            **given, **stage_fields, seed=42 + self.seed, lora=LoRAConfig(r=self.lora_r, alpha=self.lora_alpha)
        )
        return TrackConfig(
            base_model=self.base_model,
            n_users=self.n_users,
            seed=self.seed,
            train_negatives=self.train_negatives,
            targets_per_user=self.targets_per_user,
            history_len=self.history_len,
            item_notes=self.item_notes,
            formulation=self.formulation,
            stage=stage,
        )


class LLMSFTConfig(LLMStageConfig):
    lr: float = SFTStageConfig.lr
    epochs: float = SFTStageConfig.epochs


class LLMDPOConfig(LLMStageConfig):
    lr: float = PreferenceStageConfig.lr
    beta: float = PreferenceStageConfig.beta
    sampler: Literal["random", "stochastic_topk"] = PreferenceStageConfig.sampler
    topk: int = PreferenceStageConfig.topk


class LLMHaNoRecConfig(LLMDPOConfig):
    """HaNoRec: beta0 0.1 and sigma 0.05 from the paper; Top-K 1000 neighbours (the paper's 10 leaves no spread)."""

    hardness_topk: int = PreferenceStageConfig.hardness_topk
    hardness_source: Literal["auto", "text", "cooccurrence", "seqrec"] = PreferenceStageConfig.hardness_source
    hardness_gamma: float = PreferenceStageConfig.hardness_gamma
    responsiveness_alpha: float = PreferenceStageConfig.responsiveness_alpha
    noise_sigma: float = PreferenceStageConfig.noise_sigma


class LLMGRPOConfig(LLMStageConfig):
    lr: float = GRPOStageConfig.lr
    num_generations: int = GRPOStageConfig.num_generations
    max_completion_length: int = GRPOStageConfig.max_completion_length
    accuracy_weight: float = RewardWeights.accuracy
    format_weight: float = RewardWeights.format
    similarity_weight: float = RewardWeights.similarity


class LLMEvalConfig(LLMStageConfig):
    split: Literal["valid", "test"] = "test"
    eval_users: int | None = _T.eval_users


def _row(r: dict) -> dict:
    """A metrics row; paired tests against SFT as 'mean difference [95% interval]'."""
    row = {m: v for m, v in r.items() if m not in ("run_id", "vs_sft")}
    for m, t in r.get("vs_sft", {}).items():
        row[f"{m} vs SFT"] = f"{t['mean_diff']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]"
    return row


def _result(stats: dict) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=to_metadata(stats))


def _home(recalign: RecalignHome, dataset: DatasetResource):
    return recalign.settings(), dataset.dataset


@dg.asset(
    partitions_def=datasets,
    deps=["sequences", "user_summaries", "item_summaries"],
    group_name="llm",
    owners=OWNERS,
    kinds={"pytorch", "peft"},
    description="Stage 1: LoRA SFT of the LLM recommender (completion-only loss).",
)
def llm_sft(
    context: dg.AssetExecutionContext, config: LLMSFTConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    return _result(sft_stage(*_home(recalign, dataset), config.track(SFTStageConfig)))


def _preference(config: LLMDPOConfig, recalign, dataset, method: str) -> dg.MaterializeResult:
    track = config.track(PreferenceStageConfig, method=method)
    return _result(preference_stage(*_home(recalign, dataset), track))


@dg.asset(
    partitions_def=datasets,
    deps=["llm_sft"],
    group_name="llm",
    owners=OWNERS,
    kinds={"pytorch", "trl"},
    description="Stage 2: DPO against the frozen SFT adapter; rejected titles from the configured sampler.",
)
def llm_dpo(
    context: dg.AssetExecutionContext, config: LLMDPOConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    return _preference(config, recalign, dataset, "dpo")


@dg.asset(
    partitions_def=datasets,
    deps=["llm_sft", "item_text"],
    group_name="llm",
    owners=OWNERS,
    kinds={"pytorch", "trl"},
    description="Stage 2: HaNoRec = DPO with HaRS per-pair beta (hardness x responsiveness) and NoDO LoRA noise.",
)
def llm_hanorec(
    context: dg.AssetExecutionContext, config: LLMHaNoRecConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    return _preference(config, recalign, dataset, "hanorec")


@dg.asset(
    partitions_def=datasets,
    deps=["llm_sft"],
    group_name="llm",
    owners=OWNERS,
    kinds={"pytorch", "trl"},
    description="Stage 2: GRPO with MSPA's hybrid reward (accuracy + format + similarity).",
)
def llm_grpo(
    context: dg.AssetExecutionContext, config: LLMGRPOConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    weights = RewardWeights(config.accuracy_weight, config.format_weight, config.similarity_weight)
    track = config.track(GRPOStageConfig, weights=weights)
    return _result(grpo_stage(*_home(recalign, dataset), track))


@dg.asset(
    partitions_def=datasets,
    deps=["llm_sft", "llm_dpo", "llm_hanorec", "llm_grpo"],
    group_name="llm",
    owners=OWNERS,
    kinds={"duckdb"},
    description="1 + 20 candidates per test user: AUC, HR@K, NDCG@K for popularity, the published sequential model,"
    " zero-shot and every stage of the configured formulation; paired tests against SFT.",
)
def llm_eval(
    context: dg.AssetExecutionContext, config: LLMEvalConfig, recalign: RecalignHome, dataset: DatasetResource
) -> dg.MaterializeResult:
    track = config.track()
    track.eval_users = config.eval_users
    out = evaluate_track(*_home(recalign, dataset), track, config.split)
    import pandas as pd

    table = pd.DataFrame([{"model": k, **_row(r)} for k, r in out.items()])
    return dg.MaterializeResult(
        metadata={
            "metrics": md_table(table),
            "models": len(out),
            "protocol": "sampled_21 (1 positive + 20 seeded negatives)",
        }
    )


assets = [llm_sft, llm_dpo, llm_hanorec, llm_grpo, llm_eval]
