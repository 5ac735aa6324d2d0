"""The `raspicl` command: run, compile, verify and inspect programs.

    raspicl list                                   the bundled programs and their parameters
    raspicl run PROGRAM [--set k=v ...]            interpret on a random prompt
    raspicl compile PROGRAM [--set k=v ...] --out DIR
    raspicl verify [PROGRAM ...] [--set k=v ...]   compile and check (exit 1 unless all PASS)
    raspicl inspect DIR [--plot OUTDIR]            what every head and MLP does

and the commands of raspicl.icl.cli_train and cli_analysis (train, predict, compare, probe).

What every command shares is here, in `main`: exit status 2 and one line for an error raspicl
reports (argparse's usage errors included, from the command's own parser); status 130 and one
line for Ctrl-C; and, for a command with a `--threads` option, the torch thread count of the
whole command (`command_threads`).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from raspicl.errors import ContractWarning, RaspiclError

NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
              "-infinity"}


def parse_sets(items: list[str] | None) -> dict:
    """--set k=v pairs; values are Python literals where they parse (4, 0.1, [1, 2]), nan, inf
    and -inf are floats, anything else is a string."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise RaspiclError(f"--set expects NAME=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise RaspiclError(f"--set expects NAME=VALUE, got {item!r} (no NAME)")
        if raw.strip().lower() in NON_FINITE:
            value = float(raw)
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = raw
        params[key] = value
    return params


def seed_arg(text: str) -> int:
    """argparse type: an integer >= 0 (numpy's seeds are non-negative)."""
    value = _int_arg(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def count_arg(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def scale_arg(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def tolerance_arg(text: str) -> float:
    """argparse type: a finite float > 0 (an error bound)."""
    value = scale_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def percent_arg(text: str) -> float:
    """argparse type: a percentage in [0, 100], returned as a fraction in [0, 1]."""
    value = scale_arg(text.removesuffix("%"))
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in [0, 100], got {text}")
    return value / 100


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


# ------------------------------------------------------------------ threads

THREADS_HELP = ("torch threads on the CPU (default: the RASPICL_THREADS environment variable if "
                "set, else 1: these models are small, and on a shared 2-core machine a second "
                "thread made them up to 15x slower)")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """--threads T (default None: raspicl.model.threads_for decides, RASPICL_THREADS or 1)."""
    p.add_argument("--threads", type=count_arg, metavar="T", help=THREADS_HELP)


@contextmanager
def command_threads(threads: int | None) -> Iterator[int]:
    """The thread count of one command, chosen on purpose: `threads` if given, else
    RASPICL_THREADS, else raspicl.model.DEFAULT_THREADS (1). Inside, torch runs that many
    threads and RASPICL_THREADS says it (every compiled model's forward pass reads it); both
    are restored after, so that main() called in a Python session leaves it as it was. BLAS
    threads are fixed when numpy loads: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set them."""
    from raspicl.model import THREADS_ENV, threads_for, torch_threads

    try:
        n = threads_for(threads)
    except ValueError as exc:
        raise RaspiclError(str(exc)) from None
    old = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(n)
    try:
        with torch_threads(n):
            yield n
    finally:
        if old is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = old


@contextmanager
def elapsed(desc: str) -> Iterator[None]:
    """'compiling ridge(d=8, n=16): 12s' on stderr, redrawn every second while the block runs
    (a terminal only: nothing where stderr is a file or a pipe), gone when it ends. For a step
    that reports no progress of its own, such as compile_program."""
    import threading

    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr,
               disable=None, leave=False)
    if bar.disable:
        yield
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


# ------------------------------------------------------------------ the compiler's remedies

# The compiler's messages (raspicl.compiler.feasibility.require_acceptance) end with remedies
# in Python's terms; from the command line they are rewritten into the command's options.
REMEDY_MARKERS = ("Remedies: ", "to accept more: ")


def cli_remedies(message: str, dtype: str, params: dict, tolerance: float | None = None) -> str:
    """`message` with the remedies at its end said as the command's options: --dtype float64
    (only where the model is float32), --tolerance, the calibration-domain options, and --set
    for a program's own values. A message without the compiler's remedies is returned as it
    is."""
    for marker in REMEDY_MARKERS:
        head, found, tail = message.rpartition(marker)
        if found and "CompilerConfig(tolerance" in tail:
            break
    else:
        return message
    now = f", now {tolerance:g}" if tolerance is not None else ""
    rescale = ("rescale the program's values (e.g. a larger regulariser: --set lam=...)"
               if "lam" in params else "rescale the program's values")
    remedies = [f"allow a larger error (--tolerance{now})",
                "serve a narrower domain (--x-scale, --w-scale, --noise or "
                "--calibration-prompts)", rescale]
    if dtype == "float32":
        remedies.insert(0, "compile for float64 (--dtype float64)")
    return head + marker + ", ".join(remedies[:-1]) + ", or " + remedies[-1]


DOMAIN_FLAGS = (("x_scale", "--x-scale"), ("w_scale", "--w-scale"), ("noise", "--noise"))


def domain_from_args(args):
    """The calibration domain the flags ask for: None (no flag: the compiler's default), a
    PromptDistribution (the default one with the fields --x-scale, --w-scale, --noise give)
    or the Prompts of --calibration-prompts FILE."""
    from raspicl.prompts import PromptDistribution, load_prompts

    given = {field: getattr(args, field, None) for field, _ in DOMAIN_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    path = getattr(args, "calibration_prompts", None)
    if path is not None:
        if given:
            flags = ", ".join(flag for field, flag in DOMAIN_FLAGS if field in given)
            raise RaspiclError(f"--calibration-prompts cannot be combined with {flags}: the "
                               f"file gives the prompts themselves")
        return load_prompts(path)
    if not given:
        return None
    try:
        return PromptDistribution(**given)
    except ValueError as exc:
        raise RaspiclError(str(exc)) from exc


def _check_domain(domain, program, who: str) -> None:
    """Calibration prompts must have the program's d and n."""
    from raspicl.prompts import Prompts

    if isinstance(domain, Prompts) and (domain.d, domain.n) != (program.d, program.n):
        raise RaspiclError(f"--calibration-prompts holds prompts with d={domain.d}, "
                           f"n={domain.n}; {who} needs d={program.d}, n={program.n}")


def _check_out_dir(path: str, option: str) -> None:
    """An output directory may exist, but not as something other than a directory."""
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RaspiclError(f"{option} {path}: {p} exists and is not a directory")
            break


def _build(spec: str, sets: list[str] | None):
    from raspicl.registry import find_program

    pf = find_program(spec)
    params = parse_sets(sets)
    return pf, params, quiet_numpy(pf.build, **params)


def quiet_numpy(fn, *args, **kwargs):
    """fn(*args, **kwargs) without numpy's floating-point RuntimeWarnings: building a program
    from a non-finite parameter (--set lr=inf) makes NaN coefficients, which the Program then
    refuses in one line naming the op; numpy's own warnings about them would come first and
    name raspicl's internals instead."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return fn(*args, **kwargs)


def cmd_list(args) -> int:
    from raspicl.registry import bundled_programs

    for pf in bundled_programs():
        doc = (pf.module.__doc__ or "").strip().splitlines()
        print(f"{pf.name:20s} {doc[0] if doc else ''}")
        print(f"{'':20s} parameters: {pf.defaults()}")
    return 0


def cmd_run(args) -> int:
    from raspicl.interpret import interpret
    from raspicl.prompts import random_prompts

    pf, params, program = _build(args.program, args.set)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 10**6)
    prompts = random_prompts(1, program.d, program.n, seed)
    trace = interpret(program, prompts)
    q = program.format.n_tokens - 1
    print(program.listing())
    print(f"\nrandom prompt: seed={seed} (x, w ~ N(0, I), y = w^T x); d={program.d} "
          f"n={program.n}")
    np.set_printoptions(precision=6, suppress=False, linewidth=100)
    print(f"true w: {prompts.w[0]}")
    out = trace.output()[0]
    for pos, value in zip(program.output_positions(), out, strict=True):
        print(f"prediction at token {pos} ({program.format.role(pos)}): "
              f"{_show(value, program.output_spec.register.shape)}")
    if pf.has_reference:
        ref = np.asarray(pf.reference(prompts, **params)).reshape(out.shape[0], -1)
        print(f"reference solver: {ref.ravel()}")
    if args.arch is not None:  # the compiled model's prediction on the same prompt
        from raspicl.errors import DomainWarning
        from raspicl.verify import compile_checked

        cm = compile_checked(pf, program, arch=arch_from_args(args))
        with warnings.catch_warnings():  # the refusal is said below, once
            warnings.simplefilter("ignore", DomainWarning)
            out = cm.run(prompts, check="warn")
        refused = "" if out.accepted[0] else (
            f" REFUSED: its runtime contract cannot vouch for it ("
            f"{out.findings[0].message if out.findings else 'no bound'})")
        print(f"compiled to {args.arch} ({cm.model.cfg.n_layers} blocks, d_model "
              f"{cm.model.cfg.d_model}): {out.values[0].ravel()}{refused}")
    print(f"\nregisters at the query token (t={q}):")
    for name, reg in program.registers.items():
        if name in trace.final:
            print(f"  {name:14s} {str(reg.shape):8s} {_show(trace.final[name][0, q], reg.shape)}")
    return 0


def _call(params: dict) -> str:
    from raspicl.registry import format_call

    return format_call(params)


def _show(flat: np.ndarray, shape) -> str:
    arr = np.asarray(flat).reshape(shape) if shape else np.asarray(flat).reshape(())
    return np.array2string(arr, precision=6, separator=", ").replace("\n", " ")


def cmd_compile(args) -> int:
    from raspicl.compiler import CompilerConfig, compile_program
    from raspicl.export import save

    _check_out_dir(args.out, "--out")
    domain = domain_from_args(args)
    pf, params, program = _build(args.program, args.set)
    _check_domain(domain, program, f"{pf.name}({_call(params)})")
    from raspicl.errors import CompileError
    from raspicl.verify import contract_tolerance_for

    tolerance = args.tolerance if args.tolerance is not None else \
        contract_tolerance_for(pf, args.dtype)
    config = CompilerConfig.for_dtype(args.dtype, tolerance=tolerance)
    all_params = {**pf.defaults(), **params}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ContractWarning)
        try:
            with elapsed(f"compiling {pf.name}({_call(params)})"):
                cm = compile_program(program, config,
                                     domain=domain if domain is not None else pf.domain,
                                     arch=arch_from_args(args))
        except CompileError as exc:
            raise CompileError(cli_remedies(str(exc), args.dtype, all_params,
                                            tolerance)) from None
    for w in caught:
        if issubclass(w.category, ContractWarning):
            print(f"raspicl: warning: "
                  f"{cli_remedies(str(w.message), args.dtype, all_params, tolerance)}",
                  file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    from raspicl.disguise import disguise_from_args

    cm = disguise_from_args(cm, args)  # --disguise SEED [--pad N] (raspicl/disguise.py)
    if args.dtype == "float32":
        import torch

        cm = cm.to(torch.float32)
    try:
        out = save(cm, args.out)
    except OSError as exc:
        raise RaspiclError(f"--out {args.out}: cannot write the model: {exc}") from exc
    s = cm.summary()
    hf = f", {out}/hf/ (HuggingFace, docs/interop.md)" if (out / "hf").is_dir() else ""
    called = f" {params}" if params else ""
    print(f"compiled {pf.name}{called} -> {out}/model.safetensors, {out}/layout.json{hf}")
    print("  " + "  ".join(f"{k}={v}" for k, v in s.items()))
    cal = cm.layout["monitor"]["calibration"]
    print(f"  contract: error bound <= {cm.layout['monitor']['tolerance']:g} x max(|y|, 1); "
          f"accepts {cal['accepted']:.1%} of {cal['prompts']} calibration prompts")
    return 0


def cmd_verify(args) -> int:
    from tqdm import tqdm

    from raspicl.errors import CompileError
    from raspicl.prompts import Prompts
    from raspicl.registry import bundled_programs, find_program
    from raspicl.verify import TablePrinter, default_checks, verify_program

    programs = [find_program(p) for p in args.programs] if args.programs else bundled_programs()
    if not programs:
        raise RaspiclError("no programs to verify (no programs/ folder found)")
    dtypes = tuple(args.dtype) if args.dtype else ("float64", "float32")
    domain = domain_from_args(args)
    arch = arch_from_args(args)
    if args.set:
        checks = [(pf, parse_sets(args.set), dt) for pf in programs for dt in dtypes]
    else:
        checks = default_checks(programs, dtypes)
    for pf, params, _ in checks:  # every parameter set, before anything is compiled
        pf.check_params(params)
    if isinstance(domain, Prompts):  # their d and n against each program's
        for pf, params, _ in checks:
            _check_domain(domain, quiet_numpy(pf.build, **params),
                          f"{pf.name}({_call(params)})")
    results = []
    table = TablePrinter(checks)
    print(table.header(), flush=True)
    # each row as its check finishes; the progress bar (stderr, a terminal only) counts checks
    bar = tqdm(checks, desc="verify", unit="check", file=sys.stderr, disable=None, leave=False)
    for pf, params, dt in bar:
        bar.set_postfix_str(f"{pf.name} {_call(params)} {dt}")
        try:
            r = quiet_numpy(verify_program, pf, params, dt, problems=args.problems,
                            seed=args.seed, symbolic=not args.no_symbolic, domain=domain,
                            progress=True, arch=arch, contract_tolerance=args.tolerance,
                            min_acceptance=args.min_acceptance)
        except CompileError as exc:
            raise CompileError(cli_remedies(str(exc), dt, {**pf.defaults(), **params},
                                            args.tolerance)) from None
        results.append(r)
        bar.write(table.row(r), file=sys.stdout)
        sys.stdout.flush()
        if args.verbose:
            bar.write(f"{r.program} {r.params} {r.dtype}: worst register {r.worst_register}, "
                      f"{r.seconds:.1f}s", file=sys.stderr)
            if r.in_domain < r.problems:
                bar.write(f"  {r.problems - r.in_domain} of {r.problems} problems lie outside "
                          f"the calibrated domain (not counted in 'accepted'):",
                          file=sys.stderr)
            for note in r.notes:
                bar.write(f"  outside the calibrated domain: {note}", file=sys.stderr)
    bar.close()
    counts = {status: sum(r.status == status for r in results)
              for status in ("PASS", "REFUSES", "FAIL")}
    refuses = (f", {counts['REFUSES']} refuse more than {1 - args.min_acceptance:.0%} of their "
               f"in-domain problems" if counts["REFUSES"] else "")
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed{refuses} "
          f"({args.problems} random problems each, seed {args.seed}; "
          f"error = |a - b| / max(|b|, 1))")
    print(acceptance_summary(results, args.min_acceptance))
    return 0 if counts["PASS"] == len(results) else 1


def acceptance_summary(results: list, min_acceptance: float) -> str:
    """verify's last line: the lowest share of in-domain problems any check's model accepts,
    and which check that is (the first of the lowest)."""
    measured = [r for r in results if not math.isnan(r.acceptance)]
    if not measured:
        return "accepted: no check had a problem inside its model's calibrated domain"
    low = min(measured, key=lambda r: r.acceptance)
    params = " ".join(f"{k}={v}" for k, v in low.params.items())
    return (f"accepted: at least {100 * low.acceptance:.1f}% of the in-domain problems in "
            f"every check (lowest: {low.program}{' ' + params if params else ''} "
            f"{low.dtype}); PASS needs {100 * min_acceptance:g}%")


def cmd_inspect(args) -> int:
    from raspicl import inspect as rinspect
    from raspicl.export import load

    if args.plot:
        _check_out_dir(args.plot, "--plot")
    cm = load(args.dir)  # a LoadError names the directory
    print(rinspect.inspect_text(cm))
    if args.plot:
        try:
            paths = rinspect.plot_blocks(cm, args.plot)
        except OSError as exc:
            raise RaspiclError(f"--plot {args.plot}: cannot write the plots: {exc}") from exc
        print(f"\nwrote {len(paths)} plots to {args.plot}")
    return 0


def add_arch_args(p: argparse.ArgumentParser) -> None:
    """--arch and gpt2's options (raspicl.arch)."""
    from raspicl.arch import ARCHITECTURES, GPT2_ACT_FNS

    g = p.add_argument_group("target architecture (docs/architecture.md)")
    g.add_argument("--arch", choices=list(ARCHITECTURES), default=None,
                   help="the block compiled to: paper (default; the block of Akyurek et al.) "
                        "or gpt2 (HuggingFace's GPT2Model: LayerNorms before attention, "
                        "before the MLP and at the end, one eps)")
    g.add_argument("--ln-eps", type=scale_arg, metavar="FLOAT",
                   help="gpt2: the eps of every LayerNorm (default 1e-5)")
    g.add_argument("--act-fn", choices=list(GPT2_ACT_FNS),
                   help="gpt2: the MLP's GeLU, gelu (erf) or gelu_new (tanh; the default, as "
                        "GPT-2)")


def arch_from_args(args):
    """The Architecture the arguments name (paper unless --arch says otherwise)."""
    from raspicl.arch import get_arch

    if args.arch != "gpt2" and (args.ln_eps is not None or args.act_fn is not None):
        raise RaspiclError("--ln-eps and --act-fn apply to --arch gpt2")
    try:
        return get_arch(args.arch, ln_eps=args.ln_eps, act_fn=args.act_fn)
    except ValueError as exc:
        raise RaspiclError(f"--arch: {exc}") from exc


def add_domain_args(p: argparse.ArgumentParser) -> None:
    """--x-scale, --w-scale, --noise and --calibration-prompts: the prompts the model is
    calibrated for (raspicl.prompts.PromptDistribution, or the user's own)."""
    g = p.add_argument_group(
        "calibration domain",
        "the prompts the compiled model must serve; the default is PromptDistribution(): "
        "x ~ N(0, 1.5^2 I), w ~ N(0, I), y = w^T x + N(0, 1)")
    g.add_argument("--x-scale", type=scale_arg, metavar="FLOAT",
                   help="standard deviation of x and x_q (default 1.5)")
    g.add_argument("--w-scale", type=scale_arg, metavar="FLOAT",
                   help="standard deviation of the true w (default 1.0)")
    g.add_argument("--noise", type=scale_arg, metavar="FLOAT",
                   help="standard deviation of the label noise (default 1.0)")
    g.add_argument("--calibration-prompts", metavar="FILE",
                   help="calibrate on these prompts instead: a .npz or .safetensors file with "
                        "arrays X [B, n, d], y [B, n], xq [B, d] (not with the three above)")


TOLERANCE_HELP = ("the error bound the compiled model vouches for, relative to max(|y|, 1): "
                  "its runtime contract refuses a prompt whose bound exceeds it (default: the "
                  "program file's CONTRACT_TOLERANCE, else its TOLERANCE, else 1e-8 for "
                  "float64 and 1e-3 for float32)")
MIN_ACCEPTANCE_PCT = "99"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raspicl",
        description="Compile in-context learning algorithms into explicit transformer weights "
                    "and verify them.",
        epilog="Run 'raspicl COMMAND --help' for a command's arguments (all of them are in "
               "docs/cli.md). Exit status: 0 success; 1 a check of 'raspicl verify' is not "
               "PASS; 2 an error raspicl reports (a bad program, parameter, file or command "
               "line, a prompt a model refuses); 130 interrupted (Ctrl-C).")
    from raspicl import __version__
    from raspicl.registry import SIZE_LIMITS

    parser.add_argument("--version", action="version", version=f"raspicl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the bundled programs and their parameters",
                       description="List the program files in ./programs if that folder "
                                   "exists, else in the programs/ folder beside the raspicl "
                                   "package: each one's name, the first line of its docstring "
                                   "and the parameters of its program() with their defaults.")
    p.set_defaults(func=cmd_list)

    set_help = ("a parameter of the program's program(), NAME=VALUE; VALUE is read as a Python "
                "literal (4, 0.1, [1, 2]) where it parses, nan, inf and -inf as floats, else as "
                "a string; repeatable. Checked before program() runs: known names only, "
                "integers where the default is one, "
                + ", ".join(f"{k} <= {v}" for k, v in SIZE_LIMITS.items()))
    program_help = ("a program file (a path ending in .py, e.g. programs/gd_step.py) or the name "
                    "of one in ./programs or the bundled programs/ (gd_step)")
    p = sub.add_parser("run", help="run a program in the float64 interpreter on a random prompt",
                       description="Interpret PROGRAM on one random prompt (x, w ~ N(0, I), "
                                   "y = w^T x) and print the program's listing, the true w, the "
                                   "prediction at each output token, the prediction of the "
                                   "file's reference() if it has one, and every register at "
                                   "the query token. With --arch, also compile it to that "
                                   "architecture and print the compiled model's prediction.")
    p.add_argument("program", metavar="PROGRAM", help=program_help)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help=set_help)
    p.add_argument("--seed", type=seed_arg,
                   help="seed of the random prompt, an integer >= 0 (default: a fresh one, "
                        "printed so that the run can be repeated)")
    add_arch_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile a program to model.safetensors + layout.json",
                       description="Compile PROGRAM into a transformer, write "
                                   "DIR/model.safetensors (the weights) and DIR/layout.json "
                                   "(what every residual row means; docs/architecture.md), and "
                                   "print the model's size.")
    p.add_argument("program", metavar="PROGRAM", help=program_help)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help=set_help)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (created if needed; the two files are overwritten)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="precision the compiler's constants are tuned for and the weights are "
                        "stored in (default float64)")
    p.add_argument("--tolerance", type=tolerance_arg, metavar="FLOAT",
                   help=TOLERANCE_HELP)
    add_threads_arg(p)
    add_domain_args(p)
    add_arch_args(p)
    from raspicl.disguise import add_disguise_args

    add_disguise_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("verify", help="compile programs and check them (exit 1 unless all pass)",
                       description="Compile each program for every parameter set of its GRID "
                                   "(or the one --set gives) and dtype, and check: the model "
                                   "against the interpreter on every register at every token "
                                   "and on the prediction, and against the file's reference() "
                                   "solver, to the file's TOLERANCE (default 1e-8 float64, "
                                   "1e-3 float32); the interpreter against reference() to "
                                   "1e-12; and, where the file has closed_form(), n = 1 and "
                                   "d <= 3, the program against it with sympy. Errors are "
                                   "|a - b| / max(|b|, 1). A check is PASS if they hold and "
                                   "the model accepts at least --min-acceptance of the "
                                   "problems inside its calibrated domain, REFUSES if they "
                                   "hold but it accepts fewer, FAIL otherwise. Prints one row "
                                   "per check; exit status 1 unless every check is PASS.")
    p.add_argument("programs", nargs="*", metavar="PROGRAM",
                   help="program files or names (default: every program in ./programs, or in "
                        "the bundled programs/)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help=set_help + "; replaces the programs' GRIDs: each program is checked "
                                   "once, with these parameters")
    p.add_argument("--dtype", action="append", choices=["float64", "float32"],
                   help="precision to check; repeatable (default: both)")
    p.add_argument("--problems", type=count_arg, default=1000,
                   help="random problems (prompts) per check, at least 1 (default 1000)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the problems, an integer >= 0 (default 0)")
    p.add_argument("--no-symbolic", action="store_true", help="skip the sympy proofs")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print, to stderr, each check's worst register, its time and any "
                        "problems outside the model's calibrated domain")
    p.add_argument("--tolerance", type=tolerance_arg, metavar="FLOAT",
                   help=TOLERANCE_HELP + "; the checks' own limit stays the file's TOLERANCE")
    p.add_argument("--min-acceptance", type=percent_arg, default=MIN_ACCEPTANCE_PCT,
                   metavar="PERCENT",
                   help="a check whose model accepts fewer than this percentage of the "
                        "problems inside its calibrated domain is REFUSES, not PASS "
                        f"(default {MIN_ACCEPTANCE_PCT})")
    add_threads_arg(p)
    add_domain_args(p)
    add_arch_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="show what every head and MLP of a compiled model does",
                       description="Print the residual layout (register -> rows) and, per "
                                   "block, what each head reads and writes and what the MLP "
                                   "computes, traced to the program's ops and source lines.")
    p.add_argument("dir", metavar="DIR",
                   help="a directory holding model.safetensors and layout.json (written by "
                        "`raspicl compile` or raspicl.export.save)")
    p.add_argument("--plot", metavar="OUTDIR",
                   help="also write PNG heatmaps to OUTDIR (created if needed): blockNN.png per "
                        "block (each head's W_V·W_O and W_Q·W_K^T, the MLP's W_in and W_out^T) "
                        "and embed.png (W_E, W_pos, W_U)")
    p.set_defaults(func=cmd_inspect)

    # trained in-context learners and their comparison with algorithms (docs/experiments.md)
    from raspicl.icl import cli_analysis, cli_sweep, cli_train
    cli_train.add_commands(sub)
    cli_analysis.add_commands(sub)
    cli_sweep.add_commands(sub)
    from raspicl.benchmark import suite  # raspicl benchmark (docs/benchmark.md)
    suite.add_commands(sub)
    return parser


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args, except that an option the command does not know is reported by the
    command's own parser (its usage, then `raspicl COMMAND: error: unrecognized arguments`),
    as every other mistake in a command's arguments is, rather than by raspicl's."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _subparsers(parser).choices.get(getattr(args, "command", None))
        (command or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _close_progress_bars() -> None:
    """Close the tqdm bars a stopped command leaves open, so that the last line on stderr is
    raspicl's own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the exit
            pass


def main(argv: list[str] | None = None) -> int:
    """The raspicl command: 0 success, 1 a verify check not PASS, 2 an error (one line on
    stderr, `raspicl: error: ...`; argparse's usage errors too), 130 Ctrl-C (one line,
    `raspicl: interrupted`, and whatever the command says it kept)."""
    try:
        parser = build_parser()
        args = parse_args(parser, argv)
        if hasattr(args, "threads"):  # the command's thread count, chosen on purpose
            with command_threads(args.threads):
                return args.func(args)
        return args.func(args)
    except RaspiclError as exc:
        _close_progress_bars()
        print(f"raspicl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        detail = str(exc)
        print(f"raspicl: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `raspicl inspect DIR | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
