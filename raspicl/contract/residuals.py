"""What the walk reads from a forward pass: each value's rows, the rows a write lands on, an
MLP input's moments and sums, the largest entry a head's leak can carry. Taken from the whole
residual list (ListResiduals) or kept from each residual as it is fed and dropped once read
(StreamResiduals), with a ledger of the bytes held."""

from __future__ import annotations

import numpy as np

from raspicl.arch import LN_ANCHOR_ROWS


def leak_rows(layout: dict) -> list[int]:
    """The rows whose size bounds what a head's leak can carry (every row but the anchors)."""
    skip = {layout["fixed_rows"].get(n) for n in ("anchor_pos", "anchor_neg") + LN_ANCHOR_ROWS}
    return [r for r in range(layout["architecture"]["d_model"]) if r not in skip]


def division_rest(layout: dict, mlp_in: np.ndarray) -> np.ndarray:
    """Q = sum over the non-anchor rows of (row - mean)^2 at every token: [B, T]."""
    fixed = layout["fixed_rows"]
    D = mlp_in.shape[2]
    rest = [r for r in range(D) if r not in (fixed["anchor_pos"], fixed["anchor_neg"])]
    return ((mlp_in[:, :, rest] - mlp_in.mean(axis=2, keepdims=True)) ** 2).sum(axis=2)


def walk_reads(layout: dict) -> tuple[dict[int, list], dict[int, set], set[int], set[int]]:
    """What the walk reads from each residual: value labels by written_after, landing rows by
    residual, the residuals whose moments and division sums it needs."""
    mon = layout["monitor"]
    values: dict[int, list] = {}
    for label, v in mon["values"].items():
        values.setdefault(int(v["written_after"]), []).append(label)
    landings: dict[int, set] = {}
    moments: set[int] = set()
    divisions: set[int] = set()
    for rec in mon["instructions"]:
        run = int(rec["run"])
        for r in rec["reads"]:
            if r.get("temp_rows"):
                landings.setdefault(2 * run, set()).add(tuple(int(x) for x in r["temp_rows"]))
        slot_in = 2 * run + (0 if rec["stage"] == "attn" else 1)
        landings.setdefault(slot_in, set()).add(tuple(mon["values"][rec["dst"]]["rows"]))
        if rec["stage"] != "attn":
            moments.add(2 * run + 1)
            if rec.get("divisor") is not None:
                divisions.add(2 * run + 1)
    if through_layernorm(layout):  # every sublayer's input and the readout's
        moments.update(range(1 + 2 * len(layout["architecture"]["block_order"])))
    return values, landings, moments, divisions


def through_layernorm(layout: dict) -> bool:
    """Every read goes through a LayerNorm kept at scale by constant anchors (gpt2)."""
    return bool(layout["architecture"]["layernorm"]["before_attention"])


class Ledger:
    """The bytes of the arrays a walk holds, and the most it held at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def add(self, n: int) -> None:
        self.now += n
        self.peak = max(self.peak, self.now)

    def sub(self, n: int) -> None:
        self.now -= n


class ListResiduals:
    """What the walk reads, taken from the whole list of residuals of a forward pass."""

    def __init__(self, layout: dict, residuals: list[np.ndarray]):
        self.layout, self.res = layout, residuals
        self.B = residuals[0].shape[0]
        self.d_model = residuals[0].shape[2]
        self._spans = spans(leak_rows(layout))
        self._moments: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.ledger = Ledger()  # what the walk adds; the list itself is the caller's

    def leak_size(self, residual: int) -> np.ndarray:
        """Per prompt, the largest |entry| of residuals[residual] over the rows a head's leak
        can carry (inf where a NaN is, the largest float where an infinity is): [B]."""
        return largest_in(self.res[residual], self._spans)

    def value(self, label: str) -> np.ndarray:
        v = self.layout["monitor"]["values"][label]
        return self.res[v["written_after"]][:, :, v["rows"]]

    def old(self, rows, residual: int) -> np.ndarray:
        """What `rows` hold in residuals[residual]."""
        return self.res[residual][:, :, list(rows)]

    def moments(self, residual: int) -> tuple[np.ndarray, np.ndarray]:
        if residual not in self._moments:
            r = self.res[residual]
            self._moments[residual] = (np.abs(r.mean(axis=2)), r.var(axis=2))
        return self._moments[residual]

    def abs_sum(self, residual: int) -> np.ndarray:
        """sum_j |row j| at every token of residuals[residual]: [B, T]."""
        return np.abs(self.res[residual]).sum(axis=2)

    def division_rest(self, residual: int) -> np.ndarray:
        return division_rest(self.layout, self.res[residual])

    def release(self, label: str) -> None:
        """The walk no longer needs `label`'s value (nothing to free: the list holds it)."""

    def release_residual(self, residual: int) -> None:
        """The walk no longer reads residuals[residual]."""
        self._moments.pop(residual, None)


class StreamResiduals:
    """What the walk reads, kept from each residual as it is fed (see ContractStream), and
    dropped once the walk has read it (`release`, `release_residual`)."""

    def __init__(self, layout: dict):
        self.layout = layout
        self.d_model = layout["architecture"]["d_model"]
        self._values_at, self._landings_at, self._moments_at, self._div_at = walk_reads(layout)
        self._spans = spans(leak_rows(layout))
        self.fed = 0
        self.B: int | None = None
        # per attention input (residuals[2 run], what a block's heads read): the leak's size
        self._leak_size: dict[int, np.ndarray] = {}
        self._values: dict[str, np.ndarray] = {}
        self._old: dict[int, dict[tuple, np.ndarray]] = {}
        self._moments: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._div: dict[int, np.ndarray] = {}
        self._through = through_layernorm(layout)
        self._abs_sum: dict[int, np.ndarray] = {}
        self.ledger = Ledger()

    def feed(self, r: np.ndarray) -> None:
        i = self.fed
        if self.B is None:
            self.B = r.shape[0]
        if r.shape[0] != self.B or r.shape[2] != self.d_model:
            raise ValueError(f"residual {i} has shape {tuple(r.shape)}; the first had batch "
                             f"{self.B} and the model's d_model is {self.d_model}")
        if i % 2 == 0:  # (an MLP's input and the last residual no head reads)
            self._leak_size[i] = largest_in(r, self._spans)
        mon = self.layout["monitor"]["values"]
        for label in self._values_at.get(i, ()):
            self._values[label] = self._kept(r[:, :, mon[label]["rows"]])
        for rows in self._landings_at.get(i, ()):
            self._old.setdefault(i, {})[rows] = self._kept(r[:, :, list(rows)])
        if i in self._moments_at:
            self._moments[i] = (self._kept(np.abs(r.mean(axis=2))), self._kept(r.var(axis=2)))
            self._abs_sum[i] = self._kept(np.abs(r).sum(axis=2))
        if i in self._div_at:
            self._div[i] = self._kept(division_rest(self.layout, r))
        self.fed += 1

    def _kept(self, a: np.ndarray) -> np.ndarray:
        self.ledger.add(a.nbytes)
        return a

    def leak_size(self, residual: int) -> np.ndarray:
        """Per prompt, the largest |entry| of residuals[residual] over the rows a head's leak
        can carry (as ListResiduals.leak_size): [B]."""
        return self._leak_size[residual]

    def value(self, label: str) -> np.ndarray:
        return self._values[label]

    def old(self, rows, residual: int) -> np.ndarray:
        return self._old[residual][tuple(rows)]

    def moments(self, residual: int) -> tuple[np.ndarray, np.ndarray]:
        return self._moments[residual]

    def abs_sum(self, residual: int) -> np.ndarray:
        return self._abs_sum[residual]

    def division_rest(self, residual: int) -> np.ndarray:
        return self._div[residual]

    def release(self, label: str) -> None:
        a = self._values.pop(label, None)
        if a is not None:
            self.ledger.sub(a.nbytes)

    def release_residual(self, residual: int) -> None:
        """The walk no longer reads residuals[residual]: its landings, moments and sums go."""
        held = list(self._old.pop(residual, {}).values())
        held += list(self._moments.pop(residual, ()))
        for table in (self._div, self._abs_sum):
            if residual in table:
                held.append(table.pop(residual))
        for a in held:
            self.ledger.sub(a.nbytes)


def spans(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted rows as runs of consecutive rows [start, stop)."""
    spans: list[tuple[int, int]] = []
    for r in sorted(rows):
        if spans and spans[-1][1] == r:
            spans[-1] = (spans[-1][0], r + 1)
        else:
            spans.append((r, r + 1))
    return spans


def largest_in(a: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """largest(a[..., rows]) for the rows of `spans`, read through views of each run (no
    copy of the rows, no |a| array): max |x| = max(max x, -min x), NaN kept by both."""
    B = a.shape[0]
    m = np.zeros(B)
    for start, stop in spans:
        part = a[:, :, start:stop]
        if part.size:
            m = np.maximum(m, np.maximum(part.max(axis=(1, 2)), -part.min(axis=(1, 2))))
    m = np.where(m == np.inf, np.finfo(np.float64).max, m)
    return np.where(np.isnan(m), np.inf, m)


def largest(a: np.ndarray) -> np.ndarray:
    """Per prompt, max |a| over tokens and rows as np.nan_to_num(|a|, nan=inf).max would give
    it (inf where a NaN is, the largest float where an infinity is), without the elementwise
    copies: max propagates a NaN, and only the maxima are mapped."""
    m = np.abs(a).max(axis=(1, 2), initial=0.0) if a.size else np.zeros(a.shape[0])
    m = np.where(m == np.inf, np.finfo(np.float64).max, m)
    return np.where(np.isnan(m), np.inf, m)
