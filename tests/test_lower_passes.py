"""The lowering passes one at a time: calibration's running statistics against a direct numpy
pass over the interpreter's full trace, chunk-size independence (down to the compiled weights),
calibration's memory, constant folding against the interpreter, SSA versions and the bounds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import raspicl.compiler.calibrate as calibrate_mod
from raspicl import Program, interpret
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.compiler.bounds import interval_bound
from raspicl.compiler.calibrate import calibrate
from raspicl.compiler.fold import fold_program
from raspicl.compiler.lower import lower
from raspicl.compiler.ssa import rename
from raspicl.errors import CompileError
from raspicl.registry import find_program
from raspicl.semantics import stream_ops

CASES = [("gd_step", {"d": 2}), ("sherman_morrison", {"d": 2}), ("ridge", {"d": 2, "n": 3}),
         ("sgd", {"d": 2, "n": 3}), ("newton", {"d": 2, "n": 2, "T": 2}),
         ("batch_gd", {"d": 2, "n": 2, "T": 2})]
CONFIG = CompilerConfig(calibration_prompts=96)


def _program(name: str, params: dict) -> Program:
    return find_program(name).build(**params)


def _divisor_before(program: Program, trace, k: int) -> np.ndarray:
    """The divisor register's value when op k runs: the last earlier write, else the input or
    constant (computed from the full trace, independently of stream_ops)."""
    name = program.ops[k].divisor.register.name
    for j in range(k - 1, -1, -1):
        if program.ops[j].dst.name == name:
            return trace.after[j]
    if name in ("x", "y"):
        return trace.tokens[:, :, 1:] if name == "x" else trace.tokens[:, :, :1]
    value = np.asarray(program.constants[name], dtype=np.float64)
    return np.broadcast_to(value, trace.tokens.shape[:2] + (value.size,))


@pytest.mark.parametrize("name,params", CASES)
def test_calibration_statistics_match_a_direct_pass_over_the_trace(name, params):
    program = _program(name, params)
    cal = calibrate(program, CONFIG, find_program(name).domain, chunk=17)
    trace = interpret(program, cal.prompts)
    assert len(cal.ops) == len(program.ops)
    for k, op in enumerate(program.ops):
        a = trace.after[k]
        finite = np.isfinite(a)
        assert cal.ops[k].abs_max == np.max(np.abs(np.where(finite, a, 0.0)), initial=0.0)
        np.testing.assert_array_equal(cal.ops[k].finite, finite.all(axis=2).sum(axis=0))
        np.testing.assert_array_equal(cal.defined(k), finite.all(axis=2).mean(axis=0) > 0.5)
        if op.divisor is not None:
            s = np.abs(_divisor_before(program, trace, k))
            per_token = np.where(np.isfinite(s), s, np.inf).min(axis=(0, 2))
            np.testing.assert_array_equal(cal.ops[k].divisor_abs_min, per_token)
        else:
            assert cal.ops[k].divisor_abs_min is None
    tokens = cal.prompts.tokens()
    assert cal.x_abs_max == np.abs(tokens[:, :, 1:]).max()
    assert cal.y_abs_max == np.abs(tokens[:, :, :1]).max()


@pytest.mark.parametrize("name,params", CASES[:3])
def test_calibration_does_not_depend_on_the_chunk_size(name, params):
    program = _program(name, params)
    runs = [calibrate(program, CONFIG, None, chunk=c) for c in (1, 7, 96, 1000)]
    for other in runs[1:]:
        for a, b in zip(runs[0].ops, other.ops, strict=True):
            assert a.abs_max == b.abs_max
            np.testing.assert_array_equal(a.finite, b.finite)
            if a.divisor_abs_min is not None:
                np.testing.assert_array_equal(a.divisor_abs_min, b.divisor_abs_min)


@pytest.mark.parametrize("name,params,loops", [("sherman_morrison", {"d": 2}, "unroll"),
                                               ("ridge", {"d": 2, "n": 2}, "share")])
def test_compiled_weights_do_not_depend_on_the_chunk_size(name, params, loops, monkeypatch):
    """Bitwise-equal weights and an equal layout whether calibration runs 3 prompts at a time
    or all 512 at once (the old calibration's single pass)."""
    program = _program(name, params)
    models = []
    for chunk in (3, 512):
        monkeypatch.setattr(calibrate_mod, "CALIBRATION_CHUNK", chunk)
        models.append(compile_program(program, loops=loops))
    a, b = (m.model.state_dict() for m in models)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert models[0].layout == models[1].layout


def test_stream_ops_drops_dead_registers_and_keeps_the_values():
    program = _program("ridge", {"d": 2, "n": 4})
    tokens = np.random.default_rng(0).normal(size=(5, program.format.n_tokens,
                                                   program.d + 1))
    full = interpret(program, tokens)
    state: dict = {}
    live_counts = []
    for k, step in enumerate(stream_ops(program, tokens, state=state, drop_dead=True)):
        np.testing.assert_array_equal(step.value, full.after[k])
        later_reads = {r.name for op in program.ops[k + 1:] for r in op.registers_read}
        assert set(state) <= later_reads, k
        live_counts.append(len(state))
    assert state == {}
    assert max(live_counts) < len(program.ops) / 2


def test_calibration_memory_does_not_grow_with_ops_times_prompts():
    """ridge d = 2, n = 32: the full trace of 512 prompts holds ~280 [512, 65, <=4] outputs
    (over 100 MB); the running statistics need a few MB."""
    program = _program("ridge", {"d": 2, "n": 32})
    tracemalloc.start()
    try:
        calibrate(program, CompilerConfig(), None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"calibration peaked at {peak / 1e6:.1f} MB"


def test_folding_matches_the_interpreter_on_every_op():
    """Each folded op, evaluated with numpy on the interpreter's values of its kept reads,
    gives the interpreter's own output (reads at the current token only, so no places)."""
    d = 3
    p = Program("folds", d=d, n=1)
    c = p.const("c", [2.0, -3.0, 0.5])
    s = p.const("s", -4.0)
    m = p.dot("m", p.x, c)                       # a product with a const: linear
    cc = p.dot("cc", c, c)                       # both constant: bias only
    a = p.aff("a", m, cc, W1=1.0, W2=0.5)        # linear over a value and a const
    q = p.div("q", a, s)                         # divided by a constant: scaled
    dd = p.dot("dd", p.x, p.x)                   # a true product
    p.output(p.aff("out", dd, q, W1=1.0, W2=1.0))
    tokens = np.random.default_rng(1).normal(size=(4, p.format.n_tokens, d + 1))
    trace = interpret(p, tokens)
    value_of = {"x": tokens[:, :, 1:], "y": tokens[:, :, :1]}
    for f in fold_program(p):
        op = f.op
        reads = [value_of[op.reads[i].register.name] for i in f.kept]
        assert all(op.reads[i].register.name not in ("c", "s") for i in f.kept)
        got = np.broadcast_to(f.bias, trace.after[op.index].shape).copy()
        for o, coef, r, comp in f.linear:
            got[:, :, o] += coef * reads[r][:, :, comp]
        for o, coef, ra, ca, rb, cb in f.products:
            got[:, :, o] += coef * reads[ra][:, :, ca] * reads[rb][:, :, cb]
        np.testing.assert_allclose(got, trace.after[op.index], rtol=1e-14, atol=1e-14)
        value_of[op.dst.name] = trace.after[op.index]
    folded = {f.op.dst.name: f for f in fold_program(p)}
    assert folded["cc"].kept == [] and folded["cc"].linear == []
    np.testing.assert_array_equal(folded["cc"].bias, [4.0 + 9.0 + 0.25])
    assert folded["q"].const_divisor == 4.0
    assert folded["m"].products == [] and len(folded["m"].linear) == d
    assert len(folded["dd"].products) == d


def test_division_by_a_constant_zero_names_the_op():
    p = Program("div0", d=1, n=1)
    z = p.const("z", 0.0)
    p.output(p.div("q", p.x, z))
    with pytest.raises(CompileError, match="op 'div' writing 'q'.*divides by the constant 0"):
        compile_program(p)


def test_ssa_versions_follow_program_order():
    """Every write makes the register's next version, every read sees the latest write before
    it, and selects with one token mask share one mask value (rls_forget: the loop state,
    whose scan keeps a select per example)."""
    program = _program("rls_forget", {"d": 2, "n": 3})
    ssa = rename(program, fold_program(program))
    writes: dict[str, int] = {}
    for ins in ssa.instrs:
        kept = fold_program(program)[ins.op.index].kept
        for (value, _), i in zip(ins.reads, kept, strict=True):
            name = ins.op.reads[i].register.name
            assert value.name == name
            assert value.version == writes.get(name, 0)
        writes[ins.op.dst.name] = writes.get(ins.op.dst.name, 0) + 1
        assert ins.dst.version == writes[ins.op.dst.name]
    masks = [ins.mask for ins in ssa.instrs if ins.mask is not None]
    assert len(masks) > 2 and len({id(m) for m in masks}) < len(masks)
    assert ssa.output is ssa.instrs[-1].dst


@pytest.mark.parametrize("name,params", CASES)
def test_bounds_are_the_margined_calibrated_max_or_the_interval(name, params):
    program = _program(name, params)
    low = lower(program, CONFIG, find_program(name).domain)
    trace = interpret(program, low.calibration.prompts)
    m = CONFIG.bound_margin
    for ins in low.instrs:
        a = trace.after[ins.op.index]
        seen = float(np.max(np.abs(np.where(np.isfinite(a), a, 0.0)), initial=0.0)) * m
        reads = [v.bound for v, _ in ins.reads]
        interval = interval_bound(ins.bias, ins.linear, ins.products, reads, ins.dst.width)
        if ins.mask is not None:
            interval = max(interval, interval_bound(ins.bias + ins.gated_bias,
                                                    ins.linear + ins.gated, [], reads,
                                                    ins.dst.width))
        if ins.divisor is not None:
            interval = interval / ins.divisor_min if ins.divisor_min > 0 else np.inf
        assert ins.dst.bound in (seen, interval), ins.op.describe()
        if ins.dst.bound == interval and interval != seen:
            assert seen < CONFIG.interval_fallback * interval


def test_interval_bound_by_hand():
    # dst[0] = 1 + 2 r0[0] - 3 r1[0] r0[0];  dst[1] = -0.5 + r1[0]; bounds 2 and 5
    linear = [(0, 2.0, 0, 0), (1, 1.0, 1, 0)]
    products = [(0, -3.0, 1, 0, 0, 0)]
    assert interval_bound(np.array([1.0, -0.5]), linear, products, [2.0, 5.0], 2) == \
        1 + 2 * 2 + 3 * 5 * 2
