"""The whole lineage in-process on a small synthetic dataset: every asset materialises, every check passes."""

import dagster as dg
import pytest

from orchestration.definitions import all_assets, all_checks, defs

SMALL = {"synthetic_items": 96, "synthetic_users": 160}
KEY = "synthetic-96x160"  # the dataset SMALL describes: its partition of the lineage
SHOP_B = {"n_items": 72, "n_users": 130, "seed": 11}  # a second dataset, registered as its own partition
SHOP_B_ASSETS = [
    "raw_dataset", "items", "users", "interactions", "item_images", "sequences",
    "seqrec_sft", "seqrec_dpo", "evaluation_report", "publish_candidate_model", "published_model",
]  # fmt: skip


def run_config(**over) -> dict:
    ops = {
        "seqrec_sft": {"config": {"epochs": 3, "d": 16, "batch_size": 32, "lr": 5e-3, "patience": 3}},
        "seqrec_dpo": {"config": {"epochs": 1, "topk": 10, "batch_size": 32}},
        "item_text": {"config": {"batch_size": 64}},
        "user_text": {"config": {"batch_size": 64}},
        **over,
    }
    return {"ops": ops, "resources": {"dataset": {"config": SMALL}}}


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("lineage")
    mp.setenv("RECALIGN_HOME", str(home))
    from assets.ingest.pipeline import DatasetSpec, register_dataset
    from assets.resources import RecalignHome, resources_for
    from recalign.settings import Settings

    instance = dg.DagsterInstance.ephemeral()
    register_dataset(Settings.from_env(home), DatasetSpec("synthetic", name="shop-b", options=SHOP_B))
    instance.add_dynamic_partitions("datasets", [KEY, "shop-b"])
    job = defs.resolve_job_def("full_lineage")
    resources = {"recalign": RecalignHome(home=str(home))}
    result = job.execute_in_process(run_config=run_config(), instance=instance, resources=resources, partition_key=KEY)
    other = dg.materialize(  # the second shop: tables, sequences and the sequential track (ID only)
        [*all_assets, *all_checks],
        selection=SHOP_B_ASSETS,
        run_config={"ops": {k: v for k, v in run_config()["ops"].items() if k.startswith("seqrec")}},
        instance=instance,
        resources={**resources_for("local"), **resources},
        partition_key="shop-b",
    )
    yield result, home, instance, other
    mp.undo()


def test_every_asset_materialises_with_checks_passing(lineage):
    result, home, _, _ = lineage
    assert result.success
    materialised = {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }
    llm = {
        k.to_user_string()
        for k in defs.resolve_asset_graph().get_all_asset_keys()
        if defs.resolve_asset_graph().get(k).group_name == "llm"
    }  # its own job: llm_track
    expected = (
        {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} - {"interaction_log_batch"} - llm
    )
    assert {"item_summaries", "user_summaries", "item_summary_text"} <= materialised
    assert materialised == expected
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [(c.check_name, c.passed) for c in checks]


def test_two_datasets_are_two_partitions_with_their_own_tables_models_and_checks(lineage):
    from recalign.settings import Settings

    result, home, instance, other = lineage
    assert result.success and other.success
    settings = Settings.from_env(home)
    counts = {
        key: settings.warehouse(key).read("SELECT (SELECT count(*) FROM users) AS u, (SELECT count(*) FROM items) AS i")
        for key in (KEY, "shop-b")
    }
    assert (counts[KEY]["u"][0], counts[KEY]["i"][0]) == (160, 96)
    assert (counts["shop-b"]["u"][0], counts["shop-b"]["i"][0]) == (SHOP_B["n_users"], SHOP_B["n_items"])
    for key in (KEY, "shop-b"):  # each its own published model, trained on its own catalogue
        pub = settings.registry(key).published()
        assert pub is not None and f"/{key}/" in pub["path"]
    for asset in ("items", "sequences", "seqrec_sft", "published_model"):  # one materialisation per partition
        got = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        assert sorted(r.partition_key for r in got) == sorted([KEY, "shop-b"]), asset
    for run in (result, other):
        checks = run.get_asset_check_evaluations()
        assert {c.check_name for c in checks} >= {"rows_reconcile", "sequences_valid", "candidate_beats_baselines"}
        assert all(c.passed for c in checks)
    assert other.dagster_run.tags["dagster/partition"] == "shop-b"
    pages = {
        r.partition_key: r.asset_materialization.metadata
        for r in instance.fetch_materializations(dg.AssetKey("published_model"), limit=10).records
    }
    for key, page in pages.items():  # the served model's metrics, the verdict and its dataset's own report
        assert "served: seqrec_" in page["served_vs_replaced"].value and page["verdict"].value
        assert page["report"].value.endswith("report.html") and f"/reports/{key}/" in page["report"].value


def test_lineage_outputs_are_usable(lineage):
    result, home, _, _ = lineage
    from recalign.settings import Settings

    settings = Settings.from_env(home)
    reg = settings.registry("synthetic-96x160")
    pub = reg.published()
    assert pub is not None and pub["name"] in ("seqrec_sft_id_text_image_attr", "seqrec_dpo_stochastic_topk")
    import json

    runs = settings.metrics().read("SELECT upstream FROM runs WHERE family = 'seqrec'")
    upstream = json.loads(runs["upstream"].iloc[0])
    assert len(upstream["raw_fingerprint"]) == 64 and upstream["item_text_version"] >= 1
    assert upstream["sequences"]["users"] == 160
    reports = list(settings.reports_dir("synthetic-96x160").glob("*/report.html"))
    assert reports and "full ranking" in reports[0].read_text()


def test_landing_logs_ingested_once_then_retrain_then_skip(lineage):
    import datetime
    import time as _time

    from assets.resources import DatasetResource, RecalignHome
    from orchestration.automation import landing_sensor, nightly_retrain
    from recalign.settings import Settings
    from recalign.warehouse import Warehouse

    result, home, _, _ = lineage
    settings = Settings.from_env(home)
    res = {"recalign": RecalignHome(home=str(home)), "dataset": DatasetResource(**SMALL)}
    instance = dg.DagsterInstance.local_temp()  # the schedule reads the partitions: an instance with a ref
    instance.add_dynamic_partitions("datasets", [KEY, "shop-b"])
    landing = settings.landing_dir
    (landing / "day1.csv").write_text(
        "user,item,timestamp\nu00001,i00002,1800000000\nu99999,i00003,1800000100\n"
        "u99999,i00004,1800000200\nu00002,i99999,1800000300\nu00003,i00005,yesterday\n"
    )
    (landing / "day2.jsonl").write_text(
        '{"user": "u99999", "item": "i00006", "timestamp": 1800000400}\n'
        '{"user": "u00004", "item": "i00007", "timestamp": 1800000500}\nnot json\n'
    )
    ctx = dg.build_sensor_context(instance=instance, resources=res)
    out = landing_sensor(ctx)
    keys = sorted(r.partition_key for r in out.run_requests)
    assert len(keys) == 2 and keys[0].startswith("day1.csv@")
    instance.add_dynamic_partitions("landing_files", keys)
    for key in keys:
        r = defs.resolve_job_def("ingest_logs").execute_in_process(partition_key=key, instance=instance, resources=res)
        assert r.success and all(c.passed for c in r.get_asset_check_evaluations())
    wh = Warehouse(settings.warehouse_path("synthetic-96x160"))
    batches = wh.read("SELECT * FROM log_batches ORDER BY file")
    assert batches["accepted"].tolist() == [3, 2] and batches["rejected"].tolist() == [2, 1]
    assert batches["reconciled"].all() and batches["new_users"].tolist() == [1, 0]
    rej = wh.read("SELECT reason FROM rejected_rows WHERE batch <> 'base' ORDER BY reason")["reason"].tolist()
    assert any("unknown item 'i99999'" in r for r in rej) and any("timestamp" in r for r in rej)
    assert any("not a JSON object" in r for r in rej)
    # the same file dropped again: nothing happens; a changed file is a new batch
    (landing / "day1.csv").write_text((landing / "day1.csv").read_text())
    again = landing_sensor(dg.build_sensor_context(instance=instance, cursor=out.cursor, resources=res))
    assert isinstance(again, dg.SkipReason)
    # the nightly schedule retrains (new data since the model), then skips on the next tick
    when = datetime.datetime.now(datetime.UTC)
    tick = nightly_retrain(dg.build_schedule_context(instance=instance, resources=res, scheduled_execution_time=when))
    assert [t.partition_key for t in tick] == [KEY]  # shop-b got no new interactions: no run for it
    _time.sleep(1.1)
    reg = settings.registry("synthetic-96x160")
    before = reg.published()
    r = defs.resolve_job_def("retrain").execute_in_process(
        run_config={"ops": {k: v for k, v in run_config()["ops"].items() if k != "item_text"}},
        instance=instance,
        resources=res,
        partition_key=KEY,
        raise_on_error=False,
    )
    retrained = {
        e.event_specific_data.materialization.asset_key.to_user_string() for e in r.get_asset_materialization_events()
    }
    assert {"seqrec_sft", "seqrec_dpo", "publish_candidate_model"} <= retrained
    gate = [c for c in r.get_asset_check_evaluations() if c.check_name == "candidate_beats_baselines"]
    assert len(gate) == 1  # published only when the gate passed; a blocked gate stops published_model
    proposal = reg.proposal()  # the verdict, computed once by publish_candidate_model
    assert gate[0].passed == proposal["passed"] and proposal["candidate"]["version"] != before["version"]
    assert ("published_model" in retrained) == gate[0].passed
    now = reg.published()
    expected = proposal["candidate"] if gate[0].passed else before
    assert (now["name"], now["version"]) == (expected["name"], expected["version"])
    tick2 = nightly_retrain(dg.build_schedule_context(instance=instance, resources=res, scheduled_execution_time=when))
    assert isinstance(tick2, dg.SkipReason) and "no new interactions" in tick2.skip_message
    assert f"{KEY}: no new interactions" in tick2.skip_message and "shop-b: no new" in tick2.skip_message


def test_gate_refuses_a_candidate_below_popularity_and_nothing_is_published(lineage, monkeypatch):
    import json

    import pytest as _pytest

    from assets.seqrec.publish import evaluate_gate, publish_candidate
    from recalign.settings import Settings

    _, home, _, _ = lineage
    settings = Settings.from_env(home)
    reg = settings.registry("synthetic-96x160")
    pointer = reg.pointer.read_text()
    newest = [reg.newest(p) for p in ("seqrec_sft", "seqrec_dpo")]
    for mv in newest:  # both stages' candidates score worse than popularity on validation
        (mv.path / "card.json").write_text(json.dumps({**mv.card, "valid": {**mv.card["valid"], "ndcg@10": 0.0}}))
    try:
        gate = evaluate_gate(settings, "synthetic-96x160")
        assert not gate["passed"] and "popularity" in gate["reason"]
        assert reg.proposal() == json.loads(json.dumps(gate))
        with _pytest.raises(ValueError, match="gate not passed"):
            publish_candidate(settings, "synthetic-96x160")
        assert reg.pointer.read_text() == pointer
    finally:
        for mv in newest:
            (mv.path / "card.json").write_text(json.dumps(mv.card))


def test_a_landed_batch_whose_run_died_is_tried_again_then_given_up(lineage, monkeypatch):
    """The sensor's cursor never skips a batch for good: a run killed mid-way is retried; a file that fails every
    time is tried 3 times, then named in the sensor's skip reason."""
    import assets.ingest.defs as ingest_defs
    from assets.resources import DatasetResource, RecalignHome
    from orchestration.automation import landing_sensor
    from recalign.settings import Settings

    _, home, _, _ = lineage
    landing = Settings.from_env(home).landing_dir
    for f in landing.iterdir():
        f.unlink()
    res = {"recalign": RecalignHome(home=str(home)), "dataset": DatasetResource(**SMALL)}
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("ingest_logs")
    (landing / "night.csv").write_text("user,item,timestamp\nu00001,i00009,1900000000\n")
    out = landing_sensor(dg.build_sensor_context(instance=instance, resources=res))
    key = out.run_requests[0].partition_key
    instance.add_dynamic_partitions("landing_files", [key])
    real = ingest_defs.ingest_batch
    monkeypatch.setattr(ingest_defs, "ingest_batch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert not job.execute_in_process(partition_key=key, instance=instance, resources=res, raise_on_error=False).success
    again = landing_sensor(dg.build_sensor_context(instance=instance, cursor=out.cursor, resources=res))
    assert [(r.partition_key, r.run_key) for r in again.run_requests] == [(key, f"{key}#attempt2")]
    monkeypatch.setattr(ingest_defs, "ingest_batch", real)
    assert job.execute_in_process(partition_key=key, instance=instance, resources=res, raise_on_error=False).success
    done = landing_sensor(dg.build_sensor_context(instance=instance, cursor=out.cursor, resources=res))
    assert isinstance(done, dg.SkipReason) and "all ingested" in done.skip_message
    # a file that fails every run (no user column): 3 runs, then it is named and left alone
    (landing / "broken.csv").write_text("who,item,timestamp\nx,i00001,1900000000\n")
    tick = landing_sensor(dg.build_sensor_context(instance=instance, cursor=out.cursor, resources=res))
    broken, cursor = tick.run_requests[0].partition_key, tick.cursor
    instance.add_dynamic_partitions("landing_files", [broken])
    for attempt in (2, 3):
        assert not job.execute_in_process(
            partition_key=broken, instance=instance, resources=res, raise_on_error=False
        ).success
        tick = landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=res))
        assert [r.run_key for r in tick.run_requests] == [f"{broken}#attempt{attempt}"]
    assert not job.execute_in_process(
        partition_key=broken, instance=instance, resources=res, raise_on_error=False
    ).success
    tick = landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=res))
    assert isinstance(tick, dg.SkipReason) and "failed 3 times" in tick.skip_message and broken in tick.skip_message


def test_datasets_registered_by_the_cli_become_partitions(tmp_path, monkeypatch):
    from assets.ingest.defs import raw_dataset
    from assets.ingest.pipeline import registered_datasets
    from assets.resources import DatasetResource, RecalignHome
    from orchestration.automation import dataset_partitions
    from recalign.cli import main
    from recalign.settings import Settings

    monkeypatch.setenv("RECALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["datasets", "add", "shop-x", "--option", "scale=0.01", "--option", "images=false"]) == 0
    spec = registered_datasets(Settings.from_env())["shop-x"]
    assert (spec.source, spec.options) == ("synthetic", {"scale": 0.01, "images": False})
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        main(["datasets", "add", "shop-y", "--option", "scale"])
    instance = dg.DagsterInstance.ephemeral()
    res = {"recalign": RecalignHome(home=str(tmp_path / "home")), "dataset": DatasetResource()}
    out = dataset_partitions(dg.build_sensor_context(instance=instance, resources=res))
    assert out.dynamic_partitions_requests[0].partition_keys == ["shop-x", "synthetic"]  # + the configured one
    instance.add_dynamic_partitions("datasets", ["shop-x", "synthetic", "ghost"])
    assert isinstance(dataset_partitions(dg.build_sensor_context(instance=instance, resources=res)), dg.SkipReason)
    landed = dg.materialize([raw_dataset], partition_key="shop-x", instance=instance, resources=res)
    assert landed.success and (tmp_path / "home" / "raw" / "shop-x" / "interactions.parquet").exists()
    ghost = dg.materialize([raw_dataset], partition_key="ghost", instance=instance, resources=res, raise_on_error=False)
    assert not ghost.success
    failure = next(e for e in ghost.all_events if e.is_step_failure).step_failure_data.error
    assert "recalign datasets add ghost" in failure.message
