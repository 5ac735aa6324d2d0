"""Compiled models shared by the ground-truth, disguise, counterfactual and benchmark tests:
each (program, size, target, disguise, fusion) is compiled once per test session."""

from __future__ import annotations

import functools

from raspicl.compiler import CompilerConfig, compile_program
from raspicl.registry import bundled_programs, find_program

PROGRAMS = sorted(pf.name for pf in bundled_programs())
ARCHS = ("paper", "gpt2")


def smallest(name: str) -> dict:
    """A program's smallest GRID size (its first)."""
    return dict(find_program(name).grid[0])


@functools.cache
def _compiled(name: str, params: tuple, arch: str, seed: int | None, pad: int, fusion: bool):
    pf = find_program(name)
    program = pf.build(**dict(params))
    config = None if fusion else CompilerConfig(fusion=False)
    cm = compile_program(program, config, domain=pf.domain, arch=arch)
    if seed is not None:
        from raspicl.disguise import disguise

        cm = disguise(cm, seed, pad)
    return program, cm


def compiled(name: str, arch: str = "paper", params: dict | None = None,
             seed: int | None = None, pad: int = 0, fusion: bool = True):
    """(program, CompiledModel): `name` at `params` (default its smallest size) for `arch`,
    disguised with `seed` and `pad` if seed is given. Shared: do not modify it."""
    params = smallest(name) if params is None else params
    return _compiled(name, tuple(sorted(params.items())), arch, seed, pad, fusion)
