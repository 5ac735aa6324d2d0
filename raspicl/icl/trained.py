"""The trainable in-context learner: a GPT-2-style decoder over the paper's tokens, its
`TrainedPredictor` wrapper and its checkpoint files. Read top to bottom, nanoGPT-style.

    tokens [B, T, d+1] -> embed (linear) + learned positions -> L x Block -> ln_f -> readout [B, T]
    Block:  r = r + attn(ln1(r));  r = r + mlp(ln2(r))     (pre-LN, as GPT-2)
    attn:   causal softmax attention, `heads` heads of width d_model / heads, output W_O
    mlp:    W_in (d_model -> 4 d_model), tanh GeLU, W_out (4 d_model -> d_model)

Tokens are the paper's (raspicl.prompts.Prompts.tokens): x tokens [0, x_k] at positions
0, 2, ..., 2n-2, y tokens [y_k, 0_d] at 1, 3, ..., 2n-1, the query [0, x_q] at 2n. The readout
at x token 2k is the prediction of y_{k+1} from the k examples before it; at 2n, of the query's
y. Dropout is 0 everywhere, so a model is a deterministic function of its weights.

This is not raspicl/model.py (the compiled models' transformer): that one follows the paper's
block (no LayerNorm before attention, a per-block LayerNorm eps of up to 2^80, which the
compiler's gadgets need), which a trained pre-LN model cannot share. docs/training.md says
why and what the plan is.

Checkpoint directory (docs/training.md, "Checkpoint format"):
    model.safetensors   the weights, float32, the names of `state_dict()` (TransformerLens style)
    config.json         {"format", "model", "task", "train", "step", ...}; validated on load
    optimizer.safetensors + train_state.json   written by training, for resuming (train.py)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raspicl.errors import LoadError, RaspiclError
from raspicl.icl.tasks import RegressionTask
from raspicl.prompts import Prompts
from raspicl.tensorfile import read_tensors

FORMAT = "raspicl.icl.trained/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass(frozen=True)
class ModelConfig:
    """The decoder's sizes.

    d            input dimension (tokens are d + 1 wide)
    n_positions  the most examples a prompt may hold; the position table has 2 n_positions + 1
                 rows (n examples, n labels, the query)
    layers       blocks
    d_model      residual width H
    heads        attention heads (H must be a multiple of it)
    mlp_ratio    MLP width / H (GPT-2: 4)
    ln_eps       LayerNorm eps (GPT-2: 1e-5)
    """

    d: int
    n_positions: int
    layers: int
    d_model: int
    heads: int
    mlp_ratio: int = 4
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("d", "n_positions", "layers", "d_model", "heads", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RaspiclError(f"ModelConfig.{name} must be an integer >= 1, got {v!r}")
        if self.d_model % self.heads:
            raise RaspiclError(f"ModelConfig.d_model ({self.d_model}) must be a multiple of "
                               f"heads ({self.heads})")
        eps = self.ln_eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) \
                or eps <= 0:
            raise RaspiclError(f"ModelConfig.ln_eps must be a finite number > 0, got {eps!r}")

    @property
    def n_tokens(self) -> int:
        """Rows of the position table: 2 n_positions + 1."""
        return 2 * self.n_positions + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model") -> ModelConfig:
        """A config from JSON, with errors naming the field (`where`.field)."""
        if not isinstance(data, dict):
            raise RaspiclError(f"{where} must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RaspiclError(f"{where}: unknown field(s) {unknown}; expected {sorted(known)}")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise RaspiclError(f"{where}: missing field(s) {missing}")
        try:
            return cls(**data)
        except RaspiclError as exc:
            raise RaspiclError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------- the model


class Attention(nn.Module):
    """Causal multi-head softmax attention; W_Q, W_K, W_V, W_O are [H, H] (out x in)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.d_model
        self.heads = cfg.heads
        self.W_Q = nn.Linear(H, H)
        self.W_K = nn.Linear(H, H)
        self.W_V = nn.Linear(H, H)
        self.W_O = nn.Linear(H, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        split = lambda t: t.view(B, T, self.heads, H // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_Q(x)), split(self.W_K(x)), split(self.W_V(x))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.W_O(z.transpose(1, 2).reshape(B, T, H))


class MLP(nn.Module):
    """W_in (H -> mlp_ratio H), tanh GeLU, W_out (-> H)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.W_out = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(F.gelu(self.W_in(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN block: r + attn(ln1(r)), then + mlp(ln2(.))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ICLTransformer(nn.Module):
    """embed + pos -> blocks -> ln_f -> readout, one scalar per token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.d + 1, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(cfg.n_tokens, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.readout = nn.Linear(cfg.d_model, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's: N(0, 0.02) weights, zero biases, residual outputs scaled by 1/sqrt(2L)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            else:
                std = 0.02
                if name.endswith(("W_O.weight", "W_out.weight")):
                    std /= math.sqrt(2 * self.cfg.layers)
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor, hidden: list | None = None) -> torch.Tensor:
        """[B, T, d+1] -> [B, T]. With a list `hidden`, also appends the residual stream after
        the embedding and after every block (each [B, T, H])."""
        T = tokens.shape[1]
        if T > self.cfg.n_tokens:
            raise RaspiclError(f"tokens: {T} positions, the model has {self.cfg.n_tokens}")
        x = self.embed(tokens) + self.pos[:T]
        if hidden is not None:
            hidden.append(x)
        for block in self.blocks:
            x = block(x)
            if hidden is not None:
                hidden.append(x)
        return self.readout(self.ln_f(x)).squeeze(-1)


# ------------------------------------------------------------------ the predictor and files


class TrainedPredictor:
    """A trained ICLTransformer as a raspicl.icl.predictor Predictor and HiddenStates.

    `meta` carries what config.json records beside the model config (task, train, step, ...).
    Predictions run in the model's dtype (float32) and come back as float64."""

    def __init__(self, model: ICLTransformer, meta: dict | None = None,
                 name: str = "trained", chunk: int = 1024) -> None:
        self.model = model.eval()
        self.config = model.cfg
        self.meta = dict(meta or {})
        self.name = name
        self.chunk = chunk

    def _tokens(self, prompts: Prompts) -> torch.Tensor:
        cfg = self.config
        if prompts.d != cfg.d:
            raise RaspiclError(f"prompts.d: the prompts have d={prompts.d}, the model was "
                               f"trained for d={cfg.d}")
        if prompts.n > cfg.n_positions:
            raise RaspiclError(f"prompts.n: the prompts hold n={prompts.n} examples, the model "
                               f"takes at most n_positions={cfg.n_positions}")
        p = next(self.model.parameters())
        return torch.as_tensor(prompts.tokens(), dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def predict(self, prompts: Prompts) -> np.ndarray:
        """[B, n + 1] float64: the readout at x tokens 0, 2, ..., 2n-2 and the query 2n."""
        tok = self._tokens(prompts)
        out = [self.model(tok[i:i + self.chunk])[:, 0::2] for i in range(0, len(tok), self.chunk)]
        return torch.cat(out).double().cpu().numpy()

    @torch.no_grad()
    def hidden_states(self, prompts: Prompts) -> list[np.ndarray]:
        """The residual [B, 2n + 1, d_model] after the embedding and after every block."""
        tok = self._tokens(prompts)
        parts: list[list[torch.Tensor]] = []
        for i in range(0, len(tok), self.chunk):
            hidden: list[torch.Tensor] = []
            self.model(tok[i:i + self.chunk], hidden)
            parts.append(hidden)
        return [torch.cat([h[j] for h in parts]).double().cpu().numpy()
                for j in range(self.config.layers + 1)]

    def save(self, path: str | Path) -> Path:
        """Write DIR/model.safetensors and DIR/config.json (the directory is created)."""
        return save_model(self.model, path, self.meta)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> TrainedPredictor:
        model, meta = load_model(path, device)
        return cls(model, meta, name=f"trained:{Path(path).name}")


def save_model(model: ICLTransformer, path: str | Path, meta: dict | None = None) -> Path:
    """model.safetensors + config.json; `meta` holds task, train, step and the like."""
    from safetensors.torch import save_file

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RaspiclError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"format": FORMAT, "model": model.cfg.to_dict()}
    config.update({k: v for k, v in (meta or {}).items() if k not in config})
    # each file is written beside its place and renamed over it: a kill mid-write leaves the
    # previous file whole (config.json last, so that its step never runs ahead of the weights)
    save_file(state, str(out / (WEIGHTS + ".tmp")))
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)
    (out / (CONFIG + ".tmp")).write_text(json.dumps(config, indent=1) + "\n")
    os.replace(out / (CONFIG + ".tmp"), out / CONFIG)
    return out


def read_config(path: str | Path) -> dict:
    """config.json of a trained model, checked: format, model, task and step. LoadError names
    the file and field at fault."""
    p = Path(path) / CONFIG
    if not p.is_file():
        raise LoadError(f"{p}: no such file (not a trained model directory)")
    try:
        config = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoadError(f"{p}: not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LoadError(f"{p}: must hold a JSON object")
    if config.get("format") != FORMAT:
        raise LoadError(f"{p}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    if "model" not in config:
        raise LoadError(f"{p}: no field 'model'")
    try:
        ModelConfig.from_dict(config["model"], "model")
    except RaspiclError as exc:
        raise LoadError(f"{p}: field {exc}") from None
    task = config.get("task")
    if task is not None:
        if not isinstance(task, dict):
            raise LoadError(f"{p}: field 'task' must be an object")
        try:
            RegressionTask(**task)
        except (TypeError, ValueError) as exc:
            raise LoadError(f"{p}: field 'task': {exc}") from None
        if task["d"] != config["model"]["d"]:
            raise LoadError(f"{p}: field 'task.d' ({task['d']}) differs from 'model.d' "
                            f"({config['model']['d']})")
    step = config.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise LoadError(f"{p}: field 'step' must be an integer >= 0, got {step!r}")
    return config


def load_model(path: str | Path, device: str = "cpu") -> tuple[ICLTransformer, dict]:
    """The model in a directory written by save_model (or training) and the rest of its
    config.json. LoadError on a missing file, a bad config or tensors that do not match it."""
    config = read_config(path)
    cfg = ModelConfig.from_dict(config["model"])
    model = ICLTransformer(cfg)
    wpath = Path(path) / WEIGHTS
    state, _ = read_tensors(wpath)
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise LoadError(f"{wpath}: tensors do not match config.json's model: missing "
                        f"{missing[:5]}, unexpected {extra[:5]}")
    for k, v in want.items():
        if state[k].shape != v.shape:
            raise LoadError(f"{wpath}: tensor {k} has shape {tuple(state[k].shape)}, "
                            f"config.json's model needs {tuple(v.shape)}")
        if not torch.isfinite(state[k]).all():
            raise LoadError(f"{wpath}: tensor {k} holds NaN or infinite entries")
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()})
    meta = {k: v for k, v in config.items() if k not in ("format", "model")}
    return model.to(device).eval(), meta
