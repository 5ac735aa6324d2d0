"""Training throughput of raspicl.icl.train.train() against a plain hand-written PyTorch loop.

    python bench/train_throughput.py [--steps 200] [--repeats 5] [--layers 2] [--d-model 64]

Both train the same ICLTransformer (same initial weights), on the same batch size and the same
optimizer (AdamW, the same warm-up + cosine learning rate, gradient clipping at 1.0). The plain
loop is what one would write by hand: prompts drawn with torch.randn, the learning rate from a
LambdaLR, no logging, no checkpoints, no curriculum bookkeeping. train() runs as the CLI does
(numpy prompts from default_rng([seed, step]), the loss read every step, a final held-out
evaluation) with no progress bar, no checkpoints and eval_prompts=64. The two alternate,
`repeats` times each, after one warm-up call of each, so that load from other processes on a
shared machine falls on both alike; the figure is the ratio of median samples/s (train() /
plain), and each interleaved pair's ratio is printed too. Torch runs on the thread count given
(default 1).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from raspicl.icl.tasks import RegressionTask  # noqa: E402
from raspicl.icl.train import TrainConfig, train  # noqa: E402
from raspicl.icl.trained import ICLTransformer, ModelConfig  # noqa: E402


def plain_loop(model_cfg: ModelConfig, cfg: TrainConfig) -> float:
    """Seconds for cfg.steps steps of a hand-written loop on the same model and optimizer."""
    torch.manual_seed(cfg.seed)
    model = ICLTransformer(model_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    d, n, B = model_cfg.d, model_cfg.n_positions, cfg.batch
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        w = torch.randn(B, d)
        X = torch.randn(B, n + 1, d)
        y = torch.einsum("bnd,bd->bn", X, w)
        tok = torch.zeros(B, 2 * n + 1, d + 1)
        tok[:, 0::2, 1:] = X
        tok[:, 1::2, 0] = y[:, :n]
        loss = F.mse_loss(model(tok)[:, 0::2], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def raspicl_train(model_cfg: ModelConfig, cfg: TrainConfig) -> float:
    """Seconds for one train() call of cfg.steps steps, as the CLI runs it."""
    task = RegressionTask(model_cfg.d, model_cfg.n_positions)
    t0 = time.perf_counter()
    train(model_cfg, task, cfg, out=None, progress=False)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--n", type=int, default=9)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model_cfg = ModelConfig(d=args.d, n_positions=args.n, layers=args.layers,
                            d_model=args.d_model, heads=args.heads)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, warmup=args.steps // 10,
                      eval_every=0, eval_prompts=64, checkpoint_every=0,
                      threads=args.threads)
    warm = replace(cfg, steps=20, warmup=2)
    plain_loop(model_cfg, warm)
    raspicl_train(model_cfg, warm)
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(args.steps * args.batch / raspicl_train(model_cfg, cfg))
        plain.append(args.steps * args.batch / plain_loop(model_cfg, cfg))
    print(f"model {model_cfg}, batch {args.batch}, {args.steps} steps x {args.repeats} "
          f"interleaved repeats, torch threads {torch.get_num_threads()}")
    print(f"train():    samples/s {' '.join(f'{v:.0f}' for v in ours)}  "
          f"median {statistics.median(ours):.0f}")
    print(f"plain loop: samples/s {' '.join(f'{v:.0f}' for v in plain)}  "
          f"median {statistics.median(plain):.0f}")
    pairs = [a / b for a, b in zip(ours, plain, strict=True)]
    print(f"pair ratios {' '.join(f'{r:.3f}' for r in pairs)}")
    print(f"ratio train() / plain (medians): "
          f"{statistics.median(ours) / statistics.median(plain):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
