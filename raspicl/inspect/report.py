"""The text report of a compiled model: the residual layout table and what each block does.

    layout_table(cm)   fixed rows, and every register version's rows, the sublayer that writes
                       it and the one that clears it
    block_report(cm)   per block: each head's place and its writes grouped into register
                       statements, the MLP's mode, LayerNorm eps, units and ops, each traced to
                       its source line, with the checks of the weights against the layout
                       (checks.py)
    inspect_text(cm)   both

Facts come from the layout's typed records (raspicl.layout_records, via timeline.Rows and each
head's `actions`); the prose glosses are printed, never parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.compiled import CompiledModel
from raspicl.inspect.checks import (
    attention_bias,
    expected_ov,
    missing_clears,
    mlp_rows,
    ov_warning,
    unlisted_head,
)
from raspicl.inspect.text import (
    _num,
    _op_line,
    _params,
    _ranges,
    _shape,
    _table,
    _terms,
    _vector,
)
from raspicl.layout_records import (
    ANCHOR_ROWS,
    HeadWriteKind,
    MlpRecord,
    fused_values,
    head_writes,
)
from raspicl.slots import attn_slot, mlp_slot, run_of
from raspicl.timeline import Rows


def _summary(cm: CompiledModel) -> str:
    L = cm.layout
    a = L["architecture"]
    prog = L["program"]
    order = list(a["block_order"])
    runs = "" if order == list(range(a["n_layers"])) else f", {len(order)} runs"
    text = (f"{prog['name']}({_params(prog['params'])}): {a['n_layers']} blocks{runs}, "
            f"{a['n_heads']} heads per block, d_head {a['d_head']}, d_model {a['d_model']}, "
            f"d_mlp {a['d_mlp']}, {cm.model.n_params():,} parameters "
            f"({str(cm.model.dtype).removeprefix('torch.')})")
    for lp in L.get("loops") or []:
        text += (f"; blocks {', '.join(map(str, lp['blocks']))} run {lp['repeat']} times "
                 f"(from runs {', '.join(map(str, lp['first_runs']))}), weights shared")
    depth = L.get("depth") or {}
    if depth.get("critical_path") is not None:
        text += (f"\ndepth: {depth['blocks']} blocks run; critical path {depth['critical_path']} "
                 f"(the fewest any schedule of its op kinds can use)")
    return text



# ---------------------------------------------------------------------------------------------
# 1. The residual layout


def _fixed_purposes(layout: dict) -> dict[str, str]:
    a = layout["architecture"]
    roles = layout["prompt"]["roles"]
    n_ctx = a["n_ctx"]
    anchor = layout["compiler"].get("division_anchor")
    N = f"N = {_num(anchor)}" if anchor is not None else "N the compiler's division_anchor"
    out = {
        "zero": "never written; each MLP reads LayerNorm's mean off it (LN(zero) = -mean/sigma)",
        "one": "1 at every token: constant input of attention scores and of biases",
        "pos": f"t / {n_ctx} at token t: the position attention scores are built from",
        "pos_sq": f"(t / {n_ctx})^2: with pos, lets a head single out token t-k or token i",
        "anchor_pos": f"+N·s written just before a block that divides by |s| ({N}); LayerNorm "
                      f"then divides by about N·|s|·sqrt(2/d_model)",
        "anchor_neg": "-N·s, the pair of anchor_pos (the anchors add nothing to the mean); "
                      "both are cleared by the next block",
    }
    for role in ("x", "y", "query"):
        ts = [str(t) for t, r in enumerate(roles) if r == role]
        where = f"t = {', '.join(ts)}" if ts else "no token of this prompt"
        out[f"is_{role}"] = (f"1 at {role} tokens ({where}); 'mean over {role} tokens' "
                             f"heads key on it")
    return out


def layout_table(cm: CompiledModel) -> str:
    """The residual stream: what each fixed row is for, and every register version's rows, the
    sublayer that writes it and the one that clears it."""
    L = cm.layout
    rows = Rows(L)
    a = L["architecture"]
    n_fixed = len(L["fixed_rows"])
    lines = [f"Residual stream of {L['program']['name']}: d_model {a['d_model']} = {n_fixed} "
             f"fixed rows + {a['d_model'] - n_fixed} rows for values (reused once a value "
             f"is cleared)", "", "Fixed rows"]
    purposes = _fixed_purposes(L)
    lines += _table(["row", "name", "what it is for"],
                    [[str(r), name, purposes.get(name, "fixed row")]
                     for name, r in sorted(L["fixed_rows"].items(), key=lambda kv: kv[1])])
    lines += ["", "Registers: one line per version (a var's versions are labelled w@0, w@1, "
                  "...); |bound| is the largest value the gadgets are scaled for"]
    body = []
    values = [o for o in rows.occupants if o.kind != "fixed"]
    values.sort(key=lambda o: (min(o.rows), o.written))
    for o in values:
        kind = o.kind if o.op is None else f"{o.kind}, op {o.op}"
        body.append([_ranges(o.rows), o.label, "-" if o.version is None else str(o.version),
                     _shape(o.shape), kind, rows.slot_name(o.written),
                     rows.slot_name(o.cleared), "-" if o.bound is None else f"{o.bound:.3g}"])
    lines += _table(["rows", "register", "version", "shape", "kind", "written", "cleared",
                     "|bound|"], body)
    fused = fused_values(L)
    if fused:
        lines += ["", "Fused values (no rows: computed inside the ops that read them)"]
        for f in fused:
            lines.append(f"  {f.label} (op {f.op}): absorbed by op "
                         f"{', '.join(map(str, f.absorbed_by))}")
    masks = L.get("masks") or {}
    if masks:
        lines += ["", "Masks (0/1 per token, written by W_pos; a select op reads one)"]
        for name, m in masks.items():
            lines.append(f"  row {m['row']}  {name} = {_vector(m['values'])}")
    consts = L.get("constants") or {}
    if consts:
        lines += ["", "Constants (folded into weights and biases; no rows of their own unless "
                      "listed above)"]
        for name, value in consts.items():
            lines.append(f"  {name} = {_vector(value)}")
    out = L["output"]
    pos = ", ".join(str(p) for p in out["positions"])
    lines += ["", f"Output: {out['register']} (rows {_ranges(out['rows'])}, read out by W_U) at "
                  f"token {pos} ({', '.join(out['roles'])})"]
    dom = L["domain"]
    if dom:
        text = f"Domain: |x| <= {dom['x_abs_max']:.3g}, |y| <= {dom['y_abs_max']:.3g}"
        for d in dom.get("divisors", []):
            text += f", |{d['register']}| >= {d['abs_min']:.3g} (op {d['op']})"
        lines.append(text)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. What each block does


def _gloss(where: dict) -> str:
    """What a head's place means, from its typed record (blocks[].heads[].where)."""
    if where["kind"] == "offset":
        return f"token max(t-{where['k']}, 0)" if where.get("clamp") else f"token t-{where['k']}"
    return {"here": "its own token t", "at": "one absolute token, once t reaches it",
            "mean": "uniform over those tokens up to t"}[where["kind"]]


@dataclass
class _HeadRun:
    """What one head does in one run: statements, the values it writes, its layout OV."""

    lines: list[str]
    new: set[str]
    expected: np.ndarray
    moved: set[int]  # the ops whose results this head moves in this run


Write = tuple[int, int, float]  # (from_row, to_row, coef)


def _head_run(head: dict, slot: int, rows: Rows, bias: dict[int, float], bias_done: set,
              cleared: set) -> _HeadRun:
    """Register-level statements for one head at one attention slot."""
    writes = [(w["from_row"], w["to_row"], float(w["coef"])) for w in head["writes"]]
    acts = [a for a in head_writes(head) if a.run == run_of(slot)]
    clears = _clear_lines(writes, slot, rows, acts, cleared)  # takes the clears off `writes`
    out, new_labels, empty = _statements(writes, slot, rows, head["place"], bias, bias_done)
    if empty:
        clears.append(f"(rows {_ranges(empty)} hold nothing at this slot: those writes add 0)")
    moved = {a.op for a in acts if a.kind is HeadWriteKind.MOVE}
    return _HeadRun(out + clears, new_labels, expected_ov(head, len(rows.names)), moved)


def _clear_lines(writes: list[Write], slot: int, rows: Rows, acts: list, cleared: set) -> list[str]:
    """'clear v' for every value the layout says dies at this slot whose rows this head zeroes
    (row onto itself with -1; the slots decide, run by run), and 'clear the anchors' where the
    head's actions clear them. The clear writes are removed from `writes`; `cleared` collects
    (label, row) and the labels cleared whole."""
    dying = [o for o in rows.occupants if o.cleared == slot and o.label not in cleared]
    dying += [rows.fixed[a.value] for a in acts
              if a.kind is HeadWriteKind.CLEAR and a.value in ANCHOR_ROWS]
    clears: list[str] = []
    anchors = []
    for o in dying:  # a wide value may be cleared by several heads, some rows each
        mine = [r for r in o.rows if (r, r, -1.0) in writes]
        if not mine:
            continue
        for r in mine:
            writes.remove((r, r, -1.0))
        if o.kind == "fixed":
            anchors.append(o.label)
            continue
        cleared.update((o.label, r) for r in mine)
        if all((o.label, r) in cleared for r in o.rows):
            cleared.add(o.label)
        whole = len(mine) == len(o.rows)
        clears.append(f"clear {o.label}" + ("" if whole else f" (rows {_ranges(mine)})"))
    if anchors:
        clears.insert(0, "clear the anchors" if len(anchors) == 2 else f"clear {anchors[0]}")
    return clears


def _statements(writes: list[Write], slot: int, rows: Rows, place: str,
                bias: dict[int, float], bias_done: set) -> tuple[list[str], set[str], list[int]]:
    """The head's other writes as 'dst <- linear map of sources (place)', grouped per
    destination value; with the labels of values new at this slot and the source rows that
    hold nothing here."""
    groups: dict[str, dict] = {}
    empty = []
    for fr, to, c in writes:
        src = rows.live(fr, slot)
        if src is None:  # the row holds nothing at this slot: the write adds zero
            empty.append(fr)
            continue
        dst, new = rows.target(to, slot)
        dst_label = dst.label if dst else f"row {to}"
        g = groups.setdefault(dst_label, {"occ": dst, "new": new, "terms": {}})
        g["terms"].setdefault(src.label, {"occ": src, "map": []})["map"].append((fr, to, c))
    out = [_statement(label, g, place, bias, bias_done) for label, g in groups.items()]
    return out, {label for label, g in groups.items() if g["new"]}, empty


def _statement(dst_label: str, g: dict, place: str, bias: dict[int, float],
               bias_done: set) -> str:
    """One destination's statement: a whole-value linear combination where every source maps
    element to element with one coefficient, else element by element."""
    dst = g["occ"]
    op = "<-" if g["new"] else "+="
    uniform: list[tuple[float, str]] | None = []
    for src_label, t in g["terms"].items():
        src = t["occ"]
        cs = {c for _, _, c in t["map"]}
        same = (dst is not None and len(src.rows) == len(dst.rows)
                and len(t["map"]) == len(src.rows) and len(cs) == 1
                and all(src.rows.index(fr) == dst.rows.index(to) for fr, to, _ in t["map"]))
        if not same:
            uniform = None
            break
        uniform.append((cs.pop(), src_label))
    bias_text = ""
    if dst is not None and dst.label not in bias_done:
        bvec = [bias.get(r, 0.0) for r in dst.rows]
        if any(bvec):
            bias_text = f" + {_vector(bvec)} (bias b_O)"
            bias_done.add(dst.label)
    if uniform is not None:
        return f"{dst_label} {op} {_terms(uniform)} ({place}){bias_text}"
    per_elem: dict[int, list[tuple[float, str]]] = {}
    for t in g["terms"].values():
        for fr, to, c in t["map"]:
            per_elem.setdefault(to, []).append((c, t["occ"].elem(fr)))
    parts = [f"{dst.elem(to) if dst else f'row {to}'} {op} {_terms(per_elem[to])}"
             for to in sorted(per_elem)]
    return "; ".join(parts) + f" ({place}){bias_text}"


def _mlp_lines(cm: CompiledModel, blk: dict, rows: Rows, runs: list[int],
               ops: list[dict]) -> list[str]:
    L = cm.layout
    a = L["architecture"]
    b = blk["block"]
    mlp = MlpRecord.from_json(blk["mlp"])
    lines = [f"  MLP: {blk['mlp']['mode']}; LayerNorm eps {mlp.ln_eps:.3g}; {mlp.units} of "
             f"{a['d_mlp']} hidden units"]
    if mlp.divisor is not None:
        anchor = L["compiler"].get("division_anchor")
        N = _num(anchor) if anchor is not None else "N"
        s = mlp.divisor
        lines.append(f"    (the anchors hold ±{N}·{s}, so LayerNorm's sigma is about "
                     f"{N}·|{s}|·sqrt(2/{a['d_model']}); W_in multiplies back by "
                     f"{N}·sqrt(2/{a['d_model']}), leaving value/|{s}|)")
    read_rows, write_rows = mlp_rows(cm, b)

    def names(rr, pick):
        seen = []
        for r in rr:
            o = pick(r)
            label = o.label if o else f"row {r} (empty)"
            if label not in seen:
                seen.append(label)
        return ", ".join(seen) or "nothing"

    for run in runs:
        slot = mlp_slot(run)
        pre = f"run {run}: " if len(runs) > 1 else ""
        if read_rows or write_rows:
            lines.append(f"    {pre}reads  {names(read_rows, lambda r, s=slot: rows.live(r, s))}  "
                         f"(rows {_ranges(read_rows)}, from W_in)")
            lines.append(f"    {pre}writes "
                         f"{names(write_rows, lambda r, s=slot: rows.target(r, s)[0])}  "
                         f"(rows {_ranges(write_rows)}, from W_out)")
        for o in ops:
            if o["run"] == run:
                lines.append(f"    {pre}{_op_line(o)}")
    return lines


def _contract_line(layout: dict) -> str:
    """What the model vouches for, and on which prompts it was calibrated."""
    mon = layout["monitor"]
    cal = layout["domain"]["calibration"]
    if cal.get("kind") == "distribution":
        served = (f"x std up to {cal['x_scale']:g}, w std {cal['w_scale']:g}, noise up to "
                  f"{cal['noise']:g}")
    else:
        served = f"{cal.get('count', '?')} prompts of the user's"
    accepted = mon.get("calibration", {}).get("accepted")
    rate = f"; accepts {accepted:.1%} of its calibration prompts" if accepted is not None else ""
    return (f"Contract: every prediction's error bound <= {mon['tolerance']:g} x max(|y|, 1), "
            f"else refused; calibrated on {served}{rate}.")


def block_report(cm: CompiledModel) -> str:
    """Per block: each head's place, its writes as register statements and its purposes, and
    the MLP's mode, LayerNorm eps, units and ops, each traced to the program's source line."""
    L = cm.layout
    rows = Rows(L)
    lines = [_summary(cm)]
    eps = {blk["mlp"]["ln_eps"] for blk in L["blocks"] if blk["mlp"]["divisor"] is None}
    if L["architecture"]["name"] == "gpt2":
        lines.append(f"gpt2: every LayerNorm (ln1, ln2, ln_final; eps "
                     f"{L['architecture']['ln_eps']:.3g}) sees the constant anchors "
                     f"+-{L['architecture']['ln_anchor']:.3g} (rows ln_pos, ln_neg) and has weight "
                     f"N sqrt(2/d_model), so it passes every row through at scale 1; the read "
                     f"weights take the mean off row zero (docs/architecture.md §9).")
    elif eps:
        lines.append(f"A neutral MLP's LayerNorm eps ({', '.join(f'{e:.3g}' for e in sorted(eps))})"
                     f" dwarfs the residual's variance, so LayerNorm only scales by 1/sqrt(eps);"
                     f" W_in undoes that and reads the mean off row zero.")
    lines.append("Head statements: 'dst <- terms (place)' is what the head adds into dst's "
                 "rows (place: the token it attends to); 'clear v' zeroes v's rows.")
    lines.append(_contract_line(L))
    for blk in L["blocks"]:
        lines += _block_lines(cm, blk, rows)
    return "\n".join(lines)


def _block_title(b: int, runs: list[int]) -> str:
    if runs == [b]:
        return f"Block {b}"
    if len(runs) == 1:
        return f"Block {b} (run {runs[0]} of the forward pass)"
    return f"Block {b} (runs {', '.join(map(str, runs))}: the same weights each time; " \
           f"statements per run)"


@dataclass
class _BlockState:
    """What the heads of one block have accounted for so far, per run."""

    bias: dict[int, float]  # row -> the block's attention bias there (from the weights)
    bias_done: dict[int, set]  # run -> labels whose bias a statement named
    cleared: dict[int, set]  # run -> labels (and (label, row)) some head zeroed
    placed: set[int]  # attention ops traced under a head


def _block_lines(cm: CompiledModel, blk: dict, rows: Rows) -> list[str]:
    """One block's section: heads, the checks against the weights, bias, MLP."""
    b = blk["block"]
    runs = list(blk["runs"])
    battn = attention_bias(cm, b)
    st = _BlockState({int(r): float(battn[r]) for r in np.flatnonzero(battn)},
                     {r: set() for r in runs}, {r: set() for r in runs}, set())
    block_ops = [o for o in cm.layout["ops"] if o["block"] == b]
    attn_ops = [o for o in block_ops if o["stage"] == "attn"]
    lines = ["", _block_title(b, runs)]
    for head in blk["heads"]:
        lines += _head_lines(cm, b, head, runs, rows, attn_ops, st)
    used = {head["head"] for head in blk["heads"]}
    for h in range(cm.layout["architecture"]["n_heads"]):
        if h not in used:
            lines.append(f"  head {h}: {unlisted_head(cm, b, h)}")
    for run in runs:
        lines += [f"  {_pre(run, runs)}{w}" for w in missing_clears(rows, run, st.cleared[run])]
    for o in attn_ops:
        if o["index"] not in st.placed:
            lines.append(f"  attention op no head writes (all its coefficients are 0; "
                         f"a bias would be in b_O): {_op_line(o)}")
    for run in runs:
        left = dict(st.bias)
        for o in rows.occupants:
            if o.label in st.bias_done[run]:
                for r in o.rows:
                    left.pop(r, None)
        for r, v in sorted(left.items()):
            lines.append(f"  {_pre(run, runs)}attention bias b_O: "
                         f"{rows.label_write(r, attn_slot(run))} += {_num(v)}")
    return lines + _mlp_lines(cm, blk, rows, runs, [o for o in block_ops if o["stage"] != "attn"])


def _pre(run: int, runs: list[int]) -> str:
    return f"run {run}: " if len(runs) > 1 else ""


def _head_lines(cm: CompiledModel, b: int, head: dict, runs: list[int], rows: Rows,
                attn_ops: list[dict], st: _BlockState) -> list[str]:
    """One head: its place, its statements run by run with the attention ops it carries, its
    purpose (the layout's gloss) and the check of its W_V·W_O against its writes."""
    h = head["head"]
    lines = [f"  head {h}: attends to {head['place']} ({_gloss(head['where'])})"]
    expected = None
    for run in runs:
        pre = _pre(run, runs)
        hr = _head_run(head, attn_slot(run), rows, st.bias, st.bias_done[run], st.cleared[run])
        expected = hr.expected
        lines += [f"    {pre}{s}" for s in hr.lines]
        for o in attn_ops:
            if o["run"] == run and o["index"] not in st.placed and (
                    o["dst"] in hr.new or o["index"] in hr.moved):
                st.placed.add(o["index"])
                lines.append(f"    {pre}{_op_line(o)}")
    if head["purpose"]:
        lines.append(f"    purpose: {'; '.join(head['purpose'])}")
    warning = ov_warning(cm, b, h, expected)
    return lines + ([f"    {warning}"] if warning else [])


def inspect_text(cm: CompiledModel) -> str:
    """The block report (with its one-line summary on top) and the layout table."""
    return block_report(cm) + "\n\n" + layout_table(cm) + "\n"

