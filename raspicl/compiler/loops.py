"""Looped compilation: one group of blocks whose weights every iteration of a `p.loop` shares.

The program's ops are unrolled; what makes the iterations share weights is that each compiles
to the same blocks over the same rows:
- before scheduling, `link_iterations` pairs every value of iteration k with its iteration-0
  twin (same rows), and makes each var's last write in an iteration take over the rows of the
  version it replaces, so the loop state stays in place;
- placement starts every iteration on a fresh block (placement.py, share_loops);
- placement lets a var's new version overwrite the old one in place: an attention write
  once the old version is cleared, or a neutral MLP write that subtracts the old value itself;
- liveness (liveness.py) calls `defer_clears`, which keeps values from before the loop, and
  the loop state the last iteration leaves, alive until the loop ends (a shared block must not
  clear them); the clears that iteration k + 1 inherits from iteration k are also given to
  iteration 0 (on rows that are still zero then: `wraparound_clears`), as are the anchor
  clears after a division;
- assemble checks that the blocks are identical and keeps one copy (a looped transformer);
  where they are not, `describe_row_mismatch` names the registers in the rows that differ.

Fields set: `link_iterations` sets `Value.template`, `Value.replaces` (with share_rows) and
unifies `Value.bound` across twins; `defer_clears` and `wraparound_clears` set no field (they
update and return liveness's clear slots).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from raspicl.compiler.lower import Lowered, Value
from raspicl.compiler.schedule import Schedule
from raspicl.errors import CompileError
from raspicl.slots import attn_slot, mlp_slot

if TYPE_CHECKING:
    from raspicl.compiler.layout import Layout


def link_iterations(low: Lowered, share_rows: bool = True) -> None:
    """Give twins across iterations one bound (so the gadgets' scales agree, unrolled or
    not) and, with share_rows, set template (iteration-0 twin) and replaces (carried state)
    on loop values."""
    by_loop: dict[int, dict[int, list]] = {}
    for ins in low.instrs:
        if ins.op.loop is not None:
            lid, k = ins.op.loop
            by_loop.setdefault(lid, {}).setdefault(k, []).append(ins)
    for iterations in by_loop.values():
        body = iterations[0]
        first = body[0].op.index
        before: dict[str, Value] = {}
        for ins in low.instrs:
            if ins.op.index >= first:
                break
            before[ins.dst.name] = ins.dst
        for v in low.values:
            if v.kind == "const" and v.name not in before:
                before[v.name] = v
        last_write = {ins.dst.name: i for i, ins in enumerate(body)}
        carried = set()  # vars the body reads before it writes them: the loop state
        written: set[str] = set()
        for ins in body:
            carried |= {v.name for v, _ in ins.reads if v.name not in written}
            if ins.divisor is not None and ins.divisor.name not in written:
                carried.add(ins.divisor.name)
            written.add(ins.dst.name)
        previous = dict(before)
        for k in sorted(iterations):
            for i, ins in enumerate(iterations[k]):
                if k > 0:
                    ins.dst.template = body[i].dst
                if last_write[ins.dst.name] == i and ins.dst.name in carried:
                    old = previous.get(ins.dst.name)
                    if old is None:
                        raise CompileError(
                            f"{ins.op.where()}: a looped compile needs var '{ins.dst.name}' "
                            f"to hold a value before the loop (give it an init)")
                    ins.dst.replaces = old
                    previous[ins.dst.name] = ins.dst
    _share_bounds(low)
    if not share_rows:
        for v in low.values:
            v.template = v.replaces = None


def _share_bounds(low: Lowered) -> None:
    """Twins get one bound (the largest), so that the gadgets' scales agree across iterations."""
    group: dict[int, list[Value]] = {}
    root: dict[int, int] = {}

    def find(v: Value) -> int:
        i = id(v)
        while root.get(i, i) != i:
            i = root[i]
        return i

    def union(a: Value, b: Value) -> None:
        root[find(a)] = find(b)

    for v in low.values:
        if v.template is not None:
            union(v, v.template)
        if v.replaces is not None:
            union(v, v.replaces)
    for v in low.values:
        group.setdefault(find(v), []).append(v)
    for members in group.values():
        bound = max(m.bound for m in members)
        for m in members:
            m.bound = bound


def defer_clears(low: Lowered, sched: Schedule, clears: dict[Value, int | None]) -> None:
    """Liveness in a shared loop: defer clears of pre-loop values, and of the state the last
    iteration leaves, to the first attention after the loop (see the module doc). Updates
    `clears` (value -> clear slot) in place, loop by loop."""
    replaced = {v.replaces for v in low.values if v.replaces is not None}
    for loop in sched.loops:
        start, length = loop.starts[0], loop.length
        end_slot = attn_slot(loop.starts[-1] + length)  # first attention after the loop
        last = (loop.loop_id, len(loop.starts) - 1)
        for v in low.values + sched.temps:
            c = clears[v]
            if c is None or not attn_slot(start) <= c < end_slot:
                continue
            if v.write_slot < attn_slot(start) and v not in replaced:
                clears[v] = end_slot  # from before the loop: keep its rows to the end
            elif (v.replaces is not None and v not in replaced and v.op is not None
                  and v.op.loop == last):
                # the loop state after the last iteration: in every other iteration the next
                # one reads (and clears or overwrites) it; here nothing inside the loop may
                clears[v] = end_slot


def wraparound_clears(low: Lowered, sched: Schedule,
                      clears: dict[Value, int | None]) -> dict[int, list[Value]]:
    """run -> values whose rows the first iteration's first block clears, as every later
    iteration's first block clears the previous iteration's."""
    extra: dict[int, list[Value]] = {}
    for loop in sched.loops:
        if len(loop.starts) < 2:
            continue
        boundary = attn_slot(loop.starts[1])
        for v in low.values + sched.temps:
            if v.kind in ("op", "temp") and attn_slot(loop.starts[0]) <= v.write_slot < boundary \
                    and clears[v] == boundary:
                extra.setdefault(loop.starts[0], []).append(v)
    return extra


def describe_row_mismatch(layout: Layout, runs: tuple[int, int], k: int, rows: list[int]) -> str:
    """': ...' naming, for two runs of one body block (iteration 0's and iteration k's), the
    registers that occupy the residual rows where their weights differ: one whose rows are not
    the same in both, or that only one of them holds there, with its op and source line. ''
    when the differing tensor has no residual axis (mlp.b_in)."""
    if not rows:
        return ""
    held = [_held(layout, run, set(rows)) for run in runs]
    parts = []
    for key in sorted(set(held[0]) | set(held[1])):
        v0, v1 = held[0].get(key), held[1].get(key)
        if v0 is not None and v1 is not None:
            if v0.rows != v1.rows:
                parts.append(f"{_name(v0)} is carried in rows {_span(v0.rows)} in iteration 0 "
                             f"but {_name(v1)} in rows {_span(v1.rows)} in iteration {k}"
                             if v0.label != v1.label else
                             f"{_name(v0)} is carried in rows {_span(v0.rows)} in iteration 0 "
                             f"but rows {_span(v1.rows)} in iteration {k}")
        else:
            v, it = (v0, 0) if v0 is not None else (v1, k)
            parts.append(f"rows {_span(v.rows)} hold {_name(v)} only in iteration {it}")
    if not parts:
        parts.append("the same registers in the same rows, handled in a different order")
    holds = [", ".join(f"{_name(v)} in rows {_span(v.rows)}"
                       for v in sorted(h.values(), key=lambda v: v.rows)) or "nothing"
             for h in held]
    return (f" in rows {_span(rows)}: " + "; ".join(parts)
            + f" (there iteration 0 holds {holds[0]}; iteration {k} holds {holds[1]})")


def _held(layout: Layout, run: int, rows: set[int]) -> dict[str, Value]:
    """register (label without its version) -> the latest-written value holding any of `rows`
    while block `run` runs."""
    out: dict[str, Value] = {}
    for v in layout.values:
        c = layout.liveness.clear_slot(v)
        if v.write_slot > mlp_slot(run) or (c is not None and c < attn_slot(run)):
            continue
        if rows & set(v.rows):
            key = re.sub(r"@\d+", "", v.label)
            if key not in out or out[key].write_slot < v.write_slot:
                out[key] = v
    return out


def _name(v: Value) -> str:
    """"'w@2' (op 12, rls.py:40)", or "'tmp:...' (an attention temporary)"."""
    if v.op is None:
        return f"'{v.label}' (an {'attention temporary' if v.kind == 'temp' else v.kind})"
    return f"'{v.label}' (op {v.op.index}, {v.op.source})"


def _span(rows: list[int]) -> str:
    """'18-23' for consecutive rows, '12-13, 21-22' for runs of them."""
    out, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            out.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)
