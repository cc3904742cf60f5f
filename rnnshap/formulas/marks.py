r"""The marks of a normalization written by hand, written once: which values are roots and inverse roots, and which
products and quotients of them take the normalizations' scale-weighted rule.

A normalization multiplies a value by the inverse of a root: ``c * rsqrt(v + eps)``, ``c / sqrt(v + eps)``,
``x / norm(x)``. The built-in norms take the scale-weighted rule on that product
(:func:`rnnshap.formulas.pairs.scaled_multipliers`): bounded on all-zero rows, where the inverse root is
:math:`\epsilon^{-1/2}` on one side. One function gets one set of values however it is written, so each engine
marks, in both passes alike, which input-dependent values are roots (:data:`SCALE`) or inverse roots
(:data:`INVERSE`), by what the operation that made them is (its :data:`KINDS` entry, from the engine's own names of
its operations: torch's functions, ``keras.ops``' classes, JAX's primitives), and a product of an inverse root with
another input-dependent value, or a division of one by a root, takes the scale-weighted rule
(:func:`scaled_product_scale`, :func:`scaled_quotient`). A product with a root (``y * std``, a de-normalization)
keeps the Shapley rule, as does any other product.

- Roots: square roots, ``t ** 0.5``, standard deviations and norms. Inverse roots: ``rsqrt``, ``t ** -0.5``.
- The inverse of one is the other: a reciprocal, ``1 / s``, ``s ** -1``.
- A mark is kept through what keeps a root a root: adding or multiplying constants (``s + eps``, ``s * weight``:
  the rule is the same for a constant multiple of the scale), dividing by a constant, clamping (``clamp_min(eps)``,
  ``maximum`` with a constant), shape and dtype moves and indexing.
"""

from __future__ import annotations

from typing import Any

#: the marks a normalization's scale carries: a root (a norm, a standard deviation) and an inverse root
SCALE, INVERSE = 1, -1

#: what an operation is to the marks (the engines map their operations' names to these)
ROOT, INVERSE_ROOT, POWER, RECIPROCAL, DIVISION, KEEPS = "root", "inverse root", "power", "reciprocal", "division", "keeps"
KINDS = (ROOT, INVERSE_ROOT, POWER, RECIPROCAL, DIVISION, KEEPS)


def power_mark(prior: int | None, exponent: Any) -> int | None:
    """The mark of ``t ** exponent`` where ``t`` carries ``prior`` (None: unmarked): a square root
    makes a root and ``** -0.5`` an inverse root; ``** 1`` keeps a mark and ``** -1`` inverts it."""
    if prior is None:
        return SCALE if exponent == 0.5 else INVERSE if exponent == -0.5 else None
    return prior if exponent == 1 else -prior if exponent == -1 else None


def result_mark(kind: str | None, prior: int | None, exponent: Any = None, numerator: bool = True) -> int | None:
    """The mark of the result of an operation of ``kind`` (one of :data:`KINDS`, None: any other operation) whose
    only input-dependent operand carries ``prior`` (None: unmarked): ``exponent`` the constant exponent of a power
    (None where it is no number), ``numerator`` whether that operand is a division's numerator."""
    if kind == ROOT:
        return SCALE
    if kind == INVERSE_ROOT:
        return INVERSE
    if kind == POWER:
        return None if exponent is None else power_mark(prior, exponent)
    if prior is None or kind is None:
        return None
    if kind == RECIPROCAL:
        return -prior
    if kind == DIVISION:  # s / w keeps the mark, w / s inverts it
        return prior if numerator else -prior
    return prior


def scaled_product_scale(a: int | None, b: int | None) -> int | None:
    """For a product of two input-dependent values marked ``a`` and ``b``: the position (0 or 1) of the inverse root
    when it takes the scale-weighted rule (one inverse root and one unmarked value), else None."""
    found = [a, b]
    if found.count(INVERSE) == 1 and found.count(None) == 1:
        return found.index(INVERSE)
    return None


def scaled_quotient(numerator: int | None, denominator: int | None) -> bool:
    """Whether a division of two input-dependent values marked ``numerator`` and ``denominator`` takes the
    scale-weighted rule: an unmarked value divided by a root."""
    return denominator == SCALE and numerator is None


__all__ = [
    "DIVISION",
    "INVERSE",
    "INVERSE_ROOT",
    "KEEPS",
    "KINDS",
    "POWER",
    "RECIPROCAL",
    "ROOT",
    "SCALE",
    "power_mark",
    "result_mark",
    "scaled_product_scale",
    "scaled_quotient",
]
