"""The publish gate: a candidate must beat popularity and the published model on valid NDCG@10."""

from __future__ import annotations

import numpy as np

from assets.ingest.warehouse import Warehouse, load_sequences
from recalign.registry import Registry
from recalign.settings import Settings
from training.metrics import metrics_from_ranks


def popularity_valid_ndcg(settings: Settings, dataset: str) -> float:
    """Popularity (training counts) under the same protocol: full ranking, history masked."""
    seq = load_sequences(Warehouse(settings.warehouse_path(dataset)))
    counts = np.bincount(np.concatenate(seq.train) if seq.train else np.zeros(0, np.int64), minlength=seq.n_items + 1)
    counts = counts.astype(np.float64)
    counts[0] = -np.inf
    order = np.argsort(-counts, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    ranks = []
    for hist, target in zip(seq.history("valid"), seq.valid):
        if target <= 0:
            continue
        seen = np.unique(hist[hist != target])
        ranks.append(position[target] + 1 - np.sum(position[seen] < position[target]))
    return metrics_from_ranks(np.array(ranks))["ndcg@10"]


def choose_candidate(registry: Registry) -> dict | None:
    """The newest SFT and DPO versions; the one with the better valid NDCG@10 is the candidate."""
    best = None
    for name in ("seqrec_dpo", "seqrec_sft"):
        mv = registry.latest(name)
        if mv is None:
            continue
        score = mv.card.get("valid", {}).get("ndcg@10", -1.0)
        if best is None or score > best["valid_ndcg@10"]:
            best = {"name": mv.name, "version": mv.version, "path": str(mv.path), "valid_ndcg@10": score}
    return best


def evaluate_gate(settings: Settings, dataset: str) -> dict:
    registry = Registry(settings.registry_dir(dataset))
    cand = choose_candidate(registry)
    pop = popularity_valid_ndcg(settings, dataset)
    pub = registry.published()
    pub_score = -1.0
    if pub:
        try:
            pub_score = registry.get(pub["name"], pub["version"]).card.get("valid", {}).get("ndcg@10", -1.0)
        except KeyError:
            pub_score = -1.0
    if cand is None:
        return {"passed": False, "reason": "no trained model in the registry", "popularity_valid_ndcg@10": pop}
    already = bool(pub) and pub["name"] == cand["name"] and pub["version"] == cand["version"]
    passed = cand["valid_ndcg@10"] > pop and (cand["valid_ndcg@10"] > pub_score or already)
    reason = ("already published" if already and passed else "beats popularity and the published model" if passed
              else f"candidate {cand['valid_ndcg@10']:.4f} vs popularity {pop:.4f} / published {pub_score:.4f}")
    return {"passed": passed, "reason": reason, "candidate": cand, "popularity_valid_ndcg@10": pop,
            "published_valid_ndcg@10": pub_score, "already_published": already}


def publish_candidate(settings: Settings, dataset: str, gate: dict) -> dict:
    if not gate["passed"]:
        raise ValueError(f"gate not passed: {gate['reason']}")
    registry = Registry(settings.registry_dir(dataset))
    cand = gate["candidate"]
    if gate.get("already_published"):
        return registry.published()
    return registry.publish(registry.get(cand["name"], cand["version"]),
                            {"valid_ndcg@10": cand["valid_ndcg@10"], "gate": gate["reason"]})
