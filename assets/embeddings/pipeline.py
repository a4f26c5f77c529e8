"""Plain functions behind the embedding assets (no Dagster here)."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pandas as pd

from recalign.settings import Settings
from training.smoke import SMOKE_IMAGES, SMOKE_TEXTS, smoke

from .encoders import MINILM_ID, ImageEncoder, SentenceEncoder
from .texts import TEXT_RECIPES


@functools.lru_cache(maxsize=4)
def text_encoder(name: str = MINILM_ID, device: str = "cpu") -> SentenceEncoder:
    return SentenceEncoder(name, device=device)


@functools.lru_cache(maxsize=2)
def image_encoder(device: str = "cpu") -> ImageEncoder:
    return ImageEncoder(device=device)


def embed_text_table(
    settings: Settings, dataset: str, table: str, model: str = MINILM_ID, device: str = "cpu", batch_size: int = 256
) -> dict:
    """Embed the recipe's text for `table` incrementally; returns stats for metadata."""
    wh = settings.warehouse(dataset)
    rows = TEXT_RECIPES[table](wh)
    if smoke():
        rows = rows.head(SMOKE_TEXTS)
    enc = text_encoder(model, device)
    stats = settings.vectors(dataset).upsert(table, rows, enc.model_id, enc.dim, enc.encode, batch_size)
    return stats.as_dict() | {"source_rows": len(rows)}


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()[:32]


def embed_item_images(settings: Settings, dataset: str, device: str = "cpu", batch_size: int = 32) -> dict:
    """EfficientNet-Lite0 vectors of every validated item image; items without an image get no row."""
    wh = settings.warehouse(dataset)
    img = wh.read("SELECT item_id AS id, path FROM item_images ORDER BY item_id")
    if smoke():
        img = img.head(SMOKE_IMAGES)
    rows = pd.DataFrame({"id": img["id"], "content": img["path"], "content_hash": [_file_hash(p) for p in img["path"]]})
    store = settings.vectors(dataset)
    if rows.empty:
        return {"table": "item_image", "rows": 0, "new": 0, "reused": 0, "deleted": 0, "source_rows": 0}
    enc = image_encoder(device)
    stats = store.upsert("item_image", rows, enc.model_id, enc.dim, enc.encode, batch_size)
    return stats.as_dict() | {"source_rows": len(rows)}


def coverage(settings: Settings, dataset: str, table: str) -> dict:
    """Which ids that have text lack a vector (the asset check)."""
    wh = settings.warehouse(dataset)
    want = set(TEXT_RECIPES[table](wh)["id"].tolist())
    have = set(settings.vectors(dataset).keys(table)["id"].tolist())
    missing = sorted(want - have)
    return {
        "with_text": len(want),
        "with_vector": len(want & have),
        "missing": len(missing),
        "missing_examples": missing[:10],
    }


def feature_matrix(settings: Settings, dataset: str, table: str, n_ids: int) -> np.ndarray | None:
    store = settings.vectors(dataset)
    if not store.has(table):
        return None
    mat, has = store.matrix(table, n_ids)
    return mat if has.any() else None
