"""Export and load: DIR/model.safetensors (TransformerLens names) and DIR/layout.json.

Nothing is pickled: tensors go through safetensors, everything else is JSON. layout.json carries
the SHA-256 of the weights file, so a mismatched or corrupted pair is refused on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from raspicl.compiled import CompiledModel
from raspicl.compiler.describe import FORMAT_VERSION
from raspicl.errors import LoadError
from raspicl.model import ModelConfig, Transformer

WEIGHTS = "model.safetensors"
LAYOUT = "layout.json"


def save(compiled: CompiledModel, directory: str | Path) -> Path:
    """Write the model's weights and layout into `directory` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in
               compiled.model.state_dict().items()}
    meta = {"format": "raspicl", "format_version": str(FORMAT_VERSION),
            "dtype": str(compiled.model.dtype).removeprefix("torch.")}
    (out / WEIGHTS).write_bytes(_canonical_header(save_bytes(tensors, metadata=meta)))
    layout = dict(compiled.layout)
    layout["weights"] = {"file": WEIGHTS, "sha256": _sha256(out / WEIGHTS),
                         "dtype": meta["dtype"]}
    (out / LAYOUT).write_text(json.dumps(layout, indent=1) + "\n")
    return out


def load(directory: str | Path, device: str | torch.device | None = None) -> CompiledModel:
    """Load a model written by `save`; raise LoadError on anything missing or mismatched."""
    d = Path(directory)
    layout_path, weights_path = d / LAYOUT, d / WEIGHTS
    for path in (layout_path, weights_path):
        if not path.is_file():
            raise LoadError(f"{path} does not exist; a compiled model is a directory holding "
                            f"{WEIGHTS} and {LAYOUT} (raspicl compile ... --out DIR)")
    try:
        layout = json.loads(layout_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"{layout_path} is not valid JSON: {exc}") from exc
    if not isinstance(layout, dict) or layout.get("format_version") != FORMAT_VERSION:
        got = layout.get("format_version") if isinstance(layout, dict) else None
        raise LoadError(f"{layout_path}: format_version {got!r}, this raspicl reads "
                        f"{FORMAT_VERSION}")
    expected = layout.get("weights", {}).get("sha256")
    actual = _sha256(weights_path)
    if expected != actual:
        raise LoadError(f"{weights_path} does not match {layout_path}: its SHA-256 is "
                        f"{actual}, the layout expects {expected}. The files come from "
                        f"different compilations or one of them was modified")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise LoadError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    cfg = model_config(layout)
    model = Transformer(cfg)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    if missing or extra:
        raise LoadError(f"{weights_path}: tensors missing {missing[:5]}, unexpected "
                        f"{extra[:5]} for the architecture in {layout_path}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(state[name].shape):
            raise LoadError(f"{weights_path}: tensor {name} has shape {tuple(t.shape)}, the "
                            f"layout's architecture needs {tuple(state[name].shape)}")
    model = model.to(dtype=tensors["embed.W_E"].dtype)
    model.load_state_dict(tensors)
    if device is not None:
        model = model.to(device)
    return CompiledModel(model, layout)


def model_config(layout: dict) -> ModelConfig:
    """The ModelConfig that layout.json's architecture describes."""
    try:
        a = layout["architecture"]
        return ModelConfig(d_model=a["d_model"], n_layers=a["n_layers"], n_heads=a["n_heads"],
                           d_head=a["d_head"], d_mlp=a["d_mlp"], n_ctx=a["n_ctx"],
                           d_token=a["d_token"], d_out=a["d_out"],
                           ln_eps=tuple(a["layernorm"]["eps"]),
                           block_order=tuple(a["block_order"]))
    except (KeyError, TypeError) as exc:
        raise LoadError(f"layout.json's architecture is incomplete: missing {exc}") from exc


def _canonical_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in one fixed order, so that equal
    tensors and metadata give equal bytes: the safetensors library writes `__metadata__` from a
    Rust HashMap, whose order changes from run to run. Metadata keys are sorted, tensors follow
    in the order of their data; the header is padded with spaces to a multiple of 8 bytes, as
    the format asks. The data after the header is unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    for name in sorted(header, key=lambda k: (header[k]["data_offsets"], k)):
        ordered[name] = header[name]
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
