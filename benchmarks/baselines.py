"""Peer baseline, run here: RecTools' SASRecModel on our exact split and protocol (leave-one-out, full ranking,
history filtered), its metrics beside our models' in one JSON line.

    make bench-env                                   # once: .venv-bench with rectools[torch] (numpy < 2, pandas < 3)
    python benchmarks/baselines.py --dataset amazon-beauty --home /tmp/bh
    python benchmarks/baselines.py --dataset amazon-sports --losses softmax,sampled_softmax --epochs 40
The peer trains in its own environment (RecTools pins numpy < 2 and pandas < 3; recalign runs on numpy 2 and
pandas 3), from CSV files of our split; it ranks the whole catalogue with viewed items filtered, as we do (a target
that repeats a history item is filtered by RecTools and kept rankable by us: rare after 5-core deduplication).
Ours: the newest registered seqrec_sft* and seqrec_dpo* models of the home, read from their cards.
"""

import argparse
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


def peer_metrics(ranks: list[int], n_items: int) -> dict:
    from training.metrics import metrics_from_ranks

    r = np.asarray(ranks)
    full = metrics_from_ranks(np.where(r > 0, r, n_items + 1))
    return {k: round(full[k], 4) for k in METRICS}


def ours(registry, prefix: str) -> dict | None:
    mv = registry.newest(prefix)
    if mv is None:
        return None
    return {"model": f"{mv.name}/{mv.version}", **{k: round(mv.card["test"][k], 4) for k in METRICS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), help="a home with the dataset ingested")
    ap.add_argument("--losses", default="softmax,sampled_softmax", help="RecTools SASRec losses, one run each")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
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
    with tempfile.TemporaryDirectory() as tmp:
        write_split(seq, Path(tmp))
        for loss in args.losses.split(","):
            result = Path(tmp) / f"{loss}.json"
            cmd = [args.peer_python, str(ROOT / "benchmarks/peer/rectools_sasrec.py"), tmp, str(result)]
            cmd += ["--loss", loss, "--epochs", str(args.epochs), "--seed", str(args.seed)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"error: the peer run failed:\n{run.stderr[-4000:]}")
            peer = json.loads(result.read_text())
            out[f"rectools_sasrec_{loss}"] = {
                "valid": peer_metrics(peer["valid"]["ranks"], seq.n_items),
                "test": peer_metrics(peer["test"]["ranks"], seq.n_items),
                "epochs": peer["epochs"],
                "fit_seconds": peer["fit_seconds"],
            }
    registry = settings.registry(args.dataset)
    out["ours_sft"], out["ours_dpo"] = ours(registry, "seqrec_sft"), ours(registry, "seqrec_dpo")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
