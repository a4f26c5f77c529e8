"""Candidate scores without sampling: the mean token log-probability of each title as the answer.

The prompt is run once; its KV cache is repeated for every candidate, so scoring 21 candidates costs one prompt
plus 21 short titles, not 21 prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from training.metrics import auc_from_candidate_scores, metrics_from_ranks

from .prompt import Example, prompt_text

LLM_KS = (1, 5, 10)


@torch.inference_mode()
def score_titles(model, tok, prompt: str, titles: Sequence[str]) -> np.ndarray:
    """Mean log p(title tokens | prompt) for each title (Eq.: s_c = 1/|c| sum_t log p(c_t | prompt, c_<t))."""
    dev = model.device
    p_ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(dev)
    out = model(input_ids=p_ids, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)  # [1, V]
    enc = [tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for t in titles]
    n, length = len(enc), max(len(e) for e in enc)
    ids = torch.full((n, length), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    ids, mask = ids.to(dev), mask.to(dev)
    logp_first = first[0, ids[:, 0]]
    if length == 1:
        return logp_first.cpu().numpy()
    cache = out.cache
    cache.batch_repeat_interleave(n)
    attn = torch.cat([torch.ones((n, p_ids.shape[1]), dtype=torch.long, device=dev), mask[:, :-1]], 1)
    rest = model(input_ids=ids[:, :-1], cache=cache, attention_mask=attn, use_cache=False)
    logp = torch.log_softmax(rest.logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    total = logp_first + (logp * mask[:, 1:]).sum(1)
    return (total / mask.sum(1)).cpu().numpy()


def candidate_ranks(scores: np.ndarray, target: int) -> int:
    """1-based rank of the target among the candidates, ties counted pessimistically."""
    t = scores[target]
    return int((scores > t).sum() + (scores == t).sum())


def candidate_scores(model, tok, ex: Example, formulation: str = "listwise") -> np.ndarray:
    """A model's score of every candidate: the title's mean log-prob (listwise) or log P(Yes) - log P(No) (pointwise)."""
    if formulation == "pointwise":
        from .pointwise import score_candidates

        return score_candidates(model, tok, ex)
    return score_titles(model, tok, prompt_text(tok, ex), ex.candidates)


def evaluate_examples(model, tok, examples: Sequence[Example], formulation: str = "listwise", desc: str = "scoring"):
    """AUC (positive vs the negatives), HR@K and NDCG@K over the candidates; per-user scores kept."""
    model.eval()
    scores = [candidate_scores(model, tok, ex, formulation) for ex in tqdm(examples, desc=desc, unit="user")]
    return metrics_from_scores(examples, scores)


def metrics_from_scores(examples: Sequence[Example], all_scores: Sequence[np.ndarray]) -> dict:
    """The protocol's metrics from any per-candidate scores (a model's, or a reference such as popularity)."""
    ranks = np.asarray([candidate_ranks(s, ex.target) for ex, s in zip(examples, all_scores)])
    pos = [s[ex.target] for ex, s in zip(examples, all_scores)]
    neg = [np.delete(s, ex.target) for ex, s in zip(examples, all_scores)]
    metrics = metrics_from_ranks(ranks, LLM_KS)
    metrics = {k: v for k, v in metrics.items() if not k.startswith("mrr")}
    metrics["auc"] = auc_from_candidate_scores(np.asarray(pos), np.asarray(neg))
    return {"metrics": metrics, "ranks": ranks, "scores": all_scores}
