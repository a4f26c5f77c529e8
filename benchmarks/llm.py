"""LLM-track benchmark on this CPU with SmolLM2-135M (MovieLens-100k by default): training tokens/s of pointwise SFT
on questions of 1 + 20 candidates with each candidate its own sequence (plain, what trl runs) and with the user
prefix encoded once (shared_prefix; target: at least 3x), evaluation candidates/s of both formulations, and the
step-time ratio of HaNoRec to plain DPO on the same pairs (target: at most 1.2). One JSON line.

    python benchmarks/llm.py --home /tmp/llmbench [--dataset microlens-50k]
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
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--path", default=None, help="the dataset folder (default: under ../shared/data)")
    ap.add_argument("--users", type=int, default=small(24, 6))
    ap.add_argument("--steps", type=int, default=small(4, 1))
    ap.add_argument("--negatives", type=int, default=small(20, 4), help="negatives per question (1 + 20: the protocol)")
    ap.add_argument("--eval-users", type=int, default=small(8, 2))
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
    from training.llm import pointwise
    from training.llm.scoring import evaluate_examples
    from training.llm.trainers import PreferenceStageConfig, SFTStageConfig, load_base, run_preference, run_sft

    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    try:
        source, path = locate(args.dataset, args.path)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    ds = args.dataset.replace("-", "_")
    ingest(settings, DatasetSpec(source, path, name=ds), only_if_missing=True)
    wh = Warehouse(settings.warehouse_path(ds))
    summarize_users(wh, TemplateSummarizer(), sample_users(wh, args.users, 0), max_blocks=4)
    embed_text_table(settings, ds, "item_text")
    cfg = TrackConfig(base_model=args.model, n_users=args.users, train_negatives=3, targets_per_user=1, history_len=4)
    path, model_id, tok, data = _context(settings, ds, cfg)
    common = dict(batch_size=2, max_steps=args.steps, max_length=384, logging_steps=1)
    work = Path(tempfile.mkdtemp(prefix="llmbench-"))
    questions = train_examples(data, args.negatives, 1, 0, history_len=4)
    groups = [pointwise.sft_group(tok, e) for e in questions]
    speed = {}
    for shared in (False, True):  # one question (1 + 20 sequences) per step: the plain form's activations fit
        cfg_pw = SFTStageConfig(shared_prefix=shared, **{**common, "batch_size": 1})
        out = run_sft(path, tok, groups, work / f"pw{shared}", cfg_pw)
        speed[shared] = {"tokens_per_s": round(out["train_tokens"] / out["seconds"], 1), "rss": peak_rss_mb()}
    listwise = [cfg.prompts.sft_group(tok, e) for e in train_examples(data, 3, 1, 0, history_len=4)]
    trl_sft = run_sft(path, tok, listwise, work / "sft", SFTStageConfig(lr=1e-3, engine="trl", **common))
    pairs = preference_rows(
        settings, ds, cfg, PreferenceStageConfig(method="hanorec", sampler="random"), tok, data, path, work / "sft"
    )
    dpo = run_preference(path, tok, work / "sft", pairs, work / "dpo", PreferenceStageConfig(method="dpo", **common))
    han = run_preference(
        path, tok, work / "sft", pairs, work / "han", PreferenceStageConfig(method="hanorec", **common)
    )
    rates = {}
    model = load_base(path)
    for formulation in ("listwise", "pointwise"):
        exs = eval_examples(data, "test", 0, history_len=4)[: args.eval_users]
        t0 = time.perf_counter()
        evaluate_examples(model, tok, exs, formulation)
        rates[formulation] = round(len(exs) * len(exs[0].candidates) / (time.perf_counter() - t0), 2)
    return {
        "benchmark": "llm",
        "model": model_id,
        "dataset": ds,
        "candidates_per_question": args.negatives + 1,
        "pointwise_sft_tokens_per_s": {
            "plain": speed[False]["tokens_per_s"],
            "shared_prefix": speed[True]["tokens_per_s"],
        },
        "shared_prefix_speedup": round(speed[True]["tokens_per_s"] / speed[False]["tokens_per_s"], 2),
        "peak_rss_mb_after_plain": round(speed[False]["rss"], 1),
        "listwise_sft_tokens_per_s_trl": round(trl_sft["train_tokens"] / trl_sft["seconds"], 1),
        "eval_candidates_per_s": rates,
        "dpo_step_s": dpo["step_seconds_median"],
        "hanorec_step_s": han["step_seconds_median"],
        "hanorec_to_dpo_step_ratio": round(han["step_seconds_median"] / dpo["step_seconds_median"], 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "targets": {"shared_prefix_speedup": 3.0, "hanorec_to_dpo_step_ratio": 1.2},
    }


if __name__ == "__main__":
    main()
