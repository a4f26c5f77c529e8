"""Sequential-track benchmark: SFT (CE warm-up) then DPO with each named sampler, on the default recipe; one JSON line.

    python benchmarks/seqrec.py --dataset amazon-beauty            # the default recipe (training/seqrec/recipe.py)
    python benchmarks/seqrec.py --dataset amazon-beauty --samplers random,argmax,stochastic_topk --modalities id
Every model, SFT and DPO flag is a field of SeqRecConfig / SeqRecTrainConfig / SeqRecDPOConfig (`--help` lists
them); an unset flag keeps the recipe's value. Targets (2 cores): both stages under 15 min, one full evaluation
of all users under 10 s, peak RSS under 4 GB.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recalign.configargs import add_config_args, picked  # noqa: E402
from recalign.datasets import KNOWN, locate  # noqa: E402
from training.seqrec.model import SeqRecConfig  # noqa: E402
from training.seqrec.recipe import DERIVED, RECIPES, UNSET, get_recipe  # noqa: E402
from training.seqrec.trainer import SeqRecDPOConfig, SeqRecTrainConfig  # noqa: E402


def registered_summary(settings, dataset: str, name: str, version: str) -> dict:
    """The summary `train_stage` returns, read back from a registered model's card (no training)."""
    card = settings.registry(dataset).get(name, version).card
    return {
        "name": name,
        "version": version,
        "test": card["test"],
        "valid": card["valid"],
        "epochs_run": card["epochs_run"],
        "averaged_epochs": card.get("averaged_epochs"),
        "snapshot": card.get("snapshot"),
        "markov": card.get("markov"),
        "seconds_per_epoch": None,
        "modalities": card["config"]["model"]["modalities"],
        "moe": card["config"]["model"]["moe"],
    }


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty", choices=sorted(KNOWN))
    ap.add_argument("--path", default=None, help="dataset folder (default: ../shared/data/<folder>)")
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), help="reuse a RECALIGN_HOME (tables, vectors)")
    ap.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    ap.add_argument(
        "--samplers", default=None, help="DPO runs, one per sampler (default: the recipe's sampler; none: SFT only)"
    )
    ap.add_argument("--seed", type=int, default=UNSET, help="both stages' seed")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sft-init", default=None, help="name/version of a registered model to continue SFT from")
    ap.add_argument(
        "--sft-from",
        default=None,
        help="name/version of a registered SFT model to use as the DPO reference (no SFT training)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads (default: all cores)")
    fields = {
        "model": add_config_args(
            ap.add_argument_group("model (SeqRecConfig)"), SeqRecConfig, skip=DERIVED, unset=UNSET
        ),
        "sft": add_config_args(
            ap.add_argument_group("stage 1 (SeqRecTrainConfig)"),
            SeqRecTrainConfig,
            "sft",
            skip=DERIVED | {"seed"},
            unset=UNSET,
        ),
        "dpo": add_config_args(
            ap.add_argument_group("stage 2 (SeqRecDPOConfig)"),
            SeqRecDPOConfig,
            "dpo",
            skip=DERIVED | {"seed", "sampler"},
            unset=UNSET,
        ),
    }
    return ap.parse_args(), fields


def main() -> None:
    args, fields = parse_args()
    recipe = get_recipe(args.recipe)
    try:
        source, path = locate(args.dataset, args.path)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    model_cfg = recipe.model_config(**picked(args, fields["model"]))
    sft_cfg = recipe.sft_config(**picked(args, fields["sft"], "sft"), seed=args.seed, show_progress=False)
    dpo_base = recipe.dpo_config(**picked(args, fields["dpo"], "dpo"), seed=args.seed, show_progress=False)
    samplers = [] if args.samplers == "none" else args.samplers.split(",") if args.samplers else [dpo_base.sampler]

    import torch

    torch.set_num_threads(args.threads)
    from assets.embeddings.pipeline import embed_text_table
    from assets.ingest.pipeline import DatasetSpec, ingest, peak_rss_mb
    from assets.seqrec.pipeline import load_data, train_stage
    from assets.seqrec.publish import stage_two_gain
    from recalign.settings import Settings

    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    spec = DatasetSpec(source=source, path=path, name=args.dataset)
    t0 = time.perf_counter()
    ingest(settings, spec, only_if_missing=True)
    mods = model_cfg["modalities"]
    if "text" in mods:
        embed_text_table(settings, spec.dataset, "item_text")
    log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    data = load_data(settings, spec.dataset, model_cfg["max_len"], mods, attributes=model_cfg["attributes"])
    t_sft = time.perf_counter()
    if args.sft_from:
        sft = registered_summary(settings, spec.dataset, *args.sft_from.split("/"))
    else:
        sft = train_stage(
            settings,
            spec.dataset,
            model_cfg,
            sft_cfg,
            data=data,
            log=log,
            init=tuple(args.sft_init.split("/")) if args.sft_init else None,
        )
    out = {
        "benchmark": "seqrec",
        "dataset": args.dataset,
        "recipe": recipe.name,
        "modalities": sft["modalities"],
        "moe": model_cfg["moe"],
        "mask_history": {"sft": sft_cfg.mask_history, "dpo": dpo_base.mask_history},
        "sft": {
            "name": sft["name"],
            "version": sft["version"],
            "test": sft["test"],
            "valid_ndcg@10": sft["valid"]["ndcg@10"],
            "epochs": sft["epochs_run"],
            "averaged_epochs": sft.get("averaged_epochs"),  # 0-based: the kept window, chosen on validation
            "snapshot": sft.get("snapshot"),  # the late window mixed in and its weight, chosen on validation
            "markov": sft.get("markov"),  # the Markov prior's weight, chosen on validation
            "seconds_per_epoch": sft["seconds_per_epoch"],
            "seconds": round(time.perf_counter() - t_sft, 1),
            "trained_here": not args.sft_from,
        },
        "full_eval_seconds": sft["test"].get("eval_seconds"),
        "eval_users": sft["test"].get("users"),
    }
    registry = settings.registry(spec.dataset)
    for sampler in samplers:
        t_dpo = time.perf_counter()
        dpo_cfg = recipe.dpo_config(
            **picked(args, fields["dpo"], "dpo"), seed=args.seed, sampler=sampler, show_progress=False
        )
        dpo = train_stage(
            settings,
            spec.dataset,
            {},
            dpo_cfg,
            reference=(sft["name"], sft["version"]),
            data=data,
            log=log,
        )
        out[f"dpo_{sampler}"] = {
            "name": dpo["name"],
            "version": dpo["version"],
            "test": dpo["test"],
            "valid_ndcg@10": dpo["valid"]["ndcg@10"],
            "epochs": dpo["epochs_run"],
            "snapshot": dpo["snapshot"],
            "markov": dpo["markov"],
            "seconds_per_epoch": dpo["seconds_per_epoch"],
            "seconds": round(time.perf_counter() - t_dpo, 1),
            "valid_vs_sft": stage_two_gain(settings.metrics(), registry, registry.get(dpo["name"], dpo["version"])),
        }
    # the publish gate's rule: a stage-2 model beyond noise over its SFT on validation, then the better valid NDCG@10
    valid = {"sft": out["sft"]["valid_ndcg@10"]} | {
        k: v["valid_ndcg@10"]
        for k, v in out.items()
        if k.startswith("dpo_") and (v["valid_vs_sft"] or {}).get("ci_low", 0) > 0
    }
    out["chosen"] = max(valid, key=valid.get)
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
