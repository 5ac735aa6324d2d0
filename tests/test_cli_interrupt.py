"""Ctrl-C: a command stopped by SIGINT ends with one line on stderr and exit status 130, and a
training run stopped that way (however early) can be resumed to bitwise the weights of one
that was never stopped (docs/cli.md, Exit status; raspicl.icl.train's docstring).

The subprocess tests send a real SIGINT to `python -m raspicl` once it is provably inside the
command (a marker file written by the program file's program(), or train's step-0
config.json), not after a guessed delay.
"""

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

from raspicl.icl import train as train_module
from raspicl.icl.tasks import RegressionTask
from raspicl.icl.train import TrainConfig, TrainingInterrupted, train
from raspicl.icl.trained import ModelConfig

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# sherman_morrison at d=8 takes about 10 s to compile on one CPU thread; program() writes the
# marker just before the compile starts.
SLOW_PROGRAM = '''
import os
from pathlib import Path

from raspicl.registry import find_program


def program(d=32):
    Path(os.environ["RASPICL_TEST_MARKER"]).write_text("building")
    return find_program("sherman_morrison").build(d=d)
'''


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited with {proc.returncode} first:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def test_ctrl_c_during_compile_is_one_line_and_status_130(tmp_path):
    program = tmp_path / "slow.py"
    program.write_text(SLOW_PROGRAM)
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "raspicl", "compile", str(program), "--out", str(tmp_path / "o")],
        env=_env(RASPICL_TEST_MARKER=str(marker)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    _wait_for(marker, proc)
    time.sleep(0.3)  # inside compile_program (d = 32 compiles in over a second)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert err.splitlines() == ["raspicl: interrupted"], err
    assert not (tmp_path / "o" / "model.safetensors").exists()


TRAIN = ["train", "--d", "2", "--n", "4", "--layers", "1", "--d-model", "16", "--heads", "2",
         "--warmup", "5", "--batch", "8", "--quiet", "--checkpoint-every", "0"]


def test_ctrl_c_during_train_checkpoints_and_the_run_resumes(tmp_path):
    """Stopped long before its first periodic checkpoint (there is none: --checkpoint-every 0),
    the run has one where it stopped, and --resume continues it."""
    out = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-m", "raspicl", *TRAIN, "--steps", "1000000",
                             "--out", str(out)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "config.json", proc)  # the step-0 checkpoint, before the first step
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (line,) = err.splitlines()
    assert line.startswith("raspicl: interrupted: training stopped after step ")
    assert f"raspicl train --resume --out {out}" in line
    step = json.loads((out / "config.json").read_text())["step"]
    assert f"after step {step} of 1000000" in line
    resumed = subprocess.run([sys.executable, "-m", "raspicl", "train", "--resume", "--steps",
                              str(step + 5), "--quiet", "--out", str(out)], env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "config.json").read_text())["step"] == step + 5


TINY = ModelConfig(d=2, n_positions=4, layers=1, d_model=16, heads=2)


def _cfg() -> TrainConfig:
    return TrainConfig(steps=20, batch=8, warmup=3, lr=3e-3, seed=2, eval_every=0,
                       eval_prompts=64, checkpoint_every=0)


@pytest.mark.parametrize("stop_at", [0, 7])
def test_interrupted_training_resumes_bitwise(tmp_path, monkeypatch, stop_at):
    """SIGINT while step `stop_at` runs: that step finishes, is checkpointed, and
    TrainingInterrupted says so; resumed, the weights are bitwise those of an unbroken run."""
    task = RegressionTask(2, 4, noise=0.1)
    whole = train(TINY, task, _cfg(), out=tmp_path / "whole", progress=False, log_every=5)
    real = train_module.training_batch

    def batch(task, size, seed, step, *args):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # handled between bytecodes: sets the flag
        return real(task, size, seed, step, *args)

    monkeypatch.setattr(train_module, "training_batch", batch)
    with pytest.raises(TrainingInterrupted, match=f"after step {stop_at + 1} of 20"):
        train(TINY, task, _cfg(), out=tmp_path / "part", progress=False, log_every=5)
    monkeypatch.setattr(train_module, "training_batch", real)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert json.loads((tmp_path / "part" / "config.json").read_text())["step"] == stop_at + 1
    resumed = train(TINY, task, _cfg(), out=tmp_path / "part", resume=True, progress=False,
                    log_every=5)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_a_fresh_run_writes_its_config_before_the_first_step(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("first step")

    monkeypatch.setattr(train_module, "training_batch", fail)
    with pytest.raises(RuntimeError, match="first step"):
        train(TINY, RegressionTask(2, 4), _cfg(), out=tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["step"] == 0
    monkeypatch.undo()
    resumed = train(TINY, RegressionTask(2, 4), _cfg(), out=tmp_path, resume=True,
                    progress=False)
    assert resumed.step == 20
