"""DDP benchmark: the same SFT epochs as N processes x 1 thread (torchrun, gloo) and as 1 process x N threads;
seconds per epoch and validation NDCG@10 of each, one JSON line.

    python benchmarks/ddp.py --dataset amazon-beauty --home /tmp/bh     # 2 epochs, ID-only default recipe
On 2 cores DDP need not win (the ranks' all-reduce of the embedding gradient is on the critical path); the point is
that the same entry point runs and scales out, to GPUs or nodes, with the same numbers.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(command: list[str], env: dict) -> dict:
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stdout[-2000:] + out.stderr[-4000:])
    return json.loads([line for line in out.stdout.splitlines() if line.startswith('{"name"')][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), help="a home with the dataset ingested")
    ap.add_argument("--nproc", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--loss", default="ce")
    args = ap.parse_args()

    from assets.ingest.pipeline import DatasetSpec, ingest
    from assets.seqrec.launch import launch_spec, torchrun_command
    from recalign.datasets import locate
    from recalign.settings import Settings

    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-ddp-"))
    source, path = locate(args.dataset, None)
    ingest(settings, DatasetSpec(source=source, path=path, name=args.dataset), only_if_missing=True)
    train = {"epochs": args.epochs, "swa_last": None, "eval_every": args.epochs, "loss": args.loss}
    out = {"benchmark": "ddp", "dataset": args.dataset, "loss": args.loss, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        spec = launch_spec(settings, args.dataset, "sft", {"modalities": ["id"]}, train)
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        layouts = {
            f"1x{args.nproc}_threads": ([sys.executable, "-m", "assets.seqrec.launch", str(path)], args.nproc),
            f"{args.nproc}x1_ddp": (torchrun_command(args.nproc, path), 1),
        }
        for name, (command, threads) in layouts.items():
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            summary = run(command, env)
            secs = [r["train_seconds"] for r in summary["history"]]
            out[name] = {
                "seconds_per_epoch": round(sum(secs) / len(secs), 1),
                "epoch_seconds": [round(s, 1) for s in secs],
                "valid_ndcg@10": round(summary["valid"]["ndcg@10"], 4),
                "test_ndcg@10": round(summary["test"]["ndcg@10"], 4),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
