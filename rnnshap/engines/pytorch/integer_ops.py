"""The operations on followed integer inputs, by what they do to them (see ``discrete.py``).

Tables of operation keys (``op_key``) by kind: reading metadata only (:data:`META`), a result that
depends on the shape or dtype alone (:data:`CONSTANT`), casts, comparisons, elementwise integer
arithmetic, and the floating-point operations that may take integers as numbers (:data:`NUMERIC`).
:data:`MOVES` maps every operation that moves values (shapes, indexing, ``cat``, ``where``,
``masked_fill``, ``F.pad``) to the *spec* of how it takes its operands, with which ``discrete.py``
moves the input positions the same way as the values; single keys name the operations it treats
one by one (indexing, embeddings, ``one_hot``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from ...rules.registry import (
    BILINEAR_OPS,
    CONSTANT_OPS,
    DIVISION,
    EXTREMA,
    POWER,
    REVERSE_DIVISION,
    SMOOTH_UNARY,
    forms,
    op_key,
)

Tensor = torch.Tensor


def floating_dtype(value: Any) -> torch.dtype | None:
    """The dtype of the first floating-point tensor in ``value``, if any."""
    for out in tree_flatten(value)[0]:
        if isinstance(out, Tensor) and (out.is_floating_point() or out.is_complex()):
            return out.dtype
    return None


def _keys(*names: str) -> frozenset[Any]:
    return frozenset(op_key(fn) for fn in forms(*names))


def _getters(*names: str) -> frozenset[Any]:
    return frozenset(("getter", name) for name in names)


#: reading these is not a use of the values
META = _keys(
    "size", "dim", "ndimension", "numel", "nelement", "__len__", "stride", "is_contiguous",
    "is_floating_point", "is_complex", "is_signed", "element_size", "get_device", "data_ptr",
    "storage_offset", "__format__", "__repr__", "__str__", "__hash__",
) | _getters(
    "shape", "ndim", "dtype", "device", "is_cuda", "is_cpu", "is_mps", "layout", "requires_grad",
    "is_leaf", "names", "is_sparse", "is_quantized", "is_meta", "is_nested", "itemsize", "nbytes",
    "grad_fn", "grad", "output_nr", "_version",
)
#: of those, the reads that give the same on both sides of a pair (not the ones that tell an input side from a reference
#: side, nor addresses or printed values): the captured pass reads them once, on the input side
SAME_ON_BOTH_SIDES = META - _getters("requires_grad", "is_leaf", "grad_fn", "grad", "output_nr", "_version") - _keys(
    "data_ptr", "storage_offset", "__format__", "__repr__", "__str__", "__hash__"
)
#: the result depends on the shape, dtype or device of the followed operand only
CONSTANT = _keys(*CONSTANT_OPS, "rand_like", "randn_like", "randint_like")
#: ops whose second tensor operand only lends its shape or dtype
SHAPE_OF_OTHER = _keys("expand_as", "view_as", "reshape_as", "type_as")
CASTS = _keys(
    "to", "type", "type_as", "long", "int", "short", "char", "byte", "bool", "float", "double", "half",
    "bfloat16", "cpu", "cuda",
)
COMPARISONS = _keys(
    "eq", "ne", "lt", "le", "gt", "ge", "greater", "less", "greater_equal", "less_equal", "not_equal",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "isin", "logical_not", "logical_and",
    "logical_or", "logical_xor",
)
#: elementwise integer arithmetic: each element of the result comes from one element of each operand
ELEMENTWISE = _keys(
    "add", "sub", "subtract", "rsub", "mul", "multiply", "neg", "negative", "positive", "abs", "absolute",
    "remainder", "fmod", "floor_divide", "div", "divide", "clamp", "clip", "clamp_min", "clamp_max",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift", "bitwise_right_shift",
    "maximum", "minimum", "sign", "sgn", "square", "pow", "relu", "__add__", "__radd__", "__sub__",
    "__rsub__", "__mul__", "__rmul__", "__mod__", "__rmod__", "__floordiv__", "__rfloordiv__",
    "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__lshift__", "__rlshift__",
    "__rshift__", "__rrshift__", "__neg__", "__pos__", "__abs__", "__pow__", "__rpow__", "__invert__",
)
#: floating-point operations that may take integers as numbers (implicit casts)
NUMERIC = ELEMENTWISE | _keys(
    *SMOOTH_UNARY, *DIVISION, *REVERSE_DIVISION, *POWER, *EXTREMA, *BILINEAR_OPS, "true_divide", "hardtanh",
    "leaky_relu", "relu6", "threshold", "linear", "sum", "mean", "cumsum",
)


# -- how the operations that move values take their operands ------------------------------------
#: ``spec(args, kwargs, data, fill, condition)`` rebuilds a call with ``data`` applied to the operands
#: whose values move into the result, ``fill`` to constants written into it, and ``condition`` to the
#: masks that choose between them; None when the call has another form
Mapper = Callable[[Any], Any]
Call = tuple[tuple[Any, ...], dict[str, Any]]
Spec = Callable[[tuple[Any, ...], dict[str, Any], Mapper, Mapper, Mapper], "Call | None"]


def _first(args: tuple[Any, ...], kwargs: dict[str, Any], data: Mapper, fill: Mapper, condition: Mapper) -> Call | None:
    """op(t, ...): the values move from ``t``."""
    if args:
        return (data(args[0]), *args[1:]), kwargs
    for name in ("input", "self"):
        if name in kwargs:
            return args, {**kwargs, name: data(kwargs[name])}
    return None


def _sequence(args: tuple[Any, ...], kwargs: dict[str, Any], data: Mapper, fill: Mapper, condition: Mapper) -> Call | None:
    """cat / stack: every tensor of the sequence."""
    sequence = args[0] if args else kwargs.get("tensors")
    if not isinstance(sequence, (list, tuple)):
        return None
    moved = [data(t) for t in sequence]
    return ((moved, *args[1:]), kwargs) if args else (args, {**kwargs, "tensors": moved})


def _where(args: tuple[Any, ...], kwargs: dict[str, Any], data: Mapper, fill: Mapper, condition: Mapper) -> Call | None:
    """torch.where(condition, input, other)."""
    names = ("condition", "input", "other")
    values = list(args) + [kwargs[n] for n in names[len(args) :] if n in kwargs]
    if len(values) != 3:
        return None  # where(condition): the indices of the true elements
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return (condition(values[0]), data(values[1]), data(values[2])), rest


def _where_method(args: tuple[Any, ...], kwargs: dict[str, Any], data: Mapper, fill: Mapper, condition: Mapper) -> Call | None:
    """t.where(condition, other)."""
    if len(args) < 3:
        return None
    return (data(args[0]), condition(args[1]), data(args[2]), *args[3:]), kwargs


def masked_fill_spec(args: tuple[Any, ...], kwargs: dict[str, Any], data: Mapper, fill: Mapper, condition: Mapper) -> Call | None:
    if len(args) >= 3:
        return (data(args[0]), condition(args[1]), fill(args[2]), *args[3:]), kwargs
    if len(args) == 2 and "value" in kwargs:
        return (data(args[0]), condition(args[1])), {**kwargs, "value": fill(kwargs["value"])}
    return None


def _pad(args: tuple[Any, ...], kwargs: dict[str, Any], data: Mapper, fill: Mapper, condition: Mapper) -> Call | None:
    """F.pad(input, pad, mode="constant", value=None): the padding is a constant."""
    if not args:
        return None
    if len(args) >= 4:
        return (data(args[0]), args[1], args[2], fill(args[3]), *args[4:]), kwargs
    if "value" in kwargs:
        return (data(args[0]), *args[1:]), {**kwargs, "value": fill(kwargs["value"])}
    return (data(args[0]), *args[1:]), kwargs


MOVES: dict[Any, Spec] = {}
for _fn in forms(
    "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "ravel", "squeeze", "unsqueeze",
    "transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "contiguous", "clone",
    "expand", "expand_as", "broadcast_to", "repeat", "tile", "repeat_interleave", "flip", "fliplr", "flipud",
    "roll", "rot90", "narrow", "select", "diagonal", "split", "split_with_sizes", "chunk", "unbind",
    "tensor_split", "hsplit", "vsplit", "dsplit", "__getitem__", "index_select", "gather", "take_along_dim",
    "take", "tril", "triu", "atleast_1d", "atleast_2d", "atleast_3d", "masked_select", "detach",
):
    MOVES[op_key(_fn)] = _first
MOVES[op_key(torch.Tensor.unfold)] = _first  # the sliding windows of a tensor, not F.unfold's patches
for _name in ("T", "mT", "data"):
    MOVES[("getter", _name)] = _first
for _fn in forms("cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack", "row_stack"):
    MOVES[op_key(_fn)] = _sequence
MOVES[op_key(torch.where)] = _where
MOVES[op_key(torch.Tensor.where)] = _where_method
for _fn in forms("masked_fill"):
    MOVES[op_key(_fn)] = masked_fill_spec
MOVES[op_key(F.pad)] = _pad
MOVES[op_key(torch._C._nn.pad)] = _pad

GETITEM = op_key(torch.Tensor.__getitem__)
CONTAINS = op_key(torch.Tensor.__contains__)
SETITEM = op_key(torch.Tensor.__setitem__)
INDEX_SELECT = _keys("index_select")
VIEW = _keys("view")
ONE_HOT = _keys("one_hot")
EMBEDDING = op_key(F.embedding)
TORCH_EMBEDDING = op_key(torch.embedding)
EMBEDDING_BAG = op_key(F.embedding_bag)
EMBEDDING_BAG_SIGNATURE = inspect.signature(F.embedding_bag)
EMBEDDING_SIGNATURE = inspect.signature(F.embedding)


def is_bool(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.bool


def identity(value: Any) -> Any:
    return value


def is_floating(value: Any) -> bool:
    return isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex())


__all__ = [
    "CASTS",
    "COMPARISONS",
    "CONSTANT",
    "CONTAINS",
    "Call",
    "ELEMENTWISE",
    "EMBEDDING",
    "EMBEDDING_BAG",
    "EMBEDDING_BAG_SIGNATURE",
    "EMBEDDING_SIGNATURE",
    "GETITEM",
    "INDEX_SELECT",
    "META",
    "MOVES",
    "Mapper",
    "NUMERIC",
    "ONE_HOT",
    "SETITEM",
    "SHAPE_OF_OTHER",
    "Spec",
    "TORCH_EMBEDDING",
    "VIEW",
    "floating_dtype",
    "identity",
    "is_bool",
    "is_floating",
    "masked_fill_spec",
]
