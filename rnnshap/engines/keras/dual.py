r"""The rules of rnnshap on pairs of TensorFlow tensors: the input side and the reference side.

A :class:`Dual` holds the value of one tensor of the model on the explained input (``x``, watched by
a ``tf.GradientTape``) and on its reference (``r``, a constant). Linear operations run on both
sides and keep their ordinary gradient. A nonlinear operation returns its exact value on both sides
and attaches its rule's multiplier ``m`` to the input side as

.. math:: y = \operatorname{sg}(f(u)) + \operatorname{sg}(m)\,(u - \operatorname{sg}(u)),

whose value is :math:`f(u)` exactly (``u - sg(u)`` is an exact zero) and whose gradient with
respect to :math:`u` is :math:`m`. One gradient of the output then composes the multipliers by the
chain rule, as the PyTorch side does with its custom autograd Functions.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ml_dtypes  # (a dependency of keras and tensorflow)
import tensorflow as tf

Fn = Callable[[tf.Tensor], tf.Tensor]
#: the secant slope of an activation from its two results and Δ, for small |Δ|
Near = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


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

    __slots__ = ("x", "r", "mask", "mark")

    def __init__(self, x: tf.Tensor, r: tf.Tensor, mask: tf.Tensor | None = None) -> None:
        self.x, self.r, self.mask = x, r, mask
        #: a root (1: sqrt) or an inverse root (-1: rsqrt) of keras ops, whose products take the
        #: scale-weighted rule of the normalizations (see ``kops.call_op``); None for anything else
        self.mark: int | None = None

    def map(self, fn: Fn) -> Dual:
        """A linear operation applied to both sides."""
        return Dual(fn(self.x), fn(self.r))

    def __add__(self, other: Dual) -> Dual:
        return Dual(self.x + other.x, self.r + other.r)

    def __sub__(self, other: Dual) -> Dual:
        return Dual(self.x - other.x, self.r - other.r)

    def scale(self, factor: float) -> Dual:
        return Dual(self.x * factor, self.r * factor)

    def __repr__(self) -> str:
        return f"Dual(shape={tuple(self.x.shape)}, dtype={self.x.dtype.name})"


def side(values: Any, which: int) -> Any:
    """``values`` (a structure of lists, tuples and dicts) with every Dual replaced by its input
    side (0) or reference side (1)."""
    if isinstance(values, Dual):
        return values.x if which == 0 else values.r
    if isinstance(values, (list, tuple)):
        return type(values)(side(v, which) for v in values)
    if isinstance(values, dict):
        return {key: side(v, which) for key, v in values.items()}
    return values


def small_delta_threshold(dtype: tf.DType, smooth: bool) -> float:
    """|Δ| below which the multiplier is the derivative (at the midpoint) instead of the quotient."""
    return float(ml_dtypes.finfo(dtype.as_numpy_dtype).eps) ** (1.0 / 3.0) if smooth else 0.0  # (numpy's finfo lacks bfloat16)


def attach(value: tf.Tensor, pairs: Sequence[tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
    """``value`` with gradient ``m`` with respect to each operand ``u`` of ``pairs`` ``(u, m)``."""
    out = tf.stop_gradient(value)
    for operand, multiplier in pairs:
        out = out + tf.stop_gradient(multiplier) * (operand - tf.stop_gradient(operand))
    return out


#: per activation, (μ, κ, c) of its secant slope from its two results for small |Δ|:
#: (κ − (y_x − μ)(y_r − μ))(1 − cΔ²), within Δ⁴ of the quotient (for σ, (σ_x + σ_r − 2σ_xσ_r)/2 ·
#: (1 − Δ²/12); see rnnshap/rules/elementwise.py, ``_sigmoid_secant_near`` and ``_tanh_secant_near``)
CLOSED_FORMS = {"sigmoid": (0.5, 0.25, 1 / 12), "tanh": (0.0, 1.0, 1 / 3)}


def _secant_near(kind: str) -> Near:
    mu, kappa, c = CLOSED_FORMS[kind]

    def near(yx: tf.Tensor, yr: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
        return (kappa - (yx - mu) * (yr - mu)) * (1 - c * delta * delta)

    near.__name__ = f"{kind}_secant_near"
    return near


sigmoid_secant_near, tanh_secant_near = _secant_near("sigmoid"), _secant_near("tanh")


def _autodiff(fn: Fn) -> Fn:
    def derivative(u: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(u)
            y = fn(u)
        return tape.gradient(y, u)

    return derivative


def rescale(
    fn: Fn, u: Dual, smooth: bool = True, derivative: Fn | None = None, near: Near | None = None, kinks: Sequence[float] = ()
) -> Dual:
    """Rescale rule for an elementwise ``fn``: m = Δy/Δu where |Δu| is above the threshold, below it
    the secant in closed form ``near`` where given, else ``fn'`` (``derivative``) at the midpoint, except
    across ``kinks`` (where a smooth ``fn``'s second derivative jumps: the quotient there)."""
    ux = tf.stop_gradient(u.x)
    yx, yr = fn(ux), fn(u.r)
    multiplier = secant_multiplier(yx, yr, ux, u.r, derivative or _autodiff(fn), smooth, near, kinks)
    return Dual(attach(yx, [(u.x, multiplier)]), yr)


def secant_multiplier(
    yx: tf.Tensor,
    yr: tf.Tensor,
    ux: tf.Tensor,
    ur: tf.Tensor,
    derivative: Fn | None,
    smooth: bool = True,
    near: Near | None = None,
    kinks: Sequence[float] = (),
) -> tf.Tensor:
    """The Rescale multiplier of ``y = f(u)``: Δy/Δu, or where |Δu| is below the threshold
    ``near(yx, yr, Δu)`` (the secant in closed form, for sigmoid and tanh) or else ``derivative`` at
    the midpoint (at ``ux`` for piecewise ``f``), where it is finite and ``[ur, ux]`` holds none of
    ``kinks`` inside (as ``rnnshap.rules.elementwise.rescale_multiplier``). Arguments broadcast."""
    delta = ux - ur
    small = tf.abs(delta) <= small_delta_threshold(ux.dtype, smooth)
    quotient = (yx - yr) / delta  # (where Δ = 0, not selected: the values of tf.where's other branch)
    if near is not None:
        return tf.where(small, near(yx, yr, delta), quotient)
    assert derivative is not None
    at = (ux + ur) / 2 if smooth else ux
    slope = derivative(at)
    for kink in kinks:
        small = small & ~((tf.minimum(ux, ur) < kink) & (kink < tf.maximum(ux, ur)))
    multiplier = tf.where(small & tf.math.is_finite(slope), slope, quotient)
    # 0 where nothing moves and the derivative is not finite (cbrt at 0, sinc's 0/0), as the PyTorch side
    return tf.where(tf.equal(delta, 0) & ~tf.math.is_finite(multiplier), tf.zeros_like(multiplier), multiplier)


def sigmoid(u: Dual) -> Dual:
    return rescale(tf.sigmoid, u, near=sigmoid_secant_near)


def tanh(u: Dual) -> Dual:
    return rescale(tf.tanh, u, near=tanh_secant_near)


def product(a: Dual, b: Dual) -> Dual:
    """Exact two-player Shapley rule for a ⊙ b: m_a = (b + b_r)/2, m_b = (a + a_r)/2."""
    ax, bx = tf.stop_gradient(a.x), tf.stop_gradient(b.x)
    return Dual(attach(ax * bx, [(a.x, (bx + b.r) / 2), (b.x, (ax + a.r) / 2)]), a.r * b.r)


def scaled(c: Dual, s: Dual) -> Dual:
    """c ⊙ s for a scale s (an inverse deviation), as the PyTorch side's
    :func:`rnnshap.rules.structured.scaled`: the two orders weighted by the scales,
    m_c = 2 s s_r / (s + s_r), m_s = (s c + s_r c_r) / (s + s_r); bounded on all-zero rows. Where s
    and s_r are not of one sign (a weight of 0), the Shapley rule, the limit of this one there.

    Every normalization takes it, however it is written: the layers, ``ops.layer_normalization`` /
    ``ops.rms_normalization``, and the same written with keras ops (a product with an inverse root,
    a division by a root: see ``kops.call_op``), as on the PyTorch side (torch's ``F.layer_norm`` and
    the product of an inverse root, rnnshap/engines/pytorch/handwritten_norms.py), so both backends agree."""
    cx, sx = tf.stop_gradient(c.x), tf.stop_gradient(s.x)
    total = sx + s.r
    same = sx * s.r > 0
    safe = tf.where(same, total, tf.ones_like(total))
    m_c = tf.where(same, 2 * sx * s.r / safe, (sx + s.r) / 2)
    m_s = tf.where(same, (sx * cx + s.r * c.r) / safe, (cx + c.r) / 2)
    return Dual(attach(cx * sx, [(c.x, m_c), (s.x, m_s)]), c.r * s.r)


def softmax(u: Dual, axis: Any = -1) -> Dual:
    """softmax = exp(u − c − log Σ exp(u − c)): Rescale on exp and log, the rest linear.

    The shift c (the larger maximum of the two sides, a constant) cancels; it keeps exp bounded.
    """
    shift = tf.stop_gradient(tf.maximum(tf.reduce_max(u.x, axis, keepdims=True), tf.reduce_max(u.r, axis, keepdims=True)))
    shifted = u.map(lambda t: t - shift)
    return rescale(tf.exp, shifted - log_of_sum(shifted, axis), derivative=tf.exp)


def log_softmax(u: Dual, axis: Any = -1) -> Dual:
    shift = tf.stop_gradient(tf.maximum(tf.reduce_max(u.x, axis, keepdims=True), tf.reduce_max(u.r, axis, keepdims=True)))
    shifted = u.map(lambda t: t - shift)
    return shifted - log_of_sum(shifted, axis)


def log_of_sum(shifted: Dual, axis: Any) -> Dual:
    r"""log Σ exp(``shifted``) over ``axis`` (keepdims; ``shifted`` is at most 0, its largest entry on one
    side 0): Rescale on exp, the linear sum, Rescale on log, as the PyTorch side's
    :func:`rnnshap.rules.structured.shifted_logsumexp`.

    Where one side's sum underflows (its maximum lies more than ~87 below the other's in float32: confident
    logits of a few hundred), its log is taken from a stable logsumexp instead of :math:`\log 0`, and the
    log's multiplier is the quotient :math:`(\log S - \log S_r)/(S - S_r)` of those logs (the other side's
    sum is at least 1, so the quotient is finite and the values still add up). Where both sums are normal
    numbers, the ops are those of plain Rescale (the same values, bit for bit)."""
    e = rescale(tf.exp, shifted, derivative=tf.exp)
    total = e.map(lambda t: tf.reduce_sum(t, axis, keepdims=True))
    tx = tf.stop_gradient(total.x)
    tiny = float(ml_dtypes.finfo(tx.dtype.as_numpy_dtype).tiny)
    normal_x, normal_r = tx >= tiny, total.r >= tiny
    log_x = tf.where(normal_x, tf.math.log(tx), tf.reduce_logsumexp(tf.stop_gradient(shifted.x), axis, keepdims=True))
    log_r = tf.where(normal_r, tf.math.log(total.r), tf.reduce_logsumexp(shifted.r, axis, keepdims=True))
    plain = secant_multiplier(tf.math.log(tx), tf.math.log(total.r), tx, total.r, tf.math.reciprocal)
    gap = tx - total.r
    quotient = (log_x - log_r) / tf.where(tf.equal(gap, 0), tf.ones_like(gap), gap)
    multiplier = tf.where(normal_x & normal_r, plain, quotient)
    multiplier = tf.where(tf.math.is_finite(multiplier), multiplier, tf.zeros_like(multiplier))
    return Dual(attach(log_x, [(total.x, multiplier)]), log_r)



def max_over(u: Dual, axis: int, keepdims: bool = False) -> Dual:
    """A max reduction over ``axis`` by shap's max-pool rule, as ``rnnshap.rules.routed_max``.

    With y = max x, y_r = max r and c = max(y, y_r), the part c − y_r is credited to the position
    of x's maximum and y − c to that of r's; a position's multiplier is its credit over its Δ.
    """
    ux = tf.stop_gradient(u.x)
    y, y_r = tf.reduce_max(ux, axis, keepdims=True), tf.reduce_max(u.r, axis, keepdims=True)
    cross = tf.maximum(y, y_r)
    depth = ux.shape[axis]
    at_x = tf.one_hot(tf.argmax(ux, axis), depth, axis=axis, dtype=ux.dtype)
    at_r = tf.one_hot(tf.argmax(u.r, axis), depth, axis=axis, dtype=ux.dtype)
    credit = at_x * (cross - y_r) + at_r * (y - cross)
    delta = ux - u.r
    zero = tf.equal(delta, 0)
    multiplier = tf.where(zero, tf.zeros_like(delta), credit / tf.where(zero, tf.ones_like(delta), delta))
    out = tf.stop_gradient(y) + tf.reduce_sum(tf.stop_gradient(multiplier) * (u.x - ux), axis, keepdims=True)
    if not keepdims:
        out, y_r = tf.squeeze(out, axis), tf.squeeze(y_r, axis)
    return Dual(out, y_r)


def bilinear(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], a: Dual, b: Dual) -> Dual:
    """Exact two-player Shapley rule for ``fn(a, b)`` linear in each operand (matmul, einsum, a ⊙ b):
    the multiplier of ``a`` is ``fn(·, (b + b_r)/2)``, that of ``b`` is ``fn((a + a_r)/2, ·)``.

    The value is ``fn(a, b)`` exactly: the two added terms are ``fn`` of an exact zero.
    """
    ax, bx = tf.stop_gradient(a.x), tf.stop_gradient(b.x)
    a_mid, b_mid = tf.stop_gradient((ax + a.r) / 2), tf.stop_gradient((bx + b.r) / 2)
    out = tf.stop_gradient(fn(ax, bx)) + fn(a.x - ax, b_mid) + fn(a_mid, b.x - bx)
    return Dual(out, fn(a.r, b.r))


def _ratio(numerator: tf.Tensor, t: tf.Tensor, limit: float) -> tf.Tensor:
    zero = tf.equal(t, 0)
    return tf.where(zero, tf.fill(tf.shape(t), tf.cast(limit, t.dtype)), numerator / tf.where(zero, tf.ones_like(t), t))


def rsqrt_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return -(tf.math.rsqrt(x) * tf.math.rsqrt(r)) / (tf.sqrt(x) + tf.sqrt(r))


def sqrt_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return 1 / (tf.sqrt(x) + tf.sqrt(r))


def square_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return x + r


def reciprocal_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return -1 / (x * r)


def exp_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    h = (x - r) / 2
    near = tf.abs(h) <= 0.5  # the closed form where the quotient would cancel, the quotient elsewhere
    closed = tf.exp((x + r) / 2) * _ratio(tf.sinh(h), h, 1.0)
    quotient = (tf.exp(x) - tf.exp(r)) / tf.where(near, tf.ones_like(h), 2 * h)
    return tf.where(near, closed, quotient)


def log_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    q = (x - r) / (x + r)
    near = tf.abs(q) <= 0.5
    closed = 2 / (x + r) * _ratio(tf.atanh(tf.where(near, q, tf.zeros_like(q))), q, 1.0)
    quotient = (tf.math.log(x) - tf.math.log(r)) / tf.where(near, tf.ones_like(x), x - r)
    return tf.where(near, closed, quotient)



def expm1_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return exp_slope(x, r)  # expm1(x) − expm1(r) = e^x − e^r


def log1p_slope(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    d = x - r  # log1p(x) − log1p(r) = log1p(d / (1 + r)), accurate however small d or r
    zero = tf.equal(d, 0)
    return tf.where(zero, 1 / (1 + r), tf.math.log1p(d / (1 + r)) / tf.where(zero, tf.ones_like(d), d))


def _rescaled(
    slope: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], inner: float, outer: float, name: str
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The slope of ``outer · f(inner · t)`` from the slope of ``f``: log2, log10, exp2."""

    def rescaled(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        return slope(x * inner, r * inner) * (inner * outer)

    rescaled.__name__ = name
    return rescaled


#: the closed-form secant slopes of the catalog's ``"secant"`` entries (rnnshap/rules/catalog.py), by the
#: entry's name, with the function itself (None: the keras op's own): the TensorFlow kernels of
#: ``rnnshap.rules.secant.SLOPES_BY_NAME``
SLOPES_BY_NAME: dict[str, tuple[Fn | None, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]] = {
    "sqrt": (tf.sqrt, sqrt_slope),
    "rsqrt": (tf.math.rsqrt, rsqrt_slope),
    "square": (tf.square, square_slope),
    "reciprocal": (tf.math.reciprocal, reciprocal_slope),
    "exp": (tf.exp, exp_slope),
    "exp2": (None, _rescaled(exp_slope, math.log(2), 1.0, "exp2_slope")),
    "expm1": (tf.math.expm1, expm1_slope),
    "log": (tf.math.log, log_slope),
    "log2": (None, _rescaled(log_slope, 1.0, 1 / math.log(2), "log2_slope")),
    "log10": (None, _rescaled(log_slope, 1.0, 1 / math.log(10), "log10_slope")),
    "log1p": (tf.math.log1p, log1p_slope),
}

def secant(fn: Fn, u: Dual, slope: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Dual:
    """Rescale with the secant slope in closed form (as :mod:`rnnshap.rules.secant`): exact for every Δ,
    0 where nothing moves and the slope is not finite."""
    ux = tf.stop_gradient(u.x)
    m = slope(ux, u.r)
    m = tf.where(tf.equal(ux, u.r) & ~tf.math.is_finite(m), tf.zeros_like(m), m)
    return Dual(attach(fn(ux), [(u.x, m)]), fn(u.r))


def reciprocal(u: Dual) -> Dual:
    return secant(tf.math.reciprocal, u, reciprocal_slope)


def shapley2(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], a: Dual, b: Dual, smooth: bool = True) -> Dual:
    """Exact two-player Shapley rule for an elementwise ``fn(a, b)`` (broadcasting):
    φ_a = ½[fn(a, b_r) − fn(a_r, b_r) + fn(a, b) − fn(a_r, b)], multiplier φ_a / Δa (the derivative at
    the midpoint where |Δa| is tiny and ``fn`` is smooth); the same for b."""
    ax, bx = tf.stop_gradient(a.x), tf.stop_gradient(b.x)
    y, y_r = fn(ax, bx), fn(a.r, b.r)
    ab_r, a_rb = fn(ax, b.r), fn(a.r, bx)
    phi_a = ((ab_r - y_r) + (y - a_rb)) / 2
    phi_b = ((a_rb - y_r) + (y - ab_r)) / 2

    shape = tf.shape(y)
    a_mid, b_mid = tf.broadcast_to((ax + a.r) / 2, shape), tf.broadcast_to((bx + b.r) / 2, shape)

    def multiplier(phi: tf.Tensor, delta: tf.Tensor, which: int) -> tf.Tensor:
        delta = tf.broadcast_to(delta, shape)
        small = tf.abs(delta) <= small_delta_threshold(delta.dtype, smooth)
        quotient = phi / tf.where(small, tf.ones_like(delta), delta)
        if not smooth:
            return tf.where(small, tf.zeros_like(quotient), quotient)
        # the derivative at the operand's midpoint, averaged over the other operand's two values (as φ is)
        ends = [tf.broadcast_to(t, shape) for t in ((b.r, bx) if which == 0 else (a.r, ax))]
        point = a_mid if which == 0 else b_mid
        with tf.GradientTape() as tape:
            tape.watch(point)
            total = sum(fn(point, e) if which == 0 else fn(e, point) for e in ends)
        slope = tape.gradient(total, point, unconnected_gradients=tf.UnconnectedGradients.ZERO) / 2
        return tf.where(small, slope, quotient)

    m_a, m_b = multiplier(phi_a, ax - a.r, 0), multiplier(phi_b, bx - b.r, 1)
    return Dual(attach(y, [(a.x, m_a), (b.x, m_b)]), y_r)


def standardize(u: Dual, axes: Sequence[int], epsilon: float, centre: bool = True, centre_output: bool | None = None) -> Dual:
    r"""``c / sqrt(mean(c ⊙ c) + ε)`` over ``axes``, ``c`` the centred input, as the PyTorch side's
    :func:`rnnshap.rules.structured.standardize`: centring and the mean linear, c ⊙ c by the Shapley
    rule, :math:`(v + \epsilon)^{-1/2}` by Rescale with its closed-form secant, the product by the
    scale-weighted rule of :func:`scaled`. ``centre=False``: the variance of the input itself (RMS);
    ``centre_output=False``: the input, not ``c``, times the inverse deviation (Keras's ``rms_scaling``)."""
    axes = list(axes)
    c = u.map(lambda t: t - tf.reduce_mean(t, axes, keepdims=True)) if centre else u
    square = product(c, c)
    variance = square.map(lambda t: tf.reduce_mean(t, axes, keepdims=True) + tf.constant(epsilon, t.dtype))
    inverse = secant(tf.math.rsqrt, variance, rsqrt_slope)
    return scaled(c if (centre_output is None or centre_output) else u, inverse)


def logsumexp(u: Dual, axis: Any, keepdims: bool = False) -> Dual:
    """log Σ exp(u): Rescale on exp, the linear sum, Rescale on log (the shift c cancels)."""
    shift = tf.stop_gradient(tf.maximum(tf.reduce_max(u.x, axis, keepdims=True), tf.reduce_max(u.r, axis, keepdims=True)))
    out = log_of_sum(u.map(lambda t: t - shift), axis).map(lambda t: t + shift)
    return out if keepdims else out.map(lambda t: tf.squeeze(t, axis))


class PickedIndices(Dual):
    """Integer indices picked from an input-dependent tensor (``argmax``, ``argmin``, ``top_k``'s indices;
    a step function of its values), on both sides, with their *handle*: the input side's indices as
    float64 values whose gradient is the pick's multipliers (:func:`picked_index`), as the PyTorch
    engine carries them (rnnshap/engines/pytorch/picked.py). The uses of the indices are attributed
    through the handle (:mod:`~rnnshap.engines.keras.picked`); ``origin`` names the op that picked them."""

    __slots__ = ("handle", "origin")

    def __init__(self, x: tf.Tensor, r: tf.Tensor, handle: tf.Tensor, origin: str) -> None:
        super().__init__(x, r)
        self.handle, self.origin = handle, origin

    def values(self, dtype: tf.DType = tf.float64) -> Dual:
        """The indices as numbers in ``dtype``: the handle on the input side, the reference's indices."""
        return Dual(tf.cast(self.handle, dtype), tf.cast(self.r, dtype))


def _argnearest(candidates: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """For every rank (``candidates``: ``(..., k, n)``), the candidate with the least ``key`` (``(..., n)``)."""
    keyed = tf.where(candidates, key[..., None, :], tf.cast(float("inf"), key.dtype))
    return tf.argmin(keyed, axis=-1, output_type=tf.int32)


def _ranks(order: tf.Tensor, n: int) -> tf.Tensor:
    """The rank of every position of the last axis given ``order`` (positions at ranks 0..k−1); k below those."""
    k = order.shape[-1]
    placed = tf.one_hot(order, n, dtype=tf.int32)  # (..., k, n)
    return k + tf.reduce_sum(placed * (tf.range(k)[:, None] - k), axis=-2)


def _usable(t: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(tf.not_equal(t, 0), tf.math.is_finite(t))


def _deciding(
    ux: tf.Tensor, r: tf.Tensor, order_x: tf.Tensor, order_r: tf.Tensor, largest: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The position that decides each rank of an ordering along the last axis, and ``x − r`` there, as
    ``rnnshap.rules.structured._deciding``: where the value at rank ``j`` rose, among the positions on
    its side of the rank in the input and on the other side in the reference, the one nearest the rank
    in the input; where it fell, the same with the sides swapped; either where the other's Δ is 0.
    ``order_x``, ``order_r``: the positions at ranks 0..k−1 (``(..., k)``). Returns (deciding positions,
    their Δ, the values at the ranks on both sides), each ``(..., k)``."""
    n = int(ux.shape[-1])
    batch = ux.shape.rank - 1
    y, y_r = tf.gather(ux, order_x, batch_dims=batch), tf.gather(r, order_r, batch_dims=batch)
    rank_x, rank_r = _ranks(order_x, n)[..., None, :], _ranks(order_r, n)[..., None, :]
    j = tf.range(order_x.shape[-1])[:, None]
    x_side = tf.logical_and(rank_x <= j, rank_r >= j)
    r_side = tf.logical_and(rank_r <= j, rank_x >= j)
    up, down = (x_side, r_side) if largest else (r_side, x_side)
    rose_at, fell_at = _argnearest(up, ux), _argnearest(down, r)
    rose, fell = y > y_r, y < y_r
    first_x, first_r = (rose_at, fell_at) if largest else (fell_at, rose_at)
    primary = tf.where(rose, rose_at, tf.where(fell, fell_at, first_x))
    secondary = tf.where(rose, fell_at, tf.where(fell, rose_at, first_r))
    delta = ux - r
    delta_p, delta_s = tf.gather(delta, primary, batch_dims=batch), tf.gather(delta, secondary, batch_dims=batch)
    at_p = tf.logical_or(_usable(delta_p), tf.logical_not(_usable(delta_s)))
    return tf.where(at_p, primary, secondary), tf.where(at_p, delta_p, delta_s), y, y_r


def ranked_values(u: Dual, k: int, largest: bool) -> Dual:
    """The values at ranks 0..k−1 along the last axis (from the largest, or the smallest), each with its
    change credited to the position that decided its rank: the PyTorch engine's rule for ``sort`` and
    ``topk`` (``rnnshap.rules.structured.ranked_values``; at rank 0 shap's max-pool rule), so both
    backends give the same values."""
    ux, r = tf.stop_gradient(u.x), u.r
    direction = "DESCENDING" if largest else "ASCENDING"
    order_x = tf.argsort(ux, axis=-1, direction=direction, stable=True)[..., :k]
    order_r = tf.argsort(r, axis=-1, direction=direction, stable=True)[..., :k]
    deciding, delta_d, y, y_r = _deciding(ux, r, order_x, order_r, largest)
    change = y - y_r
    ok = tf.logical_and(_usable(change), _usable(delta_d))
    factor = tf.where(ok, change / tf.where(ok, delta_d, tf.ones_like(delta_d)), tf.zeros_like(change))
    out = tf.stop_gradient(y) + tf.gather(u.x - ux, deciding, batch_dims=ux.shape.rank - 1) * tf.stop_gradient(factor)
    return Dual(out, y_r)


def picked_index(u: Dual, index_x: tf.Tensor, index_r: tf.Tensor, largest: bool) -> tf.Tensor:
    r"""The handle of the indices ``index_x`` (``(..., k)``: the positions at ranks 0..k−1 along the last
    axis of ``u``; ``index_r`` the reference's), as ``rnnshap.rules.structured.picked_index``: the indices
    as float64 values whose gradient is the multiplier of a step function of ``u``. Whatever a use makes
    of an index's change :math:`i_x - i_r` is credited to the position that decided its rank
    (:func:`_deciding`), with multiplier :math:`(i_x - i_r) / \Delta u` there; nothing where the index
    did not move. Where an index moved but no position moved past its rank (ties ordered differently
    on the two sides), the position of the row that moved most takes the credit."""
    ux, r = tf.stop_gradient(u.x), u.r
    batch = ux.shape.rank - 1
    deciding, delta, _, _ = _deciding(ux, r, index_x, index_r, largest)
    moved = tf.cast(index_x - index_r, tf.float64)
    stuck = tf.logical_and(tf.not_equal(moved, 0), tf.logical_not(_usable(delta)))
    change = tf.abs(ux - r)
    change = tf.where(tf.math.is_finite(change), change, tf.zeros_like(change))
    most = tf.broadcast_to(tf.argmax(change, axis=-1, output_type=tf.int32)[..., None], tf.shape(deciding))
    deciding = tf.where(stuck, most, deciding)
    delta = tf.where(stuck, tf.gather(ux - r, deciding, batch_dims=batch), delta)
    delta = tf.cast(delta, tf.float64)
    ok = tf.logical_and(_usable(moved), _usable(delta))
    factor = tf.where(ok, moved / tf.where(ok, delta, tf.ones_like(delta)), tf.zeros_like(moved))
    routed = tf.cast(tf.gather(u.x - ux, deciding, batch_dims=batch), tf.float64)
    return tf.cast(index_x, tf.float64) + routed * tf.stop_gradient(factor)
