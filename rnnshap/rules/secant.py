r"""Rescale with the secant slope written in closed form, for better conditioning.

The generic Rescale multiplier :math:`(f(x) - f(r)) / (x - r)` loses accuracy to cancellation
where :math:`|x - r|` is small compared with the scale on which :math:`f` curves, and switches to
the midpoint derivative below an *absolute* threshold. For functions whose curvature scale is the
size of the argument itself (:math:`\sqrt{v}`, :math:`v^{-1/2}`, :math:`\log v` on small
variances) neither is accurate in float32. The slopes below are algebraic rewrites of the secant
with no cancellation, exact for every :math:`\Delta` including 0:

- :math:`\sqrt{\cdot}`: :math:`1 / (\sqrt x + \sqrt r)`
- :math:`(\cdot)^{-1/2}`: :math:`-x^{-1/2} r^{-1/2} / (\sqrt x + \sqrt r)`
- :math:`(\cdot)^2`: :math:`x + r`
- :math:`\exp`: :math:`e^{(x + r)/2}\,\sinh(h)/h`, :math:`h = (x - r)/2`
- :math:`\log`: :math:`\tfrac{2}{x + r}\,\mathrm{atanh}(q)/q`, :math:`q = (x - r)/(x + r)`

Where an operand is the same infinity on both sides (a ``-inf`` mask entry), the output does not
move under any finite change upstream, so the multiplier there is 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .base import OpCall
from .elementwise import Rescale, Shapley, shapley_multipliers, with_multipliers

Tensor = torch.Tensor
Slope = Callable[[Tensor, Tensor], Tensor]


def _ratio(numerator: Tensor, t: Tensor, limit: float) -> Tensor:
    """numerator / t, with ``limit`` where t == 0 (both are elementwise and accurate for small t)."""
    zero = t == 0
    return torch.where(zero, torch.full_like(t, limit), numerator / torch.where(zero, torch.ones_like(t), t))


def sqrt_slope(x: Tensor, r: Tensor) -> Tensor:
    return 1 / (torch.sqrt(x) + torch.sqrt(r))


def rsqrt_slope(x: Tensor, r: Tensor) -> Tensor:
    return -(torch.rsqrt(x) * torch.rsqrt(r)) / (torch.sqrt(x) + torch.sqrt(r))


def square_slope(x: Tensor, r: Tensor) -> Tensor:
    return x + r


def exp_slope(x: Tensor, r: Tensor) -> Tensor:
    h = (x - r) / 2
    near = h.abs() <= 0.5  # the closed form where the quotient would cancel; the quotient elsewhere
    closed = torch.exp((x + r) / 2) * _ratio(torch.sinh(h), h, 1.0)
    quotient = (torch.exp(x) - torch.exp(r)) / torch.where(near, torch.ones_like(h), 2 * h)
    return torch.where(near, closed, quotient)


def log_slope(x: Tensor, r: Tensor) -> Tensor:
    q = (x - r) / (x + r)
    near = q.abs() <= 0.5  # x / r within [1/3, 3]: the closed form; the quotient elsewhere
    closed = 2 / (x + r) * _ratio(torch.atanh(q), q, 1.0)
    quotient = (torch.log(x) - torch.log(r)) / torch.where(near, torch.ones_like(x), x - r)
    return torch.where(near, closed, quotient)


def reciprocal_slope(x: Tensor, r: Tensor) -> Tensor:
    return -1 / (x * r)


def expm1_slope(x: Tensor, r: Tensor) -> Tensor:
    return exp_slope(x, r)  # expm1(x) − expm1(r) = e^x − e^r


def log1p_slope(x: Tensor, r: Tensor) -> Tensor:
    d = x - r  # log1p(x) − log1p(r) = log1p(d / (1 + r)), accurate however small d or r
    zero = d == 0
    return torch.where(zero, 1 / (1 + r), torch.log1p(d / (1 + r)) / torch.where(zero, torch.ones_like(d), d))


def _rescaled(slope: Slope, inner: float, outer: float, name: str) -> Slope:
    """The slope of ``outer · f(inner · t)`` from the slope of ``f``: log2, log10, exp2."""

    def rescaled(x: Tensor, r: Tensor) -> Tensor:
        return slope(x * inner, r * inner) * (inner * outer)

    rescaled.__name__ = name
    return rescaled


def power_slope(x: Tensor, r: Tensor, p: float) -> Tensor:
    r"""The secant slope of :math:`t^p` for a constant ``p``, where ``x`` and ``r`` are positive.

    With :math:`L = \log(x / r) = \mathrm{log1p}((x - r)/r)` it is
    :math:`r^{p-1}\,\mathrm{expm1}(pL)/\mathrm{expm1}(L)`, without cancellation for
    :math:`x \approx r`; the difference quotient where :math:`|L| > 1/2`. Other entries are NaN:
    the caller takes the generic rule there.
    """
    if p == 1:
        return torch.ones_like(x + r)
    if p == 2:
        return x + r
    if p == 0.5:
        return sqrt_slope(x, r)
    if p == -0.5:
        return rsqrt_slope(x, r)
    if p == -1:
        return reciprocal_slope(x, r)
    log_ratio = torch.log1p((x - r) / r)
    near = log_ratio.abs() <= 0.5
    closed = r ** (p - 1) * _ratio(torch.expm1(p * log_ratio), torch.expm1(log_ratio), p)
    quotient = (x**p - r**p) / torch.where(near, torch.ones_like(x), x - r)
    slope = torch.where(near, closed, quotient)
    return torch.where((x > 0) & (r > 0), slope, torch.full_like(slope, math.nan))


def exp_ratio_slope(d: Tensor) -> Tensor:
    """d / expm1(d), 1 at d = 0: at d = −|L − L_r| the secant of log over [e^{−|d|}, 1], times e^{max(L, L_r)}."""
    return _ratio(d, torch.expm1(d), 1.0)


#: unary operations (by name, in every form the registry knows) → their closed-form secant slope
SLOPES_BY_NAME: dict[str, Slope] = {
    "sqrt": sqrt_slope,
    "rsqrt": rsqrt_slope,
    "square": square_slope,
    "reciprocal": reciprocal_slope,
    "exp": exp_slope,
    "exp2": _rescaled(exp_slope, math.log(2), 1.0, "exp2_slope"),
    "expm1": expm1_slope,
    "log": log_slope,
    "log2": _rescaled(log_slope, 1.0, 1 / math.log(2), "log2_slope"),
    "log10": _rescaled(log_slope, 1.0, 1 / math.log(10), "log10_slope"),
    "log1p": log1p_slope,
}

#: the unary torch functions :func:`secant` knows without a ``slope=``
SLOPES: dict[Callable[[Tensor], Tensor], Slope] = {
    getattr(torch, name): SLOPES_BY_NAME[name] for name in ("sqrt", "rsqrt", "square", "exp", "log")
}


def secant_slope(slope: Slope, x: Tensor, r: Tensor) -> Tensor:
    """``slope(x, r)`` with 0 where nothing moves and the slope is not finite.

    Where ``x`` and ``r`` are the same infinity (a ``-inf`` mask entry) no finite change upstream
    moves the output, and where ``x == r`` the multiplier multiplies a zero Δ; a non-finite slope
    there (``sqrt`` at 0, ``inf - inf``) would make the backward pass NaN.
    """
    m = slope(x, r)
    still = (x == r) & ~torch.isfinite(m)
    if bool(still.any()):
        m = torch.where(still, torch.zeros_like(m), m)
    return m


def secant(f: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, slope: Slope | None = None) -> tuple[Tensor, Tensor]:
    """Apply the unary elementwise ``f`` with the Rescale multiplier from ``slope(x, r)``.

    ``slope`` defaults to the closed form for ``f`` in :data:`SLOPES`. Returns ``(f(x), f(r))``.
    """
    slope = slope or SLOPES[f]
    xd, rd = x.detach(), r.detach()
    output, ref_output = f(xd), f(rd)
    m = secant_slope(slope, xd, rd).expand(output.shape)
    return with_multipliers(output, [x], [m]), ref_output


class Secant(Rescale):
    r"""The Rescale rule of a unary operation with its secant slope in closed form.

    The generic Rescale switches to the midpoint derivative below an absolute :math:`|\Delta|`
    of :math:`\epsilon^{1/3}`; for :math:`\sqrt{v}`, :math:`v^{-1/2}`, :math:`1/v`, :math:`\log v`
    the curvature is on the scale of :math:`v` itself, so on small arguments (the variance inside
    a layer norm written by hand) that derivative is off by :math:`(\Delta/v)^2`. The closed forms
    are exact for every :math:`\Delta`. Calls it does not cover (several operands, extra
    arguments, integer or complex operands) take the generic rule.
    """

    def __init__(self, slope: Slope) -> None:
        super().__init__(smooth=True)
        self.slope = slope

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1 or len(call.leaves) != 1 or not call.leaves[0].is_floating_point():
            return super().attribute(call)
        x, r = call.leaves[0], call.ref_leaves[0]
        xd = x.detach()
        output = call.evaluate([xd])
        return with_multipliers(output, [x], [secant_slope(self.slope, xd, r.detach()).expand(output.shape)])

    def __repr__(self) -> str:
        return f"Secant({self.slope.__name__})"


class Power(Shapley):
    r"""``base ** exponent`` with one of the two a constant: the closed-form secant of
    :math:`t^p` (:func:`power_slope`) for a tracked positive base, of :math:`c^t = e^{t \ln c}`
    for a tracked exponent and a constant positive base; the generic exact Shapley rule for
    anything else (both tracked, negative bases)."""

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1 or len(call.leaves) != 2 or call.name.endswith("float_power"):
            return super().attribute(call)
        base, exponent = call.args if len(call.args) == 2 else (None, None)
        reverse = call.name.endswith("__rpow__")  # t.__rpow__(c) is c ** t
        if reverse:
            base, exponent = exponent, base
        x, r = call.inputs[0], call.references[0]
        if not x.is_floating_point():
            return super().attribute(call)
        xd, rd = x.detach(), r.detach()
        output = call.evaluate([xd])
        if base is call.inputs[0] and isinstance(exponent, (int, float)) and not isinstance(exponent, bool):
            m = power_slope(xd, rd, float(exponent))
        elif exponent is call.inputs[0] and isinstance(base, (int, float)) and not isinstance(base, bool) and base > 0:
            log_base = math.log(base)
            m = exp_slope(xd * log_base, rd * log_base) * log_base
        else:
            return super().attribute(call)
        generic = ~torch.isfinite(m)
        if bool(generic.any()):  # non-positive bases: the exact rule (difference quotient, midpoint derivative)
            _, _, (fallback,) = shapley_multipliers(lambda p: call.evaluate(p), [x], [r], True, call.ref_output)
            m = torch.where(generic, fallback, m)
        return with_multipliers(output, [x], [m.expand(output.shape)])


__all__ = [
    "Power",
    "SLOPES",
    "SLOPES_BY_NAME",
    "Secant",
    "power_slope",
    "reciprocal_slope",
    "exp_ratio_slope",
    "exp_slope",
    "log_slope",
    "rsqrt_slope",
    "secant",
    "secant_slope",
    "sqrt_slope",
    "square_slope",
]
