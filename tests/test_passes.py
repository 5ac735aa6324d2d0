"""The compiler's scheduling passes one at a time (placement, temporaries, anchors, liveness),
on small programs whose slots, clears and rows are derived by hand in each test's docstring.

Slots (raspicl.slots): run r's attention is slot 2r, its MLP 2r + 1, the embedding -1. A value
is cleared by the first attention after its last read and after the sublayer that wrote it.
"""

from __future__ import annotations

import pytest

from raspicl import Offset, Program, Read
from raspicl.compiler import compile_program
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.layout import lay_out
from raspicl.compiler.liveness import clear_slot_of, liveness
from raspicl.compiler.loops import link_iterations
from raspicl.compiler.lower import lower
from raspicl.compiler.schedule import MlpMode, schedule
from raspicl.layout_records import HeadWrite, HeadWriteKind, Slot, head_writes, occupants
from raspicl.registry import find_program
from raspicl.slots import attn_after, attn_at_or_after, attn_slot, mlp_slot, run_of, slot_name


def _passes(p: Program, share: bool = False):
    low = lower(p, CompilerConfig())
    link_iterations(low, share_rows=share)
    sched = schedule(low, share_loops=share)
    live = liveness(low, sched, share_loops=share)
    return low, sched, live


def _actions(layout: dict) -> dict[tuple[int, str], list[HeadWrite]]:
    """(block, place kind) -> the actions of its heads (a wide head is split in parts)."""
    out: dict[tuple[int, str], list[HeadWrite]] = {}
    for blk in layout["blocks"]:
        for head in blk["heads"]:
            out.setdefault((blk["block"], head["where"]["kind"]), []).extend(head_writes(head))
    return out


def _value(low, label: str):
    (v,) = [v for v in low.values if v.label == label]
    return v


def chain() -> Program:
    p = Program("chain", d=1, n=1)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))  # op 0
    s = p.dot("s", x_prev, p.x)  # op 1
    p.output(p.dot("t", Read(s, Offset(1)), p.x))  # op 2
    return p


def division() -> Program:
    p = Program("division", d=1, n=1)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))  # op 0
    xx = p.dot("xx", x_prev, x_prev)  # op 1
    den = p.aff("den", xx, bias=1.0)  # op 2
    q = p.div("q", p.y, den)  # op 3
    p.output(p.dot("r", q, q))  # op 4
    return p


def accumulate() -> Program:
    p = Program("accumulate", d=1, n=2)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))  # op 0
    w = p.var("w", 1)
    p.aff(w, x_prev, W1=2.0)  # op 1: w@1
    for _ in p.loop(2):
        p.aff(w, w, x_prev, W1=0.5, W2=1.0)  # ops 2, 3: w@2, w@3
    p.output(w)
    return p


def test_slot_helpers():
    assert [attn_slot(r) for r in range(3)] == [0, 2, 4]
    assert [mlp_slot(r) for r in range(3)] == [1, 3, 5]
    assert [run_of(s) for s in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [attn_at_or_after(s) for s in (-1, 0, 1, 2)] == [0, 0, 2, 2]
    assert [attn_after(s) for s in (-1, 0, 1, 2)] == [0, 2, 2, 4]
    order = [0, 1, 1, 2]
    assert [slot_name(s, order) for s in (-1, 2, 5, 7)] == [
        "embedding", "block 1 attn", "run 2 (block 1) mlp", "run 3 (block 2) mlp"]
    rec = Slot.of(5, order)
    assert rec == Slot(5, 2, "mlp", 1) and Slot.from_json(rec.to_json()) == rec
    assert Slot.of(-1, order) == Slot(-1, None, "embedding", None)


def test_placement_chain():
    """op 0 (a remote move) goes to run 0's attention (slot 0); op 1 (a product over the
    current token, x_prev ready after slot 0) to run 0's MLP (slot 1); op 2 reads s one token
    back, so its attention must come after slot 1: run 1, 'attn+mlp', writing at slot 3."""
    low, sched, _ = _passes(chain())
    got = [(ins.block, ins.stage, ins.dst.write_slot) for ins in sched.instrs]
    assert got == [(0, "attn", 0), (0, "mlp", 1), (1, "attn+mlp", 3)]
    assert sched.n_blocks == 2 and sched.loops == [] and sched.anchors == {}
    assert set(sched.mlp_mode) == {0, 1}
    assert all(m is MlpMode.NEUTRAL for m in sched.mlp_mode.values())
    # last reads: x by op 2's MLP (3), x_prev by op 1's MLP (1), s by op 2's attention (2)
    assert [_value(low, n).last_read for n in ("x", "x_prev", "s")] == [3, 1, 2]


def test_temporaries_chain():
    """op 2's remote operand s gets one temporary, written by run 1's attention (slot 2) and
    read by its MLP (slot 3)."""
    low, sched, _ = _passes(chain())
    (t,) = sched.temps
    assert (t.label, t.width, t.write_slot, t.last_read) == ("tmp:s@Offset", 1, 2, 3)
    assert sched.instrs[2].temps == {0: t}
    assert sched.instrs[0].temps == {} and sched.instrs[1].temps == {}


def test_liveness_and_rows_chain():
    """Clear slots by the rule: y is never read (cleared at slot 0), x_prev (written 0, last
    read 1) and s (written 1, read 2) at slot 2, x (read 3) and the temporary (read 3) at slot
    4, which is past the last run; t is the output (never). Rows after the 7 fixed rows: x 7,
    y 8; x_prev reuses y's row (free from slot 0), s takes a new row 9, the temporary reuses
    row 8 (free from 2) and t row 9 (free from 2)."""
    low, sched, live = _passes(chain())
    (t,) = sched.temps
    clears = {v.label: live.clear_slot(v) for v in low.values + sched.temps}
    assert clears == {"x": 4, "y": 0, "x_prev": 2, "s": 2, "t": None, "tmp:s@Offset": 4}
    assert live.wraparound == {}
    assert live.cleared_by(_value(low, "s")) == [1]
    layout = lay_out(low, sched, live)
    rows = {v.label: v.rows for v in layout.values}
    assert rows == {"x": [7], "y": [8], "x_prev": [8], "s": [9], "tmp:s@Offset": [8], "t": [9]}
    assert layout.d_model == 10 and layout.liveness is live


def test_head_actions_chain():
    """The typed head actions describe records: run 0's offset head moves x into x_prev (op
    0), its self-head clears y; run 1's offset head fills the temporary of op 2 from s, its
    self-head clears x_prev and s (the rows of the hand derivation above)."""
    p = chain()
    cm = compile_program(p)
    src = [str(op.source) for op in p.ops]
    acts = _actions(cm.layout)
    K = HeadWriteKind
    assert acts[(0, "offset")] == [HeadWrite(K.MOVE, 0, "x_prev", (8,), 0, src[0], ("x",))]
    assert acts[(0, "here")] == [HeadWrite(K.CLEAR, 0, "y", (8,))]
    assert acts[(1, "offset")] == [HeadWrite(K.TEMPORARY, 1, "tmp:s@Offset", (8,), 2, src[2],
                                             ("s",))]
    assert acts[(1, "here")] == [HeadWrite(K.CLEAR, 1, "x_prev", (8,)),
                                 HeadWrite(K.CLEAR, 1, "s", (9,))]
    by_label = {o.label: o for o in occupants(cm.layout)}
    assert (by_label["tmp:s@Offset"].written, by_label["tmp:s@Offset"].cleared) == (2, None)
    assert (by_label["s"].written, by_label["s"].cleared, by_label["s"].op) == (1, 2, 1)


def test_anchors_division():
    """op 2 (den = xx + 1, linear over the current token, xx ready after slot 1) goes to run
    1's attention (slot 2); the division needs its divisor written before its attention: run
    2 ('attn+mlp', slot 5), whose MLP mode is den itself; op 4 (q * q) then needs an MLP after
    slot 5: run 3. Anchors: run 2 writes them from den, run 3's self-head clears them, along
    with y (last read by the division's MLP, slot 5, so cleared at 6)."""
    p = division()
    low, sched, live = _passes(p)
    den = _value(low, "den")
    assert [(i.block, i.stage) for i in sched.instrs] == [
        (0, "attn"), (0, "mlp"), (1, "attn"), (2, "attn+mlp"), (3, "mlp")]
    assert sched.anchors == {2: den} and sched.anchors[2] is den
    assert sched.mlp_mode[2] is den and 1 not in sched.mlp_mode
    assert sched.mlp_mode[0] is MlpMode.NEUTRAL and sched.mlp_mode[3] is MlpMode.NEUTRAL
    assert live.clear_slot(den) == 4 and live.clear_slot(_value(low, "y")) == 6
    cm = compile_program(p, CompilerConfig(fusion=False))  # den as written (tests/test_fusion.py
    # has the fused division)
    fixed = cm.layout["fixed_rows"]
    K = HeadWriteKind
    here = {b: acts for (b, kind), acts in _actions(cm.layout).items() if kind == "here"}
    anchor = [a for a in here[2] if a.kind is K.ANCHOR]
    assert anchor == [HeadWrite(K.ANCHOR, 2, "den", (fixed["anchor_pos"], fixed["anchor_neg"]),
                                3, str(p.ops[3].source), ("den",))]
    assert [a.value for a in here[3] if a.kind is K.CLEAR] == ["anchor_pos", "anchor_neg", "y"]
    assert cm.layout["blocks"][2]["mlp"]["divisor"] == "den"
    assert cm.layout["blocks"][1]["mlp"]["divisor"] is None


def test_liveness_shared_loop():
    """loops='share': iteration k of the body (w <- w/2 + x_prev, linear) runs in run 1 + k,
    in attention, over w's rows. x_prev (read by both iterations, last at slot 4) would be
    cleared at 4, inside the loop: deferred to the first attention after it (slot 6). w@1
    (read at 2) and w@2 (read at 4) are cleared where their successor overwrites them; w@2's
    clear at the boundary of iterations 0 and 1 (slot 4) is also done by iteration 0's first
    run (run 1), so that both runs of the shared block clear the same rows."""
    low, sched, live = _passes(accumulate(), share=True)
    assert [(i.block, i.stage, i.dst.write_slot) for i in sched.instrs] == [
        (0, "attn", 0), (0, "mlp", 1), (1, "attn", 2), (2, "attn", 4)]
    (loop,) = sched.loops
    assert (loop.starts, loop.length) == ([1, 2], 1)
    w1, w2, w3 = (_value(low, f"w@{k}") for k in (1, 2, 3))
    x_prev = _value(low, "x_prev")
    assert clear_slot_of(x_prev) == 4 and live.clear_slot(x_prev) == 6  # deferred
    assert [live.clear_slot(v) for v in (w1, w2, w3)] == [2, 4, None]
    assert live.wraparound == {1: [w2]}
    assert live.cleared_by(w2) == [2, 1]
    assert w2.replaces is w1 and w3.replaces is w2
    layout = lay_out(low, sched, live)
    assert w1.rows == w2.rows == w3.rows and layout.liveness is live
    # unrolled, nothing is deferred
    low_u, _, live_u = _passes(accumulate())
    assert live_u.clear_slot(_value(low_u, "x_prev")) == clear_slot_of(_value(low_u, "x_prev"))


def _sgd() -> Program:
    return find_program("sgd").build(d=1, n=2)


@pytest.mark.parametrize("make", [chain, division, accumulate, _sgd])
def test_liveness_agrees_with_the_weights(make):
    """Every clear liveness decides inside the model is done by a self-head of that run: the
    layout's clear records and the heads' clear actions name the same (value, run) pairs."""
    cm = compile_program(make(), loops="share")
    order = cm.layout["architecture"]["block_order"]
    from_records = {(o.label, run_of(o.cleared)) for o in occupants(cm.layout)
                    if o.cleared is not None and o.kind != "fixed"
                    and run_of(o.cleared) < len(order)}
    from_heads = {(a.value, a.run) for blk in cm.layout["blocks"] for h in blk["heads"]
                  for a in head_writes(h) if a.kind is HeadWriteKind.CLEAR}
    assert from_records <= from_heads
