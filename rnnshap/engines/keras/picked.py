r"""Indices picked by ``argmax`` / ``argmin`` and ``top_k``'s indices, and their uses, on TensorFlow: the
PyTorch engine's rules (rnnshap/engines/pytorch/picked.py, rnnshap/rules/selection.py), so a Keras
model gets the same values on both backends.

A picked index is a step function of the tensor it was picked from. It travels as a
:class:`~rnnshap.engines.keras.dual.PickedIndices`: the integer indices on both sides and a *handle*,
the input side's indices as float64 values whose gradient is the pick's multipliers (its change is
credited to the position that decided the pick, :func:`~rnnshap.engines.keras.dual.picked_index`).
Its uses:

* a selection by the indices, :math:`s(h, i)` (``take_along_axis``, ``take`` from a constant table,
  ``one_hot``, an ``Embedding``), is linear in ``h`` for a fixed ``i``: the Shapley rule on the product
  of the selector and ``h`` gives ``h`` the mean of the two selections as its multiplier and the
  selector :math:`s(\bar h, i_x) - s(\bar h, i_r)` (:math:`\bar h` the mean of both sides' ``h``),
  which goes to the handle, divided by :math:`i_x - i_r`;
* a cast keeps the values: to floating point it is the handle itself, to integers it keeps the handle;
* shape operations and arithmetic run on the handle with their own rules;
* anything else (a comparison, ``take`` of an input-dependent tensor, a layer that reads the indices
  as data) is refused by name.
"""

from __future__ import annotations

from typing import Any, Callable

from keras import ops

from ...formulas import orderings, pairs
from ...formulas.keras_ops import KERAS
from . import dual
from .backend import Tensor, dtype_name, is_floating, is_tensor
from .dual import Dual, PickedIndices

#: ``unsupported(op, why)``: the refusal of an op, by name (``pass_state.unsupported``)
Unsupported = Callable[[Any, str], Exception]
#: ``by_rule(args, kwargs)``: an op on Duals by its own rule
ByRule = Callable[[tuple[Any, ...], dict[str, Any]], Any]
Select = orderings.Select

#: the uses rnnshap attributes, for the refusals' advice
ATTRIBUTED = (
    "rnnshap attributes take_along_axis by them, take from a constant table, one_hot, an Embedding of them, "
    "and casts, shape operations and arithmetic on them"
)


def _name(op: Any) -> str:
    return type(op).__name__


def pick(op: Any, value: Dual, unsupported: Unsupported) -> PickedIndices:
    """``argmax`` / ``argmin`` of an input-dependent tensor along one axis: the indices, with their handle."""
    rank = len(value.x.shape)
    if op.axis is None:
        raise unsupported(
            op,
            f"{_name(op).lower()} without an axis picks over the whole batch, so every row's pick depends on the other "
            "rows: give it the axis to pick along",
        )
    axis = int(op.axis) % rank
    if axis == 0:
        raise unsupported(op, f"{_name(op).lower()} over axis 0 picks across the samples of the batch")
    index_x, index_r = op(ops.stop_gradient(value.x)), op(value.r)
    moved = value.map(lambda t: ops.moveaxis(t, axis, -1))

    def last(t: Tensor) -> Tensor:
        return ops.moveaxis(t, axis, -1) if op.keepdims else t[..., None]

    handle = dual.picked_index(moved, last(index_x), last(index_r), largest=_name(op) == "Argmax")
    handle = ops.moveaxis(handle, -1, axis) if op.keepdims else handle[..., 0]
    return PickedIndices(index_x, index_r, handle, _name(op).lower())


def top_k_indices(value: Dual, index_x: Tensor, index_r: Tensor) -> PickedIndices:
    """``top_k``'s indices along the last axis, with their handle."""
    return PickedIndices(index_x, index_r, dual.picked_index(value, index_x, index_r, largest=True), "top_k")


def select(fn: Select, h: Dual | None, index: PickedIndices, expand: Callable[[Tensor], Tensor]) -> Dual:
    r"""The selection ``fn(h, i)`` by the picked ``index`` (see the module docstring); ``expand`` takes an
    index-shaped tensor to the output's shape (the adjoint of summing each output element onto the index
    element that selected it). The value is the selection's exactly: every added term is an exact zero."""
    index_x, index_r = index.x, index.r
    hx = None if h is None else ops.stop_gradient(h.x)
    out_x, out_r = fn(hx, index_x), fn(None if h is None else h.r, index_r)
    change = orderings.selector_change(KERAS, fn, hx, None if h is None else h.r, index_x, index_r)
    step = None if h is None else h.x - hx  # zeros whose gradient is h's
    h_part = None if step is None else orderings.selected_share(KERAS, fn, step, index_x, index_r)
    moved = ops.cast(index_x - index_r, "float64")
    inverse = pairs.inverse_delta(KERAS, moved)  # (an index's change is an integer: finite)
    routed = expand(ops.stop_gradient(inverse) * (index.handle - ops.stop_gradient(index.handle)))
    selector = ops.stop_gradient(ops.cast(change, "float64")) * routed
    if not is_floating(out_x.dtype):  # one_hot to integers: integers with a handle of their own
        return PickedIndices(out_x, out_r, ops.cast(out_x, "float64") + selector, index.origin)
    out = ops.stop_gradient(out_x) + ops.cast(selector, out_x.dtype)
    return Dual(out if h_part is None else out + h_part, out_r)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


def _refuse(op: Any, index: PickedIndices, unsupported: Unsupported, how: str) -> Exception:
    return unsupported(op, f"it {how} the indices {index.origin} picked from an input-dependent tensor; {ATTRIBUTED}")


def use(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], by_rule: ByRule, unsupported: Unsupported) -> Any:
    """The keras op ``op(*args, **kwargs)`` with picked indices among its arguments, by the rules of the
    module docstring; ``by_rule(args, kwargs)`` runs an op on Duals by its own rule."""
    n = _name(op)
    leaves = [v for v in dual.flat_values((args, kwargs)) if isinstance(v, Dual)]
    picked = [v for v in leaves if isinstance(v, PickedIndices)]
    index = picked[0]
    if len(picked) > 1:
        raise _refuse(op, index, unsupported, f"combines ({n}) two tensors of")
    if n == "TakeAlongAxis":
        values, indices = _argument(args, kwargs, 0, "x"), _argument(args, kwargs, 1, "indices")
        if indices is not index or op.axis is None:
            how = "takes along no axis (over the whole batch) by" if op.axis is None else "takes from"
            raise _refuse(op, index, unsupported, how)

        def along(h: Any, i: Tensor) -> Tensor:
            return op(values if h is None else h, i)

        out_shape = ops.shape(op(dual.side(values, 0), index.x))
        return select(along, values if isinstance(values, Dual) else None, index, lambda t: ops.broadcast_to(t, out_shape))
    if n == "Take":
        table, indices = _argument(args, kwargs, 0, "x"), _argument(args, kwargs, 1, "indices")
        if indices is not index or isinstance(table, Dual):
            how = "takes an input-dependent tensor by (use take_along_axis) with" if indices is index else "takes from"
            raise _refuse(op, index, unsupported, how)
        table = ops.convert_to_tensor(table)
        before = 0 if op.axis is None else int(op.axis) % len(table.shape)
        after = 0 if op.axis is None else len(table.shape) - before - 1
        expand = lambda t: ops.reshape(t, [*([1] * before), *t.shape, *([1] * after)])  # noqa: E731
        return select(lambda _, i: op(table, i), None, index, expand)
    if n == "OneHot":
        if _argument(args, kwargs, 0, "x") is not index or op.sparse:
            raise _refuse(op, index, unsupported, "one-hot encodes (sparse) or by")
        return select(lambda _, i: op(i), None, index, lambda t: ops.expand_dims(t, op.axis))
    if n == "Cast":
        if op.dtype is not None and str(op.dtype).startswith(("float", "bfloat")):
            return index.values(dtype_name(str(op.dtype)))  # idx.float(): the handle itself
        if str(op.dtype) == "bool":
            raise _refuse(op, index, unsupported, "casts to booleans (a comparison)")
        return PickedIndices(op(index.x), op(index.r), index.handle, index.origin)  # the same values
    return _mirror(op, args, kwargs, index, by_rule, unsupported)


def _mirror(
    op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], index: PickedIndices, by_rule: ByRule, unsupported: Unsupported
) -> Any:
    """Any other op: run on the handle (as numbers, in the result's floating dtype or float64) with its
    own rule; an integer result keeps that as its handle."""
    real_x = op(*dual.side(args, 0), **dual.side(kwargs, 0))
    if not is_tensor(real_x) or real_x.dtype == "bool":
        raise _refuse(op, index, unsupported, f"compares or splits ({_name(op)})")
    dtype = real_x.dtype if is_floating(real_x.dtype) else "float64"
    values = index.values(dtype)

    def swap(v: Any) -> Any:
        if v is index:
            return values
        if isinstance(v, (list, tuple)):
            return type(v)(swap(item) for item in v)
        if isinstance(v, dict):
            return {key: swap(item) for key, item in v.items()}
        return v

    mirrored = by_rule(swap(args), swap(kwargs))
    if is_floating(real_x.dtype):
        return mirrored  # a number (idx * x, idx / 2)
    if not isinstance(mirrored, Dual):
        raise _refuse(op, index, unsupported, f"computes several tensors ({_name(op)}) from")
    real_r = op(*dual.side(args, 1), **dual.side(kwargs, 1))
    return PickedIndices(real_x, real_r, mirrored.x, index.origin)  # idx + 1: integers, their handle computed
