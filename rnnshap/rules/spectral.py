r"""Complex values: a product of two spectra, a spectrum's magnitude, and analytic functions of one.

Autoformer's autocorrelation is ``irfft(rfft(q) * conj(rfft(k)))``, the circular cross-correlation of ``q`` and ``k``
computed in the frequency domain. The Fourier transforms and ``conj`` are linear over the reals (rules/registry.py);
the product of the two spectra is bilinear over the complex numbers, so the identity of the real rule holds as it is,

.. math:: ab - a_r b_r = \Delta a\,\bar b + \bar a\,\Delta b, \qquad \bar a = \tfrac12 (a + a_r),\ \bar b = \tfrac12 (b + b_r),

the exact two-player Shapley split of every product term. :class:`~rnnshap.rules.elementwise.Bilinear` takes the
gradient of ``f`` at the midpoints through torch's own autograd, whose complex vector-Jacobian products (the
conjugate of the multiplier, as for the Fourier transforms around it) carry that split back to the real input:
the correlation computed through the spectra gets the values of the same correlation written as a real bilinear
form (tests/rules/test_spectral_product.py).

A magnitude :math:`|z| = \sqrt{a^2 + b^2}` (``abs``, a spectrum's amplitudes) is a function of two real players, the
real part :math:`a` and the imaginary part :math:`b`: :class:`Modulus` splits :math:`|z| - |z_r|` between them by the
exact two-player Shapley rule, in closed form (:func:`rnnshap.formulas.pairs.modulus_multipliers`), and hands back
:math:`m_a + i\,m_b` as the complex operand's gradient, which torch's convention for a real result (the gradient
:math:`\partial L/\partial a + i\,\partial L/\partial b`) carries through the linear maps before it
(tests/rules/test_complex_modulus.py).

An elementwise function :math:`w = g(z)` of one complex value that is analytic but at its poles (:data:`ANALYTIC`:
``tanh``, ``exp``, ``1/z``: FEDformer's frequency attention) is a pair of real functions of the same two players,
:math:`u = \operatorname{Re} w` and :math:`v = \operatorname{Im} w`: :class:`ComplexElementwise` splits each between
:math:`a` and :math:`b` by the exact two-player Shapley rule from its values on the four coalitions, computed in
float64 whatever the model's dtype (so the midpoint derivative stands in only where a part moves by less than
float64's threshold, and a float32 model near a pole keeps its float32 accuracy), and its backward carries the
incoming gradient through that real 2 × 2 map. A function with a branch cut (``log``, ``sqrt``, powers), where a
part's small step may jump, one that torch cannot differentiate on complex values (``silu``), and one without a
rule for real values (``angle``) are refused by the engine.
"""

from __future__ import annotations

from typing import Any

import torch

from ..formulas import pairs
from ..formulas.torch_ops import TORCH
from .base import OpCall, Rule
from .elementwise import Bilinear, Multilinear, Product, Shapley, attach, coalition_multipliers, with_multipliers
from .registry import op_key, op_name


class Modulus(Rule):
    """``|z|`` of one input-dependent complex ``z``: the exact two-player Shapley rule over its real and imaginary
    parts (see the module's docstring)."""

    def attribute(self, call: OpCall) -> Any:
        (z,), (z_r,) = call.inputs, call.references
        z_in, z_r = z.detach(), z_r.detach()
        output = z_in.abs()
        ref_output = call.ref_output if isinstance(call.ref_output, torch.Tensor) else z_r.abs()
        m_a, m_b = pairs.modulus_multipliers(TORCH, z_in.real, z_in.imag, z_r.real, z_r.imag, output, ref_output)
        return with_multipliers(output, [z], [torch.complex(m_a, m_b)])


class ComplexElementwise(Rule):
    """An elementwise ``w = g(z)`` of one input-dependent complex ``z``, analytic but at its poles: each of ``w``'s real
    and imaginary parts split between ``z``'s by the exact two-player Shapley rule (see the module's docstring)."""

    def attribute(self, call: OpCall) -> Any:
        (z,), (z_r,) = call.inputs, call.references
        z_in = z.detach()
        output = call.evaluate([z_in])
        wide = z_in.to(torch.complex128), z_r.detach().to(torch.complex128)  # (the coalitions in float64)
        players, references = [wide[0].real, wide[0].imag], [wide[1].real, wide[1].imag]
        multipliers: list[torch.Tensor] = []
        for part in (torch.real, torch.imag):  # (every function of ANALYTIC gives a complex value of a complex one)

            def g(p: list[torch.Tensor], part: Any = part) -> torch.Tensor:
                return part(call.evaluate([torch.complex(p[0], p[1])]))

            multipliers += [m.to(z_in.real.dtype) for m in coalition_multipliers(g, players, references)[2]]
        return attach(output, [z], _through_parts, multipliers)


def _through_parts(ctx: Any, grad: torch.Tensor) -> list[torch.Tensor]:
    """The backward of :class:`ComplexElementwise`: the gradient of each part of ``w`` (torch's ``∂L/∂u + i ∂L/∂v`` for
    a complex ``w``) through the parts' multipliers, as ``∂L/∂a + i ∂L/∂b``; where the pass met missing values, each
    term is 0 where its gradient is (an entry nothing downstream reads: 0, never 0 · NaN, as for real operands)."""
    unread = ctx.missing is not None and ctx.missing.seen

    def times(g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return (g * m).masked_fill(g == 0, 0.0) if unread else g * m

    m_ua, m_ub, m_va, m_vb = ctx.saved_tensors
    g_u, g_v = grad.real, grad.imag
    d_z = torch.complex(times(g_u, m_ua) + times(g_v, m_va), times(g_u, m_ub) + times(g_v, m_vb))
    return [d_z if d_z.shape == ctx.shapes[0] else d_z.sum_to_size(ctx.shapes[0])]


_BILINEAR = Bilinear()
_MODULUS = Modulus()
_ELEMENTWISE = ComplexElementwise()
#: the magnitude's functions, by the rule table's key
MAGNITUDES = frozenset(op_key(f) for f in (torch.abs, torch.Tensor.abs, torch.absolute, torch.Tensor.absolute))
#: the elementwise functions :class:`ComplexElementwise` takes on a complex value, by name: analytic but at their poles
#: (no branch cut) and differentiated by torch on complex values; a quotient with the complex value below
ANALYTIC = frozenset({
    "exp", "sin", "cos", "sinh", "cosh", "tan", "tanh", "sigmoid", "reciprocal", "square",
    "div", "divide", "true_divide", "__rtruediv__", "__rdiv__",
})  # fmt: skip


def complex_rule(func: Any, rule: Rule | None, tracked: int, out_of_place: bool) -> Rule | None:
    """The rule for ``func`` (its table's rule ``rule``) on ``tracked`` input-dependent operands of which one is
    complex, out of place: the bilinear rule for a product or a matrix product of two, the magnitude's rule for the
    magnitude of one, the parts' rule for an analytic elementwise function of one (:data:`ANALYTIC`, whose rule for
    real values is of the Shapley family); None for anything else (refused)."""
    if not out_of_place or rule is None:
        return None
    if tracked == 1 and op_key(func) in MAGNITUDES:
        return _MODULUS
    if tracked == 1 and isinstance(rule, Shapley) and op_name(func).rsplit(".", 1)[-1] in ANALYTIC:
        return _ELEMENTWISE
    if tracked == 2 and type(rule) in (Product, Bilinear, Multilinear):
        return _BILINEAR
    return None


__all__ = ["ANALYTIC", "MAGNITUDES", "ComplexElementwise", "Modulus", "complex_rule"]
