"""What the gpt2 target costs against paper, for every bundled program at every GRID entry.

    python bench/arch_compare.py [--problems 1000] [PROGRAM ...]   # a markdown table

For each (program, params) it runs `raspicl verify`'s checks (raspicl.verify.verify_program,
seed 0) on both targets in float64 and float32 and prints blocks run, d_model, parameters, the
compiled prediction's error against the program's numpy solver (|a - b| / max(|b|, 1)) in both
dtypes, the share of problems the runtime contract accepts in float32, and whether every check
passed (P: all four passed; F: the failing target/dtype is named). docs/size.md shows its
table (`python docs/generate.py --only size-arch-compare`). Torch runs on 1 thread
(raspicl.model.threads_for).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.registry import bundled_programs, find_program  # noqa: E402
from raspicl.verify import verify_program  # noqa: E402

ARCHS = ("paper", "gpt2")
DTYPES = ("float64", "float32")


def _pair(a, b, fmt: str = "{}") -> str:
    return f"{fmt.format(a)} / {fmt.format(b)}"


HEADER = ("| program | params | blocks paper / gpt2 | d_model paper / gpt2 | parameters paper / "
          "gpt2 | float64 error paper / gpt2 | float32 error paper / gpt2 | float32 accepted "
          "paper / gpt2 | checks |\n|---|---|---|---|---|---|---|---|---|")


def rows(programs: list[str] | None = None, problems: int = 1000):
    """One markdown row per (program, GRID entry), as it is measured, and whether every check
    of that row passed."""
    pfs = [find_program(p) for p in programs] if programs else bundled_programs()
    for pf in pfs:
        for params in pf.grid:
            res = {}
            for arch in ARCHS:
                for dt in DTYPES:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ContractWarning)
                        res[arch, dt] = verify_program(pf, params, dt, problems=problems,
                                                       symbolic=False, arch=arch)
            bad = [f"{a} {d}" for (a, d), r in res.items() if not r.passed]
            p64, g64 = res["paper", "float64"], res["gpt2", "float64"]
            p32, g32 = res["paper", "float32"], res["gpt2", "float32"]
            text = " ".join(f"{k}={v}" for k, v in params.items())
            yield (f"| {pf.name} | {text} | {_pair(p64.blocks, g64.blocks)} | "
                   f"{_pair(p64.d_model, g64.d_model)} | {_pair(p64.n_params, g64.n_params)} | "
                   f"{_pair(p64.err_model_solver, g64.err_model_solver, '{:.1e}')} | "
                   f"{_pair(p32.err_model_solver, g32.err_model_solver, '{:.1e}')} | "
                   f"{_pair(100 * p32.accepted, 100 * g32.accepted, '{:.1f}%')} | "
                   f"{'F: ' + ', '.join(bad) if bad else 'P'} |"), not bad


def table(programs: list[str] | None = None, problems: int = 1000) -> str:
    """The whole table (docs/size.md's figure size-arch-compare)."""
    return "\n".join([HEADER, *(row for row, _ in rows(programs, problems))])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("programs", nargs="*", help="program names (default: every bundled one)")
    ap.add_argument("--problems", type=int, default=1000)
    args = ap.parse_args(argv)
    print(f"torch threads per forward pass {threads_for()}; {args.problems} problems, seed 0\n")
    print(HEADER)
    failed = 0
    for row, ok in rows(args.programs, args.problems):
        print(row, flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
