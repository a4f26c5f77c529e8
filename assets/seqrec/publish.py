"""The publish gate: a candidate must beat popularity and the published model on valid NDCG@10."""

from __future__ import annotations

import numpy as np

from recalign.item_index import ensure_item_index
from recalign.popularity import item_counts, popularity_order
from recalign.registry import Registry
from recalign.settings import Settings
from recalign.warehouse import load_sequences
from training.metrics import metrics_from_ranks
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


def choose_candidate(registry: Registry) -> dict | None:
    """The newest SFT and DPO models (any variant); the one with the better valid NDCG@10 is the candidate."""
    best = None
    for prefix in STAGES:
        mv = registry.newest(prefix)
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
    return best


def evaluate_gate(settings: Settings, dataset: str) -> dict:
    """The gate's verdict on the newest candidate, once per publish: recorded in the registry as the proposal."""
    registry = settings.registry(dataset)
    cand = choose_candidate(registry)
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
