"""The weights against the layout: what the text report checks and warns about.

The layout records what every head writes (blocks[].heads[].writes) and which values each run
clears; the weights are the model's own tensors. These functions read the weights (torch, as
float64 numpy) and compare: each head's W_V·W_O against its recorded writes, heads the layout
does not list, clears the layout records but no head performs. The attention biases (aff
biases and folded constants, in b_O and b_V·W_O) are not in the layout and are read from the
weights here.
"""

from __future__ import annotations

import numpy as np

from raspicl.compiled import CompiledModel
from raspicl.inspect.text import _ranges
from raspicl.slots import attn_slot
from raspicl.timeline import Rows

OV_TOLERANCE = 16  # a head's W_V·W_O may differ from its writes by this many ulps (relative)


def _arr(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _eps(t) -> float:
    """Machine epsilon of a tensor's dtype (the tolerance of checks against the layout)."""
    import torch

    return torch.finfo(t.dtype).eps


def attention_bias(cm: CompiledModel, b: int) -> np.ndarray:
    """Block b's effective attention bias [d_model]: b_O plus every head's b_V·W_O."""
    a = cm.model.blocks[b].attn
    bias = _arr(a.b_O).copy()
    for h in range(a.W_O.shape[0]):
        bias += _arr(a.b_V[h]) @ _arr(a.W_O[h])
    return bias


def expected_ov(head: dict, d_model: int) -> np.ndarray:
    """The [d_model, d_model] map a head's recorded writes add up to (from_row -> to_row)."""
    expected = np.zeros((d_model, d_model))
    for w in head["writes"]:
        expected[w["from_row"], w["to_row"]] += w["coef"]
    return expected


def ov_warning(cm: CompiledModel, b: int, h: int, expected: np.ndarray) -> str | None:
    """A warning if head h of block b's W_V·W_O differs from `expected` beyond rounding."""
    attn = cm.model.blocks[b].attn
    if cm.model.cfg.arch.reads_through_layernorm:  # gpt2: W_V reads through ln1, less the mean
        from raspicl.compiler.gadgets.layernorm import through_layernorm

        expected = through_layernorm(expected, cm.layout["fixed_rows"]["zero"])
    ov = _arr(attn.W_V[h]) @ _arr(attn.W_O[h])
    err = float(np.abs(ov - expected).max(initial=0.0))
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    if err > OV_TOLERANCE * _eps(attn.W_O) * scale:
        return f"WARNING: W_V·W_O differs from these writes by up to {err:.3g}"
    return None


def unlisted_head(cm: CompiledModel, b: int, h: int) -> str:
    """The report line of a head the layout does not list: unused, or a warning if it has
    nonzero weights."""
    attn = cm.model.blocks[b].attn
    nz = any(float(np.abs(_arr(w[h])).max()) > 0 for w in
             (attn.W_Q, attn.W_K, attn.W_V, attn.W_O))
    return "WARNING: not in the layout but has nonzero weights" if nz else "unused (zero weights)"


def missing_clears(rows: Rows, run: int, cleared: set) -> list[str]:
    """Warnings for values the layout clears at run `run`'s attention that no head's writes
    zeroed (`cleared`: the labels the report found zeroed)."""
    return [f"WARNING: the layout clears {o.label} here, but no head zeroes its rows "
            f"{_ranges(o.rows)}"
            for o in rows.occupants
            if o.cleared == attn_slot(run) and o.kind != "fixed" and o.label not in cleared]


def mlp_rows(cm: CompiledModel, b: int) -> tuple[list[int], list[int]]:
    """The rows block b's MLP reads (nonzero rows of W_in) and writes (of W_out)."""
    mods = cm.model.blocks[b].mlp
    read_rows = [int(r) for r in np.flatnonzero(np.abs(_arr(mods.W_in)).sum(1))]
    write_rows = [int(r) for r in np.flatnonzero(np.abs(_arr(mods.W_out)).sum(0))]
    return read_rows, write_rows
