"""Summaries benchmark: SmolLM2-135M item summaries on Amazon Beauty, batched vs one at a time (same model, same
prompts, same max new tokens), plus peak RSS; one JSON line.

    python benchmarks/summaries.py --home /tmp/bh --items 64 --batch-size 32
Targets (2 cores): batched at least 3x faster than one at a time, peak RSS under 3 GB.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.smoke import small  # noqa: E402  (RECALIGN_SMOKE: the docs test's small form)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"))
    ap.add_argument("--dataset", default="amazon-beauty", help="a dataset of recalign.datasets.KNOWN")
    ap.add_argument("--path", default=None, help="its folder (default: ../shared/data/<folder>)")
    ap.add_argument("--items", type=int, default=small(64, 4))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=small(48, 12))
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    from assets.ingest.pipeline import DatasetSpec, ingest, peak_rss_mb
    from assets.summaries.backends import LLMSummarizer
    from assets.summaries.summarize import item_requests
    from recalign.datasets import locate
    from recalign.settings import Settings
    from recalign.warehouse import Warehouse

    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    try:
        source, path = locate(args.dataset, args.path)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    ingest(settings, DatasetSpec(source, path, name=args.dataset), only_if_missing=True)
    wh = Warehouse(settings.warehouse_path(args.dataset))
    reqs = item_requests(wh, list(range(1, args.items + 1)))["request"].tolist()
    llm = LLMSummarizer(args.model, settings.models_dir, args.max_new_tokens, vision_bridge=False)
    llm.summarize(reqs[:2])  # warm-up
    t0 = time.perf_counter()
    batched = []
    for i in range(0, len(reqs), args.batch_size):
        batched += llm.summarize(reqs[i : i + args.batch_size])
    batched_rate = len(reqs) / (time.perf_counter() - t0)
    single_reqs = reqs[: max(8, args.items // 3)]
    t0 = time.perf_counter()
    single = [llm.summarize([r])[0] for r in single_reqs]
    single_rate = len(single_reqs) / (time.perf_counter() - t0)
    same = sum(a.text == b.text for a, b in zip(batched, single)) / len(single)
    print(
        json.dumps(
            {
                "benchmark": "summaries",
                "dataset": args.dataset,
                "model": llm.model_id,
                "items": len(reqs),
                "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens,
                "batched_items_per_s": round(batched_rate, 3),
                "single_items_per_s": round(single_rate, 3),
                "speedup": round(batched_rate / single_rate, 2),
                "batched_equals_single_fraction": round(same, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "targets": {"speedup": 3.0, "peak_rss_mb": 3072},
            }
        )
    )


if __name__ == "__main__":
    main()
