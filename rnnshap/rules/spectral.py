r"""Complex values: a product of two spectra, and a spectrum's magnitude.

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

Any other elementwise function :math:`w = g(z)` of one complex value (``tanh``, ``exp``, ``1/z``: FEDformer's
frequency attention) is a pair of real functions of the same two players, :math:`u = \operatorname{Re} w` and
:math:`v = \operatorname{Im} w`: :class:`ComplexElementwise` splits each between :math:`a` and :math:`b` by the exact
two-player Shapley rule from its values on the four coalitions (the midpoint derivative where a part barely moves,
as for real operands), and its backward carries the incoming gradient through that real 2 × 2 map. An operation
without a rule for real values (``angle``) stays refused by the engine.
"""

from __future__ import annotations

from typing import Any

import torch

from ..formulas import pairs
from ..formulas.torch_ops import TORCH
from .base import OpCall, Rule
from .elementwise import Bilinear, Multilinear, Product, Shapley, attach, coalition_multipliers, with_multipliers
from .registry import op_key


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
    """An elementwise ``w = g(z)`` of one input-dependent complex ``z``: each of ``w``'s real and imaginary parts split
    between ``z``'s by the exact two-player Shapley rule (see the module's docstring)."""

    def attribute(self, call: OpCall) -> Any:
        (z,), (z_r,) = call.inputs, call.references
        z_in, z_r = z.detach(), z_r.detach()
        output = call.evaluate([z_in])
        players, references = [z_in.real, z_in.imag], [z_r.real, z_r.imag]
        parts = [torch.real, torch.imag] if output.is_complex() else [lambda w: w]
        multipliers: list[torch.Tensor] = []
        for part in parts:

            def g(p: list[torch.Tensor], part: Any = part) -> torch.Tensor:
                return part(call.evaluate([torch.complex(p[0], p[1])]))

            multipliers += coalition_multipliers(g, players, references)[2]
        return attach(output, [z], _through_parts, multipliers)


def _through_parts(ctx: Any, grad: torch.Tensor) -> list[torch.Tensor]:
    """The backward of :class:`ComplexElementwise`: the gradient of each part of ``w`` (torch's ``∂L/∂u + i ∂L/∂v`` for
    a complex ``w``) through the parts' multipliers, as ``∂L/∂a + i ∂L/∂b``."""
    if len(ctx.saved_tensors) == 4:
        m_ua, m_ub, m_va, m_vb = ctx.saved_tensors
        g_u, g_v = grad.real, grad.imag
        d_a, d_b = g_u * m_ua + g_v * m_va, g_u * m_ub + g_v * m_vb
    else:
        m_ua, m_ub = ctx.saved_tensors
        d_a, d_b = grad * m_ua, grad * m_ub
    d_z = torch.complex(d_a, d_b)
    return [d_z if d_z.shape == ctx.shapes[0] else d_z.sum_to_size(ctx.shapes[0])]


_BILINEAR = Bilinear()
_MODULUS = Modulus()
_ELEMENTWISE = ComplexElementwise()
#: the magnitude's functions, by the rule table's key
MAGNITUDES = frozenset(op_key(f) for f in (torch.abs, torch.Tensor.abs, torch.absolute, torch.Tensor.absolute))


def complex_rule(func: Any, rule: Rule | None, tracked: int, out_of_place: bool) -> Rule | None:
    """The rule for ``func`` (its table's rule ``rule``) on ``tracked`` input-dependent operands of which one is
    complex, out of place: the bilinear rule for a product or a matrix product of two, the magnitude's rule for the
    magnitude of one, the parts' rule for another elementwise function of one (a rule of the Shapley family: Rescale
    and its closed forms); None for anything else (refused)."""
    if not out_of_place or rule is None:
        return None
    if tracked == 1 and op_key(func) in MAGNITUDES:
        return _MODULUS
    if tracked == 1 and isinstance(rule, Shapley):
        return _ELEMENTWISE
    if tracked == 2 and type(rule) in (Product, Bilinear, Multilinear):
        return _BILINEAR
    return None


__all__ = ["MAGNITUDES", "ComplexElementwise", "Modulus", "complex_rule"]
