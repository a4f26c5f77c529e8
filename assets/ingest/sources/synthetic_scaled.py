"""The synthetic source at any scale: the same catalogue and behaviour model as `synthetic.py`, vectorised over
a chunk of users at a time and streamed to Parquet / CSV, so memory stays bounded by the chunk, not the dataset.

Item i belongs to category i mod C at rank i div C of its category's line; a user's next item is mostly one of
the next three of the line, sometimes a random item of a neighbouring category (taste drift) or a popular item
(Zipf). Deterministic: the same config writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from .synthetic import ADJECTIVES, CATEGORIES, NOUNS, SUBCATEGORIES, SyntheticConfig, _draw_image

T0 = 1_704_067_200  # 2024-01-01
BAD_KINDS = ("empty user", "bad timestamp", "unknown item", "duplicate event", "bad rating")


def _width(n: int) -> int:
    return max(5, len(str(n)))


def item_keys(ids: np.ndarray, n_items: int) -> list[str]:
    w = _width(n_items)
    return [f"i{i + 1:0{w}d}" for i in ids.tolist()]


def user_keys(ids: np.ndarray, n_users: int) -> list[str]:
    w = _width(n_users)
    return [f"u{u + 1:0{w}d}" for u in ids.tolist()]


def _items_table(cfg: SyntheticConfig, lo: int, hi: int, rng: np.random.Generator) -> pa.Table:
    n_cat = len(CATEGORIES)
    idx = np.arange(lo, hi)
    cats, ranks = idx % n_cat, idx // n_cat
    adj = rng.integers(len(ADJECTIVES), size=len(idx))
    titles, categories, descriptions = [], [], []
    for c, r, a in zip(cats.tolist(), ranks.tolist(), adj.tolist()):
        cat, sub = CATEGORIES[c][0], SUBCATEGORIES[r % len(SUBCATEGORIES)]
        noun = NOUNS[cat][r % 4]
        titles.append(f"{ADJECTIVES[a]} {noun} {sub} No.{r + 1}")
        categories.append(f"{cat} | {sub}")
        descriptions.append(f"A {sub.lower()} {noun.lower()} for {cat.lower()} fans; item {r + 1} of its line.")
    keys = item_keys(idx, cfg.n_items)
    columns = {"item": keys, "title": titles, "categories": categories, "description": descriptions}
    if cfg.images:
        columns["image"] = [f"images/{k}.png" for k in keys]
    return pa.table(columns)


def _line_lengths(n_items: int) -> np.ndarray:
    n_cat = len(CATEGORIES)
    return np.array([len(range(c, n_items, n_cat)) for c in range(n_cat)], dtype=np.int64)


def _popularity_cdf(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    weights = 1.0 / np.arange(1, cfg.n_items + 1) ** 0.8
    return np.cumsum(weights / weights.sum()), rng.permutation(cfg.n_items)


def chunk_events(
    cfg: SyntheticConfig, users: np.ndarray, rng: np.random.Generator, cdf: np.ndarray, popular: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, ts) of a chunk of users, every user's walk advanced in lockstep, one step per loop."""
    n_cat, lines = len(CATEGORIES), _line_lengths(cfg.n_items)
    lengths = np.clip(rng.poisson(cfg.mean_length, len(users)), 5, 60)
    cat = rng.integers(n_cat, size=len(users))
    item = cat + n_cat * (rng.random(len(users)) * lines[cat]).astype(np.int64)
    ts = T0 + rng.integers(0, 86400 * 60, size=len(users))
    out_u, out_i, out_t = [], [], []
    for step in range(int(lengths.max())):
        live = step < lengths
        out_u.append(users[live])
        out_i.append(item[live])
        out_t.append(ts[live])
        ts = ts + rng.integers(600, 86400 * 3, size=len(users))
        r = rng.random(len(users))
        drift_cat = (cat + rng.choice([-1, 1], size=len(users))) % n_cat
        drift = drift_cat + n_cat * (rng.random(len(users)) * lines[drift_cat]).astype(np.int64)
        pop = popular[np.minimum(np.searchsorted(cdf, rng.random(len(users))), cfg.n_items - 1)]
        rank = item // n_cat
        step_on = rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15], size=len(users))
        succ = cat + n_cat * ((rank + step_on) % lines[cat])
        item = np.where(r < 0.12, drift, np.where(r < 0.22, pop, succ))
        cat = item % n_cat
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_t)


def _plant_bad_rows(table: dict[str, list], n_bad: int, n_items: int, rng: np.random.Generator) -> None:
    """Turn n_bad rows into invalid ones, each kind of BAD_KINDS in turn (a duplicate repeats the row before)."""
    n = len(table["user"])
    odd = np.arange(1, n, 2)  # never two neighbours: a planted duplicate always copies a good row
    rows = np.sort(rng.choice(odd, size=min(n_bad, len(odd)), replace=False))
    for k, row in enumerate(rows.tolist()):
        kind = BAD_KINDS[k % len(BAD_KINDS)]
        if kind == "empty user":
            table["user"][row] = ""
        elif kind == "bad timestamp":
            table["timestamp"][row] = "yesterday"
        elif kind == "unknown item":
            table["item"][row] = f"i{n_items + 10 + k}"
        elif kind == "duplicate event":
            for col in table:
                table[col][row] = table[col][row - 1]
        else:
            table["rating"][row] = "five"


def generate_scaled(dest: Path, cfg: SyntheticConfig) -> Path:
    """Write items.csv, users.csv, interactions.parquet (string columns, as a log export) into dest."""
    marker = dest / f".generated-{cfg.key}"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    step = max(1, cfg.chunk_users)
    with pacsv.CSVWriter(dest / "items.csv", _items_table(cfg, 0, 0, rng).schema) as writer:
        for lo in range(0, cfg.n_items, 10 * step):
            writer.write_table(_items_table(cfg, lo, min(cfg.n_items, lo + 10 * step), rng))
    if cfg.images:
        (dest / "images").mkdir(exist_ok=True)
        for idx in range(cfg.n_items):
            key = item_keys(np.array([idx]), cfg.n_items)[0]
            _draw_image(dest / "images" / f"{key}.png", idx % len(CATEGORIES), idx // len(CATEGORIES), 32, rng)
    users_schema = pa.schema([("user", pa.string()), ("gender", pa.string()), ("age", pa.int64())])
    with pacsv.CSVWriter(dest / "users.csv", users_schema) as writer:
        for lo in range(0, cfg.n_users, 10 * step):
            ids = np.arange(lo, min(cfg.n_users, lo + 10 * step))
            writer.write_table(
                pa.table(
                    {
                        "user": user_keys(ids, cfg.n_users),
                        "gender": np.where(ids % 2 == 0, "F", "M").tolist(),
                        "age": 18 + rng.integers(0, 50, size=len(ids)),
                    },
                    schema=users_schema,
                )
            )
    cdf, popular = _popularity_cdf(cfg, rng)
    schema = pa.schema([(c, pa.string()) for c in ("user", "item", "timestamp", "rating")])
    n_chunks = -(-cfg.n_users // step)
    bad_left = cfg.bad_rows
    with pq.ParquetWriter(dest / "interactions.parquet", schema) as writer:
        for k in tqdm(range(n_chunks), desc="synthetic interactions", unit="chunk", disable=n_chunks < 4):
            users = np.arange(k * step, min(cfg.n_users, (k + 1) * step))
            u, i, t = chunk_events(cfg, users, rng, cdf, popular)
            table = {
                "user": user_keys(u, cfg.n_users),
                "item": item_keys(i, cfg.n_items),
                "timestamp": t.astype(str).tolist(),
                "rating": ["5"] * len(u),
            }
            share = bad_left if k == n_chunks - 1 else cfg.bad_rows // n_chunks
            _plant_bad_rows(table, share, cfg.n_items, rng)
            bad_left -= share
            writer.write_table(pa.table(table, schema=schema))
    marker.touch()
    return dest
