"""RMSNorm with its default eps (None: torch.finfo(dtype).eps) on an all-zero row, in float64.

Observed: attributions of order 1/sqrt(eps) ≈ 7e7·|x − r| (here ±5e6 for an output that moves by
0.86) whose sum misses f(x) − E[f] by 1.1e-8, ten times the float64 promise of 1e-9·max(1, |Δ|).
rnnshap's own check does not notice (its scale includes Σ|φ| ≈ 1e7); inside larger models the same
row makes shap_values raise AdditivityError (fuzz seed 2044: relative error 3e-9 of the scale).
Expected: additive to ~1e-12 in float64, as with LayerNorm (eps=1e-5) or RMSNorm(eps=1e-6).

A zero row is what padding_idx embeddings, masked_fill(~keep, 0) padding masks and zero padding
produce, so a realistic RMSNorm after padding hits it. Found by tests/test_fuzz.py (norm=rms).
Run: python tests/fuzz/reproducers/rmsnorm_zero_row.py
"""

import torch
from torch import nn

import rnnshap


def run() -> tuple[float, float, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.RMSNorm(3), nn.Linear(3, 1)).double().eval()
    background = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64)
    x = torch.zeros(1, 3, dtype=torch.float64)  # the embedding of a padding token, a masked step
    phi = rnnshap.DeepExplainer(model, background).shap_values(x)  # no AdditivityError is raised
    with torch.no_grad():
        gap = (model(x) - model(background)).item()
    return float(phi.sum()), gap, phi


def check() -> None:
    total, gap, _ = run()
    assert abs(total - gap) <= 1e-9 * max(1.0, abs(gap)), f"sum(phi) = {total!r}, f(x) - E f = {gap!r}"


if __name__ == "__main__":
    total, gap, phi = run()
    print("phi =", phi.ravel(), " sum =", total, " f(x) - E f =", gap, " error =", abs(total - gap))
