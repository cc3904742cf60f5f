"""Attention where every query attends to one key only (Chronos-2's group attention across the
batch with one series per group): the weights are constants of the function, exactly one-hot on both sides of
every pair, so the queries and keys cannot change the output.

Truths: exact zeros for the inputs that reach only the queries and keys; the values of the same model written
without the attention (its output is the selected values); additivity; and a mask that leaves two keys to one
row goes the ordinary way, still exact.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap

from ..conftest import assert_additive, relative_to_max
from ..models.torch import Composite

Tensor = torch.Tensor
F64 = torch.float64
T, D = 5, 4


def _mask(kind: str, dtype: torch.dtype, extra: int | None = None) -> Tensor:
    """Each query attends to its own key only (``extra``: query ``extra`` to the key before its own too)."""
    keep = torch.eye(T, dtype=torch.bool)
    if extra is not None:
        keep[extra, extra - 1] = True
    if kind == "bool":
        return keep
    if kind == "finfo_min":  # Hugging Face's additive masks, Chronos-2's group mask
        return (1.0 - keep.to(dtype)) * torch.finfo(dtype).min
    return torch.zeros(T, T, dtype=dtype).masked_fill(~keep, float("-inf"))


def _attention(m: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    mask = _mask(m.kind, a.dtype, m.extra)
    return F.scaled_dot_product_attention(m.q(a), m.k(a), m.v(b), attn_mask=mask)


def _selected(m: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """The same function written without the attention: each position's own value."""
    return m.v(b)


def group_attention(kind: str, extra: int | None = None, attention: Callable[..., Tensor] = _attention) -> Composite:
    """Queries and keys from ``a``, values from ``b``, masked so that each position sees itself only."""
    return Composite(lambda m, a, b: m.out(torch.tanh(m.attention(m, a, b)).flatten(1)), kind=kind, extra=extra,
                     attention=attention, q=nn.Linear(D, D), k=nn.Linear(D, D), v=nn.Linear(D, D),
                     out=nn.Linear(T * D, 2))  # fmt: skip


def _data(seed: int) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    background = [torch.randn(6, T, D, generator=g, dtype=F64) for _ in range(2)]
    X = [torch.randn(3, T, D, generator=g, dtype=F64) for _ in range(2)]
    return background, X


@pytest.mark.parametrize("kind", ["bool", "finfo_min", "minus_inf"])
def test_one_key_per_query_gives_queries_and_keys_exactly_nothing(kind: str) -> None:
    torch.manual_seed(0)
    model = group_attention(kind).to(F64).eval()
    background, X = _data(1)
    a, b = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive([a, b], model, X, background, F64)
    assert np.all(np.asarray(a) == 0.0)  # a reaches the queries and keys only
    plain = group_attention(kind, attention=_selected).to(F64).eval()
    plain.load_state_dict(model.state_dict())
    expected = rnnshap.DeepExplainer(plain, background).shap_values(X)[1]
    assert relative_to_max(b, expected) <= 1e-12


@pytest.mark.parametrize("kind", ["bool", "finfo_min"])
@pytest.mark.parametrize("row", [0, T // 2, T - 1])  # (a middle row: the first and last rows are one-hot)
def test_a_row_with_two_keys_goes_the_ordinary_way(kind: str, row: int) -> None:
    torch.manual_seed(0)
    model = group_attention(kind, extra=row).to(F64).eval()
    background, X = _data(2)
    a, b = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive([a, b], model, X, background, F64)
    assert np.abs(np.asarray(a)).max() > 1e-6  # the queries and keys of that row matter now


def test_float32_one_key_masks_are_additive() -> None:
    torch.manual_seed(0)
    model = group_attention("finfo_min").eval()
    background, X = _data(3)
    background, X = [t.float() for t in background], [t.float() for t in X]
    a, b = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive([a, b], model, X, background, torch.float32)
    assert np.all(np.asarray(a) == 0.0)
