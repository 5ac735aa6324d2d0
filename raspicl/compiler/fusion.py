"""Fusion pass: linear values that their readers can compute get no rows and no sublayer.

Runs between lowering (and loops.link_iterations) and scheduling: Lowered -> Lowered, in place,
with a typed record of what it fused (`Fusion`). A *linear* value F (an op with no products,
divisor or mask: aff, mov, mean, linear raw, a mul folded with a constant) is fused when every
op that reads it can absorb it:

- a reader's linear terms (an attention head's OV map and b_O, an MLP's affine units, the
  next linear op, a select's linear or gated part, a division's numerator): F's terms are
  substituted, each read at the composition of the two places (`compose`);
- a division by F: the division's attention writes its anchors +-N F from F's reads (heads
  at F's places, N times F's bias in b_O);
- a reader's product terms: F stays an operand of the product, a *factor* that is an affine
  form of rows. Read at the current token over reads at the current token, the product's W_in
  computes it (gadgets/mlp.product_form_units, scaled by F's own calibrated bound); otherwise
  the block's attention computes it into the temporary it moves remote operands to (heads at
  the composed places, F's bias in b_O).

F is kept (materialised) when it is the output or a select's mask; when some read cannot be
composed (lang/reads.compose: a Mean of anything but the current token, an Offset of an At, a
strict Offset of a clamped one, ...); when more than `config.fusion_max_readers` ops read it
(each reader repeats F's terms: value columns of a head, entries of W_in, never extra hidden
units, so a few readers cost less than F's rows and sublayer); when more than one reader
would need a temporary of its own for it (a product factor read at another token, or over
reads at another token: each such temporary costs F's width in rows, where F stored costs it
once); and, with loops="share", when it is loop state
(a var's last write that the next iteration overwrites in place), when a reader stands after
an in-place write over one of F's reads (it would compute F from the new version: t = (a + b)/2
read after the loop, once the last iteration has written a and b over their old rows), or when
its twins in other iterations cannot all be fused (identical iterations must stay identical).
compile_program keeps the fused layout only when `prefer_fused` says it is not worse than the
unfused one.

The pass runs once and leaves typed results on Lowered (ir.py): `Lowered.fusion`, the
`Fusion` record (records.py: what it fused, the critical-path depth) that the layout reports,
and `Lowered.fused_defs`, the fused values' definitions (`FusedDefinitions`), which placement,
temporaries, assembly and describe read instead of calling back into this module.

A fused value keeps its Value (bound, definedness) with `absorbed_by` set: the layout records
which ops absorbed it, the monitor computes it from its reads (raspicl.monitor) and verify
compares only values with rows. `critical_path_depth` is the lower bound on blocks that any
schedule of the op kinds needs, reported beside the achieved depth.
"""

from __future__ import annotations

import numpy as np

from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.ir import FusedDefinitions, Instr, Lowered, Value
from raspicl.compiler.records import FusedValue, Fusion
from raspicl.lang.reads import Here, Where, compose
from raspicl.slots import attn_slot, is_attn, mlp_slot, run_of

__all__ = [
    "FusedDefinitions",
    "FusedValue",
    "Fusion",
    "compose",
    "critical_path_depth",
    "fuse",
    "prefer_fused",
]


def prefer_fused(
    blocks: int, d_model: int, plain_blocks: int, plain_d_model: int, config: CompilerConfig
) -> bool:
    """Whether the fused layout is kept: fewer blocks and d_model at most
    config.fusion_width_slack times the plain one's, or as many blocks and a narrower stream.
    (Fusing lengthens the lives of the fused values' operands, which can widen the stream; a
    fusion that gains nothing leaves the program compiled as written.)"""
    if config.fusion_always:
        return True
    if blocks < plain_blocks:
        return d_model <= config.fusion_width_slack * plain_d_model
    return blocks == plain_blocks and d_model < plain_d_model


# ---------------------------------------------------------------------- the pass


def fuse(low: Lowered, config: CompilerConfig, share_loops: bool = False) -> Fusion:
    """Fuse what can be fused (module doc), in place; returns the record (also low.fusion).

    With config.fusion off it fuses nothing and records the critical path. Either way it
    records the definitions of every fused value, its own and cse.py's aliases
    (low.fused_defs): what the passes after it read, once it has decided."""
    depth = critical_path_depth(low)
    record = Fusion([], depth)
    low.fusion = record
    if config.fusion:
        _fuse_values(low, config, share_loops, record)
    low.fused_defs = FusedDefinitions({ins.dst: ins for ins in low.instrs if ins.fused})
    return record


def _fuse_values(low: Lowered, config: CompilerConfig, share_loops: bool,
                 record: Fusion) -> None:
    """Run the pass until the twins of a shared loop agree, appending to record.fused."""
    saved = [_snapshot(ins) for ins in low.instrs]
    excluded: set[int] = set()
    while True:
        clash = _run(low, config, share_loops, excluded, record)
        if clash is None:
            return
        excluded.add(clash)  # twins disagree: keep the whole group, start again
        for ins, snap in zip(low.instrs, saved, strict=True):
            _restore(ins, snap)
        for v in low.values:
            if v.alias_of is None:  # a duplicate's alias (cse.py) stays one
                v.absorbed_by = []
        record.fused = []


def _group(v: Value) -> int:
    """One id for a value and its twins in other iterations of a shared loop."""
    return id(v.template if v.template is not None else v)


def _run(
    low: Lowered, config: CompilerConfig, share_loops: bool, excluded: set[int], record: Fusion
) -> int | None:
    """One pass in program order; returns a twin group whose members disagree, else None."""
    special = {low.output} | {ins.mask for ins in low.instrs if ins.mask is not None}
    replaced = {v.replaces for v in low.values if v.replaces is not None}
    # where a shared loop's state is overwritten in place: id(old version) -> the position of
    # the instruction that writes the new version over its rows
    overwritten = {id(c.dst.replaces): j for j, c in enumerate(low.instrs)
                   if c.dst.replaces is not None}
    decided: dict[int, bool] = {}
    for k, ins in enumerate(low.instrs):
        F = ins.dst
        readers = [
            (j, c) for j, c in enumerate(low.instrs[k + 1 :], k + 1)
            if c.divisor is F or any(v is F for v, _ in c.reads)
        ]
        ok = (
            ins.is_linear
            and F.kind == "op"
            and F not in special
            and bool(readers)
            and len(readers) <= config.fusion_max_readers
            and all(_absorbable(ins, c) for _, c in readers)
            and sum(_needs_own_temp(ins, c) for _, c in readers) <= 1
            # a reader computes F from F's reads where it stands: none of them may have been
            # overwritten in place (a shared loop's state) by then
            and not any(k < overwritten.get(id(v), -1) < j for j, _ in readers
                        for v, _ in ins.reads)
        )
        if share_loops:
            ok = ok and F.replaces is None and F not in replaced and _group(F) not in excluded
            g = _group(F)
            if ins.op.loop is not None and g in decided and decided[g] != ok:
                return g
            decided.setdefault(g, ok)
        if not ok:
            continue
        for _, c in readers:
            _absorb(ins, c)
        F.absorbed_by = [c.op.index for _, c in readers]
        record.fused.append(FusedValue(F.label, ins.op.index, tuple(F.absorbed_by)))
    return None


def _absorbable(f: Instr, c: Instr) -> bool:
    """Every read of f.dst by c composes with every place f reads at."""
    for v, at in c.reads:
        if v is f.dst and any(compose(at, p) is None for _, p in f.reads):
            return False
    return True


def _needs_own_temp(f: Instr, c: Instr) -> bool:
    """Whether c would read f.dst as a product factor through a temporary of its own (a read
    elsewhere, or f reading elsewhere): each such reader adds f's width in rows, so f is
    fused into at most one of them (else it is cheaper stored once)."""
    factors = {t[2] for t in c.products} | {t[4] for t in c.products}
    return any(
        c.reads[i][0] is f.dst
        and (
            not isinstance(c.reads[i][1], Here) or any(not isinstance(p, Here) for _, p in f.reads)
        )
        for i in factors
    )


def _absorb(f: Instr, c: Instr) -> None:
    """Substitute f into c's linear and gated terms; reads of f that only products use stay
    (factors), reads nothing uses any more are dropped."""
    F = f.dst
    targets = [i for i, (v, _) in enumerate(c.reads) if v is F]
    index: dict[tuple, int] = {}

    def read_index(value: Value, at: Where) -> int:
        key = (id(value), at)
        if key not in index:
            for j, (v2, at2) in enumerate(c.reads):
                if v2 is value and at2 == at:
                    index[key] = j
                    break
            else:
                c.reads.append((value, at))
                index[key] = len(c.reads) - 1
        return index[key]

    def substitute(terms, bias: np.ndarray):
        out = []
        for o, coef, ri, comp in terms:
            if ri not in targets:
                out.append((o, coef, ri, comp))
                continue
            at = c.reads[ri][1]
            bias[o] += coef * f.bias[comp]
            for fo, fc, fr, fk in f.linear:
                if fo == comp:
                    r, p = f.reads[fr]
                    out.append((o, coef * fc, read_index(r, compose(at, p)), fk))
        return _combine(out)

    c.bias = np.array(c.bias, dtype=np.float64)
    c.linear = substitute(c.linear, c.bias)
    if c.mask is not None:
        c.gated_bias = np.array(c.gated_bias, dtype=np.float64)
        c.gated = substitute(c.gated, c.gated_bias)
    _drop_unused(c)


def _combine(terms: list[tuple[int, float, int, int]]) -> list[tuple[int, float, int, int]]:
    """Terms on the same (out, read, component) summed, zero sums dropped, first-seen order."""
    acc: dict[tuple[int, int, int], float] = {}
    for o, coef, r, k in terms:
        acc[(o, r, k)] = acc.get((o, r, k), 0.0) + coef
    return [(o, c, r, k) for (o, r, k), c in acc.items() if c != 0.0]


def _drop_unused(c: Instr) -> None:
    used = (
        {t[2] for t in c.linear}
        | {t[2] for t in c.gated}
        | {t[2] for t in c.products}
        | {t[4] for t in c.products}
    )
    keep = [i for i in range(len(c.reads)) if i in used]
    if len(keep) == len(c.reads):
        return
    remap = {old: new for new, old in enumerate(keep)}
    c.reads = [c.reads[i] for i in keep]
    c.linear = [(o, x, remap[r], k) for o, x, r, k in c.linear]
    c.gated = [(o, x, remap[r], k) for o, x, r, k in c.gated]
    c.products = [(o, x, remap[a], ca, remap[b], cb) for o, x, a, ca, b, cb in c.products]


def _snapshot(ins: Instr) -> tuple:
    return (
        list(ins.reads),
        list(ins.linear),
        list(ins.products),
        np.array(ins.bias),
        list(ins.gated),
        None if ins.gated_bias is None else np.array(ins.gated_bias),
    )


def _restore(ins: Instr, snap: tuple) -> None:
    (ins.reads, ins.linear, ins.products, ins.bias, ins.gated, ins.gated_bias) = (
        list(snap[0]),
        list(snap[1]),
        list(snap[2]),
        np.array(snap[3]),
        list(snap[4]),
        None if snap[5] is None else np.array(snap[5]),
    )


# ---------------------------------------------------------------------- the lower bound


def critical_path_depth(low: Lowered) -> int:
    """The fewest blocks any schedule of the op kinds can use: moves (reads at another token)
    in attention, products, selects and divisions in MLPs, linear maps free (a reader can
    absorb them). Each value gets the earliest slot after which it can be read
    (raspicl.slots: 2 r attention of run r, 2 r + 1 its MLP; -1 the embedding):

    - a linear value stands for the stored values it reads, at their places (`compose`): a
      read of it is a read of those (moves compose: a move of a move is one move); where a
      place does not compose it is read as a value of its own, ready when its reads are
      (at once for reads at the current token, at the first attention after the value for
      a read elsewhere);
    - a read at the current token needs the value before the reader's sublayer, a read at
      another token (or a division's anchor, which attention writes) an attention after it;
    - an MLP op (products, select, division) takes the first MLP after its operands.

    The output needs at least one block. Every schedule the compiler makes, fused or not,
    honours each of these (tests/test_fusion.py checks it on random programs)."""
    ready: dict[int, int] = {}
    form: dict[int, list[tuple[Value, Where]] | None] = {}  # linear value -> its stored reads
    for v in low.values:
        if v.kind != "op":
            ready[id(v)] = -1

    def first_attn_after(s: int) -> int:
        slot = s + 1
        return slot if is_attn(slot) else slot + 1

    def expand(v: Value, at: Where) -> list[tuple[Value, Where]]:
        parts = form.get(id(v))
        if parts is not None:
            composed = [(s, compose(at, p)) for s, p in parts]
            if all(p is not None for _, p in composed):
                return composed
        return [(v, at)]

    def needs(reads: list[tuple[Value, Where]]) -> tuple[list[int], list[int]]:
        here = [ready[id(v)] for v, at in reads if isinstance(at, Here)]
        moved = [first_attn_after(ready[id(v)]) for v, at in reads if not isinstance(at, Here)]
        return here, moved

    for ins in low.instrs:
        reads = [r for v, at in ins.reads for r in expand(v, at)]
        here, moved = needs(reads)
        if ins.mask is not None:
            here.append(ready[id(ins.mask)])
        if ins.is_linear:
            ready[id(ins.dst)] = max(here + moved + [-1])
            form[id(ins.dst)] = reads
            continue
        if ins.divisor is not None:
            moved += [first_attn_after(ready[id(v)]) for v, _ in expand(ins.divisor, Here())]
        run = 0
        while not (mlp_slot(run) > max(here + [-1]) and attn_slot(run) >= max(moved + [0])):
            run += 1
        ready[id(ins.dst)] = mlp_slot(run)
    return max(1, run_of(max(ready[id(low.output)], 0)) + 1)
