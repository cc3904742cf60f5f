"""Normalizations written by hand: the roots whose products take the built-in norms' rule.

A normalization multiplies a value by the inverse of a root: ``c * rsqrt(v + eps)``, ``c / sqrt(v +
eps)``, ``x / x.norm(dim=1, keepdim=True).clamp_min(eps)``. The built-in norms (``layer_norm``,
``rms_norm``, ``group_norm``, ``F.normalize``) take the scale-weighted rule on that product
(:func:`rnnshap.rules.structured.scaled`): bounded on all-zero rows, where the inverse root is
``eps^(-1/2)`` on one side. One function gets one set of values however it is written, so the pass
marks, in both passes alike, which input-dependent tensors are roots (``SCALE``) or inverse roots
(``INVERSE``), and a product of an inverse root with another input-dependent tensor, or a division
of one by a root, takes that rule too (:class:`~rnnshap.rules.composite.ScaledProduct`,
:class:`~rnnshap.rules.composite.ScaledQuotient`).

- Roots: ``sqrt``, ``t ** 0.5`` / ``pow(t, 0.5)``, ``std`` (and ``std_mean``'s std), ``torch.norm``,
  ``Tensor.norm``, ``torch.linalg.vector_norm``. Inverse roots: ``rsqrt``, ``t ** -0.5``.
- The inverse of one is the other: ``reciprocal``, ``1 / s``, ``s ** -1``.
- A mark is kept through what keeps a root a root: adding or multiplying constants (``s + eps``,
  ``s * weight``: the rule is the same for a constant multiple of the scale), dividing by a constant,
  clamping (``clamp_min(eps)``, ``maximum`` with a constant), shape and dtype moves and indexing.

A product with a root (``y * std``, a de-normalization) keeps the Shapley rule, as does any other
product.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ...rules.composite import INVERSE, SCALE, Quotient, ScaledProduct, ScaledQuotient, power_mark
from ...rules.registry import DIVISION, REVERSE_DIVISION

Tensor = torch.Tensor


_ROOTS = {"sqrt": SCALE, "rsqrt": INVERSE, "std": SCALE, "std_mean": SCALE, "norm": SCALE, "linalg_vector_norm": SCALE}
_POWERS = frozenset({"pow", "__pow__", "float_power"})
_DIVISIONS = frozenset(DIVISION)
_REVERSE_DIVISIONS = frozenset(REVERSE_DIVISION)
_KEEPS = frozenset({
    # constants added, multiplied, clamped
    "add", "__add__", "__radd__", "sub", "subtract", "__sub__", "__rsub__", "rsub", "mul", "multiply", "__mul__",
    "__rmul__", "neg", "negative", "__neg__", "positive", "__pos__", "clamp", "clamp_min", "clip", "maximum", "fmax",
    # shape, dtype and indexing
    "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose",
    "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "contiguous", "clone", "detach", "expand",
    "expand_as", "broadcast_to", "repeat", "tile", "repeat_interleave", "__getitem__", "select", "narrow",
    "index_select", "split", "chunk", "unbind", "to", "type", "type_as", "float", "double", "half", "bfloat16",
})
_WATCHED = frozenset({*_ROOTS, *_POWERS, *_DIVISIONS, *_REVERSE_DIVISIONS, "reciprocal", *_KEEPS})
_SCALED_PRODUCTS = (ScaledProduct(0), ScaledProduct(1))
_SCALED_QUOTIENT = ScaledQuotient()


def canonical(name: str) -> str:
    """The out-of-place name of an operation: ``rsqrt_`` → ``rsqrt``, ``__imul__`` → ``__mul__``."""
    if name.startswith("__i") and name.endswith("__"):
        return "__" + name[3:]
    if name.endswith("_") and not name.endswith("__"):
        return name[:-1]
    return name


def _number(value: Any) -> float | None:
    """An exponent given as a number, or as a one-element tensor (Keras on torch converts it)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value)
    return None


def mark_of(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], operand: Tensor, marks: Any) -> int | None:
    """The mark of the result of ``func`` whose only input-dependent operand is ``operand`` (marked
    ``marks.get(operand)``), or None."""
    name = canonical(getattr(func, "__name__", ""))
    if name not in _WATCHED:
        return None
    root = _ROOTS.get(name)
    if root is not None:
        return root
    prior = marks.get(operand) if marks else None
    if name in _POWERS:
        if not args or args[0] is not operand:
            return None
        return power_mark(prior, _number(args[1] if len(args) > 1 else kwargs.get("exponent")))
    if prior is None:
        return None
    if name == "reciprocal":
        return -prior
    if name in _DIVISIONS:  # s / w keeps the mark, w / s inverts it
        return prior if args and args[0] is operand else -prior
    if name in _REVERSE_DIVISIONS:  # (1.0 / s: s.__rtruediv__(1.0))
        return -prior
    return prior


def mark_result(result: Any, mark: int, name: str, marks: Any) -> None:
    """Mark the floating-point tensors of ``result`` (``std_mean``: its std only)."""
    if canonical(name) == "std_mean" and isinstance(result, tuple):
        result = result[0]
    for leaf in tree_flatten(result)[0]:
        if isinstance(leaf, Tensor) and leaf.is_floating_point():
            marks[leaf] = mark


def normalizing_rule(rule: Any, call: Any, marks: Any) -> Any:
    """The scale-weighted rule for a product of an inverse root with an input-dependent value, or a
    division of one by a root; ``rule`` (Product or Quotient) otherwise."""
    inputs = call.inputs
    if len(inputs) != 2:
        return rule
    if isinstance(rule, ScaledQuotient) or isinstance(rule, ScaledProduct):
        return rule
    if isinstance(rule, Quotient):
        name = canonical(getattr(call.fn, "__name__", ""))
        if name not in _DIVISIONS or len(call.args) != 2 or call.kwargs.get("rounding_mode") is not None:
            return rule
        numerator, denominator = call.args
        if marks.get(denominator) == SCALE and marks.get(numerator) is None:
            return _SCALED_QUOTIENT
        return rule
    found = [marks.get(t) for t in inputs]
    if found.count(INVERSE) == 1 and found.count(None) == 1:
        return _SCALED_PRODUCTS[found.index(INVERSE)]
    return rule


__all__ = ["INVERSE", "SCALE", "canonical", "mark_of", "mark_result", "normalizing_rule"]
