"""Determinism: the same program and parameters compile to byte-identical files, in one
process and across processes with different hash seeds (set and dict order, the safetensors
library's own header order)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raspicl.compiler import compile_program
from raspicl.export import LAYOUT, WEIGHTS, save
from raspicl.registry import find_program

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("gd_step", "sherman_morrison")

SCRIPT = """
import sys
from raspicl.compiler import compile_program
from raspicl.export import save
from raspicl.registry import find_program
for name in {programs!r}:
    save(compile_program(find_program(name).build(d=3)), sys.argv[1] + "/" + name)
"""


def _compile_and_save(out: Path) -> None:
    for name in PROGRAMS:
        save(compile_program(find_program(name).build(d=3)), out / name)


def _assert_identical(a: Path, b: Path) -> None:
    for name in PROGRAMS:
        for f in (WEIGHTS, LAYOUT):
            assert (a / name / f).read_bytes() == (b / name / f).read_bytes(), f"{name}/{f}"


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first")
    _compile_and_save(out)
    return out


def test_same_process_byte_identical(first, tmp_path):
    _compile_and_save(tmp_path)
    _assert_identical(first, tmp_path)


@pytest.mark.parametrize("hashseed", ["1", "4242"])
def test_other_process_byte_identical(first, tmp_path, hashseed):
    env = dict(os.environ, PYTHONHASHSEED=hashseed,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", SCRIPT.format(programs=PROGRAMS), str(tmp_path)],
                   cwd=ROOT, env=env, check=True, timeout=300)
    _assert_identical(first, tmp_path)
