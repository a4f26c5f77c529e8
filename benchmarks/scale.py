"""Scale benchmark: the synthetic source at 1x, 10x, 100x (1x ~ Amazon Beauty: 22k users, 12k items, 200k
interactions), each cost measured in its own child process, and each cost's growth exponent against the number
of interactions (slope of log cost on log interactions); one JSON line.

    python benchmarks/scale.py --home /tmp/scale                  # 1x, 10x, 100x
    python benchmarks/scale.py --home /tmp/scale --scales 1 10    # without 100x
Per scale: generation; ingestion (land + validate + tables + sequences) seconds and peak RSS; sequences rebuilt
from the stored interactions; the Markov prior's transition counts over every training sequence (build seconds,
bytes, one user's sparse prior); a SASRec (ID, sampled softmax) trained one epoch on the first --train-users users,
published (which builds its ANN item index); full-ranking evaluation seconds per 1,000 users; ANN recall@10 of the
served lists against exact full scoring (history filtered); the API in ANN mode: start-up seconds, RSS after
start-up and after the load, /v1/recommend p50 / p99 at 16 clients (wrk, users drawn from all users).
Under RECALIGN_SMOKE the first two scales run at a thousandth (at least 0.005x), without the users-only part
(a check of the command, not a result).
Targets: every exponent <= 1.1; 100x ingestion within 24 GB; on 10x recall@10 >= 0.95, p99 < 50 ms, and serving
RSS that does not grow with the number of users.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"max_exponent": 1.1, "ingest_peak_rss_gb_100x": 24, "recall_at_10": 0.95, "recommend_p99_ms": 50}
STAGES = ("generate", "ingest", "counts", "model", "evaluate", "serve")


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


USER_SCALE = 0.0  # a child's --user-scale: users at this multiple of 1x, the catalogue of its scale


def spec(scale: float):
    from assets.ingest.pipeline import DatasetSpec

    bad = max(10, round(50 * scale))  # planted invalid rows: raw = accepted + rejected must still hold
    options = {"scale": scale, "images": False, "bad_rows": bad}
    if USER_SCALE:
        options["user_scale"] = USER_SCALE
    name = f"synthetic-{scale:g}x" + (f"-users{USER_SCALE:g}x" if USER_SCALE else "")
    return DatasetSpec("synthetic", name=name, options=options)


def stage_generate(settings, scale: float, args) -> dict:
    from assets.ingest.raw import land

    s = spec(scale)
    t0 = time.perf_counter()
    land(s.source, s.path, settings.raw_dir(s.dataset), dict(s.options))
    return {"seconds": round(time.perf_counter() - t0, 2), "planted_bad_rows": s.options["bad_rows"]}


def stage_ingest(settings, scale: float, args) -> dict:
    from assets.ingest.pipeline import build_sequences, build_warehouse

    s = spec(scale)
    t0 = time.perf_counter()
    md = build_warehouse(settings, s)
    t1 = time.perf_counter()
    stats = build_sequences(settings, s)
    recon = md["reconciliation"].set_index("table_name").loc["interactions"]
    return {
        "seconds": round(t1 - t0, 2),
        "sequences_seconds": round(time.perf_counter() - t1, 2),
        "peak_rss_mb": peak_mb(),
        "users": md["users"],
        "items": md["items"],
        "interactions": md["interactions"],
        "raw_interactions": int(recon["raw_rows"]),
        "rejected": md["rejected"],
        "reconciled": md["reconciled"],
        "evaluable_users": stats["evaluable_users"],
    }


def stage_counts(settings, scale: float, args) -> dict:
    """The Markov prior's transition counts over the whole training split (what a model trained on every user
    carries): build seconds, stored entries and bytes, one user's sparse prior (serving's ANN mode)."""
    import torch

    from recalign.warehouse import load_sequences
    from training.seqrec.trainer import SeqRecTrainConfig
    from training.seqrec.transitions import TransitionCounts

    cfg = SeqRecTrainConfig(show_progress=False)
    seq = load_sequences(settings.warehouse(spec(scale).dataset))
    t0 = time.perf_counter()
    counts = TransitionCounts.from_sequences(seq.train, seq.n_items, cfg.markov_window)
    seconds = time.perf_counter() - t0
    histories = [s[-50:] for s in seq.train[:1000] if len(s)]
    t0 = time.perf_counter()
    for h in histories:
        counts.sparse_prior(torch.from_numpy(h).view(1, -1), cfg.markov_order, cfg.markov_decay)
    per_user_ms = 1000 * (time.perf_counter() - t0) / max(len(histories), 1)
    return {
        "seconds": round(seconds, 2),
        "interactions": int(sum(map(len, seq.train)) + (seq.valid > 0).sum() + (seq.test > 0).sum()),
        "entries": len(counts.values),
        "bytes": sum(b.numel() * b.element_size() for b in counts.buffers()),
        "sparse_prior_ms_per_user": round(per_user_ms, 3),
        "peak_rss_mb": peak_mb(),
    }


def _subset(settings, dataset: str, users: int, max_len: int = 50):
    from assets.seqrec.pipeline import SeqRecData
    from recalign.popularity import item_counts
    from recalign.warehouse import load_sequences
    from training.seqrec.data import EvalSet, training_windows

    seq = load_sequences(settings.warehouse(dataset))
    part, held = seq.first_users(users), seq.first_users(500)  # validated on 500: full ranking of 1.2M items
    x, y = training_windows(part.train, max_len)
    return seq, SeqRecData(
        part,
        x,
        y,
        EvalSet.build(held.history("valid"), held.valid, held.user_ids, max_len),
        EvalSet.build(held.history("test"), held.test, held.user_ids, max_len),
        None,
        None,
        item_counts=item_counts(settings.warehouse(dataset)),
    )


def stage_model(settings, scale: float, args) -> dict:
    import torch

    from assets.seqrec.pipeline import train_stage
    from recalign.item_index import ensure_item_index
    from training.seqrec.trainer import SeqRecTrainConfig

    dataset = spec(scale).dataset
    seq, data = _subset(settings, dataset, args.train_users)
    cfg = SeqRecTrainConfig(
        epochs=args.epochs, loss="sampled_softmax", n_negatives=256, swa_last=None, show_progress=False
    )
    t0 = time.perf_counter()
    out = train_stage(
        settings,
        dataset,
        {"modalities": ["id"], "attributes": False},
        cfg,
        "seqrec_sft_scale",
        data=data,
        log=lambda *_: 0,
    )
    train_s = time.perf_counter() - t0
    registry = settings.registry(dataset)
    mv = registry.get(out["name"], out["version"])
    from training.seqrec.checkpoint import load_model

    model, _ = load_model(mv.path)
    t0 = time.perf_counter()
    index = ensure_item_index(model, mv.path)
    index_s = time.perf_counter() - t0
    registry.publish(mv, {"benchmark": "scale"})
    # recall@10 of the served computation (ANN candidates, exact re-score, history out) against exact full scoring
    rng = np.random.default_rng(0)
    users = rng.choice(len(seq.user_ids), size=min(200, len(seq.user_ids)), replace=False)
    hits, before_test = [], seq.history("test")  # (one list for all users: built once)
    with torch.no_grad():
        tables = model.item_tables()
        fused = model.fused_table(tables).detach()
        for u in users:
            hist = np.append(before_test[u], seq.test[u]) if seq.test[u] else before_test[u]
            hidden = model.encode(torch.from_numpy(hist[-50:]).view(1, -1), tables)
            q = model.query({m: h[:, -1] for m, h in hidden.items()})[0]
            exact = (fused @ q).numpy()
            exact[0], exact[hist] = -np.inf, -np.inf
            best = set(np.argpartition(-exact, 10)[:10].tolist())
            cands = index.candidates(q.numpy(), max(200, 10 + len(hist)), depth=10 + len(hist))[0]
            cands = cands[~np.isin(cands, hist)]
            got = cands[np.argsort(-(fused[torch.tensor(cands)] @ q).numpy())[:10]]
            hits.append(len(best & set(got.tolist())) / 10)
    return {
        "train_seconds": round(train_s, 1),
        "train_users": len(data.seq.user_ids),
        "index_seconds": round(index_s, 1),
        "index": index.meta,
        "ann_recall_at_10": round(float(np.mean(hits)), 4),
        "model": f"{mv.name}/{mv.version}",
        "peak_rss_mb": peak_mb(),
    }


def stage_evaluate(settings, scale: float, args) -> dict:
    from recalign.warehouse import load_sequences
    from training.seqrec.checkpoint import load_model
    from training.seqrec.data import EvalSet
    from training.seqrec.evaluate import full_ranking_ranks

    dataset = spec(scale).dataset
    model, _ = load_model(settings.registry(dataset).published()["path"])
    seq = load_sequences(settings.warehouse(dataset)).first_users(args.eval_users)
    es = EvalSet.build(seq.history("test"), seq.test, seq.user_ids, model.cfg.max_len)
    t0 = time.perf_counter()
    full_ranking_ranks(model, es)
    seconds = time.perf_counter() - t0
    return {"seconds_per_1000_users": round(1000 * seconds / len(es.targets), 3), "users": len(es.targets)}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def stage_serve(settings, scale: float, args) -> dict:
    import importlib.util

    import duckdb
    import httpx

    from tests.service_utils import serving
    from training.smoke import small

    loader = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)

    dataset = spec(scale).dataset
    t0 = time.perf_counter()
    svc = serving(settings.home, dataset, settings.cache_dir / f"serve-{dataset}.log", RECALIGN_SERVING_MODE="ann")
    startup = time.perf_counter() - t0
    try:
        pid = svc.proc.pid
        rss_start = _rss_mb(pid)
        with duckdb.connect(str(settings.warehouse_path(dataset)), read_only=True) as con:
            users = [
                int(u)
                for (u,) in con.execute(f"SELECT user_id FROM users USING SAMPLE {args.load_users} ROWS").fetchall()
            ]
        mode = httpx.get(svc.url + "/readyz").json()["mode"]
        load = bench.drive(svc.url, "recommend", users, args.seconds, small(2000, 200), 16)  # wrk where installed
        return {
            "mode": mode,
            "startup_seconds": round(startup, 2),
            "rss_after_startup_mb": rss_start,
            "rss_after_load_mb": _rss_mb(pid),
            "recommend": load,
            "load_users": len(users),
        }
    finally:
        svc.stop()


def run_stage(args, stage: str, scale: float, user_scale: float = 0.0) -> dict:
    """One stage in a child process (its own peak RSS); its JSON line back. Under RECALIGN_SMOKE in this process
    (a check of the command: its peak RSS is not the stage's)."""
    from training.smoke import smoke

    if smoke():
        global USER_SCALE
        from recalign.settings import Settings

        USER_SCALE = user_scale
        return json.loads(
            json.dumps(globals()[f"stage_{stage}"](Settings.from_env(args.home), scale, args), default=str)
        )
    cmd = [sys.executable, __file__, "--home", args.home, "--stage", stage, "--scales", str(scale)]
    cmd += ["--user-scale", str(user_scale)]
    cmd += ["--train-users", str(args.train_users), "--epochs", str(args.epochs), "--eval-users", str(args.eval_users)]
    cmd += ["--seconds", str(args.seconds), "--load-users", str(args.load_users)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RECALIGN_HOME": args.home})
    if proc.returncode != 0:
        return {"failed": True, "rc": proc.returncode, "stderr": proc.stderr[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def exponent(sizes: list[float], costs: list[float]) -> float | None:
    ok = [(s, c) for s, c in zip(sizes, costs) if c and c > 0]
    if len(ok) < 2:
        return None
    x, y = np.log([s for s, _ in ok]), np.log([c for _, c in ok])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


COSTS = {
    "ingest_seconds": ("ingest", "seconds"),
    "ingest_peak_rss_mb": ("ingest", "peak_rss_mb"),
    "sequences_seconds": ("ingest", "sequences_seconds"),
    "transition_counts_seconds": ("counts", "seconds"),
    "transition_counts_bytes": ("counts", "bytes"),
    "eval_seconds_per_1000_users": ("evaluate", "seconds_per_1000_users"),
    "serving_startup_seconds": ("serve", "startup_seconds"),
    "serving_rss_mb": ("serve", "rss_after_startup_mb"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME") or "/tmp/recalign-scale")
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--train-users", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval-users", type=int, default=2_000)
    ap.add_argument("--seconds", type=int, default=10, help="wrk load per scale")
    ap.add_argument("--load-users", type=int, default=20_000, help="users drawn for the load (cache misses)")
    ap.add_argument(
        "--users-only",
        type=float,
        default=10,
        help="also serve the 1x catalogue with this many times its users (RSS against users alone; 0: skip)",
    )
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--user-scale", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global USER_SCALE
    USER_SCALE = args.user_scale
    from recalign.settings import Settings
    from training.smoke import smoke

    if smoke() and not args.stage:  # the docs test's small form: the first two scales at a thousandth, short loads
        args.scales = [max(s / 1000, 0.005) for s in args.scales[:2]]
        args.train_users, args.eval_users, args.seconds, args.load_users = 200, 100, 2, 100
        args.users_only = 0
    if args.stage:  # a child: one stage of one scale
        settings = Settings.from_env(args.home)
        print(json.dumps(globals()[f"stage_{args.stage}"](settings, args.scales[0], args), default=str))
        return
    per_scale = {}
    for scale in args.scales:
        per_scale[scale] = {stage: run_stage(args, stage, scale) for stage in args.stages}
        print(json.dumps({"scale": scale, **per_scale[scale]}, default=str), file=sys.stderr)
    users_only = None
    if args.users_only and "serve" in args.stages:  # same catalogue (the smallest scale), more users
        base = min(args.scales)
        users_only = {st: run_stage(args, st, base, args.users_only * base) for st in ("ingest", "model", "serve")}
        print(json.dumps({"users_only": users_only}, default=str), file=sys.stderr)
    sizes = [
        per_scale[s].get("ingest", {}).get("interactions") or per_scale[s].get("counts", {}).get("interactions", 0)
        for s in args.scales
    ]
    costs = {name: [per_scale[s].get(st, {}).get(f) for s in args.scales] for name, (st, f) in COSTS.items()}
    exponents = {name: exponent(sizes, c) for name, c in costs.items()}
    out = {
        "benchmark": "scale",
        "scales": args.scales,
        "interactions": sizes,
        "costs": costs,
        "exponents": exponents,
        "per_scale": per_scale,
        "users_only": users_only,
        "targets": TARGETS,
        "max_exponent": max((e for e in exponents.values() if e is not None), default=None),
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
