"""The real API over HTTP: offline-equal recommendations, hot switch, refusal of a corrupt model, fuzzing."""

import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from assets.seqrec.pipeline import train_stage
from training.seqrec.checkpoint import load_model

from .helpers import TINY, dataset_home, sft_config
from .service_utils import serving

pytestmark = pytest.mark.service


def tiny_model(home, dataset, seed=1, epochs=1):
    out = train_stage(
        home,
        dataset,
        TINY,
        sft_config(epochs=epochs, batch_size=256, lr=3e-3, seed=seed, show_progress=False),
        "seqrec_sft",
        log=lambda *_: None,
    )
    reg = home.registry(dataset)
    return reg, reg.get(out["name"], out["version"])


@pytest.fixture(scope="module")
def beauty(tmp_path_factory, request):
    home, _ = dataset_home(tmp_path_factory, "amazon-s3rec", "amazon_beauty", "beauty")  # synthetic in a clone
    reg, mv = tiny_model(home, "beauty")
    reg.publish(mv)
    svc = serving(home.home, "beauty", tmp_path_factory.mktemp("logs") / "serve.log")
    yield home, svc, reg, mv
    svc.stop()


def test_recommendations_equal_offline_topk(beauty):
    home, svc, reg, mv = beauty
    model, _ = load_model(mv.path)
    from serving.catalogue import Catalogue

    cat = Catalogue.load(home.warehouse_path("beauty"))
    users = sorted(cat.histories)
    for user in (users[0], users[len(users) // 2], users[-1]):
        hist = cat.histories[user]
        with torch.no_grad():
            raw = model.full_sort_predict(torch.from_numpy(hist[-50:]).view(1, -1))[0].numpy()
        scores = raw.copy()
        scores[hist] = -np.inf
        scores[0] = -np.inf
        offline = np.argsort(-scores, kind="stable")[:10].tolist()
        r = httpx.post(svc.url + "/v1/recommend", json={"user_id": user, "k": 10}).json()
        assert [i["item_id"] for i in r["items"]] == offline
        assert r["model_version"] == f"{mv.name}/{mv.version}" and r["fallback"] is None
        assert r["items"][0]["title"]
        # the deepest list and the history kept in: still the model's own ranking (precomputed lists cover both)
        scores = raw.copy()
        scores[0] = -np.inf
        r = httpx.post(svc.url + "/v1/recommend", json={"user_id": user, "k": 100, "exclude_seen": False}).json()
        assert [i["item_id"] for i in r["items"]] == np.argsort(-scores, kind="stable")[:100].tolist()


def test_bad_requests_are_4xx_or_documented_fallback(beauty):
    home, svc, _, _ = beauty
    from serving.catalogue import Catalogue

    cat = Catalogue.load(home.warehouse_path("beauty"))
    unknown_user = httpx.post(svc.url + "/v1/recommend", json={"user_id": 10**9, "k": 5}).json()
    assert unknown_user["fallback"] == "popularity" and len(unknown_user["items"]) == 5
    r = httpx.post(svc.url + "/v1/recommend", json={"history": [1, 2, 999999], "k": 5})
    assert r.status_code == 404 and "999999" in r.text
    assert httpx.post(svc.url + "/v1/recommend", json={"user_id": 1, "k": 10_000}).status_code == 422
    assert httpx.post(svc.url + "/v1/recommend", json={"history": list(range(1, 400))}).status_code == 422
    assert httpx.get(svc.url + "/v1/items/999999").status_code == 404
    untitled = [i for i, t in cat.titles.items() if t is None]  # Beauty has 7 items without a title
    for item in untitled[:1]:
        r = httpx.get(f"{svc.url}/v1/items/{item}")
        assert r.status_code == 200 and r.json()["title"] is None
        assert httpx.post(svc.url + "/v1/recommend", json={"history": [item, 2], "k": 3}).status_code == 200
    word = cat.categories[3].split(" | ")[-1]  # a category of the catalogue
    ok = httpx.post(svc.url + "/v1/recommend", json={"history": [1, 2, 3], "k": 5, "category": word}).json()
    assert len(ok["items"]) == 5 and all(
        word.lower() in (httpx.get(f"{svc.url}/v1/items/{i['item_id']}").json()["categories"] or "").lower()
        for i in ok["items"]
    )
    metrics = httpx.get(svc.url + "/metrics").text
    assert "recalign_requests_total" in metrics and 'status="422"' in metrics


def test_hot_switch_without_dropping_requests_and_corrupt_model_refused(beauty):
    home, svc, reg, mv = beauty
    errors, stop = [], threading.Event()

    def hammer():
        with httpx.Client() as c:
            while not stop.is_set():
                r = c.post(svc.url + "/v1/recommend", json={"user_id": 5, "k": 5})
                if r.status_code != 200:
                    errors.append(r.status_code)

    _, mv2 = tiny_model(home, "beauty", seed=2)  # trained first: the switch, not the training, meets the load
    t = threading.Thread(target=hammer)
    t.start()
    try:
        reg.publish(mv2)
        deadline = time.time() + 30
        while time.time() < deadline and httpx.get(svc.url + "/readyz").json()["model"]["version"] != mv2.version:
            time.sleep(0.3)
        assert httpx.get(svc.url + "/readyz").json()["model"]["version"] == mv2.version
        # a corrupt version: valid registry entry, garbage weights
        version, staging = reg.new_version_dir("seqrec_sft")
        staging.mkdir(parents=True)
        (staging / "config.json").write_text((mv2.path / "config.json").read_text())
        (staging / "model.safetensors").write_bytes(b"\x00" * 64)
        bad = reg.commit("seqrec_sft", version, staging, {"valid": {"ndcg@10": 1.0}})
        reg.publish(bad)
        deadline = time.time() + 30
        while time.time() < deadline and not httpx.get(svc.url + "/readyz").json()["last_error"]:
            time.sleep(0.3)
        ready = httpx.get(svc.url + "/readyz").json()
        assert ready["model"]["version"] == mv2.version and ready["refused"] >= 1
        assert "model.safetensors" in ready["last_error"]["error"] or "Error" in ready["last_error"]["error"]
        r = httpx.post(svc.url + "/v1/recommend", json={"user_id": 5, "k": 5}).json()
        assert r["model_version"] == f"{mv2.name}/{mv2.version}"
        metrics = httpx.get(svc.url + "/metrics").text  # the holder's own counts, not a placeholder
        assert f"recalign_model_switches_total {float(ready['switches'])}" in metrics and ready["switches"] >= 2
        assert f"recalign_model_refusals_total {float(ready['refused'])}" in metrics
        assert str(home.home) not in str(ready["last_error"])  # no filesystem paths on a status page
        reg.publish(mv2)  # a good model again: the error is history
        deadline = time.time() + 30
        while time.time() < deadline and httpx.get(svc.url + "/readyz").json()["last_error"]:
            time.sleep(0.3)
        assert httpx.get(svc.url + "/readyz").json()["last_error"] is None
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_schemathesis_finds_no_server_errors(beauty, tmp_path):
    _, svc, _, _ = beauty
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            svc.url + "/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )  # schemathesis writes a cache folder in its working directory
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_bodies_that_are_not_strict_json_or_too_large_are_refused_with_4xx(beauty):
    _, svc, _, _ = beauty
    post = lambda raw: httpx.post(svc.url + "/v1/recommend", content=raw, headers={"content-type": "application/json"})
    for raw in (
        '{"user_id": 1, "k": NaN}',
        '{"user_id": 1, "k": Infinity}',
        '{"user_id": 1, "k": 1e309}',
        '{"history": [1, NaN]}',
        '{"user_id": 1, "category": "\\ud800"}',
        '{"user_id": 1, "k": -Infinity}',
    ):
        r = post(raw)
        assert r.status_code == 400, (raw, r.status_code, r.text)
    assert post('{"user_id": 1, "exclude_seen": 0}').status_code == 422  # a boolean is true or false, not 0
    assert post('{"user_id": 1, "k": 3}').status_code == 200
    big = b'{"history": [' + b"1," * 5_000_000 + b"1]}"  # 10 MB
    t0 = time.perf_counter()
    r = httpx.post(svc.url + "/v1/recommend", content=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and time.perf_counter() - t0 < 2.0  # refused by its Content-Length, unread

    def chunks():  # no Content-Length: refused while reading
        yield b'{"history": ['
        for _ in range(200):
            yield b"1," * 50_000
        yield b"1]}"

    r = httpx.post(
        svc.url + "/v1/recommend", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413
    assert httpx.get(svc.url + "/healthz", timeout=2).status_code == 200


def test_a_served_model_file_truncated_in_place_does_not_kill_the_server(beauty, tmp_path):
    home, svc, reg, _ = beauty
    from training.seqrec.checkpoint import save_model
    from training.seqrec.model import MultimodalSASRec, SeqRecConfig

    n = home.warehouse("beauty").n_items()  # a text modality: its feature buffer is read at every scoring
    cfg = SeqRecConfig(n_items=n, d=16, n_layers=1, modalities=["id", "text"], text_dim=8)
    version, staging = reg.new_version_dir("seqrec_sft_id_text")
    save_model(MultimodalSASRec(cfg, text=torch.randn(n + 1, 8)), staging, {"train": {}})
    mv = reg.commit("seqrec_sft_id_text", version, staging, {"valid": {"ndcg@10": 0.0}})
    reg.publish(mv)
    deadline = time.time() + 30
    while time.time() < deadline and httpx.get(svc.url + "/readyz").json()["model"]["version"] != mv.version:
        time.sleep(0.3)
    weights = mv.path / "model.safetensors"
    original = weights.read_bytes()
    try:
        with open(weights, "r+b") as fh:  # in place: the same inode, cut short (a mmap would now raise SIGBUS)
            fh.truncate(100)
        for _ in range(20):  # ad-hoc histories are scored with the model's weights
            r = httpx.post(svc.url + "/v1/recommend", json={"history": [1, 2, 3], "k": 5})
            assert r.status_code == 200 and r.json()["model_version"] == f"{mv.name}/{mv.version}"
        assert svc.proc.poll() is None
    finally:
        weights.write_bytes(original)  # the module's later tests start servers on this published model


def test_the_api_key_guards_everything_but_the_probes_and_status_shows_no_paths(beauty, tmp_path):
    home, _, reg, _ = beauty
    svc = serving(home.home, "beauty", tmp_path / "keyed.log", RECALIGN_API_KEY="s3cret")
    try:
        for path in ("/metrics", "/docs", "/openapi.json", "/v1/items/1"):
            assert httpx.get(svc.url + path).status_code == 401, path
            assert httpx.get(svc.url + path, headers={"x-api-key": "s3cret"}).status_code == 200, path
        assert httpx.post(svc.url + "/v1/recommend", json={"user_id": 1}).status_code == 401
        assert httpx.get(svc.url + "/healthz").status_code == 200
        ready = httpx.get(svc.url + "/readyz")
        assert ready.status_code == 200 and str(home.home) not in ready.text
        last = ready.json()["last_error"]
        assert last is None or "/" not in last["error"]  # no filesystem path on a status page
    finally:
        svc.stop()


def test_a_snapshot_ensemble_trains_registers_and_serves_as_one_model(tmp_path, monkeypatch):
    """The recipe's SFT with a late snapshot and a Markov prior: registered as two members and the counts, stage 2
    on its best member with the late one mixed back in and the prior chosen again, and the serving holder's
    precomputed, cached and ANN modes rank as the model's full_sort_predict does."""
    import itertools

    from assets.ingest.pipeline import DatasetSpec, ingest
    from recalign.settings import Settings
    from serving.catalogue import Catalogue
    from serving.model_holder import ModelHolder
    from training.seqrec import trainer as trainer_module
    from training.seqrec import transitions
    from training.seqrec.ensemble import SnapshotEnsemble
    from training.seqrec.transitions import MarkovMixed

    from .helpers import dpo_config

    home = Settings.from_env(tmp_path / "home")
    ingest(home, DatasetSpec("synthetic", None, name="mix"))
    falling = itertools.count(1)  # validation falls after the first epoch: the late window is past the best one
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: {"ndcg@10": 1.0 / next(falling)})
    real_choice, grids = trainer_module.choose_late_weight, []

    def choose(best, late, valid):  # the library's own choice runs; the weight is forced so the mix is non-trivial
        grids.append(real_choice(best, late, valid)[1])
        return 0.3, grids[-1]

    monkeypatch.setattr(trainer_module, "choose_late_weight", choose)
    real_prior, prior_grids = transitions.choose_prior_weight, []

    def choose_prior(*args, **kw):  # likewise: the library's choice runs, a weight of 2 is forced
        prior_grids.append(real_prior(*args, **kw)[1])
        return 2.0, prior_grids[-1]

    monkeypatch.setattr(transitions, "choose_prior_weight", choose_prior)
    quiet = lambda *_: None
    cfg = sft_config(epochs=6, batch_size=256, lr=3e-3, snapshot_late=2, patience=1, show_progress=False)
    sft = train_stage(home, "mix", TINY, cfg, "seqrec_sft", log=quiet)
    assert sft["epochs_run"] == 3 and sft["best_epoch"] == 0
    assert sft["snapshot"]["late_weight"] == 0.3 and sft["snapshot"]["late_epochs"] == [2]
    assert len(grids[0]) == 6
    reg = home.registry("mix")
    mv = reg.get(sft["name"], sft["version"])
    assert (mv.path / "late" / "model.safetensors").exists() and mv.card["snapshot"]["late_weight"] == 0.3
    assert mv.card["markov"]["weight"] == 2.0 and len(prior_grids[0]) == len(transitions.PRIOR_GRID)
    mix, _ = load_model(mv.path)
    assert isinstance(mix, MarkovMixed) and isinstance(mix.model, SnapshotEnsemble)
    dpo_cfg = dpo_config(epochs=1, batch_size=256, show_progress=False)
    dpo = train_stage(home, "mix", {}, dpo_cfg, reference=(mv.name, mv.version), log=quiet)
    assert dpo["snapshot"]["late_epochs"] is None and dpo["markov"]["weight"] == 2.0 and len(prior_grids) == 2
    policy, _ = load_model(reg.get(dpo["name"], dpo["version"]).path)
    assert isinstance(policy, MarkovMixed) and isinstance(policy.model, SnapshotEnsemble)
    policy, ens = policy.model, mix.model
    assert all(torch.equal(a, b) for a, b in zip(policy.late.state_dict().values(), ens.late.state_dict().values()))
    assert not torch.equal(policy.best.item_table("id"), ens.best.item_table("id"))  # stage 2 trained the best member
    reg.publish(mv)
    cat = Catalogue.load(home.warehouse_path("mix"))
    user = sorted(cat.histories)[3]
    hist = cat.histories[user]
    with torch.no_grad():
        raw = mix.full_sort_predict(torch.from_numpy(hist[-50:]).view(1, -1))[0].numpy()
    scores = raw.copy()
    scores[hist], scores[0] = -np.inf, -np.inf
    offline = np.argsort(-scores, kind="stable")[:10].tolist()
    with torch.no_grad():  # the prior moves this user's top 5: a serving path that dropped it would rank otherwise
        plain = mix.model.full_sort_predict(torch.from_numpy(hist[-50:]).view(1, -1))[0].numpy()
    plain[hist], plain[0] = -np.inf, -np.inf
    assert np.argsort(-plain, kind="stable")[:5].tolist() != offline[:5]
    for ann in (False, True):
        holder = ModelHolder(reg.root, cat.n_items, histories=None if ann else cat.histories, ann=ann, candidates=50)
        assert holder.check() and isinstance(holder.current.model, MarkovMixed)
        if ann:
            ids, ann_scores = holder.ann_top_batch([(hist, user, 10, True)])[0][0]
            assert np.allclose(ann_scores, raw[ids], atol=1e-4)
        else:
            top, _, _ = holder.top(user)
            ids = top[~np.isin(top, hist)][:10]
            served, _ = holder.scores(hist, user)  # from the cached encoder states of both members
            assert np.allclose(served[1:], raw[1:], atol=1e-4)
        assert ids.tolist()[:5] == offline[:5]
