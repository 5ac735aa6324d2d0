"""Placement: every instruction gets a run and a sublayer (the paper's Lemma 7).

Sets, per instruction: `Instr.block` (its run), `Instr.stage` ('attn', 'mlp' or 'attn+mlp')
and `dst.write_slot`; per value read: `Value.last_read` (the last slot that reads it); for the
loop state of a shared loop: `Value.overwritten_at`. Returns the MLP mode of every run that has
an MLP instruction and, with share_loops, each loop's runs (`Loop`). Slots: raspicl.slots.

An instruction runs as early as its inputs allow:
- linear, reading other tokens: in an attention sublayer (a head per place; the current
  token's own values through a head that attends to itself);
- linear, reading only the current token: in whichever sublayer comes first, attention or MLP;
- with products: in an MLP, whose block's attention first moves any remote operands into
  temporaries (the paper's RAW: attention read + MLP arithmetic in one block; temporaries.py);
- div: in a block whose attention writes the anchors +-N s and whose MLP does nothing else
  but divide by the same s (its LayerNorm is what divides; anchors.py).
Independent instructions share sublayers. A block's MLP is NEUTRAL or divides by one value.

Of fusion it reads the result on Lowered (ir.py): a fused value (`Value.fused`) gets no
sublayer, a read of it is a read of its definition's reads (`Lowered.fused_defs.operands`), and
once its readers are placed it takes the write slot of the first op that absorbs it
(`_place_fused`, from `Value.absorbed_by`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from raspicl.compiler.clears import NEVER, clear_slot_of
from raspicl.compiler.ir import FusedDefinitions
from raspicl.compiler.lower import Instr, Lowered, Value
from raspicl.errors import CompileError
from raspicl.slots import attn_slot, is_attn, is_mlp, mlp_slot, run_of


class MlpMode(Enum):
    """What a block's MLP may do besides dividing: a divide block's mode is its divisor Value."""

    NEUTRAL = "neutral"  # LayerNorm with a huge eps: an exact scaling the weights undo


Mode = MlpMode | Value  # a run's MLP: NEUTRAL, or dividing by this value


@dataclass
class Loop:
    """A loop compiled as one shared group of blocks: iteration k runs blocks
    starts[k] .. starts[k] + length - 1 (in run order), all with iteration 0's weights."""

    loop_id: int
    starts: list[int]
    length: int


@dataclass
class Placement:
    """What placement decides beyond the fields it sets on instructions and values."""

    n_blocks: int
    mlp_mode: dict[int, Mode]
    loops: list[Loop]


@dataclass
class _State:
    mode: dict[int, Mode] = field(default_factory=dict)
    floor: int = 0  # the first run an instruction may use
    last_block: int = -1

    def mlp_ok(self, run: int, want: Mode) -> bool:
        have = self.mode.get(run)
        return have is None or have is want


@dataclass
class _Ready:
    """When an instruction's operands are ready, and the floors a shared loop's in-place
    overwrite adds."""

    remote: list[Value]
    here: list[Value]
    remote_at: int  # the last slot writing a remote operand (or the slot before the floor)
    here_at: int
    attn_floor: int  # an attention write may not come before the replaced value's clear
    mlp_floor: int  # an MLP write may not come before the replaced value's last read
    replaced: Value | None


def place(low: Lowered, share_loops: bool = False) -> Placement:
    """Place every instruction (see the module doc). With share_loops, each iteration of a
    `p.loop` starts on a fresh block and nothing else shares its blocks, so that every
    iteration compiles to the same weights (checked in assemble)."""
    st = _State()
    loops: dict[int, Loop] = {}
    current_loop: tuple[int, int] | None = None
    defs = low.fused_defs
    for ins in low.instrs:
        if ins.fused:  # computed inside its readers (fusion.py): no sublayer of its own
            continue
        tag = ins.op.loop if share_loops else None
        if tag != current_loop:  # entering an iteration, or leaving a loop
            st.floor = st.last_block + 1
            if tag is not None:
                loops.setdefault(tag[0], Loop(tag[0], [], 0)).starts.append(st.floor)
            current_loop = tag
        ready = _ready(ins, st.floor, defs)
        run = _place_linear(ins, ready, st) if ins.is_linear else _place_mlp(ins, ready, st,
                                                                               defs)
        st.last_block = max(st.last_block, run)
    for loop in loops.values():
        ends = [max(i.block for i in low.instrs if i.op.loop == (loop.loop_id, k)
                    and not i.fused)
                for k in range(len(loop.starts))]
        loop.length = ends[0] - loop.starts[0] + 1
    low.output.read_at(NEVER)
    _place_fused(low)
    n_blocks = max((run_of(ins.dst.write_slot) for ins in low.instrs), default=-1) + 1
    return Placement(max(n_blocks, 1), st.mode, list(loops.values()))


def _place_fused(low: Lowered) -> None:
    """After placement: a fused value's write slot, run and stage are those of the first op
    that absorbs it (where it is computed first)."""
    by_op = {ins.op.index: ins for ins in low.instrs}
    for ins in reversed(low.instrs):  # a fused value's readers are placed or fused later
        if ins.fused:
            first = min((by_op[i] for i in ins.dst.absorbed_by), key=lambda c: c.dst.write_slot)
            ins.block, ins.stage = first.block, "fused"
            ins.dst.write_slot = first.dst.write_slot


def _ready(ins: Instr, floor: int, defs: FusedDefinitions) -> _Ready:
    # a fused factor stands for its own reads (FusedDefinitions.operands)
    ops = defs.operands(ins)
    remote = list(dict.fromkeys(v for v, moved in ops if moved))
    here = list(dict.fromkeys(v for v, moved in ops if not moved))
    before = attn_slot(floor) - 1
    # In a shared loop a var's new version takes the rows of the version it replaces. An
    # attention write may land there once the old version is cleared (its readers so far
    # are done, and this op's own read, by attention, may be in the same sublayer); a
    # neutral MLP write may land there once its other readers are done, subtracting the old
    # value itself (it reads it exactly): `overwrite`.
    replaced = ins.dst.replaces
    return _Ready(remote, here,
                  max([v.write_slot for v in remote] + [before]),
                  max([v.write_slot for v in here] + [before]),
                  clear_slot_of(replaced) if replaced is not None else -1,
                  replaced.last_read if replaced is not None else -1,
                  replaced)


def _place_linear(ins: Instr, r: _Ready, st: _State) -> int:
    """The first sublayer after its operands: attention, or a neutral MLP if it reads only
    the current token."""
    slot = max(r.remote_at, r.here_at) + 1
    while (is_attn(slot) and slot < r.attn_floor) or (is_mlp(slot) and (
            r.remote or not st.mlp_ok(run_of(slot), MlpMode.NEUTRAL) or slot < r.mlp_floor)):
        slot += 1
    run = run_of(slot)
    if is_mlp(slot):
        if r.replaced is not None:
            _overwrite(r.replaced, slot)
        st.mode[run] = MlpMode.NEUTRAL
        ins.block, ins.stage = run, "mlp"
        for v in r.here:
            v.read_at(slot)
    else:
        ins.block, ins.stage = run, "attn"
        for v, _ in ins.reads:
            v.read_at(slot)
    ins.dst.write_slot = slot
    return run


def _place_mlp(ins: Instr, r: _Ready, st: _State, defs: FusedDefinitions) -> int:
    """The first run whose attention can fetch its remote operands (and write the anchors of a
    division) and whose MLP has the mode it needs."""
    divisor = ins.divisor
    want: Mode = divisor if divisor is not None else MlpMode.NEUTRAL
    # the anchors are written from the divisor's rows, or from a fused divisor's reads
    anchor_from = defs.stored(divisor) if divisor is not None else []
    divisor_at = max((v.write_slot for v in anchor_from), default=-1)
    if r.replaced is not None and divisor is not None and r.replaced in ins.registers_read:
        raise CompileError(f"{ins.op.where()}: in a shared loop a division cannot overwrite "
                           f"'{r.replaced.name}', which it reads; divide into another var")

    def fits(run: int) -> bool:
        attn, mlp = attn_slot(run), mlp_slot(run)
        return (attn > r.remote_at and mlp > r.here_at
                and (divisor is None or attn > divisor_at)
                and st.mlp_ok(run, want)
                and (divisor is None or attn >= r.attn_floor)
                and (divisor is not None or mlp >= r.mlp_floor))

    run = 0
    while not fits(run):
        run += 1
    attn, mlp = attn_slot(run), mlp_slot(run)
    if r.replaced is not None and divisor is None:
        _overwrite(r.replaced, mlp)
    st.mode[run] = want
    ins.block = run
    ins.stage = "attn+mlp" if r.remote or divisor is not None else "mlp"
    for v in r.here:
        v.read_at(mlp)
    if ins.mask is not None:
        ins.mask.read_at(mlp)
    for v in r.remote:
        v.read_at(attn)
    for v in anchor_from:
        v.read_at(attn)
    ins.dst.write_slot = mlp
    return run


def _overwrite(old: Value, slot: int) -> None:
    """The MLP at `slot` replaces `old` in its rows (it subtracts it: no attention clear)."""
    old.read_at(slot)
    old.overwritten_at = slot
