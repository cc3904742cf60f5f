"""Keras 3 on JAX: the Keras engine on the JAX backend gives the values it gives on TensorFlow, and the
PyTorch engine gives on the torch backend, for the same saved model.

Keras fixes its backend at import, so each backend runs in its own process (tests/keras_process.py):
this process (TensorFlow) builds and saves each model, the JAX and torch workers load and explain it.
The three computations of the same exact attributions differ by rounding only: JAX and TensorFlow within
1e-12 of the largest value for a float64 model both compute in float64; within float32
rounding (:data:`TOLERANCE`) where either computes in float32: float32 models, and float64 models whose
``tanh`` Keras computes in float32 on JAX (``ops.tanh`` of a float64 tensor is float32 there: the recurrent
layers' activations), and every model against torch (Keras on torch runs ``matmul`` in float32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("jax")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from ...keras_process import KerasProcess  # noqa: E402

L = keras.layers
T, F = 6, 3
#: the largest gap between two backends, relative to the largest value: 1e-12 where both compute in
#: float64; where one computes in float32, 64 eps of float32 (ROUNDING_ULPS of tests/conftest.py: two float32
#: computations of the same quantity, here by different kernels, whose secant quotients amplify the roundings)
TOLERANCE = {"float32": 64 * float(np.finfo(np.float32).eps), "float64": 1e-12}


def _seq(dtype: str, *layers: Any) -> Any:
    return keras.Sequential([keras.Input((T, F), dtype=dtype), *layers])


def _embedded() -> Any:
    tokens = keras.Input((T,), dtype="int32")
    states = L.GRU(4)(L.Embedding(7, 3, mask_zero=True)(tokens))
    return keras.Model(tokens, L.Dense(2)(states))


def _conv() -> Any:
    inputs = keras.Input((T, F))
    hidden = L.Conv1D(4, 3, padding="causal", activation="relu")(inputs)
    return keras.Model(inputs, L.Dense(2, activation="sigmoid")(L.GlobalAveragePooling1D()(hidden)))


def _conv64() -> Any:
    inputs = keras.Input((T, F), dtype="float64")
    hidden = L.Conv1D(4, 2, activation="relu", **f64)(inputs)
    return keras.Model(inputs, L.Dense(2, **f64)(L.MaxPooling1D(2, **f64)(hidden)))


f64 = {"dtype": "float64"}
#: name → (the model, its inputs' dtype, the precision JAX and TensorFlow agree to: float32 where Keras on JAX
#: computes the float64 model's tanh in float32)
MODELS: dict[str, tuple[Callable[[], Any], str, str]] = {
    "lstm": (lambda: _seq("float64", L.LSTM(5, **f64), L.Dense(2, **f64)), "float64", "float32"),
    "gru": (
        lambda: _seq("float64", L.GRU(4, return_sequences=True, **f64), L.Flatten(**f64), L.Dense(2, **f64)), "float64", "float32"
    ),
    "gru-reset-before": (lambda: _seq("float64", L.GRU(4, reset_after=False, **f64), L.Dense(2, **f64)), "float64", "float32"),
    "simple-rnn": (lambda: _seq("float32", L.SimpleRNN(4), L.Dense(2)), "float32", "float32"),
    "bidirectional": (
        lambda: _seq("float64", L.Bidirectional(L.LSTM(3, **f64), **f64), L.Dense(1, **f64)), "float64", "float32"
    ),
    "masking": (lambda: _seq("float64", L.Masking(0.0, **f64), L.LSTM(4, **f64), L.Dense(2, **f64)), "float64", "float32"),
    "embedding-mask-zero": (_embedded, "int32", "float32"),
    "conv1d-dense": (_conv, "float32", "float32"),
    "conv-relu-max-float64": (_conv64, "float64", "float64"),
}


def _data(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if name == "embedding-mask-zero":
        x, background = rng.integers(1, 7, size=(4, T)), rng.integers(1, 7, size=(3, T))
        x[1, 4:] = 0  # padded: masked by mask_zero
        background[0, 5:] = 0
        return x.astype("int32"), background.astype("int32")
    x, background = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))  # type: ignore[assignment]
    if name == "masking":
        x[1, 4:] = 0.0
        x[3, :2] = 0.0
        background[0, 5:] = 0.0
    dtype = MODELS[name][1]
    return x.astype(dtype), background.astype(dtype)


#: run on the JAX and torch workers: every saved model explained there, its values saved beside it; the
#: model's weights are checked unchanged by the explanation
_OTHER_SIDE = """
import json, sys
from pathlib import Path
import numpy as np, keras, rnnshap
if keras.backend.backend() == "jax":  # float64 models in float64 (JAX computes them in float32 unless x64 is on)
    import jax
    jax.config.update("jax_enable_x64", True)
found = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    model = keras.saving.load_model(folder / "model.keras")
    x, background = np.load(folder / "x.npy"), np.load(folder / "background.npy")
    before = [np.array(w) for w in model.get_weights()]
    explainer = rnnshap.DeepExplainer(model, background)
    values = np.asarray(explainer.shap_values(x))
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.get_weights())), "the model changed"
    np.save(folder / (keras.backend.backend() + ".npy"), values)
    found[folder.name] = {"engine": type(explainer.engine).__name__, "expected": np.asarray(explainer.expected_value).tolist()}
print(json.dumps(found))
"""


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference between ``a`` and ``b``, relative to the largest value of ``b``."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / max(np.abs(b).max(), 1e-300))


#: why the comparisons are TensorFlow's tests: TensorFlow's side runs in the pytest process, JAX's and torch's in
#: workers; on another backend both sides would be that backend
ONE_SIDE_HERE = "TensorFlow's side runs in the pytest process: on JAX both sides would be JAX"

#: the default run's models, on JAX and TensorFlow (every model, on torch too: the slow test)
QUICK = ("embedding-mask-zero", "conv-relu-max-float64")


@pytest.mark.tensorflow_only(reason=ONE_SIDE_HERE)
def test_two_models_get_the_same_values_on_jax_and_tensorflow(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    _compare(tmp_path, keras_process, QUICK, with_torch=False)


@pytest.mark.slow
@pytest.mark.tensorflow_only(reason=ONE_SIDE_HERE)
def test_every_model_gets_the_same_values_on_jax_tensorflow_and_torch(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    _compare(tmp_path, keras_process, tuple(MODELS))


def _compare(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess], names: tuple[str, ...], with_torch: bool = True
) -> None:
    rng = np.random.default_rng(0)
    built = {}
    for name in names:
        make, _, precision = MODELS[name]
        keras.utils.set_random_seed(0)
        model = make()
        x, background = _data(name, rng)
        built[name] = (model, x, background, precision)
        (tmp_path / name).mkdir()
        model.save(tmp_path / name / "model.keras")
        np.save(tmp_path / name / "x.npy", x)
        np.save(tmp_path / name / "background.npy", background)
    jax_side = keras_process("jax").submit(_OTHER_SIDE, str(tmp_path))
    torch_side = keras_process("torch").submit(_OTHER_SIDE, str(tmp_path)) if with_torch else None
    tensorflow_side = {}
    for name, (model, x, background, _) in built.items():
        explainer = rnnshap.DeepExplainer(model, background)
        tensorflow_side[name] = (np.asarray(explainer.shap_values(x)), np.asarray(explainer.expected_value))
    on_jax = json.loads(jax_side().strip().splitlines()[-1])
    on_torch = json.loads(torch_side().strip().splitlines()[-1]) if torch_side is not None else None
    for name, (values, expected) in tensorflow_side.items():
        precision = built[name][3]
        assert on_jax[name]["engine"] == "KerasEngine", name
        jax_values = np.load(tmp_path / name / "jax.npy")
        assert jax_values.shape == values.shape and np.abs(values).max() > 0, name
        assert _gap(jax_values, values) <= TOLERANCE[precision], (name, "jax vs tensorflow", _gap(jax_values, values))
        if on_torch is not None:
            assert on_torch[name]["engine"] == "TorchEngine", name
            torch_values = np.load(tmp_path / name / "torch.npy")
            # Keras on torch runs matmul in float32 even for float64 operands (tests/engines/keras/test_keras_backends.py): its
            # model itself differs from the others by float32 rounding
            gap = _gap(jax_values, torch_values)
            assert gap <= TOLERANCE["float32"], (name, "jax vs torch", gap)
        assert _gap(np.asarray(on_jax[name]["expected"]), expected) <= TOLERANCE[precision], (name, "E[f]")
    if "masking" in names:  # masked steps get exactly 0
        padded = np.load(tmp_path / "masking" / "jax.npy")
        assert np.all(padded[1, 4:] == 0) and np.all(padded[3, :2] == 0)
    tokens = np.load(tmp_path / "embedding-mask-zero" / "jax.npy")
    assert np.all(tokens[1, 4:] == 0) and np.abs(tokens[1, :4]).max() > 0
