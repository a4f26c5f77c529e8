"""Peer baseline, run here: RecTools' SASRecModel on our exact split and protocol (leave-one-out, full ranking,
history filtered), its metrics beside our models' in one JSON line.

    make bench-env                                   # once: .venv-bench with rectools[torch] (numpy < 2, pandas < 3)
    python benchmarks/baselines.py --dataset amazon-beauty --home /tmp/bh
    python benchmarks/baselines.py --dataset amazon-sports --losses softmax,sampled_softmax --epochs 40
The peer trains in its own environment (RecTools pins numpy < 2 and pandas < 3; recalign runs on numpy 2 and
pandas 3), from CSV files of our split; it ranks the whole catalogue with viewed items filtered, as we do (a target
that repeats a history item is filtered by RecTools and kept rankable by us: rare after 5-core deduplication).
Ours: the newest registered seqrec_sft* model of the home (or `--ours NAME/VERSION`) and the newest stage-2 model
trained on it (its card's reference), read from their cards; each peer run is compared with our SFT user by user
(paired bootstrap interval of ours - peer on test NDCG@5 and NDCG@10, Wilcoxon p) and by the test target's training
count (`by_target_count`: where the difference is, head or tail), from the per-user ranks our runs keep in the
home's metrics store. `--keep DIR` keeps the split and the peer's per-user ranks (a fit can take an hour on a CPU).
`--reuse` (with `--keep DIR`) reads the peer runs kept there, after checking the split is this one, instead of fitting.
"""

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("ndcg@5", "ndcg@10", "mrr@5", "mrr@10", "hr@10")


def write_split(seq, folder: Path) -> None:
    """train.csv (every training interaction in order), valid_item.csv, valid/test_targets.csv."""
    rows = [(u, int(i), p) for u, items in zip(seq.user_ids, seq.train) for p, i in enumerate(items)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "position"]).to_csv(folder / "train.csv", index=False)
    has = np.array([len(t) > 0 for t in seq.train])
    v = (seq.valid > 0) & has
    pd.DataFrame(
        {"user_id": seq.user_ids[v], "item_id": seq.valid[v], "position": [len(t) for t, k in zip(seq.train, v) if k]}
    ).to_csv(folder / "valid_item.csv", index=False)
    pd.DataFrame({"user_id": seq.user_ids[v], "target": seq.valid[v]}).to_csv(folder / "valid_targets.csv", index=False)
    t = (seq.test > 0) & (has | (seq.valid > 0))
    pd.DataFrame({"user_id": seq.user_ids[t], "target": seq.test[t]}).to_csv(folder / "test_targets.csv", index=False)


def same_split_as_kept(seq, keep: Path, scratch: Path) -> None:
    """Exit with a clear error when the split kept in `keep` is not this dataset's split (a reuse would mix them)."""
    write_split(seq, scratch)
    for name in ("train.csv", "valid_targets.csv", "test_targets.csv"):
        if not (keep / name).exists() or not filecmp.cmp(keep / name, scratch / name, shallow=False):
            sys.exit(f"error: {keep / name} is missing or not this dataset's split: fit the peer again (no --reuse)")


def full_ranks(ranks: list[int], n_items: int) -> np.ndarray:
    """The peer's top-K ranks (0 = outside the top K) as full-ranking ranks: outside counts as last."""
    r = np.asarray(ranks)
    return np.where(r > 0, r, n_items + 1)


def peer_metrics(ranks: list[int], n_items: int) -> dict:
    from training.metrics import metrics_from_ranks

    full = metrics_from_ranks(full_ranks(ranks, n_items))
    return {k: round(full[k], 4) for k in METRICS}


def summary(mv) -> dict | None:
    return (
        None
        if mv is None
        else {"model": f"{mv.name}/{mv.version}", **{k: round(mv.card["test"][k], 4) for k in METRICS}}
    )


def ours(registry, prefix: str, spec: str | None = None):
    """Our model: the given NAME/VERSION, else the newest registered model of the prefix."""
    return registry.get(*spec.split("/")) if spec else registry.newest(prefix)


def stage_two_of(registry, sft) -> object | None:
    """The newest stage-2 (seqrec_dpo*) model whose reference is `sft`."""
    ref = f"{sft.name}/{sft.version}"
    found = [
        mv
        for d in sorted((registry.root / "models").glob("seqrec_dpo*"))
        for mv in registry.versions(d.name)
        if (mv.card.get("config") or {}).get("reference") == ref
    ]
    return max(found, key=lambda mv: mv.version, default=None)


def side_by_side(store, run_id: str, users: list[int], ranks: list[int], n_items: int) -> pd.DataFrame:
    """user_id, rank (ours, test), target_count (the target's training interactions), peer_rank: both ranked."""
    mine = store.read(
        "SELECT user_id, rank, target_count FROM user_ranks WHERE run_id = ? AND split = 'test'", [run_id]
    )
    peer = pd.DataFrame({"user_id": np.asarray(users, np.int64), "peer_rank": full_ranks(ranks, n_items)})
    return mine.merge(peer, on="user_id")


def paired_vs_ours(both: pd.DataFrame) -> dict:
    """Ours - peer per test user (NDCG@5, NDCG@10; `both` from side_by_side): paired bootstrap 95% interval and
    Wilcoxon p."""
    from recalign.stats import paired_test
    from training.metrics import per_user_metrics

    out = {}
    for k in (5, 10):
        a = per_user_metrics(both["rank"].to_numpy(), k)[f"ndcg@{k}"]
        b = per_user_metrics(both["peer_rank"].to_numpy(), k)[f"ndcg@{k}"]
        out[f"ndcg@{k}"] = {m: round(v, 5) if isinstance(v, float) else v for m, v in paired_test(a, b).items()}
    return out


def by_target_count(both: pd.DataFrame) -> dict:
    """Test NDCG@10 of ours and the peer by the target item's training interactions (`both` from side_by_side)."""
    from recalign.report import ndcg_by_popularity

    if both["target_count"].isna().any():
        raise ValueError("our run's user_ranks lack target_count: evaluate it again with a current recalign")
    return ndcg_by_popularity(both["target_count"], {"ours": both["rank"], "peer": both["peer_rank"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), help="a home with the dataset ingested")
    ap.add_argument("--losses", default="softmax,sampled_softmax", help="RecTools SASRec losses, one run each")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--max-len", type=int, default=50, help="the peer's session_max_len (its cost grows with it)")
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ours", default=None, help="NAME/VERSION of our SFT to compare with (default: the newest)")
    ap.add_argument("--keep", default=None, help="a folder that keeps the split and the peer's per-user ranks")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: read the peer runs kept there (same split) instead of fitting",
    )
    args = ap.parse_args()
    if args.reuse and not args.keep:
        sys.exit("error: --reuse reads the peer runs kept by an earlier --keep DIR: give --keep DIR")
    if not Path(args.peer_python).exists():
        sys.exit(f"error: {args.peer_python} not found: run `make bench-env` first")

    from assets.ingest.pipeline import DatasetSpec, ingest
    from recalign.datasets import locate
    from recalign.settings import Settings
    from recalign.warehouse import load_sequences

    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-peer-"))
    source, path = locate(args.dataset, None)
    ingest(settings, DatasetSpec(source=source, path=path, name=args.dataset), only_if_missing=True)
    seq = load_sequences(settings.warehouse(args.dataset))
    out = {
        "benchmark": "baselines",
        "dataset": args.dataset,
        "protocol": "leave-one-out, full ranking, history filtered",
    }
    registry = settings.registry(args.dataset)
    sft = ours(registry, "seqrec_sft", args.ours)
    out["ours_sft"] = summary(sft)
    out["ours_dpo"] = summary(None if sft is None else stage_two_of(registry, sft))
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        if args.reuse:
            same_split_as_kept(seq, Path(tmp), Path(scratch))
        write_split(seq, Path(tmp))
        for loss in args.losses.split(","):
            result = Path(tmp) / f"{loss}.json"
            reused = args.reuse and result.exists()
            if not reused:
                cmd = [args.peer_python, str(ROOT / "benchmarks/peer/rectools_sasrec.py"), tmp, str(result)]
                cmd += ["--loss", loss, "--epochs", str(args.epochs), "--seed", str(args.seed)]
                cmd += ["--max-len", str(args.max_len)]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    sys.exit(f"error: the peer run failed:\n{run.stderr[-4000:]}")
            peer = json.loads(result.read_text())
            out[f"rectools_sasrec_{loss}"] = {
                "valid": peer_metrics(peer["valid"]["ranks"], seq.n_items),
                "test": peer_metrics(peer["test"]["ranks"], seq.n_items),
                "epochs": peer["epochs"],
                "max_len": peer.get("max_len"),  # None: a run kept before the peer recorded it
                "fit_seconds": peer["fit_seconds"],
                "reused": reused,
            }
            if sft is not None:
                both = side_by_side(
                    settings.metrics(), sft.card["run_id"], peer["test"]["users"], peer["test"]["ranks"], seq.n_items
                )
                out[f"rectools_sasrec_{loss}"]["ours_sft_minus_peer"] = paired_vs_ours(both)
                out[f"rectools_sasrec_{loss}"]["by_target_count"] = by_target_count(both)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
