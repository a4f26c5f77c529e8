"""MovieLens readers (GroupLens formats): 100K (u.data, u.item, u.user) and 1M (*.dat).

Optional extras: IMDb plot details (100K), poster JPEGs (1M ids, with the 100K->1M map).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..frames import (
    IMAGE_COLUMNS,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    Rejects,
    SourceData,
    digits,
    frame,
)
from .base import (
    FileSpec,
    SourceReader,
    find_one,
    glob_files,
    read_lines,
    read_text,
    register,
    split_lines,
)

LATIN1 = "latin-1"
RATINGS = (0.5, 5.0)  # MovieLens stars (half stars in the newer releases)


def _rating_rows(path: Path, sep: str, rejects: Rejects) -> tuple[list[dict], int]:
    rows, raw = [], 0
    for line_no, fields, text in split_lines(path, sep, 4, "interactions", rejects):
        raw += 1
        if fields is None:
            continue
        user, item, rating, ts = (f.strip() for f in fields)
        bad = [n for n, v in (("user_id", user), ("item_id", item), ("timestamp", ts)) if not digits(v)]
        if bad:
            rejects.add(
                "interactions",
                path.name,
                line_no,
                text,
                "; ".join(
                    f"{n} {v!r} is not a non-negative integer"
                    for n, v in zip(bad, [dict(user_id=user, item_id=item, timestamp=ts)[b] for b in bad])
                ),
            )
            continue
        try:
            value = float(rating)
        except ValueError:
            rejects.add("interactions", path.name, line_no, text, f"rating {rating!r} is not a number")
            continue
        if not RATINGS[0] <= value <= RATINGS[1]:
            rejects.add("interactions", path.name, line_no, text, f"rating {rating} is outside MovieLens' 1-5 stars")
            continue
        rows.append(
            {
                "user_key": user,
                "item_key": item,
                "ts": int(ts),
                "rating": value,
                "source_file": path.name,
                "line_no": line_no,
                "raw": text,
            }
        )
    return rows, raw


def _user_rows(path: Path, sep: str, order: tuple[str, ...], rejects: Rejects) -> tuple[list[dict], int]:
    rows, raw = [], 0
    for line_no, fields, text in split_lines(path, sep, len(order), "users", rejects):
        raw += 1
        if fields is None:
            continue
        rec = dict(zip(order, (f.strip() for f in fields)))
        rows.append(
            {
                "user_key": rec["user_key"],
                "gender": rec.get("gender"),
                "age": int(rec["age"]) if digits(rec.get("age", "")) else None,
                "occupation": rec.get("occupation"),
                "zip": rec.get("zip"),
                "source_file": path.name,
                "line_no": line_no,
                "raw": text,
            }
        )
    return rows, raw


def _genres(path: Path | None) -> list[str]:
    if path is None:
        return []
    names = {}
    for _, text, _ in read_lines(path, encoding=LATIN1):
        name, _, idx = text.partition("|")
        if digits(idx.strip()):
            names[int(idx)] = name
    return [names[i] for i in sorted(names)]


def _imdb_plots(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    records = json.loads(read_text(path))
    return {
        str(r["movie_id"]): r["description"]
        for r in records
        if isinstance(r, dict) and r.get("description") and "movie_id" in r
    }


def _image_rows(pairs: list[tuple[str, Path, int | None]], source_file: str) -> tuple[list[dict], int]:
    rows = [
        {
            "item_key": key,
            "path": str(path),
            "source_file": source_file,
            "line_no": line,
            "raw": f"{key} -> {path.name}",
        }
        for key, path, line in pairs
    ]
    return rows, len(rows)


# --- 100K ---------------------------------------------------------------------------------------

ML100K_FILES = [
    FileSpec("u.data"),
    FileSpec("u.item"),
    FileSpec("u.user", required=False),
    FileSpec("u.genre", required=False),
    FileSpec("imdb_details*.json*", required=False),
    FileSpec("ml100k_to_ml1m_posters.tsv", required=False),
]


def ml100k_files(root: Path, options: dict) -> list[tuple[Path, str]]:
    """u.* files, IMDb details, and the poster JPEGs the 100K->1M map points to (landed in posters/)."""
    out = glob_files(root, ML100K_FILES)
    mapping = root / "ml100k_to_ml1m_posters.tsv"
    if mapping.exists():
        data_root = Path(options.get("posters_root") or root.parent)
        seen = set()
        for _, text, _ in read_lines(mapping):
            cells = text.split("\t")
            if len(cells) >= 3 and cells[2].endswith((".jpg", ".jpeg", ".png")) and cells[2] not in seen:
                seen.add(cells[2])
                src = data_root / cells[2]
                if src.is_file():
                    out.append((src, f"posters/{src.name}"))
    return out


def read_ml100k(root: Path, options: dict) -> SourceData:
    rejects = Rejects()
    inter, raw_inter = _rating_rows(root / "u.data", "\t", rejects)
    users, raw_users = ([], 0)
    user_file = find_one(root, "u.user", required=False)
    if user_file:
        users, raw_users = _user_rows(user_file, "|", ("user_key", "age", "gender", "occupation", "zip"), rejects)
    genres = _genres(find_one(root, "u.genre", required=False))
    plots = _imdb_plots(find_one(root, "imdb_details*.json*", required=False))
    items, raw_items = [], 0
    item_file = root / "u.item"
    for line_no, fields, text in split_lines(item_file, "|", 5, "items", rejects, encoding=LATIN1, exact=False):
        raw_items += 1
        if fields is None:
            continue
        flags = fields[5:]
        cats = [g for g, f in zip(genres, flags) if f.strip() == "1" and g != "unknown"]
        items.append(
            {
                "item_key": fields[0].strip(),
                "title": fields[1].strip() or None,
                "categories": " | ".join(cats) or None,
                "description": plots.get(fields[0].strip()),
                "source_file": item_file.name,
                "line_no": line_no,
                "raw": text,
            }
        )
    images, raw_images = [], 0
    mapping = find_one(root, "ml100k_to_ml1m_posters.tsv", required=False)
    if mapping:
        pairs = []
        for line_no, text, _ in read_lines(mapping):
            cells = text.split("\t")
            if line_no == 1 or len(cells) < 3 or not cells[2]:
                continue
            pairs.append((cells[0], root / "posters" / Path(cells[2]).name, line_no))
        images, raw_images = _image_rows(pairs, mapping.name)
    return SourceData(
        items=frame(items, ITEM_COLUMNS),
        users=frame(users, USER_COLUMNS),
        interactions=frame(inter, INTERACTION_COLUMNS),
        item_images=frame(images, IMAGE_COLUMNS),
        rejects=rejects,
        raw_counts={"items": raw_items, "users": raw_users, "interactions": raw_inter, "item_images": raw_images},
        has_item_catalogue=True,
        has_user_catalogue=user_file is not None,
        has_timestamps=True,
    )


register(
    SourceReader(
        name="movielens-100k",
        read=read_ml100k,
        files=ml100k_files,
        default_kcore=0,
        description="GroupLens ml-100k (+ IMDb plots, + posters via the 100K->1M map)",
    )
)


# --- 1M -----------------------------------------------------------------------------------------

ML1M_FILES = [
    FileSpec("ratings.dat"),
    FileSpec("movies.dat"),
    FileSpec("users.dat", required=False),
    FileSpec("posters/*.jpg", required=False),
]


def read_ml1m(root: Path, options: dict) -> SourceData:
    rejects = Rejects()
    inter, raw_inter = _rating_rows(root / "ratings.dat", "::", rejects)
    users, raw_users = ([], 0)
    user_file = find_one(root, "users.dat", required=False)
    if user_file:
        users, raw_users = _user_rows(user_file, "::", ("user_key", "gender", "age", "occupation", "zip"), rejects)
    items, raw_items = [], 0
    for line_no, fields, text in split_lines(root / "movies.dat", "::", 3, "items", rejects, encoding=LATIN1):
        raw_items += 1
        if fields is None:
            continue
        items.append(
            {
                "item_key": fields[0].strip(),
                "title": fields[1].strip() or None,
                "categories": " | ".join(g for g in fields[2].split("|") if g) or None,
                "source_file": "movies.dat",
                "line_no": line_no,
                "raw": text,
            }
        )
    posters = sorted((root / "posters").glob("*.jpg")) if (root / "posters").is_dir() else []
    images, raw_images = _image_rows([(p.stem, p, None) for p in posters], "posters/")
    return SourceData(
        items=frame(items, ITEM_COLUMNS),
        users=frame(users, USER_COLUMNS),
        interactions=frame(inter, INTERACTION_COLUMNS),
        item_images=frame(images, IMAGE_COLUMNS),
        rejects=rejects,
        raw_counts={"items": raw_items, "users": raw_users, "interactions": raw_inter, "item_images": raw_images},
        has_item_catalogue=True,
        has_user_catalogue=user_file is not None,
        has_timestamps=True,
    )


register(
    SourceReader(
        name="movielens-1m",
        read=read_ml1m,
        files=lambda r, o: glob_files(r, ML1M_FILES),
        default_kcore=0,
        description="GroupLens ml-1m (*.dat) + optional posters/<MovieID>.jpg",
    )
)
