"""Tensors for the sequential track: causal training windows and evaluation inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def left_pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype=np.int64)
    for r, row in enumerate(rows):
        row = row[-length:]
        if len(row):
            out[r, length - len(row) :] = row
    return out


def training_windows(train: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prefix of each training sequence predicts its next item, as one causal pass.

    A sequence of n items gives inputs s[:-1] and targets s[1:] (left-padded to max_len); longer
    ones are cut into consecutive windows so that every target keeps up to max_len items of context.
    """
    inputs, targets = [], []
    for s in train:
        end = len(s)
        while end >= 2:
            seg = s[max(0, end - max_len - 1) : end]
            inputs.append(seg[:-1])
            targets.append(seg[1:])
            end -= max_len
    return torch.from_numpy(left_pad(inputs, max_len)), torch.from_numpy(left_pad(targets, max_len))


@dataclass
class EvalSet:
    """Inputs and targets of one split (valid or test), with the histories to mask."""

    inputs: torch.Tensor  # (U, max_len) left-padded histories
    targets: torch.Tensor  # (U,)
    histories: list[np.ndarray]  # full histories, masked at scoring time
    user_ids: np.ndarray

    @classmethod
    def build(cls, histories: list[np.ndarray], targets: np.ndarray, user_ids: np.ndarray, max_len: int) -> EvalSet:
        keep = np.flatnonzero((targets > 0) & np.array([len(h) > 0 for h in histories], dtype=bool))
        hist = [histories[i] for i in keep]
        return cls(
            inputs=torch.from_numpy(left_pad(hist, max_len)),
            targets=torch.from_numpy(targets[keep]),
            histories=hist,
            user_ids=user_ids[keep],
        )


def length_buckets(
    inputs: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Batches of similar-length rows in random order (ties broken at random), so each batch can be
    trimmed to its longest row: exact with left padding and end-relative positions, and several
    times less encoder work on short-sequence data such as Amazon Beauty."""
    lengths = (inputs > 0).sum(1).float()
    if generator is not None:
        lengths = lengths + torch.rand(len(lengths), generator=generator)
    order = torch.argsort(lengths, stable=True)
    batches = list(order.split(batch_size))
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


def trim(seq: torch.Tensor, *others: torch.Tensor):
    """Drop leading all-padding columns of a left-padded batch."""
    width = int((seq > 0).sum(1).max().clamp(min=1))
    return (seq[:, -width:], *(o[:, -width:] for o in others)) if others else seq[:, -width:]


def position_rows(offsets: torch.Tensor, counts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a flat per-position table (window w's target positions at offsets[w]..offsets[w]+counts[w])
    for the batch `rows`, in the order of `hidden[targets > 0]` of the trimmed batch."""
    c, start = counts[rows], offsets[rows]
    return torch.repeat_interleave(start - (c.cumsum(0) - c), c) + torch.arange(int(c.sum()))
