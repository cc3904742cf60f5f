"""Keras on TensorFlow: a normalization written with keras ops gets the values of the normalization layer.

On the TensorFlow engine, every normalization takes the scale-weighted rule
(``dual.scaled``), the layers and the same function written with ``keras.ops`` in a ``Lambda``
(a product with ``rsqrt``, a division by ``sqrt``) alike, as on the torch backend, where Keras runs
the same ops through the PyTorch engine (tests/rules/test_norm_forms.py holds the torch forms, and
tests/engines/keras/test_keras_layers.py the two backends against each other). The truth is the layer: the same
function, in float64, within 1e-10 of the largest attribution.

Keras 3.15 on JAX computes the layers (and ``ops.mean``) of a float64 tensor in float32 (keras-team/keras#23223):
there the two models are the same function to float32 rounding only, and their values agree to float32 rounding of
the largest attribution; each model's values still add up to its own outputs at the float64 bound (rnnshap takes
the model's rounding by Rescale, ``dual.rounded``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from ...conftest import additivity_tol, relative_to_max, rounding_tol  # noqa: E402

L = keras.layers
ops = keras.ops
#: the same function computed in two orders: float64 rounding, amplified by the secants' quotients
SAME_FUNCTION = additivity_tol("float64")
EPS = 1e-3
#: whether Keras computes these float64 layers in float32 (Keras 3.15 on JAX, keras-team/keras#23223): the layer and
#: its hand-written form are then two functions that agree to float32 rounding
IN_FLOAT32 = keras.backend.result_type("float64", "float32") != "float64"
SAME_TO = rounding_tol("float32") if IN_FLOAT32 else SAME_FUNCTION


def _centred(t: Any) -> Any:
    return t - ops.mean(t, axis=-1, keepdims=True)


#: name → (the layer, hand-written forms of it with keras ops)
FORMS: dict[str, tuple[Callable[[], Any], dict[str, Callable[[Any], Any]]]] = {
    "layer-normalization": (
        lambda: L.LayerNormalization(epsilon=EPS, dtype="float64"),
        {
            "rsqrt": lambda t: _centred(t) * ops.rsqrt(ops.mean(ops.square(_centred(t)), axis=-1, keepdims=True) + EPS),
            "divide-sqrt": lambda t: _centred(t) / ops.sqrt(ops.mean(_centred(t) * _centred(t), axis=-1, keepdims=True) + EPS),
            "power": lambda t: _centred(t) * ops.power(ops.mean(ops.square(_centred(t)), axis=-1, keepdims=True) + EPS, -0.5),
            "reciprocal": lambda t: _centred(t) * (
                1.0 / ops.sqrt(ops.mean(ops.square(_centred(t)), axis=-1, keepdims=True) + EPS)
            ),
        },
    ),
    "rms-normalization": (
        lambda: L.RMSNormalization(epsilon=EPS, dtype="float64"),
        {"rsqrt": lambda t: t * ops.rsqrt(ops.mean(ops.square(t), axis=-1, keepdims=True) + EPS)},
    ),
}
CASES = [(name, form) for name, (_, forms) in FORMS.items() for form in forms]


def _model(norm: Any) -> Any:
    keras.utils.set_random_seed(0)  # (the same weights in both models: the norms' own are ones and zeros)
    inputs = keras.Input((5, 3), dtype="float64")
    h = L.Add(dtype="float64")([L.LSTM(4, return_sequences=True, dtype="float64")(inputs), L.Dense(4, dtype="float64")(inputs)])
    return keras.Model(inputs, L.Dense(2, dtype="float64")(L.GlobalAveragePooling1D(dtype="float64")(norm(h))))


@pytest.mark.parametrize(("name", "form"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_a_normalization_written_with_keras_ops_gets_the_values_of_the_layer(name: str, form: str) -> None:
    layer, forms = FORMS[name]
    built_in = _model(layer())
    by_hand = _model(L.Lambda(forms[form], dtype="float64"))
    rng = np.random.default_rng(4)
    background, x = rng.normal(size=(4, 5, 3)), rng.normal(size=(3, 5, 3))
    same = rounding_tol("float32") if IN_FLOAT32 else 1e-12
    np.testing.assert_allclose(np.asarray(by_hand(x)), np.asarray(built_in(x)), rtol=same, atol=same)  # the same function
    expected = rnnshap.DeepExplainer(built_in, background).shap_values(x)
    values = rnnshap.DeepExplainer(by_hand, background).shap_values(x)
    assert relative_to_max(values, expected) <= SAME_TO
    for model, explained in ((built_in, expected), (by_hand, values)):  # each adds up to its own model's outputs
        gap = np.asarray(model(x), np.float64) - np.asarray(model(background), np.float64).mean(0)
        assert np.abs(explained.sum(axis=(1, 2)) - gap).max() <= SAME_FUNCTION * max(1.0, float(np.abs(gap).max()))
