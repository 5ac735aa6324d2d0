"""The `raspicl` command: run, compile, verify and inspect programs.

    raspicl list                                   the bundled programs and their parameters
    raspicl run PROGRAM [--set k=v ...]            interpret on a random prompt
    raspicl compile PROGRAM [--set k=v ...] --out DIR
    raspicl verify [PROGRAM ...] [--set k=v ...]   compile and check (exit 1 on any failure)
    raspicl inspect DIR [--plot OUTDIR]            what every head and MLP does
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

import numpy as np

from raspicl.errors import RaspiclError


def parse_sets(items: list[str] | None) -> dict:
    """--set k=v pairs; values are Python literals where they parse (4, 0.1, [1, 2])."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise RaspiclError(f"--set expects NAME=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        params[key.strip()] = value
    return params


def _build(spec: str, sets: list[str] | None):
    from raspicl.registry import find_program

    pf = find_program(spec)
    params = parse_sets(sets)
    try:
        program = pf.build(**params)
    except TypeError as exc:
        raise RaspiclError(f"{pf.name}: {exc}; its parameters are {pf.defaults()}") from exc
    except ValueError as exc:  # a program's own check of its parameters
        raise RaspiclError(f"{pf.name} {params}: {exc}") from exc
    return pf, params, program


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
    print(f"\nregisters at the query token (t={q}):")
    for name, reg in program.registers.items():
        if name in trace.final:
            print(f"  {name:14s} {str(reg.shape):8s} {_show(trace.final[name][0, q], reg.shape)}")
    return 0


def _show(flat: np.ndarray, shape) -> str:
    arr = np.asarray(flat).reshape(shape) if shape else np.asarray(flat).reshape(())
    return np.array2string(arr, precision=6, separator=", ").replace("\n", " ")


def cmd_compile(args) -> int:
    from raspicl.compiler import CompilerConfig, compile_program
    from raspicl.export import save

    pf, params, program = _build(args.program, args.set)
    cm = compile_program(program, CompilerConfig.for_dtype(args.dtype))
    if args.dtype == "float32":
        import torch

        cm = cm.to(torch.float32)
    out = save(cm, args.out)
    s = cm.summary()
    print(f"compiled {pf.name} {params or ''} -> {out}/model.safetensors, {out}/layout.json")
    print("  " + "  ".join(f"{k}={v}" for k, v in s.items()))
    return 0


def cmd_verify(args) -> int:
    from raspicl.registry import bundled_programs, find_program
    from raspicl.verify import default_checks, format_table, verify_program

    programs = [find_program(p) for p in args.programs] if args.programs else bundled_programs()
    if not programs:
        raise RaspiclError("no programs to verify (no programs/ folder found)")
    dtypes = tuple(args.dtype) if args.dtype else ("float64", "float32")
    if args.set:
        checks = [(pf, parse_sets(args.set), dt) for pf in programs for dt in dtypes]
    else:
        checks = default_checks(programs, dtypes)
    results = []
    for pf, params, dt in checks:
        r = verify_program(pf, params, dt, problems=args.problems, seed=args.seed,
                           symbolic=not args.no_symbolic)
        results.append(r)
        if args.verbose:
            print(f"{r.program} {r.params} {r.dtype}: worst register {r.worst_register}, "
                  f"{r.seconds:.1f}s", file=sys.stderr)
            for note in r.notes:
                print(f"  outside the calibrated domain: {note}", file=sys.stderr)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed "
          f"({args.problems} random problems each, seed {args.seed}; "
          f"error = |a - b| / max(|b|, 1))")
    return 1 if failed else 0


def cmd_inspect(args) -> int:
    from raspicl import inspect as rinspect
    from raspicl.export import load

    cm = load(args.dir)
    print(rinspect.inspect_text(cm))
    if args.plot:
        paths = rinspect.plot_blocks(cm, args.plot)
        print(f"\nwrote {len(paths)} plots to {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raspicl",
        description="Compile in-context learning algorithms into explicit transformer weights "
                    "and verify them.",
        epilog="Run 'raspicl COMMAND --help' for a command's arguments (all of them are in "
               "docs/cli.md). Exit status: 0 success; 1 a check of 'raspicl verify' failed; 2 "
               "an error raspicl reports (a bad program, parameter, file or command line).")
    from raspicl import __version__

    parser.add_argument("--version", action="version", version=f"raspicl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the bundled programs and their parameters",
                       description="List the program files in ./programs if that folder "
                                   "exists, else in the programs/ folder beside the raspicl "
                                   "package: each one's name, the first line of its docstring "
                                   "and the parameters of its program() with their defaults.")
    p.set_defaults(func=cmd_list)

    set_help = ("a parameter of the program's program(), NAME=VALUE; VALUE is read as a Python "
                "literal (4, 0.1, [1, 2]) where it parses, else as a string; repeatable")
    program_help = ("a program file (a path ending in .py, e.g. programs/gd_step.py) or the name "
                    "of one in ./programs or the bundled programs/ (gd_step)")
    p = sub.add_parser("run", help="run a program in the float64 interpreter on a random prompt",
                       description="Interpret PROGRAM on one random prompt (x, w ~ N(0, I), "
                                   "y = w^T x) and print the program's listing, the true w, the "
                                   "prediction at each output token, the prediction of the "
                                   "file's reference() if it has one, and every register at "
                                   "the query token.")
    p.add_argument("program", metavar="PROGRAM", help=program_help)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help=set_help)
    p.add_argument("--seed", type=int, help="seed of the random prompt (default: a fresh one, "
                                            "printed so that the run can be repeated)")
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
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("verify", help="compile programs and check them (exit 1 on failure)",
                       description="Compile each program for every parameter set of its GRID "
                                   "(or the one --set gives) and dtype, and check: the model "
                                   "against the interpreter on every register at every token "
                                   "and on the prediction, and against the file's reference() "
                                   "solver, to the file's TOLERANCE (default 1e-8 float64, "
                                   "1e-3 float32); the interpreter against reference() to "
                                   "1e-12; and, where the file has closed_form(), n = 1 and "
                                   "d <= 3, the program against it with sympy. Errors are "
                                   "|a - b| / max(|b|, 1). Prints one row per check; exit "
                                   "status 1 if any check fails.")
    p.add_argument("programs", nargs="*", metavar="PROGRAM",
                   help="program files or names (default: every program in ./programs, or in "
                        "the bundled programs/)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help=set_help + "; replaces the programs' GRIDs: each program is checked "
                                   "once, with these parameters")
    p.add_argument("--dtype", action="append", choices=["float64", "float32"],
                   help="precision to check; repeatable (default: both)")
    p.add_argument("--problems", type=int, default=1000,
                   help="random problems (prompts) per check (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems (default 0)")
    p.add_argument("--no-symbolic", action="store_true", help="skip the sympy proofs")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print, to stderr, each check's worst register, its time and any "
                        "problems outside the model's calibrated domain")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RaspiclError as exc:
        print(f"raspicl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `raspicl inspect DIR | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
