"""One function, one set of values: a normalization written by hand gets the values of the built-in one.

``nn.LayerNorm`` and the same layer norm written with ``mean``, ``var``, ``rsqrt``,
a scale and a shift differed by 4 % after an LSTM with a residual: the built-in rule weights the
product of the centred value and the inverse scale by the scales (``rules.structured.scaled``),
while the hand-written form's product took the Shapley rule. Both now reach the scale-weighted
rule. The truth is the other form of the same function: the built-in module against every
hand-written form, in float64, within 1e-10 of the largest attribution. All-zero rows (padding)
stay bounded in every form.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap

from ..conftest import ADDITIVITY_TOL, assert_additive, relative_to_max
from ..models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64
#: the same function computed in two orders: float64 rounding, amplified by the secants' quotients
SAME_FUNCTION = ADDITIVITY_TOL[F64]
EPS = 1e-5
Norm = Callable[[nn.Module, Tensor], Tensor]  # (the model, its pre-normalization features)


def norm_net(norm: Norm) -> nn.Module:
    """LSTM(4 → 8) plus a linear residual, a normalization over the 8 features, the mean over time,
    a linear head to 2 outputs. The normalization's affine weights are the model's own, so that
    every form shares them."""
    return Composite(lambda m, x: m.head(m.norm(m, m.lstm(x)[0] + m.skip(x)).mean(1)),
                     lstm=nn.LSTM(4, 8, batch_first=True), skip=nn.Linear(4, 8), head=nn.Linear(8, 2),
                     weight=nn.Parameter(torch.rand(8) + 0.5), bias=nn.Parameter(torch.randn(8) * 0.3), norm=norm)  # fmt: skip


def _centred(z: Tensor) -> Tensor:
    return z - z.mean(-1, keepdim=True)


def _groups(z: Tensor, scale: Callable[[Tensor], Tensor], net: nn.Module) -> Tensor:
    """GroupNorm(2 groups of 4 channels) over (N, 8, T), written by hand: the grouped standardization ``scale``."""
    y = z.transpose(1, 2)
    grouped = scale(y.reshape(y.shape[0], 2, -1))
    return (grouped.reshape(y.shape) * net.weight[:, None] + net.bias[:, None]).transpose(1, 2)


#: name → (built-in form, hand-written forms)
FORMS: dict[str, tuple[Norm, dict[str, Norm]]] = {
    "layer_norm": (
        lambda n, z: F.layer_norm(z, (8,), n.weight, n.bias, EPS),
        {
            "rsqrt": lambda n, z: _centred(z) * torch.rsqrt(_centred(z).pow(2).mean(-1, keepdim=True) + EPS) * n.weight + n.bias,
            "var-rsqrt-method": lambda n, z: (
                (z - z.mean(-1, keepdim=True)) * (z.var(-1, unbiased=False, keepdim=True) + EPS).rsqrt() * n.weight + n.bias
            ),
            "div-sqrt": lambda n, z: (
                n.weight * (_centred(z) / torch.sqrt((_centred(z) * _centred(z)).mean(-1, keepdim=True) + EPS)) + n.bias
            ),
            "pow-minus-half": lambda n, z: (
                _centred(z) * (n.weight * (_centred(z) ** 2).mean(-1, keepdim=True).add(EPS).pow(-0.5)) + n.bias
            ),
            "reciprocal-sqrt": lambda n, z: (
                _centred(z) * (1.0 / torch.sqrt(torch.var(z, -1, keepdim=True, correction=0) + EPS)) * n.weight + n.bias
            ),
            "div-pow-half": lambda n, z: _centred(z) / (z.var(-1, keepdim=True, unbiased=False) + EPS) ** 0.5 * n.weight + n.bias,
        },
    ),
    "rms_norm": (
        lambda n, z: F.rms_norm(z, (8,), n.weight, 1e-6),
        {
            "llama": lambda n, z: n.weight * (z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6)),
            "div-sqrt": lambda n, z: z / torch.sqrt((z * z).mean(-1, keepdim=True) + 1e-6) * n.weight,
            "reciprocal": lambda n, z: z * torch.reciprocal(torch.sqrt(z.square().mean(-1, keepdim=True) + 1e-6)) * n.weight,
        },
    ),
    "group_norm": (
        lambda n, z: F.group_norm(z.transpose(1, 2), 2, n.weight, n.bias, EPS).transpose(1, 2),
        {
            "div-sqrt": lambda n, z: _groups(
                z, lambda g: (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + EPS), n
            ),
            "rsqrt": lambda n, z: _groups(
                z, lambda g: _centred(g) * torch.rsqrt(_centred(g).pow(2).mean(-1, keepdim=True) + EPS), n
            ),
        },
    ),
    "normalize": (
        lambda n, z: F.normalize(z, dim=-1) * n.weight + n.bias,
        {
            "div-sqrt-clamp": lambda n, z: z / torch.sqrt((z * z).sum(-1, keepdim=True)).clamp_min(1e-12) * n.weight + n.bias,
            "div-norm": lambda n, z: z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12) * n.weight + n.bias,
            "div-vector-norm": lambda n, z: z / torch.linalg.vector_norm(z, 2, -1, True).clamp(min=1e-12) * n.weight + n.bias,
            "rsqrt-clamp": lambda n, z: z * torch.rsqrt(z.square().sum(-1, keepdim=True).clamp_min(1e-24)) * n.weight + n.bias,
        },
    ),
    "normalize-p1": (
        lambda n, z: F.normalize(z, p=1, dim=-1) * n.weight + n.bias,
        {"div-norm": lambda n, z: z / torch.norm(z, p=1, dim=-1, keepdim=True).clamp_min(1e-12) * n.weight + n.bias},
    ),
}

CASES = [(name, form) for name, (_, forms) in FORMS.items() for form in forms]


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(5, 6, 4, generator=g, dtype=F64), torch.randn(3, 6, 4, generator=g, dtype=F64)


@pytest.mark.parametrize(("name", "form"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_a_normalization_written_by_hand_gets_the_values_of_the_built_in_one(name: str, form: str) -> None:
    torch.manual_seed(0)
    built_in, forms = FORMS[name]
    net = norm_net(built_in).double().eval()
    background, X = _data()
    expected = rnnshap.DeepExplainer(net, background).shap_values(X)
    with torch.no_grad():
        outputs = net(X)
        net.norm = forms[form]
        torch.testing.assert_close(net(X), outputs, rtol=1e-12, atol=1e-12)  # the same function
    values = rnnshap.DeepExplainer(net, background).shap_values(X)
    assert_additive(values, net, X, background, F64)
    assert relative_to_max(values, expected) <= SAME_FUNCTION


# -- all-zero rows: a padded step under every form --------------------------------------------------------
def padded(norm: Callable[[Tensor], Tensor]) -> nn.Module:
    """Linear(5 → 3, identity on the first 3 features, no bias) → a normalization → a fixed read-out:
    an all-zero input row gives an all-zero row to normalize, whose scale is eps^(-1/2)."""
    return Composite(lambda m, x: (y := m.norm(x[:, :3])) @ torch.linspace(-1, 1, 6, dtype=y.dtype).reshape(3, 2), norm=norm)


ZERO_ROWS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "rms_norm-eps-1e-16": (
        lambda t: F.rms_norm(t, (3,), eps=1e-16),
        lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-16),
    ),
    "layer_norm": (
        lambda t: F.layer_norm(t, (3,)), lambda t: _centred(t) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
    ),
    "normalize": (lambda t: F.normalize(t, dim=-1), lambda t: t / torch.sqrt((t * t).sum(-1, keepdim=True)).clamp_min(1e-12)),
}


@pytest.mark.parametrize("name", list(ZERO_ROWS))
@pytest.mark.parametrize("side", ["sample", "reference"])
def test_a_zero_row_under_a_normalization_written_by_hand_stays_bounded(name: str, side: str) -> None:
    """The Shapley rule on ``c ⊙ s`` gave terms of the order of eps^(-1/2) on a zero row (φ ≈ ±5e6 for
    an output that moves by 1); the scale-weighted rule keeps φ of the size of the output's change,
    in the hand-written form as in the built-in one, with the same values."""
    g = torch.Generator().manual_seed(3)
    rows, zero = torch.randn(3, 5, generator=g, dtype=F64), torch.zeros(1, 5, dtype=F64)
    background, X = (rows, zero) if side == "sample" else (zero, rows)
    built_in, by_hand = (padded(f).eval() for f in ZERO_ROWS[name])
    expected = rnnshap.DeepExplainer(built_in, background).shap_values(X)
    values = rnnshap.DeepExplainer(by_hand, background).shap_values(X)
    assert_additive(values, by_hand, X, background, F64)
    with torch.no_grad():
        moves = (by_hand(X)[:, None] - by_hand(background)[None]).abs().max().item()
    assert np.abs(values).max() <= 2 * moves
    assert relative_to_max(values, expected) <= SAME_FUNCTION


def test_a_product_with_a_root_that_is_not_a_normalization_keeps_the_shapley_rule() -> None:
    """Only a division by a root, or a product with an inverse root, is a normalization's product: ``a · √b``
    (a scale times a value, as a de-normalization) keeps the Shapley rule, m_a = (√b + √b_r)/2."""
    background, X = torch.rand(4, 2, dtype=F64) + 0.5, torch.rand(3, 2, dtype=F64) + 0.5

    def _product(x: Tensor) -> Tensor:
        return x[:, :1] * torch.sqrt(x[:, 1:])

    values = rnnshap.DeepExplainer(Function(_product), background).shap_values(X)[..., 0]
    a, b, ar, br = X[:, None, 0], X[:, None, 1], background[None, :, 0], background[None, :, 1]
    expected_a = ((b.sqrt() + br.sqrt()) / 2 * (a - ar)).mean(1)
    np.testing.assert_allclose(values[:, 0], expected_a.numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    ("op", "match"),
    [
        (lambda t: t / t.norm(p=3, dim=1, keepdim=True), "p = 1 and p = 2"),
        (lambda t: t / torch.linalg.vector_norm(t), "every dimension"),
        (lambda t: t / t.norm(dim=1, keepdim=True, dtype=F64), "dtype"),
    ],
    ids=["p3", "no-dim", "dtype"],
)
def test_a_norm_the_rule_does_not_cover_is_refused_by_name(op: Callable[[Tensor], Tensor], match: str) -> None:
    def apply(x: Tensor) -> Tensor:
        return op(x)

    with pytest.raises(rnnshap.UnsupportedOperationError, match=match):
        rnnshap.DeepExplainer(Function(apply), torch.randn(3, 4, dtype=F64))
