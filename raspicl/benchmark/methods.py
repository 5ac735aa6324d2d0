"""The reference methods, each run on a Subject (raspicl.benchmark.subject) and a Task, each
returning MethodOutputs for raspicl.benchmark.score. They see the model only through the
subject (residuals, patches, gradients) and the task's prompts, values and exact
counterfactual metrics (the supervision such methods take: a probe's targets, a causal model's
counterfactual outputs); never the ground truth.

    probe         linear probe (least squares, a tiny ridge): per site (residual, token), the
                  held-out R^2 of the variable's value; flags R^2 >= PROBE_R2; at its best
                  residual (largest mean R^2) the span of its weights is its subspace, and
                  interchanging that span is its intervention
    sparse_probe  the same on the k = width coordinates with the largest dense weights
                  (k-sparse probing, Gurnee et al. 2023): a method that trusts the basis
    act_patch     activation patching: the whole residual at one site from B into A; a site
                  is flagged where that reproduces the variable's exact counterfactual at
                  that token (within MATCH); its best residual (on the fit pairs) is its
                  intervention; nodes scored by resampling a component's output from B
    attr_patch    attribution patching: the same estimates to first order, gradient x
                  (r_B - r_A), from one backward pass; edges by edge attribution patching,
                  (a_u(B) - a_u(A)) . d metric / d input_v
    das           distributed alignment search: a k-dimensional subspace (k = width) trained so
                  that interchanging it gives the exact counterfactual metric (Adam, DAS_STEPS
                  steps from the dense probe's span, since from a random start the loss is too
                  sharp to descend; the basis with the lowest fit loss is kept), at the
                  residual where interchanging a dense probe's span comes closest to that
                  counterfactual on the fit pairs
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from raspicl.benchmark.metrics import orthonormal
from raspicl.benchmark.score import MethodOutputs, candidate_edges
from raspicl.benchmark.subject import RaspiclSubject, metric
from raspicl.benchmark.tasks import Split, Task, VariableTask

PROBE_R2 = 0.99  # a probe flags a site whose held-out R^2 reaches this
MATCH = 0.1  # a patch matches a counterfactual within this share of its effect
RIDGE = 1e-9  # a probe's ridge, relative to its features' mean square
DAS_STEPS = 60
DAS_LR = 0.002
DAS_NOISE = 0.01  # DAS starts from the dense probe's span, perturbed this much

METHODS = ("probe", "sparse_probe", "act_patch", "attr_patch", "das")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


class Cache:
    """Residuals of a task's splits on a subject (no gradient), computed once."""

    def __init__(self, subject, task: Task):
        self.subject, self.task = subject, task
        self._res: dict[tuple[str, str], list[np.ndarray]] = {}

    def res(self, split: str, side: str) -> list[np.ndarray]:
        key = (split, side)
        if key not in self._res:
            s: Split = getattr(self.task, split)
            with torch.no_grad():
                _, res = self.subject.run(getattr(s, side).tokens())
            self._res[key] = [_np(r) for r in res]
        return self._res[key]


def _fit(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares with a tiny ridge on centred data: (W [d, w], x mean, y mean)."""
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    G = Xc.T @ Xc
    lam = RIDGE * max(float(np.trace(G)) / max(G.shape[0], 1), 1e-300)
    W = np.linalg.solve(G + lam * np.eye(G.shape[0]), Xc.T @ Yc)
    return W, mx, my


def _r2(X: np.ndarray, Y: np.ndarray, fit) -> float:
    W, mx, my = fit
    pred = (X - mx) @ W + my
    ss = float(((Y - Y.mean(0)) ** 2).sum())
    return 1 - float(((pred - Y) ** 2).sum()) / ss if ss > 0 else math.nan


def _xy(cache: Cache, split: str, i: int, tokens, v: str):
    """Features [n, d] and targets [n, w] at residual i, pooled over `tokens`, A and B."""
    s: Split = getattr(cache.task, split)
    X = np.concatenate([cache.res(split, side)[i][:, list(tokens)] for side in ("a", "b")])
    Y = np.concatenate([s.values_a[v][:, list(tokens)], s.values_b[v][:, list(tokens)]])
    return X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1])


def interchange_metrics(subject, split: Split, res_a: list[np.ndarray],
                        res_b: list[np.ndarray],
                        edits: list[tuple[int, tuple[int, ...], np.ndarray | None]]
                        ) -> np.ndarray:
    """The metric [E, N] of A under each edit (residual i, tokens, basis U or None): residual
    i at those tokens set to B's along span(U) (all of it if None). One forward pass: the
    prompts are repeated once per edit, and each copy is edited at its own residual only."""
    N = split.base.shape[0]
    E = len(edits)
    tokens = np.tile(split.a.tokens(), (E, 1, 1))
    deltas: dict[int, list[tuple[int, np.ndarray]]] = {}
    for e, (i, toks, U) in enumerate(edits):
        d = res_b[i] - res_a[i]
        if U is not None:
            Q = orthonormal(U)
            d = d @ Q @ Q.T
        mask = np.zeros(d.shape[1], dtype=bool)
        mask[list(toks)] = True
        deltas.setdefault(i, []).append((e, np.where(mask[None, :, None], d, 0.0)))

    def patch(i: int):
        def fn(r: torch.Tensor) -> torch.Tensor:
            r = r.clone()
            for e, d in deltas[i]:
                r[e * N:(e + 1) * N] += torch.from_numpy(d)
            return r
        return fn

    with torch.no_grad():
        pred, _ = subject.run(tokens, {i: patch(i) for i in deltas})
    return _np(metric(pred)).reshape(E, N)


def _interchange(subject, split: Split, i: int, tokens, U: np.ndarray | None,
                 res_a: list[np.ndarray], res_b: list[np.ndarray]) -> np.ndarray:
    """The metric [N] of A with residual i at `tokens` set to B's along span(U)."""
    return interchange_metrics(subject, split, res_a, res_b, [(i, tuple(tokens), U)])[0]


# ---------------------------------------------------------------------------------- probes


def probe(subject, task: Task, cache: Cache, sparse: bool = False) -> MethodOutputs:
    out = MethodOutputs("sparse_probe" if sparse else "probe")
    edits = []
    n_res = task.gt.n_residuals
    for vt in task.variables:
        k = vt.var.width
        flags, best, best_r2 = set(), 0, -math.inf
        for i in range(n_res):
            r2s = []
            for t in vt.tokens:
                X, Y = _xy(cache, "fit", i, [t], vt.name)
                Xt, Yt = _xy(cache, "test", i, [t], vt.name)
                fit = _fit(X, Y)
                if sparse:
                    cols = _top_rows(fit[0], k)
                    fit = _fit(X[:, cols], Y)
                    X, Xt = X[:, cols], Xt[:, cols]
                r2 = _r2(Xt, Yt, fit)
                r2s.append(r2)
                if r2 >= PROBE_R2:
                    flags.add((i, t))
            m = float(np.nanmean(r2s)) if not all(map(math.isnan, r2s)) else -math.inf
            if m > best_r2:
                best, best_r2 = i, m
        out.localisation[vt.name] = flags
        X, Y = _xy(cache, "fit", best, vt.tokens, vt.name)
        W = _fit(X, Y)[0]
        if sparse:
            cols = _top_rows(W, k)
            U = np.eye(task.gt.d_model)[:, cols]
        else:
            U = W
        out.subspaces[vt.name] = (best, U)
        edits.append((best, vt.tokens, U))
    if edits:
        m = interchange_metrics(subject, task.test, cache.res("test", "a"),
                                cache.res("test", "b"), edits)
        for k, vt in enumerate(task.variables):
            out.effects[vt.name] = m[k]
    return out


def _top_rows(W: np.ndarray, k: int) -> list[int]:
    """The k rows of W with the largest norms (the coordinates a sparse probe keeps)."""
    return sorted(np.argsort(-np.linalg.norm(W, axis=1), kind="stable")[:k].tolist())


# ---------------------------------------------------------------------------------- patching


def _matches(m: np.ndarray, exact: np.ndarray, base: np.ndarray) -> bool:
    effect = float(np.abs(exact - base).sum())
    return effect > 0 and float(np.abs(m - exact).sum()) <= MATCH * effect


def _best_residual(task: Task, vt: VariableTask, metrics: np.ndarray) -> int:
    """The residual whose edit (row i of metrics [n_res, N], fit pairs) comes closest to the
    exact counterfactual."""
    return int(np.argmin(np.abs(metrics - task.fit.exact_all[vt.name]).sum(-1)))


def act_patch(subject, task: Task, cache: Cache) -> MethodOutputs:
    out = MethodOutputs("act_patch")
    n_res = task.gt.n_residuals
    sites = sorted({s for vt in task.variables for s in task.sites(vt)})
    ta, tb = cache.res("test", "a"), cache.res("test", "b")
    m = dict(zip(sites, interchange_metrics(subject, task.test, ta, tb,
                                            [(i, (t,), None) for i, t in sites]), strict=True))
    fa, fb = cache.res("fit", "a"), cache.res("fit", "b")
    for vt in task.variables:
        ex = task.test.exact_at[vt.name]
        out.localisation[vt.name] = {(i, t) for i, t in task.sites(vt)
                                     if _matches(m[(i, t)], ex[t], task.test.base)}
        fit = interchange_metrics(subject, task.fit, fa, fb,
                                  [(i, vt.tokens, None) for i in range(n_res)])
        best = _best_residual(task, vt, fit)
        out.effects[vt.name] = _interchange(subject, task.test, best, vt.tokens, None, ta, tb)
    if isinstance(subject, RaspiclSubject):
        out.nodes = _resample_nodes(subject, task)
    return out


def _resample_nodes(subject: RaspiclSubject, task: Task) -> dict[str, float]:
    """Each component's node score: mean |metric change| when its output on A is replaced by
    its output on B (all components at once, one copy of the prompts each). A component
    whose output is the same on A and B (a head that is all zero) changes nothing."""
    s = task.test
    N = s.base.shape[0]
    with torch.no_grad():
        pred_a, outs_a, _ = subject.run_components(s.a.tokens())
        _, outs_b, _ = subject.run_components(s.b.tokens())
        moving = [c for c in outs_a if not torch.equal(outs_a[c], outs_b[c])]
        scores = {c: 0.0 for c in outs_a}
        if not moving:
            return scores
        E = len(moving)
        big = np.tile(s.a.tokens(), (E, 1, 1))
        replace = {}
        for e, c in enumerate(moving):
            mask = torch.zeros(E * N, dtype=torch.bool)
            mask[e * N:(e + 1) * N] = True
            replace[c] = (mask, outs_b[c].repeat(E, 1, 1))
        pred, _, _ = subject.run_components(big, replace)
        base = _np(metric(pred_a))
        m = _np(metric(pred)).reshape(E, N)
        for e, c in enumerate(moving):
            scores[c] = float(np.abs(m[e] - base).mean())
    return scores


def attr_patch(subject, task: Task, cache: Cache) -> MethodOutputs:
    out = MethodOutputs("attr_patch")
    grads = _residual_grads(subject, task.test)
    ra, rb = cache.res("test", "a"), cache.res("test", "b")
    base = task.test.base
    est = {i: ((rb[i] - ra[i]) * grads[i]).sum(-1) for i in range(len(grads))}  # [N, T]
    g_fit = _residual_grads(subject, task.fit)
    fa, fb = cache.res("fit", "a"), cache.res("fit", "b")
    for vt in task.variables:
        ex = task.test.exact_at[vt.name]
        out.localisation[vt.name] = {(i, t) for i, t in task.sites(vt)
                                     if _matches(base + est[i][:, t], ex[t], base)}
        toks = list(vt.tokens)
        fit = np.stack([task.fit.base + ((fb[i] - fa[i]) * g_fit[i])[:, toks].sum((1, 2))
                        for i in range(len(g_fit))])
        best = _best_residual(task, vt, fit)
        out.effects[vt.name] = base + est[best][:, toks].sum(-1)
    if isinstance(subject, RaspiclSubject):
        out.nodes, out.edges = _eap(subject, task)
    return out


def _residual_grads(subject, split: Split) -> list[np.ndarray]:
    """d metric / d residual i at A, for every residual (one backward pass)."""
    zs: dict[int, torch.Tensor] = {}

    def leaf(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(r: torch.Tensor) -> torch.Tensor:
            zs[i] = torch.zeros_like(r, requires_grad=True)
            return r + zs[i]
        return fn

    patches = {i: leaf(i) for i in range(subject.n_residuals)}
    pred, _ = subject.run(split.a.tokens(), patches)
    order = sorted(zs)
    grads = torch.autograd.grad(metric(pred).sum(), [zs[i] for i in order], allow_unused=True)
    return [np.zeros(zs[i].shape) if g is None else _np(g) for i, g in zip(order, grads,
                                                                             strict=True)]


def _eap(subject: RaspiclSubject, task: Task) -> tuple[dict, dict]:
    """Node and edge attribution scores on the test pairs: mean |(a_u(B) - a_u(A)) . grad|,
    the gradient at u's output (node) or at v's own input (edge u -> v)."""
    s = task.test
    pred, outs_a, nodes = subject.run_components(s.a.tokens(), inputs=True)
    keys = list(nodes)
    grads = dict(zip(keys, torch.autograd.grad(metric(pred).sum(), [nodes[k] for k in keys],
                                               allow_unused=True), strict=True))
    with torch.no_grad():
        _, outs_b, _ = subject.run_components(s.b.tokens())
    delta = {c: _np(outs_b[c] - outs_a[c]) for c in outs_a}

    def g(key: str) -> np.ndarray | None:
        t = grads.get(key)
        return None if t is None else _np(t)

    node_scores = {}
    for c, d in delta.items():
        gc = g("out:" + c)
        node_scores[c] = 0.0 if gc is None else float(np.abs((d * gc).sum((1, 2))).mean())
    edge_scores = {}
    for u, v in candidate_edges(task.gt):
        gv = g(v)
        if u not in delta or gv is None:
            edge_scores[(u, v)] = 0.0
            continue
        edge_scores[(u, v)] = float(np.abs((delta[u] * gv).sum((1, 2))).mean())
    return node_scores, edge_scores


# ---------------------------------------------------------------------------------- DAS


def das(subject, task: Task, cache: Cache, where: dict[str, int] | None = None,
        steps: int = DAS_STEPS, seed: int = 0) -> MethodOutputs:
    """DAS at residual where[v] for every variable v at once (each trains on its own copy of
    the fit pairs; default site: the residual where interchanging the dense probe's subspace
    comes closest to the exact counterfactual on the fit pairs)."""
    out = MethodOutputs("das")
    if not task.variables:
        return out
    if where is None:
        where = probe_sites(subject, task, cache)
    bases = _train_das(subject, task, cache, where, steps, seed)
    ta, tb = cache.res("test", "a"), cache.res("test", "b")
    edits = [(where[vt.name], vt.tokens, bases[vt.name]) for vt in task.variables]
    m = interchange_metrics(subject, task.test, ta, tb, edits)
    for k, vt in enumerate(task.variables):
        out.subspaces[vt.name] = (where[vt.name], bases[vt.name])
        out.effects[vt.name] = m[k]
    return out


def probe_sites(subject, task: Task, cache: Cache) -> dict[str, int]:
    """Per variable, the residual where interchanging the span of a dense probe fitted there
    (fit pairs, pooled over its tokens) best reproduces the exact counterfactual."""
    fa, fb = cache.res("fit", "a"), cache.res("fit", "b")
    out = {}
    for vt in task.variables:
        edits = []
        for i in range(task.gt.n_residuals):
            X, Y = _xy(cache, "fit", i, vt.tokens, vt.name)
            edits.append((i, vt.tokens, _fit(X, Y)[0]))
        out[vt.name] = _best_residual(task, vt, interchange_metrics(subject, task.fit, fa, fb,
                                                                    edits))
    return out


def _train_das(subject, task: Task, cache: Cache, where: dict[str, int], steps: int,
               seed: int) -> dict[str, np.ndarray]:
    """Per variable, a [d_model, width] orthonormal basis trained so that interchanging its
    span at residual where[v] (v's tokens) from B into A gives the exact counterfactual
    metric: all variables in one batch, one copy of the fit pairs each."""
    g = torch.Generator().manual_seed(seed)
    fa, fb = cache.res("fit", "a"), cache.res("fit", "b")
    N = task.fit.base.shape[0]
    V = task.variables
    thetas = []
    for vt in V:  # from the dense probe's weights there, plus a little noise
        X, Y = _xy(cache, "fit", where[vt.name], vt.tokens, vt.name)
        W = torch.from_numpy(orthonormal(_fit(X, Y)[0]))
        init = torch.randn(fa[0].shape[-1], vt.var.width, generator=g, dtype=torch.float64)
        init = DAS_NOISE * init / init.norm(dim=0, keepdim=True)
        init[:, :W.shape[1]] += W
        thetas.append(init.requires_grad_(True))
    deltas, masks = [], []
    for vt in V:
        i = where[vt.name]
        deltas.append(torch.from_numpy(fb[i] - fa[i]))
        mask = torch.zeros(fa[i].shape[1], 1, dtype=torch.float64)
        mask[list(vt.tokens)] = 1.0
        masks.append(mask)
    targets = torch.from_numpy(np.concatenate([task.fit.exact_all[vt.name] for vt in V]))
    base = torch.from_numpy(np.tile(task.fit.base, len(V)))
    scales = torch.from_numpy(np.repeat(
        [float(np.abs(task.fit.exact_all[vt.name] - task.fit.base).mean()) or 1.0 for vt in V],
        N))
    tokens = np.tile(task.fit.a.tokens(), (len(V), 1, 1))
    opt = torch.optim.Adam(thetas, lr=DAS_LR)
    best = [(math.inf, None)] * len(V)  # per variable: its lowest fit loss and basis
    for _ in range(steps + 1):
        Qs = [torch.linalg.qr(th)[0] for th in thetas]

        def patch(i: int, Qs=Qs):
            def fn(r: torch.Tensor) -> torch.Tensor:
                parts = []
                for k, vt in enumerate(V):
                    piece = r[k * N:(k + 1) * N]
                    if where[vt.name] == i:
                        piece = piece + (deltas[k] @ Qs[k] @ Qs[k].T) * masks[k]
                    parts.append(piece)
                return torch.cat(parts)
            return fn

        pred, _ = subject.run(tokens, {i: patch(i) for i in set(where.values())})
        losses = (((metric(pred) - targets) / scales) ** 2).reshape(len(V), N).mean(-1)
        seen = _np(losses)
        for k in range(len(V)):
            if seen[k] < best[k][0]:  # NaN never is
                best[k] = (float(seen[k]), _np(Qs[k]))
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
    del base
    return {vt.name: (b if b is not None else _np(torch.linalg.qr(th.detach())[0]))
            for vt, th, (_, b) in zip(V, thetas, best, strict=True)}


def run_methods(subject, task: Task, methods: tuple[str, ...] = METHODS,
                das_steps: int = DAS_STEPS) -> list[MethodOutputs]:
    """Every reference method named in `methods` on one subject and task."""
    cache = Cache(subject, task)
    out: list[MethodOutputs] = []
    for name in methods:
        if name == "probe":
            out.append(probe(subject, task, cache))
        elif name == "sparse_probe":
            out.append(probe(subject, task, cache, sparse=True))
        elif name == "act_patch":
            out.append(act_patch(subject, task, cache))
        elif name == "attr_patch":
            out.append(attr_patch(subject, task, cache))
        elif name == "das":
            out.append(das(subject, task, cache, None, das_steps))
        else:
            raise ValueError(f"unknown method {name!r}; methods are {', '.join(METHODS)}")
    return out
