"""raspicl sweep: the spec's checks, a two-job sweep on the local pool and on submitit's local
executor (the same weights, bit for bit), skipping finished jobs, and kill-and-resume ending
with the weights of an uninterrupted run (docs/experiments.md, "Sweeps")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raspicl.cli import main
from raspicl.icl.sweep import plan, prepare, run_sweep, run_unit
from raspicl.icl.sweep_spec import SpecError, SweepSpec
from raspicl.icl.train import READY, STAGE, train

ROOT = Path(__file__).resolve().parent.parent

TINY = """
[sweep]
name = "tiny"
jobs = 1

[defaults]
d = 2
n = 4
layers = 1
d_model = 16
heads = 2
steps = 30
warmup = 5
batch = 8
curriculum = 10
eval_prompts = 32
checkpoint_every = 10

[[grid]]
seeds = [0, 1]
"""
ANALYSES = """
[analyses]
compare = {prompts = 64, ilwd_prompts = 8}
probe = {prompts = 48}
"""


def _spec(text: str, tmp_path: Path, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _weights(job: Path) -> dict[str, torch.Tensor]:
    return load_file(str(job / "model" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------- the spec


def test_a_spec_expands_its_grid_blocks_over_the_defaults():
    spec = SweepSpec.parse(TINY + """
[[grid]]
layers = [2, 4]
noise = [0.0, 0.5]
seeds = [3]

[[controls]]
program = "ridge"
set = {lam = 0.5}
noise = [0.0, 0.5]
""")
    names = [j.name for j in spec.train_jobs]
    assert len(names) == 2 + 4 and len(set(names)) == 6
    assert "d2-n4-L1-H16-h2-noise0-w1-steps30-cur10-batch8-warmup5-eval_prompts32-seed1" \
        in names
    assert sum("L4" in n and "noise0.5" in n and n.endswith("seed3") for n in names) == 1
    assert [j.name for j in spec.control_jobs] == ["ctl-ridge-d2-n4-lam=0.5-noise0",
                                                   "ctl-ridge-d2-n4-lam=0.5-noise0.5"]
    job = spec.train_jobs[0]
    assert job.params["curriculum"] == 10 and job.cell == job.name[:-len("-seed0")]
    assert "checkpoint_every" not in job.params  # may change between runs


def test_the_shipped_specs_name_the_studies_of_the_docs():
    d8 = SweepSpec.load(ROOT / "experiments" / "paper_d8.toml")
    cells = sorted((j.params["layers"], j.params["noise"]) for j in d8.train_jobs)
    assert cells == sorted([(L, 0.0) for L in (1, 2, 4, 8) for _ in range(2)]
                           + [(4, s) for s in (0.25, 0.5) for _ in range(2)])
    assert {j.params["d"] for j in d8.train_jobs} == {8} and d8.device == "cuda"
    cpu = SweepSpec.load(ROOT / "experiments" / "cpu_d3.toml")
    seeds: dict = {}
    for j in cpu.train_jobs:
        p = j.params
        key = (p["layers"], p["d_model"], p["noise"], p["fixed_w"])
        seeds.setdefault(key, []).append(p["seed"])
    assert seeds == {(1, 64, 0.0, False): [0, 1, 2], (2, 64, 0.0, False): [0, 1, 2],
                     (4, 64, 0.0, False): [0, 1, 2], (2, 64, 0.25, False): [0, 1, 2],
                     (2, 64, 0.5, False): [0, 1, 2], (8, 64, 0.0, False): [0],
                     (1, 16, 0.0, False): [0], (1, 256, 0.0, False): [0],
                     (2, 64, 0.0, True): [0]}
    assert len(cpu.control_jobs) == 6


@pytest.mark.parametrize("edit, key", [
    ("[defaults]\nlayer = 2\n", "defaults.layer: unknown key"),
    ("[[grid]]\nlayers = 2\nwidth = 3\n", "grid[1].width: unknown key"),
    ("[sweep]\nengines = 'local'\n", "sweep.engines: unknown key"),
    ("[analysis]\ncompare = true\n", "analysis: unknown key"),
    ("[[grid]]\nlayers = []\n", "grid[1].layers: empty list"),
    ("[[grid]]\nd_model = -16\n", "grid[1].d_model: must be an integer >= 1, got -16"),
    ("[[grid]]\nd_model = [16, 0]\n", "grid[1].d_model[1]: must be an integer >= 1"),
    ("[[grid]]\nnoise = -0.5\n", "grid[1].noise: must be a finite number >= 0"),
    ("[[grid]]\nseeds = []\n", "grid[1].seeds: empty list"),
    ("[[grid]]\nd_model = 18\nheads = 4\n", "grid[1].d_model: 18 is not a multiple of heads"),
    ("[[grid]]\nwarmup = 30\n", "grid[1].warmup: 30 must be below steps (30)"),
    ("[analyses]\nprobe = {kind = 'deep'}\n", "analyses.probe.kind: must be one of"),
    ("[[controls]]\nset = {lam = 1}\n", "controls[0].program: required"),
])
def test_a_malformed_spec_is_one_line_naming_the_key(tmp_path, capsys, edit, key):
    head, _, rest = edit.partition("\n")
    # a key added to a table TINY has, or a table (a grid block) appended
    text = TINY.replace(head + "\n", edit) if head in ("[sweep]", "[defaults]") \
        else TINY + edit
    spec = _spec(text, tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and key in err, err
    assert err.startswith(f"raspicl: error: {spec}: ")
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("text, key", [
    ("grid = []\n[defaults]\nd = 2\n", "grid: empty"),
    ("[defaults]\nd = 2\n", "grid: missing"),
    ("[sweep]\njobs = 0\n[[grid]]\n", "sweep.jobs: must be an integer >= 1, got 0"),
    ("[[grid]]\nd = 2\n", "grid[0].n: required"),
    ("[[grid\n", "not valid TOML"),
])
def test_empty_grids_and_missing_sizes_are_refused(text, key):
    with pytest.raises(SpecError, match="^spec: ") as info:
        SweepSpec.parse(text)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_more_jobs_than_cores_is_refused_on_the_local_pool(tmp_path, capsys):
    spec = _spec(TINY.replace("jobs = 1", "jobs = 512"), tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "sweep.jobs x sweep.threads = 512 x 1" in capsys.readouterr().err


def test_a_job_directory_made_by_another_job_is_refused(tmp_path):
    spec = SweepSpec.parse(TINY)
    jdir = tmp_path / "jobs" / spec.train_jobs[0].name
    jdir.mkdir(parents=True)
    (jdir / "job.json").write_text(json.dumps(
        {"name": "x", "kind": "train", "params": {**spec.train_jobs[0].params, "lr": 0.5}}))
    with pytest.raises(SpecError, match="made by another job .differs in lr"):
        plan(spec, tmp_path)


# ----------------------------------------------------------------------- running


def test_two_jobs_on_the_local_pool_then_skipped_then_reported(tmp_path, capsys):
    spec = _spec(TINY + ANALYSES, tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "2 jobs: 0 already done, 2 finished now, 0 failed" in capsys.readouterr().out
    jobs = sorted((out / "jobs").iterdir())
    assert len(jobs) == 2
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["state"] == "done" and set(status["stages"]) == {"train", "compare",
                                                                       "probe"}
        config = json.loads((job / "model" / "config.json").read_text())
        assert config["step"] == 30 and config["train"]["threads"] == 1
        assert (job / "compare" / "compare.json").is_file()
        assert (job / "probe" / "probe.json").is_file()
    # the seeds differ, so the weights do
    assert not _same(_weights(jobs[0]), _weights(jobs[1]))
    # a second run skips both, and a changed analysis setting reruns only that analysis
    result = run_sweep(SweepSpec.load(spec), out, quiet=True)
    assert (len(result.skipped), result.finished, result.failed) == (2, [], {})
    p = plan(SweepSpec.parse(TINY + ANALYSES.replace("prompts = 48", "prompts = 40")), out)
    assert len(p.units) == 2 and p.done == []
    assert main(["report", str(out)]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    (cell,) = report["cells"]
    assert cell["seeds"] == [0, 1] and cell["best_match"]["learner"]
    assert (out / "report" / "report.md").is_file()


def _uninterrupted(job, out: Path) -> Path:
    """The job's model trained by train() in this process, in one go: the reference."""
    from raspicl.icl.sweep import model_and_task, train_config

    model_cfg, task = model_and_task(job.params)
    result = train(model_cfg, task, train_config(job.params, 1, "cpu", 10, 2000),
                   out=out / "model", progress=False, log_every=100)
    assert result.step == job.params["steps"]
    return out


def test_submitit_local_executor_runs_the_same_jobs_bitwise(tmp_path):
    """Through submitit's local executor (one process per job, two at once), each job's
    weights are bitwise those train() gives in this process."""
    pytest.importorskip("submitit")
    sub = _spec(TINY.replace('jobs = 1', 'jobs = 2\nengine = "submitit"')
                + '\n[engine.submitit]\ncluster = "local"\n', tmp_path, "sub.toml")
    spec = SweepSpec.load(sub)
    result = run_sweep(spec, tmp_path / "b", quiet=True)
    assert not result.failed and len(result.finished) == 2
    assert any((tmp_path / "b" / "submitit").glob("*_log.out"))
    for job in spec.train_jobs:
        ref = _uninterrupted(job, tmp_path / "ref" / job.name)
        assert _same(_weights(tmp_path / "b" / "jobs" / job.name), _weights(ref)), job.name


def _step(config: Path) -> int:
    """The step of the checkpoint config.json describes (-1 while there is none, or while it
    is being replaced)."""
    try:
        return int(json.loads(config.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def test_killed_sweep_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL the sweep (its process group: the CLI and its worker) once a checkpoint is on
    disk, run it again, and the job ends with bitwise the weights and optimizer of one
    uninterrupted train()."""
    text = TINY.replace("seeds = [0, 1]", "seeds = [5]").replace("steps = 30", "steps = 300")
    spec = _spec(text, tmp_path)
    out = tmp_path / "out"
    (job,) = SweepSpec.load(spec).train_jobs
    config = out / "jobs" / job.name / "model" / "config.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "raspicl", "sweep", str(spec), "--out",
                             str(out), "--quiet"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # train writes a checkpoint at step 0 too: wait for one from within the run
        while _step(config) < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
        proc.wait()
    killed_at = json.loads(config.read_text())["step"]
    assert 10 <= killed_at < 300, killed_at
    # resumed by the function every worker runs (the pool itself: the two-job test)
    p = prepare(SweepSpec.load(spec), out)
    settings = {"threads": 1, "device": "cpu", "checkpoint_every": 10, "eval_every": 2000}
    assert run_unit(p.units[0], str(out), "resume", settings) == {job.name: None}
    status = json.loads((config.parent.parent / "status.json").read_text())
    assert status["stages"]["train"]["resumed"] is True
    whole = _uninterrupted(job, tmp_path / "whole")
    assert _same(_weights(config.parent.parent), _weights(whole))
    assert _same(load_file(str(config.parent / "optimizer.safetensors")),
                 load_file(str(whole / "model" / "optimizer.safetensors")))


def test_a_kill_inside_a_checkpoint_write_still_resumes_bitwise(tmp_path, monkeypatch):
    """Every rename of a checkpoint write (the weights, config.json, the commit, the moves
    into place) is interrupted in turn, as a kill there would; each resume ends bitwise on
    the uninterrupted run. Before the journal, a kill between the files left a pair the
    resume refused."""
    from raspicl.icl.tasks import RegressionTask
    from raspicl.icl.train import Curriculum, TrainConfig
    from raspicl.icl.trained import ModelConfig

    model = ModelConfig(d=2, n_positions=4, layers=1, d_model=8, heads=2)
    task = RegressionTask(2, 4)
    cfg = TrainConfig(steps=20, batch=4, warmup=2, eval_prompts=8, checkpoint_every=5,
                      eval_every=0, curriculum=Curriculum(interval=7))
    whole = train(model, task, cfg, out=tmp_path / "whole", progress=False)
    real = os.replace

    class Killed(Exception):
        pass

    for fail_at in range(1, 7):
        calls = {"n": 0}

        def replace(a, b, calls=calls, fail_at=fail_at):
            calls["n"] += 1
            if calls["n"] == 6 + fail_at:  # inside the second checkpoint (step 10)
                raise Killed
            return real(a, b)

        run = tmp_path / f"run{fail_at}"
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            train(model, task, cfg, out=run, progress=False)
        monkeypatch.setattr(os, "replace", real)
        torn = (run / STAGE).exists() or (run / READY).exists()
        assert torn, fail_at
        resumed = train(model, task, cfg, out=run, resume=True, progress=False)
        assert resumed.step == 20
        assert not (run / STAGE).exists() and not (run / READY).exists()
        for name in ("model.safetensors", "optimizer.safetensors"):
            assert _same(load_file(str(run / name)), load_file(str(tmp_path / "whole" / name))), \
                (fail_at, name)
    assert whole.step == 20


# ----------------------------------------------------------------------- the task keys

# experiments/cpu_d3.toml's job names before the spec knew of tasks: a linear job's name (its
# directory, hence a resumed sweep's checkpoints) must never change
CPU_D3_NAMES = [f"d3-n9-L{L}-H64-h4-noise0-w1-steps20000-cur2000-seed{s}"
                for L in (1, 2, 4) for s in (0, 1, 2)] + [
    f"d3-n9-L2-H64-h4-noise{sigma}-w1-steps20000-cur2000-seed{s}"
    for sigma in ("0.25", "0.5") for s in (0, 1, 2)] + [
    "d3-n9-L8-H64-h4-noise0-w1-steps20000-cur2000-seed0",
    "d3-n9-L1-H16-h4-noise0-w1-steps20000-cur2000-seed0",
    "d3-n9-L1-H256-h4-noise0-w1-steps20000-cur2000-seed0",
    "d3-n9-L2-H64-h4-noise0-w1-steps3000-nocur-fixedw-warmup300-seed0"]


def test_linear_job_names_and_params_are_unchanged_by_the_task_keys():
    text = (ROOT / "experiments" / "cpu_d3.toml").read_text()
    spec = SweepSpec.parse(text)
    assert [j.name for j in spec.train_jobs] == CPU_D3_NAMES
    assert all("task" not in j.params and "sparsity" not in j.params
               for j in spec.train_jobs)  # job.json as before: old directories resume
    explicit = SweepSpec.parse(text.replace("[defaults]\n", '[defaults]\ntask = "linear"\n'))
    assert [(j.name, j.params) for j in explicit.train_jobs] \
        == [(j.name, j.params) for j in spec.train_jobs]


def test_task_and_sparsity_are_grid_keys_named_in_the_job():
    spec = SweepSpec.parse(TINY.replace("d = 2\n", "d = 4\n") + """
[[grid]]
task = ["logistic", "sparse"]

[[grid]]
task = "sparse"
sparsity = [1, 2]
""")
    by_name = {j.name: j.params for j in spec.train_jobs}
    tail = "-d4-n4-L1-H16-h2-noise0-w1-steps30-cur10-batch8-warmup5-eval_prompts32-seed0"
    assert by_name["logistic" + tail]["task"] == "logistic"
    assert "sparsity" not in by_name["logistic" + tail]
    assert by_name["sparse3" + tail]["sparsity"] == 3  # tasks.DEFAULT_SPARSITY
    assert by_name["sparse1" + tail]["sparsity"] == 1
    assert by_name["sparse2" + tail]["task"] == "sparse"
    assert len(by_name) == 2 + 4  # the linear seeds 0 and 1, then four task jobs
    from raspicl.icl.sweep import model_and_task

    _, task = model_and_task(by_name["sparse2" + tail])
    assert (task.kind, task.sparsity) == ("sparse", 2)
    _, task = model_and_task(spec.train_jobs[0].params)
    assert (task.kind, task.sparsity) == ("linear", None)


@pytest.mark.parametrize("edit, key", [
    ("[[grid]]\ntask = 'logit'\n",
     "grid[1].task: must be one of linear, sparse, logistic, got 'logit'"),
    ("[[grid]]\ntask = ['linear', 'lasso']\n", "grid[1].task[1]: must be one of linear"),
    ("[[grid]]\nsparsity = 2\n", "grid[1].sparsity: is for task 'sparse' only"),
    ("[defaults]\nsparsity = 1\n", "grid[0].sparsity: is for task 'sparse' only"),
    ("[[grid]]\ntask = 'sparse'\nsparsity = 0\n", "grid[1].sparsity: must be an integer >= 1"),
    ("[[grid]]\ntask = 'sparse'\nsparsity = 3\n",
     "grid[1].sparsity: must be an integer in [1, d = 2] for a sparse task, got 3"),
    ("[[grid]]\ntask = 'sparse'\n", "got 3 (the default; give sparsity)"),
    ("[[grid]]\ntask = 'logistic'\nnoise = [0.0, 0.5]\n",
     "grid[1].noise: must be 0 for task 'logistic'"),
    ("[defaults]\ntask = 1\n", "defaults.task: must be one of linear, sparse, logistic"),
])
def test_a_malformed_task_is_one_line_naming_the_key(tmp_path, capsys, edit, key):
    test_a_malformed_spec_is_one_line_naming_the_key(tmp_path, capsys, edit, key)


def test_a_logistic_sweep_trains_and_compares_against_logistic_learners(tmp_path, capsys):
    spec = _spec(TINY.replace("[[grid]]\n", '[[grid]]\ntask = "logistic"\n')
                 + "\n[analyses]\ncompare = {prompts = 64, ilwd_prompts = 8}\n", tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "2 jobs: 0 already done, 2 finished now, 0 failed" in capsys.readouterr().out
    jobs = sorted((out / "jobs").iterdir())
    assert [j.name[:len("logistic-d2-")] for j in jobs] == ["logistic-d2-"] * 2
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["state"] == "done" and set(status["stages"]) == {"train", "compare"}
        config = json.loads((job / "model" / "config.json").read_text())
        assert config["step"] == 30 and config["task"]["kind"] == "logistic"
        compare = json.loads((job / "compare" / "compare.json").read_text())
        assert compare["task"] == "logistic"
        assert "logreg(1)" in compare["mean_spd"] and "least_squares" not in compare["mean_spd"]
    assert main(["report", str(out)]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["phase_table"] == [] and report["mspd_tables"] == []
    (row,) = report["task_table"]  # one cell, its two seeds
    assert row["task"] == "logistic" and row["best"] in ("logreg(1)", "logistic_gd(T=1)",
                                                         "logistic_gd(T=2, lr=0.1)", "3nn",
                                                         "constant(0.5)")
