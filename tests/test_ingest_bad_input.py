"""Bad input: a rejected row with its reason, or one clear error naming the file (and line)."""

import gzip
import json
import subprocess
import sys

import pytest

from assets.ingest.errors import SourceError
from assets.ingest.pipeline import DatasetSpec, build_warehouse, land_raw
from recalign.warehouse import Warehouse

ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
)
USERS = "1|24|M|technician|85711\n2|53|F|other|94043\n"


def ml100k(tmp_path, data: str | bytes, item: str | bytes = ITEM, extra: dict | None = None):
    root = tmp_path / "ml"
    root.mkdir(exist_ok=True)
    (root / "u.data").write_bytes(data.encode() if isinstance(data, str) else data)
    (root / "u.item").write_bytes(item.encode("latin-1") if isinstance(item, str) else item)
    (root / "u.user").write_text(USERS)
    for name, content in (extra or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def build(home, source, root):
    spec = DatasetSpec(source=source, path=str(root))
    land_raw(home, spec)
    md = build_warehouse(home, spec)
    rejected = Warehouse(home.warehouse_path(spec.dataset)).read("SELECT * FROM rejected_rows ORDER BY line_no")
    assert md["reconciled"], md["reconciliation"]
    return md, rejected


def test_non_numeric_ids_duplicates_and_unknown_items(home, tmp_path):
    data = (
        "1\t1\t5\t881250949\n"
        "abc\t2\t3\t881250950\n"  # non-numeric user id
        "1\t1\t5\t881250949\n"  # exact duplicate of line 1
        "2\t999\t4\t881250951\n"  # unknown item
        "2\t2\tfive\t881250952\n"  # non-numeric rating
        "2\t1\t4\n"  # missing field
        "2\t2\t4\t881250953\n"
    )
    md, rej = build(home, "movielens-100k", ml100k(tmp_path, data))
    assert md["interactions"] == 2 and md["rejected"] == 5
    reasons = dict(zip(rej["line_no"], rej["reason"]))
    assert "user_id 'abc'" in reasons[2]
    assert reasons[3] == "duplicate of line 1 (same user_key+item_key+ts)"
    assert "unknown item '999'" in reasons[4]
    assert "rating 'five'" in reasons[5]
    assert "expected 4 fields" in reasons[6]
    assert set(rej["source_file"]) == {"u.data"}
    assert rej.loc[rej["line_no"] == 2, "raw"].iloc[0] == "abc\t2\t3\t881250950"


def test_wrong_encoding_is_a_rejected_row_with_its_line(home, tmp_path):
    root = tmp_path / "s3"
    root.mkdir()
    (root / "Toy.txt").write_bytes(b"1 1 2 3\n2 2 3 \xff\xfe 4\n3 1 3 4\n")
    md, rej = build(home, "amazon-s3rec", root)
    assert md["users"] == 2 and md["interactions"] == 6
    assert (rej["line_no"] == 2).all() and rej["reason"].str.contains("not valid utf-8").all()
    assert set(rej["table_name"]) == {"users", "interactions"}


def test_wrong_encoding_whole_file_names_file_and_line(home, tmp_path):
    root = tmp_path / "ml"
    root.mkdir()
    (root / "x_pairs.tsv").write_text("1\t1 2 3\n")
    (root / "x_titles.csv").write_bytes("item,title\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError) as err:
        build(home, "microlens", root)
    assert "x_titles.csv:2" in str(err.value) and "not valid utf-8" in str(err.value)


def test_truncated_gzip_names_file_and_line(home, tmp_path):
    root = tmp_path / "a14"
    root.mkdir()
    lines = "".join(
        json.dumps(
            {"reviewerID": f"U{i % 7}", "asin": f"A{i % 11}", "overall": 5.0, "unixReviewTime": 1_400_000_000 + i}
        )
        + "\n"
        for i in range(2000)
    )
    blob = gzip.compress(lines.encode())
    (root / "reviews_Toy_5.json.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SourceError) as err:
        build(home, "amazon-2014", root)
    msg = str(err.value)
    assert "reviews_Toy_5.json.gz" in msg and "truncated" in msg and ":" in msg


def test_missing_columns_is_one_clear_error(home, tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    (root / "interactions.csv").write_text("user,item\nu1,i1\n")
    with pytest.raises(SourceError) as err:
        build(home, "csv", root)
    assert (
        "interactions.csv:1" in str(err.value) and "missing column" in str(err.value) and "timestamp" in str(err.value)
    )
    root2 = tmp_path / "s3"
    root2.mkdir()
    (root2 / "Toy.txt").write_text("1 1 2 3\n")
    (root2 / "items.tsv").write_text("asin\ttitle\nB1\tx\n")
    with pytest.raises(SourceError, match=r"items.tsv:1: missing column 'item_id'"):
        build(home, "amazon-s3rec", root2)


def test_empty_file_is_one_clear_error(home, tmp_path):
    with pytest.raises(SourceError, match=r"u.data: file is empty"):
        build(home, "movielens-100k", ml100k(tmp_path, ""))


def test_poster_that_is_not_an_image_is_rejected(home, tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 12), (1, 2, 3)).save(buf, format="JPEG")
    mapping = "ml100k_movie_id\tml1m_movie_id\tposter_file\ttitle\n1\t1\tposters_src/1.jpg\tToy\n2\t10\tposters_src/10.jpg\tGolden\n"
    root = ml100k(tmp_path, "1\t1\t5\t881250949\n", extra={"ml100k_to_ml1m_posters.tsv": mapping})
    (tmp_path / "posters_src").mkdir()
    (tmp_path / "posters_src" / "1.jpg").write_bytes(buf.getvalue())
    (tmp_path / "posters_src" / "10.jpg").write_bytes(b"<html>not found</html>")
    md, rej = build(home, "movielens-100k", root)
    assert md["item_images"] == 1
    row = rej[rej["table_name"] == "item_images"].iloc[0]
    assert "not a readable image: 10.jpg" in row["reason"] and row["line_no"] == 3


def test_amazon_2014_meta_is_parsed_safely(home, tmp_path):
    root = tmp_path / "a14"
    root.mkdir()
    reviews = [
        {"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1_400_000_000},
        {"reviewerID": "U1", "asin": "A2", "overall": 4.0, "unixReviewTime": 1_400_000_100},
        {"reviewerID": "U2", "asin": "A3", "overall": 4.0, "unixReviewTime": 1_400_000_200},
    ]
    (root / "reviews_Toy_5.json.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in reviews).encode()))
    meta = (
        "{'asin': 'A1', 'title': 'Lipstick', 'categories': [['Beauty', 'Makeup']], 'brand': 'OPI'}\n"
        "__import__('os').system('touch PWNED')\n"
        "{'asin': 'A2', 'title': \"Nail 'Polish'\", 'description': 'shiny'}\n"
        "{'asin': 'Z9', 'title': 'never reviewed'}\n"
    )
    (root / "meta_Toy.json.gz").write_bytes(gzip.compress(meta.encode()))
    md, rej = build(home, "amazon-2014", root)
    assert not (tmp_path / "PWNED").exists()
    assert "not a Python/JSON literal" in rej.iloc[0]["reason"] and rej.iloc[0]["line_no"] == 2
    # A3 has no meta row -> unknown item, rejected (the meta file is the catalogue)
    assert md["interactions"] == 2 and md["items"] == 2
    items = Warehouse(home.warehouse_path("a14")).read("SELECT * FROM items ORDER BY item_id")
    assert items["categories"].iloc[0] == "OPI | Beauty | Makeup" and items["title"].iloc[1] == "Nail 'Polish'"


def test_cli_reports_bad_input_without_traceback(tmp_path):
    root = tmp_path / "ml"
    root.mkdir()
    (root / "u.data").write_text("")
    (root / "u.item").write_text(ITEM)
    proc = subprocess.run(
        [sys.executable, "-m", "recalign.cli", "ingest", "--source", "movielens-100k", "--path", str(root)],
        capture_output=True,
        text=True,
        env={"RECALIGN_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "u.data: file is empty" in proc.stderr


def test_unicode_digits_and_endless_numbers_are_rejected_rows_not_crashes(home, tmp_path, shared):
    """Planted in copies of the real files: '881250949²' in u.data, a 5,000-digit id, '12³' in Beauty.txt."""
    ml = tmp_path / "ml"
    ml.mkdir()
    for name in ("u.item", "u.user"):
        (ml / name).write_bytes((shared / "movielens_100k" / name).read_bytes())
    lines = (shared / "movielens_100k" / "u.data").read_text().splitlines()[:200]
    lines[10] = lines[10].rsplit("\t", 1)[0] + "\t881250949\u00b2"
    lines[20] = "9" * 5000 + "\t" + lines[20].split("\t", 1)[1]
    (ml / "u.data").write_text("\n".join(lines) + "\n")
    md, rej = build(home, "movielens-100k", ml)
    bad = rej[rej["table_name"] == "interactions"].set_index("line_no")["reason"]
    assert set(bad.index) == {11, 21} and "timestamp" in bad[11] and "user_id" in bad[21]
    assert md["interactions"] == 198
    s3 = tmp_path / "s3"
    s3.mkdir()
    beauty = (shared / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:100]
    beauty[5] = beauty[5] + " 12\u00b3"
    (s3 / "Beauty.txt").write_text("\n".join(beauty) + "\n")
    (s3 / "items.tsv").write_bytes((shared / "amazon_beauty" / "items.tsv").read_bytes())
    md, rej = build(home, "amazon-s3rec", s3)
    assert (rej["line_no"] == 6).all() and len(rej) and rej["reason"].str.contains("12\u00b3").any()


def test_a_decompression_bomb_poster_is_a_rejected_row(home, tmp_path):
    from PIL import Image

    mapping = "ml100k_movie_id\tml1m_movie_id\tposter_file\ttitle\n1\t1\tposters_src/1.png\tToy\n"
    root = ml100k(tmp_path, "1\t1\t5\t881250949\n", extra={"ml100k_to_ml1m_posters.tsv": mapping})
    (tmp_path / "posters_src").mkdir()
    Image.new("1", (15000, 15000)).save(tmp_path / "posters_src" / "1.png")  # 225 M pixels in a few KB
    md, rej = build(home, "movielens-100k", root)
    assert md["item_images"] == 0
    reason = rej[rej["table_name"] == "item_images"]["reason"].iloc[0]
    assert "not a readable image: 1.png" in reason and ("pixels" in reason or "Bomb" in reason)


def test_landing_file_with_out_of_range_iso_dates_keeps_its_valid_rows(home, tmp_path):
    from assets.ingest.landing import ingest_batch
    from assets.ingest.pipeline import build_sequences

    spec = DatasetSpec(source="synthetic", options={"n_items": 40, "n_users": 30})
    land_raw(home, spec)
    build_warehouse(home, spec)
    build_sequences(home, spec)
    log = tmp_path / "day.csv"
    log.write_text(
        "user,item,timestamp\nu00001,i00002,2030-01-01\nu00002,i00003,9999-12-31\n"
        "u00003,i00004,1500-01-01\nu00004,i00005,2030-01-02T10:00:00Z\n"
    )
    wh = home.warehouse(spec.dataset)
    stats = ingest_batch(wh, log, "day.csv@x")
    assert stats["accepted"] == 2 and stats["rejected"] == 2 and stats["reconciled"]
    reasons = wh.read("SELECT line_no, reason FROM rejected_rows WHERE batch = 'day.csv@x' ORDER BY line_no")
    assert reasons["line_no"].tolist() == [3, 4] and reasons["reason"].str.contains("ts").all()


def test_cli_demo_on_a_missing_folder_prints_the_sources_error_and_exits_2(tmp_path):
    env = {**__import__("os").environ, "RECALIGN_HOME": str(tmp_path / "h"), "DAGSTER_HOME": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "recalign.cli", "demo", "--source", "movielens-100k", "--path", "/nonexistent"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error in raw_dataset: /nonexistent: dataset folder not found" in proc.stderr


def test_landed_batches_survive_a_base_reingest_and_grow_interactions_once(home, tmp_path):
    """The same file under two names, a file with out-of-range dates, then a re-ingest of the base files."""
    from assets.ingest.landing import ingest_batch

    spec = DatasetSpec(source="synthetic", options={"n_items": 40, "n_users": 30})
    land_raw(home, spec)
    build_warehouse(home, spec)
    wh = home.warehouse(spec.dataset)
    n_base = wh.read("SELECT count(*) AS n FROM interactions")["n"].iloc[0]
    day = "user,item,timestamp\nu00001,i00002,2030-01-01\nnewcomer,i00003,2030-01-02\nnewcomer,i99999,2030-01-03\n"
    (tmp_path / "day1.csv").write_text(day)
    (tmp_path / "day1-copy.csv").write_text(day)
    (tmp_path / "dates.csv").write_text("user,item,timestamp\nu00002,i00004,9999-12-31\nu00002,i00005,2030-02-01\n")
    stats = [ingest_batch(wh, tmp_path / f, f, 0) for f in ("day1.csv", "day1-copy.csv", "dates.csv")]
    assert [(s["accepted"], s["rejected"]) for s in stats] == [(2, 1), (0, 3), (1, 1)]
    count = lambda: int(wh.read("SELECT count(*) AS n FROM interactions")["n"].iloc[0])
    assert count() == n_base + 3
    before = wh.read("SELECT batch, accepted, rejected, reconciled FROM log_batches ORDER BY batch")
    landed = wh.read(
        "SELECT u.user_key, t.item_key, i.ts FROM interactions i JOIN users u USING (user_id) "
        "JOIN items t USING (item_id) WHERE batch <> 'base' ORDER BY 1, 2"
    )
    rejected = wh.read("SELECT batch, line_no, reason FROM rejected_rows WHERE batch <> 'base' ORDER BY 1, 2")
    build_warehouse(home, spec)  # the base again: what landed stays, once
    assert count() == n_base + 3
    assert wh.read("SELECT batch, accepted, rejected, reconciled FROM log_batches ORDER BY batch").equals(before)
    assert wh.read(
        "SELECT u.user_key, t.item_key, i.ts FROM interactions i JOIN users u USING (user_id) "
        "JOIN items t USING (item_id) WHERE batch <> 'base' ORDER BY 1, 2"
    ).equals(landed)
    assert wh.read("SELECT batch, line_no, reason FROM rejected_rows WHERE batch <> 'base' ORDER BY 1, 2").equals(
        rejected
    )
    assert wh.read("SELECT count(*) AS n FROM users WHERE user_key = 'newcomer'")["n"].iloc[0] == 1
    seq = wh.read("SELECT interactions_in FROM sequence_stats")["interactions_in"].iloc[0]
    assert seq == n_base + 3  # the sequences were rebuilt with the landed rows too


def test_interactions_of_a_rejected_item_point_at_the_items_own_rejected_row(home, tmp_path, shared):
    """A bad byte in one line of a copy of the real Beauty items.tsv: the item is rejected with its reason, and
    the interactions that name it say so, instead of 'not in the items file'."""
    root = tmp_path / "s3"
    root.mkdir()
    lines = (shared / "amazon_beauty" / "items.tsv").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"Simmer", b"Sim\xffmer")  # item 1
    (root / "items.tsv").write_bytes(b"\n".join(lines))
    (root / "Beauty.txt").write_text(
        "\n".join((shared / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:300])
    )
    md, rej = build(home, "amazon-s3rec", root)
    item_row = rej[rej["table_name"] == "items"]
    assert item_row["line_no"].tolist() == [2] and item_row["reason"].str.contains("utf-8").all()
    inter = rej[rej["table_name"] == "interactions"]
    assert len(inter) >= 1 and inter["reason"].str.startswith("item '1' was rejected itself (items.tsv line 2:").all()


def test_a_rating_off_the_scale_and_a_nul_in_a_key_are_rejected_rows(home, tmp_path):
    root = ml100k(tmp_path, "1\t1\t5\t881250949\n2\t2\t9\t881250950\n1\t2\t3\t881250951\n")
    md, rej = build(home, "movielens-100k", root)
    assert md["interactions"] == 2 and "outside MovieLens' 1-5 stars" in rej["reason"].iloc[0]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "interactions.csv").write_text("user,item,timestamp\nalice,i1,100\nal\x00ice,i1,200\nalice,i2,300\n")
    md, rej = build(home, "csv", logs)
    assert md["users"] == 1 and md["interactions"] == 2
    assert rej["line_no"].tolist() == [3] and rej["reason"].str.contains("user_key").all()


def test_items_without_their_title_column_fail_the_titles_check(tmp_path, shared, monkeypatch):
    """A copy of the real Beauty files whose items.tsv lost its title column: the `items_have_titles` check fails."""
    import dagster as dg

    from assets.resources import DatasetResource, RecalignHome
    from orchestration.definitions import defs

    root = tmp_path / "s3"
    root.mkdir()
    rows = [line.split("\t") for line in (shared / "amazon_beauty" / "items.tsv").read_text().splitlines()]
    (root / "items.tsv").write_text("\n".join("\t".join(r[:2] + r[3:]) for r in rows) + "\n")
    (root / "Beauty.txt").write_text(
        "\n".join((shared / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:500])
    )
    resources = {
        "recalign": RecalignHome(home=str(tmp_path / "home")),
        "dataset": DatasetResource(source="amazon-s3rec", path=str(root), name="untitled"),
    }
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["untitled"])
    result = defs.resolve_job_def("ingest").execute_in_process(
        instance=instance, resources=resources, partition_key="untitled"
    )
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}["items_have_titles"]
    assert not check.passed and check.metadata["share"].value == 1.0


def test_a_cut_short_u_data_says_so_in_its_last_lines_reason(home, tmp_path, shared):
    ml = tmp_path / "ml"
    ml.mkdir()
    for name in ("u.item", "u.user"):
        (ml / name).write_bytes((shared / "movielens_100k" / name).read_bytes())
    data = (shared / "movielens_100k" / "u.data").read_bytes()[:5000]  # cut mid-line, as a failed copy leaves it
    (ml / "u.data").write_bytes(data[: data.rindex(b"\n") + 6])
    md, rej = build(home, "movielens-100k", ml)
    assert len(rej) == 1 and rej["reason"].iloc[0].endswith("the file ends inside this line (cut short?)")
    (ml / "u.data").write_bytes(data[: data.rindex(b"\n")])  # a complete last line without a newline is fine
    md, rej = build(home, "movielens-100k", ml)
    assert rej.empty


def test_a_corrupt_attribute_map_is_one_clear_error(home, tmp_path, shared):
    root = tmp_path / "s3"
    root.mkdir()
    (root / "Beauty.txt").write_text("\n".join((shared / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:50]))
    good = (shared / "amazon_beauty" / "Beauty_item2attributes.json").read_bytes()
    (root / "Beauty_item2attributes.json").write_bytes(good[: len(good) // 2])  # cut in half
    with pytest.raises(SourceError, match=f"^{root}/Beauty_item2attributes.json:1: not valid JSON"):  # the user's file
        build(home, "amazon-s3rec", root)
