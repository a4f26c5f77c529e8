"""The embedded default: a deterministic, seeded multimodal catalogue with learnable sequences.

Items belong to categories arranged on a ring; each item has a few likely successors in its own
category (so the next item is predictable from the last ones), users drift slowly to neighbouring
categories (tastes change over time), and a Zipf popularity term adds noise. A sequential model
therefore clearly beats popularity. Every item gets a generated PNG whose colour and shape follow
its category and sub-category, so the image modality carries real signal.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from training.smoke import SMOKE_SYNTHETIC, smoke

from .base import SourceReader, glob_files, register
from .csvlogs import FILES, read_csvlogs

CATEGORIES = [
    ("Trail Running", (196, 78, 52)),
    ("Green Tea", (70, 140, 60)),
    ("Sci-Fi Novels", (60, 70, 170)),
    ("Espresso Gear", (110, 70, 40)),
    ("Yoga", (170, 90, 170)),
    ("Board Games", (220, 170, 40)),
    ("Skin Care", (230, 150, 160)),
    ("Camping", (40, 120, 120)),
    ("Jazz Vinyl", (30, 30, 30)),
    ("Watercolour", (90, 170, 220)),
    ("Mountain Bikes", (150, 150, 150)),
    ("Baking", (240, 200, 140)),
]
SUBCATEGORIES = ["Starter", "Classic", "Pro", "Limited"]
SHAPES = ["circle", "square", "triangle", "diamond"]
ADJECTIVES = [
    "Bright",
    "Quiet",
    "Swift",
    "Golden",
    "Urban",
    "Wild",
    "Gentle",
    "Bold",
    "Crisp",
    "Lunar",
    "Cosy",
    "Brisk",
    "Velvet",
    "Silver",
    "Rustic",
    "Nordic",
]
NOUNS = {
    "Trail Running": ["Shoe", "Vest", "Sock", "Cap"],
    "Green Tea": ["Sencha", "Matcha", "Kettle", "Cup"],
    "Sci-Fi Novels": ["Saga", "Chronicle", "Odyssey", "Anthology"],
    "Espresso Gear": ["Grinder", "Tamper", "Pitcher", "Scale"],
    "Yoga": ["Mat", "Block", "Strap", "Bolster"],
    "Board Games": ["Quest", "Empire", "Duel", "Puzzle"],
    "Skin Care": ["Serum", "Cream", "Cleanser", "Mask"],
    "Camping": ["Tent", "Stove", "Lantern", "Sleeping Bag"],
    "Jazz Vinyl": ["Session", "Standards", "Live Set", "Ballads"],
    "Watercolour": ["Brush", "Paper Pad", "Palette", "Paint Set"],
    "Mountain Bikes": ["Helmet", "Saddle", "Tyre", "Frame"],
    "Baking": ["Whisk", "Tin", "Mixer", "Flour"],
}


SCALE_1X = (22_000, 12_000, 9.0)  # users, items, mean length: about Amazon Beauty (200k interactions)


@dataclass(frozen=True)
class SyntheticConfig:
    """The small default (480 items, 800 users, images); `scale` > 0 asks for the streamed generator instead:
    scale x SCALE_1X users and items, written in chunks of `chunk_users`, images only if `images`."""

    n_items: int = 480
    n_users: int = 800
    mean_length: float = 18.0
    seed: int = 7
    image_size: int = 64
    scale: float = 0.0
    images: bool = True
    bad_rows: int = 0  # planted invalid interactions (scaled form): each kind of error in turn
    chunk_users: int = 100_000
    user_scale: float = 0.0  # users at this scale instead (0: `scale`), the catalogue unchanged

    def scaled(self) -> SyntheticConfig:
        """The sizes a `scale` asks for (users, items and mean length of SCALE_1X times the scale)."""
        if self.scale <= 0:
            return self
        users, items, length = SCALE_1X
        return replace(
            self,
            n_users=max(1, round(users * (self.user_scale or self.scale))),
            n_items=max(len(CATEGORIES), round(items * self.scale)),
            mean_length=length,
        )

    @property
    def key(self) -> str:
        return "-".join(
            str(v)
            for v in (self.n_items, self.n_users, self.mean_length, self.seed, self.image_size, self.scale)
            + ((self.images, self.bad_rows) if self.scale > 0 else ())
            + ((self.user_scale,) if self.user_scale else ())
        )


def _items(cfg: SyntheticConfig, rng: np.random.Generator) -> list[dict]:
    rows = []
    for idx in range(cfg.n_items):
        cat_i = idx % len(CATEGORIES)
        cat, _ = CATEGORIES[cat_i]
        rank = idx // len(CATEGORIES)
        sub = SUBCATEGORIES[rank % len(SUBCATEGORIES)]
        noun = NOUNS[cat][rank % 4]
        title = f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} {noun} {sub} No.{rank + 1}"
        desc = f"A {sub.lower()} {noun.lower()} for {cat.lower()} fans; item {rank + 1} of its line."
        rows.append(
            {
                "item": f"i{idx + 1:05d}",
                "title": title,
                "categories": f"{cat} | {sub}",
                "description": desc,
                "image": f"images/i{idx + 1:05d}.png",
                "cat": cat_i,
            }
        )
    return rows


def _draw_image(path: Path, cat_i: int, rank: int, size: int, rng: np.random.Generator) -> None:
    from PIL import Image, ImageDraw

    color = CATEGORIES[cat_i][1]
    bg = tuple(int(c * 0.35 + 255 * 0.65) for c in color)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    shape = SHAPES[rank % len(SHAPES)]
    m = size // 6 + int(rng.integers(0, size // 10))
    box = [m, m, size - m, size - m]
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=color)
    else:
        draw.polygon([(size // 2, m), (size - m, size // 2), (size // 2, size - m), (m, size // 2)], fill=color)
    for k in range(rank % 5):  # small marks: a visual fingerprint of the item within its line
        draw.rectangle([2 + 6 * k, size - 6, 5 + 6 * k, size - 3], fill=(255, 255, 255))
    img.save(path, format="PNG", optimize=False)


def _sequences(cfg: SyntheticConfig, items: list[dict], rng: np.random.Generator) -> list[tuple[int, int, int]]:
    n_cat = len(CATEGORIES)
    by_cat = [[i for i, it in enumerate(items) if it["cat"] == c] for c in range(n_cat)]
    popularity = 1.0 / np.arange(1, cfg.n_items + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    out, t0 = [], 1_704_067_200  # 2024-01-01
    for u in range(cfg.n_users):
        length = int(np.clip(rng.poisson(cfg.mean_length), 5, 60))
        cat = int(rng.integers(n_cat))
        item = int(rng.choice(by_cat[cat]))
        ts = t0 + int(rng.integers(0, 86400 * 60))
        seen = set()
        for _ in range(length):
            seen.add(item)
            out.append((u, item, ts))
            ts += int(rng.integers(600, 86400 * 3))
            r = rng.random()
            if r < 0.12:  # taste drift to a neighbouring category on the ring
                cat = (cat + int(rng.choice([-1, 1]))) % n_cat
                nxt = int(rng.choice(by_cat[cat]))
            elif r < 0.22:  # popularity noise
                nxt = int(rng.choice(cfg.n_items, p=popularity))
            else:  # successor structure inside the category: one of the next three items of the line
                line = by_cat[items[item]["cat"]]
                pos = line.index(item)
                nxt = line[(pos + int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))) % len(line)]
            tries = 0
            while nxt in seen and tries < 5:  # mostly new items, as in implicit-feedback logs
                line = by_cat[items[nxt]["cat"]]
                nxt = line[(line.index(nxt) + 1) % len(line)]
                tries += 1
            item = nxt
            cat = items[item]["cat"]
    return out


def generate(dest: Path, cfg: SyntheticConfig = SyntheticConfig()) -> Path:
    """Write items.csv, users.csv, interactions.csv and images/*.png into dest (idempotent)."""
    if cfg.scale > 0:
        from .synthetic_scaled import generate_scaled

        return generate_scaled(dest, cfg.scaled())
    marker = dest / f".generated-{cfg.n_items}-{cfg.n_users}-{cfg.mean_length}-{cfg.seed}-{cfg.image_size}"
    if marker.exists():
        return dest
    rng = np.random.default_rng(cfg.seed)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    items = _items(cfg, rng)
    for idx, it in enumerate(items):
        _draw_image(dest / it["image"], it["cat"], idx // len(CATEGORIES), cfg.image_size, rng)
    with open(dest / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "title", "categories", "description", "image"])
        w.writerows([it["item"], it["title"], it["categories"], it["description"], it["image"]] for it in items)
    with open(dest / "users.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "gender", "age", "occupation"])
        for u in range(cfg.n_users):
            w.writerow([f"u{u + 1:05d}", "FM"[u % 2], 18 + int(rng.integers(0, 50)), "synthetic"])
    with open(dest / "interactions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "timestamp", "rating"])
        for u, i, ts in _sequences(cfg, items, rng):
            w.writerow([f"u{u + 1:05d}", items[i]["item"], ts, 5])
    marker.touch()
    return dest


def synthetic_files(root: Path | None, options: dict) -> list[tuple[Path, str]]:
    if smoke():  # the small form: fewer items and users unless the run asks for a size
        options = {"n_items": SMOKE_SYNTHETIC[0], "n_users": SMOKE_SYNTHETIC[1], **options}
    cfg = SyntheticConfig(**{k: v for k, v in options.items() if k in SyntheticConfig.__dataclass_fields__})
    from recalign.settings import Settings

    name = f"synthetic-{cfg.seed}-{cfg.n_items}-{cfg.n_users}" if cfg.scale <= 0 else f"synthetic-{cfg.key}"
    staging = Settings.from_env().cache_dir / name
    return glob_files(generate(staging, cfg), FILES)


register(
    SourceReader(
        name="synthetic",
        read=read_csvlogs,
        files=synthetic_files,
        default_kcore=0,
        description="seeded synthetic multimodal catalogue (the embedded default)",
    )
)
