"""A product of two input-dependent spectra: Autoformer's autocorrelation ``irfft(rfft(a) * conj(rfft(b)))``.

The product of two complex values is bilinear, so the real rule's split holds as it is (rnnshap/rules/spectral.py).
The truth: the same circular cross-correlation written as a real bilinear form (an einsum with a shift tensor, by
the bilinear rule on real values) gets the same values, and the values add up to the model's own outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive

Tensor = torch.Tensor
D = torch.float64
N = 6


def _shift() -> Tensor:
    """``S[t, i, j] = 1`` where ``i = j + t (mod N)``: ``Σ_ij S[t, i, j] a_i b_j = Σ_j a_{j+t} b_j``."""
    shift = torch.zeros(N, N, N, dtype=D)
    for t in range(N):
        for j in range(N):
            shift[t, (j + t) % N, j] = 1.0
    return shift


class Correlation(nn.Module):
    """The circular cross-correlation of two linear maps of the input, through the spectra or as a real form."""

    def __init__(self, spectral: str | None) -> None:
        super().__init__()
        self.spectral = spectral
        self.a, self.b = nn.Linear(N, N), nn.Linear(N, N)
        self.register_buffer("shift", _shift())

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.tanh(self.a(x)), self.b(x)
        if self.spectral is not None:
            p, q = torch.fft.rfft(a, dim=-1), torch.conj(torch.fft.rfft(b, dim=-1))
            product = p * q if self.spectral == "product" else torch.einsum("bk,bk->bk", p, q)
            return torch.fft.irfft(product, n=N, dim=-1)
        return torch.einsum("tij,bi,bj->bt", self.shift, a, b)


@pytest.mark.parametrize("form", ["product", "einsum"])
def test_a_product_of_two_spectra_gets_the_values_of_the_real_bilinear_form(form: str) -> None:
    torch.manual_seed(4)
    spectral, real = Correlation(form).to(D).eval(), Correlation(None).to(D).eval()
    real.load_state_dict(spectral.state_dict())
    g = torch.Generator().manual_seed(2)
    background, X = torch.randn(4, N, generator=g, dtype=D), torch.randn(3, N, generator=g, dtype=D)
    with torch.no_grad():
        torch.testing.assert_close(spectral(X), real(X), rtol=0, atol=1e-14)  # (the same function)
    values = rnnshap.DeepExplainer(spectral, background).shap_values(X)
    assert_additive(values, spectral, X, background, D)
    expected = rnnshap.DeepExplainer(real, background).shap_values(X)
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-13)
