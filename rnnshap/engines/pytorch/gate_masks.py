r"""Masks of comparisons sliced, reshaped and combined before the ``where`` that uses them: still gates.

A comparison of input-dependent values gives a bool mask with a :class:`~rnnshap.rules.gates.Gate` beside it:
the reference side's mask and the step as 0/1 floats carrying its multipliers (rules/gates.py). Models rarely
hand that mask to one ``where`` as it is:

* **a slice or a reshape of it** (TimesFM 3's ``apply_detrend[:, :, 0, None]``, ``mask.unsqueeze(-1)``,
  ``torch.cat`` of masks): the same steps, rearranged. The operation is run on the mask, on the reference
  side's mask and on the step; the result is a gate of its own. Exact, since the operation only moves
  elements (its rule is :class:`~rnnshap.rules.base.Linear`).
* **a logical combination** (Toto's ``isinf(t) | isnan(t) | (t.abs() >= big)``, ``(x > a) & ~(x > b)``): a
  function of the steps, written exactly as a multilinear polynomial in them,

  .. math:: a \wedge b = ab, \quad a \vee b = a + b - ab, \quad a \oplus b = a + b - 2ab, \quad \neg a = 1 - a,

  whose exact two-player Shapley split gives each step the multiplier of the other's midpoint:
  :math:`\Delta(ab) = \bar b\,\Delta a + \bar a\,\Delta b` (:math:`\bar a = (a + a_r)/2`), so
  :math:`m_a = \bar b`, :math:`1 - \bar b` and :math:`1 - 2\bar b` for and, or and xor, and :math:`-1` for not.
  An operand that does not depend on the input (a padding mask, a Python bool, the mask of ``isnan`` /
  ``isinf``, the same on both sides of every pair wherever a pass goes on: rules/gates.py, ``Predicate``) is
  a constant of the polynomial.
* **a cast to floating point** (``mask.to(x.dtype)``, ``mask.float()``: an indicator feature, a KAN layer's spline
  bases): the step itself, an input-dependent value whose multipliers pass its change back to the comparison's
  operands; so too where arithmetic promotes the mask (``x * mask``, ``mask * 1.0``), and where a ``where`` (or
  ``masked_fill``) selects between constants by it (``torch.where(x > 0, 1.0, 0.0)``: :math:`b + c\,(a - b)`, the
  ``where``'s own rule with the step its one player).

A combination with a comparison mask that has no gate (one reduced along a dimension first, as
torch.distributions' argument validation writes ``(p >= 0).all(-1) & ((p.sum(-1) - 1).abs() < 1e-6)``) is
followed as a mask without a gate: a branch on it (``if not valid.all(): raise``) is a uniform decision
(picked.py), and any use of it as a value is refused by name, as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...rules.base import Linear
from ...rules.elementwise import with_multipliers
from ...rules.gates import (
    CASTS,
    CASTS_TO_BOOL,
    COMPARISON_DUNDERS,
    COMPARISONS,
    GATES,
    LOGICAL,
    MOVES,
    PREDICATES,
    PROMOTING,
    SAME_ON_MASKS,
    Gate,
    Where,
    combined,
    gate_of,
    where_parts,
)
from ...rules.registry import op_name
from .calls import PassMode, Picked, flatten_call, in_place_target

Tensor = torch.Tensor

_COMPARED = frozenset(COMPARISONS + COMPARISON_DUNDERS + PREDICATES + CASTS_TO_BOOL)
_SHAPE_GIVERS = frozenset({torch.Tensor.expand_as, torch.Tensor.view_as, torch.Tensor.reshape_as})


def _last(origin: str) -> str:
    return origin.rsplit(".", 1)[-1]


def _finite(value: Any) -> bool:
    """Whether a branch of a ``where`` is finite everywhere (a number, or a tensor: one host read)."""
    if isinstance(value, Tensor):
        return not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
    return not isinstance(value, (int, float)) or math.isfinite(value)


class GateMasks:
    """Operations on the masks of comparisons in one pass (see the module docstring)."""

    def __init__(self, mode: PassMode) -> None:
        self.mode = mode

    def use(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]) -> tuple[bool, Any]:
        """``(True, result)`` where ``func`` slices, reshapes or combines masks of comparisons as the module
        docstring says; ``(False, None)`` for anything else (the caller's own handling)."""
        kind = LOGICAL.get(getattr(func, "__name__", ""))
        if kind is not None:
            return self._logical(func, kind, args, kwargs, leaves)
        if getattr(func, "__name__", "") in SAME_ON_MASKS and args and isinstance(args[0], Tensor):
            gate, alone = gate_of(args[0]), all(leaf is args[0] for leaf in leaves if isinstance(leaf, Tensor))
            if gate is not None and args[0].dtype == torch.bool and alone:
                result = func(*args, **kwargs)
                self._follow(result, self._origin(args[0]), gate)
                return True, result
        if any(isinstance(leaf, Tensor) and gate_of(leaf) is not None for leaf in leaves):
            return self._rearranged(func, args, kwargs, leaves)
        return False, None

    def cast(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]) -> tuple[bool, Any]:
        """``(True, result)`` where ``func`` casts a gated mask to floating point (``mask.to(x.dtype)``,
        ``mask.float()``, ``mask.type_as(x)``): an input-dependent value, in the input pass the gate's step, whose
        multipliers pass its change back to the comparison's operands (rules/gates.py); ``(False, None)`` otherwise."""
        name = getattr(func, "__name__", "")
        mask = args[0] if args else None
        if name not in CASTS or not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            return False, None
        gate = gate_of(mask)
        given = args[1] if name == "type_as" and len(args) > 1 else None
        if gate is None or any(isinstance(leaf, Tensor) and leaf is not mask and leaf is not given for leaf in leaves):
            return False, None
        if not self._steps_of_comparison(mask):
            return False, None  # (a missing-value test's mask: the same on both sides, a constant (picked.py))
        with torch.no_grad():
            result = func(*args, **kwargs)
        if not isinstance(result, Tensor) or not result.is_floating_point() or result.device != mask.device:
            return False, None
        if self.mode.replay:
            if gate.step is None:
                return False, None
            result = gate.step.to(result.dtype, copy=True)  # (a copy: a write into the value stays in it)
        self.mode.track(result)
        return True, result

    def promote(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool
    ) -> tuple[bool, Any]:
        """``(True, result)`` where arithmetic promotes gated masks to its floating-point result's dtype (``x * mask``,
        pykan's ``(x - g) * mask``): the operation through the pass with each such mask cast first (:meth:`cast`), the
        same values; ``(False, None)`` otherwise."""
        if getattr(func, "__name__", "") not in PROMOTING or kwargs or len(args) != 2:
            return False, None
        gated = [self._steps_of_comparison(a) for a in args]
        if not any(gated) or not all(isinstance(a, (Tensor, int, float, bool)) for a in args):
            return False, None
        dtype = torch.result_type(*args)
        if not dtype.is_floating_point:
            return False, None  # (masks multiplied: a combination of them, see :meth:`use`)
        cast = list(args)
        for i, is_gated in enumerate(gated):
            if is_gated:
                cast[i] = self.cast(torch.Tensor.to, (args[i], dtype), {}, [args[i]])[1]
        if any(c is None for c in cast):
            return False, None
        return True, self.mode.intercept(func, types, tuple(cast), {}, user_grad)

    def select(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]) -> tuple[bool, Any]:
        """``(True, result)`` where a ``where`` or ``masked_fill`` selects between values that do not depend on the input
        by a gated mask of a comparison (``torch.where(x > 0, 1.0, 0.0)``, ``ones.masked_fill(x >= 0, -2.0)``): its
        values as torch gives them, an input-dependent value whose change in the input pass is the step's times the
        branches' difference (the ``where``'s rule, rules/gates.py); ``(False, None)`` otherwise."""
        mode = self.mode
        rule = mode.registry.op_rule(func)
        if getattr(func, "__name__", "") not in ("where", "masked_fill") or not isinstance(rule, Where) or "out" in kwargs:
            return False, None
        call = mode.op_call(func, args, kwargs, op_name(func))
        condition, *branches = where_parts(call)
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        if not self._steps_of_comparison(condition) or any(mode.is_tracked(leaf) for leaf in tensors):
            return False, None
        if any(gate_of(leaf) is not None for leaf in tensors if leaf is not condition):
            return False, None  # (a mask as a branch: a value, not a condition)
        if not all(_finite(branch) for branch in branches):
            return False, None  # (the step's change times an infinite difference: no finite multiplier, refused by name)
        with torch.no_grad():
            result = func(*args, **kwargs)
        if not isinstance(result, Tensor) or not result.is_floating_point():
            return False, None
        if mode.replay:
            gate = gate_of(condition)
            if gate is None or gate.step is None or gate.reference is None:
                return False, None
            result = rule.attribute(call)
        mode.track(result)
        return True, result

    def _steps_of_comparison(self, value: Any) -> bool:
        """Whether ``value`` is a gated mask of a comparison, or of a combination with one (not of missing-value tests
        alone: their masks are the same on both sides of every pair, constants)."""
        if not isinstance(value, Tensor) or value.dtype != torch.bool or gate_of(value) is None:
            return False
        return _last(self._origin(value)) not in PREDICATES

    # -- what an operand is --------------------------------------------------------------------------------
    def _compared(self, leaf: Tensor) -> str | None:
        """The comparison a followed bool mask comes from (its name), or None."""
        picked = self.mode.picked_indices.get(leaf) if leaf.dtype == torch.bool else None
        if picked is None or picked.handle is not None or _last(picked.origin) not in _COMPARED:
            return None
        return str(picked.origin)

    def _constant(self, leaf: Any) -> bool:
        """A Python value, or a tensor the same on both sides of every pair: not input-dependent and not
        followed, or the mask of a test of values (``isnan``, ``isinf``) without a gate (see the docstring)."""
        if not isinstance(leaf, Tensor):
            return True
        mode = self.mode
        if mode.is_tracked(leaf):
            return False
        picked = mode.picked_indices.get(leaf)
        return picked is None or (picked.handle is None and gate_of(leaf) is None and _last(picked.origin) in PREDICATES)

    def _origin(self, mask: Tensor) -> str:
        """The comparison a gated mask comes from: its followed origin, else its gate's name."""
        picked = self.mode.picked_indices.get(mask)
        if picked is not None:
            return str(picked.origin)
        gate = gate_of(mask)
        return gate.name if gate is not None else "a comparison"

    def _follow(self, result: Tensor, origin: str, gate: Gate | None) -> None:
        self.mode.picked_indices[result] = Picked(origin, None)
        if gate is not None:
            GATES[result] = gate
        elif result in GATES:  # (written into in place with a mask that has no gate)
            del GATES[result]

    # -- logical combinations ------------------------------------------------------------------------------
    def _logical(
        self, func: Any, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]
    ) -> tuple[bool, Any]:
        operands = list(args[:1] if kind == "not" else args[:2])
        if kind != "not" and len(operands) == 1 and "other" in kwargs:
            operands.append(kwargs["other"])
        if len(operands) != (1 if kind == "not" else 2) or len(kwargs) > ("other" in kwargs):
            return False, None  # (an out= or a form not written here: the caller's handling)
        if any(not isinstance(t, (Tensor, bool)) or isinstance(t, Tensor) and t.dtype != torch.bool for t in operands):
            return False, None  # (bitwise arithmetic on integers, a mask times a number: not a combination of masks)
        masks = [t for t in operands if isinstance(t, Tensor) and not self._constant(t)]
        found = [self._compared(t) for t in masks]
        origins = [o for o in found if o is not None]
        if not masks or len(origins) != len(masks):
            return False, None
        gates = [g for g in (gate_of(t) for t in masks) if g is not None]
        if len(gates) != len(masks):  # a mask without a gate among them: followed, for a check only
            result = func(*args, **kwargs)
            self._follow(result, origins[0], None)
            return True, result
        if all(_last(o) in PREDICATES for o in origins):
            return False, None  # tests of values alone: constants (picked.py, _constant_mask_use)
        origin = next(o for o in origins if _last(o) not in PREDICATES)
        if not self.mode.replay:
            result = func(*args, **kwargs)
            self._follow(result, origin, Gate(origin))
            return True, result
        if any(g.step is None or g.reference is None for g in gates):
            return False, None
        reference, players, multipliers, dtype = self._combined(kind, operands)
        result = func(*args, **kwargs)
        step = with_multipliers(result.to(dtype), players, multipliers)
        combined = kind != "not" or any(g.combined for g in gates)  # (~c moves where c does: one step, not combined)
        self._follow(result, origin, Gate(origin, reference, step, combined=combined))
        return True, result

    @staticmethod
    def _combined(kind: str, operands: list[Any]) -> tuple[Tensor, list[Tensor], list[Tensor], torch.dtype]:
        """The reference side's mask of the combination, its players (the gated operands' steps) with their
        multipliers (rules/gates.py, :func:`~rnnshap.rules.gates.combined`), and the steps' dtype."""
        sides = []
        for operand in operands:
            gate = gate_of(operand)
            sides.append((operand, operand, None) if gate is None else (operand, gate.reference, gate.step))
        return combined(kind, sides)

    # -- slices and reshapes -------------------------------------------------------------------------------
    def _rearranged(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]) -> tuple[bool, Any]:
        """An operation that only moves the elements of gated masks (a slice, a reshape, a concatenation): the
        same operation on the reference side's masks and on the steps gives the result's gate."""
        mode = self.mode
        if getattr(func, "__name__", "") not in MOVES or in_place_target(func, args, kwargs) is not None or not args:
            return False, None
        if type(mode.registry.op_rule(func)) is not Linear:
            return False, None
        moved = {id(t) for t in tree_flatten(args[0])[0] if isinstance(t, Tensor)}
        gated = [leaf for leaf in leaves if isinstance(leaf, Tensor) and gate_of(leaf) is not None]
        if any(id(t) not in moved for t in gated):
            return False, None  # a gated mask as an index or a shape: not a rearrangement of it
        given = args[1] if func in _SHAPE_GIVERS and len(args) > 1 else None
        if not all(self._constant(leaf) or id(leaf) in moved or leaf is given for leaf in leaves):
            return False, None
        if not all(gate_of(t) is not None or self._constant(t) for t in tree_flatten(args[0])[0] if isinstance(t, Tensor)):
            return False, None
        result = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]
        if not outputs or any(t.dtype != torch.bool for t in outputs):
            return False, None  # (a count, a cast to numbers: the caller's handling, which runs it again)
        origin = self._origin(gated[0])
        if not mode.replay:
            for out in outputs:
                self._follow(out, origin, Gate(origin))
            return True, result
        gates = [g for g in (gate_of(t) for t in gated) if g is not None]
        first = gates[0].step
        if first is None or any(g.step is None or g.reference is None for g in gates):
            return True, self._unhandled(result, gated)
        dtype = first.dtype
        references = self._run_on(func, args, kwargs, lambda t, g: g.reference, lambda t: t)
        steps = self._run_on(func, args, kwargs, lambda t, g: g.step, lambda t: t.to(dtype) if id(t) in moved else t)
        if references is None or steps is None or len(references) != len(outputs) or len(steps) != len(outputs):
            return True, self._unhandled(result, gated)
        combined = any(g.combined for g in gates)
        for out, reference, step in zip(outputs, references, steps, strict=True):
            if not step.is_floating_point():  # (a cast that keeps the mask a mask: mask.bool(), mask.to(device))
                if step.shape != first.shape:
                    return True, self._unhandled(result, gated)
                step = first
            if reference.shape != out.shape:
                return True, self._unhandled(result, gated)
            self._follow(out, origin, Gate(origin, reference, step, combined=combined))
        return True, result

    def _run_on(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], gated: Any, other: Any) -> list[Tensor] | None:
        """``func`` run with each gated mask replaced by ``gated(mask, gate)`` and each other tensor of its
        first argument by ``other(tensor)``; its tensor results."""
        leaves, spec, _ = flatten_call(args, kwargs)
        swapped = []
        for leaf in leaves:
            gate = gate_of(leaf)
            swapped.append(gated(leaf, gate) if gate is not None else other(leaf) if isinstance(leaf, Tensor) else leaf)
        new_args, new_kwargs = tree_unflatten(swapped, spec)
        try:
            result = func(*new_args, **new_kwargs)
        except (RuntimeError, TypeError, ValueError, IndexError):
            return None
        return [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]

    def _unhandled(self, result: Any, gated: list[Tensor]) -> Any:
        """A result of gated masks this module does not make a gate of: followed without one (its use as a value
        is refused by name, as a comparison's mask outside a where)."""
        origin = self._origin(gated[0])
        for out in tree_flatten(result)[0]:
            if isinstance(out, Tensor) and not (out.is_floating_point() or out.is_complex()):
                self._follow(out, origin, None)
        return result

__all__ = ["GateMasks"]
