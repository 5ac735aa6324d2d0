"""The `raspicl sweep` and `raspicl report` commands (docs/cli.md, docs/experiments.md
"Sweeps").

    raspicl sweep SPEC --out DIR [--jobs N] [--threads T] [--device D] [--dry-run] [--quiet]
    raspicl report DIR [--out REPORT_DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raspicl.cli_args import check_out_dir, count_arg, device_arg
from raspicl.errors import RaspiclError


def cmd_sweep(args) -> int:
    from raspicl.icl.sweep import choose_workers, plan, run_sweep
    from raspicl.icl.sweep_spec import SweepSpec

    spec = SweepSpec.load(args.spec)
    if args.engine is not None:
        spec.engine = args.engine
    check_out_dir(args.out, "--out")
    out = Path(args.out)
    threads = args.threads if args.threads is not None else spec.threads
    try:
        workers = choose_workers(spec, args.jobs, threads)
    except RaspiclError as exc:
        if not args.dry_run:
            raise
        workers, note = args.jobs or spec.jobs, f"note: {exc}"
    else:
        note = ""
    if args.dry_run:
        p = plan(spec, out)
        pending = {j["name"] for u in p.units for j in u["jobs"]}
        for job in spec.all_jobs:
            state = "done" if job.name in p.done else "to run"
            print(f"{state:7s} {job.name}")
        print(f"{len(spec.all_jobs)} jobs: {len(p.done)} done, {len(pending)} to run in "
              f"{len(p.units)} unit(s) on the {spec.engine} engine, {workers} at once x "
              f"{threads} thread(s)")
        if note:
            print(note)
        return 0
    print(f"sweep {spec.name or args.spec}: {len(spec.all_jobs)} jobs "
          f"({len(spec.train_jobs)} trained, {len(spec.control_jobs)} compiled controls) -> "
          f"{out}; {spec.engine} engine, {workers} at once x {threads} thread(s), trainer "
          f"{spec.trainer}", flush=True)
    try:
        result = run_sweep(spec, out, jobs=args.jobs, threads=args.threads,
                           device=args.device, quiet=args.quiet)
    except KeyboardInterrupt:  # run_sweep said how to resume
        return 130
    print(f"{result.total} jobs: {len(result.skipped)} already done, {len(result.finished)} "
          f"finished now, {len(result.failed)} failed")
    for name, error in result.failed.items():
        print(f"  failed {name}: {error} ({out / 'jobs' / name / 'error.txt'})",
              file=sys.stderr)
    if result.failed:
        print("run the same command again to retry the failed jobs (finished ones are "
              "skipped)", file=sys.stderr)
        return 1
    print(f"next: raspicl report {out}")
    return 0


def cmd_report(args) -> int:
    from raspicl.icl.report import build_report

    sweep = Path(args.dir)
    if not (sweep / "sweep.json").is_file():
        raise RaspiclError(f"DIR {args.dir}: no sweep.json (not a directory written by "
                           f"`raspicl sweep`)")
    out = Path(args.out) if args.out else sweep / "report"
    rep = build_report(sweep, out)
    print(rep.summary())
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(rep.figures)} "
          f"figure(s) in {out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register sweep and report on the raspicl command line."""

    p = sub.add_parser(
        "sweep", help="train and measure a grid of in-context learners from a TOML spec",
        description="Run every job of SPEC (a TOML file: a grid over d, n, layers, d_model, "
                    "heads, noise, w scale, steps, curriculum and seeds, the analyses to run "
                    "on each model, compiled controls; docs/experiments.md) in its own "
                    "directory under DIR/jobs: train (raspicl train's files), then compare and "
                    "probe. Jobs already done are skipped; interrupted ones resume from their "
                    "last checkpoint, bitwise. Exit status 1 if a job failed (the others "
                    "still run).")
    p.add_argument("spec", metavar="SPEC", help="the sweep's TOML file")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the sweep's directory (created if needed; run again to resume)")
    p.add_argument("--engine", choices=["local", "submitit"],
                   help="run the jobs on a local process pool or through submitit (default: "
                        "the spec's sweep.engine, else local)")
    p.add_argument("--jobs", type=count_arg, metavar="N",
                   help="jobs at once on the local pool (default: the spec's sweep.jobs, "
                        "else cores // threads; jobs x threads may not exceed the cores)")
    p.add_argument("--threads", type=count_arg, metavar="T",
                   help="torch threads per job (default: the spec's sweep.threads, else 1)")
    p.add_argument("--device", type=device_arg, metavar="DEVICE",
                   help="cpu, cuda or cuda:N for training (default: the spec's sweep.device, "
                        "else cpu)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the jobs, which are done and how they would run; run nothing")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or status lines, only the summary")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report", help="aggregate a sweep over its seeds into report.md, figures and JSON",
        description="Read the jobs of a sweep directory (DIR/sweep.json) and aggregate them "
                    "over their seeds: the phase table (the best-matching learner per depth "
                    "and width, mean SPD with a 95%% t-interval over seeds), the MSPD table "
                    "over noise levels as a heatmap, probe R^2 by layer and the error against "
                    "k with bands, compiled controls beside the trained models. Writes "
                    "report.md, report.json and PNG figures.")
    p.add_argument("dir", metavar="DIR", help="a directory written by `raspicl sweep`")
    p.add_argument("--out", metavar="REPORT_DIR",
                   help="where to write the report (default: DIR/report)")
    p.set_defaults(func=cmd_report)
