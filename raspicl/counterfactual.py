"""Exact counterfactuals: interchange interventions on a program's variables, computed by the
interpreter and carried out on the compiled model.

An interchange intervention runs prompt A with variable v set to the value it takes under
prompt B (Geiger et al.'s interchange intervention; "activation patching" when done on a
network). For a compiled model the answer is known exactly:

- `override_trace(program, tokens_A, {label: value})` runs the float64 interpreter
  (raspicl.semantics.stream_ops, unchanged) and replaces the register version `label` by
  `value` right after the op that writes it, so every later op reads the replaced value; an
  input (x, y) is replaced in the tokens themselves. A constant takes the same value under
  every prompt, so interchanging it changes nothing. Tokens where the replacement is NaN
  (the program leaves the value undefined there) keep A's value.
- `patched_run(compiled, tokens_A, patches)` runs the compiled model with its residual stream
  edited at given residual indices (raspicl's residual list, docs/architecture.md §5), in the
  model's own basis: a value's component k is resid @ directions[k] (groundtruth.json), so
  setting it to u adds (u - current) along that direction, on a plain and a disguised model
  alike. The runtime monitor walks the patched stream (in the plain basis) and bounds the
  patched prediction's error, as for an ordinary run.
- `interchange(compiled, program, A, B, label)` does both: the interpreter's exact
  counterfactual, and the model patched where the ground truth puts v. A stored variable is
  patched on its own directions at the residual where it is written (the residual connection
  carries it from there); a fused one (no rows: compiler/fusion.py) on its carriers, the
  temporaries an MLP reads it from, and, because a fused value's readers compute its fused
  dependents from stored values, so are the carriers of every fused value that depends on v
  through fused values only. `source='exact'` patches the interpreter's counterfactual values
  (so the monitor's bound on the patched run bounds |patched - exact|); `source='model'`
  patches the values read off B's own run (a plain activation patch: for a stored v, B's
  residual along v's directions), which agrees with 'exact' up to B's own error on v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from raspicl.errors import RaspiclError
from raspicl.groundtruth import GroundTruth, derive
from raspicl.interpret import Trace
from raspicl.prompts import Prompts, check_tokens
from raspicl.semantics import stream_ops

Patch = Callable[[np.ndarray], np.ndarray]


def program_of(layout: dict):
    """The Program a compiled model was compiled from, rebuilt from layout.json's program name
    and parameters (a bundled program or one in ./programs), checked op by op against the
    layout's ops. RaspiclError if it cannot be found or differs."""
    from raspicl.registry import find_program

    spec = layout["program"]
    program = find_program(spec["name"]).build(**spec["params"])
    ops = layout["ops"]
    if len(program.ops) != len(ops) or any(op.dst.name != rec["dst"] for op, rec in
                                           zip(program.ops, ops, strict=True)):
        raise RaspiclError(f"program {spec['name']}({spec['params']}) no longer matches the "
                           f"layout's ops (the program file changed since the compile)")
    return program


def _tokens(prompts: Prompts | np.ndarray) -> np.ndarray:
    return (prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)) \
        .astype(np.float64)


def _version(layout: dict, label: str) -> tuple[str, dict]:
    for name, reg in layout["registers"].items():
        for v in reg["versions"]:
            if v["label"] == label:
                return name, v
    known = ", ".join(v["label"] for r in layout["registers"].values() for v in r["versions"])
    raise RaspiclError(f"no variable {label!r}; variables are {known}")


def value_of(layout: dict, trace: Trace, label: str) -> np.ndarray:
    """A register version's value in an interpreter trace: [B, T, width] (the op's result;
    an input read off the tokens; a constant broadcast)."""
    name, v = _version(layout, label)
    if v["op"] is not None:
        return trace.after[int(v["op"])]
    if name == "x":
        return trace.tokens[:, :, 1:]
    if name == "y":
        return trace.tokens[:, :, :1]
    B, T = trace.tokens.shape[:2]
    const = np.asarray(trace.program.constants[name], dtype=np.float64).reshape(-1)
    return np.broadcast_to(const, (B, T, const.size)).copy()


def override_trace(program, tokens: np.ndarray, overrides: dict[str, np.ndarray],
                   layout: dict) -> Trace:
    """The interpreter on `tokens` with each register version in `overrides` (label ->
    [B, T, width]) replaced by that value right after it is written (NaN entries: keep the
    run's own value). Inputs are replaced in the tokens; constants are not prompt-dependent
    and cannot be overridden (RaspiclError)."""
    tokens = np.array(tokens, dtype=np.float64)
    check_tokens(tokens, program.format)
    after_op: dict[int, tuple[str, np.ndarray]] = {}
    for label, value in overrides.items():
        name, v = _version(layout, label)
        value = np.asarray(value, dtype=np.float64)
        if v["op"] is not None:
            after_op[int(v["op"])] = (name, value)
        elif name in ("x", "y"):
            cols = slice(1, None) if name == "x" else slice(0, 1)
            tokens[:, :, cols] = np.where(np.isnan(value), tokens[:, :, cols], value)
        else:
            raise RaspiclError(f"variable {label!r} is a constant: it has the same value "
                               f"under every prompt, so an interchange leaves it unchanged")
    state: dict[str, np.ndarray] = {}
    after = []
    for k, step in enumerate(stream_ops(program, tokens, state=state)):
        value = step.value
        if k in after_op:
            name, new = after_op[k]
            value = np.where(np.isnan(new), value, new)
            state[name] = value
        after.append(value)
    return Trace(program, tokens, after, state)


# ---------------------------------------------------------------------------------- the model


@dataclass
class PatchedRun:
    """A compiled model's run with its residual stream edited: the prediction [B, positions,
    d_out], its error bound from the monitor (None without it), the prompts it accepts, and
    every residual (in the model's own basis)."""

    prediction: np.ndarray
    bound: np.ndarray | None
    accepted: np.ndarray | None
    residuals: list[np.ndarray]


def patched_run(compiled, tokens: np.ndarray, patches: dict[int, list[Patch]],
                monitor: bool = True) -> PatchedRun:
    """Run `compiled` (dense weights) on `tokens`, applying each function of patches[i] to
    residual i (numpy [B, T, d_model], in the model's basis, returning the edited residual)
    as soon as it is computed, so later sublayers read the edited stream. The monitor walks
    the edited stream (raspicl.monitor, through the model's plain basis)."""
    model = compiled.model
    tok = compiled.tokens(tokens)
    dtype = tok.dtype

    def apply(i: int, r: torch.Tensor) -> torch.Tensor:
        fns = patches.get(i, [])
        if not fns:
            return r
        x = r.detach().cpu().double().numpy().copy()
        for fn in fns:
            x = fn(x)
        return torch.from_numpy(x).to(dtype)

    res: list[np.ndarray] = []
    with torch.no_grad():
        T = tok.shape[1]
        resid = apply(0, tok @ model.embed.W_E + model.pos_embed.W_pos[:T])
        res.append(resid.double().numpy())
        for run, layer in enumerate(model.cfg.order()):
            b = model.blocks[layer]
            resid = apply(2 * run + 1, resid + b.attn(b.attn_in(resid)))
            res.append(resid.double().numpy())
            resid = apply(2 * run + 2, resid + b.mlp(b.ln2(resid)))
            res.append(resid.double().numpy())
    pred = compiled.readout(res[-1])
    if not monitor:
        return PatchedRun(pred, None, None, res)
    report = compiled.contract(res)
    return PatchedRun(pred, report.bound, report.accepted, res)


def set_along(directions: np.ndarray, value: np.ndarray, tokens: np.ndarray | None = None
              ) -> Patch:
    """A patch that sets the value along `directions` ([d_model, width], orthonormal columns)
    to `value` ([B, T, width]) at the tokens where `value` is finite (and in `tokens`, if
    given): resid += (value - resid @ D) @ D^T there."""
    D = np.asarray(directions, dtype=np.float64)

    def fn(resid: np.ndarray) -> np.ndarray:
        cur = resid @ D
        new = np.array(value, dtype=np.float64)
        keep = ~np.isfinite(new).all(axis=-1, keepdims=True)
        if tokens is not None:
            mask = np.ones(resid.shape[1], dtype=bool)
            mask[np.asarray(tokens, dtype=int)] = False
            keep = keep | mask[None, :, None]
        delta = np.where(keep, 0.0, new - cur)
        return resid + delta @ D.T

    return fn


@dataclass
class Interchange:
    """One interchange intervention on a batch of prompt pairs (A_i, B_i): the exact
    counterfactual prediction (interpreter), the patched model's prediction and its bound, and
    the unpatched predictions of A (interpreter) for reference. Arrays [B, positions, d_out]."""

    variable: str
    exact: np.ndarray
    patched: np.ndarray
    bound: np.ndarray | None
    accepted: np.ndarray | None
    base: np.ndarray

    def error(self) -> np.ndarray:
        """|patched - exact|."""
        return np.abs(self.patched - self.exact)

    def effect(self) -> np.ndarray:
        """The exact effect of the intervention on the prediction: exact - base."""
        return self.exact - self.base


def op_reads(program, layout: dict) -> dict[int, set[str]]:
    """For each op, the labels of the register versions it reads (program level: a fused
    value is read by name, as the program wrote it)."""
    versions: dict[str, list[tuple[int, str]]] = {}
    for name, reg in layout["registers"].items():
        versions[name] = sorted((-1 if v["op"] is None else int(v["op"]), v["label"])
                                for v in reg["versions"])
    out: dict[int, set[str]] = {}
    for k, op in enumerate(program.ops):
        labels = set()
        for reg in op.registers_read:
            before = [lab for o, lab in versions.get(reg.name, []) if o < k]
            if before:
                labels.add(before[-1])
        out[k] = labels
    return out


def fused_descendants(program, layout: dict, label: str) -> list[str]:
    """`label` and the fused values that depend on it through fused values only: a fused
    value has no rows, so its readers compute it (and its fused dependents) from stored
    values, and the intervention must reach every carrier of them."""
    fused = {v["label"]: int(v["op"]) for r in layout["registers"].values()
             for v in r["versions"] if v.get("absorbed_by")}
    reads = op_reads(program, layout)
    out, frontier = [label], [label]
    while frontier:
        cur = frontier.pop()
        for f, k in fused.items():
            if f not in out and cur in reads[k]:
                out.append(f)
                frontier.append(f)
    return out


def _check_patchable(program, layout: dict, labels: list[str]) -> None:
    """RaspiclError unless every stored op that reads one of `labels` (a fused value and its
    fused dependents) reads it from a temporary (a carrier the patch can reach)."""
    reads = op_reads(program, layout)
    fused = {v["label"] for r in layout["registers"].values() for v in r["versions"]
             if v.get("absorbed_by")}
    ins_of = {int(i["op"]): i for i in layout["monitor"]["instructions"]}
    for k, labs in reads.items():
        ins = ins_of.get(k)
        if ins is None or ins["dst"] in fused:
            continue
        for lab in set(labels) & labs:
            if not any(r["value"] == lab and r.get("temp_rows") for r in ins["reads"]):
                raise RaspiclError(
                    f"variable {labels[0]!r} is fused: op {k} ({ins['dst']}) computes "
                    f"{lab!r} inside its own {ins['stage']} from stored values, so the model "
                    f"holds it nowhere in its residual stream (compile with "
                    f"CompilerConfig(fusion=False) to keep it there)")


def interchange_patches(gt: GroundTruth, program, layout: dict, label: str,
                        values: Callable[[str], np.ndarray], tokens: np.ndarray | None = None,
                        exact: bool = True) -> dict[int, list[Patch]]:
    """The residual patches that set variable `label` (and, if it is fused, the carriers of
    its fused dependents) to values(l) ([B, T, width]) for each label l patched. RaspiclError
    for a variable the model keeps nowhere in its residual stream (a fused value that some
    op computes inside its own sublayer rather than reading it from a temporary), or, unless
    `exact` (the values are the exact counterfactual's), for a fused variable with fused
    dependents."""
    var = gt.variable(label)
    patches: dict[int, list[Patch]] = {}
    if var.stored:
        patches.setdefault(var.written, []).append(
            set_along(var.direction_matrix(), values(var.name), tokens))
        return patches
    labels = fused_descendants(program, layout, var.name)
    _check_patchable(program, layout, labels)
    if not exact and len(labels) > 1:
        raise RaspiclError(
            f"variable {label!r} is fused and the fused values {labels[1:]} depend on it: "
            f"their carriers must hold values mixed from A and B, which no run of the model "
            f"holds; use source='exact'")
    for t in (gt.variable(f) for f in labels):
        for c in t.carriers:
            D = np.asarray(c.directions, dtype=np.float64).T
            patches.setdefault(c.written, []).append(set_along(D, values(t.name), tokens))
    return patches


def interchange(compiled, program, prompts_a: Prompts | np.ndarray,
                prompts_b: Prompts | np.ndarray, label: str, source: str = "exact",
                tokens: list[int] | None = None, gt: GroundTruth | None = None
                ) -> Interchange:
    """Run each prompt A_i with variable `label` set to its value under B_i, in the
    interpreter (exact) and in the compiled model (patched where the ground truth puts it);
    `tokens`: only at these tokens (default: every token where it is defined). source:
    'exact' patches the interpreter's values, 'model' the values read off B's run of the
    model (see the module doc)."""
    if source not in ("exact", "model"):
        raise RaspiclError(f"source must be 'exact' or 'model', got {source!r}")
    layout = compiled.layout
    gt = gt or derive(layout)
    ta, tb = _tokens(prompts_a), _tokens(prompts_b)
    if ta.shape != tb.shape:
        raise RaspiclError(f"prompts A and B must have one shape, got {ta.shape} and "
                           f"{tb.shape}")
    trace_a = override_trace(program, ta, {}, layout)
    trace_b = override_trace(program, tb, {}, layout)
    new = value_of(layout, trace_b, label)
    if tokens is not None:
        keep = np.full(new.shape[1], True)
        keep[np.asarray(tokens, dtype=int)] = False
        new = np.where(keep[None, :, None], np.nan, new)
    _, v = _version(layout, label)
    if v["op"] is None and label not in ("x", "y"):
        exact_trace = trace_a  # a constant: the same under B
    else:
        exact_trace = override_trace(program, ta, {label: new}, layout)

    if source == "exact":
        def values(lab: str) -> np.ndarray:
            return value_of(layout, exact_trace, lab)
    else:
        res_b = compiled.residuals(tb, check="ignore")

        def values(lab: str) -> np.ndarray:
            var = gt.variable(lab)
            if var.stored:
                return res_b[var.written] @ var.direction_matrix()
            c = var.carriers[0]
            return res_b[c.written] @ np.asarray(c.directions).T

    patches = interchange_patches(gt, program, layout, label, values, tokens,
                                  exact=source == "exact")
    run = patched_run(compiled, ta, patches)
    return Interchange(label, exact_trace.output(), run.prediction, run.bound, run.accepted,
                       trace_a.output())
