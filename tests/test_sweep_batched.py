"""Several models of one shape trained as one stacked model (raspicl.icl.batched): the stacked
forward is ICLTransformer's, each model trains as train() would (to float32 rounding), a
batched run resumes bitwise, and a sweep with trainer = "batched" writes ordinary checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from raspicl.errors import RaspiclError
from raspicl.icl.batched import (
    GROUP_FILE,
    Member,
    stack_models,
    stacked_forward,
    train_batched,
)
from raspicl.icl.sweep import prepare, run_sweep, run_unit
from raspicl.icl.sweep_spec import SweepSpec
from raspicl.icl.tasks import RegressionTask
from raspicl.icl.train import Curriculum, TrainConfig, train
from raspicl.icl.trained import ICLTransformer, ModelConfig, TrainedPredictor

MODEL = ModelConfig(d=2, n_positions=4, layers=2, d_model=16, heads=2)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=24, batch=8, warmup=4, lr=3e-3, eval_every=0, eval_prompts=32,
                checkpoint_every=0, curriculum=Curriculum(n_start=2, n_step=1, interval=8))
    return TrainConfig(**{**base, **kw})


def test_the_stacked_forward_is_each_models_forward():
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(ICLTransformer(MODEL))
    tokens = torch.randn(3, 5, 2 * 4 + 1, 3)
    out = stacked_forward(stack_models(models), tokens, MODEL)
    for k, m in enumerate(models):
        ref = m(tokens[k])
        assert out.shape == (3, 5, 9)
        assert torch.allclose(out[k], ref, atol=1e-6, rtol=1e-5), (out[k] - ref).abs().max()


def test_each_batched_model_trains_as_train_would():
    """Seeds and noise differ between the three; the clip at 0.05 acts on every step, so the
    per-model clipping is exercised. Weights agree with train()'s to float32 rounding."""
    members = [Member(RegressionTask(2, 4, noise=sigma), _cfg(seed=seed, grad_clip=0.05))
               for seed, sigma in ((0, 0.0), (1, 0.0), (2, 0.5))]
    batched = train_batched(MODEL, members, log_every=8)
    for m, b in zip(members, batched, strict=True):
        single = train(MODEL, m.task, m.cfg, progress=False, log_every=8)
        for (name, p), q in zip(single.model.named_parameters(), b.model.parameters(),
                                strict=True):
            assert torch.allclose(p, q, atol=2e-6, rtol=1e-4), (name, (p - q).abs().max())
        assert [e["step"] for e in single.log] == [e["step"] for e in b.log]
        assert all(abs(e["loss"] - f["loss"]) < 1e-5 * max(1, e["loss"])
                   for e, f in zip(single.log, b.log, strict=True))


def test_a_batched_run_resumes_bitwise_and_writes_ordinary_checkpoints(tmp_path):
    members = [Member(RegressionTask(2, 4), _cfg(seed=s, checkpoint_every=6), tmp_path / f"m{s}")
               for s in (0, 1)]
    whole_members = [Member(m.task, m.cfg, tmp_path / f"w{i}") for i, m in enumerate(members)]
    whole = train_batched(MODEL, whole_members, group=tmp_path / "gw")
    part = train_batched(MODEL, members, group=tmp_path / "g", stop_after=14)
    assert part[0].step == 14 and (tmp_path / "g" / GROUP_FILE).is_file()
    assert not (tmp_path / "m0" / "model.safetensors").exists()  # written at the end only
    resumed = train_batched(MODEL, members, group=tmp_path / "g", resume=True)
    for w, r, i in zip(whole, resumed, (0, 1), strict=True):
        for p, q in zip(w.model.parameters(), r.model.parameters(), strict=True):
            assert torch.equal(p, q)
        a = load_file(str(tmp_path / f"w{i}" / "optimizer.safetensors"))
        b = load_file(str(tmp_path / f"m{i}" / "optimizer.safetensors"))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        loaded = TrainedPredictor.load(tmp_path / f"m{i}")
        assert torch.equal(loaded.model.pos, r.model.pos)
        config = json.loads((tmp_path / f"m{i}" / "config.json").read_text())
        assert config["step"] == 24 and config["trainer"] == {"name": "batched", "models": 2}
    # the ordinary resume reads the member checkpoint (nothing left to do at step 24)
    again = train(MODEL, members[0].task, members[0].cfg, out=tmp_path / "m0", resume=True,
                  progress=False)
    assert again.step == 24


def test_a_group_refuses_models_of_different_shapes_or_options():
    with pytest.raises(RaspiclError, match="differs from model 0 in lr"):
        train_batched(MODEL, [Member(RegressionTask(2, 4), _cfg()),
                              Member(RegressionTask(2, 4), _cfg(seed=1, lr=1e-3))])
    with pytest.raises(RaspiclError, match="same seed and task"):
        train_batched(MODEL, [Member(RegressionTask(2, 4), _cfg()),
                              Member(RegressionTask(2, 4), _cfg())])


def test_a_batched_sweep_trains_each_shape_as_one_group(tmp_path):
    spec = SweepSpec.parse("""
[sweep]
jobs = 1
trainer = "batched"
[defaults]
d = 2
n = 4
layers = 1
d_model = 16
heads = 2
steps = 20
warmup = 4
batch = 8
eval_prompts = 16
checkpoint_every = 5
[[grid]]
noise = [0.0, 0.5]
seeds = [0, 1]
""")
    # the units a worker would run, run here (the pool itself: tests/test_sweep.py)
    p = prepare(spec, tmp_path)
    assert [u["kind"] for u in p.units] == ["group"] and len(p.units[0]["jobs"]) == 4
    settings = {"threads": 1, "device": "cpu", "checkpoint_every": 5, "eval_every": 2000}
    assert run_unit(p.units[0], str(tmp_path), "test", settings) == {
        j.name: None for j in spec.train_jobs}
    for job in spec.train_jobs:
        status = json.loads((tmp_path / "jobs" / job.name / "status.json").read_text())
        assert status["stages"]["train"]["batched"] == 4
        assert TrainedPredictor.load(tmp_path / "jobs" / job.name / "model").config == \
            ModelConfig(d=2, n_positions=4, layers=1, d_model=16, heads=2)
    assert not any((tmp_path / "groups").iterdir())  # the group checkpoint is gone
    assert len(run_sweep(spec, tmp_path, quiet=True).skipped) == 4
