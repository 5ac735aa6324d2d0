"""Export and load: DIR/model.safetensors (TransformerLens names) and DIR/layout.json.

Nothing is pickled: tensors go through safetensors, everything else is JSON.

Integrity. layout.json carries one SHA-256 digest over both files (`integrity.digest`): over
the layout's canonical JSON (`canonical_layout`: the parsed layout without the digest itself,
keys sorted, no whitespace, ASCII), a newline, and the weights file's bytes. Editing any field
of layout.json (an eps, block_order, output.positions, a domain bound, a key another version
added) or replacing model.safetensors makes `load` refuse the pair with a LoadError that says
which file no longer matches. The digest detects accidents and uncoordinated edits; it is not a
signature (anyone can recompute it; docs/architecture.md §8 shows how).

Validation. Before anything is allocated, `load` checks the weights file's header (dtypes,
shapes, offsets within the file) and every field of the layout that raspicl reads against
raspicl.schema, including the architecture's sizes against the tensors' actual shapes, so a
malformed layout is a LoadError naming the field rather than a crash or a huge allocation.

Saving. `save` writes both files into a fresh directory beside the target and renames it into
place, so a crash or a kill during the write never leaves a half-written model and never
destroys the previous one. It never writes through a symbolic link. See `save`. A model of
the gpt2 target also gets DIR/hf/, the HuggingFace export (raspicl.interop.hf), in the same
directory rename.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from raspicl.arch import arch_of_layout
from raspicl.compiled import CompiledModel, coarsest, held_precision
from raspicl.errors import ExportError, LoadError, RaspiclError
from raspicl.groundtruth import GROUNDTRUTH, groundtruth_files
from raspicl.interop.hf import HF_DIR, HF_FILES
from raspicl.layout_file import no_duplicates, read_layout
from raspicl.layout_records import FORMAT_VERSION
from raspicl.model import ModelConfig, Transformer, check_dtype
from raspicl.schema import INTEGRITY_ALGORITHM, INTEGRITY_COVERS, validate_layout

__all__ = ["LAYOUT", "WEIGHTS", "ExportError", "canonical_layout", "in_directory",
           "layout_digest", "load", "model_config", "read_header", "save"]

WEIGHTS = "model.safetensors"
LAYOUT = "layout.json"

# safetensors dtype names: (bytes per element, torch dtype name)
_DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"),
    "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"),
    "U64": (8, "uint64"), "U32": (4, "uint32"), "U16": (2, "uint16"), "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the safetensors header declares it."""

    dtype: str  # the safetensors name: F64, F32, ...
    shape: tuple[int, ...]


# ---------------------------------------------------------------------------------- digest


def canonical_layout(layout: dict) -> bytes:
    """The bytes the integrity digest covers for the layout: `layout` without
    integrity.digest, as json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    allow_nan=True). Non-finite floats (a divisor never seen in calibration has abs_min
    inf) appear as Python writes them: Infinity, -Infinity, NaN. LoadError if the layout
    cannot be serialised (nested too deeply, say)."""
    body = dict(layout)
    integrity = body.get("integrity")
    if isinstance(integrity, dict):
        body["integrity"] = {k: v for k, v in integrity.items() if k != "digest"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LoadError(f"{LAYOUT} cannot be serialised for its digest: {exc}") from exc
    return text.encode("ascii")


def layout_digest(layout: dict, weights: bytes) -> str:
    """SHA-256 (hex) of canonical_layout(layout) + b"\\n" + the weights file's bytes. The
    canonical JSON is ASCII without raw newlines, so the newline separates the two parts."""
    h = hashlib.sha256(canonical_layout(layout))
    h.update(b"\n")
    h.update(weights)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- save


def save(compiled: CompiledModel, directory: str | Path) -> Path:
    """Write the model's weights and layout as `directory`/model.safetensors and
    `directory`/layout.json (and groundtruth.json, raspicl.groundtruth; hf/ for gpt2); return
    `directory` as a Path.

    Both files are written into a new directory beside the target (`.NAME.tmp-XXXXXXXX`, with
    the permissions a plain mkdir gives) and fsynced; that directory is then renamed into
    place. A target that does not exist is created by the rename (its parents are created
    first). An existing target must be a directory holding nothing but a previous model's
    files (layout.json, model.safetensors, groundtruth.json, hf/) or nothing; it is swapped
    with the new one atomically where Linux's renameat2(RENAME_EXCHANGE) is available, and
    otherwise renamed aside (`.NAME.old-XXXXXXXX`),
    the new one renamed in and the old one removed; a crash between those two renames leaves
    the previous model intact under the .old name. Either way, until the rename the previous
    model is untouched, and a failure while writing removes the temporary directory.

    ExportError when the model cannot be written: the target, or its layout.json or
    model.safetensors, is a symbolic link (save never writes through or replaces a link;
    pass the link's target); the target exists and is not a directory, or holds other files;
    the target is the current directory or contains it; the weights are not all float64 or
    all float32 (raspicl.model.check_dtype); the layout is one `load` would refuse; or the
    operating system fails (no space, no permission)."""
    out = Path(directory)
    _check_target(out)
    state = compiled.model.state_dict()
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    if len(dtypes) != 1:
        raise ExportError(f"cannot save to {out}: the model's tensors have mixed dtypes "
                          f"({', '.join(dtypes)}); a compiled model is stored in one dtype")
    try:
        check_dtype(compiled.model.dtype)
    except ValueError as exc:
        raise ExportError(f"cannot save to {out}: {exc}") from exc
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    meta = {"format": "raspicl", "format_version": str(FORMAT_VERSION), "dtype": dtypes[0]}
    weights = _canonical_header(save_bytes(tensors, metadata=meta))
    layout = _exported_layout(compiled.layout, weights, meta["dtype"], compiled.precision, out)
    try:
        validate_layout(layout, {name: tuple(t.shape) for name, t in tensors.items()})
    except LoadError as exc:
        raise ExportError(f"refusing to write {out}, which this raspicl could not load back: "
                          f"{exc}") from exc
    text = json.dumps(layout, indent=1, allow_nan=True) + "\n"
    files = {WEIGHTS: weights, LAYOUT: text.encode("ascii")}
    files.update(_hf_files(compiled, out))
    files.update(groundtruth_files(layout))  # DIR/groundtruth.json (raspicl.groundtruth)
    _write_directory(out, files)
    return out


def _hf_files(compiled: CompiledModel, out: Path) -> dict[str, bytes]:
    """DIR/hf/ for a gpt2 model (raspicl.interop.hf: a directory transformers.GPT2Model loads
    unmodified), nothing for other targets. A gpt2 model GPT2Model cannot express (more than
    one LayerNorm eps) is saved without it, with a warning naming the field."""
    if compiled.layout["architecture"].get("name") != "gpt2":
        return {}
    from raspicl.interop.gpt2form import from_compiled
    from raspicl.interop.hf import hf_files

    try:
        form = from_compiled(compiled)
    except RaspiclError as exc:
        warnings.warn(f"saved {out} without {HF_DIR}/ (the HuggingFace export): {exc}",
                      stacklevel=3)
        return {}
    return {f"{HF_DIR}/{name}": data for name, data in hf_files(form).items()}


def _exported_layout(layout: dict, weights: bytes, dtype: str, precision: str,
                     out: Path) -> dict:
    """The layout as the loader will parse it back (a JSON round trip: tuples become lists,
    keys strings), with `weights` (its file, digest, dtype and the precision its values hold:
    float32 for float32 weights widened to float64, CompiledModel.precision) and `integrity`
    (the digest over this very structure and `weights`) added at the end."""
    body = {k: v for k, v in layout.items() if k not in ("weights", "integrity")}
    try:
        parsed = json.loads(json.dumps(body, allow_nan=True))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ExportError(f"cannot save to {out}: the layout is not JSON: {exc}") from exc
    parsed["weights"] = {"file": WEIGHTS, "sha256": hashlib.sha256(weights).hexdigest(),
                         "dtype": dtype, "precision": precision}
    parsed["integrity"] = {"algorithm": INTEGRITY_ALGORITHM, "covers": INTEGRITY_COVERS}
    try:
        parsed["integrity"]["digest"] = layout_digest(parsed, weights)
    except LoadError as exc:
        raise ExportError(f"cannot save to {out}: {exc}") from exc
    return parsed


def _check_target(out: Path) -> None:
    """Refuse a target that save must not replace (see save)."""
    try:
        if out.is_symlink():
            raise ExportError(f"cannot save to {out}: it is a symbolic link (to "
                              f"{os.readlink(out)}); save does not write through links, pass "
                              f"the directory itself")
        if not os.path.lexists(out):
            return
        if not out.is_dir():
            raise ExportError(f"cannot save to {out}: it exists and is not a directory")
        cwd = Path.cwd().resolve()
        if out.resolve() == cwd or out.resolve() in cwd.parents:
            raise ExportError(f"cannot save to {out}: it is (or contains) the current "
                              f"directory, which save would replace; choose a subdirectory")
        for name in (WEIGHTS, LAYOUT):
            p = out / name
            if p.is_symlink():
                raise ExportError(f"cannot save to {out}: {p} is a symbolic link; save does "
                                  f"not write through links")
            if os.path.lexists(p) and not p.is_file():
                raise ExportError(f"cannot save to {out}: {p} exists and is not a file")
        others = sorted(set(os.listdir(out)) - {WEIGHTS, LAYOUT, GROUNDTRUTH})
        hf = out / HF_DIR  # a previous gpt2 model's HuggingFace export, and nothing else
        if HF_DIR in others and hf.is_dir() and not hf.is_symlink() \
                and set(os.listdir(hf)) <= set(HF_FILES) | {GROUNDTRUTH}:
            others.remove(HF_DIR)
    except OSError as exc:
        raise ExportError(f"cannot save to {out}: {exc}") from exc
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ExportError(f"cannot save to {out}: it holds other files ({shown}); save "
                          f"replaces the whole directory, so it writes only a new directory, "
                          f"an empty one or one holding nothing but a previous model")


def _write_directory(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a fresh sibling of `out`, then rename it to `out` (see save)."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_dir(parent, f".{out.name}.tmp-")
    except OSError as exc:
        raise ExportError(f"cannot save to {out}: {exc}") from exc
    placed = False  # whether tmp has become `out` (or, after an exchange, holds the old one)
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(exist_ok=True)  # hf/ of a gpt2 model
            _write_file(tmp / name, data)
        _fsync(tmp)
        if not os.path.lexists(out):
            os.rename(tmp, out)
            placed = True
        elif _exchange(tmp, out):
            placed = True
            _remove_old(tmp, out)  # tmp now holds the previous model
        else:
            old = parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)  # put the previous model back
                raise
            placed = True
            _remove_old(old, out)
        _fsync(parent)
    except OSError as exc:
        raise ExportError(f"cannot save to {out}: {exc}") from exc
    finally:
        if not placed:
            shutil.rmtree(tmp, ignore_errors=True)


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new, empty directory parent/prefix + 8 random hex digits, mode 0o777 & ~umask."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _write_file(path: Path, data: bytes) -> None:
    """Create `path` (never an existing file or link: mode 'xb'), write `data`, fsync."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(directory: Path) -> None:
    """Flush a directory's entries to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically with Linux's renameat2(RENAME_EXCHANGE); False
    where the C library, kernel or file system cannot, so the caller falls back to two
    renames. Other failures are OSError."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove_old(old: Path, out: Path) -> None:
    """Remove the previous model renamed aside; the new one is in place, so a failure here
    is a warning, not an error."""
    try:
        shutil.rmtree(old)
    except OSError as exc:
        warnings.warn(f"saved {out}, but could not remove the previous model at {old}: {exc}",
                      stacklevel=3)


# ---------------------------------------------------------------------------------- load


def load(directory: str | Path, device: str | torch.device | None = None) -> CompiledModel:
    """Load a model written by `save`; LoadError on anything missing, malformed or mismatched.

    In order, before the model is allocated: both files exist; layout.json is UTF-8 JSON (no
    duplicate keys) holding an object; model.safetensors' header is well formed, its tensors
    lie within the file and are all float64 or all float32; the layout passes
    raspicl.schema.validate_layout against those tensors' shapes; weights.sha256 matches the
    weights file and integrity.digest matches both files. Both files are read once, and the
    tensors are built from the very bytes that were hashed.

    Every LoadError names the model directory: one about a field of the layout
    ('layout.json: monitor is missing', from raspicl.schema) is reported as one about
    DIRECTORY/layout.json (`in_directory`)."""
    d = Path(directory)
    try:
        return _load(d, device)
    except LoadError as exc:
        exc.args = (in_directory(str(exc), d), *exc.args[1:])
        raise


def in_directory(message: str, directory: str | Path) -> str:
    """A load error about 'layout.json: ...' (raspicl.schema names the file only) as one about
    DIRECTORY/layout.json, so that the user knows which model it is; others (which already
    name their path) unchanged."""
    for name in (f"{LAYOUT}'s ", f"{LAYOUT}: ", f"{LAYOUT} "):
        if message.startswith(name):
            return f"{Path(directory) / LAYOUT}{message[len(LAYOUT):]}"
    return message


def _load(d: Path, device: str | torch.device | None) -> CompiledModel:
    """`load`'s checks and construction, in that order (its LoadErrors name files only)."""
    layout_path, weights_path = d / LAYOUT, d / WEIGHTS
    for path in (layout_path, weights_path):
        if not path.is_file():
            raise LoadError(f"{path} does not exist; a compiled model is a directory holding "
                            f"{WEIGHTS} and {LAYOUT} (raspicl compile ... --out DIR)")
    layout = read_layout(layout_path)
    try:
        weights = weights_path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{weights_path} cannot be read: {exc}") from exc
    header = read_header(weights, weights_path)
    dtype = _file_dtype(header, weights_path)
    validate_layout(layout, {name: t.shape for name, t in header.items()})
    if layout["weights"]["dtype"] != dtype:
        raise LoadError(f"{layout_path}: weights.dtype is {layout['weights']['dtype']} but the "
                        f"tensors of {weights_path} are {dtype}")
    precision = layout["weights"].get("precision", dtype)
    if coarsest(precision, dtype) != precision:
        raise LoadError(f"{layout_path}: weights.precision is {precision}, finer than the "
                        f"{dtype} tensors of {weights_path} can hold")
    _verify(layout, weights, layout_path, weights_path)
    try:
        tensors = load_bytes(weights)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise LoadError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    model = Transformer(model_config(layout))
    state = model.state_dict()
    if set(state) != set(tensors) or any(tuple(t.shape) != tuple(state[n].shape)
                                         for n, t in tensors.items()):  # schema.TENSORS drift
        raise LoadError(f"{weights_path}: its tensors do not fit raspicl.model.Transformer for "
                        f"the architecture in {layout_path}")
    model = model.to(dtype=tensors["embed.W_E"].dtype)
    model.load_state_dict(tensors)
    if device is not None:
        model = model.to(device)
    return CompiledModel(model, layout, precision=_precision(layout, tensors.values()))


def _precision(layout: dict, tensors) -> str:
    """The precision the loaded weights hold, which the monitor charges: weights.precision
    (float32 for float32 weights saved in float64), coarsened to float32 where every tensor
    holds float32 values only (a round trip saved by a raspicl that did not record it)."""
    recorded = layout["weights"].get("precision", layout["weights"]["dtype"])
    return coarsest(recorded, held_precision(tensors))


def model_config(layout: dict) -> ModelConfig:
    """The ModelConfig that layout.json's architecture describes (a validated layout)."""
    try:
        a = layout["architecture"]
        return ModelConfig(d_model=a["d_model"], n_layers=a["n_layers"], n_heads=a["n_heads"],
                           d_head=a["d_head"], d_mlp=a["d_mlp"], n_ctx=a["n_ctx"],
                           d_token=a["d_token"], d_out=a["d_out"],
                           ln_eps=tuple(a["layernorm"]["eps"]),
                           block_order=tuple(a["block_order"]), arch=arch_of_layout(a))
    except (KeyError, TypeError) as exc:
        raise LoadError(f"layout.json's architecture is incomplete: missing {exc}") from exc


def read_header(data: bytes, path: str | Path = WEIGHTS) -> dict[str, TensorInfo]:
    """The tensors a safetensors file's header declares, checked without allocating any:
    a known dtype, a shape of non-negative integers, and data_offsets [begin, end] inside the
    data section with end - begin = the tensor's size in bytes. So a header cannot make the
    loader allocate more than the file holds. LoadError otherwise."""
    def bad(why: str) -> LoadError:
        return LoadError(f"{path} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise bad(f"its header length {n} exceeds the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise bad(f"its header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    size = len(data) - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"tensor {name}: its entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES:
            raise bad(f"tensor {name}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_nonneg_int(s) for s in shape):
            raise bad(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_nonneg_int(o) for o in offsets) and offsets[0] <= offsets[1] <= size):
            raise bad(f"tensor {name}: data_offsets {offsets!r} do not lie within the "
                      f"{size} bytes of data")
        nbytes = math.prod(shape) * _DTYPES[dtype][0]
        if offsets[1] - offsets[0] != nbytes:
            raise bad(f"tensor {name}: shape {shape} of {dtype} needs {nbytes} bytes, its "
                      f"data_offsets span {offsets[1] - offsets[0]}")
        out[name] = TensorInfo(dtype, tuple(shape))
    return out


def _file_dtype(header: dict[str, TensorInfo], path: Path) -> str:
    """The one dtype of the file's tensors ('float64' or 'float32'), else LoadError."""
    names = sorted({_DTYPES[t.dtype][1] for t in header.values()})
    if not names:
        raise LoadError(f"{path} holds no tensors")
    if len(names) > 1:
        raise LoadError(f"{path}: its tensors have mixed dtypes ({', '.join(names)}); a "
                        f"compiled model is stored in one dtype, float64 or float32")
    dtype = getattr(torch, names[0], None)
    try:
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"a compiled model runs in float64 or float32, not {names[0]}")
        check_dtype(dtype)
    except ValueError as exc:
        raise LoadError(f"{path}: its tensors are {names[0]}: {exc}") from exc
    return names[0]


def _verify(layout: dict, weights: bytes, layout_path: Path, weights_path: Path) -> None:
    """weights.sha256 and integrity.digest against the files; LoadError naming the file that
    no longer matches."""
    actual = hashlib.sha256(weights).hexdigest()
    expected = layout["weights"]["sha256"]
    if actual != expected:
        raise LoadError(f"{weights_path} does not match {layout_path}: its SHA-256 is "
                        f"{actual}, the layout expects {expected}. The files come from "
                        f"different compilations or {WEIGHTS} was modified")
    digest = layout_digest(layout, weights)
    if digest != layout["integrity"]["digest"]:
        raise LoadError(f"{layout_path} was modified after export: its content no longer "
                        f"matches its integrity digest (the layout records "
                        f"{layout['integrity']['digest']}, its content and {WEIGHTS} give "
                        f"{digest}), while {WEIGHTS} is the file it was exported with. Compile "
                        f"the model again rather than editing layout.json")


def _is_nonneg_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


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
