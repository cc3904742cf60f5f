"""instance_norm (``nn.InstanceNorm1d``): each (sample, channel) standardized over its own steps.

With its input's statistics it is group_norm with one group per channel, the same function, so the same values; with
the running statistics (``track_running_stats`` in eval mode) it is affine, and DeepSHAP of an affine model is its
closed form, the weights times (x - r). The entry's float64 parity with the layer-norm formula over the steps is in
tests/test_operations_structured.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import rnnshap

C, T = 3, 6


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, C, T, generator=g, dtype=torch.float64), torch.randn(2, C, T, generator=g, dtype=torch.float64)


def _affine(norm: nn.Module) -> None:
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))


def test_instance_norm_gets_the_values_of_group_norm_with_a_group_per_channel_and_adds_up() -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(C * T, 2)).double()
    instance, group = nn.InstanceNorm1d(C, affine=True).double(), nn.GroupNorm(C, C).double()
    _affine(instance), _affine(group)
    background, X = _data()
    by_instance = nn.Sequential(instance, head).eval()
    values = rnnshap.DeepExplainer(by_instance, background).shap_values(X)  # (the additivity check at float64)
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(nn.Sequential(group, head).eval(), background).shap_values(X),
                               rtol=1e-12, atol=1e-13)  # fmt: skip
    with torch.no_grad():
        gap = (by_instance(X) - by_instance(background).mean(0)).numpy()
    np.testing.assert_allclose(values.sum((1, 2)), gap, rtol=1e-10, atol=1e-12)


def test_instance_norm_with_running_statistics_in_eval_mode_is_its_affine_closed_form() -> None:
    norm = nn.InstanceNorm1d(C, affine=True, track_running_stats=True).double()
    _affine(norm)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0]))
        norm.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
    linear = nn.Linear(C * T, 1).double()
    model = nn.Sequential(norm, nn.Flatten(), linear).eval()
    background, X = _data()
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
    slope = (linear.weight.detach().reshape(C, T) * scale[:, None]).numpy()
    expected = slope[None] * (X - background.mean(0)).numpy()
    np.testing.assert_allclose(values[..., 0], expected, rtol=1e-12, atol=1e-13)
