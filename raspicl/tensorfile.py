"""Reading a safetensors file as raspicl's loaders do: never pickle, and every failure a
LoadError that names the file and what the loader expected to find there."""

from __future__ import annotations

from pathlib import Path

import torch

from raspicl.errors import LoadError


def read_tensors(path: str | Path, what: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the metadata of the safetensors file `path`.

    what: the kind of file the caller expected (e.g. "a raspicl HuggingFace export"), named in
    the LoadError of a missing file. A file that exists but does not parse is a LoadError too.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: no such file" + (f" ({what})" if what else ""))
    try:
        with safe_open(str(p), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoadError(f"{p}: not a readable safetensors file: {exc}") from exc
    return tensors, metadata


def require(path: str | Path, tensors: dict, names) -> None:
    """LoadError naming the tensors of `names` that `tensors` (read from `path`) lacks."""
    missing = [k for k in names if k not in tensors]
    if missing:
        raise LoadError(f"{path}: missing tensor(s) {missing}")
