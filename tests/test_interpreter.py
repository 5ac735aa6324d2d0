"""The interpreter against the reference solvers (issue targets), and the CLI's run command."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from raspicl import interpret, random_prompts
from raspicl.registry import find_program
from raspicl.verify import rel_err


@pytest.mark.parametrize("name", ["gd_step", "sherman_morrison"])
@pytest.mark.parametrize("d", [1, 2, 4, 8, 16])
def test_theorem_programs_match_solvers(name, d):
    """1000 problems, x, w ~ N(0, I), y = w^T x: the float64 semantics equal the numpy
    reference solvers (raspicl.solvers) to rounding."""
    pf = find_program(name)
    prompts = random_prompts(1000, d, 1, seed=100 + d)
    got = interpret(pf.build(d=d), prompts).output()[..., 0]
    want = pf.reference(prompts, d=d)
    assert rel_err(got, want) <= 1e-12


def test_run_prints_seed_prediction_and_registers():
    out = subprocess.run([sys.executable, "-m", "raspicl", "run", "programs/gd_step.py",
                          "--set", "d=4", "--seed", "7"], capture_output=True, text=True,
                         check=True).stdout
    assert "seed=7" in out
    pred = float(re.search(r"prediction at token 2 \(query\): (\S+)", out).group(1))
    ref = find_program("gd_step").reference(random_prompts(1, 4, 1, 7), d=4)[0, 0]
    assert np.isclose(pred, ref, rtol=1e-5)  # printed with 6 significant digits
    for register in ("x_prev", "err", "g", "w_next", "w_query", "pred"):
        assert re.search(rf"^\s+{register}\s", out, re.M), register


def test_run_without_seed_prints_the_seed_it_drew():
    out = subprocess.run([sys.executable, "-m", "raspicl", "run", "gd_step"],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"seed=\d+", out)
