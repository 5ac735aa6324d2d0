"""The layout record (layout.json): what every row, head and MLP of a compiled model means.

Runs last; sets no field. Facts are written as the typed records of raspicl.layout_records
(slots, head writes, labels, clear points, each MLP's divisor), which inspect, export and the
schema read; beside them, prose glosses ('written': 'block 1 mlp', a head's 'purpose') are for
people and are never parsed. Clear points come from the Liveness the layout carries.
"""

from __future__ import annotations

from dataclasses import dataclass

from raspicl.compiler.assemble import BlockSpec
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.gadgets.attention import HeadSpec, place_key
from raspicl.compiler.ir import FusedDefinitions
from raspicl.compiler.layout import Layout
from raspicl.compiler.lower import Instr, Lowered, Value
from raspicl.compiler.schedule import Schedule
from raspicl.contract import Instruction, Read, instruction_record
from raspicl.lang.reads import Here, place_record
from raspicl.layout_records import (
    ANCHOR_ROWS,
    FORMAT_VERSION,
    HeadWrite,
    HeadWriteKind,
    slot_json,
)
from raspicl.model import ModelConfig
from raspicl.slots import run_of
from raspicl.slots import slot_name as name_of


def describe(low: Lowered, sched: Schedule, layout: Layout, blocks: list[BlockSpec],
             order: list[int], config: CompilerConfig, cfg: ModelConfig) -> dict:
    """The layout record. `blocks` are the scheduled blocks in run order; `order` maps each
    run to the stored block it executes (the same list as architecture.block_order)."""
    program = low.program
    fmt = program.format
    def slot_name(slot: int | None) -> str | None:
        if slot is None or run_of(slot) >= len(order):
            return None
        return name_of(slot, order)

    live = layout.liveness
    by_run = _ByRun.of(sched, layout, low.fused_defs)
    arch = cfg.arch
    compiler = config.to_dict()
    if not arch.reads_through_layernorm:  # paper layouts stay as they were
        compiler.pop("ln_anchor", None)
        compiler.pop("ln_division_anchor", None)
        compiler.pop("ln_restore_anchor", None)
    if config.product_range is None:  # layouts without it stay as they were
        compiler.pop("product_range", None)
    row_names = list(layout.row_names) + ["pad"] * (cfg.d_model - len(layout.row_names))
    return {
        "format_version": FORMAT_VERSION,
        "program": {"name": program.name, "params": _jsonable(program.params)},
        "architecture": _architecture(cfg, config),
        "prompt": {
            "format": fmt.name, "d": fmt.d, "n_examples": fmt.n, "n_tokens": fmt.n_tokens,
            "d_token": fmt.d_token,
            "tokens": {"x": "[0, x_i]", "y": "[y_i, 0, ..., 0]", "query": "[0, x_q]"},
            "token_components": {"y": [0], "x": list(range(1, fmt.d + 1))},
            "roles": fmt.roles(),
        },
        "fixed_rows": dict(layout.fixed),
        "row_names": row_names,
        "registers": _registers(low, program, slot_name, layout, order),
        "temporaries": [_temporary(ins, i, t, order, slot_name, live) for ins in low.instrs
                        for i, t in ins.temps.items()],
        "masks": {v.name: {"row": v.rows[0], "values": mask.tolist(), "label": v.label,
                           "written_slot": slot_json(v.write_slot, order),
                           "cleared_slot": slot_json(live.clear_slot(v), order)}
                  for v, mask in low.masks.values()},
        "constants": {name: program.constants[name].tolist() for name, reg in
                      program.registers.items() if reg.kind == "const"},
        "output": {"register": program.output_spec.register.name,
                   "roles": list(program.output_spec.roles),
                   "positions": program.output_positions(), "rows": low.output.rows,
                   "shape": list(program.output_spec.register.shape)},
        "domain": _domain(low),
        "ops": [{"index": ins.op.index, "kind": ins.op.kind, "dst": ins.dst.label,
                 "source": str(ins.op.source), "text": ins.op.describe(),
                 "block": order[ins.block], "run": ins.block, "stage": ins.stage}
                | ({"absorbed_by": list(ins.dst.absorbed_by)} if ins.fused else {})
                for ins in low.instrs],
        "depth": {"critical_path": low.fusion.critical_path if low.fusion else None,
                  "blocks": len(order),
                  "fused": [{"value": f.label, "op": f.op, "absorbed_by": list(f.absorbed_by)}
                            for f in (low.fusion.fused if low.fusion else [])]}
        | ({"note": low.fusion.note} if low.fusion and low.fusion.note else {})
        | _common(low),
        "blocks": [_block(i, blocks, layout, cfg, [r for r, s in enumerate(order) if s == i],
                          by_run)
                   for i in range(cfg.n_layers)],
        "loops": [{"blocks": order[lp.starts[0]:lp.starts[0] + lp.length],
                   "repeat": len(lp.starts), "first_runs": lp.starts}
                  for lp in sched.loops if len(order) > cfg.n_layers],
        "compiler": compiler,
        "monitor": _monitor(low, blocks, order, config, arch.approximate,
                            _cleared_rows(layout) if arch.reads_through_layernorm else None),
    }


def _common(low: Lowered) -> dict:
    """The depth record's entry for the common subexpressions cse.py eliminated: each
    duplicate's label and op, and the survivor it aliases; none when it eliminated nothing
    (such a layout is the one a compiler without the pass wrote)."""
    cse = low.cse
    if cse is None or not (cse.common or cse.kept_for_loops):
        return {}
    record = {"common": [{"value": c.label, "op": c.op, "alias_of": c.survivor,
                          "survivor_op": c.survivor_op} for c in cse.common]}
    if cse.merged:
        record["merged_constants"] = [{"value": a, "alias_of": b} for a, b in cse.merged]
    if cse.kept_for_loops:
        record["common_kept_for_loops"] = cse.kept_for_loops
    return record


def _architecture(cfg: ModelConfig, config: CompilerConfig) -> dict:
    """The layout's architecture record: the target's facts (raspicl.arch) and the sizes."""
    arch = cfg.arch
    record = {
        "name": arch.name,
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "n_ctx": cfg.n_ctx,
        "d_token": cfg.d_token, "d_out": cfg.d_out, "act_fn": arch.act_fn,
        "layernorm": {"before_attention": arch.ln_before_attention,
                      "before_mlp": arch.ln_before_mlp, "final": arch.ln_final,
                      "eps": list(cfg.ln_eps)},
        "attention_score_divisor": arch.score_divisor,
        "positional_embedding": arch.positional_embedding,
        "block_order": list(cfg.order()),
    }
    if arch.reads_through_layernorm:
        record["ln_eps"] = arch.shared_eps
        record["ln_anchor"] = config.ln_anchor
        record["ln_restore_anchor"] = config.ln_restore_anchor or config.ln_anchor
    return record


def _cleared_rows(layout: Layout) -> dict[int, set[int]]:
    """slot -> the rows a value is cleared from (attention) or overwritten in (MLP) there:
    a write into such a row lands on the old value it removes; a write into any other row
    lands on whatever a past clear left (under gpt2 a clear reads through ln1 and leaves
    |old| |ratio - 1|, which the monitor charges in full)."""
    out: dict[int, set[int]] = {}
    live = layout.liveness
    for v in layout.values:
        for run in live.cleared_by(v):
            out.setdefault(2 * run, set()).update(v.rows)
        if v.overwritten_at is not None:
            out.setdefault(v.overwritten_at, set()).update(v.rows)
    return out


def _function_record(ins: Instr, facts, form: str) -> dict | None:
    """An apply's function, gadget and GeLU form, as the monitor reads them (None for any
    other instruction)."""
    if ins.function is None:
        return None
    return {**ins.function.record(), **facts.elementwise.record(), "form": form}


def _monitor(low: Lowered, blocks: list[BlockSpec], order: list[int],
             config: CompilerConfig, form: str,
             cleared: dict[int, set[int]] | None = None) -> dict:
    """The record raspicl.monitor walks: every value's rows, every instruction with its
    gadgets' constants, each stored block's division anchor, and the tolerance vouched for.
    cleared (gpt2, `_cleared_rows`): each instruction also lists the dst components (and each
    remote read the temporary components) whose rows are cleared where it writes them."""
    values = {}
    for v in low.values:
        values[v.label] = {"kind": "fused" if v.fused else v.kind, "rows": v.rows,
                           "written_after": v.write_slot + 1 if v.kind == "op" else 0}
        if v.fused:  # no rows to count: its width
            values[v.label]["width"] = v.width
    instructions = []
    for ins in low.instrs:
        facts = blocks[ins.block].gadgets.get(ins.op.index)
        T = low.program.format.n_tokens
        defined = ins.dst.defined if ins.dst.defined is not None else [True] * T

        def landing(rows, slot):
            if cleared is None:
                return None
            return [k for k, r in enumerate(rows) if r in cleared.get(slot, ())]

        instructions.append(instruction_record(Instruction(
            op=ins.op.index, kind=ins.op.kind, dst=ins.dst.label, source=str(ins.op.source),
            run=ins.block, stage=ins.stage,
            defined=[int(t) for t in range(T) if defined[t]],
            reads=[Read(v.label, place_record(at),
                        tuple(ins.temps[i].rows) if i in ins.temps else (),
                        landing(ins.temps[i].rows, 2 * ins.block) if i in ins.temps else None)
                   for i, (v, at) in enumerate(ins.reads)],
            landing_cleared=landing(ins.dst.rows, ins.dst.write_slot),
            linear=list(ins.linear), bias=[float(b) for b in ins.bias],
            pairs=list(facts.pairs) if facts else [],
            products=list(ins.products),
            divisor=ins.divisor.label if ins.divisor is not None else None,
            mask=ins.mask.label if ins.mask is not None else None,
            gated=list(ins.gated),
            gated_bias=[float(b) for b in ins.gated_bias] if ins.gated_bias is not None else [],
            gate_bound=list(facts.gate_bound) if facts else [],
            function=_function_record(ins, facts, form))))
    first_run: dict[int, int] = {}
    for run, stored in enumerate(order):
        first_run.setdefault(stored, run)
    anchors = [blocks[first_run[b]].anchor if blocks[first_run[b]].divisor is not None
               else None for b in range(len(first_run))]
    return {"tolerance": config.contract_tolerance, "values": values,
            "instructions": instructions, "anchors": anchors, "output": low.output.label}


def _temporary(ins, i: int, t, order: list[int], slot_name, live) -> dict:
    """A temporary: the rows an MLP op's remote operand is moved into by its block's attention."""
    c = live.clear_slot(t)
    return {"name": t.label, "label": t.label, "rows": t.rows, "written": slot_name(t.write_slot),
            "cleared": slot_name(c), "bound": t.bound,
            "written_slot": slot_json(t.write_slot, order), "cleared_slot": slot_json(c, order),
            "for_op": ins.op.index, "operand": ins.reads[i][0].label}


def _registers(low: Lowered, program, slot_name, layout: Layout, order: list[int]) -> dict:
    out: dict[str, dict] = {}
    for v in low.values:
        if v.kind == "mask":  # a select's token mask: listed under masks, not registers
            continue
        reg = program.registers[v.name]
        entry = out.setdefault(v.name, {"shape": list(reg.shape), "kind": reg.kind,
                                        "versions": []})
        c = layout.liveness.clear_slot(v)
        entry["versions"].append({
            "version": v.version,
            "rows": v.rows,
            "op": v.op.index if v.op is not None else None,
            "written": slot_name(v.write_slot),
            "written_after": v.write_slot + 1,
            "cleared": slot_name(c),
            "overwritten": slot_name(v.overwritten_at),  # by its successor, in place (loops)
            "bound": v.bound,
            "label": v.label,
            "written_slot": slot_json(v.write_slot, order),
            "cleared_slot": slot_json(c, order),
            "overwritten_slot": slot_json(v.overwritten_at, order),
        } | ({"absorbed_by": list(v.absorbed_by)} if v.fused else {}))
    return out


def _domain(low: Lowered) -> dict:
    return {
        "x_abs_max": low.inputs["x"].bound,
        "y_abs_max": low.inputs["y"].bound,
        "divisors": [{"op": ins.op.index, "register": ins.divisor.label,
                      "abs_min": ins.divisor_min, "version": ins.divisor.version,
                      "tokens": list(ins.divisor_tokens)} for ins in low.instrs
                     if ins.divisor is not None],
        "calibration": low.calibration.description,
        "note": "bounds are the largest |value| seen on the calibration prompts times the "
                "compiler's bound_margin (or the interval bound of a value that cancels on "
                "them); a divisor's tokens are those where its quotient is defined. These "
                "scale the gadgets; what the model vouches for is checked at run time by the "
                "monitor (layout['monitor'])",
    }


@dataclass
class _ByRun:
    """The schedule and liveness indexed by run, for the heads' actions."""

    instrs: dict[int, list[Instr]]
    cleared: dict[int, list[Value]]  # run -> values its self-head clears, in layout order
    anchors: dict[int, Value]
    defs: FusedDefinitions  # the fused values' definitions (fused factors' places)

    @classmethod
    def of(cls, sched: Schedule, layout: Layout, defs: FusedDefinitions) -> _ByRun:
        instrs: dict[int, list[Instr]] = {}
        for ins in sched.instrs:
            if not ins.fused:
                instrs.setdefault(ins.block, []).append(ins)
        cleared: dict[int, list[Value]] = {}
        for v in layout.values:
            for run in dict.fromkeys(layout.liveness.cleared_by(v)):
                cleared.setdefault(run, []).append(v)
        return cls(instrs, cleared, sched.anchors, defs)


def _block(index: int, blocks: list[BlockSpec], layout: Layout, cfg: ModelConfig,
           runs: list[int], by_run: _ByRun) -> dict:
    """One stored block: its heads (as in its first run, with every run's actions), its
    attention bias and its MLP. `blocks` are the BlockSpecs of every run."""
    names = layout.row_names
    block = blocks[runs[0]]
    heads = []
    ordered = sorted(block.heads.items(), key=lambda kv: kv[0])
    for h, (key, head) in enumerate(ordered):
        actions = [a.to_json() for run in runs
                   for a in _head_actions(blocks[run].heads[key], key[:-1], run, by_run, layout)]
        heads.append({
            "head": h,
            "place": head.place.describe(),
            "where": place_record(head.place),
            "reads": [names[r] for r in head.columns],
            "writes": [{"from": names[head.columns[c]], "to": names[r],
                        "from_row": head.columns[c], "to_row": r, "coef": coef}
                       for c, r, coef in head.writes],
            "purpose": head.purposes,
            "actions": actions,
        })
    return {
        "block": index,
        "runs": runs,
        "heads": heads,
        "attention_bias": [{"to": names[r], "row": r, "value": b}
                           for r, b in sorted(block.b_O.items()) if b != 0.0],
        "mlp": {"mode": "neutral" if block.divisor is None
                else f"divide by |{block.divisor.label}|",
                "divisor": block.divisor.label if block.divisor is not None else None,
                "ln_eps": cfg.ln_eps[index], "units": len(block.units),
                "anchor": block.anchor if block.divisor is not None else None,
                "ops": block.mlp_ops},
    }


def _head_actions(head: HeadSpec, key: tuple, run: int, by_run: _ByRun,
                  layout: Layout) -> list[HeadWrite]:
    """What one head (one part of a split head: `key` its place's key) does in one run, from
    the schedule, the layout and liveness; each action keeps only the rows this part writes."""
    written = {r for _, r, _ in head.writes}

    def mine(rows) -> tuple[int, ...]:
        return tuple(dict.fromkeys(r for r in rows if r in written))

    out = _op_actions(key, run, by_run, mine)
    if key == place_key(Here()):
        out += _self_head_actions(head, run, by_run, layout, mine)
    return out


def _op_actions(key: tuple, run: int, by_run: _ByRun, mine) -> list[HeadWrite]:
    """Moves (attention ops' results) and temporaries (MLP ops' remote operands) this head
    writes in this run."""
    out: list[HeadWrite] = []
    for ins in by_run.instrs.get(run, []):
        src = str(ins.op.source)
        if ins.stage == "attn":
            terms = [(o, ri) for o, _, ri, _ in ins.linear if place_key(ins.reads[ri][1]) == key]
            rows = mine(ins.dst.rows[o] for o, _ in terms)
            if rows:
                reads = tuple(dict.fromkeys(ins.reads[ri][0].label for _, ri in terms))
                out.append(HeadWrite(HeadWriteKind.MOVE, run, ins.dst.label, rows,
                                     ins.op.index, src, reads))
        for i, t in ins.temps.items():
            v, at = ins.reads[i]
            rows = mine(t.rows)
            places = [p for _, p in by_run.defs.places(v, at)] if v.fused else [at]
            if key in {place_key(p) for p in places} and rows:
                out.append(HeadWrite(HeadWriteKind.TEMPORARY, run, t.label, rows, ins.op.index,
                                     src, (v.label,)))
    return out


def _self_head_actions(head: HeadSpec, run: int, by_run: _ByRun, layout: Layout,
                       mine) -> list[HeadWrite]:
    """The self-head's anchors (from the schedule), its anchor clears (rows onto themselves
    with -1 in its writes) and its clears of dead values (from liveness)."""
    out: list[HeadWrite] = []
    fixed = layout.fixed
    anchors = [fixed[n] for n in ANCHOR_ROWS if n in fixed]
    divisor = by_run.anchors.get(run)
    if divisor is not None and mine(anchors):
        op = next(ins.op for ins in by_run.instrs[run] if ins.divisor is divisor)
        out.append(HeadWrite(HeadWriteKind.ANCHOR, run, divisor.label, mine(anchors), op.index,
                             str(op.source), (divisor.label,)))
    self_clears = {head.columns[c] for c, r, coef in head.writes
                   if coef == -1.0 and head.columns[c] == r}
    for name in ANCHOR_ROWS:
        if name in fixed and fixed[name] in self_clears:
            out.append(HeadWrite(HeadWriteKind.CLEAR, run, name, (fixed[name],)))
    for v in by_run.cleared.get(run, []):
        rows = mine(v.rows)
        if rows:
            out.append(HeadWrite(HeadWriteKind.CLEAR, run, v.label, rows))
    return out


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
