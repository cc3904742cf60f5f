"""Keras models as they are deployed: Monte Carlo dropout refused by name on both backends,
dropout in inference explained exactly on the torch backend, a tf.data.Dataset as background.

The torch backend runs in the session's other process (tests/keras_process.py); every script checks
that the model's weights are unchanged afterwards.
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
from rnnshap.errors import ModelStateError  # noqa: E402

from ...conftest import assert_adds_up_to, assert_rounding_close  # noqa: E402
from ...keras_process import KerasProcess  # noqa: E402

L = keras.layers
T, F = 6, 3


def _mc_dropout() -> Any:
    inputs = keras.Input((T, F))
    h = L.LSTM(4)(inputs)
    h = L.Dropout(0.3, name="mc_dropout")(h, training=True)
    return keras.Model(inputs, L.Dense(1)(h))


def _random(model: Any, x: Any) -> bool:
    """Whether the model's own calls on ``x`` differ: five calls (two alone draw the same dropout masks now and then:
    1 % of the time for 8 units at rate 0.3)."""
    first = np.asarray(model(x))
    return any(not np.array_equal(first, np.asarray(model(x))) for _ in range(4))


def _weights(model: Any) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def _unchanged(model: Any, before: list[np.ndarray]) -> None:
    after = _weights(model)
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("door", ["deep", "shapley"])
def test_mc_dropout_is_refused_by_name_on_tensorflow(door: str) -> None:
    """Dropout(training=True) keeps drawing at model(x): explaining training=False would be a twin without it."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("this process runs another Keras backend")
    model = _mc_dropout()
    rng = np.random.default_rng(0)
    background = rng.normal(size=(8, T, F)).astype("float32")
    x = background[:2]
    # the model's own calls differ: the function is random
    assert _random(model, x)
    before = _weights(model)
    explainer = rnnshap.DeepExplainer if door == "deep" else rnnshap.ShapleyExplainer
    with pytest.raises(ModelStateError, match=r"mc_dropout \(Dropout\).*training=True"):
        explainer(model, background)
    _unchanged(model, before)


_TORCH_MC = r"""
import numpy as np, keras, rnnshap
from rnnshap.errors import ModelStateError
L = keras.layers
inputs = keras.Input((6, 3)); h = L.LSTM(4)(inputs); h = L.Dropout(0.3, name="mc_dropout")(h, training=True)
model = keras.Model(inputs, L.Dense(1)(h))
background = np.random.default_rng(0).normal(size=(8, 6, 3)).astype("float32")
before = [np.array(w) for w in model.get_weights()]
for make in (lambda: rnnshap.DeepExplainer(model, background), lambda: rnnshap.ShapleyExplainer(model, background)):
    try:
        make()
    except ModelStateError as error:
        assert "mc_dropout (Dropout)" in str(error) and "training=True" in str(error), str(error)
    else:
        raise AssertionError("Dropout(training=True) was explained")
assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.get_weights(), strict=True))
print("refused")
"""


class _Noisy(L.Layer):
    """MC dropout hidden inside a custom layer's call(): no graph node says training=True."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dense = L.Dense(4)
        self.drop = L.Dropout(0.5)

    def call(self, x: Any) -> Any:
        return self.drop(self.dense(x), training=True)


@pytest.mark.parametrize("door", ["deep", "shapley"])
def test_randomness_inside_a_custom_layer_is_refused_as_randomness(door: str) -> None:
    """The pass cannot reproduce a random model, and the refusal says why (the model's own calls differ), naming
    the custom layer's call(), instead of asking to report the model."""
    inputs = keras.Input((T, F))
    model = keras.Model(inputs, L.Dense(1)(_Noisy(name="noisy")(L.LSTM(5)(inputs))))
    background = np.random.default_rng(0).normal(size=(8, T, F)).astype("float32")
    assert _random(model, background[:2])
    before = _weights(model)
    explainer = rnnshap.DeepExplainer if door == "deep" else rnnshap.ShapleyExplainer
    with pytest.raises(ModelStateError, match=r"(?s)random at inference: two calls on the same rows.*training=True") as refused:
        explainer(model, background)
    assert "please report" not in str(refused.value)
    _unchanged(model, before)


def test_mc_dropout_is_refused_by_name_on_torch(keras_process: Callable[[str], KerasProcess]) -> None:
    assert keras_process("torch").run(_TORCH_MC).strip().endswith("refused")


#: keras-io's LSTM models: dropout inside the LSTM and a Dropout layer, both off at inference; their twin
#: without dropout (the same weights) computes the same function
_TORCH_DROPOUT_AT_INFERENCE = r"""
import json, sys
import numpy as np, torch, keras, rnnshap
L = keras.layers
seeded = sys.argv[1] == "seeded"
seed = {"seed": 3} if seeded else {}
imdb = sys.argv[2] == "imdb"
def build(rate):
    if imdb:  # keras-io's IMDB sentiment model, small: token ids, bidirectional LSTMs with dropout, a Dropout layer
        return keras.Sequential([
            keras.Input((6,), dtype="int32"), L.Embedding(20, 4),
            L.Bidirectional(L.LSTM(5, dropout=rate, return_sequences=True, **seed)),
            L.Bidirectional(L.LSTM(3, dropout=rate, recurrent_dropout=rate, **seed)),
            L.Dropout(rate, **seed), L.Dense(2, activation="sigmoid"),
        ])
    return keras.Sequential([
        keras.Input((6, 3)),
        L.LSTM(5, dropout=rate, recurrent_dropout=rate, return_sequences=True, **seed),
        L.LSTM(4, dropout=rate, **seed),
        L.Dropout(rate, **seed),
        L.Dense(2),
    ])
model, twin = build(0.3), build(0.0)
twin.set_weights(model.get_weights())
rng = np.random.default_rng(1)
if imdb:
    background, x = rng.integers(0, 20, size=(10, 6)).astype("int32"), rng.integers(0, 20, size=(3, 6)).astype("int32")
else:
    background = rng.normal(size=(10, 6, 3)).astype("float32")
    x = rng.normal(size=(3, 6, 3)).astype("float32")
with torch.no_grad():
    outputs = np.asarray(model(x, training=False).detach().numpy(), np.float64)
before = [np.array(w) for w in model.get_weights()]
variables = [np.array(v.value.detach().cpu()) if hasattr(v.value, "detach") else np.array(v) for v in model.variables]
rng_state = torch.get_rng_state()
explainer = rnnshap.DeepExplainer(model, background)
values = np.asarray(explainer.shap_values(x))
rng_unchanged = bool(torch.equal(rng_state, torch.get_rng_state()))
reference = np.asarray(rnnshap.DeepExplainer(twin, background).shap_values(x))
after = [np.array(v.value.detach().cpu()) if hasattr(v.value, "detach") else np.array(v) for v in model.variables]
print(json.dumps({
    "values": values.tolist(), "twin": reference.tolist(), "outputs": outputs.tolist(),
    "expected": np.asarray(explainer.expected_value, np.float64).tolist(),
    "unchanged": all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.get_weights(), strict=True))
    and len(after) == len(variables) and all(np.array_equal(a, b) for a, b in zip(after, variables, strict=True)),
    "rng_unchanged": rng_unchanged,
}))
"""


@pytest.mark.parametrize(("seeded", "kind"), [("unseeded", "series"), ("seeded", "series"), ("unseeded", "imdb")])
def test_dropout_at_inference_is_explained_exactly_on_torch(
    keras_process: Callable[[str], KerasProcess], seeded: str, kind: str
) -> None:
    """keras-io's LSTM models: Keras draws dropout masks it does not use at inference."""
    import json

    result = json.loads(keras_process("torch").run(_TORCH_DROPOUT_AT_INFERENCE, seeded, kind).strip().splitlines()[-1])
    values, twin = np.asarray(result["values"]), np.asarray(result["twin"])
    assert result["unchanged"], "the model's variables changed"
    assert result["rng_unchanged"], "torch's global random state changed"
    # the same function, the same values (Keras computes the gates of an LSTM with recurrent_dropout apart: rounding)
    assert_rounding_close(values, twin, "float32", what="values against the twin without dropout")
    predicted = np.asarray(result["expected"]) + values.reshape(3, -1, 2).sum(1)  # (tokens: per position)
    assert_adds_up_to(predicted, np.asarray(result["outputs"]), "float32")


@pytest.mark.parametrize("element", ["inputs", "inputs and targets"])
def test_a_tf_data_dataset_is_taken_as_keras_predict_reads_it(element: str) -> None:
    """Batches of (inputs, targets) or of inputs: their inputs joined, the same values as the arrays."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("this process runs another Keras backend")
    model = keras.Sequential([keras.Input((T, F)), L.LSTM(4), L.Dense(2)])
    rng = np.random.default_rng(0)
    background = rng.normal(size=(10, T, F)).astype("float32")
    x = rng.normal(size=(3, T, F)).astype("float32")

    def dataset(a: np.ndarray) -> Any:
        items = a if element == "inputs" else (a, np.zeros(len(a), "float32"))
        return tf.data.Dataset.from_tensor_slices(items).batch(4)

    before = _weights(model)
    expected = rnnshap.DeepExplainer(model, background).shap_values(x)
    values = rnnshap.DeepExplainer(model, dataset(background)).shap_values(dataset(x))
    np.testing.assert_array_equal(values, expected)
    shapley = rnnshap.ShapleyExplainer(model, dataset(background)).shapley_values(dataset(x), time_axis=1)
    assert_adds_up_to(shapley.base_values + shapley.values.sum(1), np.asarray(model(x), np.float64), "float32")
    _unchanged(model, before)
