"""Embeddings benchmark: text and image throughput, ANN recall@10 vs exact search, search latency,
and how often same-brand items are each other's neighbours on Amazon Beauty; one JSON line.

    python benchmarks/embeddings.py --home /tmp/bh
Targets (2 cores): at least 200 titles/s, 10 posters/s, search p99 under 20 ms on the Beauty item table.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.smoke import small  # noqa: E402  (RECALIGN_SMOKE: the docs test's small form)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("RECALIGN_HOME"))
    ap.add_argument("--dataset", default="amazon-beauty", help="a dataset of recalign.datasets.KNOWN (item texts)")
    ap.add_argument("--path", default=None, help="its folder (default: ../shared/data/<folder>)")
    ap.add_argument("--posters-dir", default=None, help="a folder of .jpg posters (default: MovieLens-1M's)")
    ap.add_argument("--queries", type=int, default=small(300, 20))
    ap.add_argument("--texts", type=int, default=small(1024, 64))
    ap.add_argument("--posters", type=int, default=small(64, 8))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    from assets.embeddings.pipeline import embed_text_table, image_encoder, text_encoder
    from assets.embeddings.texts import item_metadata_text
    from assets.ingest.pipeline import DatasetSpec, ingest, peak_rss_mb
    from recalign.datasets import locate
    from recalign.settings import Settings
    from recalign.warehouse import Warehouse

    try:
        source, path = locate(args.dataset, args.path)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    posters_dir = Path(args.posters_dir) if args.posters_dir else None
    if posters_dir is None:
        try:
            posters_dir = Path(locate("movielens-1m")[1]) / "posters"
        except FileNotFoundError as err:
            sys.exit(f"error: {err} (or pass --posters-dir)")
    settings = Settings.from_env(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    ingest(settings, DatasetSpec(source, path, name=args.dataset), only_if_missing=True)
    wh = Warehouse(settings.warehouse_path(args.dataset))
    texts = item_metadata_text(wh)["content"].tolist()[: args.texts]
    enc = text_encoder()
    enc.encode(texts[:32])
    t0 = time.perf_counter()
    enc.encode(texts)
    text_rate = len(texts) / (time.perf_counter() - t0)
    posters = sorted(posters_dir.glob("*.jpg"))[: args.posters]
    ienc = image_encoder()
    ienc.encode(posters[:4])
    t0 = time.perf_counter()
    for i in range(0, len(posters), 16):
        ienc.encode(posters[i : i + 16])
    image_rate = len(posters) / (time.perf_counter() - t0)
    stats = embed_text_table(settings, args.dataset, "item_text")
    store = settings.vectors(args.dataset)
    rng = np.random.default_rng(0)
    ids = rng.choice(stats["rows"], size=args.queries, replace=False) + 1
    vecs = store.vectors("item_text", ids.tolist()).set_index("id")["vector"]
    recalls, lat = [], []
    for i in ids:
        q = np.asarray(vecs.loc[i], dtype=np.float32)
        t0 = time.perf_counter()
        ann = store.nearest("item_text", q, k=10, with_content=False)
        lat.append(1000 * (time.perf_counter() - t0))
        exact = store.nearest("item_text", q, k=10, exact=True)
        recalls.append(len(set(ann["id"]) & set(exact["id"])) / 10)
    items = wh.read("SELECT item_id, split_part(categories, ' | ', 1) AS brand FROM items")
    brand = dict(zip(items["item_id"], items["brand"]))
    same, total = 0, 0
    for i in ids:
        nn = store.nearest("item_text", int(i), k=10, exclude_self=True)["id"].tolist()
        same += sum(brand.get(j) == brand.get(int(i)) for j in nn)
        total += len(nn)
    counts = items["brand"].value_counts()
    chance = float(((counts / counts.sum()) ** 2).sum())
    lat.sort()
    print(
        json.dumps(
            {
                "benchmark": "embeddings",
                "text_items_per_s": round(text_rate, 1),
                "image_items_per_s": round(image_rate, 2),
                "text_model": enc.model_id,
                "image_model": ienc.model_id,
                "table_rows": stats["rows"],
                "indexed": stats["indexed"],
                "ann_recall@10": round(float(np.mean(recalls)), 4),
                "search_p50_ms": round(lat[len(lat) // 2], 2),
                "search_p99_ms": round(lat[int(0.99 * len(lat))], 2),
                "same_brand_neighbour_rate": round(same / total, 4),
                "same_brand_chance_rate": round(chance, 4),
                "same_brand_ratio": round(same / total / chance, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
