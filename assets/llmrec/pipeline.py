"""The LLM track's stages over the warehouse: build rows, call training.llm, register adapters, log metrics."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from recalign.popularity import item_counts
from recalign.settings import Settings
from training.llm.base import resolve_model
from training.llm.prompt import Example, prompt_text
from training.llm.scoring import evaluate_examples, metrics_from_scores, score_titles
from training.llm.trainers import (
    GRPOStageConfig,
    PreferenceStageConfig,
    StageConfig,
    load_adapter,
    load_base,
    run_grpo,
    run_preference,
    run_sft,
)
from training.smoke import SMOKE_LLM_USERS, small

from .data import LLMData, eval_examples, train_examples

FAMILY, PROTOCOL = "llm", "sampled_21"
STAGES = ("llm_sft", "llm_dpo", "llm_hanorec", "llm_grpo")
EVAL_VARIANTS = ("popularity", "zero_shot", *STAGES)


@dataclass
class TrackConfig:
    """Data for every stage: which base model, which users, how many negatives in training prompts."""

    base_model: str = "smollm2"
    n_users: int | None = 300
    seed: int = 0
    train_negatives: int = 4
    targets_per_user: int = 2
    history_len: int = 5
    item_notes: bool = False  # candidate item summaries in the prompt (longer prompts; on by default on GPUs)
    eval_users: int | None = None  # evaluate on the first n sampled users (None: all of them)
    stage: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self):
        self.n_users = small(self.n_users, SMOKE_LLM_USERS)
        self.eval_users = small(self.eval_users, SMOKE_LLM_USERS)

    def example_kw(self) -> dict:
        return {"history_len": self.history_len, "with_notes": self.item_notes}


def _context(settings: Settings, dataset: str, cfg: TrackConfig):
    from transformers import AutoTokenizer

    path, model_id = resolve_model(cfg.base_model, settings.models_dir)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = LLMData.load(settings.warehouse(dataset), cfg.n_users, cfg.seed)
    return path, model_id, tok, data


def _register(settings: Settings, dataset: str, name: str, out_dir: Path, card: dict):
    return settings.registry(dataset).register(name, out_dir, card)


def _latest(settings: Settings, dataset: str, name: str):
    v = settings.registry(dataset).latest(name)
    if v is None:
        raise RuntimeError(f"no {name} model for {dataset!r} yet: materialise {name} first")
    return v


def sft_stage(settings: Settings, dataset: str, cfg: TrackConfig) -> dict:
    path, model_id, tok, data = _context(settings, dataset, cfg)
    exs = train_examples(data, cfg.train_negatives, cfg.targets_per_user, cfg.seed, **cfg.example_kw())
    rows = [{"prompt": prompt_text(tok, e), "completion": e.answer} for e in exs]
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_sft(path, tok, rows, Path(tmp), cfg.stage)
        v = _register(
            settings, dataset, "llm_sft", Path(tmp), {"base_model": model_id, "users": len(data.users), **_card(stats)}
        )
    return {**_card(stats), "version": v.version, "path": str(v.path)}


def stochastic_topk_rejected(model, tok, ex: Example, k: int, rng: np.random.Generator) -> int:
    """RoDPO Eq. 4 on the candidate list: uniform among the SFT model's top-K non-target candidates."""
    scores = score_titles(model, tok, prompt_text(tok, ex), ex.candidates)
    order = [i for i in np.argsort(-scores, kind="stable") if i != ex.target][:k]
    return int(rng.choice(order))


def random_rejected(ex: Example, rng: np.random.Generator) -> int:
    return int(rng.choice([i for i in range(len(ex.candidates)) if i != ex.target]))


def item_hardness(settings: Settings, dataset: str, pairs: list[tuple[int, int]], k: int) -> list[float]:
    """HaRS hardness: overlap of the Top-K neighbourhoods (item_text vectors in LanceDB) of chosen and rejected."""
    from training.llm.hanorec import neighbourhood_hardness

    store = settings.vectors(dataset)
    if not store.has("item_text"):
        raise RuntimeError("HaNoRec needs the item_text embedding table: materialise item_text first")
    n = max(max(p) for p in pairs)
    mat, _ = store.matrix("item_text", max(n, int(store.keys("item_text")["id"].max())))
    ids = sorted({i for p in pairs for i in p})
    sims = mat[ids] @ mat.T
    sims[np.arange(len(ids)), ids] = -np.inf  # an item is not its own neighbour
    sims[:, 0] = -np.inf
    top = {i: set(np.argpartition(-s, k)[:k].tolist()) for i, s in zip(ids, sims)}
    return neighbourhood_hardness([top[c] for c, _ in pairs], [top[r] for _, r in pairs], k).tolist()


def preference_rows(
    settings: Settings,
    dataset: str,
    cfg: TrackConfig,
    pcfg: PreferenceStageConfig,
    tok,
    data: LLMData,
    path: str,
    sft_path: Path,
) -> list[dict]:
    """(prompt, chosen, rejected[, hardness]) rows; the rejected title from `pcfg.sampler`."""
    method, sampler, topk, hardness_k = pcfg.method, pcfg.sampler, pcfg.topk, pcfg.hardness_topk
    exs = train_examples(data, cfg.train_negatives, cfg.targets_per_user, cfg.seed, **cfg.example_kw())
    rng = np.random.default_rng(cfg.seed)
    if sampler == "stochastic_topk":
        sft = load_adapter(path, sft_path).eval()
        rejected = [
            stochastic_topk_rejected(sft, tok, e, topk, rng)
            for e in tqdm(exs, desc="stochastic top-K negatives (SFT scores)", unit="question")
        ]
        del sft
    elif sampler == "random":
        rejected = [random_rejected(e, rng) for e in exs]
    else:
        raise ValueError(f"unknown sampler {sampler!r}: random or stochastic_topk")
    rows = [
        {"prompt": prompt_text(tok, e), "chosen": e.answer, "rejected": e.candidates[r]} for e, r in zip(exs, rejected)
    ]
    if method == "hanorec":
        pairs = [(e.candidate_ids[e.target], e.candidate_ids[r]) for e, r in zip(exs, rejected)]
        for row, h in zip(rows, item_hardness(settings, dataset, pairs, hardness_k)):
            row["hardness"] = h
    return rows


def preference_stage(settings: Settings, dataset: str, cfg: TrackConfig) -> dict:
    """DPO or HaNoRec (cfg.stage.method) on the newest SFT adapter."""
    pcfg = cfg.stage
    if not isinstance(pcfg, PreferenceStageConfig):
        raise TypeError(f"a preference stage needs a PreferenceStageConfig, got {type(pcfg).__name__}")
    method, sampler = pcfg.method, pcfg.sampler
    path, model_id, tok, data = _context(settings, dataset, cfg)
    sft = _latest(settings, dataset, "llm_sft")
    rows = preference_rows(settings, dataset, cfg, pcfg, tok, data, path, sft.path)
    hard = [r["hardness"] for r in rows if "hardness" in r]
    info = {"sampler": sampler, "mean_hardness": round(float(np.mean(hard)), 4) if hard else None}
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_preference(path, tok, sft.path, rows, Path(tmp), pcfg)
        v = _register(
            settings,
            dataset,
            f"llm_{method}",
            Path(tmp),
            {"base_model": model_id, "sft_version": sft.version, **info, **_card(stats)},
        )
    return {**_card(stats), "version": v.version, **info}


def grpo_stage(settings: Settings, dataset: str, cfg: TrackConfig) -> dict:
    """GRPO (cfg.stage, a GRPOStageConfig: generations, reward weights) on the newest SFT adapter."""
    from assets.embeddings.pipeline import text_encoder

    path, model_id, tok, data = _context(settings, dataset, cfg)
    sft = _latest(settings, dataset, "llm_sft")
    exs = train_examples(data, cfg.train_negatives, cfg.targets_per_user, cfg.seed, **cfg.example_kw())
    enc = text_encoder()
    answer_vecs = enc.encode([e.answer for e in exs])
    rows = [
        {"prompt": prompt_text(tok, e), "answer": e.answer, "candidates": e.candidates, "answer_vec": v.tolist()}
        for e, v in zip(exs, answer_vecs)
    ]
    gcfg = cfg.stage
    if not isinstance(gcfg, GRPOStageConfig):
        raise TypeError(f"the GRPO stage needs a GRPOStageConfig, got {type(gcfg).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_grpo(path, tok, sft.path, rows, Path(tmp), gcfg, enc.encode)
        v = _register(
            settings,
            dataset,
            "llm_grpo",
            Path(tmp),
            {"base_model": model_id, "sft_version": sft.version, **_card(stats)},
        )
    return {**_card(stats), "version": v.version}


def popularity_scores(settings: Settings, dataset: str, exs: list[Example]) -> list[np.ndarray]:
    """Each candidate's number of training interactions over all users (what sampled negatives reward)."""
    counts = item_counts(settings.warehouse(dataset)).astype(np.float64)
    return [counts[np.asarray(e.candidate_ids, dtype=np.int64)] for e in exs]


def evaluate_track(
    settings: Settings, dataset: str, cfg: TrackConfig, split: str = "test", variants: tuple[str, ...] = EVAL_VARIANTS
) -> dict:
    """Score 1 + 20 candidates per user for popularity, the base model and every trained stage; metrics into the store."""
    path, model_id, tok, data = _context(settings, dataset, cfg)
    exs = eval_examples(data, split, cfg.seed, **cfg.example_kw())[: cfg.eval_users]
    reg, store, out = settings.registry(dataset), settings.metrics(), {}
    n_train = data.seqs[data.seqs["split"] == "train"].groupby("user_id").size()
    lengths = np.array([int(n_train.get(e.user_id, 0)) for e in exs])  # per-user ranks for paired tests
    for variant in variants:
        t0 = time.perf_counter()
        if variant == "popularity":  # the reference row: no model, training-interaction counts
            version, res = None, metrics_from_scores(exs, popularity_scores(settings, dataset, exs))
        else:
            version = None if variant == "zero_shot" else reg.latest(variant)
            if variant != "zero_shot" and version is None:
                continue
            model = load_base(path) if version is None else load_adapter(path, version.path)
            res = evaluate_examples(model, tok, exs, desc=f"{variant} ({split})")
        secs = time.perf_counter() - t0
        run = store.new_run(
            FAMILY,
            variant.removeprefix("llm_"),
            dataset,
            {
                "base_model": model_id,
                "users": len(exs),
                "split": split,
                "adapter_version": version.version if version else None,
            },
        )
        store.log_metrics(run, split, res["metrics"], PROTOCOL)
        store.log_ranks(run, split, np.array([e.user_id for e in exs]), res["ranks"], lengths)
        store.finish_run(run, str(version.path) if version else None)
        out[variant] = {
            **{k: round(v, 4) for k, v in res["metrics"].items()},
            "seconds": round(secs, 1),
            "candidates_per_s": round(len(exs) * len(exs[0].candidates) / secs, 2),
            "run_id": run,
        }
    return out


def _card(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("history", "config")} | {
        "final_loss": stats["history"][-1]["loss"] if stats.get("history") else None
    }
