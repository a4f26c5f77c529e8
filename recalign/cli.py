"""`recalign` command line: demo, ingest, and small utilities. Bad input -> one clear line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def _instance():
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if home:
        os.makedirs(home, exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def cmd_demo(args) -> int:
    """Materialise the lineage on the given dataset (synthetic by default) via Dagster: its partition."""
    from assets.ingest.pipeline import DatasetSpec
    from orchestration.definitions import defs
    from recalign.settings import Settings

    run_config = {"resources": {"dataset": {"config": {"source": args.source, "path": args.path, "name": args.name}}}}
    name = DatasetSpec(source=args.source, path=args.path, name=args.name).dataset
    job = defs.resolve_job_def(args.job)
    instance = _instance()
    instance.add_dynamic_partitions("datasets", [name])
    result = job.execute_in_process(run_config=run_config, instance=instance, partition_key=name, raise_on_error=False)
    settings = Settings.from_env()
    checks = result.get_asset_check_evaluations()
    print(
        json.dumps(
            {
                "success": result.success,
                "job": args.job,
                "dataset": name,
                "materialized": sorted(
                    {
                        ev.event_specific_data.materialization.asset_key.to_user_string()
                        for ev in result.get_asset_materialization_events()
                    }
                ),
                "checks_passed": sum(c.passed for c in checks),
                "checks_failed": sum(not c.passed for c in checks),
                "warehouse": str(settings.warehouse_path(name)),
                "recalign_home": str(settings.home),
            },
            indent=1,
        )
    )
    if not result.success:
        for ev in result.all_events:
            if ev.is_step_failure and ev.step_failure_data.error is not None:
                print(f"error in {ev.step_key}: {_root_message(ev.step_failure_data.error)}", file=sys.stderr)
        return 2
    return 0


def _root_message(error) -> str:
    """The innermost cause of a Dagster step error: the source's own message, not the framework's wrapper."""
    while error.cause is not None:
        error = error.cause
    return re.sub(r"^[\w.]*(Error|Exception): ", "", error.message.strip())


def cmd_ingest(args) -> int:
    from assets.ingest.pipeline import DatasetSpec, ingest
    from recalign.settings import Settings

    spec = DatasetSpec(source=args.source, path=args.path, name=args.name, kcore=args.kcore)
    md = ingest(Settings.from_env(), spec)
    print(json.dumps({k: v for k, v in md.items() if not hasattr(v, "shape")}))
    return 0 if md["reconciled"] else 1


def cmd_datasets(args) -> int:
    """Register a dataset (a partition of the lineage: in the Dagster instance too, when DAGSTER_HOME is set) or
    list the registered ones."""
    from assets.ingest.pipeline import DatasetSpec, register_dataset, registered_datasets
    from recalign.settings import Settings

    settings = Settings.from_env()
    if args.action == "add":
        options = dict(_option(o) for o in args.option or [])
        spec = DatasetSpec(source=args.source, path=args.path, name=args.name, kcore=args.kcore, options=options)
        path = register_dataset(settings, spec)
        if os.environ.get("DAGSTER_HOME"):
            _instance().add_dynamic_partitions("datasets", [spec.dataset])
        print(json.dumps({"registered": spec.dataset, "file": str(path), **spec.to_json()}))
        return 0
    print(json.dumps({name: spec.to_json() for name, spec in registered_datasets(settings).items()}, indent=1))
    return 0


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE of a source option; the value as JSON when it parses (numbers, booleans), else the text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"error: option {text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def cmd_fetch(args) -> int:
    from pathlib import Path

    from assets.ingest.download import fetch_source

    print(fetch_source(args.source, Path(args.dest)))
    return 0


def cmd_compare(args) -> int:
    """Compare two runs from the metrics table."""
    from recalign.metrics_store import MetricsStore
    from recalign.report import compare_runs
    from recalign.settings import Settings

    table = compare_runs(MetricsStore(Settings.from_env().metrics_path), args.run_a, args.run_b)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from recalign.report import build_report, write_report
    from recalign.settings import Settings

    settings = Settings.from_env()
    out = write_report(
        build_report(settings.metrics(), args.dataset),
        Path(args.out) if args.out else settings.reports_dir(args.dataset) / "latest",
    )
    print(json.dumps(out))
    return 0


def cmd_llm(args) -> int:
    """One LLM-track stage outside Dagster: the entry point `accelerate launch` / `deepspeed` start on GPUs.

    accelerate launch --num_processes 8 -m recalign.cli llm sft --dataset amazon-beauty \
        --base-model Qwen/Qwen2.5-3B-Instruct --deepspeed infra/deepspeed/zero3.json
    On a CPU the same command runs without DeepSpeed."""
    from assets.llmrec import pipeline as llm
    from recalign.settings import Settings
    from training.llm.trainers import GRPOStageConfig, LoRAConfig, PreferenceStageConfig, SFTStageConfig, StageConfig

    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731 - unset flags: the config's defaults
    stage_cls = {
        "sft": SFTStageConfig,
        "dpo": PreferenceStageConfig,
        "hanorec": PreferenceStageConfig,
        "grpo": GRPOStageConfig,
    }.get(args.stage, StageConfig)
    extra = (
        given(
            beta=args.beta,
            sampler=args.sampler,
            topk=args.topk,
            hardness_topk=args.hardness_topk,
            hardness_source=args.hardness_source,
            noise_sigma=args.noise_sigma,
            method=args.stage,
        )
        if stage_cls is PreferenceStageConfig
        else {}
    )
    stage = stage_cls(
        **given(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            max_steps=args.max_steps,
            deepspeed=args.deepspeed,
            engine=args.engine,
            shared_prefix=None if args.shared_prefix is None else args.shared_prefix == "on",
        ),
        **extra,
        lora=LoRAConfig(**given(r=args.lora_r, alpha=args.lora_alpha)),
    )
    track = llm.TrackConfig(
        **given(
            base_model=args.base_model,
            n_users=args.users,
            eval_users=args.eval_users,
            targets_per_user=args.targets_per_user,
            train_negatives=args.train_negatives,
            formulation=args.formulation,
            history_len=args.history_len,
        ),
        stage=stage,
    )
    settings = Settings.from_env()
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # the trainers' logs: stdout is the one JSON line
        if args.stage == "sft":
            out = llm.sft_stage(settings, args.dataset, track)
        elif args.stage in ("dpo", "hanorec"):
            out = llm.preference_stage(settings, args.dataset, track)
        elif args.stage == "grpo":
            out = llm.grpo_stage(settings, args.dataset, track)
        else:
            variants = tuple(args.variants.split(",")) if args.variants else llm.EVAL_VARIANTS
            out = llm.evaluate_track(settings, args.dataset, track, variants=variants)
    print(json.dumps(out, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recalign", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, fn, help_ in [
        ("demo", cmd_demo, "run the main Dagster job (synthetic by default)"),
        ("ingest", cmd_ingest, "land + validate + sequence one dataset, no Dagster"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--source", default="synthetic")
        p.add_argument("--path", default=None)
        p.add_argument("--name", default=None)
        p.set_defaults(fn=fn)
        if name == "demo":
            p.add_argument("--job", default="full_lineage")
        else:
            p.add_argument("--kcore", type=int, default=None)
    p = sub.add_parser("datasets", help="register a dataset as a partition of the lineage, or list them")
    p.add_argument("action", choices=["add", "list"])
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--source", default="synthetic")
    p.add_argument("--path", default=None)
    p.add_argument("--kcore", type=int, default=None)
    p.add_argument("--option", action="append", help="a source option KEY=VALUE, e.g. scale=10 (repeatable)")
    p.set_defaults(fn=cmd_datasets)
    p = sub.add_parser("fetch", help="download a public source from its official address")
    p.add_argument("source")
    p.add_argument("dest")
    p.set_defaults(fn=cmd_fetch)
    p = sub.add_parser("compare", help="compare two runs from the metrics table")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("report", help="write the evaluation report of a dataset")
    p.add_argument("dataset")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("llm", help="run one LLM-track stage (the multi-GPU launch path)")
    p.add_argument("stage", choices=["sft", "dpo", "hanorec", "grpo", "eval"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--base-model", default=None, help="default: TrackConfig.base_model (SmolLM2-135M-Instruct)")
    p.add_argument("--users", type=int, default=None, help="seeded user sample (default: TrackConfig.n_users)")
    p.add_argument("--eval-users", type=int, default=None)
    p.add_argument(
        "--variants", default=None, help="eval: comma-separated, e.g. popularity,zero_shot,llm_sft (default: all)"
    )
    p.add_argument(
        "--targets-per-user", type=int, default=None, help="training questions per user (last n train items)"
    )
    p.add_argument("--train-negatives", type=int, default=None, help="negatives in each training candidate list")
    p.add_argument(
        "--formulation", default=None, choices=["listwise", "pointwise"], help="default: TrackConfig.formulation"
    )
    p.add_argument("--history-len", type=int, default=None, help="recent items in the prompt")
    p.add_argument("--engine", default=None, choices=["grouped", "trl"], help="default: StageConfig.engine")
    p.add_argument("--shared-prefix", default=None, choices=["on", "off"], help="grouped engine: prefix once")
    # unset optimisation flags take the stage's config defaults (SFTStageConfig, PreferenceStageConfig, GRPOStageConfig)
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lora-r", type=int, default=None)
    p.add_argument("--lora-alpha", type=int, default=None, help="default: 2 * r")
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--sampler", default=None, choices=["random", "stochastic_topk"])
    p.add_argument("--topk", type=int, default=None, help="stochastic top-K pool of the rejected title")
    p.add_argument("--hardness-topk", type=int, default=None, help="HaNoRec neighbourhood size")
    p.add_argument("--hardness-source", default=None, choices=["auto", "text", "cooccurrence", "seqrec"])
    p.add_argument("--noise-sigma", type=float, default=None, help="HaNoRec NoDO: std of the LoRA weight noise")
    p.add_argument("--deepspeed", default=None, help="infra/deepspeed/zero2.json or zero3.json (GPUs only)")
    p.set_defaults(fn=cmd_llm)
    args = parser.parse_args(argv)
    from assets.ingest.errors import SourceError

    try:
        return args.fn(args)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
