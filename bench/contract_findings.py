"""What refuses a compiled model's prompts: the monitor's findings counted by kind, with the
forward enclosure alone and with the adjoint bound (divisors included), on one program.

    python bench/contract_findings.py "ridge d=8 n=8" --dtype float32
    python bench/contract_findings.py "sgd d=8 n=16" --arch gpt2 --prompts 128

The program is compiled with its file's DOMAIN, CompilerConfig.for_dtype(dtype, tolerance=the
file's contract tolerance for dtype, min_acceptance=0) so that a model whose bounds refuse its
calibration prompts is still built, and run there (a float32 model in float32). `--prompts`
prompts (default 64) x, w ~ N(0, I), noise 0.5, seed `--seed` (default 3). For each adjoint mode
('off': the forward enclosure; 'always': the adjoint bound, and divisors' bounds tightened by
their own adjoints) it prints the share accepted, the prompts refused by each quantity, and,
over the prompts the prediction bound refuses, the median and largest of each one's largest
relative bound. One torch thread.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raspicl.compiler import CompilerConfig  # noqa: E402
from raspicl.contract import PREDICTION_BOUND, check_contract  # noqa: E402
from raspicl.prompts import PromptDistribution  # noqa: E402
from raspicl.registry import find_program  # noqa: E402
from raspicl.verify import compile_checked, contract_tolerance_for  # noqa: E402

torch.set_num_threads(1)
MODES = ("off", "always")


@dataclass(frozen=True)
class Findings:
    """One adjoint mode's outcome on the prompts."""

    mode: str
    accepted: float  # share of prompts
    prompts_by_quantity: dict[str, int]  # prompts with at least one finding of that quantity
    # over the prompts the prediction bound refuses, each prompt's largest relative bound:
    # (median, max); None if it refuses none
    bound_range: tuple[float, float] | None


def measure(case: str, dtype: str = "float64", arch: str = "paper", prompts: int = 64,
            seed: int = 3) -> list[Findings]:
    """The findings of each mode in MODES on `case` ("program k=v ...")."""
    name, *kv = case.split()
    params = {k: int(v) for k, v in (x.split("=") for x in kv)}
    pf = find_program(name)
    program = pf.build(**params)
    config = CompilerConfig.for_dtype(dtype, tolerance=contract_tolerance_for(pf, dtype),
                                      min_acceptance=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_checked(pf, program, dtype, config=config, arch=arch)
    batch = PromptDistribution(1.0, 1.0, 0.5).sample(prompts, program.d, program.n, seed)
    res = cm.residuals(batch, check="ignore")
    out = []
    for mode in MODES:
        rep = check_contract(cm.layout, res, dtype, adjoint=mode)
        by = Counter()
        for q in {(f.prompt, f.quantity) for f in rep.findings}:
            by[q[1]] += 1
        worst: dict[int, float] = {}
        for f in rep.findings:
            if f.quantity == PREDICTION_BOUND:
                worst[f.prompt] = max(worst.get(f.prompt, 0.0), f.value)
        vals = list(worst.values())
        out.append(Findings(mode, float(rep.accepted.mean()), dict(by),
                            (float(np.median(vals)), max(vals)) if vals else None))
    return out


def report(case: str, dtype: str = "float64", arch: str = "paper", prompts: int = 64,
           seed: int = 3) -> str:
    """What the command prints (docs/generate.py quotes it in docs/compiler.md)."""
    lines = [f"{case}, {arch}, {dtype}: {prompts} prompts (seed {seed})"]
    for f in measure(case, dtype, arch, prompts, seed):
        rng = "" if f.bound_range is None else \
            f"; relative bound where it refuses: median {f.bound_range[0]:.2g}, max " \
            f"{f.bound_range[1]:.2g}"
        lines.append(f"  adjoint {f.mode:6s}: accepted {f.accepted:.1%}; prompts refused by "
                     f"{f.prompts_by_quantity or 'nothing'}{rng}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", help='"program k=v ..."')
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--arch", default="paper", choices=("paper", "gpt2"))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    print(report(args.case, args.dtype, args.arch, args.prompts, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
