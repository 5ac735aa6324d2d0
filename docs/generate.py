"""Regenerate the figures the docs quote, so that none of them is typed by hand.

A figure sits between two markers in a page,

    <!-- gen:NAME -->...<!-- /gen -->

inline in prose (a number) or around a fenced block (a command's output), and FIGURES says how
each NAME is measured: a command of the CLI run in a scratch directory, or the Python API.

    python docs/generate.py            rewrite every figure in PAGES (docs/cli.md, tutorial.md,
                                       language.md, compiler.md, benchmark.md, size.md)
    python docs/generate.py --check    exit 1 if a figure differs from what the code gives
    python docs/generate.py --quick    only the quick figures (seconds each), either way
    python docs/generate.py --only NAME ...   only the figures named, either way

A figure *matches* what the code gives when its words and sizes are the same (compared token
by token, whitespace aside) and each number in scientific notation (an error: 7.1e-12, 3e+02)
is within a factor of ERROR_FACTOR of the measured one: errors vary in their last digits from
machine to machine, sizes and acceptance do not. tests/test_doc_figures.py runs the check on the
quick figures. Run with one thread (OMP_NUM_THREADS=1), as `make` does.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = (DOCS / "cli.md", DOCS / "tutorial.md", DOCS / "language.md", DOCS / "compiler.md",
         DOCS / "benchmark.md", DOCS / "size.md")
MARKED = re.compile(r"<!-- gen:([\w-]+) -->(.*?)<!-- /gen -->", re.S)
ERROR = re.compile(r"^[-+]?\d+(\.\d+)?e[-+]\d+$")
ERROR_FACTOR = 10.0


@dataclass(frozen=True)
class Figure:
    """How to measure one figure: `make()` returns its text (a block's text includes its
    fence); quick figures take seconds and are checked by the tests."""

    make: Callable[[], str]
    quick: bool = True


def _cli(*argv: str, cwd: Path) -> str:
    """stdout of `raspicl ARGV...` run in `cwd` (status ignored: verify's 1 is a figure too)."""
    from raspicl.cli import main

    out = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main(list(argv))
    finally:
        os.chdir(old)
    return out.getvalue()


def _block(text: str) -> str:
    return "```text\n" + text.rstrip("\n") + "\n```"


@cache
def _scratch() -> Path:
    """One scratch directory per process, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="raspicl-docs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def _tutorial_dir() -> Path:
    """A scratch directory holding the files the tutorial has its reader write
    (<!-- file: NAME --> and <!-- append: NAME --> blocks), as tests/test_tutorial.py does."""
    work = _scratch() / "tutorial"
    work.mkdir()
    lines = (DOCS / "tutorial.md").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^<!--\s*(file|append):\s*(\S+)\s*-->\s*$", line.strip())
        if not m or not lines[i + 1].startswith("```"):
            continue
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        with open(work / m.group(2), "w" if m.group(1) == "file" else "a") as f:
            f.write("\n".join(lines[i + 2:end]) + "\n")
    return work


# ------------------------------------------------------------------ docs/cli.md


def cli_compile() -> str:
    return _block(_cli("compile", "gd_step", "--set", "d=4", "--out", "out/gd4",
                       cwd=_scratch()))


def cli_verify() -> str:
    return _block(_cli("verify", "gd_step", "--set", "d=2", "--dtype", "float64", "--problems",
                       "200", cwd=_scratch()))


# ------------------------------------------------------------------ docs/tutorial.md


def tutorial_verify() -> str:
    return _block(_cli("verify", "momentum.py", "--problems", "200", cwd=_tutorial_dir()))


@cache
def _momentum(size: tuple = (), dtype: str = "float64", problems: int = 500):
    """verify_program on the tutorial's momentum.py: its default size (the prompts of the
    tutorial's session: random_prompts(500, 2, 4, seed=0)) or `size`."""
    sys.path.insert(0, str(_tutorial_dir()))
    try:
        from raspicl.registry import find_program
        from raspicl.verify import verify_program

        pf = find_program(str(_tutorial_dir() / "momentum.py"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return verify_program(pf, dict(size), dtype, problems=problems, seed=0,
                                  symbolic=False)
    finally:
        sys.path.remove(str(_tutorial_dir()))


def _e(x: float) -> str:
    return f"{x:.0e}"


BIG = (("d", 4), ("n", 8), ("T", 8))


def tutorial_wout() -> str:
    """The largest |W_out| of block 2 of the tutorial's model (§10's figure)."""
    import torch

    from raspicl.compiler import CompilerConfig, compile_program
    from raspicl.registry import find_program

    pf = find_program(str(_tutorial_dir() / "momentum.py"))
    cm = compile_program(pf.build(), CompilerConfig(tolerance=1e-6))
    return _e(float(torch.max(torch.abs(cm.model.blocks[2].mlp.W_out))))


def tutorial_accept_1e8() -> str:
    """The share of its calibration prompts the tutorial's model accepts at 1e-8 (§11)."""
    from raspicl.compiler import CompilerConfig, compile_program
    from raspicl.registry import find_program

    pf = find_program(str(_tutorial_dir() / "momentum.py"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(pf.build(), CompilerConfig(tolerance=1e-8))
    return f"{cm.layout['monitor']['calibration']['accepted']:.0%}"


# ------------------------------------------------------------------ docs/compiler.md


@cache
def _bench(name: str):
    """bench/NAME.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"raspicl_bench_{name}",
                                                  ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cse_table(which: str) -> str:
    """bench/cse_sizes.py's table of parameters without and with the CSE pass."""
    return _bench("cse_sizes").table(which)


def compiler_float32_table() -> str:
    """bench/float32_error.py's table on the cases that compile in minutes on a CPU (ridge
    d = 8 n = 8 under gpt2 takes far longer: its compile time is the limit)."""
    return _block(_bench("float32_error").table(
        ["ridge d=4 n=4"], ["paper", "gpt2"],
        pairs=[("ridge d=8 n=8", "paper"), ("batch_gd d=8 n=16 T=4", "paper")]))


def size_arch_compare() -> str:
    """bench/arch_compare.py's table: paper against gpt2 for every bundled program (minutes)."""
    return _bench("arch_compare").table()


def compiler_verify() -> str:
    """`raspicl verify` on its default grid (every bundled program, both dtypes: minutes)."""
    return _block(_cli("verify", cwd=_scratch()))


def compiler_product_range() -> str:
    """bench/product_range.py: the raise of product scales against a heavy-tailed program."""
    return _block(_bench("product_range").table())


def compiler_monitor_cost() -> str:
    """bench/monitor.py's table: cm.predict with and without the monitor (timings: seconds)."""
    return _block(_bench("monitor").table())


def compiler_divisor_findings() -> str:
    return _block(_bench("contract_findings").report("ridge d=8 n=8", "float32"))


# ------------------------------------------------------------------ docs/benchmark.md


def benchmark_leaderboard() -> str:
    """`raspicl benchmark`'s leaderboard (the full suite: minutes)."""
    import torch

    from raspicl.benchmark.suite import FULL, markdown, run_benchmark

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return markdown(run_benchmark(FULL)).rstrip("\n")
# ------------------------------------------------------------------ docs/language.md §10

HAND = ROOT / "tests" / "hand_fused"  # the hand-fused forms the bundled programs replaced
NATURAL = ROOT / "tests" / "natural"  # textbook forms that cost more than the bundled one


@cache
def _summary(program: str | Path, loops: str, size: tuple) -> dict:
    """compile_program(...).summary() of a program (a bundled name or a file) at `size` (a
    tuple of (name, value) pairs), float64, default config, loops unrolled or shared."""
    from raspicl.compiler import compile_program
    from raspicl.registry import find_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_program(find_program(str(program)).build(**dict(size)),
                               loops=loops).summary()


def _sizes(program: str | Path, *sizes: dict, loops: str = "unroll") -> str:
    """'blocks · d_model · parameters' at each size, joined by ' / ' (§10's cells); shared
    loops give their blocks as 'stored/run'."""
    cells = []
    for size in sizes:
        s = _summary(program, loops, tuple(size.items()))
        blocks = f"{s['blocks']}/{s['blocks_run']}" if loops == "share" else f"{s['blocks']}"
        cells.append(f"{blocks} · {s['d_model']} · {s['params']}")
    return " / ".join(cells)


def _learner(program: str | Path, size: dict) -> str:
    """§10's second table: 'unrolled; shared stored/run · d_model · parameters'."""
    return f"{_sizes(program, size)}; shared {_sizes(program, size, loops='share')}"


def _more_params(program: str | Path, than: str | Path, size: dict) -> str:
    """How many more parameters `program` compiles to than `than`, unrolled, in percent."""
    a, b = (_summary(p, "unroll", tuple(size.items()))["params"] for p in (program, than))
    return f"{a / b - 1:.0%}"


D2, D8 = {"d": 2}, {"d": 8}
N4 = {"d": 2, "n": 4}


def _lang(name: str, hand, text, *sizes: dict, loops: str = "unroll",
          quick: bool = False) -> dict[str, Figure]:
    """The hand-written and textbook cells of one row of §10's first table."""
    return {f"lang-{name}-hand": Figure(lambda: _sizes(hand, *sizes, loops=loops), quick),
            f"lang-{name}-text": Figure(lambda: _sizes(text, *sizes, loops=loops), quick)}


LANGUAGE: dict[str, Figure] = {
    **_lang("gd_step-ops", HAND / "gd_step.py", "gd_step", D2, quick=True),
    **_lang("gd_step-expr", HAND / "gd_step.py", NATURAL / "gd_step.py", D2, D8, quick=True),
    **_lang("sherman_morrison", HAND / "sherman_morrison.py", "sherman_morrison", D2, D8,
            quick=True),
    "lang-sherman_morrison-more": Figure(
        lambda: _more_params("sherman_morrison", HAND / "sherman_morrison.py", D2)),
    **_lang("sgd", HAND / "sgd.py", "sgd", N4, {"d": 8, "n": 4}),
    **_lang("sgd-shared", HAND / "sgd.py", "sgd", N4, loops="share"),
    **_lang("batch_gd", HAND / "batch_gd.py", "batch_gd", {**N4, "T": 2}, {**N4, "T": 16}),
    **_lang("batch_gd-shared", HAND / "batch_gd.py", "batch_gd", {**N4, "T": 16},
            loops="share"),
    **_lang("ridge", HAND / "ridge.py", "ridge", N4, {"d": 4, "n": 8}),
    **_lang("ridge-shared", HAND / "ridge.py", "ridge", {"d": 4, "n": 8}, loops="share"),
    **_lang("newton", "newton", NATURAL / "newton.py", {**N4, "T": 2},
            {"d": 4, "n": 4, "T": 4}),
    **{f"lang-{name}-{form}": Figure(lambda name=name, form=form: _learner(
        HAND / f"{name}.py" if form == "hand" else name, N4), quick=False)
       for name in ("nlms", "rls_forget", "sgd_averaged") for form in ("hand", "scan")},
    "lang-rls_forget-more": Figure(
        lambda: _more_params("rls_forget", HAND / "rls_forget.py", N4), quick=False),
}


def elementwise_units() -> str:
    """bench/elementwise_units.py's table: units against epsilon per function."""
    return _bench("elementwise_units").table()


def logistic_verify(arch: str) -> str:
    return _block(_cli("verify", "logistic_gd", "--arch", arch, cwd=_scratch()))


FIGURES: dict[str, Figure] = {
    "cli-compile": Figure(cli_compile),
    "cli-verify": Figure(cli_verify),
    "tutorial-verify": Figure(tutorial_verify),
    "tutorial-f64-pred": Figure(lambda: _e(_momentum().err_prediction)),
    "tutorial-f64-reg": Figure(lambda: _e(_momentum().err_registers)),
    "tutorial-f32-pred": Figure(lambda: _e(_momentum(dtype="float32").err_prediction)),
    "tutorial-f32-reg": Figure(lambda: _e(_momentum(dtype="float32").err_registers)),
    "tutorial-big-f64": Figure(lambda: _e(_momentum(BIG, problems=200).err_registers),
                               quick=False),
    "tutorial-big-f32": Figure(lambda: _e(_momentum(BIG, "float32", 200).err_registers),
                               quick=False),
    "tutorial-wout": Figure(tutorial_wout),
    "tutorial-accept-1e8": Figure(tutorial_accept_1e8),
    "cse-momentum": Figure(lambda: cse_table("momentum")),
    "cse-bundled": Figure(lambda: cse_table("bundled"), quick=False),
    "nlms-depth": Figure(lambda: _block(_bench("nlms_depth").table()),
                         quick=False),
    "compiler-divisor-findings": Figure(compiler_divisor_findings, quick=False),
    "compiler-float32-table": Figure(compiler_float32_table, quick=False),
    "compiler-monitor-cost": Figure(compiler_monitor_cost, quick=False),
    "compiler-product-range": Figure(compiler_product_range, quick=False),
    "compiler-verify": Figure(compiler_verify, quick=False),
    "size-arch-compare": Figure(size_arch_compare, quick=False),
    "benchmark-leaderboard": Figure(benchmark_leaderboard, quick=False),
    **LANGUAGE,
    "elementwise-units": Figure(elementwise_units, quick=False),
    "logistic-verify-paper": Figure(lambda: logistic_verify("paper"), quick=False),
    "logistic-verify-gpt2": Figure(lambda: logistic_verify("gpt2"), quick=False),
}


# ------------------------------------------------------------------ matching and rewriting


def mismatch(shown: str, measured: str, factor: float = ERROR_FACTOR) -> str | None:
    """Why a figure shown in the docs does not match the measured one (None: it does)."""
    a, b = shown.split(), measured.split()
    if len(a) != len(b):
        return f"{len(a)} words shown, {len(b)} measured"
    for x, y in zip(a, b, strict=True):
        if ERROR.match(x) and ERROR.match(y):
            fx, fy = float(x), float(y)
            if fx == fy == 0:
                continue
            if fx <= 0 or fy <= 0 or max(fx / fy, fy / fx) > factor:
                return f"{x} shown, {y} measured (more than a factor {factor:g} apart)"
        elif x != y:
            return f"{x!r} shown, {y!r} measured"
    return None


def marked(text: str) -> dict[str, str]:
    """The figures a page shows, by name (a block's text without the newlines around it)."""
    return {m.group(1): m.group(2).strip("\n") for m in MARKED.finditer(text)}


def rewrite(text: str, figures: dict[str, str]) -> str:
    """`text` with the figures named in `figures` replaced (blocks on lines of their own)."""
    def sub(m: re.Match) -> str:
        name, old = m.group(1), m.group(2)
        if name not in figures:
            return m.group(0)
        new = figures[name]
        block = "\n" in new or old.startswith("\n")
        body = f"\n{new}\n" if block else new
        return f"<!-- gen:{name} -->{body}<!-- /gen -->"

    return MARKED.sub(sub, text)


def measure(names) -> dict[str, str]:
    return {name: FIGURES[name].make() for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare instead of rewriting; exit 1 on a mismatch")
    parser.add_argument("--quick", action="store_true", help="only the quick figures")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(FIGURES),
                        help="only these figures")
    args = parser.parse_args(argv)
    status = 0
    for page in PAGES:
        text = page.read_text()
        shown = marked(text)
        unknown = sorted(set(shown) - set(FIGURES))
        if unknown:
            print(f"{page.name}: unknown figures {unknown}", file=sys.stderr)
            return 2
        names = [n for n in shown if (FIGURES[n].quick or not args.quick)
                 and (args.only is None or n in args.only)]
        figures = measure(names)
        if args.check:
            for name in names:
                why = mismatch(shown[name], figures[name])
                if why:
                    print(f"{page.name}: gen:{name}: {why}", file=sys.stderr)
                    status = 1
        else:
            new = rewrite(text, figures)
            if new != text:
                page.write_text(new)
                print(f"rewrote {page.relative_to(ROOT)}: {', '.join(names)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
