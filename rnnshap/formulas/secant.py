r"""The Rescale rule's secant slopes in closed form, and the Rescale multiplier, written once.

The generic Rescale multiplier :math:`(f(x) - f(r)) / (x - r)` loses accuracy to cancellation where
:math:`|x - r|` is small compared with the scale on which :math:`f` curves, and switches to the
midpoint derivative below an *absolute* threshold. For functions whose curvature scale is the size
of the argument itself (:math:`\sqrt{v}`, :math:`v^{-1/2}`, :math:`\log v` on small variances)
neither is accurate in float32. The slopes below are algebraic rewrites of the secant with no
cancellation, exact for every :math:`\Delta` including 0:

- :math:`\sqrt{\cdot}`: :math:`1 / (\sqrt x + \sqrt r)`
- :math:`(\cdot)^{-1/2}`: :math:`-x^{-1/2} r^{-1/2} / (\sqrt x + \sqrt r)`
- :math:`(\cdot)^2`: :math:`x + r`
- :math:`\exp`: :math:`e^{\max(x, r)}\,\mathrm{expm1}(-|\Delta|)/(-|\Delta|)`, :math:`\Delta = x - r`
- :math:`\log`: :math:`\tfrac{2}{x + r}\,\mathrm{atanh}(q)/q`, :math:`q = (x - r)/(x + r)`

Sigmoid and tanh have their secant in closed form from their two results (:func:`tanh_secant_near`,
:func:`sigmoid_secant_near`), used where :math:`|\Delta|` is below the threshold.

Every function takes the array namespace ``xp`` first (:mod:`rnnshap.formulas`); the engines bind
it (``rnnshap.rules.secant``, ``rnnshap.engines.keras.dual``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .namespace import Array, Ops

#: a secant slope: (xp, x, r) → the slope of f between r and x, elementwise
Slope = Callable[[Ops, Array, Array], Array]


def ratio(xp: Ops, numerator: Array, t: Array, limit: float) -> Array:
    """numerator / t, with ``limit`` where t == 0 (both are elementwise and accurate for small t)."""
    zero = t == 0
    if xp.surely_none(zero):  # (the where's would pick the quotient everywhere: the same values)
        return numerator / t
    return xp.where(zero, xp.full_like(t, limit), numerator / xp.where(zero, xp.ones_like(t), t))


def sqrt_slope(xp: Ops, x: Array, r: Array) -> Array:
    return 1 / (xp.sqrt(x) + xp.sqrt(r))


def rsqrt_slope(xp: Ops, x: Array, r: Array) -> Array:
    return -(xp.rsqrt(x) * xp.rsqrt(r)) / (xp.sqrt(x) + xp.sqrt(r))


def square_slope(xp: Ops, x: Array, r: Array) -> Array:
    return x + r


def exp_slope(xp: Ops, x: Array, r: Array) -> Array:
    return exp_secant(xp, xp.exp(xp.maximum(x, r)), x - r)


def exp_secant(xp: Ops, top: Array, delta: Array) -> Array:
    r"""The secant of exp between :math:`r` and :math:`x` from :math:`e^{\max(x, r)}` (``top``) and
    :math:`\Delta = x - r` (``delta``): :math:`(e^x - e^r)/\Delta = e^{\max(x, r)}\,(1 - e^{-|\Delta|})/|\Delta|`,
    the last factor as :math:`\mathrm{expm1}(-|\Delta|)/(-|\Delta|)`, in :math:`(0, 1]`: one form for every
    :math:`\Delta`, with no cancellation (expm1 is accurate near 0), overflowing only where
    :math:`e^{\max(x, r)}` does (as the quotient's :math:`e^x` would). Within about 2 epsilons of the secant
    on torch, 3.5 on TensorFlow and XLA, whatever the size of :math:`x` (:math:`\max(x, r)` is exact); the closed
    form it replaced (:math:`e^{(x+r)/2}\sinh(h)/h` below :math:`|h| = 1/2`, the quotient above, with two exps and a
    sinh on mixed entries) lost the rounding of :math:`(x+r)/2` times :math:`|x+r|/2`: about 9 epsilons
    at :math:`|x|` up to 20 in float32, 36 in bfloat16. A caller that has both sides' :math:`e^x` passes their
    maximum as ``top``. :math:`|\Delta|` is taken at least the dtype's least normal number,
    where the last factor is 1 exactly (no division by 0, and no test for it)."""
    n = -xp.maximum(xp.abs(delta), xp.scalar(xp.tiny(delta.dtype), delta))
    return top * (xp.expm1(n) / n)


def log_slope(xp: Ops, x: Array, r: Array) -> Array:
    r"""The secant of log: :math:`\tfrac{2}{x + r}\,\mathrm{atanh}(q)/q` where :math:`|q| \le 1/2`
    (:math:`x / r` within [1/3, 3]), the quotient elsewhere.

    ``atanh(q)`` is taken on every entry, not only where it is selected: where :math:`|q| \ge 1`
    (``x`` or ``r`` at most 0) it is not finite, but there the quotient is not finite either
    (``log`` of a non-positive number), so no entry's value depends on it. (The Keras engine's copy
    masked ``q`` first; the two agree on every input, and one formula is kept, the one with fewer
    operations.)"""
    q = (x - r) / (x + r)
    near = xp.abs(q) <= 0.5
    closed = 2 / (x + r) * ratio(xp, xp.atanh(q), q, 1.0)
    quotient = (xp.log(x) - xp.log(r)) / xp.where(near, xp.ones_like(x), x - r)
    return xp.where(near, closed, quotient)


def reciprocal_slope(xp: Ops, x: Array, r: Array) -> Array:
    return -1 / (x * r)


def expm1_slope(xp: Ops, x: Array, r: Array) -> Array:
    return exp_slope(xp, x, r)  # expm1(x) − expm1(r) = e^x − e^r


def log1p_slope(xp: Ops, x: Array, r: Array) -> Array:
    d = x - r  # log1p(x) − log1p(r) = log1p(d / (1 + r)), accurate however small d or r
    zero = d == 0
    return xp.where(zero, 1 / (1 + r), xp.log1p(d / (1 + r)) / xp.where(zero, xp.ones_like(d), d))


def rescaled(slope: Slope, inner: float, outer: float, name: str) -> Slope:
    """The slope of ``outer · f(inner · t)`` from the slope of ``f``: log2, log10, exp2."""
    return _Rescaled(slope, inner, outer, name)


class _Rescaled:
    """``rescaled(slope, inner, outer, name)``: a slope that pickles as what it is made of."""

    def __init__(self, slope: Slope, inner: float, outer: float, name: str) -> None:
        self.slope, self.inner, self.outer = slope, inner, outer
        self.__name__ = self.__qualname__ = name

    def __call__(self, xp: Ops, x: Array, r: Array) -> Array:
        return self.slope(xp, x * self.inner, r * self.inner) * (self.inner * self.outer)

    def __reduce__(self) -> tuple[Any, ...]:
        return rescaled, (self.slope, self.inner, self.outer, self.__name__)


def power_slope(xp: Ops, x: Array, r: Array, p: float) -> Array:
    r"""The secant slope of :math:`t^p` for a constant ``p``, where ``x`` and ``r`` are positive.

    With :math:`L = \log(x / r) = \mathrm{log1p}((x - r)/r)` it is
    :math:`r^{p-1}\,\mathrm{expm1}(pL)/\mathrm{expm1}(L)`, without cancellation for
    :math:`x \approx r`; the difference quotient where :math:`|L| > 1/2`. Other entries are NaN:
    the caller takes the generic rule there.
    """
    if p == 1:
        return xp.ones_like(x + r)
    if p == 2:
        return x + r
    if p == 0.5:
        return sqrt_slope(xp, x, r)
    if p == -0.5:
        return rsqrt_slope(xp, x, r)
    if p == -1:
        return reciprocal_slope(xp, x, r)
    log_ratio = xp.log1p((x - r) / r)
    near = xp.abs(log_ratio) <= 0.5
    closed = r ** (p - 1) * ratio(xp, xp.expm1(p * log_ratio), xp.expm1(log_ratio), p)
    quotient = (x**p - r**p) / xp.where(near, xp.ones_like(x), x - r)
    slope = xp.where(near, closed, quotient)
    return xp.where((x > 0) & (r > 0), slope, xp.full_like(slope, math.nan))


def exp_ratio_slope(xp: Ops, d: Array) -> Array:
    """d / expm1(d), 1 at d = 0: at d = −|L − L_r| the secant of log over [e^{−|d|}, 1], times e^{max(L, L_r)}."""
    return ratio(xp, d, xp.expm1(d), 1.0)


#: unary operations (by name, in every form the operation table knows) → their closed-form secant slope
SLOPES_BY_NAME: dict[str, Slope] = {
    "sqrt": sqrt_slope,
    "rsqrt": rsqrt_slope,
    "square": square_slope,
    "reciprocal": reciprocal_slope,
    "exp": exp_slope,
    "exp2": rescaled(exp_slope, math.log(2), 1.0, "exp2_slope"),
    "expm1": expm1_slope,
    "log": log_slope,
    "log2": rescaled(log_slope, 1.0, 1 / math.log(2), "log2_slope"),
    "log10": rescaled(log_slope, 1.0, 1 / math.log(10), "log10_slope"),
    "log1p": log1p_slope,
}


def still_zero(xp: Ops, m: Array, x: Array, r: Array) -> Array:
    """``m`` with 0 where nothing moves (``x == r``) and ``m`` is not finite.

    Where ``x`` and ``r`` are the same infinity (a ``-inf`` mask entry) no finite change upstream
    moves the output, and where ``x == r`` the multiplier multiplies a zero Δ; a non-finite slope
    there (``sqrt`` at 0, ``inf - inf``) would make the backward pass NaN.
    """
    if xp.surely_finite(m):  # (one reduction instead of four elementwise operations and one)
        return m
    still = (x == r) & ~xp.isfinite(m)
    if xp.surely_none(still):
        return m
    return xp.where(still, xp.zeros_like(m), m)


_THRESHOLDS: dict[tuple[str, Any], float] = {}


def small_delta_threshold(xp: Ops, dtype: Any, smooth: bool) -> float:
    """Below this |Δ| the multiplier is taken from the derivative (or a closed-form secant) instead of the quotient.

    For smooth functions the quotient loses about ``eps / Δ`` relative accuracy while the midpoint
    derivative is off by about ``Δ²``: the two balance at ``eps ** (1/3)``. Piecewise functions
    have no curvature to fear, so only an exact zero needs the derivative.
    """
    if not smooth:
        return 0.0
    key = (xp.name, dtype)
    threshold = _THRESHOLDS.get(key)
    if threshold is None:
        threshold = _THRESHOLDS[key] = xp.eps(dtype) ** (1.0 / 3.0)
    return threshold


def tanh_secant_near(xp: Ops, output: Array, ref_output: Array, delta: Array) -> Array:
    r"""The secant slope of tanh from its two results, for small :math:`|\Delta|`.

    :math:`\tanh x - \tanh r = \tanh(\Delta)\,(1 - \tanh x \tanh r)`, and
    :math:`\tanh(\Delta)/\Delta = 1 - \Delta^2/3 + 2\Delta^4/15 - \dots`: below the threshold
    (:math:`|\Delta| \le \epsilon^{1/3}`) the first two terms are the quotient to within
    :math:`\Delta^4 \le \epsilon^{4/3}`, below the dtype's rounding.
    """
    one = xp.scalar(1.0, delta)
    return xp.addcmul(one, output, ref_output, -1) * xp.addcmul(one, delta, delta, -1 / 3)


def sigmoid_secant_near(xp: Ops, output: Array, ref_output: Array, delta: Array) -> Array:
    r"""The secant slope of the logistic sigmoid :math:`\sigma` from its two results, for small
    :math:`|\Delta|`.

    With :math:`\sigma(t) = (1 + \tanh(t/2))/2`, :math:`\sigma(x) - \sigma(r) = \tanh(\Delta/2)
    \,[\sigma(x) + \sigma(r) - 2\sigma(x)\sigma(r)]` and :math:`\tanh(\Delta/2)/\Delta =
    1/2 - \Delta^2/24 + \dots`, within :math:`\Delta^4` of the quotient as for tanh. (Where both
    sides saturate towards 1 the bracket cancels, as the derivative :math:`\sigma(1 - \sigma)` does.)
    """
    both = xp.addcmul(output + ref_output, output, ref_output, -2)
    return both * xp.addcmul(xp.scalar(0.5, delta), delta, delta, -1 / 24)


def finite_where_still(xp: Ops, multiplier: Array, x: Array, r: Array, output: Array, ref_output: Array) -> Array:
    """0 instead of a non-finite multiplier where nothing moves.

    An operand that is the same infinity on both sides (a ``-inf`` mask entry) gives Δ = inf − inf
    = NaN; no finite change upstream moves it, so its multiplier is 0. A derivative that is
    infinite where Δ = 0 (``sqrt`` at 0) is replaced by 0 too, as is any non-finite multiplier where
    the output is the same on both sides: 0 · inf would otherwise make the backward pass NaN.
    """
    if xp.surely_finite(multiplier):
        return multiplier
    finite = xp.isfinite(multiplier)
    if xp.surely_all(finite):  # (the sum overflowed)
        return multiplier
    still = (x == r) | (output == ref_output)
    return xp.where(~finite & still, xp.zeros_like(multiplier), multiplier)


#: a kink standing for every non-positive integer, the poles of Γ (lgamma, digamma): a pair with one inside takes
#: the quotient, never the derivative at its midpoint, which is finite there and far from the secant (-inf itself
#: lies inside no pair, so it stands for nothing else)
POLES_OF_GAMMA = -math.inf


def rescale_multiplier(
    xp: Ops,
    output: Array,
    ref_output: Array,
    x: Array,
    r: Array,
    derivative: Callable[[Array], Array],
    smooth: bool = True,
    kinks: tuple[float, ...] = (),
) -> Array:
    """The Rescale multiplier of ``output = f(x)`` (``ref_output = f(r)``), with the output's shape.

    The quotient ``(f(x) − f(r)) / Δ``; where ``|Δ|`` is at most the threshold
    (:func:`small_delta_threshold`), ``derivative`` (of ``f``, broadcast to the output) at the midpoint,
    or at ``x`` for a piecewise ``f`` (whose quotient is exact down to Δ = 0), where that derivative is
    finite and ``[r, x]`` holds none of ``kinks`` inside (points where a smooth ``f``'s second derivative
    jumps: the midpoint derivative is off by a fraction of Δ across them; :data:`POLES_OF_GAMMA` stands for every
    non-positive integer, where ``f`` has poles); 0 where nothing moves and the
    multiplier is not finite (:func:`finite_where_still`). ``derivative`` is called only where some
    ``|Δ|`` is small, as far as the backend can tell.
    """
    shape = xp.shape(output)
    delta = xp.broadcast_to(x - r, shape)
    multiplier = (output - ref_output) / delta
    small = xp.abs(delta) <= small_delta_threshold(xp, delta.dtype, smooth)
    if not xp.surely_none(small):
        for kink in kinks:  # (only where a small Δ is: no cost on the common path)
            low, high = xp.minimum(x, r), xp.maximum(x, r)
            if kink == POLES_OF_GAMMA:  # the largest integer up to the pair's top, where it is a pole (at most 0)
                top = xp.floor(high)
                inside = (low < top) & (top <= 0)
            else:
                inside = (low < kink) & (kink < high)
            small = small & ~xp.broadcast_to(inside, shape)
        slope = derivative((x + r) / 2 if smooth else x)
        usable = small if xp.surely_finite(slope) else small & xp.isfinite(slope)  # (isfinite: four elementwise ops)
        multiplier = xp.where(usable, slope, multiplier)
    return finite_where_still(xp, multiplier, x, r, output, ref_output)


def near_rescale_multiplier(
    xp: Ops, near: Callable[[Array, Array, Array], Array], output: Array, ref_output: Array, x: Array, r: Array
) -> Array:
    """The Rescale multiplier of sigmoid or tanh, the where-form (``near(output, ref_output, Δ)``: its closed-form
    secant from its two results, bound to ``xp``): the quotient where ``|Δ|`` is above the threshold, ``near``
    below it; 0 where nothing moves and the multiplier is not finite.

    Where the backend can read the least and greatest ``|Δ|`` (:meth:`~rnnshap.formulas.namespace.Ops.extremes`:
    one reduction on torch) they say whether any Δ is small and whether all are finite (then so are the operands,
    the quotients, outputs in [-1, 1], and the closed forms): ``near`` and the check for non-finite multipliers
    are skipped where they would change nothing."""
    delta = x - r
    multiplier = (output - ref_output) / delta
    size = xp.abs(delta)
    threshold = small_delta_threshold(xp, delta.dtype, True)
    extremes = xp.extremes(size)
    some_small, finite = True, False
    if extremes is not None:
        least, greatest = extremes
        finite = math.isfinite(greatest)
        some_small = least <= threshold if finite else not xp.surely_none(size <= threshold)
    if some_small:
        multiplier = xp.where(size <= xp.scalar(threshold, size), near(output, ref_output, delta), multiplier)
    return multiplier if finite else finite_where_still(xp, multiplier, x, r, output, ref_output)


def columns_secant(
    xp: Ops, dy: Array, du: Array, centred_x: Array, centred_r: Array, kappa: Array, c: Array, threshold: float
) -> Array:
    r"""The where-form of the Rescale multiplier of σ and tanh columns side by side, from their constants
    (:data:`CLOSED_FORMS`, one value per column): :math:`Δy/Δu` where :math:`|Δu|` is above the threshold, the closed
    form :math:`(κ - (y_x - μ)(y_r - μ))(1 - cΔu^2)` below it (``centred_* = y - μ``). A caller may scale ``dy``,
    ``kappa`` and ``centred_x`` by one power of 2 (the mean's ½ of a Shapley share): the multiplier is scaled by it,
    exactly. The same secant as :func:`near_rescale_multiplier` with :data:`NEAR_SECANTS`, whose per-activation
    forms (``addcmul``) round differently; the Keras engine's fused LSTM/GRU kernel takes this one."""
    du2 = du * du
    quotient = dy / du  # (where Δu = 0, not selected)
    near = (kappa - centred_x * centred_r) * (1 - c * du2)
    return xp.where(du2 <= threshold * threshold, near, quotient)


def blend_secant_into(
    out: Array,
    du: Array,
    da: Array,
    u_x: Array,
    u_r: Array,
    a_x: Array,
    a_r: Array,
    centred_x_e4: Array,
    centred_r: Array,
    kappa_e4: Array,
    eps4: float,
) -> None:
    r"""The branch-free blend of the Rescale multiplier of σ or tanh, into ``out`` (torch tensors, in place):
    for every pair of ``(u_x, a_x)`` and ``(u_r, a_r)`` (which broadcast to ``out``), with ``du`` and ``da`` as
    scratch,

    .. math:: m = \frac{Δa\,Δu^3 + ε^4 F}{Δu^4 + ε^4}, \qquad F = κ - (a_x - μ)(a_r - μ),\ ε = \mathrm{eps}^{1/3},

    the quotient to within :math:`(ε/Δu)^4` where :math:`|Δu| \gg ε` and the secant's limit :math:`F` (its closed
    form without the :math:`Δu^2` term, :data:`CLOSED_FORMS`) where :math:`|Δu| \ll ε`; the largest deviation from
    the exact secant is about :math:`ε^2/6` of it (4e-6 in float32, 6e-12 in float64), where :math:`|Δu| ≈ ε`.
    ``centred_* = a − μ`` (the x side already multiplied by ε⁴) and ``kappa_e4 = ε⁴ κ``. Nine arithmetic passes
    in place, no select: the PyTorch engine's fused recurrent layers (``rnnshap.recurrent.fused.smooth_secant``).
    The where-form (:func:`near_rescale_multiplier`) is nearer the exact secant below the threshold (median error
    about 10x smaller for :math:`ε/10 < |Δu| \le ε`), slightly farther just above it (about 8% in the median),
    the same beyond: tests/formulas/test_formulas.py measures both against float64."""
    import torch  # (the blend is torch's: in place, with out= arguments)

    torch.sub(u_x, u_r, out=du)
    torch.sub(a_x, a_r, out=da)
    torch.addcmul(kappa_e4, centred_x_e4, centred_r, value=-1, out=out)  # ε⁴ F
    da.mul_(du)  # Δa Δu
    du.mul_(du)  # Δu²
    out.addcmul_(da, du)  # ε⁴ F + Δa Δu³
    du.mul_(du).add_(eps4)  # Δu⁴ + ε⁴
    out.div_(du)


#: per activation, (μ, κ, c) of its secant from its two results: :math:`(a_x - a_r)/\Delta = F \tanh(\delta)/\delta`
#: with :math:`F = κ - (a_x - μ)(a_r - μ)` (σ: δ = Δ/2; tanh: δ = Δ), and :math:`\tanh(\delta)/\delta = 1 - c\Delta^2
#: + O(\Delta^4)`: :func:`sigmoid_secant_near` and :func:`tanh_secant_near` as constants, for the fused recurrent
#: layers of both engines (``rnnshap.recurrent.fused``: μ and κ of its branch-free blend; the Keras engine's
#: ``fused``: all three, per gate column, in its compiled kernel)
CLOSED_FORMS: dict[str, tuple[float, float, float]] = {"sigmoid": (0.5, 0.25, 1 / 12), "tanh": (0.0, 1.0, 1 / 3)}

#: the activations whose secant has a closed form in their two results, by name
NEAR_SECANTS: dict[str, Callable[[Ops, Array, Array, Array], Array]] = {
    "sigmoid": sigmoid_secant_near,
    "tanh": tanh_secant_near,
}

__all__ = [
    "CLOSED_FORMS",
    "POLES_OF_GAMMA",
    "NEAR_SECANTS",
    "SLOPES_BY_NAME",
    "Slope",
    "blend_secant_into",
    "columns_secant",
    "exp_ratio_slope",
    "exp_secant",
    "finite_where_still",
    "near_rescale_multiplier",
    "rescale_multiplier",
    "exp_slope",
    "expm1_slope",
    "log1p_slope",
    "log_slope",
    "power_slope",
    "ratio",
    "reciprocal_slope",
    "rescaled",
    "rsqrt_slope",
    "sigmoid_secant_near",
    "small_delta_threshold",
    "sqrt_slope",
    "square_slope",
    "still_zero",
    "tanh_secant_near",
]
