"""The magnitude of an input-dependent complex value, ``|z| = sqrt(a² + b²)`` for ``z = a + ib``: a spectrum's amplitude.

The magnitude is a function of two real players, the real and the imaginary part, so its rule is the exact
two-player Shapley split of ``|z| - |z_r|`` between them (rnnshap/rules/spectral.py). The truths:

* the model ``|complex(x₁, x₂)|`` of two features: its Shapley values enumerated over the four coalitions through
  the model's own forward, per reference, averaged;
* the amplitudes of a real Fourier transform under a linear head: a float64 implementation written here from the
  equations (the DFT's cosines and sines, the split in closed form), and the values add up to the model's outputs;
* a step the model does not transform gets exactly 0; a zero reference (``|z_r| = 0``, the magnitude's kink) adds up.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite, Function

Tensor = torch.Tensor
D = torch.float64
T = 8


def _magnitude_of_two(x: Tensor) -> Tensor:
    return torch.complex(x[:, 0], x[:, 1]).abs()[:, None]


def _enumerated(model: torch.nn.Module, X: Tensor, background: Tensor) -> np.ndarray:
    """The two features' Shapley values of ``model`` (a function without parameters; its outputs last), over the four
    coalitions, per reference, averaged: its own forward on the inputs' values in float64."""

    def f(a: Tensor, b: Tensor) -> np.ndarray:
        return model(torch.stack([a, b])[None])[0].double().numpy()

    want = np.zeros((len(X), 2, model(X[:1]).shape[-1]))
    for s, x in enumerate(X.double()):
        for r in background.double():
            for i in range(2):
                for with_other in (False, True):
                    players = [x[j] if j == i or with_other else r[j] for j in range(2)]
                    without = [r[j] if j == i else p for j, p in enumerate(players)]
                    want[s, i] += 0.5 * (f(*players) - f(*without)) / len(background)
    return want


@pytest.mark.parametrize("form", ["abs", "torch.abs", "absolute"])
def test_the_magnitude_of_two_features_gets_their_shapley_values(form: str) -> None:
    magnitude = {
        "abs": lambda z: z.abs(), "torch.abs": torch.abs, "absolute": torch.absolute,
    }[form]  # fmt: skip
    model = Function(lambda x: magnitude(torch.complex(x[:, 0], x[:, 1]))[:, None])
    g = torch.Generator().manual_seed(3)
    background, X = torch.randn(5, 2, generator=g, dtype=D), torch.randn(4, 2, generator=g, dtype=D)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    want = _enumerated(model, X, background)[..., 0]
    np.testing.assert_allclose(np.asarray(values).reshape(4, 2), want, rtol=1e-12, atol=1e-14)


def _amplitudes(weight: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The attributions of ``w · |rfft(x)|`` for one sample ``x`` and one reference ``r`` (both (T,)), from the
    equations: ``a_k = Σ_t x_t cos(2πkt/T)``, ``b_k = -Σ_t x_t sin(2πkt/T)``, each amplitude split between its two
    parts by the closed form of the two-player Shapley rule, and each part's share carried to the steps by the
    transform's coefficients."""
    k, t = np.arange(T // 2 + 1)[:, None], np.arange(T)[None]
    cos, sin = np.cos(2 * np.pi * k * t / T), -np.sin(2 * np.pi * k * t / T)
    a, b, a_r, b_r = cos @ x, sin @ x, cos @ r, sin @ r

    def h(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.sqrt(u**2 + v**2)

    def share(n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.divide(n, d, out=np.zeros_like(n), where=d != 0)

    # φ_a = ½ [(h(a, b_r) − h(a_r, b_r)) + (h(a, b) − h(a_r, b))], and φ_b alike
    phi_a = 0.5 * ((h(a, b_r) - h(a_r, b_r)) + (h(a, b) - h(a_r, b)))
    phi_b = 0.5 * ((h(a_r, b) - h(a_r, b_r)) + (h(a, b) - h(a, b_r)))
    m_a, m_b = share(phi_a, a - a_r), share(phi_b, b - b_r)
    return ((weight * m_a) @ cos + (weight * m_b) @ sin) * (x - r)


def _spectrum_model() -> Composite:
    return Composite(lambda m, x: m.head(torch.fft.rfft(x, dim=-1).abs()), head=torch.nn.Linear(T // 2 + 1, 1))


def test_a_spectrum_s_amplitudes_get_the_values_written_from_the_equations() -> None:
    torch.manual_seed(0)
    model = _spectrum_model().to(D)
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(3, T, generator=g, dtype=D), torch.randn(2, T, generator=g, dtype=D)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X)).reshape(2, T)
    weight = model.head.weight.detach().numpy()[0]
    expected = np.stack([np.mean([_amplitudes(weight, x, r) for r in background.numpy()], 0) for x in X.numpy()])
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)


def test_the_captured_pass_takes_a_complex_value_with_the_intercepted_values() -> None:
    torch.manual_seed(0)
    model = _spectrum_model().to(D)
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(3, T, generator=g, dtype=D), torch.randn(2, T, generator=g, dtype=D)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    values = captured.shap_values(X)
    assert captured.pass_path.startswith("captured"), captured.pass_path
    np.testing.assert_array_equal(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_amplitudes_add_up_and_a_step_the_transform_does_not_read_gets_exactly_zero(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    model = Composite(
        lambda m, x: m.head(torch.fft.rfft(x[:, :T], dim=-1).abs()) + x[:, T:].sum(-1, keepdim=True) * 0.0,
        head=torch.nn.Linear(T // 2 + 1, 2),
    ).to(dtype)
    g = torch.Generator().manual_seed(5)
    background = torch.randn(6, T + 3, generator=g).to(dtype)
    background[0] = 0.0  # (a zero reference: every amplitude at the kink)
    X = torch.randn(4, T + 3, generator=g).to(dtype)
    X[1, :T] = background[2, :T]  # (a sample whose amplitudes equal one reference's)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, dtype)
    for v in values:
        assert np.all(np.asarray(v)[:, T:] == 0.0)


def test_the_split_does_not_depend_on_which_part_is_real() -> None:
    """``|a + ib| = |b + ia|``: the same function, so the same values."""
    g = torch.Generator().manual_seed(7)
    background, X = torch.randn(3, 2, generator=g, dtype=D), torch.randn(3, 2, generator=g, dtype=D)
    forward = rnnshap.DeepExplainer(Function(_magnitude_of_two), background).shap_values(X)
    swapped = Function(lambda x: _magnitude_of_two(x.flip(-1)))
    backward = rnnshap.DeepExplainer(swapped, background).shap_values(X)
    np.testing.assert_allclose(np.asarray(backward), np.asarray(forward), rtol=1e-13, atol=1e-15)


def test_another_nonlinear_operation_on_a_complex_value_is_refused_by_name_with_advice_that_holds() -> None:
    g = torch.Generator().manual_seed(9)
    background, X = torch.randn(4, T, generator=g, dtype=D), torch.randn(2, T, generator=g, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"complex(.|\n)*torch\.atan2\(z\.imag, z\.real\)"):
        rnnshap.DeepExplainer(Function(lambda x: torch.fft.rfft(x, dim=-1).angle()), background)

    def angle(x: Tensor) -> Tensor:  # (the advice followed)
        z = torch.fft.rfft(x, dim=-1)
        return torch.atan2(z.imag, z.real)[:, 1:3]

    model = Function(angle)
    torch.testing.assert_close(model(X), torch.fft.rfft(X, dim=-1).angle()[:, 1:3], rtol=0, atol=1e-15)
    assert_additive(rnnshap.DeepExplainer(model, background).shap_values(X), model, X, background, D)


@pytest.mark.parametrize("name", ["tanh", "exp", "sigmoid", "reciprocal"])
def test_an_elementwise_function_of_a_complex_value_gets_each_part_s_shapley_values(name: str) -> None:
    """``w = g(a + ib)`` of two features: each of ``w``'s real and imaginary parts gets the two players' Shapley
    values, enumerated over the four coalitions through the model's own forward, per reference, averaged."""
    g = {"tanh": torch.tanh, "exp": torch.exp, "sigmoid": torch.sigmoid, "reciprocal": lambda z: 1 / z}[name]
    model = Function(lambda x: torch.view_as_real(g(torch.complex(x[:, 0], x[:, 1]) * 0.5)))
    gen = torch.Generator().manual_seed(11)
    background, X = torch.randn(4, 2, generator=gen, dtype=D), torch.randn(3, 2, generator=gen, dtype=D)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))  # (outputs) x (3, 2)
    values = values.reshape(3, 2, 2)  # (sample, player, output)
    np.testing.assert_allclose(values, _enumerated(model, X, background), rtol=1e-10, atol=1e-12)


def test_a_reciprocal_near_its_pole_in_float32_gets_the_enumerated_values_to_float32_rounding() -> None:
    """1/z at |z| ≈ 0.03, the two sides' parts 2e-3 apart: the multipliers come from the coalitions' values in
    float64, not from a derivative at the midpoint (which misses by 1e-3 of the values here, within the sum's
    tolerance: silently)."""
    model = Function(lambda x: torch.view_as_real(1 / torch.complex(x[:, 0], x[:, 1])))
    X = torch.tensor([[-0.01035277359187603, 0.02620837092399597]] * 2)
    background = torch.tensor([[-0.008430007845163345, 0.026950573548674583]])
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X)).reshape(2, 2, 2)
    want = _enumerated(model, X, background)
    assert np.abs(values - want).max() <= 16 * np.finfo(np.float32).eps * np.abs(want).max()


def test_a_complex_function_without_a_rule_for_complex_values_is_refused_by_name() -> None:
    """silu has no complex derivative in torch, log and sqrt a branch cut: refused by name, never a raw error."""
    for fn, name in [(torch.nn.functional.silu, "silu"), (torch.log, "log"), (torch.sqrt, "sqrt")]:
        model = Function(lambda x, fn=fn: torch.view_as_real(fn(torch.fft.rfft(x, dim=-1))).flatten(1))
        with pytest.raises(rnnshap.UnsupportedOperationError, match=rf"{name}(.|\n)*complex"):
            rnnshap.DeepExplainer(model, torch.randn(4, T, dtype=D)).shap_values(torch.randn(2, T, dtype=D))


def test_a_real_value_with_a_complex_constant_through_a_nonlinear_operation_is_refused_by_name() -> None:
    weight = torch.randn(T, dtype=torch.complex128)
    model = Function(lambda x: torch.view_as_real(torch.pow(x, weight)).flatten(1))
    with pytest.raises(rnnshap.UnsupportedOperationError, match="complex"):
        rnnshap.DeepExplainer(model, torch.rand(4, T, dtype=D) + 0.5).shap_values(torch.rand(2, T, dtype=D) + 0.5)


def test_a_missing_part_masked_after_a_complex_function_gets_what_its_real_twin_gets() -> None:
    """b missing (NaN) on both sides of every pair, masked by nan_to_num after the function: a gets its values, b 0."""

    def complex_form(x: Tensor) -> Tensor:
        w = torch.tanh(torch.complex(x[:, 0], x[:, 1]))
        return (torch.nan_to_num(w.real) + torch.nan_to_num(w.imag) + x[:, 0])[:, None]

    background = torch.tensor([[0.3, float("nan")], [-0.2, float("nan")]], dtype=D)
    X = torch.tensor([[1.0, float("nan")], [0.5, float("nan")]], dtype=D)
    values = np.asarray(rnnshap.DeepExplainer(Function(complex_form), background).shap_values(X)).reshape(2, 2)
    assert np.all(values[:, 1] == 0.0)
    np.testing.assert_allclose(values[:, 0], X[:, 0].numpy() - background[:, 0].numpy().mean(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_magnitude_at_the_ends_of_the_dtype_s_range_gets_its_shapley_values(dtype: torch.dtype) -> None:
    big = 2e19 if dtype == torch.float32 else 1e160
    X = torch.tensor([[big, 1.0]], dtype=dtype)
    background = torch.tensor([[1.0, big]], dtype=dtype)
    values = np.asarray(rnnshap.DeepExplainer(Function(_magnitude_of_two), background).shap_values(X)).reshape(1, 2)
    want = np.array([[big * np.sqrt(2) / 2, -big * np.sqrt(2) / 2]])  # (|z| − |z_r| = 0, split alike by symmetry)
    np.testing.assert_allclose(values, want, rtol=1e-6)
