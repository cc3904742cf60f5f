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

from typing import Callable

import torch

from .elementwise import with_multipliers

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


def exp_ratio_slope(d: Tensor) -> Tensor:
    """d / expm1(d), 1 at d = 0: at d = −|L − L_r| the secant of log over [e^{−|d|}, 1], times e^{max(L, L_r)}."""
    return _ratio(d, torch.expm1(d), 1.0)


SLOPES: dict[Callable[[Tensor], Tensor], Slope] = {
    torch.sqrt: sqrt_slope,
    torch.rsqrt: rsqrt_slope,
    torch.square: square_slope,
    torch.exp: exp_slope,
    torch.log: log_slope,
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


__all__ = ["SLOPES", "exp_ratio_slope", "exp_slope", "log_slope", "rsqrt_slope", "secant", "secant_slope", "sqrt_slope", "square_slope"]
