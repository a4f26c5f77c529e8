"""Item and recurrent user summarizers over the DuckDB warehouse, cached and resumable.

Every batch is committed on its own, keyed by (id, model_id, prompt version, input hash) with a primary key,
so a rerun generates nothing already there and a run killed half-way resumes where it stopped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recalign.warehouse import Warehouse

from .backends import Request, Summarizer
from .prompts import ITEM_PROMPT_VERSION, USER_PROMPT_VERSION

ITEM_DDL = """CREATE TABLE IF NOT EXISTS item_summaries (
    item_id BIGINT, backend VARCHAR, model_id VARCHAR, prompt_version VARCHAR, input_hash VARCHAR,
    summary VARCHAR, image_status VARCHAR, image_text VARCHAR, seconds DOUBLE, created_at TIMESTAMP,
    PRIMARY KEY (item_id, model_id, prompt_version, input_hash))"""
USER_DDL = """CREATE TABLE IF NOT EXISTS user_summaries (
    user_id BIGINT, block_index INTEGER, backend VARCHAR, model_id VARCHAR, prompt_version VARCHAR,
    input_hash VARCHAR, item_ids BIGINT[], last_position BIGINT, summary VARCHAR, seconds DOUBLE,
    created_at TIMESTAMP, PRIMARY KEY (user_id, block_index, model_id, prompt_version, input_hash))"""
Log = Callable[[str], None]


def _chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _ensure(wh: Warehouse) -> None:
    with wh.connect() as con:
        con.execute(ITEM_DDL)
        con.execute(USER_DDL)


def _insert(wh: Warehouse, table: str, rows: pd.DataFrame) -> None:
    """One committed batch; INSERT OR IGNORE keeps every key exactly once even if two runs overlap."""
    with wh.connect() as con:
        con.register("_rows", rows)
        con.execute(f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM _rows")
        con.unregister("_rows")


def sample_users(wh: Warehouse, n: int | None, seed: int = 0) -> list[int]:
    """All users, or a seeded sample of n (a CPU cannot summarise 22k users quickly)."""
    users = wh.read("SELECT DISTINCT user_id FROM sequences ORDER BY user_id")["user_id"].to_numpy()
    if n is None or n >= len(users):
        return users.tolist()
    return sorted(np.random.default_rng(seed).choice(users, size=n, replace=False).tolist())


# --- items ---------------------------------------------------------------------------------------


def item_requests(wh: Warehouse, item_ids: list[int] | None = None) -> pd.DataFrame:
    """item_id + the summarizer request (title, attributes, description or plot, image path)."""
    images = (
        "(SELECT item_id, min(path) AS path FROM item_images GROUP BY item_id)"
        if wh.has_table("item_images")
        else "(SELECT NULL::BIGINT AS item_id, NULL::VARCHAR AS path)"
    )
    df = wh.read(f"""SELECT i.item_id, i.title, i.categories, i.description, im.path
                     FROM items i LEFT JOIN {images} im USING (item_id) ORDER BY i.item_id""")
    if item_ids is not None:
        df = df[df["item_id"].isin(set(item_ids))]
    df = df.astype(object).where(df.notna(), None)
    df["request"] = [
        Request("item", {"title": r.title, "categories": r.categories, "description": r.description}, r.path)
        for r in df.itertuples()
    ]
    df["input_hash"] = [r.input_hash() for r in df["request"]]
    return df.reset_index(drop=True)


def summarize_items(
    wh: Warehouse,
    summarizer: Summarizer,
    item_ids: list[int] | None = None,
    batch_size: int = 8,
    log: Log | None = None,
) -> dict:
    """Generate the missing item summaries of this model and prompt version; returns run statistics."""
    _ensure(wh)
    batch_size = max(batch_size, getattr(summarizer, "min_batch", 1))
    reqs = item_requests(wh, item_ids)
    done = wh.read(
        "SELECT item_id, input_hash FROM item_summaries WHERE model_id = ? AND prompt_version = ?",
        [summarizer.model_id, ITEM_PROMPT_VERSION],
    )
    have = set(zip(done["item_id"], done["input_hash"]))
    todo = reqs[[(i, h) not in have for i, h in zip(reqs["item_id"], reqs["input_hash"])]].copy()
    # similar prompt lengths in a batch: less left padding
    todo["_len"] = [len(str(r.fields)) for r in todo["request"]]
    todo = todo.sort_values(["_len", "item_id"], kind="stable")
    t0, fallbacks, n_new = time.perf_counter(), 0, 0
    bar = tqdm(total=len(todo), desc=f"item summaries ({summarizer.model_id})", unit="item")
    for chunk in _chunks(list(todo.itertuples()), batch_size):
        t = time.perf_counter()
        results = summarizer.summarize([r.request for r in chunk])
        secs = (time.perf_counter() - t) / len(chunk)
        rows = pd.DataFrame(
            {
                "item_id": [r.item_id for r in chunk],
                "backend": summarizer.backend,
                "model_id": summarizer.model_id,
                "prompt_version": ITEM_PROMPT_VERSION,
                "input_hash": [r.input_hash for r in chunk],
                "summary": [res.text for res in results],
                "image_status": [res.image_status for res in results],
                "image_text": [res.extra.get("image_text") for res in results],
                "seconds": secs,
                "created_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
            }
        )
        _insert(wh, "item_summaries", rows)
        fallbacks += sum(res.image_status.startswith("fallback") for res in results)
        n_new += len(chunk)
        bar.update(len(chunk))
        if log and n_new % (batch_size * 10) < batch_size:
            log(f"item summaries: {n_new}/{len(todo)} ({n_new / (time.perf_counter() - t0):.2f} items/s)")
    bar.close()
    seconds = time.perf_counter() - t0
    return {
        "requested": len(reqs),
        "new": n_new,
        "cached": len(reqs) - len(todo),
        "image_fallbacks": fallbacks,
        "seconds": round(seconds, 2),
        "items_per_s": round(n_new / seconds, 3) if n_new else None,
        "backend": summarizer.backend,
        "model_id": summarizer.model_id,
        "prompt_version": ITEM_PROMPT_VERSION,
        "examples": examples(wh, "item", summarizer.model_id, reqs["item_id"].tolist()),
    }


def examples(wh: Warehouse, kind: str, model_id: str, ids: list[int], n: int = 3) -> pd.DataFrame:
    if kind == "item":
        return wh.read(
            """SELECT s.item_id, i.title, s.image_status, s.summary FROM item_summaries s JOIN items i
                          USING (item_id) WHERE s.model_id = ? AND s.item_id IN (SELECT unnest(?)) ORDER BY s.item_id
                          LIMIT ?""",
            [model_id, ids[:1000], n],
        )
    return wh.read(
        """SELECT user_id, block_index, summary FROM user_summaries WHERE model_id = ?
                      AND user_id IN (SELECT unnest(?)) ORDER BY user_id, block_index LIMIT ?""",
        [model_id, ids[:1000], n],
    )


# --- users ---------------------------------------------------------------------------------------


def history_blocks(train: pd.DataFrame, block_size: int = 3, session_gap_s: int | None = None) -> list[pd.DataFrame]:
    """Split one user's time-ordered *training* rows into blocks: fixed size, or a new block after a time gap."""
    train = train.sort_values("position")
    if session_gap_s is None:
        return [train.iloc[i : i + block_size] for i in range(0, len(train), block_size)]
    new_block = train["ts"].diff().fillna(0).to_numpy() > session_gap_s
    ids = np.cumsum(new_block)
    return [train[ids == b] for b in np.unique(ids)]


def _item_texts(wh: Warehouse, model_id: str) -> dict[int, dict]:
    """Title + the item summary of this model (else the newest of any model, else the attributes)."""
    has = wh.has_table("item_summaries")
    summary = (
        (
            "(SELECT item_id, arg_max(summary, (model_id = ?)::INT * 1e12 + epoch(created_at)) AS summary "
            "FROM item_summaries GROUP BY item_id)"
        )
        if has
        else "(SELECT NULL::BIGINT item_id, NULL summary)"
    )
    df = wh.read(
        f"""SELECT i.item_id, i.title, coalesce(s.summary, i.categories) AS summary
                     FROM items i LEFT JOIN {summary} s USING (item_id)""",
        [model_id] if has else [],
    )
    return {int(r.item_id): {"title": r.title, "summary": r.summary} for r in df.itertuples()}


def summarize_users(
    wh: Warehouse,
    summarizer: Summarizer,
    user_ids: list[int],
    block_size: int = 3,
    session_gap_s: int | None = None,
    batch_size: int = 8,
    max_blocks: int | None = None,
    log: Log | None = None,
) -> dict:
    """Recurrent user summaries (MLLM-MSR Eq. 2): step b sees summary b-1 plus block b's item summaries.

    Only the training part of each history is read: validation and test items never reach a prompt."""
    _ensure(wh)
    batch_size = max(batch_size, getattr(summarizer, "min_batch", 1))
    train = wh.read(
        """SELECT user_id, position, item_id, ts FROM sequences WHERE split = 'train'
                       AND user_id IN (SELECT unnest(?)) ORDER BY user_id, position""",
        [list(map(int, user_ids))],
    )
    blocks = {int(u): history_blocks(g, block_size, session_gap_s) for u, g in train.groupby("user_id")}
    if max_blocks:  # keep the most recent blocks, the ones that shape the final summary
        blocks = {u: b[-max_blocks:] for u, b in blocks.items()}
    items = _item_texts(wh, summarizer.model_id)
    done = wh.read(
        """SELECT user_id, block_index, input_hash, summary FROM user_summaries
                      WHERE model_id = ? AND prompt_version = ?""",
        [summarizer.model_id, USER_PROMPT_VERSION],
    )
    cache = {(int(u), int(b), h): s for u, b, h, s in done.itertuples(index=False)}
    prev: dict[int, str | None] = {u: None for u in blocks}
    total = sum(len(b) for b in blocks.values())
    t0, n_new = time.perf_counter(), 0
    bar = tqdm(total=total, desc=f"user summaries ({summarizer.model_id})", unit="step")
    for b in range(max((len(v) for v in blocks.values()), default=0)):
        step = []
        for u, ub in blocks.items():
            if b < len(ub):
                block = ub[b]
                req = Request("user", {"previous": prev[u], "block": [items[int(i)] for i in block["item_id"]]})
                step.append((u, block, req, req.input_hash()))
        todo = []
        for u, block, req, h in step:
            if (u, b, h) in cache:
                prev[u] = cache[(u, b, h)]
            else:
                todo.append((u, block, req, h))
        bar.update(len(step) - len(todo))
        for chunk in _chunks(todo, batch_size):
            t = time.perf_counter()
            results = summarizer.summarize([c[2] for c in chunk])
            secs = (time.perf_counter() - t) / len(chunk)
            _insert(
                wh,
                "user_summaries",
                pd.DataFrame(
                    {
                        "user_id": [c[0] for c in chunk],
                        "block_index": b,
                        "backend": summarizer.backend,
                        "model_id": summarizer.model_id,
                        "prompt_version": USER_PROMPT_VERSION,
                        "input_hash": [c[3] for c in chunk],
                        "item_ids": [c[1]["item_id"].astype(int).tolist() for c in chunk],
                        "last_position": [int(c[1]["position"].max()) for c in chunk],
                        "summary": [r.text for r in results],
                        "seconds": secs,
                        "created_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
                    }
                ),
            )
            for c, r in zip(chunk, results):
                prev[c[0]] = r.text
            n_new += len(chunk)
            bar.update(len(chunk))
        if log:
            log(f"user summaries: block {b} done, {n_new} new steps so far")
    bar.close()
    seconds = time.perf_counter() - t0
    return {
        "users": len(blocks),
        "steps": total,
        "new": n_new,
        "cached": total - n_new,
        "seconds": round(seconds, 2),
        "steps_per_s": round(n_new / seconds, 3) if n_new else None,
        "backend": summarizer.backend,
        "model_id": summarizer.model_id,
        "block_size": block_size,
        "examples": examples(wh, "user", summarizer.model_id, list(blocks)),
    }


def latest_user_summaries(wh: Warehouse, model_id: str | None = None) -> dict[int, str]:
    """Each user's final summary (highest block index) for a model, or of any model."""
    if not wh.has_table("user_summaries"):
        return {}
    where, params = ("WHERE model_id = ?", [model_id]) if model_id else ("", [])
    df = wh.read(
        f"""SELECT user_id, arg_max(summary, block_index * 1e12 + epoch(created_at)) AS summary
                     FROM user_summaries {where} GROUP BY user_id""",
        params,
    )
    return dict(zip(df["user_id"].astype(int), df["summary"]))
