"""Ridge regression by Newton–Schulz matrix inversion, predicting at every x token.

An algorithm beyond the paper's two theorems. Fu, Chen, Jia, Sharan, "Transformers learn
higher-order optimization methods for in-context learning: a study with linear models"
(2023, arXiv 2310.17086) find that trained transformers track iterative Newton's method for
the inverse of the data covariance: Schulz's iteration (G. Schulz, "Iterative Berechnung der
reziproken Matrix", ZAMM 13, 1933), here for A = S + lam I,

    M_k = 2 M_{k-1} - M_{k-1} A M_{k-1},     k = 1..T,

from the safe start M_0 = I / (tr S + lam): A is symmetric positive definite with
lambda_max(A) <= tr S + lam, so the eigenvalues of I - M_0 A lie in [0, 1) and the iteration
converges (quadratically). At x token i, S = (1/m) sum_j x_j x_j^T and b = (1/m) sum_j x_j y_j
over the m = i - 1 examples before it (all n at the query), and the prediction is the ridge
estimate (mean loss) after T steps, w = M_T b, pred = w^T x. At token 0 (x_1) there is no
example: S = 0 and b = 0 (a select), so M_0 = I / lam stays I / lam and the prediction is 0.

M_0 commutes with A, hence so does every M_k, and with R_k = I - M_k A the step reads

    M_k = M_{k-1} + R_{k-1} M_{k-1},     R_k = R_{k-1}^2,

two products of the same depth: one MLP per step, where 2M - MAM needs two MLPs in a row.
The addition runs in the attention of the block whose MLP forms the products for the next
step, so the loop body starts with it (one block per step in a looped compile, too), and R is
kept one step ahead; the products after the last step are not used. The program:

    xx = x_prev x_prev^T,  xy = x_prev y        block 0 (x_prev from Offset(1))
    s  = tr S + lam,  N = tr(S) I - S,  both read from the mean of xx over the y tokens
         (tr S is linear in S: a linear map of what the head reads)     attention
    s  = select(token 0 -> lam, else s),  N = select(token 0 -> 0, else N)
    b  = select(token 0 -> 0, else mean of xy over y tokens)         MLP (gates)
    M  = I / |s|,      R = N / |s|  (= I - M_0 A)                 division (LayerNorm)
    RM = R M,  R = R R                                            MLP (R_0 M_0, R_1)
    loop T:  M  = M + RM                                          attention
             RM = R M,  R = R R                                   MLP
    w = M b,  pred = w^T x                                        MLPs
"""

from __future__ import annotations

import numpy as np

from raspicl import Mean, Offset, Program, Read, solvers
from raspicl.prompts import Prompts

# `raspicl verify`'s default checks (1000 problems, float64 and float32 each), chosen so
# that the whole default run stays under 2 minutes on 2 cores; the tests cover
# d in {1, 2, 4, 8}, n in {1, d, 2d} (tests/test_learning_programs.py).
GRID = [{"d": d, "n": n, "T": T}
        for d, n, T in ((1, 1, 1), (1, 2, 8), (2, 2, 2), (2, 4, 8), (4, 4, 2))]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets).
TOLERANCE = {"float64": 1e-6, "float32": 1e-2}


def program(d: int = 2, n: int = 2, T: int = 8, lam: float = 0.5) -> Program:
    if not lam > 0:
        raise ValueError(f"newton needs lam > 0 (A = S + lam I positive definite), got {lam}")
    p = Program("newton", d=d, n=n, params={"d": d, "n": n, "T": T, "lam": lam})
    dd = d * d
    eye = np.eye(d)
    trace_row = eye.reshape(1, dd)
    lam_c = p.const("lam", lam)
    zero_S = p.const("zero_S", np.zeros((d, d)))
    zero_b = p.const("zero_b", np.zeros(d))
    identity = p.const("I", eye)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_j, at y token j")
    xx = p.mul("xx", x_prev, x_prev, a_shape=(d, 1), b_shape=(1, d), shape=(d, d),
                note="x_j x_j^T")
    xy = p.mul("xy", x_prev, p.y, shape=(d,), note="x_j y_j")
    S_mean = Read(xx, Mean("y"))  # S, where there is an example (not at token 0)
    s_mean = p.raw("s_mean", S_mean, W=trace_row, bias=lam, note="tr S + lam")
    n_mean = p.raw("N_mean", S_mean, W=eye.reshape(dd, 1) @ trace_row - np.eye(dd),
                   shape=(d, d), note="tr(S) I - S")
    s = p.select("s", [0], lam_c, s_mean, note="tr S + lam (> 0); lam at token 0 (S = 0)")
    num = p.select("N", [0], zero_S, n_mean, note="tr(S) I - S; 0 at token 0 (S = 0)")
    b = p.select("b", [0], zero_b, Read(xy, Mean("y")), note="mean x y over the examples")
    M = p.var("M", (d, d))
    R = p.var("R", (d, d))
    p.div(M, identity, s, note="M_0 = I / (tr S + lam)")
    p.div(R, num, s, note="R_0 = I - M_0 (S + lam I) = (tr(S) I - S) / (tr S + lam)")
    RM = p.var("RM", (d, d))
    p.mul(RM, R, M, shape=(d, d), note="R_0 M_0")
    p.mul(R, R, R, shape=(d, d), note="R_1 = R_0^2")
    for _ in p.loop(T):
        p.aff(M, M, RM, note="M_k = M + R M = 2M - M A M")
        p.mul(RM, R, M, shape=(d, d), note="R_k M_k, for the next step")
        p.mul(R, R, R, shape=(d, d), note="R_{k+1} = R_k^2")
    w = p.mul("w", M, b, shape=(d,), note="w = M_T b")
    pred = p.dot("pred", w, p.x, note="w^T x")
    p.output(pred, roles=("x", "query"))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 2, T: int = 8,
              lam: float = 0.5) -> np.ndarray:
    """raspicl.solvers.newton_schulz_inverse from M_0 = I / (tr S + lam) on each prefix
    (examples 1..i-1 at x token i, all n at the query), w = M_T b dotted with the next x:
    [B, n + 1]. With no examples (x token 1), b = 0 and the prediction is 0."""
    queries = prompts.prefix_queries()  # x_1..x_n, x_q
    preds = [np.zeros(prompts.batch)]
    for i in range(1, n + 1):
        X, y = prompts.X[:, :i], prompts.y[:, :i]
        S = np.einsum("bni,bnj->bij", X, X) / i
        b = np.einsum("bni,bn->bi", X, y) / i
        M0 = np.eye(d)[None] / (np.trace(S, axis1=1, axis2=2) + lam)[:, None, None]
        M = solvers.newton_schulz_inverse(S, lam, T, M0=M0)[:, -1]
        preds.append(solvers.predict(np.einsum("bij,bj->bi", M, b), queries[:, i]))
    return np.stack(preds, axis=1)
