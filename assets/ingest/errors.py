"""One clear error for bad input: it names the file (and the line, where there is one)."""

from __future__ import annotations

from pathlib import Path


class SourceError(ValueError):
    """A source file that cannot be read at all (as opposed to single bad rows, which are rejected)."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")

    def relocated(self, landed: str | Path, origin: str | Path) -> SourceError:
        """The same error naming the user's file instead of its landed copy under raw/."""
        path = self.path
        if origin and Path(origin).is_dir() and path.startswith(str(landed)):
            path = str(Path(origin) / Path(path).relative_to(landed))
        return SourceError(path, self.message, self.line)
