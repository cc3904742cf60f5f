"""One catalog of elementwise operations and their rules, read by both engines.

:data:`ELEMENTWISE` lists every unary elementwise operation rnnshap attributes exactly, as data: its
rule family (``"smooth"``: Rescale with the midpoint derivative for tiny ``|Δ|``; ``"piecewise"``:
Rescale whose quotient is kept down to ``Δ = 0``, never a derivative across a kink; ``"secant"``: the
secant slope in closed form, written once per engine under the entry's name in
:data:`rnnshap.rules.secant.SLOPES_BY_NAME` and ``rnnshap.engines.keras.dual.SLOPES_BY_NAME``), its
kinks, the closed form of its secant from its two results (``near``), and its names on each side: the
torch function(s), the Keras op(s) and the Keras activation. Names are derived from the entry's name
where they match on a side and given where they differ; a derived name a side lacks is skipped there.

Views of it: :func:`catalog_op_rules` (the PyTorch registry's elementwise entries),
:func:`keras_op_families` (``rnnshap/engines/keras/kops.py``) and :func:`keras_activation_families`
(``rnnshap/engines/keras/activations.py``). ``tests/test_catalog_parity.py`` runs every entry on both
engines against a float64 reference; adding an entry here and its reference there is all it takes
to add an activation (docs/custom_rules.md).

:func:`extra_op_rules` holds the registrations of the structured rules defined outside the registry's
own table (minGRU / minLSTM, TFT, xLSTM ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch

from .attention import attention_op_rules
from .base import Rule
from .composite import Deviation, Glu, Lerp, LogCumSumExp, Normalize, Variance, VectorNorm
from .elementwise import Rescale
from .gates import gate_rules
from .missing import missing_value_rules
from .secant import SLOPES_BY_NAME, Secant
from .structured import GroupNorm, LogSumExp, RMSNorm

Family = Literal["smooth", "piecewise", "secant"]


def _camel(name: str) -> str:
    """A keras op's class name from its function name: ``hard_silu`` → ``HardSilu``, ``log10`` → ``Log10``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


@dataclass(frozen=True)
class Elementwise:
    """One unary elementwise operation and its rule, on both engines.

    Parameters: ``name`` (the entry's name, and the name of each side's function where that matches);
    ``family`` (``"smooth"``, ``"piecewise"`` or ``"secant"``, see the module docstring); ``kinks``
    (the points, at the default parameters, where the function or one of its first two derivatives
    jumps: a piecewise entry's kinks are documentation and test points; a smooth entry's, where only
    the second derivative jumps (softsign, elu at 0), are points its rule takes no midpoint derivative
    across, which would be off by a fraction of Δ there);
    ``near`` (``"sigmoid"`` or ``"tanh"``: the secant in closed form from the two results for tiny
    ``|Δ|``); ``torch``, ``keras_ops``, ``keras_activation``, ``tf_ops`` (the names on each side where
    they differ from ``name``: torch functions, ``keras.ops`` functions, Keras activations, and the
    TensorFlow graph ops of a traced ``Lambda`` or custom ``call``, ``CamelCase`` by default; ``()`` or
    ``""`` where a side has none).
    """

    name: str
    family: Family = "smooth"
    kinks: tuple[float, ...] = ()
    near: str | None = None
    torch: tuple[str, ...] | None = None
    keras_ops: tuple[str, ...] | None = None
    keras_activation: str | None = None
    tf_ops: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kinks and self.family == "secant":
            raise ValueError(f"catalog entry {self.name}: a closed-form secant has no kinks")
        if self.family == "secant" and self.name not in SLOPES_BY_NAME:
            raise ValueError(f"catalog entry {self.name}: a secant entry needs its slope in rules.secant.SLOPES_BY_NAME")

    @property
    def smooth(self) -> bool:
        return self.family != "piecewise"

    @property
    def torch_names(self) -> tuple[str, ...]:
        return (self.name,) if self.torch is None else self.torch

    @property
    def keras_op_names(self) -> tuple[str, ...]:
        """The keras.ops function names (their op classes: :func:`_camel` of each)."""
        return (self.name,) if self.keras_ops is None else self.keras_ops

    @property
    def tf_op_names(self) -> tuple[str, ...]:
        """The TensorFlow graph op types (``tf.raw_ops`` names)."""
        return (_camel(self.name),) if self.tf_ops is None else self.tf_ops

    @property
    def keras_activation_name(self) -> str:
        return self.name if self.keras_activation is None else self.keras_activation


P: Family = "piecewise"
#: every unary elementwise operation with an exact rule on both engines (where a side has it)
ELEMENTWISE: tuple[Elementwise, ...] = (
    # closed forms
    Elementwise("sigmoid", near="sigmoid", torch=("sigmoid", "expit")),
    Elementwise("tanh", near="tanh"),
    Elementwise("exp", "secant", keras_activation="exponential"),
    Elementwise("exp2", "secant"),
    Elementwise("expm1", "secant"),
    Elementwise("log", "secant"),
    Elementwise("log2", "secant"),
    Elementwise("log10", "secant"),
    Elementwise("log1p", "secant"),
    Elementwise("sqrt", "secant"),
    Elementwise("rsqrt", "secant"),
    Elementwise("reciprocal", "secant", tf_ops=("Reciprocal", "Inv")),
    Elementwise("square", "secant"),
    # smooth
    Elementwise("sin"),
    Elementwise("cos"),
    Elementwise("tan"),
    Elementwise("sinh"),
    Elementwise("cosh"),
    Elementwise("arctan", torch=("atan", "arctan"), tf_ops=("Atan",)),
    Elementwise("arcsinh", torch=("asinh", "arcsinh"), tf_ops=("Asinh",)),
    Elementwise("arctanh", torch=("atanh", "arctanh"), tf_ops=("Atanh",)),
    Elementwise("arcsin", torch=("asin", "arcsin"), tf_ops=("Asin",)),
    Elementwise("arccos", torch=("acos", "arccos"), tf_ops=("Acos",)),
    Elementwise("erf"),
    Elementwise("erfc"),
    Elementwise("sinc"),
    Elementwise("gelu"),
    Elementwise("silu"),
    Elementwise("softplus"),
    Elementwise("softsign", kinks=(0.0,)),
    Elementwise("elu", kinks=(0.0,)),
    Elementwise("celu", kinks=(0.0,)),
    Elementwise("log_sigmoid", torch=("logsigmoid", "log_sigmoid")),
    Elementwise("tanh_shrink", torch=("tanhshrink",)),
    Elementwise("squareplus", torch=()),
    Elementwise("sparse_plus", kinks=(-1.0, 1.0), torch=()),
    # piecewise
    Elementwise("cbrt", P, kinks=(0.0,), torch=()),
    Elementwise("abs", P, kinks=(0.0,), torch=("abs", "absolute"), keras_ops=("abs", "absolute", "fabs")),
    Elementwise("relu", P, kinks=(0.0,)),
    Elementwise("relu6", P, kinks=(0.0, 6.0)),
    Elementwise("leaky_relu", P, kinks=(0.0,)),
    Elementwise("selu", P, kinks=(0.0,)),
    Elementwise("hard_silu", P, kinks=(-3.0, 3.0), torch=("hardswish",)),
    Elementwise("hard_sigmoid", P, kinks=(-3.0, 3.0), torch=("hardsigmoid",)),
    Elementwise("hard_tanh", P, kinks=(-1.0, 1.0), torch=("hardtanh",)),
    Elementwise("hard_shrink", P, kinks=(-0.5, 0.5), torch=("hardshrink",)),
    Elementwise("soft_shrink", P, kinks=(-0.5, 0.5), torch=("softshrink",)),
    Elementwise("sparse_sigmoid", P, kinks=(-1.0, 1.0), torch=()),
    # added as one entry (docs/custom_rules.md, "Adding an activation")
    Elementwise("mish"),
)

#: unary elementwise torch functions with parameters the catalog's calls do not set (bounds, values):
#: piecewise Rescale, registered by the registry beside the catalog's entries
TORCH_PARAMETRIC_PIECEWISE = ("clamp", "clip", "clamp_min", "clamp_max", "threshold", "prelu", "rrelu", "nan_to_num")
#: the same on the Keras side (keras op class names)
KERAS_PARAMETRIC_PIECEWISE = ("Clip", "Threshold")


def catalog_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """The PyTorch registry's view: torch function → rule, for every catalog entry."""
    smooth, piecewise = Rescale(smooth=True), Rescale(smooth=False)
    table: dict[Any, Rule] = {}
    for entry in ELEMENTWISE:
        rule: Rule
        if entry.family == "secant":
            rule = Secant(SLOPES_BY_NAME[entry.name])
        else:
            rule = (Rescale(smooth=True, kinks=entry.kinks) if entry.kinks else smooth) if entry.smooth else piecewise
        for fn in forms(*entry.torch_names):
            table[fn] = rule
    for fn in forms(*TORCH_PARAMETRIC_PIECEWISE):
        table[fn] = piecewise
    return table


def keras_op_families(exists: Callable[[str], bool] = lambda name: True) -> dict[str, Elementwise]:
    """The Keras engine's view of the ops: keras op class name → its catalog entry, for the keras.ops
    function names that ``exists`` accepts."""
    return {_camel(op): entry for entry in ELEMENTWISE for op in entry.keras_op_names if exists(op)}


def tf_op_families(exists: Callable[[str], bool] = lambda name: True) -> dict[str, Elementwise]:
    """The Keras engine's view of TensorFlow graph ops (rnnshap/engines/keras/trace.py): op type → its
    catalog entry, for the types that ``exists`` accepts."""
    return {op: entry for entry in ELEMENTWISE for op in entry.tf_op_names if exists(op)}


def keras_activation_families() -> dict[str, Elementwise]:
    """The Keras engine's view of the activations: activation name → its catalog entry."""
    return {entry.keras_activation_name: entry for entry in ELEMENTWISE if entry.keras_activation_name}


def extra_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → rule for the rules defined outside the registry's own table."""
    table: dict[Any, Rule] = {}

    def put(names: Iterable[str], rule: Rule) -> None:
        for fn in forms(*names):
            table[fn] = rule

    put(("logsumexp",), LogSumExp())
    put(("glu",), Glu())
    put(("lerp",), Lerp())
    put(("var", "var_mean"), Variance())
    for namespace in (torch, torch.Tensor):
        for deviation, variance in (("std", "var"), ("std_mean", "var_mean")):
            if hasattr(namespace, deviation) and hasattr(namespace, variance):
                table[getattr(namespace, deviation)] = Deviation(getattr(namespace, variance))
    put(("rms_norm",), RMSNorm())
    put(("group_norm",), GroupNorm())
    put(("normalize",), Normalize())
    for norm in (torch.norm, torch.Tensor.norm, torch.linalg.vector_norm):  # (not torch.linalg.norm: matrix norms too)
        table[norm] = VectorNorm()
    put(("logcumsumexp",), LogCumSumExp())
    table.update(attention_op_rules(forms))  # scaled_dot_product_attention, multi_head_attention_forward
    table.update(gate_rules(forms))  # comparisons as gates of where(x >= 0, f(x), g(x))
    table.update(missing_value_rules(forms))  # nanmean, nansum, nan_to_num (rnnshap/rules/missing.py)
    return table


__all__ = [
    "ELEMENTWISE",
    "KERAS_PARAMETRIC_PIECEWISE",
    "TORCH_PARAMETRIC_PIECEWISE",
    "Elementwise",
    "catalog_op_rules",
    "extra_op_rules",
    "keras_activation_families",
    "keras_op_families",
    "tf_op_families",
]
