"""The one table of the operations rnnshap attributes exactly, by family, as data: every engine reads it.

Families:

- :data:`ELEMENTWISE`, unary elementwise operations (:class:`Elementwise`): a rule family (``"smooth"``:
  Rescale with the midpoint derivative for tiny ``|Δ|``; ``"piecewise"``: Rescale whose quotient is kept
  down to ``Δ = 0``, never a derivative across a kink; ``"secant"``: the secant slope in closed form,
  written once under the entry's name in ``rnnshap/formulas/secant.py``'s ``SLOPES_BY_NAME``, which each
  engine binds), its kinks, the closed form of its secant from its two results (``near``), and its names on
  each side.
- :data:`BINARY`, elementwise operations of two operands (:class:`Binary`): the exact two-player
  Shapley rule where both operands depend on the input, Rescale where one is constant; ``"piecewise"``
  ones (orderings of two, and functions with a cone or a branch cut) never take a derivative.
- :data:`STRUCTURED`, operations along an axis (:class:`Structured`): ``"structured"`` (softmax,
  normalizations, ...), ``"reduction"`` (max, logsumexp, variance, ...), ``"ordering"`` (sort, top-k,
  ...) and ``"pick"`` (argmax: indices attributed through their uses), each by the rule its ``rule``
  names, which each engine implements under that name.

Each entry gives its names per backend: torch functions (every namespace and ``torch.Tensor`` method of
that name), ``keras.ops`` functions (their op classes: :func:`keras_class`), and the TensorFlow graph ops
of a traced ``Lambda`` or custom ``call`` (``tf.raw_ops`` types). Unary names are derived from the entry's
name where that matches (a derived name a side lacks is skipped there); binary and structured names are
given in full (``()`` where a backend has none or its engine has no rule: Keras on the torch backend
calls torch functions, so it reads the torch names).

This module holds data only and imports nothing of rnnshap or of any array library. Views of it live
where each engine does: the PyTorch registry (``rnnshap/rules/registry.py`` with
``rnnshap/rules/catalog.py``), the Keras ops (``rnnshap/engines/keras/kops.py``), the Keras
activations (``activations.py``), the traced TensorFlow ops (``trace.py``) and the JAX primitives
(``rnnshap/engines/jax/pairs.py``).
``tests/test_catalog_parity.py`` and ``tests/test_operations_parity.py`` run every entry on every
engine against float64 references and fail on an entry without one, or one that no engine reads
(docs/custom_rules.md: adding an operation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

Family = Literal["smooth", "piecewise", "secant"]
Kind = Literal["structured", "reduction", "ordering", "pick"]


def keras_class(name: str) -> str:
    """A keras op's class name from its function name: ``hard_silu`` → ``HardSilu``, ``log10`` → ``Log10``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


@dataclass(frozen=True)
class Elementwise:
    """One unary elementwise operation and its rule, on every engine.

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
    jax: tuple[str, ...] | None = None
    jax_nn: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kinks and self.family == "secant":
            raise ValueError(f"operation {self.name}: a closed-form secant has no kinks")

    @property
    def smooth(self) -> bool:
        return self.family != "piecewise"

    @property
    def torch_names(self) -> tuple[str, ...]:
        return (self.name,) if self.torch is None else self.torch

    @property
    def keras_op_names(self) -> tuple[str, ...]:
        """The keras.ops function names (their op classes: :func:`keras_class` of each)."""
        return (self.name,) if self.keras_ops is None else self.keras_ops

    @property
    def tf_op_names(self) -> tuple[str, ...]:
        """The TensorFlow graph op types (``tf.raw_ops`` names)."""
        return (keras_class(self.name),) if self.tf_ops is None else self.tf_ops

    @property
    def jax_names(self) -> tuple[str, ...]:
        """The JAX primitive names (``jax.lax``'s, as a jaxpr writes them)."""
        return (self.name,) if self.jax is None else self.jax

    @property
    def jax_function_names(self) -> tuple[str, ...]:
        """The names of the ``jax.nn`` functions a jaxpr holds as a named call (``jit[name=...]``)."""
        return (self.name,) if self.jax_nn is None else self.jax_nn

    @property
    def keras_activation_name(self) -> str:
        return self.name if self.keras_activation is None else self.keras_activation


@dataclass(frozen=True)
class Binary:
    """One elementwise operation of two operands: exact two-player Shapley where both depend on the
    input, Rescale where one is constant.

    ``family``: ``"smooth"`` (the derivative at the midpoint, averaged over the other operand's two
    values, where ``|Δ|`` is below ``eps^(1/3)``) or ``"piecewise"`` (the quotient down to ``Δ = 0``:
    maximum and minimum, and functions whose derivative is undefined somewhere in the plane: ``hypot``
    at the origin, ``arctan2`` on its branch cut). ``rule``: ``"shapley"``, or ``"power"`` (the PyTorch
    engine's power rule, a closed-form secant for a constant exponent; the Shapley rule elsewhere).
    ``torch``, ``keras_ops``, ``tf_ops``, ``jax``: the names per backend, in full (``()`` where none).
    """

    name: str
    family: Literal["smooth", "piecewise"] = "smooth"
    torch: tuple[str, ...] = ()
    keras_ops: tuple[str, ...] = ()
    tf_ops: tuple[str, ...] = ()
    jax: tuple[str, ...] = ()
    rule: Literal["shapley", "power"] = "shapley"

    @property
    def smooth(self) -> bool:
        return self.family == "smooth"


@dataclass(frozen=True)
class Structured:
    """One operation along an axis (or axes), by the rule named ``rule``, which every engine that
    names the entry implements. ``kind``: ``"structured"``, ``"reduction"``, ``"ordering"`` or
    ``"pick"``. ``torch``, ``keras_ops``, ``tf_ops``: the names per backend, in full; ``keras_class``
    the op class where it is not :func:`keras_class` of the function's name (``layer_normalization``:
    ``LayerNorm``). ``keras_refused``: keras.ops functions the Keras engine refuses by name on the
    TensorFlow backend (no rule written there yet) while Keras on the torch backend explains them
    through the torch functions: tested to be refused, not silently wrong."""

    name: str
    kind: Kind
    rule: str
    torch: tuple[str, ...] = ()
    keras_ops: tuple[str, ...] = ()
    tf_ops: tuple[str, ...] = ()
    keras_classes: tuple[str, ...] | None = None
    keras_refused: tuple[str, ...] = ()

    @property
    def keras_class_names(self) -> tuple[str, ...]:
        return tuple(keras_class(n) for n in self.keras_ops) if self.keras_classes is None else self.keras_classes


P: Family = "piecewise"
#: every unary elementwise operation with an exact rule on every engine (where a side has it)
ELEMENTWISE: tuple[Elementwise, ...] = (
    # closed forms
    Elementwise("sigmoid", near="sigmoid", torch=("sigmoid", "expit"), jax=("logistic",)),
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
    Elementwise("arctan", torch=("atan", "arctan"), tf_ops=("Atan",), jax=("atan",)),
    Elementwise("arcsinh", torch=("asinh", "arcsinh"), tf_ops=("Asinh",), jax=("asinh",)),
    Elementwise("arctanh", torch=("atanh", "arctanh"), tf_ops=("Atanh",), jax=("atanh",)),
    Elementwise("arcsin", torch=("asin", "arcsin"), tf_ops=("Asin",), jax=("asin",)),
    Elementwise("arccos", torch=("acos", "arccos"), tf_ops=("Acos",), jax=("acos",)),
    Elementwise("erf"),
    Elementwise("erfc"),
    # log|Γ(x)| and ψ(x) = Γ'(x)/Γ(x) (Student-t, negative-binomial and Dirichlet log-likelihoods): smooth between
    # their poles at 0, −1, −2, ..., which no midpoint derivative is taken across (the kink -inf stands for them all:
    # rnnshap.formulas.secant.POLES_OF_GAMMA)
    Elementwise("lgamma", kinks=(float("-inf"),), torch=("lgamma", "gammaln")),
    Elementwise("digamma", kinks=(float("-inf"),), torch=("digamma", "psi")),
    Elementwise("sinc"),
    Elementwise("gelu"),
    Elementwise("silu"),
    Elementwise("softplus"),
    Elementwise("softsign", kinks=(0.0,), jax_nn=("soft_sign",)),
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
    # added as one entry (docs/custom_rules.md, "Adding an operation")
    Elementwise("mish"),
)

#: unary elementwise torch functions with parameters the catalog's calls do not set (bounds, values):
#: piecewise Rescale, registered by the registry beside the catalog's entries
TORCH_PARAMETRIC_PIECEWISE = ("clamp", "clip", "clamp_min", "clamp_max", "threshold", "prelu", "rrelu", "nan_to_num")
#: the same on the Keras side (keras op class names)
KERAS_PARAMETRIC_PIECEWISE = ("Clip", "Threshold")

#: every elementwise operation of two operands with an exact rule, by backend
BINARY: tuple[Binary, ...] = (
    # orderings of two
    Binary("maximum", "piecewise", torch=("maximum",), keras_ops=("maximum",), tf_ops=("Maximum",), jax=("max",)),
    Binary("minimum", "piecewise", torch=("minimum",), keras_ops=("minimum",), tf_ops=("Minimum",), jax=("min",)),
    Binary("fmax", "piecewise", torch=("fmax",), keras_ops=("fmax",)),
    Binary("fmin", "piecewise", torch=("fmin",), keras_ops=("fmin",)),
    # a branch cut (x1 = 0, x2 < 0) and a cone (the origin): never a derivative
    Binary("arctan2", "piecewise", torch=("atan2", "arctan2"), keras_ops=("arctan2",), tf_ops=("Atan2",), jax=("atan2",)),
    Binary("hypot", "piecewise", torch=("hypot",), keras_ops=("hypot",)),
    # smooth
    Binary("logaddexp", torch=("logaddexp",), keras_ops=("logaddexp",)),
    Binary("logaddexp2", torch=("logaddexp2",), keras_ops=("logaddexp2",)),
    Binary("xlogy", torch=("xlogy",), tf_ops=("Xlogy",)),
    Binary("squared_difference", tf_ops=("SquaredDifference",)),
    Binary(
        "power", torch=("pow", "__pow__", "__rpow__", "float_power"), keras_ops=("power",), tf_ops=("Pow",), jax=("pow",),
        rule="power",
    ),
)

#: every operation along an axis with an exact rule, by backend
STRUCTURED: tuple[Structured, ...] = (
    Structured("softmax", "structured", "softmax", ("softmax",), ("softmax",), ("Softmax",)),
    Structured("log_softmax", "structured", "log_softmax", ("log_softmax",), ("log_softmax",), ("LogSoftmax",)),
    Structured("layer_norm", "structured", "layer_norm", ("layer_norm",), ("layer_normalization",), keras_classes=("LayerNorm",)),
    Structured("rms_norm", "structured", "rms_norm", ("rms_norm",), ("rms_normalization",), keras_classes=("RMSNorm",)),
    Structured("group_norm", "structured", "group_norm", ("group_norm",)),
    Structured("instance_norm", "structured", "instance_norm", ("instance_norm",)),
    Structured("glu", "structured", "glu", ("glu",), keras_refused=("glu",)),
    Structured("lerp", "structured", "lerp", ("lerp",)),
    Structured("normalize", "structured", "normalize", ("normalize",), keras_refused=("normalize",)),
    Structured("logsumexp", "reduction", "logsumexp", ("logsumexp",), ("logsumexp",)),
    Structured("max", "reduction", "max", ("max",), ("max",), ("Max",)),
    Structured("min", "reduction", "min", ("min",), ("min",), ("Min",)),
    Structured("amax", "reduction", "amax", ("amax",), ("amax",)),
    Structured("amin", "reduction", "amin", ("amin",), ("amin",)),
    Structured("var", "reduction", "variance", ("var", "var_mean"), keras_refused=("var",)),
    Structured("std", "reduction", "deviation", ("std", "std_mean"), keras_refused=("std",)),
    Structured("logcumsumexp", "reduction", "logcumsumexp", ("logcumsumexp",)),
    Structured("sort", "ordering", "sort", ("sort",), ("sort",)),
    Structured("top_k", "ordering", "topk", ("topk",), ("top_k",)),
    Structured("argsort", "ordering", "argsort", ("argsort",), keras_refused=("argsort",)),
    Structured("kthvalue", "ordering", "kthvalue", ("kthvalue",)),
    Structured("median", "ordering", "median", ("median",)),
    # two order statistics and a fixed linear interpolation between them (rnnshap/rules/quantile.py)
    Structured("quantile", "ordering", "quantile", ("quantile", "nanquantile")),
    Structured("argmax", "pick", "argmax", ("argmax",), ("argmax",)),
    Structured("argmin", "pick", "argmin", ("argmin",), ("argmin",)),
)


# -- the views every engine builds from these ------------------------------------------------------
def keras_op_families(exists: Callable[[str], bool] = lambda name: True) -> dict[str, Elementwise]:
    """Keras op class name → its unary entry, for the keras.ops function names that ``exists`` accepts."""
    return {keras_class(op): entry for entry in ELEMENTWISE for op in entry.keras_op_names if exists(op)}


def tf_op_families(exists: Callable[[str], bool] = lambda name: True) -> dict[str, Elementwise]:
    """TensorFlow graph op type → its unary entry, for the types that ``exists`` accepts."""
    return {op: entry for entry in ELEMENTWISE for op in entry.tf_op_names if exists(op)}


def jax_families(exists: Callable[[str], bool] = lambda name: True) -> dict[str, Elementwise]:
    """JAX primitive name → its unary entry, for the names that ``exists`` accepts."""
    return {p: entry for entry in ELEMENTWISE for p in entry.jax_names if exists(p)}


def jax_functions() -> dict[str, Elementwise]:
    """The name of a ``jax.nn`` function's call in a jaxpr → its unary entry."""
    return {f: entry for entry in ELEMENTWISE for f in entry.jax_function_names}


def jax_binary() -> dict[str, Binary]:
    """JAX primitive name → its binary entry."""
    return {p: entry for entry in BINARY for p in entry.jax}


def keras_activation_families() -> dict[str, Elementwise]:
    """Keras activation name → its unary entry."""
    return {entry.keras_activation_name: entry for entry in ELEMENTWISE if entry.keras_activation_name}


def keras_binary() -> dict[str, Binary]:
    """Keras op class name → its binary entry."""
    return {keras_class(op): entry for entry in BINARY for op in entry.keras_ops}


def tf_binary() -> dict[str, Binary]:
    """TensorFlow graph op type → its binary entry."""
    return {op: entry for entry in BINARY for op in entry.tf_ops}


def keras_structured(*kinds: Kind) -> dict[str, Structured]:
    """Keras op class name → its structured entry, for the entries of these kinds."""
    return {op: entry for entry in STRUCTURED if entry.kind in kinds for op in entry.keras_class_names}


def tf_structured() -> dict[str, Structured]:
    """TensorFlow graph op type → its structured entry."""
    return {op: entry for entry in STRUCTURED for op in entry.tf_ops}


__all__ = [
    "BINARY",
    "ELEMENTWISE",
    "KERAS_PARAMETRIC_PIECEWISE",
    "STRUCTURED",
    "TORCH_PARAMETRIC_PIECEWISE",
    "Binary",
    "Elementwise",
    "Structured",
    "keras_activation_families",
    "keras_binary",
    "keras_class",
    "keras_op_families",
    "keras_structured",
    "jax_binary",
    "jax_families",
    "jax_functions",
    "tf_binary",
    "tf_op_families",
    "tf_structured",
]
