"""The adjoint bound: each prediction's error bounded by its first-order sensitivity to every
local error the forward walk charges, with the signs kept, so that a contraction (an SGD step's
I - 2 eta x x^T, a Sherman-Morrison congruence) is seen as one.

The forward walk (raspicl.contract.forward) records, for every error it bounds, a *node* of
this tape: an array of signed errors e [B, T, w] (compiled minus exact, at every prompt, token
and component) that satisfies exactly

    e = sum over its edges of J_edge e_src + delta,    |delta| <= beta,

where J_edge is a linear map known at the actual prompt (constant coefficients, or the compiled
operand values for a product, 1/|s| for a division, a token shift or an average for a read at a
place) and beta the node's *local charge*: the rounding, the gadget's own error, the leak, a
LayerNorm's ratio, and the second-order remainders of products and divisions, which the forward
enclosure bounds rigorously (|e_a e_b| <= E_a E_b). Because every node is exactly linear in its
sources plus its own delta, the output's error is exactly

    e_out = sum over nodes n of  g_n . delta_n,    g_n = d e_out / d delta_n (the adjoint),

so |e_out| <= sum_n |g_n| . beta_n: a sound bound, with no linearisation left unaccounted for,
whose g_n keep the signs of the Jacobians. The forward walk's own bound is the same sum with
|J| in place of J at every step (`forward_check` recomputes it from the tape, which the tests
use to prove that the two walk the same charges). The reported bound is the smaller of the two.

The adjoints g_n are computed by one reverse pass over the tape, for every output position and
component at once (an axis P of the arrays), a chunk of prompts at a time. A node's beta that is
NaN (undefined tokens) or infinite (a failed precondition) is read as 0 here: no such entry can
reach an output whose forward bound is finite (the forward walk propagates NaN and inf through
every edge, with zero coefficients too, except where a gate or a mean's role selects tokens,
which the reverse pass selects alike), and an output whose forward bound is not finite keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The reverse pass holds arrays of [prompts, P, T, width] float64; it takes prompts in chunks of
# at most this many bytes per array of the widest node (condition: > 0; the chunk is at least
# one prompt).
REVERSE_CHUNK_BYTES = 8 * 2**20
# Relative slack on the adjoint sum for the float64 rounding of the reverse pass itself: each
# g is a sum of products along the tape's paths, computed with at most a few hundred roundings
# of relative size 2^-53 (condition: >> depth * 2^-53).
ADJOINT_SLACK = 2.0**-30
# Output positions walked back together (Tape.adjoint_bound): each group's arrays span the
# tokens up to its last position, so small groups skip more of the tokens no output reads, at
# a Python pass over the tape per group. Condition: >= 1.
POSITION_GROUP = 4


class _Cut:
    """A tape array ([B, T, ...] or [B, T]) restricted to a chunk of prompts and the first T
    tokens."""

    def __init__(self, idx: np.ndarray, T: int):
        self.idx, self.T = idx, T

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return a[self.idx, :self.T]


def _finite(a: np.ndarray) -> np.ndarray:
    """A coefficient array with its non-finite entries (undefined tokens: a division by a
    divisor that is 0 there) read as 0: the adjoint is 0 wherever they stand (module doc)."""
    return a if np.isfinite(a).all() else np.where(np.isfinite(a), a, 0.0)


@dataclass
class PlaceEdge:
    """e = place(e_src + delta_pre): the source's errors (plus a charge made at the source's own
    tokens, `beta_pre`) read at a place: an offset back (clamped or not), a fixed token, or the
    mean over the tokens of one role so far."""

    src: int
    place: dict
    sel: np.ndarray | None = None  # mean: [T] 1.0 at the role's tokens
    beta_pre: np.ndarray | None = None  # [B, T, w]


@dataclass
class TermsEdge:
    """e[..., outs[i]] += c[i] * factor * e_src[..., comps[i]] over the sources side by side
    (their components concatenated); factor: None, or [B, T] (a gate's open mask)."""

    srcs: list[int]
    outs: np.ndarray
    comps: np.ndarray
    c: np.ndarray
    factor: np.ndarray | None = None
    plans: dict = field(default_factory=dict, repr=False)  # the reverse pass's index plans


@dataclass
class ProductEdge:
    """e[..., o] += c (v_b e_a + v_a e_b) per product term (o, c, a, b), the operands' compiled
    values `values` [B, T, W] side by side (the sources' components concatenated)."""

    srcs: list[int]
    outs: np.ndarray
    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    values: np.ndarray
    plans: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.values = _finite(self.values)


@dataclass
class DiagEdge:
    """e[..., o] += coef[..., o] * e_src[..., comps[o]]: a coefficient per prompt, token and
    output (a division's 1/|s| and -q sign(s) / |s|)."""

    src: int
    coef: np.ndarray  # [B, T, w_out]
    comps: np.ndarray  # [w_out]
    plans: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.coef = _finite(self.coef)


@dataclass
class Node:
    """One signed error array of the walk (module doc): its width, its edges and its charge."""

    width: int
    edges: list = field(default_factory=list)
    beta: np.ndarray | None = None  # [B, T, w]; None: no charge of its own

    def charge(self, beta: np.ndarray) -> None:
        """Add `beta` to the node's local charge."""
        self.beta = beta if self.beta is None else self.beta + beta


class Tape:
    """The nodes of one walk, in the order the walk made them (every edge points back).
    ledger: an object with add(bytes) and sub(bytes) that counts what the tape holds (the
    monitor's memory ledger), or None."""

    def __init__(self, B: int, T: int, ledger=None, enabled: bool = True):
        """enabled False: a tape that records nothing (node ids only), for a walk whose
        bound is the forward enclosure alone."""
        self.B, self.T = B, T
        self.nodes: list[Node] = []
        self.ledger = ledger
        self.enabled = enabled
        self._bytes: list[int] = []

    def node(self, width: int, beta: np.ndarray | None = None, edges=()) -> int:
        """A new node; its id."""
        n = Node(width, list(edges) if self.enabled else [])
        if beta is not None and self.enabled:
            n.charge(beta)
        self.nodes.append(n)
        self._bytes.append(0)
        self._count(len(self.nodes) - 1)
        return len(self.nodes) - 1

    def charge(self, nid: int, beta: np.ndarray) -> None:
        """Add `beta` to node nid's local charge."""
        if not self.enabled:
            return
        self.nodes[nid].charge(beta)
        self._count(nid)

    def set_beta(self, nid: int, beta: np.ndarray) -> None:
        """Replace node nid's local charge (the walk marks undefined and broken tokens)."""
        if not self.enabled:
            return
        self.nodes[nid].beta = beta
        self._count(nid)

    def _count(self, nid: int) -> None:
        n = self.nodes[nid]
        arrays = [n.beta] + [getattr(e, k, None) for e in n.edges
                             for k in ("beta_pre", "factor", "values", "coef")]
        now = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray) and a.base is None)
        if self.ledger is not None:
            self.ledger.add(now - self._bytes[nid]) if now >= self._bytes[nid] \
                else self.ledger.sub(self._bytes[nid] - now)
        self._bytes[nid] = now

    def bytes(self) -> int:
        """The bytes of the arrays the tape holds (views of other arrays not counted)."""
        return sum(self._bytes)

    # -- the reverse pass

    def adjoint_bound(self, out: int, positions: list[int], comps: list[int],
                      prompts: np.ndarray) -> np.ndarray:
        """sum_n |g_n| . beta_n for the output node `out` at each (position, component) pair
        (P = len(positions) of them, positions[i] with comps[i]), for the given prompts:
        [len(prompts), P]. The model is causal, so an output at token p depends on tokens
        <= p only: the pairs go in groups of POSITION_GROUP by position, each walked back over
        the tokens up to its last position."""
        P = len(positions)
        result = np.zeros((len(prompts), P))
        if not len(prompts) or not P:
            return result
        order = np.argsort(positions, kind="stable")
        widest = max(n.width for n in self.nodes)
        for lo_p in range(0, P, POSITION_GROUP):
            group = order[lo_p:lo_p + POSITION_GROUP]
            T = int(max(positions[i] for i in group)) + 1
            step = max(1, REVERSE_CHUNK_BYTES // max(len(group) * T * widest * 8, 1))
            for lo in range(0, len(prompts), step):
                idx = prompts[lo:lo + step]
                result[lo:lo + len(idx), group] = self._reverse(
                    out, [positions[i] for i in group], [comps[i] for i in group], idx, T)
        return result * (1.0 + ADJOINT_SLACK)

    def adjoints(self, out: int, position: int, comp: int, prompt: int) -> dict[int, np.ndarray]:
        """Every node's adjoint [T, w] for one output entry of one prompt (the tests hold
        them to a forward propagation of signed errors, `forward_signed`)."""
        keep: dict[int, np.ndarray] = {}
        self._reverse(out, [position], [comp], np.array([prompt]), self.T, keep)
        return {nid: g[:, 0, 0, :].T for nid, g in keep.items()}

    def forward_signed(self, deltas: dict[int, np.ndarray], pre: dict[tuple[int, int],
                       np.ndarray], prompt: int) -> list[np.ndarray]:
        """Every node's signed error [T, w] for one prompt when node n's own error is
        deltas[n] and edge (n, i)'s charge at the source's tokens is pre[(n, i)] (zero where
        absent): the errors the tape says the walk's charges produce, by the edges' J."""
        E: list[np.ndarray] = []
        b = slice(prompt, prompt + 1)
        for nid, n in enumerate(self.nodes):
            acc = np.zeros((1, self.T, n.width))
            for i, e in enumerate(n.edges):
                acc = acc + _signed(e, E, b, self.T, n.width, pre.get((nid, i)))
            if nid in deltas:
                acc = acc + deltas[nid][None]
            E.append(acc)
        return [a[0] for a in E]

    def _reverse(self, out: int, positions, comps, idx: np.ndarray, T: int,
                 keep: dict | None = None) -> np.ndarray:
        """The adjoint sums for prompts idx over the first T tokens: [len(idx), P]. Adjoints
        are held component-major, [w, prompts, P, T], so that a term's gather and scatter
        move whole rows."""
        Bc, P = len(idx), len(positions)
        G: dict[int, np.ndarray] = {}
        seed = np.zeros((self.nodes[out].width, Bc, P, T))
        for p, (t, j) in enumerate(zip(positions, comps, strict=True)):
            seed[j, :, p, t] = 1.0
        G[out] = seed
        total = np.zeros((Bc, P))
        cut = _Cut(idx, T)
        for nid in range(len(self.nodes) - 1, -1, -1):
            g = G.pop(nid, None)
            if g is None:
                continue
            node = self.nodes[nid]
            if keep is not None:
                keep[nid] = g
            if node.beta is not None:
                total += _weighted(g, cut(node.beta))
            for e in node.edges:
                _back(e, g, cut, G, self.nodes, total)
        return total

    # -- the forward enclosure, recomputed (a check, not a bound anyone reports)

    def forward_check(self) -> list[np.ndarray]:
        """Every node's forward bound sum |J| E_src + beta, recomputed from the tape: what
        the forward walk computed, if the tape records its charges faithfully."""
        E: list[np.ndarray] = []
        for n in self.nodes:
            acc = np.zeros((self.B, self.T, n.width))
            for e in n.edges:
                acc = acc + _forward(e, E, self.B, self.T, n.width)
            if n.beta is not None:
                acc = acc + n.beta
            E.append(acc)
        return E


def _clean(beta: np.ndarray) -> np.ndarray:
    """beta with NaN (undefined) and infinite (broken) entries read as 0 (module doc)."""
    return np.where(np.isfinite(beta), beta, 0.0)


def _weighted(g: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """sum over tokens and components of |g| beta: g [w, Bc, P, T], beta [Bc, T, w] ->
    [Bc, P]."""
    return np.einsum("wbpt,wbt->bp", np.abs(g), _clean(beta).transpose(2, 0, 1))


def _by_component(a: np.ndarray) -> np.ndarray:
    """[Bc, T, w] -> [w, Bc, 1, T], to broadcast against an adjoint."""
    return a.transpose(2, 0, 1)[:, :, None, :]


def _acc(G: dict, nid: int, g: np.ndarray, shared: bool = False) -> None:
    """G[nid] += g; where G has no nid yet, g itself is kept (a copy where g is a view, or
    `shared`: an array its caller still reads), since the sum is updated in place later."""
    if nid in G:
        G[nid] += g
    else:
        G[nid] = g.copy() if shared or g.base is not None else g


def _split(srcs, nodes) -> list[tuple[int, int, int]]:
    """(node, start, stop) of each source's components among the sources side by side."""
    out, start = [], 0
    for s in srcs:
        w = nodes[s].width
        out.append((s, start, start + w))
        start += w
    return out


def _scatter_add(gs: np.ndarray, idx: np.ndarray, contrib: np.ndarray, plans: dict,
                 key: str) -> None:
    """gs[idx[i]] += contrib[i] for every i (rows), repeated indices summed: sorted by index
    and reduced per run (np.add.reduceat), the plan kept in `plans[key]`."""
    if not len(idx):
        return
    plan = plans.get(key)
    if plan is None:
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
        plan = (order, starts, sorted_idx[starts], len(starts) == len(idx))
        plans[key] = plan
    order, starts, uniq, distinct = plan
    if distinct:
        gs[uniq] += contrib[order]
    else:
        gs[uniq] += np.add.reduceat(contrib[order], starts, axis=0)


def _back(e, g: np.ndarray, cut: _Cut, G: dict, nodes: list[Node],
          total: np.ndarray) -> None:
    """Propagate the adjoint g [w, Bc, P, T] of a node back through one of its edges."""
    _, Bc, P, T = g.shape
    if isinstance(e, PlaceEdge):
        gs = _place_back(g, e.place, None if e.sel is None else e.sel[:T], T)
        if e.beta_pre is not None:
            total += _weighted(gs, cut(e.beta_pre))
        _acc(G, e.src, gs, shared=gs is g)
        return
    if isinstance(e, DiagEdge):
        gs = np.zeros((nodes[e.src].width, Bc, P, T))
        _scatter_add(gs, e.comps, g * _by_component(cut(e.coef)), e.plans, "comps")
        _acc(G, e.src, gs)
        return
    parts = _split(e.srcs, nodes)
    if not parts or not len(e.outs):
        return
    W = parts[-1][2]
    gs = np.zeros((W, Bc, P, T))
    go = g[e.outs] * e.c[:, None, None, None]
    if isinstance(e, TermsEdge):
        if e.factor is not None:
            go *= cut(e.factor)[None, :, None, :]
        _scatter_add(gs, e.comps, go, e.plans, "comps")
    else:  # ProductEdge: d/da = c v_b, d/db = c v_a
        v = _by_component(cut(e.values))  # [W, Bc, 1, T]
        _scatter_add(gs, e.a, go * v[e.b], e.plans, "a")
        _scatter_add(gs, e.b, go * v[e.a], e.plans, "b")
    for s, lo, hi in parts:
        _acc(G, s, gs[lo:hi] if (lo, hi) != (0, W) else gs)


def _place_back(g: np.ndarray, place: dict, sel: np.ndarray | None, T: int) -> np.ndarray:
    """The transpose of a read at `place`, over the token axis (the last) of g."""
    kind = place["kind"]
    if kind == "here":
        return g
    gs = np.zeros_like(g)
    if kind == "offset":
        k = int(place["k"])
        if k < T:
            gs[..., :T - k] = g[..., k:]
        if place.get("clamp"):  # tokens t < k read token 0
            gs[..., 0] += g[..., :min(k, T)].sum(axis=-1)
        return gs
    if kind == "at":
        i = int(place["index"])
        if i < T:
            gs[..., i] = g[..., i:].sum(axis=-1)
        return gs
    if kind == "mean":
        count = np.cumsum(sel)
        w = np.where(count > 0, 1.0 / np.maximum(count, 1.0), 0.0)
        # read[t] = sum_{s <= t, sel} v[s] / count[t]: g_v[s] = sel[s] sum_{t >= s} g[t] / count[t]
        rev = np.flip(np.cumsum(np.flip(g * w, axis=-1), axis=-1), axis=-1)
        return rev * sel
    raise ValueError(f"unknown place {place!r}")


def _forward(e, E: list[np.ndarray], B: int, T: int, width: int) -> np.ndarray:
    """sum |J| E_src of one edge (Tape.forward_check)."""
    out = np.zeros((B, T, width))
    if isinstance(e, PlaceEdge):
        src = E[e.src] if e.beta_pre is None else E[e.src] + e.beta_pre
        return _place_forward(src, e.place, e.sel, T)
    if isinstance(e, DiagEdge):
        for o, k in enumerate(e.comps):
            out[:, :, o] += np.abs(e.coef[:, :, o]) * E[e.src][:, :, k]
        return out
    if not e.srcs:
        return out
    src = np.concatenate([E[s] for s in e.srcs], axis=2)
    if isinstance(e, TermsEdge):
        for o, c, k in zip(e.outs, e.c, e.comps, strict=True):
            out[:, :, o] += abs(c) * src[:, :, k]
        # a gate's factor selects tokens (where the walk takes the other branch, this
        # edge's terms, NaN included, are not taken)
        return out if e.factor is None else np.where(e.factor[:, :, None] != 0,
                                                     np.abs(e.factor)[:, :, None] * out, 0.0)
    for o, c, a, b in zip(e.outs, e.c, e.a, e.b, strict=True):
        out[:, :, o] += abs(c) * (np.abs(e.values[:, :, b]) * src[:, :, a]
                                  + np.abs(e.values[:, :, a]) * src[:, :, b])
    return out


def _signed(e, E: list[np.ndarray], b: slice, T: int, width: int,
            pre: np.ndarray | None) -> np.ndarray:
    """J e_src of one edge, signed, for one prompt (Tape.forward_signed): [1, T, width]."""
    out = np.zeros((1, T, width))
    if isinstance(e, PlaceEdge):
        src = E[e.src] if pre is None else E[e.src] + pre[None]
        return np.nan_to_num(_place_forward(src, e.place, e.sel, T))
    if isinstance(e, DiagEdge):
        for o, k in enumerate(e.comps):
            out[:, :, o] += e.coef[b][:, :, o] * E[e.src][:, :, k]
        return out
    if not e.srcs:
        return out
    src = np.concatenate([E[s] for s in e.srcs], axis=2)
    if isinstance(e, TermsEdge):
        f = 1.0 if e.factor is None else e.factor[b]
        for o, c, k in zip(e.outs, e.c, e.comps, strict=True):
            out[:, :, o] += c * f * src[:, :, k]
        return out
    v = e.values[b]
    for o, c, a, bb in zip(e.outs, e.c, e.a, e.b, strict=True):
        out[:, :, o] += c * (v[:, :, bb] * src[:, :, a] + v[:, :, a] * src[:, :, bb])
    return out


def _place_forward(src: np.ndarray, place: dict, sel, T: int) -> np.ndarray:
    kind = place["kind"]
    if kind == "here":
        return src
    out = np.full_like(src, np.nan)
    if kind == "offset":
        k = int(place["k"])
        if k < T:
            out[:, k:] = src[:, :T - k]
        if place.get("clamp"):
            out[:, :k] = src[:, :1]
    elif kind == "at":
        i = int(place["index"])
        if i < T:
            out[:, i:] = src[:, i:i + 1]
    else:
        count = np.cumsum(sel)
        ce = np.cumsum(np.where(sel[None, :, None] > 0, src, 0.0), axis=1)
        ok = count > 0
        out[:, ok] = (ce / np.maximum(count, 1)[None, :, None])[:, ok]
    return out
