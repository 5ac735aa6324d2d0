"""semantics._sum_terms, the interpreter's sums of terms, against the dense matrix product it
stands for (numpy's matmul of the same terms as a matrix): bit for bit, on finite rows and on
rows with NaN and infinities, for one term per output (the elementwise path) and several (the
matmul itself)."""

from __future__ import annotations

import numpy as np
import pytest

from raspicl import semantics as interp


def _bits(a: np.ndarray) -> np.ndarray:
    """The float64 bit patterns, every NaN as one pattern (a NaN's sign is not a value)."""
    return np.where(np.isnan(a), np.nan, a).view(np.int64)


@pytest.mark.parametrize("repeat", [False, True])
def test_sum_terms_equals_the_matmul(repeat):
    rng = np.random.default_rng(0)
    n, k, width = 300, 40, 50
    X = rng.standard_normal((n, k)) * np.exp(rng.uniform(-30, 30, (n, k)))
    X[3, 5] = np.nan
    X[7, 0] = np.inf
    X[8, 9], X[8, 10] = np.inf, -np.inf
    X[9, :] = 0.0
    X[10, 2] = -0.0
    terms = 35
    cols = rng.integers(0, k, terms)
    outs = rng.permutation(width)[:terms]  # one term per output: the elementwise path
    if repeat:
        outs[1] = outs[0]  # an output with two terms: the matmul
    coef = rng.standard_normal(terms)
    coef[4] = 0.0

    def matrix():
        M = np.zeros((k, width))
        np.add.at(M, (cols, outs), coef)
        return M

    bias = rng.standard_normal(width)
    bias[:5] = 0.0
    base = np.full((n, width), 0.0) + bias  # as _apply starts its sums
    want = base + X @ matrix()
    got = base + interp._sum_terms(X, cols, outs, coef, width, np.dtype(np.float64), matrix)
    np.testing.assert_array_equal(_bits(got), _bits(want))
    assert np.isnan(got[3]).all() and np.isfinite(got[0]).all()
