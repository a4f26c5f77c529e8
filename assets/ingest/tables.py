"""From a reader's normalised frames to validated tables with dense ids (no database here)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from recalign.warehouse import Tables

from .frames import Rejects, SourceData
from .schemas import InteractionsIn, ItemsIn, UsersIn, validate_rows

TEXT = ["title", "categories", "description"]


def _clean_text(s: pd.Series) -> pd.Series:
    s = s.astype("string").str.replace(r"[\t\r\n]+", " ", regex=True).str.strip()
    return s.mask(s == "")


def reject_duplicates(df: pd.DataFrame, keys: list[str], table: str, rejects: Rejects) -> pd.DataFrame:
    """Keep the first occurrence; later ones are rejected naming the line of the first."""
    dup = df.duplicated(keys, keep="first")
    if dup.any():
        first = df[~dup].set_index(keys)["line_no"]
        ref = df.loc[dup, keys].apply(lambda r: first.get(tuple(r) if len(keys) > 1 else r.iloc[0]), axis=1)
        rejects.add_frame(table, df[dup], "duplicate of line " + ref.astype(str) + " (same " + "+".join(keys) + ")")
    return df[~dup]


def dense_ids(keys: pd.Series) -> pd.Series:
    """Deterministic dense ids 1..N: numeric order when every key is an integer, else text order."""
    uniq = pd.Series(keys.unique())
    numeric = pd.to_numeric(uniq, errors="coerce")
    order = (
        uniq.iloc[np.argsort(numeric.to_numpy(), kind="stable")]
        if numeric.notna().all()
        else uniq.sort_values(kind="stable")
    )
    return pd.Series(np.arange(1, len(order) + 1, dtype="int64"), index=order.to_numpy())


def _reject_unknown(
    df: pd.DataFrame, col: str, known: pd.Index, table: str, what: str, rejects: Rejects
) -> pd.DataFrame:
    bad = ~df[col].isin(known)
    if bad.any():
        own = rejected_keys(rejects, what + "s")
        reasons = df.loc[bad, col].map(
            lambda k: (
                f"{what} {k!r} was rejected itself ({own[k]})"
                if k in own
                else f"unknown {what} {k!r} (not in the {what}s file)"
            )
        )
        rejects.add_frame(table, df[bad], reasons)
    return df[~bad]


def rejected_keys(rejects: Rejects, table: str) -> dict[str, str]:
    """The keys of a table's rejected rows (the first field of the raw line, tab-, '|', ':' or comma-separated),
    each with where and why it was rejected: what an interaction naming that key points at."""
    out = {}
    for r in rejects.rows:
        if r["table_name"] == table and r["raw"]:
            key = re.split(r"\t|\||::|,", str(r["raw"]), maxsplit=1)[0].strip().strip('"')
            out.setdefault(key, f"{r['source_file']} line {r['line_no']}: {r['reason']}")
    return out


MAX_IMAGE_PIXELS = 40_000_000  # a poster or product photo is far smaller; larger is a bomb or a mistake


def check_images(df: pd.DataFrame, rejects: Rejects) -> pd.DataFrame:
    """Keep images that exist and decode; record width, height and bytes."""
    from PIL import Image, UnidentifiedImageError

    keep, sizes = [], []
    for idx, row in df.iterrows():
        path = Path(row["path"])
        try:
            with Image.open(path) as img:  # reads the header only; PIL refuses decompression bombs here
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{img.size[0]}x{img.size[1]} pixels, over {MAX_IMAGE_PIXELS:,}")
                img.verify()
                size = img.size
            keep.append(idx)
            sizes.append((size[0], size[1], path.stat().st_size))
        except FileNotFoundError:
            rejects.add("item_images", row["source_file"], row["line_no"], row["raw"], f"image file not found: {path}")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            rejects.add(
                "item_images",
                row["source_file"],
                row["line_no"],
                row["raw"],
                f"not a readable image: {path.name} ({type(exc).__name__}: {exc})",
            )
    out = df.loc[keep].copy()
    arr = np.array(sizes, dtype="int64").reshape(-1, 3)
    out["width"], out["height"], out["bytes"] = arr[:, 0], arr[:, 1], arr[:, 2]
    return out


def build_tables(data: SourceData) -> Tables:
    rej = data.rejects
    # items
    items = data.items.copy()
    items["item_key"] = items["item_key"].astype("string").str.strip()
    for col in TEXT:
        items[col] = _clean_text(items[col])
    items = reject_duplicates(validate_rows(ItemsIn, items, "items", rej, "items"), ["item_key"], "items", rej)
    # users
    users = data.users.copy()
    users["user_key"] = users["user_key"].astype("string").str.strip()
    users["age"] = pd.to_numeric(users["age"], errors="coerce").astype("float64")
    users = reject_duplicates(validate_rows(UsersIn, users, "users", rej, "users"), ["user_key"], "users", rej)
    # interactions
    inter = data.interactions.copy()
    inter["row_order"] = np.arange(len(inter), dtype="int64")
    inter["batch"] = "base"
    inter["ts"] = pd.to_numeric(inter["ts"], errors="coerce").astype("int64")
    inter["rating"] = pd.to_numeric(inter["rating"], errors="coerce").astype("float64")
    for col in ("user_key", "item_key"):
        inter[col] = inter[col].astype("string").str.strip()
    inter = validate_rows(InteractionsIn, inter, "interactions", rej, "interactions")
    inter = reject_duplicates(inter, ["user_key", "item_key", "ts"], "interactions", rej)
    if data.has_item_catalogue:
        inter = _reject_unknown(inter, "item_key", pd.Index(items["item_key"]), "interactions", "item", rej)
    if data.has_user_catalogue:
        inter = _reject_unknown(inter, "user_key", pd.Index(users["user_key"]), "interactions", "user", rej)
    derived = {}
    extra_items = pd.Index(inter["item_key"].unique()).difference(pd.Index(items["item_key"]))
    if len(extra_items):  # no catalogue: items are what the interactions name
        items = pd.concat(
            [items, pd.DataFrame({"item_key": extra_items, "source_file": "(derived from interactions)"})]
        )
        derived["items"] = len(extra_items)
    extra_users = pd.Index(inter["user_key"].unique()).difference(pd.Index(users["user_key"]))
    if len(extra_users):
        users = pd.concat(
            [users, pd.DataFrame({"user_key": extra_users, "source_file": "(derived from interactions)"})]
        )
        derived["users"] = len(extra_users)
    # images
    images = data.item_images.copy()
    images["item_key"] = images["item_key"].astype("string").str.strip()
    images = _reject_unknown(images, "item_key", pd.Index(items["item_key"]), "item_images", "item", rej)
    images = check_images(reject_duplicates(images, ["item_key"], "item_images", rej), rej)
    # dense ids, deterministic
    item_ids, user_ids = dense_ids(items["item_key"]), dense_ids(users["user_key"])
    items.insert(0, "item_id", items["item_key"].map(item_ids).astype("int64"))
    users.insert(0, "user_id", users["user_key"].map(user_ids).astype("int64"))
    inter.insert(0, "item_id", inter["item_key"].map(item_ids).astype("int64"))
    inter.insert(0, "user_id", inter["user_key"].map(user_ids).astype("int64"))
    images.insert(0, "item_id", images["item_key"].map(item_ids).astype("int64"))
    id_map = pd.concat(
        [
            pd.DataFrame({"kind": "item", "source_key": item_ids.index, "id": item_ids.values}),
            pd.DataFrame({"kind": "user", "source_key": user_ids.index, "id": user_ids.values}),
        ],
        ignore_index=True,
    )
    accepted = {
        "items": len(items) - derived.get("items", 0),
        "users": len(users) - derived.get("users", 0),
        "interactions": len(inter),
        "item_images": len(images),
    }
    recon = pd.DataFrame(
        [
            {
                "table_name": t,
                "raw_rows": data.raw_counts.get(t, 0),
                "accepted": accepted[t],
                "rejected": rej.count(t),
                "derived": derived.get(t, 0),
            }
            for t in accepted
        ]
    )
    recon["reconciled"] = recon["raw_rows"] == recon["accepted"] + recon["rejected"]
    return Tables(
        items=items.sort_values("item_id").drop(columns=["raw"], errors="ignore").reset_index(drop=True),
        users=users.sort_values("user_id").drop(columns=["raw"], errors="ignore").reset_index(drop=True),
        interactions=inter.drop(columns=["raw", "user_key", "item_key"]).reset_index(drop=True),
        item_images=images.drop(columns=["raw"]).reset_index(drop=True),
        id_map=id_map,
        rejected=rej.frame(),
        reconciliation=recon,
        info={"has_timestamps": data.has_timestamps, **data.notes},
    )
