"""Keras SeparableConv1D/2D and DepthwiseConv1D/2D on the TensorFlow engine (LITETime's layers).

They are linear in their input, so DeepSHAP through them is exact. Truths: the Keras model's own
outputs (the values add up to f(x) − E f(r)); exact zeros for the steps a strided convolution skips;
the same model on Keras's torch backend (the PyTorch engine) gets the same values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from ...conftest import additivity_tol, assert_rounding_close  # noqa: E402
from ...keras_process import REBUILT_AND_EXPLAINED, KerasProcess, save_rebuilt  # noqa: E402

L = keras.layers
T, C = 8, 3
TOL = {name: additivity_tol(name) for name in ("float32", "float64")}

# each builds a model (float64 unless given) from keras.Input; shared with the torch-backend process
_SHARED = '''
import keras
L = keras.layers
T, C = 8, 3


def lite(dtype="float64"):
    """LITETime's block (aeon's networks/encoder/_lite.py): fixed-filter convolutions and a
    DepthwiseConv1D side by side, then dilated SeparableConv1Ds, BatchNorm, ReLU, pooling, softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, C), dtype=dtype)
    fixed = L.Conv1D(2, 3, padding="same", use_bias=False, dtype=dtype)(inputs)
    depthwise = L.DepthwiseConv1D(3, padding="same", depth_multiplier=2, use_bias=False, dtype=dtype)(inputs)
    h = L.Activation("relu", dtype=dtype)(L.Concatenate(axis=2, dtype=dtype)([fixed, depthwise]))
    h = L.SeparableConv1D(4, 3, padding="same", dilation_rate=2, activation="relu", use_bias=False, dtype=dtype)(h)
    h = L.BatchNormalization(dtype=dtype)(h)
    h = L.SeparableConv1D(3, 2, padding="valid", depth_multiplier=2, dtype=dtype)(h)
    h = L.GlobalAveragePooling1D(dtype=dtype)(L.Activation("relu", dtype=dtype)(h))
    return keras.Model(inputs, L.Dense(2, activation="softmax", dtype=dtype)(h))


def channels_first(dtype="float64"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((C, T), dtype=dtype)
    h = L.DepthwiseConv1D(2, strides=2, data_format="channels_first", activation="tanh", dtype=dtype)(inputs)
    h = L.SeparableConv1D(2, 2, padding="same", data_format="channels_first", activation="tanh", dtype=dtype)(h)
    return keras.Model(inputs, L.Dense(2, dtype=dtype)(L.Flatten(dtype=dtype)(h)))


def two_d(dtype="float64"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 4, 2), dtype=dtype)
    h = L.DepthwiseConv2D((2, 2), depth_multiplier=2, activation="tanh", dtype=dtype)(inputs)
    h = L.SeparableConv2D(3, (2, 1), strides=(1, 1), padding="same", activation="relu", dtype=dtype)(h)
    return keras.Model(inputs, L.Dense(2, dtype=dtype)(L.Flatten(dtype=dtype)(h)))


BUILDERS = {"lite": lite, "channels-first": channels_first, "two-d": two_d}
'''
namespace: dict[str, Any] = {}
exec(_SHARED, namespace)  # noqa: S102 - the models' code, shared with the torch process
BUILDERS: dict[str, Callable[..., Any]] = namespace["BUILDERS"]
SHAPES = {"lite": (T, C), "channels-first": (C, T), "two-d": (5, 4, 2)}


def outputs_of(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), np.float64).reshape(len(x), -1)


def worst_additivity(values: np.ndarray, model: Any, x: np.ndarray, background: np.ndarray) -> float:
    """max |Σφ − (f(x) − E f(r))| / max(1, |Δ|), from the model's own outputs."""
    gap = outputs_of(model, x) - outputs_of(model, background).mean(0, keepdims=True)
    n, k = gap.shape
    totals = np.asarray(values, np.float64).reshape(n, -1, k).sum(1)
    return float((np.abs(totals - gap) / np.maximum(1.0, np.abs(gap))).max())


def _data(name: str, dtype: str = "float64", seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = SHAPES[name]
    return rng.normal(size=(4, *shape)).astype(dtype), rng.normal(size=(3, *shape)).astype(dtype)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_depthwise_and_separable_convolutions_add_up_to_the_model(name: str) -> None:
    model = BUILDERS[name]()
    weights = [w.copy() for w in model.get_weights()]
    background, x = _data(name)
    explainer = rnnshap.DeepExplainer(model, background)
    assert type(explainer.engine).__name__ == "KerasEngine"
    values = explainer.shap_values(x)
    assert values.shape == (3, *SHAPES[name], 2)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]
    assert np.abs(values).max() > 1e-3
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_float32_lite_adds_up() -> None:
    model = BUILDERS["lite"]("float32")
    background, x = _data("lite", "float32")
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float32"]


@pytest.mark.parametrize("kind", ["depthwise", "separable"])
def test_steps_a_strided_convolution_skips_get_exactly_zero(kind: str) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, C), dtype="float64")
    if kind == "depthwise":
        h = L.DepthwiseConv1D(1, strides=2, activation="tanh", dtype="float64")(inputs)  # reads the even steps only
    else:
        h = L.SeparableConv1D(2, 1, strides=2, activation="tanh", dtype="float64")(inputs)
    model = keras.Model(inputs, L.Dense(2, dtype="float64")(L.Flatten(dtype="float64")(h)))
    background, x = _data("lite")
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]
    assert np.abs(values[:, 1::2]).max() == 0.0 and np.abs(values[:, ::2]).max() > 0


def test_the_same_models_get_the_same_values_on_tensorflow_and_torch(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    pytest.importorskip("torch")
    path = tmp_path / "model"
    built = {}
    for name, build in BUILDERS.items():
        model = build()
        background, x = _data(name, seed=7)
        built[name] = (model, background, x)
        save_rebuilt(str(path), name, model, background, x)
    torch_side = keras_process("torch").submit(REBUILT_AND_EXPLAINED, str(path), _SHARED)
    tensorflow_side = {name: rnnshap.DeepExplainer(m, bg).shap_values(x) for name, (m, bg, x) in built.items()}
    found = json.loads(torch_side().strip().splitlines()[-1])
    for name, (model, _, x) in built.items():
        assert found[name]["engine"] == "TorchEngine", name
        # Keras on torch runs matmul in float32 even for float64 operands: the two models differ by float32 rounding
        assert_rounding_close(np.asarray(found[name]["outputs"]["x"]), outputs_of(model, x), np.float32, what=f"{name}: f(x)")
        torch_values = np.load(f"{path}.{name}.torch.npy")
        assert_rounding_close(torch_values, tensorflow_side[name], np.float32, what=f"{name}: φ on torch against TensorFlow")
