r"""Registry entries that keep explanations exact at the edges of the rule table.

- :class:`Multilinear`: einsum (and ``linalg.multi_dot`` / ``chain_matmul``) of any number of
  input-dependent operands, by the exact Shapley split of a multilinear function.
- ``clamp`` / ``clip`` with tensor bounds: exact Shapley over the value and the bounds that depend
  on the input (one of them: the Rescale rule).
- :class:`Refusal`: operations refused by name, each with the kind of advice that fits it (a key
  of :data:`rnnshap.errors.ADVICE`): comparisons, step functions (rounding, floor division),
  selections by value that are not an ordering along one dimension (msort over the batch, mode,
  unique, nonzero), Python bools of input values, torch's fused attention kernels.
"""

from __future__ import annotations

from math import factorial
from typing import Any, Callable, Iterable

import torch

from .attention import FUSED_KERNELS
from .base import Constant, Linear, OpCall, Refuse, Rule
from .elementwise import MAX_SHAPLEY_PLAYERS, Bilinear, Rescale, Shapley
from .structured import LayerNorm, LogSoftmax, MaxPool, MaxReduction, Softmax

Tensor = torch.Tensor


class Refusal(Refuse):
    """An operation that must never see an input-dependent tensor, with the kind of advice that
    fits it (a key of :data:`rnnshap.errors.ADVICE`: ``"comparison"``, ``"step"``, ...)."""

    def __init__(self, reason: str, advice: str = "rule") -> None:
        super().__init__(reason)
        self.advice = advice


class Multilinear(Bilinear):
    r"""Operations linear in each of their operands (einsum of any number of tensors).

    For a multilinear :math:`f` of the input-dependent operands :math:`A_1, \dots, A_n`, the change
    :math:`f(S \cup \{i\}) - f(S)` is :math:`f` with :math:`\Delta A_i` in slot :math:`i`, the
    operands of :math:`S` at their input values and the rest at their reference values. The exact
    Shapley value of operand :math:`i` is therefore linear in :math:`\Delta A_i`, and its multiplier
    is the gradient of :math:`\sum_{S \not\ni i} w_{|S|}\, f(A_i;\ S \text{ at input, rest at reference})`
    with respect to :math:`A_i` (:math:`w_s = s!\,(n-s-1)!/n!`). With two operands this is the
    midpoint rule of :class:`Bilinear`. ``n \cdot 2^{n-1}`` evaluations: up to
    ``MAX_SHAPLEY_PLAYERS`` input-dependent operands.
    """

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) > MAX_SHAPLEY_PLAYERS:
            return (
                f"it multiplies {len(call.tracked)} input-dependent tensors; the exact Shapley split takes "
                f"{len(call.tracked)}·2^{len(call.tracked) - 1} evaluations and is done for at most {MAX_SHAPLEY_PLAYERS}"
            )
        return None

    def attribute(self, call: OpCall) -> Any:
        n = len(call.tracked)
        if n <= 2:
            return super().attribute(call)
        if n > MAX_SHAPLEY_PLAYERS:
            raise ValueError(f"{call.name}: {self.refusal(call)}")
        inputs, references = call.inputs, call.references
        fixed = [x.detach() for x in inputs]
        weights = [factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)]
        surrogate: Tensor | None = None
        for i in range(n):
            for mask in range(2**n):
                if mask >> i & 1:
                    continue
                players = [inputs[i] if j == i else (fixed[j] if mask >> j & 1 else references[j]) for j in range(n)]
                term = weights[bin(mask).count("1")] * call.evaluate(players)
                surrogate = term if surrogate is None else surrogate + term
        assert surrogate is not None
        with torch.no_grad():
            value = call.evaluate(fixed)
        return surrogate + (value - surrogate).detach()


def misfit(rule: Rule, call: OpCall) -> str | None:
    """Why ``rule`` cannot attribute ``call``, or None when it can.

    The engine asks this in both passes, so that a rule that would fail in the input pass (a
    Rescale rule given two input-dependent operands) is refused by name when the explainer is
    built. A rule may answer for itself with a method ``refusal(call) -> str | None``.
    """
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
        return f"its rule ({type(rule).__name__}) attributes it through its first argument only, but other arguments depend on the input"
    if isinstance(rule, LayerNorm) and call.tracked_positions() not in ((0,), (-1,)):
        return "rnnshap attributes layer_norm through its input only, not through an input-dependent weight or bias"
    return None


def _tensor_forms(*names: str) -> list[Any]:
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


def coverage_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → rule for the entries of this module (the registry adds them to its table)."""
    table: dict[Any, Rule] = {}

    def put(fns: Iterable[Any], rule: Rule) -> None:
        for fn in fns:
            table[fn] = rule

    put(forms("einsum", "multi_dot", "chain_matmul"), Multilinear())
    put(forms("clamp", "clip", "clamp_min", "clamp_max"), Shapley(smooth=False))
    # writing into a buffer: linear in what is written (the buffer becomes tracked: see passes.py)
    put(_tensor_forms("copy_"), Linear())
    put(_tensor_forms("zero_"), Constant())
    comparison = Refusal("it compares input-dependent values; its result is a step function of the input", "comparison")
    put([*forms(*COMPARISONS), *_tensor_forms(*COMPARISON_DUNDERS)], comparison)
    step = Refusal("its result is piecewise constant in the input (it jumps where the input crosses a step)", "step")
    put([*forms(*STEPS), *_tensor_forms(*STEP_DUNDERS)], step)
    put(forms(*SELECTIONS), Refusal("which elements it selects or how it orders them depends on the input's values", "selection"))
    python_bool = Refusal("it compares input-dependent values and returns a Python bool, which forward() can branch on", "control")
    put([*forms(*PYTHON_BOOLS), *_tensor_forms("__contains__")], python_bool)
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
        put([*forms(name), *_tensor_forms(name)], Refusal(reason, advice))
    table[("getter", "data")] = Refusal("`.data` cuts the path from the input to the output", "detach")
    return table


__all__ = ["Multilinear", "Refusal", "coverage_op_rules", "misfit"]
