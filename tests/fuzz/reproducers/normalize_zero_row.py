"""F.normalize (p=2 or p=1, default eps=1e-12) on an all-zero row, in float64.

Observed: attributions of order |r|/eps (max |φ| = 4.6e10 for p=2, 1.6e10 for p=1) for an output that
moves by ~0.1, whose sum misses f(x) − E[f] by 1.3e-5 (p=2) and 6e-5 (p=1): 10^4 times the float64
promise of 1e-9·max(1, |Δ|). rnnshap's own additivity check does not notice (its scale includes
Σ|φ| ≈ 1e11), so the values come back silently. On a nonzero row the same model is exact.
Expected: additive to float64 precision (docs/concepts.md lists F.normalize p = 1, 2 as decomposed
exactly), with attributions of the size of the output's change.

A zero row is what padding_idx embeddings, masked_fill(~keep, 0) padding masks and zero padding
produce. Found by tests/test_fuzz.py (norm=normalize, norm=normalize_p1).
Run: python tests/fuzz/reproducers/normalize_zero_row.py
"""

import torch
import torch.nn.functional as F
from torch import nn

import rnnshap


class Normalized(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.head = nn.Linear(3, 1)

    def forward(self, x):  # x: (N, 3)
        return self.head(F.normalize(x, p=self.p, dim=-1))


def run(p: float) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = Normalized(p).double().eval()
    background = torch.tensor([[0.3, -1.2, 0.7], [1.0, 0.2, -0.4]], dtype=torch.float64)
    x = torch.zeros(1, 3, dtype=torch.float64)  # a padded / masked step
    phi = rnnshap.DeepExplainer(model, background).shap_values(x)  # no AdditivityError is raised
    with torch.no_grad():
        gap = (model(x) - model(background).mean(0)).item()
    return float(phi.sum()), gap, float(abs(phi).max())


def check() -> None:
    for p in (2.0, 1.0):
        total, gap, _ = run(p)
        assert abs(total - gap) <= 1e-9 * max(1.0, abs(gap)), f"p={p}: sum(phi) = {total!r}, f(x) - E f = {gap!r}"


if __name__ == "__main__":
    for p in (2.0, 1.0):
        total, gap, biggest = run(p)
        print(
            f"p={p}: max|phi| = {biggest:.3g}, sum(phi) = {total:.12g}, f(x) - E f = {gap:.12g}, error = {abs(total - gap):.3g}"
        )
