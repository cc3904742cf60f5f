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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...rules.base import OpCall
from ...rules.registry import op_key
from ...rules.selection import Selection, selection_of
from .calls import PassMode, cached_op_name, flatten_call, in_place_target

Tensor = torch.Tensor


@dataclass
class Picked:
    """Indices chosen from an input-dependent tensor (``x.argmax(1)``), or a comparison's mask.

    ``origin`` names the operation that chose them; ``handle`` (picked indices only) is the same
    indices as a tracked float64 tensor that carries the pick's multipliers (rules/selection.py)."""

    origin: str
    handle: Tensor | None = None


#: casts that keep integer values as they are (``idx.long()``): the handle goes with them
_INTEGER_CASTS = frozenset(op_key(fn) for fn in (torch.Tensor.long, torch.Tensor.int, torch.Tensor.to, torch.Tensor.type, torch.Tensor.short))
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
    """The uses of picked indices in one pass (see the module docstring)."""

    def __init__(self, mode: PassMode) -> None:
        self.mode = mode

    def use(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool) -> Any:
        """A use of picked indices that have handles (see the module docstring): a selection by
        them, a cast, or an operation on them as values (run on their handles)."""

        mode = self.mode
        handles = {id(leaf): mode._indices[leaf] for leaf in leaves if isinstance(leaf, Tensor) and leaf in mode._indices and mode._indices[leaf].handle is not None}
        origin = next(iter(handles.values())).origin
        selection = selection_of(func, args, kwargs, lambda v: isinstance(v, Tensor) and id(v) in handles)
        name = cached_op_name(func)
        unattributed = (
            f"it uses the indices that {origin} picked from an input-dependent tensor in a form rnnshap does not attribute "
            "(it attributes gather, take_along_dim, h[torch.arange(B), idx], index_select or embedding from a table, "
            "one_hot, and arithmetic, shape operations and casts on the indices)"
        )
        if selection is not None:
            return self._select(func, args, kwargs, selection, handles, name, unattributed)
        if _indexes_with(func, args, handles):  # h[..., idx] in a form selection_of does not take, scatter, index_put, ...
            mode._refuse(name, unattributed, "selection")
            return self.unattributed(func, args, kwargs, origin)
        target = in_place_target(func, args, kwargs)
        if target is not None and not (target.is_floating_point() or target.is_complex()) and target not in mode._indices:
            result = func(*args, **kwargs)  # picked[:, t] = idx: the buffer holds indices, no longer followed
            mode._indices[target] = Picked(origin, None)
            return result
        return self._mirror(func, types, args, kwargs, leaves, user_grad, handles, name, unattributed)

    def _select(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], selection: tuple[Any, Any, bool], handles: dict[int, Picked], name: str, unattributed: str) -> Any:
        """A selection by picked indices: the Selection rule, with the index's handle in its place."""
        mode = self.mode
        origin = next(iter(handles.values())).origin
        index, reduce, integer = selection
        flat, spec, layout = flatten_call(args, kwargs)
        position = next(i for i, leaf in enumerate(flat) if leaf is index)
        flat[position] = handles[id(index)].handle
        tracked = mode._tracked_among(flat)
        others = len(handles) > 1  # a selection from picked indices, or by two of them
        if others or len(tracked) > 2 or (getattr(func, "__name__", "") == "index_select" and len(tracked) > 1):
            mode._refuse(name, unattributed, "selection")
            return self.unattributed(func, args, kwargs, origin)
        call = OpCall.flat(func, name, flat, spec, tracked, mode.pairs, layout)
        new_args, new_kwargs = call.args, call.kwargs
        return mode.dispatch(func, new_args, new_kwargs, func, new_args, new_kwargs, None, Selection(position, reduce, integer), name, call, False)

    def _mirror(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool, handles: dict[int, Picked], name: str, unattributed: str
    ) -> Any:
        """Any other use: a cast keeps the values; anything else runs on the handles, with its own rule."""
        mode = self.mode
        origin = next(iter(handles.values())).origin
        with torch.no_grad():
            real = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(real)[0] if isinstance(t, Tensor)]
        if not outputs and not isinstance(real, (torch.Size, torch.dtype, torch.device)):  # idx.tolist(), idx.item(): Python values
            mode._refuse(name, f"it turns the indices that {origin} picked from an input-dependent tensor into Python values", "control")
            return real
        if op_key(func) in _INTEGER_CASTS and len(handles) == 1 and len(outputs) == 1 and not _is_floating(outputs[0]) and outputs[0].dtype != torch.bool:
            mode._indices[outputs[0]] = Picked(origin, next(iter(handles.values())).handle)  # idx.long(): the same values
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
            mirrored = mode._intercept(func, types, tuple(new_args), new_kwargs, user_grad)
        except (IndexError, RuntimeError, TypeError, ValueError, NotImplementedError):  # an operation on integers only
            mode._refuse(name, unattributed, "selection")
            return self.unattributed(func, args, kwargs, origin)
        if floating is not None or all(t.dtype == torch.bool for t in outputs):
            return mirrored  # a value (idx.float(), idx * x) or a comparison (idx == k), run on the handles
        for out, handle in zip(outputs, [t for t in tree_flatten(mirrored)[0] if isinstance(t, Tensor)], strict=True):
            mode._indices[out] = Picked(origin, handle if mode.is_tracked(handle) else None)
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
                    mode._indices[out] = Picked(origin, None)
        return result
