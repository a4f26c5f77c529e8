"""The publish gate: a candidate must beat popularity and the published model on valid NDCG@10; a stage-2 model
is a candidate only when it beats its own SFT on validation beyond noise (paired over the validation users)."""

from __future__ import annotations

import numpy as np

from recalign.item_index import ensure_item_index
from recalign.metrics_store import MetricsStore
from recalign.popularity import item_counts, popularity_order
from recalign.registry import ModelVersion, Registry
from recalign.settings import Settings
from recalign.stats import paired_test
from recalign.warehouse import load_sequences
from training.metrics import metrics_from_ranks, per_user_metrics
from training.seqrec.checkpoint import load_model

STAGES = ("seqrec_dpo", "seqrec_sft")  # registry name prefixes of the sequential track's two stages


def popularity_valid_ndcg(settings: Settings, dataset: str) -> float:
    """Popularity (training counts) under the same protocol: full ranking, history masked."""
    wh = settings.warehouse(dataset)
    seq = load_sequences(wh)
    order = popularity_order(item_counts(wh))
    position = np.full(seq.n_items + 1, len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    ranks = []
    for hist, target in zip(seq.history("valid"), seq.valid):
        if target <= 0:
            continue
        seen = np.unique(hist[hist != target])
        ranks.append(position[target] + 1 - np.sum(position[seen] < position[target]))
    return metrics_from_ranks(np.array(ranks))["ndcg@10"]


def stage_two_gain(store: MetricsStore, registry: Registry, mv: ModelVersion) -> dict | None:
    """Validation NDCG@10 of a stage-2 model minus its reference SFT's, user by user: paired bootstrap 95% interval
    (None without a reference or per-user ranks)."""
    ref = (mv.card.get("config") or {}).get("reference")
    try:
        ref_run = registry.get(*ref.split("/")).card["run_id"] if ref else None
    except KeyError:
        return None
    if ref_run is None:
        return None
    q = "SELECT user_id, rank FROM user_ranks WHERE run_id = ? AND split = 'valid'"
    both = store.read(q, [mv.card.get("run_id")]).merge(store.read(q, [ref_run]), on="user_id", suffixes=("", "_ref"))
    if both.empty:
        return None
    ndcg = lambda r: per_user_metrics(r.to_numpy(), 10)["ndcg@10"]
    test = paired_test(ndcg(both["rank"]), ndcg(both["rank_ref"]))
    return {"model": f"{mv.name}/{mv.version}", "reference": ref} | {k: round(v, 6) for k, v in test.items()}


def choose_candidate(registry: Registry, store: MetricsStore) -> dict | None:
    """The newest SFT and stage-2 models; the stage-2 one is eligible only when its validation gain over its own SFT
    is beyond noise (`stage_two_gain`'s interval above 0); the eligible one with the better valid NDCG@10 (a tie:
    the SFT) is the candidate, with the stage-2 verdict attached."""
    sft, dpo = registry.newest("seqrec_sft"), registry.newest("seqrec_dpo")
    stage_two = None if dpo is None else stage_two_gain(store, registry, dpo)
    eligible = stage_two is not None and stage_two["ci_low"] > 0
    best = None
    for mv in (sft, dpo if eligible else None):
        if mv is None:
            continue
        score = mv.card.get("valid", {}).get("ndcg@10", -1.0)
        if best is None or score > best["valid_ndcg@10"]:
            best = {
                "name": mv.name,
                "version": mv.version,
                "path": str(mv.path),
                "valid_ndcg@10": score,
                "test_ndcg@10": mv.card.get("test", {}).get("ndcg@10"),
            }
    if best is not None and dpo is not None:
        best["stage_two"] = (stage_two or {"model": f"{dpo.name}/{dpo.version}"}) | {"eligible": eligible}
    return best


def stage_two_verdict(stage_two: dict | None) -> str:
    """One line for the gate's page: the stage-2 model's validation gain over its SFT and whether it may be served."""
    if not stage_two:
        return "no stage-2 model"
    if "mean_diff" not in stage_two:
        return f"{stage_two['model']}: no per-user validation ranks beside its SFT's: not a candidate"
    gain = f"{stage_two['mean_diff']:+.5f} [{stage_two['ci_low']:+.5f}, {stage_two['ci_high']:+.5f}]"
    verdict = "a candidate" if stage_two["eligible"] else "within noise or below: not a candidate"
    return f"{stage_two['model']} - {stage_two['reference']}, valid NDCG@10 {gain}: {verdict}"


def evaluate_gate(settings: Settings, dataset: str) -> dict:
    """The gate's verdict on the newest candidate, once per publish: recorded in the registry as the proposal."""
    registry = settings.registry(dataset)
    cand = choose_candidate(registry, settings.metrics())
    pop = popularity_valid_ndcg(settings, dataset)
    pub = registry.published()
    pub_card = {}
    if pub:
        try:
            pub_card = registry.get(pub["name"], pub["version"]).card
        except KeyError:
            pub_card = {}
    pub_score = pub_card.get("valid", {}).get("ndcg@10", -1.0)
    if cand is None:
        gate = {"passed": False, "reason": "no trained model in the registry", "popularity_valid_ndcg@10": pop}
    else:
        already = bool(pub) and pub["name"] == cand["name"] and pub["version"] == cand["version"]
        passed = cand["valid_ndcg@10"] > pop and (cand["valid_ndcg@10"] > pub_score or already)
        reason = (
            "already published"
            if already and passed
            else "beats popularity and the published model"
            if passed
            else f"candidate {cand['valid_ndcg@10']:.4f} vs popularity {pop:.4f} / published {pub_score:.4f}"
        )
        gate = {
            "passed": passed,
            "reason": reason,
            "candidate": cand,
            "popularity_valid_ndcg@10": pop,
            "published_valid_ndcg@10": pub_score,
            "published_test_ndcg@10": pub_card.get("test", {}).get("ndcg@10"),
            "published": f"{pub['name']}/{pub['version']}" if pub else None,
            "already_published": already,
        }
    registry.propose(gate)
    return gate


def publish_candidate(settings: Settings, dataset: str) -> dict:
    """Swap the pointer to the proposed candidate, if the gate passed it."""
    registry = settings.registry(dataset)
    gate = registry.proposal()
    if gate is None or not gate["passed"]:
        raise ValueError(f"gate not passed: {gate['reason'] if gate else 'no candidate proposed'}")
    cand = gate["candidate"]
    if gate.get("already_published"):
        return registry.published()
    model, _ = load_model(cand["path"])
    index = ensure_item_index(model, cand["path"])  # before the pointer moves: serving finds it ready
    entry = registry.publish(
        registry.get(cand["name"], cand["version"]), {"valid_ndcg@10": cand["valid_ndcg@10"], "gate": gate["reason"]}
    )
    return {**entry, "item_index": index.meta}


METRICS = ("ndcg@5", "ndcg@10", "mrr@5", "mrr@10", "hr@10")


def served_vs_replaced(settings: Settings, dataset: str, entry: dict) -> dict:
    """What the published_model page shows: the served model's test and valid metrics beside the model it replaced,
    and the newest evaluation report of the dataset."""
    registry = settings.registry(dataset)
    rows = []
    for role, ref in (("served", entry), ("replaced", entry.get("previous"))):
        if not ref:
            continue
        try:
            card = registry.get(ref["name"], ref["version"]).card
        except KeyError:
            continue
        for split in ("test", "valid"):
            got = card.get(split, {})
            rows.append(
                {"model": f"{role}: {ref['name']}/{ref['version']}", "split": split} | {m: got.get(m) for m in METRICS}
            )
    reports = sorted(settings.reports_dir(dataset).glob("*/report.html"))
    return {"metrics": rows, "report": str(reports[-1]) if reports else None}
