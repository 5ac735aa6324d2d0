"""Guards on a compiled model's inputs and on its divisions (design.md §8).

A compiled model's error bound holds on the domain recorded in layout.json (`domain`): the
largest |x| and |y| seen in calibration times the compiler's margin, and for every division the
smallest |divisor| seen, over the margin. `check_prompt` looks at the tokens before the model
runs (shape, NaN or infinity, values beyond the domain); `check_divisors` reads each division's
divisor from the residual stream afterwards and reports tokens where it came closer to zero than
the calibrated minimum, where the quotient is unreliable or infinite; `check_leaks` looks at
every token, defined or not, for residual entries so large (or infinite) that the weight an
attention head leaks to tokens it does not read, about exp(-attention_margin) each, carries them
into tokens that are defined (a division by a near-zero divisor at an undefined token can do
this).

Each takes `on_violation`: 'error' raises DomainError, 'warn' issues a DomainWarning per
finding, 'ignore' does neither; all three return the findings as messages. A token array of the
wrong shape is a ValueError whatever `on_violation` says: the model cannot run on it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

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
            messages.append(f"{_where(layout, t, b)}, component {c} ({_component(layout, c)}), "
                            f"is {kind}{_count(bad)}; the model's output is undefined there")
    domain = layout.get("domain", {})
    comps = p.get("token_components", {"y": [0], "x": list(range(1, p["d_token"]))})
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
                f"|{name}| = {a[b, t, j]:.4g} at {_where(layout, int(t), int(b))}, component "
                f"{int(cols[j])} ({_component(layout, int(cols[j]))}), exceeds the domain "
                f"{name}_abs_max = {bound:.4g} under which the error bound holds"
                f"{_count(over)}")
    return _report(messages, on_violation, "the prompt lies outside the compiled model's domain",
                   stacklevel)


def check_divisors(layout: dict, residuals: Sequence, on_violation: str = "error", *,
                   stacklevel: int = 2) -> list[str]:
    """Check every division's divisor, read from the residual stream, against its calibrated
    minimum |s| >= abs_min.

    `residuals` is what CompiledModel.residuals returns (numpy arrays or torch tensors, [B, T,
    d_model] after the embedding and after every sublayer). The divisor is the register
    version live at the div op, read right after the sublayer that wrote it, at the tokens where
    calibration found it defined (layout domain.divisors[].tokens); elsewhere it is computed
    from undefined reads and may hold anything. A finding names the op, the register, the
    smallest |s|, where it is, and abs_min. stacklevel: as for check_prompt.
    """
    check_mode(on_violation)
    messages = []
    ops = {o["index"]: o for o in layout.get("ops", [])}
    n_tokens = layout["prompt"]["n_tokens"]
    for div in layout.get("domain", {}).get("divisors", []):
        abs_min = float(div["abs_min"])
        tokens = div.get("tokens", list(range(n_tokens)))
        if not tokens:
            continue
        v = divisor_version(layout, div)
        s = np.abs(_take(residuals[v["written_after"]], tokens, v["rows"])[:, :, 0])
        finite = np.isfinite(s)
        small = finite & (s < abs_min) if math.isfinite(abs_min) else np.zeros_like(finite)
        op = ops.get(div["op"], {})
        what = (f"division op {div['op']} ({op.get('text', '?')}, {op.get('source', '?')}): "
                f"its divisor |{div['register']}|")
        if (~finite).any():
            b, k = (int(i) for i in np.argwhere(~finite)[0])
            messages.append(f"{what} is {s[b, k]} at {_where(layout, tokens[k], b)}"
                            f"{_count(~finite)}; the quotient there is undefined")
        if small.any():
            b, k = np.unravel_index(int(np.argmin(np.where(small, s, np.inf))), s.shape)
            messages.append(
                f"{what} = {s[b, k]:.4g} at {_where(layout, tokens[k], int(b))} is below "
                f"abs_min = {abs_min:.4g}, the smallest divisor under which the division's "
                f"error bound holds{_count(small)}; the quotient there is unreliable and may "
                f"be inf")
    return _report(messages, on_violation, "a division's divisor came too close to zero",
                   stacklevel)


def check_leaks(layout: dict, residuals: Sequence, on_violation: str = "error", *,
                stacklevel: int = 2) -> list[str]:
    """Report residual entries, at any token, that are infinite or larger than
    machine epsilon * exp(M) / n_ctx (M the attention margin): beyond that, the exp(-M) weight
    each head leaks onto every token would move other tokens' values by more than rounding."""
    check_mode(on_violation)
    margin = float(layout.get("compiler", {}).get("attention_margin", 0.0))
    n_ctx = layout["architecture"]["n_ctx"]
    limit = np.finfo(np.float64).eps * math.exp(min(margin, 700.0)) / n_ctx
    skip = {layout["fixed_rows"].get(n) for n in ("anchor_pos", "anchor_neg")}
    rows = [r for r in range(layout["architecture"]["d_model"]) if r not in skip]
    messages = []
    for i, r in enumerate(residuals):
        r = r.detach().cpu().double() if hasattr(r, "detach") else r
        arr = np.abs(np.asarray(r)[..., rows])
        bad = arr > limit  # inf included; NaN is not (it comes from a NaN prompt: check_prompt)
        if bad.any():
            b, t, c = np.argwhere(bad)[0]
            value = arr[b, t, c]
            name = layout["row_names"][rows[c]] or f"row {rows[c]}"
            messages.append(
                f"residual {i} holds |{name}| = {value:.3g} at token {t} of prompt {b}"
                f"{_count(bad)}; attention leaks about exp(-{margin:g}) of every "
                f"token into the others, so entries above {limit:.3g} (or infinite) can move "
                f"defined values by more than rounding: an undefined token (e.g. one dividing "
                f"by ~0) has blown up")
            break
    return _report(messages, on_violation, "the residual stream blew up", stacklevel)


def divisor_version(layout: dict, div: dict) -> dict:
    """The layout entry of the register version a division divides by: the one the layout's
    divisor entry names, else (older layouts) the version written by the latest op before the
    div op, else the input or constant version."""
    name = div["register"].split("@")[0]
    versions = layout["registers"][name]["versions"]
    if "version" in div:
        for v in versions:
            if v["version"] == div["version"]:
                return v
    before = [v for v in versions if v["op"] is not None and v["op"] < div["op"]]
    if before:
        return max(before, key=lambda v: v["op"])
    initial = [v for v in versions if v["op"] is None]
    if not initial:
        raise KeyError(f"no version of register '{name}' is live at op {div['op']}")
    return initial[0]


# ---------------------------------------------------------------------- helpers


def _take(residual, tokens: list[int], rows: list[int]) -> np.ndarray:
    """residual[:, tokens][:, :, rows] as float64 numpy, from a numpy array or torch tensor."""
    if hasattr(residual, "detach"):
        import torch

        t = residual[:, torch.as_tensor(tokens, device=residual.device)]
        t = t[:, :, torch.as_tensor(rows, device=residual.device)]
        return t.detach().cpu().double().numpy()
    return np.asarray(residual)[:, tokens][:, :, rows].astype(np.float64)


def _where(layout: dict, t: int, b: int) -> str:
    """'token 4 (x, example 3) of prompt 0'."""
    roles = layout["prompt"]["roles"]
    role = roles[t]
    if role == "query":
        what = "query"
    else:
        what = f"{role}, example {sum(1 for r in roles[:t + 1] if r == role)}"
    return f"token {t} ({what}) of prompt {b}"


def _component(layout: dict, c: int) -> str:
    """'y' or 'x[1]': what component c of a token carries."""
    comps = layout["prompt"].get("token_components", {})
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
