"""Dagster layer of the sequential track: seqrec_sft -> seqrec_dpo (model registry + metrics table)."""

import dagster as dg

from assets.common import md_table, to_metadata
from orchestration.resources import DatasetResource, RecalignHome
from recalign.registry import Registry
from training.seqrec.trainer import SeqRecTrainConfig

from .pipeline import train_stage

OWNERS = ["team:recalign"]


class SeqRecSFTConfig(dg.Config):
    """Stage 1 (CE warm-up). Defaults from RoDPO section 4.1 (d=64, max length 50, 15 epochs)."""

    d: int = 64
    max_len: int = 50
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.3
    modalities: list[str] = ["id", "text", "image"]  # missing ones are dropped
    moe: bool = False
    n_experts: int = 4
    moe_top_k: int = 2
    id_init: str = "cooccurrence"
    attributes: bool = False  # add learned attribute embeddings (the items' categories: brand, category levels) to e_id
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    lr_schedule: str = "constant"  # or "cosine": per-step decay to 0 at the last epoch
    patience: int = 5
    eval_every: int = 1  # validate every N epochs (RecBole's eval_step); patience counts validations
    keep: str = "best"  # or "last": all `epochs`, final weights (the paper's fixed 15-epoch warm-up)
    ema_decay: float | None = None  # validate and keep an exponential moving average of the weights
    swa_start: int | None = None  # or validate and keep the uniform average of the weights after epochs swa_start..
    mask_history: bool = True  # the CE softmax skips the items already in each prefix (evaluation and serving do)
    seed: int = 42
    max_minutes: float | None = None


class SeqRecDPOConfig(dg.Config):
    """Stage 2 (CE + lambda * DPO). Defaults from RoDPO: K=50, beta=1.0, lr 1e-3."""

    sampler: str = "stochastic_topk"  # random | argmax | stochastic_topk
    topk: int = 50
    beta: float = 1.0
    lam: float = 1.0
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3
    eval_every: int = 1
    ema_decay: float | None = None
    swa_start: int | None = None  # validate the uniform average of the policy's weights after DPO epochs swa_start..
    precompute_ref: bool = True  # encode the training positions with the frozen reference once (67 MB on Beauty)
    mask_history: bool = True  # the CE softmax and the negative pool skip the items already in each prefix
    seed: int = 42
    max_minutes: float | None = None


def _metadata(out: dict) -> dict:
    test, valid = out["test"], out["valid"]
    table = [{"split": s, **{k: round(v, 4) for k, v in m.items() if "@" in k}} for s, m in (("valid", valid), ("test", test))]
    import pandas as pd

    return {**to_metadata({k: out[k] for k in ("run_id", "name", "version", "epochs_run", "best_epoch", "kept_epoch", "seconds",
                                               "seconds_per_epoch")}),
            "modalities": ",".join(out["modalities"]), "test_ndcg@10": test["ndcg@10"],
            "valid_ndcg@10": valid["ndcg@10"], "metrics": md_table(pd.DataFrame(table)),
            "model_path": dg.MetadataValue.path(out["path"])}


@dg.asset(deps=["sequences", "item_text", "item_image"], group_name="training", owners=OWNERS,
          kinds={"pytorch"}, tags={"track": "sequential"},
          description="Stage 1: multimodal SASRec-style encoder trained with cross-entropy (the reference policy).")
def seqrec_sft(context: dg.AssetExecutionContext, config: SeqRecSFTConfig, recalign: RecalignHome,
               dataset: DatasetResource) -> dg.MaterializeResult:
    c = config
    model_cfg = {"d": c.d, "max_len": c.max_len, "n_layers": c.n_layers, "n_heads": c.n_heads, "dropout": c.dropout,
                 "attn_dropout": c.dropout, "modalities": list(c.modalities), "moe": c.moe,
                 "n_experts": c.n_experts, "moe_top_k": c.moe_top_k, "id_init": c.id_init, "attributes": c.attributes}
    train = SeqRecTrainConfig(stage="sft", epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                              lr_schedule=c.lr_schedule, patience=c.patience, eval_every=c.eval_every, keep=c.keep,
                              ema_decay=c.ema_decay, swa_start=c.swa_start, seed=c.seed, max_minutes=c.max_minutes,
                              mask_history=c.mask_history, show_progress=False)
    out = train_stage(recalign.settings(), dataset.spec().dataset, model_cfg, train, "seqrec_sft", log=context.log.info)
    return dg.MaterializeResult(metadata=_metadata(out))


@dg.asset(deps=[seqrec_sft], group_name="training", owners=OWNERS, kinds={"pytorch"}, tags={"track": "sequential"},
          description="Stage 2: L = CE + lambda * DPO against the frozen stage-1 model, y_l from the configured sampler.")
def seqrec_dpo(context: dg.AssetExecutionContext, config: SeqRecDPOConfig, recalign: RecalignHome,
               dataset: DatasetResource) -> dg.MaterializeResult:
    settings, name = recalign.settings(), dataset.spec().dataset
    sft = Registry(settings.registry_dir(name)).latest("seqrec_sft")
    if sft is None:
        raise dg.Failure("no seqrec_sft model in the registry: materialise seqrec_sft first")
    c = config
    train = SeqRecTrainConfig(stage="dpo", epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, patience=c.patience,
                              eval_every=c.eval_every, ema_decay=c.ema_decay, swa_start=c.swa_start, seed=c.seed,
                              sampler=c.sampler, topk=c.topk, beta=c.beta, lam=c.lam, max_minutes=c.max_minutes,
                              precompute_ref=c.precompute_ref, mask_history=c.mask_history, show_progress=False)
    out = train_stage(settings, name, {}, train, "seqrec_dpo", reference=(sft.name, sft.version), log=context.log.info)
    return dg.MaterializeResult(metadata=_metadata(out) | {"reference": f"{sft.name}/{sft.version}",
                                                           "sampler": c.sampler})


assets = [seqrec_sft, seqrec_dpo]


# --- publishing: a blocking check on the candidate gates the pointer swap --------------------------

from .publish import evaluate_gate, publish_candidate


@dg.asset(deps=[seqrec_sft, seqrec_dpo], group_name="serving", owners=OWNERS, kinds={"python"},
          description="The best new model (SFT or DPO, by valid NDCG@10) proposed for serving.")
def publish_candidate_model(context: dg.AssetExecutionContext, recalign: RecalignHome,
                            dataset: DatasetResource) -> dg.MaterializeResult:
    gate = evaluate_gate(recalign.settings(), dataset.spec().dataset)
    context.log.info(f"gate: {gate}")
    cand = gate.get("candidate") or {}
    return dg.MaterializeResult(metadata={"candidate": f"{cand.get('name')}/{cand.get('version')}",
                                          "candidate_valid_ndcg@10": cand.get("valid_ndcg@10", -1.0),
                                          "popularity_valid_ndcg@10": gate["popularity_valid_ndcg@10"],
                                          "published_valid_ndcg@10": gate.get("published_valid_ndcg@10", -1.0)})


@dg.asset_check(asset=publish_candidate_model, blocking=True,
                description="The candidate beats popularity and the currently published model on valid NDCG@10.")
def candidate_beats_baselines(recalign: RecalignHome, dataset: DatasetResource) -> dg.AssetCheckResult:
    gate = evaluate_gate(recalign.settings(), dataset.spec().dataset)
    return dg.AssetCheckResult(passed=bool(gate["passed"]), metadata={"reason": gate["reason"]})


@dg.asset(deps=[publish_candidate_model], group_name="serving", owners=OWNERS, kinds={"python"},
          description="The model the API serves: registry pointer swapped atomically (only after the gate passed).")
def published_model(context: dg.AssetExecutionContext, recalign: RecalignHome, dataset: DatasetResource) -> dg.MaterializeResult:
    settings, name = recalign.settings(), dataset.spec().dataset
    entry = publish_candidate(settings, name, evaluate_gate(settings, name))
    context.log.info(f"published {entry['name']}/{entry['version']}")
    return dg.MaterializeResult(metadata={"model": f"{entry['name']}/{entry['version']}",
                                          "path": dg.MetadataValue.path(entry["path"])})


assets = [seqrec_sft, seqrec_dpo, publish_candidate_model, published_model]
asset_checks = [candidate_beats_baselines]
