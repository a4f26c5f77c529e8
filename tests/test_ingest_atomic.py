"""Ingestion killed with SIGKILL at random points: a reader never sees sequences that disagree with the tables,
and one clean run afterwards leaves tables identical (EXCEPT ALL, both ways) to a clean run in a fresh home."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from recalign.settings import shared_data_dir

TABLES = [
    "items",
    "users",
    "interactions",
    "item_images",
    "id_map",
    "rejected_rows",
    "reconciliation",
    "sequences",
    "sequence_stats",
]


def _ingest(home: Path, source: str, path: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recalign.cli", "ingest", "--source", source, "--name", "ds"]
    cmd += ["--path", path] if path else []
    env = {**os.environ, "RECALIGN_HOME": str(home)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _consistent(db: Path) -> dict | None:
    """What a reader sees: None before the first commit, else the counts that must agree."""
    if not db.exists():
        return None
    con = duckdb.connect(str(db))  # replays a committed WAL, drops an uncommitted one
    try:
        have = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "interactions" not in have:
            return None
        assert "sequences" in have, "tables without sequences"
        stats = con.execute("SELECT interactions_in, users FROM sequence_stats").fetchone()
        n_inter = con.execute("SELECT count(*) FROM interactions").fetchone()[0]
        missing = con.execute(
            "SELECT count(DISTINCT s.user_id) FROM sequences s LEFT JOIN users u USING (user_id) "
            "WHERE u.user_id IS NULL"
        ).fetchone()[0]
        assert stats[0] == n_inter, f"sequences built from {stats[0]} interactions, the table holds {n_inter}"
        assert missing == 0, f"{missing} sequence users missing from users"
        return {"interactions": n_inter, "sequence_users": stats[1]}
    finally:
        con.close()


def test_kill_9_loop_leaves_nothing_inconsistent_and_a_clean_rerun_equals_a_clean_run(tmp_path):
    shared = shared_data_dir()
    source, path = ("movielens-100k", str(shared / "movielens_100k")) if shared else ("synthetic", None)
    home, ref = tmp_path / "killed", tmp_path / "clean"
    db = home / "warehouse" / "ds.duckdb"
    rng = random.Random(0)
    seen = []
    for _ in range(10):
        proc = _ingest(home, source, path)
        time.sleep(rng.uniform(1.0, 6.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        seen.append(_consistent(db))
    assert _ingest(home, source, path).wait() == 0
    assert _ingest(ref, source, path).wait() == 0
    _consistent(db)
    con = duckdb.connect()
    con.execute(f"ATTACH '{db}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{ref / 'warehouse' / 'ds.duckdb'}' AS b (READ_ONLY)")
    for t in TABLES:
        cols = [r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE b.{t})").fetchall()]
        # image paths name their home; everything else must be equal to the letter
        sel = ", ".join(f"replace(CAST({c} AS VARCHAR), '{{home}}', '')" if c == "path" else c for c in cols)
        a, b = sel.replace("{home}", str(home)), sel.replace("{home}", str(ref))
        for x, y, label in ((a, b, "killed-then-clean minus clean"), (b, a, "clean minus killed-then-clean")):
            src_x, src_y = ("a", "b") if label.startswith("killed") else ("b", "a")
            diff = con.execute(
                f"SELECT count(*) FROM (SELECT {x} FROM {src_x}.{t} EXCEPT ALL SELECT {y} FROM {src_y}.{t})"
            )
            assert diff.fetchone()[0] == 0, f"{t}: {label} is not empty"
    print(f"states a reader saw after the 10 kills: {seen}")


def test_a_crash_while_writing_the_sequences_leaves_the_previous_build_whole(home, tmp_path, monkeypatch):
    """Deterministic form of the kill: the sequence write fails inside the build; the new tables must not stay."""
    import pytest

    from assets.ingest.pipeline import DatasetSpec, build_warehouse, land_raw
    from recalign.warehouse import Warehouse

    root = tmp_path / "logs"
    root.mkdir()
    rows = [f"u{u},i{(u * 7 + k) % 30},{1_700_000_000 + 60 * k}" for u in range(40) for k in range(6)]
    (root / "interactions.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    spec = DatasetSpec(source="csv", path=str(root), name="logs")
    land_raw(home, spec)
    build_warehouse(home, spec)
    wh = home.warehouse("logs")
    before = wh.read("SELECT count(*) AS n FROM interactions")["n"].iloc[0]
    (root / "interactions.csv").write_text("user,item,timestamp\n" + "\n".join(rows[:120]) + "\n")
    land_raw(home, spec)

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing the sequences")

    monkeypatch.setattr(Warehouse, "write_sequences", crash)
    with pytest.raises(RuntimeError, match="killed"):
        build_warehouse(home, spec)
    monkeypatch.undo()
    assert wh.read("SELECT count(*) AS n FROM interactions")["n"].iloc[0] == before == 240
    assert _consistent(wh.path)["interactions"] == 240
