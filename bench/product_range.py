"""float32 batch_gd d=2 n=4 T=4, a program whose GD diverges on rare in-domain prompts (an
example with |x|^2 > 1 / lr), with and without `CompilerConfig.product_range`, at the default
step lr = 0.1 and at the stable lr = 0.05 that `raspicl verify`'s GRID uses: the largest
prediction error against the interpreter over 4 x 5000 prompts x, w ~ N(0, I) (seeds 0-3, the
program's DOMAIN), how many prompts err beyond the float32 tolerance, and the share the
monitor accepts.

    python bench/product_range.py

Each model is compiled as `raspicl verify` compiles it (raspicl.verify.compile_checked: the
file's DOMAIN and float32 contract tolerance) and run with check="warn". Error:
|prediction - interpreter| / max(|interpreter|, 1), per prompt the largest over its outputs.
docs/compiler.md shows the table (`python docs/generate.py --only compiler-product-range`).
One torch thread.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raspicl import interpret  # noqa: E402
from raspicl.compiler import CompilerConfig  # noqa: E402
from raspicl.prompts import random_prompts  # noqa: E402
from raspicl.registry import find_program  # noqa: E402
from raspicl.verify import compile_checked, contract_tolerance_for, tolerance_for  # noqa: E402

torch.set_num_threads(1)
PARAMS = {"d": 2, "n": 4, "T": 4}
PROMPTS = 5000  # per seed
SEEDS = (0, 1, 2, 3)
STEPS = (0.1, 0.05)
RANGES = (0.1, None)  # the float32 default, and no raise


def table() -> str:
    """One row per step and product_range."""
    pf = find_program("batch_gd")
    tol = tolerance_for(pf, "float32")
    sets = [random_prompts(PROMPTS, PARAMS["d"], PARAMS["n"], seed) for seed in SEEDS]
    lines = [f"batch_gd d=2 n=4 T=4 float32, {len(SEEDS)} x {PROMPTS} prompts (seeds "
             f"{SEEDS[0]}-{SEEDS[-1]}), tolerance {tol:g}",
             f"{'lr':>5s} {'product_range':>13s} {'largest error':>13s} {'> tol':>6s} "
             f"{'accepted':>9s} {'largest accepted error':>23s}"]
    for lr in STEPS:
        program = pf.build(**PARAMS, lr=lr)
        wants = [np.asarray(interpret(program, prompts).output()) for prompts in sets]
        for product_range in RANGES:
            config = CompilerConfig.for_dtype(
                "float32", tolerance=contract_tolerance_for(pf, "float32"),
                product_range=product_range)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cm = compile_checked(pf, program, "float32", config=config)
                runs = [cm.run(prompts, check="warn") for prompts in sets]
            err = np.concatenate([
                (np.abs(run.values.reshape(want.shape) - want)
                 / np.maximum(np.abs(want), 1.0)).reshape(len(want), -1).max(1)
                for run, want in zip(runs, wants)])
            accepted = np.concatenate([run.accepted for run in runs])
            lines.append(f"{lr:5g} {str(product_range):>13s} {np.nanmax(err):13.2g} "
                         f"{int((err > tol).sum()):6d} {accepted.mean():9.2%} "
                         f"{err[accepted].max():23.2g}")
    return "\n".join(lines)


def main() -> int:
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
