"""The house rules that keep the code carryable: import arrows, one home per default, clear errors."""

import ast
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("assets", {"orchestration"}),
        ("serving", {"orchestration", "dagster"}),
        ("training", {"orchestration", "dagster", "assets", "serving"}),
    ],
)
def test_imports_run_one_way(package, forbidden):
    bad = {str(p.relative_to(REPO)): _imports(p) & forbidden for p in (REPO / package).rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_library_knows_no_dagster_but_the_clis_job_launcher():
    bad = {p.name: _imports(p) & {"dagster", "orchestration"} for p in (REPO / "recalign").glob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {"cli.py": {"dagster", "orchestration"}}
    tree = ast.parse((REPO / "recalign" / "cli.py").read_text())
    launching = {
        f.name for f in tree.body if isinstance(f, ast.FunctionDef) and _imports_in(f) & {"dagster", "orchestration"}
    }
    assert launching == {"cmd_demo", "_instance"}  # `recalign demo` and the Dagster instance it runs on


HEAVY = ("transformers", "peft", "trl", "sentence_transformers", "lancedb", "scipy.stats", "matplotlib")


def test_loading_the_definitions_imports_no_heavy_library():
    """Every Dagster process (code server, daemon, each run's worker, `recalign demo`) loads the definitions: the
    model and plotting libraries load when an asset that needs them runs."""
    probe = f"import sys, orchestration.definitions; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _imports_in(fn) -> set[str]:
    return {a.name.split(".")[0] for n in ast.walk(fn) if isinstance(n, ast.Import) for a in n.names} | {
        n.module.split(".")[0] for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
    }


def test_dagster_and_cli_defaults_are_the_dataclasses():
    from assets.llmrec.defs import LLMDPOConfig, LLMGRPOConfig, LLMHaNoRecConfig, LLMSFTConfig
    from assets.seqrec.defs import SeqRecDPORunConfig, SeqRecSFTRunConfig
    from training.llm.trainers import GRPOStageConfig, PreferenceStageConfig, SFTStageConfig
    from training.seqrec.model import SeqRecConfig
    from training.seqrec.recipe import get_recipe
    from training.seqrec.trainer import SeqRecDPOConfig, SeqRecTrainConfig

    recipe = get_recipe("default")
    sft, dpo = SeqRecSFTRunConfig(), SeqRecDPORunConfig()
    assert SeqRecTrainConfig(**sft.pick(SeqRecTrainConfig)) == recipe.sft == SeqRecTrainConfig()
    assert SeqRecDPOConfig(**dpo.pick(SeqRecDPOConfig)) == recipe.dpo == SeqRecDPOConfig()
    assert sft.pick(SeqRecConfig) == recipe.model_config()
    assert SeqRecConfig(n_items=3).dropout == sft.dropout
    assert LLMSFTConfig().track(SFTStageConfig).stage.lr == SFTStageConfig().lr
    hanorec = LLMHaNoRecConfig().track(PreferenceStageConfig, method="hanorec").stage
    assert asdict(hanorec) | {"method": "dpo", "seed": 42} == asdict(PreferenceStageConfig(seed=42))
    assert LLMDPOConfig().sampler == PreferenceStageConfig().sampler
    assert LLMGRPOConfig().track(GRPOStageConfig).stage.num_generations == GRPOStageConfig().num_generations


def test_benchmark_flags_default_to_the_recipe():
    from training.seqrec.recipe import get_recipe

    from .helpers import load_benchmark

    bench = load_benchmark("seqrec")

    sys_argv, sys.argv = sys.argv, ["seqrec.py"]
    try:
        args, fields = bench.parse_args()
    finally:
        sys.argv = sys_argv
    recipe = get_recipe(args.recipe)
    assert recipe.sft_config(**bench.picked(args, fields["sft"], "sft")) == recipe.sft
    assert recipe.model_config(**bench.picked(args, fields["model"])) == recipe.model_config()
    sys.argv = ["seqrec.py", "--sft-swa-last", "none", "--dpo-lr", "5e-4", "--modalities", "id"]
    try:
        args, fields = bench.parse_args()
    finally:
        sys.argv = sys_argv
    assert recipe.sft_config(**bench.picked(args, fields["sft"], "sft")).swa_last is None
    assert recipe.dpo_config(**bench.picked(args, fields["dpo"], "dpo")).lr == 5e-4
    assert recipe.model_config(**bench.picked(args, fields["model"]))["modalities"] == ["id"]


@pytest.mark.parametrize("script", ["seqrec.py", "embeddings.py", "summaries.py", "llm.py"])
def test_benchmarks_without_their_data_say_so(script, tmp_path):
    env = {**os.environ, "RECALIGN_SHARED_DATA": "none"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "--path" in proc.stderr


def test_deployments_choose_their_resources_for_real(tmp_path, monkeypatch):
    import dagster as dg

    from assets.resources import DatasetResource, RecalignHome, resources_for

    @dg.asset
    def probe(recalign: RecalignHome, dataset: DatasetResource) -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={
                "home": str(recalign.settings().home),
                "dataset": dataset.dataset,
                "warehouse": str(recalign.warehouse(dataset.dataset).path),
            }
        )

    def run(deployment):
        result = dg.materialize([probe], resources=resources_for(deployment), raise_on_error=False)
        md = result.asset_materializations_for_node("probe")
        return result.success, (md[0].metadata if md else None)

    monkeypatch.setenv("RECALIGN_HOME", str(tmp_path / "docker-home"))
    monkeypatch.setenv("RECALIGN_DATASET_SOURCE", "movielens-100k")
    monkeypatch.setenv("RECALIGN_DATASET_PATH", "/data/ml100k")
    ok, md = run("docker")  # home and dataset from the container's environment, read when the run starts
    assert ok and md["home"].value == str(tmp_path / "docker-home") and md["dataset"].value == "ml100k"
    assert md["warehouse"].value == str(tmp_path / "docker-home" / "warehouse" / "ml100k.duckdb")
    ok, md = run("local")  # local: the home from the environment, the dataset from run config (synthetic)
    assert ok and md["home"].value == str(tmp_path / "docker-home") and md["dataset"].value == "synthetic"
    monkeypatch.delenv("RECALIGN_DATASET_SOURCE")
    with pytest.raises(dg.DagsterInvalidConfigError, match="RECALIGN_DATASET_SOURCE"):
        dg.materialize([probe], resources=resources_for("docker"))
    with pytest.raises(ValueError, match="local, docker"):
        resources_for("staging")
