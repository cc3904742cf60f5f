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
- :math:`\exp`: :math:`e^{\max(x, r)}\,\mathrm{expm1}(-|\Delta|)/(-|\Delta|)`, :math:`\Delta = x - r`
- :math:`\log`: :math:`\tfrac{2}{x + r}\,\mathrm{atanh}(q)/q`, :math:`q = (x - r)/(x + r)`

Where an operand is the same infinity on both sides (a ``-inf`` mask entry), the output does not
move under any finite change upstream, so the multiplier there is 0.

The slopes are written once, for every engine, in :mod:`rnnshap.formulas.secant`; here they are
bound to torch tensors (``slope(x, r)``) and attached by the rules below.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..formulas import bind
from ..formulas import secant as formulas
from ..formulas.torch_ops import TORCH
from .base import OpCall
from .elementwise import Rescale, Shapley, rescale_multiplier, with_multipliers

Tensor = torch.Tensor
Slope = Callable[[Tensor, Tensor], Tensor]


def _bound(formula: Callable[..., Tensor], name: str | None = None) -> Any:
    return bind(formula, TORCH, name)


#: the closed-form secant slopes (rnnshap/formulas/secant.py) on torch tensors: ``slope(x, r)``
sqrt_slope: Slope = _bound(formulas.sqrt_slope)
rsqrt_slope: Slope = _bound(formulas.rsqrt_slope)
square_slope: Slope = _bound(formulas.square_slope)
exp_slope: Slope = _bound(formulas.exp_slope)
log_slope: Slope = _bound(formulas.log_slope)
reciprocal_slope: Slope = _bound(formulas.reciprocal_slope)
expm1_slope: Slope = _bound(formulas.expm1_slope)
log1p_slope: Slope = _bound(formulas.log1p_slope)
#: (x, r, p) → the secant slope of t**p (see :func:`rnnshap.formulas.secant.power_slope`)
power_slope: Callable[[Tensor, Tensor, float], Tensor] = _bound(formulas.power_slope)
#: d → d / expm1(d) (see :func:`rnnshap.formulas.secant.exp_ratio_slope`)
exp_ratio_slope: Callable[[Tensor], Tensor] = _bound(formulas.exp_ratio_slope)

#: unary operations (by name, in every form the registry knows) → their closed-form secant slope
SLOPES_BY_NAME: dict[str, Slope] = {name: _bound(slope) for name, slope in formulas.SLOPES_BY_NAME.items()}

#: the unary torch functions :func:`secant` knows without a ``slope=``
SLOPES: dict[Callable[[Tensor], Tensor], Slope] = {
    getattr(torch, name): SLOPES_BY_NAME[name] for name in ("sqrt", "rsqrt", "square", "exp", "log")
}


def secant_slope(slope: Slope, x: Tensor, r: Tensor) -> Tensor:
    """``slope(x, r)`` with 0 where nothing moves and the slope is not finite
    (:func:`rnnshap.formulas.secant.still_zero`)."""
    return formulas.still_zero(TORCH, slope(x, r), x, r)


def secant(f: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, slope: Slope | None = None) -> tuple[Tensor, Tensor]:
    """Apply the unary elementwise ``f`` with the Rescale multiplier from ``slope(x, r)``.

    ``slope`` defaults to the closed form for ``f`` in :data:`SLOPES`. Returns ``(f(x), f(r))``.
    """
    return secant_output(f, x, r, slope), f(r.detach())


def secant_output(f: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, slope: Slope | None = None) -> Tensor:
    """:func:`secant`'s ``f(x)`` alone, for a caller that has no use for ``f(r)``."""
    slope = slope or SLOPES[f]
    xd = x.detach()
    output = f(xd)
    m = secant_slope(slope, xd, r.detach()).expand(output.shape)
    return with_multipliers(output, [x], [m])


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
        if not TORCH.surely_finite(m):  # (one reduction: isfinite is four elementwise operations)
            generic = ~torch.isfinite(m)
            if not TORCH.surely_none(generic):  # non-positive bases: the exact rule (difference quotient, midpoint derivative)
                _, _, fallback = rescale_multiplier(lambda p: call.evaluate(p), x, r, True, call.ref_output, output=output)
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
    "secant_output",
    "secant_slope",
    "sqrt_slope",
    "square_slope",
]
