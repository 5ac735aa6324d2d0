"""Training an in-context learner (raspicl.icl.trained.ICLTransformer) on RegressionTask prompts.

AdamW, a learning rate that rises linearly over `warmup` steps and then follows a cosine down to
`min_lr_ratio` x lr at the last step, gradient clipping, and fresh prompts at every step: step s
of seed K always sees the batch drawn from numpy's default_rng([K, s]), so a run is a function
of its seed and configuration alone (one torch thread, or any fixed count, on one machine),
and a run resumed from a checkpoint gives bitwise the weights of an uninterrupted one. The loss
is the mean squared error at every x token and the query (position 2k predicts y_{k+1}, noisy
labels as sampled).

The curriculum of Garg et al. (2022): the effective dimension starts at `d_start` and grows by
`d_step` every `interval` steps (coordinates past it are zero in x, and w does not use them),
and the number of examples starts at `n_start` and grows by `n_step` (shorter prompts), each
up to the task's d and n.

`--fixed-w` trains on prompts that all share one w (drawn once from the seed): the control
model of the probes, which can predict well without learning anything in context.

Interruptions. A run with an output directory writes its configuration and a step-0 checkpoint
before the first step, so that it can be resumed however early it stops. Ctrl-C (SIGINT, in
the main thread) lets the step in flight finish, writes a checkpoint there as `stop_after`
would, and raises TrainingInterrupted (a KeyboardInterrupt) naming the step and the directory;
a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raspicl.errors import LoadError, RaspiclError
from raspicl.icl.tasks import RegressionTask
from raspicl.icl.trained import (
    CONFIG,
    WEIGHTS,
    ICLTransformer,
    ModelConfig,
    load_model,
    read_config,
    save_model,
)
from raspicl.prompts import Prompts
from raspicl.tensorfile import read_tensors

OPTIMIZER = "optimizer.safetensors"
LOG = "train_log.jsonl"
# a checkpoint being written, and one committed but not yet moved into place (save_checkpoint)
STAGE = ".checkpoint.new"
READY = ".checkpoint.ready"
# entropy words appended to [seed, 0] for the draws that are not a step's batch; a step's
# entropy [seed, s] has two words, so these (three words, last nonzero) never collide with it
_FIXED_W_WORD = 1
_EVAL_WORD = 2


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s schedule of the effective d and n (they used d from 5 by 1 and n from 11
    by 2 every 2000 steps, at d = 20, n = 41)."""

    d_start: int = 1
    d_step: int = 1
    n_start: int = 3
    n_step: int = 2
    interval: int = 2000

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RaspiclError(f"Curriculum.{f.name} must be an integer >= 1, got {v!r}")

    def at(self, step: int, d: int, n: int) -> tuple[int, int]:
        """(d_eff, n_eff) at a step, for a task of size d, n."""
        k = step // self.interval
        return min(d, self.d_start + k * self.d_step), min(n, self.n_start + k * self.n_step)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Sizes of the model are raspicl.icl.trained.ModelConfig; of the prompts,
    RegressionTask.

    steps, batch        optimizer steps; prompts per step
    lr, warmup          peak learning rate; steps of linear warm-up from 0
    min_lr_ratio        the cosine ends at min_lr_ratio x lr at the last step
    weight_decay        AdamW's (decoupled) weight decay
    betas               AdamW's
    grad_clip           clip the global gradient norm to this (0: no clipping)
    seed                the weights' initialisation and every step's batch
    curriculum          a Curriculum, or None to train at the full d and n from step 0
    fixed_w             every prompt shares one w, drawn from the seed (the probes' control)
    threads             torch threads on CPU (default 1: on a shared 2-core machine, 2 threads
                        ran a small model up to 15x slower, by oversubscription)
    device              "cpu" or "cuda" (or "cuda:N")
    checkpoint_every    write a checkpoint every this many steps (0: only at the end)
    eval_every          evaluate on `eval_prompts` held-out prompts every this many steps
                        (0: only at the end)
    """

    steps: int
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 1000
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    curriculum: Curriculum | None = None
    fixed_w: bool = False
    threads: int = 1
    device: str = "cpu"
    checkpoint_every: int = 5000
    eval_every: int = 2000
    eval_prompts: int = 1024

    # fields that may change when a run is resumed without changing what it computes
    RESUMABLE = ("steps", "threads", "device", "checkpoint_every", "eval_every")

    def __post_init__(self) -> None:
        ints = {"steps": 1, "batch": 1, "warmup": 0, "seed": 0, "threads": 1,
                "checkpoint_every": 0, "eval_every": 0, "eval_prompts": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise RaspiclError(f"TrainConfig.{name} must be an integer >= {low}, got {v!r}")
        for name, low, high in (("lr", 0.0, math.inf), ("min_lr_ratio", 0.0, 1.0),
                                ("weight_decay", 0.0, math.inf), ("grad_clip", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or not low <= v <= high or (name == "lr" and v == 0):
                raise RaspiclError(f"TrainConfig.{name} must be a finite number in "
                                   f"[{low}, {high}]{' and > 0' if name == 'lr' else ''}, "
                                   f"got {v!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise RaspiclError(f"TrainConfig.betas must be two numbers in [0, 1), got "
                               f"{self.betas!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise RaspiclError(f"TrainConfig.device must be 'cpu' or 'cuda[:N]', got "
                               f"{self.device!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): linear warm-up, then cosine."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - 1 - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        ratio = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi
                                                                                  * progress))
        return self.lr * ratio

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise RaspiclError("train must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RaspiclError(f"train: unknown field(s) {unknown}")
        data = dict(data)
        if data.get("curriculum") is not None:
            if not isinstance(data["curriculum"], dict):
                raise RaspiclError("train.curriculum must be an object or null")
            try:
                data["curriculum"] = Curriculum(**data["curriculum"])
            except TypeError as exc:
                raise RaspiclError(f"train.curriculum: {exc}") from None
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise RaspiclError(f"train: {exc}") from None


# ----------------------------------------------------------------------------------- data


def fixed_w_for(task: RegressionTask, seed: int) -> np.ndarray:
    """The one w of a --fixed-w run: the task's w (w_scale * N(0, I_d), sparse for a sparse
    task) from default_rng([seed, 0, 1])."""
    return task.sample_w(1, np.random.default_rng([seed, 0, _FIXED_W_WORD]))[0]


def training_batch(task: RegressionTask, batch: int, seed: int, step: int,
                   d_eff: int | None = None, n_eff: int | None = None,
                   fixed_w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Step `step`'s batch: tokens [B, 2 n_eff + 1, d + 1] float32 (n_eff examples and a query)
    and targets [B, n_eff + 1] (the y of x_1..x_{n_eff} and of the query, with noise).

    Drawn from default_rng([seed, step]) as a sample of the task resized to d_eff dimensions
    and n_eff + 1 examples, whose last example is the query; x is zero-padded from d_eff to d
    coordinates. The targets are the labels as sampled (noisy; {0, 1} for a logistic task)."""
    d_eff = task.d if d_eff is None else d_eff
    n_eff = task.n if n_eff is None else n_eff
    rng = np.random.default_rng([seed, step])
    sub = task.resized(d_eff)
    p = replace(sub, n=n_eff + 1).sample(batch, rng)
    y = p.y
    if fixed_w is not None:
        y = sub.labels(p.X, fixed_w[:d_eff], rng)
    X = np.zeros((batch, n_eff + 1, task.d))
    X[..., :d_eff] = p.X
    tokens = Prompts(X[:, :n_eff], y[:, :n_eff], X[:, n_eff]).tokens()
    return tokens.astype(np.float32), y.astype(np.float32)


def eval_prompts(task: RegressionTask, count: int, seed: int,
                 fixed_w: np.ndarray | None = None) -> Prompts:
    """The held-out prompts of a run (default_rng([seed, 0, 2]), full d and n), with their w."""
    rng = np.random.default_rng([seed, 0, _EVAL_WORD])
    p = task.sample(count, rng)
    if fixed_w is None:
        return p
    w = np.broadcast_to(fixed_w, p.w.shape).copy()
    return Prompts(p.X, task.labels(p.X, fixed_w, rng), p.xq, w)


@torch.no_grad()
def evaluate(model: ICLTransformer, prompts: Prompts, task: RegressionTask | None = None
             ) -> dict:
    """Garg et al.'s normalised error (prediction - target)^2 / d against the noiseless target
    (task.targets: w^T x, or sigmoid(w^T x) for a logistic task; w^T x when task is None), per
    prefix k = 0..n (k = n: the query) and its mean."""
    from raspicl.icl.trained import TrainedPredictor

    was_training = model.training
    pred = TrainedPredictor(model).predict(prompts)
    model.train(was_training)
    truth = (task.targets(prompts) if task is not None
             else np.einsum("bkd,bd->bk", prompts.prefix_queries(), prompts.w))
    by_k = ((pred - truth) ** 2).mean(axis=0) / prompts.d
    return {"error_by_k": [float(e) for e in by_k], "query_error": float(by_k[-1]),
            "mean_error": float(by_k.mean())}


# ------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What train() returns: the model, the last step done, the training loss averaged over
    the last `final_window` steps, the last evaluation, the log and the wall time."""

    model: ICLTransformer
    step: int
    final_loss: float
    final_window: int
    eval: dict
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(model: ICLTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                             weight_decay=cfg.weight_decay)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped train(); the message says at which step and where its checkpoint is."""


@contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Inside the block, the first SIGINT only sets a flag (the callable yielded says whether
    one came), so that a training step is never cut in half and the checkpoint written after
    it is consistent; a second SIGINT raises KeyboardInterrupt at once. Outside the main
    thread (where no handler can be installed) SIGINT is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested: list[bool] = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)

    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)


def _set_threads(cfg: TrainConfig) -> None:
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)


def train(model_config: ModelConfig, task: RegressionTask, cfg: TrainConfig,
          out: str | Path | None = None, resume: bool = False, progress: bool = True,
          log_every: int = 100, stop_after: int | None = None) -> TrainResult:
    """Train a fresh model (or, with resume=True, continue the checkpoint in `out`) and write
    checkpoints to `out` every cfg.checkpoint_every steps and at the end (nothing is written
    when out is None); a fresh run also writes one at step 0, before the first step, and one
    is written where Ctrl-C stops the run (TrainingInterrupted; see the module's docstring).

    The loss is logged (to the returned log and DIR/train_log.jsonl) as its mean over every
    `log_every` steps. `stop_after` ends the call after that step, as an interruption would
    (a checkpoint is written there): the schedule stays that of cfg.steps, so that resuming
    continues the same run."""
    from tqdm import tqdm

    if task.d != model_config.d:
        raise RaspiclError(f"task.d ({task.d}) differs from the model's d ({model_config.d})")
    if task.n > model_config.n_positions:
        raise RaspiclError(f"task.n ({task.n}) exceeds the model's n_positions "
                           f"({model_config.n_positions})")
    _set_threads(cfg)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RaspiclError(f"device {cfg.device!r}: CUDA is not available on this machine")
    fixed_w = fixed_w_for(task, cfg.seed) if cfg.fixed_w else None
    log: list[dict] = []
    if resume:
        if out is None:
            raise RaspiclError("resume needs the checkpoint directory (out)")
        model, opt, start, log = _load_checkpoint(Path(out), model_config, task, cfg)
    else:
        torch.manual_seed(cfg.seed)
        model = ICLTransformer(model_config).to(device)
        opt = make_optimizer(model, cfg)
        start = 0
        if out is not None and (Path(out) / LOG).exists():
            (Path(out) / LOG).unlink()
        for stale in (STAGE, READY):  # a killed run's checkpoint must not be moved in later
            if out is not None and (Path(out) / stale).exists():
                shutil.rmtree(Path(out) / stale)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        if not resume:  # config.json from the start: a run stopped early can be resumed
            save_checkpoint(Path(out), model, opt, task, cfg, 0)
    model.train()
    held_out = eval_prompts(task, cfg.eval_prompts, cfg.seed, fixed_w)
    params = list(model.parameters())
    window: list[float] = []
    last_eval: dict = {}
    t0 = time.perf_counter()
    t_log, s_log = t0, start
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step",
               mininterval=2.0, dynamic_ncols=True)
    end = cfg.steps if stop_after is None else min(cfg.steps, max(start, stop_after))
    stopped = False  # Ctrl-C ended the run before its last step
    with deferred_interrupt() as interrupted:
        for step in range(start, end):
            d_eff, n_eff = (cfg.curriculum.at(step, task.d, task.n) if cfg.curriculum
                            else (task.d, task.n))
            tok, tgt = training_batch(task, cfg.batch, cfg.seed, step, d_eff, n_eff, fixed_w)
            tok = torch.from_numpy(tok).to(device, non_blocking=True)
            tgt = torch.from_numpy(tgt).to(device, non_blocking=True)
            lr = cfg.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.mse_loss(model(tok)[:, 0::2], tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                raise RaspiclError(f"training diverged at step {step}: loss {value} (lower lr or "
                                   f"keep grad_clip > 0)")
            window.append(value)
            done = step + 1
            if interrupted() and done < end:  # Ctrl-C: this step is the last, logged and
                end, stopped = done, True           # checkpointed
            if done % log_every == 0 or done in (cfg.steps, end):
                now = time.perf_counter()
                entry = {"step": done, "loss": float(np.mean(window)), "lr": lr, "d_eff": d_eff,
                         "n_eff": n_eff, "steps_per_s": (done - s_log) / max(now - t_log, 1e-9)}
                window, t_log, s_log = [], now, done
                if (cfg.eval_every and done % cfg.eval_every == 0) or done in (cfg.steps, end):
                    last_eval = evaluate(model, held_out, task)
                    entry["eval_query_error"] = last_eval["query_error"]
                    entry["eval_mean_error"] = last_eval["mean_error"]
                log.append(entry)
                if out is not None:
                    with open(Path(out) / LOG, "a") as f:
                        f.write(json.dumps(entry) + "\n")
                bar.set_postfix(loss=f"{entry['loss']:.4f}", d=d_eff, n=n_eff, refresh=False)
            bar.update(1)
            if out is not None and (done == end or (cfg.checkpoint_every
                                                    and done % cfg.checkpoint_every == 0)):
                loss, covered = final_loss(log, done)
                final = {"final_loss": loss, "final_window": covered, "eval": last_eval}
                save_checkpoint(Path(out), model, opt, task, cfg, done, final)
            if done == end:
                break
    bar.close()
    if stopped:
        where = (f"; its checkpoint is in {out} (continue with: raspicl train --resume --out "
                 f"{out})" if out is not None else "; nothing was written")
        raise TrainingInterrupted(f"training stopped after step {end} of {cfg.steps}{where}")
    if not last_eval:
        last_eval = evaluate(model, held_out, task)
    model.eval()
    loss, covered = final_loss(log, end)
    return TrainResult(model=model, step=end, final_loss=loss, final_window=covered,
                       eval=last_eval, log=log, seconds=time.perf_counter() - t0)


def final_loss(log: list[dict], step: int, window: int = 1000) -> tuple[float, int]:
    """The training loss averaged over the last `window` steps up to `step`, from the log's
    per-interval means (weighted by the steps each covers), and the steps it covers."""
    total, covered, prev = 0.0, 0, 0
    for entry in log:
        if entry["step"] > step:
            break
        span = entry["step"] - prev
        if entry["step"] > step - window:
            total += entry["loss"] * span
            covered += span
        prev = entry["step"]
    return (total / covered if covered else float("nan")), covered


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(out: Path, model: ICLTransformer, opt: torch.optim.AdamW,
                    task: RegressionTask, cfg: TrainConfig, step: int,
                    extra: dict | None = None) -> None:
    """The model files (trained.save_model) plus optimizer.safetensors: AdamW's exp_avg,
    exp_avg_sq and step per parameter, named by the parameter. The optimizer file's metadata
    repeats config.json's step so that a mismatched pair is refused on resume.

    A kill at any moment leaves a checkpoint that resumes (journaled, as a database commits):
    the three files are written whole into DIR/.checkpoint.new, that folder is renamed to
    DIR/.checkpoint.ready (the commit: one atomic rename), and its files are then moved over
    the old ones. A kill before the rename leaves the old checkpoint; after it, resuming
    (_load_checkpoint) first finishes the moves. Without this, a kill between the files left
    an optimizer of one step beside a config.json of another, which resume refuses."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    finish_checkpoint(out)  # a commit left by a killed run goes in first
    stage = out / STAGE
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            tensors[f"{names[id(p)]}.{key}"] = value.detach().cpu().contiguous().reshape(
                value.shape)
    save_file(tensors, str(stage / OPTIMIZER), metadata={"step": str(step)})
    meta = {"task": task.to_dict(), "train": cfg.to_dict(), "step": step,
            "fixed_w": (fixed_w_for(task, cfg.seed).tolist() if cfg.fixed_w else None),
            "schedule": {"lr_next": cfg.lr_at(step) if step < cfg.steps else None},
            "optimizer": OPTIMIZER}
    meta.update(extra or {})
    save_model(model, stage, meta)
    os.replace(stage, out / READY)
    finish_checkpoint(out)


def finish_checkpoint(out: Path) -> None:
    """Move a committed checkpoint (DIR/.checkpoint.ready) into place, config.json last, and
    drop an uncommitted one (DIR/.checkpoint.new). Idempotent: a kill in the middle leaves
    the files not yet moved in .checkpoint.ready for the next call."""
    ready = Path(out) / READY
    if ready.is_dir():
        for name in (OPTIMIZER, WEIGHTS, CONFIG):
            if (ready / name).exists():
                os.replace(ready / name, Path(out) / name)
        shutil.rmtree(ready)
    if (Path(out) / STAGE).exists():
        shutil.rmtree(Path(out) / STAGE)


def _load_checkpoint(out: Path, model_config: ModelConfig, task: RegressionTask,
                     cfg: TrainConfig):
    """Model, optimizer, step and log of the checkpoint in `out`, checked against the run's
    configuration (only TrainConfig.RESUMABLE fields may differ)."""
    finish_checkpoint(out)
    config = read_config(out)
    saved_model = ModelConfig.from_dict(config["model"])
    if saved_model != model_config:
        raise RaspiclError(f"{out / CONFIG}: the checkpoint's model {saved_model} differs from "
                           f"the run's {model_config}")
    if config.get("task") != task.to_dict():
        raise RaspiclError(f"{out / CONFIG}: the checkpoint's task {config.get('task')} "
                           f"differs from the run's {task.to_dict()}")
    try:
        saved = TrainConfig.from_dict(config.get("train"))
    except RaspiclError as exc:
        raise LoadError(f"{out / CONFIG}: field {exc}") from None
    diff = [f.name for f in fields(TrainConfig) if f.name not in TrainConfig.RESUMABLE
            and getattr(saved, f.name) != getattr(cfg, f.name)]
    if diff:
        raise RaspiclError(f"{out / CONFIG}: the checkpoint was trained with different "
                           f"{', '.join(diff)} (only {', '.join(TrainConfig.RESUMABLE)} may "
                           f"change on resume)")
    step = config["step"]
    if step > cfg.steps:
        raise RaspiclError(f"{out / CONFIG}: the checkpoint is at step {step}, past the run's "
                           f"steps ({cfg.steps})")
    model, _ = load_model(out, cfg.device)
    opt = make_optimizer(model, cfg)
    path = out / OPTIMIZER
    tensors, metadata = read_tensors(path, "the checkpoint cannot be resumed")
    meta_step = metadata.get("step")
    if meta_step != str(step):
        raise LoadError(f"{path}: holds the optimizer of step {meta_step}, config.json is at "
                        f"step {step}")
    state = {}
    for i, (name, _) in enumerate(model.named_parameters()):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            t = tensors.get(f"{name}.{key}")
            if t is None:
                if step == 0:
                    continue
                raise LoadError(f"{path}: no tensor {name}.{key}")
            entry[key] = t.to(cfg.device) if key != "step" else t
        if entry:
            state[i] = entry
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    log = []
    log_path = out / LOG
    if log_path.is_file():
        lines = [json.loads(s) for s in log_path.read_text().splitlines() if s.strip()]
        log = [e for e in lines if e["step"] <= step]
        log_path.write_text("".join(json.dumps(e) + "\n" for e in log))
    return model, opt, step, log


def resume_config(out: str | Path, **overrides) -> tuple[ModelConfig, RegressionTask,
                                                         TrainConfig]:
    """The model, task and training configuration of the checkpoint in `out`, with the
    RESUMABLE fields of TrainConfig replaced by `overrides` (e.g. steps=...)."""
    finish_checkpoint(Path(out))
    config = read_config(out)
    bad = sorted(set(overrides) - set(TrainConfig.RESUMABLE))
    if bad:
        raise RaspiclError(f"resume: {bad} cannot change (only {TrainConfig.RESUMABLE} can)")
    if "train" not in config or "task" not in config:
        raise LoadError(f"{Path(out) / CONFIG}: not a training checkpoint (no 'train' or "
                        f"'task' field)")
    cfg = replace(TrainConfig.from_dict(config["train"]), **overrides)
    return ModelConfig.from_dict(config["model"]), RegressionTask(**config["task"]), cfg
