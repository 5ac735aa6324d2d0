"""Checks on a compiled model's prompt before it runs: its shape, NaN or infinity, and (for
reports such as verify's) values beyond what calibration saw.

What a model vouches for is decided after the forward pass by the runtime contract
(raspicl.monitor), which CompiledModel.run applies; this module only looks at the tokens.
`on_violation`: 'error' raises DomainError, 'warn' issues a DomainWarning per finding, 'ignore'
does neither; all return the findings as messages. A token array of the wrong shape is a
ValueError whatever `on_violation` says: the model cannot run on it.
"""

from __future__ import annotations

import warnings

import numpy as np

from raspicl.errors import DomainError, DomainWarning
from raspicl.prompts import Prompts

MODES = ("error", "warn", "ignore")


def check_mode(on_violation: str) -> str:
    """`on_violation` itself, or ValueError if it is not one of MODES."""
    if on_violation not in MODES:
        raise ValueError(f"check must be one of {', '.join(repr(m) for m in MODES)}; "
                         f"got {on_violation!r}")
    return on_violation


def check_prompt(layout: dict, tokens: np.ndarray | Prompts, on_violation: str = "error", *,
                 stacklevel: int = 2, magnitudes: bool = True) -> list[str]:
    """Check prompt tokens [B, n_tokens, d_token] against the layout's prompt and domain.

    Shape: ValueError naming the expected and the actual shape. NaN or +-inf: one finding per
    kind, naming the token, its role and the component. |x| or |y| beyond the domain's
    x_abs_max or y_abs_max: one finding each, naming the largest value, where it is and the
    bound. Returns the findings (empty if there are none); see the module doc for on_violation.
    stacklevel: as for warnings.warn, counted from the caller of this function.
    """
    check_mode(on_violation)
    arr = tokens.tokens() if isinstance(tokens, Prompts) else np.asarray(tokens)
    p = layout["prompt"]
    expected = (p["n_tokens"], p["d_token"])
    if arr.ndim != 3 or arr.shape[1:] != expected:
        raise ValueError(f"tokens must have shape [batch, n_tokens, d_token] = [batch, "
                         f"{expected[0]}, {expected[1]}] (d={p['d']}, n={p['n_examples']}); "
                         f"got {list(arr.shape)}")
    arr = arr.astype(np.float64, copy=False)
    messages = []
    for kind, bad in (("NaN", np.isnan(arr)), ("+inf", np.isposinf(arr)),
                      ("-inf", np.isneginf(arr))):
        if bad.any():
            b, t, c = (int(i) for i in np.argwhere(bad)[0])
            messages.append(f"{token_name(layout, t, b)}, component {c} ({_component(layout, c)}), "
                            f"is {kind}{_count(bad)}; the model's output is undefined there")
    domain = layout["domain"]
    comps = p["token_components"]
    for name in ("x", "y") if magnitudes else ():
        bound = domain.get(f"{name}_abs_max")
        if bound is None or not comps.get(name):
            continue
        cols = np.asarray(comps[name])
        a = np.abs(arr[:, :, cols])
        a = np.where(np.isfinite(a), a, 0.0)
        over = a > bound
        if over.any():
            b, t, j = np.unravel_index(int(np.argmax(a)), a.shape)
            messages.append(
                f"|{name}| = {a[b, t, j]:.4g} at {token_name(layout, int(t), int(b))}, component "
                f"{int(cols[j])} ({_component(layout, int(cols[j]))}), exceeds the domain "
                f"{name}_abs_max = {bound:.4g} under which the error bound holds"
                f"{_count(over)}")
    return _report(messages, on_violation, "the prompt lies outside the compiled model's domain",
                   stacklevel)


# ---------------------------------------------------------------------- helpers


def token_name(layout: dict, t: int, b: int) -> str:
    """'token 4 (x, example 3) of prompt 0': a token of a prompt, as messages name it."""
    roles = layout["prompt"]["roles"]
    role = roles[t]
    if role == "query":
        what = "query"
    else:
        what = f"{role}, example {sum(1 for r in roles[:t + 1] if r == role)}"
    return f"token {t} ({what}) of prompt {b}"


def _component(layout: dict, c: int) -> str:
    """'y' or 'x[1]': what component c of a token carries."""
    comps = layout["prompt"]["token_components"]
    for name, cols in comps.items():
        if c in cols:
            return name if len(cols) == 1 else f"{name}[{cols.index(c)}]"
    return "?"


def _count(mask: np.ndarray) -> str:
    n = int(mask.sum())
    if n == 1:
        return ""
    prompts = int(mask.reshape(mask.shape[0], -1).any(axis=1).sum())
    return f" ({n} entries in {prompts} prompt{'s' if prompts != 1 else ''})"


def _report(messages: list[str], on_violation: str, headline: str,
            stacklevel: int) -> list[str]:
    if messages and on_violation == "error":
        raise DomainError(f"{headline}:\n  " + "\n  ".join(messages)
                          + "\n(check='warn' runs it anyway with a DomainWarning, "
                            "check='ignore' silently)")
    if on_violation == "warn":
        for m in messages:
            # +1: counted from check_*, which called this function
            warnings.warn(m, DomainWarning, stacklevel=stacklevel + 1)
    return messages
