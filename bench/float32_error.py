"""Where a float32 model's error comes from: its prediction error against the float64
interpreter, next to its float64 twin's, and the op where the float32 error takes off.

    python bench/float32_error.py                          # the default cases (issue 19's table)
    python bench/float32_error.py --cases "ridge d=4 n=4" --targets gpt2 --ops
    python bench/float32_error.py --cases "batch_gd d=8 n=16 T=4" --problems 50 --ops

Each (program, size, target) is compiled twice as `raspicl verify` compiles it
(raspicl.verify.compile_checked: the program file's DOMAIN, CompilerConfig.for_dtype(dtype,
tolerance=the file's contract tolerance), a float32 model compiled for float32 and then moved
there with cm.to(torch.float32)), once per dtype, with min_acceptance 0 so that a model whose
bounds refuse its calibration prompts is still built and measured ("float32 accepted": the share
of its 512 calibration prompts the float32 model's monitor accepts). Both run the same
prompts: `--problems` (default 200) of x, w ~ N(0, I), noiseless (seed 1001) and again with
noise 0.5 (seed 1002), PromptDistribution(1, 1, noise).sample, 100 prompts per forward pass.
The error is |prediction - interpreter| / max(|interpreter|, 1), the largest over prompts,
output tokens and both prompt sets; the prediction is read as cm.readout reads it (a gpt2 model
through its final LayerNorm).

Per op (every register version that has rows; fused ones have none), two errors, each the
largest of |compiled - exact| / max(|exact|, 1) over every prompt, token where the interpreter
is defined, and entry:
- global: the register read off the residual right after the sublayer that wrote it, against
  the interpreter (what raspicl verify's "err vs interp" maximises);
- local: against the op applied, in float64, to the compiled values of what it reads (the
  interpreter run with every earlier register replaced by the compiled one): the error this
  op adds itself, its gadget's and its reads' (moves, Means, a gpt2 LayerNorm's ratio), not
  the error it inherits.
"first f32 > 10x": the first op (program order) whose float32 local error exceeds ten times
its float64 level, the float64 local error at that op scaled by u32 / u64 = 2^29 (what the
same gadget would add if its error were rounding alone at each dtype's precision), plus ten
float32 ulps (u32 = 2^-23: a float32 input is already off by one, where a float64 move is
exact): where float32 does worse than its precision explains. `top local` names the ops with
the largest float32 local error, what the prediction's error is mostly made of. `--ops`
prints every op.

One torch thread (this machine is shared).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raspicl.compiler import CompilerConfig  # noqa: E402
from raspicl.interpret import interpret  # noqa: E402
from raspicl.prompts import PromptDistribution, Prompts  # noqa: E402
from raspicl.registry import find_program  # noqa: E402
from raspicl.semantics import stream_ops  # noqa: E402
from raspicl.verify import _writes, compile_checked, contract_tolerance_for  # noqa: E402

torch.set_num_threads(1)

# issue 19's table, both targets each, and the GRID's ridge d=4 n=4
DEFAULT_CASES = ["ridge d=4 n=4", "ridge d=8 n=8", "ridge d=8 n=16",
                 "batch_gd d=8 n=16 T=4", "newton d=8 n=16 T=6"]
PROMPT_SETS = [("noiseless", 0.0, 1001), ("noise 0.5", 0.5, 1002)]
CHUNK = 100
U_RATIO = 2.0**29  # float32's machine epsilon over float64's
U32 = 2.0**-23  # float32's machine epsilon


def parse_case(text: str) -> tuple[str, dict]:
    name, *rest = text.split()
    params = {}
    for kv in rest:
        k, v = kv.split("=")
        params[k] = float(v) if "." in v or "e" in v else int(v)
    return name, params


def rel(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    ok = np.isfinite(want)
    d = np.abs(np.where(ok, got, 0.0) - np.where(ok, want, 0.0))
    d = np.nan_to_num(d, nan=np.inf) / np.maximum(np.abs(np.where(ok, want, 0.0)), 1.0)
    return np.where(ok, d, 0.0)


def measure(program, cm, prompts: Prompts) -> tuple[float, np.ndarray, np.ndarray]:
    """(prediction error, per-op global error, per-op local error), maxima over `prompts`."""
    writes = _writes(program, cm)
    by_op = {k: (i, rows) for i, lst in writes.items() for k, rows in lst}
    n_ops = len(program.ops)
    glob, loc = np.zeros(n_ops), np.zeros(n_ops)
    err = 0.0
    for lo in range(0, prompts.batch, CHUNK):
        hi = min(lo + CHUNK, prompts.batch)
        chunk = Prompts(prompts.X[lo:hi], prompts.y[lo:hi], prompts.xq[lo:hi])
        trace = interpret(program, chunk)
        compiled: dict[int, np.ndarray] = {}
        final = None
        for i, r in enumerate(cm.stream(chunk)):
            for k, rows in writes.get(i, ()):
                compiled[k] = r[:, :, rows].copy()
            final = r
        got = cm.readout(final)
        err = max(err, float(rel(got, trace.output()).max()))
        for k in compiled:
            glob[k] = max(glob[k], float(rel(compiled[k], trace.after[k]).max()))
        del trace
        # teacher-forced interpreter: each op on the compiled values of what it reads
        state: dict[str, np.ndarray] = {}
        for k, step in enumerate(stream_ops(program, chunk.tokens(), state=state)):
            if k not in compiled:
                continue
            loc[k] = max(loc[k], float(rel(compiled[k], step.value).max()))
            state[step.op.dst.name] = np.where(np.isfinite(step.value), compiled[k], step.value)
        del compiled, state
    del by_op
    return err, glob, loc


def describe_op(cm, op) -> str:
    ins = {r["op"]: r for r in cm.layout["monitor"]["instructions"]}.get(op.index)
    if ins is None:
        return op.kind
    tags = [ins["kind"]]
    places = sorted({r["place"]["kind"] if isinstance(r["place"], dict) else str(r["place"])
                     for r in ins["reads"]})
    if places:
        tags.append("reads " + "/".join(places))
    if ins["pairs"]:
        es = [p["e"] for p in ins["pairs"]]
        tags.append(f"{len(es)} pairs e {min(es):.2g}..{max(es):.2g}")
    if ins["divisor"]:
        tags.append(f"div by {ins['divisor']}")
    if ins["mask"]:
        tags.append("select")
    return ", ".join(tags)


def run_case(text: str, target: str, problems: int, show_ops: bool,
             overrides: dict | None = None) -> dict:
    name, params = parse_case(text)
    pf = find_program(name)
    program = pf.build(**params)
    sets = [PromptDistribution(1.0, 1.0, noise).sample(problems, program.d, program.n, seed)
            for _, noise, seed in PROMPT_SETS]
    out = {}
    for dtype in ("float64", "float32"):
        t0 = time.perf_counter()
        # min_acceptance 0: a model whose bounds refuse every calibration prompt (its
        # acceptance is a column) still computes, and its error is what this measures
        config = CompilerConfig.for_dtype(dtype, tolerance=contract_tolerance_for(pf, dtype),
                                          min_acceptance=0.0,
                                          **((overrides or {}) if dtype == "float32" else {}))
        cm = compile_checked(pf, program, dtype, config=config, arch=target)
        t1 = time.perf_counter()
        err, glob, loc = 0.0, np.zeros(len(program.ops)), np.zeros(len(program.ops))
        for prompts in sets:
            e, g, lo = measure(program, cm, prompts)
            err, glob, loc = max(err, e), np.maximum(glob, g), np.maximum(loc, lo)
        out[dtype] = (err, glob, loc, cm, t1 - t0, time.perf_counter() - t1)
    err64, g64, l64, cm64, *_ = out["float64"]
    err32, g32, l32, cm32, c32, r32 = out["float32"]
    has_rows = set(k for lst in _writes(program, cm32).values() for k, _ in lst)
    first = next((op for op in program.ops if op.index in has_rows
                  and l32[op.index] > 10 * (U_RATIO * l64[op.index] + U32)), None)
    first_txt = ("-" if first is None else
                 f"op {first.index} {first.dst.name} ({describe_op(cm32, first)}): local "
                 f"{l32[first.index]:.1e} vs f64 {l64[first.index]:.1e}")
    top = sorted(has_rows, key=lambda k: -l32[k])[:3]
    top_txt = "; ".join(f"op {k} {program.ops[k].dst.name} {l32[k]:.1e}" for k in top)
    print(f"{name:9s} {' '.join(f'{k}={v}' for k, v in params.items()):15s} {target:5s} "
          f"f32 {err32:8.1e}  f64 {err64:8.1e}  | first f32 > 10x: {first_txt} | top local: "
          f"{top_txt}  [{c32:.0f}+{r32:.0f} s]", flush=True)
    if show_ops:
        print(f"  {'op':>4s} {'register':10s} {'glob32':>8s} {'loc32':>8s} {'glob64':>8s} "
              f"{'loc64':>8s}  gadget / source")
        for op in program.ops:
            k = op.index
            if k not in has_rows:
                continue
            print(f"  {k:4d} {op.dst.name:10s} {g32[k]:8.1e} {l32[k]:8.1e} {g64[k]:8.1e} "
                  f"{l64[k]:8.1e}  {describe_op(cm32, op)}  [{op.source}]")
    return {"case": f"{name} {' '.join(f'{k}={v}' for k, v in params.items())}",
            "target": target, "f32": err32, "f64": err64,
            "acc": cm32.layout["monitor"]["calibration"]["accepted"],
            "first": "-" if first is None else f"op {first.index} {first.dst.name}",
            "top": f"op {top[0]} {program.ops[top[0]].dst.name}" if top else "-"}


def table(cases, targets, problems: int = 200, show_ops: bool = False,
          overrides: dict | None = None, pairs=()) -> str:
    """Every (case, target)'s row, then those of `pairs` ((case, target) each), as a markdown
    table (run_case prints each row as it goes)."""
    todo = [(text, target) for text in cases for target in targets] + list(pairs)
    rows = [run_case(text, target, problems, show_ops, overrides) for text, target in todo]
    lines = [f"| {'program, size':24s} | target | float32 error | float64 error | float32 "
             f"accepted | first f32 > 10x | largest f32 local |",
             f"|{'-' * 26}|--------|---------------|---------------|------------------"
             f"|-----------------|-------------------|"]
    for r in rows:
        lines.append(f"| {r['case']:24s} | {r['target']:6s} | {r['f32']:13.1e} | "
                     f"{r['f64']:13.1e} | {r['acc']:16.1%} | {r['first']:15s} | "
                     f"{r['top']:17s} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=DEFAULT_CASES,
                    help='"program k=v ..." each (default: issue 19\'s)')
    ap.add_argument("--targets", nargs="*", default=["paper", "gpt2"])
    ap.add_argument("--problems", type=int, default=200, help="prompts per prompt set")
    ap.add_argument("--ops", action="store_true", help="every op's errors")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="CompilerConfig fields for the float32 model (an experiment)")
    args = ap.parse_args()
    print(f"{args.problems} prompts x ~ N(0, I) noiseless (seed 1001) and noise 0.5 (seed "
          f"1002); error = |pred - interp| / max(|interp|, 1), max over both sets")
    warnings.simplefilter("ignore", RuntimeWarning)
    overrides = {k: (None if v == "None" else int(v) if k.endswith("passes") else float(v))
                 for k, v in (kv.split("=") for kv in args.set)}
    print()
    print(table(args.cases, args.targets, args.problems, args.ops, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
