"""One Keras model, two backends, one set of values.

A Keras 3 model saved under the TensorFlow backend (explained by the Keras engine) and loaded
under the torch backend (an nn.Module there, explained by the PyTorch engine) gets the same
attributions. The torch side runs in a subprocess: Keras fixes its backend at import.
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

L = keras.layers
T, F = 6, 3


def _functional_attention() -> Any:
    inputs = keras.Input((T, F), dtype="float64")
    states = L.LSTM(4, return_sequences=True, dtype="float64")(inputs)
    pooled = L.GlobalAveragePooling1D(dtype="float64")(states)
    return keras.Model(inputs, L.Dense(2, dtype="float64")(pooled))


MODELS: dict[str, Callable[[], Any]] = {
    "lstm": lambda: keras.Sequential([keras.Input((T, F), dtype="float64"), L.LSTM(5, dtype="float64"), L.Dense(2, dtype="float64")]),
    "gru-sequences": lambda: keras.Sequential(
        [keras.Input((T, F), dtype="float64"), L.GRU(4, return_sequences=True, dtype="float64"), L.Flatten(dtype="float64"), L.Dense(2, dtype="float64")]
    ),
    "bidirectional": lambda: keras.Sequential(
        [keras.Input((T, F), dtype="float64"), L.Bidirectional(L.SimpleRNN(3, dtype="float64"), dtype="float64"), L.Dense(1, dtype="float64")]
    ),
    "pooled-states": _functional_attention,
    "two-outputs": lambda: _two_outputs(),
    "two-outputs-final": lambda: _two_outputs(),
}
#: DeepExplainer options per model (the same on both backends)
OPTIONS: dict[str, dict[str, Any]] = {"two-outputs-final": {"output": "final"}}


def _two_outputs() -> Any:
    """Several outputs: explained as one flat vector in the model's order, or one by its name."""
    inputs = keras.Input((T, F), dtype="float64")
    states = L.LSTM(3, return_sequences=True, dtype="float64")(inputs)
    per_step = L.Dense(2, name="per_step", dtype="float64")(states)
    return keras.Model(inputs, [per_step, L.Dense(1, name="final", dtype="float64")(states[:, -1])])

_TORCH_SIDE = """
import json, sys
from pathlib import Path
import numpy as np, keras, rnnshap
assert keras.backend.backend() == "torch"
found = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    model = keras.saving.load_model(folder / "model.keras")
    x, background = np.load(folder / "x.npy"), np.load(folder / "background.npy")
    explainer = rnnshap.DeepExplainer(model, background, **json.loads((folder / "options.json").read_text()))
    np.save(folder / "torch.npy", explainer.shap_values(x))
    found[folder.name] = {
        "engine": type(explainer.engine).__name__,
        "expected": np.asarray(explainer.expected_value).tolist(),
        "layout": explainer.engine.output_layout,
    }
print(json.dumps(found))
"""


def test_the_same_model_gets_the_same_values_on_tensorflow_and_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    tensorflow_side = {}
    for name, make in MODELS.items():
        keras.utils.set_random_seed(0)
        model = make()
        x, background = rng.normal(size=(5, T, F)), rng.normal(size=(4, T, F))
        explainer = rnnshap.DeepExplainer(model, background, **OPTIONS.get(name, {}))
        tensorflow_side[name] = (explainer.shap_values(x), explainer.expected_value, explainer.engine.output_layout)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "options.json").write_text(json.dumps(OPTIONS.get(name, {})))
        model.save(folder / "model.keras")
        np.save(folder / "x.npy", x)
        np.save(folder / "background.npy", background)
    # one subprocess for all models: Keras fixes its backend at import
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", _TORCH_SIDE, str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (values, expected, layout) in tensorflow_side.items():
        assert found[name]["engine"] == "TorchEngine", name
        assert [(n, tuple(shape), a, b) for n, shape, a, b in found[name]["layout"]] == layout, name
        torch_values = np.load(tmp_path / name / "torch.npy")
        assert torch_values.shape == values.shape, name
        # Keras on torch runs matmul in float32 even for float64 operands, so the model itself differs
        # from its TensorFlow twin by float32 rounding: 1e-6 of the largest attribution
        np.testing.assert_allclose(torch_values, values, rtol=0, atol=1e-6 * np.abs(values).max(), err_msg=name)
        np.testing.assert_allclose(found[name]["expected"], expected, rtol=0, atol=1e-6 * max(1e-3, float(np.abs(expected).max())), err_msg=name)


def test_the_jax_backend_is_refused_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MODELS["lstm"]()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(rnnshap.InputError, match="jax.*KERAS_BACKEND"):
        rnnshap.DeepExplainer(model, np.zeros((2, T, F)))


def test_masking_on_the_torch_backend_is_refused_with_advice_for_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras' Masking compares input values (a step function): on the torch backend the PyTorch engine
    refuses it, by the layer's name, pointing to the TensorFlow backend, where masks follow Keras."""
    inp = keras.Input((T, F))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(3)(keras.layers.Masking(0.0, name="padding")(inp))))
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.float32))
    message = str(info.value)
    assert "Masking (padding)" in message and "KERAS_BACKEND=tensorflow" in message
