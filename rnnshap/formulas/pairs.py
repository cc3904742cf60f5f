r"""The two-player rules and the multipliers of the structured operations, written once.

- :func:`coalition_multipliers`: the exact Shapley rule of an elementwise function of a few operands
  (``maximum``, ``pow``, ``atan2`` of two input-dependent tensors), from its values on the coalitions;
- :func:`midpoint_multipliers`: the exact two-player Shapley rule of a product :math:`a \odot b`,
  :math:`m_a = (b + b_r)/2`, :math:`m_b = (a + a_r)/2`;
- :func:`scaled_multipliers`: the normalizations' scale-weighted rule for :math:`c \odot s`;
- :func:`modulus_multipliers`: the exact two-player Shapley rule of a complex magnitude :math:`\sqrt{a^2 + b^2}`
  over the real and imaginary parts, in closed form;
- :func:`quotient_multipliers`: the exact two-player Shapley rule of a quotient :math:`a / b` in closed form;
  :func:`scaled_quotient_multipliers`: the scale-weighted rule of :math:`a / b` for a root ``b``;
- :func:`log_sum_multiplier`: the Rescale multiplier of :math:`\log S` for a sum of exponentials
  :math:`S` (softmax, log-softmax, logsumexp), stable where one side's sum underflows;
- :func:`max_credits` and :func:`inverse_delta`: shap's max-pool rule (a maximum's change credited to
  the positions of the two sides' maxima, over those positions' Δ);
- :func:`usable_quotient`: a change over a Δ, 0 where either is 0 or not finite (the orderings).

Each takes the array namespace ``xp`` first (:mod:`rnnshap.formulas`) and arrays carrying no gradient.
"""

from __future__ import annotations

from math import factorial
from typing import Any, Callable, Sequence

from .namespace import Array, Ops
from .secant import finite_where_still, log_slope, small_delta_threshold


def shapley_weights(n: int) -> list[float]:
    """The Shapley weight of a coalition of ``s`` other players among ``n``, for s = 0 .. n − 1."""
    return [factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)]


def coalition_multipliers(
    xp: Ops,
    values: dict[int, Array],
    inputs: Sequence[Array],
    references: Sequence[Array],
    derivative: Callable[[list[Array], int], Array],
    smooth: bool = True,
) -> list[Array]:
    r"""The exact Shapley multipliers of an elementwise function ``g`` of ``n = len(inputs)`` operands.

    ``values[mask]`` is ``g`` with the operands whose bit is set in ``mask`` at their input values and
    the others at their reference values (``values[2**n − 1]`` the output, ``values[0]`` the reference's).
    Operand ``i``'s Shapley value is :math:`\phi_i = \sum_{S \not\ni i} w_{|S|}\,[g(S \cup \{i\}) - g(S)]`
    and its multiplier :math:`\phi_i / \Delta_i`; where :math:`|\Delta_i|` is at most the threshold, the
    same weighted sum of ``derivative(players, i)`` (:math:`\partial g / \partial` operand ``i``, broadcast
    to the output) with operand ``i`` at its midpoint (at its input for a piecewise ``g``); 0 where nothing
    moves and the multiplier is not finite. Each multiplier has the output's shape.
    """
    n = len(inputs)
    full = 2**n - 1
    output, ref_output = values[full], values[0]
    shape = xp.shape(output)
    weights = shapley_weights(n)
    multipliers = []
    for i in range(n):
        bit = 1 << i
        others = [mask for mask in range(2**n) if not mask & bit]
        phi = sum(weights[bin(mask).count("1")] * (values[mask | bit] - values[mask]) for mask in others)
        delta = xp.broadcast_to(inputs[i] - references[i], shape)
        small = xp.abs(delta) <= small_delta_threshold(xp, delta.dtype, smooth)
        multiplier = phi / xp.where(small, xp.ones_like(delta), delta)
        if not xp.surely_none(small):
            at = (inputs[i] + references[i]) / 2 if smooth else inputs[i]
            slope = sum(
                weights[bin(mask).count("1")]
                * derivative([at if j == i else (inputs[j] if mask >> j & 1 else references[j]) for j in range(n)], i)
                for mask in others
            )
            multiplier = xp.where(small, slope, multiplier)
        multipliers.append(finite_where_still(xp, multiplier, inputs[i], references[i], output, ref_output))
    return multipliers


def midpoint(xp: Ops, a: Array, a_r: Array) -> Array:
    """The midpoint ``(a + a_r) / 2`` of a player's two values, at which a rule linear in it takes the
    other players' derivative (the selection by a picked index: linear in the selected tensor)."""
    return (a + a_r) / 2


def midpoint_multipliers(xp: Ops, a: Array, b: Array, a_r: Array, b_r: Array) -> tuple[Array, Array]:
    r"""The exact two-player Shapley rule of ``a ⊙ b``: ``(m_a, m_b) = ((b + b_r)/2, (a + a_r)/2)``.

    The same midpoints give the rule of any ``f`` linear in each operand (matmul, einsum, the scores
    :math:`q k^\top` and the weighted values of attention): :math:`f(a, b) - f(a_r, b_r) = f(\Delta a, \bar b)
    + f(\bar a, \Delta b)` with :math:`\bar b = m_a`, :math:`\bar a = m_b`, so the gradient of ``f`` taken at
    the midpoints is the Shapley split of every product term."""
    return midpoint(xp, b, b_r), midpoint(xp, a, a_r)


def scaled_multipliers(xp: Ops, c: Array, s: Array, c_r: Array, s_r: Array) -> tuple[Array, Array]:
    r"""The multipliers of ``c ⊙ s`` for a scale ``s`` (an inverse deviation) by the scale-weighted rule.

    The two orders of the pair's players are weighted by the scales instead of ½ each: c first (at
    :math:`s_r`) with weight :math:`s/(s + s_r)`, s first (at :math:`c_r`) with :math:`s_r/(s + s_r)`.
    So :math:`m_c = 2 s s_r/(s + s_r)` and :math:`m_s = (s c + s_r c_r)/(s + s_r)`, and
    :math:`m_c \Delta c + m_s \Delta s = s c - s_r c_r` exactly. Where ``s`` and ``s_r`` are not of one
    sign (a root times a weight of 0) the Shapley rule, the limit of this one there. (The reasons and
    bounds: :func:`rnnshap.rules.structured.scaled`.)
    """
    total = s + s_r
    m_c = 2 * s * s_r / total
    m_s = (s * c + s_r * c_r) / total
    same = s * s_r > 0
    if not xp.surely_all(same):  # (a scale times a weight of 0, or of another sign on the two sides: the Shapley rule)
        m_c = xp.where(same, m_c, (s + s_r) / 2)
        m_s = xp.where(same, m_s, (c + c_r) / 2)
    return m_c, m_s


def modulus_multipliers(
    xp: Ops, a: Array, b: Array, a_r: Array, b_r: Array, h: Array, h_r: Array
) -> tuple[Array, Array]:
    r"""The exact two-player Shapley multipliers of a complex magnitude :math:`h(a, b) = \sqrt{a^2 + b^2}` over
    its real part ``a`` and imaginary part ``b`` (``h``, ``h_r``: the magnitudes of the two sides).

    Each player's value averages its two orders, :math:`\phi_a = \tfrac12[(h(a, b_r) - h(a_r, b_r)) + (h(a, b) -
    h(a_r, b))]`, and each difference is a secant of :math:`t \mapsto \sqrt{t^2 + c^2}`, which has the closed form
    :math:`(t + t_r)/(\sqrt{t^2 + c^2} + \sqrt{t_r^2 + c^2})`: no difference quotient, so no cancellation however
    small :math:`\Delta a`. So :math:`m_a = \tfrac12 (a + a_r)[1/(h(a, b_r) + h_r) + 1/(h + h(a_r, b))]`, and
    :math:`m_b` alike, with :math:`m_a \Delta a + m_b \Delta b = h - h_r`. A sum of magnitudes that is 0 (both
    sides at the kink, :math:`z = z_r = 0` along that secant) gives 0."""
    cross_b = xp.hypot(a_r, b)  # h(a_r, b)
    cross_a = xp.hypot(a, b_r)  # h(a, b_r)

    def inverse(total: Array) -> Array:
        return xp.where(total == 0, xp.zeros_like(total), 1 / xp.where(total == 0, xp.ones_like(total), total))

    m_a = (a + a_r) * (inverse(cross_a + h_r) + inverse(h + cross_b)) / 2
    m_b = (b + b_r) * (inverse(cross_b + h_r) + inverse(h + cross_a)) / 2
    return m_a, m_b


def quotient_multipliers(xp: Ops, a: Any, b: Array, a_ref: Any, b_ref: Array) -> tuple[Any, Array]:
    r"""The exact two-player Shapley multipliers of ``a / b`` in closed form:
    :math:`m_a = \tfrac12(1/b + 1/b_r)`, :math:`m_b = -\tfrac{a + a_r}{2\,b\,b_r}` (0 where ``b``
    does not move and the multiplier is not finite). No difference quotient, so no cancellation and
    no small-Δ switch, however small the operands; ``a`` may be a constant (a Python number, its own
    reference: then :math:`m_b = -a/(b\,b_r)`)."""
    m_a = (1 / b + 1 / b_ref) / 2
    m_b = -(a + a_ref) / (2 * b * b_ref)
    still = (b == b_ref) & ~xp.isfinite(m_b)
    if not xp.surely_none(still):
        m_b = xp.where(still, xp.zeros_like(m_b), m_b)
    return m_a, m_b


def scaled_quotient_multipliers(xp: Ops, a: Array, b: Array, a_ref: Array, b_ref: Array) -> tuple[Array, Array]:
    r"""The multipliers of ``a / b`` for a root ``b`` (a norm, a standard deviation) by the
    scale-weighted rule of :func:`scaled_multipliers` on ``a ⊙ (1/b)``:
    :math:`m_a = 2/(b + b_r)`, :math:`m_b = -(a b_r + a_r b) / (b b_r (b + b_r))`, so that
    ``c / sqrt(v + eps)`` gets the values of ``c * rsqrt(v + eps)`` and of the built-in norms. Bounded
    where one side's row is all zeros and its ``b`` is :math:`\sqrt{\epsilon}`. Where ``b`` and
    ``b_r`` are not of one sign, the Shapley multipliers (:func:`quotient_multipliers`)."""
    total = b + b_ref
    m_a = 2 / total
    m_b = -(a * b_ref + a_ref * b) / (b * b_ref * total)
    same = b * b_ref > 0
    if not xp.surely_all(same):
        shapley_a, shapley_b = quotient_multipliers(xp, a, b, a_ref, b_ref)
        m_a, m_b = xp.where(same, m_a, shapley_a), xp.where(same, m_b, shapley_b)
    return m_a, m_b


def common_shift(xp: Ops, max_x: Array, max_r: Array) -> Array:
    """The shift of a softmax or logsumexp (``max_x``, ``max_r``: each side's maximum): the larger of the
    two, 0 where that is not finite (a row masked throughout). It cancels in the values and multipliers and
    keeps ``exp`` bounded."""
    top = xp.maximum(max_x, max_r)
    return xp.where(xp.isfinite(top), top, xp.zeros_like(top))


def stable_log(xp: Ops, total: Array, logsumexp: Array) -> Array:
    r""":math:`\log S` of a sum of exponentials ``total``, from the sum itself where it is a normal number
    (so :math:`\log S` and :math:`S` agree to rounding), else ``logsumexp`` (a stable logsumexp of the
    same terms: where the sum underflows)."""
    return xp.where(total >= xp.tiny(total.dtype), xp.log(total), logsumexp)


def log_sum_multiplier(xp: Ops, total: Array, total_ref: Array, log_total: Array, log_total_ref: Array) -> Array:
    r"""The Rescale multiplier of :math:`\log S` (``total``: :math:`S`, a sum of exponentials; the logs from
    :func:`stable_log`): the closed-form secant of log where both sums are normal numbers; where one
    underflows, the quotient :math:`(\log S - \log S_r)/(S - S_r)` of the stable logs (the other side's
    sum is at least 1, so it is finite and the values still add up); 0 where that is not finite (rows
    masked throughout)."""
    tiny = xp.tiny(total.dtype)
    both_normal = (total >= tiny) & (total_ref >= tiny)
    gap = total - total_ref
    quotient = (log_total - log_total_ref) / xp.where(gap == 0, xp.ones_like(gap), gap)
    log_slopes = xp.where(both_normal, log_slope(xp, total, total_ref), quotient)
    return xp.where(xp.isfinite(log_slopes), log_slopes, xp.zeros_like(log_slopes))


def max_credits(xp: Ops, y: Array, y_r: Array, largest: bool = True) -> tuple[Array, Array]:
    r"""shap's max-pool rule: the change of a maximum :math:`y` (its reference's :math:`y_r`) as two
    credits, :math:`c - y_r` to the position of the input's maximum and :math:`y - c` to that of the
    reference's, :math:`c = \max(y, y_r)` (min for a minimum). Exactly one is non-zero; both are 0 where
    :math:`y = y_r` (a maximum that is the same infinity on both sides included)."""
    cross = xp.maximum(y, y_r) if largest else xp.minimum(y, y_r)
    same = y == y_r
    return xp.where(same, xp.zeros_like(y), cross - y_r), xp.where(same, xp.zeros_like(y), y - cross)


def inverse_delta(xp: Ops, delta: Array) -> Array:
    """1 / Δ, 0 where Δ is 0 or not finite (a position that cannot take a credit)."""
    usable = (delta != 0) & xp.isfinite(delta)
    return xp.where(usable, 1 / xp.where(usable, delta, xp.ones_like(delta)), xp.zeros_like(delta))


def usable_quotient(xp: Ops, change: Array, delta: Array) -> Array:
    """change / delta, 0 where the change is 0 or either is not finite."""
    usable = (change != 0) & xp.isfinite(change) & (delta != 0) & xp.isfinite(delta)
    return xp.where(usable, change / xp.where(usable, delta, xp.ones_like(delta)), xp.zeros_like(change))


__all__ = [
    "common_shift",
    "coalition_multipliers",
    "shapley_weights",
    "inverse_delta",
    "log_sum_multiplier",
    "max_credits",
    "modulus_multipliers",
    "midpoint",
    "midpoint_multipliers",
    "quotient_multipliers",
    "scaled_quotient_multipliers",
    "scaled_multipliers",
    "stable_log",
    "usable_quotient",
]
