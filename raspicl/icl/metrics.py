"""The metrics of Akyürek et al. (ICLR 2023) §4.1, per number of examples k, for any Predictor
(a trained model, a compiled raspicl model, a reference learner).

    error(A)        mean over prompts of (A(D_k)(x_{k+1}) - w^T x_{k+1})^2 / d: squared error
                    against the NOISELESS target w^T x (Garg et al.'s normalisation, so that the
                    zero predictor scores about tau^2 = 1 at every k); for a logistic task the
                    target is the true probability sigmoid(w^T x) (RegressionTask.targets)
    spd(A1, A2)     squared prediction difference: mean over prompts of
                    (A1(D_k)(x_{k+1}) - A2(D_k)(x_{k+1}))^2 / d ("dimension normalised")
    ilwd(A1, A2)    implicit linear weight difference: mean over contexts of
                    ||w_A1 - w_A2||^2 / d, where w_A for one context D_k is fitted by least
                    squares to A's predictions on m >= 2d fresh probe queries x'_j put in the
                    query slot of that prefix (for column k < n: in place of x_{k+1}; by
                    causality the tokens after it do not matter; for column n: in place of x_q)
    best_match      the reference learner with the smallest mean SPD to the model over the
                    columns k where the model predicts
    mspd            SPD averaged over the underdetermined prefixes 1 <= k < d (the paper's
                    MSPD; k = 0 is left out because every reference learner predicts 0 there,
                    which would add the same number to every learner's row)

The implicit weights are fitted WITH an intercept (as the paper's code, sklearn
LinearRegression(fit_intercept=True)): a learner that adds a constant to every prediction (a
trained model's readout bias) then has that constant in the intercept rather than spread over
w. For a linear learner through the origin the fit is exact either way (intercept 0; tested).

Array-level functions (`*_from_predictions`, `ilwd_from_weights`) take predictions computed
once; the Predictor-level ones call `predict` themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from raspicl.errors import RaspiclError
from raspicl.icl.predictor import Predictor
from raspicl.prompts import Prompts

# Prompts per predict call when the metrics probe a learner (bounds the memory a compiled
# model's residual list takes: 1 + 2 * blocks arrays of [chunk, 2n + 1, d_model] float64).
CHUNK = 1024
# Probe queries per context for the implicit weights, as a multiple of d (at least 2d).
PROBES_PER_DIM = 4


def predict_all(predictor: Predictor, prompts: Prompts, chunk: int = CHUNK) -> np.ndarray:
    """predictor.predict in chunks of `chunk` prompts, checked to be [B, n + 1] float64."""
    parts = []
    for s in range(0, prompts.batch, chunk):
        sl = slice(s, s + chunk)
        part = Prompts(prompts.X[sl], prompts.y[sl], prompts.xq[sl],
                       None if prompts.w is None else prompts.w[sl])
        parts.append(np.asarray(predictor.predict(part), dtype=np.float64))
    out = np.concatenate(parts, axis=0)
    if out.shape != (prompts.batch, prompts.n + 1):
        raise RaspiclError(f"{predictor.name}: predict returned shape {out.shape}, expected "
                           f"[B, n + 1] = {(prompts.batch, prompts.n + 1)}")
    return out


def noiseless_targets(prompts: Prompts) -> np.ndarray:
    """w^T x_{k+1} at every column (w^T x_q last): [B, n + 1]."""
    if prompts.w is None:
        raise RaspiclError("the error against k needs prompts with their true w")
    return np.einsum("bkd,bd->bk", prompts.prefix_queries(), prompts.w)


# ------------------------------------------------------------------ from predictions

def error_from_predictions(pred: np.ndarray, prompts: Prompts,
                           targets: np.ndarray | None = None) -> np.ndarray:
    """[n + 1]: mean over prompts of (pred - target)^2 / d (NaN where pred is NaN); the target
    is `targets` [B, n + 1] when given (a task's: RegressionTask.targets), else w^T x."""
    truth = noiseless_targets(prompts) if targets is None else targets
    return np.mean((pred - truth) ** 2, axis=0) / prompts.d


def spd_from_predictions(p1: np.ndarray, p2: np.ndarray, d: int) -> np.ndarray:
    """[n + 1]: mean over prompts of (p1 - p2)^2 / d (NaN where either is NaN)."""
    return np.mean((p1 - p2) ** 2, axis=0) / d


def mspd(spd_curve: np.ndarray, d: int) -> float:
    """Mean of the SPD curve over 1 <= k < d (NaN when d = 1 or no such column)."""
    vals = np.asarray(spd_curve)[1:d]
    return float(np.mean(vals)) if vals.size else float("nan")


def predicted_columns(pred: np.ndarray) -> np.ndarray:
    """The columns k where the learner predicts (no NaN over the prompts)."""
    return np.flatnonzero(np.all(np.isfinite(pred), axis=0))


def best_match(model_pred: np.ndarray, references: dict[str, np.ndarray], d: int
               ) -> tuple[str, dict[str, float]]:
    """The reference name with the smallest mean SPD to the model over the columns where the
    model predicts, and every reference's mean SPD there."""
    cols = predicted_columns(model_pred)
    if cols.size == 0:
        raise RaspiclError("the model predicts at no column; nothing to match")
    means = {name: float(np.mean(spd_from_predictions(model_pred[:, cols], p[:, cols], d)))
             for name, p in references.items()}
    finite = {k: v for k, v in means.items() if np.isfinite(v)}
    if not finite:
        raise RaspiclError("no reference learner predicts where the model does")
    return min(finite, key=finite.get), means


# ------------------------------------------------------------------ implicit weights

def probe_queries(prompts: Prompts, m: int | None = None, seed: int = 0) -> np.ndarray:
    """Fresh probe queries x' ~ N(0, I_d): [B, m, d] (default m = PROBES_PER_DIM * d)."""
    m = PROBES_PER_DIM * prompts.d if m is None else m
    if m < 2 * prompts.d:
        raise ValueError(f"implicit weights need at least 2d = {2 * prompts.d} probe queries "
                         f"per context, got {m}")
    return np.random.default_rng(seed).standard_normal((prompts.batch, m, prompts.d))


def probe_predictions(predictor: Predictor, prompts: Prompts, probes: np.ndarray,
                      chunk: int = CHUNK) -> np.ndarray:
    """[B, n + 1, m]: the predictor's prediction at column k of each context with probe j put
    in that column's query slot (x_{k+1}, or x_q for k = n)."""
    B, n, d = prompts.X.shape
    m = probes.shape[1]
    if probes.shape != (B, m, d):
        raise ValueError(f"probes must have shape [B, m, d] = [{B}, m, {d}], got "
                         f"{probes.shape}")
    X = np.repeat(prompts.X, m, axis=0)  # [B m, n, d], context b copied m times
    y = np.repeat(prompts.y, m, axis=0)
    xq = np.repeat(prompts.xq, m, axis=0)
    flat = probes.reshape(B * m, d)
    out = np.empty((B, n + 1, m))
    for k in range(n + 1):
        Xk, xqk = X.copy(), xq.copy()
        if k < n:
            Xk[:, k] = flat
        else:
            xqk = flat
        pred = predict_all(predictor, Prompts(Xk, y, xqk), chunk)
        out[:, k] = pred[:, k].reshape(B, m)
    return out


def fit_implicit_weights(probes: np.ndarray, values: np.ndarray, intercept: bool = True
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares weights per context and column: probes [B, m, d], values [B, n + 1, m]
    -> (w [B, n + 1, d], c [B, n + 1]); c = 0 without an intercept. NaN where values are."""
    B, m, d = probes.shape
    A = np.concatenate([probes, np.ones((B, m, 1))], axis=2) if intercept else probes
    pinv = np.linalg.pinv(A)  # [B, d(+1), m]
    coef = np.einsum("bpm,bkm->bkp", pinv, values)
    if intercept:
        return coef[..., :d], coef[..., d]
    return coef, np.zeros(coef.shape[:2])


def implicit_weights(predictor: Predictor, prompts: Prompts, probes: np.ndarray,
                     intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A learner's implicit linear weights at every context and column (see the module doc)."""
    return fit_implicit_weights(probes, probe_predictions(predictor, prompts, probes),
                                intercept)


def ilwd_from_weights(w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """[n + 1]: mean over contexts of ||w1 - w2||^2 / d."""
    return np.mean(np.sum((w1 - w2) ** 2, axis=2), axis=0) / w1.shape[2]


# ------------------------------------------------------------------ from predictors

def error(predictor: Predictor, prompts: Prompts) -> np.ndarray:
    """Normalised squared error against the noiseless target per k: [n + 1]."""
    return error_from_predictions(predict_all(predictor, prompts), prompts)


def spd(a: Predictor, b: Predictor, prompts: Prompts) -> np.ndarray:
    """SPD(a, b) per k: [n + 1]."""
    return spd_from_predictions(predict_all(a, prompts), predict_all(b, prompts), prompts.d)


def ilwd(a: Predictor, b: Predictor, prompts: Prompts, probes: np.ndarray | None = None,
         intercept: bool = True) -> np.ndarray:
    """ILWD(a, b) per k: [n + 1], both fitted on the same probe queries."""
    probes = probe_queries(prompts) if probes is None else probes
    wa, _ = implicit_weights(a, prompts, probes, intercept)
    wb, _ = implicit_weights(b, prompts, probes, intercept)
    return ilwd_from_weights(wa, wb)


@dataclass
class Comparison:
    """A model against a set of reference learners on the same prompts (raspicl compare)."""

    model: str
    d: int
    n: int
    error: dict[str, list[float]]
    spd: dict[str, list[float]]
    ilwd: dict[str, list[float]]
    mean_spd: dict[str, float]
    mspd: dict[str, float]
    best_match: str
    intercept: bool
    ilwd_contexts: int
    probes_per_context: int
    extra: dict = field(default_factory=dict)


def compare_steps(references: list) -> int:
    """How many times `compare` calls its progress callback: two per learner, model
    included."""
    return 2 * (len(references) + 1)


def compare(model: Predictor, references: list[Predictor], prompts: Prompts,
            ilwd_prompts: int = 128, probes: int | None = None, seed: int = 0,
            intercept: bool = True,
            progress: Callable[[str], None] | None = None,
            targets: np.ndarray | None = None) -> Comparison:
    """Every metric of the model against every reference learner: error curves (model and
    references), SPD and ILWD per k (model vs each reference), mean SPD, MSPD and the best
    match. ILWD is measured on the first `ilwd_prompts` prompts with `probes` probe queries
    each (default PROBES_PER_DIM * d) drawn from `seed`. progress: called with a learner's
    name after each of the compare_steps(references) units of work (its predictions, its
    implicit weights), for a progress bar. targets: what the error is measured against
    ([B, n + 1]; default w^T x; a logistic task's is sigmoid(w^T x))."""
    names = [r.name for r in references]
    if model.name in names or len(set(names)) != len(names):
        raise RaspiclError(f"learner names must be distinct: model {model.name!r}, "
                           f"references {names}")
    tick = progress or (lambda name: None)

    def timed(learner, fn):
        out = fn(learner)
        tick(learner.name)
        return out

    d = prompts.d
    preds = {r.name: timed(r, lambda r: predict_all(r, prompts)) for r in references}
    mpred = timed(model, lambda m: predict_all(m, prompts))
    err = {model.name: error_from_predictions(mpred, prompts, targets)}
    err.update({k: error_from_predictions(p, prompts, targets) for k, p in preds.items()})
    spds = {k: spd_from_predictions(mpred, p, d) for k, p in preds.items()}
    best, means = best_match(mpred, preds, d)
    sub = Prompts(prompts.X[:ilwd_prompts], prompts.y[:ilwd_prompts],
                  prompts.xq[:ilwd_prompts],
                  None if prompts.w is None else prompts.w[:ilwd_prompts])
    q = probe_queries(sub, probes, seed)
    wm, _ = timed(model, lambda m: implicit_weights(m, sub, q, intercept))
    ilwds = {r.name: ilwd_from_weights(
        wm, timed(r, lambda r: implicit_weights(r, sub, q, intercept))[0])
        for r in references}
    return Comparison(
        model=model.name, d=d, n=prompts.n,
        error={k: v.tolist() for k, v in err.items()},
        spd={k: v.tolist() for k, v in spds.items()},
        ilwd={k: v.tolist() for k, v in ilwds.items()},
        mean_spd=means, mspd={k: mspd(v, d) for k, v in spds.items()},
        best_match=best, intercept=intercept, ilwd_contexts=sub.batch,
        probes_per_context=q.shape[1])
