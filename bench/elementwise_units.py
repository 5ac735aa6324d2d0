"""Units against epsilon for every library function of `p.apply` (the table in
docs/compiler.md, "Elementwise functions").

For each function on a fixed range and each target epsilon, the hidden units per component that
compiler/gadgets/elementwise.py builds (the GeLU units plus the exact affine pair), for the erf
GeLU (paper) and the tanh GeLU (gpt2), each certified within epsilon; "-" where no K up to
config.apply_max_units (256) is certified. Beside them, for comparison with Bai et al. (2023)'s
sums of ReLUs, the ReLUs of a piecewise-linear interpolant certified the same way: knots placed
greedily from lo, each interval as wide as h^2 / 8 sup|f''| <= epsilon allows (sup |f''| over
the interval from lang/functions.py), one ReLU per inner knot plus the linear part (2 units).

    python bench/elementwise_units.py                 # the table (a few minutes, one thread)
    python bench/elementwise_units.py --eps 1e-3 1e-5 # other targets
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from raspicl.compiler import CompilerConfig  # noqa: E402
from raspicl.compiler.gadgets.elementwise import ElementwiseGadget, build_gadget  # noqa: E402
from raspicl.lang.functions import elementwise  # noqa: E402

CASES = (("sigmoid", (-12.0, 12.0), None), ("tanh", (-6.0, 6.0), None),
         ("softplus", (-10.0, 10.0), None), ("exp", (-4.0, 2.0), None),
         ("log", (0.1, 10.0), None), ("inv_sqrt", (0.1, 10.0), None),
         ("relu", (-6.0, 6.0), None), ("soft_threshold", (-6.0, 6.0), 0.5))
EPSILONS = (1e-3, 1e-5, 1e-7, 1e-9)


def relu_units(fn, epsilon: float) -> int:
    """Units of the certified piecewise-linear interpolant (module doc); a kinked function's
    own kinks are its knots, exactly."""
    if fn.kinks:  # ReLU itself: one; the soft-threshold: two and the linear pair
        return len(fn.kinks) + (0 if fn.name == "relu" else 2)
    knots, v = 1, fn.lo
    while v < fn.hi:
        h = fn.hi - v
        while h * h / 8.0 * float(fn.curvature_bound(v, min(v + h, fn.hi))) > epsilon:
            h *= 0.9
        v += h
        knots += 1
    return (knots - 2) + 2


def units(fn, form: str, epsilon: float, config: CompilerConfig) -> str:
    """The gadget's units per component, or "-" where none up to apply_max_units is
    certified within epsilon."""
    g = build_gadget(fn, form, epsilon, config.apply_sharpness, config.apply_max_units,
                     config.apply_ghost_units)
    return str(g.units) if isinstance(g, ElementwiseGadget) else "-"


def table(epsilons=EPSILONS) -> str:
    """The markdown table (module doc)."""
    torch.set_num_threads(1)
    config = CompilerConfig()
    head = ("| function | range | " + " | ".join(f"ε = {e:g}" for e in epsilons) + " |")
    rule = "|---|---|" + "---|" * len(epsilons)
    lines = [head, rule]
    for name, rng, lam in CASES:
        fn = elementwise(name, rng, lam)
        cells = []
        for e in epsilons:
            erf, tanh = units(fn, "none", e, config), units(fn, "tanh", e, config)
            cells.append(f"{erf} / {tanh} / {relu_units(fn, e)}")
        label = f"{name} (λ = {lam:g})" if lam is not None else name
        lines.append(f"| {label} | [{rng[0]:g}, {rng[1]:g}] | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eps", type=float, nargs="+", default=list(EPSILONS))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print("units per component: erf GeLU (paper) / tanh GeLU (gpt2) / certified ReLU "
          "interpolant")
    print(table(tuple(args.eps)))
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
