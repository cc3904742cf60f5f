"""Max pooling, token ids without an integer Input, orderings and picked indices in Keras models, on
both backends: the same values on TensorFlow (the Keras engine) and on torch (the PyTorch engine),
float64, within 1e-6 of the largest attribution (Keras on torch runs matmul in float32), each side additive.

- windowed max pooling (``MaxPooling1D/2D/3D``) in a CNN-LSTM, by the max-pool routing rule;
- a tutorial text model, ``Embedding(..., input_shape=(T,))`` with no integer ``keras.Input``: Keras
  casts the integer data to a float32 Input and back at the Embedding; token ids on both backends,
  with the values of the model written with an int Input (TensorFlow test below);
- ``keras.ops.sort`` and ``top_k`` values in a subclassed layer, by the PyTorch engine's ordering rule;
- the indices ``argmax``, ``argmin`` and ``top_k`` pick, used to select (``take_along_axis``, ``one_hot``, an
  ``Embedding``), as numbers and cast, by the PyTorch engine's picked-index rule;
- a cell called in a loop from zero states gets the values of the recurrent layer.
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
from ...keras_orderings import Ordered, Picks  # noqa: E402
from ...keras_process import KerasProcess  # noqa: E402
from .test_keras_backends import (  # noqa: E402
    ENGINES,
    OTHER_SIDE,
    float64_rounded_to_float32,
    other_backends,
    saved_for_the_other_sides,
)

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


#: uses of picked indices (tests/keras_orderings.py's Picks)
PICKS = ("take-argmax", "take-argmin-keepdims", "one-hot-argmax", "top-k-gather", "cast-argmax", "embed-argmax")

MODELS: dict[str, Callable[[], Any]] = {
    "maxpool1d": _cnn_lstm(lambda: L.MaxPooling1D(2, dtype=D)),
    "maxpool1d-overlapping-same": _cnn_lstm(lambda: L.MaxPooling1D(3, strides=2, padding="same", dtype=D)),
    "maxpool1d-valid-odd": _cnn_lstm(lambda: L.MaxPooling1D(3, strides=1, dtype=D)),
    "maxpool2d": _cnn_2d(lambda: L.MaxPooling2D((2, 2), dtype=D)),
    "maxpool2d-same-strided": _cnn_2d(lambda: L.MaxPooling2D((3, 2), strides=(2, 1), padding="same", dtype=D)),
    "maxpool3d": _cnn_3d,
    "embedding-without-int-input": lambda: _tutorial(False),
    "sort-over-time": lambda: _ordered(Ordered(axis=1, dtype=D)),
    "sort-over-units": lambda: _ordered(Ordered(dtype=D)),
    "top-k-values": lambda: _ordered(Ordered(k=3, dtype=D)),
    **{f"picked-{use}": (lambda use=use: _ordered(Picks(use, dtype=D))) for use in PICKS},
}


def _ordered(order: Any) -> Any:
    """An LSTM's states ordered by a keras op in a subclassed layer, then a linear head."""
    inputs = keras.Input((T, F), dtype=D)
    states = L.LSTM(5, return_sequences=True, dtype=D)(inputs)
    return keras.Model(inputs, L.Dense(2, dtype=D)(L.Flatten(dtype=D)(order(states))))


#: models in float32 (the others are float64)
FLOAT32 = {"maxpool3d"}


def _data(name: str, rng: np.random.Generator) -> tuple[Any, Any]:
    if name.startswith("embedding"):
        return rng.integers(0, V, (4, T)), rng.integers(0, V, (5, T))
    return rng.normal(size=(4, T, F)), rng.normal(size=(5, T, F))


def _explain_here(model: Any, x: Any, background: Any) -> np.ndarray:
    explainer = rnnshap.DeepExplainer(model, background)
    assert type(explainer.engine).__name__ == "KerasEngine"
    return np.asarray(explainer.shap_values(x))  # the additivity check of shap_values holds too


#: the default run's models (every model: the slow run)
QUICK = ("maxpool1d-overlapping-same", "maxpool3d", "embedding-without-int-input", "sort-over-units", "top-k-values")


@pytest.mark.parametrize(
    "names", [pytest.param(QUICK, id="quick"), pytest.param(tuple(MODELS), id="every", marks=pytest.mark.slow)]
)
def test_the_same_values_on_tensorflow_and_torch(
    names: tuple[str, ...], tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    """The same saved models on this process's backend and on the others (TensorFlow: torch; JAX: TensorFlow and torch)."""
    pytest.importorskip("torch")
    built = saved_for_the_other_sides(tmp_path, {name: MODELS[name] for name in names}, _data)
    # the other sides run in the session's processes for their backends while this one explains on its own
    script = "import tests.keras_orderings  # registers Ordered\n" + OTHER_SIDE
    others = {backend: keras_process(backend).submit(script, str(tmp_path)) for backend in other_backends()}
    here = {name: _explain_here(model, x, background) for name, (model, x, background) in built.items()}
    for backend, side in others.items():
        found = json.loads(side().strip().splitlines()[-1])
        for name, values in here.items():
            what = f"{name} on {backend}"
            assert found[name]["engine"] == ENGINES[backend], what
            other_values = np.load(tmp_path / name / f"{backend}.npy")
            assert other_values.shape == values.shape, what
            assert np.abs(values).max() > 0, what
            # float32 models, or float64 ones that a side rounds to float32 at an op (Keras 3.15 on JAX: tanh,
            # keras-team/keras#23223): a few hundred eps of float32 of the largest attribution, the rounding of two
            # implementations; float64 models within 1e-6 of it (Keras on torch runs matmul in float32)
            rounded = name in FLOAT32 or float64_rounded_to_float32()
            tolerance = 300 * np.finfo(np.float32).eps if rounded else 1e-6
            np.testing.assert_allclose(other_values, values, rtol=0, atol=tolerance * np.abs(values).max(), err_msg=what)


# -- tutorial text models: an Embedding first, with no integer keras.Input --------------------------
V = 20


def _tutorial(with_int_input: bool) -> Any:
    """``Sequential([Embedding(V, d, input_shape=(T,)), LSTM, Dense])``: keras makes the Input float32 and casts
    it to integers at the Embedding; or the same model with ``keras.Input((T,), dtype="int32")``."""
    if with_int_input:
        head = [keras.Input((T,), dtype="int32"), L.Embedding(V, 4, dtype=D)]
    else:
        head = [L.Embedding(V, 4, input_shape=(T,), dtype=D)]
    return keras.Sequential([*head, L.LSTM(5, dtype=D), L.Dense(2, dtype=D)])


def test_an_embedding_without_an_integer_input_explains_token_ids_as_with_one() -> None:
    keras.utils.set_random_seed(0)
    tutorial, declared = _tutorial(False), _tutorial(True)
    declared.set_weights(tutorial.get_weights())
    rng = np.random.default_rng(1)
    background, x = rng.integers(0, V, (5, T)), rng.integers(0, V, (3, T))
    explainer = rnnshap.DeepExplainer(tutorial, background)
    values = np.asarray(explainer.shap_values(x))  # additive: shap_values checks it
    assert explainer.engine.token_inputs == [0]  # type: ignore[attr-defined]
    assert np.abs(values).max() > 0
    np.testing.assert_allclose(
        values, np.asarray(rnnshap.DeepExplainer(declared, background).shap_values(x)), rtol=0, atol=1e-12 * np.abs(values).max()
    )


def test_an_embedding_given_fractional_values_is_refused_by_name() -> None:
    keras.utils.set_random_seed(0)
    background = np.random.default_rng(2).integers(0, V, (5, T)) + 0.5
    with pytest.raises(rnnshap.InputError, match=r"Embedding 'embedding\w*' receives fractional values"):
        rnnshap.DeepExplainer(_tutorial(False), background)


# -- subclassed models that loop a cell over time from constant zero states -------------------------
class CellLoop(keras.Model):
    """``call()`` loops an LSTMCell or GRUCell over the steps, from ``ops.zeros((n, units))`` or the cell's
    ``get_initial_state(n)``."""

    def __init__(self, kind: str, start: str) -> None:
        super().__init__(dtype=D)
        self.kind, self.start = kind, start
        self.cell = L.LSTMCell(5, dtype=D) if kind == "lstm" else L.GRUCell(5, dtype=D)
        self.head = L.Dense(2, dtype=D)

    def call(self, x: Any) -> Any:
        n = keras.ops.shape(x)[0]
        if self.start == "zeros":
            states = [keras.ops.zeros((n, 5), dtype=D) for _ in range(2 if self.kind == "lstm" else 1)]
        else:
            states = self.cell.get_initial_state(n)
        for t in range(x.shape[1]):
            h, states = self.cell(x[:, t], states)
        return self.head(h)


@pytest.mark.parametrize("start", ["zeros", "get_initial_state"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_cell_loop_from_zero_states_gets_the_values_of_the_recurrent_layer(kind: str, start: str) -> None:
    rng = np.random.default_rng(3)
    background, x = rng.normal(size=(5, T, F)), rng.normal(size=(3, T, F))
    keras.utils.set_random_seed(0)
    loop = CellLoop(kind, start)
    loop(x)
    layer = L.LSTM(5, dtype=D) if kind == "lstm" else L.GRU(5, dtype=D)
    written = keras.Sequential([keras.Input((T, F), dtype=D), layer, L.Dense(2, dtype=D)])
    written.set_weights(loop.get_weights())
    np.testing.assert_allclose(np.asarray(written(x)), np.asarray(loop(x)), rtol=0, atol=1e-12)
    values = np.asarray(rnnshap.DeepExplainer(loop, background).shap_values(x))  # additive: shap_values checks it
    expected = np.asarray(rnnshap.DeepExplainer(written, background).shap_values(x))
    assert np.abs(values).max() > 0
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


# -- orderings in a Lambda: the values of the subclassed layer; top_k's indices refused by name -------
def _lambda_ordered(order: Callable[[Any], Any], width: int) -> Any:
    inputs = keras.Input((T, F), dtype=D)
    states = L.LSTM(5, return_sequences=True, dtype=D)(inputs)
    ordered = L.Lambda(order, output_shape=(T, width), dtype=D)(states)
    return keras.Model(inputs, L.Dense(2, dtype=D)(L.Flatten(dtype=D)(ordered)))


@pytest.mark.parametrize(("order", "layer", "width"), [
    (lambda t: keras.ops.sort(t, axis=1), lambda: Ordered(axis=1, dtype=D), 5),
    (lambda t: keras.ops.top_k(t, 2)[0], lambda: Ordered(k=2, dtype=D), 2),
])  # fmt: skip
def test_an_ordering_in_a_lambda_gets_the_values_of_the_layer(
    order: Callable[[Any], Any], layer: Callable[[], Any], width: int
) -> None:
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(5, T, F)), rng.normal(size=(3, T, F))
    keras.utils.set_random_seed(0)
    written = _lambda_ordered(order, width)
    subclassed = _ordered(layer())
    subclassed.set_weights(written.get_weights())
    values = np.asarray(rnnshap.DeepExplainer(written, background).shap_values(x))
    expected = np.asarray(rnnshap.DeepExplainer(subclassed, background).shap_values(x))
    assert np.abs(values).max() > 0
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


# -- picked indices: argmax / argmin / top_k's indices used to select, on TensorFlow ----------------
K = 4


def _one_hot_over_linear(weights: np.ndarray, form: str) -> Any:
    """``y = h[argmax(x)]`` with ``h = x @ W``, in a Lambda: as a one-hot product or a ``take_along_axis``."""
    ops = keras.ops

    def pick(t: Any) -> Any:
        h, at = ops.matmul(t, weights), ops.argmax(t, axis=-1)
        if form == "one-hot":
            return ops.sum(ops.one_hot(at, K, dtype=D) * h, axis=-1, keepdims=True)
        return ops.take_along_axis(h, ops.expand_dims(at, -1), axis=-1)

    inputs = keras.Input((K,), dtype=D)
    return keras.Model(inputs, L.Lambda(pick, output_shape=(1,), dtype=D)(inputs))


def _closed_form(weights: np.ndarray, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """DeepSHAP of ``h[argmax(x)]``, ``h = x @ W``, by the picked-index rule written out per pair: ``h``'s
    multiplier is the mean of the two selections, ``W[:, i_x]`` and ``W[:, i_r]``; the selector's part,
    ``h̄[i_x] − h̄[i_r]`` (``h̄`` the mean of both sides' ``h``), goes to the position that decided the pick:
    the input's argmax where its maximum is at least the reference's, else the reference's argmax."""
    values = np.zeros_like(x)
    for r in background:
        for n, row in enumerate(x):
            i_x, i_r = int(np.argmax(row)), int(np.argmax(r))
            mean_h = (row @ weights + r @ weights) / 2
            values[n] += (weights[:, i_x] + weights[:, i_r]) / 2 * (row - r)
            deciding = i_x if row.max() >= r.max() else i_r
            values[n, deciding] += mean_h[i_x] - mean_h[i_r]
    return values / len(background)


@pytest.mark.parametrize("form", ["one-hot", "take-along-axis"])
def test_argmax_selecting_from_a_linear_function_gets_the_closed_form(form: str) -> None:
    rng = np.random.default_rng(8)
    weights, background, x = rng.normal(size=(K, K)), rng.normal(size=(6, K)), rng.normal(size=(5, K))
    assert any(np.argmax(row) != np.argmax(r) for row in x for r in background)  # the picks move
    values = np.asarray(rnnshap.DeepExplainer(_one_hot_over_linear(weights, form), background).shap_values(x))[..., 0]
    expected = _closed_form(weights, x, background)
    assert_rounding_close(values, expected, np.float64, what=form)


def test_the_uses_of_picked_indices_in_lambdas_get_the_values_of_the_layers() -> None:
    """Uses of Picks written as Lambdas of the layer's call, in one model with a shared linear head (the
    closed-form test above has argmax's in Lambdas)."""
    rng = np.random.default_rng(9)
    background, x = rng.normal(size=(5, T, 5)), rng.normal(size=(3, T, 5))
    layers = [Picks(use, dtype=D) for use in ("take-argmin-keepdims", "top-k-gather")]
    inputs, head = keras.Input((T, 5), dtype=D), L.Dense(2, dtype=D)

    def model(wrap: Callable[[Any], Any]) -> Any:
        return keras.Model(inputs, head(L.Concatenate(dtype=D)([L.Flatten(dtype=D)(wrap(layer)(inputs)) for layer in layers])))

    subclassed = model(lambda layer: layer)
    written = model(lambda layer: L.Lambda(layer.call, output_shape=layer.compute_output_shape((None, T, 5)), dtype=D))
    values = np.asarray(rnnshap.DeepExplainer(written, background).shap_values(x))  # additive: shap_values checks it
    expected = np.asarray(rnnshap.DeepExplainer(subclassed, background).shap_values(x))
    assert np.abs(values).max() > 0
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize(("use", "match"), [
    (lambda t: t * keras.ops.cast(keras.ops.argmax(t), D), "argmax without an axis picks over the whole batch"),
    (
        lambda t: keras.ops.sum(keras.ops.take(t, keras.ops.argmax(t[:, 0], axis=-1), axis=-1), -1),
        "take.*takes an input-dependent tensor by",
    ),
    (
        lambda t: keras.ops.where(keras.ops.expand_dims(keras.ops.argmax(t, axis=-1), -1) > 0, t, -t),
        "compares the indices argmax picked",
    ),
])  # fmt: skip
def test_a_pick_or_a_use_without_a_rule_is_refused_by_name_on_tensorflow(use: Callable[[Any], Any], match: str) -> None:
    inputs = keras.Input((T, F), dtype=D)
    states = L.LSTM(5, return_sequences=True, dtype=D)(inputs)
    model = keras.Model(inputs, L.Dense(2, dtype=D)(L.Flatten(dtype=D)(L.Lambda(use, dtype=D)(states))))
    with pytest.raises(rnnshap.UnsupportedOperationError, match=match):
        rnnshap.DeepExplainer(model, np.random.default_rng(6).normal(size=(4, T, F)))


# -- a background that does not fit the model, on TensorFlow -------------------------------------------------
def test_a_background_that_does_not_fit_says_what_reached_the_model() -> None:
    model = keras.Sequential([keras.Input((T, F)), L.LSTM(5), L.Dense(1)])
    rng = np.random.default_rng(7)
    with pytest.raises(rnnshap.InputError, match=r"\(6, 8, 4\)"):
        rnnshap.DeepExplainer(model, rng.normal(size=(6, T, F + 1)))
    with pytest.raises(rnnshap.InputError, match="a list of 6 inputs") as info:
        rnnshap.DeepExplainer(model, rng.normal(size=(6, T, F)).tolist())
    assert "np.asarray(background)" in str(info.value)
    with pytest.raises(rnnshap.InputError, match=r"x\[None\]"):
        rnnshap.DeepExplainer(model, rng.normal(size=(T, F)))
    rnnshap.DeepExplainer(model, rng.normal(size=(T, F))[None])  # the advice works
