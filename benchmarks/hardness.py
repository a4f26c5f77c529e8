"""HaNoRec's hardness on a real dataset: the overlap of the Top-K neighbourhoods of each training question's chosen
item and a rejected candidate, for every neighbourhood source (text vectors, co-occurrence, the published sequential
model's item embeddings) and K. What HaRS can work with is the spread: a mean near 0 with no pair above 0 leaves
every beta equal. One JSON line.

    python benchmarks/hardness.py --home /tmp/mlhome --dataset microlens-50k
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"), required=False)
    ap.add_argument("--dataset", default="microlens-50k")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--ks", default="10,50,200")
    args = ap.parse_args()
    import numpy as np

    from assets.llmrec.data import LLMData, train_examples
    from assets.llmrec.pipeline import HARDNESS_SOURCES, hardness_summary, item_vectors, top_neighbours
    from recalign.settings import Settings
    from training.llm.hanorec import neighbourhood_hardness

    settings = Settings.from_env(args.home)
    ds = args.dataset
    data = LLMData.load(settings.warehouse(ds), args.users, 0)
    exs = train_examples(data, args.negatives, 2, 0)
    rng = np.random.default_rng(0)
    pairs = []
    for e in exs:  # the random sampler's rejected candidate
        r = int(rng.choice([i for i in range(len(e.candidates)) if i != e.target]))
        pairs.append((e.candidate_ids[e.target], e.candidate_ids[r]))
    ids = sorted({i for p in pairs for i in p})
    out = {"benchmark": "hardness", "dataset": ds, "pairs": len(pairs), "sampler": "random", "sources": {}}
    for source in HARDNESS_SOURCES:
        try:
            vecs = item_vectors(settings, ds, source)
        except RuntimeError as err:
            out["sources"][source] = {"skipped": str(err)}
            continue
        for k in map(int, args.ks.split(",")):
            t0 = time.perf_counter()
            top = top_neighbours(vecs, ids, k)
            h = neighbourhood_hardness([top[c] for c, _ in pairs], [top[r] for _, r in pairs], k).tolist()
            out["sources"][f"{source}@{k}"] = {**hardness_summary(h), "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
