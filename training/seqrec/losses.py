"""Losses of the sequential track.

Next-item objectives over a `PositionScores` (scores.py), chosen by `SeqRecTrainConfig.loss`:
- `ce`: cross-entropy over the whole catalogue (memory N x n_items per step; the default while it is small);
- `sampled_softmax`: softmax over the positive and K sampled negatives with the logQ correction, negatives
  uniform over the catalogue or the other positions' targets in the batch (memory N x K);
- `gbce`: gSASRec's generalised binary cross-entropy over K uniform negatives (memory N x K).
And the preference terms of stage 2, chosen by `SeqRecDPOConfig.preference`, on logits (the softmax partition
cancels in every log-ratio of one context): `dpo` (RoDPO Eq. 5), `sdpo` (several rejected items in one
Plackett-Luce term) and `simpo` (reference-free, with a target margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scores import PositionScores, row_aligned

LOSSES = ("ce", "sampled_softmax", "gbce")
PREFERENCES = ("dpo", "sdpo", "simpo")
NEGATIVES = ("uniform", "in_batch", "mixed")


def dpo_logit_loss(
    policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """-log sigma(beta * [(s_w - s_l) - (s_ref_w - s_ref_l)]) on logit margins (RoDPO Eq. 5), per pair."""
    return -F.logsigmoid(beta * ((policy_w - policy_l) - (ref_w - ref_l)))


def sdpo_logit_loss(
    policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """-log sigma(-log sum_l exp(beta [(s_l - s_ref_l) - (s_w - s_ref_w)])) per context, M rejected items
    (N, M) (S-DPO, Chen et al., NeurIPS 2024, "On Softmax Direct Preference Optimization for Recommendation")."""
    rewards = beta * ((policy_l - ref_l) - (policy_w - ref_w)[:, None])
    return F.softplus(torch.logsumexp(rewards, 1))


def simpo_logit_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, beta: float = 1.0, gamma: float = 0.0):
    """-log sigma(beta (s_w - s_l) - gamma) per pair: no reference, a target margin gamma (SimPO, Meng et al.,
    NeurIPS 2024; a logit has no length to normalise)."""
    return -F.logsigmoid(beta * (policy_w - policy_l) - gamma)


def full_cross_entropy(scored: PositionScores, generator: torch.Generator | None = None) -> torch.Tensor:
    """-log softmax(s(x, .))_y over every item (padding and masked items excluded), mean over positions.

    `scored.logits` becomes the matrix's log-softmax (each row's scores shifted by a constant: the same order, the
    same top-K), valid until the backward pass turns it into the gradient."""
    return FullSoftmaxCrossEntropy.apply(scored.query, scored.table, scored)


class FullSoftmaxCrossEntropy(torch.autograd.Function):
    """mean_n -log softmax(q_n T^T)_{y_n} with one (N, n_items + 1) buffer: log-softmax in place forward, its
    gradient (softmax - onehot(y)) / N written over it backward (no zero-filled gradient, no second matrix).

    The buffer's rows are padded to a multiple of ROW_ALIGN floats (`row_aligned`; extra columns at -inf)."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, table: torch.Tensor, scored: PositionScores) -> torch.Tensor:
        n = len(table)
        padded = row_aligned(table)
        logits = (query @ padded.T).float()  # the softmax in fp32 under autocast too, as F.cross_entropy's
        logits[:, n:] = float("-inf")
        scored.mask_(logits[:, :n])
        if logits.device.type == "cpu":  # in place: tested here; elsewhere the kernel's aliasing is not
            torch._log_softmax(logits, 1, False, out=logits)
        else:
            logits = logits.log_softmax(1)
        scored.logits = logits[:, :n]
        ctx.save_for_backward(query, padded, scored.targets)
        ctx.log_probs, ctx.n = logits, n  # not save_for_backward: the backward overwrites it
        return -logits[torch.arange(len(logits), device=logits.device), scored.targets].mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        query, padded, targets = ctx.saved_tensors
        g = ctx.log_probs.exp_()
        del ctx.log_probs
        g[torch.arange(len(g), device=g.device), targets] -= 1.0
        scale = grad / len(g)  # applied to the (N, d) and (n_items + 1, d) products, not to the matrix
        dq = (g @ padded.float() * scale).to(query.dtype) if ctx.needs_input_grad[0] else None
        dt = (g.T @ query.float() * scale)[: ctx.n].to(padded.dtype) if ctx.needs_input_grad[1] else None
        return dq, dt, None


def sampled_softmax_logq(
    pos: torch.Tensor,
    neg: torch.Tensor,
    log_q_pos: torch.Tensor,
    log_q_neg: torch.Tensor,
    masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log softmax([s+ - log Q(y), s-_j - log Q(j)])_0 per position (sampled softmax with the logQ correction:
    Bengio & Senecal 2008; Yi et al., RecSys 2019). pos (N,), neg (N, K), log_q_* broadcastable."""
    neg = neg - log_q_neg
    if masked is not None:
        neg = neg.masked_fill(masked, float("-inf"))
    logits = torch.cat([(pos - log_q_pos)[:, None], neg], 1)
    return -logits.log_softmax(1)[:, 0]


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = K / (|I| - 1) (gSASRec, Petrov & Macdonald, RecSys 2023)."""
    alpha = n_negatives / max(n_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(pos: torch.Tensor, neg: torch.Tensor, beta: float, masked: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigma(s+)^beta - sum_j log(1 - sigma(s-_j)) per position (gSASRec's gBCE)."""
    neg_term = F.logsigmoid(-neg)
    if masked is not None:
        neg_term = neg_term.masked_fill(masked, 0.0)
    return -beta * F.logsigmoid(pos) - neg_term.sum(1)


def sequence_negatives(scored: PositionScores, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, K) items uniform over the catalogue, K per sequence, shared by its positions (as RecTools' and
    eSASRec's samplers draw them): B x K distinct draws a step at the memory of B x K item rows."""
    B = scored.window_targets.shape[0]
    return torch.randint(1, scored.n_items + 1, (B, k), generator=generator).to(scored.query.device)


@dataclass
class SampledSoftmax:
    """Sampled softmax over K negatives: uniform (K per sequence) or the batch's targets (in-batch, logQ):
    memory N x K, not N x n_items."""

    n_negatives: int = 256
    negatives: str = "uniform"
    log_q: torch.Tensor | None = None  # (n_items + 1,) log of each item's share of training targets (in_batch)
    gathers_rows = True  # reads some items' scores only: the model builds its table at those rows (gathered.py)

    def log_q_of(self, items: torch.Tensor) -> torch.Tensor:
        if self.negatives == "uniform" or self.log_q is None:  # uniform: log Q is one constant, it cancels
            return torch.zeros(items.shape, device=items.device)
        return self.log_q.to(items.device)[items]

    def loss_on(self, scored: PositionScores, neg: torch.Tensor) -> torch.Tensor:
        """The loss against a given shared negative set (K,): with every item, it is the full cross-entropy."""
        pos = scored.of(scored.targets[:, None])[:, 0]
        return sampled_softmax_logq(
            pos, scored.of(neg), self.log_q_of(scored.targets), self.log_q_of(neg)[None, :], scored.masked(neg)
        ).mean()

    def mixed(self, scored: PositionScores, generator: torch.Generator | None) -> torch.Tensor:
        """In-batch targets and K uniform items per sequence (mixed negative sampling, Yang et al., WWW 2020),
        each score corrected by log of the item's expected count under both: N p_i + K / n_items."""
        neg = sequence_negatives(scored, self.n_negatives, generator)
        n, N = scored.n_items, len(scored.targets)
        p = self.log_q.to(scored.query.device).exp()
        p = F.pad(p, (0, max(0, n + 1 - len(p))))  # items never a training target: share 0

        def log_q(items: torch.Tensor) -> torch.Tensor:
            return (N * p[items] + self.n_negatives / n).log()

        pos = scored.of(scored.targets[:, None])[:, 0]
        batch = scored.of(scored.targets) - log_q(scored.targets)[None, :]
        batch = batch.masked_fill(scored.masked(scored.targets), float("-inf"))
        uniform = scored.of_sequence_items(neg) - log_q(neg)[scored.positions()[0]]
        uniform = uniform.masked_fill(scored.masked_sequence_items(neg), float("-inf"))
        logits = torch.cat([(pos - log_q(scored.targets))[:, None], batch, uniform], 1)
        return -logits.log_softmax(1)[:, 0].mean()

    def __call__(self, scored: PositionScores, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.negatives == "in_batch":  # the other positions' targets: drawn in proportion to popularity
            return self.loss_on(scored, scored.targets)
        if self.negatives == "mixed":
            return self.mixed(scored, generator)
        neg = sequence_negatives(scored, self.n_negatives, generator)
        pos = scored.of(scored.targets[:, None])[:, 0]
        masked = scored.masked_sequence_items(neg)
        return sampled_softmax_logq(pos, scored.of_sequence_items(neg), torch.zeros_like(pos), 0.0, masked).mean()


@dataclass
class GBCE:
    """gSASRec's gBCE over K uniform negatives per sequence, shared by its positions (calibration t)."""

    n_negatives: int = 256
    t: float = 0.75
    gathers_rows = True  # as SampledSoftmax

    def __call__(self, scored: PositionScores, generator: torch.Generator | None = None) -> torch.Tensor:
        neg = sequence_negatives(scored, self.n_negatives, generator)
        pos = scored.of(scored.targets[:, None])[:, 0]
        beta = gbce_beta(self.n_negatives, scored.n_items, self.t)
        masked = scored.masked_sequence_items(neg)
        return gbce(pos, scored.of_sequence_items(neg), beta, masked).mean()


def make_objective(loss: str, n_negatives: int, negatives: str, gbce_t: float, train_targets: torch.Tensor | None):
    """The configured next-item objective; `train_targets` (any shape, 0 = padding) give in-batch log Q."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}; got {loss!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(map(repr, NEGATIVES))}; got {negatives!r}")
    if loss == "ce":
        return full_cross_entropy
    if loss == "gbce":
        if negatives != "uniform":
            raise ValueError("gbce's calibration assumes uniform negatives: set negatives='uniform'")
        return GBCE(n_negatives, gbce_t)
    log_q = None
    if negatives in ("in_batch", "mixed") and train_targets is not None:
        t = train_targets[train_targets > 0]
        counts = torch.bincount(t, minlength=int(t.max()) + 1).float()
        log_q = (counts / counts.sum()).clamp(min=1e-12).log()
    return SampledSoftmax(n_negatives, negatives, log_q)
