"""Softmax, log-softmax and logsumexp of confident logits (a few hundred) on the Keras engine.

A classifier trained one epoch on raw series (aeon's ResNet on BasicMotions) gives logits of ±500: for a
sample and a reference whose largest logits lie more than ~87 apart, one side's Σ exp(z − max) underflows
to 0 in float32, and log 0 made the engine's pass NaN (refused by its own check). The rules take that
side's log from a stable logsumexp, as the PyTorch side's (rnnshap/rules/structured.py).

Truths: the Keras model's own outputs (the values add up to f(x) − E f(r)), on the TensorFlow engine and on
Keras's torch backend (the PyTorch engine), which must agree. Tolerances: the logits z carry float32
rounding of a few eps·|z| each, which softmax, log-softmax and logsumexp pass on at most doubled, so the
float32 additivity tolerance is taken relative to max(1, |z|).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from ...conftest import additivity_tol  # noqa: E402
from ...keras_process import REBUILT_AND_EXPLAINED, KerasProcess, save_rebuilt  # noqa: E402

T, F, K = 5, 3, 4
#: the size of the logits: aeon's ResNet after one epoch on BasicMotions
SCALE = 500.0

# each builds a float32 model whose last Dense gives logits z, then the head; shared with the torch process
_SHARED = '''
import keras
L, ops = keras.layers, keras.ops
T, F, K = 5, 3, 4


def body():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F))
    return inputs, L.Dense(6, activation="tanh")(L.Flatten()(inputs))


def dense_softmax():
    inputs, h = body()
    return keras.Model(inputs, L.Dense(K, activation="softmax", name="logits")(h))


def dense_log_softmax():
    inputs, h = body()
    return keras.Model(inputs, L.Dense(K, activation="log_softmax", name="logits")(h))


def softmax_layer():
    inputs, h = body()
    return keras.Model(inputs, L.Softmax()(L.Dense(K, name="logits")(h)))


def logsumexp_op():
    inputs, h = body()
    z = L.Dense(K, name="logits")(h)
    return keras.Model(inputs, L.Lambda(lambda t: ops.logsumexp(t, axis=-1, keepdims=True))(z))


BUILDERS = {
    "dense-softmax": dense_softmax, "dense-log-softmax": dense_log_softmax, "softmax-layer": softmax_layer,
    "logsumexp": logsumexp_op,
}
'''
namespace: dict[str, Any] = {}
exec(_SHARED, namespace)  # noqa: S102 - the models' code, shared with the torch process
BUILDERS: dict[str, Callable[[], Any]] = namespace["BUILDERS"]


def confident(name: str) -> Any:
    """The model with its last Dense scaled so that its logits reach ±SCALE."""
    model = BUILDERS[name]()
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / np.abs(kernel).sum(0) * SCALE, bias])
    return model


def data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(5, T, F)).astype(np.float32), rng.normal(size=(6, T, F)).astype(np.float32)


def logits_of(model: Any, x: np.ndarray) -> np.ndarray:
    """The last Dense's logits (before its activation), in float64 from its float32 input."""
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    h = np.asarray(keras.Model(model.input, dense.input)(x), np.float64)
    return h @ kernel.astype(np.float64) + bias


def outputs_of(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x), np.float64).reshape(len(x), -1)


def worst_additivity(values: np.ndarray, outputs: np.ndarray, background_outputs: np.ndarray, magnitude: float) -> float:
    """max |Σφ − (f(x) − E f(r))| / max(1, |z|), from the model's own outputs."""
    gap = outputs - background_outputs.mean(0, keepdims=True)
    n, k = gap.shape
    totals = np.asarray(values, np.float64).reshape(n, -1, k).sum(1)
    return float(np.abs(totals - gap).max() / max(1.0, magnitude))


def test_the_premise_one_sum_underflows() -> None:
    """Some sample and reference have largest logits more than log(1/tiny) apart: one side's Σ exp(z − max) is 0."""
    model = confident("dense-softmax")
    x, background = data()
    top_x, top_r = logits_of(model, x).max(1), logits_of(model, background).max(1)
    assert np.abs(logits_of(model, x)).max() > SCALE / 4
    assert np.abs(top_x[:, None] - top_r[None]).max() > -np.log(np.finfo(np.float32).smallest_subnormal)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_confident_logits_add_up_to_the_model(name: str) -> None:
    model = confident(name)
    weights = [w.copy() for w in model.get_weights()]
    x, background = data()
    explainer = rnnshap.DeepExplainer(model, background)
    assert type(explainer.engine).__name__ == "KerasEngine"
    values = explainer.shap_values(x)
    assert np.isfinite(values).all() and np.abs(values).max() > 1e-3
    magnitude = float(np.abs(logits_of(model, np.concatenate([x, background]))).max())
    assert worst_additivity(values, outputs_of(model, x), outputs_of(model, background), magnitude) <= additivity_tol("float32")
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_the_same_models_add_up_and_agree_on_tensorflow_and_torch(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    pytest.importorskip("torch")
    path = tmp_path / "model"
    x, background = data(seed=7)
    built = {}
    for name in BUILDERS:
        model = confident(name)
        built[name] = model
        save_rebuilt(str(path), name, model, background, x)
    torch_side = keras_process("torch").submit(REBUILT_AND_EXPLAINED, str(path), _SHARED)
    tensorflow_side = {name: rnnshap.DeepExplainer(m, background).shap_values(x) for name, m in built.items()}
    found = json.loads(torch_side().strip().splitlines()[-1])
    tol = additivity_tol("float32")
    for name, model in built.items():
        assert found[name]["engine"] == "TorchEngine", name
        magnitude = float(np.abs(logits_of(model, np.concatenate([x, background]))).max())
        torch_outputs = [np.asarray(found[name]["outputs"][key]) for key in ("x", "background")]
        torch_values = np.load(f"{path}.{name}.torch.npy")
        assert np.isfinite(torch_values).all(), name
        assert worst_additivity(torch_values, *torch_outputs, magnitude) <= tol, name
        # the two backends' models differ by float32 rounding of the logits (relative eps·|z|), the values as much
        scale = max(1.0, magnitude)
        assert np.abs(torch_values - tensorflow_side[name]).max() / scale <= tol, name
