"""Reading a compiled model: its residual layout, what each block does, and its weights as plots.

Everything here works from a CompiledModel's `layout` dict (the content of layout.json) and its
weights, so a model loaded with raspicl.export.load, which has no Program, reads the same as a
freshly compiled one.

    layout_table(cm)      the residual stream: fixed rows, and every register version's rows,
                          the sublayer that writes it and the one that clears it
    block_report(cm)      per block: each head's place and its writes grouped into register
                          statements (x_prev <- x (offset 1 back), clear uu), the MLP's mode,
                          LayerNorm eps, units and ops, each traced to its source line
    inspect_text(cm)      both
    plot_blocks(cm, dir)  PNG heatmaps: per block W_V·W_O and W_Q·W_K^T of every head in use and
                          the MLP's W_in and W_out^T; the embedding and readout in embed.png

Rows are reused over time (layout.py), so a row's meaning depends on the sublayer. Sublayers are
numbered as slots over the forward pass: run r's attention is slot 2r, its MLP slot 2r + 1, the
embedding slot -1 (run r executes stored block block_order[r]; a looped model runs a shared
block several times). A sublayer reads the value live in a row before it and writes the value
whose `written` names it; statements and axis labels name the value a row holds at that slot,
not the row's whole history. A block that runs more than once is described run by run.

Heads' biases (aff biases and folded constants, in b_O) are not in the layout; they are read from
the weights. Each head's W_V·W_O is checked against the writes the layout records for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raspicl.compiled import CompiledModel

__all__ = ["block_report", "inspect_text", "layout_table", "plot_blocks"]

_FIXED_SLOT = -(10**9)  # fixed rows hold their meaning from before the embedding on
_TAG = re.compile(r"^(.*)\[(\d+)\]$")
_BLOCK_SLOT = re.compile(r"^block (\d+) (attn|mlp)$")
_RUN_SLOT = re.compile(r"^run (\d+) \(block \d+\) (attn|mlp)$")


# ---------------------------------------------------------------------------------------------
# Who holds which row when


@dataclass(frozen=True)
class _Occupant:
    """One value in the residual stream: a register version, a mask, a temporary, a fixed row."""

    label: str  # as the layout names it: 'x_prev', 'w@2', 'tmp:x@Offset', 'anchor_pos'
    rows: tuple[int, ...]
    written: int  # slot; -1 the embedding
    cleared: int | None  # slot whose self-head zeroes it; None: never
    kind: str  # 'input', 'value', 'var', 'const', 'mask', 'temp', 'fixed'
    shape: tuple[int, ...] = ()
    op: int | None = None
    bound: float | None = None
    version: int | None = None

    def elem(self, row: int) -> str:
        if len(self.rows) == 1:
            return self.label
        return f"{self.label}[{self.rows.index(row)}]"


def _slot(text: str | None) -> int | None:
    """'embedding' -> -1, 'block 3 attn' -> 6, 'run 7 (block 1) mlp' -> 15, None -> None."""
    if text is None:
        return None
    if text == "embedding":
        return -1
    m = _BLOCK_SLOT.match(text) or _RUN_SLOT.match(text)
    if m is None:
        raise ValueError(f"layout names an unknown sublayer {text!r}")
    return 2 * int(m.group(1)) + (m.group(2) == "mlp")


def _runs(layout: dict, blk: dict) -> list[int]:
    """The runs (positions in the forward pass) in which a stored block executes."""
    if blk.get("runs"):
        return list(blk["runs"])
    order = layout["architecture"].get("block_order") or []
    return [r for r, b in enumerate(order) if b == blk["block"]] or [blk["block"]]


class _Rows:
    """The layout's rows over time: which value a sublayer reads from a row and writes into it."""

    def __init__(self, layout: dict):
        self.layout = layout
        self.names: list[str] = list(layout["row_names"])
        self.index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            self.index.setdefault(name, i)
        a = layout["architecture"]
        self.order: list[int] = list(a.get("block_order") or range(a["n_layers"]))
        self.end = 2 * len(self.order)  # the slot after the last sublayer
        occ: list[_Occupant] = [
            _Occupant(name, (row,), _FIXED_SLOT, None, "fixed")
            for name, row in layout["fixed_rows"].items()
        ]
        for name, reg in layout["registers"].items():
            for v in reg["versions"]:
                occ.append(_Occupant(self._label(name, reg["kind"], v), tuple(v["rows"]),
                                     _slot(v["written"]), _slot(v["cleared"]), reg["kind"],
                                     tuple(reg["shape"]), v.get("op"), v.get("bound"),
                                     v["version"]))
        for name, mask in layout.get("masks", {}).items():
            clears = self._clear_slots(f"clear {name}")
            occ.append(_Occupant(name, (mask["row"],), -1, min(clears, default=None), "mask",
                                 (1,)))
        occ += self._temps()
        self.occupants = occ
        self.fixed = {o.label: o for o in occ if o.kind == "fixed"}

    def row(self, name: str) -> int:
        return self.index[name]

    def slot_name(self, slot: int | None) -> str:
        """The layout's name for a slot ('block 1 mlp', 'run 4 (block 1) attn')."""
        if slot is None or slot >= self.end:
            return "live to end"
        if slot < 0:
            return "embedding"
        run, stage = slot // 2, ("attn" if slot % 2 == 0 else "mlp")
        block = self.order[run]
        return f"block {block} {stage}" if run == block else f"run {run} (block {block}) {stage}"

    def _label(self, name: str, kind: str, version: dict) -> str:
        """The label the layout uses for one version ('w_next', 'w@2'): the tag row_names gives
        its rows; the layout has no label field of its own."""
        versioned = f"{name}@{version['version']}"
        tags = set()
        for row in version["rows"][:1]:
            for tag in self.names[row].split("|"):
                m = _TAG.match(tag)
                tags.add(m.group(1) if m else tag)
        if versioned in tags:
            return versioned
        if name in tags:
            return name
        return versioned if kind == "var" else name

    def _clear_slots(self, purpose: str) -> list[int]:
        return [2 * r for blk in self.layout["blocks"] for head in blk["heads"]
                if purpose in head["purpose"] for r in _runs(self.layout, blk)]

    def _temps(self) -> list[_Occupant]:
        """Attention temporaries (remote operands of an MLP op). The layout lists them only in
        row_names; their slots are recovered from the heads that write and clear them."""
        tags: dict[str, dict[int, int]] = {}  # tmp label -> element -> row
        for row, name in enumerate(self.names):
            for tag in name.split("|"):
                if tag.startswith("tmp:"):
                    m = _TAG.match(tag)
                    label, k = (m.group(1), int(m.group(2))) if m else (tag, 0)
                    tags.setdefault(label, {})[k] = row
        out = []
        for blk in self.layout["blocks"] if tags else []:
            for head in blk["heads"]:
                targets = {self.index.get(w["to"]) for w in head["writes"]}
                reads = [p[len("read "):].split(" (")[0] for p in head["purpose"]
                         if p.startswith("read ")]
                for label, elems in tags.items():
                    rows = tuple(elems[k] for k in sorted(elems))
                    if not (set(rows) <= targets
                            and any(label.startswith(f"tmp:{r}@") for r in reads)):
                        continue
                    clears = self._clear_slots(f"clear {label}")
                    for run in _runs(self.layout, blk):
                        later = [c for c in clears if c > 2 * run]
                        cleared = min(later) if later else 2 * run + 2
                        out.append(_Occupant(label, rows, 2 * run, cleared, "temp",
                                             (len(rows),)))
        return out

    def live(self, row: int, slot: int) -> _Occupant | None:
        """The value a sublayer at `slot` reads from `row` (written before it, not yet cleared)."""
        best = None
        for o in self.occupants:
            if row in o.rows and o.written < slot and (o.cleared is None or o.cleared >= slot):
                if best is None or o.written > best.written:
                    best = o
        return best

    def written_at(self, row: int, slot: int) -> _Occupant | None:
        for o in self.occupants:
            if row in o.rows and o.written == slot:
                return o
        return None

    def target(self, row: int, slot: int) -> tuple[_Occupant | None, bool]:
        """The value a write into `row` at `slot` builds, and whether it is new at this slot."""
        new = self.written_at(row, slot)
        if new is not None:
            return new, True
        old = self.live(row, slot)
        return old, bool(old is not None and old.kind == "fixed" and "anchor" in old.label)

    def label_read(self, row: int, slot: int) -> str:
        o = self.live(row, slot)
        return f"{row} {o.elem(row) if o else '(empty)'}"

    def label_write(self, row: int, slot: int) -> str:
        o, _ = self.target(row, slot)
        return f"{row} {o.elem(row) if o else '(empty)'}"


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def _num(x: float) -> str:
    return f"{x:.6g}"


def _shape(shape) -> str:
    shape = tuple(shape)
    if not shape:
        return "scalar"
    return "x".join(str(s) for s in shape)


def _ranges(rows) -> str:
    rows = sorted(rows)
    if not rows:
        return "-"
    parts, start, prev = [], rows[0], rows[0]
    for r in rows[1:]:
        if r == prev + 1:
            prev = r
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = r
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), indent + "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return lines


def _terms(coefs: list[tuple[float, str]]) -> str:
    """'a - 0.5·b + c' from [(1, 'a'), (-0.5, 'b'), (1, 'c')]."""
    out = ""
    for i, (c, name) in enumerate(coefs):
        mag = abs(c)
        body = name if mag == 1.0 else f"{_num(mag)}·{name}"
        if i == 0:
            out = f"-{body}" if c < 0 else body
        else:
            out += f" - {body}" if c < 0 else f" + {body}"
    return out or "0"


def _vector(values) -> str:
    vals = [_num(float(v)) for v in values]
    return vals[0] if len(vals) == 1 else "[" + ", ".join(vals) + "]"


def _op_line(o: dict) -> str:
    return f"op {o['index']} {o['kind']} -> {o['dst']}: {o['text']}   [{o['source']}]"


def _op_run(o: dict) -> int:
    return o.get("run", o["block"])


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
    return text


def _arr(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _eps(t) -> float:
    """Machine epsilon of a tensor's dtype (the tolerance of checks against the layout)."""
    import torch

    return torch.finfo(t.dtype).eps


# ---------------------------------------------------------------------------------------------
# 1. The residual layout


def _fixed_purposes(layout: dict) -> dict[str, str]:
    a = layout["architecture"]
    roles = layout["prompt"]["roles"]
    n_ctx = a["n_ctx"]
    anchor = layout.get("compiler", {}).get("division_anchor")
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
    rows = _Rows(L)
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
    dom = L.get("domain", {})
    if dom:
        text = f"Domain: |x| <= {dom['x_abs_max']:.3g}, |y| <= {dom['y_abs_max']:.3g}"
        for d in dom.get("divisors", []):
            text += f", |{d['register']}| >= {d['abs_min']:.3g} (op {d['op']})"
        lines.append(text)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. What each block does


def _gloss(place: str) -> str:
    words = place.split(" ")
    if words[0] == "offset" and len(words) > 1:
        return f"token t-{words[1]}"
    return {"here": "its own token t", "token": "one absolute token, once t reaches it",
            "mean": "uniform over those tokens up to t"}.get(words[0], "")


def _attn_bias(cm: CompiledModel, b: int) -> np.ndarray:
    a = cm.model.blocks[b].attn
    bias = _arr(a.b_O).copy()
    for h in range(a.W_O.shape[0]):
        bias += _arr(a.b_V[h]) @ _arr(a.W_O[h])
    return bias


@dataclass
class _HeadRun:
    """What one head does in one run: statements, the values it writes, its layout OV."""

    lines: list[str]
    new: set[str]
    expected: np.ndarray


def _head_run(head: dict, slot: int, rows: _Rows, bias: dict[int, float], bias_done: set,
              cleared: set) -> _HeadRun:
    """Register-level statements for one head at one attention slot."""
    D = len(rows.names)
    expected = np.zeros((D, D))
    writes = []
    for w in head["writes"]:
        fr, to = rows.row(w["from"]), rows.row(w["to"])
        expected[fr, to] += w["coef"]
        writes.append((fr, to, float(w["coef"])))
    place = head["place"]
    out: list[str] = []
    clears: list[str] = []
    # clears: every value the layout says dies at this slot whose rows this head zeroes (the
    # purposes of a looped block do not name every run's clears, so the slots decide)
    dying = [o for o in rows.occupants if o.cleared == slot and o.label not in cleared]
    if "clear the anchors" in head["purpose"]:
        dying += [o for name, o in rows.fixed.items() if name.startswith("anchor")]
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
    # the rest: dst value <- linear map of source values, grouped per register
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
    new_labels = set()
    for dst_label, g in groups.items():
        dst = g["occ"]
        op = "<-" if g["new"] else "+="
        if g["new"]:
            new_labels.add(dst_label)
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
            out.append(f"{dst_label} {op} {_terms(uniform)} ({place}){bias_text}")
            continue
        per_elem: dict[int, list[tuple[float, str]]] = {}
        for t in g["terms"].values():
            for fr, to, c in t["map"]:
                per_elem.setdefault(to, []).append((c, t["occ"].elem(fr)))
        parts = [f"{dst.elem(to) if dst else f'row {to}'} {op} {_terms(per_elem[to])}"
                 for to in sorted(per_elem)]
        out.append("; ".join(parts) + f" ({place}){bias_text}")
    if empty:
        clears.append(f"(rows {_ranges(empty)} hold nothing at this slot: those writes add 0)")
    return _HeadRun(out + clears, new_labels, expected)


def _mlp_lines(cm: CompiledModel, blk: dict, rows: _Rows, runs: list[int],
               ops: list[dict]) -> list[str]:
    L = cm.layout
    a = L["architecture"]
    b = blk["block"]
    mlp = blk["mlp"]
    lines = [f"  MLP: {mlp['mode']}; LayerNorm eps {mlp['ln_eps']:.3g}; {mlp['units']} of "
             f"{a['d_mlp']} hidden units"]
    if mlp["mode"] != "neutral":
        anchor = L.get("compiler", {}).get("division_anchor")
        N = _num(anchor) if anchor is not None else "N"
        s = mlp["mode"].removeprefix("divide by |").removesuffix("|")
        lines.append(f"    (the anchors hold ±{N}·{s}, so LayerNorm's sigma is about "
                     f"{N}·|{s}|·sqrt(2/{a['d_model']}); W_in multiplies back by "
                     f"{N}·sqrt(2/{a['d_model']}), leaving value/|{s}|)")
    mods = cm.model.blocks[b].mlp
    read_rows = [int(r) for r in np.flatnonzero(np.abs(_arr(mods.W_in)).sum(1))]
    write_rows = [int(r) for r in np.flatnonzero(np.abs(_arr(mods.W_out)).sum(0))]

    def names(rr, pick):
        seen = []
        for r in rr:
            o = pick(r)
            label = o.label if o else f"row {r} (empty)"
            if label not in seen:
                seen.append(label)
        return ", ".join(seen) or "nothing"

    for run in runs:
        slot = 2 * run + 1
        pre = f"run {run}: " if len(runs) > 1 else ""
        if read_rows or write_rows:
            lines.append(f"    {pre}reads  {names(read_rows, lambda r, s=slot: rows.live(r, s))}  "
                         f"(rows {_ranges(read_rows)}, from W_in)")
            lines.append(f"    {pre}writes "
                         f"{names(write_rows, lambda r, s=slot: rows.target(r, s)[0])}  "
                         f"(rows {_ranges(write_rows)}, from W_out)")
        for o in ops:
            if _op_run(o) == run:
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
    rows = _Rows(L)
    a = L["architecture"]
    lines = [_summary(cm)]
    eps = {blk["mlp"]["ln_eps"] for blk in L["blocks"] if blk["mlp"]["mode"] == "neutral"}
    if eps:
        lines.append(f"A neutral MLP's LayerNorm eps ({', '.join(f'{e:.3g}' for e in sorted(eps))})"
                     f" dwarfs the residual's variance, so LayerNorm only scales by 1/sqrt(eps);"
                     f" W_in undoes that and reads the mean off row zero.")
    lines.append("Head statements: 'dst <- terms (place)' is what the head adds into dst's "
                 "rows (place: the token it attends to); 'clear v' zeroes v's rows.")
    lines.append(_contract_line(L))
    for blk in L["blocks"]:
        b = blk["block"]
        runs = _runs(L, blk)
        if runs == [b]:
            lines += ["", f"Block {b}"]
        elif len(runs) == 1:
            lines += ["", f"Block {b} (run {runs[0]} of the forward pass)"]
        else:
            lines += ["", f"Block {b} (runs {', '.join(map(str, runs))}: the same weights each "
                          f"time; statements per run)"]
        battn = _attn_bias(cm, b)
        bias = {int(r): float(battn[r]) for r in np.flatnonzero(battn)}
        bias_done: dict[int, set] = {r: set() for r in runs}
        cleared: dict[int, set] = {r: set() for r in runs}
        block_ops = [o for o in L["ops"] if o["block"] == b]
        attn_ops = [o for o in block_ops if o["stage"] == "attn"]
        placed: set[int] = set()
        attn = cm.model.blocks[b].attn
        used = set()
        for head in blk["heads"]:
            h = head["head"]
            used.add(h)
            gloss = _gloss(head["place"])
            lines.append(f"  head {h}: attends to {head['place']}"
                         + (f" ({gloss})" if gloss else ""))
            expected = None
            for run in runs:
                pre = f"run {run}: " if len(runs) > 1 else ""
                hr = _head_run(head, 2 * run, rows, bias, bias_done[run], cleared[run])
                expected = hr.expected
                lines += [f"    {pre}{s}" for s in hr.lines]
                for o in attn_ops:
                    if _op_run(o) == run and o["index"] not in placed and (
                            o["dst"] in hr.new
                            or any(f"(op {o['index']}," in p for p in head["purpose"])):
                        placed.add(o["index"])
                        lines.append(f"    {pre}{_op_line(o)}")
            if head["purpose"]:
                lines.append(f"    purpose: {'; '.join(head['purpose'])}")
            ov = _arr(attn.W_V[h]) @ _arr(attn.W_O[h])
            err = float(np.abs(ov - expected).max(initial=0.0))
            if err > 16 * _eps(attn.W_O) * max(1.0, float(np.abs(expected).max(initial=0.0))):
                lines.append(f"    WARNING: W_V·W_O differs from these writes by up to {err:.3g}")
        for h in range(a["n_heads"]):
            if h in used:
                continue
            nz = any(float(np.abs(_arr(w[h])).max()) > 0 for w in
                     (attn.W_Q, attn.W_K, attn.W_V, attn.W_O))
            lines.append(f"  head {h}: " + ("WARNING: not in the layout but has nonzero weights"
                                             if nz else "unused (zero weights)"))
        for run in runs:
            pre = f"run {run}: " if len(runs) > 1 else ""
            for o in rows.occupants:
                if o.cleared == 2 * run and o.kind != "fixed" and o.label not in cleared[run]:
                    lines.append(f"  {pre}WARNING: the layout clears {o.label} here, but no head "
                                 f"zeroes its rows {_ranges(o.rows)}")
        for o in attn_ops:
            if o["index"] not in placed:
                lines.append(f"  attention op no head writes (all its coefficients are 0; "
                             f"a bias would be in b_O): {_op_line(o)}")
        for run in runs:
            left = dict(bias)
            for o in rows.occupants:
                if o.label in bias_done[run]:
                    for r in o.rows:
                        left.pop(r, None)
            pre = f"run {run}: " if len(runs) > 1 else ""
            for r, v in sorted(left.items()):
                lines.append(f"  {pre}attention bias b_O: {rows.label_write(r, 2 * run)} "
                             f"+= {_num(v)}")
        lines += _mlp_lines(cm, blk, rows, runs, [o for o in block_ops if o["stage"] != "attn"])
    return "\n".join(lines)


def inspect_text(cm: CompiledModel) -> str:
    """The block report (with its one-line summary on top) and the layout table."""
    return block_report(cm) + "\n\n" + layout_table(cm) + "\n"


# ---------------------------------------------------------------------------------------------
# 4. Plots


_CELL_W, _CELL_H = 0.34, 0.26  # inches per shown matrix cell
_CHAR = 0.056  # inches per character of a 7-point tick label
_TOP, _CBAR = 0.35, 0.95  # title band; colour bar with its tick labels


@dataclass
class _Panel:
    """One heatmap: M shown on its nonzero rows and columns, with labels for all of them."""

    M: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    title: str
    xlabel: str
    ylabel: str

    def __post_init__(self):
        self.ri = np.flatnonzero(np.abs(self.M).sum(1))
        self.ci = np.flatnonzero(np.abs(self.M).sum(0))
        longest_row = max((len(self.row_labels[i]) for i in self.ri), default=8)
        longest_col = max((len(self.col_labels[j]) for j in self.ci), default=4)
        self.left = 0.45 + _CHAR * longest_row
        self.bottom = 0.45 + _CHAR * longest_col
        S = self.M[np.ix_(self.ri, self.ci)]
        # small matrices carry their values in the cells, which are widened to hold them
        self.annotate = S.size <= 120 and S.shape[1] <= 12
        longest_value = max((len(f"{v:.2g}") for v in S[S != 0]), default=1)
        cell_w = max(_CELL_W, 0.05 * longest_value + 0.06) if self.annotate else _CELL_W
        self.cells_w = cell_w * max(len(self.ci), 2)
        self.cells_h = _CELL_H * max(len(self.ri), 2)
        title_w = 0.075 * len(self.title)  # a 9-point title must fit over the cells
        self.cells_w = max(self.cells_w, title_w - self.left / 2)
        ylabel_h = 0.062 * len(self.ylabel)  # and an 8-point axis label beside them
        self.cells_h = max(self.cells_h, ylabel_h - 2 * _TOP)

    @property
    def width(self) -> float:
        return self.left + self.cells_w + _CBAR

    @property
    def height(self) -> float:
        return _TOP + self.cells_h + self.bottom


def _draw(fig, panel: _Panel, x0: float, y0: float, W: float, H: float) -> None:
    """Draw one panel with its lower-left corner at (x0, y0) inches in a W x H figure."""
    from matplotlib.colors import SymLogNorm

    ax = fig.add_axes(((x0 + panel.left) / W, (y0 + panel.bottom) / H,
                       panel.cells_w / W, panel.cells_h / H))
    ax.set_title(panel.title, fontsize=9)
    ri, ci = panel.ri, panel.ci
    if ri.size == 0:
        ax.text(0.5, 0.5, "all zero", ha="center", va="center", transform=ax.transAxes,
                fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    S = panel.M[np.ix_(ri, ci)]
    nz = np.abs(S[S != 0])
    vmax = float(nz.max())
    linthresh = float(nz.min())
    if linthresh >= vmax:
        linthresh = vmax / 10
    norm = SymLogNorm(linthresh=linthresh, linscale=0.5, vmin=-vmax, vmax=vmax, base=10)
    im = ax.pcolormesh(np.ma.masked_where(S == 0, S), cmap=_cmap(), norm=norm,
                       edgecolors="0.88", linewidth=0.4)
    ax.set_xlim(0, len(ci))
    ax.set_ylim(len(ri), 0)
    ax.set_yticks(np.arange(len(ri)) + 0.5, [panel.row_labels[i] for i in ri], fontsize=7)
    ax.set_xticks(np.arange(len(ci)) + 0.5, [panel.col_labels[j] for j in ci], fontsize=7,
                  rotation=90)
    ax.set_xlabel(panel.xlabel, fontsize=8)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    if panel.annotate:
        for i, j in zip(*np.nonzero(S), strict=True):
            strong = abs(float(norm(S[i, j])) - 0.5) > 0.3
            ax.text(j + 0.5, i + 0.5, f"{S[i, j]:.2g}", ha="center", va="center", fontsize=6,
                    color="white" if strong else "black")
    ticks = [-vmax, -linthresh, 0.0, linthresh, vmax]
    if float(norm(linthresh)) - 0.5 < 0.06:  # the linear band is too thin to label
        ticks = [-vmax, 0.0, vmax]
    ticks = sorted(set(ticks))
    cax = fig.add_axes(((x0 + panel.left + panel.cells_w + 0.1) / W,
                        (y0 + panel.bottom) / H, 0.12 / W, panel.cells_h / H))
    cb = fig.colorbar(im, cax=cax, ticks=ticks)
    cb.ax.set_yticklabels([f"{t:.2g}" for t in ticks])
    cb.ax.tick_params(labelsize=6)


def _cmap():
    import matplotlib

    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")


def _figure(plt, panel_rows: list[list[_Panel]], title: str, path: Path) -> Path:
    """One figure, laid out by hand (no layout engine: fast and predictable): each inner list
    a row of panels, each panel sized by the cells it shows."""
    W = max(sum(p.width for p in row) for row in panel_rows) + 0.2
    heights = [max(p.height for p in row) for row in panel_rows]
    H = sum(heights) + 0.45
    fig = plt.figure(figsize=(W, H))
    y = H - 0.45
    for row, h in zip(panel_rows, heights, strict=True):
        y -= h
        x = 0.1
        for p in row:
            _draw(fig, p, x, y + (h - p.height), W, H)
            x += p.width
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / H, va="top")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_blocks(cm: CompiledModel, outdir: str | Path) -> list[Path]:
    """PNG heatmaps of every block (blockNN.png: W_V·W_O and W_Q·W_K^T per head in use, the MLP's
    W_in and W_out^T) and of the embedding and readout (embed.png). Returns the paths.

    Axes name the residual rows by the value each holds at that sublayer ('12 x_prev[0]': row
    12, read before this attention; for a block run several times, as in its first run) and show
    only rows and columns that are not all zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    L = cm.layout
    rows = _Rows(L)
    D = len(rows.names)
    name = L["program"]["name"]
    paths: list[Path] = []
    for blk in L["blocks"]:
        b = blk["block"]
        runs = _runs(L, blk)
        attn = cm.model.blocks[b].attn
        mlp = cm.model.blocks[b].mlp
        s_attn, s_mlp = 2 * runs[0], 2 * runs[0] + 1
        read_a = [rows.label_read(r, s_attn) for r in range(D)]
        write_a = [rows.label_write(r, s_attn) for r in range(D)]
        read_m = [rows.label_read(r, s_mlp) for r in range(D)]
        write_m = [rows.label_write(r, s_mlp) for r in range(D)]
        panel_rows: list[list[_Panel]] = []
        heads = {h["head"]: h for h in blk["heads"]}
        for h in range(attn.W_Q.shape[0]):
            WQ, WK = _arr(attn.W_Q[h]), _arr(attn.W_K[h])
            WV, WO = _arr(attn.W_V[h]), _arr(attn.W_O[h])
            if h not in heads and not (WQ.any() or WK.any() or WV.any() or WO.any()):
                continue
            place = heads[h]["place"] if h in heads else "not in the layout"
            panel_rows.append([
                _Panel(WV @ WO, read_a, write_a, f"head {h} ({place}): W_V·W_O",
                       "row written (value after this attention)",
                       "row read (value before it)"),
                _Panel(WQ @ WK.T, read_a, read_a, f"head {h} ({place}): W_Q·W_K^T",
                       "key row", "query row"),
            ])
        W_in, W_out = _arr(mlp.W_in), _arr(mlp.W_out)
        units = [f"u{u}" for u in range(W_in.shape[1])]
        mlp_panels = [
            _Panel(W_in, read_m, units, f"MLP ({blk['mlp']['mode']}): W_in", "hidden unit",
                   "row read (through LayerNorm)"),
            _Panel(W_out.T, write_m, units, "MLP: W_out^T", "hidden unit", "row written"),
        ]
        if blk["mlp"]["units"] > 12:
            panel_rows += [[p] for p in mlp_panels]
        else:
            panel_rows.append(mlp_panels)
        when = "" if runs == [b] else (
            f", run {runs[0]}" if len(runs) == 1 else
            f", runs {', '.join(map(str, runs))} (rows named as in run {runs[0]})")
        paths.append(_figure(plt, panel_rows, f"{name}: block {b}{when} (symmetric log colour "
                                              f"scale; blank = 0)", out / f"block{b:02d}.png"))
    paths.append(_plot_embed(cm, rows, out, plt))
    return paths


def _plot_embed(cm: CompiledModel, rows: _Rows, out: Path, plt) -> Path:
    L = cm.layout
    D = len(rows.names)
    prompt = L["prompt"]
    comps = [""] * prompt["d_token"]
    for name, idx in prompt["token_components"].items():
        for k, c in enumerate(idx):
            comps[c] = name if len(idx) == 1 else f"{name}[{k}]"
    W_E = _arr(cm.model.embed.W_E)
    W_pos = _arr(cm.model.pos_embed.W_pos)
    W_U = _arr(cm.model.unembed.W_U)
    emb_labels = [rows.label_write(r, -1) for r in range(D)]
    end_labels = [rows.label_read(r, rows.end) for r in range(D)]
    roles = prompt["roles"]
    pos_labels = [f"t={t} ({roles[t]})" if t < len(roles) else f"t={t}"
                  for t in range(W_pos.shape[0])]
    out_reg = L["output"]["register"]
    d_out = W_U.shape[1]
    out_labels = [out_reg if d_out == 1 else f"{out_reg}[{k}]" for k in range(d_out)]
    panels = [_Panel(W_E.T, emb_labels, comps, "W_E^T: token component -> row",
                     "token component", "row (after the embedding)"),
              _Panel(W_pos.T, emb_labels, pos_labels, "W_pos^T: position -> row", "position",
                     "row (after the embedding)"),
              _Panel(W_U, end_labels, out_labels, "W_U: row -> readout", "output",
                     "row (after the last block)")]
    return _figure(plt, [panels], f"{L['program']['name']}: embedding and readout",
                   out / "embed.png")
