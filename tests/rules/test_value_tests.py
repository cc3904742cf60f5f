"""``isnan`` / ``isinf`` / ``isfinite`` of an input-dependent tensor: comparisons, as an
imputation model writes them. On data without missing values they change nothing: the values are those
of the same model written without them, and a branch on them that every row takes alike is followed."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive, relative_to_max
from ..models.torch import RecurrentHead

Tensor = torch.Tensor
F64 = torch.float64


def _impute(x: Tensor) -> Tensor:
    if torch.isnan(x).any():  # a branch on whether any value is missing (pypots BRITS, gluonts)
        x = torch.nan_to_num(x)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # fill the missing values
    x = torch.where(torch.isinf(x), 0.0, x)
    if not torch.isfinite(x).all():
        raise ValueError("not finite")
    return x.masked_fill(torch.isneginf(x), 0.0)


def imputing(clean: Callable[[Tensor], Tensor]) -> nn.Module:
    return RecurrentHead("lstm", 3, 6, 2, prepare=clean, names="lstm head")


def _assert_written_two_ways(clean: Callable[[Tensor], Tensor], plain_clean: Callable[[Tensor], Tensor], seed: int) -> None:
    """``imputing(clean)`` is additive and gets the values of ``imputing(plain_clean)``, the same
    function written another way, with the same weights (float64, to 1e-12 of the largest)."""
    model, plain = imputing(clean).to(F64).eval(), imputing(plain_clean).to(F64).eval()
    plain.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    background, X = torch.randn(6, 5, 3, generator=g, dtype=F64), torch.randn(3, 5, 3, generator=g, dtype=F64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, F64)
    assert relative_to_max(values, rnnshap.DeepExplainer(plain, background).shap_values(X)) <= 1e-12


def test_value_tests_on_complete_data_give_the_values_of_the_model_without_them() -> None:
    _assert_written_two_ways(_impute, lambda x: x, seed=2)


def test_masked_fill_by_a_comparison_is_the_gate_where_is() -> None:
    """``x.masked_fill(x < 0, 0)`` is relu written another way: the same values as ``relu``."""
    _assert_written_two_ways(
        lambda x: x.masked_fill(x < 0, 0.0) + x.masked_fill(torch.isnan(x), 1.0), lambda x: torch.relu(x) + x, seed=3
    )
