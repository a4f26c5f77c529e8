"""Sequential-track benchmark: SFT (CE warm-up) then DPO with a negative sampler; one JSON line.

    python benchmarks/seqrec.py --dataset amazon-beauty --modalities id,text   # the README's recipe: 15 + 3 epochs, SWA in both, history masked
    python benchmarks/seqrec.py --dataset amazon-beauty --samplers random,argmax,stochastic_topk --modalities id,text
Targets (2 cores): both stages under 15 min, one full evaluation of all users under 10 s, peak RSS under 4 GB.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {"amazon-beauty": ("amazon-s3rec", "amazon_beauty"), "amazon-sports": ("amazon-s3rec", "amazon_sports"),
           "movielens-100k": ("movielens-100k", "movielens_100k"), "microlens-50k": ("microlens", "microlens_50k"),
           "synthetic": ("synthetic", None)}


def registered_summary(settings, dataset: str, name: str, version: str) -> dict:
    """The summary `train_stage` returns, read back from a registered model's card (no training)."""
    from recalign.registry import Registry

    card = Registry(settings.registry_dir(dataset)).get(name, version).card
    return {"name": name, "version": version, "test": card["test"], "valid": card["valid"],
            "epochs_run": card["epochs_run"], "seconds_per_epoch": None,
            "modalities": card["config"]["model"]["modalities"], "moe": card["config"]["model"]["moe"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-beauty", choices=sorted(PRESETS))
    ap.add_argument("--path", default=None, help="dataset folder (default: ../shared/data/<preset>)")
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), help="reuse a RECALIGN_HOME (tables, vectors)")
    ap.add_argument("--modalities", default="id")
    ap.add_argument("--moe", action="store_true")
    ap.add_argument("--attributes", action="store_true",
                    help="add the mean of learned attribute embeddings (brand, categories) to each item's ID embedding")
    ap.add_argument("--samplers", default="stochastic_topk")
    ap.add_argument("--mask-history", default="both", choices=["none", "sft", "dpo", "both"],
                    help="stages whose CE softmax and negative pool skip the items already in each prefix")
    ap.add_argument("--sft-epochs", type=int, default=15)
    ap.add_argument("--dpo-epochs", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dpo-lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=None, help="SFT: EMA decay of the weights that are validated and kept")
    ap.add_argument("--swa-start", type=int, default=None,
                    help="SFT: validate and keep the uniform average of the weights after epochs N..last (SWA; "
                         "default 9, or off with --ema; 0: off)")
    ap.add_argument("--dpo-swa-start", type=int, default=None,
                    help="DPO: the same SWA, over DPO epochs N.. (default 1, or off with --dpo-ema; 0: off)")
    ap.add_argument("--dpo-ema", type=float, default=None, help="DPO: the same, for the policy")
    ap.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"], help="SFT learning-rate schedule")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--eval-every", type=int, default=5, help="validate every N SFT epochs (DPO validates every epoch)")
    ap.add_argument("--sft-keep", default="last", choices=["best", "last"],
                    help="SFT: best-validated weights, or all epochs and the final weights (the paper's fixed warm-up)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sft-init", default=None, help="name/version of a registered model to continue SFT from")
    ap.add_argument("--sft-from", default=None,
                    help="name/version of a registered SFT model to use as the DPO reference (no SFT training)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads (default: all cores)")
    args = ap.parse_args()
    args.swa_start = (None if args.ema else 9) if args.swa_start is None else (args.swa_start or None)
    args.dpo_swa_start = (None if args.dpo_ema else 1) if args.dpo_swa_start is None else (args.dpo_swa_start or None)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the model's initial weights (the trainer seeds batching and dropout)
    from assets.embeddings.pipeline import embed_text_table
    from assets.ingest.pipeline import DatasetSpec, ingest, peak_rss_mb
    from assets.seqrec.pipeline import load_data, train_stage
    from recalign.settings import Settings, shared_data_dir
    from training.seqrec.trainer import SeqRecTrainConfig

    source, folder = PRESETS[args.dataset]
    path = args.path or (str(shared_data_dir() / folder) if folder and shared_data_dir() else None)
    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    spec = DatasetSpec(source=source, path=path, name=args.dataset)
    t0 = time.perf_counter()
    ingest(settings, spec, only_if_missing=True)
    mods = args.modalities.split(",")
    if "text" in mods:
        embed_text_table(settings, spec.dataset, "item_text")
    log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    data = load_data(settings, spec.dataset, 50, mods, attributes=args.attributes)
    model_cfg = {"d": 64, "max_len": 50, "dropout": args.dropout, "attn_dropout": args.dropout,
                 "modalities": mods, "moe": args.moe, "attributes": args.attributes}
    mask_sft, mask_dpo = args.mask_history in ("sft", "both"), args.mask_history in ("dpo", "both")
    t_sft = time.perf_counter()
    if args.sft_from:
        sft = registered_summary(settings, spec.dataset, *args.sft_from.split("/"))
    else:
        sft = train_stage(settings, spec.dataset, model_cfg,
                          SeqRecTrainConfig(stage="sft", epochs=args.sft_epochs, lr=args.lr, batch_size=args.batch_size,
                                            lr_schedule=args.lr_schedule, ema_decay=args.ema, swa_start=args.swa_start,
                                            patience=args.patience, eval_every=args.eval_every, seed=args.seed,
                                            keep=args.sft_keep, mask_history=mask_sft,
                                            show_progress=False),
                          variant="seqrec_sft" + ("_moe" if args.moe else "") + ("_" + "_".join(mods) if mods != ["id"] else "")
                                  + ("_attr" if args.attributes else "") + ("" if mask_sft else "_nomask"),
                          data=data, log=log, init=tuple(args.sft_init.split("/")) if args.sft_init else None)
    sft_seconds = time.perf_counter() - t_sft
    out = {"benchmark": "seqrec", "dataset": args.dataset, "modalities": sft["modalities"], "moe": sft.get("moe", args.moe),
           "mask_history": args.mask_history,
           "sft": {"name": sft["name"], "version": sft["version"], "test": sft["test"],
                   "valid_ndcg@10": sft["valid"]["ndcg@10"], "epochs": sft["epochs_run"],
                   "seconds_per_epoch": sft["seconds_per_epoch"], "seconds": round(sft_seconds, 1),
                   "trained_here": not args.sft_from},
           "full_eval_seconds": sft["test"].get("eval_seconds"), "eval_users": sft["test"].get("users")}
    for sampler in args.samplers.split(","):
        t_dpo = time.perf_counter()
        dpo = train_stage(settings, spec.dataset, {},
                          SeqRecTrainConfig(stage="dpo", epochs=args.dpo_epochs, lr=args.dpo_lr, batch_size=args.batch_size,
                                            sampler=sampler, topk=args.topk, beta=args.beta, lam=args.lam, ema_decay=args.dpo_ema,
                                            swa_start=args.dpo_swa_start, mask_history=mask_dpo,
                                            patience=args.patience, seed=args.seed, show_progress=False),
                          variant=f"seqrec_dpo_{sampler}" + ("" if mask_dpo else "_nomask"),
                          reference=(sft["name"], sft["version"]), data=data, log=log)
        out[f"dpo_{sampler}"] = {"test": dpo["test"], "valid_ndcg@10": dpo["valid"]["ndcg@10"],
                                 "epochs": dpo["epochs_run"], "seconds_per_epoch": dpo["seconds_per_epoch"],
                                 "seconds": round(time.perf_counter() - t_dpo, 1)}
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
