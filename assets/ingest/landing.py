"""New interaction logs dropped into $RECALIGN_HOME/landing/interactions/: each file is one batch,
keyed by name + sha256, validated like the base tables and appended (re-running a batch replaces it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from recalign.warehouse import Tables, Warehouse

from .frames import Rejects
from .raw import sha256_file
from .schemas import InteractionsIn, validate_rows
from .sequences import compute_sequences
from .sources.csvlogs import parse_interactions

SUFFIXES = (".csv", ".parquet", ".jsonl", ".json", ".ndjson")


def batch_key(path: Path) -> str:
    """The partition key of a landed file: its name and the first 12 hex digits of its sha256."""
    return f"{path.name}@{sha256_file(path)[:12]}"


def scan(landing: Path) -> dict[str, Path]:
    return {batch_key(p): p for p in sorted(landing.iterdir()) if p.is_file() and p.suffix in SUFFIXES}


def ingest_batch(wh: Warehouse, path: Path, key: str, kcore: int = 0) -> dict:
    """Validate one log file and append it; unknown items rejected, new users added, counts reconciled; the
    sequences (k-core `kcore`) rebuilt in the same transaction. Returns the batch's and the sequences' stats."""
    t0 = time.perf_counter()
    rejects = Rejects()
    df, raw = parse_interactions(path, rejects)
    df = df.copy()
    df["ts"] = df["ts"].astype("int64")
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce").astype("float64")
    df = validate_rows(InteractionsIn, df, "interactions", rejects, path.name)
    with wh.connect() as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM interactions WHERE batch = ?", [key])  # re-running a batch replaces it
        con.execute("DELETE FROM rejected_rows WHERE batch = ?", [key])
        con.execute(
            "CREATE TABLE IF NOT EXISTS log_batches (batch VARCHAR, file VARCHAR, raw_rows BIGINT, accepted BIGINT, "
            "rejected BIGINT, new_users BIGINT, reconciled BOOLEAN, ingested_at DOUBLE)"
        )
        con.execute("DELETE FROM log_batches WHERE batch = ?", [key])
        ids = con.execute("SELECT kind, source_key, id FROM id_map").df()
        items = ids[ids["kind"] == "item"].set_index("source_key")["id"]
        users = ids[ids["kind"] == "user"].set_index("source_key")["id"]
        unknown = ~df["item_key"].isin(items.index)
        rejects.add_frame(
            "interactions",
            df[unknown],
            "unknown item " + df.loc[unknown, "item_key"].map(repr) + " (not in the items table)",
        )
        df = df[~unknown]
        new_keys = sorted(set(df["user_key"]) - set(users.index))
        if new_keys:
            start = int(users.max()) + 1 if len(users) else 1
            new = pd.DataFrame({"kind": "user", "source_key": new_keys, "id": np.arange(start, start + len(new_keys))})
            con.execute("INSERT INTO id_map SELECT * FROM new")
            add = pd.DataFrame({"user_id": new["id"], "user_key": new_keys, "source_file": path.name})
            con.execute(f"INSERT INTO users ({', '.join(add.columns)}) SELECT * FROM add")
            users = pd.concat([users, new.set_index("source_key")["id"]])
        df["user_id"] = df["user_key"].map(users).astype("int64")
        df["item_id"] = df["item_key"].map(items).astype("int64")
        existing = con.execute("SELECT user_id, item_id, ts FROM interactions").df()
        stored = df.merge(existing, on=["user_id", "item_id", "ts"], how="left", indicator=True)["_merge"].eq("both")
        dup = stored.to_numpy() | df.duplicated(["user_id", "item_id", "ts"]).to_numpy()
        rejects.add_frame("interactions", df[dup], "duplicate of an interaction already stored (same user+item+ts)")
        df = df[~dup]
        base = con.execute("SELECT coalesce(max(row_order), -1) + 1 FROM interactions").fetchone()[0]
        out = pd.DataFrame(
            {
                "user_id": df["user_id"],
                "item_id": df["item_id"],
                "ts": df["ts"],
                "rating": df["rating"],
                "source_file": path.name,
                "line_no": df["line_no"].astype("int64"),
                "row_order": np.arange(base, base + len(df), dtype="int64"),
                "batch": key,
            }
        )
        con.execute(f"INSERT INTO interactions ({', '.join(out.columns)}) SELECT * FROM out")
        rej = rejects.frame().assign(batch=key)
        con.register("rej", rej)
        con.execute("INSERT INTO rejected_rows SELECT * FROM rej")
        n_rej = rejects.count("interactions")
        stats = {
            "batch": key,
            "file": path.name,
            "raw_rows": raw,
            "accepted": len(out),
            "rejected": n_rej,
            "new_users": len(new_keys),
            "reconciled": raw == len(out) + n_rej,
            "ingested_at": time.time(),
        }
        con.execute("INSERT INTO log_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(stats.values()))
        seq, seq_stats = compute_sequences(
            con.execute("SELECT user_id, item_id, ts, row_order FROM interactions").df(), kcore
        )
        wh.write_sequences(seq, seq_stats, con=con)
        con.execute("COMMIT")
    return stats | {"seconds": round(time.perf_counter() - t0, 2), "sequences": seq_stats}


def last_ingest_time(wh: Warehouse) -> float | None:
    if not wh.has_table("log_batches"):
        return None
    v = wh.read("SELECT max(ingested_at) AS t FROM log_batches")["t"].iloc[0]
    return None if pd.isna(v) else float(v)


def landed_state(wh: Warehouse) -> dict | None:
    """What the landed log batches added to a warehouse, by source keys (dense ids change with a rebuild)."""
    if not wh.path.exists() or not wh.has_table("log_batches"):
        return None
    return {
        "interactions": wh.read(
            "SELECT u.user_key, t.item_key, i.ts, i.rating, i.source_file, i.line_no, i.batch FROM interactions i "
            "JOIN users u USING (user_id) JOIN items t USING (item_id) WHERE i.batch <> 'base' ORDER BY i.row_order"
        ),
        "rejected": wh.read("SELECT * FROM rejected_rows WHERE batch <> 'base'"),
        "log_batches": wh.read("SELECT * FROM log_batches ORDER BY ingested_at"),
    }


def carry_landed(tables: Tables, landed: dict) -> tuple[Tables, pd.DataFrame]:
    """The landed batches' rows re-applied on top of a rebuilt base (a re-ingest of the base files loses nothing):
    users new to the base get ids after it; rows whose item left the catalogue, or that the base now holds, become
    rejected rows of their batch with the reason. Returns the tables and the batches' updated counts."""
    inter, batches = landed["interactions"], landed["log_batches"].copy()
    users = dict(zip(tables.users["user_key"], tables.users["user_id"], strict=True))
    items = dict(zip(tables.items["item_key"], tables.items["item_id"], strict=True))
    gone = ~inter["item_key"].isin(items)
    moved = [
        _as_rejected(
            inter[gone],
            "item "
            + inter.loc[gone, "item_key"].map(repr)
            + " is no longer in the items file (the base was re-ingested)",
        )
    ]
    keep = inter[~gone].copy()
    first = keep.drop_duplicates("user_key")
    new = first[~first["user_key"].isin(users)]
    start = int(tables.users["user_id"].max()) + 1 if len(tables.users) else 1
    new_ids = dict(zip(new["user_key"], range(start, start + len(new)), strict=True))
    users |= new_ids
    keep["user_id"], keep["item_id"] = keep["user_key"].map(users), keep["item_key"].map(items)
    base = tables.interactions[["user_id", "item_id", "ts"]]
    dup = keep.merge(base, on=["user_id", "item_id", "ts"], how="left", indicator=True)["_merge"].eq("both").to_numpy()
    moved.append(_as_rejected(keep[dup], "duplicate of an interaction already stored (same user+item+ts)"))
    keep = keep[~dup]
    order = int(tables.interactions["row_order"].max()) + 1 if len(tables.interactions) else 0
    keep["row_order"] = np.arange(order, order + len(keep), dtype="int64")
    cols = list(tables.interactions.columns)
    new_users = pd.DataFrame(
        {"user_id": list(new_ids.values()), "user_key": list(new_ids), "source_file": new["source_file"].to_numpy()}
    )
    moved = pd.concat(moved, ignore_index=True)
    out = Tables(
        items=tables.items,
        item_images=tables.item_images,
        reconciliation=tables.reconciliation,
        info=tables.info,
        users=pd.concat([tables.users, new_users], ignore_index=True),
        interactions=pd.concat([tables.interactions, keep[cols]], ignore_index=True),
        id_map=pd.concat(
            [tables.id_map, pd.DataFrame({"kind": "user", "source_key": list(new_ids), "id": list(new_ids.values())})],
            ignore_index=True,
        ),
        rejected=pd.concat([tables.rejected.assign(batch="base"), landed["rejected"], moved], ignore_index=True),
    )
    counts = moved.groupby("batch").size()
    batches["accepted"] -= batches["batch"].map(counts).fillna(0).astype("int64")
    batches["rejected"] += batches["batch"].map(counts).fillna(0).astype("int64")
    batches["reconciled"] = batches["raw_rows"] == batches["accepted"] + batches["rejected"]
    return out, batches


def _as_rejected(rows: pd.DataFrame, reasons) -> pd.DataFrame:
    raw = rows["user_key"] + "," + rows["item_key"] + "," + rows["ts"].astype(str)
    return pd.DataFrame(
        {
            "table_name": "interactions",
            "source_file": rows["source_file"],
            "line_no": rows["line_no"],
            "raw": raw,
            "reason": reasons,
            "batch": rows["batch"],
        }
    )
