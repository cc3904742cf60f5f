r"""Each JAX primitive's rule on (input, reference) pairs, the rules' math from :mod:`rnnshap.formulas` (``JAX``):
a :class:`Pair`, the multiplier attached to the input side's autodiff (:func:`attach`), Rescale on an elementwise
primitive, the two-player Shapley rule, the midpoints of a bilinear one, a maximum by shap's max-pool rule, a
quotient, and the marks of a normalization written by hand. :mod:`rnnshap.engines.jax.pairs` runs a jaxpr with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ... import formulas
from ...formulas import marks, secant
from ...formulas import pairs as pair_rules
from ...formulas.jax_ops import JAX
from ...operations import Elementwise

Array = Any


@dataclass(frozen=True)
class Pair:
    """A value that depends on the explained input: ``x`` on the input side (with autodiff), ``r`` on the
    reference side."""

    x: Array
    r: Array
    #: a root or an inverse root (:mod:`rnnshap.formulas.marks`: a normalization written by hand), or None
    mark: int | None = field(default=None, kw_only=True, compare=False)


Value = Any  # an Array, or a Pair

_near = {name: formulas.bind(fn, JAX) for name, fn in secant.NEAR_SECANTS.items()}


# -- attaching a multiplier ----------------------------------------------------------------------------------------------
def attach(value: Array, operands: Sequence[tuple[Array, Array]]) -> Array:
    """``value`` with derivative ``m`` with respect to each input-side operand ``u`` of ``operands`` ``(u, m)``
    (``m`` broadcast to ``value``'s shape; JAX sums it back to ``u``'s)."""
    out = lax.stop_gradient(value)
    for operand, multiplier in operands:  # (an exact zero, in the value's dtype: its derivative is m, in the operand's)
        out = out + (lax.stop_gradient(multiplier) * _zero(operand)).astype(out.dtype)
    return out


def _zero(operand: Array) -> Array:
    """``operand − operand`` with the derivative 1: an exact zero whose derivative carries a multiplier. Entries that are
    not finite (a ``-inf`` mask, the same on both sides) give 0, not ``inf − inf``, and carry none."""
    held = lax.stop_gradient(operand)
    return jnp.where(jnp.isfinite(held), operand - held, jnp.zeros_like(held))


def bilinear(fn: Callable[[Array, Array], Array], a: Pair, b: Pair) -> Pair:
    """``fn`` linear in each operand, of two input-dependent operands: the exact two-player Shapley rule, i.e. the
    derivative of ``fn`` at the midpoints (:func:`rnnshap.formulas.pairs.midpoint_multipliers`)."""
    ax, bx = lax.stop_gradient(a.x), lax.stop_gradient(b.x)
    m_a, m_b = pair_rules.midpoint_multipliers(JAX, ax, bx, a.r, b.r)  # m_a: b's midpoint, m_b: a's
    y = fn(ax, bx)
    through_a = fn(_zero(a.x), lax.stop_gradient(m_a))
    through_b = fn(lax.stop_gradient(m_b), _zero(b.x))
    return Pair(lax.stop_gradient(y) + through_a + through_b, fn(a.r, b.r))


def rescale(fn: Callable[[Array], Array], u: Pair, entry: Elementwise | None, name: str, smooth: bool) -> Pair:
    """Rescale on an elementwise ``fn`` of one input-dependent operand, by the table's family for it."""
    value, reference, multiplier = rescaled(fn, u, entry, smooth)
    return Pair(attach(value, [(u.x, multiplier)]), reference)


def rescaled(fn: Callable[[Array], Array], u: Pair, entry: Elementwise | None, smooth: bool) -> tuple[Array, Array, Array]:
    """``fn`` on both sides and its Rescale multiplier: closed-form secants where the table has them, sigmoid's and
    tanh's from their two results, else the quotient (the derivative at the midpoint for tiny Δ, kinks kept)."""
    ux = lax.stop_gradient(u.x)
    value, reference = fn(ux), fn(u.r)
    yx, yr = _widened(value, ux), _widened(reference, u.r)  # (a result rounded to a narrower float: its Δy exactly)
    if entry is not None and entry.family == "secant" and entry.name in secant.SLOPES_BY_NAME:
        multiplier = secant.still_zero(JAX, secant.SLOPES_BY_NAME[entry.name](JAX, ux, u.r), ux, u.r)
    elif entry is not None and entry.near is not None:
        multiplier = secant.near_rescale_multiplier(JAX, _near[entry.near], yx, yr, ux, u.r)
    else:
        kinks = entry.kinks if entry is not None and entry.smooth else ()

        def derivative(t: Array) -> Array:
            return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]

        multiplier = secant.rescale_multiplier(JAX, yx, yr, ux, u.r, derivative, smooth, kinks)
    return value, reference, multiplier


def _widened(y: Array, like: Array) -> Array:
    """``y`` in ``like``'s dtype where that is the wider float (exact), else ``y``."""
    if jnp.issubdtype(y.dtype, jnp.floating) and jnp.finfo(y.dtype).bits < jnp.finfo(like.dtype).bits:
        return y.astype(like.dtype)
    return y


def shapley2(fn: Callable[[Array, Array], Array], a: Pair, b: Pair, smooth: bool) -> Pair:
    """An elementwise ``fn`` of two input-dependent operands: the exact two-player Shapley rule
    (:func:`rnnshap.formulas.pairs.coalition_multipliers`)."""
    ax, bx = lax.stop_gradient(a.x), lax.stop_gradient(b.x)
    values = {3: fn(ax, bx), 0: fn(a.r, b.r), 1: fn(ax, b.r), 2: fn(a.r, bx)}
    shape = jnp.shape(values[3])

    def derivative(players: list[Array], i: int) -> Array:
        point = jnp.broadcast_to(players[i], shape)
        other = jnp.broadcast_to(players[1 - i], shape)
        g = (lambda p: fn(p, other)) if i == 0 else (lambda p: fn(other, p))
        return jax.jvp(g, (point,), (jnp.ones_like(point),))[1]

    m_a, m_b = pair_rules.coalition_multipliers(JAX, values, [ax, bx], [a.r, b.r], derivative, smooth)
    return Pair(attach(values[3], [(a.x, m_a), (b.x, m_b)]), values[0])


def max_over(eqn: Any, u: Pair, largest: bool) -> Pair:
    """A maximum (minimum) over ``axes`` by shap's max-pool rule (:func:`rnnshap.formulas.pairs.max_credits`, as the
    other engines): with y = max x, y_r = max r and c = max(y, y_r), c − y_r is credited to the position of x's
    maximum and y − c to that of r's; a position's multiplier is its credit over its Δ."""
    axes = tuple(eqn.params["axes"])
    ux = lax.stop_gradient(u.x)
    y, y_r = eqn.primitive.bind(ux, **eqn.params), eqn.primitive.bind(u.r, **eqn.params)
    credit_x, credit_r = pair_rules.max_credits(JAX, y, y_r, largest)
    kept = [d for d in range(ux.ndim) if d not in axes]

    def at(t: Array) -> Array:  # a one at the (first) position of the maximum over ``axes``, per kept index
        moved = jnp.transpose(t, kept + list(axes)).reshape(*(t.shape[d] for d in kept), -1)
        hot = jax.nn.one_hot((jnp.argmax if largest else jnp.argmin)(moved, axis=-1), moved.shape[-1], dtype=t.dtype)
        hot = hot.reshape(*(t.shape[d] for d in kept), *(t.shape[d] for d in axes))
        return jnp.transpose(hot, [(kept + list(axes)).index(d) for d in range(t.ndim)])

    def spread(credit: Array) -> Array:
        return jnp.expand_dims(credit, axes)

    multiplier = (at(ux) * spread(credit_x) + at(u.r) * spread(credit_r)) * pair_rules.inverse_delta(JAX, ux - u.r)
    out = lax.stop_gradient(y) + jnp.sum(lax.stop_gradient(multiplier) * _zero(u.x), axis=axes)
    return Pair(out, y_r)


def modulus(z: Pair) -> Pair:
    """``|z|`` of an input-dependent complex ``z``: the exact two-player Shapley rule over its real and imaginary parts
    (:func:`rnnshap.formulas.pairs.modulus_multipliers`), each part's multiplier attached to that real part."""
    zx = lax.stop_gradient(z.x)
    h, h_r = jnp.abs(zx), jnp.abs(z.r)
    m_a, m_b = pair_rules.modulus_multipliers(JAX, jnp.real(zx), jnp.imag(zx), jnp.real(z.r), jnp.imag(z.r), h, h_r)
    return Pair(attach(h, [(jnp.real(z.x), m_a), (jnp.imag(z.x), m_b)]), h_r)


def quotient(a: Value, b: Pair, scaled: bool = False) -> Pair:
    """``a / b`` with ``b`` input-dependent: the two-player Shapley multipliers in closed form
    (:func:`rnnshap.formulas.pairs.quotient_multipliers`; a constant ``a`` is its own reference), or with ``scaled``
    (``b`` a root, ``a`` input-dependent: a normalization written by hand) the normalizations' scale-weighted rule
    (:func:`rnnshap.formulas.pairs.scaled_quotient_multipliers`)."""
    bx = lax.stop_gradient(b.x)
    if isinstance(a, Pair):
        ax = lax.stop_gradient(a.x)
        rule = pair_rules.scaled_quotient_multipliers if scaled else pair_rules.quotient_multipliers
        m_a, m_b = rule(JAX, ax, bx, a.r, b.r)
        return Pair(attach(ax / bx, [(a.x, m_a), (b.x, m_b)]), a.r / b.r)
    _, m_b = pair_rules.quotient_multipliers(JAX, a, bx, a, b.r)
    return Pair(attach(a / bx, [(b.x, m_b)]), a / b.r)


def _scaled(c: Pair, s: Pair) -> Pair:
    """``c ⊙ s`` for an inverse root ``s`` (a normalization written by hand): the normalizations' scale-weighted rule
    (:func:`rnnshap.formulas.pairs.scaled_multipliers`), as the other engines."""
    cx, sx = lax.stop_gradient(c.x), lax.stop_gradient(s.x)
    m_c, m_s = pair_rules.scaled_multipliers(JAX, cx, sx, c.r, s.r)
    return Pair(attach(cx * sx, [(c.x, m_c), (s.x, m_s)]), c.r * s.r)


# -- the marks of a normalization written by hand (rnnshap/formulas/marks.py), by JAX's primitives ----------------------
_KINDS: dict[str, str] = {
    "sqrt": marks.ROOT, "rsqrt": marks.INVERSE_ROOT, "integer_pow": marks.POWER, "pow": marks.POWER,
    "div": marks.DIVISION,
    **dict.fromkeys([
        "add", "add_any", "sub", "mul", "neg", "max", "clamp", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
        "transpose", "convert_element_type", "copy", "slice", "dynamic_slice", "rev",
    ], marks.KEEPS),
}  # fmt: skip


def _exponent(eqn: Any, inputs: list[Value]) -> float | None:
    """The constant exponent of ``integer_pow`` or ``pow`` (a number, or a one-element constant), else None."""
    if eqn.primitive.name == "integer_pow":
        return float(eqn.params["y"])
    y = inputs[1]
    if isinstance(y, Pair) or jnp.size(y) != 1 or not jnp.issubdtype(jnp.result_type(y), jnp.floating):
        return None
    return float(jnp.reshape(y, ()))


def mark_of(eqn: Any, inputs: list[Value], position: int) -> int | None:
    """The mark of the result of ``eqn`` whose only input-dependent operand is ``inputs[position]``."""
    kind = _KINDS.get(eqn.primitive.name)
    exponent = None
    if kind == marks.POWER:
        if position != 0:
            return None
        exponent = _exponent(eqn, inputs)
    return marks.result_mark(kind, inputs[position].mark, exponent, numerator=position == 0)


def normalizing(name: str, a: Pair, b: Pair) -> Pair | None:
    """A product of an inverse root with an input-dependent value, or a division of one by a root: the
    normalizations' scale-weighted rule; None for any other pair of operands."""
    if name == "mul":
        scale = marks.scaled_product_scale(a.mark, b.mark)
        if scale is not None:
            return _scaled(b, a) if scale == 0 else _scaled(a, b)
    if name == "div" and marks.scaled_quotient(a.mark, b.mark):
        return quotient(a, b, scaled=True)
    return None


__all__ = [
    "Pair", "Value", "attach", "bilinear", "mark_of", "max_over", "normalizing", "quotient", "rescale", "rescaled", "shapley2",
]  # fmt: skip
