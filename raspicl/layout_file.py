"""Reading layout.json strictly: `read_layout`, UTF-8 JSON with no duplicate key and an object at
the top, or a LoadError naming the file (`no_duplicates` is its json hook, which raspicl.export
also reads the weights file's header with).

raspicl.export (loading a model) and raspicl.groundtruth (checking groundtruth.json against
the layout beside it) both read it so; it is a module of its own, below both, because export
imports groundtruth to write that file.
"""

from __future__ import annotations

import json
from pathlib import Path

from raspicl.errors import LoadError


def read_layout(path: Path) -> dict:
    """layout.json parsed: UTF-8, JSON, no duplicate keys, an object at the top."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise LoadError(f"{path} cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise LoadError(f"{path} is not UTF-8 text: {exc}") from exc
    try:
        layout = json.loads(text, object_pairs_hook=no_duplicates)
    except RecursionError as exc:
        raise LoadError(f"{path} is nested too deeply to be a layout") from exc
    except ValueError as exc:  # JSONDecodeError, a duplicate key, an integer of 4300+ digits
        raise LoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(layout, dict):
        kind = {list: "an array", str: "a string"}.get(type(layout), "a scalar")
        raise LoadError(f"{path}: the top level must be an object, got {kind}")
    return layout


def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key given twice is an error, not the last one silently (a
    reader that keeps the first would see another layout than the digest covers)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out
