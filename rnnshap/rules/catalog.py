"""Rules added for the ops of issue 10 (minGRU / minLSTM, TFT, xLSTM): registered by the registry.

Kept apart from the registry's table so that the registrations of these rules live in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from .attention import attention_op_rules
from .base import Rule
from .composite import Deviation, Glu, Lerp, LogCumSumExp, Normalize, Variance, VectorNorm
from .gates import gate_rules
from .structured import GroupNorm, LogSumExp, RMSNorm


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
    return table


__all__ = ["extra_op_rules"]
