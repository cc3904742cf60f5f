"""The FFT family and the complex views as linear maps on the PyTorch engine.

``torch.fft``'s transforms (rfft, irfft, fft, ifft, their 2-D and n-D forms, hfft, ihfft, the shifts), ``conj``,
``real``, ``imag``, ``view_as_real`` and ``view_as_complex`` are linear over the reals, so their DeepLIFT
multiplier is the gradient. The truth is a float64 numpy copy of each model written with ``numpy.fft``: the
matrix of its linear part taken column by column from unit vectors, and the Rescale rule of the nonlinearity
after it written from its definition. A nonlinear operation on a complex input-dependent value other than a
product of two (a magnitude) is refused by name: rnnshap's other rules are written for real values (the product of
two spectra, bilinear: tests/rules/test_spectral_product.py).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..keras_process import KerasProcess
from ..models.torch import Function

D = torch.float64
T = 10
Tensor = torch.Tensor


def _spectral_filter(T: int) -> np.ndarray:
    g = np.random.default_rng(7)
    return g.normal(size=T // 2 + 1) + 1j * g.normal(size=T // 2 + 1)


class Spectral(nn.Module):
    """Every transform of the family on a (batch, T) input, then ``head`` (None: linear outputs; "tanh": a
    tanh of each, then a readout)."""

    def __init__(self, head: str | None) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("w", torch.tensor(_spectral_filter(T)))
        self.readout = nn.Linear(self.features(torch.zeros(1, T, dtype=D)).shape[-1], 2).to(D)

    def features(self, x: Tensor) -> Tensor:
        spectrum = torch.fft.rfft(x, dim=-1)
        filtered = torch.fft.irfft(spectrum * self.w, n=T, dim=-1)  # a product with a constant spectrum
        c = x.to(torch.complex128)
        round_trip = torch.fft.ifft(torch.fft.fft(c * (1 + 2j)) * 0.5, norm="ortho")
        shifted = torch.fft.fftshift(torch.fft.fft(x, norm="forward"), dim=-1)
        conj = torch.conj(spectrum)
        two_d = torch.fft.rfft2(x.reshape(-1, 2, T // 2))  # (batch, 2, 3)
        hermitian = torch.fft.hfft(spectrum[:, :4], n=T)
        as_real = torch.view_as_real(torch.fft.ihfft(x).resolve_conj())  # (batch, T/2 + 1, 2)
        parts = [
            filtered, round_trip.real, round_trip.imag, shifted.real, conj.imag, conj.real.flip(-1),
            two_d.real.flatten(1), two_d.imag.flatten(1), hermitian, torch.view_as_complex(as_real.contiguous()).imag,
            torch.fft.irfftn(torch.fft.rfftn(x, dim=(-1,)), s=(T,), dim=(-1,)),
            torch.fft.fft(torch.complex(x, 2 * x.flip(-1))).conj_physical().imag,
        ]  # fmt: skip
        return torch.cat(parts, -1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        return features if self.head is None else self.readout(torch.tanh(features))


def _features_numpy(x: np.ndarray) -> np.ndarray:
    """``Spectral``'s features in float64 numpy, from numpy.fft."""
    w = _spectral_filter(T)
    spectrum = np.fft.rfft(x, axis=-1)
    filtered = np.fft.irfft(spectrum * w, n=T, axis=-1)
    round_trip = np.fft.ifft(np.fft.fft(x * (1 + 2j)) * 0.5, norm="ortho")
    shifted = np.fft.fftshift(np.fft.fft(x, norm="forward"), axes=-1)
    conj = np.conj(spectrum)
    two_d = np.fft.rfft2(x.reshape(-1, 2, T // 2))
    hermitian = np.fft.hfft(spectrum[:, :4], n=T)
    ihfft = np.conj(np.fft.rfft(x, axis=-1)) / T  # numpy's ihfft: conj(rfft(x)) / n
    irfftn = np.fft.irfftn(np.fft.rfftn(x, axes=(-1,)), s=(T,), axes=(-1,))
    n = x.shape[0]
    features = [
        filtered, round_trip.real, round_trip.imag, shifted.real, conj.imag, conj.real[:, ::-1],
        two_d.real.reshape(n, -1), two_d.imag.reshape(n, -1), hermitian, ihfft.imag, irfftn,
        np.conj(np.fft.fft(x + 2j * x[:, ::-1])).imag,
    ]  # fmt: skip
    return np.concatenate(features, -1)


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, T, generator=g, dtype=D), torch.randn(3, T, generator=g, dtype=D)


def test_the_reference_copy_is_the_model() -> None:
    background, _ = _data()
    with torch.no_grad():
        out = Spectral(None)(background).numpy()
    np.testing.assert_allclose(out, _features_numpy(background.numpy()), rtol=0, atol=1e-12)


def test_fft_family_as_linear_maps_is_the_matrix_times_the_difference() -> None:
    """A linear model f(x) = A x: φ[o, j] = A[o, j] (x_j − mean_r r_j), A from numpy.fft on unit vectors."""
    model = Spectral(None).eval()
    background, X = _data()
    values = rnnshap.DeepExplainer(model, background).shap_values(X)  # (3, T, outputs)
    A = np.stack([_features_numpy(np.eye(T)[j : j + 1])[0] for j in range(T)], 1)  # (outputs, T)
    expected = A.T[None] * (X.numpy() - background.numpy().mean(0))[:, :, None]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert_additive(values, model, X, background, D)


def test_a_nonlinearity_after_the_fft_family_is_its_rescale_through_the_matrix() -> None:
    """tanh after the linear part, then a readout: φ_j = mean_r Σ_k v_k m_k A[k, j] (x_j − r_j), m_k the secant
    of tanh between u_k(x) and u_k(r), u = A x (all float64 numpy)."""
    model = Spectral("tanh").eval()
    background, X = _data()
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    A = np.stack([_features_numpy(np.eye(T)[j : j + 1])[0] for j in range(T)], 1)
    V = model.readout.weight.detach().numpy()  # (2, outputs)
    x, r = X.numpy(), background.numpy()
    u_x, u_r = x @ A.T, r @ A.T  # (n, k), (m, k)
    diff = u_x[:, None] - u_r[None]
    moving = np.abs(diff) > 1e-9
    quotient = (np.tanh(u_x[:, None]) - np.tanh(u_r[None])) / np.where(moving, diff, 1)
    secant = np.where(moving, quotient, 1 / np.cosh(u_x[:, None]) ** 2)
    # φ[i, j, o] = mean_r Σ_k V[o, k] secant[i, r, k] A[k, j] (x[i, j] − r[r, j])
    expected = np.einsum("ok,irk,kj,irj->ijo", V, secant, A, x[:, None] - r[None]) / len(r)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)
    assert_additive(values, model, X, background, D)


@pytest.mark.parametrize(("model", "op"), [(Function(lambda x: torch.fft.rfft(x).angle()), "angle")], ids=["angle"])
def test_a_nonlinear_operation_on_complex_values_is_refused_by_name(model: nn.Module, op: str) -> None:
    background, _ = _data()
    with pytest.raises(rnnshap.UnsupportedOperationError, match=op) as refused:
        rnnshap.DeepExplainer(model, background)
    assert "complex" in str(refused.value)


def complex_output(x: Tensor) -> Tensor:
    return torch.fft.rfft(x)


def test_a_complex_output_is_refused_with_the_parts_to_explain_instead() -> None:
    background, _ = _data()
    with pytest.raises(rnnshap.InputError, match=r"complex.*view_as_real"):
        rnnshap.DeepExplainer(Function(complex_output), background)
    with pytest.raises(rnnshap.InputError, match=r"complex.*view_as_real"):  # the Shapley door too
        rnnshap.ShapleyExplainer(Function(complex_output), background)


# -- the JAX engine (Flax NNX models) -----------------------------------------------------------------------------
def _flax_spectral(head: str | None) -> Any:
    """``Spectral`` in JAX (its ``view_as_real`` step read as ``.imag``, as the numpy copy does), with a constant
    readout ``V`` after a tanh where ``head`` is "tanh"."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax.nnx")
    from ..models.flax import FlaxFunction

    jnp = jax.numpy

    w = jnp.asarray(_spectral_filter(T))
    V = jnp.asarray(np.random.default_rng(11).normal(size=(2, _features_numpy(np.zeros((1, T))).shape[1])))

    def flax_spectral(x: Any) -> Any:
        spectrum = jnp.fft.rfft(x, axis=-1)
        filtered = jnp.fft.irfft(spectrum * w, n=T, axis=-1)
        round_trip = jnp.fft.ifft(jnp.fft.fft(x.astype(jnp.complex128) * (1 + 2j)) * 0.5, norm="ortho")
        shifted = jnp.fft.fftshift(jnp.fft.fft(x, norm="forward"), axes=-1)
        conj = jnp.conj(spectrum)
        n = x.shape[0]
        two_d = jnp.fft.rfft2(x.reshape(-1, 2, T // 2))
        parts = [
            filtered, round_trip.real, round_trip.imag, shifted.real, conj.imag, conj.real[:, ::-1],
            two_d.real.reshape(n, -1), two_d.imag.reshape(n, -1), jnp.fft.hfft(spectrum[:, :4], n=T),
            jnp.fft.ihfft(x).imag, jnp.fft.irfftn(jnp.fft.rfftn(x, axes=(-1,)), s=(T,), axes=(-1,)),
            jnp.conj(jnp.fft.fft(jax.lax.complex(x, 2 * x[:, ::-1]))).imag,
        ]  # fmt: skip
        features = jnp.concatenate(parts, -1)
        return features if head is None else jnp.tanh(features) @ V.T

    return FlaxFunction(flax_spectral), np.asarray(V)


@pytest.mark.parametrize("head", [None, "tanh"], ids=["linear", "tanh"])
def test_fft_family_on_the_jax_engine_against_numpy_fft(head: str | None) -> None:
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        model, V = _flax_spectral(head)
        background, X = (t.numpy() for t in _data())
        np.testing.assert_allclose(
            np.asarray(model(jax.numpy.asarray(background))),
            (_features_numpy(background) if head is None else np.tanh(_features_numpy(background)) @ V.T),
            rtol=0,
            atol=1e-12,
        )
        values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))
    A = np.stack([_features_numpy(np.eye(T)[j : j + 1])[0] for j in range(T)], 1)
    if head is None:
        expected = A.T[None] * (X - background.mean(0))[:, :, None]
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
        return
    u_x, u_r = X @ A.T, background @ A.T
    diff = u_x[:, None] - u_r[None]
    quotient = (np.tanh(u_x[:, None]) - np.tanh(u_r[None])) / np.where(np.abs(diff) > 1e-9, diff, 1)
    secant = np.where(np.abs(diff) > 1e-9, quotient, 1 / np.cosh(u_x[:, None]) ** 2)
    expected = np.einsum("ok,irk,kj,irj->ijo", V, secant, A, X[:, None] - background[None]) / len(background)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)


def test_a_nonlinear_operation_on_complex_values_is_refused_on_the_jax_engine() -> None:
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax.nnx")
    from ..models.flax import FlaxFunction

    jnp = jax.numpy

    def hyperbolic(x: Any) -> Any:
        return jnp.tanh(jnp.fft.rfft(x)).real

    def _product(x: Any) -> Any:
        q, k = jnp.fft.rfft(x[:, : T // 2]), jnp.fft.rfft(x[:, T // 2 :])
        return jnp.fft.irfft(q * jnp.conj(k), n=T // 2)

    def complex_out(x: Any) -> Any:
        return jnp.fft.rfft(x)

    background, X = (t.numpy() for t in _data())
    with jax.enable_x64(True):
        for model in (FlaxFunction(hyperbolic), FlaxFunction(_product)):
            with pytest.raises(rnnshap.UnsupportedOperationError, match="complex"):
                rnnshap.DeepExplainer(model, background).shap_values(X)
        with pytest.raises(rnnshap.InputError, match="complex"):
            rnnshap.DeepExplainer(FlaxFunction(complex_out), background).shap_values(X)


# -- the Keras engine (keras.ops' transforms take and give (real, imaginary) pairs of real tensors) ---------------
def _keras_features_numpy(x: np.ndarray) -> np.ndarray:
    """The Keras model's features in float64 numpy (the imaginary parts that are 0 for every real input left out:
    a transform's rounding there is no output to explain)."""
    n = x.shape[0]
    spectrum = np.fft.rfft(x, axis=-1)
    filtered = np.fft.irfft(spectrum * _spectral_filter(T), n=T, axis=-1)
    full = np.fft.fft(x, axis=-1)
    two_d = np.fft.fft2(x.reshape(n, 2, T // 2))
    parts = [
        filtered, full.real, full.imag[:, 1 : T // 2], two_d.real.reshape(n, -1), two_d.imag[:, :, 1:].reshape(n, -1),
        np.fft.ifft2(two_d).real.reshape(n, -1), spectrum.real, spectrum.imag[:, 1 : T // 2],
    ]  # fmt: skip
    return np.concatenate(parts, -1)


#: a job for ``keras_process`` (tests/keras_process.py): the model on one Keras backend, explained; prints its outputs
#: on the background and its values, as JSON. argv: the .npz of (w, V, background, X), and "linear" or "tanh"
_KERAS_SPECTRAL = """
import json, sys
import numpy as np
import keras
from keras import ops
import rnnshap

data = np.load(sys.argv[1])
w, V, background, X = data["w"], data["V"], data["background"], data["X"]
head, T = sys.argv[2], X.shape[1]
wr, wi, Vk = (ops.convert_to_tensor(np.ascontiguousarray(a), dtype="float64") for a in (w.real, w.imag, V))


class Spectral(keras.layers.Layer):
    def call(self, x):
        re, im = ops.rfft(x)
        filtered = ops.irfft((re * wr - im * wi, re * wi + im * wr), fft_length=T)
        fr, fi = ops.fft((x, ops.zeros_like(x)))
        grid = ops.reshape(x, (-1, 2, T // 2))
        gr, gi = ops.fft2((grid, ops.zeros_like(grid)))
        back, _ = ops.ifft2((gr, gi))
        parts = [
            filtered, fr, fi[:, 1 : T // 2], ops.reshape(gr, (-1, T)), ops.reshape(gi[:, :, 1:], (-1, T - 2)),
            ops.reshape(back, (-1, T)), re, im[:, 1 : T // 2],
        ]
        features = ops.concatenate(parts, -1)
        # (a product and a sum, not ops.matmul: the torch backend's matmul of float64 operands returns float32)
        return features if head == "linear" else ops.sum(ops.expand_dims(ops.tanh(features), 1) * Vk, axis=-1)


inputs = keras.Input((T,), dtype="float64")
model = keras.Model(inputs, Spectral(dtype="float64")(inputs))
outputs = np.asarray( ops.convert_to_numpy(model(background)), np.float64)
values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X), np.float64)
print(json.dumps({"backend": keras.backend.backend(), "outputs": outputs.tolist(), "values": values.tolist()}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
@pytest.mark.parametrize("head", ["linear", "tanh"])
def test_fft_family_as_keras_ops_against_numpy_fft(
    head: str, backend: str, tmp_path: Any, keras_process: Callable[[str], KerasProcess]
) -> None:
    """keras.ops' transforms on the TensorFlow backend (the Keras engine) and on the torch backend (the PyTorch engine,
    through the torch functions Keras calls)."""
    background, X = (t.numpy() for t in _data())
    V = np.random.default_rng(11).normal(size=(2, _keras_features_numpy(np.zeros((1, T))).shape[1]))
    np.savez(tmp_path / "spectral.npz", w=_spectral_filter(T), V=V, background=background, X=X)
    found = json.loads(keras_process(backend).run(_KERAS_SPECTRAL, str(tmp_path / "spectral.npz"), head).strip().splitlines()[-1])
    assert found["backend"] == backend
    features = _keras_features_numpy(background)
    out, values = np.asarray(found["outputs"]), np.asarray(found["values"])
    np.testing.assert_allclose(out, features if head == "linear" else np.tanh(features) @ V.T, rtol=0, atol=1e-12)
    A = np.stack([_keras_features_numpy(np.eye(T)[j : j + 1])[0] for j in range(T)], 1)
    if head == "linear":
        np.testing.assert_allclose(values, A.T[None] * (X - background.mean(0))[:, :, None], rtol=0, atol=1e-12)
        return
    u_x, u_r = X @ A.T, background @ A.T
    diff = u_x[:, None] - u_r[None]
    quotient = (np.tanh(u_x[:, None]) - np.tanh(u_r[None])) / np.where(np.abs(diff) > 1e-9, diff, 1)
    secant = np.where(np.abs(diff) > 1e-9, quotient, 1 / np.cosh(u_x[:, None]) ** 2)
    expected = np.einsum("ok,irk,kj,irj->ijo", V, secant, A, X[:, None] - background[None]) / len(background)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)
