"""The ground truth of a compiled model: where every program variable lives in the residual
stream, and which component reads what from which (the circuit), as DIR/groundtruth.json.

Interpretability methods are scored against models whose mechanism is known (docs/benchmark.md).
A compiled model's mechanism is known exactly, and layout.json already states it: this module
*derives* the record from layout.json's typed records, so nothing is maintained by hand.

    registers.*.versions[]         a variable: its label, op, rows, written_after, cleared_slot
    ops[].source                   its source line
    monitor.instructions[]         the tokens where it is defined (`defined`), what each op
                                   reads (value, place, the temporary rows an MLP reads)
    temporaries[]                  the rows an MLP's remote operand is moved into: a fused
                                   variable (no rows of its own) lives there, at its reader
    blocks[].heads[].actions[]     what each head writes (move, temporary, anchor) and clears
    disguise.basis (raspicl.disguise)  the residual basis the model was rotated into

The record (schema: GROUNDTRUTH_SCHEMA, documented in docs/benchmark.md):

    variables[i]   name (the version's label, 'w@2'), register, version, kind, shape, op,
                   source, stored (has rows of its own), rows (plain-basis rows), written (the
                   residual index where it first appears), cleared (the first residual index
                   where its rows no longer hold it; null: held to the end), tokens (where the
                   program defines it), directions ([width][d_model]: unit vectors in the
                   model's own residual basis; the value's component k is resid @ directions[k]),
                   carriers (for a fused variable: the temporaries that hold it, each with
                   rows, written, cleared, tokens and directions), writer and readers
                   (component ids)
    components     embed, L{l}.H{h} for every head of every stored block, L{l}.MLP, readout;
                   `used`: it does something (a head with actions, an MLP computing an op);
                   `circuit`: it has a path of edges to the readout
    edges          {from, to, kind, values}: `from` writes each value in `values` (a variable,
                   a temporary, a division's anchors) and `to` reads it; kind 'value' (a
                   variable or temporary read to compute), 'anchor' (a division's anchors read
                   by the dividing MLP), 'mask' (a select's mask), 'clear' (a head clears rows
                   and the next value written there is built on the zero it leaves: an edge to
                   that value's writer)

Residual indices are those of docs/architecture.md §5 (0 after the embedding, 2r + 1 after run
r's attention, 2r + 2 after its MLP); TransformerLens names them with
raspicl.interop.tlens.residual_hook.

`derive(layout)` builds the record; `write_groundtruth(layout, DIR)` / `groundtruth_files`
serialise it (raspicl.export.save writes DIR/groundtruth.json, and DIR/hf/groundtruth.json for
a gpt2 model); `load_groundtruth(DIR)` reads it back and validates it: the schema, the
relations between its fields, and, where DIR holds layout.json, the record re-derived from the
layout, so a tampered record is refused with a LoadError naming the first field that differs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raspicl.disguise_layout import disguise_record
from raspicl.errors import LoadError
from raspicl.layout_file import read_layout
from raspicl.schema import (
    Anything,
    Array,
    Bool,
    Context,
    Int,
    Map,
    Nullable,
    Number,
    Obj,
    Str,
)

GROUNDTRUTH = "groundtruth.json"
FORMAT = "raspicl-groundtruth"
FORMAT_VERSION = 1
EMBED = "embed"
READOUT = "readout"
EDGE_KINDS = ("value", "anchor", "mask", "clear")
# a direction is a unit vector to this much (a disguised basis is orthogonal to rounding)
UNIT_TOLERANCE = 1e-9


def head_id(layer: int, head: int) -> str:
    """The component id of head `head` of stored block `layer`."""
    return f"L{layer}.H{head}"


def mlp_id(layer: int) -> str:
    """The component id of stored block `layer`'s MLP."""
    return f"L{layer}.MLP"


# ---------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Carrier:
    """Rows that hold a fused variable's value at the reading token: an MLP operand's
    temporary (`label` tmp:V@Here), from residual `written` up to `cleared` (exclusive)."""

    label: str
    rows: tuple[int, ...]
    written: int
    cleared: int | None
    tokens: tuple[int, ...]
    directions: tuple[tuple[float, ...], ...]
    reader: str


@dataclass(frozen=True)
class Variable:
    """One register version of the program (see the module doc for each field)."""

    name: str
    register: str
    version: int
    kind: str
    shape: tuple[int, ...]
    op: int | None
    source: str | None
    stored: bool
    rows: tuple[int, ...]
    written: int | None
    cleared: int | None
    tokens: tuple[int, ...]
    directions: tuple[tuple[float, ...], ...]
    carriers: tuple[Carrier, ...]
    writer: tuple[str, ...]
    readers: tuple[str, ...]

    @property
    def width(self) -> int:
        return math.prod(self.shape)

    def sites(self) -> list[tuple[int, int]]:
        """(residual index, token) pairs where the variable's value sits in the stream: its
        own rows from `written` up to `cleared`, else its carriers', at its defined tokens."""
        spans = [(self.written, self.cleared, self.tokens)] if self.stored else \
            [(c.written, c.cleared, c.tokens) for c in self.carriers]
        out = set()
        for w, c, toks in spans:
            end = c if c is not None else self._n_residuals
            out.update((i, t) for i in range(w, end) for t in toks)
        return sorted(out)

    _n_residuals: int = field(default=0, compare=False, repr=False)

    def direction_matrix(self) -> np.ndarray:
        """[d_model, width]: the value is resid @ direction_matrix() (stored variables)."""
        return np.asarray(self.directions, dtype=np.float64).T


@dataclass(frozen=True)
class Component:
    """A node of the circuit: the embedding, a head, an MLP or the readout. used: it does
    something (a head with actions, an MLP with units that compute an op); circuit: it has a
    path of edges to the readout."""

    id: str
    kind: str  # 'embedding', 'head', 'mlp', 'readout'
    layer: int | None
    head: int | None
    used: bool
    circuit: bool


@dataclass(frozen=True)
class Edge:
    """`source` writes the `values` that `target` reads (see the module doc for `kind`)."""

    source: str
    target: str
    kind: str
    values: tuple[str, ...]


@dataclass
class GroundTruth:
    """The ground-truth record of one compiled model (module doc)."""

    program: dict
    architecture: str
    d_model: int
    n_layers: int
    n_heads: int
    n_residuals: int
    n_tokens: int
    output: dict
    basis: dict
    layout_digest: str | None
    variables: list[Variable]
    components: list[Component]
    edges: list[Edge]

    def variable(self, name: str) -> Variable:
        """The variable called `name` ('w@2'; a register's name means its last version)."""
        for v in self.variables:
            if v.name == name:
                return v
        last = [v for v in self.variables if v.register == name]
        if last:
            return max(last, key=lambda v: v.version)
        raise KeyError(f"no variable {name!r} in the ground truth; variables are "
                       f"{', '.join(v.name for v in self.variables)}")

    def edge_set(self, kinds: tuple[str, ...] = EDGE_KINDS) -> set[tuple[str, str]]:
        """(source, target) of every edge of the given kinds."""
        return {(e.source, e.target) for e in self.edges if e.kind in kinds}

    def reaches_readout(self, kinds: tuple[str, ...] = EDGE_KINDS) -> set[str]:
        """The components with a path of edges (of these kinds) to the readout."""
        return _reaching(self.edges, READOUT, kinds)

    def to_json(self) -> dict:
        out = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        for v in out["variables"]:
            v.pop("_n_residuals", None)
        return json.loads(json.dumps(out))  # tuples -> lists: the form load compares

    @classmethod
    def from_json(cls, d: dict) -> GroundTruth:
        """From a record that `validate` accepted."""
        n_res = int(d["n_residuals"])
        variables = [
            Variable(v["name"], v["register"], v["version"], v["kind"], tuple(v["shape"]),
                     v["op"], v["source"], v["stored"], tuple(v["rows"]), v["written"],
                     v["cleared"], tuple(v["tokens"]),
                     tuple(tuple(x) for x in v["directions"]),
                     tuple(Carrier(c["label"], tuple(c["rows"]), c["written"], c["cleared"],
                                   tuple(c["tokens"]),
                                   tuple(tuple(x) for x in c["directions"]), c["reader"])
                           for c in v["carriers"]),
                     tuple(v["writer"]), tuple(v["readers"]), n_res)
            for v in d["variables"]]
        return cls(d["program"], d["architecture"], d["d_model"], d["n_layers"], d["n_heads"],
                   n_res, d["n_tokens"], d["output"], d["basis"], d["layout_digest"],
                   variables,
                   [Component(c["id"], c["kind"], c["layer"], c["head"], c["used"],
                              c["circuit"])
                    for c in d["components"]],
                   [Edge(e["source"], e["target"], e["kind"], tuple(e["values"]))
                    for e in d["edges"]])


# ---------------------------------------------------------------------------------- deriving


def residual_basis(layout: dict) -> np.ndarray | None:
    """The disguised basis of a layout (raspicl.disguise: plain row j is the model's
    direction basis[j]), or None for a plain model (the identity)."""
    rec = disguise_record(layout)
    return None if rec is None else rec.basis


def derive(layout: dict) -> GroundTruth:
    """The ground truth of the model `layout` (a parsed layout.json) describes."""
    a = layout["architecture"]
    order = list(a["block_order"])
    n_res = 1 + 2 * len(order)
    d_model = int(a["d_model"])
    basis = residual_basis(layout)

    def directions(rows) -> tuple[tuple[float, ...], ...]:
        if basis is None:
            return tuple(tuple(1.0 if j == r else 0.0 for j in range(d_model)) for r in rows)
        return tuple(tuple(float(x) for x in basis[r]) for r in rows)

    ins_of = {int(i["op"]): i for i in layout["monitor"]["instructions"]}
    source_of = {int(o["index"]): o["source"] for o in layout["ops"]}
    roles = list(layout["prompt"]["roles"])
    graph = _Graph(layout)
    variables = []
    for reg_name, reg in layout["registers"].items():
        for v in reg["versions"]:
            label = v["label"]
            op = v["op"]
            tokens = _defined_tokens(reg, reg_name, op, ins_of, roles, layout)
            fused = bool(v.get("absorbed_by"))
            carriers = []
            if fused:
                for t in layout["temporaries"]:
                    ins = ins_of.get(int(t["for_op"]))
                    if t["operand"] != label or ins is None:
                        continue
                    read = next((r for r in ins["reads"] if r["value"] == label
                                 and list(r.get("temp_rows", [])) == list(t["rows"])), None)
                    if read is None or read["place"].get("kind") != "here":
                        continue  # a copy from another token: not this token's value
                    carriers.append(Carrier(
                        t["label"], tuple(t["rows"]), int(t["written_slot"]["slot"]) + 1,
                        _cleared(t), tuple(int(x) for x in ins["defined"]),
                        directions(t["rows"]), mlp_id(order[int(ins["run"])])))
            variables.append(Variable(
                name=label, register=reg_name, version=int(v["version"]), kind=reg["kind"],
                shape=tuple(int(s) for s in reg["shape"]), op=op,
                source=source_of.get(op) if op is not None else None,
                stored=not fused, rows=tuple(v["rows"]),
                written=None if fused else int(v["written_after"]),
                cleared=None if fused else _cleared(v),
                tokens=tokens, directions=() if fused else directions(v["rows"]),
                carriers=tuple(carriers),
                writer=tuple(sorted(graph.writers_of(label))),
                readers=tuple(sorted(graph.readers_of(label))), _n_residuals=n_res))
    if basis is not None:
        r = disguise_record(layout)
        rec = {"disguised": True, "seed": r.seed, "pad": r.pad, "d_plain": r.d_plain,
               "pinned": list(r.pinned)}
    else:
        rec = {"disguised": False, "seed": None, "pad": 0, "d_plain": d_model, "pinned": []}
    out = layout["output"]
    return GroundTruth(
        program={"name": layout["program"]["name"], "params": layout["program"]["params"]},
        architecture=a["name"], d_model=d_model, n_layers=int(a["n_layers"]),
        n_heads=int(a["n_heads"]), n_residuals=n_res, n_tokens=int(a["n_ctx"]),
        output={"register": out["register"], "positions": list(out["positions"]),
                "variable": graph.output_label},
        basis=rec, layout_digest=layout.get("integrity", {}).get("digest"),
        variables=variables, components=graph.components(), edges=graph.edges())


def _cleared(v: dict) -> int | None:
    """The first residual index where a version's (or temporary's) rows no longer hold it:
    one past the slot that clears or overwrites it; None if nothing does."""
    slots = [s["slot"] for s in (v.get("cleared_slot"), v.get("overwritten_slot")) if s]
    return min(slots) + 1 if slots else None


def _defined_tokens(reg: dict, name: str, op: int | None, ins_of: dict, roles: list[str],
                    layout: dict) -> tuple[int, ...]:
    """The tokens where the program defines a version: its instruction's `defined` tokens;
    for the inputs the tokens that carry them (x at x tokens and the query, y at y tokens);
    a constant everywhere."""
    if op is not None and op in ins_of:
        return tuple(int(t) for t in ins_of[op]["defined"])
    if reg["kind"] == "input":
        want = ("y",) if name == "y" else ("x", "query")
        return tuple(t for t, r in enumerate(roles) if r in want)
    return tuple(range(len(roles)))


class _Graph:
    """Who writes and who reads every value, from the head actions and the monitor's
    instructions (module doc)."""

    def __init__(self, layout: dict):
        self.layout = layout
        a = layout["architecture"]
        self.order = list(a["block_order"])
        self.n_layers, self.n_heads = int(a["n_layers"]), int(a["n_heads"])
        self.end = 2 * len(self.order)  # the readout's slot
        self.rows = {v["label"]: v["rows"] for reg in layout["registers"].values()
                     for v in reg["versions"]}
        ins = layout["monitor"]["instructions"]
        self.ins_of = {int(i["op"]): i for i in ins}
        self.fused = {i["dst"]: i for i in ins if i["stage"] == "fused"}
        # value label -> [(slot, component)]
        self.writes: dict[str, list[tuple[int, str]]] = {}
        # (value label, reader component, reader slot, kind)
        self.reads: list[tuple[str, str, int, str]] = []
        self._clear_edges: list[tuple[str, str, str]] = []
        self.active: set[str] = {EMBED, READOUT}  # components that do something
        # a division's anchors occupy the anchor rows from the head that writes them
        self._anchor_rows = [(_anchor(int(act["op"])), tuple(act["rows"]), 2 * int(act["run"]))
                             for block in layout["blocks"] for head in block["heads"]
                             for act in head["actions"] if act["kind"] == "anchor"]
        for reg in layout["registers"].values():
            for v in reg["versions"]:
                if v["written_slot"]["slot"] == -1:
                    self._write(v["label"], -1, EMBED)
        for m in layout.get("masks", {}).values():
            if m["written_slot"]["slot"] == -1:
                self._write(m["label"], -1, EMBED)
        for block in layout["blocks"]:
            layer = int(block["block"])
            for head in block["heads"]:
                comp = head_id(layer, int(head["head"]))
                where = _place_key(head["where"])
                from_rows = {int(w["from_row"]) for w in head["writes"]}
                if head["actions"]:
                    self.active.add(comp)
                for act in head["actions"]:
                    slot = 2 * int(act["run"])
                    kind = act["kind"]
                    if kind in ("move", "temporary"):
                        self._write(act["value"], slot, comp)
                        for r in self._head_reads(act, where, from_rows):
                            self.reads.append((r, comp, slot, "value"))
                    elif kind == "anchor":
                        self._write(_anchor(act["op"]), slot, comp)
                        for r in self._stored([act["value"]]):
                            self.reads.append((r, comp, slot, "value"))
                    elif kind == "clear":
                        # the head reads the value only to cancel it: what it feeds is the
                        # zero the next value written into those rows is built on
                        nxt = self._next_occupant(act["rows"], slot)
                        if nxt is not None:
                            self._clear_edges.append((comp, nxt, act["value"]))
        temps = {(int(t["for_op"]), t["operand"], tuple(t["rows"])): t["label"]
                 for t in layout["temporaries"]}
        for i in ins:
            if i["stage"] not in ("mlp", "attn+mlp"):
                continue
            run = int(i["run"])
            comp, slot = mlp_id(self.order[run]), 2 * run + 1
            self.active.add(comp)
            self._write(i["dst"], slot, comp)
            for r in i["reads"]:
                rows = tuple(r.get("temp_rows", []))
                if rows:
                    label = temps.get((int(i["op"]), r["value"], rows))
                    if label is not None:
                        self.reads.append((label, comp, slot, "value"))
                        continue
                for s in self._stored([r["value"]]):
                    self.reads.append((s, comp, slot, "value"))
            if i.get("divisor"):
                self.reads.append((_anchor(int(i["op"])), comp, slot, "anchor"))
            if i.get("mask"):
                self.reads.append((i["mask"], comp, slot, "mask"))
        out_reg = layout["registers"][layout["output"]["register"]]
        self.output_label = out_reg["versions"][-1]["label"]
        for s in self._stored([self.output_label]):
            self.reads.append((s, READOUT, self.end, "value"))
        # what each clear's next occupant is written by, resolved now that writes are known
        self._clear_targets = []
        for comp, nxt, value in self._clear_edges:
            for w in self.writer_at(nxt[0], nxt[1] + 1):
                self._clear_targets.append((comp, w, value))

    def _write(self, label: str, slot: int, comp: str) -> None:
        self.writes.setdefault(label, []).append((slot, comp))

    def _head_reads(self, act: dict, where: tuple, from_rows: set[int]) -> list[str]:
        """The stored values a head at place `where`, reading `from_rows` (its `writes`),
        reads for a move or a temporary: the op's reads (for a temporary, the operand's),
        fused values replaced by their own reads at the composed places, kept where that
        place is the head's and the value's rows are among those the head reads (two heads
        at one place may share an op's reads)."""
        ins = self.ins_of.get(act.get("op"))
        if ins is None:
            return self._stored(act.get("reads", []))
        if act["kind"] == "move":
            reads = [(r["value"], r["place"]) for r in ins["reads"]]
        else:
            operand = next((t["operand"] for t in self.layout["temporaries"]
                            if t["label"] == act["value"]), None)
            reads = [(r["value"], r["place"]) for r in ins["reads"] if r["value"] == operand]
        found = self._stored_at(reads)
        mine = {lab for lab, place in found if place == where} or {lab for lab, _ in found}
        rows = {lab: set(r) for lab, r in self.rows.items()}
        return sorted(lab for lab in mine if not rows.get(lab) or rows[lab] & from_rows)

    def _stored_at(self, reads) -> set[tuple[str, tuple]]:
        """(stored label, place key) of reads [(label, place record)], fused values expanded
        into their own reads at the composed place (monitor._compose)."""
        from raspicl.lang.reads import compose, place_from_record, place_record

        out: set[tuple[str, tuple]] = set()
        stack = list(reads)
        while stack:
            lab, place = stack.pop()
            if lab in self.fused:
                for r in self.fused[lab]["reads"]:
                    at = compose(place_from_record(place), place_from_record(r["place"]))
                    stack.append((r["value"], place if at is None else place_record(at)))
            else:
                out.add((lab, _place_key(place)))
        return out

    def _stored(self, labels) -> list[str]:
        """Labels with every fused value replaced by the values it reads, recursively."""
        out, stack, seen = [], list(labels), set()
        while stack:
            lab = stack.pop()
            if lab in seen:
                continue
            seen.add(lab)
            if lab in self.fused:
                stack.extend(r["value"] for r in self.fused[lab]["reads"])
            else:
                out.append(lab)
        return sorted(set(out))

    def _next_occupant(self, rows, slot: int) -> tuple[str, int] | None:
        """The first value written into any of `rows` after `slot` (its label and slot)."""
        best = None
        rows = set(rows)
        for reg in self.layout["registers"].values():
            for v in reg["versions"]:
                w = v["written_slot"]["slot"]
                if rows & set(v["rows"]) and w >= slot and (best is None or w < best[1]):
                    best = (v["label"], w)
        for t in self.layout["temporaries"]:
            w = t["written_slot"]["slot"]
            if rows & set(t["rows"]) and w >= slot and (best is None or w < best[1]):
                best = (t["label"], w)
        for m in self.layout.get("masks", {}).values():
            w = m["written_slot"]["slot"]
            if m["row"] in rows and w >= slot and (best is None or w < best[1]):
                best = (m["label"], w)
        for label, arows, w in self._anchor_rows:
            if rows & set(arows) and w >= slot and (best is None or w < best[1]):
                best = (label, w)
        return best

    def writer_at(self, label: str, slot: int) -> list[str]:
        """The components that wrote `label` last before `slot` (all those of that sublayer)."""
        ws = [(s, c) for s, c in self.writes.get(label, []) if s < slot]
        if not ws:
            return []
        last = max(s for s, _ in ws)
        return sorted({c for s, c in ws if s == last})

    def writers_of(self, label: str) -> set[str]:
        return {c for _, c in self.writes.get(label, [])}

    def readers_of(self, label: str) -> set[str]:
        labels = {label}
        # a fused value is read where its stored reads are read on its behalf: its readers
        # are the readers of the values it is absorbed into, and of its carriers
        for t in self.layout["temporaries"]:
            if t["operand"] == label:
                labels.add(t["label"])
        return {c for lab, c, _, _ in self.reads if lab in labels}

    def edges(self) -> list[Edge]:
        found: dict[tuple[str, str, str], set[str]] = {}
        for label, comp, slot, kind in self.reads:
            for w in self.writer_at(label, slot):
                found.setdefault((w, comp, kind), set()).add(label)
        for comp, w, value in self._clear_targets:
            found.setdefault((comp, w, "clear"), set()).add(value)
        return [Edge(s, t, k, tuple(sorted(v))) for (s, t, k), v in sorted(found.items())]

    def components(self) -> list[Component]:
        reach = _reaching(self.edges(), READOUT)
        used = set(self.active)
        for e in self.edges():
            used.update((e.source, e.target))

        def comp(cid: str, kind: str, layer: int | None, head: int | None) -> Component:
            return Component(cid, kind, layer, head, cid in used, cid in reach)

        out = [comp(EMBED, "embedding", None, None)]
        for layer in range(self.n_layers):
            out.extend(comp(head_id(layer, h), "head", layer, h) for h in range(self.n_heads))
            out.append(comp(mlp_id(layer), "mlp", layer, None))
        out.append(comp(READOUT, "readout", None, None))
        return out


def _reaching(edges, target: str, kinds: tuple[str, ...] = EDGE_KINDS) -> set[str]:
    """The nodes with a path of edges (of these kinds) to `target`, target included."""
    into: dict[str, set[str]] = {}
    for e in edges:
        if e.kind in kinds:
            into.setdefault(e.target, set()).add(e.source)
    seen, stack = {target}, [target]
    while stack:
        for s in into.get(stack.pop(), ()):
            if s not in seen:
                seen.add(s)
                stack.append(s)
    return seen


def _place_key(place: dict) -> tuple:
    """A place record as a key that a strict and a clamped offset share (one head serves
    both)."""
    return (place.get("kind"), place.get("k"), place.get("index"), place.get("role"))


def _anchor(op: int) -> str:
    """The label of the division anchors op `op`'s attention writes for its MLP."""
    return f"anchors:op{op}"


# ---------------------------------------------------------------------------------- schema

_ROW = Int(below="d_model")
_RESID = Int(below="n_residuals")
_TOKEN = Int(below="n_tokens")
_DIRS = Array(Array(Number(), length="d_model"))
_COMPONENT_ID = Str()
_CARRIER = Obj({"label": Str(), "rows": Array(_ROW), "written": _RESID,
                "cleared": Nullable(Int(lo=1)), "tokens": Array(_TOKEN), "directions": _DIRS,
                "reader": _COMPONENT_ID})
_VARIABLE = Obj({"name": Str(), "register": Str(), "version": Int(), "kind": Str(),
                 "shape": Array(Int()), "op": Nullable(Int()), "source": Nullable(Str()),
                 "stored": Bool(), "rows": Array(_ROW), "written": Nullable(_RESID),
                 "cleared": Nullable(Int(lo=1)), "tokens": Array(_TOKEN),
                 "directions": _DIRS, "carriers": Array(_CARRIER),
                 "writer": Array(_COMPONENT_ID), "readers": Array(_COMPONENT_ID)})
GROUNDTRUTH_SCHEMA = Obj({
    "format": Str(choices=(FORMAT,)),
    "format_version": Int(lo=FORMAT_VERSION),
    "program": Obj({"name": Str(), "params": Map(Anything(), key="param")}),
    "architecture": Str(choices=("paper", "gpt2")),
    "d_model": Int(lo=1, define="d_model"),
    "n_layers": Int(lo=1, define="n_layers"),
    "n_heads": Int(lo=1, define="n_heads"),
    "n_residuals": Int(lo=1, define="n_residuals"),
    "n_tokens": Int(lo=1, define="n_tokens"),
    "output": Obj({"register": Str(), "positions": Array(_TOKEN, min_len=1),
                   "variable": Str()}),
    "basis": Obj({"disguised": Bool(), "seed": Nullable(Int()), "pad": Int(),
                  "d_plain": Int(lo=1), "pinned": Array(Int())}),
    "layout_digest": Nullable(Str()),
    "variables": Array(_VARIABLE, min_len=1),
    "components": Array(Obj({"id": Str(), "kind": Str(choices=("embedding", "head", "mlp",
                                                                 "readout")),
                             "layer": Nullable(Int(below="n_layers")),
                             "head": Nullable(Int(below="n_heads")), "used": Bool(),
                             "circuit": Bool()})),
    "edges": Array(Obj({"source": _COMPONENT_ID, "target": _COMPONENT_ID,
                        "kind": Str(choices=EDGE_KINDS), "values": Array(Str(), min_len=1)})),
})


def _fail(path: str, message: str) -> LoadError:
    return LoadError(f"{GROUNDTRUTH}: {path} {message}")


def validate(record: Any) -> None:
    """Check a parsed groundtruth.json: the schema (GROUNDTRUTH_SCHEMA), then the relations
    between fields; LoadError naming the first bad field by its JSON path."""
    if not isinstance(record, dict):
        raise _fail("the top level", "must be an object")
    if record.get("format_version") != FORMAT_VERSION or record.get("format") != FORMAT:
        raise _fail("format_version", f"must be {FORMAT_VERSION} with format {FORMAT!r}, got "
                                      f"{record.get('format')!r} {record.get('format_version')!r}")
    try:
        GROUNDTRUTH_SCHEMA(record, "", Context())
    except LoadError as exc:  # the shared checkers name layout.json; this is another file
        raise LoadError(str(exc).replace("layout.json:", f"{GROUNDTRUTH}:", 1)) from None
    ids = [c["id"] for c in record["components"]]
    if len(set(ids)) != len(ids):
        raise _fail("components", "must have distinct ids")
    known = set(ids)
    for i, c in enumerate(record["components"]):
        expect = {"embedding": EMBED, "readout": READOUT}.get(c["kind"])
        if c["kind"] == "head":
            expect = head_id(c["layer"], c["head"]) if c["layer"] is not None \
                and c["head"] is not None else None
        elif c["kind"] == "mlp":
            expect = mlp_id(c["layer"]) if c["layer"] is not None else None
        if c["id"] != expect:
            raise _fail(f"components[{i}].id", f"must be {expect!r} for its kind, layer and "
                                               f"head, got {c['id']!r}")
    linked = set()
    for i, e in enumerate(record["edges"]):
        for key in ("source", "target"):
            if e[key] not in known:
                raise _fail(f"edges[{i}].{key}", f"names no component: {e[key]!r}")
        linked.update((e["source"], e["target"]))
    reach = _reaching([Edge(e["source"], e["target"], e["kind"], ()) for e in record["edges"]],
                      READOUT)
    for i, c in enumerate(record["components"]):
        if c["id"] in linked and not c["used"]:
            raise _fail(f"components[{i}].used", f"must be true: {c['id']} has an edge")
        if c["circuit"] != (c["id"] in reach):
            raise _fail(f"components[{i}].circuit",
                        f"must be {str(c['id'] in reach).lower()}: whether {c['id']} has a "
                        f"path of edges to the readout")
    names = [v["name"] for v in record["variables"]]
    if len(set(names)) != len(names):
        raise _fail("variables", "must have distinct names")
    if record["output"]["variable"] not in names:
        raise _fail("output.variable", f"names no variable: {record['output']['variable']!r}")
    for i, v in enumerate(record["variables"]):
        path = f"variables[{i}]"
        width = math.prod(v["shape"])
        for key in ("writer", "readers"):
            for j, c in enumerate(v[key]):
                if c not in known:
                    raise _fail(f"{path}.{key}[{j}]", f"names no component: {c!r}")
        if v["stored"]:
            if len(v["rows"]) != width:
                raise _fail(f"{path}.rows", f"must have {width} entries (shape {v['shape']}), "
                                            f"got {len(v['rows'])}")
            if v["written"] is None:
                raise _fail(f"{path}.written", "must be a residual index for a stored variable")
            _check_span(v, path)
            _check_directions(v["directions"], width, f"{path}.directions")
        else:
            for key in ("rows", "directions"):
                if v[key]:
                    raise _fail(f"{path}.{key}", "must be empty for a fused variable")
            for j, c in enumerate(v["carriers"]):
                _check_span(c, f"{path}.carriers[{j}]")
                _check_directions(c["directions"], width, f"{path}.carriers[{j}].directions")


def _check_span(v: dict, path: str) -> None:
    if v["cleared"] is not None and v["cleared"] <= v["written"]:
        raise _fail(f"{path}.cleared", f"must be after written ({v['written']}), got "
                                       f"{v['cleared']}")


def _check_directions(dirs: list, width: int, path: str) -> None:
    if len(dirs) != width:
        raise _fail(path, f"must have {width} entries (one per component), got {len(dirs)}")
    if not dirs:
        return
    M = np.asarray(dirs, dtype=np.float64)
    gram = M @ M.T
    bad = np.abs(gram - np.eye(width)) > UNIT_TOLERANCE
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        what = "a unit vector" if i == j else f"orthogonal to entry {j}"
        raise _fail(f"{path}[{i}]", f"must be {what} (within {UNIT_TOLERANCE:g})")


def first_difference(got: Any, want: Any, path: str = "") -> str | None:
    """The JSON path of the first place two parsed JSON values differ (None if equal)."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in list(want) + [k for k in got if k not in want]:
            sub = f"{path}.{k}" if path else k
            if k not in got or k not in want:
                return sub
            d = first_difference(got[k], want[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            d = first_difference(g, w, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    if type(got) is not type(want) or got != want:
        return path or "the top level"
    return None


# ---------------------------------------------------------------------------------- files


def groundtruth_bytes(layout: dict) -> bytes:
    """groundtruth.json's bytes for a (saved, validated) layout."""
    rec = derive(layout).to_json()
    validate(rec)
    return (json.dumps(rec, indent=1) + "\n").encode("ascii")


def groundtruth_files(layout: dict) -> dict[str, bytes]:
    """What raspicl.export.save writes beside a model: groundtruth.json, and hf/'s copy for a
    gpt2 model (the HuggingFace export's residual stream is the same)."""
    data = groundtruth_bytes(layout)
    files = {GROUNDTRUTH: data}
    if layout["architecture"].get("name") == "gpt2":
        from raspicl.interop.hf import HF_DIR

        files[f"{HF_DIR}/{GROUNDTRUTH}"] = data
    return files


def load_groundtruth(directory: str | Path) -> GroundTruth:
    """DIR/groundtruth.json (DIR a model directory or its hf/), validated: the schema and its
    relations, and, where DIR holds layout.json (or its parent does, for hf/), the record
    equal to the one derived from the layout, whose digest it must name. LoadError naming the
    first bad or differing field otherwise."""
    d = Path(directory)
    path = d / GROUNDTRUTH
    if not path.is_file():
        raise LoadError(f"{path} does not exist: compile the model again (raspicl compile "
                        f"writes it beside layout.json)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LoadError(f"{path} cannot be read as JSON: {exc}") from exc
    validate(record)
    layout_dir = d if (d / "layout.json").is_file() else d.parent \
        if (d.parent / "layout.json").is_file() and d.name == "hf" else None
    if layout_dir is not None:
        layout = read_layout(layout_dir / "layout.json")
        check_against_layout(record, layout)
    return GroundTruth.from_json(record)


def check_against_layout(record: dict, layout: dict) -> None:
    """LoadError unless `record` is exactly the ground truth derived from `layout`, naming
    the first field that differs."""
    want = derive(layout).to_json()
    diff = first_difference(record, want)
    if diff is not None:
        raise _fail(diff, "does not match the ground truth derived from layout.json (the "
                          "record was edited, or comes from another model): compile the "
                          "model again")
