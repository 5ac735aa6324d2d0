"""Every numeric constant of the compiler, with the condition it must meet.

One CompilerConfig drives a compilation; `for_dtype` gives the defaults tuned for the precision
the model will run in. A compiled model records its config in layout.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from raspicl.contract.charges import SERIES_LIMIT
from raspicl.errors import ConfigError

# Calibration prompts the interpreter runs at a time (compiler/calibrate.py). Calibration keeps
# running maxima, minima and counts, so the bounds do not depend on it; memory grows with it
# (chunk x tokens x the width of the registers live at once, in float64), and a chunk too small
# pays numpy's per-call overhead once per op. Condition: >= 1; 64 keeps ridge d = 8, n = 16
# (width-64 registers, 33 tokens) at about 1 MB per live register.
CALIBRATION_CHUNK = 64
# Compile-time feasibility (compiler/feasibility.py) runs the compiled model's compact plan on
# the calibration prompts and feeds each residual to the streamed monitor, a chunk of prompts at
# a time: at most MEASURE_CHUNK prompts, and fewer where what a chunk needs would exceed
# MEASURE_MEMORY bytes: for the first chunk, every value and landing held at once with its
# error bound, for the later ones what the first one held at most, plus, for each, four
# residuals and one instruction's walk in flight (float64; feasibility.measure_chunk,
# next_chunk). The report does not depend on the chunk; memory grows with it (24 MiB keeps
# ridge d = 2 n = 32 within about 70 MB above the imports, shared or unrolled within 100 MB),
# and a small chunk pays the monitor's per-instruction overhead once per chunk.
# Condition: MEASURE_CHUNK >= 1, MEASURE_MEMORY > 0.
MEASURE_CHUNK = 128
MEASURE_MEMORY = 24 * 2**20
# The bound a product or gate gadget is built for where its operands' bound is 0 (they were 0
# on every calibration prompt: a domain with w_scale 0, calibration prompts of zeros). Any
# positive scale builds a working gadget; what matters is that the monitor record holds the
# bound the weights were built with (compiler/gadgets/mlp.gadget_bound decides it once for
# both), so that a prompt whose operands exceed it is refused. Condition: > 0 and finite.
ZERO_BOUND = 1.0
# The smallest select_sharpness s whose closed gate leaks less than float64 rounds. Closed
# (mask 0, |z| <= B), a gate's two units take GeLU arguments in [-3s, -s] and add their
# difference times B / s; both GeLUs have one sign, so the leak is at most
# max_{a <= -s} |GeLU(a)| B / s = Phi(-s) B (erf GeLU: |a| Phi(a) decreases there; gpt2's
# tanh GeLU leaks less, 1.7e-23 B at s = 8.21). The monitor takes a closed gate's output as 0
# and charges the gate 2 kappa u B (u = 2^-52): Phi(-s) <= 2^-53, half an ulp of B, keeps the
# leak within an eighth of that charge (kappa = 2); float64's GeLU, which rounds 1 + erf to
# a multiple of 2^-53, lifts it by under 1%. Phi(-s) = 2^-53 at s = 8.2095 (mpmath,
# tests/test_compiler.py); 8.21 is that, rounded up. Condition: Phi(-MIN_SELECT_SHARPNESS) <=
# 2^-53.
MIN_SELECT_SHARPNESS = 8.21
# The smallest rounding_factor (kappa) the monitor's error bound has been checked with: the
# property tests (tests/test_contract_properties.py, test_fusion.py) hold measured errors
# within the bound at the default kappa = 2, the count of roundings a gadget's sums take
# (a product, then a sum; two GeLUs, then their difference). Condition: what those tests run.
MIN_ROUNDING_FACTOR = 2.0
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class CompilerConfig:
    """Constants of the gadgets.

    attention_margin:
        M, the score gap between the token a head must read and every other token. The weight
        that leaks to the others is about exp(-M) each, so the move error is about
        T * exp(-M) * (largest value at any token, read or not). Condition:
        T * exp(-M) * max|value| << tolerance. Values at tokens where the program is undefined
        are not bounded by calibration (a division by ~0 there can reach 1e20 and more), so M
        is large: M = 100 leaks 4e-44 per token, and the runtime monitor charges every read
        (T - 1) exp(-M) 2 max|residual| (raspicl.monitor), refusing a blown-up prompt.
    neutral_ln_eps:
        eps of the LayerNorm in blocks that do not divide. LayerNorm then divides by
        sqrt(var + eps) == sqrt(eps) exactly in floating point, a known scaling the MLP undoes.
        Conditions: a power of 4 (sqrt(eps) and 1 / sqrt(eps) are then exact, and feasibility
        raises it by powers of 4); eps >= 2^(p+2) * var for the residual's largest variance var
        (p = 52 mantissa bits in float64, 23 in float32), which depends on the model: the
        monitor checks it at every MLP input and refuses a prompt that breaks it. 2^80 covers
        var up to 2^26 (about 6.7e7) in float64.
    division_ln_eps:
        eps of the LayerNorm in a block that divides; must be negligible beside the anchors'
        variance 2 N^2 s^2 / d_model. Conditions: finite and >= 0; eps << 2 N^2 s_min^2 /
        d_model depends on the model: the monitor charges the quotient |q| |ratio - 1| with
        ratio = N |s| sqrt(2 / d_model) / sqrt(var + eps), eps included.
    division_anchor:
        N, the anchors +N s and -N s that make LayerNorm divide by |s|. The relative error of the
        quotient is about Q / (4 N^2 s^2), Q the squared norm of the rest of the residual; the
        computed mean carries a rounding error of about N |s| * machine epsilon that the zero
        row cancels only to first order. Conditions: positive, with 2 N^2 finite in the dtype;
        Q / (4 N^2 s_min^2) << tolerance and N |s_max| * machine epsilon << tolerance *
        |quotient| depend on the model, and the monitor charges their consequence (the
        measured ratio - 1, the LayerNorm mean's rounding).
    ln_anchor:
        N of the constant anchors +N / -N (rows ln_pos, ln_neg) that a target reading through
        LayerNorm at every sublayer (gpt2) keeps at every token, so that each LayerNorm passes
        the rows through times ratio = 1 - Q / (4 N^2) + ..., Q the squared deviation of the
        other rows at the token (raspicl.arch). Conditions: Q_max / (4 N^2) << tolerance;
        N * machine epsilon (the rounding of the LayerNorm's mean, which the zero row cancels)
        << the smallest value read; 2 N^2 / d_model far inside the dtype's range and far above
        the LayerNorm eps; and, where the program divides and ln_restore_anchor is None,
        N >> N_div |s_max| (the attention after a division reads through ln1 with the division
        anchors still there, times 1 / sqrt(1 + (N_div s / N)^2): compiler/gadgets/
        layernorm.py). The monitor charges every read 2 kappa u (|mean| + u sum_j |A_j|),
        about 4 kappa u^2 N beside the anchors, for the LayerNorm mean's rounding. 1e18
        (float64: u^2 N = 1.2e-14, (N_div s / N)^2 = 1e-18 s^2 for N_div = 1e9); 2^20
        (float32, whose tolerance is 1e-3: u^2 N = 3.7e-9; divisions restore at 2^30).
        Validated: positive, with 2 N^2 finite in the target dtype (the LayerNorm's variance
        sums the anchors' squares); the rest depends on the model, and the monitor charges
        |v| |ratio - 1| measured at every read.
    ln_restore_anchor:
        N_r, the size a dividing block's MLP restores the constant anchors at (the next
        attention takes them back to ln_anchor): only that attention reads beside the division
        anchors, so only it needs N_r >> N_div |s_max|, and only it pays the mean's rounding
        at u N_r. None: ln_anchor. Conditions: positive, N_r, ln_anchor and N_r - ln_anchor
        exact in the target dtype (powers of two), 2 N_r^2 finite in it. float32: 2^30
        (u^2 N_r = 3.8e-6, (N_div s / N_r)^2 = 1e-10 s^2 for N_div = 1e4), with ln_anchor 2^20
        everywhere else.
    ln_division_anchor:
        N_div under a target that reads through LayerNorm (gpt2), in place of
        division_anchor; None: division_anchor. Lower than division_anchor in float32 to keep
        N_div |s| << ln_restore_anchor; compile-time feasibility raises it where a division needs
        more (as it does division_anchor), but not past the balance of the quotient's error
        Q / (4 N_div^2 s^2) and the next attention's ratio error (N_div s)^2 / (2 N_r^2) at the
        divisor's bound (feasibility.balanced_anchor): raised until Q / (4 N^2 s^2) <= u / 4
        alone, N_div reached 6e5 in float32 ridge d = 8 n = 8 (N_div s up to N_r / 80 on
        x ~ N(0, I)), and the reads after a division at n = 16 were off by up to 3e-4 per step
        (docs/compiler.md, "float32"). Condition: None, or as division_anchor.
    product_scale:
        z = eps * max|t|, the largest argument of GeLU in the square gadget
        t^2 ~ sqrt(pi/2) (GeLU(eps t) + GeLU(-eps t)) / eps^2. Truncation error grows like z^2
        (z^4 with Richardson), rounding like machine epsilon / z. Measured best on |t| <= 1:
        z = 1e-3 (float64, Richardson, 3.6e-13 of t_max^2), z = 0.1 (float32, Richardson,
        1.3e-5). Condition: 0 < z <= the largest e |t| for which the monitor's truncation
        series holds (raspicl.contract.charges.SERIES_LIMIT: 0.5 with Richardson, whose 2e
        scale must stay within 1, and 1 without): beyond it an operand near its bound is
        refused.
    product_range:
        None, or x, the largest |e t| each product should reach on the calibration prompts:
        compile-time feasibility then raises an op's scales e (all its pairs alike, twins of
        a loop alike) by the factor that takes its measured largest |e t| to x, up to
        feasibility.MAX_PRODUCT_GAIN. The bounds alone set e for operands that peak together,
        |t| = |k a| + |b / k| = 2 sqrt(B_a B_b) / bound_margin at most, which many pairs
        never reach (S w in batch_gd, R M in newton: 0.05 where the bounds allow 0.1), and
        the rounding of the dense pass, kappa u |t| / e (two GeLUs of size e |t| / 2 cancel
        to 0.8 (e t)^2), is relative to e. Condition: truncation at x, 0.1 x^4 of t^2 with
        Richardson, small against the tolerance, and x well below the series limit 0.5
        (a prompt whose |t| exceeds the calibration's by 0.5 / x is refused). float32: 0.1 =
        product_scale / bound_margin, what the bounds give a pair whose operands peak
        together; None in float64 (its rounding, u / z = 2e-13, is not what limits it).
    richardson:
        combine the square gadget at eps and 2 eps, (4 E(eps) - E(2 eps)) / 3, cancelling the
        z^2 term for twice the hidden units.
    select_sharpness:
        s, how far below zero a closed gate's GeLU arguments sit: a closed gate leaks at most
        Phi(-s) B (B its bound), which the monitor takes as 0. Condition: finite and
        s >= MIN_SELECT_SHARPNESS = 8.21, where Phi(-s) <= 2^-53 (see that constant);
        s = 40 leaks 4e-350 B (zero: the GeLUs underflow).
    bound_margin:
        calibrated register bounds (largest |value| seen on calibration prompts) are multiplied
        by this before the gadgets' scales are chosen. Condition: >= 1; larger is safer and
        loses a little precision. Validated: finite and >= 1.
    interval_fallback:
        a value whose calibrated bound is below this fraction of its interval bound (what its
        operands' bounds allow) is taken to cancel on the calibration prompts only, and gets
        the interval bound (compiler/bounds.py). Condition: well below the ratio of ordinary
        values (|dot of d terms| / sum of |terms| is about 1 / sqrt(d)) and above rounding;
        validated: float64's machine epsilon < fraction < 1 (where it falls inside that range
        only sets the gadgets' scales, which the monitor checks at run time).
    calibration_prompts, calibration_seed:
        how many prompts from the model's domain calibrate the bounds, and the seed.
        Conditions: integers, calibration_prompts >= 1, calibration_seed >= 0 (numpy's
        seeds).
    target_dtype:
        the dtype feasibility measures the model in: 'float64' or 'float32'.
    tolerance:
        the error the model vouches for: the runtime monitor accepts a prompt only if its
        error bound at every output is <= tolerance * max(|output|, 1). None: 1e-8 for
        float64, 1e-3 for float32 (the defaults of raspicl verify). Condition: None, or
        positive and finite.
    rounding_factor:
        kappa, the multiple of machine epsilon the monitor charges per rounded operation
        (a sum of a few terms, a GeLU, a LayerNorm read) in its error bound. Condition: finite
        and >= MIN_ROUNDING_FACTOR = 2, the few operations each gadget rounds in; the property
        tests check at 2 that measured errors never exceed the bound.
    feasibility_passes:
        how many times compile-time feasibility may re-tune per-block constants (LayerNorm
        eps, anchors, gate bounds) from what the compiled model holds on calibration prompts.
        Condition: an integer >= 0.
    min_acceptance:
        the fraction of calibration prompts the finished model should accept. If a gadget's
        precondition fails on more than 1 - min_acceptance of them the compile fails
        (CompileError, naming the op and quantity); if only the error bound exceeds the
        tolerance that often, the model is returned with a ContractWarning (feasibility.py).
        Condition: 0 <= min_acceptance <= 1.
    fusion:
        run the fusion pass (compiler/fusion.py): linear values whose readers can compute them
        get no rows and no sublayer of their own. False compiles every op as written.
        (fusion, richardson and fusion_always must be booleans.)
    fusion_max_readers:
        a linear value read by more ops than this is kept (materialised): each reader that
        absorbs it repeats its terms (value columns of a head, entries of W_in), so past a
        few readers the repeated terms outweigh the rows saved. Condition: an integer >= 1.
    fusion_width_slack:
        the fused layout is kept when it has fewer blocks and a d_model at most this multiple
        of the unfused one's (or as many blocks and a narrower stream); fusing lengthens the
        lives of the fused values' operands, which can widen the stream. Condition: finite
        and >= 1.
    fusion_always:
        keep the fused layout whatever its size (the fusion property tests use it, so that
        every fusion the pass makes is compiled and checked).
    cse:
        run common-subexpression elimination (compiler/cse.py): an op that computes what an
        earlier op computed (same kind, terms, values and places) reads the earlier result
        and gets no units or rows of its own. False compiles every duplicate as written.
        (A boolean.)
    apply_epsilon:
        epsilon, the approximation error an `apply` gadget is built and certified for: sup
        over its declared range of |f - f^| in exact arithmetic (compiler/gadgets/
        elementwise.py; the monitor charges it, plus the units' rounding, at every token).
        The gadget's units grow as epsilon shrinks (smooth functions roughly as epsilon^-1/3,
        ReLU and the soft-threshold not at all: their GeLU's scale grows instead), so it is
        kept a little below the model's tolerance (an output that gains 10x on f's error
        still keeps float64's 1e-8): 1e-9 in float64, 1e-5 in float32, where the units'
        rounding costs about as much. Condition: finite, > 0 and < 1.
    apply_kink_epsilon:
        the same for ReLU and the soft-threshold, whose gadget is one GeLU(s x) / s per kink
        with error C / s (C = 0.17): epsilon only sets s, not the units, so it is kept far
        below the rounding of the values around it (1e-12 in float64, 1e-9 in float32; a
        pre-activation s x stays far inside either dtype's range). Condition: finite, > 0
        and < 1.
    apply_sharpness:
        a smooth function's GeLU units have slope s_j = apply_sharpness / (their local
        spacing): lower is smoother and better conditioned, higher more local. Condition:
        finite and in (0, 8] (beyond, the units approach ReLUs and the fit converges only as
        K^-2).
    apply_max_units:
        the most GeLU units one component of an `apply` may take (the gadget's K ladder stops
        there, and the op is refused, naming the best certified error). Condition: an integer
        >= 4.
    apply_ghost_units:
        of a smooth function's K units, this many on each side are centred beyond the range at
        the end's spacing: the fit then has as many units near an end as inside, and the
        error stops concentrating there (4 gains 10-100x at K = 64 over none for sigmoid,
        exp, log and tanh). Condition: an integer >= 0.
    """

    attention_margin: float = 100.0
    neutral_ln_eps: float = 2.0**80
    division_ln_eps: float = 1e-12
    division_anchor: float = 1e9
    ln_anchor: float = 1e18
    ln_restore_anchor: float | None = None
    ln_division_anchor: float | None = None
    product_scale: float = 1e-3
    product_range: float | None = None
    richardson: bool = True
    select_sharpness: float = 40.0
    bound_margin: float = 2.0
    interval_fallback: float = 1e-3
    calibration_prompts: int = 512
    calibration_seed: int = 12345
    target_dtype: str = "float64"
    tolerance: float | None = None
    rounding_factor: float = 2.0
    feasibility_passes: int = 4
    min_acceptance: float = 0.99
    fusion: bool = True
    fusion_max_readers: int = 4
    fusion_width_slack: float = 1.25
    fusion_always: bool = False
    cse: bool = True
    apply_epsilon: float = 1e-9
    apply_kink_epsilon: float = 1e-12
    apply_sharpness: float = 0.7
    apply_max_units: int = 256
    apply_ghost_units: int = 4

    def __post_init__(self) -> None:
        """Every field against the condition its docstring states (ConfigError naming the
        field, its value and the condition); conditions that depend on the model are the
        monitor's to check at run time."""
        for check in _CHECKS:
            check(self)

    @classmethod
    def for_dtype(cls, dtype: str = "float64", **overrides) -> CompilerConfig:
        """Defaults for a model that will run in `dtype` ('float64' or 'float32')."""
        if dtype == "float64":
            base = cls()
        elif dtype == "float32":
            base = cls(division_anchor=1e6, ln_anchor=2.0**20, ln_restore_anchor=2.0**30,
                       ln_division_anchor=1e4,
                       product_scale=0.2, product_range=0.1, apply_epsilon=1e-5,
                       apply_kink_epsilon=1e-9,
                       target_dtype="float32")
        else:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        return replace(base, **overrides)

    @property
    def contract_tolerance(self) -> float:
        """The tolerance the model vouches for (see `tolerance`)."""
        if self.tolerance is not None:
            return float(self.tolerance)
        return 1e-8 if self.target_dtype == "float64" else 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------- validation


def _fail(field: str, value: object, condition: str) -> ConfigError:
    return ConfigError(f"CompilerConfig.{field} = {value!r}: must be {condition}")


def _number(config: CompilerConfig, field: str) -> float:
    """The field as a float; ConfigError unless it is a real number (not a bool)."""
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise _fail(field, value, "a number")
    return float(value)


def _at_least(field: str, low: float, strict: bool = False, why: str = ""):
    """A check: the field is finite and >= low (> low if strict)."""
    def check(config: CompilerConfig) -> None:
        v = _number(config, field)
        if not (math.isfinite(v) and (v > low if strict else v >= low)):
            raise _fail(field, getattr(config, field),
                        f"finite and {'>' if strict else '>='} {low:g}{why}")
    return check


def _integer(field: str, low: int):
    def check(config: CompilerConfig) -> None:
        v = getattr(config, field)
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
            raise _fail(field, v, f"an integer >= {low}")
    return check


def _boolean(field: str):
    def check(config: CompilerConfig) -> None:
        if not isinstance(getattr(config, field), bool | np.bool_):
            raise _fail(field, getattr(config, field), "True or False")
    return check


def _target_dtype(config: CompilerConfig) -> None:
    if config.target_dtype not in DTYPES:
        raise _fail("target_dtype", config.target_dtype, "'float64' or 'float32'")


def _square_fits(field: str):
    """A check: the field (an anchor N) is None, or positive with 2 N^2 finite in the target
    dtype (a LayerNorm's variance sums the anchors' squares)."""
    def check(config: CompilerConfig) -> None:
        v = getattr(config, field)
        if v is None:
            return
        _at_least(field, 0.0, strict=True)(config)
        name = config.target_dtype
        if not float(v) <= math.sqrt(float(np.finfo(name).max) / 2.0):
            raise _fail(field, v, f"small enough that 2 N^2 is finite in {name}")
    return check


def _power_of_4(config: CompilerConfig) -> None:
    v = _number(config, "neutral_ln_eps")
    m, e = math.frexp(v) if math.isfinite(v) and v > 0 else (0.0, 0)
    if not (m == 0.5 and (e - 1) % 2 == 0):
        raise _fail("neutral_ln_eps", config.neutral_ln_eps,
                    "a positive power of 4 (so that sqrt(eps) and 1 / sqrt(eps) are exact)")


def _exact_in(value: float, dtype: str) -> bool:
    return float(np.asarray(value, dtype=dtype)) == value


def _restore_anchor(config: CompilerConfig) -> None:
    """ln_restore_anchor: None, or N_r, ln_anchor and N_r - ln_anchor exact in the dtype."""
    if config.ln_restore_anchor is None:
        return
    _square_fits("ln_restore_anchor")(config)
    n_r, n, dtype = float(config.ln_restore_anchor), float(config.ln_anchor), \
        config.target_dtype
    if not (_exact_in(n_r, dtype) and _exact_in(n, dtype) and _exact_in(n_r - n, dtype)
            and n_r - n + n == n_r):
        raise _fail("ln_restore_anchor", config.ln_restore_anchor,
                    f"such that it, ln_anchor = {config.ln_anchor!r} and their difference are "
                    f"exact in {dtype} (powers of two)")


def _optional(field: str, check):
    def run(config: CompilerConfig) -> None:
        if getattr(config, field) is not None:
            check(config)
    return run


def _product_scale(config: CompilerConfig) -> None:
    _boolean("richardson")(config)
    limit = SERIES_LIMIT[bool(config.richardson)]
    v = _number(config, "product_scale")
    if not 0.0 < v <= limit:
        raise _fail("product_scale", config.product_scale,
                    f"in (0, {limit:g}] with richardson={config.richardson} (the largest |e t| "
                    f"for which the monitor's truncation series bounds the product gadget, "
                    f"raspicl.contract.charges.SERIES_LIMIT)")


def _product_range(config: CompilerConfig) -> None:
    """None, or x in (0, SERIES_LIMIT / 2]: the docstring's "well below the series limit"
    (a prompt whose |t| exceeds the calibration's by SERIES_LIMIT / x is refused)."""
    if config.product_range is None:
        return
    limit = SERIES_LIMIT[bool(config.richardson)] / 2.0
    v = _number(config, "product_range")
    if not 0.0 < v <= limit:
        raise _fail("product_range", config.product_range,
                    f"None, or in (0, {limit:g}] with richardson={config.richardson} (half the "
                    f"largest |e t| the monitor's truncation series covers)")


def _interval_fallback(config: CompilerConfig) -> None:
    v = _number(config, "interval_fallback")
    if not (float(np.finfo(np.float64).eps) < v < 1.0):
        raise _fail("interval_fallback", config.interval_fallback,
                    "above float64's machine epsilon and below 1")


def _apply_epsilon(field: str):
    def check(config: CompilerConfig) -> None:
        v = _number(config, field)
        if not (math.isfinite(v) and 0.0 < v < 1.0):
            raise _fail(field, getattr(config, field), "finite, > 0 and < 1")
    return check


def _apply_sharpness(config: CompilerConfig) -> None:
    v = _number(config, "apply_sharpness")
    if not (math.isfinite(v) and 0.0 < v <= 8.0):
        raise _fail("apply_sharpness", config.apply_sharpness, "finite and in (0, 8]")


def _min_acceptance(config: CompilerConfig) -> None:
    v = _number(config, "min_acceptance")
    if not 0.0 <= v <= 1.0:
        raise _fail("min_acceptance", config.min_acceptance, "between 0 and 1")


_CHECKS = (
    _target_dtype,
    _at_least("attention_margin", 0.0, strict=True),
    _power_of_4,
    _at_least("division_ln_eps", 0.0),
    _square_fits("division_anchor"),
    _square_fits("ln_anchor"),
    _restore_anchor,
    _square_fits("ln_division_anchor"),
    _product_scale,
    _product_range,
    _at_least("select_sharpness", MIN_SELECT_SHARPNESS,
              why=" (the closed gate leaks at most Phi(-s) times its bound, which the monitor "
                  "takes as 0; Phi(-s) <= 2^-53 needs s >= 8.21)"),
    _at_least("bound_margin", 1.0),
    _interval_fallback,
    _integer("calibration_prompts", 1),
    _integer("calibration_seed", 0),
    _optional("tolerance", _at_least("tolerance", 0.0, strict=True)),
    _at_least("rounding_factor", MIN_ROUNDING_FACTOR),
    _integer("feasibility_passes", 0),
    _min_acceptance,
    _boolean("fusion"),
    _integer("fusion_max_readers", 1),
    _at_least("fusion_width_slack", 1.0),
    _boolean("fusion_always"),
    _boolean("cse"),
    _apply_epsilon("apply_epsilon"),
    _apply_epsilon("apply_kink_epsilon"),
    _apply_sharpness,
    _integer("apply_max_units", 4),
    _integer("apply_ghost_units", 0),
)
