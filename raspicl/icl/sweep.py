"""Running a sweep (`raspicl sweep SPEC --out DIR`): every grid point of a spec
(raspicl.icl.sweep_spec) is a job, trained and then measured in its own directory, on a local
process pool or through submitit (docs/experiments.md, "Sweeps").

    DIR/sweep.json                the spec's jobs and analyses (what `raspicl report` reads)
    DIR/spec.toml                 the spec as last run
    DIR/jobs/NAME/job.json        the job's parameters (its identity)
    DIR/jobs/NAME/status.json     its state, the stages done (with their settings and times)
    DIR/jobs/NAME/model/          the checkpoint (raspicl train's files) or the compiled model
    DIR/jobs/NAME/compare/        raspicl compare's compare.json and error.png
    DIR/jobs/NAME/probe/          raspicl probe's probe.json and probe.png
    DIR/jobs/NAME/analysis.log    what compare and probe printed
    DIR/jobs/NAME/error.txt       the traceback of its last failure
    DIR/groups/GROUP/             a batched group's checkpoint while it trains (trainer batched)

Running the sweep again skips every job whose stages are done with the spec's settings, and
continues every other one: training resumes from its last checkpoint (bitwise the weights of
an uninterrupted run: raspicl.icl.train's checkpoints are a function of seed and step and are
written so that a kill at any moment leaves one that resumes), an analysis whose settings
changed runs again. Jobs are independent, so they run in any order on any worker.

The unit of work handed to a worker (a `unit`) is one training job and its analyses, a
batched group of training jobs of one shape (trainer "batched", raspicl.icl.batched) and their
analyses, or one compiled control. Workers run `run_unit`, a plain function of plain values, so
that the local pool and submitit (which pickles the call, never weights) run the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from raspicl.errors import RaspiclError
from raspicl.icl.sweep_spec import Job, SpecError, SweepSpec

FORMAT = "raspicl.sweep/1"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LOG_EVERY = 100  # training steps between train_log.jsonl lines (the status lines read them)


# ------------------------------------------------------------------------- small files


def write_json(path: Path, data) -> None:
    """JSON written beside its place and renamed over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """A JSON object, or None where the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def job_dir(out: Path, name: str) -> Path:
    return out / "jobs" / name


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------- stages


def stages_wanted(job: Job, spec_analyses: dict) -> dict[str, dict]:
    """The stages a job needs, each with the settings it must have been done with."""
    first = "train" if job.kind == "train" else "compile"
    wanted = {first: {}}
    for key in ("compare", "probe"):
        if spec_analyses.get(key) is not None:
            wanted[key] = dict(spec_analyses[key])
    return wanted


def pending_stages(job: Job, status: dict | None, spec_analyses: dict) -> list[str]:
    """The stages still to do: not recorded in status.json, or done with other settings."""
    done = (status or {}).get("stages", {})
    return [s for s, args in stages_wanted(job, spec_analyses).items()
            if s not in done or done[s].get("args", {}) != args]


def train_config(params: dict, threads: int, device: str, checkpoint_every: int,
                 eval_every: int):
    """A training job's raspicl.icl.train.TrainConfig."""
    from raspicl.icl.train import Curriculum, TrainConfig

    cur = params["curriculum"]
    return TrainConfig(steps=params["steps"], batch=params["batch"], lr=params["lr"],
                       warmup=params["warmup"], min_lr_ratio=params["min_lr_ratio"],
                       weight_decay=params["weight_decay"], grad_clip=params["grad_clip"],
                       seed=params["seed"],
                       curriculum=Curriculum(interval=cur) if cur else None,
                       fixed_w=params["fixed_w"], threads=threads, device=device,
                       checkpoint_every=checkpoint_every, eval_every=eval_every,
                       eval_prompts=params["eval_prompts"])


def model_and_task(params: dict):
    """A training job's ModelConfig and RegressionTask (its task: `raspicl compare` reads it
    back from the checkpoint's config.json and measures against that task's learners)."""
    from raspicl.icl.tasks import RegressionTask
    from raspicl.icl.trained import ModelConfig

    model = ModelConfig(d=params["d"], n_positions=params["n"], layers=params["layers"],
                        d_model=params["d_model"], heads=params["heads"])
    # a linear job's params have no task keys (sweep_spec.TASK_KEYS)
    return model, RegressionTask(params["d"], params["n"], noise=params["noise"],
                                 w_scale=params["w_scale"],
                                 kind=params.get("task", "linear"),
                                 sparsity=params.get("sparsity"))


# ------------------------------------------------------------------------- the worker


class _Status:
    """A job's status.json, as its worker keeps it."""

    def __init__(self, out: Path, name: str, run: str) -> None:
        self.path = job_dir(out, name) / "status.json"
        self.data = read_json(self.path) or {}
        self.data.setdefault("stages", {})
        self.data.update(state="running", run=run, stage=None, error=None, pid=os.getpid(),
                         host=os.uname().nodename)
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)

    def stage(self, name: str) -> None:
        self.data["stage"] = name
        self.save()

    def done(self, name: str, args: dict, seconds: float, **extra) -> None:
        self.data["stages"][name] = {"args": args, "seconds": round(seconds, 3), **extra}
        self.save()

    def finish(self, error: str | None) -> None:
        self.data.update(state="failed" if error else "done", stage=None, error=error)
        self.save()


def _commands_parser() -> argparse.ArgumentParser:
    """A parser of the commands a sweep runs, registered by their own modules as on the
    `raspicl` parser: compile (raspicl.cli_programs), compare and probe
    (raspicl.icl.cli_analysis). Not raspicl.cli.build_parser: raspicl.cli imports the sweep's
    own command (raspicl.icl.cli_sweep), and a command does not import the command line."""
    from raspicl import cli_programs
    from raspicl.icl import cli_analysis

    parser = argparse.ArgumentParser(prog="raspicl")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_programs.add_commands(sub)
    cli_analysis.add_commands(sub)
    return parser


def _cli(argv: list[str], log: Path) -> None:
    """Run a raspicl subcommand in this process, its output appended to `log`: the sweep's
    analyses are exactly `raspicl compile / compare / probe`, with the same files."""
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"$ raspicl {' '.join(argv)}", flush=True)
        try:
            args = _commands_parser().parse_args(argv)
        except SystemExit as exc:  # argparse: the sweep built a command line it refuses
            raise RaspiclError(f"raspicl {argv[0]} refused the command line {argv} "
                               f"(see {log})") from exc
        args.func(args)


def _analyses(job: Job, jdir: Path, status: _Status, spec_analyses: dict) -> None:
    model = str(jdir / "model")
    noise = ["--noise", repr(job.params["noise"])] if job.kind == "control" else []
    todo = pending_stages(job, status.data, spec_analyses)
    c = spec_analyses.get("compare")
    if c is not None and "compare" in todo:
        status.stage("compare")
        t0 = time.perf_counter()
        _cli(["compare", model, *noise, "--prompts", str(c["prompts"]), "--ilwd-prompts",
              str(c["ilwd_prompts"]), "--seed", str(c["seed"]), "--out", str(jdir / "compare")],
             jdir / "analysis.log")
        status.done("compare", c, time.perf_counter() - t0)
    p = spec_analyses.get("probe")
    if p is not None and "probe" in todo:
        status.stage("probe")
        t0 = time.perf_counter()
        targets = [a for t in p["targets"] for a in ("--target", t)]
        _cli(["probe", model, *noise, *targets, "--kind", p["kind"], "--prompts",
              str(p["prompts"]), "--seed", str(p["seed"]), "--out", str(jdir / "probe")],
             jdir / "analysis.log")
        status.done("probe", p, time.perf_counter() - t0)


def _train_one(job: Job, jdir: Path, status: _Status, settings: dict) -> None:
    from raspicl.icl.train import READY, train

    mdir = jdir / "model"
    model_cfg, task = model_and_task(job.params)
    cfg = train_config(job.params, settings["threads"], settings["device"],
                       settings["checkpoint_every"], settings["eval_every"])
    resume = (mdir / "config.json").is_file() or (mdir / READY).is_dir()
    status.stage("train")
    t0 = time.perf_counter()
    result = train(model_cfg, task, cfg, out=mdir, resume=resume, progress=False,
                   log_every=LOG_EVERY)
    status.done("train", {}, time.perf_counter() - t0, resumed=resume,
                final_loss=result.final_loss, query_error=result.eval.get("query_error"))


def group_name(jobs: list[Job]) -> str:
    """A batched group's directory: its members' names, hashed."""
    digest = hashlib.sha1("\n".join(sorted(j.name for j in jobs)).encode()).hexdigest()
    return f"group-{len(jobs)}-{digest[:12]}"


def _train_group(jobs: list[Job], out: Path, statuses: dict[str, _Status],
                 settings: dict) -> None:
    import shutil

    from raspicl.icl.batched import Member, group_step, train_batched

    gdir = out / "groups" / group_name(jobs)
    members = []
    for job in jobs:
        model_cfg, task = model_and_task(job.params)
        cfg = train_config(job.params, settings["threads"], settings["device"],
                           settings["checkpoint_every"], settings["eval_every"])
        members.append(Member(task, cfg, job_dir(out, job.name) / "model"))
        statuses[job.name].stage("train")
    resume = group_step(gdir) is not None
    t0 = time.perf_counter()
    results = train_batched(model_cfg, members, group=gdir, resume=resume, log_every=LOG_EVERY)
    seconds = time.perf_counter() - t0
    for job, result in zip(jobs, results, strict=True):
        statuses[job.name].done("train", {}, seconds, resumed=resume, batched=len(jobs),
                                final_loss=result.final_loss,
                                query_error=result.eval.get("query_error"))
    shutil.rmtree(gdir, ignore_errors=True)  # every member's checkpoint is written


def _compile(job: Job, jdir: Path, status: _Status) -> None:
    import shutil

    p = job.params
    status.stage("compile")
    t0 = time.perf_counter()
    mdir = jdir / "model"
    if mdir.exists():  # a compile is not resumable: start it again
        shutil.rmtree(mdir)
    sets = [a for k, v in [("d", p["d"]), ("n", p["n"]), *sorted(p["set"].items())]
            for a in ("--set", f"{k}={v!r}")]
    domain = ["--noise", repr(p["noise"])] if p["noise"] > 1.0 else []
    _cli(["compile", p["program"], *sets, *domain, "--out", str(mdir)], jdir / "analysis.log")
    status.done("compile", {}, time.perf_counter() - t0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, RaspiclError) else f"{type(exc).__name__}: {text}"


def run_unit(unit: dict, out: str, run: str, settings: dict) -> dict:
    """Run one unit of a sweep in this process (a worker): train (one job or a batched
    group) or compile, then the analyses of each job. Returns {job name: None or its error}.
    A failing job writes error.txt and its status, and never stops the other jobs' work."""
    import torch

    if settings["device"] == "cpu":
        torch.set_num_threads(settings["threads"])
    outp = Path(out)
    jobs = [Job(**j) for j in unit["jobs"]]
    analyses = unit["analyses"]
    statuses = {j.name: _Status(outp, j.name, run) for j in jobs}
    errors: dict[str, str | None] = {j.name: None for j in jobs}

    def fail(job: Job, exc: BaseException) -> None:
        jdir = job_dir(outp, job.name)
        (jdir / "error.txt").write_text("".join(traceback.format_exception(exc)))
        errors[job.name] = _one_line(exc)
        statuses[job.name].finish(errors[job.name])

    try:
        if unit["kind"] == "group":
            _train_group(jobs, outp, statuses, settings)
        elif unit["kind"] == "train":
            todo = pending_stages(jobs[0], statuses[jobs[0].name].data, analyses)
            if "train" in todo:
                _train_one(jobs[0], job_dir(outp, jobs[0].name), statuses[jobs[0].name],
                           settings)
        else:
            todo = pending_stages(jobs[0], statuses[jobs[0].name].data, analyses)
            if "compile" in todo:
                _compile(jobs[0], job_dir(outp, jobs[0].name), statuses[jobs[0].name])
    except Exception as exc:  # noqa: BLE001 - recorded, then the sweep goes on
        for job in jobs:
            fail(job, exc)
        return errors
    if unit.get("train_only"):  # a group's analyses come back as units of their own
        for job in jobs:
            statuses[job.name].data.update(state="trained", stage=None)
            statuses[job.name].save()
        return errors
    for job in jobs:
        try:
            _analyses(job, job_dir(outp, job.name), statuses[job.name], analyses)
            statuses[job.name].finish(None)
        except Exception as exc:  # noqa: BLE001
            fail(job, exc)
    return errors


# ------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """What a run of the sweep will do: every job, those already done, and the units of work
    for the rest (largest first, so that the longest jobs do not start last)."""

    jobs: list[Job]
    done: list[str]
    units: list[dict]


def _cost(jobs: list[Job]) -> float:
    """A rough relative cost of a unit (steps x layers x width^2 x models)."""
    j = jobs[0]
    if j.kind != "train":
        return 0.0
    p = j.params
    return float(p["steps"]) * p["layers"] * p["d_model"] ** 2 * p["batch"] * len(jobs)


def plan(spec: SweepSpec, out: Path) -> Plan:
    """Check every job's directory against the spec and group what is left into units.
    A directory made by another job (job.json disagrees) is an error naming it."""
    analyses = {"compare": spec.compare, "probe": spec.probe}
    analyses_on = spec.compare is not None or spec.probe is not None
    done, todo = [], []
    for job in spec.all_jobs:
        jdir = job_dir(out, job.name)
        saved = read_json(jdir / "job.json")
        if saved is not None and (saved.get("kind"), saved.get("params")) != (job.kind,
                                                                              job.params):
            diff = sorted(k for k in set(job.params) | set(saved.get("params") or {})
                          if job.params.get(k) != (saved.get("params") or {}).get(k))
            raise SpecError(f"{jdir / 'job.json'}: made by another job (differs in "
                            f"{', '.join(diff) or 'kind'}); use another --out or remove "
                            f"that directory")
        if (jdir / "job.json").exists() and saved is None:
            raise SpecError(f"{jdir / 'job.json'}: not readable JSON; remove the directory "
                            f"to run the job again")
        status = read_json(jdir / "status.json")
        if not pending_stages(job, status, analyses):
            done.append(job.name)
        else:
            todo.append((job, status))
    units = []
    if spec.trainer == "batched":
        groups: dict[tuple, list[Job]] = {}
        for job, status in todo:
            if job.kind == "train" and "train" in pending_stages(job, status, analyses):
                groups.setdefault(job.shape_key, []).append(job)
            else:
                units.append({"kind": "train" if job.kind == "train" else "control",
                              "jobs": [job]})
        # a group trains in one process; its models' analyses then run as units of their
        # own, spread over the workers instead of one after another in the group's
        units += [{"kind": "group", "jobs": g, "train_only": bool(analyses_on)}
                  for g in groups.values()]
    else:
        units = [{"kind": "train" if job.kind == "train" else "control", "jobs": [job]}
                 for job, _ in todo]
    units.sort(key=lambda u: -_cost(u["jobs"]))
    for u in units:
        u["name"] = u["jobs"][0].name if len(u["jobs"]) == 1 else group_name(u["jobs"])
        u["analyses"] = analyses
        u["jobs"] = [{"name": j.name, "kind": j.kind, "params": j.params} for j in u["jobs"]]
    return Plan(spec.all_jobs, done, units)


def prepare(spec: SweepSpec, out: Path) -> Plan:
    """Write DIR/sweep.json, DIR/spec.toml and every job's job.json; return the plan."""
    p = plan(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.toml").write_text(spec.text)
    write_json(out / "sweep.json", {
        "format": FORMAT, "spec": spec.path, "name": spec.name,
        "analyses": {"compare": spec.compare, "probe": spec.probe},
        "jobs": [{"name": j.name, "kind": j.kind, "cell": j.cell, "params": j.params}
                 for j in spec.all_jobs]})
    for job in spec.all_jobs:
        path = job_dir(out, job.name) / "job.json"
        if not path.exists():
            write_json(path, {"name": job.name, "kind": job.kind, "params": job.params})
    return p


# ------------------------------------------------------------------------- progress


def _tail_line(path: Path) -> dict | None:
    """The last JSON line of a file (train_log.jsonl), read from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def job_line(out: Path, name: str, params: dict) -> str:
    """One status line of a running job: its stage, and for training its step and loss."""
    jdir = job_dir(out, name)
    status = read_json(jdir / "status.json") or {}
    stage = status.get("stage") or "starting"
    text = f"{name}: {stage}"
    if stage == "train":
        last = _tail_line(jdir / "model" / "train_log.jsonl")
        if last:
            text += (f" step {last['step']}/{params.get('steps', '?')} loss "
                     f"{last['loss']:.3g} ({last.get('steps_per_s', 0):.0f} steps/s)")
    return text


class Progress:
    """One bar over jobs and a status line per running unit, on stderr. Where stderr is not a
    terminal (a log file, CI), a line per finished job and a status block every `every`
    seconds instead; quiet: nothing until the summary."""

    def __init__(self, total: int, done: int, slots: int, quiet: bool = False,
                 every: float = 60.0) -> None:
        self.total, self.done, self.quiet = total, done, quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.every, self.last = every, time.monotonic()
        self.bar = None
        self.lines = []
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="jobs", unit="job",
                            dynamic_ncols=True, position=0)
            self.lines = [tqdm(total=0, bar_format="{desc}", position=i + 1,
                               dynamic_ncols=True) for i in range(slots)]

    def job_finished(self, name: str, error: str | None) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if error:
                self.bar.write(f"failed {name}: {error}")
        elif not self.quiet:
            verb = "failed" if error else "done"
            print(f"[{self.done}/{self.total}] {verb} {name}" + (f": {error}" if error else ""),
                  file=sys.stderr, flush=True)

    def running(self, lines: list[str]) -> None:
        if self.bar is not None:
            for i, bar in enumerate(self.lines):
                bar.set_description_str(lines[i] if i < len(lines) else "", refresh=True)
            self.bar.refresh()
        elif not self.quiet and time.monotonic() - self.last >= self.every and lines:
            self.last = time.monotonic()
            print(f"[{self.done}/{self.total}] running:\n  " + "\n  ".join(lines),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.lines:
            bar.close()
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------- engines


class LocalEngine:
    """A pool of `workers` processes on this machine (spawned: a fresh interpreter each, so no
    torch state or thread pool is inherited), each running units one after another."""

    name = "local"

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.slots = workers
        self.pool = ProcessPoolExecutor(max_workers=workers,
                                        mp_context=multiprocessing.get_context("spawn"))

    def submit(self, unit: dict, out: str, run: str, settings: dict):
        return self.pool.submit(run_unit, unit, out, run, settings)

    @staticmethod
    def done(handle) -> bool:
        return handle.done()

    @staticmethod
    def result(handle) -> dict:
        return handle.result()

    def stop(self, handles) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def make_engine(spec: SweepSpec, out: Path, workers: int, settings: dict):
    if spec.engine == "local":
        return LocalEngine(workers)
    from raspicl.icl.sweep_submitit import SubmititEngine

    return SubmititEngine(out, workers, settings, dict(spec.engine_options), run_unit)


# ------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What a run of the sweep did: jobs done before it, done by it, and failed (name ->
    one-line error)."""

    total: int
    skipped: list[str]
    finished: list[str]
    failed: dict[str, str]


def choose_workers(spec: SweepSpec, jobs: int | None, threads: int) -> int:
    """Workers of the local pool (or jobs at once on submitit's local executor): the spec's
    or --jobs, else cores // threads; jobs x threads may not exceed the cores (on purpose:
    torch with more threads than free cores ran small models 15 to 900 times slower here)."""
    n = jobs if jobs is not None else spec.jobs
    have = cores()
    if n is None:
        return max(1, have // threads)
    local = spec.engine == "local" or spec.engine_options.get("cluster") == "local"
    if n * threads > have and local:
        raise SpecError(f"sweep.jobs x sweep.threads = {n} x {threads} = {n * threads} "
                        f"exceeds the {have} cores of this machine (oversubscribed small "
                        f"models run many times slower; lower sweep.jobs or --jobs)")
    return n


def run_sweep(spec: SweepSpec, out: str | Path, jobs: int | None = None,
              threads: int | None = None, device: str | None = None, quiet: bool = False,
              poll: float = 0.5) -> SweepResult:
    """Run every pending job of the spec (see the module doc) and return what happened."""
    out = Path(out)
    threads = threads if threads is not None else spec.threads
    workers = choose_workers(spec, jobs, threads)
    settings = {"threads": threads, "device": device or spec.device,
                "checkpoint_every": spec.checkpoint_every, "eval_every": spec.eval_every}
    p = prepare(spec, out)
    run = uuid.uuid4().hex[:12]
    result = SweepResult(len(p.jobs), list(p.done), [], {})
    if not p.units:
        return result
    saved_env = {k: os.environ.get(k) for k in THREAD_VARS}
    for k in THREAD_VARS:  # BLAS reads these at import, in the workers this spawns
        os.environ[k] = str(threads)
    slots = min(workers, len(p.units))
    progress = Progress(len(p.jobs), len(p.done), slots, quiet)
    engine = None
    inflight: dict = {}
    try:
        engine = make_engine(spec, out, slots, settings)
        queue = list(p.units)
        while queue or inflight:
            while queue and len(inflight) < engine.slots:
                unit = queue.pop(0)
                inflight[engine.submit(unit, str(out), run, settings)] = unit
            for handle in [h for h in inflight if engine.done(h)]:
                unit = inflight.pop(handle)
                try:
                    errors = engine.result(handle)
                except Exception as exc:  # noqa: BLE001 - a worker died: its jobs failed
                    errors = {j["name"]: f"the worker running it failed: {_one_line(exc)}"
                              for j in unit["jobs"]}
                for name, error in errors.items():
                    if not error and unit.get("train_only"):  # its analyses, next
                        job = next(j for j in unit["jobs"] if j["name"] == name)
                        queue.insert(0, {"kind": "train", "jobs": [job], "name": name,
                                         "analyses": unit["analyses"]})
                        continue
                    if error:
                        result.failed[name] = error
                    else:
                        result.finished.append(name)
                    progress.job_finished(name, error)
            progress.running([line for u in inflight.values() for line in _unit_lines(out, u)])
            if inflight:
                time.sleep(poll)
    except KeyboardInterrupt:
        if engine is not None:
            engine.stop(list(inflight))
        progress.close()
        print(f"raspicl sweep: interrupted with {len(inflight)} unit(s) running; run the "
              f"same command again to resume (each job continues from its last checkpoint)",
              file=sys.stderr)
        raise
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    progress.close()
    engine.close()
    return result


def _unit_lines(out: Path, unit: dict) -> list[str]:
    jobs = unit["jobs"]
    if len(jobs) == 1:
        return [job_line(out, jobs[0]["name"], jobs[0]["params"])]
    first = job_line(out, jobs[0]["name"], jobs[0]["params"])
    return [f"{unit['name']} ({len(jobs)} models batched): {first.split(': ', 1)[-1]}"]
