r"""Comparisons used as gates: ``torch.where(x >= 0, f(x), g(x))`` (minGRU's ``g``).

A comparison is a step of the difference of its operands, :math:`c = 1[d \ge 0]` with
:math:`d = u - v` (any comparison: ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=``). As a unary function
of :math:`d` it has the exact Rescale multiplier :math:`m = (c - c_r) / (d - d_r)` (0 where the
step does not change). ``torch.where(c, a, b) = b + c\,(a - b)`` is an elementwise function of
the step and the branches, attributed by exact Shapley over those of them that depend on the
input. Every rule in the chain is exact, so the chain is: for ``where(cond(x), f(x), g(x))`` with
elementwise ``f``, ``g`` and ``cond`` every path ends on the same element of ``x``, and the total
multiplier is the Rescale multiplier of the piecewise function :math:`h` itself,
:math:`(h(x) - h(r)) / (x - r)`.

The comparison returns the bool mask the model asks for; the step (a float tensor carrying the
multiplier) and the reference side's mask are kept beside it, in :data:`GATES`, for the ``where``
that consumes it, and for a cast of the mask to floating point (``mask.to(x.dtype)``, ``mask.float()``:
an indicator, as KAN layers build their spline bases), whose value is the step itself, as it is where
arithmetic promotes the mask (``x * mask``). Logical combinations of masks are the multilinear
polynomials of their steps (:func:`combined`). Any other use of the mask (an index, a count) has no rule
here and stays refused by the engine.

A ``where`` whose moving step fills entries with an infinity on one side of a pair only
(``scores.masked_fill(~mask, -inf)``, a router leaving out the groups it did not pick) has no finite
multiplier there. As the limit of finite fills, though, the change of such an entry is the step's
alone, and an ordering's picks among the entries (``topk``) change by a finite amount: the entry's
multiplier is given per unit of the step, the output is recorded in :data:`FILLS`, and an ordering
read directly from it (``takes_fills``) hands the pick's change itself; any other operation reading
it is refused by name (:func:`check_fills`).

These rules need the engine's cooperation (the mask is a bool result of a rule on an
input-dependent tensor, whose uses the engine refuses): :func:`gate_rules` returns the table to
register once the engine lets a rule with ``takes_gate`` claim such a use; see
``docs/custom_rules.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .base import OpCall, Rule
from .elementwise import with_multipliers
from .missing import MissingMismatch, mismatch_side, saw_missing_values

Tensor = torch.Tensor

COMPARISONS = ("ge", "gt", "le", "lt", "eq", "ne", "greater_equal", "greater", "less_equal", "less", "not_equal")
COMPARISON_DUNDERS = ("__ge__", "__gt__", "__le__", "__lt__", "__eq__", "__ne__")
#: tests of one operand's values (an imputation model's check of its input), comparisons too
PREDICATES = ("isnan", "isinf", "isfinite", "isposinf", "isneginf")
#: casts of a floating-point value to bool (:class:`NonZero`: ``x != 0``), comparisons too
CASTS_TO_BOOL = ("bool",)


@dataclass
class Gate:
    """What a comparison of input-dependent values leaves for the ``where`` that uses its mask."""

    name: str
    #: the mask on the reference side (None in the reference pass, where only the marker matters)
    reference: Tensor | None = None
    #: the mask as 0/1 floats, whose gradient is the step's Rescale multiplier (input pass only)
    step: Tensor | None = None
    #: a logical combination of steps (``(x > a) & (y > b)``, the engine's gate_masks.py): it may stay put while
    #: the steps it combines move and cancel, so a ``where`` passes its multiplier back even where it does not move
    combined: bool = False


#: bool masks made by :class:`Comparison` → their :class:`Gate` (weakly keyed: dropped with the mask)
GATES: WeakIdKeyDictionary = WeakIdKeyDictionary()
#: outputs of a gated :class:`Where` infinite on one side of a pair only where its step moved (a ``-inf`` fill of the
#: entries a moving mask leaves out) → their :class:`Fill`. Their multipliers are per unit of the step (see
#: :meth:`Where.attribute`): only a rule that reads them so (``takes_fills``: an ordering's picks) may take the output;
#: any other is refused there (weakly keyed: dropped with the output)
FILLS: WeakIdKeyDictionary = WeakIdKeyDictionary()


@dataclass(frozen=True)
class Fill:
    """The entries of a :class:`Where`'s output that its moving step fills with an infinity on one side only
    (:data:`FILLS`), and whether they have the limit of finite fills (a step, or a step negated; a combination of
    steps has none: its steps may move and cancel where it stays put, and its multipliers stay the branches')."""

    entries: Tensor
    limit: bool


class FilledOperand(ValueError):
    """A rule that does not read fills (:data:`FILLS`) met one (refused with the advice ``"infinite_pick"``)."""

    advice = "infinite_pick"


#: why an operation that is not a reader of fills (:data:`FILLS`) is refused where it takes one
FILLED = (
    "it reads values filled with an infinity where the mask that fills them differs between an input and its reference "
    "(masked_fill(~mask, -inf)), which have no finite multiplier (only an ordering's picks among them, read directly, do)"
)


def check_fills(rule: Any, operands: list[Any]) -> None:
    """Raise :class:`FilledOperand` where ``rule`` (not a reader of fills: ``takes_fills``) takes an operand a moving
    mask filled with an infinity on one side of a pair (:data:`FILLS`)."""
    if FILLS and not getattr(rule, "takes_fills", False) and fills_of(operands) is not None:
        raise FilledOperand(FILLED)


def fills_of(tensors: list[Any]) -> Fill | None:
    """The :class:`Fill` of the first of ``tensors`` that a moving mask filled with an infinity on one side only
    (:data:`FILLS`), or None."""
    return next((FILLS[t] for t in tensors if isinstance(t, Tensor) and t in FILLS), None)


#: the logical operations on bool masks → what they compute. Out of place only: an in-place one (``m &= c``) writes
#: into every view of the mask and every mask it is a view of, whose gates would keep their old steps
LOGICAL = {
    **dict.fromkeys(("logical_and", "__and__", "__rand__", "bitwise_and", "mul", "__mul__", "__rmul__"), "and"),
    **dict.fromkeys(("logical_or", "__or__", "__ror__", "bitwise_or"), "or"),
    **dict.fromkeys(("logical_xor", "__xor__", "__rxor__", "bitwise_xor"), "xor"),
    **dict.fromkeys(("logical_not", "__invert__", "bitwise_not"), "not"),
}
#: the out-of-place operation of each kind of :data:`LOGICAL`, run on the reference side's masks
ON_MASKS = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}
#: the tensor methods that cast a mask to another dtype: to floating point, the mask's step (its value is the step's)
CASTS = frozenset({"float", "double", "half", "bfloat16", "to", "type", "type_as"})
#: operations that only move a mask's elements (a slice, a reshape, a concatenation, a move to a device; padding and
#: ``tril`` add constant False): a mask of the same steps, rearranged. Not every operation whose rule is linear:
#: ``mask + True`` and ``diff(mask)`` compute new bools
MOVES = frozenset({
    "getitem", "__getitem__", "reshape", "view", "unsqueeze", "squeeze", "expand", "expand_as", "view_as", "reshape_as",
    "transpose", "permute", "flatten", "unflatten", "movedim", "cat", "concat", "concatenate", "stack", "repeat",
    "contiguous", "narrow", "select", "to", "bool", "t", "T", "mT", "swapaxes", "swapdims", "broadcast_to", "tile",
    "flip", "fliplr", "flipud", "roll", "rot90", "diagonal", "tril", "triu", "pad", "repeat_interleave", "index_select",
    "gather", "take_along_dim", "split", "chunk", "unbind", "tensor_split", "hsplit", "vsplit",
})  # fmt: skip
#: operations that give a bool mask back unchanged (``torch.nan_to_num(mask)``, as pykan writes its bases): the same gate
SAME_ON_MASKS = frozenset({"nan_to_num", "clone"})
#: arithmetic that promotes a mask to its floating-point result's dtype (``x * mask``): the same operation on the step
PROMOTING = frozenset({"mul", "__mul__", "__rmul__", "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__"})

#: a side of an operand of a logical combination: its mask, the reference side's mask, and its step (None: an operand
#: that does not depend on the input, a constant of the combination)
Side = tuple[Any, Any, "Tensor | None"]


def combined(kind: str, sides: list[Side]) -> tuple[Tensor, list[Tensor], list[Tensor], torch.dtype]:
    r"""A logical combination of masks as the multilinear polynomial of their steps,

    .. math:: a \wedge b = ab, \quad a \vee b = a + b - ab, \quad a \oplus b = a + b - 2ab, \quad \neg a = 1 - a,

    whose exact two-player Shapley split gives each step the multiplier of the other's midpoint
    (:math:`\Delta(ab) = \bar b\,\Delta a + \bar a\,\Delta b`, :math:`\bar a = (a + a_r)/2`): :math:`\bar b`,
    :math:`1 - \bar b` and :math:`1 - 2\bar b` for and, or and xor, and :math:`-1` for not. Returns the reference side's
    mask of the combination, its players (the steps of the operands that have one) with their multipliers, and the
    steps' dtype. ``kind``: a value of :data:`LOGICAL`; ``sides``: one per operand (see :data:`Side`)."""
    dtype = next(step.dtype for _, _, step in sides if step is not None)
    device = next(step.device for _, _, step in sides if step is not None)

    def mean(side: Side) -> Tensor:
        mask, reference, _ = side
        return (torch.as_tensor(mask, device=device).to(dtype) + torch.as_tensor(reference, device=device).to(dtype)) * 0.5

    if kind == "not":
        _, reference, step = sides[0]
        assert step is not None
        return torch.logical_not(reference), [step], [torch.full_like(step, -1.0)], dtype
    refs = [torch.as_tensor(reference, device=device) for _, reference, _ in sides]
    ref_out = ON_MASKS[kind](refs[0], refs[1])
    shape = torch.broadcast_shapes(*(torch.as_tensor(mask).shape for mask, _, _ in sides))
    players, multipliers = [], []
    for i, (_, _, step) in enumerate(sides):
        if step is None:
            continue
        other = mean(sides[1 - i])
        m = other if kind == "and" else 1 - other if kind == "or" else 1 - 2 * other
        players.append(step)
        multipliers.append(m.expand(shape))
    return ref_out, players, multipliers, dtype


def forget_gates(written: Tensor) -> None:
    """Drop the gates of every mask that shares its memory with ``written``, a tensor written into in place (through
    itself or a view): those masks are no longer their comparisons' steps."""
    storage = written.untyped_storage().data_ptr()
    for mask in [m for m in GATES.keys() if m.device == written.device and m.untyped_storage().data_ptr() == storage]:
        del GATES[mask]


def gate_of(value: Any) -> Gate | None:
    """The :class:`Gate` of a mask made by :class:`Comparison`, or None."""
    if not isinstance(value, Tensor):
        return None
    return GATES.get(value)


def _as(value: Any, dtype: torch.dtype) -> Tensor:
    """``value`` (a tensor, keeping its graph, or a number) as a tensor of ``dtype``."""
    return value.to(dtype) if isinstance(value, Tensor) else torch.tensor(value, dtype=dtype)


def _float_dtype(call: OpCall) -> torch.dtype:
    return next(t.dtype for t in call.inputs if t.is_floating_point())


class Comparison(Rule):
    r"""A comparison of input-dependent values, as the step of the difference of its operands.

    Returns the comparison's bool mask, and records beside it (:data:`GATES`) the reference
    side's mask and the step as 0/1 floats, whose gradient is the exact Rescale multiplier
    :math:`(c - c_r)/(d - d_r)` on :math:`d = u - v` (0 where the mask does not change).
    """

    advice = "comparison"
    reason = "it compares input-dependent values; its result is a step function of the input"

    def refusal(self, call: OpCall) -> str | None:
        args = call.args
        if len(args) != 2 or call.kwargs:
            return "a comparison is attributed with its two operands given by position"
        return None

    def reference(self, call: OpCall) -> Any:
        mask = call.fn(*call.args, **call.kwargs)
        GATES[mask] = Gate(call.name)
        return mask

    def attribute(self, call: OpCall) -> Any:
        (u, v), (u_ref, v_ref) = call.args, call.ref_args
        with torch.no_grad():
            mask = call.fn(*call.args)
            mask_ref = call.fn(*call.ref_args)
        dtype = _float_dtype(call)
        return _gated(call.name, mask, mask_ref, _as(u, dtype) - _as(v, dtype), _as(u_ref, dtype) - _as(v_ref, dtype))


class NonZero(Comparison):
    r"""A floating-point value cast to bool (``x.bool()``): the comparison ``x != 0``, a step of :math:`d = x` (a mask
    of 0s and 1s written from picked indices is cast so: rules/selection.py, :class:`~rnnshap.rules.selection.Scattered`)."""

    def refusal(self, call: OpCall) -> str | None:
        if len(call.args) != 1 or call.kwargs or not call.inputs[0].is_floating_point():
            return "a cast to bool is attributed as x != 0 for one floating-point input-dependent tensor, given alone"
        return None

    def attribute(self, call: OpCall) -> Any:
        with torch.no_grad():
            mask, mask_ref = call.fn(*call.args), call.fn(*call.ref_args)
        return _gated(call.name, mask, mask_ref, call.args[0], call.ref_args[0])


def _gated(name: str, mask: Tensor, mask_ref: Tensor, difference: Tensor, difference_ref: Tensor) -> Tensor:
    """``mask`` (the comparison's on the input side) with its :class:`Gate` recorded: the step of the ``difference``
    of its operands, whose exact Rescale multiplier is :math:`(c - c_r)/(d - d_r)`."""
    dtype = difference.dtype
    step, step_ref = mask.to(dtype), mask_ref.to(dtype)
    moved = step != step_ref
    gap = difference.detach() - difference_ref
    multiplier = torch.where(moved, (step - step_ref) / torch.where(moved, gap, torch.ones_like(gap)), torch.zeros_like(gap))
    GATES[mask] = Gate(name, mask_ref, with_multipliers(step, [difference], [multiplier.expand(step.shape)]))
    return mask


class Predicate(Rule):
    r"""``isnan``, ``isinf``, ``isfinite`` (``isposinf``, ``isneginf``) of an input-dependent tensor:
    comparisons of one operand with NaN or infinity.

    Where the test gives the same answer on both sides of every pair (no missing value, or missing
    at the same entries), its mask is a constant of the explained function on that pair, and its step
    passes nothing back: as the condition of a ``where`` it is a gate with multiplier 0
    (``where(isnan(x), 0, x)``); any other use (``isnan(x).logical_not().float()`` as a feature, a
    masked assignment) is a use of a constant (the engine's ``PickedUses``), and a branch on
    ``isnan(x).any()`` is followed where every row answers alike (see the engine's uniform decisions).
    Where the answer differs between an input and its reference, the step moves by an infinite or
    undefined ``Δ``: refused by name (:class:`~rnnshap.rules.missing.MissingMismatch`).
    """

    advice = "comparison"

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) != 1 or len(call.args) != 1 or call.kwargs:
            return "a test of values is attributed on one input-dependent tensor given by position"
        return None

    def reference(self, call: OpCall) -> Any:
        mask = call.fn(*call.args)
        GATES[mask] = Gate(call.name)
        return mask

    def attribute(self, call: OpCall) -> Any:
        (x,), (x_ref,) = call.inputs, call.references
        with torch.no_grad():
            mask, mask_ref = call.fn(x), call.fn(x_ref)
        if not torch.equal(mask, mask_ref):
            raise MissingMismatch(
                "it answers differently for an explained input and its reference (a NaN or infinite value on one "
                f"side only: {mismatch_side(x, x_ref)}), the model reads its answer, and that step has no finite multiplier"
            )
        if not bool(torch.isfinite(x).all()):
            saw_missing_values()
        step = mask.to(x.dtype)
        GATES[mask] = Gate(call.name, mask_ref, with_multipliers(step, [x], [torch.zeros_like(step)]))
        return mask


def where_parts(call: OpCall) -> tuple[Any, Any, Any]:
    """(condition, input, other) of ``torch.where(condition, input, other)``, ``input.where(condition, other)``
    or ``other.masked_fill(condition, input)``."""
    args, kwargs = call.args, call.kwargs
    if getattr(call.fn, "__name__", "") == "masked_fill":  # x.masked_fill(mask, value) = where(mask, value, x)
        mask = args[1] if len(args) > 1 else kwargs["mask"]
        return mask, args[2] if len(args) > 2 else kwargs["value"], args[0] if args else kwargs["input"]
    if getattr(call.fn, "__qualname__", "").startswith(("Tensor.", "TensorBase.")) or call.fn is torch.Tensor.where:
        input_, condition = args[0], args[1] if len(args) > 1 else kwargs["condition"]
        other = args[2] if len(args) > 2 else kwargs.get("other", kwargs.get("y"))
        return condition, input_, other
    condition = args[0] if args else kwargs["condition"]
    input_ = args[1] if len(args) > 1 else kwargs.get("input", kwargs.get("self", kwargs.get("x")))
    other = args[2] if len(args) > 2 else kwargs.get("other", kwargs.get("y"))
    return condition, input_, other


class Where(Rule):
    r"""``torch.where(condition, a, b)``: linear in the branches for a condition that does not depend
    on the input (a mask); exact Shapley over the step and the input-dependent branches when the
    condition is a :class:`Comparison` of input-dependent values (a gate).
    """

    def takes_gate(self, call: OpCall) -> bool:
        """Whether this call uses a gate's mask as its condition, and only there (asked by the engine)."""
        condition, input_, other = where_parts(call)
        return gate_of(condition) is not None and gate_of(input_) is None and gate_of(other) is None

    def is_linear(self, call: OpCall) -> bool:
        return gate_of(where_parts(call)[0]) is None

    def refusal(self, call: OpCall) -> str | None:
        condition, input_, other = where_parts(call)
        if gate_of(input_) is not None or gate_of(other) is not None:
            return "it uses a comparison's mask as a value, not as the condition"
        if call.is_tracked_value(condition):
            return "its condition is a floating-point tensor"
        return None

    def reference(self, call: OpCall) -> Any:
        condition, input_, other = where_parts(call)
        return torch.where(condition, input_, other)

    def attribute(self, call: OpCall) -> Any:
        condition, input_, other = where_parts(call)
        gate = gate_of(condition)
        if gate is None or gate.step is None or gate.reference is None:
            raise ValueError(f"{call.name}: the condition's comparison was not attributed in this pass")
        # with the step s ∈ {0, 1}, where(s, a, b) = b + s·a − s·b: the exact Shapley values over
        # (s, a, b) are those of each product term, split at the midpoints, with no quotient to take:
        # m_a = s̄, m_b = 1 − s̄, m_s = ā − b̄ (s̄ = (s + s_r)/2, ā = (a + a_r)/2, b̄ likewise). m_s is
        # 0 where the step does not move: what passes through it is Δs·m_s = 0 there (and an infinite
        # branch, a -inf mask fill, gives no 0·inf)
        dtype = gate.step.dtype
        step, step_ref = gate.step.detach(), gate.reference.to(dtype)
        a_ref, b_ref = call.reference_of(input_), call.reference_of(other)
        a_x, b_x = _as(input_, dtype).detach(), _as(other, dtype).detach()
        a_r = a_x if a_ref is None else a_ref.detach()
        b_r = b_x if b_ref is None else b_ref.detach()
        mean_step = (step + step_ref) * 0.5
        moved = step != step_ref
        zero = torch.zeros((), dtype=dtype, device=step.device)
        if gate.combined:  # the steps combined may move where the combination does not (their credits cancel); an
            # infinite branch where it does is passed on, as for one step (the -inf mask's diagnosis)
            middle = (a_x + a_r) * 0.5 - (b_x + b_r) * 0.5
            m_step = torch.where(torch.isfinite(middle) | moved, middle, zero)
        else:
            m_step = torch.where(moved, (a_x + a_r) * 0.5 - (b_x + b_r) * 0.5, zero)
        chosen = input_.detach() if isinstance(input_, Tensor) else input_
        otherwise = other.detach() if isinstance(other, Tensor) else other
        output = torch.where(condition, chosen, otherwise)
        m_a, m_b = mean_step, 1 - mean_step
        fills = None
        if any(isinstance(v, (int, float)) and math.isinf(v) for v in (input_, other)):
            # entries the moving step fills with the infinity on one side only: as the fill's limit of finite values,
            # the whole change is the step's, its multiplier per unit of the step (a reader of FILLS hands the change;
            # a combination of steps has no such limit: its entries are recorded for their readers' refusal alone)
            fills = moved & (torch.isinf(output) ^ torch.isinf(torch.where(step_ref.bool(), a_r, b_r)))
            if not bool(fills.any()):
                fills = None
            elif not gate.combined:
                m_step = torch.where(fills, step - step_ref, m_step.expand(fills.shape))
                m_a, m_b = (torch.where(fills, zero, m.expand(fills.shape)) for m in (m_a, m_b))
        players, multipliers = [gate.step], [m_step]
        if a_ref is not None:
            players.append(input_)
            multipliers.append(m_a)
        if b_ref is not None:
            players.append(other)
            multipliers.append(m_b)
        result = with_multipliers(output, players, [m.expand(output.shape) for m in multipliers])
        if fills is not None:
            FILLS[result] = Fill(fills.expand(output.shape), not gate.combined)
        return result


def gate_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → rule for gates: the comparisons and ``where`` (see the module docstring)."""
    table: dict[Any, Rule] = {}
    comparison, where = Comparison(), Where()
    for fn in forms(*COMPARISONS):
        table[fn] = comparison
    for name in COMPARISON_DUNDERS:
        table[getattr(torch.Tensor, name)] = comparison
    table[torch.Tensor.bool] = NonZero()
    for fn in forms("where", "masked_fill"):
        table[fn] = where
    for fn in forms(*PREDICATES):
        table[fn] = Predicate()
    return table


__all__ = [
    "CASTS_TO_BOOL", "COMPARISONS", "COMPARISON_DUNDERS", "GATES", "PREDICATES", "Comparison", "Gate", "NonZero", "Predicate",
    "FILLED", "FILLS", "Fill", "FilledOperand", "Where", "check_fills", "fills_of", "gate_of", "gate_rules", "where_parts",
]
