r"""Keras ops (``keras.ops.*``, nodes of a Functional graph, of a traced ``Lambda`` or of a traced
custom ``call``) on :class:`~rnnshap.engines.keras.dual.Dual` tensors, each by its rule:

- linear ops (reshaping, indexing, sums, means, concatenation, convolution with a constant kernel,
  ``multiply``/``matmul``/``einsum``/``divide`` with one input-dependent operand, ...) run on both sides;
- products of two input-dependent tensors (``multiply``, ``matmul``, ``einsum``, ``tensordot``, ...)
  take the exact two-player Shapley rule, ``divide`` by an input-dependent tensor its closed form
  (:func:`rnnshap.formulas.pairs.quotient_multipliers`); a product with an inverse root (``rsqrt``,
  ``power(·, -0.5)``) or a division by a root (``sqrt``), a normalization written with keras ops, the
  normalizations' scale-weighted rule (``dual.scaled``, ``_quotient``), as on the torch backend;
- elementwise nonlinear ops take Rescale (with one input-dependent operand) or the exact two-player
  Shapley rule (``maximum``, ``power``, ... of two);
- ``softmax``, ``log_softmax``, ``logsumexp``, ``max``/``min`` reductions and ``layer_normalization``
  their decompositions, as the layers do.

Comparisons and logical ops are mask ops (read on the explained input, see ``walker.call_layer``).
Any other op that an input-dependent tensor reaches is refused by name.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import keras
from keras import ops

from ...formulas import marks, pairs
from ...formulas.keras_ops import KERAS
from ...operations import KERAS_PARAMETRIC_PIECEWISE, keras_binary, keras_op_families, keras_structured
from . import dual, picked
from .backend import Tensor, dtype_name
from .dual import Dual, PickedIndices
from .pass_state import Run
from .picked import Unsupported
from .private import is_keras_op as is_op

#: linear in every input-dependent argument: both sides run through the op itself
LINEAR = {
    "GetItem", "Add", "Subtract", "Negative", "Reshape", "Transpose", "Concatenate", "Stack", "Sum", "Mean",
    "Squeeze", "ExpandDims", "Flip", "Moveaxis", "Swapaxes", "Tile", "Repeat", "Cast", "BroadcastTo", "Cumsum",
    "Roll", "Tril", "Triu", "Diagonal", "Diag", "Split", "ArraySplit", "Hsplit", "Vsplit", "Dsplit", "Unstack",
    "Ravel", "Trace", "Copy", "Hstack", "Vstack", "Dstack", "Fliplr", "Flipud", "Rot90", "Slice", "Diff",
    "Append", "Deg2rad", "Rad2deg", "SliceUpdate", "ScatterUpdate", "Real", "Identity", "View", "ConvertToTensor",
    # the Fourier transforms, on (real, imaginary) pairs of real tensors: linear over the reals
    "FFT", "FFT2", "IFFT2", "RFFT", "IRFFT",
}  # fmt: skip
#: linear in the argument at these positions, which alone may be input-dependent
LINEAR_IN = {
    "Take": (0,), "TakeAlongAxis": (0,), "SegmentSum": (0,), "Pad": (0,), "Average": (0,), "Conv": (0,),
    "DepthwiseConv": (0,), "SeparableConv": (0,), "ConvTranspose": (0,), "AveragePool": (0,),
    "AdaptiveAveragePool": (0,), "Where": (1, 2),
}  # fmt: skip
#: linear in each operand: with two input-dependent operands, the exact two-player Shapley rule
BILINEAR = {"Multiply", "Matmul", "Einsum", "Tensordot", "Dot", "Inner", "Outer", "Kron", "Vdot"}
DIVISION = {"Divide", "TrueDivide"}
#: ops that move or copy elements: on token ids (or an integer mask input) they give token ids
STRUCTURAL = {
    "GetItem", "Reshape", "ExpandDims", "Squeeze", "Transpose", "Tile", "Repeat", "BroadcastTo", "Flip", "Moveaxis",
    "Swapaxes", "Ravel", "Concatenate", "Stack", "Cast", "ConvertToTensor",
}  # fmt: skip
#: unary elementwise ops: the operation table's view (rnnshap/operations.py): op class name → its entry
ELEMENTWISE = keras_op_families(lambda op: hasattr(keras.ops, op))
#: smooth ones take the midpoint derivative where |Δ| is tiny (or their closed-form secant), piecewise ones never
SMOOTH_UNARY = {n for n, entry in ELEMENTWISE.items() if entry.smooth}
PIECEWISE_UNARY = {n for n, entry in ELEMENTWISE.items() if not entry.smooth} | set(KERAS_PARAMETRIC_PIECEWISE)
#: the secant in closed form from the two results, for small |Δ|, instead of the midpoint derivative
NEARS = {n: getattr(dual, f"{entry.near}_secant_near") for n, entry in ELEMENTWISE.items() if entry.near}
#: elementwise binary ops (the operation table's view): Rescale with one input-dependent operand, two-player
#: Shapley with two; op class name → whether it is smooth (piecewise ones never take a derivative)
BINARY = {n: entry.smooth for n, entry in keras_binary().items()}
#: orderings along one axis, by the PyTorch engine's rule (their values; top_k's indices with their handle)
ORDERINGS = set(keras_structured("ordering"))
#: picks along one axis: the indices, with the handle their uses are attributed through (rnnshap/engines/keras/picked.py)
PICKS = set(keras_structured("pick"))
#: softmax, normalizations and reductions along axes (the operation table's view)
STRUCTURED = set(keras_structured("structured", "reduction"))
#: closed-form secant slopes for these unary ops (better conditioned than the quotient), with the
#: function (None: the op's own)
SLOPES: dict[str, tuple[Callable[[Tensor], Tensor] | None, Callable[[Tensor, Tensor], Tensor]]] = {
    n: dual.SLOPES_BY_NAME[entry.name] for n, entry in ELEMENTWISE.items() if entry.family == "secant"
}


def name(op: Any) -> str:
    return type(op).__name__


def is_keras_op(op: Any) -> bool:
    return is_op(op)


#: keras ops a Functional graph computes masks with (Masking: NotEqual + Any; Embedding: NotEqual;
#: Concatenate: ZerosLike, OnesLike, LogicalOr): they read only the input side (or only its shape)
MASK_OPS = {
    "NotEqual", "Equal", "Any", "All", "LogicalAnd", "LogicalOr", "LogicalNot", "LogicalXor", "ZerosLike", "OnesLike",
    "FullLike", "Greater", "GreaterEqual", "Less", "LessEqual", "Isnan", "Isfinite", "Isinf",
}  # fmt: skip


def is_mask_op(op: Any) -> bool:
    """Whether ``op`` is a keras op that computes a mask (run on the explained input, see ``walker.call_layer``)."""
    return type(op).__name__ in MASK_OPS and is_op(op)


def supported(op: Any) -> bool:
    """Whether rnnshap has a rule for the keras op ``op`` (on input-dependent arguments)."""
    n = name(op)
    return (
        n == "StopGradient" or n in ORDERINGS or n in PICKS or n in LINEAR or n in LINEAR_IN or n in BILINEAR
        or n in DIVISION or n in SMOOTH_UNARY or n in PIECEWISE_UNARY or n in BINARY or n in STRUCTURED
    )  # fmt: skip


#: linear ops that Keras computes in a narrower dtype than a float64 operand's where ``dual.narrowed`` says so
#: (Keras 3.15 on JAX: ``ops.mean`` in float32, cast back; ``ops.average`` returns float32): their exact twin,
#: ``twin(op, t)`` on one side, whose value the model rounds (``dual.rounded``)
_ROUNDING_TWINS: dict[str, Callable[[Any, Tensor], Tensor]] = {
    "Mean": lambda op, t: dual.mean(t, op.axis, op.keepdims),
    "Average": lambda op, t: dual.mean(t, op.axis),
}


def both(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The op on each side: a Dual (or a list of Duals for an op with several outputs). Where the model holds an
    operand narrower (``Dual.narrow``) and the op keeps it so, or the op itself computes narrower (``_ROUNDING_TWINS``),
    the model's values, with the exact op's multipliers and Rescale on the rounding (``dual.rounded``)."""
    x, r = op(*dual.side(args, 0), **dual.side(kwargs, 0)), op(*dual.side(args, 1), **dual.side(kwargs, 1))
    twin = _ROUNDING_TWINS.get(name(op))
    if twin is not None and _rounds(op, args, kwargs):
        (_, value), = [(p, d) for p, d in _positions(args, kwargs, op)]
        return dual.rounded(value.map(lambda t: twin(op, t)), x, r)
    if dual.held_narrow((args, kwargs)):
        mx = op(*dual.side(args, 0, model=True), **dual.side(kwargs, 0, model=True))
        mr = op(*dual.side(args, 1, model=True), **dual.side(kwargs, 1, model=True))
        if isinstance(x, (list, tuple)):
            return type(x)(_as_model(Dual(a, b), c, d) for a, b, c, d in zip(x, r, mx, mr, strict=True))
        return _as_model(Dual(x, r), mx, mr)
    if isinstance(x, (list, tuple)):
        return type(x)(Dual(a, b) for a, b in zip(x, r, strict=True))
    return Dual(x, r)


def _rounds(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``op`` (of ``_ROUNDING_TWINS``) rounds here: one input-dependent operand (no weights), whose dtype
    Keras computes narrower."""
    found = _positions(args, kwargs, op)
    if len(found) != 1 or found[0][1] is None or (name(op) == "Average" and (len(args) > 1 or kwargs.get("weights") is not None)):
        return False
    return dual.narrowed(found[0][1].x.dtype) is not None


def _as_model(exact: Dual, mx: Tensor, mr: Tensor) -> Dual:
    """A linear op's ``exact`` result (on the pass's widened operands) where the model computed ``mx``, ``mr`` on
    its own: the same where the model widened first, else its values by Rescale on the rounding."""
    if dtype_name(mx.dtype) == dtype_name(exact.x.dtype):
        return exact
    return dual.rounded(exact, mx, mr)


def _positions(args: tuple[Any, ...], kwargs: dict[str, Any], op: Any) -> list[tuple[Any, Dual]]:
    """(position, Dual) of the input-dependent arguments: an index of ``args`` or a keyword."""
    found: list[tuple[Any, Dual]] = []
    for index, value in enumerate(args):
        if isinstance(value, Dual):
            found.append((index, value))
        elif any(isinstance(v, Dual) for v in dual.flat_values(value)):
            found.append((index, None))  # type: ignore[arg-type]  # a Dual inside a list (a nest)
    for key, value in kwargs.items():
        if isinstance(value, Dual) or any(isinstance(v, Dual) for v in dual.flat_values(value)):
            found.append((key, value if isinstance(value, Dual) else None))  # type: ignore[arg-type]
    return found


def _with(args: tuple[Any, ...], kwargs: dict[str, Any], replace: dict[Any, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    new_args = tuple(replace.get(i, a) for i, a in enumerate(args))
    new_kwargs = {k: replace.get(k, v) for k, v in kwargs.items()}
    return new_args, new_kwargs


def _call(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], replace: dict[Any, Any]) -> Any:
    """``op`` with the arguments at the keys of ``replace`` replaced."""
    new_args, new_kwargs = _with(args, kwargs, replace)
    return op(*new_args, **new_kwargs)


def _unary_fn(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], where: Any) -> Callable[[Tensor], Tensor]:
    def fn(t: Tensor) -> Tensor:
        a, k = _with(args, kwargs, {where: t})
        return op(*a, **k)

    return fn


#: a normalization written with keras ops: the names of keras' ops for the marks of rnnshap/formulas/marks.py (roots and
#: inverse roots, and the ops that keep one: constants added, multiplied, clamped; moves)
_KINDS: dict[str, str] = {
    "Sqrt": marks.ROOT, "Rsqrt": marks.INVERSE_ROOT, "Power": marks.POWER, "Reciprocal": marks.RECIPROCAL,
    **dict.fromkeys(DIVISION, marks.DIVISION),
    **dict.fromkeys([
        "Add", "Subtract", "Multiply", "Negative", "Clip", "Maximum", "Fmax", "Reshape", "ExpandDims", "Squeeze",
        "Transpose", "BroadcastTo", "Cast", "Tile", "Repeat", "GetItem", "Slice", "Moveaxis", "Swapaxes", "Copy",
        "Identity", "ConvertToTensor", "StopGradient",
    ], marks.KEEPS),
}  # fmt: skip


def _mark(n: str, args: tuple[Any, ...], kwargs: dict[str, Any], position: Any, value: Dual) -> int | None:
    """The mark of the result of op ``n`` whose only input-dependent argument is ``value`` at ``position``."""
    kind = _KINDS.get(n)
    exponent = None
    if kind == marks.POWER:
        exponent = args[1] if len(args) > 1 else kwargs.get("x2")
        if position not in (0, "x1") or not isinstance(exponent, numbers.Real) or isinstance(exponent, bool):
            return None
    return marks.result_mark(kind, value.mark, exponent, numerator=position in (0, "x1"))


def _normalizing(op: Any, n: str, found: list[tuple[Any, Dual]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Dual | None:
    """A product of an inverse root with an input-dependent value, or a division of one by a root:
    the scale-weighted rule of the normalizations (:func:`dual.scaled`), as on the torch backend."""
    if len(found) != 2 or any(d is None for _, d in found):
        return None
    (pa, a), (pb, b) = found
    if n == "Multiply":
        scale = marks.scaled_product_scale(a.mark, b.mark)
        if scale is not None:
            return dual.scaled(a, b) if scale == 1 else dual.scaled(b, a)
    if n in DIVISION and pa in (0, "x1") and marks.scaled_quotient(a.mark, b.mark):
        return _quotient(op, args, kwargs, found, scaled=True)
    return None


def call_op(op: Any, run: Run, args: tuple[Any, ...], kwargs: dict[str, Any], unsupported: Unsupported) -> Any:
    """The keras op ``op(*args, **kwargs)`` with Duals among its arguments, by its rule."""
    n = name(op)
    found = _positions(args, kwargs, op)
    normalized = _normalizing(op, n, found, args, kwargs)
    if normalized is not None:
        return normalized
    result = _by_rule(op, n, found, args, kwargs, unsupported)
    if len(found) == 1 and found[0][1] is not None and isinstance(result, Dual):
        mark = _mark(n, args, kwargs, *found[0])
        if mark is not None:
            if result is found[0][1]:
                result = Dual(result.x, result.r, result.mask)
            result.mark = mark
    return result


def _by_rule(
    op: Any, n: str, found: list[tuple[Any, Dual]], args: tuple[Any, ...], kwargs: dict[str, Any], unsupported: Unsupported
) -> Any:
    where = [p for p, _ in found]
    if n == "Cast" and not str(op.dtype).startswith(("float", "bfloat")):
        raise unsupported(op, f"casts an input-dependent tensor to {op.dtype} (a step function); rnnshap has no rule for it")
    if n in LINEAR:
        return both(op, args, kwargs)
    if n == "StopGradient" and len(found) == 1 and found[0][1] is not None:
        return found[0][1]  # changes training, not the function: the identity (detach on the torch side)
    named = ("x", "x1", "x2", "inputs", "data")
    if n in LINEAR_IN and all(p in LINEAR_IN[n] or (isinstance(p, str) and p in named) for p in where):
        return both(op, args, kwargs)
    single = len(found) == 1 and found[0][1] is not None
    if n in BILINEAR or n in DIVISION:
        if len(found) == 1:
            position, value = found[0]
            if n in DIVISION and position not in (0, "x1"):
                if value is None:
                    raise unsupported(op, f"{n} by a nest of input-dependent tensors")
                return _divide_by(op, args, kwargs, position, value)
            return both(op, args, kwargs)
        if len(found) == 2 and all(d is not None for _, d in found):
            (pa, a), (pb, b) = found
            if n in DIVISION:  # the exact two-player Shapley rule in closed form, as on the torch backend
                return _quotient(op, args, kwargs, found)

            def fn(ta: Tensor, tb: Tensor) -> Tensor:
                new_args, new_kwargs = _with(args, kwargs, {pa: ta, pb: tb})
                return op(*new_args, **new_kwargs)

            return dual.bilinear(fn, a, b)
        raise unsupported(op, f"{n} of {len(found)} input-dependent tensors (the exact Shapley split is done for two)")
    if (n in SMOOTH_UNARY or n in PIECEWISE_UNARY) and single:
        position, value = found[0]
        if n in SLOPES and position in (0, "x") and len(args) + len(kwargs) == 1:
            unary, slope = SLOPES[n]
            return dual.secant(unary or _unary_fn(op, args, kwargs, position), value, slope)
        entry = ELEMENTWISE.get(n)
        kinks = entry.kinks if entry is not None and entry.smooth else ()
        of_value = _unary_fn(op, args, kwargs, position)
        return dual.rescale(of_value, value, smooth=n in SMOOTH_UNARY, near=NEARS.get(n), kinks=kinks)
    if n in BINARY:
        if single:
            position, value = found[0]
            return dual.rescale(_unary_fn(op, args, kwargs, position), value, smooth=BINARY[n])
        if len(found) == 2 and all(d is not None for _, d in found):
            (pa, a), (pb, b) = found

            def fn2(ta: Tensor, tb: Tensor) -> Tensor:
                new_args, new_kwargs = _with(args, kwargs, {pa: ta, pb: tb})
                return op(*new_args, **new_kwargs)

            return dual.shapley2(fn2, a, b, smooth=BINARY[n])
    if n in ORDERINGS and single and where in ([0], ["x"]):
        return _ordering(op, n, found[0][1], unsupported)
    if n in PICKS and single and where in ([0], ["x"]):
        return picked.pick(op, found[0][1], unsupported)
    if n in STRUCTURED and single and where in ([0], ["x"]):
        return _structured(op, n, found[0][1], args, kwargs, unsupported)
    if (
        n in ("LayerNorm", "RMSNorm") and where and where[0] in (0, "x")
        and all(d is not None for _, d in found[:1]) and len(found) == 1
    ):  # fmt: skip
        return _structured(op, n, found[0][1], args, kwargs, unsupported)
    raise unsupported(op, f"keras op {n} on an input-dependent tensor has no rule in rnnshap (at argument(s) {where})")


def _ordering(op: Any, n: str, value: Dual, unsupported: Unsupported) -> Dual | tuple[Dual, PickedIndices]:
    """``sort`` (ascending, along ``axis``) and ``top_k`` (its values along the last axis, and its indices
    with their handle, :mod:`~rnnshap.engines.keras.picked`): each value's change credited to the position
    that decided its rank (see :func:`dual.ranked_values`), the values of the torch backend's ``torch.sort``
    / ``torch.topk`` rules."""
    rank = len(value.x.shape)
    if n == "TopK":
        if not op.sorted:
            raise unsupported(
                op,
                "top_k with sorted=False returns its picks in no specified order, so the input's cannot be paired with "
                "the reference's by rank: use sorted=True",
            )
        values = dual.ranked_values(value, int(op.k), largest=True)
        index_x, index_r = (ops.top_k(t, k=int(op.k), sorted=True)[1] for t in (ops.stop_gradient(value.x), value.r))
        return values, picked.top_k_indices(value, index_x, index_r)
    axis = -1 if op.axis is None else int(op.axis) % rank
    if op.axis is None or axis == 0:
        raise unsupported(op, f"sort over axis {op.axis} orders across the samples of the batch")
    moved = value.map(lambda t: ops.moveaxis(t, axis, -1))
    ordered = dual.ranked_values(moved, int(moved.x.shape[-1]), largest=False)
    return ordered.map(lambda t: ops.moveaxis(t, -1, axis))


def _quotient(
    op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], found: list[tuple[Any, Dual]], scaled: bool = False
) -> Dual:
    """``a / b`` of two input-dependent tensors (``found``: numerator, denominator): its value the op's own
    on each side, its multipliers those of the torch backend's ``Quotient`` (``scaled``: its
    ``ScaledQuotient``, for a root ``b``), :func:`rnnshap.formulas.pairs.quotient_multipliers` and
    :func:`rnnshap.formulas.pairs.scaled_quotient_multipliers`."""
    (pa, a), (pb, b) = found
    ax, bx = ops.stop_gradient(a.x), ops.stop_gradient(b.x)
    formula = pairs.scaled_quotient_multipliers if scaled else pairs.quotient_multipliers
    m_a, m_b = formula(KERAS, ax, bx, a.r, b.r)
    value = _call(op, args, kwargs, {pa: ax, pb: bx})
    reference = _call(op, args, kwargs, {pa: a.r, pb: b.r})
    return Dual(dual.attach(value, [(a.x, m_a), (b.x, m_b)]), reference)


def _divide_by(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], position: Any, denominator: Dual) -> Dual:
    r"""``c / b`` for a constant ``c``: the op's value on each side, the multiplier of ``b`` that of
    :func:`rnnshap.formulas.pairs.quotient_multipliers` with ``c`` its own reference (:math:`-c/(b\,b_r)`)."""
    numerator = args[0] if position != 0 and args else kwargs.get("x1")
    bx = ops.stop_gradient(denominator.x)
    if numerator is None:
        constant: Any = 1.0
    elif isinstance(numerator, (int, float)):
        constant = float(numerator)
    else:
        constant = ops.cast(ops.convert_to_tensor(numerator), bx.dtype)
    _, m_b = pairs.quotient_multipliers(KERAS, constant, bx, constant, denominator.r)
    value = _call(op, args, kwargs, {position: bx})
    reference = _call(op, args, kwargs, {position: denominator.r})
    return Dual(dual.attach(value, [(denominator.x, m_b)]), reference)


def _axes(axis: Any, rank: int) -> list[int]:
    if axis is None:
        return list(range(1, rank))
    return [a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])]


def _structured(op: Any, n: str, value: Dual, args: tuple[Any, ...], kwargs: dict[str, Any], unsupported: Unsupported) -> Dual:
    rank = len(value.x.shape)
    if n in ("Softmax", "LogSoftmax"):
        axis = op.axis if not isinstance(op.axis, (list, tuple)) or len(op.axis) != 1 else op.axis[0]
        return dual.softmax(value, axis) if n == "Softmax" else dual.log_softmax(value, axis)
    if n == "Logsumexp":
        if op.axis is None:
            raise unsupported(op, "logsumexp over every axis mixes the samples of the batch")
        return dual.logsumexp(value, _axes(op.axis, rank), keepdims=op.keepdims)
    if n in ("Max", "Min", "Amax", "Amin"):
        axes = _axes(op.axis, rank) if op.axis is not None else None
        if axes is None or len(axes) != 1 or 0 in axes or getattr(op, "initial", None) is not None:
            raise unsupported(op, f"{n} over axes {op.axis}: rnnshap routes a max over one non-batch axis")
        if n in ("Max", "Amax"):
            return dual.max_over(value, axes[0], keepdims=op.keepdims)
        negated = dual.max_over(value.map(lambda t: -t), axes[0], keepdims=op.keepdims)
        return negated.map(lambda t: -t)
    # LayerNorm / RMSNorm ops: the weights are constants (keras variables)
    bound = dict(zip(("x", "gamma", "beta") if n == "LayerNorm" else ("x", "scale"), args, strict=False))
    bound.update(kwargs)
    axes = _axes(op.axis, rank)
    epsilon = op.epsilon if op.epsilon is not None else keras.config.epsilon()
    if n == "LayerNorm":
        out = dual.standardize(value, axes, epsilon, centre=True, centre_output=not op.rms_scaling)
        gamma, beta = bound.get("gamma"), bound.get("beta")
    else:
        out = dual.standardize(value, axes, epsilon, centre=False)
        gamma, beta = bound.get("scale"), None
    shape = [1] * rank
    for a in axes:
        shape[a] = value.x.shape[a]
    weight_shape = shape if len(axes) > 1 or axes != [rank - 1] else [-1]
    if gamma is not None:
        g = ops.reshape(ops.cast(ops.convert_to_tensor(gamma), value.x.dtype), weight_shape)
        out = out.map(lambda t: t * g)
    if beta is not None and not op.rms_scaling:
        b = ops.reshape(ops.cast(ops.convert_to_tensor(beta), value.x.dtype), weight_shape)
        out = out.map(lambda t: t + b)
    if dual.narrowed(value.x.dtype) is not None:  # Keras computes it in float32 (on JAX): the model's values, rounded
        own = both(op, args, kwargs)
        return dual.rounded(out, own.x, own.r)
    return out
