"""Ingest benchmark: land + validate + sequence one dataset; prints one JSON line.

    python benchmarks/ingest.py --dataset amazon-s3rec --path ../shared/data/amazon_sports
Target (2 cores): Sports (296k interactions) under 20 s, peak RSS under 1.5 GB.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synthetic", help="source reader name")
    ap.add_argument("--path", default=None)
    ap.add_argument("--kcore", type=int, default=None)
    args = ap.parse_args()
    home = os.environ.get("RECALIGN_HOME") or tempfile.mkdtemp(prefix="recalign-bench-")
    from assets.ingest.pipeline import (
        DatasetSpec,
        build_sequences,
        build_warehouse,
        land_raw,
        peak_rss_mb,
    )
    from recalign.settings import Settings

    settings = Settings.from_env(home)
    spec = DatasetSpec(source=args.dataset, path=args.path, kcore=args.kcore)
    t0 = time.perf_counter()
    land_raw(settings, spec)
    t1 = time.perf_counter()
    md = build_warehouse(settings, spec)
    t2 = time.perf_counter()
    stats = build_sequences(settings, spec)
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "dataset": spec.dataset,
                "source": args.dataset,
                "users": md["users"],
                "items": md["items"],
                "interactions": md["interactions"],
                "rejected": md["rejected"],
                "reconciled": md["reconciled"],
                "evaluable_users": stats["evaluable_users"],
                "seconds": round(t3 - t0, 2),
                "land_seconds": round(t1 - t0, 2),
                "tables_seconds": round(t2 - t1, 2),
                "sequences_seconds": round(t3 - t2, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
