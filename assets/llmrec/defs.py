"""Dagster layer of the LLM track: llm_sft -> llm_dpo, llm_hanorec, llm_grpo -> llm_eval (model registry + metrics)."""

import dagster as dg

from assets.common import md_table, to_metadata
from assets.resources import DatasetResource, RecalignHome
from training.llm.rewards import RewardWeights
from training.llm.trainers import LoRAConfig, StageConfig

from .pipeline import TrackConfig, evaluate_track, grpo_stage, preference_stage, sft_stage, stage_as

OWNERS = ["team:recalign"]


class LLMStageConfig(dg.Config):
    """Base model, user sample and optimisation of one LLM stage. `deepspeed` names a ZeRO config
    (infra/deepspeed/zero2.json or zero3.json), used where CUDA exists; on a CPU the stage runs without it."""

    base_model: str = "smollm2"  # SmolLM2-135M-Instruct offline; any causal LM name or path (e.g. Qwen2.5-3B-Instruct)
    n_users: int | None = 300
    seed: int = 0
    train_negatives: int = 4
    targets_per_user: int = 2
    history_len: int = 5
    item_notes: bool = False
    epochs: float = 1.0
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = -1
    max_length: int = 1024
    lora_r: int = 8
    lora_alpha: int = 16
    deepspeed: str | None = None

    def track(self) -> TrackConfig:
        stage = StageConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, grad_accum=self.grad_accum,
                            max_steps=self.max_steps, max_length=self.max_length, seed=42 + self.seed,
                            deepspeed=self.deepspeed, lora=LoRAConfig(r=self.lora_r, alpha=self.lora_alpha))
        return TrackConfig(base_model=self.base_model, n_users=self.n_users, seed=self.seed,
                           train_negatives=self.train_negatives, targets_per_user=self.targets_per_user,
                           history_len=self.history_len, item_notes=self.item_notes, stage=stage)


class LLMSFTConfig(LLMStageConfig):
    lr: float = 5e-4
    epochs: float = 2.0


class LLMDPOConfig(LLMStageConfig):
    lr: float = 5e-5
    beta: float = 0.1
    sampler: str = "stochastic_topk"  # random | stochastic_topk (over the SFT model's candidate scores)
    topk: int = 3


class LLMHaNoRecConfig(LLMDPOConfig):
    """HaNoRec defaults from the paper: beta0 0.1, Top-K 10, sigma 0.05."""

    hardness_topk: int = 10
    hardness_gamma: float = 0.5
    responsiveness_alpha: float = 0.5
    noise_sigma: float = 0.05


class LLMGRPOConfig(LLMStageConfig):
    lr: float = 2e-5
    num_generations: int = 4
    max_completion_length: int = 24
    accuracy_weight: float = 1.0
    format_weight: float = 0.5
    similarity_weight: float = 0.5


class LLMEvalConfig(LLMStageConfig):
    split: str = "test"
    eval_users: int | None = None


def _result(stats: dict) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=to_metadata(stats))


def _home(recalign: RecalignHome, dataset: DatasetResource):
    return recalign.settings(), dataset.dataset


@dg.asset(deps=["sequences", "user_summaries", "item_summaries"], group_name="llm", owners=OWNERS,
          kinds={"pytorch", "peft"}, description="Stage 1: LoRA SFT of the LLM recommender (completion-only loss).")
def llm_sft(context: dg.AssetExecutionContext, config: LLMSFTConfig, recalign: RecalignHome,
            dataset: DatasetResource) -> dg.MaterializeResult:
    return _result(sft_stage(*_home(recalign, dataset), config.track()))


def _preference(config, recalign, dataset, method: str, **extra) -> dg.MaterializeResult:
    from training.llm.trainers import PreferenceStageConfig

    track = config.track()
    settings, name = _home(recalign, dataset)
    track.stage = stage_as(PreferenceStageConfig, track.stage, method=method, beta=config.beta, **extra)
    return _result(preference_stage(settings, name, track, method, config.sampler, config.topk,
                                    getattr(config, "hardness_topk", 10)))


@dg.asset(deps=["llm_sft"], group_name="llm", owners=OWNERS, kinds={"pytorch", "trl"},
          description="Stage 2: DPO against the frozen SFT adapter; rejected titles from the configured sampler.")
def llm_dpo(context: dg.AssetExecutionContext, config: LLMDPOConfig, recalign: RecalignHome,
            dataset: DatasetResource) -> dg.MaterializeResult:
    return _preference(config, recalign, dataset, "dpo")


@dg.asset(deps=["llm_sft", "item_text"], group_name="llm", owners=OWNERS, kinds={"pytorch", "trl"},
          description="Stage 2: HaNoRec = DPO with HaRS per-pair beta (hardness x responsiveness) and NoDO LoRA noise.")
def llm_hanorec(context: dg.AssetExecutionContext, config: LLMHaNoRecConfig, recalign: RecalignHome,
                dataset: DatasetResource) -> dg.MaterializeResult:
    return _preference(config, recalign, dataset, "hanorec", hardness_gamma=config.hardness_gamma,
                       responsiveness_alpha=config.responsiveness_alpha, noise_sigma=config.noise_sigma)


@dg.asset(deps=["llm_sft"], group_name="llm", owners=OWNERS, kinds={"pytorch", "trl"},
          description="Stage 2: GRPO with MSPA's hybrid reward (accuracy + format + similarity).")
def llm_grpo(context: dg.AssetExecutionContext, config: LLMGRPOConfig, recalign: RecalignHome,
             dataset: DatasetResource) -> dg.MaterializeResult:
    track = config.track()
    from training.llm.trainers import GRPOStageConfig

    track.stage = stage_as(GRPOStageConfig, track.stage, num_generations=config.num_generations,
                           max_completion_length=config.max_completion_length)
    weights = RewardWeights(config.accuracy_weight, config.format_weight, config.similarity_weight)
    return _result(grpo_stage(*_home(recalign, dataset), track, weights))


@dg.asset(deps=["llm_sft", "llm_dpo", "llm_hanorec", "llm_grpo"], group_name="llm", owners=OWNERS,
          kinds={"duckdb"}, description="1 + 20 candidates per test user: AUC, HR@K, NDCG@K for zero-shot and every stage.")
def llm_eval(context: dg.AssetExecutionContext, config: LLMEvalConfig, recalign: RecalignHome,
             dataset: DatasetResource) -> dg.MaterializeResult:
    track = config.track()
    track.eval_users = config.eval_users
    out = evaluate_track(*_home(recalign, dataset), track, config.split)
    import pandas as pd

    table = pd.DataFrame([{"model": k, **{m: v for m, v in r.items() if m != "run_id"}} for k, r in out.items()])
    return dg.MaterializeResult(metadata={"metrics": md_table(table), "models": len(out),
                                          "protocol": "sampled_21 (1 positive + 20 seeded negatives)"})


assets = [llm_sft, llm_dpo, llm_hanorec, llm_grpo, llm_eval]
