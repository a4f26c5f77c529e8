"""One training stage in its own processes: `torchrun --standalone --nproc-per-node N -m assets.seqrec.launch SPEC`.

The seqrec assets start it through Dagster Pipes when their `nproc` > 1 (PipesSubprocessClient on one machine; a
Kubernetes deployment runs the same command in a job's pod through PipesK8sClient). Every rank trains its share
of each batch; rank 0 reports each epoch as a Dagster log line and the stage's summary as the materialisation's
metadata. Started by hand (no Pipes), rank 0 prints the summary as one JSON line.

SPEC is a JSON file: {"home", "dataset", "stage": "sft"|"dpo", "model": {...}, "train": {...},
"reference": [name, version] | null, "checkpoint_dir": path | null}. A run killed part-way and started again with
the same spec resumes from its last epoch (the checkpoint folder is kept until the model is registered).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch.distributed

from recalign.settings import Settings
from training.seqrec.distributed import init_from_env, rank_and_world
from training.seqrec.trainer import SeqRecDPOConfig, SeqRecTrainConfig

from .pipeline import stage_metadata, train_stage


def launch_spec(
    settings: Settings, dataset: str, stage: str, model: dict, train: dict, reference: tuple[str, str] | None = None
) -> dict:
    """The spec of one stage; its checkpoint folder is named by the spec's content, so a retry resumes."""
    spec = {"home": str(settings.home), "dataset": dataset, "stage": stage, "model": model, "train": train}
    spec["reference"] = list(reference) if reference else None
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    spec["checkpoint_dir"] = str(settings.cache_dir / "checkpoints" / f"{dataset}-{stage}-{digest}")
    return spec


def torchrun_command(nproc: int, spec_path: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "assets.seqrec.launch",
        str(spec_path),
    ]


def run(spec: dict, log=print) -> dict:
    """Train the stage the spec describes on this rank (train_stage: rank 0 alone registers and records)."""
    device = init_from_env(spec["train"].get("device", "auto"))
    cls = SeqRecDPOConfig if spec["stage"] == "dpo" else SeqRecTrainConfig
    train = cls(**{k: v for k, v in spec["train"].items() if k != "stage"} | {"device": device, "show_progress": False})
    out = train_stage(
        Settings.from_env(spec["home"]),
        spec["dataset"],
        spec.get("model") or {},
        train,
        reference=tuple(spec["reference"]) if spec.get("reference") else None,
        log=log,
        checkpoint_dir=spec.get("checkpoint_dir"),
    )
    if rank_and_world()[0] == 0 and spec.get("checkpoint_dir"):
        shutil.rmtree(spec["checkpoint_dir"], ignore_errors=True)  # registered: a new run starts afresh
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun --nproc-per-node N -m assets.seqrec.launch SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if rank == 0 and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        with open_dagster_pipes() as pipes:
            out = run(spec, log=pipes.log.info)
            world = rank_and_world()[1]
            pipes.report_asset_materialization(
                metadata=stage_metadata(out) | {"nproc": {"raw_value": world, "type": "int"}}
            )
    else:
        out = run(spec, log=print if rank == 0 else (lambda _: None))
        if rank == 0:
            print(json.dumps({k: out[k] for k in ("name", "version", "valid", "test", "epochs_run", "history")}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
