"""A compiled model's weights by their written entries, before (or instead of) the dense tensors.

A compiled transformer's block matrices are almost all zero (sherman_morrison d = 32: 1.5 GB of
dense float64 weights hold about 70 000 nonzero entries). The compiler writes each block's
W_Q, W_K, W_V, W_O, W_in and W_out entry by entry into a `SparseArray` and keeps the small
tensors (embeddings, biases) dense; `SparseWeights` holds the result and gives

- `transformer()`: the dense raspicl.model.Transformer, with exactly the bytes the compiler
  would have written into arrays of zeros (the same float operations on the same entries, in
  the same order, explicit zeros included);
- `plan()`: the compact execution plan (raspicl.compact) of those weights, made without the
  dense tensors: each sublayer's tensors restricted to the residual rows and MLP units they
  touch are handed to raspicl.compact's own sublayer planners, and the rows they return are
  mapped back. Every row the restriction leaves out is zero in all of that sublayer's tensors,
  which the planners drop anyway, so the plan equals CompactPlan(transformer()) tensor for
  tensor (tests/test_sparse_weights.py checks it on the bundled programs). An MLP whose kept
  matrix is large and which the planner would gather or scatter (compact.Gathered,
  compact.Scattered) is given that form here straight from its entries (`_gathered_mlp`, the
  planner's rule: compact.sparse_form): its kept matrix alone can hold ~9 M entries
  (sherman_morrison d = 32) of which 25 000 are nonzero;
- `shell()`: a Transformer whose embedding and readout are real and whose blocks are on the
  meta device (no memory): what running the plan needs (Transformer.stream with a plan reads
  no block tensor).

raspicl.compiled.CompiledModel runs on the plan and the shell, and builds the dense model only
when something asks for it (`.model`, saving, exporting, the dense pass).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch

from raspicl.compact import (
    SPARSE_MIN_ENTRIES,
    CompactPlan,
    MLPPlan,
    _attn_plan,
    _mlp_plan,
    sparse_form_of_entries,
)
from raspicl.model import LayerNorm, ModelConfig, Transformer

# The block tensors kept by entries; everything else of a block (biases) is dense.
SPARSE_TENSORS = ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")


class SparseArray:
    """An array of zeros of `shape`, written entry by entry (a[i, j] = v, a[i, j] += v, the
    same float operations as on a numpy array of zeros), holding only the entries written."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(n) for n in shape)
        self.entries: dict[tuple[int, ...], float] = {}

    def __getitem__(self, index: tuple[int, ...]) -> float:
        return self.entries.get(index, 0.0)

    def __setitem__(self, index: tuple[int, ...], value: float) -> None:
        self.entries[index] = float(value)

    def set_entries(self, prefix: tuple[int, ...],
                    entries: dict[tuple[int, ...], float]) -> None:
        """a[prefix] = the block of zeros with `entries` written (a head's W_Q or W_K,
        gadgets.attention.pattern_entries), for a block mostly zero: its nonzero entries, in
        the block's row-major order (the zeros it would write are the array's own)."""
        for idx in sorted(entries):
            if entries[idx] != 0.0:
                self.entries[prefix + idx] = float(entries[idx])

    def add_terms(self, terms) -> None:
        """a[index] += value for each (index, value) of `terms` in order: the same float
        operations as the item-by-item `+=` (a sum starts at the array's 0.0), without a
        method call per entry (a large MLP's W_in has ~10^5 of them)."""
        entries = self.entries
        for index, value in terms:
            entries[index] = float(entries.get(index, 0.0) + value)

    def nonzero(self) -> dict[tuple[int, ...], float]:
        """The entries that are not zero (what np.array_equal of two dense arrays compares)."""
        return {k: v for k, v in self.entries.items() if v != 0.0}

    def dense(self) -> np.ndarray:
        """The numpy array of zeros with the entries written."""
        out = np.zeros(self.shape)
        if self.entries:
            index, values = self.coordinates()
            out[tuple(index.T)] = values
        return out

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """The written entries as an index array [n, ndim] and their values [n], checked to
        lie inside the shape."""
        index = np.array(list(self.entries), dtype=np.int64).reshape(-1, len(self.shape))
        values = np.fromiter(self.entries.values(), dtype=np.float64, count=len(index))
        if len(index) and (index.min() < 0 or (index >= np.array(self.shape)).any()):
            raise AssertionError(f"an entry outside the array's shape {self.shape}")
        return index, values


@dataclass(frozen=True)
class Entries:
    """A tensor by its written entries: index [n, ndim] (long), values [n] (explicit zeros
    included, so that the dense tensor has the bytes the compiler wrote)."""

    shape: tuple[int, ...]
    index: torch.Tensor
    values: torch.Tensor

    @staticmethod
    def of(a: SparseArray) -> Entries:
        index, values = a.coordinates()
        return Entries(a.shape, torch.from_numpy(index), torch.from_numpy(values))

    def to(self, dtype: torch.dtype) -> Entries:
        return Entries(self.shape, self.index, self.values.to(dtype))

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.values.dtype)
        out[tuple(self.index.T)] = self.values
        return out

    def restricted(self, axes: dict[int, torch.Tensor]) -> torch.Tensor:
        """The dense tensor on the given indices of some axes (axis -> sorted indices, which
        must hold every nonzero entry's index on that axis)."""
        inside = torch.ones(len(self.values), dtype=torch.bool)
        for axis, kept in axes.items():
            inside &= torch.isin(self.index[:, axis], kept)
        if bool((self.values[~inside] != 0).any()):
            raise AssertionError("a nonzero entry outside the rows and units kept")
        index, values = self.index[inside], self.values[inside]  # explicit zeros too (-0.0)
        shape = list(self.shape)
        cols = list(index.T)
        for axis, kept in axes.items():
            shape[axis] = len(kept)
            cols[axis] = torch.searchsorted(kept, cols[axis].contiguous())
        out = torch.zeros(shape, dtype=values.dtype)
        out[tuple(cols)] = values
        return out

    def used(self, axis: int) -> torch.Tensor:
        """The sorted indices on `axis` of the nonzero entries."""
        return torch.unique(self.index[self.values != 0, axis])


@dataclass(frozen=True)
class SparseWeights:
    """A compiled model's weights (module doc): `dense` holds the named tensors kept whole,
    `entries` the block matrices by entries; a state_dict name in neither is a LayerNorm
    weight of ones or else zeros, the values the gadgets assume (raspicl.model)."""

    cfg: ModelConfig
    dense: dict[str, torch.Tensor]
    entries: dict[str, Entries]

    @staticmethod
    def of(cfg: ModelConfig, arrays: dict[str, np.ndarray | SparseArray]) -> SparseWeights:
        """From what the compiler wrote: numpy arrays (kept dense) and SparseArrays."""
        dense, entries = {}, {}
        for name, a in arrays.items():
            if isinstance(a, SparseArray):
                entries[name] = Entries.of(a)
            else:
                dense[name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        return SparseWeights(cfg, dense, entries)

    @property
    def dtype(self) -> torch.dtype:
        return self.dense["embed.W_E"].dtype

    def to(self, dtype: torch.dtype) -> SparseWeights:
        """The weights in `dtype`, each value converted as Transformer.to would convert it."""
        if dtype == self.dtype:
            return self
        return SparseWeights(self.cfg, {k: v.to(dtype) for k, v in self.dense.items()},
                             {k: e.to(dtype) for k, e in self.entries.items()})

    def transformer(self) -> Transformer:
        """The dense model (module doc)."""
        return self._model(dense_blocks=True)

    def shell(self) -> Transformer:
        """The model with real embedding and readout and its blocks on the meta device."""
        return self._model(dense_blocks=False)

    def _model(self, dense_blocks: bool) -> Transformer:
        with torch.device("meta"):
            model = Transformer(self.cfg)
        ones = {f"{name}.w" for name, m in model.named_modules() if isinstance(m, LayerNorm)}
        state = {}
        for name, meta in model.state_dict().items():
            if not dense_blocks and name.startswith("blocks."):
                state[name] = torch.empty(meta.shape, dtype=self.dtype, device="meta")
            elif name in self.dense:  # a copy: the dense model's weights are its own
                state[name] = self.dense[name].clone() if dense_blocks else self.dense[name]
            elif name in self.entries:
                state[name] = self.entries[name].dense()
            else:
                state[name] = (torch.ones if name in ones else torch.zeros)(meta.shape,
                                                                            dtype=self.dtype)
            if tuple(state[name].shape) != tuple(meta.shape):
                raise AssertionError(f"{name}: built {tuple(state[name].shape)}, the model has "
                                     f"{tuple(meta.shape)}")
        unknown = (set(self.dense) | set(self.entries)) - set(state)
        if unknown:
            raise AssertionError(f"built weights the model does not have: {sorted(unknown)}")
        model.load_state_dict(state, assign=True)
        return model.requires_grad_(False)

    def n_params(self) -> int:
        """Stored parameters, as Transformer.n_params counts them."""
        with torch.device("meta"):
            return Transformer(self.cfg).n_params()

    def plan(self, shell: Transformer | None = None) -> CompactPlan:
        """The compact plan of these weights (module doc); `shell` as `shell()` gives it."""
        shell = self.shell() if shell is None else shell
        if not CompactPlan.supports(shell):
            raise ValueError(f"the compact plan runs paper models only, not "
                             f"{self.cfg.arch.name}")
        attns = [self._attn(f"blocks.{layer}.") for layer in range(self.cfg.n_layers)]
        mlps = [self._mlp(f"blocks.{layer}.") for layer in range(self.cfg.n_layers)]
        return CompactPlan.from_sublayers(self.cfg.order(), attns, mlps, shell)

    def _vector(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A dense tensor of the weights (zeros where none was written)."""
        return self.dense[name] if name in self.dense else torch.zeros(shape, dtype=self.dtype)

    def _attn(self, p: str):
        """The attention plan, from its tensors on the rows and head columns they touch: W_Q
        and W_K on their rows, W_V on its own (the planner lays each one's kept columns side
        by side), W_O and b_O on the rows they write; the query and key columns on those
        any head's W_Q, W_K, b_Q or b_K uses, the value columns on those W_V, b_V or W_O
        uses (a column outside is zero in all of them, which the planner drops anyway)."""
        cfg = self.cfg
        H, D, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        W_Q, W_K, W_V = (self.entries[p + n] for n in ("attn.W_Q", "attn.W_K", "attn.W_V"))
        W_O = self.entries[p + "attn.W_O"]
        b_O = self._vector(p + "attn.b_O", (D,))
        b_Q, b_K, b_V = (self._vector(p + "attn." + b, (H, dh)) for b in ("b_Q", "b_K", "b_V"))
        read_qk = torch.unique(torch.cat([W_Q.used(1), W_K.used(1)]))
        read_v = W_V.used(1)
        written = torch.unique(torch.cat([W_O.used(2), torch.nonzero(b_O).flatten()]))
        qk_cols = torch.unique(torch.cat([W_Q.used(2), W_K.used(2), _nonzero_cols(b_Q),
                                          _nonzero_cols(b_K)]))
        v_cols = torch.unique(torch.cat([W_V.used(2), W_O.used(1), _nonzero_cols(b_V)]))
        ns = SimpleNamespace(W_Q=W_Q.restricted({1: read_qk, 2: qk_cols}),
                             W_K=W_K.restricted({1: read_qk, 2: qk_cols}),
                             W_V=W_V.restricted({1: read_v, 2: v_cols}),
                             W_O=W_O.restricted({1: v_cols, 2: written}), b_O=b_O[written],
                             b_Q=b_Q[:, qk_cols], b_K=b_K[:, qk_cols], b_V=b_V[:, v_cols])
        plan = _attn_plan(ns, d_head=dh)
        return replace(plan, q_rows=read_qk[plan.q_rows], k_rows=read_qk[plan.k_rows],
                       v_rows=read_v[plan.v_rows], out_rows=written[plan.out_rows])

    def _mlp(self, p: str):
        """The MLP plan, from W_in on the rows it reads, W_out and b_out on the rows they
        write, and both on the units either touches (the LayerNorm's w and b whole)."""
        cfg = self.cfg
        D = cfg.d_model
        W_in, W_out = self.entries[p + "mlp.W_in"], self.entries[p + "mlp.W_out"]
        b_in = self._vector(p + "mlp.b_in", (cfg.d_mlp,))
        b_out = self._vector(p + "mlp.b_out", (D,))
        units = torch.unique(torch.cat([W_in.used(1), W_out.used(0),
                                        torch.nonzero(b_in).flatten()]))
        read = W_in.used(0)
        written = torch.unique(torch.cat([W_out.used(1), torch.nonzero(b_out).flatten()]))
        layer = int(p.split(".")[1])
        ln_w = self.dense.get(p + "ln2.w", torch.ones(D, dtype=self.dtype))
        ln_b = self._vector(p + "ln2.b", (D,))
        gathered = _gathered_mlp(W_in, b_in, W_out, b_out)
        if gathered is not None:  # large and gathered: made from the entries themselves
            in_rows, units, out_rows, g_in, W_in_kept, g_out, W_out_kept = gathered
            return MLPPlan(ln_w, ln_b, cfg.ln_eps[layer], in_rows, W_in_kept,
                           b_in[units].clone(), W_out_kept, out_rows, b_out[out_rows].clone(),
                           g_in, g_out)
        ns = SimpleNamespace(
            mlp=SimpleNamespace(W_in=W_in.restricted({0: read, 1: units}), b_in=b_in[units],
                                W_out=W_out.restricted({0: units, 1: written}),
                                b_out=b_out[written]),
            ln2=SimpleNamespace(w=ln_w, b=ln_b, eps=cfg.ln_eps[layer]))
        plan = _mlp_plan(ns)
        return replace(plan, in_rows=read[plan.in_rows], out_rows=written[plan.out_rows])


def _nonzero_cols(b: torch.Tensor) -> torch.Tensor:
    """The columns where a [heads, d_head] bias is nonzero in some head."""
    return torch.nonzero((b != 0).any(dim=0)).flatten()


def _gathered_mlp(W_in: Entries, b_in: torch.Tensor, W_out: Entries, b_out: torch.Tensor):
    """For an MLP whose kept W_in or W_out is large and which compact's planner would gather or
    scatter (compact.sparse_form's rule, applied to the entries by sparse_form_of_entries),
    what _mlp_plan makes,
    from the entries: (in_rows, units, out_rows, gathered W_in or None, W_in as the plan keeps it,
    the same for W_out); None where the planner itself is to run (small, or neither gathered:
    it may then rearrange the units)."""
    nz_in, nz_out = W_in.values != 0, W_out.values != 0
    i_rows, i_units = W_in.index[nz_in, 0], W_in.index[nz_in, 1]
    o_units, o_rows = W_out.index[nz_out, 0], W_out.index[nz_out, 1]
    units = torch.unique(o_units)
    units = units[torch.isin(units, i_units) | (b_in[units] != 0)]
    keep_in, keep_out = torch.isin(i_units, units), torch.isin(o_units, units)
    in_rows = torch.unique(i_rows[keep_in])
    out_rows = torch.unique(torch.cat([o_rows[keep_out], torch.nonzero(b_out).flatten()]))
    # the kept matrices' entries, by local (row, column)
    mats = [(torch.searchsorted(in_rows, i_rows[keep_in]), torch.searchsorted(units,
             i_units[keep_in]), W_in.values[nz_in][keep_in], (len(in_rows), len(units))),
            (torch.searchsorted(units, o_units[keep_out]),
             torch.searchsorted(out_rows, o_rows[keep_out]), W_out.values[nz_out][keep_out],
             (len(units), len(out_rows)))]
    if all(r * c < SPARSE_MIN_ENTRIES for *_, (r, c) in mats):
        return None
    forms = [sparse_form_of_entries(*m) for m in mats]
    if all(g is None for g in forms):
        return None
    kept = []
    for (*_, vals, (_, c)), g, W in zip(mats, forms, (W_in, W_out), strict=True):
        if g is not None:
            kept.append(vals.new_zeros(0, c))
        else:  # the planner's dense kept matrix: every entry written (explicit zeros too)
            axes = {0: in_rows, 1: units} if W is W_in else {0: units, 1: out_rows}
            kept.append(W.restricted(axes))
    return in_rows, units, out_rows, forms[0], kept[0], forms[1], kept[1]


__all__ = ["Entries", "SparseArray", "SparseWeights"]
