"""CompiledModel: a Transformer together with the layout that says what its rows mean.

The layout (the content of layout.json) is all that is needed to encode prompts, read the
prediction and decode any register from the residual stream; a model loaded from disk has no
Program object, only this.

`run`, `predict` and `stream` make the residual stream one sublayer at a time and hand each
residual to the runtime monitor (raspicl.monitor.ContractStream) as it comes, so no call holds
every residual of a batch unless it asks for them (`residuals`). The forward pass runs the
compact plan (raspicl.compact: the weights' nonzero rows, units and heads only) unless
`compact=False` or a token is not finite; on the CPU it runs under `threads` torch threads
(raspicl.model.threads_for: the argument, else the model's `threads`, else RASPICL_THREADS,
else 1), restoring the caller's setting after.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from raspicl.compact import CompactPlan
from raspicl.contract import ContractReport, ContractStream, Finding, check_contract
from raspicl.disguise_layout import disguise_record, plain_layout
from raspicl.errors import DomainError, DomainWarning
from raspicl.guards import check_mode, check_prompt
from raspicl.lang.reads import place_from_record
from raspicl.model import Transformer, check_dtype, threads_for, torch_threads
from raspicl.prompts import Prompts
from raspicl.semantics import value_at
from raspicl.sparse_weights import SparseWeights
from raspicl.transposed import last_residual

# At most this many findings are spelled out in a DomainError or as warnings; the rest are
# counted.
SHOWN_FINDINGS = 5
# The precisions a model's weights can hold, finest first (the monitor's u is its machine
# epsilon: raspicl.monitor).
PRECISIONS = ("float64", "float32")


def coarsest(*precisions: str) -> str:
    """The coarsest of `precisions` ('float64' or 'float32'): the precision of weights that
    passed through each of them (float32 then float64 keeps float32's rounding)."""
    for name in precisions:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return max(precisions, key=PRECISIONS.index)


def dtype_precision(dtype: torch.dtype) -> str:
    """The precision name of a torch dtype ('float64' for torch.float64)."""
    return str(dtype).removeprefix("torch.")


def held_precision(tensors) -> str:
    """'float32' if every float64 tensor among `tensors` holds only float32 values (as a
    float64 copy of float32 weights does), else 'float64'. A model compiled in float64 has
    constants (1/e^2, sqrt(pi/2), k) that float32 cannot hold, so this tells a float32 round
    trip saved by a raspicl that did not record it (weights.precision) from a float64 model."""
    for t in tensors:
        if t.dtype == torch.float64 and t.numel() and not torch.equal(
                t, t.to(torch.float32).to(torch.float64)):
            return "float64"
    return "float32"


@dataclass
class Prediction:
    """A batch's predictions with what the model vouches for.

    values: [B, n_positions, d_out] float64; bound: the same shape, an upper bound on
    |compiled - exact| (inf where the model cannot give one; None under check='ignore');
    accepted: [B], the prompts whose every gadget precondition held and whose every bound is
    within the model's tolerance; findings: why the others were refused.
    """

    values: np.ndarray
    bound: np.ndarray | None
    accepted: np.ndarray | None
    findings: list[Finding] = field(default_factory=list)
    tolerance: float | None = None


class CompiledModel:
    """model: the transformer; layout: what its rows mean. threads: the torch thread count of
    its CPU forward passes (None: RASPICL_THREADS, else raspicl.model.DEFAULT_THREADS);
    compact: run the compact plan of its weights (same numbers as the dense pass up to the
    order of floating-point sums; see raspicl.compact).

    A model fresh from the compiler holds its weights by their entries
    (raspicl.sparse_weights.SparseWeights) and runs the compact plan made from them; the dense
    transformer is built, with the same bytes, the first time something asks for `model`
    (saving, exporting, inspecting, the dense pass), and from then on is what runs.

    precision: the coarsest precision its weights have passed through (None: their dtype).
    `to(float32).to(float64)` runs in float64 with float32-rounded weights, so the monitor
    must charge float32's machine epsilon: it is handed `precision`, never the dtype alone
    (`precision` is the coarser of the two). The export records it (weights.precision)."""

    def __init__(self, model: Transformer | SparseWeights, layout: dict,
                 threads: int | None = None, compact: bool = True,
                 plan: CompactPlan | None = None, precision: str | None = None):
        self.layout = layout
        self.threads = threads
        self.compact = compact
        self._plan = plan  # for SparseWeights: the plan made from them, if already made
        self._precision = coarsest(precision) if precision is not None \
            else dtype_precision(model.dtype)
        # a disguised model's rotation (raspicl.disguise): the monitor and decode read rows
        # in the plain basis, through plain_residual and monitor_layout
        self._disguise = disguise_record(layout)
        self._plain_layout: dict | None = None
        if isinstance(model, SparseWeights):
            self._weights: SparseWeights | None = model
            self._model: Transformer | None = None
            self._shell: Transformer | None = model.shell()
        else:
            self._weights, self._model, self._shell = None, model, None

    def __repr__(self) -> str:
        return (f"CompiledModel(program={self.layout.get('program', {}).get('name')!r}, "
                f"{self.summary()})")

    @property
    def model(self) -> Transformer:
        """The dense transformer (built from the weights' entries the first time it is asked
        for; the plan made from them is kept, bound to it, until its weights change)."""
        if self._model is None:
            self._model = self._weights.transformer()
            if self._plan is not None:
                self._plan.bind(self._model)
            self._weights = self._shell = None
        return self._model

    @model.setter
    def model(self, model: Transformer) -> None:
        """Replace the weights; they keep the coarsest precision either set has held (their
        history is not known, so a float64 model set over a float32 one is charged float32)."""
        self._precision = self.precision
        self._model, self._weights, self._shell, self._plan = model, None, None, None

    def runner(self) -> Transformer:
        """What the compact plan runs with (embedding, readout, config, dtype): the dense
        model once built, else the shell of the weights (raspicl.sparse_weights)."""
        return self._model if self._model is not None else self._shell

    # ------------------------------------------------------------------ running

    def tokens(self, prompts: Prompts | np.ndarray, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> torch.Tensor:
        """Token vectors as a tensor of the model's dtype and device."""
        arr = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
        p = self.layout["prompt"]
        if arr.ndim != 3 or arr.shape[1:] != (p["n_tokens"], p["d_token"]):
            raise ValueError(f"tokens must have shape [batch, {p['n_tokens']}, {p['d_token']}] "
                             f"(d={p['d']}, n={p['n_examples']}); got {tuple(arr.shape)}")
        W = self.runner().embed.W_E
        return torch.as_tensor(arr, dtype=dtype or W.dtype, device=device or W.device)

    def run(self, prompts: Prompts | np.ndarray, check: str = "error",
            threads: int | None = None, adjoint: str = "needed") -> Prediction:
        """Predictions with their error bounds and the runtime contract (raspicl.monitor).

        check: 'error' raises DomainError if any prompt is refused (NaN or infinite tokens, a
        gadget precondition that fails, an error bound above the tolerance), naming the
        prompt, token, op and quantity; 'warn' issues a DomainWarning instead and returns
        every prediction, refused ones included; 'ignore' runs no monitor (bound None).
        threads: the torch thread count on the CPU (default: the model's `threads`).
        adjoint: where the monitor tightens its forward bound by the adjoint's
        (raspicl.monitor.check_contract): 'needed' (where the forward bound alone would refuse),
        'always' (every prediction gets the tightest bound), 'off'."""
        return self._run(prompts, check, depth=1, threads=threads, adjoint=adjoint)

    def _run(self, prompts, check: str, depth: int, threads: int | None = None,
             adjoint: str = "needed") -> Prediction:
        """run(), called `depth` raspicl frames below the user's line."""
        res, report, prompt_findings = self._forward(prompts, check, depth + 1, threads,
                                                     keep_all=False, adjoint=adjoint)
        values = self.readout(res[-1])
        if report is None:
            return Prediction(values, None, None)
        return Prediction(values, report.bound, report.accepted,
                          prompt_findings + report.findings, self.layout["monitor"]["tolerance"])

    def predict(self, prompts: Prompts | np.ndarray, check: str = "error",
                with_bound: bool = False, threads: int | None = None):
        """The prediction at the output positions: [B, n_positions, d_out], as float64 numpy
        (and its error bound, the same shape, if with_bound). check, threads: as for `run`."""
        out = self._run(prompts, check, depth=1, threads=threads)
        return (out.values, out.bound) if with_bound else out.values

    def residuals(self, prompts: Prompts | np.ndarray, check: str = "error",
                  threads: int | None = None) -> list[np.ndarray]:
        """The residual stream after the embedding and after every sublayer, float64 numpy
        (every one held: `stream` yields them one at a time). check, threads: as for `run`."""
        return self._forward(prompts, check, depth=1, threads=threads, keep_all=True)[0]

    def stream(self, prompts: Prompts | np.ndarray, threads: int | None = None,
               compact: bool | None = None):
        """The residuals `residuals` returns, yielded one at a time as float64 numpy (no
        monitor, no checks beyond the prompt's shape). compact: None for the model's own
        setting; prompts with a non-finite token always run the dense pass."""
        for r in self._torch_stream(prompts, threads, compact):
            yield _as_numpy(r)

    def _torch_stream(self, prompts, threads: int | None = None, compact: bool | None = None):
        """`stream`'s residuals as the model's own tensors (its dtype and device)."""
        arr = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
        tok = self.tokens(arr)
        use = (self.compact if compact is None else compact) \
            and CompactPlan.supports(self.runner())
        plan = self.plan() if use and bool(np.isfinite(arr).all()) else None
        n = threads if threads is not None else self.threads
        model = self.runner() if plan is not None else self.model
        with torch.no_grad():
            yield from model.stream(tok, plan=plan, threads=n)

    def _last_residual(self, arr: np.ndarray, threads: int | None) -> torch.Tensor:
        """The residual after the last sublayer alone (no monitor reads the others): the
        compact plan adds every sublayer in place, where `stream` copies each residual."""
        if not (self.compact and CompactPlan.supports(self.runner())
                and bool(np.isfinite(arr).all())):
            last = None
            for last in self._torch_stream(arr, threads=threads):  # noqa: B007
                pass
            return last
        tok = self.tokens(arr)
        plan = self.plan()
        n = threads if threads is not None else self.threads
        with torch.no_grad():
            embedded = next(self.runner().stream(tok, threads=n))
            if tok.device.type != "cpu":
                return last_residual(plan, embedded)
            with torch_threads(threads_for(n)):
                return last_residual(plan, embedded)

    def plan(self) -> CompactPlan:
        """The compact execution plan of the current weights (built once, rebuilt if a
        parameter of the dense model is replaced or modified in place)."""
        if self._model is None:  # the weights by entries: made from them once
            if self._plan is None:
                self._plan = self._weights.plan(self._shell)
            return self._plan
        if self._plan is None or not self._plan.matches(self.model):
            self._plan = CompactPlan(self.model)
        return self._plan

    def readout(self, final: np.ndarray) -> np.ndarray:
        """The prediction at the output positions from the last residual [B, T, d_model]
        (W_U only selects rows, so float64 reads it exactly whatever the model's dtype; a gpt2
        model reads through its ln_final, in the model's dtype)."""
        pos = self.layout["output"]["positions"]
        if self.runner().cfg.arch.ln_final:
            w = self.model.ln_final.w
            x = torch.from_numpy(np.ascontiguousarray(final[:, pos])).to(w.dtype).to(w.device)
            with torch.no_grad():
                return self.model.readout(x).detach().cpu().double().numpy()
        W_U = self.runner().unembed.W_U.detach().cpu().double().numpy()
        b_U = self.runner().unembed.b_U.detach().cpu().double().numpy()
        return final[:, pos] @ W_U + b_U

    def contract(self, residuals: list[np.ndarray], adjoint: str = "needed") -> ContractReport:
        """The monitor's walk over residuals this model computed (see raspicl.contract;
        adjoint: as for `run`), charged at the precision its weights hold, through the plain
        basis for a disguised model."""
        return check_contract(self.monitor_layout, [self.plain_residual(r) for r in residuals],
                              self.precision, adjoint)

    @property
    def monitor_layout(self) -> dict:
        """The layout the runtime monitor reads: a disguised model's plain layout
        (raspicl.disguise_layout.plain_layout), else the layout itself."""
        if self._disguise is None:
            return self.layout
        if self._plain_layout is None:
            self._plain_layout = plain_layout(self.layout, self._disguise)
        return self._plain_layout

    def plain_residual(self, r: np.ndarray) -> np.ndarray:
        """A residual [B, T, d_model] in the basis the layout's rows refer to: a disguised
        model's rotated back (raspicl.disguise), any other model's as it is."""
        return r if self._disguise is None else self._disguise.plain(r)

    @property
    def dtype_name(self) -> str:
        """The dtype the model computes in ('float64' or 'float32')."""
        return dtype_precision(self.runner().dtype)

    @property
    def precision(self) -> str:
        """The precision its weights hold: the coarser of the dtype it runs in and the
        coarsest one its weights passed through (`to`, the export's weights.precision). What
        the monitor charges its roundings at (its u). (A model built past `to` in a dtype the
        gadgets cannot run in, which save refuses, reports that dtype.)"""
        dtype = self.dtype_name
        if dtype not in PRECISIONS or self._precision not in PRECISIONS:
            return dtype
        return coarsest(self._precision, dtype)

    def _forward(self, prompts, check: str, depth: int, threads: int | None = None,
                 keep_all: bool = True, adjoint: str = "needed"):
        """The residual stream (every residual if keep_all, else the last one only), the
        monitor's report and the prompt's own findings. Called `depth` raspicl frames below
        the user's line, at which warnings point. The monitor is fed each residual as the
        forward pass makes it."""
        check_mode(check)
        arr = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
        # the shape is checked even under 'ignore'; NaN and infinity are findings
        found = check_prompt(self.layout, arr, "ignore", magnitudes=False)
        monitor = None if check == "ignore" else ContractStream(self.monitor_layout,
                                                                self.precision,
                                                                adjoint=adjoint)
        if monitor is None and not keep_all:
            return [_as_numpy(self._last_residual(arr, threads))], None, []
        res: list[np.ndarray] = []
        for r in self._torch_stream(arr, threads=threads):
            r = _as_numpy(r)
            if monitor is not None:
                monitor.feed(self.plain_residual(r))
            if keep_all or not res:
                res.append(r)
            else:
                res[0] = r
        if monitor is None:
            return res, None, []
        report = monitor.report()
        prompt_findings = [Finding(-1, -1, None, "prompt", float("nan"), float("nan"), m)
                           for m in found]
        _report(prompt_findings + report.findings, len(report.accepted), check,
                stacklevel=depth + 3)  # _report, _forward, depth frames, the user
        return res, report, prompt_findings

    # ------------------------------------------------------------------ reading the layout

    def version(self, register: str, version: int | None = None) -> dict:
        """The layout entry of one version of a register (default: its last)."""
        regs = self.layout["registers"]
        if register not in regs:
            raise KeyError(f"no register '{register}' in the layout; registers are "
                           f"{', '.join(regs)}")
        versions = regs[register]["versions"]
        if version is None:
            return versions[-1]
        for v in versions:
            if v["version"] == version:
                return v
        raise KeyError(f"register '{register}' has no version {version}")

    def decode(self, residuals: list[np.ndarray], register: str,
               version: int | None = None) -> np.ndarray:
        """A register version read from the residual right after the sublayer that wrote it:
        [B, T, width]."""
        v = self.version(register, version)
        if v.get("absorbed_by"):  # fused away (compiler/fusion.py): no rows of its own
            return self._decode_fused(residuals, v["label"])
        return self.plain_residual(residuals[v["written_after"]])[:, :, v["rows"]]

    def _decode_fused(self, residuals: list[np.ndarray], label: str) -> np.ndarray:
        """A fused value, which its readers compute inside their own heads or units: its
        linear definition (the monitor record's instruction) over the values it reads, each
        decoded from its rows and read at its place (NaN where the place is undefined)."""
        mon = self.layout["monitor"]
        rec = next(r for r in mon["instructions"] if r["dst"] == label)
        roles = self.layout["prompt"]["roles"]
        reads = []
        for r in rec["reads"]:
            val = mon["values"][r["value"]]
            resid = self.plain_residual(residuals[val["written_after"]])
            reads.append(value_at(resid[:, :, val["rows"]],
                                  place_from_record(r["place"]), roles, np.nan))
        B, T = residuals[0].shape[:2]
        out = np.broadcast_to(np.asarray(rec["bias"], dtype=np.float64),
                              (B, T, len(rec["bias"]))).copy()
        for o, c, ri, k in rec["linear"]:
            out[:, :, o] += c * reads[ri][:, :, k]
        return out

    def summary(self) -> dict:
        a = self.layout["architecture"]
        return {"blocks": a["n_layers"], "blocks_run": len(a["block_order"]),
                "heads": a["n_heads"], "d_head": a["d_head"], "d_model": a["d_model"],
                "d_mlp": a["d_mlp"], "params": self.runner().n_params()}

    def to(self, dtype: torch.dtype | None = None, device=None) -> CompiledModel:
        """A copy of the model in another dtype (float64 or float32: the gadgets cannot run in
        half precision) or on another device. Its precision is the coarser of this model's and
        `dtype`'s: widening float32 weights back to float64 does not restore their digits."""
        import copy

        if dtype is not None:
            check_dtype(dtype)
        precision = self.precision if dtype is None \
            else coarsest(self.precision, dtype_precision(dtype))
        if self._model is None and (device is None or torch.device(device).type == "cpu"):
            weights = self._weights.to(dtype or self._weights.dtype)  # (no dense copy)
            return CompiledModel(weights, self.layout, self.threads, self.compact,
                                 precision=precision)
        model = copy.deepcopy(self.model).to(device=device, dtype=dtype)
        return CompiledModel(model, self.layout, self.threads, self.compact,
                             precision=precision)


def _as_numpy(r: torch.Tensor) -> np.ndarray:
    """A residual as float64 numpy on the CPU (a view where it already is one)."""
    return r.detach().cpu().double().numpy()


def _report(findings: list[Finding], batch: int, check: str, stacklevel: int) -> None:
    """Raise or warn for the refused prompts (see CompiledModel.run)."""
    if not findings or check == "ignore":
        return
    refused = len({f.prompt for f in findings if f.prompt >= 0})
    shown = [f.message for f in findings[:SHOWN_FINDINGS]]
    more = len(findings) - len(shown)
    if check == "error":
        raise DomainError(
            f"the model cannot vouch for {refused or 'some'} of {batch} prompts:\n  "
            + "\n  ".join(shown) + (f"\n  ... and {more} more findings" if more else "")
            + "\n(check='warn' returns every prediction with a DomainWarning, "
              "check='ignore' runs no monitor)")
    for m in shown:
        warnings.warn(m, DomainWarning, stacklevel=stacklevel)
    if more:
        warnings.warn(f"... and {more} more findings ({refused} of {batch} prompts refused)",
                      DomainWarning, stacklevel=stacklevel)
