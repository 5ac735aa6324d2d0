"""Every numeric constant of the compiler, with the condition it must meet.

One CompilerConfig drives a compilation; `for_dtype` gives the defaults tuned for the precision
the model will run in. A compiled model records its config in layout.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

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
        Condition: eps >= 2^(p+2) * var for the residual's largest variance var (p = 52 mantissa
        bits in float64, 23 in float32). 2^80 covers var up to 2^26 (about 6.7e7) in float64;
        a power of two keeps 1/sqrt(eps) exact.
    division_ln_eps:
        eps of the LayerNorm in a block that divides; must be negligible beside the anchors'
        variance 2 N^2 s^2 / d_model. Condition: eps << 2 N^2 s_min^2 / d_model.
    division_anchor:
        N, the anchors +N s and -N s that make LayerNorm divide by |s|. The relative error of the
        quotient is about Q / (4 N^2 s^2), Q the squared norm of the rest of the residual; the
        computed mean carries a rounding error of about N |s| * machine epsilon that the zero
        row cancels only to first order. Condition: Q / (4 N^2 s_min^2) << tolerance and
        N |s_max| * machine epsilon << tolerance * |quotient|.
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
    ln_restore_anchor:
        N_r, the size a dividing block's MLP restores the constant anchors at (the next
        attention takes them back to ln_anchor): only that attention reads beside the division
        anchors, so only it needs N_r >> N_div |s_max|, and only it pays the mean's rounding
        at u N_r. None: ln_anchor. Condition: N_r - ln_anchor exact in the dtype (powers of
        two). float32: 2^30 (u^2 N_r = 3.8e-6, (N_div s / N_r)^2 = 1e-10 s^2 for N_div = 1e4),
        with ln_anchor 2^20 everywhere else.
    ln_division_anchor:
        N_div under a target that reads through LayerNorm (gpt2), in place of
        division_anchor; None: division_anchor. Lower than division_anchor in float32 to keep
        N_div |s| << ln_restore_anchor; compile-time feasibility raises it where a division needs
        more (as it does division_anchor), but not past the balance of the quotient's error
        Q / (4 N_div^2 s^2) and the next attention's ratio error (N_div s)^2 / (2 N_r^2) at the
        divisor's bound (feasibility.balanced_anchor): raised until Q / (4 N^2 s^2) <= u / 4
        alone, N_div reached 6e5 in float32 ridge d = 8 n = 8 (N_div s up to N_r / 80 on
        x ~ N(0, I)), and the reads after a division at n = 16 were off by up to 3e-4 per step
        (docs/compiler.md, "float32").
    product_scale:
        z = eps * max|t|, the largest argument of GeLU in the square gadget
        t^2 ~ sqrt(pi/2) (GeLU(eps t) + GeLU(-eps t)) / eps^2. Truncation error grows like z^2
        (z^4 with Richardson), rounding like machine epsilon / z. Measured best on |t| <= 1:
        z = 1e-3 (float64, Richardson, 3.6e-13 of t_max^2), z = 0.1 (float32, Richardson,
        1.3e-5).
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
        s, how far below zero a closed gate's GeLU arguments sit: a closed gate leaks about
        s Phi(-s) B. Condition: s Phi(-s) << machine epsilon; s = 40 gives 1e-348 (zero).
    bound_margin:
        calibrated register bounds (largest |value| seen on calibration prompts) are multiplied
        by this before the gadgets' scales are chosen. Condition: >= 1; larger is safer and
        loses a little precision.
    interval_fallback:
        a value whose calibrated bound is below this fraction of its interval bound (what its
        operands' bounds allow) is taken to cancel on the calibration prompts only, and gets
        the interval bound (compiler/bounds.py). Condition: well below the ratio of ordinary
        values (|dot of d terms| / sum of |terms| is about 1 / sqrt(d)) and above rounding.
    calibration_prompts, calibration_seed:
        how many prompts from the model's domain calibrate the bounds, and the seed.
    tolerance:
        the error the model vouches for: the runtime monitor accepts a prompt only if its
        error bound at every output is <= tolerance * max(|output|, 1). None: 1e-8 for
        float64, 1e-3 for float32 (the defaults of raspicl verify).
    rounding_factor:
        kappa, the multiple of machine epsilon the monitor charges per rounded operation
        (a sum of a few terms, a GeLU, a LayerNorm read) in its error bound. Condition: >= the
        few operations each gadget rounds in (2-4); the property tests check that measured
        errors never exceed the bound.
    feasibility_passes:
        how many times compile-time feasibility may re-tune per-block constants (LayerNorm
        eps, anchors, gate bounds) from what the compiled model holds on calibration prompts.
    min_acceptance:
        the fraction of calibration prompts the finished model should accept. If a gadget's
        precondition fails on more than 1 - min_acceptance of them the compile fails
        (CompileError, naming the op and quantity); if only the error bound exceeds the
        tolerance that often, the model is returned with a ContractWarning (feasibility.py).
    fusion:
        run the fusion pass (compiler/fusion.py): linear values whose readers can compute them
        get no rows and no sublayer of their own. False compiles every op as written.
    fusion_max_readers:
        a linear value read by more ops than this is kept (materialised): each reader that
        absorbs it repeats its terms (value columns of a head, entries of W_in), so past a
        few readers the repeated terms outweigh the rows saved. Condition: >= 1.
    fusion_width_slack:
        the fused layout is kept when it has fewer blocks and a d_model at most this multiple
        of the unfused one's (or as many blocks and a narrower stream); fusing lengthens the
        lives of the fused values' operands, which can widen the stream. Condition: >= 1.
    fusion_always:
        keep the fused layout whatever its size (the fusion property tests use it, so that
        every fusion the pass makes is compiled and checked).
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

    @classmethod
    def for_dtype(cls, dtype: str = "float64", **overrides) -> CompilerConfig:
        """Defaults for a model that will run in `dtype` ('float64' or 'float32')."""
        if dtype == "float64":
            base = cls()
        elif dtype == "float32":
            base = cls(division_anchor=1e6, ln_anchor=2.0**20, ln_restore_anchor=2.0**30,
                       ln_division_anchor=1e4,
                       product_scale=0.2, product_range=0.1,
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
