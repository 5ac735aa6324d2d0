"""Weights by entries (raspicl.sparse_weights) against the dense weights they stand for.

- SparseArray against a numpy array of zeros given the same writes (=, +=, explicit zeros and
  -0.0 included): the same bytes;
- the compact plan made from a compiled model's entries against CompactPlan of its dense
  transformer, field by field (every tensor equal, bit for bit, and of the same dtype), in
  float64 and float32, for programs with divisions, selects, fused values, shared loops;
- a CompiledModel fresh from the compiler (no dense weights yet) predicts exactly what it
  predicts once its dense model is built, and what its float32 copy made either way predicts.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from raspicl import random_prompts
from raspicl.compact import CompactPlan, Gathered
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.errors import ContractWarning
from raspicl.registry import find_program
from raspicl.sparse_weights import Entries, SparseArray, SparseWeights


def test_sparse_array_writes_the_bytes_of_a_dense_array():
    rng = np.random.default_rng(0)
    shape = (3, 7, 5)
    dense, sparse = np.zeros(shape), SparseArray(shape)
    for _ in range(300):
        idx = tuple(int(rng.integers(n)) for n in shape)
        v = float(rng.choice([0.0, -0.0, 1e-300, rng.normal()]))
        if rng.random() < 0.5:
            dense[idx] += v
            sparse[idx] += v
        else:
            dense[idx] = v
            sparse[idx] = v
    block = {(6, 0): 1e-17, (2, 3): -2.5, (4, 4): 0.0}  # a[1] = the block of these entries
    dense[1] = 0.0
    for idx, v in block.items():
        dense[(1, *idx)] = v
    sparse.entries = {k: v for k, v in sparse.entries.items() if k[0] != 1}
    sparse.set_entries((1,), block)
    assert [k for k in sparse.entries if k[0] == 1] == [(1, 2, 3), (1, 6, 0)]  # row-major
    terms = [((0, 1, 1), 0.1), ((0, 1, 1), 0.2), ((2, 6, 4), -0.0)]  # a[i] += v, in order
    for idx, v in terms:
        dense[idx] += v
    sparse.add_terms(terms)
    assert sparse.dense().tobytes() == dense.tobytes()
    assert Entries.of(sparse).dense().numpy().tobytes() == dense.tobytes()
    nonzero = zip(*np.nonzero(dense), strict=True)
    assert sparse.nonzero() == {idx: float(dense[idx]) for idx in nonzero}


def _equal(a, b, where: str) -> None:
    """Two plan fields equal: tensors bit for bit (values, dtype, shape), else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert a.numpy().tobytes() == b.numpy().tobytes(), where
    elif isinstance(a, Gathered) or dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _equal(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert a == b, where


def _plans_equal(got: CompactPlan, want: CompactPlan) -> None:
    assert set(vars(got)) == set(vars(want))
    for name, value in vars(want).items():
        if name in ("_key", "_scratch"):  # what the plan matches; its run-time buffers
            continue
        if isinstance(value, list):
            assert len(getattr(got, name)) == len(value), name
            for i, (a, b) in enumerate(zip(getattr(got, name), value, strict=True)):
                _equal(a, b, f"{name}[{i}]")
        else:
            _equal(getattr(got, name), value, name)


CASES = [("gd_step", {"d": 3}, "unroll"), ("sherman_morrison", {"d": 4}, "unroll"),
         ("ridge", {"d": 2, "n": 3}, "share"), ("newton", {"d": 2, "n": 2, "T": 2}, "unroll"),
         ("sgd_averaged", {"d": 2, "n": 3}, "unroll"), ("nlms", {"d": 2, "n": 3}, "share")]


@pytest.mark.parametrize("name,params,loops", CASES)
def test_plan_from_entries_equals_the_plan_of_the_dense_model(name, params, loops):
    pf = find_program(name)
    for dtype in ("float64", "float32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContractWarning)
            cm = compile_program(pf.build(**params), CompilerConfig.for_dtype(dtype),
                                 loops=loops, domain=pf.domain)
        weights = cm._weights
        assert isinstance(weights, SparseWeights) and cm._model is None
        for torch_dtype in (torch.float64, torch.float32):
            got = weights.to(torch_dtype).plan()
            want = CompactPlan(weights.transformer().to(torch_dtype))
            _plans_equal(got, want)


@pytest.mark.parametrize("name,params,loops", CASES[1:3])
def test_a_fresh_model_predicts_what_its_dense_model_predicts(name, params, loops):
    pf = find_program(name)
    program = pf.build(**params)
    cm = compile_program(program, loops=loops, domain=pf.domain)
    prompts = random_prompts(32, program.d, program.n, seed=4)
    lazy, lazy_bound = cm.predict(prompts, with_bound=True)
    lazy32 = cm.to(torch.float32).predict(prompts, check="ignore")
    assert cm._model is None  # nothing above needed the dense weights
    dense_model = cm.model
    assert cm.model is dense_model and cm._weights is None
    values, bound = cm.predict(prompts, with_bound=True)
    assert values.tobytes() == lazy.tobytes() and bound.tobytes() == lazy_bound.tobytes()
    assert cm.to(torch.float32).predict(prompts, check="ignore").tobytes() == lazy32.tobytes()
    dense = cm.to()
    dense.compact = False  # the dense pass itself, within the monitor's bound of the plan's
    assert np.all(np.abs(dense.predict(prompts) - values) <= bound)


def test_a_fresh_model_copy_is_its_own():
    pf = find_program("gd_step")
    cm = compile_program(pf.build(d=2))
    copy = cm.to()
    with torch.no_grad():
        copy.model.embed.W_E.mul_(2.0)  # the copy's weights only
    assert not torch.equal(cm.model.embed.W_E, copy.model.embed.W_E)


@pytest.mark.filterwarnings("ignore::raspicl.errors.ContractWarning")
def test_large_gathered_mlps_made_from_entries_equal_the_planners(monkeypatch):
    """sherman_morrison d = 16 has MLPs large enough to be gathered, which the weights make
    from their entries (sparse_weights._gathered_mlp) instead of through compact's planner."""
    import raspicl.sparse_weights as sw

    used = []
    planner = sw._gathered_mlp
    monkeypatch.setattr(sw, "_gathered_mlp", lambda *a: used.append(planner(*a)) or used[-1])
    cm = compile_program(find_program("sherman_morrison").build(d=16))
    for torch_dtype in (torch.float64, torch.float32):
        weights = cm._weights.to(torch_dtype)
        used.clear()
        got = weights.plan()
        assert any(u is not None for u in used)
        _plans_equal(got, CompactPlan(weights.transformer()))
