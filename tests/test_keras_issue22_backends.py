"""Keras models of issue 22 on both backends: the same values on TensorFlow (the Keras engine) and on
torch (the PyTorch engine), float64, within 1e-6 of the largest attribution (Keras on torch runs
matmul in float32), each side additive.

- windowed max pooling (``MaxPooling1D/2D/3D``) in a CNN-LSTM, by the max-pool routing rule;
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from .test_keras_backends import _TORCH_SIDE  # noqa: E402

L = keras.layers
T, F = 8, 3
D = "float64"


def _cnn_lstm(pool: Any) -> Callable[[], Any]:
    return lambda: keras.Sequential([
        keras.Input((T, F), dtype=D), L.Conv1D(4, 3, padding="same", activation="relu", dtype=D), pool(),
        L.LSTM(5, dtype=D), L.Dense(2, dtype=D),
    ])  # fmt: skip


def _cnn_2d(pool: Any) -> Callable[[], Any]:
    return lambda: keras.Sequential([
        keras.Input((T, F), dtype=D), L.Reshape((T, F, 1), dtype=D), L.Conv2D(3, 2, padding="same", activation="tanh", dtype=D),
        pool(), L.Flatten(dtype=D), L.Dense(2, dtype=D),
    ])  # fmt: skip


def _cnn_3d() -> Any:
    """float32: TensorFlow's MaxPool3D has no float64 kernel."""
    return keras.Sequential([
        keras.Input((T, F)), L.Dense(2, activation="tanh"), L.Reshape((2, T // 2, 2, 1)),
        L.MaxPooling3D((1, 2, 2), padding="same"), L.Flatten(), L.Dense(2),
    ])  # fmt: skip


MODELS: dict[str, Callable[[], Any]] = {
    "maxpool1d": _cnn_lstm(lambda: L.MaxPooling1D(2, dtype=D)),
    "maxpool1d-overlapping-same": _cnn_lstm(lambda: L.MaxPooling1D(3, strides=2, padding="same", dtype=D)),
    "maxpool1d-valid-odd": _cnn_lstm(lambda: L.MaxPooling1D(3, strides=1, dtype=D)),
    "maxpool2d": _cnn_2d(lambda: L.MaxPooling2D((2, 2), dtype=D)),
    "maxpool2d-same-strided": _cnn_2d(lambda: L.MaxPooling2D((3, 2), strides=(2, 1), padding="same", dtype=D)),
    "maxpool3d": _cnn_3d,
}


#: models in float32 (the others are float64)
FLOAT32 = {"maxpool3d"}


def _data(name: str, rng: np.random.Generator) -> tuple[Any, Any]:
    return rng.normal(size=(4, T, F)), rng.normal(size=(5, T, F))


def _explain_tensorflow(model: Any, x: Any, background: Any) -> np.ndarray:
    explainer = rnnshap.DeepExplainer(model, background)
    assert type(explainer.engine).__name__ == "KerasEngine"
    return np.asarray(explainer.shap_values(x))  # the additivity check of shap_values holds too


def test_the_same_values_on_tensorflow_and_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    tensorflow_side = {}
    for name, make in MODELS.items():
        keras.utils.set_random_seed(0)
        model = make()
        x, background = _data(name, rng)
        tensorflow_side[name] = _explain_tensorflow(model, x, background)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "options.json").write_text("{}")
        model.save(folder / "model.keras")
        np.save(folder / "x.npy", np.asarray(x))
        np.save(folder / "background.npy", np.asarray(background))
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", _TORCH_SIDE, str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name, values in tensorflow_side.items():
        assert found[name]["engine"] == "TorchEngine", name
        torch_values = np.load(tmp_path / name / "torch.npy")
        assert torch_values.shape == values.shape, name
        assert np.abs(values).max() > 0, name
        # float32 models: a few hundred eps of the largest attribution, the rounding of two implementations
        tolerance = 300 * np.finfo(np.float32).eps if name in FLOAT32 else 1e-6
        np.testing.assert_allclose(torch_values, values, rtol=0, atol=tolerance * np.abs(values).max(), err_msg=name)
