"""Your own logs: interactions.{csv,parquet,jsonl} (user,item,timestamp[,rating]) + optional
items.csv (item,title[,categories,description,image]) and users.csv (user[,gender,age,occupation,zip]).

The same interaction-file parser reads the files dropped into the landing folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SourceError
from ..frames import (
    IMAGE_COLUMNS,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    Rejects,
    SourceData,
    frame,
)
from .base import FileSpec, SourceReader, find_one, glob_files, register

FILES = [
    FileSpec("interactions.*"),
    FileSpec("items.csv", required=False),
    FileSpec("users.csv", required=False),
    FileSpec("images/*", required=False),
]
USER_ALIASES = ("user", "user_id", "userId")
ITEM_ALIASES = ("item", "item_id", "itemId", "movieId", "asin")
TS_ALIASES = ("timestamp", "ts", "time", "unixReviewTime")


def load_table(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """Read CSV / Parquet / JSON-lines as strings; return the frame and each row's line number."""
    if not path.exists() or path.stat().st_size == 0:
        raise SourceError(path, "file is empty" if path.exists() else "file not found")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix.startswith(".parquet"):
            df = pd.read_parquet(path).astype("string")
            lines = pd.Series(range(1, len(df) + 1))
        elif suffix.startswith((".jsonl", ".json", ".ndjson")):
            records, lines_l = [], []
            with open(path, "rb") as fh:
                for n, raw in enumerate(fh, 1):
                    if raw.strip():
                        try:
                            rec = json.loads(raw)
                        except json.JSONDecodeError:
                            rec = {"__bad__": raw.decode("utf-8", "replace").strip()}
                        records.append(rec if isinstance(rec, dict) else {"__bad__": str(rec)})
                        lines_l.append(n)
            df = pd.DataFrame.from_records(records).astype("string")
            lines = pd.Series(lines_l)
        else:
            df = pd.read_csv(path, dtype="string", keep_default_na=False, encoding="utf-8", on_bad_lines="error")
            lines = pd.Series(range(2, len(df) + 2))
    except UnicodeDecodeError as exc:
        raise SourceError(path, f"not valid utf-8 text ({exc.reason} at byte {exc.start})") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise SourceError(path, f"cannot be parsed: {str(exc).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True), lines


def _row_text(df: pd.DataFrame) -> pd.Series:
    """Each row as comma-joined text (missing cells empty), kept with rejected rows (column-wise: linear in rows)."""
    cols = [df[c].astype("string").fillna("") for c in df.columns]
    if not cols:
        return pd.Series([""] * len(df), index=df.index, dtype="string")
    return cols[0].str.cat(cols[1:], sep=",") if len(cols) > 1 else cols[0]


def _pick(df: pd.DataFrame, aliases: tuple[str, ...], path: Path, required: bool = True) -> str | None:
    for name in aliases:
        if name in df.columns:
            return name
    if required:
        raise SourceError(path, f"missing column: one of {list(aliases)} (found {list(df.columns)})", line=1)
    return None


def iso_seconds(text: pd.Series) -> pd.Series:
    """Unix seconds of ISO dates, NaN where a value is not one; any year pandas can parse (1500, 9999: the schema's
    range check rejects them with a reason later), never an out-of-bounds error for the whole file."""
    iso = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    seconds = iso.dt.tz_localize(None).to_numpy(dtype="datetime64[s]").astype("int64").astype("float64")
    return pd.Series(np.where(iso.isna().to_numpy(), np.nan, seconds), index=text.index)


def parse_interactions(path: Path, rejects: Rejects) -> tuple[pd.DataFrame, int]:
    """user, item, timestamp (int seconds or ISO date), optional rating -> normalised frame."""
    df, lines = load_table(path)
    n_raw = len(df)
    raw_text = _row_text(df) if len(df.columns) else pd.Series([""] * len(df))
    if "__bad__" in df.columns:
        bad = df["__bad__"].notna()
        rejects.add_frame(
            "interactions",
            pd.DataFrame({"source_file": path.name, "line_no": lines[bad], "raw": df.loc[bad, "__bad__"]}),
            "not a JSON object",
        )
        df, lines, raw_text = df[~bad], lines[~bad], raw_text[~bad]
    u, i, t = _pick(df, USER_ALIASES, path), _pick(df, ITEM_ALIASES, path), _pick(df, TS_ALIASES, path)
    r = _pick(df, ("rating", "overall"), path, required=False)
    out = pd.DataFrame(
        {
            "user_key": df[u].str.strip(),
            "item_key": df[i].str.strip(),
            "ts_text": df[t].str.strip(),
            "rating_text": df[r].str.strip() if r else pd.NA,
            "source_file": path.name,
            "line_no": lines.values,
            "raw": raw_text.values,
        }
    )
    ts = pd.to_numeric(out["ts_text"], errors="coerce")
    need = ts.isna() & (out["ts_text"].fillna("") != "")
    if need.any():
        ts.loc[need] = iso_seconds(out.loc[need, "ts_text"])
    out["ts"] = ts
    out["rating"] = pd.to_numeric(out["rating_text"], errors="coerce") if r else None
    reasons = pd.Series("", index=out.index)
    reasons[out["user_key"].fillna("") == ""] += "user is empty; "
    reasons[out["item_key"].fillna("") == ""] += "item is empty; "
    reasons[out["ts"].isna()] += "timestamp is not an integer or ISO date; "
    if r:
        reasons[out["rating"].isna() & (out["rating_text"].fillna("") != "")] += "rating is not a number; "
    bad = reasons != ""
    rejects.add_frame("interactions", out[bad], reasons[bad].str.rstrip("; "))
    good = out[~bad].copy()
    good["ts"] = good["ts"].astype("int64")
    return good[INTERACTION_COLUMNS], n_raw


def read_csvlogs(root: Path, options: dict) -> SourceData:
    rejects = Rejects()
    inter_path = find_one(
        root, "interactions.csv", "interactions.parquet", "interactions.jsonl", "interactions.json", "interactions.*"
    )
    inter, raw_inter = parse_interactions(inter_path, rejects)
    items, images, raw_items, raw_images = frame([], ITEM_COLUMNS), frame([], IMAGE_COLUMNS), 0, 0
    items_path = find_one(root, "items.csv", required=False)
    if items_path:
        df, lines = load_table(items_path)
        key = _pick(df, ITEM_ALIASES, items_path)
        get = lambda c: df[c] if c in df.columns else None
        items = frame(
            {
                "item_key": df[key].str.strip(),
                "title": get("title"),
                "categories": get("categories"),
                "description": get("description"),
                "source_file": items_path.name,
                "line_no": lines.values,
                "raw": _row_text(df),
            },
            ITEM_COLUMNS,
        )
        raw_items = len(items)
        if "image" in df.columns:
            has = df["image"].fillna("") != ""
            images = frame(
                {
                    "item_key": df.loc[has, key].str.strip(),
                    "path": [str(root / p) for p in df.loc[has, "image"]],
                    "source_file": items_path.name,
                    "line_no": lines[has].values,
                    "raw": df.loc[has, "image"],
                },
                IMAGE_COLUMNS,
            )
            raw_images = len(images)
    users, raw_users = frame([], USER_COLUMNS), 0
    users_path = find_one(root, "users.csv", required=False)
    if users_path:
        df, lines = load_table(users_path)
        key = _pick(df, USER_ALIASES, users_path)
        cols = {c: df[c] for c in ("gender", "occupation", "zip") if c in df.columns}
        if "age" in df.columns:
            cols["age"] = pd.to_numeric(df["age"], errors="coerce")
        users = frame(
            {
                "user_key": df[key].str.strip(),
                **cols,
                "source_file": users_path.name,
                "line_no": lines.values,
                "raw": _row_text(df),
            },
            USER_COLUMNS,
        )
        raw_users = len(users)
    return SourceData(
        items=items,
        users=users,
        interactions=inter,
        item_images=images,
        rejects=rejects,
        raw_counts={"items": raw_items, "users": raw_users, "interactions": raw_inter, "item_images": raw_images},
        has_item_catalogue=items_path is not None,
        has_user_catalogue=users_path is not None,
        has_timestamps=True,
    )


register(
    SourceReader(
        name="csv",
        read=read_csvlogs,
        files=lambda r, o: glob_files(r, FILES),
        default_kcore=0,
        description="your logs: interactions.{csv,parquet,jsonl} (+ items.csv, users.csv)",
    )
)
