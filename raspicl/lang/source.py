"""Where in the user's code an op or register was created, so errors point back to it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

_LANG_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SourceLocation:
    """A file and line in the program's source."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


UNKNOWN = SourceLocation("<unknown>", 0)


def caller_location() -> SourceLocation:
    """The first stack frame outside raspicl's language package: the line that called it."""
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        try:
            inside = path.resolve().parent == _LANG_DIR
        except OSError:
            inside = False
        if not inside:
            return SourceLocation(_short(path), frame.f_lineno)
        frame = frame.f_back
    return UNKNOWN


def _short(path: Path) -> str:
    """A path relative to the working directory when it lies below it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
