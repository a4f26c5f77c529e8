"""The ingest part of the lineage in-process through Dagster, with its checks."""

import dagster as dg
import pytest

from orchestration.definitions import defs


def test_ingest_job_materialises_with_checks(home):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["synthetic"])
    result = defs.resolve_job_def("ingest").execute_in_process(instance=instance, partition_key="synthetic")
    assert result.success
    keys = {m.asset_key.to_user_string() for m in result.asset_materializations_for_node("base_tables")}
    assert keys == {"items", "users", "interactions", "item_images"}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "rows_reconcile": True,
        "referential_integrity": True,
        "items_have_titles": True,
        "sequences_valid": True,
    }
    md = result.asset_materializations_for_node("base_tables")[2].metadata
    assert md["reconciled"].value is True and md["rows"].value > 10000


def test_example_run_configs_validate_against_the_jobs():
    from pathlib import Path

    import yaml

    job = defs.resolve_job_def("full_lineage")
    files = sorted((Path(__file__).resolve().parents[1] / "orchestration" / "run_configs").glob("*.yaml"))
    assert {f.stem for f in files} == {"amazon_beauty", "movielens_100k", "microlens_50k"}
    for f in files:
        result = dg.validate_run_config(job, yaml.safe_load(f.read_text()))
        assert result["ops"]["seqrec_dpo"]["config"]["sampler"] == "stochastic_topk", f.name  # the recipe's
        assert result["ops"]["seqrec_sft"]["config"]["modalities"] == ["id", "text", "image"], f.name
    bad = {"ops": {"seqrec_dpo": {"config": {"sampler": "hardest"}}, "seqrec_sft": {"config": {"keep": "first"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError) as err:  # fails at launch, naming the allowed values
        dg.validate_run_config(job, bad)
    assert "stochastic_topk" in str(err.value) and "'best'" in str(err.value)
