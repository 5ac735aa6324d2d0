"""A disguised model's layout: layout.json's `disguise` record (`DisguiseRecord`, read and
checked by `disguise_record`) and the plain layout its runtime monitor reads (`plain_layout`).

raspicl.disguise makes disguised models (its module doc says how, and why the monitor's
rounding is multiplied by ROTATION_ROUNDING); raspicl.compiled and raspicl.groundtruth only read
them, through this module, which imports neither: raspicl.disguise builds a CompiledModel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.errors import RaspiclError

DISGUISE = "disguise"
# Q is orthogonal to this much: checked when a record is read back
ORTHOGONAL_TOLERANCE = 1e-12
# The monitor's rounding factor is multiplied by this for a disguised model (module doc)
ROTATION_ROUNDING = 4.0


@dataclass(frozen=True)
class DisguiseRecord:
    """layout.json's `disguise` record: the disguised residual is [plain, 0_pad] @ basis."""

    seed: int
    pad: int
    d_plain: int
    n_heads_plain: int
    pinned: tuple[int, ...]
    basis: np.ndarray  # [d', d'] orthogonal, d' = d_plain + pad

    def plain(self, resid: np.ndarray) -> np.ndarray:
        """A disguised residual [..., d'] in the plain basis [..., d_plain]."""
        return (resid @ self.basis.T)[..., :self.d_plain]

    def disguised(self, resid: np.ndarray) -> np.ndarray:
        """A plain residual [..., d_plain] in the disguised basis [..., d']."""
        pad = np.zeros(resid.shape[:-1] + (self.basis.shape[0] - self.d_plain,))
        return np.concatenate([resid, pad], axis=-1) @ self.basis

    def to_json(self) -> dict:
        return {"seed": self.seed, "pad": self.pad, "d_plain": self.d_plain,
                "n_heads_plain": self.n_heads_plain, "pinned": list(self.pinned),
                "basis": [[float(x) for x in row] for row in self.basis]}


def disguise_record(layout: dict) -> DisguiseRecord | None:
    """The layout's disguise record, checked (None for a plain model). RaspiclError naming
    the field if it is malformed: its basis must be a [d_model, d_model] orthogonal matrix
    that fixes the all-ones vector and the pinned rows."""
    rec = layout.get(DISGUISE)
    if rec is None:
        return None
    where = "layout.json: disguise"
    d = int(layout["architecture"]["d_model"])
    try:
        seed, pad, d_plain = int(rec["seed"]), int(rec["pad"]), int(rec["d_plain"])
        n_heads_plain = int(rec["n_heads_plain"])
        pinned = tuple(int(r) for r in rec["pinned"])
        basis = np.asarray(rec["basis"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise RaspiclError(f"{where} is malformed: {exc!r}") from exc
    if d_plain + pad != d or pad < 0:
        raise RaspiclError(f"{where}.d_plain + pad must equal architecture.d_model = {d}, got "
                           f"{d_plain} + {pad}")
    if basis.shape != (d, d) or not np.isfinite(basis).all():
        raise RaspiclError(f"{where}.basis must be a finite [{d}, {d}] matrix, got shape "
                           f"{basis.shape}")
    if np.abs(basis @ basis.T - np.eye(d)).max() > ORTHOGONAL_TOLERANCE:
        raise RaspiclError(f"{where}.basis is not orthogonal")
    if np.abs(np.ones(d) @ basis - np.ones(d)).max() > ORTHOGONAL_TOLERANCE * d:
        raise RaspiclError(f"{where}.basis does not fix the all-ones vector (LayerNorm would "
                           f"not commute with it)")
    for r in pinned:
        if not 0 <= r < d_plain or basis[r, r] != 1.0:
            raise RaspiclError(f"{where}.pinned row {r} is not left on its axis by the basis")
    return DisguiseRecord(seed, pad, d_plain, n_heads_plain, pinned, basis)


def plain_layout(layout: dict, rec: DisguiseRecord) -> dict:
    """The layout of the model before it was disguised, as the runtime monitor reads it
    (d_model, n_heads and row_names of the plain model; no disguise record), with the
    rounding factor multiplied by ROTATION_ROUNDING (module doc, "The monitor")."""
    out = {k: v for k, v in layout.items() if k != DISGUISE}
    out["architecture"] = {**layout["architecture"], "d_model": rec.d_plain,
                           "n_heads": rec.n_heads_plain}
    out["row_names"] = list(layout["row_names"])[:rec.d_plain]
    out["compiler"] = {**layout["compiler"],
                       "rounding_factor": layout["compiler"]["rounding_factor"]
                       * ROTATION_ROUNDING}
    return out
