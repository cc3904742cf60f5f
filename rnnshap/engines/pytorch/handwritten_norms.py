"""Normalizations written by hand on PyTorch: the names of torch's operations for the marks of
:mod:`rnnshap.formulas.marks` (roots, inverse roots and what keeps them; the rule and its reasons are there), and
the rule a product of an inverse root or a division by a root takes
(:class:`~rnnshap.rules.composite.ScaledProduct`, :class:`~rnnshap.rules.composite.ScaledQuotient`).

- Roots: ``sqrt``, ``t ** 0.5`` / ``pow(t, 0.5)``, ``std`` (and ``std_mean``'s std), ``torch.norm``,
  ``Tensor.norm``, ``torch.linalg.vector_norm``. Inverse roots: ``rsqrt``, ``t ** -0.5``.
- The inverse of one is the other: ``reciprocal``, ``1 / s``, ``s ** -1``.
- Kept through constants added, multiplied, divided and clamped (``clamp_min(eps)``), shape and dtype moves and
  indexing.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ...formulas import marks as formulas_marks
from ...formulas.marks import INVERSE, SCALE
from ...rules.composite import Quotient, ScaledProduct, ScaledQuotient
from ...rules.registry import DIVISION, REVERSE_DIVISION

Tensor = torch.Tensor


_KINDS: dict[str, str] = {
    **dict.fromkeys(["sqrt", "std", "std_mean", "norm", "linalg_vector_norm"], formulas_marks.ROOT),
    "rsqrt": formulas_marks.INVERSE_ROOT,
    **dict.fromkeys(["pow", "__pow__", "float_power"], formulas_marks.POWER),
    **dict.fromkeys(DIVISION, formulas_marks.DIVISION),
    **dict.fromkeys(REVERSE_DIVISION, formulas_marks.RECIPROCAL),  # (1.0 / s: s.__rtruediv__(1.0))
    "reciprocal": formulas_marks.RECIPROCAL,
    **dict.fromkeys([
        # constants added, multiplied, clamped
        "add", "__add__", "__radd__", "sub", "subtract", "__sub__", "__rsub__", "rsub", "mul", "multiply", "__mul__",
        "__rmul__", "neg", "negative", "__neg__", "positive", "__pos__", "clamp", "clamp_min", "clip", "maximum", "fmax",
        # shape, dtype and indexing
        "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose",
        "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "contiguous", "clone", "detach", "expand",
        "expand_as", "broadcast_to", "repeat", "tile", "repeat_interleave", "__getitem__", "select", "narrow",
        "index_select", "split", "chunk", "unbind", "to", "type", "type_as", "float", "double", "half", "bfloat16",
    ], formulas_marks.KEEPS),
}  # fmt: skip
_DIVISIONS = frozenset(DIVISION)
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


def mark_of(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], operand: Any, marks: Any) -> int | None:
    """The mark of the result of ``func`` whose only input-dependent operand is ``operand`` (marked
    ``marks.get(operand)``), or None."""
    name = canonical(getattr(func, "__name__", ""))
    kind = _KINDS.get(name)
    if kind is None:
        return None
    prior = marks.get(operand) if marks else None
    if kind == formulas_marks.POWER:
        if not args or args[0] is not operand:
            return None
        return formulas_marks.result_mark(kind, prior, _number(args[1] if len(args) > 1 else kwargs.get("exponent")))
    return formulas_marks.result_mark(kind, prior, numerator=bool(args) and args[0] is operand)


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
        if formulas_marks.scaled_quotient(marks.get(numerator), marks.get(denominator)):
            return _SCALED_QUOTIENT
        return rule
    scale = formulas_marks.scaled_product_scale(*(marks.get(t) for t in inputs))
    return rule if scale is None else _SCALED_PRODUCTS[scale]


__all__ = ["INVERSE", "SCALE", "canonical", "mark_of", "mark_result", "normalizing_rule"]
