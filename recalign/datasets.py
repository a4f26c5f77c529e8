"""The datasets the benchmarks and docs name, and where they are found: a source reader and a folder."""

from __future__ import annotations

from pathlib import Path

from .settings import shared_data_dir

# name: (source reader, folder under ../shared/data; None for a generated dataset)
KNOWN = {
    "amazon-beauty": ("amazon-s3rec", "amazon_beauty"),
    "amazon-sports": ("amazon-s3rec", "amazon_sports"),
    "movielens-100k": ("movielens-100k", "movielens_100k"),
    "movielens-1m": ("movielens-1m", "movielens_1m_posters"),
    "microlens-50k": ("microlens", "microlens_50k"),
    "synthetic": ("synthetic", None),
}


def locate(name: str, path: str | None = None) -> tuple[str, str | None]:
    """(source, folder) of a known dataset; `path` overrides the folder. A clear error when it is not there."""
    if name not in KNOWN:
        raise ValueError(f"unknown dataset {name!r}: one of {', '.join(sorted(KNOWN))}")
    source, folder = KNOWN[name]
    if folder is None:
        return source, path
    if path is None:
        shared = shared_data_dir()
        if shared is None:
            raise FileNotFoundError(
                f"{name}: no folder given and no ../shared/data here; pass --path <folder with the {source} files>"
            )
        path = str(shared / folder)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{name}: folder {path} does not exist")
    return source, path
