"""The program commands of `raspicl`: list, run, compile, verify and inspect (docs/cli.md).

    raspicl list                                   the bundled programs and their parameters
    raspicl run PROGRAM [--set k=v ...]            interpret on a random prompt
    raspicl compile PROGRAM [--set k=v ...] --out DIR
    raspicl verify [PROGRAM ...] [--set k=v ...]   compile and check (exit 1 unless all PASS)
    raspicl inspect DIR [--plot OUTDIR]            what every head and MLP does

`add_commands` registers them on a parser, as the commands of raspicl.icl and
raspicl.benchmark register theirs: raspicl.cli puts them all on the `raspicl` parser, and a
sweep (raspicl.icl.sweep) runs `raspicl compile` through a parser of its own commands.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from raspicl.cli_args import (
    add_threads_arg,
    check_out_dir,
    count_arg,
    parse_sets,
    percent_arg,
    positive_arg,
    scale_arg,
    seed_arg,
)
from raspicl.errors import ContractWarning, RaspiclError


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

    check_out_dir(args.out, "--out")
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
        check_out_dir(args.plot, "--plot")
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register list, run, compile, verify and inspect on the raspicl command line."""
    from raspicl.registry import SIZE_LIMITS

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
    p.add_argument("--tolerance", type=positive_arg, metavar="FLOAT",
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
    p.add_argument("--tolerance", type=positive_arg, metavar="FLOAT",
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
