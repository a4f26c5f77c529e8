"""MSPA's hybrid reward for GRPO: accuracy + format + similarity, each a trl reward function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def normalise_title(text: str) -> str:
    """Compare answers leniently on case, surrounding quotes/whitespace and a trailing full stop only."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return " ".join(first.strip().strip("\"'`").rstrip(".").split()).casefold()


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational completions: [{"role": "assistant", "content": ...}]
        return completion[-1]["content"] if completion else ""
    return completion


def accuracy_reward(completions, answer, **kwargs) -> list[float]:
    """1 when the answer is the user's next item, else 0."""
    return [float(normalise_title(_text(c)) == normalise_title(a)) for c, a in zip(completions, answer)]


def yes_no_reward(completions, answer, **kwargs) -> list[float]:
    """Pointwise: 1 when the answer's first word is the label (Yes / No), else 0."""
    first = lambda t: (normalise_title(_text(t)).split() or [""])[0].strip(".,!")  # noqa: E731
    return [float(first(c) == a.casefold()) for c, a in zip(completions, answer)]


def format_reward(completions, candidates, **kwargs) -> list[float]:
    """1 when the answer is exactly one of the candidate titles (and nothing else), else 0."""
    out = []
    for c, cands in zip(completions, candidates):
        text = _text(c).strip()
        names = {normalise_title(x) for x in cands}
        out.append(float("\n" not in text and normalise_title(text) in names))
    return out


def similarity_reward_fn(encode: Callable[[list[str]], np.ndarray]):
    """Embedding cosine between the answer and the next item (vectors L2-normalised), clipped at 0."""

    def similarity_reward(completions, answer_vec, **kwargs) -> list[float]:
        vecs = encode([_text(c).strip() or "?" for c in completions])
        target = np.asarray([np.asarray(v, dtype=np.float32) for v in answer_vec])
        return np.clip((vecs * target).sum(1), 0.0, 1.0).astype(float).tolist()

    return similarity_reward


@dataclass
class RewardWeights:
    accuracy: float = 1.0
    format: float = 0.5
    similarity: float = 0.5

    def as_list(self) -> list[float]:
        return [self.accuracy, self.format, self.similarity]


def mspa_rewards(encode: Callable[[list[str]], np.ndarray]) -> list:
    return [accuracy_reward, format_reward, similarity_reward_fn(encode)]
