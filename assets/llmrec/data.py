"""Dataset builders of the LLM track from the DuckDB tables, the summaries and the LanceDB item vectors.

Targets and their inputs never leak: a training example predicting the item at position p uses only items
before p and the newest user-summary step whose blocks end before p; the test example uses the final
(train-only) summary and the history up to the validation item."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from assets.summaries.summarize import sample_users
from recalign.warehouse import Warehouse
from training.llm.prompt import Example

EVAL_NEGATIVES = 20  # the fixed protocol: 1 positive + 20 seeded negatives per test user


@dataclass
class LLMData:
    titles: dict[int, str]
    notes: dict[int, str]  # item summaries
    seqs: pd.DataFrame  # user_id, position, item_id, split
    chains: pd.DataFrame  # user_id, block_index, last_position, summary
    users: list[int]
    n_items: int

    @classmethod
    def load(cls, wh: Warehouse, n_users: int | None, seed: int = 0, summary_model: str | None = None) -> LLMData:
        users = sample_users(wh, n_users, seed)
        items = wh.read("SELECT item_id, coalesce(title, categories, item_key) AS title FROM items")
        titles = dict(zip(items["item_id"].astype(int), items["title"].astype(str)))
        notes = {}
        if wh.has_table("item_summaries"):
            s = wh.read("SELECT item_id, arg_max(summary, created_at) AS s FROM item_summaries GROUP BY item_id")
            notes = dict(zip(s["item_id"].astype(int), s["s"]))
        seqs = wh.read(
            "SELECT user_id, position, item_id, split FROM sequences WHERE user_id IN (SELECT unnest(?))"
            " ORDER BY user_id, position",
            [users],
        )
        chains = pd.DataFrame(columns=["user_id", "block_index", "last_position", "summary"])
        if wh.has_table("user_summaries"):
            where = "AND model_id = ?" if summary_model else ""
            chains = wh.read(
                f"""SELECT user_id, block_index, last_position, arg_max(summary, created_at) AS summary
                                 FROM user_summaries WHERE user_id IN (SELECT unnest(?)) {where}
                                 GROUP BY ALL ORDER BY user_id, last_position""",
                [users, summary_model] if summary_model else [users],
            )
        return cls(titles, notes, seqs, chains, users, max(titles))

    def summary_before(self, user_id: int, position: int) -> str | None:
        """The newest summary step whose blocks all end before `position` (recurrent chain, no leakage)."""
        c = self.chains[(self.chains["user_id"] == user_id) & (self.chains["last_position"] < position)]
        return None if c.empty else str(c["summary"].iloc[-1])


def _negatives(
    rng: np.random.Generator, n_items: int, exclude: set[int], titles: dict[int, str], n: int, taken_titles: set[str]
) -> list[int]:
    """n items the user never interacted with, with distinct titles (a title must name one candidate)."""
    out: list[int] = []
    seen = set(taken_titles)
    while len(out) < n:
        for i in rng.integers(1, n_items + 1, size=4 * n).tolist():
            t = titles.get(i)
            if i not in exclude and t and t not in seen:
                out.append(i)
                seen.add(t)
                if len(out) == n:
                    break
    return out


def make_example(
    data: LLMData,
    user_id: int,
    rows: pd.DataFrame,
    target_pos: int,
    n_neg: int,
    seed: int,
    history_len: int = 5,
    with_notes: bool = False,
) -> Example:
    """The question at `target_pos` of one user: history before it, the chain summary before it, candidates."""
    before = rows[rows["position"] < target_pos]
    target = int(rows.loc[rows["position"] == target_pos, "item_id"].iloc[0])
    rng = np.random.default_rng([seed, user_id, target_pos])
    negs = _negatives(rng, data.n_items, set(rows["item_id"].astype(int)), data.titles, n_neg, {data.titles[target]})
    ids = [target, *negs]
    order = rng.permutation(len(ids))
    ids = [ids[i] for i in order]
    return Example(
        user_id=user_id,
        summary=data.summary_before(user_id, target_pos),
        history=[data.titles[int(i)] for i in before["item_id"].tail(history_len)],
        candidates=[data.titles[i] for i in ids],
        target=int(np.argmax(order == 0)),
        candidate_ids=ids,
        candidate_notes=[data.notes.get(i) for i in ids] if with_notes else [],
    )


def train_examples(data: LLMData, n_neg: int, targets_per_user: int = 2, seed: int = 0, **kw) -> list[Example]:
    """SFT / preference questions from the training split: the last `targets_per_user` training positions."""
    out = []
    for u, rows in data.seqs.groupby("user_id"):
        train = rows[rows["split"] == "train"]
        for pos in train["position"].iloc[1:].tail(targets_per_user):
            out.append(make_example(data, int(u), rows, int(pos), n_neg, seed, **kw))
    return out


def eval_examples(
    data: LLMData, split: str = "test", seed: int = 0, n_neg: int = EVAL_NEGATIVES, **kw
) -> list[Example]:
    """The fixed protocol: one question per user with the held-out item and 20 seeded negatives."""
    out = []
    for u, rows in data.seqs.groupby("user_id"):
        pos = int(rows.loc[rows["split"] == split, "position"].iloc[0])
        visible = rows[rows["split"] == "train"]["position"].max()
        ex = make_example(data, int(u), rows, pos, n_neg, seed + 7919, **kw)
        ex.summary = data.summary_before(int(u), int(visible) + 1)  # the final train-only summary
        out.append(ex)
    return out
