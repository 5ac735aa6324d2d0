"""Clamped offset reads, Offset(k, clamp=True): token max(t - k, 0), layer by layer.

Each layer against an independent computation: the interpreter's value_at and validation's
definedness against numpy indexing; place composition (reads.compose, used by Expr.at, the
fusion pass and the monitor) against the two-step read done token by token; the layout record
and its schema; the attention head's score pattern against scores computed in numpy from the
embedding's position rows; a compiled model (paper and gpt2) against numpy, with the monitor's
bound covering the error at t < k; and the monitor's place arithmetic on arrays.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from raspicl import At, Here, Mean, Offset, Program, ProgramError, Read, interpret
from raspicl import random_prompts as make_prompts
from raspicl.compiler import compile_program
from raspicl.compiler.fusion import compose as fusion_compose
from raspicl.compiler.gadgets.attention import pattern_weights, place_key
from raspicl.contract import Read as MonitorRead
from raspicl.contract.forward import _compose, _Walk
from raspicl.errors import ContractWarning, LoadError
from raspicl.export import load, save
from raspicl.lang.reads import compose, place_from_record, place_record, source_token
from raspicl.schema import PLACE, Context
from raspicl.semantics import value_at

# ---------------------------------------------------------------- the language and the record


def test_value_at_reads_token_zero_before_k():
    """value_at against numpy: v[max(t - k, 0)], for k below, at and beyond the prompt."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 5, 2))
    for k in range(7):
        got = value_at(v, Offset(k, clamp=True), None, np.nan)
        want = v[:, [max(t - k, 0) for t in range(5)]]
        np.testing.assert_array_equal(got, want)
        strict = value_at(v, Offset(k), None, np.nan)
        assert np.isnan(strict[:, : min(k, 5)]).all()
        np.testing.assert_array_equal(strict[:, k:], want[:, k:])


def test_interpreter_and_validation():
    """A clamped read is defined at every token: validation accepts an output read at tokens
    before k (the strict read is refused there) and the interpreter gives x at max(t - 3, 0)."""
    p = Program("clamped", d=2, n=2)
    p.output(p.mov("back", Read(p.x, Offset(3, clamp=True))), roles=("x", "y", "query"))
    prompts = make_prompts(4, 2, 2, seed=1)
    tokens = prompts.tokens()
    got = interpret(p, prompts).output()
    want = tokens[:, [max(t - 3, 0) for t in range(5)], 1:]
    np.testing.assert_array_equal(got, want)
    q = Program("strict", d=2, n=2)
    q.output(q.mov("back", Read(q.x, Offset(3))), roles=("x", "y", "query"))
    with pytest.raises(ProgramError, match="lies before the first token"):
        q.validate()


def test_clamp_must_be_a_bool():
    p = Program("bad", d=1, n=1)
    with pytest.raises(ProgramError, match="clamp must be True or False"):
        p.mov("m", Read(p.x, Offset(1, clamp="yes")))


def _places(T: int) -> list:
    return (
        [Here()]
        + [Offset(k, c) for k in range(T) for c in (False, True)]
        + [At(i) for i in range(T)]
        + [Mean(r) for r in ("x", "y")]
    )


def _two_step(outer, inner, t: int, roles) -> list[int] | None:
    """The tokens a read at `outer` of a value that reads at `inner` uses at token t."""
    first = _tokens(outer, t, roles)
    if first is None:
        return None
    out = []
    for s in first:
        second = _tokens(inner, s, roles)
        if second is None:
            return None
        out += second
    return sorted(set(out))


def _tokens(at, t: int, roles) -> list[int] | None:
    if isinstance(at, Here):
        return [t]
    if isinstance(at, Mean):
        sel = [s for s in range(t + 1) if roles[s] == at.role]
        return sel or None
    s = source_token(at, t)
    return None if s is None else [s]


def test_compose_against_the_two_step_read():
    """For every pair of places on a 7-token prompt: where compose gives a place, it reads the
    same tokens as the two-step read wherever that is defined, and is undefined wherever the
    two-step read is (except At of an offset, documented as defined from earlier on); where it
    gives None, no place does that for the pairs it refuses here (a strict offset of a
    clamped one, a mean of a shift, a shift of an At or a mean)."""
    T = 7
    roles = ["x", "y"] * 3 + ["query"]
    for outer, inner in itertools.product(_places(T), repeat=2):
        got = compose(outer, inner)
        assert fusion_compose(outer, inner) == got  # one function for both
        two = [_two_step(outer, inner, t, roles) for t in range(T)]
        if got is None:
            continue
        one = [_tokens(got, t, roles) for t in range(T)]
        for t in range(T):
            if two[t] is not None:
                assert one[t] == two[t], (outer, inner, got, t)
            elif not isinstance(outer, At):
                assert one[t] is None, (outer, inner, got, t)
    # the cases that matter for a scan, by hand
    assert compose(Offset(2, True), Offset(1, True)) == Offset(3, True)
    assert compose(Offset(2, True), Offset(1)) == Offset(3)  # undefined at t < 3 either way
    assert compose(Offset(2, True), Offset(0)) == Offset(2, True)
    assert compose(Offset(2), Offset(1, True)) is None  # undefined at t < 2, clamps after
    assert compose(Offset(0), Offset(1, True)) == Offset(1, True)
    assert compose(At(1), Offset(3, True)) == At(0)
    # a strict shift of a clamped read is no single place, so Expr.at refuses it
    p = Program("shift", d=1, n=2)
    e = p.expr(Read(p.x, Offset(1, clamp=True))) + 0.0
    assert e.at(Offset(2, clamp=True)).single_read() == Read(p.x, Offset(3, True))
    with pytest.raises(ProgramError, match="cannot be shifted by 2 tokens into one place"):
        e.at(Offset(2))


def test_monitor_composes_records_as_the_language():
    for outer, inner in itertools.product(_places(4), repeat=2):
        want = compose(outer, inner)
        got = _compose(place_record(outer), place_record(inner))
        assert got == (None if want is None else place_record(want))


def test_layout_record_round_trip_and_schema():
    """The record names the clamp only where it is set (a strict read's record is as before,
    and an old record, with no "clamp", loads as strict); the schema accepts true/false only."""
    assert place_record(Offset(2)) == {"kind": "offset", "k": 2}
    assert place_record(Offset(2, clamp=True)) == {"kind": "offset", "k": 2, "clamp": True}
    for at in _places(3):
        assert place_from_record(place_record(at)) == at
    assert place_from_record({"kind": "offset", "k": 3}) == Offset(3)
    PLACE({"kind": "offset", "k": 2, "clamp": True}, "place", Context())
    with pytest.raises(LoadError, match="clamp"):
        PLACE({"kind": "offset", "k": 2, "clamp": 1}, "place", Context())


# ---------------------------------------------------------------- the attention head


def test_offset_pattern_singles_out_token_zero_before_k():
    """The Offset(k) head's scores, from pattern_weights and the embedding's rows (one,
    pos = t / n_ctx, pos_sq = (t / n_ctx)^2) in numpy: at t < k the best key is token 0 by
    at least M (3M in fact); at t >= k token t - k by at least M. A clamped Offset(k) is the
    same head (place_key)."""
    T, M, d_head = 9, 50.0, 2
    rows = {"one": 0, "pos": 1, "pos_sq": 2}
    h = np.zeros((T, 3))
    h[:, 0] = 1.0
    h[:, 1] = np.arange(T) / T
    h[:, 2] = (np.arange(T) / T) ** 2
    for k in range(1, T):
        wq, wk = pattern_weights(Offset(k), rows, 3, d_head, T, M)
        scores = (h @ wq) @ (h @ wk).T / math.sqrt(d_head)
        for t in range(T):
            s = scores[t, : t + 1]  # causal
            target = max(t - k, 0)
            others = np.delete(s, target)
            if len(others):
                lead = s[target] - others.max()
                assert lead >= M * (1 - 1e-9), (k, t, lead)
                if t < k:
                    assert lead >= 3 * M * (1 - 1e-9)
        assert place_key(Offset(k, clamp=True)) == place_key(Offset(k))
        clamped = pattern_weights(Offset(k, clamp=True), rows, 3, d_head, T, M)
        np.testing.assert_array_equal(clamped[0], wq)
        np.testing.assert_array_equal(clamped[1], wk)


@pytest.mark.parametrize("arch", ["paper", "gpt2"])
def test_compiled_clamped_reads_against_numpy(arch, tmp_path):
    """A compiled model reads x at max(t - 3, 0) (a move) and multiplies it by x at
    max(t - 1, 0) (a product whose operand its block's attention moves): equal to numpy at
    every token, the monitor's bound finite and covering the error at t < k too, and the model
    saved and loaded again predicts the same."""
    d, n = 2, 3
    p = Program("clamped", d=d, n=n)
    back = p.mov("back", Read(p.x, Offset(3, clamp=True)))
    prod = p.let("prod", back * Read(p.x, Offset(1, clamp=True)))  # entrywise
    p.output(p.aff("out", prod, back, W1=1.0, W2=0.5), roles=("x", "y", "query"))
    prompts = make_prompts(64, d, n, seed=2)
    X = prompts.tokens()[:, :, 1:]
    idx3 = [max(t - 3, 0) for t in range(2 * n + 1)]
    idx1 = [max(t - 1, 0) for t in range(2 * n + 1)]
    want = X[:, idx3] * X[:, idx1] + 0.5 * X[:, idx3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(p, arch=arch)
    got, bound = cm.predict(prompts, with_bound=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert np.isfinite(bound).all()
    assert (np.abs(got - want) <= bound + 1e-300).all()
    reads = [r for ins in cm.layout["monitor"]["instructions"] for r in ins["reads"]]
    assert {"kind": "offset", "k": 3, "clamp": True} in [r["place"] for r in reads]
    save(cm, tmp_path / "m")
    np.testing.assert_array_equal(load(tmp_path / "m").predict(prompts), got)


def test_monitor_charges_token_zero_at_t_below_k():
    """The monitor's place arithmetic: a clamped read at t < k is token 0's value and error
    (the leak is added by its caller, as for every remote read); a strict one is NaN there."""
    walk = _Walk.__new__(_Walk)
    walk.T = 5
    rng = np.random.default_rng(3)
    val, err = rng.normal(size=(2, 5, 3)), rng.uniform(size=(2, 5, 3))
    v, e = walk._place(val, err, MonitorRead("a", {"kind": "offset", "k": 2, "clamp": True}), [])
    idx = [0, 0, 0, 1, 2]
    np.testing.assert_array_equal(v, val[:, idx])
    np.testing.assert_array_equal(e, err[:, idx])
    v, e = walk._place(val, err, MonitorRead("a", {"kind": "offset", "k": 2}), [])
    assert np.isnan(v[:, :2]).all() and np.isnan(e[:, :2]).all()
    np.testing.assert_array_equal(e[:, 2:], err[:, :3])
