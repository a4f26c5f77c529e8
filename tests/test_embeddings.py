"""Embedding tables: incremental rebuilds, stable vectors, search, items without images."""

import numpy as np
import pytest

from assets.embeddings.pipeline import embed_item_images, embed_text_table, text_encoder
from assets.ingest.pipeline import DatasetSpec, build_sequences, build_warehouse
from recalign.vectors import VectorStore, content_hash
from recalign.warehouse import Warehouse


@pytest.fixture(scope="module")
def synthetic_home(tmp_path_factory):
    from recalign.settings import Settings

    home = Settings.from_env(tmp_path_factory.mktemp("emb"))
    spec = DatasetSpec()
    build_warehouse(home, spec)
    build_sequences(home, spec)
    return home


def test_incremental_rebuild_embeds_only_changes(synthetic_home):
    home = synthetic_home
    first = embed_text_table(home, "synthetic", "item_text")
    assert first["new"] == first["rows"] == first["source_rows"] == 480
    again = embed_text_table(home, "synthetic", "item_text")
    assert again["new"] == 0 and again["reused"] == 480 and again["deleted"] == 0
    wh = Warehouse(home.warehouse_path("synthetic"))
    with wh.connect() as con:
        con.execute("UPDATE items SET title = title || ' (2nd edition)' WHERE item_id IN (3, 7, 11)")
    changed = embed_text_table(home, "synthetic", "item_text")
    assert changed["new"] == 3 and changed["deleted"] == 3 and changed["rows"] == 480
    keys = home.vectors("synthetic").keys("item_text")
    assert keys["id"].is_unique


def test_same_text_same_vector_and_self_is_nearest(synthetic_home):
    enc = text_encoder()
    a, b = enc.encode(["Quiet Sencha Classic No.2"]), enc.encode(["Quiet Sencha Classic No.2"])
    assert np.array_equal(a, b) and abs(np.linalg.norm(a) - 1) < 1e-5
    embed_text_table(synthetic_home, "synthetic", "item_text")
    store = synthetic_home.vectors("synthetic")
    for item in (1, 42, 300):
        res = store.nearest("item_text", item, k=5)
        assert res["id"].iloc[0] == item and res["score"].iloc[0] > 0.999
    filtered = store.nearest("item_text", 42, k=5, filter="id > 100")
    assert (filtered["id"] > 100).all()


def test_images_only_for_items_that_have_one(tmp_path, monkeypatch):
    from recalign.settings import Settings

    home = Settings.from_env(tmp_path / "h")
    spec = DatasetSpec()
    build_warehouse(home, spec)
    wh = Warehouse(home.warehouse_path("synthetic"))
    with wh.connect() as con:  # keep 48 images: the other items have none
        con.execute("DELETE FROM item_images WHERE item_id > 48")
    stats = embed_item_images(home, "synthetic")
    assert stats["rows"] == 48 and stats["dim"] == 1280
    mat, has = home.vectors("synthetic").matrix("item_image", 480)
    assert has.sum() == 48 and not mat[49:].any()  # never a fake vector
    # the image features carry the sub-category's shape: same-shape images are far closer
    v = mat[1:49]
    shape = (np.arange(48) // 12) % 4
    sim = v @ v.T
    same = (shape[:, None] == shape[None]) & ~np.eye(48, dtype=bool)
    assert sim[same].mean() > sim[shape[:, None] != shape[None]].mean() + 0.1


def test_store_rebuilds_when_the_model_changes(tmp_path):
    import pandas as pd

    store = VectorStore(tmp_path / "l")
    rows = pd.DataFrame({"id": [1, 2], "content": ["a", "b"]})
    rows["content_hash"] = rows["content"].map(content_hash)
    enc = lambda batch: np.eye(4, dtype=np.float32)[: len(batch)]
    assert store.upsert("t", rows, "m1", 4, enc).new == 2
    assert store.upsert("t", rows, "m1", 4, enc).new == 0
    assert store.upsert("t", rows, "m2", 4, enc).new == 2
