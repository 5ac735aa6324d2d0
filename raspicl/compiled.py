"""CompiledModel: a Transformer together with the layout that says what its rows mean.

The layout (the content of layout.json) is all that is needed to encode prompts, read the
prediction and decode any register from the residual stream; a model loaded from disk has no
Program object, only this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raspicl.guards import check_divisors, check_leaks, check_prompt
from raspicl.model import Transformer
from raspicl.prompts import Prompts


@dataclass
class CompiledModel:
    model: Transformer
    layout: dict

    # ------------------------------------------------------------------ running

    def tokens(self, prompts: Prompts | np.ndarray, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> torch.Tensor:
        """Token vectors as a tensor of the model's dtype and device."""
        arr = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
        p = self.layout["prompt"]
        if arr.ndim != 3 or arr.shape[1:] != (p["n_tokens"], p["d_token"]):
            raise ValueError(f"tokens must have shape [batch, {p['n_tokens']}, {p['d_token']}] "
                             f"(d={p['d']}, n={p['n_examples']}); got {tuple(arr.shape)}")
        W = self.model.embed.W_E
        return torch.as_tensor(arr, dtype=dtype or W.dtype, device=device or W.device)

    def predict(self, prompts: Prompts | np.ndarray, check: str = "error") -> np.ndarray:
        """The prediction at the output positions: [B, n_positions, d_out], as float64 numpy.

        check: 'error' (raise DomainError), 'warn' (DomainWarning) or 'ignore', for a prompt
        with NaN or infinity or outside the layout's domain, and for a divisor that comes
        closer to zero than its calibrated minimum, or a residual entry so large (at any token)
        that attention's exp(-margin) leak from it would spoil other tokens (raspicl.guards)."""
        tok = self._checked_tokens(prompts, check)
        with torch.no_grad():
            res = self.model.residuals(tok)
            out = self.model.readout(res[-1])
        if check != "ignore":
            check_divisors(self.layout, res, check, stacklevel=3)
            check_leaks(self.layout, res, check, stacklevel=3)
        pos = self.layout["output"]["positions"]
        return out[:, pos].detach().cpu().double().numpy()

    def residuals(self, prompts: Prompts | np.ndarray, check: str = "error") -> list[np.ndarray]:
        """The residual stream after the embedding and after every sublayer, float64 numpy.
        check: as for predict."""
        tok = self._checked_tokens(prompts, check)
        with torch.no_grad():
            res = self.model.residuals(tok)
        out = [r.detach().cpu().double().numpy() for r in res]
        if check != "ignore":
            check_divisors(self.layout, out, check, stacklevel=3)
            check_leaks(self.layout, out, check, stacklevel=3)
        return out

    def _checked_tokens(self, prompts: Prompts | np.ndarray, check: str) -> torch.Tensor:
        arr = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
        check_prompt(self.layout, arr, check, stacklevel=4)  # the shape even under 'ignore'
        return self.tokens(arr)

    # ------------------------------------------------------------------ reading the layout

    def version(self, register: str, version: int | None = None) -> dict:
        """The layout entry of one version of a register (default: its last)."""
        regs = self.layout["registers"]
        if register not in regs:
            raise KeyError(f"no register '{register}' in the layout; registers are "
                           f"{', '.join(regs)}")
        versions = regs[register]["versions"]
        if version is None:
            return versions[-1]
        for v in versions:
            if v["version"] == version:
                return v
        raise KeyError(f"register '{register}' has no version {version}")

    def decode(self, residuals: list[np.ndarray], register: str,
               version: int | None = None) -> np.ndarray:
        """A register version read from the residual right after the sublayer that wrote it:
        [B, T, width]."""
        v = self.version(register, version)
        return residuals[v["written_after"]][:, :, v["rows"]]

    @property
    def n_blocks(self) -> int:
        return self.layout["architecture"]["n_layers"]

    def summary(self) -> dict:
        a = self.layout["architecture"]
        return {"blocks": a["n_layers"], "blocks_run": len(a["block_order"]),
                "heads": a["n_heads"], "d_head": a["d_head"], "d_model": a["d_model"],
                "d_mlp": a["d_mlp"], "params": self.model.n_params()}

    def to(self, dtype: torch.dtype | None = None, device=None) -> CompiledModel:
        """A copy of the model in another dtype or on another device."""
        import copy

        model = copy.deepcopy(self.model).to(device=device, dtype=dtype)
        return CompiledModel(model, self.layout)
