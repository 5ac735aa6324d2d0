"""The streamed forward pass: the monitor fed one residual at a time reports exactly what it
reports on the whole residual list, run/predict use that stream, and verify's streamed,
chunked comparisons equal the errors computed from the full residual list and interpreter trace.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
import weakref

import numpy as np
import pytest

import raspicl.verify as verify_mod
from raspicl import interpret, random_prompts
from raspicl.contract import ContractStream, check_contract
from raspicl.errors import DomainWarning
from raspicl.prompts import Prompts
from raspicl.registry import find_program
from raspicl.verify import compile_checked, rel_err, verify_program

CASES = [("gd_step", {"d": 2}, "unroll"), ("sherman_morrison", {"d": 2}, "unroll"),
         ("ridge", {"d": 2, "n": 3}, "unroll"), ("ridge", {"d": 2, "n": 3}, "share")]


def compiled(name: str, params: dict, loops: str, dtype: str = "float64"):
    """The program and its model, compiled as verify compiles it for `dtype`."""
    pf = find_program(name)
    program = pf.build(**params)
    return program, compile_checked(pf, program, dtype, loops=loops)


def hard_prompts(program, batch: int = 24) -> Prompts:
    """Some ordinary prompts, some far outside the domain (so that the report has findings)."""
    p = random_prompts(batch, program.d, program.n, seed=3)
    scale = np.where(np.arange(batch) % 3 == 0, 40.0, 1.0)
    return Prompts(p.X * scale[:, None, None], p.y * scale[:, None], p.xq, p.w)


def same_report(a, b) -> None:
    for field in ("bound", "relative_bound", "accepted"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert [dataclasses.astuple(f) for f in a.findings] == \
        [dataclasses.astuple(f) for f in b.findings]
    assert a.needs == b.needs


@pytest.mark.parametrize("name,params,loops", CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_streamed_report_equals_list_report(name, params, loops, dtype):
    program, cm = compiled(name, params, loops, dtype)
    prompts = hard_prompts(program)
    residuals = cm.residuals(prompts, check="ignore")
    listed = check_contract(cm.layout, residuals, dtype)
    stream = ContractStream(cm.layout, dtype)
    for r in residuals:
        stream.feed(r)
    streamed = stream.report()
    same_report(listed, streamed)
    assert listed.findings, "the prompts were meant to be refused somewhere"
    assert listed.accepted.any()
    # run() feeds the monitor the same pass as it makes it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DomainWarning)
        out = cm.run(prompts, check="warn")
    np.testing.assert_array_equal(out.bound, listed.bound)
    np.testing.assert_array_equal(out.accepted, listed.accepted)
    np.testing.assert_array_equal(out.values, cm.readout(residuals[-1]))


def test_stream_keeps_no_residual_and_counts_them():
    program, cm = compiled("gd_step", {"d": 2}, "unroll")
    stream = ContractStream(cm.layout, "float64")
    refs = []
    for r in cm.stream(random_prompts(5, 2, 1, seed=0)):
        r = r.copy()  # an array of our own, so that only the monitor could keep it alive
        stream.feed(r)
        refs.append(weakref.ref(r))
        del r
    gc.collect()
    assert all(ref() is None for ref in refs), "the monitor holds a whole residual"
    stream.report()
    short = ContractStream(cm.layout, "float64")
    short.feed(next(cm.stream(random_prompts(5, 2, 1, seed=0))))
    with pytest.raises(ValueError, match=r"fed 1 residuals; the model's forward pass makes \d+"):
        short.report()


def test_stream_holds_the_live_values_only():
    """The forward walk runs as the residuals come and drops what no later instruction reads,
    so a shared loop's iterations do not add up: per token, the most the stream holds at once
    is the same at n = 4 and n = 8, and at n = 8 a third of what holding every value of the
    pass (without its error bound) would take. (The adjoint's tape, which the reverse pass
    walks back over, holds every node's charge: test_tape_grows_with_the_pass.)"""
    held = {}
    for n in (4, 8):
        program, cm = compiled("ridge", {"d": 2, "n": n}, "share")
        stream = ContractStream(cm.layout, "float64", adjoint="off")
        for r in cm.stream(random_prompts(10, 2, n, seed=0)):
            stream.feed(r)
        stream.report()
        T = cm.layout["prompt"]["n_tokens"]
        every_value = sum(len(v["rows"]) for v in cm.layout["monitor"]["values"].values())
        held[n] = stream.peak_bytes / (T * 10 * 8)  # float64 rows per prompt and token
        if n == 8:
            assert held[n] < every_value / 2, (held[n], every_value)
    assert held[8] <= 1.1 * held[4], held


def test_tape_grows_with_the_pass():
    """With the adjoint, the stream also holds the tape: its bytes are what the ledger counts
    beside the forward walk's, and they grow with the pass (n = 8 holds more than n = 4)."""
    held = {}
    for n in (4, 8):
        program, cm = compiled("ridge", {"d": 2, "n": n}, "share")
        prompts = random_prompts(10, 2, n, seed=0)
        peaks = []
        for mode in ("off", "always"):
            stream = ContractStream(cm.layout, "float64", adjoint=mode)
            for r in cm.stream(prompts):
                stream.feed(r)
            stream.report()
            peaks.append(stream.peak_bytes)
        tape = stream._checker.walk.tape.bytes()
        assert tape > 0 and peaks[1] >= peaks[0] + 0.5 * tape, (peaks, tape)
        held[n] = tape
    assert held[8] > 1.5 * held[4], held


@pytest.mark.parametrize("name,params", [("gd_step", {"d": 3}), ("ridge", {"d": 2, "n": 3})])
def test_verify_streamed_errors_equal_full_list(name, params, monkeypatch):
    """verify's errors, chunked and streamed, against the full-list computation on the same
    chunks: every register version decoded from each chunk's whole residual list against the
    interpreter, the prediction, the accepted fraction."""
    pf = find_program(name)
    problems, seed, chunk = 50, 4, 13  # four chunks, the last one short
    monkeypatch.setattr(verify_mod, "CHUNK", chunk)
    got = verify_program(pf, params, "float64", problems=problems, seed=seed, symbolic=False)

    program, cm = compiled(name, params, "unroll")
    prompts = random_prompts(problems, program.d, program.n, seed)
    errs, pred, accepted = [], [], []
    for lo in range(0, problems, chunk):
        part = Prompts(*(a[lo:lo + chunk] for a in (prompts.X, prompts.y, prompts.xq, prompts.w)))
        trace = interpret(program, part)
        res = cm.residuals(part, check="ignore")
        versions: dict[str, int] = {}
        for op in program.ops:
            versions[op.dst.name] = versions.get(op.dst.name, 0) + 1
            errs.append(rel_err(cm.decode(res, op.dst.name, versions[op.dst.name]),
                                trace.after[op.index]))
        pred.append(rel_err(cm.readout(res[-1]), trace.output()))
        accepted.append(cm.contract(res).accepted)
    assert got.err_registers == max(errs)
    assert got.err_prediction == max(pred)
    assert got.accepted == float(np.concatenate(accepted).mean())
    assert got.passed
