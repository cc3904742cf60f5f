"""Indices picked by argmax / argmin, torch.max / min over a dimension and topk(k=1), and their uses.

The rule that picks (rnnshap/rules/selection.py) gives every picked index tensor a *handle*: the
same indices as a tracked float64 tensor whose multiplier is that of a step function (its change is
credited to the position that decided the pick). The mode keeps each picked tensor's
:class:`Picked`; :class:`PickedUses` attributes what the model does with it:

* a selection by the indices (``gather``, ``take_along_dim``, ``h[torch.arange(B), idx]``,
  ``index_select`` or ``F.embedding`` from a table, ``F.one_hot``) takes the rule
  :class:`~rnnshap.rules.selection.Selection`, on the tape like any rule;
* a cast keeps the values: to floating point it is the handle itself, to integers it keeps the handle;
* arithmetic, shape operations and comparisons run on the handles with their own rules;
* any other use (indexing in other forms, ``scatter``, ``index_put``, ``tolist()``) is refused by name.

Indices without a handle (chosen by a rule that does not pick, such as ``sort``) and the masks of
refused comparisons are followed as well (:meth:`PickedUses.index_use`): shape and indexing
operations on them alone pass them on, a ``where(mask, f(x), g(x))`` gate takes its comparison, a
branch on a mask that is the same everywhere is kept on the tape (both passes must take it alike),
and any other use is refused by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...errors import UnsupportedOperationError
from ...rules.base import Constant, Linear, OpCall, Refuse
from ...rules.gates import CASTS_TO_BOOL, COMPARISON_DUNDERS, COMPARISONS, PREDICATES, forget_gates, gate_of
from ...rules.registry import op_key, op_name
from ...rules.selection import selection_of, selection_rule
from .calls import PassMode, Picked, cached_op_name, flatten_call, in_place_target, out_of_place
from .gate_masks import GateMasks
from .tape import TapeEntry

Tensor = torch.Tensor


#: casts that keep integer values as they are (``idx.long()``): the handle goes with them
_INTEGER_CASTS = frozenset(
    op_key(fn) for fn in (torch.Tensor.long, torch.Tensor.int, torch.Tensor.to, torch.Tensor.type, torch.Tensor.short)
)
#: operations that index a tensor with their integer arguments
_INDEXING = frozenset(
    op_key(fn)
    for fn in (
        torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put, torch.Tensor.index_put_, torch.index_put,
        torch.Tensor.scatter, torch.Tensor.scatter_, torch.scatter, torch.Tensor.scatter_add, torch.Tensor.scatter_add_,
        torch.scatter_add, torch.Tensor.index_fill, torch.Tensor.index_fill_, torch.index_fill, torch.Tensor.index_add,
        torch.Tensor.index_add_, torch.index_add, torch.Tensor.index_copy, torch.Tensor.index_copy_, torch.index_copy,
        torch.bincount, torch.Tensor.bincount, torch.take, torch.Tensor.take,
    )
)

#: the names of comparisons: their masks are followed like picked indices (see ``PickedUses.index_use``)
_COMPARISON_NAMES = frozenset(COMPARISONS + COMPARISON_DUNDERS + PREDICATES + CASTS_TO_BOOL)
#: operations whose second operand gives a shape only (``mask.expand_as(x)``)
_GIVEN_SHAPE = frozenset({"expand_as", "view_as", "reshape_as"})
#: operations that read a tensor's metadata only
_QUERIES = frozenset(
    {"size", "dim", "numel", "__len__", "__get__", "stride", "is_contiguous", "nelement", "ndimension", "element_size"}
)
#: reductions of a comparison's mask that a check makes (``(value == value).all(-1)`` in torch.distributions'
#: argument validation, ``torch._is_all_true``): followed where the mask is the same everywhere
_MASK_REDUCTIONS = frozenset({"all", "any", "_is_all_true", "_is_any_true"})


def _is_predicate(origin: str) -> bool:
    """Whether ``origin`` names a test of values (``torch.isnan``, ``torch.Tensor.isfinite``, ...)."""
    return origin.rsplit(".", 1)[-1] in PREDICATES


_SETITEM = op_key(torch.Tensor.__setitem__)


def _is_masked_fill(args: tuple[Any, ...], mode: PassMode) -> bool:
    """Whether ``__setitem__(args)`` is ``t[mask] = v``: a floating ``t``, a comparison's bool mask of its shape
    (a gate), and a constant ``v`` (a number, or a tensor of one element that does not depend on the input)."""
    if len(args) != 3 or not all(isinstance(a, Tensor) for a in args[:2]):
        return False
    target, mask, value = args
    if not _is_floating(target) or mask.dtype != torch.bool or mask.shape != target.shape or gate_of(mask) is None:
        return False
    if isinstance(value, Tensor):
        return value.numel() == 1 and not mode.is_tracked(value) and value not in mode.picked_indices
    return isinstance(value, (int, float, bool))


def _rows_alike(func: Any, mask: Tensor, rows: int | None) -> bool:
    """Whether every row of the batch alone gives ``func(mask)`` (``any`` / ``all`` over the whole mask) the batch's
    answer, though the mask differs between elements (``if torch.isnan(x).any():`` on windows padded alike). The
    rows lie along a dimension of the batch's size: every such dimension must agree (none: not known, False)."""
    name = getattr(func, "__name__", "")
    if rows is None or rows < 1 or name not in ("any", "all", "_is_all_true", "_is_any_true"):
        return False
    reduce = torch.any if name in ("any", "_is_any_true") else torch.all
    answer = bool(reduce(mask))
    axes = [d for d in range(mask.dim()) if mask.shape[d] == rows]
    if not axes:
        return False
    for d in axes:
        per_row = reduce(mask.movedim(d, 0).reshape(rows, -1), dim=1)
        if not bool((per_row == answer).all()):
            return False
    return True


def _is_floating(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _indexes_with(func: Any, args: tuple[Any, ...], handles: dict[int, Any]) -> bool:
    """Whether ``func`` uses one of the picked tensors (``handles``, by id) as an index: anywhere in
    a ``__getitem__`` / ``__setitem__`` key, or as any argument but the first of an indexing op."""
    key = op_key(func)
    if key not in _INDEXING:
        return False
    if key in (op_key(torch.bincount), op_key(torch.Tensor.bincount)):
        return True
    rest = args[1:]
    return any(isinstance(leaf, Tensor) and id(leaf) in handles for leaf in tree_flatten(rest)[0])


class PickedUses:
    """The uses of picked indices, and of other chosen indices and comparison masks, in one pass
    (see the module docstring)."""

    def __init__(self, mode: PassMode) -> None:
        self.mode = mode
        #: slices, reshapes and logical combinations of comparisons' masks (gate_masks.py)
        self.gate_masks = GateMasks(mode)

    def use(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool
    ) -> Any:
        """A use of picked indices that have handles (see the module docstring): a selection by
        them, a cast, or an operation on them as values (run on their handles)."""

        mode = self.mode
        picked = mode.picked_indices
        handles = {
            id(leaf): picked[leaf]
            for leaf in leaves
            if isinstance(leaf, Tensor) and leaf in picked and picked[leaf].handle is not None
        }
        origin = next(iter(handles.values())).origin
        selection = selection_of(func, args, kwargs, lambda v: isinstance(v, Tensor) and id(v) in handles)
        name = cached_op_name(func)
        unattributed = (
            f"it uses the indices that {origin} picked from an input-dependent tensor in a form rnnshap does not attribute "
            "(it attributes gather, take_along_dim, h[torch.arange(B), idx], index_select or embedding from a table, "
            "one_hot, a constant scattered at them, and arithmetic, shape operations and casts on the indices)"
        )
        if selection is not None:
            return self._select(func, args, kwargs, selection, handles, name, unattributed)
        if _indexes_with(func, args, handles):  # h[..., idx] in a form selection_of does not take, scatter, index_put, ...
            mode.refuse(name, unattributed, "selection")
            return self.unattributed(func, args, kwargs, origin)
        target = in_place_target(func, args, kwargs)
        if target is not None and not (target.is_floating_point() or target.is_complex()) and target not in mode.picked_indices:
            result = func(*args, **kwargs)  # picked[:, t] = idx: the buffer holds indices, no longer followed
            mode.picked_indices[target] = Picked(origin, None)
            return result
        return self._mirror(func, types, args, kwargs, leaves, user_grad, handles, name, unattributed)

    def _select(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        selection: tuple[Any, Any, bool],
        handles: dict[int, Picked],
        name: str,
        unattributed: str,
    ) -> Any:
        """A selection by picked indices: the Selection rule, with the index's handle in its place."""
        mode = self.mode
        origin = next(iter(handles.values())).origin
        index, reduce, integer = selection
        flat, spec, layout = flatten_call(args, kwargs)
        position = next(i for i, leaf in enumerate(flat) if leaf is index)
        flat[position] = handles[id(index)].handle
        tracked = mode.tracked_among(flat)
        others = len(handles) > 1  # a selection from picked indices, or by two of them
        if others or len(tracked) > 2 or (getattr(func, "__name__", "") == "index_select" and len(tracked) > 1):
            mode.refuse(name, unattributed, "selection")
            return self.unattributed(func, args, kwargs, origin)
        new_args, new_kwargs = tree_unflatten(flat, spec)
        base, base_args, base_kwargs, target = out_of_place(func, tuple(new_args), new_kwargs)  # (zeros.scatter_(1, idx, 1))
        call = OpCall.flat(base, name, flat, spec, tracked, mode.pairs, layout)
        rule = selection_rule(func, position, reduce, integer)
        why = rule.refusal(call)
        if why is not None:  # (refused before it runs on the handle: torch's own call on the indices instead)
            mode.refuse(name, why, "selection")
            return self.unattributed(func, args, kwargs, origin)
        result = mode.dispatch(base, base_args, base_kwargs, base, base_args, base_kwargs, None, rule, name, call, False)
        if target is None:
            return result
        target.copy_(result)  # (the rule's value, with its multipliers, written where the model wrote it)
        mode.written_into(target)
        return target

    def _mirror(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        user_grad: bool,
        handles: dict[int, Picked],
        name: str,
        unattributed: str,
    ) -> Any:
        """Any other use: a cast keeps the values; anything else runs on the handles, with its own rule."""
        mode = self.mode
        origin = next(iter(handles.values())).origin
        with torch.no_grad():
            real = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(real)[0] if isinstance(t, Tensor)]
        if not outputs and not isinstance(real, (torch.Size, torch.dtype, torch.device)):  # idx.tolist(), idx.item()
            reason = f"it turns the indices that {origin} picked from an input-dependent tensor into Python values"
            mode.refuse(name, reason, "control")
            return real
        one_integer = len(outputs) == 1 and outputs[0].dtype in (torch.int32, torch.int64)  # (narrower ones may wrap)
        if op_key(func) in _INTEGER_CASTS and len(handles) == 1 and one_integer:
            mode.picked_indices[outputs[0]] = Picked(origin, next(iter(handles.values())).handle)  # idx.long(): the same values
            return real
        floating = next((t.dtype for t in outputs if _is_floating(t)), None)
        dtype = floating or torch.float64
        mirrored_leaves = list(leaves)
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor) and id(leaf) in handles:
                handle = handles[id(leaf)].handle
                assert handle is not None
                converted = handle.to(dtype)  # differentiable: the pick's multipliers stay behind it
                mode.track(converted)
                mirrored_leaves[i] = converted
        _, spec, _ = flatten_call(args, kwargs)
        new_args, new_kwargs = tree_unflatten(mirrored_leaves, spec)
        try:
            mirrored = mode.intercept(func, types, tuple(new_args), new_kwargs, user_grad)
        except (IndexError, RuntimeError, TypeError, ValueError, NotImplementedError):  # an operation on integers only
            mode.refuse(name, unattributed, "selection")
            return self.unattributed(func, args, kwargs, origin)
        if floating is not None or all(t.dtype == torch.bool for t in outputs):
            return mirrored  # a value (idx.float(), idx * x) or a comparison (idx == k), run on the handles
        for out, handle in zip(outputs, [t for t in tree_flatten(mirrored)[0] if isinstance(t, Tensor)], strict=True):
            mode.picked_indices[out] = Picked(origin, handle if mode.is_tracked(handle) else None)
        return real

    def unattributed(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], origin: str) -> Any:
        """Run a refused use of picked indices as torch does (to reach the end of the pass), its
        integer results still followed (for their own refusals) and its floating ones tracked."""
        mode = self.mode
        with torch.no_grad():
            result = func(*args, **kwargs)
        for out in tree_flatten(result)[0]:
            if isinstance(out, Tensor):
                if _is_floating(out):
                    mode.track(out)
                else:
                    mode.picked_indices[out] = Picked(origin, None)
        return result

    def index_use(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool
    ) -> tuple[bool, Any]:
        """An operation on indices chosen from a tracked tensor (``x.max(1).indices``).

        Picked indices with a handle are exact: a selection by them (a gather, an indexing, an
        embedding lookup, a one-hot) takes the rule of rnnshap/rules/selection.py, and any other
        operation runs on their handles with its own rule. Other chosen indices (and comparison
        masks outside a ``where`` gate): shape and indexing operations on them alone pass them on;
        any other use is refused, since they differ between the input and its reference."""
        mode = self.mode
        picked = [mode.picked_indices[leaf] for leaf in leaves if isinstance(leaf, Tensor) and leaf in mode.picked_indices]
        if not picked:
            return False, None
        origin = picked[0].origin
        done, result = self.gate_masks.cast(func, args, kwargs, leaves)  # a gate's step as a value
        if not done:
            done, result = self.gate_masks.promote(func, types, args, kwargs, leaves, user_grad)
        if not done:
            done, result = self.gate_masks.select(func, args, kwargs, leaves)  # where(mask, 1.0, 0.0)
        if done:
            return True, result
        if not any(mode.is_tracked(leaf) for leaf in leaves) or getattr(func, "__name__", "") in _GIVEN_SHAPE:
            done, result = self.gate_masks.use(func, args, kwargs, leaves)  # a gate sliced or combined
            if done:
                return True, result
        # picked indices with handles, and masks of comparisons of those (a gate: where(idx < 0, idx + n, idx),
        # as Keras' torch backend normalizes indices): run on the handles
        indices = mode.picked_indices
        handled = [leaf for leaf in leaves if isinstance(leaf, Tensor) and leaf in indices and indices[leaf].handle is not None]
        gates = all(
            indices[leaf].handle is not None or gate_of(leaf) is not None
            for leaf in leaves
            if isinstance(leaf, Tensor) and leaf in indices
        )
        if handled and gates and not self._indices_unchanged(func, leaves):
            return True, self.use(func, types, args, kwargs, leaves, user_grad)
        rule = mode.registry.op_rule(func)
        name = op_name(func)
        compared = origin.rsplit(".", 1)[-1] in _COMPARISON_NAMES
        if compared and getattr(func, "__name__", "") in _MASK_REDUCTIONS and isinstance(leaves[0], Tensor):
            if len(leaves) == 1:
                return True, self._uniform_decision(func, args, kwargs, leaves[0], name, origin)
            mask = leaves[0]
            if not any(isinstance(leaf, Tensor) for leaf in leaves[1:]) and (bool(mask.all()) or not bool(mask.any())):
                # a reduction along a dimension of a mask that is the same everywhere (the validation of
                # torch.distributions: (value == value).all(-1)): as uniform as the mask; a branch on it is
                # a decision of _uniform_decision
                result = func(*args, **kwargs)
                if isinstance(result, Tensor):
                    mode.picked_indices[result] = Picked(origin, None)
                return True, result
        if all(_is_predicate(indices[leaf].origin) for leaf in leaves if isinstance(leaf, Tensor) and leaf in indices):
            return self._constant_mask_use(func, args, kwargs, leaves, origin)
        reason = (
            f"it uses the indices that {origin} picked from an input-dependent tensor; they differ between the input "
            "and its reference, and which element is picked has no multiplier"
        )
        if (rule is None or type(rule) in (Linear, Constant)) and not any(mode.is_tracked(leaf) for leaf in leaves):
            result = func(*args, **kwargs)
            outputs = [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]
            target = in_place_target(func, args, kwargs) if type(rule) is Linear else None
            if target is not None:  # written into a buffer (picked[:, t] = idx): the buffer holds them now
                mode.picked_indices[target] = Picked(origin, None)
                forget_gates(target)  # (a comparison's mask written into is no longer the comparison's)
                return True, result
            if not outputs or type(rule) is Constant:
                return True, result  # a query (idx.shape) or a constant (zeros_like)
            if type(rule) is Linear and not any(t.is_floating_point() or t.is_complex() for t in outputs):
                for t in outputs:
                    mode.picked_indices[t] = Picked(origin, None)
                return True, result
            self._refuse_index_use(func, name, origin, reason)
            return True, result
        claim = getattr(rule, "takes_gate", None)  # where(x >= 0, f(x), g(x)): the gate rule takes the comparison
        if claim is not None and any(mode.is_tracked(leaf) for leaf in leaves) and claim(mode.op_call(func, args, kwargs, name)):
            return False, None
        if op_key(func) == _SETITEM and _is_masked_fill(args, mode):
            self._masked_assignment(types, args, user_grad)
            return True, None
        self._refuse_index_use(func, name, origin, reason)
        return False, None

    def _constant_mask_use(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], origin: str
    ) -> tuple[bool, Any]:
        """A use of the mask of ``isnan`` / ``isfinite`` / ``isinf`` (rules/gates.py, Predicate) other than a branch
        on it: the input pass refuses a mask that differs between an input and its reference (Predicate), so
        wherever a pass goes on the mask is a constant of the explained function. With input-dependent operands
        (``x.masked_fill(mask, 0)``, ``x * mask``, ``x[mask] = 0``) the ordinary path runs it with the mask as a
        constant (a ``where`` through its gate, whose step passes nothing back); on the mask alone
        (``mask.logical_not().to(x.dtype)``, a feature) it runs as torch runs it, its integer and bool results
        still followed (a later branch on them must be uniform) and its floating ones constants."""
        mode = self.mode
        if any(mode.is_tracked(leaf) for leaf in leaves):
            return False, None
        result = func(*args, **kwargs)
        for out in tree_flatten(result)[0]:
            if isinstance(out, Tensor) and not _is_floating(out):
                mode.picked_indices[out] = Picked(origin, None)
        return True, result

    def _masked_assignment(self, types: Any, args: tuple[Any, ...], user_grad: bool) -> None:
        """``t[mask] = v`` with a comparison's mask of ``t``'s shape and a constant ``v`` (darts'
        ``gamma[gamma < MIN] = MIN``, a clamp): ``t.masked_fill(mask, v)`` through its gate rule, written back."""
        mode = self.mode
        target, mask, value = args[0], args[1], args[2]
        filled = mode.intercept(torch.Tensor.masked_fill, types, (target, mask, value), {}, user_grad)
        mode.intercept(torch.Tensor.copy_, types, (target, filled), {}, user_grad)

    def _uniform_decision(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], mask: Tensor, name: str, origin: str
    ) -> Any:
        """``torch.all(mask)`` / ``mask.any()`` over a whole comparison mask, to branch on
        (``if torch.all(n == 0):``, as xlstm's sLSTM writes its first step).

        Where the mask is the same for every element, every row of the batch, alone or with any
        others, takes the branch the batch takes: the pass follows the model's own function on each
        row. The decision is kept on the tape, and the input pass must take it the same way as the
        reference pass (else the two passes would run different operations). A mask that differs
        between elements is refused: the batch's branch is not each row's."""
        mode = self.mode
        result = func(*args, **kwargs)
        what = f"{name} of {origin}"
        key = ("decision", what)
        entry = mode.tape.take(key, what, (), ()) if mode.replay else None
        differ = (
            "forward() branches on a comparison of input-dependent values that differ between the rows (or elements) "
            "of the batch, so the branch the batch takes is not each row's"
        )
        if not (bool(mask.all()) or not bool(mask.any())) and not _rows_alike(func, mask, getattr(mode, "batch_rows", None)):
            if mode.replay:
                raise UnsupportedOperationError([(what, f"{differ} (here on the inputs explained)", "control")])
            mode.refuse(what, differ, "control")
            mode.mark_decisions(result, origin)
            return result
        taken = bool(result)
        if entry is None:
            mode.tape.append(TapeEntry(key, what, (), (), [torch.tensor(taken)]))
            return result
        assert entry.references is not None
        if bool(entry.references[0]) != taken:
            raise UnsupportedOperationError([(
                what,
                f"forward() branches on it, and the comparison is {bool(entry.references[0])} on the references and "
                f"{taken} on the inputs, so the two passes would run different operations",
                "control",
            )])
        return result

    def _indices_unchanged(self, func: Any, leaves: list[Any]) -> bool:
        """A query of the indices' metadata (``idx.shape``) or a constant made from them (``zeros_like``)."""
        mode = self.mode
        rule = mode.registry.op_rule(func)
        if type(rule) is Constant or (rule is None and getattr(func, "__name__", "") in _QUERIES):
            return True
        return False

    def _refuse_index_use(self, func: Any, name: str, origin: str, reason: str) -> None:
        """Refuse a use of picked indices, or of a comparison's mask outside a ``where`` gate, with
        the advice that fits: a comparison is named itself (a step function), a branch on it as control flow."""
        mode = self.mode
        if origin.rsplit(".", 1)[-1] not in _COMPARISON_NAMES:
            mode.refuse(name, reason, "selection")
            return
        rule = mode.registry.op_rule(func)
        if isinstance(rule, Refuse) and getattr(rule, "advice", None) == "control":
            mode.refuse(name, f"{rule.reason}: a value computed by {origin} from input-dependent values", "control")
        else:
            reason = f"it compares input-dependent values and {name} uses the mask outside a where(mask, f(x), g(x)) gate"
            mode.refuse(origin, reason, "comparison")


__all__ = ["Picked", "PickedUses"]
