"""Runs in the peer environment (`make bench-env`: RecTools pins numpy < 2 and pandas < 3, so it lives in its own
virtual environment, never imported by recalign). Reads a split written by benchmarks/baselines.py, trains RecTools'
SASRecModel and writes each evaluated user's rank of the held-out item (0 = outside the top K) as JSON.

    .venv-bench/bin/python benchmarks/peer/rectools_sasrec.py SPLIT_DIR OUT.json --loss softmax --epochs 30
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def interactions(path: Path) -> pd.DataFrame:
    """user_id, item_id, position -> RecTools' columns (the position is the time order)."""
    df = pd.read_csv(path)
    return pd.DataFrame(
        {
            "user_id": df["user_id"],
            "item_id": df["item_id"],
            "weight": 1.0,
            "datetime": pd.to_datetime(df["position"], unit="s"),
        }
    )


def ranks_of(recos: pd.DataFrame, targets: pd.DataFrame) -> np.ndarray:
    """Rank (1-based) of each user's target in their top-K list, 0 when absent."""
    hit = recos.merge(targets, left_on=["user_id", "item_id"], right_on=["user_id", "target"], how="inner")
    rank = targets[["user_id"]].merge(hit[["user_id", "rank"]], on="user_id", how="left")["rank"]
    return rank.fillna(0).astype(int).to_numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("split")
    ap.add_argument("out")
    ap.add_argument("--loss", default="softmax", choices=["softmax", "sampled_softmax", "gBCE", "BCE"])
    ap.add_argument("--n-negatives", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    import torch
    from pytorch_lightning import seed_everything
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    seed_everything(args.seed, workers=True)
    split = Path(args.split)
    train = interactions(split / "train.csv")
    valid_hist = pd.concat([train, interactions(split / "valid_item.csv")])  # test histories: train + valid item
    model = SASRecModel(
        n_blocks=args.blocks,
        n_heads=args.heads,
        n_factors=args.factors,
        dropout_rate=args.dropout,
        session_max_len=args.max_len,
        loss=args.loss,
        n_negatives=args.n_negatives,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        deterministic=True,
        item_net_block_types=(__import__("rectools.models.nn.item_net", fromlist=["x"]).IdEmbeddingsItemNet,),
        recommend_torch_device="cpu",
    )
    t0 = time.perf_counter()
    model.fit(Dataset.construct(train))
    fit_seconds = time.perf_counter() - t0
    out = {
        "loss": args.loss,
        "epochs": args.epochs,
        "max_len": args.max_len,
        "fit_seconds": round(fit_seconds, 1),
        "threads": torch.get_num_threads(),
    }
    for name, hist in (("valid", train), ("test", valid_hist)):
        targets = pd.read_csv(split / f"{name}_targets.csv")
        t0 = time.perf_counter()
        recos = model.recommend(
            users=targets["user_id"].to_numpy(), dataset=Dataset.construct(hist), k=args.k, filter_viewed=True
        )
        out[name] = {"users": targets["user_id"].tolist(), "ranks": ranks_of(recos, targets).tolist()}
        out[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
