r"""The rules of rnnshap on pairs of Keras tensors: the input side and the reference side.

A :class:`Dual` holds the value of one tensor of the model on the explained input (``x``, watched by
the backend's autodiff) and on its reference (``r``, a constant). Linear operations run on both
sides and keep their ordinary gradient. A nonlinear operation returns its exact value on both sides
and attaches its rule's multiplier ``m`` to the input side as

.. math:: y = \operatorname{sg}(f(u)) + \operatorname{sg}(m)\,(u - \operatorname{sg}(u)),

whose value is :math:`f(u)` exactly (``u - sg(u)`` is an exact zero) and whose gradient with
respect to :math:`u` is :math:`m`. One gradient of the output then composes the multipliers by the
chain rule, as the PyTorch side does with its custom autograd Functions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
from keras import ops

from ...formulas import bind, orderings, pairs
from ...formulas import secant as formulas
from ...formulas.keras_ops import KERAS
from .backend import Tensor, dtype_name, is_traced
from .backend import derivative as autodiff

Fn = Callable[[Tensor], Tensor]
#: the secant slope of an activation from its two results and Δ, for small |Δ|
Near = Callable[[Tensor, Tensor, Tensor], Tensor]


def flat_values(values: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts (a keras op's arguments), in order."""
    if isinstance(values, (list, tuple)):
        return [item for v in values for item in flat_values(v)]
    if isinstance(values, dict):
        return [item for v in values.values() for item in flat_values(v)]
    return [values]


class Dual:
    """One tensor on the input side and on the reference side (a plain class: keras's tree must not
    flatten it), with the Keras mask of the explained input where one is set (both sides use it)."""

    __slots__ = ("x", "r", "mask", "mark", "narrow")

    def __init__(self, x: Tensor, r: Tensor, mask: Tensor | None = None, narrow: str | None = None) -> None:
        self.x, self.r, self.mask = x, r, mask
        #: a root (1: sqrt) or an inverse root (-1: rsqrt) of keras ops, whose products take the
        #: scale-weighted rule of the normalizations (see ``kops.call_op``); None for anything else
        self.mark: int | None = None
        #: the dtype of the model's own tensor where it is narrower than ``x`` and ``r`` (which hold its values
        #: widened, exactly: Keras 3.15 on JAX returns ``ops.tanh`` of a float64 tensor in float32), else None;
        #: a keras op on it runs as the model runs it, in that dtype (:func:`as_model`)
        self.narrow = narrow

    def map(self, fn: Fn) -> Dual:
        """A linear operation applied to both sides (as the model computes it where it holds this tensor narrower:
        :func:`as_model`)."""
        out = Dual(fn(self.x), fn(self.r))
        return out if self.narrow is None else as_model(out, fn, self)

    def __add__(self, other: Dual) -> Dual:
        out = Dual(self.x + other.x, self.r + other.r)
        return out if self.narrow is None and other.narrow is None else as_model(out, ops.add, self, other)

    def __sub__(self, other: Dual) -> Dual:
        out = Dual(self.x - other.x, self.r - other.r)
        return out if self.narrow is None and other.narrow is None else as_model(out, ops.subtract, self, other)

    def scale(self, factor: float) -> Dual:
        return self.map(lambda t: t * factor)

    def __repr__(self) -> str:
        return f"Dual(shape={tuple(self.x.shape)}, dtype={dtype_name(self.x.dtype)})"


def side(values: Any, which: int, model: bool = False) -> Any:
    """``values`` (a structure of lists, tuples and dicts) with every Dual replaced by its input
    side (0) or reference side (1); ``model``: as the model holds it (in its ``narrow`` dtype where set)."""
    if isinstance(values, Dual):
        t = values.x if which == 0 else values.r
        return model_side(t, values.narrow) if model else t
    if isinstance(values, (list, tuple)):
        return type(values)(side(v, which, model) for v in values)
    if isinstance(values, dict):
        return {key: side(v, which, model) for key, v in values.items()}
    return values


def held_narrow(values: Any) -> bool:
    """Whether a Dual in ``values`` (a structure of lists, tuples and dicts) is held narrower by the model."""
    if isinstance(values, Dual):
        return values.narrow is not None
    if isinstance(values, (list, tuple)):
        return any(held_narrow(v) for v in values)
    if isinstance(values, dict):
        return any(held_narrow(v) for v in values.values())
    return False


def small_delta_threshold(dtype: Any, smooth: bool) -> float:
    """|Δ| below which the multiplier is the derivative (at the midpoint) instead of the quotient
    (:func:`rnnshap.formulas.secant.small_delta_threshold`)."""
    return formulas.small_delta_threshold(KERAS, dtype, smooth)


def attach(value: Tensor, pairs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """``value`` with gradient ``m`` with respect to each operand ``u`` of ``pairs`` ``(u, m)``."""
    out = ops.stop_gradient(value)
    for operand, multiplier in pairs:
        out = out + ops.stop_gradient(multiplier) * (operand - ops.stop_gradient(operand))
    return out


#: the secant slope of sigmoid and tanh from their two results for small |Δ| (rnnshap/formulas/secant.py)
sigmoid_secant_near: Near = bind(formulas.sigmoid_secant_near, KERAS)
tanh_secant_near: Near = bind(formulas.tanh_secant_near, KERAS)


def _autodiff(fn: Fn) -> Fn:
    def derivative(u: Tensor) -> Tensor:
        return autodiff(fn, u)

    return derivative


def rescale(
    fn: Fn, u: Dual, smooth: bool = True, derivative: Fn | None = None, near: Near | None = None, kinks: Sequence[float] = ()
) -> Dual:
    """Rescale rule for an elementwise ``fn``: m = Δy/Δu where |Δu| is above the threshold, below it
    the secant in closed form ``near`` where given, else ``fn'`` (``derivative``) at the midpoint, except
    across ``kinks`` (where a smooth ``fn``'s second derivative jumps: the quotient there)."""
    ux = ops.stop_gradient(u.x)
    yx, yr = fn(model_side(ux, u.narrow)), fn(model_side(u.r, u.narrow))
    multiplier = secant_multiplier(yx, yr, ux, u.r, derivative or _autodiff(fn), smooth, near, kinks)
    return _widened_result(yx, yr, u, [(u.x, multiplier)])


def _widened_result(yx: Tensor, yr: Tensor, like: Dual, pairs_: Sequence[tuple[Tensor, Tensor]]) -> Dual:
    """The Dual of an elementwise op's results ``yx``, ``yr`` with the multipliers ``pairs_``: the results
    widened to the operands' dtype where the op returned a narrower one (both sides: the model's values, exactly),
    ``narrow`` the dtype the model holds them in."""
    narrow = dtype_name(yx.dtype) if dtype_name(yx.dtype) != dtype_name(like.x.dtype) else None
    out = Dual(attach(widened(yx, like.x), pairs_), widened(yr, like.r), narrow=narrow)
    return out


def secant_multiplier(
    yx: Tensor,
    yr: Tensor,
    ux: Tensor,
    ur: Tensor,
    derivative: Fn | None,
    smooth: bool = True,
    near: Near | None = None,
    kinks: Sequence[float] = (),
) -> Tensor:
    """The Rescale multiplier of ``y = f(u)`` (rnnshap/formulas/secant.py): Δy/Δu, or where |Δu| is below
    the threshold ``near(yx, yr, Δu)`` (the secant in closed form, for sigmoid and tanh) or else
    ``derivative`` at the midpoint (at ``ux`` for piecewise ``f``), where it is finite and ``[ur, ux]``
    holds none of ``kinks`` inside; 0 where nothing moves and the multiplier is not finite.

    Results less precise than their operands (Keras 3.15 on JAX computes ``ops.tanh``, ``sin``, ``arctan``
    ... of a float64 tensor in float32: keras-team/keras#23223) are widened first, so that the quotient
    times Δu gives back the model's own Δy, not Δy rounded again to the result's precision."""
    yx, yr = widened(yx, ux), widened(yr, ur)
    if near is not None:
        return formulas.near_rescale_multiplier(KERAS, near, yx, yr, ux, ur)
    assert derivative is not None
    return formulas.rescale_multiplier(KERAS, yx, yr, ux, ur, derivative, smooth, tuple(kinks))


def widened(y: Tensor, like: Tensor) -> Tensor:
    """``y`` in the dtype of ``like`` where that is the wider floating dtype (exact: a float32 is a float64);
    ``y`` itself otherwise (on TensorFlow and for float32 models: the same tensor, the same graph)."""
    wide, narrow = dtype_name(like.dtype), dtype_name(y.dtype)
    if wide != narrow and wide == "float64" and narrow in ("float32", "float16", "bfloat16"):
        return ops.cast(y, wide)
    return y


def narrowed(dtype: Any) -> str | None:
    """The dtype Keras computes in where it computes "in at least float32" (``backend.result_type(dtype,
    "float32")``: ``ops.mean``, ``ops.var``, the normalization layers, ``ops.dot_product_attention``), when that is
    narrower than ``dtype``: float32 for float64 on Keras 3.15's JAX backend (keras-team/keras#23223); None
    elsewhere (TensorFlow, torch, float32 and half-precision models: nothing is rounded there)."""
    name = dtype_name(dtype)
    if name != "float64":
        return None
    computes = dtype_name(keras.backend.result_type(name, "float32"))
    return computes if computes != name else None


def rounding_multiplier(exact_x: Tensor, exact_r: Tensor, yx: Tensor, yr: Tensor) -> Tensor:
    """The Rescale multiplier of the model's rounding ``y = round(e)`` of an exact value ``e`` (an elementwise
    function of it): Δy/Δe; where Δe = 0 (so Δy = 0), its derivative 1; 0 where Δy = 0 (a tiny Δe that the
    rounding does not see)."""
    delta, change = exact_x - exact_r, widened(yx, exact_x) - widened(yr, exact_r)
    moved = delta != 0
    return ops.where(moved, change / ops.where(moved, delta, ops.ones_like(delta)), ops.ones_like(delta))


def rounded(exact: Dual, yx: Tensor, yr: Tensor) -> Dual:
    """The model's own values ``yx``, ``yr`` of a quantity it computes in a narrower dtype than the pass (a
    Keras op that computes a float64 tensor in float32, or returns float32), whose exact value ``exact`` the
    pass computed by its rules: the rounding is an elementwise function of the exact value, by Rescale
    (:func:`rounding_multiplier`). The values are the model's, bit for bit (widened, exactly: ``narrow`` says
    the model's dtype where it is narrower), so the attributions add up to the model's own outputs."""
    if is_traced(yr):
        # Under jax.jit XLA may fuse and reorder the model's float32 arithmetic: other values than the model's own
        # call gives. The engine then runs the pass eagerly (it takes a TypeError of the trace as that sign).
        raise TypeError("the model rounds to float32 here: its own values are those of its eager call")
    ex = ops.stop_gradient(exact.x)
    multiplier = rounding_multiplier(ex, exact.r, yx, yr)
    narrow = dtype_name(yx.dtype) if dtype_name(yx.dtype) != dtype_name(ex.dtype) else None
    return Dual(attach(widened(yx, ex), [(exact.x, multiplier)]), widened(yr, exact.r), narrow=narrow)


def as_model(exact: Dual, fn: Callable[..., Tensor], *operands: Any) -> Dual:
    """``exact``, the pass's value of ``fn(*operands)`` by its rule (in the operands' dtype), as the model computes
    it: where an operand is held narrower by the model (``narrow``: a float32 ``ops.tanh`` of a float64 tensor on
    Keras 3.15's JAX) and ``fn`` of the model's operands stays narrower, the model's values by Rescale on that
    rounding (:func:`rounded`); where it widens them first (a product with a float64 weight), the model computes
    what the pass does, and ``exact`` is returned as it is. Where no operand is narrow (TensorFlow, torch): ``exact``."""
    if not any(held_narrow(o) for o in operands):
        return exact
    yx = fn(*side(operands, 0, model=True))
    if dtype_name(yx.dtype) == dtype_name(exact.x.dtype):
        return exact
    return rounded(exact, yx, fn(*side(operands, 1, model=True)))


def model_side(t: Tensor, narrow: str | None) -> Tensor:
    """A side of a Dual as the model holds it: in its ``narrow`` dtype where that is set (exact: the values are
    of that dtype)."""
    return t if narrow is None else ops.cast(t, narrow)


def mean(t: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """``ops.mean``, exact in ``t``'s dtype: where Keras computes it narrower (:func:`narrowed`), the sum over
    the count (the float64 twin of the model's float32 mean, see :func:`rounded`)."""
    if narrowed(t.dtype) is None:
        return ops.mean(t, axis, keepdims=keepdims)
    rank = len(t.shape)
    axes = range(rank) if axis is None else [a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])]
    count = 1
    for a in axes:
        count *= int(t.shape[a])
    return ops.sum(t, axis, keepdims=keepdims) / ops.convert_to_tensor(float(count), t.dtype)


def sigmoid(u: Dual) -> Dual:
    return rescale(ops.sigmoid, u, near=sigmoid_secant_near)


def tanh(u: Dual) -> Dual:
    return rescale(ops.tanh, u, near=tanh_secant_near)


def product(a: Dual, b: Dual) -> Dual:
    """Exact two-player Shapley rule for a ⊙ b: m_a = (b + b_r)/2, m_b = (a + a_r)/2."""
    ax, bx = ops.stop_gradient(a.x), ops.stop_gradient(b.x)
    m_a, m_b = pairs.midpoint_multipliers(KERAS, ax, bx, a.r, b.r)
    return as_model(Dual(attach(ax * bx, [(a.x, m_a), (b.x, m_b)]), a.r * b.r), ops.multiply, a, b)


def scaled(c: Dual, s: Dual) -> Dual:
    """c ⊙ s for a scale s (an inverse deviation), as the PyTorch side's
    :func:`rnnshap.rules.structured.scaled`: the two orders weighted by the scales,
    m_c = 2 s s_r / (s + s_r), m_s = (s c + s_r c_r) / (s + s_r); bounded on all-zero rows. Where s
    and s_r are not of one sign (a weight of 0), the Shapley rule, the limit of this one there.

    Every normalization takes it, however it is written: the layers, ``ops.layer_normalization`` /
    ``ops.rms_normalization``, and the same written with keras ops (a product with an inverse root,
    a division by a root: see ``kops.call_op``), as on the PyTorch side (torch's ``F.layer_norm`` and
    the product of an inverse root, rnnshap/engines/pytorch/handwritten_norms.py), so both backends agree."""
    cx, sx = ops.stop_gradient(c.x), ops.stop_gradient(s.x)
    m_c, m_s = pairs.scaled_multipliers(KERAS, cx, sx, c.r, s.r)
    return Dual(attach(cx * sx, [(c.x, m_c), (s.x, m_s)]), c.r * s.r)


def _shift(u: Dual, axis: Any) -> Tensor:
    """The shift of a softmax or logsumexp (:func:`rnnshap.formulas.pairs.common_shift`), a constant."""
    max_x, max_r = ops.max(ops.stop_gradient(u.x), axis, keepdims=True), ops.max(u.r, axis, keepdims=True)
    return ops.stop_gradient(pairs.common_shift(KERAS, max_x, max_r))


def softmax(u: Dual, axis: Any = -1) -> Dual:
    """softmax = exp(u − c − log Σ exp(u − c)): Rescale on exp and log (their closed-form secants), the rest linear.

    The shift c (the larger maximum of the two sides, a constant) cancels; it keeps exp bounded.
    """
    if u.narrow is not None:  # the model's softmax in its dtype: the exact one, then its rounding
        return as_model(softmax(_held_wide(u), axis), lambda t: ops.softmax(t, axis), u)
    shifted = u.map(lambda t: t - _shift(u, axis))
    return secant(ops.exp, shifted - log_of_sum(shifted, axis), exp_slope)


def _held_wide(u: Dual) -> Dual:
    """``u`` as the pass holds it (its values widened, exactly), for the exact rule whose result the model rounds."""
    return Dual(u.x, u.r, u.mask)


def log_softmax(u: Dual, axis: Any = -1) -> Dual:
    if u.narrow is not None:
        return as_model(log_softmax(_held_wide(u), axis), lambda t: ops.log_softmax(t, axis), u)
    shifted = u.map(lambda t: t - _shift(u, axis))
    return shifted - log_of_sum(shifted, axis)


def log_of_sum(shifted: Dual, axis: Any) -> Dual:
    r"""log Σ exp(``shifted``) over ``axis`` (keepdims; ``shifted`` is at most 0, its largest entry on one
    side 0): Rescale on exp, the linear sum, Rescale on log, as the PyTorch side's
    :func:`rnnshap.rules.structured.shifted_logsumexp`.

    Where one side's sum underflows (its maximum lies more than ~87 below the other's in float32: confident
    logits of a few hundred), its log is taken from a stable logsumexp instead of :math:`\log 0`, and the
    log's multiplier is the quotient :math:`(\log S - \log S_r)/(S - S_r)` of those logs (the other side's
    sum is at least 1, so the quotient is finite and the values still add up). The multipliers are the
    formulas of rnnshap/formulas/ (the exp secant, :func:`rnnshap.formulas.pairs.log_sum_multiplier`)."""
    e = secant(ops.exp, shifted, exp_slope)
    total = e.map(lambda t: ops.sum(t, axis, keepdims=True))
    tx = ops.stop_gradient(total.x)
    log_x = pairs.stable_log(KERAS, tx, ops.logsumexp(ops.stop_gradient(shifted.x), axis, keepdims=True))
    log_r = pairs.stable_log(KERAS, total.r, ops.logsumexp(shifted.r, axis, keepdims=True))
    multiplier = pairs.log_sum_multiplier(KERAS, tx, total.r, log_x, log_r)
    return Dual(attach(log_x, [(total.x, multiplier)]), log_r)



def max_over(u: Dual, axis: int, keepdims: bool = False) -> Dual:
    """A max reduction over ``axis`` by shap's max-pool rule, as ``rnnshap.rules.routed_max``.

    With y = max x, y_r = max r and c = max(y, y_r), the part c − y_r is credited to the position
    of x's maximum and y − c to that of r's; a position's multiplier is its credit over its Δ.
    """
    ux = ops.stop_gradient(u.x)
    y, y_r = ops.max(ux, axis, keepdims=True), ops.max(u.r, axis, keepdims=True)
    credit_x, credit_r = pairs.max_credits(KERAS, y, y_r)
    depth = ux.shape[axis]
    at_x = ops.one_hot(ops.argmax(ux, axis), depth, axis=axis, dtype=ux.dtype)
    at_r = ops.one_hot(ops.argmax(u.r, axis), depth, axis=axis, dtype=ux.dtype)
    multiplier = (at_x * credit_x + at_r * credit_r) * pairs.inverse_delta(KERAS, ux - u.r)
    out = ops.stop_gradient(y) + ops.sum(ops.stop_gradient(multiplier) * (u.x - ux), axis, keepdims=True)
    if not keepdims:
        out, y_r = ops.squeeze(out, axis), ops.squeeze(y_r, axis)
    return Dual(out, y_r)


def bilinear(fn: Callable[[Tensor, Tensor], Tensor], a: Dual, b: Dual) -> Dual:
    """Exact two-player Shapley rule for ``fn(a, b)`` linear in each operand (matmul, einsum, a ⊙ b):
    the multiplier of ``a`` is ``fn(·, (b + b_r)/2)``, that of ``b`` is ``fn((a + a_r)/2, ·)``.

    The value is ``fn(a, b)`` exactly: the two added terms are ``fn`` of an exact zero.
    """
    ax, bx = ops.stop_gradient(a.x), ops.stop_gradient(b.x)
    b_mid, a_mid = (ops.stop_gradient(m) for m in pairs.midpoint_multipliers(KERAS, ax, bx, a.r, b.r))
    out = ops.stop_gradient(fn(ax, bx)) + fn(a.x - ax, b_mid) + fn(a_mid, b.x - bx)
    return as_model(Dual(out, fn(a.r, b.r)), fn, a, b)


#: the closed-form secant slopes (rnnshap/formulas/secant.py) on keras tensors: ``slope(x, r)``
exp_slope: Callable[[Tensor, Tensor], Tensor] = bind(formulas.exp_slope, KERAS)
rsqrt_slope: Callable[[Tensor, Tensor], Tensor] = bind(formulas.rsqrt_slope, KERAS)
reciprocal_slope: Callable[[Tensor, Tensor], Tensor] = bind(formulas.reciprocal_slope, KERAS)

#: the closed-form secant slopes of the catalog's ``"secant"`` entries (rnnshap/rules/catalog.py), by the
#: entry's name, with the function itself (None: the keras op's own): ``rnnshap.formulas.secant.SLOPES_BY_NAME``
#: on keras tensors
_FUNCTIONS: dict[str, Fn | None] = {
    "sqrt": ops.sqrt, "rsqrt": ops.rsqrt, "square": ops.square, "reciprocal": ops.reciprocal, "exp": ops.exp,
    "exp2": None, "expm1": ops.expm1, "log": ops.log, "log2": None, "log10": None, "log1p": ops.log1p,
}  # fmt: skip
SLOPES_BY_NAME: dict[str, tuple[Fn | None, Callable[[Tensor, Tensor], Tensor]]] = {
    name: (_FUNCTIONS[name], bind(slope, KERAS)) for name, slope in formulas.SLOPES_BY_NAME.items()
}


def secant(fn: Fn, u: Dual, slope: Callable[[Tensor, Tensor], Tensor]) -> Dual:
    """Rescale with the secant slope in closed form (as :mod:`rnnshap.rules.secant`): exact for every Δ,
    0 where nothing moves and the slope is not finite."""
    ux = ops.stop_gradient(u.x)
    m = formulas.still_zero(KERAS, slope(ux, u.r), ux, u.r)
    return as_model(Dual(attach(fn(ux), [(u.x, m)]), fn(u.r)), fn, u)


def reciprocal(u: Dual) -> Dual:
    return secant(ops.reciprocal, u, reciprocal_slope)


def shapley2(fn: Callable[[Tensor, Tensor], Tensor], a: Dual, b: Dual, smooth: bool = True) -> Dual:
    """Exact two-player Shapley rule for an elementwise ``fn(a, b)`` (broadcasting), by
    :func:`rnnshap.formulas.pairs.coalition_multipliers` (the PyTorch engine's formula):
    φ_a = ½[fn(a, b_r) − fn(a_r, b_r) + fn(a, b) − fn(a_r, b)], multiplier φ_a / Δa (where |Δa| is
    tiny, the derivative at the midpoint, or at the input for a piecewise ``fn``, averaged over b's two
    values as φ is); the same for b."""
    ax, bx = ops.stop_gradient(a.x), ops.stop_gradient(b.x)
    wide = ax if dtype_name(ax.dtype) == "float64" else bx
    own = fn(model_side(ax, a.narrow), model_side(bx, b.narrow))
    held = dtype_name(own.dtype)

    def held_fn(p: Tensor, q: Tensor) -> Tensor:  # as the model computes it, on its operands (widened after: exact)
        return widened(fn(model_side(p, a.narrow), model_side(q, b.narrow)), wide)

    values = {3: widened(own, wide), 0: held_fn(a.r, b.r), 1: held_fn(ax, b.r), 2: held_fn(a.r, bx)}
    shape = ops.shape(values[3])

    def derivative(players: list[Tensor], i: int) -> Tensor:
        point = ops.broadcast_to(players[i], shape)
        return autodiff(lambda p: held_fn(p, players[1]) if i == 0 else held_fn(players[0], p), point)

    m_a, m_b = pairs.coalition_multipliers(KERAS, values, [ax, bx], [a.r, b.r], derivative, smooth)
    out = Dual(attach(values[3], [(a.x, m_a), (b.x, m_b)]), values[0])
    out.narrow = held if held != dtype_name(out.x.dtype) else None
    return out


def standardize(u: Dual, axes: Sequence[int], epsilon: float, centre: bool = True, centre_output: bool | None = None) -> Dual:
    r"""``c / sqrt(mean(c ⊙ c) + ε)`` over ``axes``, ``c`` the centred input, as the PyTorch side's
    :func:`rnnshap.rules.structured.standardize`: centring and the mean linear, c ⊙ c by the Shapley
    rule, :math:`(v + \epsilon)^{-1/2}` by Rescale with its closed-form secant, the product by the
    scale-weighted rule of :func:`scaled`. ``centre=False``: the variance of the input itself (RMS);
    ``centre_output=False``: the input, not ``c``, times the inverse deviation (Keras's ``rms_scaling``)."""
    axes = list(axes)
    c = u.map(lambda t: t - mean(t, axes, keepdims=True)) if centre else u
    square = product(c, c)
    variance = square.map(lambda t: mean(t, axes, keepdims=True) + ops.convert_to_tensor(epsilon, t.dtype))
    inverse = secant(ops.rsqrt, variance, rsqrt_slope)
    return scaled(c if (centre_output is None or centre_output) else u, inverse)


def logsumexp(u: Dual, axis: Any, keepdims: bool = False) -> Dual:
    """log Σ exp(u): Rescale on exp, the linear sum, Rescale on log (the shift c cancels)."""
    if u.narrow is not None:
        return as_model(logsumexp(_held_wide(u), axis, keepdims), lambda t: ops.logsumexp(t, axis, keepdims=keepdims), u)
    shift = _shift(u, axis)
    out = log_of_sum(u.map(lambda t: t - shift), axis).map(lambda t: t + shift)
    return out if keepdims else out.map(lambda t: ops.squeeze(t, axis))


class PickedIndices(Dual):
    """Integer indices picked from an input-dependent tensor (``argmax``, ``argmin``, ``top_k``'s indices;
    a step function of its values), on both sides, with their *handle*: the input side's indices as
    float64 values whose gradient is the pick's multipliers (:func:`picked_index`), as the PyTorch
    engine carries them (rnnshap/engines/pytorch/picked.py). The uses of the indices are attributed
    through the handle (:mod:`~rnnshap.engines.keras.picked`); ``origin`` names the op that picked them."""

    __slots__ = ("handle", "origin")

    def __init__(self, x: Tensor, r: Tensor, handle: Tensor, origin: str) -> None:
        super().__init__(x, r)
        self.handle, self.origin = handle, origin

    def values(self, dtype: Any = "float64") -> Dual:
        """The indices as numbers in ``dtype``: the handle on the input side, the reference's indices."""
        return Dual(ops.cast(self.handle, dtype), ops.cast(self.r, dtype))


def _order(t: Tensor, k: int, largest: bool) -> Tensor:
    """The positions of the ``k`` largest (or smallest) entries along the last axis, ties in the order of
    their positions (a stable sort: ``-t`` ascending for the largest)."""
    return ops.argsort(-t if largest else t, axis=-1)[..., :k]


def ranked_values(u: Dual, k: int, largest: bool) -> Dual:
    """The values at ranks 0..k−1 along the last axis (from the largest, or the smallest), each with its
    change credited to the position that decided its rank: the PyTorch engine's rule for ``sort`` and
    ``topk`` (``rnnshap.rules.maxima.ranked_values``; at rank 0 shap's max-pool rule), so both
    backends give the same values."""
    ux, r = ops.stop_gradient(u.x), u.r
    order_x, order_r = _order(ux, k, largest), _order(r, k, largest)
    deciding, delta_d, y, y_r = orderings.deciding(KERAS, ux, r, order_x, order_r, largest)
    factor = pairs.usable_quotient(KERAS, y - y_r, delta_d)
    out = ops.stop_gradient(y) + ops.take_along_axis(u.x - ux, deciding, -1) * ops.stop_gradient(factor)
    return Dual(out, y_r)


def picked_index(u: Dual, index_x: Tensor, index_r: Tensor, largest: bool) -> Tensor:
    r"""The handle of the indices ``index_x`` (``(..., k)``: the positions at ranks 0..k−1 along the last
    axis of ``u``; ``index_r`` the reference's), as ``rnnshap.rules.maxima.picked_index``: the indices
    as float64 values whose gradient is the multiplier of a step function of ``u``. Whatever a use makes
    of an index's change :math:`i_x - i_r` is credited to the position that decided its rank
    (:func:`rnnshap.formulas.orderings.deciding`), with multiplier :math:`(i_x - i_r) / \Delta u` there; nothing where the index
    did not move. Where an index moved but no position moved past its rank (ties ordered differently
    on the two sides), the position of the row that moved most takes the credit."""
    ux, r = ops.stop_gradient(u.x), u.r
    deciding, delta, _, _ = orderings.deciding(KERAS, ux, r, index_x, index_r, largest)
    moved = ops.cast(index_x - index_r, "float64")
    deciding, factor = orderings.index_credit(KERAS, ux, r, deciding, delta, moved)
    routed = ops.cast(ops.take_along_axis(u.x - ux, deciding, -1), "float64")
    return ops.cast(index_x, "float64") + routed * ops.stop_gradient(factor)
