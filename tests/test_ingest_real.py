"""The published statistics of the real datasets reproduce exactly (../shared/data)."""

import pytest

from assets.ingest.pipeline import DatasetSpec, build_sequences, build_warehouse, land_raw
from recalign.warehouse import Warehouse, load_sequences

pytestmark = pytest.mark.realdata

CASES = [
    ("amazon-s3rec", "amazon_beauty", 22363, 12101, 198502),
    ("amazon-s3rec", "amazon_sports", 35598, 18357, 296337),
    ("movielens-100k", "movielens_100k", 943, 1682, 100000),
    ("microlens", "microlens_50k", 50000, 19220, 359708),
]


@pytest.mark.parametrize("source,folder,users,items,interactions", CASES, ids=[c[1] for c in CASES])
def test_published_statistics(shared, home, source, folder, users, items, interactions):
    spec = DatasetSpec(source=source, path=str(shared / folder))
    land_raw(home, spec)
    md = build_warehouse(home, spec)
    assert (md["users"], md["items"], md["interactions"]) == (users, items, interactions)
    assert md["rejected"] == 0 and md["reconciled"]
    stats = build_sequences(home, spec)
    assert stats["evaluable_users"] == users  # every user has >= 3 events (5-core / >= 20 ratings)
    seq = load_sequences(Warehouse(home.warehouse_path(spec.dataset)))
    assert len(seq.train) == users and (seq.test > 0).all() and (seq.valid > 0).all()


def test_beauty_ids_and_order_match_the_s3rec_file(shared, home):
    """Dense ids equal the S3-Rec ids; the last item of each line is the test item."""
    spec = DatasetSpec(source="amazon-s3rec", path=str(shared / "amazon_beauty"))
    build_warehouse(home, spec)
    build_sequences(home, spec)
    seq = load_sequences(Warehouse(home.warehouse_path(spec.dataset)))
    lines = (shared / "amazon_beauty" / "Beauty.txt").read_text().splitlines()[:50]
    for k, line in enumerate(lines):
        ids = [int(x) for x in line.split()]
        assert seq.user_ids[k] == ids[0]
        assert list(seq.train[k]) == ids[1:-2] and seq.valid[k] == ids[-2] and seq.test[k] == ids[-1]
    wh = Warehouse(home.warehouse_path(spec.dataset))
    item = wh.read("SELECT item_key, title, categories FROM items WHERE item_id = 1").iloc[0]
    assert item["title"].startswith("OPI Nail Lacquer") and item["categories"].startswith("OPI")


def test_movielens_posters_plots_and_timestamp_order(shared, home):
    spec = DatasetSpec(source="movielens-100k", path=str(shared / "movielens_100k"))
    land_raw(home, spec)
    md = build_warehouse(home, spec)
    assert md["item_images"] == 1395  # SOURCE.md: 1,395 movies have a shipped poster
    wh = Warehouse(home.warehouse_path(spec.dataset))
    plots = wh.read("SELECT count(*) AS n FROM items WHERE description IS NOT NULL")["n"].iloc[0]
    assert plots == 1591  # IMDb details for 1,591 movies
    build_sequences(home, spec)
    bad = wh.read("""SELECT count(*) AS n FROM (SELECT user_id, ts, lag(ts) OVER (PARTITION BY user_id ORDER BY position) AS prev
                     FROM sequences) WHERE prev > ts""")["n"].iloc[0]
    assert bad == 0


def test_movielens_1m_format(shared, home, tmp_path):
    """ML-1M reader on the real movies.dat/users.dat/posters with a small ratings.dat."""
    src = tmp_path / "ml1m"
    src.mkdir()
    for name in ("movies.dat", "users.dat"):
        (src / name).write_bytes((shared / "movielens_1m_posters" / name).read_bytes())
    (src / "posters").mkdir()
    for pid in (1, 2, 10):
        p = shared / "movielens_1m_posters" / "posters" / f"{pid}.jpg"
        if p.exists():
            (src / "posters" / p.name).write_bytes(p.read_bytes())
    (src / "ratings.dat").write_text(
        "1::1::5::978300760\n1::10::3::978302109\n2::1::4::978301968\n2::99999::4::978301969\n"
    )
    spec = DatasetSpec(source="movielens-1m", path=str(src))
    land_raw(home, spec)
    md = build_warehouse(home, spec)
    assert md["items"] == 3883 and md["users"] == 6040 and md["interactions"] == 3
    assert md["rejected"] == 1 and md["reconciled"]
    assert md["item_images"] >= 2
