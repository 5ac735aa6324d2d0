"""float32 batch_gd d=2 n=4 T=4 with and without `CompilerConfig.product_range`: the largest
prediction error against the interpreter over `raspicl verify`'s 1000 prompts (seed 0), the
prompt where it occurs and whether the monitor accepts it, and the largest accepted error.

    python bench/product_range.py

Each model is compiled as `raspicl verify` compiles it (raspicl.verify.compile_checked: the
file's DOMAIN and float32 contract tolerance), once with the float32 default product_range
(0.1) and once with None (product scales as calibrated, not raised), and run with
check="warn". Error: |prediction - interpreter| / max(|interpreter|, 1), per prompt the
largest over its outputs. One torch thread.
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
from raspicl.verify import compile_checked, contract_tolerance_for, in_domain_mask  # noqa: E402

torch.set_num_threads(1)
PARAMS = {"d": 2, "n": 4, "T": 4}


def main() -> int:
    pf = find_program("batch_gd")
    program = pf.build(**PARAMS)
    prompts = random_prompts(1000, PARAMS["d"], PARAMS["n"], 0)
    want = np.asarray(interpret(program, prompts).output())
    print("batch_gd d=2 n=4 T=4 float32, 1000 prompts (seed 0)")
    for label, extra in (("default", {}), ("None", {"product_range": None})):
        config = CompilerConfig.for_dtype("float32",
                                          tolerance=contract_tolerance_for(pf, "float32"),
                                          **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = compile_checked(pf, program, "float32", config=config)
            run = cm.run(prompts, check="warn")
        got = run.values.reshape(want.shape)
        err = (np.abs(got - want) / np.maximum(np.abs(want), 1.0)).reshape(len(got), -1).max(1)
        k = int(np.nanargmax(err))
        inside = in_domain_mask(cm.layout, prompts)
        print(f"  product_range {label:7s} ({config.product_range}): largest error "
              f"{err[k]:.2g} at prompt {k} (in domain: {bool(inside[k])}, accepted: "
              f"{bool(run.accepted[k])}); largest accepted error {err[run.accepted].max():.2g}; "
              f"accepted {run.accepted.mean():.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
