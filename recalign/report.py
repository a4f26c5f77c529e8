"""The evaluation report: every model on the same split, the papers' numbers beside ours, ablations,
plots and uncertainty, as self-contained HTML + Markdown under reports/<dataset>/<run>/."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.metrics import per_user_metrics

from .metrics_store import MetricsStore
from .stats import bootstrap_ci, paired_test

ANCHORS = Path(__file__).with_name("anchors.csv")
SEQ_COLS = [f"{m}@{k}" for k in (5, 10, 20) for m in ("ndcg", "mrr", "hr")]
LLM_COLS = ["auc"] + [f"{m}@{k}" for k in (1, 5, 10) for m in ("hr", "ndcg")]


@dataclass
class Report:
    dataset: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def latest_runs(store: MetricsStore, dataset: str) -> pd.DataFrame:
    """The newest finished run of each (family, variant) on the dataset."""
    return store.read(
        """
        SELECT * FROM runs WHERE dataset = ? AND finished_at IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY family, variant, config->>'$.train.sampler',
                                   config->>'$.train.topk', config->>'$.train.beta',
                                   config->>'$.model.moe', config->>'$.model.modalities'
                                   ORDER BY finished_at DESC) = 1
        ORDER BY started_at""",
        [dataset],
    )


def label(run: pd.Series) -> str:
    cfg = json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]
    model, train = cfg.get("model", {}), cfg.get("train", {})
    parts = [run["variant"]]
    if train.get("stage") == "dpo":
        parts.append(train.get("sampler", ""))
    if model.get("moe"):
        parts.append("moe")
    mods = model.get("modalities")
    if mods:
        parts.append("+".join(mods))
    return " / ".join(p for p in parts if p)


def metric_table(store: MetricsStore, runs: pd.DataFrame, split: str, protocol: str, cols: list[str]) -> pd.DataFrame:
    if runs.empty:
        return pd.DataFrame()
    ids = runs["run_id"].tolist()
    m = store.read(
        f"""SELECT run_id, metric || coalesce('@' || k::VARCHAR, '') AS name, value FROM metrics
                       WHERE split = ? AND protocol = ? AND run_id IN ({",".join("?" * len(ids))})""",
        [split, protocol, *ids],
    )
    if m.empty:
        return pd.DataFrame()
    wide = m.pivot_table(index="run_id", columns="name", values="value").reindex(
        columns=[c for c in cols if c in set(m["name"])]
    )
    wide.insert(0, "model", [label(runs.set_index("run_id").loc[r]) for r in wide.index])
    return wide.reset_index()


def anchors_table(ours: pd.DataFrame, dataset: str) -> pd.DataFrame:
    anchors = pd.read_csv(ANCHORS, comment="#")
    anchors = anchors[anchors["dataset"] == dataset]
    if anchors.empty or ours.empty:
        return pd.DataFrame()
    best = ours.loc[ours["ndcg@10"].idxmax()] if "ndcg@10" in ours else None
    rows = []
    for _, a in anchors.iterrows():
        col = f"{a['metric']}@{a['k']}"
        value = float(best[col]) if best is not None and col in best else np.nan
        rows.append(
            {
                "paper": a["paper"],
                "their model": a["model"],
                "metric": col,
                "published": a["value"],
                "ours (best)": value,
                "ours model": best["model"] if best is not None else "",
                "diff %": 100 * (value - a["value"]) / a["value"],
            }
        )
    return pd.DataFrame(rows)


def _pyplot():
    """matplotlib's pyplot on a file backend, imported on the first plot (not by every process that loads assets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subplots(*args, **kwargs):
    return _pyplot().subplots(*args, **kwargs)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def plot_curves(store: MetricsStore, runs: pd.DataFrame) -> bytes | None:
    if runs.empty:
        return None
    ids = runs["run_id"].tolist()
    cur = store.read(f"SELECT * FROM training_curves WHERE run_id IN ({','.join('?' * len(ids))})", ids)
    if cur.empty:
        return None
    fig, axes = _subplots(1, 2, figsize=(11, 3.6))
    for rid, g in cur.groupby("run_id"):
        name = label(runs.set_index("run_id").loc[rid])
        for ax, metric in zip(axes, ("loss", "valid_ndcg@10")):
            s = g[g["metric"] == metric].sort_values("epoch")
            if len(s):
                ax.plot(s["epoch"], s["value"], marker="o", ms=3, label=name)
    axes[0].set_title("training loss per epoch")
    axes[1].set_title("validation NDCG@10 per epoch")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _png(fig)


def plot_scores(store: MetricsStore, runs: pd.DataFrame) -> bytes | None:
    """Positive vs sampled-negative logit distributions before (SFT) and after DPO (RoDPO Fig. 4)."""
    ids = runs["run_id"].tolist()
    if not ids:
        return None
    sc = store.read(f"SELECT * FROM score_samples WHERE run_id IN ({','.join('?' * len(ids))})", ids)
    if sc.empty:
        return None
    runs_i = runs.set_index("run_id")
    panels = [r for r in sc["run_id"].unique()][:4]
    fig, axes = _subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, rid in zip(axes[0], panels):
        g = sc[sc["run_id"] == rid]
        for kind, color in (("positive", "tab:green"), ("negative", "tab:red")):
            ax.hist(g[g["kind"] == kind]["value"], bins=50, alpha=0.55, density=True, color=color, label=kind)
        ax.set_title(label(runs_i.loc[rid]), fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("logits of positives vs top-K sampled negatives (test contexts)", fontsize=9)
    return _png(fig)


HISTORY_BINS = ([0, 3, 5, 10, 20, 50, 10**9], ["1-3", "4-5", "6-10", "11-20", "21-50", ">50"])
POPULARITY_BINS = ([-1, 4, 9, 19, 49, 10**9], ["0-4", "5-9", "10-19", "20-49", ">=50"])


def rank_buckets(
    store: MetricsStore, runs: pd.DataFrame, column: str, bins: tuple[list, list], split: str = "test"
) -> pd.DataFrame:
    """Per-user NDCG@10 averaged within buckets of one user_ranks column (history_length, target_count)."""
    ids = runs["run_id"].tolist()
    if not ids:
        return pd.DataFrame()
    r = store.read(
        f"""SELECT run_id, rank, {column} AS value FROM user_ranks WHERE split = ? AND {column} IS NOT NULL
                       AND run_id IN ({",".join("?" * len(ids))})""",
        [split, *ids],
    )
    if r.empty:
        return pd.DataFrame()
    r["bucket"] = pd.cut(r["value"], bins=bins[0], labels=bins[1])
    r["ndcg@10"] = per_user_metrics(r["rank"].to_numpy())["ndcg@10"]
    t = r.groupby(["run_id", "bucket"], observed=True)["ndcg@10"].mean().unstack("bucket")
    t.insert(0, "model", [label(runs.set_index("run_id").loc[i]) for i in t.index])
    return t.reset_index()


def history_buckets(store: MetricsStore, runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    return rank_buckets(store, runs, "history_length", HISTORY_BINS, split)


def popularity_buckets(store: MetricsStore, runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """By the target item's training interactions: where the model fails on rare items."""
    return rank_buckets(store, runs, "target_count", POPULARITY_BINS, split)


def ndcg_by_popularity(target_count, ranks: dict[str, np.ndarray]) -> dict:
    """NDCG@10 of each ranking (name -> 1-based ranks of the same users) by the target's training count
    (POPULARITY_BINS), with each bucket's share of the users."""
    frame = pd.DataFrame({k: per_user_metrics(np.asarray(v), 10)["ndcg@10"] for k, v in ranks.items()})
    frame["bucket"] = pd.cut(np.asarray(target_count, np.int64), bins=POPULARITY_BINS[0], labels=POPULARITY_BINS[1])
    return {
        str(b): {"users": round(len(g) / len(frame), 4), **{k: round(float(g[k].mean()), 4) for k in ranks}}
        for b, g in frame.groupby("bucket", observed=True)
    }


def plot_buckets(
    table: pd.DataFrame, title: str = "test NDCG@10 by history length", xlabel: str = "history length (items)"
) -> bytes | None:
    if table.empty:
        return None
    fig, ax = _subplots(figsize=(7, 3.4))
    cols = [c for c in table.columns if c not in ("run_id", "model")]
    for _, row in table.iterrows():
        ax.plot(cols, row[cols].astype(float).values, marker="o", label=row["model"])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def uncertainty(
    store: MetricsStore, runs: pd.DataFrame, seq_table: pd.DataFrame, split: str = "test"
) -> tuple[pd.DataFrame, dict | None]:
    """Bootstrap intervals of NDCG@10 per model; paired test of the best model against its SFT reference."""
    if seq_table.empty:
        return pd.DataFrame(), None
    rows, per_user = [], {}
    for rid in seq_table["run_id"]:
        r = store.read(
            "SELECT user_id, rank FROM user_ranks WHERE run_id = ? AND split = ? ORDER BY user_id", [rid, split]
        )
        if r.empty:
            continue
        vals = per_user_metrics(r["rank"].to_numpy())["ndcg@10"]
        per_user[rid] = pd.Series(vals, index=r["user_id"].to_numpy())
        mean, lo, hi = bootstrap_ci(vals)
        rows.append(
            {
                "run_id": rid,
                "model": label(runs.set_index("run_id").loc[rid]),
                "ndcg@10": mean,
                "ci95_low": lo,
                "ci95_high": hi,
                "users": len(vals),
            }
        )
    ci = pd.DataFrame(rows)
    by_run = runs.set_index("run_id")
    aligned = seq_table[[bool(json.loads(by_run.loc[r, "config"]).get("reference")) for r in seq_table["run_id"]]]
    if aligned.empty:
        return ci, None
    best = aligned.loc[aligned["ndcg@10"].idxmax(), "run_id"]  # the best aligned (DPO) model vs its SFT reference
    ref = json.loads(by_run.loc[best, "config"]).get("reference")
    ref_run = None
    if ref:
        cand = runs[runs["model_path"].fillna("").str.endswith(ref.split("/", 1)[1])]
        ref_run = cand["run_id"].iloc[0] if len(cand) else None
    if ref_run is None or ref_run not in per_user or best not in per_user:
        return ci, None
    a, b = per_user[best].align(per_user[ref_run], join="inner")
    test = paired_test(a.to_numpy(), b.to_numpy())
    return ci, {
        "best": label(runs.set_index("run_id").loc[best]),
        "reference": label(runs.set_index("run_id").loc[ref_run]),
        "metric": "ndcg@10",
        **test,
    }


def plot_sensitivity(runs: pd.DataFrame, seq_table: pd.DataFrame) -> bytes | None:
    """Test NDCG@10 against the DPO's K and beta, when a sweep was run (more than one value)."""
    if seq_table.empty:
        return None
    by_run = runs.set_index("run_id")
    rows = []
    for rid, ndcg in zip(seq_table["run_id"], seq_table.get("ndcg@10", [])):
        train = json.loads(by_run.loc[rid, "config"]).get("train", {})
        if train.get("stage") == "dpo" and train.get("sampler") == "stochastic_topk":
            rows.append({"K": train.get("topk"), "beta": train.get("beta"), "ndcg@10": ndcg})
    df = pd.DataFrame(rows)
    swept = [p for p in ("K", "beta") if len(df) and df[p].nunique() > 1]
    if not swept:
        return None
    fig, axes = _subplots(1, len(swept), figsize=(5 * len(swept), 3.2), squeeze=False)
    for ax, p in zip(axes[0], swept):
        g = df.groupby(p)["ndcg@10"].max().sort_index()
        ax.plot(g.index, g.values, marker="o")
        ax.set_xlabel(p)
        ax.set_ylabel("test NDCG@10")
        ax.grid(alpha=0.3)
    fig.suptitle("RoDPO sensitivity (stochastic top-K runs)", fontsize=9)
    return _png(fig)


def ablations(seq_table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's ablations from the runs present: samplers, MoE on/off, modalities, SFT vs DPO."""
    if seq_table.empty:
        return {}
    t = seq_table.copy()
    out = {}
    cols = ["model", "ndcg@5", "mrr@5", "ndcg@10", "mrr@10"]
    cols = [c for c in cols if c in t]
    samp = t[t["model"].str.contains("seqrec_dpo")]
    if len(samp):
        out["negative samplers (RoDPO Table 2)"] = samp[cols]
    out["components: SFT vs DPO, MoE, modalities (RoDPO Table 3)"] = t[cols]
    return out


def build_report(store: MetricsStore, dataset: str) -> Report:
    rep = Report(dataset)
    runs = latest_runs(store, dataset)
    seq_runs = runs[runs["family"] == "seqrec"]
    llm_runs = runs[runs["family"] == "llm"]
    seq_test = metric_table(store, seq_runs, "test", "full_ranking", SEQ_COLS)
    rep.tables["sequential track, test, full ranking over all items"] = seq_test
    rep.tables["sequential track, valid, full ranking over all items"] = metric_table(
        store, seq_runs, "valid", "full_ranking", SEQ_COLS
    )
    rep.tables["LLM track, test, 1 positive + 20 sampled negatives"] = metric_table(
        store, llm_runs, "test", "sampled_21", LLM_COLS
    )
    rep.tables["published numbers beside ours"] = anchors_table(seq_test, dataset)
    for name, table in ablations(seq_test).items():
        rep.tables[f"ablation: {name}"] = table
    buckets = history_buckets(store, seq_runs)
    rep.tables["test NDCG@10 by history length"] = buckets
    popular = popularity_buckets(store, seq_runs)
    rep.tables["test NDCG@10 by the target item's training interactions"] = popular
    ci, paired = uncertainty(store, seq_runs, seq_test)
    rep.tables["bootstrap 95% intervals over users (test NDCG@10)"] = ci
    if paired:
        rep.tables["paired test: best DPO model vs its SFT reference"] = pd.DataFrame([paired])
    for name, png in (
        ("training curves", plot_curves(store, seq_runs)),
        ("score distributions before and after DPO", plot_scores(store, seq_runs)),
        ("metric by history length", plot_buckets(buckets)),
        (
            "metric by target popularity",
            plot_buckets(
                popular,
                "test NDCG@10 by the target item's training interactions",
                "training interactions of the target",
            ),
        ),
        ("K and beta sensitivity", plot_sensitivity(seq_runs, seq_test)),
    ):
        if png:
            rep.plots[name] = png
    return rep


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else (f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}")
    return html.escape(str(v))


def to_html(rep: Report) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>recalign report: {html.escape(rep.dataset)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}</style></head><body>",
        f"<h1>recalign evaluation report: {html.escape(rep.dataset)}</h1>",
        f"<p>built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Full-ranking and sampled-candidate numbers "
        "are never mixed in one table.</p>",
    ]
    for name, table in rep.tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if table is None or table.empty:
            parts.append("<p class='empty'>no runs yet</p>")
            continue
        shown = table.drop(columns=["run_id"], errors="ignore")
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns) + "</tr>")
        for row in shown.itertuples(index=False):
            parts.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>")
        parts.append("</table>")
    for name, png in rep.plots.items():
        b64 = base64.b64encode(png).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(rep: Report, image_dir: str = ".") -> str:
    out = [f"# recalign evaluation report: {rep.dataset}", ""]
    for name, table in rep.tables.items():
        out += [f"## {name}", ""]
        if table is None or table.empty:
            out += ["no runs yet", ""]
            continue
        shown = table.drop(columns=["run_id"], errors="ignore")
        out.append("| " + " | ".join(map(str, shown.columns)) + " |")
        out.append("|" + "---|" * len(shown.columns))
        out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in shown.itertuples(index=False)]
        out.append("")
    for name in rep.plots:
        out += [f"## {name}", "", f"![{name}]({image_dir}/{name.replace(' ', '_')}.png)", ""]
    return "\n".join(out)


def write_report(rep: Report, directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.html").write_text(to_html(rep))
    (directory / "report.md").write_text(to_markdown(rep))
    for name, png in rep.plots.items():
        (directory / f"{name.replace(' ', '_')}.png").write_bytes(png)
    return {
        "html": str(directory / "report.html"),
        "markdown": str(directory / "report.md"),
        "tables": len(rep.tables),
        "plots": len(rep.plots),
    }


def compare_runs(store: MetricsStore, run_a: str, run_b: str) -> pd.DataFrame:
    """Side by side metrics of two runs, with the difference, and a paired test where ranks exist."""
    m = store.read(
        """SELECT run_id, split, protocol, metric || coalesce('@' || k::VARCHAR, '') AS name, value
                      FROM metrics WHERE run_id IN (?, ?)""",
        [run_a, run_b],
    )
    if m.empty:
        raise KeyError(f"no metrics for {run_a} or {run_b}")
    wide = m.pivot_table(index=["split", "protocol", "name"], columns="run_id", values="value").reset_index()
    if run_a in wide and run_b in wide:
        wide["diff"] = wide[run_b] - wide[run_a]
        wide["diff %"] = 100 * wide["diff"] / wide[run_a].replace(0, np.nan)
    return wide
