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
(tests/rules/test_complex_modulus.py). Any other nonlinear operation on a complex value (``angle``, ``exp``) stays
refused by the engine.
"""

from __future__ import annotations

from typing import Any

import torch

from ..formulas import pairs
from ..formulas.torch_ops import TORCH
from .base import OpCall, Rule
from .elementwise import Bilinear, Product, with_multipliers
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


_BILINEAR = Bilinear()
_MODULUS = Modulus()
#: the magnitude's functions, by the rule table's key
MAGNITUDES = frozenset(op_key(f) for f in (torch.abs, torch.Tensor.abs, torch.absolute, torch.Tensor.absolute))


def complex_rule(func: Any, rule: Rule | None, tracked: int, out_of_place: bool) -> Rule | None:
    """The rule for ``func`` (its table's rule ``rule``) on ``tracked`` input-dependent operands of which one is
    complex: the bilinear rule for a product or a matrix product of two (out of place), the magnitude's rule for the
    magnitude of one, None for anything else (refused)."""
    if not out_of_place:
        return None
    if tracked == 1 and op_key(func) in MAGNITUDES:
        return _MODULUS
    if tracked > 1 and rule is not None and type(rule) in (Product, Bilinear):
        return _BILINEAR
    return None


__all__ = ["MAGNITUDES", "Modulus", "complex_rule"]
