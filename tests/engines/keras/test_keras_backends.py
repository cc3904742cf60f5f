"""One Keras model, two backends, one set of values.

A Keras 3 model saved under the TensorFlow backend (explained by the Keras engine) and loaded
under the torch backend (an nn.Module there, explained by the PyTorch engine) gets the same
attributions. The torch side runs in another process (the session's, tests/keras_process.py): Keras fixes its
backend at import.
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

from ...conftest import assert_rounding_close  # noqa: E402
from ...keras_process import KerasProcess  # noqa: E402

L = keras.layers
T, F = 6, 3


def _functional_attention() -> Any:
    inputs = keras.Input((T, F), dtype="float64")
    states = L.LSTM(4, return_sequences=True, dtype="float64")(inputs)
    pooled = L.GlobalAveragePooling1D(dtype="float64")(states)
    return keras.Model(inputs, L.Dense(2, dtype="float64")(pooled))


MODELS: dict[str, Callable[[], Any]] = {
    "lstm": lambda: keras.Sequential(
        [keras.Input((T, F), dtype="float64"), L.LSTM(5, dtype="float64"), L.Dense(2, dtype="float64")]
    ),
    "gru-sequences": lambda: keras.Sequential(
        [
            keras.Input((T, F), dtype="float64"), L.GRU(4, return_sequences=True, dtype="float64"), L.Flatten(dtype="float64"),
            L.Dense(2, dtype="float64"),
        ]
    ),
    "bidirectional": lambda: keras.Sequential(
        [
            keras.Input((T, F), dtype="float64"), L.Bidirectional(L.SimpleRNN(3, dtype="float64"), dtype="float64"),
            L.Dense(1, dtype="float64"),
        ]
    ),
    "pooled-states": _functional_attention,
    "two-outputs": lambda: _two_outputs(),
    "two-outputs-final": lambda: _two_outputs(),
    "masking": lambda: keras.Sequential(
        [
            keras.Input((T, F), dtype="float64"), L.Masking(0.0, dtype="float64"), L.LSTM(4, dtype="float64"),
            L.Dense(2, dtype="float64"),
        ]
    ),
    "masking-two-inputs": lambda: _masked_two_inputs(),
    # (found in review) Keras casts a float64 input to a float32 Masking; one Masking shared by two
    # inputs; two Maskings with different values on one input
    "masking-cast": lambda: keras.Sequential([keras.Input((T, F), dtype="float64"), L.Masking(0.0), L.LSTM(4), L.Dense(2)]),
    "masking-shared": lambda: _masking_shared(),
    "masking-two-values": lambda: _masking_two_values(),
}
#: models whose inputs are padded with the Masking layer's value (the steps of ``PADDED``)
MASKED = {"masking", "masking-two-inputs", "masking-cast", "masking-shared", "masking-two-values"}
PADDED = {"x": [(1, slice(4, None)), (3, slice(0, 2))], "background": [(0, slice(5, None))]}
#: DeepExplainer options per model (the same on both backends)
OPTIONS: dict[str, dict[str, Any]] = {"two-outputs-final": {"output": "final"}}


def _two_outputs() -> Any:
    """Several outputs: explained as one flat vector in the model's order, or one by its name."""
    inputs = keras.Input((T, F), dtype="float64")
    states = L.LSTM(3, return_sequences=True, dtype="float64")(inputs)
    per_step = L.Dense(2, name="per_step", dtype="float64")(states)
    return keras.Model(inputs, [per_step, L.Dense(1, name="final", dtype="float64")(states[:, -1])])

def _masked_two_inputs() -> Any:
    """A Masking on the first of two inputs, a bidirectional GRU over it, the second input beside."""
    steps, extra = keras.Input((T, F), dtype="float64"), keras.Input((T, F), dtype="float64")
    masked = L.Masking(0.0, dtype="float64")(steps)
    states = L.Bidirectional(L.GRU(3, return_sequences=True, dtype="float64"), dtype="float64")(masked)
    pooled = L.GlobalAveragePooling1D(dtype="float64")(states)
    return keras.Model(
        [steps, extra], L.Dense(2, dtype="float64")(L.Concatenate(dtype="float64")([pooled, L.Flatten(dtype="float64")(extra)]))
    )


def _masking_shared() -> Any:
    first, second = keras.Input((T, F), dtype="float64"), keras.Input((T, F), dtype="float64")
    masking, lstm = L.Masking(0.0, dtype="float64"), L.LSTM(3, dtype="float64")
    merged = L.Concatenate(dtype="float64")([lstm(masking(first)), lstm(masking(second))])
    return keras.Model([first, second], L.Dense(2, dtype="float64")(merged))


def _masking_two_values() -> Any:
    steps = keras.Input((T, F), dtype="float64")
    by_zero = L.LSTM(3, dtype="float64")(L.Masking(0.0, dtype="float64")(steps))
    by_minus_one = L.GRU(3, dtype="float64")(L.Masking(-1.0, dtype="float64")(steps))
    return keras.Model(steps, L.Dense(2, dtype="float64")(L.Concatenate(dtype="float64")([by_zero, by_minus_one])))


def _data(name: str, rng: np.random.Generator) -> tuple[Any, Any]:
    x, background = rng.normal(size=(5, T, F)), rng.normal(size=(4, T, F))
    if name in MASKED:
        for array, where in ((x, PADDED["x"]), (background, PADDED["background"])):
            for row, steps in where:
                array[row, steps] = 0.0
    if name == "masking-two-inputs":
        return [x, rng.normal(size=(5, T, F))], [background, rng.normal(size=(4, T, F))]
    if name == "masking-shared":  # the second input padded at other steps
        other, other_background = rng.normal(size=(5, T, F)), rng.normal(size=(4, T, F))
        other[0, 3:] = 0.0
        return [x, other], [background, other_background]
    if name == "masking-two-values":
        x[2, :1] = -1.0  # masked by the second Masking only
    return x, background


#: explains the saved models (``saved_for_the_other_sides``) on the backend of the process it runs in (the session's
#: worker for it, tests/keras_process.py), saving ``<backend>.npy`` per model
OTHER_SIDE = """
import json, sys
from pathlib import Path
import numpy as np, keras, rnnshap
backend = keras.backend.backend()
found = {}
for folder in sorted(Path(sys.argv[1]).iterdir()):
    model = keras.saving.load_model(folder / "model.keras")
    x, background = np.load(folder / "x.npy"), np.load(folder / "background.npy")
    if (folder / "several").exists():  # several inputs of one shape, stacked
        x, background = list(x), list(background)
    explainer = rnnshap.DeepExplainer(model, background, **json.loads((folder / "options.json").read_text()))
    np.save(folder / f"{backend}.npy", np.asarray(explainer.shap_values(x)))
    if folder.name == "lstm":  # the Shapley mode: every coalition, exact
        np.save(folder / f"shapley-{backend}.npy", explainer.shapley_values(x, "steps", budget=10**6).values)
    found[folder.name] = {
        "engine": type(explainer.engine).__name__,
        "expected": np.asarray(explainer.expected_value).tolist(),
        "layout": explainer.engine.output_layout,
    }
print(json.dumps(found))
"""

#: the engine each backend's side explains a Keras model with
ENGINES = {"tensorflow": "KerasEngine", "jax": "KerasEngine", "torch": "TorchEngine"}


def other_backends() -> list[str]:
    """The backends whose sides this process compares with its own (its own: the one it runs): on TensorFlow torch's
    (the PyTorch engine), on JAX TensorFlow's and torch's. (JAX's side on TensorFlow's run:
    tests/engines/keras/test_keras_jax.py.)"""
    return [backend for backend in ("tensorflow", "torch") if backend != keras.backend.backend()]


def float64_rounded_to_float32() -> bool:
    """Whether this Keras computes some ops of a float64 tensor in float32 (``ops.tanh``: Keras 3.15 on JAX,
    keras-team/keras#23223): its float64 models with such an op are their float64 twins to float32 rounding."""
    probe = keras.ops.tanh(keras.ops.convert_to_tensor(np.array([0.5]), "float64"))
    return keras.backend.standardize_dtype(probe.dtype) != "float64"


def rounding_between(backend: str) -> Any:
    """The precision to which the same float64 model computes the same function here and on ``backend``: float32 where
    either side rounds float64 to float32 (Keras on torch runs matmul in float32 even for float64 operands; Keras 3.15
    on JAX computes tanh of float64 in float32), else float64."""
    return np.float32 if backend == "torch" or keras.backend.backend() == "torch" or float64_rounded_to_float32() else np.float64


def keras_cannot_run_it(model: Any, x: Any, background: Any, options: dict[str, Any] | None = None) -> bool:
    """Whether Keras itself cannot call ``model``: on JAX a float64 SimpleRNN with tanh (Keras 3.15 computes ``ops.tanh``
    of float64 in float32, keras-team/keras#23223, and its scan refuses a float32 carry for a float64 one). Then rnnshap
    must refuse the model with that reason and advice; on TensorFlow every model here runs."""
    try:
        model(x, training=False)
    except Exception as error:  # the model's own failure, whatever Keras raises
        assert keras.backend.backend() == "jax" and "float64" in str(error), error
        with pytest.raises(rnnshap.InputError, match="keras-team/keras#23223.*float32"):
            rnnshap.DeepExplainer(model, background, **(options or {}))
        return True
    return False


def saved_for_the_other_sides(
    folder: Path, models: dict[str, Callable[[], Any]], data: Callable[[str, np.random.Generator], tuple[Any, Any]],
    options: dict[str, dict[str, Any]] | None = None
) -> dict[str, tuple[Any, Any, Any]]:
    """Each model built (seed 0) with its inputs and background from ``data(name, rng)``, saved under
    ``folder / name`` as ``OTHER_SIDE`` reads them; returns name → (model, x, background)."""
    rng = np.random.default_rng(0)
    built = {}
    for name, make in models.items():
        keras.utils.set_random_seed(0)
        model = make()
        x, background = data(name, rng)
        built[name] = (model, x, background)
        own = folder / name
        own.mkdir()
        (own / "options.json").write_text(json.dumps((options or {}).get(name, {})))
        model.save(own / "model.keras")
        np.save(own / "x.npy", np.asarray(x))  # several inputs of one shape: stacked
        np.save(own / "background.npy", np.asarray(background))
        if isinstance(x, list):
            (own / "several").touch()
    return built


#: the default run's models (every model: the slow run)
QUICK = ("lstm", "bidirectional", "two-outputs-final", "masking-two-inputs")


@pytest.mark.parametrize(
    "names", [pytest.param(QUICK, id="quick"), pytest.param(tuple(MODELS), id="every", marks=pytest.mark.slow)]
)
def test_the_same_model_gets_the_same_values_on_tensorflow_and_torch(
    names: tuple[str, ...], tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    """The same saved models on this process's backend and on the others (TensorFlow: torch; JAX: TensorFlow and torch)."""
    pytest.importorskip("torch")
    built = saved_for_the_other_sides(tmp_path, {name: MODELS[name] for name in names}, _data, OPTIONS)
    # one job for all models in each other backend's session process (Keras fixes its backend at import), running
    # while this process explains them on its own backend
    others = {backend: keras_process(backend).submit(OTHER_SIDE, str(tmp_path)) for backend in other_backends()}
    here = {}
    for name, (model, x, background) in built.items():
        if keras_cannot_run_it(model, x, background, OPTIONS.get(name)):
            continue
        explainer = rnnshap.DeepExplainer(model, background, **OPTIONS.get(name, {}))
        here[name] = (np.asarray(explainer.shap_values(x)), explainer.expected_value, explainer.engine.output_layout)
        if name == "lstm":
            exact_shapley = explainer.shapley_values(x, "steps", budget=10**6)
            assert exact_shapley.exact.all()
    assert "lstm" in here
    for backend, side in others.items():
        found = json.loads(side().strip().splitlines()[-1])
        precision = rounding_between(backend)  # (float32: the two models differ by float32 rounding)
        for name, (values, expected, layout) in here.items():
            what = f"{name} on {backend}"
            assert found[name]["engine"] == ENGINES[backend], what
            assert [(n, tuple(shape), a, b) for n, shape, a, b in found[name]["layout"]] == layout, what
            other_values = np.load(tmp_path / name / f"{backend}.npy")
            assert other_values.shape == values.shape, what
            assert_rounding_close(other_values, values, precision, what=what)
            if name in MASKED - {"masking-two-values"}:  # padded steps get exactly 0 (there a GRU reads them unmasked)
                masked_values = other_values[0] if name in ("masking-two-inputs", "masking-shared") else other_values
                for row, steps in PADDED["x"]:
                    assert np.all(masked_values[row, steps] == 0), what
                assert np.abs(masked_values[1, :4]).max() > 0, what
            other_expected = np.reshape(found[name]["expected"], np.shape(expected))
            assert_rounding_close(other_expected, expected, precision, what=f"{what}: E[f]")
        shapley = np.load(tmp_path / "lstm" / f"shapley-{backend}.npy")
        assert_rounding_close(shapley, exact_shapley.values, precision, what=f"lstm on {backend}: Shapley values")


def test_a_backend_without_an_engine_is_refused_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    """(JAX has the Keras engine: tests/engines/keras/test_keras_jax.py; OpenVINO, inference only, has none.)"""
    model = MODELS["lstm"]()
    monkeypatch.setattr(keras.backend, "backend", lambda: "openvino")
    with pytest.raises(rnnshap.InputError, match="'openvino'.*KERAS_BACKEND=jax or tensorflow or torch"):
        rnnshap.DeepExplainer(model, np.zeros((2, T, F)))


def test_a_masking_of_a_computed_tensor_on_the_torch_backend_is_refused_with_advice_for_keras(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Masking on a model input takes the explained sample's mask (the equality test above); one
    on a tensor the model computes is refused by the layer's name, with advice that fits Keras."""
    inp = keras.Input((T, F))
    masked = keras.layers.Masking(0.0, name="padding")(keras.layers.Dense(F)(inp))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(3)(masked)))
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.float32))
    message = str(info.value)
    assert "Masking (padding)" in message and "apply Masking to a model input" in message
    assert "KERAS_BACKEND=tensorflow" in message
