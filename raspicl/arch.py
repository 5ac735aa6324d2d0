"""The target architectures: one frozen object per target, holding every fact about the block
that the compiler, the torch model, the layout record, the schema, the monitor and export need.

`PAPER` is the block of Akyürek et al. (ICLR 2023): no LayerNorm before attention, a LayerNorm
with a per-block eps before each MLP (2^80 in neutral blocks: an exact scaling), no final
LayerNorm, the exact (erf) GeLU. It is the default, and its weights do not depend on anything
here.

`GPT2` is HuggingFace's GPT2Model: a LayerNorm before attention (ln1), one before the MLP (ln2)
and a final one (ln_final), all with one eps (1e-5 unless set), learned absolute positions,
scores / sqrt(d_head), GeLU "gelu" (erf) or "gelu_new" (tanh), and n_heads * d_head ==
d_model. Every read then goes through a LayerNorm; the compiler keeps two rows `ln_pos`,
`ln_neg` at +N and -N at every token (through W_pos, N = `CompilerConfig.ln_anchor`), so that
sigma = N sqrt(2 / d_model) (1 + Q / (4 N^2) + ...), Q the squared deviation of every other
row, and sets every LayerNorm weight to N sqrt(2 / d_model): each LayerNorm then passes
`value - mean` through up to the relative factor `ratio - 1 = O(Q / (4 N^2))`, which the
runtime monitor reads off the residual stream at every token (raspicl.monitor) and the
never-written `zero` row cancels the mean of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# The GeLU forms a layout may name, and torch's `approximate` argument for each. "gelu_erf" is
# the paper layouts' name for the exact form; "gelu" (the same function) and "gelu_new" (the
# tanh approximation) are HuggingFace's names, which gpt2 layouts use.
ACT_FNS = {"gelu_erf": "none", "gelu": "none", "gelu_new": "tanh"}

# The product gadget's truncation, per GeLU form: sq_e(t) = t^2 (1 + c1 x^2 + c2 x^4 + ...),
# x = e t. Both forms have GeLU(z) + GeLU(-z) = sqrt(2/pi) z^2 + O(z^4) (the same quadratic
# coefficient, so the gadget's constants are unchanged), but different higher terms:
#   erf:  t erf(t / sqrt 2) sqrt(pi/2) / t^2 = 1 - x^2/6 + x^4/40 - x^6/336 + 0.000289 x^8 ...
#   tanh: tanh(a (x + 0.044715 x^3)) / (a x)  = 1 - 0.16749 x^2 + 0.025572 x^4 - 0.0031158 x^6
#                                                  + 0.00029524 x^8 ...  (a = sqrt(2/pi))
# Both series alternate with shrinking terms for |x| <= 1, so their leading terms (in absolute
# value, rounded up) bound the truncation. Plain gadget: |c1| x^2 + |c2| x^4; Richardson
# ((4 sq_e - sq_2e) / 3 multiplies the x^(2k) term by (4 - 4^k) / 3): 4 |c2| x^4 + 20 |c3| x^6
# + 84 |c4| x^8. tests/test_gpt2_arch.py checks both bounds against mpmath.
PRODUCT_TRUNCATION = {
    "none": {"plain": (1 / 6, 1 / 40), "richardson": (0.1, 0.06, 0.03)},
    "tanh": {"plain": (0.168, 0.026), "richardson": (0.103, 0.063, 0.03)},
}


@dataclass(frozen=True)
class Architecture:
    """Where the LayerNorms sit, the eps policy, the GeLU form, the head-size constraint and
    the score scale of one target (module doc)."""

    name: str
    ln_before_attention: bool
    ln_final: bool
    act_fn: str
    # one eps for every LayerNorm (gpt2), or None: the compiler sets one per block (paper)
    shared_eps: float | None
    # n_heads * d_head == d_model (GPT2Model's split of d_model into heads); pad to meet it
    heads_span_model: bool
    # the blocks may be shared (a looped model with a block_order that repeats)
    shared_blocks: bool
    # the compiler can divide in this target (a dividing LayerNorm with anchors +-N s)
    divides: bool
    ln_before_mlp: bool = True
    score_divisor: str = "sqrt(d_head)"
    positional_embedding: str = "learned absolute (W_pos)"

    def __post_init__(self) -> None:
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"architecture {self.name}: act_fn must be one of "
                             f"{', '.join(ACT_FNS)}, got {self.act_fn!r}")
        if self.shared_eps is not None and not (math.isfinite(self.shared_eps)
                                                and self.shared_eps > 0):
            raise ValueError(f"architecture {self.name}: the LayerNorm eps must be a positive "
                             f"finite number, got {self.shared_eps!r}")

    @property
    def approximate(self) -> str:
        """torch.nn.functional.gelu's `approximate` for this act_fn ('none' or 'tanh')."""
        return ACT_FNS[self.act_fn]

    @property
    def reads_through_layernorm(self) -> bool:
        """Every sublayer (and the readout) reads the residual through a LayerNorm, kept at a
        known scale by the constant anchors ln_pos / ln_neg (module doc)."""
        return self.ln_before_attention

    def truncation(self, richardson: bool) -> tuple[float, ...]:
        """The product gadget's truncation coefficients (PRODUCT_TRUNCATION)."""
        return PRODUCT_TRUNCATION[self.approximate]["richardson" if richardson else "plain"]

    def with_options(self, ln_eps: float | None = None, act_fn: str | None = None
                     ) -> Architecture:
        """This target with another shared eps or GeLU form (gpt2's settable options);
        itself when neither is given."""
        if ln_eps is None and act_fn is None:
            return self
        if ln_eps is not None and self.shared_eps is None:
            raise ValueError(f"architecture {self.name} sets its LayerNorm eps per block; "
                             f"ln_eps applies to gpt2")
        if act_fn is not None and self.name == "paper" and act_fn != self.act_fn:
            raise ValueError(f"architecture paper uses act_fn {self.act_fn!r} (its MLPs rely "
                             f"on the exact erf GeLU); act_fn {act_fn!r} applies to gpt2")
        return replace(self, shared_eps=self.shared_eps if ln_eps is None else float(ln_eps),
                       act_fn=self.act_fn if act_fn is None else act_fn)

    def record(self) -> dict:
        """The architecture facts layout.json records beside the sizes."""
        return {"name": self.name, "act_fn": self.act_fn,
                "attention_score_divisor": self.score_divisor,
                "positional_embedding": self.positional_embedding}


PAPER = Architecture(name="paper", ln_before_attention=False, ln_final=False,
                     act_fn="gelu_erf", shared_eps=None, heads_span_model=False,
                     shared_blocks=True, divides=True)

GPT2 = Architecture(name="gpt2", ln_before_attention=True, ln_final=True, act_fn="gelu_new",
                    shared_eps=1e-5, heads_span_model=True, shared_blocks=False,
                    divides=True)

# The fixed rows holding the constant anchors +N and -N under a target that reads through
# LayerNorm (gpt2); never read, never cleared.
LN_ANCHOR_ROWS = ("ln_pos", "ln_neg")

def anchor_levels(divides: list[bool], anchor: float, restore: float) -> list[float]:
    """N, the constant anchors' size (ln_pos = +N, ln_neg = -N), in every residual of a
    gpt2 forward pass, indexed as the residual list (embedding, then each run's attention and
    MLP; `divides[r]`: run r divides): `anchor` from the embedding on; 0 after a dividing
    attention; `restore` after a dividing MLP, until the next attention sets `anchor` again
    (or 0). So only the attention after a division reads beside the larger `restore`, which
    must dwarf the division anchors still there (compiler/gadgets/layernorm.py)."""
    levels = [anchor]
    for d in divides:
        levels += [0.0, restore] if d else [anchor, anchor]
    return levels


ARCHITECTURES = {a.name: a for a in (PAPER, GPT2)}
GPT2_ACT_FNS = ("gelu", "gelu_new")


def get_arch(arch: str | Architecture | None, ln_eps: float | None = None,
             act_fn: str | None = None) -> Architecture:
    """The Architecture named `arch` (an Architecture passes through; None is PAPER), with the
    options applied; ValueError naming the choices otherwise."""
    if arch is None:
        arch = PAPER
    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}: choose one of "
                             f"{', '.join(ARCHITECTURES)}")
        arch = ARCHITECTURES[arch]
    if not isinstance(arch, Architecture):
        raise TypeError(f"arch must be a name or an Architecture, got {arch!r}")
    if act_fn is not None and arch.name == "gpt2" and act_fn not in GPT2_ACT_FNS:
        raise ValueError(f"gpt2's act_fn must be one of {', '.join(GPT2_ACT_FNS)}, got "
                         f"{act_fn!r}")
    return arch.with_options(ln_eps, act_fn)


def arch_of_layout(a: dict) -> Architecture:
    """The Architecture a layout's `architecture` record describes (a validated layout; a
    record without a name predates gpt2 and is paper)."""
    name = a.get("name", "paper")
    if name == "paper":
        return PAPER
    return get_arch(name, ln_eps=a["ln_eps"], act_fn=a["act_fn"])
