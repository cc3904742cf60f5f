"""The tape side of one pass of the PyTorch engine (:class:`TapePass`, between
:class:`~rnnshap.engines.pytorch.tracking.TrackingPass` and :class:`~rnnshap.engines.pytorch.passes.AttributionMode`):
the reference pass records an operation's reference operands on the tape (:meth:`TapePass._record`), the input pass
takes them back and runs the operation's rule on both sides (:meth:`TapePass._replay`, under ``torch.autocast`` in the
dtype autocast gives the operation), and an operation linear in its tracked operands stays off the tape
(:meth:`TapePass._linear`)."""

from __future__ import annotations

from typing import Any

import torch

from ...rules.base import Constant, OpCall, Rule
from ...rules.gates import FILLED, FILLS, check_fills, fills_of
from ...rules.registry import op_key
from .calls import REPEATED_WRITE, repeats_positions
from .tape import TapeEntry
from .tensor_map import tensors_of
from .tracking import TrackingPass

Tensor = torch.Tensor


def _shapes(leaves: list[Any], tracked: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The shapes of the tracked operands (``torch.Size``, a tuple)."""
    if len(tracked) == 1:
        return (leaves[tracked[0]].shape,)
    return tuple([leaves[i].shape for i in tracked])


class TapePass(TrackingPass):
    """Records operations on the tape in the reference pass and replays them through their rules in the input pass
    (see the module docstring)."""

    def _record(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        rule: Rule,
        call: OpCall,
        name: str,
        target: Tensor | None,
        plain: bool,
    ) -> Any:
        """The reference pass: copy the tracked operands to the tape and run the operation as the rule
        computes its reference side (keeping the output for the input pass where that is exact)."""
        references = [call.leaves[i].detach().clone() for i in call.tracked]
        entry = TapeEntry(op_key(call.fn), name, call.tracked, _shapes(call.leaves, call.tracked), references)
        self.tape.append(entry)
        result = rule.reference(call) if plain else func(*args, **kwargs)
        if plain and getattr(rule, "reuses_reference_output", False) and isinstance(result, Tensor):
            self._keep_output(entry, rule, call, references, result)
        self.track(result)
        self._mark_indices(result, name, rule, call)
        if target is not None:
            self.written_into(target)
        return result

    def _replay(
        self, func: Any, kwargs: dict[str, Any], base: Any, rule: Rule, call: OpCall, name: str, target: Tensor | None
    ) -> Any:
        """The input pass: take the operation's entry from the tape (the same operation on the same shapes)
        and run the rule on both sides; an in-place call gets the rule's result written into its target."""
        entry = self.tape.take(op_key(base), name, call.tracked, _shapes(call.leaves, call.tracked))
        assert entry.references is not None
        ref_leaves = list(call.leaves)
        for i, reference in zip(call.tracked, entry.references, strict=False):
            ref_leaves[i] = reference
        kept = entry.kept_output(_context(call)) if entry.output is not None else None
        call = call.with_references(ref_leaves, kept)
        autocast = _autocast_of(base, call)
        if autocast is not None:
            call = _cast_call(call, autocast[1])
        try:
            check_fills(rule, [call.leaves[i] for i in call.tracked])
            if autocast is None:
                result = rule.attribute(call)
            else:  # (the rule computes in the dtype autocast gives the op; inside it nothing is cast again)
                with torch.autocast(autocast[0], enabled=False):
                    result = rule.attribute(call)
        except ValueError as error:  # a rule that does not fit this call and did not say so in time
            self.refuse_now(name, error)
        if target is not None:
            target.copy_(result)
            result = target if func is not base or "out" not in kwargs else kwargs["out"]
            self.written_into(target)
        self.track(result)
        self._mark_indices(result, name, rule, call)
        return result

    def _linear(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], target: Tensor | None, rule: Rule, name: str
    ) -> Any:
        """Run an operation that is linear in its tracked operands (see ``dispatch``).

        Linear operations need nothing from the reference pass and stay off the tape: the input
        pass may run extra ones (autograd's backward hooks wrap inputs in views).
        """
        if self.replay and repeats_positions(func, args, kwargs):
            self.refuse(name, REPEATED_WRITE, "repeated_write")
        result = func(*args, **kwargs)
        if isinstance(rule, Constant):
            return result
        if FILLS and self.replay and fills_of(tensors_of((args, kwargs))) is not None:
            self.refuse(name, FILLED, "infinite_pick")  # (a fill moved or summed: its multipliers are per unit of its step)
        if isinstance(result, Tensor) and result.is_floating_point():
            self.track(result)
            if target is not None:
                self.written_into(target)
            return result
        outputs = [leaf for leaf in tensors_of(result) if isinstance(leaf, Tensor)]
        if outputs and not any(t.is_floating_point() or t.is_complex() for t in outputs):
            self.refuse(name, "its result is not floating point, so the input's influence through it is lost", "integer")
            self.mark_decisions(result, name)
        self.track(result)
        if target is not None:
            self.written_into(target)
        return result

    @staticmethod
    def _keep_output(entry: TapeEntry, rule: Rule, call: OpCall, references: list[Tensor], result: Tensor) -> None:
        """Keep the reference pass's output for the input pass, where the rule would compute it again
        from the copies of the operands on the tape (``OpCall.ref_output``), when that would give the
        very same values: the rule computes it as the operation does (``Rule.reference``), every other
        leaf of the call is a Python value (compared again in the input pass), and every copy has the
        strides of its operand, so that torch runs the same kernel over the same layout. (A copy of a
        non-contiguous operand, a ``chunk`` of the gates, is contiguous: over another layout, torch's
        vectorized and scalar loops share the elements out differently, and the vector and libm
        results of sigmoid or tanh may differ in the last bit.)"""
        if type(rule).reference is not Rule.reference or result.is_inference():  # (no version counter to check)
            return
        if any(copy.stride() != call.leaves[i].stride() for copy, i in zip(references, call.tracked, strict=True)):
            return
        context = _context(call)
        if any(isinstance(leaf, Tensor) for leaf in context):
            return
        entry.keep_output(result, context)


#: operations that torch's autocast runs in its lower precision dtype with every floating operand cast to
#: it, and whose rules compute with several operations (some of which autocast would not cast, such as an
#: in-place addmm_): the rule runs on the operands cast as autocast casts them, with autocast off inside
_AUTOCAST_LOWERED = frozenset(
    f
    for f in (
        getattr(torch, name, None)
        for name in ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")
    )
    if f is not None
)


def _autocast_of(func: Any, call: OpCall) -> tuple[str, torch.dtype] | None:
    """``(device type, dtype)`` where ``func`` is an operation of :data:`_AUTOCAST_LOWERED` called under
    ``torch.autocast`` on its operands' device; else None."""
    if func not in _AUTOCAST_LOWERED or not call.tracked:
        return None
    device = call.leaves[call.tracked[0]].device.type
    try:
        if not torch.is_autocast_enabled(device):
            return None
        return device, torch.get_autocast_dtype(device)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return None


def _cast_call(call: OpCall, dtype: torch.dtype) -> OpCall:
    """``call`` with every floating tensor operand (both sides) cast to ``dtype``, as autocast casts them."""

    def cast(leaves: list[Any]) -> list[Any]:
        return [
            leaf.to(dtype) if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.dtype != dtype else leaf
            for leaf in leaves
        ]

    leaves, ref_leaves = cast(call.leaves), cast(call.ref_leaves)
    return OpCall(call.fn, call.name, leaves, ref_leaves, call.spec, call.tracked, call.pairs, call.layout, None)


def _context(call: OpCall) -> tuple[Any, ...]:
    """The leaves of ``call`` other than its tracked tensors."""
    tracked = call.tracked
    if len(tracked) == len(call.leaves):
        return ()
    return tuple(leaf for i, leaf in enumerate(call.leaves) if i not in tracked)


__all__ = ["TapePass"]
