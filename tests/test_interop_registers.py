"""Residual rows named by register (raspicl.interop.registers), on a compiled gd_step (d = 2):
the values the names point at are the ones numpy's solver and the prompt give, independently
of the layout the names come from. Needs neither transformers nor transformer-lens."""

from __future__ import annotations

import numpy as np
import pytest

from raspicl import random_prompts, solvers
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.errors import RaspiclError
from raspicl.interop.registers import EMPTY, RegisterNames
from raspicl.registry import find_program


@pytest.fixture(scope="module")
def gd():
    # unfused, so that w_next keeps rows of its own (fused, its readers compute it)
    compiled = compile_program(find_program("gd_step").build(d=2), CompilerConfig(fusion=False))
    prompts = random_prompts(6, 2, 1, seed=7)
    return compiled, prompts, compiled.residuals(prompts)


def test_registers_read_as_the_solver_says(gd):
    compiled, prompts, residuals = gd
    names = RegisterNames(compiled.layout)
    X, y = prompts.X[:, 0], prompts.y[:, 0]
    # inputs at the embedding: x at the x token, y at the y token
    np.testing.assert_allclose(names.read(residuals, "x")[:, 0], X, rtol=0, atol=1e-12)
    np.testing.assert_allclose(names.read(residuals, "y")[:, 1], y, rtol=0, atol=1e-12)
    # w' = w0 - 2 lr x (x.w0 - y) at the y token, as raspicl.solvers computes it
    w0 = 0.5 * (-1.0) ** np.arange(2)
    w1 = solvers.gd_step(np.broadcast_to(w0, (6, 2)), X, y, 0.1, 0.0)
    got = names.read(residuals, "w_next")
    assert got.shape == (6, 3, 2)
    np.testing.assert_allclose(got[:, 1], w1, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(
        names.read(residuals, "pred")[:, 2], solvers.predict(w1, prompts.xq), rtol=1e-8, atol=1e-8
    )


def test_every_residual_row_is_named(gd):
    compiled, _, residuals = gd
    names = RegisterNames(compiled.layout)
    assert names.n_residuals == len(residuals)
    for k, resid in enumerate(residuals):
        labels = names.labels(k)
        assert len(labels) == resid.shape[-1]
        # a row no value holds is zero: nothing was written to it, or it was cleared
        for row, label in enumerate(labels):
            if label == EMPTY:
                assert np.abs(resid[..., row]).max() < 1e-9, (k, row)
        named = names.named(resid, k)
        assert set(named) == {lab for lab in labels if lab != EMPTY}
    ones = names.named(residuals[-1], len(residuals) - 1)["one"]
    assert np.all(ones == 1.0)  # the fixed row 'one' holds 1 at every token, to the end
    # a register version, once written, is named at its rows from the next residual on
    v = names.version("w_next")[1]
    k = v["written_after"]
    assert [names.labels(k)[r] for r in v["rows"]] == ["w_next[0]", "w_next[1]"]
    assert [names.labels(k - 1)[r] for r in v["rows"]] != ["w_next[0]", "w_next[1]"]


def test_a_fused_version_is_refused_by_name():
    compiled = compile_program(find_program("gd_step").build(d=2))  # w_next fused away
    residuals = compiled.residuals(random_prompts(2, 2, 1, seed=1))
    with pytest.raises(RaspiclError, match="'w_next' has no rows: the fusion pass"):
        RegisterNames(compiled.layout).read(residuals, "w_next")


def test_unknown_names_are_refused(gd):
    compiled, _, residuals = gd
    names = RegisterNames(compiled.layout)
    with pytest.raises(RaspiclError, match="no register version 'w@9'.*w_next"):
        names.read(residuals, "w@9")
    with pytest.raises(RaspiclError, match="residual index 99"):
        names.labels(99)
