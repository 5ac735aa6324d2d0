"""Regression prompts: the examples and query of one in-context task, and their token vectors.

The paper's format: x~_i = [0, x_i], y~_i = [y_i, 0_d], ..., x~_q = [0, x_q].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.lang.program import PromptFormat


@dataclass(frozen=True)
class Prompts:
    """A batch of regression prompts: X [B, n, d], y [B, n], xq [B, d] (w [B, d] if known)."""

    X: np.ndarray
    y: np.ndarray
    xq: np.ndarray
    w: np.ndarray | None = None

    @property
    def batch(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def d(self) -> int:
        return self.X.shape[2]

    def tokens(self) -> np.ndarray:
        """Token vectors [B, 2n+1, d+1] in the paper's alternating format."""
        B, n, d = self.X.shape
        tok = np.zeros((B, 2 * n + 1, d + 1), dtype=self.X.dtype)
        tok[:, 0:2 * n:2, 1:] = self.X
        tok[:, 1:2 * n:2, 0] = self.y
        tok[:, 2 * n, 1:] = self.xq
        return tok

    def prefix_queries(self) -> np.ndarray:
        """The x read at each x token and at the query: [B, n+1, d] (x_1..x_n, x_q)."""
        return np.concatenate([self.X, self.xq[:, None, :]], axis=1)


def random_prompts(batch: int, d: int, n: int, seed: int, noise: float = 0.0) -> Prompts:
    """x_i, x_q, w ~ N(0, I) and y_i = w^T x_i (+ noise * N(0, 1)), from a seeded generator."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((batch, d))
    X = rng.standard_normal((batch, n, d))
    xq = rng.standard_normal((batch, d))
    y = np.einsum("bnd,bd->bn", X, w) + noise * rng.standard_normal((batch, n))
    return Prompts(X, y, xq, w)


def check_tokens(tokens: np.ndarray, fmt: PromptFormat) -> None:
    """Raise ValueError unless tokens has shape [B, 2n+1, d+1] for this format."""
    if tokens.ndim != 3 or tokens.shape[1:] != (fmt.n_tokens, fmt.d_token):
        raise ValueError(
            f"tokens must have shape [batch, {fmt.n_tokens}, {fmt.d_token}] for d={fmt.d}, "
            f"n={fmt.n}; got {tuple(tokens.shape)}"
        )


@dataclass(frozen=True)
class PromptDistribution:
    """The prompts a compiled model must serve (the paper's setting): x ~ N(0, x_scale^2 I),
    w ~ N(0, w_scale^2 I) (w_scale is the paper's tau), y = w^T x + N(0, noise^2).

    Calibration samples every distribution between the noiseless standard one and this one
    (see raspicl.compiler.bounds), so a model compiled for x_scale=1.5, noise=1 also serves
    noiseless prompts with x ~ N(0, I).
    """

    x_scale: float = 1.5
    w_scale: float = 1.0
    noise: float = 1.0

    def __post_init__(self) -> None:
        for name in ("x_scale", "w_scale", "noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(f"PromptDistribution.{name} must be a finite number >= 0, "
                                 f"got {value!r}")

    def sample(self, batch: int, d: int, n: int, seed: int) -> Prompts:
        """`batch` prompts from this distribution, from a seeded generator."""
        rng = np.random.default_rng(seed)
        w = self.w_scale * rng.standard_normal((batch, d))
        X = self.x_scale * rng.standard_normal((batch, n, d))
        xq = self.x_scale * rng.standard_normal((batch, d))
        y = np.einsum("bnd,bd->bn", X, w) + self.noise * rng.standard_normal((batch, n))
        return Prompts(X, y, xq, w)

    def to_dict(self) -> dict:
        return {"x_scale": float(self.x_scale), "w_scale": float(self.w_scale),
                "noise": float(self.noise)}


def load_prompts(path) -> Prompts:
    """The prompts in a .npz (read without pickle) or .safetensors file holding arrays
    X [B, n, d], y [B, n] and xq [B, d] (other arrays are ignored), as float64 Prompts.
    Raises RaspiclError on a missing or unreadable file, a missing array, wrong shapes or
    dtypes, no prompts, or NaN or infinite entries."""
    import zipfile
    from pathlib import Path

    from raspicl.errors import RaspiclError

    p = Path(path)
    if not p.is_file():
        raise RaspiclError(f"calibration prompts {p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            data = np.load(p, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise RaspiclError(f"calibration prompts {p}: not a .npz archive (np.savez)")
            with data:
                arrays = {k: data[k] for k in ("X", "y", "xq") if k in data.files}
        except RaspiclError:
            raise
        except ValueError as exc:  # object arrays need pickle, which is refused
            if "pickle" in str(exc).lower():
                raise RaspiclError(f"calibration prompts {p}: holds pickled (object) data, "
                                   f"which raspicl refuses to load; save plain float arrays "
                                   f"(np.savez(path, X=X, y=y, xq=xq))") from exc
            raise RaspiclError(f"calibration prompts {p}: not a readable .npz file: "
                               f"{exc}") from exc
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise RaspiclError(f"calibration prompts {p}: not a readable .npz file: "
                               f"{exc}") from exc
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            arrays = {k: v for k, v in load_file(p).items() if k in ("X", "y", "xq")}
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise RaspiclError(f"calibration prompts {p}: not a readable .safetensors file: "
                               f"{exc}") from exc
    else:
        raise RaspiclError(f"calibration prompts {p}: expected a .npz or .safetensors file, "
                           f"got {p.suffix or 'no suffix'}")
    missing = [k for k in ("X", "y", "xq") if k not in arrays]
    if missing:
        raise RaspiclError(f"calibration prompts {p}: no array {', '.join(missing)} (the file "
                           f"must hold X [B, n, d], y [B, n] and xq [B, d])")
    for name, arr in arrays.items():
        if arr.dtype.kind not in "fiu":
            raise RaspiclError(f"calibration prompts {p}: {name} has dtype {arr.dtype}; "
                               f"expected real numbers")
    X, y, xq = (np.asarray(arrays[k], dtype=np.float64) for k in ("X", "y", "xq"))
    if X.ndim != 3:
        raise RaspiclError(f"calibration prompts {p}: X must be [B, n, d], got shape "
                           f"{tuple(X.shape)}")
    B, n, d = X.shape
    for name, arr, want in (("y", y, (B, n)), ("xq", xq, (B, d))):
        if arr.shape != want:
            raise RaspiclError(f"calibration prompts {p}: {name} must have shape {want} for X "
                               f"of shape {tuple(X.shape)}, got {tuple(arr.shape)}")
    if B < 1 or d < 1:
        raise RaspiclError(f"calibration prompts {p}: X of shape {tuple(X.shape)} holds no "
                           f"prompts (B and d must be at least 1)")
    for name, arr in (("X", X), ("y", y), ("xq", xq)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise RaspiclError(f"calibration prompts {p}: {name} holds {bad} NaN or infinite "
                               f"entries")
    return Prompts(X, y, xq)
