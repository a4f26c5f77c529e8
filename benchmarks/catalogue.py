"""Large-catalogue benchmark: one SFT epoch with a sampled loss on a synthetic catalogue of 1,000,000 items; one
JSON line with seconds, peak RSS and the memory full cross-entropy would need for the same batches.

    python benchmarks/catalogue.py                         # 1M items, 20k users, sampled softmax (K = 256)
    python benchmarks/catalogue.py --loss gbce --items 200000
    python benchmarks/catalogue.py --text-dim 384          # with a text tower over 384-d item features
Full cross-entropy is tried for one step on the longest windows (ID only) in a child process limited to 24 GB.
Sequences follow a random walk over the item ids (the next item is a few ids away, popularity skewed), so the
model has something to learn; a valid split of 2,000 users is scored over the whole catalogue after the epoch.
Target (2 cores): the epoch within 24 GB peak RSS, where full CE's per-step logits alone would not fit.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_walks(n_users: int, n_items: int, mean_len: int, seed: int) -> list[np.ndarray]:
    """One sequence per user: a start drawn with a Zipf-like skew, then steps of -3..+3 ids (wrapping)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_len, n_users), 3, 50)
    starts = (rng.pareto(1.2, n_users) * 1000).astype(np.int64) % n_items
    steps = rng.integers(-3, 4, lengths.sum())
    out, at = [], 0
    for start, n in zip(starts, lengths):
        walk = (start + np.cumsum(steps[at : at + n])) % n_items + 1
        out.append(walk.astype(np.int64))
        at += n
    return out


def item_features(n_items: int, dim: int, seed: int) -> np.ndarray:
    """(n_items + 1, dim) side features of the items (row 0: padding, zeros), as a text encoder's vectors would be:
    random Fourier features of the item id, so that the walk's nearby items have similar vectors."""
    freqs = np.random.default_rng(seed).standard_normal(dim // 2) * 0.3
    out = np.zeros((n_items + 1, 2 * len(freqs)), dtype=np.float32)
    for lo in range(1, n_items + 1, 1 << 16):
        ids = np.arange(lo, min(lo + (1 << 16), n_items + 1))[:, None] * freqs[None, :]
        out[lo : lo + len(ids)] = np.concatenate([np.sin(ids), np.cos(ids)], 1)
    return out


def full_ce_step(args, x, y) -> dict:
    """One full cross-entropy step on the batch of the longest windows, in this process under a 24 GB address-space
    limit: its logits, the log-softmax kept for backward and their gradient are positions x (items + 1) each."""
    import resource

    import torch

    from training.seqrec.model import MultimodalSASRec, SeqRecConfig

    resource.setrlimit(resource.RLIMIT_AS, (24 << 30, 24 << 30))
    idx = torch.sort((y > 0).sum(1), descending=True).indices[: args.batch_size]
    model = MultimodalSASRec(SeqRecConfig(n_items=args.items, d=args.d, max_len=50, id_init="random"))
    t0 = time.perf_counter()
    try:
        model.calculate_loss(x[idx], y[idx], mask_seen=True).backward()
    except (RuntimeError, MemoryError) as err:
        return {"ran": False, "error": str(err).splitlines()[0][:160], "positions": int((y[idx] > 0).sum())}
    return {"ran": True, "seconds": round(time.perf_counter() - t0, 1), "positions": int((y[idx] > 0).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--mean-len", type=int, default=10)
    ap.add_argument("--loss", default="sampled_softmax", choices=["sampled_softmax", "gbce"])
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--id-dropout", type=float, default=None, help="SeqRecConfig.id_dropout (default: its default)")
    ap.add_argument("--text-dim", type=int, default=0, help="also a text tower over N-d item features (0: ID only)")
    ap.add_argument("--valid-users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-ce-step", action="store_true", help="(internal) one full-CE step under a 24 GB limit")
    args = ap.parse_args()

    import torch

    from training.seqrec.data import EvalSet, training_windows
    from training.seqrec.model import MultimodalSASRec, SeqRecConfig
    from training.seqrec.trainer import SeqRecTrainConfig, SeqRecTrainer

    t0 = time.perf_counter()
    seqs = random_walks(args.users, args.items, args.mean_len, args.seed)
    x, y = training_windows([s[:-1] for s in seqs], 50)
    v = np.arange(min(args.valid_users, len(seqs)))
    valid = EvalSet.build([seqs[i][:-1] for i in v], np.array([seqs[i][-1] for i in v]), v, 50)
    t_data = time.perf_counter() - t0
    if args.full_ce_step:
        print(json.dumps(full_ce_step(args, x, y)))
        return
    torch.manual_seed(args.seed)
    drop = {} if args.id_dropout is None else {"id_dropout": args.id_dropout}
    text = {}
    if args.text_dim:
        drop |= {"modalities": ["id", "text"], "text_dim": 2 * (args.text_dim // 2)}
        text = {"text": torch.from_numpy(item_features(args.items, args.text_dim, args.seed))}
    cfg = SeqRecConfig(n_items=args.items, d=args.d, max_len=50, id_init="random", **drop)
    model = MultimodalSASRec(cfg, **text)
    train = SeqRecTrainConfig(
        epochs=1,
        batch_size=args.batch_size,
        loss=args.loss,
        n_negatives=args.negatives,
        swa_last=None,
        eval_every=1,
        show_progress=False,
    )
    fit = SeqRecTrainer(model, train, x, y, valid).fit()
    row = fit["history"][0]
    positions = (y > 0).sum(1)
    # the largest batch's positions x (items + 1) fp32: logits, the log-softmax kept for backward, the gradient
    biggest = int(torch.sort(positions, descending=True).values[: args.batch_size].sum())
    full_ce_gb = biggest * (args.items + 1) * 4 * 3 / 2**30
    child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--full-ce-step"], capture_output=True, text=True)
    if child.returncode == 0:
        full_ce = json.loads(child.stdout.strip().splitlines()[-1])
    else:  # -9: the kernel's OOM killer stopped it (the machine's RAM ran out before the 24 GB limit)
        full_ce = {"ran": False, "returncode": child.returncode, "stderr": child.stderr[-300:]}
    print(
        json.dumps(
            {
                "benchmark": "catalogue",
                "items": args.items,
                "users": args.users,
                "interactions": int(sum(len(s) for s in seqs)),
                "training_positions": int(positions.sum()),
                "loss": args.loss,
                "n_negatives": args.negatives,
                "id_dropout": cfg.id_dropout,
                "modalities": cfg.modalities,
                "data_seconds": round(t_data, 1),
                "epoch_seconds": round(row["train_seconds"], 1),
                "valid_ndcg@10": round(row["valid_ndcg@10"], 4),
                "valid_hr@10": round(row["valid_hr@10"], 4),
                "eval_seconds": round(row["eval_seconds"], 1),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "embedding_table_gb": round((args.items + 1) * args.d * 4 / 2**30, 3),
                "full_ce_gb_per_step_estimated": round(full_ce_gb, 1),
                "full_ce_step_under_24gb": full_ce,
                "target_rss_gb": 24,
            }
        )
    )


if __name__ == "__main__":
    main()
