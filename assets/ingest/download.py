"""Streamed, resumable downloads of the public sources, with a progress bar and checksum check."""

from __future__ import annotations

import hashlib
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from .errors import SourceError
from .sources.base import Download

OFFICIAL: dict[str, list[Download]] = {
    "movielens-100k": [Download("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "ml-100k.zip")],
    "movielens-1m": [Download("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "ml-1m.zip")],
    "amazon-s3rec": [
        Download(
            "https://raw.githubusercontent.com/aHuiWang/CIKM2020-S3Rec/master/data/Beauty.txt",
            "Beauty.txt",
            "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        ),
        Download(
            "https://raw.githubusercontent.com/aHuiWang/CIKM2020-S3Rec/master/data/Beauty_item2attributes.json",
            "Beauty_item2attributes.json",
            "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
        ),
    ],
    "amazon-2014": [
        Download(
            "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty_5.json.gz",
            "reviews_Beauty_5.json.gz",
        ),
        Download(
            "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Beauty.json.gz", "meta_Beauty.json.gz"
        ),
    ],
}


def download(url: str, dest: Path, sha256: str | None = None, chunk: int = 1 << 16, timeout: float = 60) -> Path:
    """Fetch url to dest, resuming a partial `.part` file with an HTTP Range request."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if sha256 is None or _sha(dest) == sha256:
            return dest
        dest.unlink()
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resumed = resp.status == 206
            if not resumed:
                have = 0
            total = int(resp.headers.get("Content-Length") or 0) + have
            with (
                open(part, "ab" if resumed else "wb") as fh,
                tqdm(total=total or None, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                while block := resp.read(chunk):
                    fh.write(block)
                    bar.update(len(block))
    except OSError as exc:
        raise SourceError(url, f"download failed ({exc}); partial data kept in {part} for resume") from None
    if sha256 is not None and (got := _sha(part)) != sha256:
        part.unlink()
        raise SourceError(url, f"checksum mismatch: expected sha256 {sha256}, got {got}")
    part.rename(dest)
    return dest


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch_source(source: str, dest: Path) -> Path:
    """Download a public source's official files into dest (zip archives are extracted)."""
    if source not in OFFICIAL:
        raise ValueError(f"no official download address known for {source!r}")
    for spec in OFFICIAL[source]:
        path = download(spec.url, dest / spec.filename, spec.sha256)
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for member in zf.infolist():
                    name = Path(member.filename).name
                    if member.is_dir() or not name:
                        continue
                    (dest / name).write_bytes(zf.read(member))  # flatten: no path traversal
    return dest
