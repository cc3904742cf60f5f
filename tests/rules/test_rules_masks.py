"""-inf masks before softmax / log_softmax / exp / max: exact, never NaN.

Attention code masks scores with ``masked_fill(mask, -inf)``, ``torch.where(mask, s, -inf)`` or by
adding ``triu(full(-inf), 1)``. The mask is the same on both sides of every pair, so masked entries
are ``-inf`` on both sides: they contribute exactly 0 and their multiplier is 0. Rows masked
throughout give NaN in torch; the rules give NaN there too, and nothing NaN flows back.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap
from rnnshap.rules import rescale, routed_max

from ..conftest import FLOAT32_VS_FLOAT64, assert_additive, relative_to_max
from ..models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64
INF = float("-inf")
T = 5


def _causal(t: int = T) -> Tensor:
    return torch.triu(torch.ones(t, t, dtype=torch.bool), 1)


MASKS: dict[str, Callable[[Tensor], Tensor]] = {
    "masked_fill": lambda s: s.masked_fill(_causal(), INF),
    "masked_fill_inplace": lambda s: s.clone().masked_fill_(_causal(), INF),
    "where_scalar": lambda s: torch.where(_causal(), INF, s),
    "where_tensor": lambda s: torch.where(~_causal(), s, torch.tensor(INF, dtype=s.dtype)),
    "additive_triu": lambda s: s + torch.triu(torch.full((T, T), INF, dtype=s.dtype), 1),
    "additive_inplace": lambda s: s.clone().add_(torch.zeros(T, T, dtype=s.dtype).masked_fill(_causal(), INF)),
}

NORMALISERS: dict[str, Callable[[Tensor], Tensor]] = {
    "softmax": lambda s: torch.softmax(s, -1),
    "F.softmax": lambda s: F.softmax(s, dim=-1),
    "log_softmax": lambda s: F.log_softmax(s, -1).masked_fill(_causal(), 0.0),
    "exp": lambda s: torch.exp(s) / (1 + torch.exp(s).sum(-1, keepdim=True)),
    "max": lambda s: s.amax(-1, keepdim=True) + s.max(-1).values[..., None],
}


def _masked_attention(m: nn.Module, x: Tensor) -> Tensor:
    q, k, v = m.q(x), m.k(x), m.v(x)
    scores = m.mask(q @ k.transpose(1, 2) / 2.0)
    weights = m.normaliser(scores)
    mixed = weights @ v if m.weighted else weights * v
    return m.out(mixed.flatten(1))


def masked_attention(mask: str, normaliser: str, d: int = 3, h: int = 4) -> Composite:
    """Linear → queries, keys, values → masked scores → normaliser → weighted values → Linear."""
    return Composite(_masked_attention, mask=MASKS[mask], normaliser=NORMALISERS[normaliser], q=nn.Linear(d, h),
                     k=nn.Linear(d, h), v=nn.Linear(d, h), out=nn.Linear(T * h, 2), weighted=normaliser != "max")  # fmt: skip


def _explain(model: nn.Module, dtype: torch.dtype, scale: float, seed: int = 0) -> tuple[np.ndarray, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(4, T, 3, generator=g, dtype=F64) * scale
    X = torch.randn(3, T, 3, generator=g, dtype=F64) * scale
    X[0] = background[1]  # Δ = 0 for one pair
    model = model.to(dtype)
    values = rnnshap.DeepExplainer(model, background.to(dtype)).shap_values(X.to(dtype), check_additivity=False)
    return values, X.to(dtype), background.to(dtype)


#: every mask form before softmax, every normaliser after the two kinds of mask (filled, added)
COMBINATIONS = sorted({(m, "softmax") for m in MASKS} | {(m, n) for m in ("masked_fill", "additive_triu") for n in NORMALISERS})


@pytest.mark.parametrize("mask,normaliser", COMBINATIONS)
def test_masked_scores_are_exact_and_finite(mask: str, normaliser: str) -> None:
    torch.manual_seed(1)
    model = masked_attention(mask, normaliser).eval()
    for scale in (1e-2, 1.0):
        by_dtype = {}
        for dtype in (torch.float32, F64):
            values, X, background = _explain(model, dtype, scale)
            assert np.isfinite(values).all()
            assert_additive(values, model, X, background, dtype)
            by_dtype[dtype] = values
        assert relative_to_max(by_dtype[torch.float32], by_dtype[F64]) < FLOAT32_VS_FLOAT64


@pytest.mark.parametrize("scale", [1e-2, 1e-1, 1.0, 10.0, 100.0])
def test_causal_softmax_attention_across_input_scales(scale: float) -> None:
    """float64 adds up at every scale, float32 up to 10; at 1e2 the logits q·k reach 1e4, where
    float32's own softmax rounds by ~1e-4 (measured 2e-4 against the float64 copy of the model),
    so there float32 is held to the float64 attributions (within 1e-3, measured 3e-5)."""
    torch.manual_seed(2)
    model = masked_attention("masked_fill", "softmax").eval()
    values = {}
    for dtype in (torch.float32, F64):
        values[dtype], X, background = _explain(model, dtype, scale, seed=3)
        assert np.isfinite(values[dtype]).all()
        if dtype == F64 or scale <= 10.0:
            assert_additive(values[dtype], model, X, background, dtype)
    assert relative_to_max(values[torch.float32], values[F64]) < FLOAT32_VS_FLOAT64


def test_masked_softmax_equals_softmax_over_the_kept_entries() -> None:
    """Closed form: masking entries is the same as leaving them out; they get nothing."""
    keep = torch.tensor([True, False, True, True, False, True])

    def _masked(x: Tensor) -> Tensor:
        return torch.softmax(x.masked_fill(~keep, INF), -1)

    def _kept(x: Tensor) -> Tensor:
        return torch.softmax(x, -1)

    g = torch.Generator().manual_seed(4)
    background, X = torch.randn(5, 6, generator=g, dtype=F64) * 2, torch.randn(3, 6, generator=g, dtype=F64) * 2
    masked = rnnshap.DeepExplainer(Function(_masked), background).shap_values(X)  # (3, 6, 6)
    kept = rnnshap.DeepExplainer(Function(_kept), background[:, keep]).shap_values(X[:, keep])  # (3, 4, 4)
    np.testing.assert_allclose(masked[:, keep][:, :, keep], kept, rtol=1e-12, atol=1e-14)
    assert np.abs(masked[:, ~keep]).max() == 0.0  # masked inputs get nothing
    assert np.abs(masked[:, :, ~keep]).max() == 0.0  # the always-0 outputs get nothing


@pytest.mark.parametrize("normaliser", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_fully_masked_rows_give_torchs_nan_and_no_nan_attributions(normaliser: str, dtype: torch.dtype) -> None:
    """Row 0 is masked throughout: torch gives NaN there; the model drops it with a where."""
    dead = torch.tensor([True, False, False, False])[:, None]
    mask = torch.tensor([[True] * 4, [False, True, False, True], [False] * 4, [True, True, True, False]])
    op = torch.softmax if normaliser == "softmax" else torch.log_softmax

    def rows(m: nn.Module, x: Tensor) -> Tensor:
        scores = m.lin(x).reshape(-1, 4, 4).masked_fill(mask, INF)
        weights = torch.where(dead | mask, 0.0, op(scores, -1))
        return m.out(weights.flatten(1))

    torch.manual_seed(5)
    model = Composite(rows, lin=nn.Linear(3, 16), out=nn.Linear(16, 2)).to(dtype).eval()
    g = torch.Generator().manual_seed(6)
    background, X = torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(3, 3, generator=g, dtype=dtype)
    values = rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False)
    assert np.isfinite(values).all()
    assert_additive(values, model, X, background, dtype)


@pytest.mark.parametrize("op", [torch.softmax, torch.log_softmax], ids=["softmax", "log_softmax"])
def test_rule_output_matches_torch_in_fully_masked_rows(op: Callable[..., Tensor]) -> None:
    mask = torch.tensor([[True] * 4, [False, True, False, True], [False] * 4])
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, generator=g, dtype=F64).masked_fill(mask, INF).requires_grad_(True)
    r = torch.randn(3, 4, generator=g, dtype=F64).masked_fill(mask, INF)
    out = _rule_call(op, x, r, -1)
    torch.testing.assert_close(out.detach(), op(x.detach(), -1), equal_nan=True, rtol=1e-12, atol=1e-14)
    (m,) = torch.autograd.grad(out, x, torch.where(torch.isnan(out), 0.0, 1.0))
    assert torch.isfinite(m).all() and (m[mask] == 0).all()


def _rule_call(fn: Callable[..., Tensor], x: Tensor, r: Tensor, *args: object, **kwargs: object) -> Tensor:
    """The registered rule's input-side output for ``fn(x, *args, **kwargs)`` against reference ``r``."""
    from torch.utils._pytree import tree_flatten

    from rnnshap.rules.base import OpCall
    from rnnshap.rules.registry import DEFAULT_REGISTRY

    leaves, spec = tree_flatten(((x, *args), kwargs))
    ref_leaves = [r if leaf is x else leaf for leaf in leaves]
    call = OpCall(fn, getattr(fn, "__name__", "op"), leaves, ref_leaves, spec, (0,))
    rule = DEFAULT_REGISTRY.op_rule(fn)
    assert rule is not None
    return rule.attribute(call)


# -- the building blocks ---------------------------------------------------------------------------------
def _mask_pair() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    x, r = torch.randn(4, 6, generator=g, dtype=F64), torch.randn(4, 6, generator=g, dtype=F64)
    masked = torch.rand(4, 6, generator=g) < 0.4
    return x.masked_fill(masked, INF), r.masked_fill(masked, INF), masked


@pytest.mark.parametrize("f", [torch.exp, torch.sigmoid, torch.tanh, F.softplus], ids=["exp", "sigmoid", "tanh", "softplus"])
def test_rescale_gives_zero_multiplier_where_both_sides_are_minus_inf(f: Callable[[Tensor], Tensor]) -> None:
    x, r, masked = _mask_pair()
    x.requires_grad_(True)
    out, ref_out = rescale(f, x, r)
    (m,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.isfinite(m).all()
    assert (m[masked] == 0).all()
    xd = x.detach()
    torch.testing.assert_close(m[~masked], (f(xd) - f(r))[~masked] / (xd - r)[~masked], rtol=1e-10, atol=1e-14)


def test_secant_exp_gives_zero_multiplier_where_both_sides_are_minus_inf() -> None:
    from rnnshap.rules.secant import secant

    x, r, masked = _mask_pair()
    x.requires_grad_(True)
    out, _ = secant(torch.exp, x, r)
    (m,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.isfinite(m).all() and (m[masked] == 0).all()


def test_rescale_derivative_infinite_at_zero_delta_gives_zero() -> None:
    """sqrt at 0 on both sides: the midpoint derivative is inf; 0 · inf would make NaN upstream."""
    x = torch.tensor([0.0, 1.0, 4.0], dtype=F64, requires_grad=True)
    r = torch.tensor([0.0, 1.0, 1.0], dtype=F64)
    out, _ = rescale(torch.sqrt, x, r)
    (m,) = torch.autograd.grad(out, x, torch.ones_like(out))
    torch.testing.assert_close(m, torch.tensor([0.0, 0.5, 1 / 3], dtype=F64))


def test_routed_max_over_masked_windows_is_finite() -> None:
    x, r, masked = _mask_pair()
    x[0], r[0] = INF, INF  # a window masked throughout
    x.requires_grad_(True)
    out = routed_max(lambda t: torch.max(t, dim=-1, keepdim=True), x, r)
    (m,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.isfinite(m).all() and (m[masked] == 0).all() and (m[0] == 0).all()
    phi = torch.where(torch.isfinite(x.detach() - r), m * (x.detach() - r), torch.zeros_like(m)).sum(-1)
    delta = out.detach().squeeze(-1) - r.amax(-1)
    torch.testing.assert_close(phi[1:], delta[1:], rtol=1e-12, atol=1e-14)
