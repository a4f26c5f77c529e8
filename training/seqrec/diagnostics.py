"""Why a preference stage moves (or does not move) the ranking: measurements on training batches and on a split.

`preference_diagnostics` (training batches of a stage-2 trainer): the implicit reward margin
(s_w - s_l) - (s_ref_w - s_ref_l) and its share above 0, the rewards of y_w and y_l apart, how often the sampled
y_l is a later item of the same user's window (a false negative), the reference rank of y_w, and the sizes of
the CE and lambda * preference gradients with their cosine.
`ranking_shift` (a split): what the stage did to the reference's ranking, user by user.
"""

from __future__ import annotations

import numpy as np
import torch

from recalign.stats import paired_test
from training.metrics import per_user_metrics

from .data import length_buckets, trim
from .evaluate import full_ranking_ranks
from .scores import later_items


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def preference_diagnostics(trainer, n_batches: int = 20, seed: int = 0) -> dict:
    """Measured on `n_batches` training batches of a stage-2 trainer at its current weights."""
    cfg, model = trainer.cfg, trainer.model
    model.train()
    trainer.generator.manual_seed(seed)
    batches = length_buckets(trainer.inputs, cfg.batch_size, torch.Generator().manual_seed(seed))[:n_batches]
    params = [p for p in model.parameters() if p.requires_grad]
    rows: dict[str, list] = {k: [] for k in ("margin", "reward_w", "reward_l", "false_neg", "ref_rank_w")}
    norms = {"ce": [], "pref": [], "cos": []}
    for idx in batches:
        seq, tgt = (t.to(trainer.device) for t in trim(trainer.inputs[idx], trainer.targets[idx]))
        ce, scored = model.calculate_loss(seq, tgt, cfg.mask_history, trainer.objective, return_scores=True)
        neg = trainer.sample_negatives(scored)
        items = torch.stack([scored.targets, neg], 1)
        policy = scored.of(items)
        ref = trainer.reference_scores(seq, tgt, items, idx.to(trainer.device))
        reward = (policy - ref).detach()
        rows["margin"].append(reward[:, 0] - reward[:, 1])
        rows["reward_w"].append(reward[:, 0])
        rows["reward_l"].append(reward[:, 1])
        rows["false_neg"].append((later_items(tgt) == neg[:, None]).any(1).float())
        with torch.no_grad():
            ref_scores = trainer.reference.position_scores(seq, tgt, cfg.mask_history).materialise()
            rows["ref_rank_w"].append((ref_scores > ref_scores.gather(1, scored.targets[:, None])).sum(1).float() + 1)
        pref = cfg.lam * trainer.preference_loss(scored, seq, tgt, idx.to(trainer.device))
        g_ce, g_pref = _flat_grad(ce, params), _flat_grad(pref, params)
        norms["ce"].append(float(g_ce.norm()))
        norms["pref"].append(float(g_pref.norm()))
        norms["cos"].append(float(torch.nn.functional.cosine_similarity(g_ce, g_pref, dim=0)))
    cat = {k: torch.cat(v).cpu().numpy() for k, v in rows.items()}
    return {
        "positions": int(len(cat["margin"])),
        "margin_mean": float(cat["margin"].mean()),
        "margin_share_above_0": float((cat["margin"] > 0).mean()),
        "reward_w_mean": float(cat["reward_w"].mean()),
        "reward_l_mean": float(cat["reward_l"].mean()),
        "false_negative_rate": float(cat["false_neg"].mean()),
        "ref_rank_w_median": float(np.median(cat["ref_rank_w"])),
        "ref_rank_w_top50_share": float((cat["ref_rank_w"] <= 50).mean()),
        "grad_norm_ce": float(np.mean(norms["ce"])),
        "grad_norm_pref": float(np.mean(norms["pref"])),
        "grad_ratio_pref_to_ce": float(np.mean(norms["pref"]) / max(np.mean(norms["ce"]), 1e-12)),
        "grad_cosine": float(np.mean(norms["cos"])),
    }


def ranking_shift(reference, policy, data, k: int = 10) -> dict:
    """User by user, what the policy did to the reference's rank of the held-out item (full ranking, history
    masked): shares improved / worsened / unchanged, the moves inside the top k, and the paired test of NDCG@k."""
    r_ref, r_pol = full_ranking_ranks(reference, data), full_ranking_ranks(policy, data)
    top_ref, top_pol = r_ref <= k, r_pol <= k
    n_ref = per_user_metrics(r_ref, k)[f"ndcg@{k}"]
    n_pol = per_user_metrics(r_pol, k)[f"ndcg@{k}"]
    return {
        "users": int(len(r_ref)),
        "improved": float((r_pol < r_ref).mean()),
        "worsened": float((r_pol > r_ref).mean()),
        "unchanged": float((r_pol == r_ref).mean()),
        f"entered_top{k}": int((top_pol & ~top_ref).sum()),
        f"left_top{k}": int((top_ref & ~top_pol).sum()),
        "median_rank_ref": float(np.median(r_ref)),
        "median_rank_policy": float(np.median(r_pol)),
        f"paired_ndcg@{k}": paired_test(n_pol, n_ref),
    }
