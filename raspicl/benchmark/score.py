"""Scoring a method's outputs against the ground truth: the one entry point for reference and
outside methods alike.

A method hands in a `MethodOutputs` (every field optional):

    localisation   variable -> the (residual index, token) sites it flags as holding it
    nodes          component id -> score (higher: more likely in the circuit)
    edges          (source id, target id) -> score
    subspaces      variable -> (residual index, basis [d_model, k]): where it says the
                   variable lives, in the model's own residual basis
    effects        variable -> [N] the metric (sum of the predictions at the output
                   positions) it predicts, or measures after its own intervention, for
                   prompt A_i with the variable set to its value under B_i, on the test pairs

`score_task(task, outputs)` returns a `Scores` (per variable and the circuit), and
`score(directory, outputs, ...)` does it from a model directory or its HuggingFace export alone
(DIR/hf, whose groundtruth.json names the program): it rebuilds the program, draws the same
prompt pairs the caller used (`task_for(directory)` gives them) and scores against the
interpreter's exact counterfactuals. Component ids and residual indices are
raspicl.groundtruth's (L{l}.H{h}, L{l}.MLP, embed, readout; TransformerLens names residual i
`raspicl.interop.tlens.residual_hook(i)`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from raspicl.benchmark.metrics import (
    auroc,
    f1,
    faithfulness,
    largest_angle,
    precision_recall,
    principal_cos2,
)
from raspicl.benchmark.tasks import Task, make_task
from raspicl.errors import RaspiclError
from raspicl.groundtruth import EMBED, READOUT, GroundTruth

CIRCUIT_KINDS = ("value", "anchor", "mask")  # the edges information flows along


@dataclass
class MethodOutputs:
    """What a method claims (module doc); any field may be left empty."""

    method: str
    localisation: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    nodes: dict[str, float] = field(default_factory=dict)
    edges: dict[tuple[str, str], float] = field(default_factory=dict)
    subspaces: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    effects: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class VariableScore:
    """One variable's scores (NaN where the method gave nothing for it)."""

    variable: str
    register: str
    precision: float = math.nan
    recall: float = math.nan
    f1: float = math.nan
    subspace_cos2: float = math.nan
    largest_angle: float = math.nan
    faithfulness: float = math.nan


@dataclass
class Scores:
    """A method's scores on one model."""

    method: str
    variables: list[VariableScore]
    node_auroc: float = math.nan
    edge_auroc: float = math.nan

    def to_json(self) -> dict:
        return asdict(self)


def slot_of(component: str) -> float:
    """The sublayer slot a component runs in (embed -1, L{l}.H{h} 2l, L{l}.MLP 2l + 1,
    readout +inf), for candidate edges: a source must run before its target."""
    if component == EMBED:
        return -1
    if component == READOUT:
        return math.inf
    layer, part = component[1:].split(".")
    return 2 * int(layer) + (1 if part == "MLP" else 0)


def candidate_edges(gt: GroundTruth) -> list[tuple[str, str]]:
    """Every (source, target) pair of components whose source runs before its target, minus
    the pairs the graph links only by a clear (neither in the circuit nor out of it)."""
    comps = [c.id for c in gt.components]
    clear_only = gt.edge_set(("clear",)) - gt.edge_set(CIRCUIT_KINDS)
    return [(u, v) for u in comps for v in comps
            if u != READOUT and v != EMBED and slot_of(u) < slot_of(v)
            and (u, v) not in clear_only]


def score_task(task: Task, out: MethodOutputs) -> Scores:
    """Score one method's outputs on one task (module doc)."""
    gt = task.gt
    rows = []
    for vt in task.variables:
        vs = VariableScore(vt.name, vt.var.register)
        if vt.name in out.localisation:
            cand = set(task.sites(vt))
            p, r = precision_recall(set(out.localisation[vt.name]) & cand, vt.truth)
            vs.precision, vs.recall, vs.f1 = p, r, f1(p, r)
        if vt.name in out.subspaces:
            i, U = out.subspaces[vt.name]
            U = np.asarray(U, dtype=np.float64).reshape(gt.d_model, -1)
            end = vt.var.cleared if vt.var.cleared is not None else gt.n_residuals
            if vt.var.written <= i < end:
                D = vt.var.direction_matrix()
                vs.subspace_cos2, vs.largest_angle = principal_cos2(U, D), largest_angle(U, D)
            else:  # not where the variable is
                vs.subspace_cos2, vs.largest_angle = 0.0, 90.0
        if vt.name in out.effects:
            vs.faithfulness = faithfulness(np.asarray(out.effects[vt.name]),
                                           task.test.exact_all[vt.name], task.test.base)
        rows.append(vs)
    s = Scores(out.method, rows)
    if out.nodes:
        comps = {c.id: c for c in gt.components if c.kind in ("head", "mlp")}
        s.node_auroc = auroc({c: out.nodes.get(c, -math.inf) for c in comps},
                             {c for c, comp in comps.items() if comp.circuit})
    if out.edges:
        cands = candidate_edges(gt)
        truth = gt.edge_set(CIRCUIT_KINDS)
        s.edge_auroc = auroc({e: out.edges.get(e, -math.inf) for e in cands}, truth)
    return s


def gt_layout(gt: GroundTruth) -> dict:
    """The part of a layout the interpreter's override reads (register versions' labels and
    ops), rebuilt from the ground truth, for a directory without layout.json (DIR/hf)."""
    regs: dict[str, dict] = {}
    for v in gt.variables:
        regs.setdefault(v.register, {"versions": []})["versions"].append(
            {"label": v.name, "op": v.op})
    return {"registers": regs}


def task_for(directory: str | Path, n_fit: int = 48, n_test: int = 32, seed: int = 0,
             max_variables: int | None = None) -> Task:
    """The benchmark task of a model directory (or DIR/hf alone): its ground truth, its
    program rebuilt from the record's name and parameters, the prompt pairs and variables."""
    from raspicl.groundtruth import load_groundtruth
    from raspicl.registry import find_program

    gt = load_groundtruth(directory)
    program = find_program(gt.program["name"]).build(**gt.program["params"])
    if len(program.ops) != 1 + max((v.op for v in gt.variables if v.op is not None),
                                   default=-1):
        raise RaspiclError(f"program {gt.program['name']} no longer matches the ground "
                           f"truth's ops (the program file changed since the compile)")
    return make_task(gt, program, gt_layout(gt), n_fit, n_test, seed, max_variables)


def score(directory: str | Path, outputs: MethodOutputs, n_fit: int = 48, n_test: int = 32,
          seed: int = 0, task: Task | None = None) -> Scores:
    """Score an outside method's outputs on the model at `directory` (a model directory or its
    HuggingFace export DIR/hf): see the module doc. The prompt pairs are task_for(directory,
    n_fit, n_test, seed)'s (pass `task` to reuse one); `effects` are on its test pairs."""
    task = task or task_for(directory, n_fit, n_test, seed)
    return score_task(task, outputs)
