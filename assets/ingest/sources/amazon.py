"""Amazon readers: the S3-Rec/P5 benchmark split, and the McAuley lab's raw 2014 files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from ..errors import SourceError
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
from .base import FileSpec, SourceReader, bad_encoding, find_one, glob_files, read_lines, register

S3REC_FILES = [
    FileSpec("*.txt", required=True),
    FileSpec("*_item2attributes.json", required=False),
    FileSpec("items.tsv", required=False),
    FileSpec("attribute_names.tsv", required=False),
]


def _sequence_file(root: Path) -> Path:
    candidates = [p for p in sorted(root.glob("*.txt")) if not p.name.endswith("_sample.txt")]
    if not candidates:
        raise SourceError(root, "no S3-Rec sequence file (*.txt: 'user item item ...' per line)")
    return candidates[0]


def read_s3rec_sequences(path: Path, rejects: Rejects) -> tuple[list[dict], list[dict], int, int]:
    """Parse 'user item item ...' lines; item position is the (ordinal) timestamp."""
    interactions, users, raw_interactions, raw_users = [], [], 0, 0
    first_line: dict[str, int] = {}
    name = path.name
    for line_no, text, raw in read_lines(path):
        tokens = text.split() if text is not None else raw.split()
        n_records = max(1, len(tokens) - 1)
        raw_interactions += n_records
        raw_users += 1
        raw_text = text if text is not None else raw.decode("utf-8", "replace")

        def reject_line(reason: str, line_no=line_no, raw_text=raw_text, n_records=n_records):
            rejects.add("users", name, line_no, raw_text, reason)
            for _ in range(n_records):
                rejects.add("interactions", name, line_no, raw_text, reason)

        if text is None:
            reject_line(bad_encoding("utf-8"))
            continue
        user = tokens[0]
        if not digits(user):
            reject_line(f"user_id {user!r} is not a positive integer")
            continue
        if len(tokens) < 2:
            reject_line("line has a user id but no items")
            continue
        if user in first_line:
            reject_line(f"duplicate user line; user {user} first seen at line {first_line[user]}")
            continue
        first_line[user] = line_no
        users.append({"user_key": user, "source_file": name, "line_no": line_no, "raw": user})
        for pos, item in enumerate(tokens[1:]):
            if not digits(item) or int(item) == 0:
                rejects.add(
                    "interactions",
                    name,
                    line_no,
                    f"{user} {item}",
                    f"item_id {item!r} at position {pos} is not a positive integer",
                )
                continue
            interactions.append(
                {
                    "user_key": user,
                    "item_key": item,
                    "ts": pos,
                    "rating": None,
                    "source_file": name,
                    "line_no": line_no,
                    "raw": f"{user} {item}",
                }
            )
    return interactions, users, raw_interactions, raw_users


def read_s3rec_items(path: Path, rejects: Rejects) -> tuple[list[dict], int]:
    """items.tsv: item_id, asin, title (Beauty) or not (Sports), attributes / attributes_approx."""
    rows, raw_count = [], 0
    lines = read_lines(path, skip_blank=True)
    try:
        _, header_text, _ = next(lines)
    except StopIteration:
        raise SourceError(path, "file is empty") from None
    header = (header_text or "").split("\t")
    if "item_id" not in header:
        raise SourceError(path, f"missing column 'item_id' (header: {header})", line=1)
    idx = {h: i for i, h in enumerate(header)}
    attr_col = "attributes" if "attributes" in idx else "attributes_approx" if "attributes_approx" in idx else None
    for line_no, text, raw in lines:
        raw_count += 1
        if text is None:
            rejects.add("items", path.name, line_no, raw.decode("utf-8", "replace"), bad_encoding("utf-8"))
            continue
        cells = text.split("\t")
        if len(cells) != len(header):
            rejects.add(
                "items", path.name, line_no, text, f"expected {len(header)} tab-separated fields, found {len(cells)}"
            )
            continue
        attrs = cells[idx[attr_col]] if attr_col else ""
        attrs = " | ".join(a for a in attrs.split(" | ") if a and not a.startswith("?"))
        rows.append(
            {
                "item_key": cells[idx["item_id"]].strip(),
                "title": cells[idx["title"]].strip() if "title" in idx else None,
                "categories": attrs or None,
                "description": None,
                "source_file": path.name,
                "line_no": line_no,
                "raw": text,
            }
        )
    return rows, raw_count


def check_json(path: Path | None) -> None:
    """A landed JSON file must parse (the attribute map is provenance beside items.tsv's attribute ids)."""
    if path is None:
        return
    try:
        json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        line = getattr(err, "lineno", None)
        raise SourceError(path, f"not valid JSON: {getattr(err, 'msg', err)}", line=line) from None


def read_s3rec(root: Path, options: dict) -> SourceData:
    rejects = Rejects()
    inter, users, raw_inter, raw_users = read_s3rec_sequences(_sequence_file(root), rejects)
    check_json(find_one(root, "*_item2attributes.json", required=False))
    items_file = find_one(root, "items.tsv", required=False)
    if items_file is not None:
        items, raw_items = read_s3rec_items(items_file, rejects)
    else:  # no catalogue: items are the ids seen in the sequences
        seen = sorted({r["item_key"] for r in inter}, key=int)
        items = [{"item_key": k, "source_file": "(derived)", "line_no": None, "raw": k} for k in seen]
        raw_items = len(items)
    return SourceData(
        items=frame(items, ITEM_COLUMNS),
        users=frame(users, USER_COLUMNS),
        interactions=frame(inter, INTERACTION_COLUMNS),
        item_images=frame([], IMAGE_COLUMNS),
        rejects=rejects,
        raw_counts={"items": raw_items, "users": raw_users, "interactions": raw_inter, "item_images": 0},
        has_item_catalogue=items_file is not None,
        has_user_catalogue=False,
        has_timestamps=False,
    )


register(
    SourceReader(
        name="amazon-s3rec",
        read=read_s3rec,
        files=lambda root, o: glob_files(root, S3REC_FILES),
        default_kcore=0,
        description="S3-Rec/P5 Amazon split: '<Cat>.txt' sequences + items.tsv titles/attributes",
    )
)


# --- Amazon 2014 raw files (reviews_<Cat>_5.json.gz, meta_<Cat>.json.gz) ---------------------

A2014_FILES = [FileSpec("reviews_*.json*", required=True), FileSpec("meta_*.json*", required=False)]


def _categories(value) -> str | None:
    if isinstance(value, list):
        flat = [c for group in value for c in (group if isinstance(group, list) else [group])]
        seen = list(dict.fromkeys(str(c) for c in flat if c))
        return " | ".join(seen) or None
    return None


def read_a2014_reviews(path: Path, rejects: Rejects) -> tuple[list[dict], int]:
    rows, raw_count = [], 0
    for line_no, text, raw in read_lines(path):
        raw_count += 1
        if text is None:
            rejects.add("interactions", path.name, line_no, raw.decode("utf-8", "replace"), bad_encoding("utf-8"))
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            rejects.add("interactions", path.name, line_no, text, f"not a JSON object ({exc.msg})")
            continue
        missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in rec]
        if missing:
            rejects.add("interactions", path.name, line_no, text, f"missing field(s) {missing}")
            continue
        ts, rating = rec["unixReviewTime"], rec.get("overall")
        if not isinstance(ts, int):
            rejects.add("interactions", path.name, line_no, text, f"unixReviewTime {ts!r} is not an integer")
            continue
        rows.append(
            {
                "user_key": str(rec["reviewerID"]),
                "item_key": str(rec["asin"]),
                "ts": ts,
                "rating": float(rating) if isinstance(rating, (int, float)) else None,
                "source_file": path.name,
                "line_no": line_no,
                "raw": text[:500],
            }
        )
    return rows, raw_count


def read_a2014_meta(path: Path, wanted: set[str], rejects: Rejects) -> tuple[list[dict], int, int]:
    """meta lines are Python literals: parsed with ast.literal_eval (never eval)."""
    rows, raw_count, skipped = [], 0, 0
    for line_no, text, raw in read_lines(path):
        if text is None:
            raw_count += 1
            rejects.add("items", path.name, line_no, raw.decode("utf-8", "replace"), bad_encoding("utf-8"))
            continue
        try:
            rec = json.loads(text) if text.lstrip().startswith('{"') else ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raw_count += 1
            rejects.add("items", path.name, line_no, text[:500], f"not a Python/JSON literal ({type(exc).__name__})")
            continue
        if not isinstance(rec, dict) or "asin" not in rec:
            raw_count += 1
            rejects.add("items", path.name, line_no, text[:500], "record has no 'asin'")
            continue
        if str(rec["asin"]) not in wanted:
            skipped += 1  # catalogue entry for an item nobody reviewed: not part of this dataset
            continue
        raw_count += 1
        desc = rec.get("description")
        rows.append(
            {
                "item_key": str(rec["asin"]),
                "title": rec.get("title"),
                "categories": " | ".join(x for x in [rec.get("brand"), _categories(rec.get("categories"))] if x)
                or None,
                "description": desc if isinstance(desc, str) else None,
                "source_file": path.name,
                "line_no": line_no,
                "raw": text[:500],
            }
        )
    return rows, raw_count, skipped


def read_a2014(root: Path, options: dict) -> SourceData:
    rejects = Rejects()
    inter, raw_inter = read_a2014_reviews(find_one(root, "reviews_*.json*"), rejects)
    meta = find_one(root, "meta_*.json*", required=False)
    items, raw_items, skipped = [], 0, 0
    if meta is not None:
        items, raw_items, skipped = read_a2014_meta(meta, {r["item_key"] for r in inter}, rejects)
    else:
        items = [{"item_key": k, "source_file": "(derived)", "raw": k} for k in sorted({r["item_key"] for r in inter})]
        raw_items = len(items)
    data = SourceData(
        items=frame(items, ITEM_COLUMNS),
        users=frame([], USER_COLUMNS),
        interactions=frame(inter, INTERACTION_COLUMNS),
        item_images=frame([], IMAGE_COLUMNS),
        rejects=rejects,
        raw_counts={"items": raw_items, "users": 0, "interactions": raw_inter, "item_images": 0},
        has_item_catalogue=meta is not None,
        has_user_catalogue=False,
        has_timestamps=True,
    )
    data.notes["catalogue_rows_not_reviewed"] = skipped
    return data


register(
    SourceReader(
        name="amazon-2014",
        read=read_a2014,
        files=lambda root, o: glob_files(root, A2014_FILES),
        default_kcore=5,
        description="McAuley lab Amazon 2014: reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz",
    )
)
