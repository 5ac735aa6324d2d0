"""Redraw the example PNGs under docs/img that the docs' own commands make, so that none is
drawn by hand or left in an old style.

    python docs/images.py                 every image below
    python docs/images.py NAME ...        some of them (names as in IMAGES)

IMAGES says how each is made, with the commands the page shows, in a scratch directory:

    momentum_block02       tutorial.md §10: plot_blocks on the tutorial's compiled momentum.py,
                           block 2 (tests/test_tutorial.py checks that it has the size the
                           tutorial's code draws)
    error_compiled_ridge   experiments.md, compiled controls: `raspicl compare` on the compiled
                           ridge (d=3 n=9 lam=0.5) at noise 0.5, its error.png
    probe_compiled_ridge   experiments.md: `raspicl probe --target program --target w_ols
                           --target xty` on the same model, its probe.png

The other PNGs there (error_d3_*, probe_d3_*) are `raspicl compare` and `raspicl probe` on the
trained runs of experiments.md (hours of training on a CPU) and are not redrawn here. Run with
one thread (OMP_NUM_THREADS=1); the two experiments images take about two minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
IMG = DOCS / "img"
sys.path.insert(0, str(DOCS))

import generate  # noqa: E402  (docs/generate.py: its scratch directory and CLI runner)


def momentum_block02() -> Path:
    """Block 2 of the tutorial's model, compiled and drawn as the tutorial does (§7, §10)."""
    import warnings

    from raspicl.compiler import CompilerConfig, compile_program
    from raspicl.inspect import plot_blocks
    from raspicl.registry import find_program

    work = generate._tutorial_dir()
    sys.path.insert(0, str(work))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = compile_program(find_program(str(work / "momentum.py")).build(),
                                 CompilerConfig(tolerance=1e-6))
    finally:
        sys.path.remove(str(work))
    paths = plot_blocks(cm, work / "out" / "momentum-plots")
    return next(p for p in paths if p.name == "block02.png")


def _ridge() -> Path:
    model = generate._scratch() / "ctl" / "ridge"
    if not model.exists():
        generate._cli("compile", "ridge", "--set", "d=3", "--set", "n=9", "--set", "lam=0.5",
                      "--out", str(model), cwd=generate._scratch())
    return model


def error_compiled_ridge() -> Path:
    out = generate._scratch() / "ctl" / "cmp_ridge_0.5"
    generate._cli("compare", str(_ridge()), "--noise", "0.5", "--out", str(out),
                  cwd=generate._scratch())
    return out / "error.png"


def probe_compiled_ridge() -> Path:
    out = generate._scratch() / "ctl" / "probe_ridge"
    generate._cli("probe", str(_ridge()), "--target", "program", "--target", "w_ols",
                  "--target", "xty", "--out", str(out), cwd=generate._scratch())
    return out / "probe.png"


IMAGES: dict[str, Callable[[], Path]] = {
    "momentum_block02": momentum_block02,
    "error_compiled_ridge": error_compiled_ridge,
    "probe_compiled_ridge": probe_compiled_ridge,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"images to redraw (default all: {', '.join(IMAGES)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in IMAGES]
    if unknown:
        parser.error(f"unknown images {unknown}; images are {', '.join(IMAGES)}")
    for name in args.names or IMAGES:
        drawn = IMAGES[name]()
        if not drawn.is_file():
            print(f"{name}: the command drew no {drawn}", file=sys.stderr)
            return 1
        shutil.copyfile(drawn, IMG / f"{name}.png")
        print(f"wrote {(IMG / f'{name}.png').relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
