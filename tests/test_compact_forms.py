"""The compact plan's sparse matrix forms (raspicl.compact) against a dense float64 product
of the same random sparse matrix: Gathered (by columns) through its transposed gather, and
Scattered (by rows), in the streamed layout (`apply`) and transposed (`apply_t`), and the rule
`sparse_form` picks them by."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raspicl.compact import (
    SCATTER_COST,
    SPARSE_MIN_ENTRIES,
    SPARSE_TERMS,
    Gathered,
    Scattered,
    Scratch,
    sparse_form,
    sparse_form_of_entries,
)


def _rows_sparse(r: int, c: int, per_row: int, seed: int) -> torch.Tensor:
    """A random [r, c] float64 matrix with 1 to per_row nonzeros in each row (row 5 empty),
    at random columns, some columns summing many rows (as a product gadget's W_out)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.zeros(r, c, dtype=torch.float64)
    for i in range(r):
        cols = torch.randint(0, max(c // 8, 1), (1 + i % per_row,), generator=gen)
        W[i, cols] = torch.randn(len(cols), generator=gen, dtype=torch.float64)
    W[5] = 0.0
    return W


def test_scattered_equals_the_dense_product():
    r, c = 1200, 600
    assert r * c >= SPARSE_MIN_ENTRIES and 2 * SCATTER_COST <= c
    W = _rows_sparse(r, c, 2, seed=1)
    assert int((W != 0).sum(dim=0).max()) > SPARSE_TERMS  # too long to gather
    assert Gathered.of(W) is None
    s = sparse_form(W)
    assert isinstance(s, Scattered) and s.idx.shape == (2, r)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(70, r, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    want = x.numpy() @ W.numpy() + b.numpy()  # numpy's float64 product, not the code's
    scale = np.abs(x.numpy()) @ np.abs(W.numpy()) + np.abs(b.numpy())
    got = s.apply(x, b).numpy()
    assert got.shape == want.shape
    assert (np.abs(got - want) <= 1e-14 * scale).all()
    got_t = s.apply_t(x.t().contiguous(), b, tmp=torch.empty(r, 70, dtype=torch.float64))
    assert (np.abs(got_t.numpy().T - want) <= 1e-14 * scale).all()
    no_bias = Scattered(s.idx, s.coef, s.n_cols, has_bias=False)
    np.testing.assert_allclose(no_bias.apply_t(x.t(), b).numpy().T, want - b.numpy(),
                               rtol=0, atol=1e-13)


def test_scattered_from_entries_equals_scattered_of_the_matrix():
    W = _rows_sparse(1200, 600, 3, seed=3)
    rows, cols = torch.nonzero(W, as_tuple=True)
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(4))
    s = sparse_form_of_entries(rows[perm], cols[perm], W[rows, cols][perm], tuple(W.shape))
    t = Scattered.of(W)
    assert isinstance(s, Scattered) and torch.equal(s.idx, t.idx)
    assert torch.equal(s.coef, t.coef)


@pytest.mark.parametrize("shape,per_row", [((1200, 600), SPARSE_TERMS + 1),  # long rows
                                           ((8256, 32), 1),  # too few columns to pay
                                           ((100, 100), 1)])  # small
def test_dense_where_no_form_pays(shape, per_row):
    W = _rows_sparse(*shape, per_row, seed=5)
    if shape == (8256, 32):
        assert SCATTER_COST > 32
    assert Scattered.of(W) is None


def test_gathered_transposed_gather_is_bitwise_the_column_gather():
    """Gathered.apply gathers rows of x transposed; each entry gets the same operations as
    when it gathered columns of x (the streamed pass's numbers, which fix the weights)."""
    gen = torch.Generator().manual_seed(6)
    r, c, m = 500, 900, 3
    idx = torch.randint(0, r, (m, c), generator=gen)
    coef = torch.randn(m, c, generator=gen, dtype=torch.float64)
    g = Gathered(idx, coef)
    for n in (1, 7, 180):
        x = torch.randn(n, r, generator=gen, dtype=torch.float64)
        b = torch.randn(c, generator=gen, dtype=torch.float64)
        want = b.expand(n, -1).clone()
        for i in range(m):
            want.addcmul_(x[:, idx[i]], coef[i])
        got = g.apply(x, b)
        assert got.is_contiguous() and torch.equal(got, want)


def test_forms_into_scratch_buffers_equal_new_tensors():
    """apply into a Scratch's buffers (the streamed MLP's) gives the numbers of apply into new
    tensors, call after call, as the buffers are reused and regrown."""
    gen = torch.Generator().manual_seed(7)
    W = _rows_sparse(1200, 600, 2, seed=8)
    s = Scattered.of(W)
    g = Gathered(torch.randint(0, 1200, (3, 700), generator=gen),
                 torch.randn(3, 700, generator=gen, dtype=torch.float64))
    scratch = Scratch()
    for n in (5, 40, 3):
        x = torch.randn(n, 1200, generator=gen, dtype=torch.float64)
        for form, c in ((s, 600), (g, 700)):
            b = torch.randn(c, generator=gen, dtype=torch.float64)
            want = form.apply(x, b)
            got = form.apply(x, b, scratch, "out")
            assert torch.equal(got, want) and got.shape == (n, c)


def test_scratch_keeps_no_buffer_above_its_limit():
    scratch = Scratch(max_entries=100)
    like = torch.zeros(1, dtype=torch.float64)
    small = scratch.shaped("a", (10, 10), like)
    assert scratch.shaped("a", (5, 20), like).data_ptr() == small.data_ptr()  # reused
    big = scratch.shaped("a", (11, 10), like)
    assert big.shape == (11, 10) and big.data_ptr() != small.data_ptr()
    assert scratch.shaped("a", (10, 10), like).data_ptr() == small.data_ptr()  # not replaced
