"""The adjoint bound (raspicl.contract.adjoint) against independent computations.

- The tape records the forward walk's charges faithfully: recomputing every node's forward
  bound sum |J| E_src + beta from the tape gives the bound the walk computed for every value
  it kept (so the adjoint sums exactly the charges the forward enclosure is built from).
- The reverse pass is the transpose of the tape: for random signed charges delta_n (|delta| <=
  beta), the output error propagated *forward* through the edges equals sum_n <g_n, delta_n>
  with the reverse pass's adjoints, and |that| never exceeds the adjoint bound.
- On a contraction (SGD steps, ridge's Sherman-Morrison updates) the adjoint bound is far
  below the forward one, and every accepted prediction stays within it against the float64
  interpreter.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from raspicl import interpret
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.contract import check_contract, forward, walk_with_tape
from raspicl.contract.adjoint import PlaceEdge
from raspicl.errors import ContractWarning
from raspicl.prompts import PromptDistribution
from raspicl.registry import find_program
from raspicl.verify import _writes

CASES = [("gd_step", {"d": 2}, "paper", "unroll"), ("sherman_morrison", {"d": 2}, "gpt2", "unroll"),
         ("ridge", {"d": 2, "n": 3}, "paper", "share"), ("sgd", {"d": 2, "n": 3}, "gpt2", "unroll"),
         ("batch_gd", {"d": 2, "n": 3, "T": 2}, "paper", "unroll"),
         ("nlms", {"d": 2, "n": 2}, "paper", "unroll"),
         ("logistic_gd", {"d": 1, "n": 2, "T": 1}, "paper", "unroll")]


def _model(name: str, params: dict, arch: str, loops: str):
    pf = find_program(name)
    program = pf.build(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(program, domain=pf.domain, arch=arch, loops=loops)
    prompts = PromptDistribution(1.0, 1.0, 0.5).sample(12, program.d, program.n, seed=11)
    return program, cm, prompts


@pytest.mark.parametrize("name,params,arch,loops", CASES)
def test_tape_records_the_forward_walk(name, params, arch, loops):
    program, cm, prompts = _model(name, params, arch, loops)
    res = cm.residuals(prompts, check="ignore")
    _, tape, log = walk_with_tape(cm.layout, res, cm.dtype_name)
    E = tape.forward_check()
    assert log
    for label, (err, nid) in log.items():
        finite = np.isfinite(err)
        np.testing.assert_allclose(E[nid][finite], err[finite], rtol=1e-9, atol=0,
                                   err_msg=f"{name}: value {label!r}")
        assert not np.isfinite(E[nid][~finite]).any(), label


@pytest.mark.parametrize("name,params,arch,loops", CASES)
def test_reverse_pass_is_the_transpose_of_the_tape(name, params, arch, loops):
    program, cm, prompts = _model(name, params, arch, loops)
    res = cm.residuals(prompts, check="ignore")
    report, tape, log = walk_with_tape(cm.layout, res, cm.dtype_name)
    out = log[cm.layout["monitor"]["output"]][1]
    if arch == "gpt2":  # the readout's ln_final node is the tape's last
        out = len(tape.nodes) - 1
    pos = cm.layout["output"]["positions"]
    rng = np.random.default_rng(5)
    for b in range(3):
        for k in (0, len(pos) - 1):
            g = tape.adjoints(out, int(pos[k]), 0, b)
            deltas, pre, dot = {}, {}, 0.0
            for nid, n in enumerate(tape.nodes):
                if n.beta is not None:
                    beta = np.where(np.isfinite(n.beta[b]), n.beta[b], 0.0)
                    deltas[nid] = rng.uniform(-1, 1, beta.shape) * beta
                    dot += float((g.get(nid, 0.0) * deltas[nid]).sum())
                for i, e in enumerate(n.edges):
                    if isinstance(e, PlaceEdge) and e.beta_pre is not None:
                        beta = np.where(np.isfinite(e.beta_pre[b]), e.beta_pre[b], 0.0)
                        pre[(nid, i)] = rng.uniform(-1, 1, beta.shape) * beta
            # the charges before a placed read reach the read through the place: their
            # adjoint is the source's share of the read's, which forward_signed propagates
            signed = tape.forward_signed(deltas, pre, b)[out][pos[k], 0]
            for (nid, i), d in pre.items():
                src = tape.nodes[nid].edges[i].src
                dot += float((_placed_adjoint(tape, nid, i, g) * d).sum()) if src >= 0 else 0
            assert signed == pytest.approx(dot, rel=1e-9, abs=1e-300), (name, b, k)
            bound = tape.adjoint_bound(out, [int(pos[k])], [0], np.array([b]))[0, 0]
            assert abs(signed) <= bound


def _placed_adjoint(tape, nid: int, i: int, g: dict) -> np.ndarray:
    """The adjoint of edge i of node nid's charge at its source's tokens: the node's adjoint
    read back through the place (the reverse pass's own transpose is what is under test, so
    this one is written out by token)."""
    e = tape.nodes[nid].edges[i]
    gn = g.get(nid)
    T = tape.T
    if gn is None:
        return np.zeros((T, tape.nodes[e.src].width))
    kind = e.place["kind"]
    out = np.zeros_like(gn)
    for t in range(T):  # the read at token t takes source token(s) s with these weights
        if kind == "here":
            weights = {t: 1.0}
        elif kind == "offset":
            k = int(e.place["k"])
            weights = {t - k: 1.0} if t >= k else ({0: 1.0} if e.place.get("clamp") else {})
        elif kind == "at":
            i0 = int(e.place["index"])
            weights = {i0: 1.0} if t >= i0 else {}
        else:
            toks = [s for s in range(t + 1) if e.sel[s] > 0]
            weights = {s: 1.0 / len(toks) for s in toks}
        for s, w in weights.items():
            out[s] += w * gn[t]
    return out


@pytest.mark.parametrize("name,params", [("sgd", {"d": 4, "n": 8}), ("ridge", {"d": 3, "n": 5})])
def test_adjoint_sees_contraction(name, params):
    """Deeper SGD and ridge: the adjoint bound is at least 5x below the forward one at the
    last prediction (the forward one compounds |J| per step), and holds."""
    program, cm, prompts = _model(name, params, "paper", "unroll")
    res = cm.residuals(prompts, check="ignore")
    fwd = check_contract(cm.layout, res, cm.dtype_name, adjoint="off")
    adj = check_contract(cm.layout, res, cm.dtype_name, adjoint="always")
    got = cm.readout(res[-1])
    want = np.asarray(interpret(program, prompts).output()).reshape(got.shape)
    diff = np.abs(got - want)
    assert (adj.bound <= fwd.bound).all()
    assert np.median(fwd.bound[:, -1] / adj.bound[:, -1]) > 5
    ok = adj.accepted[:, None, None]
    assert not (ok & (diff > adj.bound)).any()


def _ridge_float32():
    """ridge d=3 n=5 compiled for float32 and run there (min_acceptance 0: its bounds may
    refuse calibration prompts; what is tested is that they hold), with 16 prompts."""
    pf = find_program("ridge")
    program = pf.build(d=3, n=5)
    config = CompilerConfig.for_dtype("float32", tolerance=1e-2, min_acceptance=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(program, config, domain=pf.domain).to(torch.float32)
    prompts = PromptDistribution(1.0, 1.0, 0.5).sample(16, program.d, program.n, seed=5)
    return program, cm, prompts


def test_adjoint_bound_of_a_divisor_holds():
    """The walk may take a divisor's error bound from the adjoint at the divisor's own node
    (forward._Walk._divisor_bound): that bound holds against the divisor's actual error (its
    rows in float32 minus the interpreter in float64) at every prompt and defined token, and
    is no larger than the divisor's forward enclosure."""
    program, cm, prompts = _ridge_float32()
    res = cm.residuals(prompts, check="ignore")
    _, tape, log = walk_with_tape(cm.layout, res, cm.dtype_name)
    trace = interpret(program, prompts)
    op_of = {ins["dst"]: ins["op"] for ins in cm.layout["monitor"]["instructions"]}
    at = {k: (i, rows) for i, lst in _writes(program, cm).items() for k, rows in lst}
    divisors = {ins["divisor"] for ins in cm.layout["monitor"]["instructions"]
                if ins["divisor"] is not None}
    checked = 0
    for label in sorted(divisors):
        k = op_of.get(label)
        if k not in at or label not in log:  # fused: read by the division's own heads
            continue
        i, rows = at[k]
        exact = np.asarray(trace.after[k])[:, :, 0]
        actual = np.abs(res[i][:, :, rows[0]] - exact)
        tok = np.flatnonzero(np.isfinite(exact).all(axis=0))
        err, nid = log[label]
        bound = tape.adjoint_bound(nid, [int(t) for t in tok], [0] * len(tok),
                                   np.arange(prompts.batch))
        assert (actual[:, tok] <= bound).all(), label
        assert (bound <= err[:, tok, 0] * (1 + 1e-9)).all(), label
        checked += 1
    assert checked >= 3


def test_tightened_divisors_keep_every_accepted_prediction_within_its_bound(monkeypatch):
    """With every divisor's bound taken from its adjoint (DIVISOR_TIGHTEN 0), the float32
    ridge's accepted predictions stay within their bounds against the interpreter, and no
    bound or refusal gets worse than the forward walk's."""
    program, cm, prompts = _ridge_float32()
    res = cm.residuals(prompts, check="ignore")
    fwd = check_contract(cm.layout, res, cm.dtype_name, adjoint="off")
    monkeypatch.setattr(forward, "DIVISOR_TIGHTEN", 0.0)
    tight = check_contract(cm.layout, res, cm.dtype_name, adjoint="always")
    got = cm.readout(res[-1])
    want = np.asarray(interpret(program, prompts).output()).reshape(got.shape)
    ok = tight.accepted[:, None, None]
    assert not (ok & (np.abs(got - want) > tight.bound)).any()
    assert (tight.accepted >= fwd.accepted).all()
    both = fwd.accepted[:, None, None] & np.isfinite(fwd.bound)
    assert (tight.bound[both] <= fwd.bound[both]).all()
