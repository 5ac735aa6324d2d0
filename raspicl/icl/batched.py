"""Several in-context learners of one shape trained in one process, as one stacked model.

A small model (d = 3..8, width 64..256) leaves a GPU idle: one training step is a few hundred
tiny kernel launches, each far below what the device can do. `train_batched` trains K models
that share every size and training option (they may differ in seed, noise and w's scale) as
one model whose every weight carries a leading model axis [K, ...]: the K forward passes run as
batched matrix products (torch.baddbmm) and one attention call over K x B prompts, so a step
costs about what one model's does until the device is full. bench/sweep_throughput.py measures
it against one model per process.

Each model k is exactly the model `raspicl.icl.train.train` would train for its seed: the same
initial weights (torch.manual_seed(seed) then ICLTransformer), the same batch at every step
(training_batch(task_k, batch, seed_k, step, ...)), the same loss (its own mean squared error;
the K losses are summed, so each model's gradient is its own), the gradient clipped by its own
global norm, AdamW (elementwise, so stacking changes nothing in its arithmetic) and the same
learning-rate schedule. The stacked products add their terms in another order than a single
model's, so the weights agree with train()'s to float32 rounding at first and then drift as
any two float32 runs do; they are not bitwise train()'s. Within the batched trainer a run is
deterministic, and resuming its checkpoint gives bitwise the uninterrupted run.

Checkpoints. While training, the group's state lives in one file, GROUP/group.safetensors
(every stacked weight and AdamW state, the step and the members in its metadata), replaced
atomically, so a kill at any moment leaves the previous checkpoint whole. At the end, each
model is written to its own directory in the ordinary checkpoint format of docs/training.md
(model.safetensors, config.json, optimizer.safetensors, train_log.jsonl), which every other
command reads. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raspicl.errors import LoadError, RaspiclError
from raspicl.icl.tasks import RegressionTask
from raspicl.icl.train import (
    LOG,
    TrainConfig,
    TrainResult,
    eval_prompts,
    evaluate,
    final_loss,
    fixed_w_for,
    make_optimizer,
    save_checkpoint,
    training_batch,
)
from raspicl.icl.trained import ICLTransformer, ModelConfig
from raspicl.tensorfile import read_tensors

GROUP_FILE = "group.safetensors"
GROUP_FORMAT = "raspicl.icl.batched/1"


# ------------------------------------------------------------------- the stacked forward


def _linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x [K, B, T, i] @ W[k]^T + b[k] per model: W [K, o, i], b [K, o] -> [K, B, T, o]."""
    K, B, T, i = x.shape
    y = torch.baddbmm(b[:, None, :], x.reshape(K, B * T, i), W.transpose(1, 2))
    return y.view(K, B, T, -1)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w[:, None, None, :] + b[:, None, None, :]


def stacked_forward(P: dict[str, torch.Tensor], tokens: torch.Tensor, cfg: ModelConfig
                    ) -> torch.Tensor:
    """The forward pass of raspicl.icl.trained.ICLTransformer for K models at once: P maps
    each of its parameter names to the K models' values stacked on a first axis; tokens
    [K, B, T, d+1] (model k reads tokens[k]) -> readouts [K, B, T]. The same function as
    ICLTransformer.forward (tests/test_sweep_batched.py holds it to float32 rounding)."""
    K, B, T, _ = tokens.shape
    if T > cfg.n_tokens:
        raise RaspiclError(f"tokens: {T} positions, the model has {cfg.n_tokens}")
    H, heads = cfg.d_model, cfg.heads
    x = _linear(tokens, P["embed.weight"], P["embed.bias"]) + P["pos"][:, None, :T, :]
    for i in range(cfg.layers):
        pre = f"blocks.{i}"
        h = _layer_norm(x, P[f"{pre}.ln1.weight"], P[f"{pre}.ln1.bias"], cfg.ln_eps)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(K * B, T, heads, H // heads).transpose(1, 2)

        q, k, v = (split(_linear(h, P[f"{pre}.attn.{m}.weight"], P[f"{pre}.attn.{m}.bias"]))
                   for m in ("W_Q", "W_K", "W_V"))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = z.transpose(1, 2).reshape(K, B, T, H)
        x = x + _linear(z, P[f"{pre}.attn.W_O.weight"], P[f"{pre}.attn.W_O.bias"])
        h = _layer_norm(x, P[f"{pre}.ln2.weight"], P[f"{pre}.ln2.bias"], cfg.ln_eps)
        h = F.gelu(_linear(h, P[f"{pre}.mlp.W_in.weight"], P[f"{pre}.mlp.W_in.bias"]),
                   approximate="tanh")
        x = x + _linear(h, P[f"{pre}.mlp.W_out.weight"], P[f"{pre}.mlp.W_out.bias"])
    x = _layer_norm(x, P["ln_f.weight"], P["ln_f.bias"], cfg.ln_eps)
    return _linear(x, P["readout.weight"], P["readout.bias"]).squeeze(-1)


def stack_models(models: list[ICLTransformer]) -> dict[str, torch.Tensor]:
    """{name: [K, ...]} of the models' parameters (detached copies)."""
    names = [n for n, _ in models[0].named_parameters()]
    states = [dict(m.named_parameters()) for m in models]
    return {n: torch.stack([s[n].detach() for s in states]).clone() for n in names}


def unstack_model(P: dict[str, torch.Tensor], k: int, cfg: ModelConfig) -> ICLTransformer:
    """Model k of a stack as an ordinary ICLTransformer (on the CPU, float32)."""
    model = ICLTransformer(cfg)
    model.load_state_dict({n: t[k].detach().cpu() for n, t in P.items()})
    return model


def clip_per_model(P: dict[str, torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each model's gradient by its own global norm, as torch.nn.utils.clip_grad_norm_
    does for one model (coefficient max_norm / (norm + 1e-6), at most 1); returns the K norms."""
    grads = [p.grad for p in P.values()]
    K = grads[0].shape[0]
    sq = torch.stack([g.reshape(K, -1).pow(2).sum(dim=1) for g in grads]).sum(dim=0)
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(K, *([1] * (g.dim() - 1))))
    return norms


# ------------------------------------------------------------------------------ training


@dataclass
class Member:
    """One model of a batched group: its task, training configuration and output directory
    (None: nothing written)."""

    task: RegressionTask
    cfg: TrainConfig
    out: Path | None = None


def _check_group(model_config: ModelConfig, members: list[Member]) -> None:
    if not members:
        raise RaspiclError("train_batched: no models to train")
    first = members[0]
    vary = {"seed"} | set(TrainConfig.RESUMABLE)
    for i, m in enumerate(members):
        if (m.task.d, m.task.n) != (first.task.d, first.task.n):
            raise RaspiclError(f"train_batched: model {i} has d={m.task.d}, n={m.task.n}; "
                               f"model 0 has d={first.task.d}, n={first.task.n}")
        diff = [f.name for f in fields(TrainConfig) if f.name not in vary
                and getattr(m.cfg, f.name) != getattr(first.cfg, f.name)]
        if diff or m.cfg.steps != first.cfg.steps or m.cfg.device != first.cfg.device:
            raise RaspiclError(f"train_batched: model {i} differs from model 0 in "
                               f"{', '.join(diff) or 'steps or device'} (only the seed, the "
                               f"noise and w_scale may differ)")
        if m.task.d != model_config.d or m.task.n > model_config.n_positions:
            raise RaspiclError(f"train_batched: model {i}'s task {m.task} does not fit the "
                               f"model {model_config}")
    seeds = [m.cfg.seed for m in members]
    outs = [str(m.out) for m in members if m.out is not None]
    if len(set(outs)) != len(outs):
        raise RaspiclError("train_batched: two models share an output directory")
    if len(set(zip(seeds, [m.task for m in members], strict=True))) != len(members):
        raise RaspiclError("train_batched: two models have the same seed and task")


def _save_group(path: Path, P: dict, opt: torch.optim.AdamW, step: int,
                members: list[Member]) -> None:
    """Every stacked weight and AdamW state in one file, replaced atomically."""
    from safetensors.torch import save_file

    tensors = {f"param.{n}": t.detach().cpu().contiguous() for n, t in P.items()}
    for n, t in P.items():
        for key, value in opt.state.get(t, {}).items():
            tensors[f"{key}.{n}"] = value.detach().cpu().contiguous().reshape(value.shape)
    meta = {"format": GROUP_FORMAT, "step": str(step),
            "members": json.dumps([{"seed": m.cfg.seed, "task": m.task.to_dict(),
                                    "out": None if m.out is None else str(m.out)}
                                   for m in members])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_group(path: Path, P: dict, opt: torch.optim.AdamW, members: list[Member],
                device: torch.device) -> int:
    """Load a group checkpoint into P and opt; its step."""
    tensors, meta = read_tensors(path, "the batched checkpoint cannot be resumed")
    if meta.get("format") != GROUP_FORMAT:
        raise LoadError(f"{path}: metadata format {meta.get('format')!r}, expected "
                        f"{GROUP_FORMAT!r}")
    want = [{"seed": m.cfg.seed, "task": m.task.to_dict(),
             "out": None if m.out is None else str(m.out)} for m in members]
    if json.loads(meta.get("members", "null")) != want:
        raise LoadError(f"{path}: holds another group of models than this run's")
    step = int(meta["step"])
    state = {}
    with torch.no_grad():
        for n, t in P.items():
            saved = tensors.get(f"param.{n}")
            if saved is None or saved.shape != t.shape:
                raise LoadError(f"{path}: no tensor param.{n} of shape {tuple(t.shape)}")
            t.copy_(saved.to(device))
            entry = {k: tensors[f"{k}.{n}"] for k in ("step", "exp_avg", "exp_avg_sq")
                     if f"{k}.{n}" in tensors}
            if entry:
                state[t] = {k: (v if k == "step" else v.to(device)) for k, v in entry.items()}
    for t, s in state.items():
        opt.state[t] = s
    return step


def _member_log(m: Member, step: int) -> list[dict]:
    """The member's train_log.jsonl up to `step` (the file is cut there), or [] when fresh."""
    if m.out is None:
        return []
    path = m.out / LOG
    if step == 0:
        if path.exists():
            path.unlink()
        return []
    if not path.is_file():
        return []
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    log = [e for e in lines if e["step"] <= step]
    path.write_text("".join(json.dumps(e) + "\n" for e in log))
    return log


def train_batched(model_config: ModelConfig, members: list[Member], group: str | Path | None
                  = None, resume: bool = False, log_every: int = 100,
                  stop_after: int | None = None) -> list[TrainResult]:
    """Train the members' models together (see the module doc). `group` is the directory of
    the group checkpoint (written every cfg.checkpoint_every steps and at the end; None: no
    checkpoint); resume=True continues it. Each member with an `out` directory gets the
    ordinary checkpoint files there at the end (and its train_log.jsonl as it goes).
    `stop_after` ends the call after that step, as an interruption would."""
    _check_group(model_config, members)
    cfg0 = members[0].cfg
    if cfg0.device == "cpu":
        torch.set_num_threads(cfg0.threads)
    device = torch.device(cfg0.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RaspiclError(f"device {cfg0.device!r}: CUDA is not available on this machine")
    models = []
    for m in members:
        torch.manual_seed(m.cfg.seed)
        models.append(ICLTransformer(model_config))
    P = {n: t.to(device).requires_grad_(True) for n, t in stack_models(models).items()}
    del models
    opt = torch.optim.AdamW(list(P.values()), lr=cfg0.lr, betas=cfg0.betas,
                            weight_decay=cfg0.weight_decay)
    gpath = None if group is None else Path(group) / GROUP_FILE
    start = 0
    if resume and gpath is not None and gpath.is_file():
        start = _load_group(gpath, P, opt, members, device)
    logs = [_member_log(m, start) for m in members]
    fixed = [fixed_w_for(m.task, m.cfg.seed) if m.cfg.fixed_w else None for m in members]
    held = [eval_prompts(m.task, m.cfg.eval_prompts, m.cfg.seed, f)
            for m, f in zip(members, fixed, strict=True)]
    K = len(members)
    window: list[torch.Tensor] = []
    evals: list[dict] = [{} for _ in members]
    t0 = time.perf_counter()
    t_log, s_log = t0, start
    end = cfg0.steps if stop_after is None else min(cfg0.steps, max(start, stop_after))
    task0 = members[0].task
    for step in range(start, end):
        d_eff, n_eff = (cfg0.curriculum.at(step, task0.d, task0.n) if cfg0.curriculum
                        else (task0.d, task0.n))
        batches = [training_batch(m.task, m.cfg.batch, m.cfg.seed, step, d_eff, n_eff, f)
                   for m, f in zip(members, fixed, strict=True)]
        tok = torch.from_numpy(np.stack([b[0] for b in batches])).to(device)
        tgt = torch.from_numpy(np.stack([b[1] for b in batches])).to(device)
        lr = cfg0.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        pred = stacked_forward(P, tok, model_config)[:, :, 0::2]
        losses = ((pred - tgt) ** 2).mean(dim=(1, 2))
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        if cfg0.grad_clip > 0:
            clip_per_model(P, cfg0.grad_clip)
        opt.step()
        window.append(losses.detach())
        done = step + 1
        at_end = done in (cfg0.steps, end)
        if done % log_every == 0 or at_end:
            values = torch.stack(window).cpu().numpy()  # one device sync per logged interval
            if not np.all(np.isfinite(values)):
                bad = int(np.flatnonzero(~np.isfinite(values).all(axis=0))[0])
                raise RaspiclError(f"training diverged for model {bad} (seed "
                                   f"{members[bad].cfg.seed}) before step {done}")
            now = time.perf_counter()
            rate = (done - s_log) / max(now - t_log, 1e-9)
            evaluate_now = (cfg0.eval_every and done % cfg0.eval_every == 0) or at_end
            for k, m in enumerate(members):
                entry = {"step": done, "loss": float(values[:, k].mean()), "lr": lr,
                         "d_eff": d_eff, "n_eff": n_eff, "steps_per_s": rate}
                if evaluate_now:
                    evals[k] = evaluate(unstack_model(P, k, model_config).to(device), held[k],
                                        m.task)
                    entry["eval_query_error"] = evals[k]["query_error"]
                    entry["eval_mean_error"] = evals[k]["mean_error"]
                logs[k].append(entry)
                if m.out is not None:
                    m.out.mkdir(parents=True, exist_ok=True)
                    with open(m.out / LOG, "a") as f:
                        f.write(json.dumps(entry) + "\n")
            window, t_log, s_log = [], now, done
        if gpath is not None and (done == end or (cfg0.checkpoint_every
                                                  and done % cfg0.checkpoint_every == 0)):
            _save_group(gpath, P, opt, done, members)
    results = []
    for k, m in enumerate(members):
        model = unstack_model(P, k, model_config).to(device)
        if not evals[k]:
            evals[k] = evaluate(model, held[k], m.task)
        loss, covered = final_loss(logs[k], end)
        if m.out is not None and end == cfg0.steps:
            kopt = make_optimizer(model, m.cfg)
            for n, p in model.named_parameters():
                s = opt.state.get(P[n], {})
                if s:
                    kopt.state[p] = {"step": s["step"].clone(),
                                     "exp_avg": s["exp_avg"][k].clone(),
                                     "exp_avg_sq": s["exp_avg_sq"][k].clone()}
            save_checkpoint(m.out, model, kopt, m.task, m.cfg, end,
                            {"final_loss": loss, "final_window": covered, "eval": evals[k],
                             "trainer": {"name": "batched", "models": K}})
        model.eval()
        results.append(TrainResult(model=model, step=end, final_loss=loss,
                                   final_window=covered, eval=evals[k], log=logs[k],
                                   seconds=time.perf_counter() - t0))
    return results


def group_step(group: str | Path) -> int | None:
    """The step of the group checkpoint in a directory, or None where there is none."""
    path = Path(group) / GROUP_FILE
    if not path.is_file():
        return None
    _, meta = read_tensors(path, "the batched checkpoint cannot be read")
    try:
        return int(meta["step"])
    except (KeyError, ValueError):
        raise LoadError(f"{path}: metadata has no step") from None

