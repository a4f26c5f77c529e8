"""Regenerates this folder's interactions.csv: 60 made-up customers walking product journeys (seeded)."""

import csv
import random
from pathlib import Path

HERE = Path(__file__).parent


def main(seed: int = 7) -> None:
    rng = random.Random(seed)
    with open(HERE / "items.csv", newline="") as f:
        items = [r["item"] for r in csv.DictReader(f)]
    journeys = [items[i : i + 5] for i in range(0, len(items), 5)]  # a category's items in the order people buy them
    rows = []
    for c in range(1, 61):
        user, journey = f"customer-{c:03d}", rng.choice(journeys)
        pos, t = rng.randrange(len(journey)), 1_700_000_000 + rng.randint(0, 30 * 86_400)
        for _ in range(rng.randint(5, 12)):
            r = rng.random()
            if r < 0.15:  # drift to another category's journey
                journey, pos = rng.choice(journeys), 0
            else:  # the next step of the journey, now and then skipping one
                pos = (pos + (1 if r < 0.85 else 2)) % len(journey)
            t += rng.randint(3_600, 5 * 86_400)
            rows.append((user, journey[pos], t, rng.randint(3, 5)))
    rows.sort(key=lambda r: r[2])
    with open(HERE / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp", "rating"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
