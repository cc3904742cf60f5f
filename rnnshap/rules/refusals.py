"""What the rule table refuses, and when a rule does not fit a call.

- :class:`Refusal`: operations refused by name, each with the kind of advice that fits it (a key
  of :data:`rnnshap.errors.ADVICE`): comparisons, step functions (rounding, floor division),
  selections by value that are not an ordering along one dimension (msort over the batch, mode,
  unique, nonzero), Python bools of input values, values taken out of torch (``.item()``,
  ``.numpy()``, ``.data``), torch's fused attention kernels. :func:`refusal_op_rules` is their
  part of the registry's table.
- :data:`REDUCTIONS` and :func:`is_reduction`: reductions are never advised an elementwise rule (advice
  ``"reduction"``), whether listed or recognized by their result's size.
- :func:`misfit`: why a registered rule cannot attribute a given call (a Rescale rule given two
  input-dependent operands), asked in both passes so that it is refused by name in time.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from .attention import FUSED_KERNELS
from .base import OpCall, Refuse, Rule
from .elementwise import MAX_SHAPLEY_PLAYERS, Bilinear, Rescale, Shapley
from .maxima import MaxPool, MaxReduction
from .structured import LayerNorm, LogSoftmax, Softmax

Tensor = torch.Tensor


class Refusal(Refuse):
    """An operation that must never see an input-dependent tensor, with the kind of advice that
    fits it (a key of :data:`rnnshap.errors.ADVICE`: ``"comparison"``, ``"step"``, ...)."""

    def __init__(self, reason: str, advice: str = "rule") -> None:
        super().__init__(reason)
        self.advice = advice


def misfit(rule: Rule, call: OpCall) -> str | None:
    """Why ``rule`` cannot attribute ``call``, or None when it can.

    The engine asks this in both passes, so that a rule that would fail in the input pass (a
    Rescale rule given two input-dependent operands) is refused by name when the explainer is
    built. A rule may answer for itself with a method ``refusal(call) -> str | None``.
    """
    if isinstance(call.kwargs.get("out"), (tuple, list)):  # (a tensor out= runs out of place: engines/pytorch/calls.py)
        return "it writes its results into the tensors of out=, which its rule does not: call it without out="
    own = getattr(rule, "refusal", None)
    if callable(own):
        answer = own(call)
        return None if answer is None else str(answer)
    n = len(call.tracked)
    if isinstance(rule, Rescale) and n != 1:
        return f"its rule, Rescale, takes one input-dependent operand but this call has {n} (Shapley() takes several)"
    if isinstance(rule, Shapley) and n > MAX_SHAPLEY_PLAYERS:
        return f"its rule, exact Shapley, takes at most {MAX_SHAPLEY_PLAYERS} input-dependent operands but this call has {n}"
    if type(rule) is Bilinear and n > 2:
        return f"its rule, Bilinear, takes two input-dependent operands but this call has {n} (Multilinear() takes more)"
    if isinstance(rule, MaxReduction):
        args, kwargs = call.args, call.kwargs
        if isinstance(args[1] if len(args) > 1 else kwargs.get("other"), Tensor):
            return None if n <= MAX_SHAPLEY_PLAYERS else f"exact Shapley takes at most {MAX_SHAPLEY_PLAYERS} operands"
    if isinstance(rule, (Softmax, LogSoftmax, MaxPool, MaxReduction)) and (n != 1 or call.tracked_positions()[0] not in (0, -1)):
        return (
            f"its rule ({type(rule).__name__}) attributes it through its first argument only, "
            "but other arguments depend on the input"
        )
    if isinstance(rule, LayerNorm) and call.tracked_positions() not in ((0,), (-1,)):
        return "rnnshap attributes layer_norm through its input only, not through an input-dependent weight or bias"
    return None


def tensor_methods(*names: str) -> list[Any]:
    """``torch.Tensor``'s methods of these names (for dunders, which the module namespaces lack)."""
    return [getattr(torch.Tensor, name) for name in names if hasattr(torch.Tensor, name)]


COMPARISONS = (
    "gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal",
    "isclose", "signbit", "logical_and", "logical_or", "logical_xor", "logical_not", "isin", "heaviside",
)
COMPARISON_DUNDERS = ("__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "__and__", "__or__", "__xor__", "__invert__")
STEPS = ("floor", "ceil", "round", "trunc", "fix", "frac", "sign", "sgn", "floor_divide", "remainder", "fmod", "bucketize")
STEP_DUNDERS = ("__floordiv__", "__rfloordiv__", "__mod__", "__rmod__")
SELECTIONS = (
    "msort", "nanmedian", "mode", "cummax",
    "cummin", "unique", "unique_consecutive", "nonzero", "argwhere",
)
PYTHON_BOOLS = ("allclose", "equal", "is_nonzero")
#: reductions and scans with no exact rule: an elementwise rule (Rescale, Shapley) never fits them
REDUCTIONS = (
    "prod", "cumprod", "count_nonzero", "histc", "aminmax", "det", "logdet", "slogdet",
    "trapz", "trapezoid", "cumulative_trapezoid", "dist", "cdist", "pdist", "cosine_similarity", "pairwise_distance",
)


def refusal_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → :class:`Refusal` for every operation refused by name (the registry adds them to its table)."""
    table: dict[Any, Rule] = {}

    def put(fns: Iterable[Any], rule: Rule) -> None:
        for fn in fns:
            table[fn] = rule

    comparison = Refusal("it compares input-dependent values; its result is a step function of the input", "comparison")
    put([*forms(*COMPARISONS), *tensor_methods(*COMPARISON_DUNDERS)], comparison)
    step = Refusal("its result is piecewise constant in the input (it jumps where the input crosses a step)", "step")
    put([*forms(*STEPS), *tensor_methods(*STEP_DUNDERS)], step)
    put(forms(*SELECTIONS), Refusal("which elements it selects or how it orders them depends on the input's values", "selection"))
    reduction = Refusal(
        "it reduces its input-dependent operand (a product, count, distance or scan), with no exact rule", "reduction"
    )
    put(forms(*REDUCTIONS), reduction)
    python_bool = Refusal(
        "it compares input-dependent values and returns a Python bool, which forward() can branch on", "control"
    )
    put([*forms(*PYTHON_BOOLS), *tensor_methods("__contains__")], python_bool)
    # F.scaled_dot_product_attention and F.multi_head_attention_forward have exact rules (attention.py);
    # torch's fused kernels behind them are refused when called directly on input-dependent tensors
    fused = Refusal(
        "a fused attention kernel, with no exact rule: torch calls it only outside rnnshap (its inference fast "
        "path is off while rnnshap runs the model); call nn.MultiheadAttention, nn.TransformerEncoderLayer or "
        "F.scaled_dot_product_attention instead, which are attributed exactly",
        "attention",
    )
    put(forms(*FUSED_KERNELS), fused)
    escapes = {
        "item": ("turns an input-dependent tensor into a python number", "control"),
        "tolist": ("turns an input-dependent tensor into python numbers", "control"),
        "numpy": ("takes an input-dependent tensor out of torch", "escape"),
        "__array__": ("takes an input-dependent tensor out of torch", "escape"),
        "__bool__": ("branches on the value of an input-dependent tensor", "control"),
        "__int__": ("turns an input-dependent tensor into a python number", "control"),
        "__float__": ("turns an input-dependent tensor into a python number", "control"),
        "__index__": ("turns an input-dependent tensor into a python number", "control"),
        "detach_": ("detaches an input-dependent tensor in place", "detach"),
    }
    for name, (reason, advice) in escapes.items():
        put([*forms(name), *tensor_methods(name)], Refusal(reason, advice))
    table[("getter", "data")] = Refusal("`.data` cuts the path from the input to the output", "detach")
    return table


def is_reduction(call: OpCall, result: Any) -> bool:
    """Whether ``result`` has fewer elements than one of ``call``'s input-dependent operands: a reduction, for
    which the advice is never an elementwise rule."""
    if not isinstance(result, Tensor):
        return False
    return any(isinstance(t, Tensor) and t.numel() > result.numel() for t in call.inputs)


__all__ = ["REDUCTIONS", "Refusal", "is_reduction", "misfit", "refusal_op_rules", "tensor_methods"]
