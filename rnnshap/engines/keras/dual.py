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

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

Fn = Callable[[tf.Tensor], tf.Tensor]


class Dual:
    """One tensor on the input side and on the reference side (a plain class: keras's tree must not
    flatten it), with the Keras mask of the explained input where one is set (both sides use it)."""

    __slots__ = ("x", "r", "mask")

    def __init__(self, x: tf.Tensor, r: tf.Tensor, mask: tf.Tensor | None = None) -> None:
        self.x, self.r, self.mask = x, r, mask

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


def small_delta_threshold(dtype: tf.DType, smooth: bool) -> float:
    """|Δ| below which the multiplier is the derivative (at the midpoint) instead of the quotient."""
    return float(np.finfo(dtype.as_numpy_dtype).eps) ** (1.0 / 3.0) if smooth else 0.0


def attach(value: tf.Tensor, pairs: Sequence[tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
    """``value`` with gradient ``m`` with respect to each operand ``u`` of ``pairs`` ``(u, m)``."""
    out = tf.stop_gradient(value)
    for operand, multiplier in pairs:
        out = out + tf.stop_gradient(multiplier) * (operand - tf.stop_gradient(operand))
    return out


def _dsigmoid(u: tf.Tensor) -> tf.Tensor:
    s = tf.sigmoid(u)
    return s * (1 - s)


def _dtanh(u: tf.Tensor) -> tf.Tensor:
    return 1 - tf.tanh(u) ** 2


def _autodiff(fn: Fn) -> Fn:
    def derivative(u: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(u)
            y = fn(u)
        return tape.gradient(y, u)

    return derivative


def rescale(fn: Fn, u: Dual, smooth: bool = True, derivative: Fn | None = None) -> Dual:
    """Rescale rule for an elementwise ``fn``: m = Δy/Δu, or ``fn'`` at the midpoint where |Δu| is tiny."""
    ux = tf.stop_gradient(u.x)
    yx, yr = fn(ux), fn(u.r)
    delta = ux - u.r
    small = tf.abs(delta) <= small_delta_threshold(ux.dtype, smooth)
    quotient = (yx - yr) / tf.where(small, tf.ones_like(delta), delta)
    at = (ux + u.r) / 2 if smooth else ux
    slope = (derivative or _autodiff(fn))(at)
    multiplier = tf.where(small, slope, quotient)
    return Dual(attach(yx, [(u.x, multiplier)]), yr)


def sigmoid(u: Dual) -> Dual:
    return rescale(tf.sigmoid, u, derivative=_dsigmoid)


def tanh(u: Dual) -> Dual:
    return rescale(tf.tanh, u, derivative=_dtanh)


def product(a: Dual, b: Dual) -> Dual:
    """Exact two-player Shapley rule for a ⊙ b: m_a = (b + b_r)/2, m_b = (a + a_r)/2."""
    ax, bx = tf.stop_gradient(a.x), tf.stop_gradient(b.x)
    return Dual(attach(ax * bx, [(a.x, (bx + b.r) / 2), (b.x, (ax + a.r) / 2)]), a.r * b.r)


def softmax(u: Dual, axis: int = -1) -> Dual:
    """softmax = exp(u − c − log Σ exp(u − c)): Rescale on exp and log, the rest linear.

    The shift c (the larger maximum of the two sides, a constant) cancels; it keeps exp bounded.
    """
    shift = tf.stop_gradient(tf.maximum(tf.reduce_max(u.x, axis, keepdims=True), tf.reduce_max(u.r, axis, keepdims=True)))
    shifted = u.map(lambda t: t - shift)
    e = rescale(tf.exp, shifted, derivative=tf.exp)
    log_total = rescale(tf.math.log, e.map(lambda t: tf.reduce_sum(t, axis, keepdims=True)), derivative=tf.math.reciprocal)
    return rescale(tf.exp, shifted - log_total, derivative=tf.exp)


def log_softmax(u: Dual, axis: int = -1) -> Dual:
    shift = tf.stop_gradient(tf.maximum(tf.reduce_max(u.x, axis, keepdims=True), tf.reduce_max(u.r, axis, keepdims=True)))
    shifted = u.map(lambda t: t - shift)
    e = rescale(tf.exp, shifted, derivative=tf.exp)
    log_total = rescale(tf.math.log, e.map(lambda t: tf.reduce_sum(t, axis, keepdims=True)), derivative=tf.math.reciprocal)
    return shifted - log_total



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
