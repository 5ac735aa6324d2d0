"""The runtime contract on every bundled program: how much it accepts, whether it ever lies,
and how tight its error bound is.

    python bench/contract.py                  # every program, every GRID entry, both dtypes
    python bench/contract.py --quick          # the first two GRID entries per program
    python bench/contract.py --paper-sizes    # the paper's sizes (d = 8), both targets
    python bench/contract.py --programs gd_step ridge --dtype float32 --problems 200

Each (program, parameters, dtype) is compiled as `raspicl verify` compiles it: with the program
file's DOMAIN (None: the compiler's default PromptDistribution(), x std 1.5, noise 1) and
CompilerConfig.for_dtype(dtype, tolerance=contract_tolerance_for(pf, dtype)); float32 models
are compiled for float32 and then moved there with cm.to(torch.float32). Every model then runs
one forward pass per prompt set (cm.residuals(prompts, check="ignore")), the monitor walks it
(cm.contract), and the prediction (cm.readout) is compared with the float64 interpreter's.

Prompt sets (`--problems` prompts each, PromptDistribution(x_std, 1, noise).sample with a fixed
seed per set): x ~ N(0, I) noiseless; noise 0.5; noise 1; x std 1.5 with noise 1; x std 2 with
noise 1; and "x*0.05": x ~ N(0, 0.05^2 I), noiseless, so that |x| (and |y| = |w^T x|) is
small. It is the "small divisors" set: a divisor that scales with |x| would get small there.
None of the bundled ones does (sherman_morrison's and ridge's are 1 + x^T A^-1 x ~ 1, newton's
tr S + lam ~ lam), so what it exercises is products whose operands sit far below the scale the
gadgets were set for (their rounding is relative to the calibrated bound, not to the operand).

Columns: acc% the fraction of prompts the contract accepts; err(acc) the largest relative
error |got - want| / max(|want|, 1) over accepted prompts; VIOL the accepted predictions whose
|got - want| exceeds their bound or tolerance * max(|want|, 1) (must be 0: printed loudly);
tight the median of bound / |got - want| over accepted predictions with |got - want| > 0 (how
many times the bound overestimates the error); err(all) the largest relative error over every
prompt, accepted or not; refused-by the monitor's most common finding among refused prompts.
`dom` marks prompt sets inside the program's domain (x std and noise no larger than its), '-'
outside it.

The last lines: total violations, ContractWarnings raised at compile time (suppressed, counted),
and every (program, params, dtype) that accepts less than 99% of a prompt set with noise <= 1
and x std <= 1.5 (the first four sets), with the set. A full run (all GRIDs, both dtypes, 1000
prompts) took about 2.5 minutes here on one thread; the large instances (newton d=4, ridge
d=4 n=4, sherman_morrison d=8) dominate. The numpy RuntimeWarnings the monitor's walk raises
(inf * 0 where a bound is already infinite) are suppressed and counted.

The thread count is set to 1 on purpose (this machine has 2 shared cores; torch at 2 threads
is far slower there).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import raspicl  # noqa: E402
from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.errors import CompileError, ContractWarning  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.prompts import PromptDistribution  # noqa: E402
from raspicl.registry import bundled_programs, find_program  # noqa: E402
from raspicl.verify import contract_tolerance_for  # noqa: E402

torch.set_num_threads(1)

# (name, x std, noise, seed); the first four are the "noise <= 1, x std <= 1.5" sets
PROMPT_SETS = [
    ("x~N(0,I)", 1.0, 0.0, 1001),
    ("noise 0.5", 1.0, 0.5, 1002),
    ("noise 1", 1.0, 1.0, 1003),
    ("x 1.5 n 1", 1.5, 1.0, 1004),
    ("x 2 n 1", 2.0, 1.0, 1005),
    ("x*0.05", 0.05, 0.0, 1006),
]
CORE_SETS = {s[0] for s in PROMPT_SETS[:4]}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


# The paper's sizes (the certificate issue's d = 8 models), for --paper-sizes.
PAPER_SIZES = {
    "gd_step": [{"d": 8}], "sherman_morrison": [{"d": 8}], "sgd": [{"d": 8, "n": 16}],
    "ridge": [{"d": 8, "n": 16}], "batch_gd": [{"d": 8, "n": 16, "T": 4}],
    "newton": [{"d": 8, "n": 16, "T": 6}], "nlms": [{"d": 8, "n": 8}],
}


def compile_for(pf, params: dict, dtype: str, arch: str = "paper"):
    """The compiled model as `raspicl verify` builds it, and the ContractWarnings raised."""
    program = pf.build(**params)
    config = CompilerConfig.for_dtype(dtype, tolerance=contract_tolerance_for(pf, dtype))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ContractWarning)
        cm = compile_program(program, config, domain=pf.domain, arch=arch)
    n_warn = sum(issubclass(w.category, ContractWarning) for w in caught)
    if dtype == "float32":
        cm = cm.to(torch.float32)
    return program, config, cm, n_warn


def measure_set(program, config, cm, x_std: float, noise: float, seed: int, problems: int,
                adjoint: str = "always"):
    prompts = PromptDistribution(x_std, 1.0, noise).sample(problems, program.d, program.n, seed)
    res = cm.residuals(prompts, check="ignore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        rep = cm.contract(res, adjoint=adjoint)
    numpy_warnings = sum(issubclass(w.category, RuntimeWarning) for w in caught)
    got = cm.readout(res[-1])
    want = raspicl.interpret(program, prompts).output()
    want = np.asarray(want, dtype=np.float64).reshape(got.shape)
    finite = np.isfinite(want)
    diff = np.where(finite, np.abs(got - want), 0.0)
    diff = np.nan_to_num(diff, nan=np.inf)
    scale = np.maximum(np.abs(np.where(finite, want, 0.0)), 1.0)
    rel = diff / scale
    acc = rep.accepted[:, None, None] & finite
    tol = config.contract_tolerance
    viol = acc & ((diff > rep.bound) | (diff > tol * scale))
    pos = acc & (diff > 0)
    ratios = rep.bound[pos] / diff[pos]
    refused = ~rep.accepted
    kinds = Counter()
    for q in {(f.prompt, f.quantity) for f in rep.findings}:
        kinds[q[1]] += 1
    return {
        "accepted": float(rep.accepted.mean()),
        "any_accepted": bool(acc.any()),
        "numpy_warnings": numpy_warnings,
        "err_acc": float(rel[acc].max(initial=0.0)),
        "viol": int(viol.sum()),
        "viol_worst": float((diff / np.maximum(rep.bound, 1e-300))[viol].max(initial=0.0)),
        "tight": float(np.median(ratios)) if ratios.size else float("nan"),
        "tight_max": float(np.max(ratios)) if ratios.size else float("nan"),
        "err_all": float(np.where(finite, rel, 0.0).max(initial=0.0)),
        "refused_by": (f"{kinds.most_common(1)[0][0]} ({kinds.most_common(1)[0][1]})"
                       if refused.any() and kinds else "-"),
    }


def in_domain(pf, x_std: float, noise: float) -> bool:
    dom = pf.domain or PromptDistribution()
    return x_std <= dom.x_scale and noise <= dom.noise


def print_models(models: list) -> None:
    """One line per model: acceptance on every prompt set, the median tightness over the
    sets, the largest accepted error, the bound's tolerance and compile-time ContractWarning."""
    sets = [s[0] for s in PROMPT_SETS]
    head = (f"{'program':16s} {'params':24s} {'dtype':7s} {'tol':>5s} "
            + " ".join(f"{s:>9s}" for s in sets)
            + f" {'tight':>6s} {'max':>8s} {'err(acc)':>8s} CW")
    print("acceptance (%) per prompt set; tight: median over the sets, max: the largest "
          "bound / error of any accepted prediction; err(acc): largest over "
          "the sets; CW: ContractWarning at compile")
    print(head)
    print("-" * len(head))
    for name, params, dtype, tol, n_warn, row in models:
        tights = [m["tight"] for m in row if np.isfinite(m["tight"])]
        tight = f"{np.median(tights):6.0f}" if tights else f"{'-':>6s}"
        worst = max((m["tight_max"] for m in row if np.isfinite(m["tight_max"])), default=None)
        tight += f" {worst:8.2g}" if worst is not None else f" {'-':>8s}"
        err = max((m["err_acc"] for m in row if m["any_accepted"]), default=float("nan"))
        print(f"{name:16s} {params:24s} {dtype:7s} {tol:5.0e} "
              + " ".join(f"{100 * m['accepted']:9.1f}" for m in row)
              + f" {tight} {err:8.1e} {'yes' if n_warn else '-'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", nargs="*", help="program names (default: every bundled one)")
    ap.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    ap.add_argument("--problems", type=int, default=1000, help="prompts per prompt set")
    ap.add_argument("--quick", action="store_true", help="the first two GRID entries only")
    ap.add_argument("--paper-sizes", action="store_true",
                    help="the paper's sizes (PAPER_SIZES, d = 8) on both targets, not the GRIDs")
    ap.add_argument("--arch", choices=["paper", "gpt2", "both"], default=None,
                    help="target (default: paper for the GRIDs, both for --paper-sizes)")
    ap.add_argument("--adjoint", default="always", choices=["always", "needed", "off"],
                    help="which bound the monitor reports (raspicl.contract.check_contract): "
                         "'always' the smaller of the forward and adjoint bounds everywhere "
                         "(default: the tightness measured), 'needed' what CompiledModel.run "
                         "does (the same acceptance), 'off' the forward enclosure alone")
    args = ap.parse_args()
    pfs = ([find_program(p) for p in args.programs] if args.programs else bundled_programs())
    if args.paper_sizes:
        pfs = [pf for pf in pfs if pf.name in PAPER_SIZES]
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    arch = args.arch or ("both" if args.paper_sizes else "paper")
    archs = ["paper", "gpt2"] if arch == "both" else [arch]
    print(f"bound: adjoint={args.adjoint!r}; targets: {', '.join(archs)}")
    head = (f"{'program':16s} {'params':19s} {'dtype':7s} {'prompts':10s} {'dom':3s} "
            f"{'acc%':>6s} {'err(acc)':>9s} {'VIOL':>5s} {'tight':>8s} {'err(all)':>9s}  "
            f"refused-by")
    print(head)
    print("-" * len(head))
    total_viol, total_warn, total_np, low, failed, models = 0, 0, 0, [], [], []
    start = time.perf_counter()
    for pf in pfs:
        grid = PAPER_SIZES[pf.name] if args.paper_sizes else \
            (pf.grid[:2] if args.quick else pf.grid)
        for params, target, dtype in [(p, a, d) for p in grid for a in archs for d in dtypes]:
            name_params = fmt_params(params) + ("" if target == "paper" else " gpt2")
            try:
                program, config, cm, n_warn = compile_for(pf, params, dtype, target)
            except CompileError as exc:
                failed.append((pf.name, name_params, dtype))
                print(f"{pf.name:16s} {name_params:19s} {dtype:7s} COMPILE ERROR: "
                      f"{' '.join(str(exc).split())[:300]}")
                continue
            total_warn += n_warn
            tag = f" (ContractWarning x{n_warn} at compile)" if n_warn else ""
            row: list[dict] = []
            for name, x_std, noise, seed in PROMPT_SETS:
                m = measure_set(program, config, cm, x_std, noise, seed, args.problems,
                            args.adjoint)
                total_viol += m["viol"]
                total_np += m["numpy_warnings"]
                dom = "yes" if in_domain(pf, x_std, noise) else "-"
                err_acc = f"{m['err_acc']:9.1e}" if m["any_accepted"] else f"{'-':>9s}"
                tight = f"{m['tight']:8.1e}" if np.isfinite(m["tight"]) else f"{'-':>8s}"
                print(f"{pf.name:16s} {name_params:19s} {dtype:7s} {name:10s} "
                      f"{dom:3s} {100 * m['accepted']:6.1f} {err_acc} "
                      f"{m['viol']:5d} {tight} {m['err_all']:9.1e}  "
                      f"{m['refused_by']}{tag}", flush=True)
                row.append(m)
                tag = ""
                if m["viol"]:
                    print(f"  !!! CONTRACT VIOLATED: {m['viol']} accepted predictions off by "
                          f"more than their bound or the tolerance "
                          f"{config.contract_tolerance:g} (worst |err| / bound = "
                          f"{m['viol_worst']:.3g}) !!!", flush=True)
                if name in CORE_SETS and m["accepted"] < 0.99:
                    low.append((pf.name, name_params, dtype, name,
                                100 * m["accepted"], dom == "yes"))
            models.append((pf.name, name_params, dtype, config.contract_tolerance,
                           n_warn, row))
    print()
    print_models(models)
    print()
    print(f"{total_viol} contract violations in total"
          + ("" if total_viol == 0 else "  !!! THE CONTRACT WAS BROKEN !!!"))
    print(f"{total_warn} ContractWarnings at compile time (suppressed); "
          f"{len(failed)} compile errors{': ' + str(failed) if failed else ''}; "
          f"{total_np} numpy RuntimeWarnings inside the monitor's walk (suppressed)")
    if low:
        print("acceptance below 99% on a prompt set with noise <= 1 and x std <= 1.5:")
        for name, params, dtype, pset, acc, dom in low:
            print(f"  ({name}, {params}, {dtype}) on {pset}: {acc:.1f}%"
                  + ("" if dom else "  [outside the program's DOMAIN]"))
    else:
        print("acceptance >= 99% on every prompt set with noise <= 1 and x std <= 1.5")
    print(f"{time.perf_counter() - start:.0f} s, {args.problems} prompts per set, "
          f"torch threads per forward pass {threads_for()} (raspicl.model.threads_for)")
    return 1 if total_viol else 0


if __name__ == "__main__":
    sys.exit(main())
