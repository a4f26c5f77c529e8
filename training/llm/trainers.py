"""LLM track stages on trl: LoRA SFT (completion-only), then DPO / HaNoRec / GRPO with the SFT adapter as reference.

Every stage takes plain rows (dicts) and paths, and writes a peft adapter (safetensors + JSON config). On a GPU the
same entry points run under DeepSpeed ZeRO (infra/deepspeed/*.json) with bf16; on a CPU without DeepSpeed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..smoke import SMOKE_LLM_BATCH, smoke
from .rewards import RewardWeights, mspa_rewards, yes_no_reward

ENGINES = ("grouped", "trl")


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: int | None = None  # None: 2 * r
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha or 2 * self.r,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


@dataclass
class StageConfig:
    """What every stage shares: optimisation, batch, precision, DeepSpeed on GPUs."""

    epochs: float = 1.0
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    seed: int = 42
    max_steps: int = -1
    deepspeed: str | None = None  # a ZeRO config under infra/deepspeed; used only where CUDA exists
    logging_steps: int = 5
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0  # 0: no clipping
    gradient_checkpointing: bool = False  # trl turns it on by default; on small models it only costs time
    engine: Literal["grouped", "trl"] = "grouped"  # grouped: our question-group trainer; trl: trl's trainers
    # (listwise only: one prompt per row)
    shared_prefix: bool = True  # grouped engine: a question's prompt prefix encoded once for all its continuations
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self):
        if smoke():
            self.max_steps = 1
            self.batch_size = min(self.batch_size, SMOKE_LLM_BATCH)
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: one of {', '.join(ENGINES)}")

    def trainer_kwargs(self, out_dir: Path) -> dict:
        cuda = torch.cuda.is_available()
        return {
            "output_dir": str(out_dir),
            "num_train_epochs": self.epochs,
            "learning_rate": self.lr,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "max_steps": self.max_steps,
            "seed": self.seed,
            "data_seed": self.seed,
            "logging_steps": self.logging_steps,
            "save_strategy": "no",
            "report_to": [],
            "bf16": cuda and torch.cuda.is_bf16_supported(),
            "use_cpu": not cuda,
            "deepspeed": self.deepspeed if cuda else None,
            "dataloader_num_workers": 0,
            "lr_scheduler_type": "cosine",
            "gradient_checkpointing": self.gradient_checkpointing,
            "optim": self.optim,
            "max_grad_norm": self.max_grad_norm,
            "warmup_steps": 0,
            "remove_unused_columns": True,
        }


@dataclass
class SFTStageConfig(StageConfig):
    lr: float = 5e-4
    epochs: float = 2.0


@dataclass
class PreferenceStageConfig(StageConfig):
    """Stage 2 on pairs: `dpo` (trl sigmoid loss) or `hanorec` (HaRS beta + NoDO noise)."""

    method: Literal["dpo", "hanorec"] = "dpo"
    beta: float = 0.1
    lr: float = 5e-5
    sampler: Literal["random", "stochastic_topk"] = "stochastic_topk"  # the rejected title: uniform, or drawn from
    # the SFT model's top-K candidates
    topk: int = 3
    hardness_topk: int = 1000  # HaNoRec: Top-K neighbourhoods whose overlap is a pair's hardness (at most 5% of
    # the catalogue); the paper's 10 gives nearly every pair hardness 0 on MicroLens (docs/results.md)
    hardness_source: str = "auto"  # the neighbourhoods: text, cooccurrence, seqrec (the published sequential
    # model's item embeddings), or auto (seqrec when published, else text)
    hardness_gamma: float = 0.5
    responsiveness_alpha: float = 0.5
    noise_sigma: float = 0.05


@dataclass
class GRPOStageConfig(StageConfig):
    lr: float = 2e-5
    num_generations: int = 4
    max_completion_length: int = 24
    temperature: float = 1.0
    weights: RewardWeights = field(default_factory=RewardWeights)


def load_base(model_path: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=False, dtype=dtype)


def load_adapter(model_path: str, adapter: str | Path, trainable: bool = False):
    """The base model with a saved LoRA adapter (trainable: stage 2 continues from it; trl keeps a frozen copy)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(model_path), str(adapter), is_trainable=trainable)


def _dataset(rows: Sequence[dict]):
    from datasets import Dataset

    return Dataset.from_list(list(rows))


def _finish(trainer, out_dir: Path, extra: dict) -> dict:
    from .callbacks import StepTimer

    timer = StepTimer()
    trainer.add_callback(timer)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    trainer.save_model(str(out_dir))  # the adapter only: adapter_model.safetensors + adapter_config.json
    (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)  # a pickle: never an artifact here; JSON instead
    (Path(out_dir) / "training_args.json").write_text(trainer.args.to_json_string())
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        **extra,
        "seconds": round(seconds, 2),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "history": history,
        "train_tokens": int(getattr(trainer, "example_tokens", 0) or getattr(trainer, "_total_train_tokens", 0) or 0),
        "computed_tokens": int(getattr(trainer, "computed_tokens", 0) or 0) or None,
        "step_seconds_median": round(float(np.median(timer.times[1:] or timer.times)), 3) if timer.times else None,
    }
    (Path(out_dir) / "training.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def run_sft(model_path: str, tok, rows: Sequence[dict], out_dir: Path, cfg: SFTStageConfig) -> dict:
    """Stage 1: LoRA SFT on question groups {prefix, contexts, completions}; the loss is on the completions only."""
    extra = {"stage": "sft", "examples": len(rows), "config": asdict(cfg)}
    if cfg.engine == "grouped":
        from peft import get_peft_model

        model = get_peft_model(load_base(model_path), cfg.lora.peft())
        return _finish(_grouped(model, tok, rows, out_dir, cfg, "sft"), out_dir, extra)
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**cfg.trainer_kwargs(out_dir), completion_only_loss=True, max_length=cfg.max_length, packing=False)
    trainer = SFTTrainer(
        model=load_base(model_path),
        args=args,
        train_dataset=_dataset(trl_rows(tok, rows)),
        processing_class=tok,
        peft_config=cfg.lora.peft(),
    )
    return _finish(trainer, out_dir, extra)


def trl_rows(tok, rows: Sequence[dict]) -> list[dict]:
    """Listwise groups as trl's rows: {prompt, completion} or {prompt, chosen, rejected[, hardness]} (trl adds EOS)."""
    out = []
    for r in rows:
        if any(r["contexts"]):
            raise ValueError("the trl engine takes listwise rows only (one prompt per row): use engine='grouped'")
        done = [c.removesuffix(tok.eos_token or "") for c in r["completions"]]
        if "pairs" not in r:
            out.append({"prompt": r["prefix"], "completion": done[0]})
            continue
        for (c, j), h in zip(r["pairs"], r.get("hardness", [None] * len(r["pairs"]))):
            out.append(
                {"prompt": r["prefix"], "chosen": done[c], "rejected": done[j]}
                | ({"hardness": h} if h is not None else {})
            )
    return out


def _grouped(model, tok, rows: Sequence[dict], out_dir: Path, cfg: StageConfig, objective: str):
    """A GroupedTrainer over `rows` (the reference log-probabilities attached first for the preference stages)."""
    from transformers import TrainingArguments

    from .grouped import GroupedTrainer, attach_reference, train_groups

    groups, pad = train_groups(tok, rows), tok.pad_token_id or 0
    if objective != "sft":
        attach_reference(model, groups, cfg.shared_prefix, pad)
    args = TrainingArguments(**{**cfg.trainer_kwargs(out_dir), "remove_unused_columns": False})
    knobs = {}
    if isinstance(cfg, PreferenceStageConfig):
        knobs = {
            "beta": cfg.beta,
            "hardness_gamma": cfg.hardness_gamma,
            "responsiveness_alpha": cfg.responsiveness_alpha,
        }
    trainer = GroupedTrainer(model=model, args=args, train_dataset=groups, objective=objective,
                             shared_prefix=cfg.shared_prefix, pad_id=pad, **knobs)  # fmt: skip
    if objective == "hanorec":
        from .hanorec import lora_noise

        lora_noise(model, cfg.noise_sigma)
    return trainer


def run_preference(
    model_path: str, tok, sft_adapter: Path, rows: Sequence[dict], out_dir: Path, cfg: PreferenceStageConfig
) -> dict:
    """Stage 2 on question groups with (chosen, rejected) pairs; policy and reference both start from the SFT adapter."""
    if cfg.method not in ("dpo", "hanorec"):
        raise ValueError(f"unknown preference method {cfg.method!r}: dpo or hanorec")
    extra = {"stage": cfg.method, "pairs": sum(len(r["pairs"]) for r in rows), "config": asdict(cfg)}
    policy = load_adapter(model_path, sft_adapter, trainable=True)
    if cfg.engine == "grouped":
        return _finish(_grouped(policy, tok, rows, out_dir, cfg, cfg.method), out_dir, extra)
    from trl import DPOConfig, DPOTrainer

    from .hanorec import HaNoRecConfig, HaNoRecTrainer

    common = dict(
        **cfg.trainer_kwargs(out_dir), beta=cfg.beta, max_length=cfg.max_length, precompute_ref_log_probs=False
    )
    data = _dataset(trl_rows(tok, rows))
    if cfg.method == "dpo":
        trainer = DPOTrainer(model=policy, args=DPOConfig(**common), train_dataset=data, processing_class=tok)
    else:
        args = HaNoRecConfig(
            **common,
            hardness_gamma=cfg.hardness_gamma,
            responsiveness_alpha=cfg.responsiveness_alpha,
            noise_sigma=cfg.noise_sigma,
        )
        trainer = HaNoRecTrainer(model=policy, args=args, train_dataset=data, processing_class=tok)
    return _finish(trainer, out_dir, extra)


def run_grpo(
    model_path: str,
    tok,
    sft_adapter: Path,
    rows: Sequence[dict],
    out_dir: Path,
    cfg: GRPOStageConfig,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> dict:
    """Stage 2 with trl's GRPOTrainer. Listwise rows {prompt, answer, candidates, answer_vec}: MSPA's hybrid reward
    (accuracy + format + similarity; `encode` embeds generated answers). Pointwise rows {prompt, answer}: the
    Yes/No answer's accuracy."""
    from trl import GRPOConfig, GRPOTrainer

    pointwise = "candidates" not in rows[0]
    funcs = [yes_no_reward] if pointwise else mspa_rewards(encode)

    args = GRPOConfig(
        **cfg.trainer_kwargs(out_dir),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        reward_weights=[1.0] if pointwise else cfg.weights.as_list(),
        beta=0.0,
    )
    args.per_device_train_batch_size = max(cfg.batch_size, cfg.num_generations)
    args.remove_unused_columns = False  # the reward functions read answer, candidates and answer_vec
    trainer = GRPOTrainer(
        model=load_adapter(model_path, sft_adapter, trainable=True),
        args=args,
        reward_funcs=funcs,
        train_dataset=_dataset(rows),
        processing_class=tok,
    )
    return _finish(trainer, out_dir, {"stage": "grpo", "prompts": len(rows), "config": asdict(cfg)})
