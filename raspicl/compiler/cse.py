"""Common-subexpression elimination: an op that computes what an earlier op already computed
reads the earlier result instead of computing it again.

Runs on the lowered program (after lower.py's SSA and bounds, before loops.link_iterations
and fusion), so it serves programs written op by op as well as the expression layer and the
scan, whose step can produce the same product in two state entries (`w + v_new` and `v_new`
carry the product inside v_new once each: two identical product ops, issue 20).

Two instructions are *identical* when they have the same op kind and width and the same
terms over the same values at the same places: reads compared as (value, place) after the
values of earlier duplicates are renamed to their survivors, linear and product terms as
multisets over those reads (a product's two factors in either order), the same bias, the same
divisor, for a select the same token mask, gated terms and gated bias, and for an apply the
same function on the same range. SSA makes a value
an unchanging thing (a register written again is a new value), so identical instructions
compute the same value at every token; reads of the later one (the *duplicate*) are
redirected to the earlier one (the *survivor*). Only instructions that cost an MLP are
eliminated (products, divisions, selects): a linear value is the fusion pass's to remove
(fusion.py computes it inside its readers), and an alias of a value fusion removed would
have no rows to point at. The output value is never a duplicate (its rows are the readout's).

The duplicate is kept, as an *alias*: its Value stays (a register version a user may read)
and its instruction becomes the identity over the survivor, marked fused with the survivor's
op as the one that computes it (`Value.absorbed_by`, `Value.alias_of`). Every later stage
treats it as a fused value: it gets no rows and no sublayer, the layout records it with
`absorbed_by` (written where the survivor is), the monitor walks it as a linear value over
the survivor, and `CompiledModel.decode` and the interop readers compute it from the
survivor's rows. The interpreter is untouched: the program's meaning is the same, the
compiled model computes it once.

Shared loops (loops="share") must compile every iteration to the same weights. An
elimination there is kept only when every iteration still reads the same things at the same
body positions (`_iterations_agree`); in a scan the first iteration reads the state the loop
starts from, so the duplicate product of a carried state entry makes iteration 0 read two
start values where later ones read one survivor. When those two start values are constants
with the same entries, the first iteration's read is redirected to the survivor's constant
too (`merged`), which makes the iterations agree; a constant left with no reader is dropped.
Where the iterations still disagree, the loop's eliminations are not made (`kept_for_loops`).

Sets: Instr fields of the duplicates (reads, linear, products, bias, divisor, mask, gated;
the alias's identity form) and the reads and terms of their readers; Value.absorbed_by and
Value.alias_of of the duplicates; removes unread merged constants from Lowered.values and
Lowered.consts. Returns (and stores as Lowered.cse) a `CommonSubexpressions` record.
"""

from __future__ import annotations

import numpy as np

from raspicl.compiler.ir import Instr, Lowered, Value
from raspicl.compiler.records import Common, CommonSubexpressions
from raspicl.lang.reads import Here, Where

__all__ = ["Common", "CommonSubexpressions", "eliminate_common"]


# A read fix: (instruction position, read index) -> the value that read takes instead.
ReadFixes = dict[tuple[int, int], Value]


def eliminate_common(low: Lowered, share_loops: bool = False) -> CommonSubexpressions:
    """Eliminate the common subexpressions of `low`, in place (module doc)."""
    blocked: set[int] = set()  # op indices never eliminated (a shared loop would disagree)
    while True:
        plan, canon = _plan(low, blocked, share_loops)
        fixes: ReadFixes = {}
        bad = _disagreeing_loops(low, plan, canon, fixes) if plan else set()
        if not share_loops or not bad:
            break
        before = len(blocked)
        for ins in low.instrs:
            if ins.op.loop is not None and ins.op.loop[0] in bad:
                blocked.add(ins.op.index)
        for dup in plan:  # duplicates outside the loop that it reads
            if any(_reads(c, dup.dst) for c in low.instrs
                   if c.op.loop is not None and c.op.loop[0] in bad):
                blocked.add(dup.op.index)
        if len(blocked) == before:  # nothing more to block: make no elimination at all
            blocked |= {ins.op.index for ins in low.instrs}
    record = CommonSubexpressions()
    record.kept_for_loops = _count_kept(low, blocked, share_loops) if blocked else 0
    _apply(low, plan, canon, fixes, record)
    low.cse = record
    return record


# ---------------------------------------------------------------------- finding duplicates


def _eliminable(ins: Instr, low: Lowered) -> bool:
    """A (non-linear) instruction that may be a duplicate: not the output (it may still be a
    survivor)."""
    return ins.dst is not low.output and ins.dst.kind == "op"


def _plan(low: Lowered, blocked: set[int], share_loops: bool
          ) -> tuple[dict[Instr, Instr], dict[Value, Value]]:
    """duplicate -> survivor, and value -> survivor value for the duplicates' values.

    With share_loops a survivor inside a loop serves only duplicates of its own iteration
    (one from before the loop serves any): a value of another iteration, or of the last
    iteration read after the loop, would have to outlive the shared blocks that clear it."""
    canon: dict[Value, Value] = {}
    seen: dict[tuple, Instr] = {}
    plan: dict[Instr, Instr] = {}
    for ins in low.instrs:
        if ins.is_linear:
            continue
        key = _key(ins, canon)
        scope = ins.op.loop if share_loops else None
        survivor = seen.get((key, scope)) or seen.get((key, None))
        if survivor is None or ins.op.index in blocked or not _eliminable(ins, low):
            seen.setdefault((key, scope), ins)  # a survivor for later duplicates
            continue
        plan[ins] = survivor
        canon[ins.dst] = survivor.dst
    return plan, canon


def _key(ins: Instr, canon: dict[Value, Value]) -> tuple:
    """What the instruction computes, independent of the order of its reads and terms."""
    reads = [(id(canon.get(v, v)), repr(at)) for v, at in ins.reads]

    def lin(terms) -> tuple:
        return tuple(sorted((o, c, reads[r], k) for o, c, r, k in terms))

    prods = tuple(sorted((o, c) + tuple(sorted([(reads[a], ka), (reads[b], kb)]))
                         for o, c, a, ka, b, kb in ins.products))
    divisor = None if ins.divisor is None else id(canon.get(ins.divisor, ins.divisor))
    return (ins.op.kind, ins.dst.width, lin(ins.linear), prods, ins.function,
            tuple(np.asarray(ins.bias, dtype=np.float64).tolist()), divisor,
            None if ins.mask is None else id(ins.mask), lin(ins.gated),
            None if ins.gated_bias is None
            else tuple(np.asarray(ins.gated_bias, dtype=np.float64).tolist()))


def _reads(ins: Instr, v: Value) -> bool:
    return ins.divisor is v or ins.mask is v or any(r is v for r, _ in ins.reads)


def _count_kept(low: Lowered, blocked: set[int], share_loops: bool) -> int:
    """Duplicates the pass found but left computed (shared loops)."""
    plan, _ = _plan(low, set(), share_loops)
    return sum(1 for dup in plan if dup.op.index in blocked)


# ---------------------------------------------------------------------- shared loops


def _disagreeing_loops(low: Lowered, plan: dict[Instr, Instr], canon: dict[Value, Value],
                       fixes: ReadFixes) -> set[int]:
    """The loops whose iterations, after the eliminations in `plan`, would not read the same
    things at the same body positions. Adds to `fixes` the first iteration's reads of a
    start constant that must read an equal constant instead (module doc)."""
    iterations: dict[int, dict[int, list[int]]] = {}
    for pos, ins in enumerate(low.instrs):
        if ins.op.loop is not None:
            lid, k = ins.op.loop
            iterations.setdefault(lid, {}).setdefault(k, []).append(pos)
    written_in: dict[int, tuple[int, int, int]] = {}  # id(value) -> (loop, iteration, position)
    for lid, its in iterations.items():
        for k, positions in its.items():
            for i, pos in enumerate(positions):
                written_in[id(low.instrs[pos].dst)] = (lid, k, i)
    at_start = _current_at_starts(low, iterations)
    constants = low.program.constants
    bad: set[int] = set()
    for lid, its in iterations.items():
        if len(its) < 2:
            continue

        def sig(v: Value, k: int, lid: int = lid) -> tuple:
            v = canon.get(v, v)
            w = written_in.get(id(v))
            if w is not None and w[:2] == (lid, k):
                return ("in", w[2])
            if at_start[(lid, k)].get(v.name) is v:
                return ("prev", v.name)
            return ("fixed", id(v))

        sigs = {k: [_signature(low.instrs[pos], k, sig, plan) for pos in positions]
                for k, positions in its.items()}
        ref = sigs[1]
        if any(sigs[k] != ref for k in its if k >= 1):
            bad.add(lid)
            continue
        trial: ReadFixes = {}
        for i, pos in enumerate(its[0]):
            ins = low.instrs[pos]
            if sigs[0][i] == ref[i]:
                continue
            if ins in plan or not _fix_first(ins, pos, sigs[0][i], ref[i], at_start[(lid, 0)],
                                            constants, trial):
                bad.add(lid)
                break
        else:
            fixes.update(trial)
    return bad


def _current_at_starts(low: Lowered, iterations: dict) -> dict[tuple[int, int], dict]:
    """(loop, iteration) -> register name -> its value when that iteration starts."""
    starts = {(lid, k): positions[0] for lid, its in iterations.items()
              for k, positions in its.items()}
    first = {pos: key for key, pos in starts.items()}
    current: dict[str, Value] = {v.name: v for v in low.values
                                 if v.kind in ("input", "const", "mask")}
    out: dict[tuple[int, int], dict] = {}
    for pos, ins in enumerate(low.instrs):
        if pos in first:
            out[first[pos]] = dict(current)
        current[ins.dst.name] = ins.dst
    return out


def _signature(ins: Instr, k: int, sig, plan: dict[Instr, Instr]) -> tuple:
    """An instruction as iteration k runs it, its reads by their place in the loop."""
    if ins in plan:
        return ("alias", sig(plan[ins].dst, k))
    return (ins.op.kind, ins.dst.width, tuple((sig(v, k), repr(at)) for v, at in ins.reads),
            tuple(ins.linear), tuple(ins.products), ins.function,
            tuple(np.asarray(ins.bias, dtype=np.float64).tolist()),
            None if ins.divisor is None else sig(ins.divisor, k),
            None if ins.mask is None else id(ins.mask), tuple(ins.gated),
            None if ins.gated_bias is None
            else tuple(np.asarray(ins.gated_bias, dtype=np.float64).tolist()))


def _fix_first(ins: Instr, pos: int, got: tuple, want: tuple, current: dict,
               constants: dict, fixes: ReadFixes) -> bool:
    """Make iteration 0's `ins` (signature `got`) read as its twins do (`want`) by reading,
    where a twin reads the loop's start value of register B, B's start constant in place of
    an equal constant. False when some difference is not of that kind."""
    if got[0] != want[0] or got[1] != want[1] or got[3:] != want[3:] \
            or len(got[2]) != len(want[2]):
        return False
    for r, ((g, gat), (w, wat)) in enumerate(zip(got[2], want[2], strict=True)):
        if (g, gat) == (w, wat):
            continue
        if gat != wat or g[0] != "prev" or w[0] != "prev":
            return False
        old, new = ins.reads[r][0], current.get(w[1])
        if new is None or old.kind != "const" or new.kind != "const" \
                or old.width != new.width \
                or not np.array_equal(np.asarray(constants[old.name], dtype=np.float64),
                                      np.asarray(constants[new.name], dtype=np.float64)):
            return False
        fixes[(pos, r)] = new
    return True


# ---------------------------------------------------------------------- rewriting


def _apply(low: Lowered, plan: dict[Instr, Instr], canon: dict[Value, Value],
           fixes: ReadFixes, record: CommonSubexpressions) -> None:
    """Make each duplicate an alias of its survivor, redirect every read (module doc)."""
    read_before = {id(v) for ins in low.instrs for v in ins.registers_read}
    for pos, ins in enumerate(low.instrs):
        if ins in plan:
            survivor = plan[ins]
            _make_alias(ins, survivor)
            record.common.append(Common(ins.dst.label, ins.op.index, survivor.dst.label,
                                        survivor.op.index))
            continue
        reads = []
        for r, (v, at) in enumerate(ins.reads):
            new = fixes.get((pos, r), canon.get(v, v))
            if new is not v and (pos, r) in fixes:
                record.merged.append((v.label, new.label))
            reads.append((new, at))
        if ins.divisor is not None:
            ins.divisor = canon.get(ins.divisor, ins.divisor)
        if reads != ins.reads:
            ins.reads = reads
            _merge_reads(ins)
    read_after = {id(v) for ins in low.instrs for v in ins.registers_read}
    dropped = [v for v in low.values if v.kind == "const" and id(v) in read_before
               and id(v) not in read_after]
    if dropped:
        gone = {id(v) for v in dropped}
        low.values = [v for v in low.values if id(v) not in gone]
        low.consts = {k: v for k, v in low.consts.items() if id(v) not in gone}


def _make_alias(ins: Instr, survivor: Instr) -> None:
    """ins becomes dst = survivor's value (the identity over one read at the current token),
    fused: computed by the survivor's op."""
    w = ins.dst.width
    ins.reads = [(survivor.dst, Here())]
    ins.linear = [(o, 1.0, 0, o) for o in range(w)]
    ins.products = []
    ins.bias = np.zeros(w)
    ins.divisor, ins.divisor_min, ins.divisor_tokens = None, 0.0, []
    ins.mask, ins.gated, ins.gated_bias = None, [], None
    ins.function = None
    ins.dst.alias_of = survivor.dst
    ins.dst.absorbed_by = [survivor.op.index]
    ins.dst.bound = survivor.dst.bound


def _merge_reads(ins: Instr) -> None:
    """Reads of the same value at the same place (a duplicate and its survivor, both read by
    one op) become one read; terms on the same entries are summed (zero sums dropped)."""
    index: dict[tuple[int, Where], int] = {}
    remap: list[int] = []
    reads: list[tuple[Value, Where]] = []
    for v, at in ins.reads:
        key = (id(v), at)
        if key not in index:
            index[key] = len(reads)
            reads.append((v, at))
        remap.append(index[key])
    if len(reads) == len(ins.reads):
        return
    ins.reads = reads
    ins.linear = _sum_terms([(o, c, remap[r], k) for o, c, r, k in ins.linear])
    ins.gated = _sum_terms([(o, c, remap[r], k) for o, c, r, k in ins.gated])
    acc: dict[tuple, float] = {}
    for o, c, a, ka, b, kb in ins.products:
        fa, fb = sorted([(remap[a], ka), (remap[b], kb)])
        acc[(o,) + fa + fb] = acc.get((o,) + fa + fb, 0.0) + c
    ins.products = [(o, c, a, ka, b, kb) for (o, a, ka, b, kb), c in acc.items() if c != 0.0]


def _sum_terms(terms: list[tuple[int, float, int, int]]) -> list[tuple[int, float, int, int]]:
    acc: dict[tuple[int, int, int], float] = {}
    for o, c, r, k in terms:
        acc[(o, r, k)] = acc.get((o, r, k), 0.0) + c
    return [(o, c, r, k) for (o, r, k), c in acc.items() if c != 0.0]
