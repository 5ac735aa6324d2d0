"""Before/after table of the fusion pass (compiler/fusion.py) for every bundled program.

    python bench/fusion.py            # every GRID entry, float64, unrolled (and shared loops)

For each program and GRID entry it compiles twice, with CompilerConfig(fusion=False) (every op
as written) and with the default (fusion on), and prints blocks run, the critical-path depth
(the lower bound any schedule of the op kinds meets), d_model and parameters of both, and how
many values were fused. Sizes only: verify and the property tests check the models.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.registry import bundled_programs  # noqa: E402


def sizes(pf, params: dict, fusion: bool, loops: str) -> dict:
    with warnings.catch_warnings():  # sizes only
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(pf.build(**params), CompilerConfig(fusion=fusion), loops=loops)
    s = cm.summary()
    depth = cm.layout["depth"]
    return {
        "run": s["blocks_run"],
        "crit": depth["critical_path"],
        "d_model": s["d_model"],
        "params": s["params"],
        "fused": len(depth["fused"]),
    }


def main() -> int:
    torch.set_num_threads(1)
    head = (
        f"{'program':17s} {'params':20s} {'loops':6s} {'crit':>4s} | {'blocks':>6s} "
        f"{'d_model':>7s} {'params':>9s} | {'blocks':>6s} {'d_model':>7s} {'params':>9s} "
        f"{'fused':>5s}"
    )
    print(f"{'':50s}| {'before (fusion=False)':24s} | after (default)")
    print(head)
    print("-" * len(head))
    for pf in bundled_programs():
        name = pf.name
        for params in pf.grid:
            has_loop = any(op.loop is not None for op in pf.build(**params).ops)
            for loops in ("unroll", "share") if has_loop else ("unroll",):
                a, b = sizes(pf, params, False, loops), sizes(pf, params, True, loops)
                shown = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                print(
                    f"{name:17s} {shown:20s} {loops:6s} {a['crit']:4d} | {a['run']:6d} "
                    f"{a['d_model']:7d} {a['params']:9d} | {b['run']:6d} {b['d_model']:7d} "
                    f"{b['params']:9d} {b['fused']:5d}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
