"""LLM-track benchmark on this CPU with SmolLM2-135M on MovieLens-100k: SFT training tokens/s, evaluation
candidates/s (1 + 20 per user, KV-cached prompt), and the step-time ratio of HaNoRec to plain DPO on the same
pairs (target: at most 1.2). One JSON line.

    python benchmarks/llm.py --home /tmp/llmbench
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
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # trainer logs to stderr: stdout is the one JSON line
        out = run()
    print(json.dumps(out))


def run() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--path", default=None, help="the MovieLens-100k folder (default: ../shared/data/movielens_100k)")
    ap.add_argument("--users", type=int, default=small(24, 6))
    ap.add_argument("--steps", type=int, default=small(6, 1))
    ap.add_argument("--eval-users", type=int, default=small(8, 4))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    from assets.embeddings.pipeline import embed_text_table
    from assets.ingest.pipeline import DatasetSpec, ingest, peak_rss_mb
    from assets.llmrec.data import eval_examples, train_examples
    from assets.llmrec.pipeline import TrackConfig, _context, preference_rows
    from assets.summaries.backends import TemplateSummarizer
    from assets.summaries.summarize import sample_users, summarize_users
    from recalign.datasets import locate
    from recalign.settings import Settings
    from recalign.warehouse import Warehouse
    from training.llm.prompt import prompt_text
    from training.llm.scoring import evaluate_examples
    from training.llm.trainers import (
        PreferenceStageConfig,
        SFTStageConfig,
        load_base,
        run_preference,
        run_sft,
    )

    ds = "movielens_100k"
    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    try:
        source, path = locate("movielens-100k", args.path)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    ingest(settings, DatasetSpec(source, path, name=ds), only_if_missing=True)
    wh = Warehouse(settings.warehouse_path(ds))
    summarize_users(wh, TemplateSummarizer(), sample_users(wh, args.users, 0), max_blocks=4)
    embed_text_table(settings, ds, "item_text")
    cfg = TrackConfig(base_model=args.model, n_users=args.users, train_negatives=3, targets_per_user=1, history_len=4)
    path, model_id, tok, data = _context(settings, ds, cfg)
    common = dict(batch_size=2, max_steps=args.steps, max_length=384, logging_steps=1)
    work = Path(tempfile.mkdtemp(prefix="llmbench-"))
    rows = [
        {"prompt": prompt_text(tok, e), "completion": e.answer} for e in train_examples(data, 3, 1, 0, history_len=4)
    ]
    sft = run_sft(path, tok, rows, work / "sft", SFTStageConfig(lr=1e-3, **common))
    pairs = preference_rows(
        settings, ds, cfg, PreferenceStageConfig(method="hanorec", sampler="random"), tok, data, path, work / "sft"
    )
    dpo = run_preference(path, tok, work / "sft", pairs, work / "dpo", PreferenceStageConfig(method="dpo", **common))
    han = run_preference(
        path,
        tok,
        work / "sft",
        pairs,
        work / "han",
        PreferenceStageConfig(method="hanorec", noise_sigma=0.05, **common),
    )
    exs = eval_examples(data, "test", 0, history_len=4)[: args.eval_users]
    model = load_base(path)
    t0 = time.perf_counter()
    evaluate_examples(model, tok, exs)
    cand_rate = len(exs) * len(exs[0].candidates) / (time.perf_counter() - t0)
    return {
        "benchmark": "llm",
        "model": model_id,
        "dataset": ds,
        "sft_train_tokens_per_s": round(sft["train_tokens"] / sft["seconds"], 1),
        "eval_candidates_per_s": round(cand_rate, 2),
        "dpo_step_s": dpo["step_seconds_median"],
        "hanorec_step_s": han["step_seconds_median"],
        "hanorec_to_dpo_step_ratio": round(han["step_seconds_median"] / dpo["step_seconds_median"], 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "targets": {"hanorec_to_dpo_step_ratio": 1.2},
    }


if __name__ == "__main__":
    main()
