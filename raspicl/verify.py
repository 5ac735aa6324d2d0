"""Verification: the compiled model against the interpreter, and both against the solvers.

Four checks per program and parameter set:
1. interpreter vs the program file's reference(), which uses raspicl.solvers: to rounding;
2. compiled model vs interpreter on every register version at every token where the
   interpreter's value is defined, read from the residual right after the sublayer that wrote
   it, and on the prediction;
3. where the program file has closed_form() and d <= 3: sympy proves the program's output
   expression equals it (an exact check of the semantics, independent of any prompt);
4. the runtime contract (raspicl.monitor) on the same forward pass: the fraction of problems
   the model accepts, and that no accepted prediction is off by more than its error bound or
   the contract tolerance (a violation fails the check).

A check's status (CheckResult.status) is FAIL if any of 1-4 fails; else REFUSES if the model
accepts fewer than MIN_ACCEPTANCE of the problems inside its calibrated domain (|x| and |y|
within the layout's x_abs_max and y_abs_max): a model that answers correctly only the prompts
it vouches for, and vouches for too few of its own domain, is not what the program asked for;
else PASS.

Errors are relative with a floor of one: |a - b| / max(|b|, 1), elementwise, maximised over
every problem, token and entry compared. Problems are x, w ~ N(0, I), y = w^T x from a seed.

Memory: the problems run CHUNK at a time, and each chunk is one forward pass streamed sublayer
by sublayer (CompiledModel.stream): every register version is compared as soon as the sublayer
that writes it has run, the runtime monitor (raspicl.monitor.ContractStream) keeps only what
its walk reads, and the prediction is read off the last residual of the same pass. Nothing
holds the whole residual stream, so memory grows with the chunk, not with `problems`. Every
check is per problem; the chunk size changes only the last bits of the model's arithmetic
(vectorised kernels round the tail of a batch differently).
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from raspicl.compiled import CompiledModel
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.compiler.bounds import Domain
from raspicl.contract import ContractStream
from raspicl.errors import ContractWarning
from raspicl.guards import check_prompt
from raspicl.interpret import interpret
from raspicl.prompts import Prompts, random_prompts
from raspicl.registry import ProgramFile

INTERPRETER_TOLERANCE = 1e-12
DEFAULT_TOLERANCE = {"float64": 1e-8, "float32": 1e-3}
# Problems per forward pass: bounds verify's memory (ridge d=8 n=16 holds ~4 MB per problem
# in the interpreter's trace and the monitor's values) while keeping each pass large enough
# to run at the model's batch speed.
CHUNK = 100
# A check whose model accepts fewer than this share of its in-domain problems is REFUSES, not
# PASS: the compiler itself warns below it (CompilerConfig.min_acceptance, 0.99 by default).
MIN_ACCEPTANCE = 0.99


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max(|want|, 1) over the entries where want is finite."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    ok = np.isfinite(want)
    if not ok.any():
        return 0.0
    diff = np.abs(got[ok] - want[ok]) / np.maximum(np.abs(want[ok]), 1.0)
    return float(np.nan_to_num(diff, nan=np.inf).max())


@dataclass
class CheckResult:
    program: str
    params: dict
    dtype: str
    blocks: int
    heads: int
    d_model: int
    d_mlp: int
    n_params: int
    err_registers: float  # compiled vs interpreter, every register at every token
    worst_register: str
    err_prediction: float  # compiled prediction vs interpreter
    err_interpreter_solver: float  # interpreter vs reference solver (nan: no reference)
    err_model_solver: float  # compiled prediction vs reference solver
    symbolic: str  # 'proved', 'FAILED', or '-' (not applicable)
    tolerance: float
    seconds: float = 0.0
    problems: int = 0
    accepted: float = 1.0  # fraction of the problems the runtime contract accepts
    contract_violations: int = 0  # accepted predictions off by more than bound or tolerance
    contract_tolerance: float = 0.0
    notes: list[str] = field(default_factory=list)
    in_domain: int = -1  # problems inside the calibrated domain (-1: not counted, all of them)
    accepted_in_domain: float = float("nan")  # share of those the contract accepts
    min_acceptance: float = MIN_ACCEPTANCE

    @property
    def acceptance(self) -> float:
        """The share of the in-domain problems the model accepts (of every problem where the
        in-domain ones were not counted; NaN where none of them is in the domain)."""
        return self.accepted if self.in_domain < 0 else self.accepted_in_domain

    @property
    def refuses(self) -> bool:
        """The model accepts fewer than min_acceptance of its in-domain problems."""
        return bool(self.acceptance < self.min_acceptance)  # NaN (none in domain): False

    @property
    def status(self) -> str:
        """'FAIL' (a check failed), 'REFUSES' (correct, but it refuses more than
        1 - min_acceptance of its in-domain problems) or 'PASS'."""
        if not self.passed:
            return "FAIL"
        return "REFUSES" if self.refuses else "PASS"

    @property
    def passed(self) -> bool:
        """Checks 1-4 hold (the errors are within tolerance, no contract violation); says
        nothing about how many problems the model accepts (`status` does)."""
        solver_ok = np.isnan(self.err_interpreter_solver) or (
            self.err_interpreter_solver <= INTERPRETER_TOLERANCE)
        model_solver_ok = np.isnan(self.err_model_solver) or (
            self.err_model_solver <= self.tolerance)
        return (self.err_registers <= self.tolerance and self.err_prediction <= self.tolerance
                and solver_ok and model_solver_ok and self.symbolic != "FAILED"
                and self.contract_violations == 0)


def tolerance_for(pf: ProgramFile, dtype: str) -> float:
    """The program file's TOLERANCE[dtype] if it declares one, else the default."""
    tol = getattr(pf.module, "TOLERANCE", {})
    return float(tol.get(dtype, DEFAULT_TOLERANCE[dtype]))


def contract_tolerance_for(pf: ProgramFile, dtype: str) -> float:
    """What a compiled model of this program vouches for: the file's CONTRACT_TOLERANCE[dtype]
    if it declares one, else its tolerance."""
    tol = getattr(pf.module, "CONTRACT_TOLERANCE", {})
    return float(tol.get(dtype, tolerance_for(pf, dtype)))


def compile_checked(pf: ProgramFile, program, dtype: str = "float64",
                    config: CompilerConfig | None = None, loops: str = "unroll",
                    domain: Domain | None = None, arch="paper") -> CompiledModel:
    """`program` (built from `pf`) compiled as verify checks it: the file's contract tolerance
    for `dtype` unless `config` is given, the file's DOMAIN unless `domain` is, then converted
    to `dtype`. ContractWarning is silenced: verify reports acceptance as a column, and the
    other callers count refusals at run time. arch: the target (raspicl.arch)."""
    config = config or CompilerConfig.for_dtype(dtype,
                                                tolerance=contract_tolerance_for(pf, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(program, config, loops=loops,
                             domain=domain if domain is not None else pf.domain, arch=arch)
    return cm.to(torch.float32) if dtype == "float32" else cm


def verify_program(pf: ProgramFile, params: dict, dtype: str = "float64",
                   problems: int = 1000, seed: int = 0, symbolic: bool = True,
                   config: CompilerConfig | None = None,
                   domain: Domain | None = None, progress: bool = False,
                   arch="paper", contract_tolerance: float | None = None,
                   min_acceptance: float = MIN_ACCEPTANCE) -> CheckResult:
    """Compile one instance of a program and run all four checks on it. progress: a progress
    bar over the chunks of problems (stderr, shown on a terminal only). arch: the target
    (raspicl.arch). contract_tolerance: what the model vouches for (default: the file's, see
    contract_tolerance_for; ignored where `config` is given). min_acceptance: the share of
    in-domain problems below which the check's status is REFUSES."""
    start = time.perf_counter()
    program = pf.build(**params)
    if contract_tolerance is None:
        contract_tolerance = contract_tolerance_for(pf, dtype)
    config = config or CompilerConfig.for_dtype(dtype, tolerance=contract_tolerance)
    cm = compile_checked(pf, program, dtype, config, domain=domain, arch=arch)
    prompts = random_prompts(problems, program.d, program.n, seed)
    # Verification measures the error on every prompt drawn (check='ignore'), notes those
    # beyond what calibration saw, and holds the contract separately below.
    outside = check_prompt(cm.layout, prompts.tokens(), "ignore")
    inside = in_domain_mask(cm.layout, prompts)
    writes = _writes(program, cm)
    err_op = np.zeros(len(program.ops))
    err_pred = err_is = err_ms = 0.0
    accepted, violations = [], 0
    starts = range(0, problems, CHUNK)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"{pf.name} {dtype}", unit="chunk", file=sys.stderr,
                      disable=None, leave=False)
    for lo in starts:
        chunk = _chunk(prompts, lo, min(lo + CHUNK, problems))
        trace = interpret(program, chunk)
        monitor = ContractStream(cm.layout, cm.dtype_name)
        final = None
        for i, r in enumerate(cm.stream(chunk)):  # one forward pass, sublayer by sublayer
            monitor.feed(r)
            for k, rows in writes.get(i, ()):
                err_op[k] = max(err_op[k], rel_err(r[:, :, rows], trace.after[k]))
            final = r
        want = trace.output()
        got = cm.readout(final)
        err_pred = max(err_pred, rel_err(got, want))
        contract = monitor.report()
        ok = contract.accepted[:, None, None] & np.isfinite(want)
        diff = np.abs(got - want)
        over = ok & ((diff > contract.bound)
                     | (diff > config.contract_tolerance * np.maximum(np.abs(want), 1.0)))
        violations += int(over.sum())
        accepted.append(contract.accepted)
        if pf.has_reference:
            ref = np.asarray(pf.reference(chunk, **params), dtype=np.float64).reshape(want.shape)
            err_is, err_ms = max(err_is, rel_err(want, ref)), max(err_ms, rel_err(got, ref))
        del trace, monitor, contract, final
    if not pf.has_reference:
        err_is = err_ms = float("nan")
    worst, worst_name = 0.0, "-"
    for op in program.ops:  # the first op with the largest error, as one pass would name it
        e = err_op[op.index]
        if e > worst or worst_name == "-":
            worst, worst_name = e, f"{op.dst.name} (op {op.index}, {op.source})"
    sym = "-"
    if symbolic and hasattr(pf.module, "closed_form") and program.d <= 3 and program.n == 1:
        sym = "proved" if _prove(pf, params, program) else "FAILED"
    s = cm.summary()
    accepted = np.concatenate(accepted)
    share = float(accepted[inside].mean()) if inside.any() else float("nan")
    return CheckResult(pf.name, dict(params), dtype, s["blocks"], s["heads"], s["d_model"],
                       s["d_mlp"], s["params"], worst, worst_name, err_pred, err_is, err_ms,
                       sym, tolerance_for(pf, dtype), time.perf_counter() - start, problems,
                       float(accepted.mean()), violations, config.contract_tolerance,
                       notes=outside, in_domain=int(inside.sum()), accepted_in_domain=share,
                       min_acceptance=min_acceptance)


def in_domain_mask(layout: dict, prompts: Prompts) -> np.ndarray:
    """[B] bool: the prompts whose every |x| and |y| lies within the domain the model was
    calibrated for (layout['domain'] x_abs_max and y_abs_max; a bound the layout lacks does
    not restrict). The same magnitudes raspicl.guards.check_prompt reports, per prompt."""
    domain = layout.get("domain", {})
    ok = np.ones(prompts.batch, dtype=bool)
    for name, values in (("x", np.concatenate([prompts.X.reshape(prompts.batch, -1),
                                               prompts.xq.reshape(prompts.batch, -1)], axis=1)),
                         ("y", prompts.y.reshape(prompts.batch, -1))):
        bound = domain.get(f"{name}_abs_max")
        if bound is not None and values.shape[1]:
            ok &= np.all(np.abs(values) <= bound, axis=1)
    return ok


def _writes(program, cm) -> dict[int, list[tuple[int, list[int]]]]:
    """For each residual index, the ops whose register version is read off it: (op index,
    rows), every op in program order."""
    versions: dict[str, int] = {}
    out: dict[int, list[tuple[int, list[int]]]] = {}
    for op in program.ops:
        versions[op.dst.name] = versions.get(op.dst.name, 0) + 1
        v = cm.version(op.dst.name, versions[op.dst.name])
        if not v["rows"]:  # fused away (compiler/fusion.py): no rows, nothing to compare
            continue
        out.setdefault(int(v["written_after"]), []).append((op.index, list(v["rows"])))
    return out


def _chunk(prompts: Prompts, start: int, stop: int) -> Prompts:
    """Problems start..stop-1 of a batch."""
    w = None if prompts.w is None else prompts.w[start:stop]
    return Prompts(prompts.X[start:stop], prompts.y[start:stop], prompts.xq[start:stop], w)


def _prove(pf: ProgramFile, params: dict, program) -> bool:
    """sympy: the output expression at the (single) query equals closed_form(...)."""
    import sympy

    from raspicl.symbolic import prove_equal, register_expressions, run_symbolic, symbolic_prompt

    def exact_value(v):
        if isinstance(v, float):
            return sympy.nsimplify(v)
        if isinstance(v, list | tuple):
            return [exact_value(x) for x in v]
        return v

    # Every float parameter, defaults included, as the rational it was written as (0.1 -> 1/10)
    exact = {k: exact_value(v) for k, v in {**pf.defaults(), **params}.items()}
    prog = pf.build(**exact)
    trace = run_symbolic(prog)
    syms = symbolic_prompt(prog.format)[1]
    out = prog.output_spec.register.name
    expr = register_expressions(trace, out, prog.format.n_tokens - 1)
    closed = pf.module.closed_form(syms.X[0], syms.y[0], syms.xq, **exact)
    return prove_equal(expr, closed)


def default_checks(programs: list[ProgramFile], dtypes: tuple[str, ...]) -> list[tuple]:
    """(program file, params, dtype) for every program's GRID and every dtype."""
    return [(pf, params, dt) for pf in programs for params in pf.grid for dt in dtypes]


HEAD = ["program", "params", "dtype", "blocks", "heads", "d_model", "d_mlp", "params#",
        "err vs interp", "err vs solver", "interp vs solver", "sympy", "tol", "accepted",
        "result"]
# The narrowest each column is printed, whatever its header: the widest value it usually holds
# (a model of 10^8 parameters, an error such as 1.2e-11, "99.8%"), so that rows printed one
# at a time line up.
MIN_WIDTH = {"blocks": 4, "d_model": 5, "d_mlp": 5, "params#": 9, "sympy": 6, "tol": 5,
             "accepted": 8, "result": 7}


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _cells(r: CheckResult) -> list[str]:
    return [r.program, _params_text(r.params), r.dtype, str(r.blocks), str(r.heads),
            str(r.d_model), str(r.d_mlp), str(r.n_params),
            f"{max(r.err_registers, r.err_prediction):.1e}", _fmt(r.err_model_solver),
            _fmt(r.err_interpreter_solver), r.symbolic, f"{r.tolerance:.0e}", _accepted(r),
            r.status]


def _join(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def format_table(results: list[CheckResult]) -> str:
    """The verification table, one row per check."""
    rows = [_cells(r) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(HEAD)]
    lines = [_join(HEAD, widths), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [_join(row, widths) for row in rows])


class TablePrinter:
    """The verification table a row at a time: its widths are fixed before any check runs,
    from the checks' program names and parameters and MIN_WIDTH."""

    def __init__(self, checks: list[tuple]):
        known = {"program": [pf.name for pf, _, _ in checks],
                 "params": [_params_text(params) for _, params, _ in checks],
                 "dtype": [dt for _, _, dt in checks]}
        self.widths = [max([len(h), MIN_WIDTH.get(h, 0), *map(len, known.get(h, []))])
                       for h in HEAD]

    def header(self) -> str:
        return _join(HEAD, self.widths) + "\n" + "  ".join("-" * w for w in self.widths)

    def row(self, r: CheckResult) -> str:
        return _join(_cells(r), self.widths)


def _accepted(r: CheckResult) -> str:
    """'99.8%': the share of the in-domain problems accepted ('-' where none is in the
    domain), with the number of contract violations if there are any."""
    share = r.acceptance
    text = "-" if np.isnan(share) else f"{100 * share:.1f}%"
    v = r.contract_violations
    return text + (f" ({v} VIOLATION{'S' if v > 1 else ''})" if v else "")


def _fmt(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.1e}"
