"""``addmm``, ``baddbmm``, ``addbmm``, ``addmv`` and ``addr``: the same values as the
same function written out as ``beta * input + alpha * (a @ b)``, in float64 within 1e-10, and additive."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive, relative_to_max
from ..models.torch import Composite

Tensor = torch.Tensor
F64 = torch.float64


def fused_model(op: Callable[[Tensor, Tensor], Tensor]) -> nn.Module:
    """An LSTM whose features feed one fused call (``fused``) or its written-out form (``plain``): ``op(h, x)``, h the
    LSTM's (N, T=4, 8) states."""
    return Composite(lambda m, x: m.op(m.lstm(x)[0], x).reshape(x.shape[0], -1), lstm=nn.LSTM(3, 8, batch_first=True), op=op)


W = torch.randn(8, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
BIAS = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(4))

# (fused, the same function written out): operands that depend on the input in every pattern
CASES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    # GPT-2's Conv1D: addmm(bias, x, weight), one input-dependent factor
    "addmm-conv1d": (
        lambda h, x: torch.addmm(BIAS, h.reshape(-1, 8), W).view(h.shape[0], 4, 5),
        lambda h, x: (BIAS + h.reshape(-1, 8) @ W).view(h.shape[0], 4, 5),
    ),
    # both factors and the added term depend on the input, with beta and alpha
    "addmm-bilinear": (
        lambda h, x: torch.stack(
            [torch.addmm(h[i, :2, :3], h[i, 1:3], h[i].T[:, :3], beta=0.5, alpha=2.0) for i in range(h.shape[0])]
        ),
        lambda h, x: torch.stack([0.5 * h[i, :2, :3] + 2.0 * (h[i, 1:3] @ h[i].T[:, :3]) for i in range(h.shape[0])]),
    ),
    "baddbmm": (
        lambda h, x: torch.baddbmm(x[:, :, :1] * x[:, :1, :1], h, h.transpose(1, 2), alpha=0.25),
        lambda h, x: x[:, :, :1] * x[:, :1, :1] + 0.25 * (h @ h.transpose(1, 2)),
    ),
    "baddbmm-method-in-place": (
        lambda h, x: (x[:, :, :1] * 1.0).repeat(1, 1, 4).baddbmm_(h, h.transpose(1, 2).tanh(), beta=2.0),
        lambda h, x: 2.0 * x[:, :, :1].repeat(1, 1, 4) + h @ h.transpose(1, 2).tanh(),
    ),
    "addbmm": (
        lambda h, x: torch.stack(
            [torch.addbmm(x[i, :, :2], h[i : i + 1], h[i : i + 1].transpose(1, 2)[:, :, :2]) for i in range(h.shape[0])]
        ),
        lambda h, x: torch.stack(
            [x[i, :, :2] + (h[i : i + 1] @ h[i : i + 1].transpose(1, 2)[:, :, :2]).sum(0) for i in range(h.shape[0])]
        ),
    ),
    "addmv": (
        lambda h, x: torch.stack([torch.addmv(x[i, :, 0], h[i], h[i, -1], alpha=-1.5) for i in range(h.shape[0])]),
        lambda h, x: torch.stack([x[i, :, 0] - 1.5 * (h[i] @ h[i, -1]) for i in range(h.shape[0])]),
    ),
    "addr": (
        lambda h, x: torch.stack([torch.addr(h[i, 0:1].T @ h[i, 1:2], h[i, 2], h[i, 3]) for i in range(h.shape[0])]),
        lambda h, x: torch.stack([h[i, 0:1].T @ h[i, 1:2] + torch.outer(h[i, 2], h[i, 3]) for i in range(h.shape[0])]),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_added_products_match_the_written_out_form(case: str) -> None:
    fused_op, plain_op = CASES[case]
    torch.manual_seed(0)
    fused = fused_model(fused_op).to(F64).eval()
    plain = fused_model(plain_op).to(F64).eval()
    plain.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(5, 4, 3, generator=g, dtype=F64), torch.randn(3, 4, 3, generator=g, dtype=F64)
    with torch.no_grad():
        assert torch.allclose(fused(X), plain(X), atol=1e-12)
    fused_values = rnnshap.DeepExplainer(fused, background).shap_values(X, check_additivity=False)
    plain_values = rnnshap.DeepExplainer(plain, background).shap_values(X, check_additivity=False)
    assert_additive(fused_values, fused, X, background, F64)
    assert relative_to_max(fused_values, plain_values) <= 1e-10
