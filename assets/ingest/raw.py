"""Land a source's files under $RECALIGN_HOME/raw/<dataset>/ with a manifest (path, bytes, sha256)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from .errors import SourceError
from .sources.base import get_source

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def land(source: str, path: str | Path | None, dest: Path, options: dict | None = None) -> dict:
    """Copy the source's files into dest (unchanged files are not copied again); write the manifest."""
    options = options or {}
    reader = get_source(source)
    root = Path(path).expanduser().resolve() if path else None
    if root is not None and not root.is_dir():
        raise SourceError(root, "dataset folder not found")
    files = reader.files(root, options)
    old = {}
    if (dest / MANIFEST).exists():
        old = {f["path"]: f for f in json.loads((dest / MANIFEST).read_text())["files"]}
    entries, copied = [], 0
    for src, rel in tqdm(files, desc=f"landing {source}", unit="file", disable=len(files) < 50):
        target = dest / rel
        size = src.stat().st_size
        prev = old.get(rel)
        if prev and target.exists() and target.stat().st_size == size and prev.get("src_mtime") == src.stat().st_mtime:
            entries.append(prev)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        copied += 1
        entries.append({"path": rel, "bytes": size, "sha256": sha256_file(target), "src_mtime": src.stat().st_mtime})
    manifest = {
        "source": source,
        "origin": str(root) if root else "(generated)",
        "options": options,
        "files": sorted(entries, key=lambda e: e["path"]),
        "total_bytes": sum(e["bytes"] for e in entries),
        "copied": copied,
    }
    manifest["fingerprint"] = hashlib.sha256(
        json.dumps([(e["path"], e["sha256"]) for e in manifest["files"]]).encode()
    ).hexdigest()
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
