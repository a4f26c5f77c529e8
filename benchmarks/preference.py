"""Preference-stage benchmark: each preference objective trained on one SFT model, with the measurements that say
why it moves the ranking or not; one JSON line.

    python benchmarks/preference.py --dataset amazon-beauty --home /tmp/bh            # newest seqrec_sft* model
    python benchmarks/preference.py --dataset amazon-beauty --home /tmp/bh --variants dpo:stochastic_topk,sdpo:random
For every variant (preference:sampler): test metrics, the paired bootstrap of NDCG@5 against the SFT model
over test users, and `training/seqrec/diagnostics.py` at the start of the stage (policy = reference) and at its
end: implicit reward margins, false-negative rate of y_l, CE vs preference gradient norms, the ranking shift.
Every SeqRecDPOConfig field is a flag (`--help`); unset flags keep the recipe's values.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recalign.configargs import add_config_args, picked  # noqa: E402
from training.seqrec.recipe import DERIVED, UNSET, get_recipe  # noqa: E402
from training.seqrec.trainer import SeqRecDPOConfig  # noqa: E402

DEFAULT_VARIANTS = "dpo:stochastic_topk,sdpo:stochastic_topk,simpo:stochastic_topk,dpo:random"


def by_target_count(store, sft_run: str, policy_run: str) -> dict:
    """NDCG@10 of the SFT and the policy by the target's training count, on validation and test: which targets
    the stage moves, and whether the two splits hold them in the same shares."""
    from recalign.report import ndcg_by_popularity

    out = {}
    for split in ("valid", "test"):
        q = "SELECT user_id, rank, target_count FROM user_ranks WHERE run_id = ? AND split = ?"
        both = store.read(q, [sft_run, split]).merge(store.read(q, [policy_run, split]), on="user_id")
        out[split] = ndcg_by_popularity(both["target_count_x"], {"sft": both["rank_x"], "policy": both["rank_y"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), required=not os.environ.get("RECALIGN_HOME"))
    ap.add_argument("--sft-from", default=None, help="name/version of the SFT model (default: the newest seqrec_sft*)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="preference:sampler, comma-separated")
    ap.add_argument("--diagnostic-batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    fields = add_config_args(
        ap.add_argument_group("stage 2 (SeqRecDPOConfig)"),
        SeqRecDPOConfig,
        "dpo",
        skip=DERIVED | {"sampler", "preference"},
        unset=UNSET,
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from assets.seqrec.pipeline import load_data, train_stage
    from recalign.settings import Settings
    from training.seqrec.checkpoint import load_model
    from training.seqrec.diagnostics import preference_diagnostics, ranking_shift
    from training.seqrec.ensemble import trained_member
    from training.seqrec.trainer import SeqRecTrainer

    settings = Settings.from_env(args.home)
    registry = settings.registry(args.dataset)
    sft_mv = registry.get(*args.sft_from.split("/")) if args.sft_from else registry.newest("seqrec_sft")
    if sft_mv is None:
        sys.exit(f"error: no seqrec_sft model in {registry.root}: run benchmarks/seqrec.py first")
    sft_model, _ = load_model(sft_mv.path)
    reference = trained_member(sft_model)  # an ensemble SFT: stage 2 trains its best member (train_stage)
    data = load_data(settings, args.dataset, reference.cfg.max_len, ["id"], False)
    out = {
        "benchmark": "preference",
        "dataset": args.dataset,
        "sft": {"name": sft_mv.name, "version": sft_mv.version, "test": sft_mv.card["test"]},
    }
    recipe = get_recipe("default")
    for variant in args.variants.split(","):
        preference, sampler = variant.split(":")
        cfg = recipe.dpo_config(
            **picked(args, fields, "dpo"), preference=preference, sampler=sampler, show_progress=False
        )
        start = SeqRecTrainer(
            copy.deepcopy(reference).requires_grad_(True),  # the reference is frozen by the trainers before
            cfg,
            data.train_inputs,
            data.train_targets,
            data.valid,
            reference=reference,
        )
        diag_start = preference_diagnostics(start, args.diagnostic_batches)
        t0 = time.perf_counter()
        run = train_stage(
            settings, args.dataset, {}, cfg, reference=(sft_mv.name, sft_mv.version), data=data, log=lambda *_: None
        )
        seconds = time.perf_counter() - t0
        policy, _ = load_model(run["path"])
        end = SeqRecTrainer(
            trained_member(policy), cfg, data.train_inputs, data.train_targets, data.valid, reference=reference
        )
        sft_n5 = sft_mv.card["test"]["ndcg@5"]
        out[variant] = {
            "name": run["name"],
            "version": run["version"],
            "test": {k: round(v, 4) for k, v in run["test"].items() if "@" in k},
            "valid_ndcg@10": round(run["valid"]["ndcg@10"], 4),
            "ndcg@5_gain_over_sft": round(run["test"]["ndcg@5"] / sft_n5 - 1, 4),
            "kept_epoch": run["kept_epoch"],
            "seconds": round(seconds, 1),
            "diagnostics_start": diag_start,
            "diagnostics_end": preference_diagnostics(end, args.diagnostic_batches),
            "test_shift": ranking_shift(sft_model, policy, data.test, k=5),
            "by_target_count": by_target_count(settings.metrics(), sft_mv.card["run_id"], run["run_id"]),
        }
        print(json.dumps({variant: out[variant]}), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
