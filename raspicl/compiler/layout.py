"""Layout: every value gets rows of the residual stream (tracr's named subspaces).

Fixed rows come first: `zero` (never written: LayerNorm's mean is read off it), `one`,
`pos` = t / n_ctx and `pos_sq` = (t / n_ctx)^2 (attention finds tokens by these), one indicator
per role, and the two division anchors. Then values are placed in order of their write slot,
reusing the rows of values already cleared, so the width follows the live set rather than the
number of writes.

Sets `Value.rows` on every value (inputs, constants, masks, op results, temporaries; a fused
value has none: of fusion it reads only `Value.fused`, the mark the pass leaves); reads the
clear slots liveness decided (a row is free from its value's clear slot on). The Layout it
returns carries that Liveness on to assemble and describe. A target that reads every sublayer
through a LayerNorm (gpt2) then gets two more fixed rows, its constant anchors
(`with_ln_anchors`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from raspicl.arch import LN_ANCHOR_ROWS
from raspicl.compiler.clears import Liveness
from raspicl.compiler.lower import Lowered, Value
from raspicl.compiler.schedule import Schedule
from raspicl.errors import CompileError
from raspicl.lang.reads import ROLES
from raspicl.layout_records import ANCHOR_ROWS

FIXED = ("zero", "one", "pos", "pos_sq", "is_x", "is_y", "is_query")
ANCHORS = ANCHOR_ROWS


@dataclass
class Layout:
    d_model: int
    fixed: dict[str, int]
    values: list[Value]
    row_names: list[str]
    liveness: Liveness  # the clear slots the rows were laid out by (handed on to assemble)


def lay_out(low: Lowered, sched: Schedule, live: Liveness) -> Layout:
    """Rows for every value (see the module doc), free again from each value's clear slot."""
    fixed_names = list(FIXED) + (list(ANCHORS) if sched.anchors else [])
    fixed = {name: i for i, name in enumerate(fixed_names)}
    assert all(f"is_{r}" in fixed for r in ROLES)
    free_from: list[float] = []  # per dynamic row: first slot at which it may be written
    base = len(fixed_names)
    values = [v for v in low.values if v.kind in ("input", "const", "mask")] + \
        sorted([v for v in low.values if v.kind == "op" and not v.fused] + sched.temps,
               key=lambda v: v.write_slot)
    for v in low.values:
        # a shared loop's state is overwritten in place by its successor: nothing may read the
        # old version later (it would read the new one); fusion and placement avoid it, and this
        # refuses a layout where they did not, rather than compile a model that reads wrong rows
        if v.overwritten_at is not None and v.last_read > v.overwritten_at:
            raise CompileError(f"looped compile: {v.label} is read at slot {v.last_read}, after "
                               f"its rows are overwritten in place at slot {v.overwritten_at}; "
                               "compile this program unrolled")
    placed = []
    replaced = {v.replaces for v in values if v.replaces is not None}
    for v in values:
        if v.replaces is not None or v.template is not None:
            # looped compile: the loop state keeps its rows; later iterations reuse iteration 0's
            src = v.replaces if v.replaces is not None else v.template
            rows = [r - base for r in src.rows]
            if v.replaces is None and any(free_from[r] > v.write_slot for r in rows):
                raise CompileError(f"looped compile: the rows of {src.label} are still in use "
                                   f"when iteration values reuse them (write slot "
                                   f"{v.write_slot}); compile this program unrolled")
        else:
            start = _find_run(free_from, v.width, v.write_slot)
            if start is None:
                start = len(free_from)
                while start > 0 and free_from[start - 1] <= v.write_slot:
                    start -= 1
                free_from += [float("-inf")] * (start + v.width - len(free_from))
            rows = list(range(start, start + v.width))
        c = live.clear_slot(v)
        until = float("inf") if c is None or v in replaced else c
        for r in rows:
            free_from[r] = until
        v.rows = [base + r for r in rows]
        placed.append(v)
    d_model = base + len(free_from)
    names = fixed_names + [""] * len(free_from)
    for v in placed:
        for k, r in enumerate(v.rows):
            tag = v.label if v.width == 1 else f"{v.label}[{k}]"
            names[r] = tag if not names[r] else f"{names[r]}|{tag}"
    return Layout(d_model, fixed, placed, names, live)


def with_ln_anchors(layout: Layout) -> Layout:
    """The layout with the rows ln_pos and ln_neg appended (fixed rows, never cleared, never
    read by any head or unit: W_pos writes +N and -N there at every token)."""
    fixed = dict(layout.fixed)
    names = list(layout.row_names)
    for name in LN_ANCHOR_ROWS:
        fixed[name] = len(names)
        names.append(name)
    return replace(layout, d_model=len(names), fixed=fixed, row_names=names)


def _find_run(free_from: list[float], width: int, slot: int) -> int | None:
    run = 0
    for r, f in enumerate(free_from):
        run = run + 1 if f <= slot else 0
        if run == width:
            return r - width + 1
    return None
