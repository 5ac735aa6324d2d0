"""The cluster engine of `raspicl sweep`: the same units of work (raspicl.icl.sweep.run_unit,
which the sweep hands the engine as `work`: this module does not import the sweep) submitted
through submitit (facebookincubator/submitit), to SLURM, or as local processes for
tests and for machines without a scheduler (`sweep.engine = "submitit"`, the optional extra
`raspicl[cluster]`; docs/experiments.md says why submitit and not Ray).

    [engine.submitit]
    cluster = "slurm"          # "local", "slurm", or leave it out: SLURM where sbatch exists
    timeout_min = 240          # anything else is handed to AutoExecutor.update_parameters
    slurm_partition = "gpu"
    gpus_per_node = 1

A unit is a `Task`, which submitit's Checkpointable makes requeueable: when SLURM preempts or
times out a job, submitit resubmits the same call, which continues from the jobs' checkpoints
(bitwise, as a rerun of the sweep does). submitit pickles the call (a function and plain
dicts), never weights. DIR/submitit/ holds its files and each job's stdout and stderr; DIR must
be on a file system the nodes share, since the workers write the job directories.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from raspicl.errors import RaspiclError
from raspicl.icl.sweep_spec import SpecError

try:
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - the extra is missing
    submitit = None
    Checkpointable = object

# submitit's local executor kills a job after timeout_min (its default: 2 minutes); a local
# sweep job should end when it is done, so the local default is a week.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


class Task(Checkpointable):
    """One unit of a sweep, as submitit runs it (requeued as itself on preemption): `work`
    (raspicl.icl.sweep.run_unit) called on the unit's plain values. The function pickles as
    its name, so a worker imports its module, raspicl.icl.sweep."""

    def __init__(self, work: Callable[[dict, str, str, dict], dict]) -> None:
        self.work = work

    def __call__(self, unit: dict, out: str, run: str, settings: dict) -> dict:
        return self.work(unit, out, run, settings)


class SubmititEngine:
    """Units as submitit jobs. On the local executor at most `workers` run at once (it would
    otherwise start every job together); on a cluster every unit is submitted, and the
    scheduler decides."""

    name = "submitit"

    def __init__(self, out: Path, workers: int, settings: dict, options: dict,
                 work: Callable[[dict, str, str, dict], dict]) -> None:
        self.work = work  # what each unit runs (raspicl.icl.sweep.run_unit)
        if submitit is None:
            raise RaspiclError("sweep.engine = \"submitit\" needs the submitit package: pip "
                               "install 'raspicl[cluster]' (or pip install submitit)")
        cluster = options.pop("cluster", None)
        if cluster not in (None, "local", "slurm", "debug"):
            raise SpecError(f"engine.submitit.cluster: must be local, slurm or debug, got "
                            f"{cluster!r}")
        try:
            self.executor = submitit.AutoExecutor(folder=Path(out) / "submitit",
                                                  cluster=cluster)
        except (RuntimeError, ValueError) as exc:
            raise SpecError(f"engine.submitit.cluster: {exc}") from None
        local = self.executor.cluster in ("local", "debug")
        params = {"timeout_min": LOCAL_TIMEOUT_MIN} if local else {}
        if not local:
            params["cpus_per_task"] = settings["threads"]
        params.update(options)
        try:
            self.executor.update_parameters(**params)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"engine.submitit: {' '.join(str(exc).split())}") from None
        self.slots = workers if local else 1 << 30

    def submit(self, unit: dict, out: str, run: str, settings: dict):
        return self.executor.submit(Task(self.work), unit, out, run, settings)

    @staticmethod
    def done(job) -> bool:
        return job.done()

    @staticmethod
    def result(job) -> dict:
        return job.result()

    @staticmethod
    def stop(jobs) -> None:
        for job in jobs:
            job.cancel(check=False)

    def close(self) -> None:
        pass
