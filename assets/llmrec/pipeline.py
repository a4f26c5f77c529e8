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
from training.llm import pointwise, prompt
from training.llm.base import resolve_model
from training.llm.prompt import Example, prompt_text
from training.llm.scoring import candidate_scores, metrics_from_scores
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
EVAL_VARIANTS = ("popularity", "seqrec", "zero_shot", *STAGES)
FORMULATIONS = {"listwise": prompt, "pointwise": pointwise}  # each: sft_group, pair_group, PROMPT_VERSION


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
    formulation: str = "listwise"  # listwise: a candidate list -> a title; pointwise: one candidate -> Yes/No
    eval_users: int | None = None  # evaluate on the first n sampled users (None: all of them)
    stage: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self):
        self.n_users = small(self.n_users, SMOKE_LLM_USERS)
        self.eval_users = small(self.eval_users, SMOKE_LLM_USERS)
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"unknown formulation {self.formulation!r}: one of {', '.join(FORMULATIONS)}")

    def example_kw(self) -> dict:
        return {"history_len": self.history_len, "with_notes": self.item_notes}

    @property
    def prompts(self):
        """The formulation's module: its groups for SFT and preference pairs, its prompt version."""
        return FORMULATIONS[self.formulation]

    def model_name(self, stage: str) -> str:
        """Registry name of a stage's adapter: llm_sft (listwise), llm_sft_pointwise, ..."""
        return stage if self.formulation == "listwise" else f"{stage}_{self.formulation}"


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
    rows = [cfg.prompts.sft_group(tok, e) for e in exs]
    card = {"base_model": model_id, "users": len(data.users), **_formulation_card(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_sft(path, tok, rows, Path(tmp), cfg.stage)
        v = _register(settings, dataset, cfg.model_name("llm_sft"), Path(tmp), {**card, **_card(stats)})
    return {**_card(stats), "version": v.version, "path": str(v.path)}


def _formulation_card(cfg: TrackConfig) -> dict:
    return {"formulation": cfg.formulation, "prompt_version": cfg.prompts.PROMPT_VERSION}


def stochastic_topk_rejected(model, tok, ex: Example, k: int, rng: np.random.Generator, formulation: str) -> int:
    """RoDPO Eq. 4 on the candidates: uniform among the SFT model's top-K non-target candidates."""
    scores = candidate_scores(model, tok, ex, formulation)
    order = [i for i in np.argsort(-scores, kind="stable") if i != ex.target][:k]
    return int(rng.choice(order))


def random_rejected(ex: Example, rng: np.random.Generator) -> int:
    return int(rng.choice([i for i in range(len(ex.candidates)) if i != ex.target]))


HARDNESS_SOURCES = ("text", "cooccurrence", "seqrec")  # and "auto": seqrec when published, else text


def item_vectors(settings: Settings, dataset: str, source: str) -> np.ndarray:
    """[n_items + 1, d] L2-normalised item vectors of a neighbourhood source (row = item id; row 0 unused).

    text: the item_text table (LanceDB); cooccurrence: each item's column of the user x item matrix of training
    interactions (cosine of two columns = co-occurrence normalised by popularity); seqrec: the published sequential
    model's item embeddings."""
    n_items = int(settings.warehouse(dataset).read("SELECT max(item_id) AS n FROM items")["n"].iloc[0])
    if source == "text":  # items without a text vector get a zero row: no neighbours
        store = settings.vectors(dataset)
        if not store.has("item_text"):
            raise RuntimeError("hardness from text needs the item_text embedding table: materialise item_text first")
        mat, _ = store.matrix("item_text", n_items)
        return mat
    if source == "cooccurrence":  # items never in a training sequence get an empty column
        from scipy import sparse

        df = settings.warehouse(dataset).read("SELECT user_id, item_id FROM sequences WHERE split = 'train'")
        u, i = df["user_id"].to_numpy(np.int64), df["item_id"].to_numpy(np.int64)
        x = sparse.csc_matrix((np.ones(len(u), np.float32), (u, i)), shape=(u.max() + 1, n_items + 1))
        x.data[:] = 1
        norms = np.sqrt(np.asarray(x.sum(0))).ravel()
        return x.multiply(1 / np.maximum(norms, 1)).tocsc()
    if source == "seqrec":
        from training.seqrec.checkpoint import load_model

        pub = settings.registry(dataset).published()
        if pub is None:
            raise RuntimeError("hardness from seqrec needs a published sequential model: materialise published_model")
        import torch

        model, _ = load_model(pub["path"])
        with torch.no_grad():
            w = torch.cat([t.float() for t in model.item_tables().values()], 1).numpy()
        return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    raise ValueError(f"unknown hardness source {source!r}: one of {', '.join(HARDNESS_SOURCES)}")


def top_neighbours(vectors, ids: list[int], k: int) -> dict[int, set]:
    """Each item's Top-K most similar items with a positive similarity (itself and the padding id 0 excluded)."""
    if hasattr(vectors, "tocsc"):  # sparse co-occurrence columns
        sims = np.asarray((vectors[:, ids].T @ vectors).todense(), dtype=np.float32)
    else:
        sims = vectors[ids] @ vectors.T
    sims[np.arange(len(ids)), ids] = -np.inf  # an item is not its own neighbour
    sims[:, 0] = -np.inf
    top = {}
    for i, s in zip(ids, sims):
        cand = np.argpartition(-s, k)[:k]
        top[i] = set(cand[s[cand] > 0].tolist())  # ties at 0 (items never seen together) are no neighbours
    return top


def hardness_source(settings: Settings, dataset: str, source: str) -> str:
    """`auto`: the published sequential model's embeddings when there is one, else the text vectors."""
    if source != "auto":
        return source
    return "seqrec" if settings.registry(dataset).published() else "text"


def effective_topk(k: int, n_items: int) -> int:
    """The neighbourhood size used: K, at most 5% of the catalogue."""
    return max(1, min(k, n_items // 20))


def item_hardness(
    settings: Settings, dataset: str, pairs: list[tuple[int, int]], k: int, source: str = "text"
) -> list[float]:
    """HaRS hardness: overlap of the Top-K neighbourhoods (from `source`) of the chosen and rejected items; K at most
    5% of the catalogue (a neighbourhood as large as the catalogue makes every pair equally hard)."""
    from training.llm.hanorec import neighbourhood_hardness

    ids = sorted({i for p in pairs for i in p})
    vectors = item_vectors(settings, dataset, hardness_source(settings, dataset, source))
    k = effective_topk(k, vectors.shape[-1 if hasattr(vectors, "tocsc") else 0])
    top = top_neighbours(vectors, ids, k)
    return neighbourhood_hardness([top[c] for c, _ in pairs], [top[r] for _, r in pairs], k).tolist()


def hardness_summary(hardness: list[float]) -> dict:
    """Mean, spread and share of pairs with any overlap: what HaRS has to work with."""
    if not hardness:
        return {"mean_hardness": None}
    h = np.asarray(hardness)
    return {
        "mean_hardness": round(float(h.mean()), 4),
        "std_hardness": round(float(h.std()), 4),
        "nonzero_hardness": round(float((h > 0).mean()), 4),
    }


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
    """Question groups {prefix, contexts, completions, pairs[, hardness]} of the formulation; the rejected
    candidate from `pcfg.sampler`."""
    method, sampler, topk, hardness_k = pcfg.method, pcfg.sampler, pcfg.topk, pcfg.hardness_topk
    exs = train_examples(data, cfg.train_negatives, cfg.targets_per_user, cfg.seed, **cfg.example_kw())
    rng = np.random.default_rng(cfg.seed)
    if sampler == "stochastic_topk":
        sft = load_adapter(path, sft_path).eval()
        rejected = [
            stochastic_topk_rejected(sft, tok, e, topk, rng, cfg.formulation)
            for e in tqdm(exs, desc="stochastic top-K negatives (SFT scores)", unit="question")
        ]
        del sft
    elif sampler == "random":
        rejected = [random_rejected(e, rng) for e in exs]
    else:
        raise ValueError(f"unknown sampler {sampler!r}: random or stochastic_topk")
    rows = [cfg.prompts.pair_group(tok, e, r) for e, r in zip(exs, rejected)]
    if method == "hanorec":
        pairs = [(e.candidate_ids[e.target], e.candidate_ids[r]) for e, r in zip(exs, rejected)]
        for row, h in zip(rows, item_hardness(settings, dataset, pairs, hardness_k, pcfg.hardness_source)):
            row["hardness"] = [h]
    return rows


def preference_stage(settings: Settings, dataset: str, cfg: TrackConfig) -> dict:
    """DPO or HaNoRec (cfg.stage.method) on the newest SFT adapter."""
    pcfg = cfg.stage
    if not isinstance(pcfg, PreferenceStageConfig):
        raise TypeError(f"a preference stage needs a PreferenceStageConfig, got {type(pcfg).__name__}")
    method, sampler = pcfg.method, pcfg.sampler
    path, model_id, tok, data = _context(settings, dataset, cfg)
    sft = _latest(settings, dataset, cfg.model_name("llm_sft"))
    rows = preference_rows(settings, dataset, cfg, pcfg, tok, data, path, sft.path)
    hard = [h for r in rows for h in r.get("hardness", [])]
    info = {"sampler": sampler, **_formulation_card(cfg), **hardness_summary(hard)}
    if hard:
        info |= {
            "hardness_source": hardness_source(settings, dataset, pcfg.hardness_source),
            "hardness_topk": effective_topk(pcfg.hardness_topk, data.n_items + 1),
        }
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_preference(path, tok, sft.path, rows, Path(tmp), pcfg)
        v = _register(
            settings,
            dataset,
            cfg.model_name(f"llm_{method}"),
            Path(tmp),
            {"base_model": model_id, "sft_version": sft.version, **info, **_card(stats)},
        )
    return {**_card(stats), "version": v.version, **info}


def grpo_rows(tok, exs: list[Example], formulation: str, encode=None) -> list[dict]:
    """Listwise: {prompt, answer, candidates, answer_vec}; pointwise: the target (Yes) and one negative (No) per question."""
    if formulation == "pointwise":
        rows = []
        for e in exs:
            neg = next(i for i in range(len(e.candidates)) if i != e.target)  # candidates are shuffled: a random one
            rows += [
                {"prompt": pointwise.prompt_text(tok, e, i), "answer": a} for i, a in ((e.target, "Yes"), (neg, "No"))
            ]
        return rows
    vecs = encode([e.answer for e in exs])
    return [
        {"prompt": prompt_text(tok, e), "answer": e.answer, "candidates": e.candidates, "answer_vec": v.tolist()}
        for e, v in zip(exs, vecs)
    ]


def grpo_stage(settings: Settings, dataset: str, cfg: TrackConfig) -> dict:
    """GRPO (cfg.stage, a GRPOStageConfig: generations, reward weights) on the newest SFT adapter."""
    path, model_id, tok, data = _context(settings, dataset, cfg)
    sft = _latest(settings, dataset, cfg.model_name("llm_sft"))
    exs = train_examples(data, cfg.train_negatives, cfg.targets_per_user, cfg.seed, **cfg.example_kw())
    encode = None
    if cfg.formulation == "listwise":
        from assets.embeddings.pipeline import text_encoder

        encode = text_encoder().encode
    rows = grpo_rows(tok, exs, cfg.formulation, encode)
    gcfg = cfg.stage
    if not isinstance(gcfg, GRPOStageConfig):
        raise TypeError(f"the GRPO stage needs a GRPOStageConfig, got {type(gcfg).__name__}")
    card = {"base_model": model_id, "sft_version": sft.version, **_formulation_card(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_grpo(path, tok, sft.path, rows, Path(tmp), gcfg, encode)
        v = _register(settings, dataset, cfg.model_name("llm_grpo"), Path(tmp), {**card, **_card(stats)})
    return {**_card(stats), "version": v.version}


def popularity_scores(settings: Settings, dataset: str, exs: list[Example]) -> list[np.ndarray]:
    """Each candidate's number of training interactions over all users (what sampled negatives reward)."""
    counts = item_counts(settings.warehouse(dataset)).astype(np.float64)
    return [counts[np.asarray(e.candidate_ids, dtype=np.int64)] for e in exs]


def seqrec_scores(settings: Settings, dataset: str, data: LLMData, exs: list[Example], split: str):
    """The sequential track's published model on the same candidates: its score after the user's history before the
    held-out item (None when no sequential model is published)."""
    import torch

    from training.seqrec.checkpoint import load_model
    from training.seqrec.data import left_pad

    pub = settings.registry(dataset).published()
    if pub is None:
        return None, None
    model, _ = load_model(pub["path"])
    model.eval()
    seqs = {int(u): r for u, r in data.seqs.groupby("user_id")}
    out = []
    with torch.no_grad():
        for e in exs:
            rows = seqs[e.user_id]
            pos = rows.loc[rows["split"] == split, "position"].iloc[0]
            hist = rows.loc[rows["position"] < pos, "item_id"].to_numpy(np.int64)[-model.cfg.max_len :]
            seq = torch.from_numpy(left_pad([hist], model.cfg.max_len))
            out.append(model.predict(seq, torch.tensor([e.candidate_ids]))[0].float().numpy())
    return out, f"{pub['name']}/{pub['version']}"


def _variant_scores(settings, dataset, cfg, variant, path, tok, data, exs, split):
    """(scores per question, version label) of one evaluation row, or (None, None) when its model does not exist."""
    if variant == "popularity":  # the reference row: no model, training-interaction counts
        return popularity_scores(settings, dataset, exs), None
    if variant == "seqrec":
        return seqrec_scores(settings, dataset, data, exs, split)
    version = None if variant == "zero_shot" else settings.registry(dataset).latest(cfg.model_name(variant))
    if variant != "zero_shot" and version is None:
        return None, None
    model = load_base(path) if version is None else load_adapter(path, version.path)
    model.eval()
    scores = [
        candidate_scores(model, tok, e, cfg.formulation) for e in tqdm(exs, desc=f"{variant} ({split})", unit="user")
    ]
    return scores, version


def per_user(ranks: np.ndarray, n_candidates: int, k: int = 5) -> dict[str, np.ndarray]:
    """Per-user NDCG@k and AUC from the rank of the positive among 1 + n negatives (ties pessimistic)."""
    ndcg = np.where(ranks <= k, 1 / np.log2(ranks + 1), 0.0)
    return {f"ndcg@{k}": ndcg, "auc": (n_candidates - ranks) / (n_candidates - 1)}


def evaluate_track(
    settings: Settings, dataset: str, cfg: TrackConfig, split: str = "test", variants: tuple[str, ...] = EVAL_VARIANTS
) -> dict:
    """Score 1 + 20 candidates per user for popularity, the published sequential model, the base model and every
    trained stage of cfg's formulation; metrics and per-user ranks into the store; paired tests against SFT."""
    from recalign.stats import paired_test

    path, model_id, tok, data = _context(settings, dataset, cfg)
    exs = eval_examples(data, split, cfg.seed, **cfg.example_kw())[: cfg.eval_users]
    store, out, users = settings.metrics(), {}, {}
    n_train = data.seqs[data.seqs["split"] == "train"].groupby("user_id").size()
    lengths = np.array([int(n_train.get(e.user_id, 0)) for e in exs])  # per-user ranks for paired tests
    for variant in variants:
        t0 = time.perf_counter()
        scores, version = _variant_scores(settings, dataset, cfg, variant, path, tok, data, exs, split)
        if scores is None:
            continue
        res, secs = metrics_from_scores(exs, scores), time.perf_counter() - t0
        name = variant if variant in ("popularity", "seqrec", "zero_shot") else cfg.model_name(variant)
        label = version if isinstance(version, str) or version is None else version.version
        params = {"base_model": model_id, "users": len(exs), "split": split, "adapter_version": label}
        run = store.new_run(FAMILY, name.removeprefix("llm_"), dataset, {**params, **_formulation_card(cfg)})
        store.log_metrics(run, split, res["metrics"], PROTOCOL)
        store.log_ranks(run, split, np.array([e.user_id for e in exs]), res["ranks"], lengths)
        store.finish_run(run, str(version.path) if hasattr(version, "path") else label)
        users[variant] = per_user(res["ranks"], len(exs[0].candidates))
        out[variant] = {
            **{k: round(v, 4) for k, v in res["metrics"].items()},
            "seconds": round(secs, 1),
            "candidates_per_s": round(len(exs) * len(exs[0].candidates) / secs, 2),
            "run_id": run,
        }
    if "llm_sft" in users:
        for variant, u in users.items():
            if variant != "llm_sft":
                out[variant]["vs_sft"] = {m: _rounded(paired_test(u[m], users["llm_sft"][m])) for m in u}
    return out


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def _card(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("history", "config")} | {
        "final_loss": stats["history"][-1]["loss"] if stats.get("history") else None
    }
