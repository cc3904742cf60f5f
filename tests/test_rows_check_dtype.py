"""DeepExplainer's check that a row's output does not depend on the other rows of its batch
(rnnshap/engines/pytorch/engine.py, ``_check_rows_independent``) allows the rounding of the model's own dtype.

Truths: a float32 model whose output for a row changes with its place in the batch by a few float32 eps
(what kernels that sum in another order for another batch do, as sktime's MVTS transformer's) is accepted and
its values add up to its own outputs; the same change on a float64 model is no float64 rounding and is
refused; a model that normalizes over the batch is refused in float32 too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnshap

from .conftest import additivity_tol, assert_additive, eps


class PlaceRounding(nn.Module):
    """A linear model whose rows at odd places of the batch come out ``ulps`` eps (of ``dtype``) larger: rounding
    that depends on the batch, of the size the check must allow in float32."""

    def __init__(self, dtype: torch.dtype, ulps: float) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3).to(dtype)
        self.relative = ulps * torch.finfo(torch.float32).eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(self.linear(x.flatten(1)))
        odd = (torch.arange(x.shape[0], device=x.device) % 2).to(out.dtype)[:, None]
        return out * (1 + self.relative * odd)


class BatchCentred(nn.Module):
    """Rows that interact: each row's output is centred on the batch's mean."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        return out - out.mean(0, keepdim=True)


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 2, 3, generator=generator).to(dtype), torch.randn(8, 2, 3, generator=generator).to(dtype)


def test_the_premise_batched_and_row_wise_outputs_differ() -> None:
    model = PlaceRounding(torch.float32, 8).eval()
    _, background = data(torch.float32)
    with torch.no_grad():
        together = model(background)
        reversed_ = model(background.flip(0)).flip(0)
    gap = float((together - reversed_).abs().max())
    assert 0 < gap <= 16 * eps(torch.float32) * float(together.abs().max())


def test_float32_rounding_between_batches_is_accepted_and_adds_up() -> None:
    model = PlaceRounding(torch.float32, 8).eval()
    x, background = data(torch.float32)
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert_additive(values, model, x, background, torch.float32)
    assert additivity_tol(torch.float32) > 0


def test_the_same_gap_on_a_float64_model_is_refused() -> None:
    """8 float32 eps are 2^32 float64 eps: no float64 kernel rounds that much."""
    model = PlaceRounding(torch.float64, 8).eval()
    _, background = data(torch.float64)
    with pytest.raises(rnnshap.InputError, match="mixes the rows of axis 0"):
        rnnshap.DeepExplainer(model, background)


def test_rows_that_interact_are_refused_in_float32() -> None:
    """The mean over the batch is the same in either order: the two halves of the background tell."""
    model = BatchCentred().eval()
    _, background = data(torch.float32)
    with pytest.raises(rnnshap.InputError, match="(?s)mixes the rows of axis 0.*two halves.*normalizes over the batch"):
        rnnshap.DeepExplainer(model, background)
