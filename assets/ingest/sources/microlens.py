"""MicroLens reader: '<user>\\t<item item ...>' pairs, item,title CSV, optional covers/<item>.jpg."""

from __future__ import annotations

import csv
import io
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
from .base import FileSpec, SourceReader, find_one, glob_files, read_lines, read_text, register

FILES = [FileSpec("*_pairs.tsv"), FileSpec("*_titles.csv", required=False), FileSpec("covers/*.jpg", required=False)]


def read_pairs(path: Path, rejects: Rejects) -> tuple[list[dict], list[dict], int, int]:
    inter, users, raw_inter, raw_users, first = [], [], 0, 0, {}
    for line_no, text, raw in read_lines(path):
        user, _, rest = (text or "").partition("\t")
        items = rest.split()
        n = max(1, len(items))
        raw_inter += n
        raw_users += 1
        reason = None
        if text is None:
            reason = "line is not valid utf-8 text"
        elif not digits(user.strip()):
            reason = f"user_id {user!r} is not a positive integer"
        elif not items:
            reason = "line has no tab-separated item list"
        elif user in first:
            reason = f"duplicate user line; user {user} first seen at line {first[user]}"
        if reason:
            shown = text if text is not None else raw.decode("utf-8", "replace")
            rejects.add("users", path.name, line_no, shown, reason)
            for _ in range(n):
                rejects.add("interactions", path.name, line_no, shown, reason)
            continue
        first[user] = line_no
        users.append({"user_key": user, "source_file": path.name, "line_no": line_no, "raw": user})
        for pos, item in enumerate(items):
            if not digits(item):
                rejects.add(
                    "interactions",
                    path.name,
                    line_no,
                    f"{user}\t{item}",
                    f"item_id {item!r} at position {pos} is not an integer",
                )
                continue
            inter.append(
                {
                    "user_key": user,
                    "item_key": item,
                    "ts": pos,
                    "rating": None,
                    "source_file": path.name,
                    "line_no": line_no,
                    "raw": f"{user}\t{item}",
                }
            )
    return inter, users, raw_inter, raw_users


def read_titles(path: Path, rejects: Rejects) -> tuple[list[dict], int]:
    reader = csv.reader(io.StringIO(read_text(path)))
    header = next(reader, None)
    if not header or [h.strip() for h in header[:2]] != ["item", "title"]:
        raise SourceError(path, f"expected header 'item,title', found {header}", line=1)
    rows, raw = [], 0
    for record in reader:
        raw += 1
        line_no = reader.line_num
        if len(record) != 2 or not digits(record[0].strip()):
            rejects.add("items", path.name, line_no, ",".join(record), "expected 'item,title' with an integer item id")
            continue
        rows.append(
            {
                "item_key": record[0].strip(),
                "title": record[1].strip() or None,
                "source_file": path.name,
                "line_no": line_no,
                "raw": ",".join(record)[:500],
            }
        )
    return rows, raw


def read_microlens(root: Path, options: dict) -> SourceData:
    rejects = Rejects()
    inter, users, raw_inter, raw_users = read_pairs(find_one(root, "*_pairs.tsv"), rejects)
    titles = find_one(root, "*_titles.csv", required=False)
    items, raw_items = read_titles(titles, rejects) if titles else ([], 0)
    covers = sorted((root / "covers").glob("*.jpg")) if (root / "covers").is_dir() else []
    images = [{"item_key": p.stem, "path": str(p), "source_file": "covers/", "raw": p.name} for p in covers]
    return SourceData(
        items=frame(items, ITEM_COLUMNS),
        users=frame(users, USER_COLUMNS),
        interactions=frame(inter, INTERACTION_COLUMNS),
        item_images=frame(images, IMAGE_COLUMNS),
        rejects=rejects,
        raw_counts={"items": raw_items, "users": raw_users, "interactions": raw_inter, "item_images": len(images)},
        has_item_catalogue=titles is not None,
        has_user_catalogue=False,
        has_timestamps=False,
    )


register(
    SourceReader(
        name="microlens",
        read=read_microlens,
        files=lambda r, o: glob_files(r, FILES),
        default_kcore=0,
        description="MicroLens pairs.tsv + titles.csv (+ covers/)",
    )
)
