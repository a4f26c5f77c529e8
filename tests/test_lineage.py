"""The whole lineage in-process on a small synthetic dataset: every asset materialises, every check passes."""

import dagster as dg
import pytest

from orchestration.definitions import defs

SMALL = {"synthetic_items": 96, "synthetic_users": 160}


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
    from orchestration.resources import RecalignHome

    result = defs.resolve_job_def("full_lineage").execute_in_process(
        run_config=run_config(), instance=dg.DagsterInstance.ephemeral(),
        resources={"recalign": RecalignHome(home=str(home))})
    yield result, home
    mp.undo()


def test_every_asset_materialises_with_checks_passing(lineage):
    result, home = lineage
    assert result.success
    materialised = {e.event_specific_data.materialization.asset_key.to_user_string()
                    for e in result.get_asset_materialization_events()}
    expected = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert materialised == expected
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [(c.check_name, c.passed) for c in checks]


def test_lineage_outputs_are_usable(lineage):
    result, home = lineage
    from recalign.registry import Registry
    from recalign.settings import Settings

    settings = Settings.from_env(home)
    reg = Registry(settings.registry_dir("synthetic-96x160"))
    pub = reg.published()
    assert pub is not None and pub["name"] in ("seqrec_sft", "seqrec_dpo")
    reports = list(settings.reports_dir("synthetic-96x160").glob("*/report.html"))
    assert reports and "full ranking" in reports[0].read_text()
