"""The thread count of a CPU forward pass (raspicl.model.threads_for, torch_threads): chosen on
purpose, overridable, and the caller's torch setting restored after every call."""

from __future__ import annotations

import pytest
import torch

from raspicl import random_prompts
from raspicl.compiler import compile_program
from raspicl.model import DEFAULT_THREADS, THREADS_ENV, threads_for, torch_threads
from raspicl.registry import find_program


def test_threads_for_default_env_and_argument(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads_for() == DEFAULT_THREADS == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert threads_for() == 3
    assert threads_for(2) == 2  # the argument wins
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=THREADS_ENV):
            threads_for()
    with pytest.raises(ValueError, match="threads=0"):
        threads_for(0)


def test_torch_threads_restores():
    old = torch.get_num_threads()
    with torch_threads(old + 1):
        assert torch.get_num_threads() == old + 1
    assert torch.get_num_threads() == old
    with pytest.raises(RuntimeError), torch_threads(old + 1):
        raise RuntimeError
    assert torch.get_num_threads() == old


def test_forward_runs_under_the_chosen_count_and_restores(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    cm = compile_program(find_program("gd_step").build(d=2))
    prompts = random_prompts(4, 2, 1, seed=0)
    seen = []
    plan = cm.plan()
    attn = plan.attn

    def spy(run, resid):
        seen.append(torch.get_num_threads())
        return attn(run, resid)

    monkeypatch.setattr(plan, "attn", spy)
    old = torch.get_num_threads()
    outside = old + 1
    torch.set_num_threads(outside)
    try:
        cm.predict(prompts)
        assert set(seen) == {1} and torch.get_num_threads() == outside
        seen.clear()
        cm.predict(prompts, threads=2)
        assert set(seen) == {2} and torch.get_num_threads() == outside
        seen.clear()
        cm.threads = 3
        cm.run(prompts)
        assert set(seen) == {3} and torch.get_num_threads() == outside
        seen.clear()
        monkeypatch.setenv(THREADS_ENV, "2")
        cm.threads = None
        cm.residuals(prompts)
        assert set(seen) == {2} and torch.get_num_threads() == outside
    finally:
        torch.set_num_threads(old)
