"""The sweep specification: a TOML file naming a grid of training runs and what to measure on
each model (`raspicl sweep SPEC --out DIR`, docs/experiments.md "Sweeps").

    [sweep]              how to run: engine, jobs at once, threads per job, device, trainer
    [defaults]           every job's settings unless a grid block says otherwise
    [[grid]]             one block of the grid: the product of its list-valued keys over the
                         defaults; the grid is the union of its blocks (repeats run once)
    [analyses]           compare = {...} and probe = {...}: run on every model
    [[controls]]         compiled raspicl programs compared (and probed) beside the trained
                         models: compile once per noise level, then the analyses
    [engine.submitit]    parameters handed to submitit's executor (cluster engine only)

Everything is checked before anything runs, and every error is one line naming the key at
fault (`grid[1].layers: ...`), because a typo in a spec that would otherwise cost hours of
training must cost nothing. The task's keys (`task`, `sparsity`) are checked by
raspicl.icl.tasks.RegressionTask itself, its messages renamed to the spec's keys. A job is a
dict of plain values (`Job.params`): its name is built from them, so that a job keeps its
directory (and its checkpoint) when the spec is edited around it, and a directory whose
job.json disagrees with its name's job is refused, never reused.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raspicl.errors import RaspiclError

# --------------------------------------------------------------------------- the keys

# Keys of [defaults] and of a [[grid]] block, with their defaults (None: required). The train
# options follow raspicl.icl.train.TrainConfig; `curriculum` is the interval in steps between
# Garg et al.'s stages (true: 2000, false: none).
TRAIN_KEYS: dict[str, Any] = {
    "d": None, "n": None, "layers": None, "d_model": None, "heads": None, "steps": None,
    "noise": 0.0, "w_scale": 1.0, "curriculum": False, "seeds": [0], "fixed_w": False,
    "batch": 64, "lr": 1e-3, "warmup": 1000, "weight_decay": 0.01, "grad_clip": 1.0,
    "min_lr_ratio": 0.1, "eval_prompts": 1024, "checkpoint_every": 1000, "eval_every": 2000,
}
# The task's keys (raspicl.icl.tasks.RegressionTask.kind, .sparsity): `task` is linear, sparse
# or logistic; `sparsity` is for task "sparse" only (default tasks.DEFAULT_SPARSITY). A linear
# job's params hold neither key, so that its name and job.json are those of earlier versions
# (and its directory still resumes).
TASK_KEYS: dict[str, Any] = {"task": "linear", "sparsity": None}
GRID_KEYS = (*TRAIN_KEYS, *TASK_KEYS)
# Keys whose change does not change the weights (TrainConfig.RESUMABLE): not in a job's name
# or identity, so that they may be edited between runs of a sweep.
NOT_IDENTITY = ("checkpoint_every", "eval_every")
INT_AT_LEAST = {"d": 1, "n": 1, "layers": 1, "d_model": 1, "heads": 1, "steps": 1, "batch": 1,
                "warmup": 0, "eval_prompts": 1, "checkpoint_every": 0, "eval_every": 0}
FLOAT_RANGES = {"noise": (0.0, math.inf), "w_scale": (0.0, math.inf), "lr": (0.0, math.inf),
                "weight_decay": (0.0, math.inf), "grad_clip": (0.0, math.inf),
                "min_lr_ratio": (0.0, 1.0)}
DEFAULT_INTERVAL = 2000  # curriculum = true
SWEEP_KEYS = {"name": "", "engine": "local", "jobs": None, "threads": 1, "device": "cpu",
              "trainer": "single"}
ENGINES = ("local", "submitit")
TRAINERS = ("single", "batched")
COMPARE_KEYS = {"prompts": 1024, "ilwd_prompts": 128, "seed": 0}
PROBE_KEYS = {"kind": "linear", "prompts": 2000, "seed": 0, "targets": ["w_ols", "xty"]}
PROBE_KINDS = ("linear", "mlp", "both")
PROBE_TARGETS = ("w_ols", "xty")
CONTROL_KEYS = {"program": None, "set": {}, "noise": [0.0], "d": None, "n": None}
CONTROL_PROGRAMS = ("batch_gd", "ridge", "sgd", "gd_step", "sherman_morrison")
TOP_KEYS = ("sweep", "defaults", "grid", "analyses", "controls", "engine")


class SpecError(RaspiclError):
    """A sweep spec that cannot run; the message names the file and the key at fault."""


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Job:
    """One grid point: train a model (kind "train") or compile a program (kind "control"),
    then the analyses. `params` holds everything that decides its weights, and nothing else."""

    name: str
    kind: str
    params: dict

    @property
    def cell(self) -> str:
        """The name without the seed: the seeds of one cell are aggregated by the report."""
        return re.sub(r"-seed\d+$", "", self.name)

    @property
    def shape_key(self) -> tuple:
        """What must agree for jobs to train together in one batched model: everything but
        the seed, the noise and w's scale (which only change the prompts)."""
        return tuple(sorted((k, repr(v)) for k, v in self.params.items()
                            if k not in ("seed", "noise", "w_scale")))


@dataclass
class SweepSpec:
    """A parsed, checked spec (SweepSpec.load): how to run, the jobs, the analyses."""

    path: str
    name: str
    engine: str
    jobs: int | None
    threads: int
    device: str
    trainer: str
    train_jobs: list[Job]
    control_jobs: list[Job]
    compare: dict | None
    probe: dict | None
    engine_options: dict = field(default_factory=dict)
    checkpoint_every: int = 1000
    eval_every: int = 2000
    text: str = ""

    @property
    def all_jobs(self) -> list[Job]:
        return self.train_jobs + self.control_jobs

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, where: str = "spec") -> SweepSpec:
        data = _toml_loads(text, where)
        try:
            return _parse(data, where, text)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None


def _toml_loads(text: str, where: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 only
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: not valid TOML: {exc}") from None


# --------------------------------------------------------------------------- checks


def _unknown(table: dict, known, where: str) -> None:
    extra = [k for k in table if k not in known]
    if extra:
        raise SpecError(f"{where}.{extra[0]}: unknown key (known: {', '.join(known)})"
                        if where else f"{extra[0]}: unknown key (known: {', '.join(known)})")


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a table, got {type(value).__name__}")
    return value


def _int(value, low: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"{where}: must be an integer >= {low}, got {value!r}")
    return value


def _float(value, low: float, high: float, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not low <= value <= high or (positive and value <= 0):
        bound = f"> {low:g}" if positive else f">= {low:g}"
        if high < math.inf:
            bound += f" and <= {high:g}"
        raise SpecError(f"{where}: must be a finite number {bound}, got {value!r}")
    return float(value)


def check_train_value(key: str, value, where: str):
    """One train key's value, checked (and normalised: curriculum -> interval or None)."""
    if key == "task":
        from raspicl.icl.tasks import KINDS

        if value not in KINDS:
            raise SpecError(f"{where}: must be one of {', '.join(KINDS)}, got {value!r}")
        return value
    if key == "sparsity":
        return _int(value, 1, where)
    if key in INT_AT_LEAST:
        return _int(value, INT_AT_LEAST[key], where)
    if key in FLOAT_RANGES:
        low, high = FLOAT_RANGES[key]
        return _float(value, low, high, where, positive=(key == "lr"))
    if key == "fixed_w":
        if not isinstance(value, bool):
            raise SpecError(f"{where}: must be true or false, got {value!r}")
        return value
    if key == "curriculum":
        if value is True:
            return DEFAULT_INTERVAL
        if value is False:
            return None
        return _int(value, 1, where + " (steps between stages, or true / false)")
    if key == "seeds":
        values = value if isinstance(value, list) else [value]
        if not values:
            raise SpecError(f"{where}: empty list (give at least one seed)")
        out = [_int(v, 0, f"{where}[{i}]") for i, v in enumerate(values)]
        if len(set(out)) != len(out):
            raise SpecError(f"{where}: repeated seed in {out}")
        return out
    raise SpecError(f"{where}: unknown key")  # pragma: no cover - callers check the names


def _grid_values(block: dict, where: str) -> dict[str, list]:
    """A grid block's keys, each as the list of its checked values."""
    out = {}
    for key, value in block.items():
        if key == "seeds":  # a list of seeds is one value (the seeds to run), not a grid axis
            out[key] = [check_train_value(key, value, f"{where}.{key}")]
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            raise SpecError(f"{where}.{key}: empty list (a grid axis needs at least one "
                            f"value)")
        out[key] = [check_train_value(key, v, f"{where}.{key}" + (f"[{i}]" if
                                                                 isinstance(value, list)
                                                                 else ""))
                    for i, v in enumerate(values)]
    return out


def _check_point(point: dict, where: str) -> None:
    """Cross-key checks of one grid point (the model, TrainConfig and RegressionTask would
    refuse it). Fills in a sparse task's default sparsity."""
    missing = [k for k, v in TRAIN_KEYS.items() if v is None and point.get(k) is None]
    if missing:
        raise SpecError(f"{where}.{missing[0]}: required (give it in [defaults] or in the "
                        f"block)")
    if point["d_model"] % point["heads"]:
        raise SpecError(f"{where}.d_model: {point['d_model']} is not a multiple of heads "
                        f"({point['heads']})")
    if point["warmup"] >= point["steps"]:
        raise SpecError(f"{where}.warmup: {point['warmup']} must be below steps "
                        f"({point['steps']})")
    from raspicl.icl.tasks import DEFAULT_SPARSITY, RegressionTask

    defaulted = point["task"] == "sparse" and point["sparsity"] is None
    if defaulted:
        point["sparsity"] = DEFAULT_SPARSITY
    try:  # RegressionTask's own checks, its messages renamed to the spec's keys
        RegressionTask(point["d"], point["n"], noise=point["noise"],
                       w_scale=point["w_scale"], kind=point["task"],
                       sparsity=point["sparsity"])
    except ValueError as exc:
        m = re.fullmatch(r"RegressionTask\.(\w+) (.*)", str(exc), re.S)
        if not m:  # pragma: no cover - RegressionTask's messages all name their field
            raise SpecError(f"{where}.task: {exc}") from None
        key = "task" if m.group(1) == "kind" else m.group(1)
        text = re.sub(r"\bkind\b", "task", m.group(2))
        if key == "sparsity" and defaulted:
            text += " (the default; give sparsity)"
        raise SpecError(f"{where}.{key}: {text}") from None


def _fmt(v) -> str:
    """A value as it appears in a directory name: 0.25, 2000, a list as 0_0.5_1."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "_".join(_fmt(x) for x in v)
    return str(v)


def job_name(params: dict) -> str:
    """The directory name of a training job: its task where not linear (`sparse3-`,
    `logistic-`), its sizes, noise, steps, curriculum and seed, then any option that differs
    from TRAIN_KEYS' default (so names stay short)."""
    p = params
    cur = f"cur{p['curriculum']}" if p["curriculum"] else "nocur"
    task = p.get("task", "linear")
    prefix = "" if task == "linear" else f"{task}{p.get('sparsity') or ''}-"
    name = (f"{prefix}d{p['d']}-n{p['n']}-L{p['layers']}-H{p['d_model']}-h{p['heads']}"
            f"-noise{_fmt(p['noise'])}-w{_fmt(p['w_scale'])}-steps{p['steps']}-{cur}")
    if p["fixed_w"]:
        name += "-fixedw"
    for key in ("batch", "lr", "warmup", "weight_decay", "grad_clip", "min_lr_ratio",
                "eval_prompts"):
        if p[key] != TRAIN_KEYS[key]:
            name += f"-{key}{_fmt(p[key])}"
    if p.get("trainer", "single") != "single":
        name += f"-{p['trainer']}"
    return f"{name}-seed{p['seed']}"


def control_name(params: dict) -> str:
    """The directory name of a compiled control: program, its parameters, noise."""
    sets = "".join(f"-{k}={_fmt(v)}" for k, v in sorted(params["set"].items())
                   if k not in ("d", "n"))
    sets = re.sub(r"[^A-Za-z0-9._=-]+", "", sets)
    return (f"ctl-{params['program']}-d{params['d']}-n{params['n']}{sets}"
            f"-noise{_fmt(params['noise'])}")


def _parse(data: dict, where: str, text: str) -> SweepSpec:
    _unknown(data, TOP_KEYS, "")
    sweep = _table(data, "sweep", "sweep")
    _unknown(sweep, SWEEP_KEYS, "sweep")
    s = {**SWEEP_KEYS, **sweep}
    if not isinstance(s["name"], str):
        raise SpecError(f"sweep.name: must be a string, got {s['name']!r}")
    if s["engine"] not in ENGINES:
        raise SpecError(f"sweep.engine: must be one of {', '.join(ENGINES)}, got "
                        f"{s['engine']!r}")
    if s["trainer"] not in TRAINERS:
        raise SpecError(f"sweep.trainer: must be one of {', '.join(TRAINERS)}, got "
                        f"{s['trainer']!r}")
    jobs = None if s["jobs"] is None else _int(s["jobs"], 1, "sweep.jobs")
    threads = _int(s["threads"], 1, "sweep.threads")
    device = s["device"]
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or re.fullmatch(
            r"cuda:\d+", device)):
        raise SpecError(f"sweep.device: must be cpu, cuda or cuda:N, got {device!r}")

    defaults = _table(data, "defaults", "defaults")
    _unknown(defaults, GRID_KEYS, "defaults")
    base = {}
    for key, default in {**TRAIN_KEYS, **TASK_KEYS}.items():
        value = defaults.get(key, default)
        base[key] = None if value is None else check_train_value(key, value,
                                                                  f"defaults.{key}")
    if "grid" not in data:
        raise SpecError("grid: missing (give at least one [[grid]] table; an empty one, "
                        "[[grid]], runs the defaults alone)")
    grid = data["grid"]
    if not isinstance(grid, list) or not all(isinstance(b, dict) for b in grid):
        raise SpecError("grid: must be an array of tables ([[grid]])")
    if not grid:
        raise SpecError("grid: empty (give at least one [[grid]] table)")
    train_jobs: dict[str, Job] = {}
    for bi, block in enumerate(grid):
        bw = f"grid[{bi}]"
        _unknown(block, GRID_KEYS, bw)
        axes = _grid_values(block, bw)
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            point = {**base, **dict(zip(keys, combo, strict=True))}
            _check_point(point, bw)
            for seed in point["seeds"]:
                params = {k: v for k, v in point.items()
                          if k != "seeds" and k not in NOT_IDENTITY and k not in TASK_KEYS}
                if point["task"] != "linear":  # a linear job's params are those of old
                    params["task"] = point["task"]
                    if point["sparsity"] is not None:
                        params["sparsity"] = point["sparsity"]
                params["seed"] = seed
                params["trainer"] = s["trainer"]
                job = Job(job_name(params), "train", params)
                train_jobs.setdefault(job.name, job)

    analyses = _table(data, "analyses", "analyses")
    _unknown(analyses, ("compare", "probe"), "analyses")
    compare = _analysis(analyses, "compare", COMPARE_KEYS)
    probe = _analysis(analyses, "probe", PROBE_KEYS)
    if probe is not None:
        if probe["kind"] not in PROBE_KINDS:
            raise SpecError(f"analyses.probe.kind: must be one of {', '.join(PROBE_KINDS)}, "
                            f"got {probe['kind']!r}")
        t = probe["targets"]
        if not isinstance(t, list) or not t or any(x not in PROBE_TARGETS for x in t):
            raise SpecError(f"analyses.probe.targets: must be a non-empty list of "
                            f"{', '.join(PROBE_TARGETS)}, got {t!r}")

    controls = data.get("controls", [])
    if not isinstance(controls, list) or not all(isinstance(c, dict) for c in controls):
        raise SpecError("controls: must be an array of tables ([[controls]])")
    control_jobs: dict[str, Job] = {}
    for ci, c in enumerate(controls):
        cw = f"controls[{ci}]"
        _unknown(c, CONTROL_KEYS, cw)
        if "program" not in c:
            raise SpecError(f"{cw}.program: required (one of {', '.join(CONTROL_PROGRAMS)}, "
                            f"or a path to a program file)")
        if not isinstance(c["program"], str) or not c["program"]:
            raise SpecError(f"{cw}.program: must be a program name or file, got "
                            f"{c['program']!r}")
        sets = c.get("set", {})
        if not isinstance(sets, dict):
            raise SpecError(f"{cw}.set: must be a table of the program's parameters")
        if "d" in sets or "n" in sets:
            raise SpecError(f"{cw}.set: give d and n as {cw}.d and {cw}.n (default: "
                            f"[defaults]'s)")
        d = _int(c.get("d", base["d"]), 1, f"{cw}.d") if c.get("d", base["d"]) is not None \
            else None
        n = _int(c.get("n", base["n"]), 1, f"{cw}.n") if c.get("n", base["n"]) is not None \
            else None
        if d is None or n is None:
            raise SpecError(f"{cw}.{'d' if d is None else 'n'}: required (here or in "
                            f"[defaults])")
        noises = c.get("noise", [0.0])
        noises = noises if isinstance(noises, list) else [noises]
        if not noises:
            raise SpecError(f"{cw}.noise: empty list (give at least one noise level)")
        for i, sigma in enumerate(noises):
            sigma = _float(sigma, 0.0, math.inf, f"{cw}.noise[{i}]")
            params = {"program": c["program"], "set": dict(sets), "d": d, "n": n,
                      "noise": sigma}
            job = Job(control_name(params), "control", params)
            control_jobs.setdefault(job.name, job)

    engine = _table(data, "engine", "engine")
    _unknown(engine, ("submitit",), "engine")
    engine_options = _table(engine, "submitit", "engine.submitit")
    for key, value in engine_options.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SpecError(f"engine.submitit.{key}: not a parameter name")
        if isinstance(value, dict):
            raise SpecError(f"engine.submitit.{key}: must be a plain value or a list")

    return SweepSpec(
        path=where, name=s["name"], engine=s["engine"], jobs=jobs, threads=threads,
        device=device, trainer=s["trainer"], train_jobs=list(train_jobs.values()),
        control_jobs=list(control_jobs.values()), compare=compare, probe=probe,
        engine_options=dict(engine_options), checkpoint_every=base["checkpoint_every"],
        eval_every=base["eval_every"], text=text)


def _analysis(analyses: dict, key: str, known: dict) -> dict | None:
    value = analyses.get(key)
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise SpecError(f"analyses.{key}: must be a table (or true), got {value!r}")
    _unknown(value, known, f"analyses.{key}")
    out = {**known, **value}
    for k in ("prompts", "ilwd_prompts"):
        if k in out:
            out[k] = _int(out[k], 1, f"analyses.{key}.{k}")
    out["seed"] = _int(out["seed"], 0, f"analyses.{key}.seed")
    if key == "probe" and out["prompts"] < 8:
        raise SpecError(f"analyses.probe.prompts: must be at least 8 (3/4 train, 1/4 test), "
                        f"got {out['prompts']}")
    return out
