"""Shared-prefix log-probabilities: a question's prompt prefix is encoded once, its continuations against its cache.

A group is one prefix (the user part of a prompt) and n continuations (a candidate's own text, then the completion
that is trained or scored). The plain computation runs prefix + continuation as n separate sequences; the shared one
runs the prefix once (with gradients when training) and the n continuations as one batch against its KV cache,
repeated n times. Both see the same token ids, so they give the same log-probabilities and gradients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Group:
    """Token ids of one question: `prefix`, each continuation's ids, and where its completion starts in them."""

    prefix: list[int]
    conts: list[list[int]]
    completion_start: list[int]

    @property
    def plain_tokens(self) -> int:
        """Tokens the plain computation runs: every continuation with its own copy of the prefix."""
        return sum(len(self.prefix) + len(c) for c in self.conts)

    @property
    def shared_tokens(self) -> int:
        return len(self.prefix) + sum(len(c) for c in self.conts)


def encode_group(tok, prefix: str, contexts: Sequence[str], completions: Sequence[str]) -> Group:
    """Tokenise a prefix and its (context, completion) continuations; the completion's tokens are the ones scored."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    ctx = [enc(c) for c in contexts]
    return Group(enc(prefix), [c + enc(y) for c, y in zip(ctx, completions)], [len(c) for c in ctx])


def _padded(conts: list[list[int]], pad: int):
    """Right-padded ids [n, L] and their mask."""
    length = max(len(c) for c in conts)
    ids = torch.full((len(conts), length), pad, dtype=torch.long)
    mask = torch.zeros((len(conts), length), dtype=torch.long)
    for i, c in enumerate(conts):
        ids[i, : len(c)], mask[i, : len(c)] = torch.tensor(c), 1
    return ids, mask


def _left_padded(rows: list[list[int]], pad: int):
    """Left-padded ids [n, L] (every row ends at the last column), their mask, and positions counted from each
    row's first real token."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def _completion_weights(g: Group, length: int) -> torch.Tensor:
    """[n, L] 1 where a continuation token belongs to its completion."""
    w = torch.zeros((len(g.conts), length))
    for i, (c, s) in enumerate(zip(g.conts, g.completion_start)):
        w[i, s : len(c)] = 1
    return w


def _gathered_logps(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over completion tokens of log p(token); log-softmax only at those positions (the vocabulary is large)."""
    rows, cols = weights.nonzero(as_tuple=True)
    logp = torch.log_softmax(logits[rows, cols].float(), -1).gather(1, ids[rows, cols][:, None])[:, 0]
    return torch.zeros(weights.shape[0], device=logits.device, dtype=logp.dtype).index_add(0, rows, logp)


def completion_logps(model, g: Group, shared: bool = True, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p over each completion's tokens [n], completion token counts [n]) given prefix + context."""
    if not shared:
        return _plain_logps(model, g, pad)
    weights = _completion_weights(g, max(len(c) for c in g.conts)).to(model.device)
    logits, ids = _shared_logits(model, g, pad)
    return _gathered_logps(logits, ids, weights), weights.sum(1)


def _plain_logps(model, g: Group, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prefix + continuation its own row, left-padded so every completion ends at the last column: logits only
    for the last (longest completion + 1) columns (a 49k-word vocabulary over every position would not fit)."""
    dev = model.device
    rows = [g.prefix + c for c in g.conts]
    lengths = [len(c) - s for c, s in zip(g.conts, g.completion_start)]
    keep = max(lengths)
    ids, mask, pos = _left_padded(rows, pad)  # positions from each row's first real token, as in the shared form
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), logits_to_keep=keep + 1)
    weights = torch.zeros((len(rows), keep), device=dev)
    for i, n in enumerate(lengths):
        weights[i, keep - n :] = 1
    return _gathered_logps(out.logits[:, :-1], ids[:, -keep:].to(dev), weights), weights.sum(1)


def _shared_logits(model, g: Group, pad: int):
    """Logits predicting every continuation token [n, L, V]: the prefix once, continuations against its cache."""
    dev, n = model.device, len(g.conts)
    out = model(input_ids=torch.tensor([g.prefix], device=dev), use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:]  # predicts each continuation's first token
    cache = out.cache
    cache.batch_repeat_interleave(n)
    ids, mask = _padded(g.conts, pad)
    ids, mask = ids.to(dev), mask.to(dev)
    attn = torch.cat([torch.ones((n, len(g.prefix)), dtype=torch.long, device=dev), mask], 1)
    rest = model(input_ids=ids, cache=cache, attention_mask=attn, use_cache=False).logits
    return torch.cat([first.expand(n, -1, -1), rest[:, :-1]], 1), ids


@torch.inference_mode()
def next_token_logits(model, g: Group, pad: int = 0) -> torch.Tensor:
    """[n, V] logits after each continuation (its completion empty): what the model answers next, prefix once.

    Continuations are left-padded (the padding masked, positions counted from the prefix) so that all end at the
    last column and the vocabulary projection runs for that column only."""
    dev, n, p = model.device, len(g.conts), len(g.prefix)
    out = model(input_ids=torch.tensor([g.prefix], device=dev), use_cache=True, logits_to_keep=1)
    cache = out.cache
    cache.batch_repeat_interleave(n)
    ids, mask, pos = _left_padded(g.conts, pad)
    pos = p + pos
    attn = torch.cat([torch.ones((n, p), dtype=torch.long), mask], 1)
    out = model(input_ids=ids.to(dev), cache=cache, attention_mask=attn.to(dev), position_ids=pos.to(dev),
                use_cache=False, logits_to_keep=1)  # fmt: skip
    return out.logits[:, -1].float()
