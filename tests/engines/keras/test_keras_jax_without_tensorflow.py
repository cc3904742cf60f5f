"""Keras on JAX needs no TensorFlow (the ``jax`` extra installs keras and jax only).

A fresh process hides TensorFlow (a meta-path finder refuses it, as if it were not installed), selects
the JAX backend, and explains a small LSTM model with rnnshap: the Keras engine imports and runs without
TensorFlow (its TensorFlow-only parts, the fused LSTM/GRU kernel and the trace of ``call()`` into a
TensorFlow graph, are imported on the TensorFlow backend only), and its attributions add up to the model's
own output minus the mean output on the background, within float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("keras")

#: the tree under test (the script's ``import rnnshap`` finds it first)
ROOT = Path(__file__).resolve().parents[3]
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, os, sys

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import numpy as np
    import rnnshap

    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4), keras.layers.Dense(2, activation="tanh")])
    rng = np.random.default_rng(0)
    background = rng.normal(size=(4, 5, 3)).astype("float32")
    x = rng.normal(size=(3, 5, 3)).astype("float32")
    weights = [w.copy() for w in model.get_weights()]
    explainer = rnnshap.DeepExplainer(model, background)
    values = np.asarray(explainer.shap_values(x), dtype=np.float64)  # (samples, T, F, outputs)
    out = np.asarray(model(x), dtype=np.float64)
    mean = np.asarray(model(background), dtype=np.float64).mean(0)
    print(json.dumps({
        "engine": type(explainer.engine).__name__,
        "sums": values.sum(axis=(1, 2)).tolist(),
        "gaps": (out - mean).tolist(),
        "expected": np.asarray(explainer.expected_value, dtype=np.float64).tolist(),
        "mean": mean.tolist(),
        "unchanged": all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights())),
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }))

    # a model declared float64 on a JAX without x64 (JAX's default): a float32 model, explained as one
    model = keras.Sequential([keras.Input((5, 3), dtype="float64"), keras.layers.LSTM(4, dtype="float64"),
                              keras.layers.Dense(2, dtype="float64")])
    explainer = rnnshap.DeepExplainer(model, background.astype("float64"))
    values = np.asarray(explainer.shap_values(x.astype("float64")), dtype=np.float64)
    out, mean = (np.asarray(model(a.astype("float64")), dtype=np.float64) for a in (x, background))
    print(json.dumps({
        "outputs": str(np.asarray(model(x.astype("float64"))).dtype),
        "computed": explainer.engine.dtype,
        "sums": values.sum(axis=(1, 2)).tolist(),
        "gaps": (out - mean.mean(0)).tolist(),
    }))
    """
)


@pytest.mark.slow  # (a process of its own that imports JAX and Keras: half a minute on two cores)
def test_keras_engine_explains_on_jax_without_tensorflow() -> None:
    import numpy as np

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "0"}  # JAX's default (tests/conftest.py turns x64 on)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    found, declared64 = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert found["engine"] == "KerasEngine"
    assert not found["tensorflow_loaded"]
    assert found["unchanged"]
    sums, gaps = np.asarray(found["sums"]), np.asarray(found["gaps"])
    assert sums.shape == gaps.shape == (3, 2)
    # float32 rounding of a few dozen terms of magnitude <= 1 (tanh outputs)
    tolerance = 64 * float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(sums, gaps, rtol=0, atol=tolerance)
    np.testing.assert_allclose(found["expected"], found["mean"], rtol=0, atol=tolerance)
    # declared float64, without x64: JAX computes it in float32, and the engine checks it at float32 precision
    assert declared64["outputs"] == "float32" and declared64["computed"] == "float32"
    np.testing.assert_allclose(declared64["sums"], declared64["gaps"], rtol=0, atol=tolerance)
