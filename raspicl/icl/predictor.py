"""The one interface through which every learner is measured: a trained transformer, a compiled
raspicl model or a reference solver. Metrics (SPD, ILWD, error against k) and probes accept any
object with this shape, so a compiled model whose algorithm is known exactly is a control for
every number they produce."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from raspicl.errors import RaspiclError
from raspicl.prompts import Prompts


@runtime_checkable
class Predictor(Protocol):
    """A learner read at every prefix of a prompt."""

    name: str

    def predict(self, prompts: Prompts) -> np.ndarray:
        """[B, n + 1] float64: at column k < n the prediction for x_{k+1} from the k examples
        before it, at column n the prediction for the query from all n; NaN where this learner
        makes no prediction."""
        ...


@runtime_checkable
class HiddenStates(Protocol):
    """A learner whose internal states can be probed."""

    def hidden_states(self, prompts: Prompts) -> list[np.ndarray]:
        """The residual stream [B, 2n + 1, width] after the embedding (index 0) and after every
        layer, float64."""
        ...


def load_predictor(path: str | Path, check: str = "error") -> Predictor:
    """The model saved in a directory: a compiled raspicl model (layout.json) or a trained
    in-context learner (config.json written by raspicl.icl training). check: a compiled
    model's contract mode (raspicl.icl.controls; a trained model has none)."""
    p = Path(path)
    if (p / "layout.json").is_file():
        from raspicl.icl.controls import CompiledPredictor
        return CompiledPredictor.load(p, check=check)  # its LoadErrors name the directory
    if (p / "config.json").is_file():
        from raspicl.icl.trained import TrainedPredictor
        return TrainedPredictor.load(p)
    raise RaspiclError(f"{p}: not a model directory (no layout.json of a compiled model, no "
                       f"config.json of a trained one)")

