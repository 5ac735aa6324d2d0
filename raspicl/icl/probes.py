"""Probes: how well each layer's residual stream encodes a quantity an algorithm computes
(Akyürek et al. 2023, §5: targets X^T y and w_OLS of the examples seen so far, linear and
two-layer MLP probes, one probe per layer and prefix).

For prefix k (k = 1..n examples seen) the probe reads the residual at token 2k: the x token
x_{k+1} where the learner predicts y_{k+1} from those k examples (k < n), and the query (token
2n) for k = n. Its target is the quantity computed from the same k examples, e.g. w_OLS(k) =
pinv(X_k) y_k (minimum norm) or X_k^T y_k. k = 0 (nothing seen, every target 0) is left out.

The targets depend on the task the model learns (task_targets; every one computed by the
reference learners' numpy code, raspicl.icl.learners, never by the model):

    linear     w_ols, xty                                     (the default; as ever)
    sparse     w_ols, w_ridge (lam = sigma^2/tau^2, only when sigma > 0: at sigma = 0 its
               limit lam -> 0 is w_ols), w_lasso (alpha = LASSO_ALPHA, mean loss), xty
    logistic   w_logreg (the MAP logistic weights, lam = 1/tau^2, learners.logistic_map),
               logistic_gd1, xty

logistic_gd1 is the first iterate of GD on the mean logistic loss from w = 0: the gradient at 0
is (1/k) sum_i (sigmoid(0) - y_i) x_i = -(1/k) X^T (y - 1/2), so w_1 = (lr/k) X^T (y - 1/2).
The target takes lr = 1 (learners.LogisticGD(T=1, lr=1)): a probe is fitted per prefix k and
R^2 does not change when a target is scaled, so any step (tuned or fixed) scores the same.
X^T y stays a target on the logistic task: it differs from X^T (y - 1/2) by (1/2) sum_i x_i.

    linear   ridge regression on standardised features; alpha chosen from ALPHAS on a
             validation fifth of the training prompts, then refitted on all of them
    mlp      Linear -> GeLU -> Linear (MLP_HIDDEN wide), Adam (lr MLP_LR), MLP_STEPS full-batch
             steps on standardised features and targets (torch, 1 thread as the caller set)

Score: R^2 on held-out test prompts, pooled over the target's components:
1 - sum (pred - t)^2 / sum (t - mean_test t)^2 (1: exact; 0: no better than the mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from raspicl.errors import RaspiclError
from raspicl.icl import learners as L
from raspicl.prompts import Prompts

ALPHAS = (1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2)
# The paper's MLP probes are 512 wide, Adam lr 1e-3; on one CPU thread a probe per layer and
# prefix at that size takes over a second each, so these are smaller and take larger steps
# (measured on compiled controls: the same R^2 to 0.01 where the register is written).
MLP_HIDDEN = 64
MLP_LR = 3e-3
MLP_STEPS = 200
# Features whose training standard deviation is below this (relative to the largest) are
# constant rows of the residual (anchors, unused rows) and are dropped before the fit.
CONSTANT_FEATURE = 1e-9

Target = Callable[[Prompts], np.ndarray]  # prompts -> [B, n + 1, width], column k = k examples


def w_ols(prompts: Prompts) -> np.ndarray:
    """Minimum-norm least squares on the first k examples: [B, n + 1, d]."""
    return L.LeastSquares().weights(prompts)


def xty(prompts: Prompts) -> np.ndarray:
    """X_k^T y_k = sum_{i <= k} y_i x_i: [B, n + 1, d]."""
    B, n, d = prompts.X.shape
    out = np.zeros((B, n + 1, d))
    out[:, 1:] = np.cumsum(prompts.X * prompts.y[..., None], axis=1)
    return out


TARGETS: dict[str, Target] = {"w_ols": w_ols, "xty": xty}

# The lasso penalty of the sparse task's w_lasso target (mean loss, sklearn's alpha): the
# middle of the reference set's learners.LASSO_GRID.
LASSO_ALPHA = 1e-2
# The targets `raspicl probe` fits by default, per task kind (task_targets computes them).
DEFAULT_TARGETS = {
    "linear": ("w_ols", "xty"),
    "sparse": ("w_ols", "w_ridge", "w_lasso", "xty"),
    "logistic": ("w_logreg", "logistic_gd1", "xty"),
}
# Every target name any task offers, in the order the command line lists them.
TARGET_NAMES = ("w_ols", "xty", "w_ridge", "w_lasso", "w_logreg", "logistic_gd1")


def logistic_gd1(prompts: Prompts) -> np.ndarray:
    """One GD step on the mean logistic loss from w = 0 with lr = 1: (1/k) X_k^T (y_k - 1/2)
    (learners.LogisticGD(T=1, lr=1)): [B, n + 1, d]."""
    return L.LogisticGD(T=1, lr=1.0).weights(prompts)


def task_targets(task) -> dict[str, tuple[Target, dict]]:
    """Every target a model of `task` (a RegressionTask) can be probed for: name -> (function,
    its parameters). Linear and sparse: w_ols, xty, w_ridge (sigma > 0 only), w_lasso;
    logistic: w_logreg, logistic_gd1, xty, w_ols (the least-squares fit of the 0/1 labels)."""
    out: dict[str, tuple[Target, dict]] = {"w_ols": (w_ols, {}), "xty": (xty, {})}
    if task.kind == "logistic":
        lam = task.logistic_lambda
        if np.isfinite(lam):
            out["w_logreg"] = (learner_target(L.LogisticRegression(lam)), {"lam": lam})
        out["logistic_gd1"] = (logistic_gd1, {"T": 1, "lr": 1.0, "w0": 0.0})
        return out
    if task.ridge_lambda > 0 and np.isfinite(task.ridge_lambda):
        out["w_ridge"] = (learner_target(L.Ridge(task.ridge_lambda)),
                          {"lam": task.ridge_lambda})
    out["w_lasso"] = (learner_target(L.Lasso(LASSO_ALPHA)), {"alpha": LASSO_ALPHA})
    return out


def default_targets(task) -> list[str]:
    """The targets `raspicl probe` fits on a model of `task` when none is named (those of
    DEFAULT_TARGETS[task.kind] that the task offers: w_ridge needs sigma > 0)."""
    offered = task_targets(task)
    return [t for t in DEFAULT_TARGETS[task.kind] if t in offered]


def learner_target(learner) -> Target:
    """The weights a linear reference learner (raspicl.icl.learners) gives at every prefix."""
    return learner.weights


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Pooled R^2 of pred against target ([N, width] each)."""
    ss_tot = float(np.sum((target - target.mean(axis=0)) ** 2))
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((pred - target) ** 2)) / ss_tot


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(axis=0), train.std(axis=0)
    keep = sd > CONSTANT_FEATURE * max(float(sd.max(initial=0.0)), 1e-300)
    if not np.any(keep):
        return np.zeros((len(train), 0)), np.zeros((len(test), 0))
    return (train[:, keep] - mu[keep]) / sd[keep], (test[:, keep] - mu[keep]) / sd[keep]


def _ridge_fit(F: np.ndarray, T: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and intercept of ridge (centred, unpenalised intercept)."""
    fm, tm = F.mean(axis=0), T.mean(axis=0)
    Fc = F - fm
    A = Fc.T @ Fc + alpha * len(F) * np.eye(F.shape[1])
    W = np.linalg.solve(A, Fc.T @ (T - tm))
    return W, tm - fm @ W


def linear_probe(train_f: np.ndarray, train_t: np.ndarray, test_f: np.ndarray,
                 test_t: np.ndarray) -> float:
    """Test R^2 of a ridge probe (alpha by validation, see the module doc)."""
    Ftr, Fte = _standardise(train_f, test_f)
    if Ftr.shape[1] == 0:
        return r2(np.broadcast_to(train_t.mean(axis=0), test_t.shape), test_t)
    cut = max(1, len(Ftr) * 4 // 5)
    best, best_alpha = -np.inf, ALPHAS[-1]
    for alpha in ALPHAS:
        W, c = _ridge_fit(Ftr[:cut], train_t[:cut], alpha)
        score = r2(Ftr[cut:] @ W + c, train_t[cut:])
        if score > best:
            best, best_alpha = score, alpha
    W, c = _ridge_fit(Ftr, train_t, best_alpha)
    return r2(Fte @ W + c, test_t)


def mlp_probe(train_f: np.ndarray, train_t: np.ndarray, test_f: np.ndarray,
              test_t: np.ndarray, seed: int = 0, hidden: int = MLP_HIDDEN,
              steps: int = MLP_STEPS, lr: float = MLP_LR) -> float:
    """Test R^2 of a two-layer GeLU MLP probe trained with Adam (see the module doc)."""
    import torch

    Ftr, Fte = _standardise(train_f, test_f)
    tm, ts = train_t.mean(axis=0), train_t.std(axis=0) + 1e-12
    if Ftr.shape[1] == 0:
        return r2(np.broadcast_to(tm, test_t.shape), test_t)
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(Ftr.shape[1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, train_t.shape[1]))
    with torch.no_grad():
        for p in net.parameters():  # seeded init, independent of torch's global generator
            p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.ndim > 1
                                                         else 0.0))
    x = torch.as_tensor(Ftr, dtype=torch.float32)
    t = torch.as_tensor((train_t - tm) / ts, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.mean((net(x) - t) ** 2)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(torch.as_tensor(Fte, dtype=torch.float32)).double().numpy() * ts + tm
    return r2(pred, test_t)


@dataclass
class ProbeResult:
    """R^2 by hidden-state index (0 = embedding, then after every layer) and prefix k."""

    target: str
    kind: str
    ks: list[int]
    r2: list[list[float]]  # [layers][len(ks)]

    @property
    def at_query(self) -> list[float]:
        """R^2 by layer at the query (k = n)."""
        return [row[-1] for row in self.r2]

    @property
    def mean_over_prefixes(self) -> list[float]:
        """R^2 by layer, averaged over the prefixes k."""
        return [float(np.mean(row)) for row in self.r2]

    def to_dict(self) -> dict:
        return {"target": self.target, "kind": self.kind, "ks": self.ks, "r2": self.r2,
                "at_query": self.at_query, "mean_over_prefixes": self.mean_over_prefixes}


def probe(model, prompts: Prompts, target: str | Target, kind: str = "linear",
          train_frac: float = 0.75, ks: list[int] | None = None, seed: int = 0,
          hidden: list[np.ndarray] | None = None,
          progress: Callable[[], None] | None = None) -> ProbeResult:
    """Probe every hidden state of `model` (a HiddenStates) at every prefix k for a target
    (a name in TARGETS or a function prompts -> [B, n + 1, width]). The first train_frac of
    the prompts train each probe, the rest test it. `hidden` may pass states already
    computed for these prompts. progress: called after each probe fitted (one per hidden
    state and prefix), for a progress bar."""
    if kind not in ("linear", "mlp"):
        raise ValueError(f"probe kind must be 'linear' or 'mlp', got {kind!r}")
    name = target if isinstance(target, str) else getattr(target, "__name__", "target")
    if isinstance(target, str):
        if target not in TARGETS:
            raise RaspiclError(f"unknown probe target {target!r}; targets are "
                               f"{', '.join(TARGETS)}")
        target = TARGETS[target]
    states = model.hidden_states(prompts) if hidden is None else hidden
    values = np.asarray(target(prompts), dtype=np.float64)
    B, n = prompts.batch, prompts.n
    if values.shape[:2] != (B, n + 1):
        raise RaspiclError(f"probe target {name}: shape {values.shape}, expected "
                           f"[B, n + 1, width] = [{B}, {n + 1}, ...]")
    ks = list(range(1, n + 1)) if ks is None else list(ks)
    cut = int(round(B * train_frac))
    if not 2 <= cut <= B - 2:
        raise RaspiclError(f"probing needs at least 2 train and 2 test prompts; got {B} "
                           f"prompts with train_frac {train_frac}")
    table = []
    for li, h in enumerate(states):
        row = []
        for k in ks:
            f, t = h[:, 2 * k, :], values[:, k, :]
            if kind == "linear":
                row.append(linear_probe(f[:cut], t[:cut], f[cut:], t[cut:]))
            else:
                row.append(mlp_probe(f[:cut], t[:cut], f[cut:], t[cut:],
                                     seed=seed + 1000 * li + k))
            if progress is not None:
                progress()
        table.append(row)
    return ProbeResult(name, kind, ks, table)
