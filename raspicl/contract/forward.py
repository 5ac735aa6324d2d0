"""The runtime contract: every gadget's precondition checked, and every prediction's error
bounded, at the magnitudes actually present in the residual stream.

A compiled model's layout carries a `monitor` record: every instruction of the program with the
rows it reads and writes, its coefficients and the constants of its gadget (product scales,
gate bounds, division anchors). `check_contract` walks those instructions in program order over
the residual stream of one forward pass and keeps, for every value at every token where the
program defines it, an absolute error bound against the exact (float64 interpreter) value,
propagated to first order:

    moves, linear maps   err = sum |c| err_read + leak + rounding
    products             err(a b) <= |a| err_b + |b| err_a + err_a err_b + the gadget's own error
    gates (select)       err = err of the chosen operand + rounding
    divisions            err(a / |s|) <= err_a / |s| + |a| err_s / s^2 + |q| |ratio - 1| + rounding
    elementwise (apply)  err f(z) <= |f'(z)| E + min(sup|f''| E, J + |f'(z)|) E + epsilon + rounding
                         (J = sup |f'| over z +- E, the box that must lie in f's range: _Walk.apply)

with u the machine epsilon of the model's dtype and kappa = `rounding_factor`:
- leak: a head's target leads every other token by M = attention_margin (less the scores'
  rounding), so the others share weight <= (T - 1) e^-M and a read is off by at most
  (T - 1) e^-M 2 max|residual| (any token, defined or not, of the residual the block's heads
  read: the input of the reading instruction's block); a clamped offset read at t < k
  reads token 0 (its head's target there) and is charged token 0's error (under gpt2 its
  LayerNorm ratio there) and the leak;
- a read through the neutral LayerNorm (value = sqrt(eps) (LN_j - LN_zero)) rounds by
  kappa u (|v| + 2 |mean of the residual|);
- the product gadget sq_e(t) = t^2 (1 - (et)^2/6 + (et)^4/40 - ...); with Richardson
  (4 sq_e - sq_2e) / 3 = t^2 (1 - (et)^4/10 + 0.06 (et)^6 - ...), so its truncation is
  |w| t^2 (0.1 x^4 + 0.06 x^6 + 0.03 x^8) per square term (x = e t; an alternating series, so
  its leading terms bound it; the tanh GeLU of gpt2's gelu_new has its own coefficients,
  raspicl.arch.PRODUCT_TRUNCATION), and its rounding kappa u sqrt(pi/2) |w| r (|t| + dt) / e per
  scale e (Richardson weight r): the two GeLU outputs, of size e |t| / 2, are multiplied by
  1 / e^2, and the pre-activation's own rounding dt = kappa u (|t| + 2 |mean| (k + 1/k)) (its
  weights, and the LayerNorm mean read off the zero row) adds |w| r dt^2 at second order;
- a division's LayerNorm divides by sigma = sqrt(var + eps), so the quotient is exact times
  ratio = N |s| sqrt(2 / d_model) / sigma, read off the residual at every token;
- gpt2 (every read through a LayerNorm kept at scale by the constant anchors +-N, raspicl.arch):
  a read of v is off by |v| |ratio - 1| with ratio = N sqrt(2 / d_model) / sqrt(var + eps)
  measured at the value's own token of the reading sublayer's input, plus rounding
  kappa u ((2 + log2 d_model) |v| + 2 (|mean| + u sum_j |A_j|)); the scores' perturbation
  by the ratio narrows the leak's margin; the readout reads through ln_final the same way; a
  clear reads
  through ln1 too and leaves |old| |ratio - 1|, so a write into rows not cleared in its own
  sublayer is charged what they hold in full; a mean's scores, equal over its tokens but for
  that perturbation (at most delta, what the margin loses), weigh them within e^(2 delta) of
  each other, which adds (e^(2 delta) - 1) times the mean of |v|; an open gate reads its mask
  1 as ratio through ln2, which shifts both its units by k C (ratio - 1) and its output by at
  most GATE_SLOPE C |ratio - 1| (C = 2 gate bound);
- a fused value (stage "fused", no rows: compiler/fusion.py) is read as its reader computes
  it: each of its reads at the composed place, charged as that reader reads it (through its
  LayerNorm at the read's own token, the leak, an MLP's rounding), then its linear map. Under
  gpt2 that is sum |c| |u| |ratio_u - 1|, not |v| |ratio - 1|: the terms (or the bias) may
  cancel, and the reads' tokens have ratios of their own;
- every write lands on what its rows held at the sublayer's input: zero, or a value cleared or
  overwritten in the same sublayer, which computes old + (new - old) and rounds at
  2 kappa u |old| (likewise the temporaries an MLP's remote operands are moved into).

Preconditions, each a *finding* when it fails at a token where the instruction's result is
defined: the neutral LayerNorm's variance (var * 2^(p+2) <= eps, so that var + eps == eps), a
product's |e t| within the range where its series bound holds, a closed gate's |a - b| within
the bound its sharpness was set for (tokens where an operand is undefined included: the compiled
model holds something there), a finite nonzero divisor, an apply's argument box within its
declared range; and the prediction's bound within
`tolerance * max(|output|, 1)`. A finding names the prompt, token, op (kind, register, source
line) and the quantity against its limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raspicl.arch import arch_of_layout
from raspicl.contract.adjoint import DiagEdge, PlaceEdge, ProductEdge, Tape, TermsEdge
from raspicl.contract.charges import (
    GATE_SLOPE,
    SERIES_LIMIT,
    elementwise_charge,
    mean_summation,
    product_pairs,
    product_remainder,
    quotient,
)
from raspicl.contract.layernorm import LayerNormReads
from raspicl.contract.records import Instruction, ProductPair, Read, parse_instructions
from raspicl.contract.report import (
    APPLY_RANGE,
    CLOSED_GATE,
    DIVISION_REST,
    DIVISOR,
    DIVISOR_ERROR,
    NEUTRAL_VARIANCE,
    PREDICTION_BOUND,
    PRODUCT_RANGE,
    ContractReport,
    Finding,
)
from raspicl.contract.residuals import (
    ListResiduals,
    StreamResiduals,
    through_layernorm,
)
from raspicl.guards import token_name
from raspicl.lang.functions import Elementwise
from raspicl.lang.reads import compose, place_from_record, place_record

HERE = {"kind": "here"}
# when the walk tightens the forward bound by the adjoint's (check_contract)
ADJOINT_MODES = ("needed", "always", "off")
# An instruction's linear or product terms are walked one at a time up to this many, and as
# arrays (_Terms) beyond: the same sums bit for bit either way, the loop cheaper for a few.
LOOP_TERMS = 8
MANTISSA_BITS = {"float64": 52, "float32": 23}
# A division's divisor whose forward error bound exceeds this share of |divisor| at some token
# gets the adjoint bound of the divisor itself there (_Walk._divisor_bound), where the tape
# records: the second-order remainder of the quotient's enclosure grows with that share, and
# the walk refuses the prompt (DIVISOR_ERROR) at 1/2. Condition: 0 < DIVISOR_TIGHTEN < 1/2.
DIVISOR_TIGHTEN = 2.0**-4


def check_contract(layout: dict, residuals: list[np.ndarray], dtype: str,
                   adjoint: str = "needed") -> ContractReport:
    """Walk the monitor record over one forward pass (`residuals` as CompiledModel.residuals
    returns them, float64 numpy) of a model running in `dtype` ('float64' or 'float32');
    adjoint: 'needed' tightens the bound by the adjoint's (raspicl.contract.adjoint) wherever
    the forward enclosure alone exceeds the tolerance, 'always' everywhere (the tightest
    bound: what bench/contract.py reports), 'off' never."""
    return _walk(layout, ListResiduals(layout, residuals), dtype, adjoint=adjoint)


class ContractStream:
    """The monitor fed one residual at a time, in the order the forward pass makes them.

    `feed(residual)` keeps what the walk will read from that residual (the rows of the values
    written after it, the rows a later write lands on, an MLP input's mean, variance and
    division sums, the per-prompt largest entry) and walks every instruction whose residuals
    have all been fed, dropping what no instruction still to be walked reads; `report()`,
    after the last residual, returns what check_contract would return on the whole list.
    What it holds at once is the values still to be read, not every value of the pass: a
    shared loop's iterations do not add up. Each head's leak is bounded by the largest entry
    of the residual that head reads, known once that residual is fed."""

    def __init__(self, layout: dict, dtype: str, instructions: list[Instruction] | None = None,
                 adjoint: str = "needed"):
        """instructions: the layout's monitor instructions parsed (`parse_instructions`),
        to share between the streams of one layout (their index arrays are made once);
        adjoint: as check_contract's."""
        self.layout, self.dtype, self.adjoint = layout, dtype, adjoint
        self.instructions = parse_instructions(layout) if instructions is None else instructions
        self.source = StreamResiduals(layout)
        self._checker: _Checker | None = None

    def feed(self, residual: np.ndarray) -> None:
        self.source.feed(residual)
        with _quiet():
            if self._checker is None:  # the batch size is known now
                self._checker = _Checker(self.layout, self.source, self.dtype,
                                         self.instructions, self.adjoint)
            self._checker.advance(self.source.fed)

    @property
    def peak_bytes(self) -> int:
        """The most bytes of arrays the stream and its walk held at once so far."""
        return self.source.ledger.peak

    def report(self) -> ContractReport:
        n = 1 + 2 * len(self.layout["architecture"]["block_order"])
        if self.source.fed != n or self._checker is None:
            raise ValueError(f"the monitor was fed {self.source.fed} residuals; the model's "
                             f"forward pass makes {n}")
        with _quiet():
            return self._checker.finish()


def _walk(layout: dict, source, dtype: str, parsed: list[Instruction] | None = None,
          adjoint: str = "needed") -> ContractReport:
    """The whole walk over a source that holds every residual already (ListResiduals)."""
    with _quiet():
        checker = _Checker(layout, source, dtype,
                           parse_instructions(layout) if parsed is None else parsed, adjoint)
        checker.advance(len(source.res))
        return checker.finish()


def walk_with_tape(layout: dict, residuals: list[np.ndarray], dtype: str,
                   adjoint: str = "always"):
    """check_contract's report, with the walk's tape and, per value it kept, its forward
    error bound and tape node ({label: (err, node)}): what the tests hold the tape to."""
    with _quiet():
        checker = _Checker(layout, ListResiduals(layout, residuals), dtype,
                           parse_instructions(layout), adjoint)
        checker.walk.log = {}
        checker.advance(len(residuals))
        return checker.finish(), checker.walk.tape, checker.walk.log


def _quiet() -> np.errstate:
    # inf * 0 and the like arise only where a bound is already infinite or undefined; the
    # result is a refusal (an infinite bound), not a number anyone reads
    return np.errstate(invalid="ignore", over="ignore", divide="ignore")


def walk_scratch_rows(layout: dict) -> int:
    """Per prompt and token, about the most float64 rows the walk of one instruction has in
    flight at once beside what the stream holds (ContractStream.peak_bytes): its operands and
    their error bounds side by side, its value, error and magnitude and their temporaries, a
    product's pair errors and series, the arrays of its terms. What sizes a chunk besides the
    values held (compiler/feasibility.py)."""
    mon = layout["monitor"]
    width = {rec["dst"]: len(rec["bias"]) for rec in mon["instructions"]}
    for label, v in mon["values"].items():
        width.setdefault(label, len(v["rows"]))
    most = 0
    for rec in mon["instructions"]:
        reads = sum(width.get(r["value"], 0) for r in rec["reads"])
        terms = len(rec["linear"]) + len(rec.get("gated", []))
        most = max(most, 2 * reads + 6 * len(rec["bias"]) + 8 * len(rec.get("pairs", []))
                   + 4 * len(rec.get("products", [])) + 3 * terms)
    return most


def _last_use(layout: dict) -> dict[str, int]:
    """The index of the last instruction that reads each value (as operand, divisor or mask);
    a read of a fused value (an operand or a divisor) is also a read of the values it stands
    for (its readers compute it from them, and so does the walk: _Walk.read, _Walk.divide);
    the output value is never released."""
    last: dict[str, int] = {}
    stands_for: dict[str, set[str]] = {}  # fused value -> the stored values it reads
    for i, rec in enumerate(layout["monitor"]["instructions"]):
        for r in rec["reads"]:
            last[r["value"]] = i
            for s in stands_for.get(r["value"], ()):
                last[s] = i
        if rec["stage"] == "fused":
            stands_for[rec["dst"]] = {s for r in rec["reads"]
                                      for s in stands_for.get(r["value"], {r["value"]})}
        for key in ("divisor", "mask"):
            if rec.get(key) is not None:
                last[rec[key]] = i
                for s in stands_for.get(rec[key], ()):  # a fused divisor is read as well
                    last[s] = i
    last.pop(layout["monitor"]["output"], None)
    return last


def _compose(outer: dict, inner: dict) -> dict | None:
    """The place (JSON, as a Read's) of `inner` as seen from a read at `outer`: what
    raspicl.lang.reads.compose (fusion's) gives for the places themselves; None where no
    single place is that."""
    at = compose(place_from_record(outer), place_from_record(inner))
    return None if at is None else place_record(at)


def _mlp_charge(ku: float, mu: np.ndarray, ln: LayerNormReads | None, residual: int):
    """What reading v ([B, T, w]) at the current token through an MLP's LayerNorm (the input
    residuals[residual], |mean| mu) adds to its error: the neutral LayerNorm's rounding
    kappa u (|v| + 2 |mean|), and under gpt2 (ln, unless the MLP divides: its quotient's ratio
    is measured whole, _Walk.divide) the read's |v| |ratio - 1| and rounding besides (through
    ln2, weight c: the scale is 1)."""

    def charge(v: np.ndarray) -> np.ndarray:
        out = ku * (np.abs(v) + 2 * mu[:, :, None])
        return out if ln is None else out + ln.term(residual, v)

    return charge


def _ready_at(ins: Instruction) -> int:
    """How many residuals of the pass must have been fed before `ins` can be walked: its
    block's attention reads residuals[2 run] (the leak, landings, temporaries, ln1) and
    writes residuals[2 run + 1]; its MLP reads that one and writes residuals[2 run + 2]. A
    fused value (no rows) needs none: its readers compute it."""
    if ins.stage == "fused":
        return 0
    return 2 * ins.run + (2 if ins.stage == "attn" else 3)


class _Checker:
    """One walk of the instructions in program order (module doc), each as soon as the
    residuals it reads have been fed (`advance`), so that a streamed pass holds only the
    values still to be read and the residual data of blocks still to be walked."""

    def __init__(self, layout: dict, source, dtype: str, parsed: list[Instruction],
                 adjoint: str = "needed"):
        self.layout, self.source, self.parsed = layout, source, parsed
        mon = layout["monitor"]
        arch = layout["architecture"]
        self.T = T = layout["prompt"]["n_tokens"]
        self.B = B = source.B
        u = float(np.finfo(dtype).eps)
        kappa = float(layout["compiler"]["rounding_factor"])
        self.u, self.kappa = u, kappa
        self.roles = layout["prompt"]["roles"]
        self.ln = ln = LayerNormReads(layout, source, u, kappa) \
            if through_layernorm(layout) else None
        if adjoint not in ADJOINT_MODES:
            raise ValueError(f"adjoint must be one of {ADJOINT_MODES}, got {adjoint!r}")
        self.walk = _Walk(layout, source, u, kappa, B, T, ln, adjoint)
        order = arch["block_order"]
        self.n_runs = len(order)
        self.eps_of_run = [arch["layernorm"]["eps"][order[r]] for r in range(len(order))]
        self.anchor_of_run = [mon["anchors"][order[r]] for r in range(len(order))]
        self.p_bits = MANTISSA_BITS[dtype]
        self.label = mon["output"]
        self.last_use = _last_use(layout)
        # per residual, the last instruction that reads it (its block's): its data is
        # released after that one (the final residual, which the readout reads, never)
        self.residual_done: dict[int, list[int]] = {}
        last_of_run: dict[int, int] = {}
        for i, ins in enumerate(parsed):
            if ins.stage != "fused":
                last_of_run[ins.run] = i
        for run, i in last_of_run.items():
            self.residual_done.setdefault(i, []).extend([2 * run, 2 * run + 1])
        self.writer: Instruction | None = None  # the last instruction that writes the output
        self.next = 0  # the next instruction to walk
        self.adjoint = adjoint

    def advance(self, fed: int) -> None:
        """Walk every instruction, in program order, whose residuals are among the first
        `fed` of the pass."""
        while self.next < len(self.parsed) and _ready_at(self.parsed[self.next]) <= fed:
            self._step(self.next, self.parsed[self.next])
            self.next += 1

    def _step(self, i: int, ins: Instruction) -> None:
        walk, source, ln = self.walk, self.source, self.ln
        T, B = self.T, self.B
        mon = self.layout["monitor"]
        if ins.stage == "fused":
            # no rows: each reader computes it from its reads, in the reader's block, and the
            # walk does the same where it is read (_Walk.read, _Walk.divide)
            walk.fused[ins.dst] = ins
            return
        if ins.dst == self.label:
            self.writer = ins
        walk.run = ins.run
        defined = np.zeros(T, dtype=bool)
        defined[ins.defined] = True
        walk.broken = np.zeros((B, T), dtype=bool)
        charge = None  # what the MLP's LayerNorm adds to a read of v at the current token
        if ins.stage not in ("attn", "fused"):
            mu, var = source.moments(2 * ins.run + 1)
            # the mean as the LayerNorm computes it: its sum of d_model entries rounds by at
            # most u sum_j |A_j|, which the anchors (+-N under gpt2, a division's +-N |s|)
            # dominate; the zero row cancels it only to first order (LayerNormReads)
            mu = mu + self.u * source.abs_sum(2 * ins.run + 1)
            if ins.divisor is None and ln is None:
                walk.check(ins, defined, NEUTRAL_VARIANCE, var * 2.0 ** (self.p_bits + 2),
                           self.eps_of_run[ins.run], "its variance * 2^(p+2) must stay below "
                           "the block's LayerNorm eps, so that LayerNorm divides by sqrt(eps) "
                           "exactly")
            charge = _mlp_charge(self.kappa * self.u, mu,
                                 ln if ins.divisor is None else None, 2 * ins.run + 1)
        ops_vals = [walk.operand(ins, r, self.roles, charge) for r in ins.reads]
        if ins.stage == "attn":
            val, err, nid = walk.linear_attn(ins, ops_vals)
        else:
            val, err, nid = walk.mlp(ins, ops_vals, defined, mu)
            if ins.divisor is not None:
                val, err, nid = walk.divide(ins, val, err, nid, defined,
                                            source.division_rest(2 * ins.run + 1),
                                            source.d_model, var, self.eps_of_run[ins.run],
                                            self.anchor_of_run[ins.run])
        # the write lands on what its rows held at the sublayer's input: a value cleared in the
        # same sublayer (old + (new - old)) or overwritten in place rounds at u |old|
        slot_in = 2 * ins.run + (0 if ins.stage == "attn" else 1)
        land = walk.landing(mon["values"][ins.dst]["rows"], slot_in, ins.landing_cleared)
        if ins.divisor is not None:
            # a dividing MLP reads what its rows held through the dividing LayerNorm, as
            # old / |s| times a constant: its clear cannot cancel them, so they count in full
            # (a leak-level 6e-44 left in a quotient's rows, refused at 2x its bound before)
            land = land + np.nan_to_num(np.abs(walk.source.old(
                mon["values"][ins.dst]["rows"], slot_in)), nan=np.inf)
        err = err + land
        walk.tape.charge(nid, land)
        # no bound where a precondition failed; none needed where the value is undefined
        err = np.where(walk.broken[:, :, None], np.inf, err)
        err = np.where(defined[None, :, None], err, np.nan)
        beta = walk.tape.nodes[nid].beta
        walk.tape.set_beta(nid, np.where(defined[None, :, None], np.where(
            walk.broken[:, :, None], np.inf, 0.0 if beta is None else beta), np.nan))
        walk.keep(ins.dst, walk.value_of(ins.dst), err, nid)
        # values no later instruction reads are dropped: the walk holds only live ones
        for r in ({r.value for r in ins.reads} | {ins.divisor, ins.mask}) - {None}:
            if self.last_use.get(r) == i:
                walk.drop(r)
        if ins.dst not in self.last_use and ins.dst != self.label:
            walk.drop(ins.dst)
        for residual in self.residual_done.get(i, ()):
            if residual < 2 * self.n_runs:  # the readout reads the last one
                source.release_residual(residual)
                if ln is not None:
                    ln.release(residual)

    def finish(self) -> ContractReport:
        """The report, once every instruction has been walked."""
        if self.next != len(self.parsed):
            raise AssertionError(f"the walk stopped at instruction {self.next} of "
                                 f"{len(self.parsed)}: not every residual was fed")
        walk, ln, layout = self.walk, self.ln, self.layout
        mon = layout["monitor"]
        label = self.label
        pos = layout["output"]["positions"]
        got, err, nid = walk.values[label]
        if ln is not None:  # gpt2: the readout reads the output through ln_final
            final = ln.term(2 * self.n_runs, got)
            err = err + final
            nid = walk.tape.node(err.shape[2], final, [PlaceEdge(nid, HERE)])
        got, err = got[:, pos], err[:, pos]
        bound = np.where(np.isfinite(err), err, np.inf)
        bound = self._tightened(bound, got, nid, pos)
        rel = bound / np.maximum(np.abs(got), 1.0)
        tol = float(mon["tolerance"])
        by = f" (written by {self.writer.where()})" if self.writer is not None else ""
        bad = ~(rel <= tol)
        for b in np.flatnonzero(bad.any(axis=(1, 2))):
            k, j = np.argwhere(bad[b])[0]
            walk.add(Finding(int(b), int(pos[k]), None, PREDICTION_BOUND, float(rel[b, k, j]),
                             tol, f"the prediction {label}[{j}]{by} at "
                             f"{token_name(layout, pos[k], b)} has error bound "
                             f"{bound[b, k, j]:.3g}: relative {rel[b, k, j]:.3g} exceeds the "
                             f"model's tolerance {tol:g}"))
        accepted = np.ones(self.B, dtype=bool)
        for f in walk.findings:
            accepted[f.prompt] = False
        return ContractReport(bound, rel, accepted, walk.findings, walk.needs)

    def _tightened(self, bound: np.ndarray, got: np.ndarray, out: int, pos) -> np.ndarray:
        """The smaller of the forward bound ([B, positions, d_out]) and the adjoint bound
        (raspicl.contract.adjoint) wherever the forward one is finite, for the prompts with
        no finding so far (a refused prompt keeps its forward bound). adjoint 'needed': only
        at the positions where some such prompt's forward bound exceeds the tolerance;
        'always': at every position."""
        if self.adjoint == "off":
            return bound
        refused = {f.prompt for f in self.walk.findings}
        live = np.array([b not in refused for b in range(self.B)], dtype=bool)
        live &= np.isfinite(bound).all(axis=(1, 2))
        if self.adjoint == "needed":
            tol = float(self.layout["monitor"]["tolerance"])
            over = bound > tol * np.maximum(np.abs(got), 1.0)  # [B, K, J]
            live &= over.any(axis=(1, 2))
            wanted = over[live].any(axis=0)  # [K, J]
        else:
            wanted = np.ones(bound.shape[1:], dtype=bool)
        prompts = np.flatnonzero(live)
        if not len(prompts) or not wanted.any():
            return bound
        ks, js = np.nonzero(wanted)
        positions = [int(pos[k]) for k in ks]
        adj = self.walk.tape.adjoint_bound(out, positions, [int(j) for j in js], prompts)
        fwd = bound[prompts][:, ks, js]
        bound = bound.copy()
        bound[prompts[:, None], ks[None, :], js[None, :]] = np.minimum(fwd, adj)
        return bound


class _Walk:
    """The state of one walk: every live value's compiled content and error bound so far."""

    def __init__(self, layout: dict, source, u: float, kappa: float, B: int, T: int,
                 ln: LayerNormReads | None = None, adjoint: str = "needed"):
        self.layout = layout
        self.ln = ln
        # the product gadget's truncation series for the layout's GeLU (raspicl.arch)
        arch = arch_of_layout(layout["architecture"])
        self.truncation = {r: arch.truncation(r) for r in (True, False)}
        self.source = source
        self.u, self.kappa, self.B, self.T = u, kappa, B, T
        self.mon = layout["monitor"]
        self.findings: list[Finding] = []
        self.broken = np.zeros((B, T), dtype=bool)  # this instruction's failed preconditions
        self.seen: set[tuple[int, int | None, str]] = set()
        self.needs: dict[tuple[int, str], float] = {}
        self.values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.fused: dict[str, Instruction] = {}  # fused value -> its instruction (no rows)
        self._held: dict[str, int] = {}  # label -> the bytes `keep` counted for it
        self.log: dict | None = None  # walk_with_tape: label -> (err, node) of every kept value
        self.parts: list | None = None  # (node, label, beta) of the MLP's charges, if asked
        # every error the walk bounds, as the adjoint's tape records it
        self.tape = Tape(B, T, source.ledger, enabled=adjoint != "off")
        for label, v in self.mon["values"].items():
            if v["kind"] in ("input", "const", "mask"):
                val = self.value_of(label)
                err = np.zeros_like(val) if v["kind"] == "mask" else u * np.abs(val)
                self.keep(label, val, err, self.tape.node(val.shape[2], err))
        # the leak and a mean's skew of each block's heads, made when the block's first
        # instruction is walked (_leak_of): run -> ([B], [B])
        self._per_run: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.run = 0  # the block run of the instruction being walked

    @property
    def leak(self) -> np.ndarray:
        """[B]: what the exp(-M) weight on every other token can carry into a read by a head
        of the current run's block."""
        return self._leak_of(self.run)[0]

    @property
    def skew(self) -> np.ndarray:
        """[B]: the current run's e^(2 delta) - 1 for a mean's weights (see _leak_of)."""
        return self._leak_of(self.run)[1]

    def _leak_of(self, run: int) -> tuple[np.ndarray, np.ndarray]:
        """The leak and skew of the heads of block run `run`, which read residuals[2 run]:
        the others' weight (T - 1) e^-M times twice the largest |entry| of that residual
        (any token, defined or not: source.leak_size), the margin M less the scores'
        rounding (|score| <= 2 M T^2) and under gpt2 less what ln1's ratio there, within
        dev of 1 at every token, can take off the scores of q and k."""
        if run not in self._per_run:
            comp = self.layout["compiler"]
            T, u, kappa = self.T, self.u, self.kappa
            full = float(comp["attention_margin"])
            margin = np.full(self.B, full - 4 * kappa * u * full * T * T)
            if self.ln is not None:
                dev = np.nan_to_num(self.ln.dev(2 * run), nan=np.inf).max(axis=1)
                margin = margin - 2 * full * T * T * (2 * dev + dev * dev)
            leak = (T - 1) * np.exp(-np.minimum(margin, 700.0)) * 2 \
                * self.source.leak_size(2 * run)
            # gpt2: a mean's scores, nominally equal over its tokens, are each perturbed by at
            # most delta (what the margin lost above, the ratios' and the rounding's): a
            # weight ratio within e^(2 delta) (_place). (The paper target's rounding alone is
            # not charged: 4 kappa u M T^2 bounds it far too coarsely for float32.)
            delta = full - margin if self.ln is not None else np.zeros(self.B)
            self._per_run[run] = (leak, np.expm1(np.minimum(2 * delta, 700.0)))
        return self._per_run[run]

    # -- values and reads

    def value_of(self, label: str) -> np.ndarray:
        return self.source.value(label)

    def keep(self, label: str, val: np.ndarray, err: np.ndarray, nid: int) -> None:
        """Hold a value (the source's), its error bound and its tape node until `drop`."""
        self.drop(label, release=False)
        self.values[label] = (val, err, nid)
        if self.log is not None:
            self.log[label] = (err, nid)
        self._held[label] = err.nbytes
        self.source.ledger.add(err.nbytes)

    def drop(self, label: str, release: bool = True) -> None:
        """No later instruction reads `label`: the walk and its source let it go."""
        self.values.pop(label, None)
        self.source.ledger.sub(self._held.pop(label, 0))
        if release:
            self.source.release(label)

    def operand(self, ins: Instruction, r: Read, roles: list[str],
                charge) -> tuple[np.ndarray, np.ndarray, int]:
        """One operand of `ins` as its sublayer reads it: [B, T, w] value and error bound, and
        its tape node. An attention (and an MLP's remote operand, which its block's attention
        moves into a temporary) reads through ln1 under gpt2, at each value's own token; the
        temporary lands on what its rows held, and the MLP reads it, one value, with `charge`
        (_mlp_charge); an MLP's read at the current token is charged by `read`, which charges
        a fused value's reads, not the value (its W_in computes it from them)."""
        if ins.stage == "fused":  # computed where its readers read it (read)
            return self.read(r, roles)
        if ins.stage == "attn" or r.temp_rows:
            v, e, nid = self.read(r, roles, 2 * ins.run if self.ln is not None else None)
            extra = None
            if r.temp_rows:
                extra = self.landing(r.temp_rows, 2 * ins.run, r.temp_cleared)
            if charge is not None:
                c = charge(v)
                extra = c if extra is None else extra + c
            if extra is None:
                return v, e, nid
            return v, e + extra, self.tape.node(v.shape[2], extra, [PlaceEdge(nid, HERE)])
        return self.read(r, roles, charge=charge)

    def read(self, r: Read, roles: list[str], through: int | None = None,
             charge=None) -> tuple[np.ndarray, np.ndarray, int]:
        """The operand's compiled value and error bound as read at each token: [B, T, w], and
        its tape node; through: the residual whose LayerNorm the value is read through at its
        own token (gpt2's ln1 of the reading attention), None for a plain read; charge: what a
        read at the current token through an MLP's LayerNorm adds (_mlp_charge), None for none.

        A fused value has no rows: its reader computes it from its reads, each read at the
        composed place by heads of its own (or W_in) and through the reader's LayerNorm at
        its own token, so the value is recomputed here from those reads (`_fused_read`), not
        charged as a whole: under gpt2 sum |c| |u| |ratio_u - 1| can far exceed
        |v| |ratio - 1| where the terms (or the bias) cancel, and the ratios differ between
        tokens.

        Where the place is undefined (before the prompt or the role starts) the error is NaN,
        and the value is replaced by the largest |value| at any token so far: whatever a head
        reads there is an average of those, and the monitor needs its size (a gate's closed
        operand, the rounding it causes)."""
        kind = r.place["kind"]
        if r.value in self.fused:  # (one without reads, a constant, is read anywhere)
            return self._fused_read(self.fused[r.value], r.place, roles, through, charge)
        if charge is not None and not (kind == "here" or (kind == "offset"
                                                          and int(r.place["k"]) == 0)):
            raise ValueError(f"an MLP reads {r.value!r} at {r.place} without a temporary: "
                             "only reads at the current token can be (a layout fault)")
        val, err, nid = self.values[r.value]
        pre = None  # what the read adds at the value's own token
        if through is not None:
            pre = self.ln.term(through, val)
        if charge is not None:
            c = charge(val)
            pre = c if pre is None else pre + c
        if pre is not None:
            err = err + pre
        if kind == "here":
            if pre is None:
                return val, err, nid
            return val, err, self.tape.node(val.shape[2], None, [PlaceEdge(nid, HERE, None,
                                                                           pre)])
        v, e, skew = self._placed(val, err, r, roles)
        so_far = np.maximum.accumulate(np.abs(val), axis=1)
        v = np.where(np.isnan(v), so_far, v)
        post = np.broadcast_to(self.leak[:, None, None], e.shape)
        if skew is not None:
            post = post + skew
        edge = PlaceEdge(nid, r.place, self._role_sel(r.place, roles), pre)
        return v, e + post, self.tape.node(v.shape[2], post, [edge])

    def _fused_read(self, ins: Instruction, place: dict, roles: list[str],
                    through: int | None, charge) -> tuple[np.ndarray, np.ndarray, int]:
        """A fused value read at `place` as its reader computes it: its linear map and bias
        over its reads, each at the composed place (compiler/fusion.compose) and read
        (`read`) as the reader reads it. Its error is NaN where the two-step read is
        undefined, and its value there the largest its terms allow, sum |c| |u| + |bias|."""
        parts = []
        for r in ins.reads:
            at = _compose(place, r.place)
            if at is None:
                raise ValueError(f"{ins.where()}: its read of {r.value!r} at {r.place} does "
                                 f"not compose with a read of {ins.dst!r} at {place} (a layout "
                                 "fault: fusion keeps only values whose reads compose)")
            parts.append(self.read(Read(r.value, at), roles, through, charge))
        val, err, nid = self.linear_attn(ins, parts)
        _, _, mag = self._linear(ins.linear, parts, len(ins.bias), (ins.cache, "linear"))
        defined = np.where(np.isin(np.arange(self.T), ins.defined), 0.0, np.nan)
        undefined = np.broadcast_to(defined[None, :, None], (self.B, self.T, 1))
        if place["kind"] != "here":
            undefined = self._place(undefined, undefined, Read(ins.dst, place), roles)[1]
        err = err + undefined
        self.tape.charge(nid, np.broadcast_to(undefined, err.shape))
        return np.where(np.isnan(err), mag + np.abs(np.asarray(ins.bias)), val), err, nid

    def _role_sel(self, place: dict, roles: list[str]) -> np.ndarray | None:
        """A mean's role as [T] weights, 1.0 at its tokens (None for other places)."""
        if place["kind"] != "mean":
            return None
        return np.array([role == place["role"] for role in roles], dtype=np.float64)

    def _place(self, val, err, r: Read, roles: list[str]):
        """val and err as read at r's place (not 'here'); NaN where it is undefined."""
        v, e, skew = self._placed(val, err, r, roles)
        return v, (e if skew is None else e + skew)

    def _placed(self, val, err, r: Read, roles: list[str]):
        """_place with a mean's own charge apart: (value, the errors placed, the charge of
        its weights' skew and its summation's rounding, or None)."""
        kind = r.place["kind"]
        T = self.T
        v = np.full_like(val, np.nan)
        e = np.full_like(err, np.nan)
        skew = None
        if kind == "offset":
            k = int(r.place["k"])
            if k < T:
                v[:, k:], e[:, k:] = val[:, :T - k], err[:, :T - k]
            if r.place.get("clamp"):  # token 0 at t < k: its value and error (and leak)
                v[:, :k], e[:, :k] = val[:, :1], err[:, :1]
        elif kind == "at":
            i = int(r.place["index"])
            if i < T:
                v[:, i:], e[:, i:] = val[:, i:i + 1], err[:, i:i + 1]
        elif kind == "mean":
            sel = self._role_sel(r.place, roles)
            count = np.cumsum(sel)
            with np.errstate(invalid="ignore", divide="ignore"):
                cv = np.cumsum(np.nan_to_num(val, nan=0.0) * sel[None, :, None], axis=1)
                ce = np.cumsum(np.where(sel[None, :, None] > 0, err, 0.0), axis=1)
                # the weights among the averaged tokens: their scores differ by at most
                # 2 skew_delta, so each weight is within (e^(2 delta) - 1) / count of uniform
                ca = np.cumsum(np.abs(np.nan_to_num(val, nan=0.0)) * sel[None, :, None], axis=1)
                ok = count > 0
                v[:, ok] = (cv / count[None, :, None])[:, ok]
                e[:, ok] = (ce / count[None, :, None])[:, ok]
                # and the head sums count weighted terms: each token's value projection
                # (kappa u), its weight and product (2 u) and the sum itself ((count - 1) u)
                # round relative to the terms, not to their mean, which may cancel
                skew = np.full_like(err, np.nan)
                skew[:, ok] = mean_summation(ca, count, self.skew, self.u, self.kappa)[:, ok]
        else:
            raise ValueError(f"unknown place {r.place!r}")
        return v, e, skew

    def landing(self, rows, residual: int, cleared=None) -> np.ndarray:
        """The rounding of writing into `rows` over what they hold in residuals[residual]:
        2 kappa u |old| ([B, T, len(rows)]; zero for rows that were zero). Under gpt2
        (`cleared`: the components the same sublayer clears or overwrites, reading the old
        value through its LayerNorm) those rows keep |old| |ratio - 1| besides, and every
        other row's content (what an earlier clear left) counts in full."""
        raw = self.source.old(rows, residual)
        old = np.nan_to_num(np.abs(raw), nan=np.inf)
        out = 2 * self.kappa * self.u * old
        if self.ln is not None and cleared is not None:
            now = np.zeros(len(rows), dtype=bool)
            now[list(cleared)] = True
            out = np.where(now[None, None, :], out + self.ln.term(residual, old), old)
        return out

    # -- findings

    def check(self, ins: Instruction, where: np.ndarray, quantity: str, value: np.ndarray,
              limit: float, why: str) -> None:
        """A finding for every prompt where value [B, T] exceeds limit at a token in `where`."""
        self.check_each(ins, where, quantity, value[:, :, None], np.array([float(limit)]), why)

    def check_each(self, ins: Instruction, where: np.ndarray, quantity: str,
                   values: np.ndarray, limits: np.ndarray, why: str) -> None:
        """`check` of P quantities of one kind at once (values [B, T, P], limits [P]), with
        what P calls in column order would leave: the largest value as the need, and for
        each prompt the finding of the first column it exceeds, at that column's first
        token (a prompt has at most one finding per op and kind)."""
        key = (ins.op, quantity)
        masked = np.where(where[None, :, None], np.nan_to_num(values, nan=np.inf), -np.inf)
        self.needs[key] = max(self.needs.get(key, 0.0), float(masked.max(initial=0.0)))
        over = masked > limits
        self.broken |= over.any(axis=2)
        hit = over.any(axis=1)  # [B, P]
        prompts = np.flatnonzero(hit.any(axis=1))
        first = hit[prompts].argmax(axis=1)
        for i in np.lexsort((prompts, first)):  # column by column, then prompt by prompt
            b, p = int(prompts[i]), int(first[i])
            t = int(np.flatnonzero(over[b, :, p])[0])
            v, limit = masked[b, t, p], float(limits[p])
            self.add(Finding(b, t, ins.op, quantity, float(v), limit,
                             f"{ins.where()} at {token_name(self.layout, t, b)}: {quantity} "
                             f"{v:.3g} exceeds its limit {limit:.3g}; {why}"))

    def add(self, f: Finding) -> None:
        key = (f.prompt, f.op, f.quantity)
        if key not in self.seen:
            self.seen.add(key)
            self.findings.append(f)

    # -- the gadgets

    def _linear(self, terms, reads, width: int, key: tuple[dict, str] | None = None):
        """sum c v, sum |c| err, sum |c| |v| over terms: each [B, T, width] (each output's
        terms added in their order, as a loop over them would: _Terms.add). key: where the
        terms' index arrays are kept (an instruction's cache and a name), None for none."""
        B, T = self.B, self.T
        val = np.zeros((B, T, width))
        err = np.zeros((B, T, width))
        mag = np.zeros((B, T, width))
        if len(terms) <= LOOP_TERMS:  # a few terms: one at a time costs less
            for o, c, r, k in terms:
                v, e = reads[r][0], reads[r][1]
                val[:, :, o] += c * v[:, :, k]
                err[:, :, o] += abs(c) * e[:, :, k]
                mag[:, :, o] += abs(c) * np.abs(v[:, :, k])
            return val, err, mag
        tm = _terms(key, terms, reads, lambda t: [(t[2], t[3])])
        v, e = _stacked(reads, 0), _stacked(reads, 1)
        v, e = v[:, :, tm.comps[0]], e[:, :, tm.comps[0]]
        tm.add(val, tm.c * v)
        tm.add(err, tm.abs_c * e)
        tm.add(mag, tm.abs_c * np.abs(v))
        return val, err, mag

    def _terms_edge(self, ins: Instruction, name: str, terms, reads,
                    factor: np.ndarray | None = None) -> TermsEdge:
        """The tape edge of a linear term list (o, c, read, comp) over `reads` (triples)."""
        key = "edge " + name
        if key not in ins.cache:
            offsets = np.cumsum([0] + [r[0].shape[2] for r in reads])
            ins.cache[key] = (np.array([int(t[0]) for t in terms], dtype=np.int64),
                              np.array([offsets[t[2]] + t[3] for t in terms], dtype=np.int64),
                              np.array([float(t[1]) for t in terms]))
        outs, comps, c = ins.cache[key]
        return TermsEdge([r[2] for r in reads], outs, comps, c, factor)

    def _part(self, label: str, beta: np.ndarray) -> np.ndarray:
        """beta, one part of a node's local charge; recorded (label, beta) in `parts` where a
        diagnosis asks for it (bench/contract_charges.py)."""
        if self.parts is not None:
            self.parts.append((len(self.tape.nodes), label, beta))
        return beta

    def linear_attn(self, ins: Instruction, reads):
        """A linear map (a head's move, or a fused value as its reader computes it): value,
        error bound and tape node."""
        width = len(ins.bias)
        bias = np.asarray(ins.bias)
        val, err, mag = self._linear(ins.linear, reads, width, (ins.cache, "linear"))
        coef = np.zeros(width)
        for o, c, _, _ in ins.linear:
            coef[o] += abs(c)
        leak = self.leak[:, None, None] * (1.0 + coef)[None, None, :]
        local = self.kappa * self.u * (mag + np.abs(bias)) + leak
        nid = self.tape.node(width, local, [self._terms_edge(ins, "linear", ins.linear, reads)])
        return val + bias, err + local, nid

    def mlp(self, ins: Instruction, reads, defined: np.ndarray, mu: np.ndarray):
        """An MLP's instruction (linear terms, a gate, products): value, error bound and tape
        node. Its propagated error is the reads' errors through the signed linearisation at
        the compiled operands (edges); its local charge: rounding, the gadgets' own errors,
        the leak and the products' second-order remainder (module doc)."""
        width = len(ins.bias)
        bias = np.asarray(ins.bias)
        ku = self.kappa * self.u
        val, err, mag = self._linear(ins.linear, reads, width, (ins.cache, "linear"))
        if ins.function is not None:
            return self.apply(ins, reads, val + bias, err, mag, defined, mu)
        local = np.zeros_like(err)
        if ins.mask is None:
            edges = [self._terms_edge(ins, "linear", ins.linear, reads)]
        else:
            m = self.values[ins.mask][0][:, :, 0] > 0.5  # [B, T]
            gval, gerr, gmag = self._linear(ins.gated, reads, width, (ins.cache, "gated"))
            gbias = np.asarray(ins.gated_bias)
            z = gval + gbias
            # |a - b| itself where both operands are defined, else what their sizes allow
            size = np.where(np.isnan(gerr), gmag + np.abs(gbias), np.abs(z))
            closed = defined[None, :] & ~m
            for o in range(width):
                bound = ins.gate_bound[o]
                if bound > 0:
                    self._check_gate(ins, closed, size[:, :, o], bound)
            # the chosen operand's error: the linear part where closed, linear + gated where
            # open (a select's b cancels there: its coefficients sum to zero)
            both = ins.cache.setdefault("both", _merge(ins.linear, ins.gated))
            _, err_open, _ = self._linear(both, reads, width, (ins.cache, "open"))
            err = np.where(m[:, :, None], err_open, err)
            mf = m.astype(np.float64)
            edges = [self._terms_edge(ins, "linear", ins.linear, reads, 1.0 - mf),
                     self._terms_edge(ins, "open", both, reads, mf)]
            gb = np.asarray([max(b, 0.0) for b in ins.gate_bound])
            local += self._part("gate rounding",
                                ku * (gmag + np.abs(gbias) + 2 * gb * (1 + 2 * mu[:, :, None])))
            if self.ln is not None:  # gpt2: the open gate reads its mask 1 through ln2
                C = 2.0 * np.asarray([b if b > 0 else 1.0 for b in ins.gate_bound])
                off = self.ln.term(2 * ins.run + 1, self.values[ins.mask][0])  # [B, T, 1]
                local += self._part("gate ln2", np.where(m[:, :, None], GATE_SLOPE * C * off, 0.0))
            val = val + np.where(m[:, :, None], z, 0.0)
        if ins.products or ins.pairs:
            values, errors = _stacked(reads, 0), _stacked(reads, 1)
        if ins.products:
            # a_eff b_eff - a b = v_a e_b + v_b e_a + r, |r| <= 3 E_a E_b: the operands the
            # gadget multiplies and the exact ones are each within E of the compiled values
            # v (contract doc); the linear part is the product edge, r a local charge
            tm = _terms((ins.cache, "products"), ins.products, reads,
                        lambda t: [(t[2], t[3]), (t[4], t[5])])
            a, b = tm.comps
            va, ea, vb, eb = values[:, :, a], errors[:, :, a], values[:, :, b], errors[:, :, b]
            tm.add(val, tm.c * va * vb)
            tm.add(err, tm.abs_c * (np.abs(va) * eb + np.abs(vb) * ea))
            rem = np.zeros_like(local)
            tm.add(rem, tm.abs_c * product_remainder(ea, eb))
            local += self._part("product remainder", rem)
            edges.append(ProductEdge([r[2] for r in reads], tm.outs, tm.c, a, b, values))
        if ins.pairs:
            own = self._product_error(ins, ins.pairs, values, reads, defined, mu)
            terms = ins.cache.get("pair terms")
            if terms is None:
                terms = [(o, abs(c), p) for p, pair in enumerate(ins.pairs)
                         for o, c in pair.outputs.items()]
                ins.cache["pair terms"] = terms
            if terms:
                tm = _terms((ins.cache, "pairs"), terms, None, lambda t: [(None, t[2])])
                gadget = np.zeros_like(local)
                tm.add(gadget, tm.c * own[:, :, tm.comps[0]])
                local += self._part("product gadget", gadget)
        local += self._part("mlp rounding", ku * (mag + np.abs(bias) * (1 + 2 * mu[:, :, None])))
        local += self._part("leak", np.broadcast_to(self.leak[:, None, None], local.shape))
        nid = self.tape.node(width, local, edges)
        return val + bias, err + local, nid

    def apply(self, ins: Instruction, reads, arg: np.ndarray, err: np.ndarray,
              mag: np.ndarray, defined: np.ndarray, mu: np.ndarray):
        """An apply's f of its argument (value, error bound, tape node). The argument z (the
        linear terms and bias, formed in the units' pre-activations) is a node of its own: the
        reads' errors through its terms, plus the leak, within E. Its precondition: the box
        z +- E inside f's declared range [lo, hi] (else an APPLY_RANGE finding), where the
        gadget's certified epsilon holds. Then, with d = f'(z) (0 for a user function, whose
        code gives f alone) and J = sup |f'| over the box,
            f^(z') - f(z0) = d (z' - z0) + (f'(xi) - d)(z' - z0) + (f^(z') - f(z'))
        exactly (xi in the box), so the tape's edge is d and its local charge
        min(sup |f''| E, J + |d|) E (the box's curvature; at a kink, sup |f''| is infinite)
        plus the gadget's epsilon and rounding (charges.elementwise_charge); for a user
        function d = 0, and |f'(xi)| E <= J E is the whole first-order term."""
        width = len(ins.bias)
        fn = ins.cache.get("function")
        if fn is None:
            fn = ins.cache["function"] = Elementwise.from_record(ins.function)
            coef = np.zeros(width)
            for o, c, _, _ in ins.linear:
                coef[o] += abs(c)
            ins.cache["coef sum"] = coef
        leak = np.broadcast_to(self.leak[:, None, None], err.shape)
        nid_arg = self.tape.node(width, self._part("leak", leak),
                                 [self._terms_edge(ins, "linear", ins.linear, reads)])
        E = err + leak
        below, above = arg - E, arg + E
        excess = np.maximum(fn.lo - below, above - fn.hi)
        self.check_each(ins, defined, APPLY_RANGE, excess, np.zeros(width),
                        f"the argument (its value +- its error bound) leaves the range "
                        f"[{fn.lo:g}, {fn.hi:g}] that {fn.name}'s gadget is certified on")
        a, b = np.clip(below, fn.lo, fn.hi), np.clip(above, fn.lo, fn.hi)
        J = fn.slope_bound(a, b)
        curv = fn.curvature_bound(a, b)
        for point, _ in fn.kinks:
            curv = np.where((a <= point) & (point <= b), np.inf, curv)
        d = fn.derivative(arg)
        if d is None:  # a user function: no f' to linearise on, so |f'(xi)| E <= J E whole
            d, rem = np.zeros_like(arg), J * E
        else:  # |f'(xi) - f'(z)| <= sup |f''| E, and <= J + |f'(z)| where f'' is unbounded
            rem = np.minimum(curv * E, J + np.abs(d)) * E
        own = elementwise_charge(mag, np.abs(np.asarray(ins.bias)), ins.cache["coef sum"], mu,
                                 ins.function, self.u, self.kappa)
        local = self._part("apply remainder", rem) + self._part("apply gadget", own)
        nid = self.tape.node(width, local, [DiagEdge(nid_arg, d, np.arange(width))])
        with _quiet():
            val = fn.evaluate(arg) if fn.user is None else np.full_like(arg, np.nan)
        return val, np.abs(d) * E + local, nid

    def _check_gate(self, ins: Instruction, where: np.ndarray, z: np.ndarray,
                    bound: float) -> None:
        key = (ins.op, CLOSED_GATE)
        masked = np.where(where, np.nan_to_num(z, nan=np.inf), -np.inf)
        self.needs[key] = max(self.needs.get(key, 0.0), float(masked.max(initial=0.0)))
        over = masked > bound
        self.broken |= over
        for b in np.flatnonzero(over.any(axis=1)):
            t = int(np.flatnonzero(over[b])[0])
            self.add(Finding(int(b), t, ins.op, CLOSED_GATE, float(masked[b, t]),
                             bound, f"{ins.where()} at {token_name(self.layout, t, b)}: the closed "
                             f"gate's |a - b| = {masked[b, t]:.3g} exceeds the bound {bound:.3g} "
                             f"its sharpness was set for, so the gate would leak"))

    def _product_error(self, ins: Instruction, pairs: list[ProductPair], values: np.ndarray,
                       reads, defined, mu):
        """Each pair's gadget error (truncation + rounding): [B, T, len(pairs)], every pair
        computed with the same operations as alone (pairs of one kind, square or not, with
        or without Richardson, side by side); |e t| checked against the series limit."""
        B, T = self.B, self.T
        err = np.zeros((B, T, len(pairs)))
        worst = np.zeros((B, T, len(pairs)))
        kinds = ins.cache.get("pair kinds")
        if kinds is None:  # (square, richardson) -> the pairs, their operands, k and e
            offsets = np.cumsum([0] + [r[0].shape[2] for r in reads])
            groups: dict[tuple[bool, bool], list[int]] = {}
            for p, pair in enumerate(pairs):
                groups.setdefault((pair.a == pair.b, pair.richardson), []).append(p)
            kinds = {kind: (np.array(idx), *(np.array([offsets[pairs[p].a[0]] + pairs[p].a[1]
                                                        for p in idx]),
                                              np.array([offsets[pairs[p].b[0]] + pairs[p].b[1]
                                                        for p in idx]),
                                              np.array([pairs[p].k for p in idx]),
                                              np.array([pairs[p].e for p in idx])))
                     for kind, idx in groups.items()}
            ins.cache["pair kinds"] = kinds
            ins.cache["pair limits"] = np.array([SERIES_LIMIT[p.richardson] for p in pairs])
        # at the defined tokens only: elsewhere the result's bound is NaN and nothing is
        # checked (every entry is computed on its own, so the others come out the same)
        tok = np.flatnonzero(defined)
        at = (slice(None),) if len(tok) == T else (tok[:, None],)
        for (square, richardson), (idx, a, b, k, e) in kinds.items():
            err[(slice(None), *at, idx)], worst[(slice(None), *at, idx)] = product_pairs(
                values[(slice(None), *at, a)], values[(slice(None), *at, b)], k, e, square,
                richardson, mu[:, tok] if len(tok) < T else mu, self.u, self.kappa,
                self.truncation[richardson])
        limits = ins.cache["pair limits"]
        self.check_each(ins, defined, PRODUCT_RANGE, worst, limits,
                        "beyond it the gadget's series no longer bounds its error: an operand "
                        "is far outside the range the product was scaled for")
        return err

    def divide(self, ins: Instruction, num, err_num, nid_num: int, defined, Q, D: int, var,
               eps: float, anchor: float):
        """The quotient num / |s| as the dividing LayerNorm computes it (module doc); Q: the
        sum of squares of the MLP input's non-anchor rows about its mean, D: d_model.

        With n, S the numerator and |divisor| the gadget uses, n0, S0 the exact ones and
        n^, S^ the compiled values (|n - n0| <= E_n, |S^ - S0| <= E_s < S^):
            n / S^ - n0 / S0 = e_n / S^ - q^ (S^ - S0) / S^ + (q^ - q0) (S^ - S0) / S^
        exactly, q^ = n^ / S^, |q^ - q0| <= E_n / S^ + (|n^| + E_n) E_s / (S^ (S^ - E_s)):
        the first two terms are the tape's edges, the last a local charge. A divisor whose
        bound exceeds half its size (E_s > S^ / 2) is a finding: the enclosure needs
        E_s < S^, and beyond half of it the quotient's bound is no longer worth a number."""
        if ins.divisor in self.fused:  # the division's own heads compute it: read it so
            s_val, s_err, s_nid = self.read(Read(ins.divisor, {"kind": "here"}),
                                            self.layout["prompt"]["roles"])
        else:
            s_val, s_err, s_nid = self.values[ins.divisor]
        s = np.abs(s_val[:, :, 0])
        es = self._divisor_bound(s, s_err[:, :, 0], s_nid, defined)
        inv = 1.0 / s
        self.check(ins, defined, DIVISOR,
                   np.where((s > 0) & np.isfinite(s), inv, np.inf),
                   np.finfo(np.float64).max, "the divisor is zero or not finite")
        self.check(ins, defined, DIVISOR_ERROR, np.nan_to_num(es * inv, nan=np.inf), 0.5,
                   "the divisor's error bound is no longer small beside the divisor itself, "
                   "so no bound on the quotient holds")
        key = (ins.op, DIVISION_REST)
        qs = np.where(defined[None, :], Q * inv * inv, 0.0)
        self.needs[key] = max(self.needs.get(key, 0.0),
                              float(np.nan_to_num(qs, nan=np.inf).max(initial=0.0)))
        ratio = anchor * s * math.sqrt(2.0 / D) / np.sqrt(var + eps)
        q, first, local = quotient(num, err_num, s, es, ratio, self.kappa * self.u)
        w = q.shape[2]
        sign = np.sign(s_val[:, :, 0])
        edges = [DiagEdge(nid_num, np.broadcast_to(inv[:, :, None], q.shape), np.arange(w)),
                 DiagEdge(s_nid, -q * (sign * inv)[:, :, None], np.zeros(w, dtype=np.int64))]
        nid = self.tape.node(w, local, edges)
        return q, first + local, nid

    def _divisor_bound(self, s: np.ndarray, es: np.ndarray, s_nid: int,
                       defined: np.ndarray) -> np.ndarray:
        """The divisor's error bound [B, T] that the division uses: its forward enclosure, or,
        where that exceeds DIVISOR_TIGHTEN |s| and the tape records (adjoint not 'off'), the
        smaller adjoint bound of the divisor's own node (raspicl.contract.adjoint): the same
        sum |g| . beta that bounds an output, taken at the divisor, so that a contraction
        upstream of it (a Sherman-Morrison update's) is seen before the quotient's enclosure
        and the DIVISOR_ERROR check use it. Both are bounds on the same error, so the smaller
        is one. A non-finite forward bound (a failed precondition upstream) is kept: the
        reverse pass reads such charges as 0."""
        if not self.tape.enabled:
            return es
        tok = np.flatnonzero(defined)
        with np.errstate(invalid="ignore", divide="ignore"):
            loose = np.isfinite(es[:, tok]) & (es[:, tok] > DIVISOR_TIGHTEN * s[:, tok])
        prompts = np.flatnonzero(loose.any(axis=1))
        positions = tok[loose.any(axis=0)]
        if not len(prompts) or not len(positions):
            return es
        adj = self.tape.adjoint_bound(s_nid, [int(t) for t in positions],
                                      [0] * len(positions), prompts)
        es = es.copy()
        sub = es[prompts[:, None], positions[None, :]]
        es[prompts[:, None], positions[None, :]] = np.where(np.isfinite(sub),
                                                            np.minimum(sub, adj), sub)
        return es


def _stacked(reads, part: int) -> np.ndarray:
    """The reads' values (part 0) or error bounds (1) side by side: [B, T, sum of widths]."""
    arrays = [r[part] for r in reads]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=2)


@dataclass
class _Terms:
    """A list of terms prepared for the walk: per term its output, coefficient c (|c|) and
    operands as columns of the reads side by side (_stacked), the terms ordered by their rank
    among their output's terms and then by output; `add` sums them into their outputs."""

    outs: np.ndarray
    c: np.ndarray
    abs_c: np.ndarray
    comps: list[np.ndarray]  # per operand, [terms] columns of the stacked reads
    # per rank j: the terms that are their output's j-th (a run of columns) and those outputs
    # (no output twice; a slice where they are consecutive)
    rounds: list[tuple[slice, slice | np.ndarray]]

    def add(self, target: np.ndarray, terms: np.ndarray) -> None:
        """target[:, :, outs[i]] += terms[:, :, i] for every term i, bit for bit as a loop over
        the terms in their given order: round j adds every output's j-th term at once, so each
        output still sums its terms one at a time in their order."""
        for sel, outs in self.rounds:  # slices add in place, without gathering a copy
            target[:, :, outs] += terms[:, :, sel]


def _terms(key: tuple[dict, str] | None, terms, reads, operands) -> _Terms:
    """The _Terms of `terms` (each (output, coefficient, ...); operands(term): its (read,
    component) pairs, read None for a column of its own), kept in key[0][key[1]]."""
    if key is not None and key[1] in key[0]:
        return key[0][key[1]]
    offsets = np.cumsum([0] + [r[0].shape[2] for r in reads]) if reads is not None else None
    outs = np.array([int(t[0]) for t in terms], dtype=np.int64)
    c = np.array([float(t[1]) for t in terms])
    per = [operands(t) for t in terms]
    comps = [np.array([k if r is None else offsets[r] + k for r, k in (p[j] for p in per)],
                      dtype=np.int64) for j in range(len(per[0]))]
    # each term's rank among its output's terms, in the given order
    order = np.argsort(outs, kind="stable")
    sorted_outs = outs[order]
    starts = np.flatnonzero(np.r_[True, sorted_outs[1:] != sorted_outs[:-1]])
    rank = np.empty(len(outs), dtype=np.int64)
    rank[order] = np.arange(len(outs)) - np.repeat(starts, np.diff(np.r_[starts, len(outs)]))
    # the terms by rank, then output: round j's terms are a run of columns
    by_round = np.lexsort((outs, rank))
    outs, c, rank = outs[by_round], c[by_round], rank[by_round]
    comps = [col[by_round] for col in comps]
    rounds = []
    bounds = np.r_[np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]]), len(rank)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        o = outs[lo:hi]
        run = o[-1] - o[0] + 1 == len(o)  # sorted and unique: consecutive iff the span fits
        rounds.append((slice(int(lo), int(hi)), slice(int(o[0]), int(o[-1]) + 1) if run else o))
    out = _Terms(outs, c, np.abs(c), comps, rounds)
    if key is not None:
        key[0][key[1]] = out
    return out


def _merge(a, b):
    """Linear terms a + b with equal (out, read, comp) combined and zeros dropped."""
    acc: dict[tuple[int, int, int], float] = {}
    for o, c, r, k in list(a) + list(b):
        acc[(o, r, k)] = acc.get((o, r, k), 0.0) + c
    return [(o, c, r, k) for (o, r, k), c in acc.items() if c != 0.0]
