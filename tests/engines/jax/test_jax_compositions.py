"""The JAX engine's softmax and normalizations take the PyTorch engine's rules: a Flax model and its
PyTorch twin (the same function, the same weights) get the same values to float64 rounding, with a softmax head
(log Σ exp with a common shift, Rescale on exp and log), a layer norm and a normalization written by hand
(``c * rsqrt(v + eps)``, ``c / sqrt(v + eps)``: the scale-weighted rule, as the built-in norms)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

import rnnshap  # noqa: E402

from ...conftest import in_turn  # noqa: E402
from ...models.flax import FlaxComposite, FlaxRecurrent, torch_twin  # noqa: E402
from ...models.torch import Function  # noqa: E402
from .test_jax_engine import F64, data, x64  # noqa: E402, F401 (x64: the fixture)

EPS = 1e-5


def _hand_norm_jax(t: Any, divide: bool) -> Any:
    c = t - jnp.mean(t, -1, keepdims=True)
    v = jnp.mean(c * c, -1, keepdims=True) + EPS
    return c / jnp.sqrt(v) if divide else c * jax.lax.rsqrt(v)


def _hand_norm_torch(t: torch.Tensor, divide: bool) -> torch.Tensor:
    c = t - t.mean(-1, keepdim=True)
    v = (c * c).mean(-1, keepdim=True) + EPS
    return c / torch.sqrt(v) if divide else c * torch.rsqrt(v)


#: head name → (the Flax function of the recurrent layer's last step, the PyTorch one)
HEADS: dict[str, tuple[Callable[[Any], Any], Callable[[torch.Tensor], torch.Tensor]]] = {
    "softmax": (lambda h: jax.nn.softmax(h, axis=-1), lambda h: torch.softmax(h, -1)),
    "log_softmax": (lambda h: jax.nn.log_softmax(h, axis=-1), lambda h: torch.log_softmax(h, -1)),
    "logsumexp": (
        lambda h: jax.nn.logsumexp(h, axis=-1, keepdims=True),
        lambda h: torch.logsumexp(h, -1, keepdim=True),
    ),
    "layer_norm": (
        lambda h: (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + EPS),
        lambda h: torch.nn.functional.layer_norm(h, h.shape[-1:], eps=EPS),
    ),
    "rsqrt_norm": (lambda h: _hand_norm_jax(h, False), lambda h: _hand_norm_torch(h, False)),
    "sqrt_norm": (lambda h: _hand_norm_jax(h, True), lambda h: _hand_norm_torch(h, True)),
}


def _both_engines(model: Any, twin: torch.nn.Module, background: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The JAX engine's values of ``model`` and the PyTorch engine's of its ``twin``, at the same pairs."""
    flax_values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    torch_values = np.asarray(rnnshap.DeepExplainer(twin, torch.tensor(background)).shap_values(torch.tensor(x)))
    assert flax_values.shape == torch_values.shape
    return flax_values, torch_values


# each head after one cell in the default run (GRU and LSTM in turn), after the other in the slow one
@pytest.mark.parametrize(
    ("cell", "head"), in_turn([(cell, head) for i, head in enumerate(HEADS) for cell in ("gru", "lstm")[:: 1 - 2 * (i % 2)]])
)
def test_softmax_and_norms_get_the_values_of_the_pytorch_twin(cell: str, head: str) -> None:
    model = FlaxRecurrent(cell, outputs=4, output=HEADS[head][0])
    twin = torch_twin(model, cell, output=HEADS[head][1])
    background, x = data((6, 3), 8, 21), data((6, 3), 3, 22)
    outputs = np.asarray(model(jnp.asarray(x)))
    np.testing.assert_allclose(twin(torch.tensor(x)).detach().numpy(), outputs, rtol=0, atol=1e-12)  # the same function
    flax_values, torch_values = _both_engines(model, twin, background, x)
    assert np.abs(flax_values - torch_values).max() <= 1e-11 * np.abs(torch_values).max()
    gap = outputs - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(flax_values.sum(axis=(1, 2)), gap, rtol=0, atol=1e-12 * max(1.0, np.abs(gap).max()))


def flax_confident(head: str) -> Any:
    """Logits far apart between the samples and the references (one side's Σ exp underflows after the shift)."""
    return FlaxComposite(lambda m, x: HEADS[m.head_name][0](m.dense(x)),
                         dense=nnx.Linear(5, 4, rngs=nnx.Rngs(7), param_dtype=F64, dtype=F64), head_name=head)  # fmt: skip


@pytest.mark.parametrize("head", ["softmax", "log_softmax", "logsumexp"])
def test_confident_logits_where_one_side_s_sum_underflows_get_the_pytorch_values(head: str) -> None:
    model = flax_confident(head)
    linear = torch.nn.Linear(5, 4).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(np.asarray(model.dense.kernel[...])).T)
        linear.bias.copy_(torch.tensor(np.asarray(model.dense.bias[...])))
    twin = torch.nn.Sequential(linear, Function(HEADS[head][1]))
    background = data((5,), 6, 31)
    x = data((5,), 3, 32) * 2000.0  # logits hundreds apart: exp of the shifted reference side underflows to 0
    flax_values, torch_values = _both_engines(model, twin, background, x)
    assert np.all(np.isfinite(flax_values))
    assert np.abs(flax_values - torch_values).max() <= 1e-11 * np.abs(torch_values).max()


def _centred_on_max(m: Any, x: Any) -> Any:
    """``h − stop_gradient(max h)`` read as a feature (no softmax after it): the maximum does not cancel there."""
    h = m.dense(x)
    centred = h - jax.lax.stop_gradient(jnp.max(h, axis=-1, keepdims=True))
    return jnp.concatenate([centred, jnp.exp(centred)], -1)


def test_a_maximum_subtracted_outside_a_softmax_is_not_taken_for_its_shift() -> None:
    model = FlaxComposite(_centred_on_max, dense=nnx.Linear(5, 4, rngs=nnx.Rngs(9), param_dtype=F64, dtype=F64))
    background, x = data((5,), 6, 41), data((5,), 3, 42)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    gap = np.asarray(model(jnp.asarray(x))) - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=1), gap, rtol=0, atol=1e-12 * max(1.0, np.abs(gap).max()))


#: an exp of h − stop_gradient(max h) whose sum or quotient is read otherwise than by a softmax or a logsumexp with
#: the maximum added back: the maximum does not cancel, so it is not taken for a shift
_NOT_CANCELLED: dict[str, Callable[[Any], Any]] = {
    "sum_read": lambda e: jnp.sum(e, -1, keepdims=True),
    "halved": lambda e: e / 2.0,
    "log_sum_read": lambda e: jnp.log(jnp.sum(e, -1, keepdims=True)),
}


def _shifted_exp(m: Any, x: Any) -> Any:
    h = m.dense(x)
    return m.read(jnp.exp(h - jax.lax.stop_gradient(jnp.max(h, axis=-1, keepdims=True))))


@pytest.mark.parametrize("name", _NOT_CANCELLED)
def test_an_exp_of_a_shifted_value_read_as_a_feature_is_not_taken_for_a_softmax(name: str) -> None:
    dense = nnx.Linear(5, 4, rngs=nnx.Rngs(9), param_dtype=F64, dtype=F64)
    model = FlaxComposite(_shifted_exp, dense=dense, read=_NOT_CANCELLED[name])
    background, x = data((5,), 6, 43), data((5,), 3, 44)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    gap = np.asarray(model(jnp.asarray(x))) - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=1), gap, rtol=0, atol=1e-12 * max(1.0, np.abs(gap).max()))
