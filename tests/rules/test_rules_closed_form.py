"""Every rule, in float64, against its closed form written out independently (DESIGN §1).

The building blocks (``rnnshap.rules.rescale``, ``shapley``, ``product``, ``routed_max``) return
an output whose gradient is the rule's multiplier, so their multipliers are read off with
``torch.autograd.grad``. Whole tiny models are checked against closed-form DeepSHAP values
computed with numpy.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap
from rnnshap.rules import product, rescale, routed_max, shapley

from ..conftest import assert_additive
from ..models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64
RTOL = 1e-12


def _grad(output: Tensor, wrt: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(output, wrt, torch.ones_like(output), allow_unused=False))


def _pair(shape: tuple[int, ...] = (64,), min_gap: float = 1e-2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs and references whose every |Δ| is at least ``min_gap`` (so the quotient branch applies)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64) * 2
    r = torch.randn(shape, generator=g, dtype=F64) * 2
    close = (x - r).abs() < min_gap
    r = torch.where(close, x + min_gap * 3, r)
    return x, r


# -- Rescale -----------------------------------------------------------------------------------------
UNARY: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], bool]] = {
    # name: (f, f′ written by hand, smooth)
    "tanh": (torch.tanh, lambda t: 1 - torch.tanh(t) ** 2, True),
    "sigmoid": (torch.sigmoid, lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t)), True),
    "exp": (torch.exp, torch.exp, True),
    "softplus": (F.softplus, torch.sigmoid, True),
    "sin": (torch.sin, torch.cos, True),
    "relu": (torch.relu, lambda t: (t > 0).to(t.dtype), False),
    "leaky_relu": (
        lambda t: F.leaky_relu(t, 0.1),
        lambda t: torch.where(t > 0, torch.ones_like(t), torch.full_like(t, 0.1)),
        False,
    ),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_rescale_multiplier_is_difference_quotient(name: str) -> None:
    f, _, smooth = UNARY[name]
    x, r = _pair()
    x.requires_grad_(True)
    out, ref_out = rescale(f, x, r, smooth=smooth)
    torch.testing.assert_close(out.detach(), f(x.detach()), rtol=RTOL, atol=0)
    torch.testing.assert_close(ref_out, f(r), rtol=RTOL, atol=0)
    (m,) = _grad(out, [x])
    expected = (f(x.detach()) - f(r)) / (x.detach() - r)
    torch.testing.assert_close(m, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", [n for n, (_, _, smooth) in UNARY.items() if smooth])
def test_rescale_tiny_delta_uses_derivative_at_midpoint(name: str) -> None:
    """|Δ| = 1e-8: the float64 quotient would be noisy at ~1e-8; the rule takes f′((x + r)/2)."""
    f, derivative, _ = UNARY[name]
    r = torch.linspace(-3, 3, 41, dtype=F64)
    delta = torch.full_like(r, 1e-8) * torch.where(torch.arange(41) % 2 == 0, 1.0, -1.0).to(F64)
    x = (r + delta).requires_grad_(True)
    out, _ = rescale(f, x, r, smooth=True)
    (m,) = _grad(out, [x])
    midpoint = (x.detach() + r) / 2
    torch.testing.assert_close(m, derivative(midpoint), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(UNARY))
def test_rescale_zero_delta_uses_derivative(name: str) -> None:
    f, derivative, smooth = UNARY[name]
    x = torch.linspace(-3, 3, 40, dtype=F64).requires_grad_(True)  # no point exactly on a kink
    out, _ = rescale(f, x, x.detach().clone(), smooth=smooth)
    (m,) = _grad(out, [x])
    torch.testing.assert_close(m, derivative(x.detach()), rtol=1e-12, atol=1e-15)


def test_tiny_model_matches_hand_written_deeplift() -> None:
    """Linear → tanh → Linear(·, 1): φ_i = mean_r Σ_j w2_j m_j W1_ji (x_i − r_i), m_j the Rescale quotient."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double().eval()
    background, X = torch.randn(7, 4, dtype=F64) * 2, torch.randn(5, 4, dtype=F64) * 2
    W1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w2 = model[2].weight.detach().numpy()[0]
    x, R = X.numpy(), background.numpy()
    z, zr = x @ W1.T + b1, R @ W1.T + b1  # (n, h), (m, h)
    m = (np.tanh(z)[:, None, :] - np.tanh(zr)[None, :, :]) / (z[:, None, :] - zr[None, :, :])  # (n, m, h)
    delta = x[:, None, :] - R[None, :, :]  # (n, m, d)
    expected = np.einsum("j,nrj,ji,nri->ni", w2, m, W1, delta) / len(R)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    np.testing.assert_allclose(values[..., 0], expected, rtol=1e-10, atol=1e-13)


# -- products ----------------------------------------------------------------------------------------
def test_product_multipliers_are_midpoints() -> None:
    a, a_ref = _pair((5, 4), seed=1)
    b, b_ref = _pair((5, 4), seed=2)
    a.requires_grad_(True)
    b.requires_grad_(True)
    out, ref_out = product(a, b, a_ref, b_ref)
    torch.testing.assert_close(out.detach(), a.detach() * b.detach(), rtol=RTOL, atol=0)
    torch.testing.assert_close(ref_out, a_ref * b_ref, rtol=RTOL, atol=0)
    m_a, m_b = _grad(out, [a, b])
    torch.testing.assert_close(m_a, (b.detach() + b_ref) / 2, rtol=RTOL, atol=0)
    torch.testing.assert_close(m_b, (a.detach() + a_ref) / 2, rtol=RTOL, atol=0)


def test_product_multipliers_with_broadcasting_sum_over_the_broadcast_axis() -> None:
    a, a_ref = _pair((3, 4), seed=1)
    b, b_ref = _pair((3, 1), seed=2)
    a.requires_grad_(True)
    b.requires_grad_(True)
    out, _ = product(a, b, a_ref, b_ref)
    m_a, m_b = _grad(out, [a, b])
    torch.testing.assert_close(m_a, ((b.detach() + b_ref) / 2).expand(3, 4), rtol=RTOL, atol=0)
    torch.testing.assert_close(m_b, ((a.detach() + a_ref) / 2).sum(1, keepdim=True), rtol=RTOL, atol=0)


# -- two-player Shapley, written out ---------------------------------------------------------------------
def _two_player(
    g: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray, ar: np.ndarray, br: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """φ_a = ½[(g(a, b_r) − g(a_r, b_r)) + (g(a, b) − g(a_r, b))], φ_b symmetrically (DESIGN §1)."""
    phi_a = 0.5 * ((g(a, br) - g(ar, br)) + (g(a, b) - g(ar, b)))
    phi_b = 0.5 * ((g(ar, b) - g(ar, br)) + (g(a, b) - g(a, br)))
    return phi_a, phi_b


BINARY: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    "div": (torch.div, np.divide),
    "mul": (torch.mul, np.multiply),
    "maximum": (torch.maximum, np.maximum),
    "minimum": (torch.minimum, np.minimum),
    "pow": (torch.pow, np.power),
}


def _positive_pair(shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=F64) * 2 + 0.5, torch.rand(shape, generator=g, dtype=F64) * 2 + 0.5


@pytest.mark.parametrize("name", list(BINARY))
def test_shapley_building_block_matches_two_player_formula(name: str) -> None:
    op, np_op = BINARY[name]
    a, a_ref = _positive_pair((50,), seed=3)
    b, b_ref = _positive_pair((50,), seed=4)
    a.requires_grad_(True)
    b.requires_grad_(True)
    smooth = name not in ("maximum", "minimum")
    out, _ = shapley(lambda p: op(p[0], p[1]), [a, b], [a_ref, b_ref], smooth=smooth)
    m_a, m_b = _grad(out, [a, b])
    A, B, Ar, Br = (t.detach().numpy() for t in (a, b, a_ref, b_ref))
    phi_a, phi_b = _two_player(np_op, A, B, Ar, Br)
    np.testing.assert_allclose(m_a.numpy() * (A - Ar), phi_a, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(m_b.numpy() * (B - Br), phi_b, rtol=1e-10, atol=1e-13)


def elementwise2(op: Callable[[Tensor, Tensor], Tensor]) -> nn.Module:
    """f(x) = op(x[:, :k], x[:, k:]): two input-dependent operands, feature j of each feeding output j."""
    return Composite(lambda m, x: m.op(x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]), op=op)


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_op_model_gives_exact_two_player_shapley_values(name: str) -> None:
    op, np_op = BINARY[name]
    k = 3
    g = torch.Generator().manual_seed(5)
    background = torch.rand(6, 2 * k, generator=g, dtype=F64) * 2 + 0.5  # positive: a safe denominator and base
    X = torch.rand(4, 2 * k, generator=g, dtype=F64) * 2 + 0.5
    model = elementwise2(op)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)  # (n, 2k, k)

    x, R = X.numpy()[:, None, :], background.numpy()[None, :, :]  # (n, 1, 2k), (1, m, 2k)
    phi_a, phi_b = _two_player(np_op, x[..., :k], x[..., k:], R[..., :k], R[..., k:])  # (n, m, k)
    expected = np.zeros((4, 2 * k, k))
    for j in range(k):
        expected[:, j, j] = phi_a[..., j].mean(1)
        expected[:, k + j, j] = phi_b[..., j].mean(1)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-13)


def test_product_with_a_constant_is_linear() -> None:
    """x · w with w a parameter: the ordinary gradient, φ = w (x − mean r)."""

    model = Composite(lambda m, x: (x * m.w).sum(1, keepdim=True), w=nn.Parameter(torch.randn(5, dtype=F64)))
    background, X = torch.randn(8, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    expected = model.w.detach().numpy() * (X.numpy() - background.numpy().mean(0))
    np.testing.assert_allclose(values[..., 0], expected, rtol=1e-12, atol=1e-14)


# -- softmax and log-softmax by decomposition ------------------------------------------------------------
def _softmax_closed_form(x: np.ndarray, R: np.ndarray) -> np.ndarray:
    """DeepSHAP of y = exp(ℓ), ℓ = log_softmax(x): Rescale on the final exp applied to ℓ's attributions.

    Per reference: φ[i, j] = m_j φ_ℓ[i, j] with m_j = Δy_j / Δℓ_j and φ_ℓ the log-softmax closed form.
    """
    n, k = x.shape
    out = np.zeros((n, k, k))
    for s in range(n):
        for r in R:
            e, er = np.exp(x[s]), np.exp(r)
            S, Sr = e.sum(), er.sum()
            phi_l = np.diag(x[s] - r) - np.outer((e - er) / (S - Sr), np.full(k, np.log(S) - np.log(Sr)))
            ls, lr = x[s] - np.log(S), r - np.log(Sr)
            m = (np.exp(ls) - np.exp(lr)) / (ls - lr)
            out[s] += phi_l * m[None, :]
    return out / len(R)


def _log_softmax_closed_form(x: np.ndarray, R: np.ndarray) -> np.ndarray:
    """y_j = x_j − log S: φ[i, j] = δ_ij Δx_j − (log S − log S_r) Δe_i / ΔS (Rescale on log)."""
    n, k = x.shape
    out = np.zeros((n, k, k))
    for s in range(n):
        for r in R:
            e, er = np.exp(x[s]), np.exp(r)
            S, Sr = e.sum(), er.sum()
            out[s] += np.diag(x[s] - r) - np.outer((e - er) / (S - Sr), np.full(k, np.log(S) - np.log(Sr)))
    return out / len(R)


@pytest.mark.parametrize(
    "name,module,closed_form",
    [("softmax", nn.Softmax(dim=1), _softmax_closed_form), ("log_softmax", nn.LogSoftmax(dim=1), _log_softmax_closed_form)],
)
@pytest.mark.parametrize("spread", [0.5, 2.0])
def test_softmax_of_logits_matches_hand_decomposition(name: str, module: nn.Module, closed_form: Callable, spread: float) -> None:
    g = torch.Generator().manual_seed(6)
    background = torch.randn(5, 4, generator=g, dtype=F64) * spread + 3.0  # + 3: the rule's shift must change nothing
    X = torch.randn(3, 4, generator=g, dtype=F64) * spread + 3.0
    values = rnnshap.DeepExplainer(module, background).shap_values(X)
    expected = closed_form(X.numpy(), background.numpy())
    scale = np.abs(expected).max()
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize(
    "dtype,spread",
    [
        (torch.float32, 5.0),
        (torch.float32, 10.0),
        (F64, 20.0),
    ],
)
def test_softmax_of_confident_logits_is_additive(dtype: torch.dtype, spread: float) -> None:
    """A classifier's softmax with logits spread like a trained model's (std 5-20) must add up."""
    failures = []
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        background = torch.randn(8, 5, generator=g, dtype=dtype) * spread
        X = torch.randn(4, 5, generator=g, dtype=dtype) * spread
        model = nn.Softmax(dim=1)
        values = rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False)
        try:
            assert_additive(values, model, X, background, dtype)
        except AssertionError as error:
            failures.append(f"seed {seed}: {error}")
    assert not failures, "\n".join(failures)


# -- max-pool and max reductions, as shap's max-pool rule ------------------------------------------------
def _routed_closed_form(xw: np.ndarray, rw: np.ndarray, largest: bool) -> np.ndarray:
    """shap's rule for one window: x's winner gets c − y_r, r's winner gets y − c, c = max(y, y_r)."""
    pick = np.argmax if largest else np.argmin
    y, yr = xw.max() if largest else xw.min(), rw.max() if largest else rw.min()
    c = max(y, yr) if largest else min(y, yr)
    phi = np.zeros_like(xw)
    phi[pick(xw)] += c - yr
    phi[pick(rw)] += y - c
    return phi


@pytest.mark.parametrize("largest", [True, False])
def test_routed_max_building_block_matches_shap_rule(largest: bool) -> None:
    x, r = _pair((6, 5), seed=7)
    x.requires_grad_(True)
    reduce = torch.max if largest else torch.min
    out = routed_max(lambda t: reduce(t, dim=-1, keepdim=True), x, r, largest=largest)
    torch.testing.assert_close(out.detach(), reduce(x.detach(), -1, keepdim=True).values, rtol=0, atol=0)
    (m,) = _grad(out, [x])
    phi = (m * (x.detach() - r)).numpy()
    X, R = x.detach().numpy(), r.numpy()
    expected = np.stack([_routed_closed_form(X[i], R[i], largest) for i in range(6)])
    np.testing.assert_allclose(phi, expected, rtol=1e-12, atol=1e-14)


def _pool_closed_form(x: np.ndarray, R: np.ndarray, window: int) -> np.ndarray:
    """DeepSHAP of MaxPool1d(window) on (n, 1, L), flattened: (n, 1, L, L // window)."""
    n, _, L = x.shape
    w = L // window
    out = np.zeros((n, 1, L, w))
    for s in range(n):
        for r in R:
            for o in range(w):
                span = slice(o * window, (o + 1) * window)
                out[s, 0, span, o] += _routed_closed_form(x[s, 0, span], r[0, span], True)
    return out / len(R)


def test_max_pool_model_matches_shap_rule() -> None:
    model = nn.Sequential(nn.MaxPool1d(3), nn.Flatten())
    g = torch.Generator().manual_seed(8)
    background, X = torch.randn(5, 1, 12, generator=g, dtype=F64), torch.randn(3, 1, 12, generator=g, dtype=F64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    np.testing.assert_allclose(values, _pool_closed_form(X.numpy(), background.numpy(), 3), rtol=1e-12, atol=1e-14)


def test_max_pool2d_model_matches_shap_rule() -> None:
    """2×2 non-overlapping windows on (n, 1, 4, 4): each window is a 4-element max."""
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())
    g = torch.Generator().manual_seed(9)
    background, X = torch.randn(4, 1, 4, 4, generator=g, dtype=F64), torch.randn(2, 1, 4, 4, generator=g, dtype=F64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)  # (n, 1, 4, 4, 4)
    x, R = X.numpy(), background.numpy()
    expected = np.zeros((2, 1, 4, 4, 4))
    for s in range(2):
        for r in R:
            for o, (i0, j0) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
                xw, rw = x[s, 0, i0 : i0 + 2, j0 : j0 + 2].ravel(), r[0, i0 : i0 + 2, j0 : j0 + 2].ravel()
                expected[s, 0, i0 : i0 + 2, j0 : j0 + 2, o] += _routed_closed_form(xw, rw, True).reshape(2, 2)
    np.testing.assert_allclose(values, expected / len(R), rtol=1e-12, atol=1e-14)


def _pooled_rows() -> tuple[list[int], Any]:
    """The rows of every max-pool kernel call made under the returned mode (``with mode: ...``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    pooled: list[int] = []

    class Rows(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func.overloadpacket is torch.ops.aten.max_pool2d_with_indices:
                pooled.append(args[0].shape[0])
            return func(*args, **(kwargs or {}))

    return pooled, Rows()


@pytest.mark.parametrize("samples", [1, 3])
def test_max_pool_pools_the_distinct_rows_of_each_side_only(samples: int) -> None:
    """A pool works on each row apart, so on the pairs of S samples and R references it runs on S + R rows (the
    samples' and the references'), never on the S R rows of either side of the pairs; its output is a tensor of its
    own (the model's ``view`` of it works, with one sample too)."""
    # (the first view merges the pairs with the channels: it needs the output's own rows, not a broadcast view)
    model = Function(lambda x: F.max_pool1d(x, 3).view(-1, 4).view(x.shape[0], -1))
    g = torch.Generator().manual_seed(10)
    background, X = torch.randn(5, 2, 12, generator=g, dtype=F64), torch.randn(samples, 2, 12, generator=g, dtype=F64)
    explainer = rnnshap.DeepExplainer(model, background)
    pooled, mode = _pooled_rows()
    with mode:
        values = explainer.shap_values(X)
    assert {samples, 5} <= set(pooled) and (samples == 1 or samples * 5 not in pooled), pooled
    expected = np.zeros((samples, 2, 12, 8))  # (output c · 4 + o reads channel c's window o)
    for c in range(2):
        channel = slice(c, c + 1)
        expected[:, channel, :, 4 * c : 4 * c + 4] = _pool_closed_form(X[:, channel].numpy(), background[:, channel].numpy(), 3)
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("deferred", [False, True])
def test_max_pool_on_references_the_samples_own_mask_entered_gives_each_pairs_values(deferred: bool) -> None:
    """Where something of the sample enters the reference side (a boolean mask, taken from the explained sample on
    both sides of its pairs), the reference side's rows do not cycle: the pool runs on its rows of every pair (the
    input side's still on the samples'), and the values are shap's rule on each pair. Tested at once (the CPU) or
    after the pass (as on an accelerator, where the test fails and the pass runs again)."""
    from rnnshap.formulas.torch_ops import values_unread

    model = Function(lambda x, keep: F.max_pool1d(torch.where(keep[:, None, :], x, 2 * x), 3).flatten(1))
    g = torch.Generator().manual_seed(11)
    background, X = torch.randn(4, 1, 12, generator=g, dtype=F64), torch.randn(3, 1, 12, generator=g, dtype=F64)
    keep_bg, keep = torch.rand(4, 12, generator=g) < 0.5, torch.rand(3, 12, generator=g) < 0.5
    explainer = rnnshap.DeepExplainer(model, [background, keep_bg])
    pooled, mode = _pooled_rows()
    with mode, values_unread() if deferred else contextlib.nullcontext():
        values = explainer.shap_values([X, keep])[0]
    assert 3 * 4 in pooled and 3 in pooled, pooled  # (the reference side every pair's, the input side the samples')
    scale = torch.where(keep[:, None, :], 1.0, 2.0).to(F64)
    expected = np.stack([
        _pool_closed_form((X[s : s + 1] * scale[s]).numpy(), (background * scale[s]).numpy(), 3)[0] for s in range(3)
    ])  # fmt: skip
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("dim", [1, 2])
def test_max_reduction_model_matches_shap_rule(largest: bool, dim: int) -> None:
    """torch.max(x, dim) / torch.min(x, dim) on (n, 3, 4): each output routes to its winners."""

    def _reduce(x: Tensor) -> Tensor:
        return (torch.max if largest else torch.min)(x, dim=dim).values

    g = torch.Generator().manual_seed(10)
    background, X = torch.randn(4, 3, 4, generator=g, dtype=F64), torch.randn(2, 3, 4, generator=g, dtype=F64)
    values = rnnshap.DeepExplainer(Function(_reduce), background).shap_values(X)  # (n, 3, 4, k)
    x, R = X.numpy(), background.numpy()
    k = 4 if dim == 1 else 3
    expected = np.zeros((2, 3, 4, k))
    for s in range(2):
        for r in R:
            for o in range(k):
                if dim == 1:
                    expected[s, :, o, o] += _routed_closed_form(x[s, :, o], r[:, o], largest)
                else:
                    expected[s, o, :, o] += _routed_closed_form(x[s, o, :], r[o, :], largest)
    np.testing.assert_allclose(values, expected / len(R), rtol=1e-12, atol=1e-14)


# -- linear --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 4])
def test_linear_model_gives_weight_times_mean_delta(k: int) -> None:
    torch.manual_seed(11)
    model = nn.Linear(6, k).double()
    background, X = torch.randn(9, 6, dtype=F64), torch.randn(5, 6, dtype=F64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    W = model.weight.detach().numpy()  # (k, d)
    delta = X.numpy()[:, None, :] - background.numpy()[None, :, :]  # (n, m, d)
    expected = np.einsum("ki,nri->nik", W, delta) / 9
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-14)
    assert_additive(values, model, X, background, F64)
