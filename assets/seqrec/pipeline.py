"""Plain functions behind the sequential-track assets: data in, trained + evaluated model out."""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from assets.embeddings.pipeline import feature_matrix
from recalign.markdown import markdown_table
from recalign.metrics_store import MetricsStore
from recalign.popularity import item_counts
from recalign.settings import Settings
from recalign.warehouse import SequenceData, Warehouse, load_sequences
from training.metrics import metrics_from_ranks
from training.seqrec.checkpoint import load_model, save_model
from training.seqrec.data import EvalSet, training_windows
from training.seqrec.distributed import is_main, rank_and_world
from training.seqrec.ensemble import SnapshotEnsemble, trained_member
from training.seqrec.evaluate import full_ranking_ranks
from training.seqrec.model import MultimodalSASRec, SeqRecConfig
from training.seqrec.recipe import get_recipe, run_name
from training.seqrec.trainer import SeqRecDPOConfig, SeqRecTrainConfig, SeqRecTrainer
from training.seqrec.transitions import add_markov_prior, without_prior
from training.seqrec.warmstart import warm_start_ids
from training.smoke import SMOKE_USERS, smoke

FAMILY = "seqrec"


@dataclass
class SeqRecData:
    seq: SequenceData
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    valid: EvalSet
    test: EvalSet
    text: torch.Tensor | None
    image: torch.Tensor | None
    attributes: torch.Tensor | None = None  # (n_items + 1, max attributes) ids, 0 = padding
    attribute_names: list[str] | None = None
    item_counts: np.ndarray | None = None  # training interactions per item (popularity)


def attribute_matrix(wh: Warehouse, n_items: int) -> tuple[torch.Tensor, list[str]]:
    """Each item's attributes (the `categories` field split on ' | ': brand, category levels, genres) as ids 1..A.

    Ids follow the sorted attribute names, so the same catalogue always gives the same matrix."""
    df = wh.read(
        f"SELECT item_id, categories FROM items WHERE categories IS NOT NULL AND item_id <= {int(n_items)} "
        "ORDER BY item_id"
    )
    lists = [[a.strip() for a in c.split(" | ") if a.strip()] for c in df["categories"]]
    names = sorted({a for row in lists for a in row})
    ids = {a: i + 1 for i, a in enumerate(names)}
    out = torch.zeros(n_items + 1, max((len(r) for r in lists), default=1) or 1, dtype=torch.long)
    for item, row in zip(df["item_id"].to_numpy(), lists):
        out[item, : len(row)] = torch.tensor([ids[a] for a in row], dtype=torch.long)
    return out, names


def load_data(
    settings: Settings, dataset: str, max_len: int, modalities: list[str] | None = None, attributes: bool = False
) -> SeqRecData:
    wh = settings.warehouse(dataset)
    seq = load_sequences(wh)
    if smoke():
        seq = seq.first_users(SMOKE_USERS)
    x, y = training_windows(seq.train, max_len)
    mods = modalities or ["id"]
    text = feature_matrix(settings, dataset, "item_text", seq.n_items) if "text" in mods else None
    image = feature_matrix(settings, dataset, "item_image", seq.n_items) if "image" in mods else None
    attrs, names = attribute_matrix(wh, seq.n_items) if attributes else (None, None)
    return SeqRecData(
        seq,
        x,
        y,
        EvalSet.build(seq.history("valid"), seq.valid, seq.user_ids, max_len),
        EvalSet.build(seq.history("test"), seq.test, seq.user_ids, max_len),
        None if text is None else torch.from_numpy(text),
        None if image is None else torch.from_numpy(image),
        attrs,
        names,
        item_counts(wh),
    )


def available_modalities(data: SeqRecData, wanted: list[str]) -> list[str]:
    """A missing modality (no text or no image vectors) simply drops its term."""
    have = {"id": True, "text": data.text is not None, "image": data.image is not None}
    mods = [m for m in wanted if have.get(m)]
    return mods or ["id"]


def upstream_versions(settings: Settings, dataset: str) -> dict:
    """What the run was trained on: raw-data fingerprint, sequences build, vector table versions."""
    wh = settings.warehouse(dataset)
    info = wh.info()
    out = {"raw_fingerprint": info.get("raw_fingerprint"), "tables_built_at": info.get("built_at")}
    if wh.has_table("sequence_stats"):
        out["sequences"] = wh.read("SELECT * FROM sequence_stats").iloc[0].to_dict()
    store = settings.vectors(dataset)
    for table in ("item_text", "item_image"):
        if store.has(table):
            out[f"{table}_version"] = int(store.open(table).version)
    return out


def evaluate_and_log(model, data: SeqRecData, store: MetricsStore, run_id: str) -> dict:
    out = {}
    for split, es in (("valid", data.valid), ("test", data.test)):
        t0 = time.perf_counter()
        ranks = full_ranking_ranks(model, es)
        metrics = metrics_from_ranks(ranks)
        store.log_metrics(run_id, split, metrics, protocol="full_ranking")
        store.log_ranks(
            run_id,
            split,
            es.user_ids,
            ranks,
            np.array([len(h) for h in es.histories]),
            data.item_counts[es.targets.numpy()],
        )
        out[split] = metrics | {"eval_seconds": round(time.perf_counter() - t0, 2), "users": len(ranks)}
    return out


@torch.no_grad()
def score_samples(
    model, data: SeqRecData, k: int, sampler: str = "stochastic_topk", n: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of positives and of sampled hard negatives on test contexts (RoDPO Fig. 4)."""
    from training.seqrec.samplers import SAMPLERS

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.test.targets), generator=g)[:n]
    model.eval()
    scores = model.full_sort_predict(data.test.inputs[idx])
    tgt = data.test.targets[idx]
    neg = SAMPLERS[sampler](scores, tgt, k=k, generator=g)
    return scores.gather(1, tgt[:, None]).squeeze(1).numpy(), scores.gather(1, neg[:, None]).squeeze(1).numpy()


def train_stage(
    settings: Settings,
    dataset: str,
    model_cfg: dict,
    train_cfg: SeqRecTrainConfig | SeqRecDPOConfig,
    variant: str | None = None,
    reference: tuple[str, str] | None = None,
    data: SeqRecData | None = None,
    upstream: dict | None = None,
    log=print,
    init: tuple[str, str] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict:
    """Train one stage, register the model, write metrics; returns a summary for asset metadata.

    model_cfg: SeqRecConfig fields of a new model; missing ones take the default recipe's values.
    variant: the registry name; None: `run_name` of the model as built (its modalities after missing ones dropped).
    reference: (registry name, version) of the stage-1 model (policy init + frozen reference) for DPO.
    init: (registry name, version) of a model to continue training from (same architecture), no reference.
    checkpoint_dir: where the training state is kept after every epoch, so a run started again resumes (default:
    a temporary folder). Under torchrun every rank trains; rank 0 alone writes the run, the metrics and the model.
    """
    t0 = time.perf_counter()
    registry, store = settings.registry(dataset), settings.metrics()
    ref_model, model, late = None, None, None
    if reference is not None:  # an ensemble SFT: stage 2 trains its best member, then mixes in its late one
        ref_model, _ = load_model(registry.get(*reference).path)
        ref_model = without_prior(ref_model)  # stage 2 trains the learnt model; its prior is chosen again after
        if isinstance(ref_model, SnapshotEnsemble):
            ref_model, late = ref_model.best, ref_model.late
        model = copy.deepcopy(ref_model)
    elif init is not None:
        model = trained_member(load_model(registry.get(*init).path)[0])  # the learnt weights, without a prior
    model_cfg = get_recipe("default").model_config(**model_cfg) if model is None else model.cfg.to_dict()
    wanted = list(model_cfg["modalities"])
    if data is None:  # a loaded model carries its own text / image / attribute features
        data = load_data(
            settings,
            dataset,
            model_cfg["max_len"],
            *((wanted, model_cfg["attributes"]) if model is None else (["id"], False)),
        )
    if model is None:
        torch.manual_seed(train_cfg.seed)  # the initial weights
        mods = available_modalities(data, wanted)
        if model_cfg["attributes"] and data.attributes is None:
            raise ValueError(
                f"{dataset}: attributes asked for, but the data was loaded without them (load_data(attributes=True))"
            )
        # like a missing modality, attributes drop out where the catalogue has none (or there is no id modality)
        attrs = data.attributes if model_cfg["attributes"] and "id" in mods and data.attribute_names else None
        cfg = SeqRecConfig(
            **{
                **model_cfg,
                "n_items": data.seq.n_items,
                "modalities": mods,
                "text_dim": data.text.shape[1] if "text" in mods else 0,
                "image_dim": data.image.shape[1] if "image" in mods else 0,
                "attributes": attrs is not None,
                "n_attributes": len(data.attribute_names) if attrs is not None else 0,
            }
        )
        model = MultimodalSASRec(
            cfg,
            text=data.text if "text" in mods else None,
            image=data.image if "image" in mods else None,
            attributes=attrs,
        )
        warm_start_ids(model, data.seq.train)
        model_cfg = cfg.to_dict()
    config = {
        "model": model_cfg,
        "train": asdict(train_cfg),
        "reference": None if reference is None else f"{reference[0]}/{reference[1]}",
        "init": None if init is None else f"{init[0]}/{init[1]}",
    }
    variant = variant or run_name(train_cfg.stage, model_cfg, train_cfg)
    main = is_main()
    if main:
        run_id = store.new_run(
            FAMILY, variant, dataset, config, {**upstream_versions(settings, dataset), **(upstream or {})}
        )
        log(f"run {run_id}: {variant} with modalities {model_cfg['modalities']}, {len(data.train_inputs)} windows")
    with contextlib.ExitStack() as stack:
        ckpt = checkpoint_dir or stack.enter_context(tempfile.TemporaryDirectory(dir=settings.cache_dir))
        trainer = SeqRecTrainer(
            model,
            train_cfg,
            data.train_inputs,
            data.train_targets,
            data.valid,
            reference=ref_model,
            checkpoint_dir=Path(ckpt),
            on_epoch=lambda r: log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})),
            late=late,
        )
        fit = trainer.fit()
    if not main:
        return {"rank": rank_and_world()[0], "epochs_run": fit["epochs_run"]}
    store.log_curve(run_id, train_cfg.stage, fit["history"])
    if fit["snapshot"]:
        log(f"snapshot ensemble: {json.dumps(fit['snapshot'])}")
    final = trainer.ensemble or trainer.model  # the mix where validation gave the late member a weight
    markov = None
    if train_cfg.markov_order:
        final, markov = add_markov_prior(
            final, data.seq.train, data.valid, train_cfg.markov_order, train_cfg.markov_window, train_cfg.markov_decay
        )
        log(f"markov prior: {json.dumps(markov)}")
    metrics = evaluate_and_log(final, data, store, run_id)
    pos, neg = score_samples(final, data, k=getattr(train_cfg, "topk", SeqRecDPOConfig.topk))
    store.log_scores(run_id, "positive", pos)
    store.log_scores(run_id, "negative", neg)
    version, staging = registry.new_version_dir(variant)
    save_model(final, staging, {"train": asdict(train_cfg), "run_id": run_id, "dataset": dataset})
    mv = registry.commit(
        variant,
        version,
        staging,
        {
            "family": FAMILY,
            "run_id": run_id,
            "dataset": dataset,
            "valid": metrics["valid"],
            "test": metrics["test"],
            "best_epoch": fit["best"]["epoch"],
            "kept_epoch": fit["kept_epoch"],
            "averaged_epochs": fit["averaged_epochs"],
            "epochs_run": fit["epochs_run"],
            "snapshot": fit["snapshot"],
            "markov": markov,
            "config": config,
        },
    )
    store.finish_run(run_id, str(mv.path))
    seconds = time.perf_counter() - t0
    train_secs = [r["train_seconds"] for r in fit["history"]]
    return {
        "run_id": run_id,
        "variant": variant,
        "name": mv.name,
        "version": mv.version,
        "path": str(mv.path),
        "valid": metrics["valid"],
        "test": metrics["test"],
        "epochs_run": fit["epochs_run"],
        "best_epoch": fit["best"]["epoch"],
        "kept_epoch": fit["kept_epoch"],
        "averaged_epochs": fit["averaged_epochs"],
        "snapshot": fit["snapshot"],
        "markov": markov,
        "seconds": round(seconds, 1),
        "seconds_per_epoch": round(float(np.mean(train_secs)), 2) if train_secs else 0.0,
        "modalities": model_cfg["modalities"],
        "history": fit["history"],
    }


SUMMARY_FIELDS = (
    "run_id",
    "name",
    "version",
    "epochs_run",
    "best_epoch",
    "kept_epoch",
    "averaged_epochs",
    "seconds",
    "seconds_per_epoch",
)


def stage_metadata(out: dict) -> dict:
    """A stage's summary as materialisation metadata in Dagster Pipes' form ({"raw_value", "type"}): the same
    fields whether the stage ran in the asset's process or in torchrun's processes behind Pipes."""
    test, valid = out["test"], out["valid"]
    table = [
        {"split": s, **{k: round(v, 4) for k, v in m.items() if "@" in k}}
        for s, m in (("valid", valid), ("test", test))
    ]
    curve = pd.DataFrame(
        [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in out["history"]]
    )

    def raw(v):
        kind = "int" if isinstance(v, int) else "float" if isinstance(v, float) else "text"
        return {"raw_value": v if kind != "text" else str(v), "type": kind}

    return {
        **{k: raw(out[k]) for k in SUMMARY_FIELDS},
        "modalities": raw(",".join(out["modalities"])),
        "late_weight": raw(float((out.get("snapshot") or {}).get("late_weight", 0.0))),
        "markov_weight": raw(float((out.get("markov") or {}).get("weight", 0.0))),
        "test_ndcg@10": raw(float(test["ndcg@10"])),
        "valid_ndcg@10": raw(float(valid["ndcg@10"])),
        "metrics": {"raw_value": markdown_table(pd.DataFrame(table)), "type": "md"},
        "epochs": {"raw_value": markdown_table(curve), "type": "md"},
        "model_path": {"raw_value": out["path"], "type": "path"},
    }
