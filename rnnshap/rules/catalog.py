"""The PyTorch registry's view of the operation table (:mod:`rnnshap.operations`): torch function → rule.

The table itself, with every family (unary elementwise, binary, structured, reductions, orderings) and
its names per backend, is data in ``rnnshap/operations.py``, read by every engine; this module turns its
entries into the PyTorch engine's rules: :func:`catalog_op_rules` (unary), :func:`binary_op_rules` and
:func:`structured_op_rules`, each by the rule the entry names (:data:`STRUCTURED_RULES`).
``tests/test_catalog_parity.py`` and ``tests/test_operations_parity.py`` run every entry on every engine
against float64 references.

:func:`extra_op_rules` holds the registrations of the rules defined outside the table (vector norms,
attention, comparisons as gates, missing values, the triangular solve).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

from ..operations import BINARY, ELEMENTWISE, STRUCTURED, TORCH_PARAMETRIC_PIECEWISE, Structured
from .attention import attention_op_rules
from .base import Rule
from .composite import Deviation, Glu, Lerp, LogCumSumExp, Normalize, Variance, VectorNorm
from .elementwise import Rescale, Shapley
from .gates import gate_rules
from .maxima import MaxReduction
from .missing import missing_value_rules
from .quantile import Quantile
from .secant import SLOPES_BY_NAME, Power, Secant
from .selection import ArgExtremum, Ordering
from .structured import GroupNorm, InstanceNorm, LayerNorm, LogSoftmax, LogSumExp, RMSNorm, Softmax
from .triangular import TriangularSolve


def catalog_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """The PyTorch registry's view: torch function → rule, for every catalog entry."""
    smooth, piecewise = Rescale(smooth=True), Rescale(smooth=False)
    table: dict[Any, Rule] = {}
    for entry in ELEMENTWISE:
        rule: Rule
        if entry.family == "secant":
            if entry.name not in SLOPES_BY_NAME:
                raise ValueError(f"operation {entry.name}: a secant entry needs its slope in rules.secant.SLOPES_BY_NAME")
            rule = Secant(SLOPES_BY_NAME[entry.name])
        else:
            rule = (Rescale(smooth=True, kinks=entry.kinks) if entry.kinks else smooth) if entry.smooth else piecewise
        for fn in forms(*entry.torch_names):
            table[fn] = rule
    for fn in forms(*TORCH_PARAMETRIC_PIECEWISE):
        table[fn] = piecewise
    return table


def binary_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Torch function → rule for every binary entry: the exact Shapley rule over its input-dependent
    operands (Rescale where one is constant), piecewise ones never from a derivative; ``power``
    by :class:`~rnnshap.rules.secant.Power`."""
    smooth, piecewise, power = Shapley(smooth=True), Shapley(smooth=False), Power()
    table: dict[Any, Rule] = {}
    for entry in BINARY:
        rule = power if entry.rule == "power" else smooth if entry.smooth else piecewise
        for fn in forms(*entry.torch):
            table[fn] = rule
    return table


def _deviations(entry: Structured, forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """std and std_mean: the variance's rule, then Rescale on sqrt (the variance function of the same namespace)."""
    table: dict[Any, Rule] = {}
    for namespace in (torch, torch.Tensor):
        for deviation in entry.torch:
            variance = deviation.replace("std", "var")
            if hasattr(namespace, deviation) and hasattr(namespace, variance):
                table[getattr(namespace, deviation)] = Deviation(getattr(namespace, variance))
    return table


def _one(rule: Callable[[], Rule]) -> Callable[[Structured, Callable[..., list[Any]]], dict[Any, Rule]]:
    def registrations(entry: Structured, forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
        instance = rule()
        return {fn: instance for fn in forms(*entry.torch)}

    return registrations


#: the PyTorch engine's rule for every ``rule`` name of :data:`rnnshap.operations.STRUCTURED`:
#: (entry, forms) → torch function → rule
STRUCTURED_RULES: dict[str, Callable[[Structured, Callable[..., list[Any]]], dict[Any, Rule]]] = {
    "softmax": _one(Softmax),
    "log_softmax": _one(LogSoftmax),
    "layer_norm": _one(LayerNorm),
    "rms_norm": _one(RMSNorm),
    "group_norm": _one(GroupNorm),
    "instance_norm": _one(InstanceNorm),
    "glu": _one(Glu),
    "lerp": _one(Lerp),
    "normalize": _one(Normalize),
    "logsumexp": _one(LogSumExp),
    "max": _one(lambda: MaxReduction(largest=True)),
    "min": _one(lambda: MaxReduction(largest=False)),
    "amax": _one(lambda: MaxReduction(largest=True, returns_indices=False)),
    "amin": _one(lambda: MaxReduction(largest=False, returns_indices=False)),
    "variance": _one(Variance),
    "deviation": _deviations,
    "logcumsumexp": _one(LogCumSumExp),
    **{kind: _one(partial(Ordering, kind)) for kind in ("topk", "sort", "argsort", "kthvalue", "median")},
    "quantile": _one(Quantile),  # two ranks of the sort, interpolated (rnnshap/rules/quantile.py)
    "argmax": _one(lambda: ArgExtremum(largest=True)),  # picked indices: rnnshap/rules/selection.py
    "argmin": _one(lambda: ArgExtremum(largest=False)),
}


def structured_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Torch function → rule for every structured entry, by the rule it names (:data:`STRUCTURED_RULES`)."""
    table: dict[Any, Rule] = {}
    for entry in STRUCTURED:
        if entry.torch:
            table.update(STRUCTURED_RULES[entry.rule](entry, forms))
    return table


def extra_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → rule for the rules defined outside the table."""
    table: dict[Any, Rule] = {}
    for norm in (torch.norm, torch.Tensor.norm, torch.linalg.vector_norm):  # (not torch.linalg.norm: matrix norms too)
        table[norm] = VectorNorm()
    table.update(attention_op_rules(forms))  # scaled_dot_product_attention, multi_head_attention_forward
    table.update(gate_rules(forms))  # comparisons as gates of where(x >= 0, f(x), g(x))
    table.update(missing_value_rules(forms))  # nanmean, nansum, nan_to_num (rnnshap/rules/missing.py)
    table.update({fn: TriangularSolve() for fn in forms("solve_triangular")})  # (rnnshap/rules/triangular.py)
    return table


__all__ = [
    "STRUCTURED_RULES",
    "binary_op_rules",
    "catalog_op_rules",
    "extra_op_rules",
    "structured_op_rules",
]
