"""Scheduling: every instruction gets a block and a sublayer (the paper's Lemma 7).

Sublayers are numbered as slots: block l's attention is slot 2l, its MLP slot 2l + 1. An
instruction runs as early as its inputs allow:
- linear, reading other tokens: in an attention sublayer (a head per place; the current
  token's own values through a head that attends to itself);
- linear, reading only the current token: in whichever sublayer comes first, attention or MLP;
- with products: in an MLP, whose block's attention first moves any remote operands into
  temporaries (the paper's RAW: attention read + MLP arithmetic in one block);
- div: in a block whose attention writes the anchors +-N s and whose MLP does nothing else
  but divide by the same s (its LayerNorm is what divides).
Independent instructions share sublayers. A block's MLP is 'neutral' or divides by one value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raspicl.compiler.lower import Instr, Lowered, Value
from raspicl.errors import CompileError
from raspicl.lang.reads import Here

NEVER = 10**9  # last_read of values that stay live to the end (the output)


@dataclass
class Loop:
    """A loop compiled as one shared group of blocks: iteration k runs blocks
    starts[k] .. starts[k] + length - 1 (in run order), all with iteration 0's weights."""

    loop_id: int
    starts: list[int]
    length: int


@dataclass
class Schedule:
    n_blocks: int
    mlp_mode: dict[int, object]  # block -> 'neutral' or the divisor Value
    instrs: list[Instr]
    temps: list[Value] = field(default_factory=list)
    anchors: dict[int, Value] = field(default_factory=dict)  # block -> divisor whose anchors
    loops: list[Loop] = field(default_factory=list)


def schedule(low: Lowered, share_loops: bool = False) -> Schedule:
    """Place every instruction (see the module doc). With share_loops, each iteration of a
    `p.loop` starts on a fresh block and nothing else shares its blocks, so that every
    iteration compiles to the same weights (checked in assemble)."""
    mode: dict[int, object] = {}
    floor = 0  # the first block an instruction may use
    last_block = -1
    loops: dict[int, Loop] = {}
    current_loop: tuple[int, int] | None = None

    def mlp_ok(block: int, want: object) -> bool:
        have = mode.get(block)
        return have is None or have is want

    for ins in low.instrs:
        tag = ins.op.loop if share_loops else None
        if tag != current_loop:  # entering an iteration, or leaving a loop
            floor = last_block + 1
            if tag is not None:
                loop = loops.setdefault(tag[0], Loop(tag[0], [], 0))
                loop.starts.append(floor)
            current_loop = tag
        remote = [v for v, at in ins.reads if not isinstance(at, Here)]
        here = [v for v, at in ins.reads if isinstance(at, Here)]
        ready_remote = max([v.write_slot for v in remote] + [2 * floor - 1])
        ready_here = max([v.write_slot for v in here] + [2 * floor - 1])
        # In a shared loop a var's new version takes the rows of the version it replaces. An
        # attention write may land there once the old version is cleared (its readers so far
        # are done, and this op's own read, by attention, may be in the same sublayer); a
        # neutral MLP write may land there once its other readers are done, subtracting the old
        # value itself (it reads it exactly): `overwrite`.
        replaced = ins.dst.replaces
        attn_floor = clear_slot(replaced) if replaced is not None else -1
        mlp_floor = replaced.last_read if replaced is not None else -1
        if ins.is_linear:
            slot = max(ready_remote, ready_here) + 1
            while (slot % 2 == 0 and slot < attn_floor) or (slot % 2 and (
                    remote or not mlp_ok(slot // 2, "neutral") or slot < mlp_floor)):
                slot += 1
            if slot % 2:
                if replaced is not None:
                    _overwrite(replaced, slot)
                mode[slot // 2] = "neutral"
                ins.block, ins.stage = slot // 2, "mlp"
                for v in here:
                    v.read_at(slot)
            else:
                ins.block, ins.stage = slot // 2, "attn"
                for v, _ in ins.reads:
                    v.read_at(slot)
            ins.dst.write_slot = slot
            last_block = max(last_block, ins.block)
            continue
        want = ins.divisor if ins.divisor is not None else "neutral"
        if replaced is not None and ins.divisor is not None and replaced in ins.registers_read:
            raise CompileError(f"{ins.op.where()}: in a shared loop a division cannot overwrite "
                               f"'{replaced.name}', which it reads; divide into another var")
        block = 0
        while not (
            2 * block > ready_remote
            and 2 * block + 1 > ready_here
            and (ins.divisor is None or 2 * block > ins.divisor.write_slot)
            and mlp_ok(block, want)
            and (ins.divisor is None or 2 * block >= attn_floor)
            and (ins.divisor is not None or 2 * block + 1 >= mlp_floor)
        ):
            block += 1
        if replaced is not None and ins.divisor is None:
            _overwrite(replaced, 2 * block + 1)
        mode[block] = want
        ins.block = block
        ins.stage = "attn+mlp" if remote or ins.divisor is not None else "mlp"
        for v in here:
            v.read_at(2 * block + 1)
        if ins.mask is not None:
            ins.mask.read_at(2 * block + 1)
        for v in remote:
            v.read_at(2 * block)
        if ins.divisor is not None:
            ins.divisor.read_at(2 * block)
        ins.dst.write_slot = 2 * block + 1
        last_block = max(last_block, ins.block)
    for loop in loops.values():
        ends = [max(i.block for i in low.instrs if i.op.loop == (loop.loop_id, k))
                for k in range(len(loop.starts))]
        loop.length = ends[0] - loop.starts[0] + 1
    low.output.read_at(NEVER)
    n_blocks = max((ins.dst.write_slot // 2 for ins in low.instrs), default=-1) + 1
    temps = []
    anchors = {}
    by_dst = {ins.dst: ins for ins in low.instrs}
    for ins in low.instrs:
        if ins.stage == "attn+mlp":
            for i, (v, at) in enumerate(ins.reads):
                if not isinstance(at, Here):
                    t = Value(f"{v.label}@{type(at).__name__}", 0, v.width, "temp", v.bound,
                              write_slot=2 * ins.block, last_read=2 * ins.block + 1)
                    if ins.dst.template is not None:
                        t.template = by_dst[ins.dst.template].temps[i]
                    ins.temps[i] = t
                    temps.append(t)
        if ins.divisor is not None:
            anchors[ins.block] = ins.divisor
    return Schedule(max(n_blocks, 1), mode, low.instrs, temps, anchors, list(loops.values()))


def _overwrite(old: Value, slot: int) -> None:
    """The MLP at `slot` replaces `old` in its rows (it subtracts it: no attention clear)."""
    old.read_at(slot)
    old.overwritten_at = slot


def clear_slot(v: Value) -> int | None:
    """The attention slot whose self-head zeroes the value's rows, or None if it stays (or an
    MLP overwrites it in place)."""
    if v.overwritten_at is not None:
        return None
    if v.clear_override is not None:
        return v.clear_override
    if v.last_read >= NEVER:
        return None
    slot = v.last_read if v.last_read % 2 == 0 else v.last_read + 1
    first_after_write = v.write_slot + 1 if v.write_slot % 2 else v.write_slot + 2
    return max(slot, first_after_write)
