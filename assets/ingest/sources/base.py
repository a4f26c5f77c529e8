"""Shared pieces of the source readers: the registry, landed-file specs and safe line reading."""

from __future__ import annotations

import functools
import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError
from ..frames import SourceData


@dataclass(frozen=True)
class FileSpec:
    """A file a source reads: where it is found, where it lands under raw/<dataset>/."""

    pattern: str  # glob relative to the source folder
    required: bool = True
    dest: str | None = None  # destination sub-folder (default: same relative path)


@dataclass(frozen=True)
class Download:
    """An official address of a public source, with its expected sha256 when known."""

    url: str
    filename: str
    sha256: str | None = None


@dataclass
class SourceReader:
    """One reader: which files it needs, how to read them once landed, where to download them."""

    name: str
    read: Callable[[Path, dict], SourceData]
    files: Callable[[Path, dict], list[tuple[Path, str]]] | None = None
    default_kcore: int = 0
    description: str = ""


SOURCES: dict[str, SourceReader] = {}


def register(reader: SourceReader) -> SourceReader:
    SOURCES[reader.name] = reader
    return reader


def get_source(name: str) -> SourceReader:
    from . import amazon, csvlogs, microlens, movielens, synthetic  # noqa: F401  (registers)

    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def glob_files(root: Path, specs: list[FileSpec]) -> list[tuple[Path, str]]:
    """Resolve FileSpecs under root: (source path, relative destination). Missing required -> error."""
    out: list[tuple[Path, str]] = []
    for spec in specs:
        matches = sorted(p for p in root.glob(spec.pattern) if p.is_file())
        if not matches and spec.required:
            raise SourceError(root, f"missing required file matching {spec.pattern!r}")
        for match in matches:
            rel = match.relative_to(root).as_posix()
            dest = f"{spec.dest}/{match.name}" if spec.dest else rel
            out.append((match, dest))
    return out


def find_one(root: Path, *patterns: str, required: bool = True) -> Path | None:
    for pattern in patterns:
        matches = sorted(root.glob(pattern))
        if matches:
            return matches[0]
    if required:
        raise SourceError(root, f"missing required file (looked for {', '.join(patterns)})")
    return None


def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.stat().st_size == 0:
        raise SourceError(path, "file is empty")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_lines(path: Path, encoding: str = "utf-8", skip_blank: bool = True) -> Iterator[tuple[int, str | None, bytes]]:
    """Yield (line number, decoded text or None if it does not decode, raw bytes).

    A line that does not decode is handed back with text None so the caller can reject it with
    its reason; a truncated or corrupt gzip stream raises one SourceError naming file and line.
    """
    line_no = 0
    try:
        with _open_bytes(path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                raw = raw.rstrip(b"\r\n")
                if skip_blank and not raw.strip():
                    continue
                try:
                    yield line_no, raw.decode(encoding), raw
                except UnicodeDecodeError:
                    yield line_no, None, raw
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(
            path, f"corrupt or truncated compressed file after line {line_no} ({exc})", line=line_no + 1
        ) from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Whole-file text, with a clear error for bad compression or encoding."""
    try:
        with _open_bytes(path) as fh:
            data = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(path, f"corrupt or truncated compressed file ({exc})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(path, f"not valid {encoding} text (byte {exc.start})", line=line) from None


def bad_encoding(encoding: str) -> str:
    return f"line is not valid {encoding} text"


def parse_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        return None


def unterminated_last_line(path: Path, line_no: int) -> bool:
    """Whether line `line_no` is the file's last and has no line break: a malformed one there was cut short."""
    stat = path.stat()
    return _unterminated_last(str(path), stat.st_size, stat.st_mtime_ns) == line_no


@functools.lru_cache(maxsize=32)
def _unterminated_last(path: str, size: int, mtime_ns: int) -> int | None:
    """The number of a file's last line when it has no line break, else None (read once per file version)."""
    lines, last = 0, b""
    try:
        with _open_bytes(Path(path)) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError):
        return None
    return lines + 1 if last and last != b"\n" else None


def split_lines(
    path: Path,
    sep: str,
    n_fields: int,
    table: str,
    rejects,
    encoding: str = "utf-8",
    exact: bool = True,
    skip_header: bool = False,
):
    """Yield (line_no, fields, text) for every line; lines that do not split into n_fields are
    rejected with their reason and yielded with fields None, so callers count every raw row."""
    first = True
    for line_no, text, raw in read_lines(path, encoding=encoding):
        if skip_header and first:
            first = False
            continue
        first = False
        if text is None:
            rejects.add(table, path.name, line_no, raw.decode(encoding, "replace"), bad_encoding(encoding))
            yield line_no, None, None
            continue
        fields = text.split(sep)
        if (exact and len(fields) != n_fields) or len(fields) < n_fields:
            cut = "; the file ends inside this line (cut short?)" if unterminated_last_line(path, line_no) else ""
            rejects.add(
                table,
                path.name,
                line_no,
                text,
                f"expected {n_fields} fields separated by {sep!r}, found {len(fields)}{cut}",
            )
            yield line_no, None, text
            continue
        yield line_no, fields, text
