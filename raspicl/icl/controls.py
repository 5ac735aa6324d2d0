"""Compiled raspicl models as Predictors: controls whose algorithm is known exactly.

A compiled batch_gd, ridge or sgd model computes its algorithm to rounding (the compiler's
checks), so every metric and probe applied to it has a known right answer: SPD to its own
algorithm ~0, best match its own algorithm, the weight register decodable from the residual
after the block that writes it and not before. `CompiledPredictor` maps the layout's output
positions to the Predictor columns (x token 2k -> column k, the query 2n -> column n, NaN
elsewhere) and gives the residual after the embedding and after every block as hidden states.

Check mode. The compiled model's runtime monitor (raspicl.contract) either vouches for a prompt
or refuses it. A control runs certified, check='error', by default: with the adjoint bound the
bundled programs accept their whole domain at their own tolerances (docs/compiler.md), so a
refusal means a prompt the control cannot vouch for, and the comparison stops there, naming it
(never a silently uncertified control). check='warn' runs every prompt and counts the
refusals in `refused` / `checked` instead (dropping refused prompts would select the sample by
the control's own difficulty), so that `raspicl compare --check warn` reports them; 'ignore'
runs no monitor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raspicl.compiled import CompiledModel
from raspicl.errors import DomainError, DomainWarning, RaspiclError
from raspicl.icl import learners as L
from raspicl.prompts import Prompts


def _call(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("d", "n"))


@dataclass
class CheckedPredictions:
    """A compiled model's predictions in Predictor columns, with its runtime contract.

    values, bound: [B, n + 1] (NaN in the columns it does not predict; bound inf where the
    monitor could give none); accepted: [B], the prompts it vouches for; reasons: prompt index
    -> the first finding that refused it."""

    values: np.ndarray
    bound: np.ndarray | None
    accepted: np.ndarray | None
    reasons: dict[int, str] = field(default_factory=dict)


@dataclass
class CompiledPredictor:
    """A compiled raspicl model read as an in-context learner."""

    model: CompiledModel
    check: str = "error"
    name: str = ""
    refused: int = 0  # prompts the monitor refused, over every call so far
    checked: int = 0  # prompts the monitor checked, over every call so far
    findings: list[str] = field(default_factory=list)  # the first few refusal messages

    def __post_init__(self) -> None:
        if self.check not in ("error", "warn", "ignore"):
            raise ValueError(f"check must be 'error', 'warn' or 'ignore', got {self.check!r}")
        pos = self.model.layout["output"]["positions"]
        shape = self.model.layout["output"].get("shape", [])
        if int(np.prod(shape)) != 1:
            raise RaspiclError(f"compiled model {self.program_name}: its output register has "
                               f"shape {shape}; a regression learner predicts one number")
        bad = [p for p in pos if p % 2 or p > 2 * self.n]
        if bad:
            raise RaspiclError(f"compiled model {self.program_name}: output positions {bad} "
                               f"are not x tokens or the query (0, 2, ..., 2n = {2 * self.n})")
        if not self.name:
            self.name = f"compiled {self.program_name}({_call(self.params)})"

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, directory: str | Path, check: str = "error") -> CompiledPredictor:
        """A model directory written by `raspicl compile` / raspicl.export.save."""
        from raspicl.export import load

        return cls(load(directory), check=check)

    # ------------------------------------------------------------------ what it is

    @property
    def d(self) -> int:
        return int(self.model.layout["prompt"]["d"])

    @property
    def n(self) -> int:
        return int(self.model.layout["prompt"]["n_examples"])

    @property
    def program_name(self) -> str:
        return str(self.model.layout["program"]["name"])

    @property
    def params(self) -> dict:
        return dict(self.model.layout["program"].get("params", {}))

    @property
    def task_kind(self) -> str:
        """The task its prompts are drawn from (PROGRAM_TASKS; 'linear' by default)."""
        return PROGRAM_TASKS.get(self.program_name, "linear")

    @property
    def n_blocks(self) -> int:
        return len(self.model.layout["architecture"]["block_order"])

    # ------------------------------------------------------------------ running

    def _check_prompts(self, prompts: Prompts) -> None:
        if (prompts.d, prompts.n) != (self.d, self.n):
            raise RaspiclError(f"{self.name}: compiled for d={self.d}, n={self.n}; the prompts "
                               f"have d={prompts.d}, n={prompts.n}")

    def _count(self, caught: list, accepted: np.ndarray | None, batch: int) -> None:
        if self.check == "ignore":
            return
        self.checked += batch
        if accepted is not None:
            self.refused += int(batch - np.count_nonzero(accepted))
        for w in caught:
            if issubclass(w.category, DomainWarning) and len(self.findings) < 5:
                self.findings.append(str(w.message))

    def predict(self, prompts: Prompts) -> np.ndarray:
        """[B, n + 1]: the model's output at x token k + 1 (token 2k) in column k, at the query
        (token 2n) in column n, NaN at columns it has no output position for."""
        return self.run(prompts).values

    def run(self, prompts: Prompts) -> CheckedPredictions:
        """`predict`'s columns with what the monitor says of each prompt (under check='warn'
        or 'error'; 'ignore' vouches for nothing and returns accepted and bound as None)."""
        self._check_prompts(prompts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DomainWarning)
            try:
                run = self.model.run(prompts, check=self.check)
            except DomainError as exc:
                raise DomainError(f"{self.name}: {exc}\n(check='warn', `--check warn` on the "
                                  "command line, runs every prompt and counts the refusals)") \
                    from None
        self._count(caught, run.accepted, prompts.batch)
        pos = self.model.layout["output"]["positions"]
        cols = [p // 2 for p in pos]
        out = np.full((prompts.batch, self.n + 1), np.nan)
        out[:, cols] = run.values.reshape(prompts.batch, len(pos))
        bound = None
        if run.bound is not None:
            bound = np.full((prompts.batch, self.n + 1), np.nan)
            bound[:, cols] = np.asarray(run.bound, dtype=np.float64).reshape(prompts.batch,
                                                                             len(pos))
        reasons: dict[int, str] = {}
        for f in run.findings:  # the first finding of each refused prompt
            if f.prompt >= 0:
                reasons.setdefault(int(f.prompt), f.message)
        accepted = None if run.accepted is None else np.asarray(run.accepted, dtype=bool)
        return CheckedPredictions(out, bound, accepted, reasons)

    def hidden_states(self, prompts: Prompts) -> list[np.ndarray]:
        """The residual stream after the embedding and after every block (after its MLP):
        1 + blocks arrays [B, 2n + 1, d_model], float64."""
        self._check_prompts(prompts)
        if self.check != "warn":
            return self.model.residuals(prompts, check=self.check)[0::2]
        # the monitor walks the same residuals; its refusals are counted, as predict counts them
        res = self.model.residuals(prompts, check="ignore")
        report = self.model.contract(res)
        self._count([], report.accepted, prompts.batch)
        for f in report.findings:
            if len(self.findings) >= 5:
                break
            self.findings.append(f.message)
        return res[0::2]

    def block_writing(self, register: str, version: int | None = None) -> int:
        """The hidden-state index (1 = after the first block) right after the block whose
        sublayer writes this register version (0: the embedding)."""
        v = self.model.version(register, version)
        return (int(v["written_after"]) + 1) // 2

    def program_learners(self) -> list:
        """The reference learners of this model's own algorithm at its hyper-parameters (what
        an honest comparison must offer: see docs/experiments.md): batch_gd -> fixed-step
        gd(T, lr, lam, w0), ridge -> ridge(lam), sgd -> sgd(lr, lam, w0), logistic_gd ->
        logistic_gd(T, lr, w0); [] otherwise."""
        return program_learners(self.program_name, self.params)


# The task kind (raspicl.icl.tasks.KINDS) a compiled program's prompts are drawn from when it
# is compared; programs not named here are compared on linear-regression prompts.
PROGRAM_TASKS = {"logistic_gd": "logistic"}


def program_learners(program: str, params: dict) -> list:
    """See CompiledPredictor.program_learners."""
    if program == "batch_gd":
        return [L.GradientDescent(T=int(params["T"]), lr=float(params["lr"]),
                                  lam=float(params.get("lam", 0.0)), w0=params.get("w0"))]
    if program == "ridge":
        return [L.Ridge(float(params["lam"]))]
    if program == "sgd":
        return [L.SGD(lr=float(params["lr"]), lam=float(params.get("lam", 0.0)),
                      w0=params.get("w0"))]
    if program == "logistic_gd":
        return [L.LogisticGD(T=int(params["T"]), lr=float(params["lr"]), w0=params.get("w0"))]
    return []


def compile_control(program: str, dtype: str = "float64", check: str = "error",
                    **params) -> CompiledPredictor:
    """Compile a bundled program (or a program file) as `raspicl compile` does — its own
    DOMAIN and contract tolerance — and wrap it as a CompiledPredictor."""
    from raspicl.registry import find_program
    from raspicl.verify import compile_checked

    pf = find_program(program)
    # ContractWarning is silenced there: refusals are counted at run time
    return CompiledPredictor(compile_checked(pf, pf.build(**params), dtype), check=check)


def merge_learners(base: list, extra: list) -> list:
    """base + the learners of extra whose names base lacks (a program's learner may already be
    in the reference set, e.g. gd(T=1, lr=0.1) or ridge(0.25))."""
    names = {b.name for b in base}
    return base + [e for e in extra if e.name not in names]
