"""The evaluation report from a small real run: every table and plot, numbers equal the store, CIs, browser."""

from html.parser import HTMLParser

import numpy as np
import pytest

from assets.seqrec.pipeline import load_data, train_stage
from recalign.report import build_report, compare_runs, write_report
from recalign.stats import bootstrap_ci, paired_test

from .helpers import TINY, dataset_home, dpo_config, sft_config
from .service_utils import chromium_page


class Parsed(HTMLParser):
    def __init__(self):
        super().__init__()
        self.h2, self.tables, self.imgs, self._in_h2, self._cell, self._row = [], [], 0, False, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_h2 = True
        elif tag == "table":
            self.tables.append({"title": self.h2[-1] if self.h2 else "", "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
            self.imgs += 1

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append(self._row)

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
        elif self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    home, real = dataset_home(tmp_path_factory, "movielens-100k", "movielens_100k", "ml100k")
    data = load_data(home, "ml100k", 50, ["id"])
    quiet = lambda *_: None
    sft = train_stage(
        home,
        "ml100k",
        TINY,
        sft_config(epochs=2, batch_size=64, lr=3e-3, show_progress=False),
        data=data,  # registered under its run_name: seqrec_sft
        log=quiet,
    )
    dpo = train_stage(
        home,
        "ml100k",
        {},
        dpo_config(epochs=1, batch_size=64, topk=20, show_progress=False),
        reference=(sft["name"], sft["version"]),
        data=data,
        log=quiet,
    )
    store = home.metrics()
    rep = build_report(store, "ml100k")
    paths = write_report(rep, home.reports_dir("ml100k") / "test")
    return home, store, rep, paths, sft, dpo, real


def test_report_has_every_table_and_plot(ml_run):
    _, _, rep, paths, _, _, _ = ml_run
    parsed = Parsed()
    parsed.feed(open(paths["html"]).read())
    titles = " ".join(parsed.h2)
    for promised in (
        "sequential track, test, full ranking",
        "LLM track",
        "published numbers",
        "ablation: negative samplers",
        "ablation: components",
        "by history length",
        "bootstrap 95% intervals",
        "paired test",
        "training curves",
        "score distributions before and after DPO",
        "metric by history length",
        "by the target item's training interactions",
        "metric by target popularity",
    ):
        assert promised in titles, promised
    assert parsed.imgs == len(rep.plots) == 4
    assert open(paths["markdown"]).read().count("|") > 50


def test_report_numbers_equal_the_metrics_table(ml_run):
    _, store, _, paths, sft, dpo, _ = ml_run
    parsed = Parsed()
    parsed.feed(open(paths["html"]).read())
    table = next(t for t in parsed.tables if t["title"].startswith("sequential track, test"))
    header, rows = table["rows"][0], table["rows"][1:]
    for out in (sft, dpo):
        stored = store.read(
            "SELECT value FROM metrics WHERE run_id = ? AND split = 'test' AND metric = 'ndcg' AND k = 10",
            [out["run_id"]],
        )["value"].iloc[0]
        shown = [r for r in rows if r[0].startswith(out["variant"])][0][header.index("ndcg@10")]
        assert shown == f"{stored:.4f}"
    diff = compare_runs(store, sft["run_id"], dpo["run_id"])
    row = diff[(diff["split"] == "test") & (diff["name"] == "ndcg@10")].iloc[0]
    assert row["diff"] == pytest.approx(row[dpo["run_id"]] - row[sft["run_id"]])


def test_popularity_buckets_count_the_targets_training_interactions(ml_run):
    home, store, rep, _, _, dpo, real = ml_run
    seq = load_data(home, "ml100k", 50, ["id"]).seq
    counts = np.bincount(np.concatenate(seq.train), minlength=seq.n_items + 1)
    test_target = dict(zip(seq.user_ids.tolist(), seq.test.tolist()))
    ranks = store.read(
        "SELECT user_id, rank, target_count FROM user_ranks WHERE run_id = ? AND split = 'test'", [dpo["run_id"]]
    )
    assert len(ranks) > 100
    assert ranks["target_count"].tolist() == [int(counts[test_target[u]]) for u in ranks["user_id"]]
    table = rep.tables["test NDCG@10 by the target item's training interactions"].set_index("run_id")
    ndcg = lambda r: np.where(r <= 10, 1 / np.log2(r + 1), 0.0).mean()
    shown = 0
    for name, lo, hi in (("0-4", 0, 4), ("5-9", 5, 9), ("10-19", 10, 19), ("20-49", 20, 49), (">=50", 50, 10**9)):
        band = ranks[ranks["target_count"].between(lo, hi)]
        if len(band):
            assert table.loc[dpo["run_id"], name] == pytest.approx(ndcg(band["rank"].to_numpy()))
            shown += 1
    assert shown >= (3 if real else 2)  # MovieLens test targets range from rare to very popular films


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)
    values = rng.binomial(1, 0.1, size=20000).astype(float)
    small = bootstrap_ci(values[:500])
    large = bootstrap_ci(values)
    for mean, lo, hi in (small, large):
        assert lo <= mean <= hi
    assert (large[2] - large[1]) < (small[2] - small[1]) / 3
    same = paired_test(values[:1000], values[:1000])
    assert same["p_wilcoxon"] == 1.0 and same["mean_diff"] == 0
    better = paired_test(np.clip(values[:2000] + rng.binomial(1, 0.2, 2000), 0, 1), values[:2000])
    assert better["p_wilcoxon"] < 0.01 and better["ci_low"] > 0


def test_report_renders_in_a_real_browser(ml_run):
    _, _, rep, paths, _, _, _ = ml_run
    shot = paths["html"].replace(".html", ".png")

    def render(page):
        page.goto("file://" + paths["html"])
        page.wait_for_load_state("load")
        page.screenshot(path=shot, full_page=True)
        return page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")

    loaded = chromium_page(render)
    assert len(loaded) == len(rep.plots) and all(loaded)


def test_sft_continues_from_a_registered_model(ml_run):
    home, store, _, _, sft, _, _ = ml_run
    # lr 0: the continued run must be exactly the model it starts from (same valid metrics, same architecture)
    cont = train_stage(
        home,
        "ml100k",
        {},
        sft_config(epochs=1, batch_size=64, lr=0.0, show_progress=False),
        "seqrec_sft_continued",
        init=(sft["name"], sft["version"]),
        log=lambda *_: None,
    )
    quality = lambda m: {k: v for k, v in m.items() if "@" in k}
    assert quality(cont["valid"]) == pytest.approx(quality(sft["valid"]), abs=1e-12)
    cfg = store.read("SELECT config FROM runs WHERE run_id = ?", [cont["run_id"]])["config"].iloc[0]
    assert f'"init": "{sft["name"]}/{sft["version"]}"' in cfg


def test_attribute_ids_decode_to_each_items_categories_and_train(ml_run):
    from recalign.registry import Registry
    from recalign.warehouse import Warehouse
    from training.seqrec.checkpoint import load_model
    from training.seqrec.ensemble import trained_member

    home, real = ml_run[0], ml_run[-1]
    data = load_data(home, "ml100k", 50, ["id"], attributes=True)
    items = Warehouse(home.warehouse_path("ml100k")).read("SELECT item_id, categories FROM items")
    names = data.attribute_names
    assert names == sorted(set(names)) and len(names) >= (18 if real else 12)  # MovieLens genres; synthetic categories
    for item, cats in zip(items["item_id"], items["categories"]):
        row = data.attributes[item]
        assert [names[i - 1] for i in row[row > 0].tolist()] == (
            [c.strip() for c in cats.split(" | ")] if isinstance(cats, str) else []
        )
    out = train_stage(
        home,
        "ml100k",
        {**TINY, "attributes": True},
        sft_config(epochs=1, batch_size=64, lr=3e-3, show_progress=False),
        "seqrec_sft_attr",
        data=data,
        log=lambda *_: None,
    )
    model, _ = load_model(Registry(home.registry_dir("ml100k")).get(out["name"], out["version"]).path)
    model = trained_member(model)  # the learnt model (under a Markov prior where validation chose one)
    assert model.cfg.attributes and model.cfg.n_attributes == len(names)
    assert model.attr_emb.weight[1:].abs().sum() > 0 and out["test"]["ndcg@10"] > 0


def test_history_mask_hides_exactly_each_real_prefix(ml_run):
    """On MovieLens-100k windows (synthetic in a clone): the default SFT trained with the mask, and the mask covers each prefix only."""
    import torch

    from recalign.registry import Registry
    from training.seqrec.checkpoint import load_model
    from training.seqrec.data import length_buckets, trim
    from training.seqrec.ensemble import trained_member

    home, _, _, _, sft, _, _ = ml_run
    model, meta = load_model(Registry(home.registry_dir("ml100k")).get(sft["name"], sft["version"]).path)
    model = trained_member(model)
    assert meta["train"]["mask_history"] is True
    data = load_data(home, "ml100k", 50, ["id"])
    idx = length_buckets(data.train_inputs, 64)[:4]
    for rows in idx:
        seq, tgt = trim(data.train_inputs[rows], data.train_targets[rows])
        with torch.no_grad():
            plain, t = model.position_logits(seq, tgt)
            masked, _ = model.position_logits(seq, tgt, mask_seen=True)
        hidden = torch.isinf(masked) & ~torch.isinf(plain)
        positions = (tgt > 0).nonzero().tolist()  # row order of position_logits
        for r, (b, p) in enumerate(positions):
            prefix = set(seq[b, : p + 1][seq[b, : p + 1] > 0].tolist()) - {int(t[r])}
            assert set(hidden[r].nonzero().flatten().tolist()) == prefix
        assert torch.isfinite(masked.gather(1, t[:, None])).all()


def test_serving_holds_the_tracks_newest_model_until_one_is_published(ml_run):
    """`make serve` before any publish serves the newest sequential model, whatever its variant's name."""
    from serving.model_holder import ModelHolder

    home, _, _, _, sft, dpo, _ = ml_run
    reg = home.registry("ml100k")
    assert reg.published() is None and dpo["name"] != "seqrec_dpo"  # a variant name, e.g. seqrec_dpo_stochastic_topk
    n_items = home.warehouse("ml100k").n_items()
    holder = ModelHolder(home.registry_dir("ml100k"), n_items)
    newest = max((d for d in (reg.root / "models").glob("seqrec*/2*")), key=lambda d: d.name)  # versions sort by time
    assert holder.check() and (holder.current.name, holder.current.version) == (newest.parent.name, newest.name)
    reg.publish(reg.get(sft["name"], sft["version"]))
    try:
        assert holder.check() and holder.current.version == sft["version"]  # the pointer wins once it exists
    finally:
        reg.pointer.unlink()


def test_peer_baseline_is_compared_with_ours_user_by_user(tmp_path):
    from recalign.metrics_store import MetricsStore

    from .helpers import load_benchmark

    bench = load_benchmark("baselines")
    assert bench.full_ranks([3, 0, 1], n_items=100).tolist() == [3, 101, 1]  # outside the peer's top K: last
    store = MetricsStore(tmp_path / "m.duckdb")
    run = store.new_run("seqrec", "sft", "tiny", {})
    users = np.arange(400)
    store.log_ranks(run, "test", users, np.where(users % 2 == 0, 1, 3), np.full(400, 5))
    peer_ranks = np.where(users % 4 == 0, 1, 0)  # the peer finds half of our hits and nothing else
    both = bench.side_by_side(store, run, users[::-1].tolist(), peer_ranks[::-1].tolist(), n_items=50)
    out = bench.paired_vs_ours(both)
    ours5 = (200 * 1 + 200 / np.log2(4)) / 400
    assert out["ndcg@5"]["users"] == 400
    assert out["ndcg@5"]["mean_diff"] == pytest.approx(ours5 - 100 / 400, abs=1e-5)
    assert out["ndcg@10"]["ci_low"] > 0 and out["ndcg@10"]["p_wilcoxon"] < 0.001


def test_peer_comparison_by_target_count_and_the_stage_two_of_our_sft(tmp_path):

    from recalign.metrics_store import MetricsStore
    from recalign.registry import Registry

    from .helpers import load_benchmark

    bench = load_benchmark("baselines")
    store = MetricsStore(tmp_path / "m.duckdb")
    run = store.new_run("seqrec", "sft", "tiny", {})
    users = np.arange(400)
    target_counts = np.array([0, 7, 30, 100])[users % 4]  # the targets' training interactions, as evaluation logs them
    store.log_ranks(run, "test", users, np.where(users % 2 == 0, 1, 3), np.full(400, 5), target_counts)
    peer_ranks = np.where(users % 4 == 0, 1, 0)  # the peer finds only the rarest target
    out = bench.by_target_count(bench.side_by_side(store, run, users.tolist(), peer_ranks.tolist(), 50))
    assert out == {
        "0-4": {"users": 0.25, "ours": 1.0, "peer": 1.0},
        "5-9": {"users": 0.25, "ours": 0.5, "peer": 0.0},  # rank 3: 1 / log2(4)
        "20-49": {"users": 0.25, "ours": 1.0, "peer": 0.0},
        ">=50": {"users": 0.25, "ours": 0.5, "peer": 0.0},
    }
    reg = Registry(tmp_path / "registry")
    (tmp_path / "w").mkdir()
    sft = reg.register("seqrec_sft", tmp_path / "w", {"test": {}})
    mine = reg.register("seqrec_dpo_random", tmp_path / "w", {"config": {"reference": f"seqrec_sft/{sft.version}"}})
    reg.register("seqrec_dpo_stochastic_topk", tmp_path / "w", {"config": {"reference": "seqrec_sft/other"}})
    assert bench.stage_two_of(reg, sft).version == mine.version  # not the newest stage 2 of the home


def test_preference_benchmark_reads_the_stage_by_target_count_on_both_splits(tmp_path):
    from recalign.metrics_store import MetricsStore

    from .helpers import load_benchmark

    bench = load_benchmark("preference")
    store = MetricsStore(tmp_path / "m.duckdb")
    users = np.arange(400)
    counts = np.array([0, 100])[users % 2]  # even users: a rare target; odd: a popular one
    sft, policy = store.new_run("seqrec", "sft", "tiny", {}), store.new_run("seqrec", "dpo", "tiny", {})
    for split in ("valid", "test"):
        store.log_ranks(sft, split, users, np.where(users % 2 == 0, 3, 1), np.full(400, 5), counts)
        store.log_ranks(policy, split, users[::-1], np.where(users[::-1] % 2 == 0, 1, 3), np.full(400, 5), counts[::-1])
    out = bench.by_target_count(store, sft, policy)
    assert (
        out["valid"]
        == out["test"]
        == {
            "0-4": {"users": 0.5, "sft": 0.5, "policy": 1.0},  # rank 3: 1 / log2(4)
            ">=50": {"users": 0.5, "sft": 1.0, "policy": 0.5},
        }
    )


def test_a_stage_two_model_is_a_candidate_only_when_it_beats_its_sft_beyond_noise(tmp_path):
    import time

    from assets.seqrec.publish import choose_candidate, stage_two_verdict
    from recalign.metrics_store import MetricsStore
    from recalign.registry import Registry

    store, reg = MetricsStore(tmp_path / "m.duckdb"), Registry(tmp_path / "registry")
    (tmp_path / "w").mkdir()
    users = np.arange(2000)
    sft_run = store.new_run("seqrec", "sft", "tiny", {})
    store.log_ranks(sft_run, "valid", users, np.where(users % 2 == 0, 1, 100), np.full(2000, 5))
    sft = reg.register("seqrec_sft", tmp_path / "w", {"run_id": sft_run, "valid": {"ndcg@10": 0.5}})

    def stage_two(ranks, card_valid):
        run = store.new_run("seqrec", "dpo", "tiny", {})
        store.log_ranks(run, "valid", users, ranks, np.full(2000, 5))
        config = {"reference": f"seqrec_sft/{sft.version}"}
        return reg.register(
            "seqrec_dpo_x", tmp_path / "w", {"run_id": run, "valid": {"ndcg@10": card_valid}, "config": config}
        )

    # 2 of 2000 users move from rank 100 to rank 1: higher on validation, not beyond noise
    stage_two(np.where((users % 2 == 0) | (users < 4), 1, 100), 0.501)
    cand = choose_candidate(reg, store)
    assert cand["name"] == "seqrec_sft" and not cand["stage_two"]["eligible"]
    assert cand["stage_two"]["mean_diff"] == pytest.approx(2 / 2000) and cand["stage_two"]["ci_low"] <= 0
    assert "not a candidate" in stage_two_verdict(cand["stage_two"])
    # 200 users move to rank 1: beyond noise, and the better on validation
    time.sleep(1.1)  # versions sort by the second they were registered in
    dpo = stage_two(np.where((users % 2 == 0) | (users < 400), 1, 100), 0.6)
    cand = choose_candidate(reg, store)
    assert (cand["name"], cand["version"]) == (dpo.name, dpo.version) and cand["stage_two"]["ci_low"] > 0
    assert stage_two_verdict(cand["stage_two"]).endswith(": a candidate")
