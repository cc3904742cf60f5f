r"""Products of two input-dependent complex values: a product of two spectra.

Autoformer's autocorrelation is ``irfft(rfft(q) * conj(rfft(k)))``, the circular cross-correlation of ``q`` and ``k``
computed in the frequency domain. The Fourier transforms and ``conj`` are linear over the reals (rules/registry.py);
the product of the two spectra is bilinear over the complex numbers, so the identity of the real rule holds as it is,

.. math:: ab - a_r b_r = \Delta a\,\bar b + \bar a\,\Delta b, \qquad \bar a = \tfrac12 (a + a_r),\ \bar b = \tfrac12 (b + b_r),

the exact two-player Shapley split of every product term. :class:`~rnnshap.rules.elementwise.Bilinear` takes the
gradient of ``f`` at the midpoints through torch's own autograd, whose complex vector-Jacobian products (the
conjugate of the multiplier, as for the Fourier transforms around it) carry that split back to the real input:
the correlation computed through the spectra gets the values of the same correlation written as a real bilinear
form (tests/rules/test_spectral_product.py). Any other nonlinear operation on a complex value (``abs``, ``angle``) stays
refused by the engine.
"""

from __future__ import annotations

from .base import Rule
from .elementwise import Bilinear, Product

_BILINEAR = Bilinear()


def complex_rule(rule: Rule | None, out_of_place: bool) -> Rule | None:
    """The rule for ``rule``'s operation on two input-dependent operands of which one is complex: the bilinear rule
    for a product or a matrix product (out of place), None for anything else (refused)."""
    if out_of_place and rule is not None and type(rule) in (Product, Bilinear):
        return _BILINEAR
    return None


__all__ = ["complex_rule"]
