"""The `raspicl train` and `raspicl predict` commands (docs/cli.md, "train and predict";
docs/training.md)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from raspicl.cli_args import (
    add_threads_arg,
    check_out_dir,
    count_arg,
    device_arg,
    positive_arg,
    scale_arg,
    seed_arg,
)
from raspicl.errors import RaspiclError

SIZE_FLAGS = (("d", "--d"), ("n", "--n"), ("layers", "--layers"), ("d_model", "--d-model"),
              ("heads", "--heads"), ("steps", "--steps"))


def _ratio(text: str) -> float:
    value = scale_arg(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def _nonneg_int(text: str) -> int:
    return seed_arg(text)


def cmd_train(args) -> int:
    from raspicl.icl.tasks import DEFAULT_KIND, DEFAULT_SPARSITY, RegressionTask
    from raspicl.icl.train import Curriculum, TrainConfig, resume_config, train
    from raspicl.icl.trained import ModelConfig

    check_out_dir(args.out, "--out")
    if args.resume:
        given = [flag for field, flag in SIZE_FLAGS if field != "steps"
                 and getattr(args, field) is not None]
        given += [flag for flag, value in (("--task", args.task), ("--sparsity", args.sparsity))
                  if value is not None]
        if given:
            raise RaspiclError(f"--resume reads the sizes from {args.out}/config.json; do not "
                               f"give {', '.join(given)}")
        overrides = {"threads": args.threads, "device": args.device}
        if args.steps is not None:
            overrides["steps"] = args.steps
        model_cfg, task, cfg = resume_config(args.out, **overrides)
    else:
        missing = [flag for field, flag in SIZE_FLAGS if getattr(args, field) is None]
        if missing:
            raise RaspiclError(f"train needs {', '.join(missing)} (or --resume)")
        args.task = DEFAULT_KIND if args.task is None else args.task
        model_cfg = ModelConfig(d=args.d, n_positions=args.n, layers=args.layers,
                                d_model=args.d_model, heads=args.heads)
        if args.sparsity is not None and args.task != "sparse":
            raise RaspiclError(f"--sparsity is for --task sparse (got --task {args.task})")
        sparsity = None
        if args.task == "sparse":
            sparsity = DEFAULT_SPARSITY if args.sparsity is None else args.sparsity
        try:
            task = RegressionTask(args.d, args.n, noise=args.noise, w_scale=args.w_scale,
                                  kind=args.task, sparsity=sparsity)
        except ValueError as exc:
            raise RaspiclError(str(exc)) from exc
        curriculum = None
        if args.curriculum:
            curriculum = Curriculum(interval=args.curriculum_interval)
        cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
                          seed=args.seed, curriculum=curriculum, fixed_w=args.fixed_w,
                          threads=args.threads, device=args.device,
                          checkpoint_every=args.checkpoint_every, grad_clip=args.grad_clip,
                          weight_decay=args.weight_decay)
    if cfg.warmup >= cfg.steps:
        raise RaspiclError(f"--warmup ({cfg.warmup}) must be below --steps ({cfg.steps})")
    print(f"training {model_cfg} on {task} for {cfg.steps} steps (seed {cfg.seed}, "
          f"{'curriculum' if cfg.curriculum else 'no curriculum'}"
          f"{', fixed w' if cfg.fixed_w else ''}) -> {args.out}", flush=True)
    result = train(model_cfg, task, cfg, out=args.out, resume=args.resume,
                   progress=not args.quiet)
    print(f"step {result.step}: final loss {result.final_loss:.6g} (mean of the last "
          f"{result.final_window} steps), held-out query error / d "
          f"{result.eval.get('query_error', math.nan):.4g}, {result.seconds:.0f} s")
    print(f"wrote {Path(args.out) / 'model.safetensors'}, {Path(args.out) / 'config.json'}")
    return 0


# How many refused prompts `raspicl predict` names, one line each, before it counts the rest.
SHOWN_REFUSALS = 5


def refusal_message(model: str, reasons: dict[int, str], refused: np.ndarray,
                    batch: int) -> str:
    """What `raspicl predict` says of prompts the model refuses: how many, then one line per
    refused prompt (its first finding) for the first SHOWN_REFUSALS, then how many more."""
    idx = [int(i) for i in np.flatnonzero(refused)]
    lines = [f"{model} refuses {len(idx)} of {batch} prompts: its runtime contract cannot "
             f"vouch for their predictions, so nothing was written (--refused nan writes them "
             f"as NaN, with a mask and the error bounds)"]
    for i in idx[:SHOWN_REFUSALS]:
        lines.append(f"  prompt {i}: {reasons.get(i, 'refused by the monitor')}")
    if len(idx) > SHOWN_REFUSALS:
        lines.append(f"  ... and {len(idx) - SHOWN_REFUSALS} more refused prompts")
    return "\n".join(lines)


def sidecar(out: Path, what: str) -> Path:
    """The file written beside --out FILE.npy: FILE.accepted.npy, FILE.bound.npy."""
    return out.with_name(out.name.removesuffix(".npy") + f".{what}.npy")


def cmd_predict(args) -> int:
    from raspicl.icl.controls import CompiledPredictor
    from raspicl.icl.predictor import load_predictor
    from raspicl.prompts import load_prompts

    out = Path(args.out)
    if out.suffix != ".npy":
        raise RaspiclError(f"--out {args.out}: must end in .npy")
    if out.exists() and out.is_dir():
        raise RaspiclError(f"--out {args.out}: is a directory")
    try:
        prompts = load_prompts(args.prompts)
    except RaspiclError as exc:  # its messages say "calibration prompts"; here they are inputs
        raise RaspiclError(f"--prompts: {str(exc).replace('calibration prompts ', '', 1)}") \
            from None
    # every prompt is run and judged (--refused decides what is written), so "warn"
    predictor = load_predictor(args.model_dir, check="warn")
    accepted = bound = None
    if isinstance(predictor, CompiledPredictor):  # the runtime contract decides what is kept
        checked = predictor.run(prompts)
        pred, accepted, bound = checked.values, checked.accepted, checked.bound
        refused = ~accepted
        if refused.any() and args.refused == "error":
            raise RaspiclError(refusal_message(predictor.name, checked.reasons, refused,
                                               prompts.batch))
        pred = np.where(refused[:, None], np.nan, pred)
    else:  # a trained model vouches for nothing, and refuses nothing
        pred = np.asarray(predictor.predict(prompts), dtype=np.float64)
    if pred.shape != (prompts.batch, prompts.n + 1):
        raise RaspiclError(f"{args.model_dir}: the model returned predictions of shape "
                           f"{pred.shape}, expected {(prompts.batch, prompts.n + 1)}")
    files = {out: pred}
    if args.refused == "nan" and accepted is not None:
        files[sidecar(out, "accepted")] = accepted
        files[sidecar(out, "bound")] = bound
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, array in files.items():
            np.save(path, array, allow_pickle=False)
    except OSError as exc:
        raise RaspiclError(f"--out {args.out}: cannot write: {exc}") from exc
    refused_count = 0 if accepted is None else int((~accepted).sum())
    made = int(np.isfinite(pred).sum())
    why = (f" or refuses the prompt ({refused_count} prompts refused)" if refused_count
           else "")
    print(f"{predictor.name}: predictions [{prompts.batch}, {prompts.n + 1}] -> {out} "
          f"({made} made, {pred.size - made} NaN where the model makes none{why})")
    if len(files) > 1:
        print(f"  accepted mask [{prompts.batch}] -> {sidecar(out, 'accepted')}, error bounds "
              f"[{prompts.batch}, {prompts.n + 1}] -> {sidecar(out, 'bound')}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register train and predict on the raspicl command line."""
    from raspicl.icl.tasks import DEFAULT_SPARSITY, KINDS

    p = sub.add_parser(
        "train", help="train a transformer on in-context linear (or sparse, or logistic) "
                      "regression",
        description="Train a GPT-2-style decoder (pre-LN, learned positions, a linear readout "
                    "at every token) on the paper's prompts: x ~ N(0, I_d), w ~ N(0, tau^2 I_d), "
                    "y = w^T x + N(0, sigma^2), fresh prompts every step, AdamW with linear "
                    "warm-up and cosine decay, gradient clipping. Writes DIR/model.safetensors, "
                    "DIR/config.json (which records the task), DIR/optimizer.safetensors and "
                    "DIR/train_log.jsonl (docs/training.md); the same seed gives the same "
                    "weights. --task sparse and --task logistic change the prompts.")
    p.add_argument("--d", type=count_arg, metavar="D",
                   help="input dimension (required unless --resume)")
    p.add_argument("--n", type=count_arg, metavar="N",
                   help="examples per prompt; also the most the model accepts (required unless "
                        "--resume)")
    p.add_argument("--layers", type=count_arg, metavar="L",
                   help="transformer blocks L (required unless --resume)")
    p.add_argument("--d-model", type=count_arg, metavar="H",
                   help="residual width H, a multiple of --heads (required unless --resume)")
    p.add_argument("--heads", type=count_arg, metavar="M",
                   help="attention heads (required unless --resume)")
    p.add_argument("--steps", type=count_arg, metavar="S",
                   help="optimizer steps (required unless --resume; with --resume, the new "
                        "total, which changes the cosine schedule's end)")
    p.add_argument("--task", choices=KINDS, default=None,
                   help="linear (the default): y = w^T x + noise; sparse: w with --sparsity "
                        "non-zero coordinates (Garg et al.); logistic: y ~ Bernoulli(sigmoid("
                        "w^T x)) in {0, 1}, trained with the same squared loss, so the model "
                        "predicts the probability that y = 1 (docs/training.md)")
    p.add_argument("--sparsity", type=count_arg, default=None, metavar="K",
                   help=f"non-zero coordinates of w for --task sparse, at most --d (default "
                        f"{DEFAULT_SPARSITY}, Garg et al.'s)")
    p.add_argument("--noise", type=scale_arg, default=0.0, metavar="SIGMA",
                   help="label noise sigma (default 0.0; must be 0 for --task logistic)")
    p.add_argument("--w-scale", type=scale_arg, default=1.0, metavar="TAU",
                   help="standard deviation tau of the true w (default 1.0)")
    p.add_argument("--curriculum", action="store_true",
                   help="Garg et al.'s curriculum: effective d from 1 by 1 and examples from 3 "
                        "by 2 every --curriculum-interval steps, up to --d and --n")
    p.add_argument("--curriculum-interval", type=count_arg, default=2000, metavar="STEPS",
                   help="steps between curriculum stages (default 2000)")
    p.add_argument("--fixed-w", action="store_true",
                   help="every prompt shares one w drawn from the seed: the probes' control "
                        "model")
    p.add_argument("--seed", type=seed_arg, default=0, metavar="K",
                   help="seed of the initial weights and of every step's prompts (default 0)")
    p.add_argument("--batch", type=count_arg, default=64, metavar="B",
                   help="prompts per step (default 64)")
    p.add_argument("--lr", type=positive_arg, default=1e-3, metavar="LR",
                   help="peak learning rate of AdamW (default 0.001)")
    p.add_argument("--warmup", type=_nonneg_int, default=1000, metavar="STEPS",
                   help="steps of linear warm-up, below --steps (default 1000)")
    p.add_argument("--weight-decay", type=scale_arg, default=0.01, metavar="WD",
                   help="AdamW's decoupled weight decay (default 0.01)")
    p.add_argument("--grad-clip", type=scale_arg, default=1.0, metavar="NORM",
                   help="clip the gradient norm to this, 0 for none (default 1.0)")
    p.add_argument("--threads", type=count_arg, default=1, metavar="T",
                   help="torch threads on CPU (default 1: on a shared 2-core machine 2 threads "
                        "ran a small model up to 15x slower)")
    p.add_argument("--device", type=device_arg, default="cpu", metavar="DEVICE",
                   help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--checkpoint-every", type=_nonneg_int, default=5000, metavar="STEPS",
                   help="write a resumable checkpoint every this many steps, 0 for only at the "
                        "end (default 5000)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out with its own sizes and settings; "
                        "bitwise the weights an uninterrupted run would give")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (created if needed; its files are overwritten)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict", help="run a compiled or trained model on prompts from a file",
        description="Load MODEL_DIR (a compiled model: layout.json; a trained one: "
                    "config.json), run it on the prompts in FILE (a .npz or .safetensors with "
                    "arrays X [B, n, d], y [B, n], xq [B, d]) and write its predictions "
                    "[B, n + 1] float64 to a .npy file: column k < n predicts y_{k+1} from the "
                    "k examples before it, column n the query; NaN where the model makes no "
                    "prediction.")
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="a directory written by `raspicl train` or `raspicl compile`")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="a .npz or .safetensors file with arrays X, y, xq")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the .npy file to write (its folder is created if needed)")
    p.add_argument("--refused", choices=["error", "nan"], default="error",
                   help="what to do with prompts a compiled model refuses (its runtime "
                        "contract cannot vouch for them): error (the default) writes nothing, "
                        "names them and exits with status 2; nan writes their predictions as "
                        "NaN, and beside FILE.npy the mask FILE.accepted.npy [B] and the error "
                        "bounds FILE.bound.npy [B, n + 1]")
    add_threads_arg(p)
    p.set_defaults(func=cmd_predict)
