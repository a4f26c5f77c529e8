"""Snapshot-ensemble benchmark: the recipe's SFT trained past its validation optimum, its validation-best and last
weight snapshots mixed by score (training/seqrec/ensemble.py), the mixing weight chosen on validation; one JSON line.

    python benchmarks/snapshots.py --dataset amazon-beauty --home /tmp/bh --epochs 30 --seed 42
    python benchmarks/snapshots.py --dataset amazon-beauty --home /tmp/bh --best NAME/VERSION --late NAME/VERSION
    python benchmarks/snapshots.py --dataset amazon-beauty --home /tmp/bh --model NAME/VERSION   # a recipe's mix
Prints test metrics of the best snapshot, the late one and their mix, the paired bootstrap of mix - best per test
user (NDCG@5, NDCG@10), and NDCG@10 by the target's training count (where the late snapshot helps: rare targets).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recalign.datasets import KNOWN, locate  # noqa: E402


def compare(best, late, data) -> dict:
    """Weight chosen on validation; test metrics of best, late, mix; mix - best paired; NDCG@10 by target count."""
    from recalign.report import ndcg_by_popularity
    from recalign.stats import paired_test
    from training.metrics import metrics_from_ranks, per_user_metrics
    from training.seqrec.ensemble import SnapshotEnsemble, choose_late_weight
    from training.seqrec.evaluate import full_ranking_ranks

    weight, valid = choose_late_weight(best, late, data.valid)
    ranks = {
        "best": full_ranking_ranks(best, data.test),
        "late": full_ranking_ranks(late, data.test),
        "mix": full_ranking_ranks(SnapshotEnsemble(best, late, weight), data.test),
    }
    paired = {}
    for k in (5, 10):
        mix, base = (per_user_metrics(ranks[m], k)[f"ndcg@{k}"] for m in ("mix", "best"))
        paired[f"ndcg@{k}"] = {m: round(v, 5) if isinstance(v, float) else v for m, v in paired_test(mix, base).items()}
    keep = ("ndcg@5", "ndcg@10", "mrr@5", "mrr@10", "hr@10")
    return {
        "late_weight": weight,
        "valid_ndcg@10_by_weight": {str(w): round(v, 5) for w, v in valid.items()},
        "test": {m: {k: round(v, 5) for k, v in metrics_from_ranks(r).items() if k in keep} for m, r in ranks.items()},
        "mix_minus_best": paired,
        "by_target_count": ndcg_by_popularity(data.item_counts[data.test.targets.numpy()], ranks),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty", choices=sorted(KNOWN))
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), help="reuse a RECALIGN_HOME (tables, vectors)")
    ap.add_argument("--epochs", type=int, default=30, help="SFT epochs; the last trailing window is the late snapshot")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--best", default=None, help="NAME/VERSION of a registered best snapshot (with --late: no training)"
    )
    ap.add_argument("--late", default=None, help="NAME/VERSION of a registered late snapshot")
    ap.add_argument("--model", default=None, help="NAME/VERSION of a registered snapshot ensemble: its two members")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    if args.model and (args.best or args.late):
        sys.exit("error: --model compares the members of one registered ensemble: without --best / --late")
    if bool(args.best) != bool(args.late):
        sys.exit("error: give both --best and --late (compare two registered models), or neither (train)")

    import torch

    torch.set_num_threads(args.threads)
    from assets.embeddings.pipeline import embed_text_table
    from assets.ingest.pipeline import DatasetSpec, ingest
    from assets.seqrec.pipeline import load_data, train_stage
    from recalign.settings import Settings
    from training.seqrec.checkpoint import load_model
    from training.seqrec.ensemble import SnapshotEnsemble
    from training.seqrec.recipe import get_recipe
    from training.seqrec.transitions import without_prior

    recipe = get_recipe("default")
    model_cfg = recipe.model_config()
    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    source, path = locate(args.dataset, None)
    ingest(settings, DatasetSpec(source=source, path=path, name=args.dataset), only_if_missing=True)
    if "text" in model_cfg["modalities"]:
        embed_text_table(settings, args.dataset, "item_text")
    data = load_data(settings, args.dataset, model_cfg["max_len"], model_cfg["modalities"], model_cfg["attributes"])
    out = {"benchmark": "snapshots", "dataset": args.dataset}
    t0 = time.perf_counter()
    if args.model:
        mix, _ = load_model(settings.registry(args.dataset).get(*args.model.split("/")).path)
        mix = without_prior(mix)  # the members; a Markov prior is chosen apart (transitions.py)
        if not isinstance(mix, SnapshotEnsemble):
            sys.exit(f"error: {args.model} is one model, not a snapshot ensemble (its card's snapshot weight was 0)")
        best, late = mix.best, mix.late
    elif args.late:
        registry = settings.registry(args.dataset)
        best, _ = load_model(registry.get(*args.best.split("/")).path)
        late, _ = load_model(registry.get(*args.late.split("/")).path)
    else:
        with tempfile.TemporaryDirectory(dir=settings.cache_dir) as ckpt:  # the trainer keeps its best window here
            cfg = recipe.sft_config(epochs=args.epochs, keep="last", seed=args.seed, show_progress=False)
            run = train_stage(
                settings,
                args.dataset,
                model_cfg,
                cfg,
                "snapshot_late",
                data=data,
                checkpoint_dir=ckpt,
                log=lambda *_: None,
            )
            best, meta = load_model(Path(ckpt) / "best-sft")
        late, _ = load_model(run["path"])
        out["late"] = {"name": run["name"], "version": run["version"], "epochs_run": run["epochs_run"]}
        out["best_epoch"] = meta["best"]["epoch"]
        out["train_seconds"] = round(time.perf_counter() - t0, 1)
    out |= compare(best, late, data)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
