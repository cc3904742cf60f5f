"""Keras engine reliability: masks propagate as in Keras 3, the dual pass checks itself against the
model on every block, bad inputs are InputErrors, and causal convolutions, mixed precision and
mixed input/layer dtypes are explained exactly.

Every exactness reference is the Keras model itself: ``model(x)`` and the model on references
built by hand (a reference read with the sample's mask is the reference with the sample's masked
steps set to the mask value), never rnnshap's own outputs.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("shap")

import rnnshap  # noqa: E402
from rnnshap.engines.base import RTOL  # noqa: E402
from rnnshap.engines.keras.dual import Dual  # noqa: E402

from ...conftest import additivity_tol, assert_adds_up_to, assert_rounding_close, eps  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking.*:UserWarning")

L = keras.layers
T, F = 4, 3
TOL = {name: additivity_tol(name) for name in ("float32", "float64")}  # |Σφ − Δ| ≤ TOL·max(1, |Δ|)


def model_outputs(model: Any, x: Any) -> np.ndarray:
    out = np.asarray(model(x, training=False), dtype=np.float64)
    return out.reshape(out.shape[0], -1)


def explain(model: Any, background: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, n_features, n_outputs), base values (n, n_outputs)) from rnnshap."""
    explanation = rnnshap.DeepExplainer(model, background)(x)
    n = np.asarray(x).shape[0]
    base = np.asarray(explanation.base_values, np.float64).reshape(n, -1)
    return np.asarray(explanation.values, np.float64).reshape(n, -1, base.shape[1]), base


def assert_adds_up_to_the_model(
    values: np.ndarray, base: np.ndarray, fx: np.ndarray, expected_base: np.ndarray, dtype: str
) -> None:
    assert_adds_up_to(values.sum(1) + base, fx, dtype)
    assert_rounding_close(base, expected_base, dtype, what="E[f]")


# -- 1. masks follow Keras -----------------------------------------------------------------------
def _initial_state(dtype: str) -> Any:
    """Keras 3 passes no mask to a recurrent layer given initial states (two tensor arguments)."""
    x_in = keras.Input((T, F), dtype=dtype)
    masked = L.Masking(0.0, dtype=dtype)(x_in)
    zeros = L.Dense(4, kernel_initializer="zeros", bias_initializer="ones", dtype=dtype)(L.Flatten(dtype=dtype)(x_in))
    return keras.Model(x_in, L.Dense(2, dtype=dtype)(L.LSTM(4, dtype=dtype)(masked, initial_state=[zeros, zeros])))


def _masked_multiply(dtype: str) -> Any:
    """Keras's Multiply reads masks: masked entries count as 1 in the product, which is 0 where all are
    masked; Flatten then drops the mask, so the Dense after it reads those zeros."""
    x_in = keras.Input((T, F), dtype=dtype)
    masked = L.Masking(0.0, dtype=dtype)(x_in)
    a = L.Dense(3, activation="tanh", bias_initializer="ones", dtype=dtype)(masked)
    b = L.Dense(3, bias_initializer="ones", dtype=dtype)(masked)
    return keras.Model(x_in, L.Dense(2, dtype=dtype)(L.Flatten(dtype=dtype)(L.Multiply(dtype=dtype)([a, b]))))


def _nested(dtype: str) -> Any:
    inner = keras.Sequential(
        [keras.Input((T, F), dtype=dtype), L.Dense(4, dtype=dtype), L.Conv1D(3, 2, padding="same", dtype=dtype)]
    )
    x_in = keras.Input((T, F), dtype=dtype)
    return keras.Model(x_in, L.Dense(2, dtype=dtype)(L.LSTM(3, dtype=dtype)(inner(L.Masking(0.0, dtype=dtype)(x_in)))))


def _stack(*layers: Callable[[str], Any]) -> Callable[[str], Any]:
    def build(dtype: str) -> Any:
        return keras.Sequential(
            [keras.Input((T, F), dtype=dtype), L.Masking(0.0, dtype=dtype), *[make(dtype) for make in layers]]
        )

    return build


def _head(dtype: str) -> Any:
    return L.Dense(2, dtype=dtype)


MASK_STACKS: dict[str, Callable[[str], Any]] = {
    "conv1d": _stack(lambda d: L.Conv1D(4, 3, padding="same", dtype=d), lambda d: L.LSTM(3, dtype=d), _head),
    "average-pooling": _stack(lambda d: L.AveragePooling1D(2, padding="same", dtype=d), lambda d: L.GRU(3, dtype=d), _head),
    "cropping": _stack(lambda d: L.Cropping1D((1, 0), dtype=d), lambda d: L.LSTM(3, dtype=d), _head),
    "permute": _stack(lambda d: L.Permute((1, 2), dtype=d), lambda d: L.SimpleRNN(3, dtype=d), _head),
    "zero-padding": _stack(lambda d: L.ZeroPadding1D(1, dtype=d), lambda d: L.LSTM(3, dtype=d), _head),
    "up-sampling": _stack(lambda d: L.UpSampling1D(2, dtype=d), lambda d: L.GRU(3, dtype=d), _head),
    "dense-3d-keeps-it": _stack(
        lambda d: L.Dense(4, activation="relu", dtype=d), lambda d: L.LSTM(3, return_sequences=True, dtype=d),
        lambda d: L.GlobalAveragePooling1D(dtype=d), _head,
    ),
    "initial-state": _initial_state,
    "multiply": _masked_multiply,
    "nested-model": _nested,
}


def _masked_data(dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    background, x = rng.normal(size=(3, T, F)).astype(dtype), rng.normal(size=(3, T, F)).astype(dtype)
    x[0, -2:] = 0.0  # padded at the end
    x[1, 1] = 0.0  # a masked step inside; x[2] is not masked
    return background, x, np.all(x == 0.0, axis=-1)


@pytest.mark.parametrize(("name", "dtype"), [(name, "float64") for name in MASK_STACKS] + [("conv1d", "float32")])
def test_masks_propagate_as_in_keras(name: str, dtype: str) -> None:
    keras.utils.set_random_seed(0)
    model = MASK_STACKS[name](dtype)
    background, x, masked = _masked_data(dtype)
    values, base = explain(model, background, x)
    fx = model_outputs(model, x)
    # the reference read with sample i's mask: the reference with i's masked steps at the mask value
    references = np.concatenate([np.where(masked[i][None, :, None], 0.0, background) for i in range(len(x))]).astype(dtype)
    expected = model_outputs(model, references).reshape(len(x), len(background), -1).mean(1)
    assert_adds_up_to_the_model(values, base, fx, expected, dtype)
    assert np.abs(values.reshape(len(x), T, F, -1)[masked]).max() == 0.0


def test_embedding_mask_dropped_by_conv1d() -> None:
    """Embedding(mask_zero) -> Conv1D -> LSTM: Conv1D drops the mask, so the LSTM reads every step of
    both the input and the reference: the base value is the plain mean of the model over the background."""
    keras.utils.set_random_seed(0)
    dtype = "float32"
    tokens = keras.Input((T,), dtype="int32")
    embedded = L.Embedding(9, 3, mask_zero=True, dtype=dtype)(tokens)
    hidden = L.LSTM(3, dtype=dtype)(L.Conv1D(4, 2, padding="same", dtype=dtype)(embedded))
    model = keras.Model(tokens, L.Dense(2, dtype=dtype)(hidden))
    rng = np.random.default_rng(2)
    background, x = rng.integers(1, 9, (3, T)), rng.integers(1, 9, (3, T))
    x[0, -2:] = 0
    x[1, 0] = 0
    values, base = explain(model, background, x)
    expected = np.broadcast_to(model_outputs(model, background).mean(0), base.shape)
    assert_adds_up_to_the_model(values, base, model_outputs(model, x), expected, dtype)


# -- 2. the dual pass proves itself on every block -----------------------------------------------
def _lstm_model() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((T, F), dtype="float64"), L.LSTM(3, dtype="float64"), L.Dense(2, dtype="float64")])


@pytest.mark.parametrize("side", ["input", "reference", "reference-masked"])
def test_a_walker_that_drifts_from_the_model_is_caught_on_the_explained_block(side: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that goes wrong on one side by 1e-6 after construction is caught. With masks, the reference
    side is checked on the pairs whose reference gets the model's own masks (here: sample 2, unmasked)."""
    from rnnshap.engines.keras.engine import KerasEngine

    if side == "reference-masked":
        model = MASK_STACKS["dense-3d-keeps-it"]("float64")
        background, x, _ = _masked_data("float64")
    else:
        model = _lstm_model()
        rng = np.random.default_rng(3)
        background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    explainer = rnnshap.DeepExplainer(model, background)
    dual_pass = KerasEngine._dual_pass
    # 1e-6, or ten times the check's tolerance where the model itself is exact only to float32 rounding (a float64
    # model whose means Keras 3.15 computes in float32 on JAX, in an order that depends on the batch's shape)
    drift = max(1e-6, 10 * RTOL[explainer.engine.held_dtype])

    def drifting(self: Any, *args: Any, **kwargs: Any) -> Any:
        out, run = dual_pass(self, *args, **kwargs)
        if side == "input":
            return Dual(out.x * (1 + drift), out.r), run
        return Dual(out.x, out.r * (1 + drift)), run

    monkeypatch.setattr(KerasEngine, "_dual_pass", drifting)
    with pytest.raises(
        rnnshap.RnnShapError, match=f"{side.split('-')[0]} side" + (": for sample 2 " if side == "reference-masked" else "")
    ):
        explainer.shap_values(x)


def test_a_model_whose_own_outputs_depend_on_the_batch_is_checked_at_its_precision() -> None:
    """A float64 LayerNormalization and mean, which Keras 3.15 computes in float32 on JAX in an order that depends on the
    batch's shape (a row's outputs differ at 2 and 16 rows): the pass is checked against the model at float32
    rounding there, not refused as a misread model; elsewhere the model is float64 throughout."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4, 8), dtype="float64"), L.Dense(8, dtype="float64"), L.LayerNormalization(dtype="float64"),
        L.GlobalAveragePooling1D(dtype="float64"), L.Dense(2, dtype="float64"),
    ])  # fmt: skip
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(4, 4, 8)), rng.normal(size=(16, 4, 8))
    explainer = rnnshap.DeepExplainer(model, background)
    values = np.asarray(explainer.shap_values(x)).reshape(16, -1, 2).sum(1)
    gap = model_outputs(model, x) - model_outputs(model, background).mean(0)
    assert np.abs(values - gap).max() <= RTOL[explainer.engine.dtype] * np.abs(gap).max()


def test_the_check_passes_on_masked_samples_and_split_blocks() -> None:
    """A sample's references split over blocks, masked samples: no false alarm, and the values add up."""
    model = MASK_STACKS["dense-3d-keeps-it"]("float32")
    background, x, masked = _masked_data("float32")
    background, x, masked = background[:2], x[1:], masked[1:]
    values = rnnshap.DeepExplainer(model, background, batch_size=2).shap_values(x, outputs=[0])  # one pair per block
    refs = [np.where(masked[i][None, :, None], 0.0, background).astype(np.float32) for i in range(2)]
    gap = model_outputs(model, x)[:, 0] - np.array([model_outputs(model, r)[:, 0].mean() for r in refs])
    assert np.all(np.abs(values.reshape(2, -1).sum(1) - gap) <= TOL["float32"] * np.maximum(1.0, np.abs(gap)))


# -- 3. bad inputs are InputErrors ---------------------------------------------------------------
@pytest.fixture(scope="module")
def float_model() -> Any:
    return _lstm_model()


def test_non_finite_inputs_are_refused(float_model: Any) -> None:
    background = np.random.default_rng(4).normal(size=(3, T, F))
    explainer = rnnshap.DeepExplainer(float_model, background)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((2, T, F))
        x[1, 2, 0] = bad
        with pytest.raises(rnnshap.InputError, match=r"X contains NaN or infinite values \(first at index \(1, 2, 0\)\)"):
            explainer.shap_values(x)
        poisoned = background.copy()
        poisoned[0, 0, 0] = bad
        with pytest.raises(rnnshap.InputError, match="background contains NaN or infinite"):
            rnnshap.DeepExplainer(float_model, poisoned)


def test_empty_inputs_are_refused(float_model: Any) -> None:
    explainer = rnnshap.DeepExplainer(float_model, np.zeros((2, T, F)))
    with pytest.raises(rnnshap.InputError, match="empty"):
        explainer.shap_values(np.zeros((0, T, F)))
    with pytest.raises(rnnshap.InputError, match="empty"):
        rnnshap.DeepExplainer(float_model, np.zeros((0, T, F)))


def test_integer_x_for_a_float_input_is_numbers(float_model: Any) -> None:
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(3, T, F)), rng.integers(-2, 3, (2, T, F))
    values = rnnshap.DeepExplainer(float_model, background).shap_values(x)
    gap = model_outputs(float_model, x.astype(np.float64)) - model_outputs(float_model, background).mean(0)
    np.testing.assert_allclose(values.reshape(2, -1, 2).sum(1), gap, atol=1e-10)
    int_background = rnnshap.DeepExplainer(float_model, background.round().astype(np.int64)).shap_values(x.astype(np.float64))
    assert np.all(np.isfinite(int_background))


def test_token_input_given_fractional_numbers_is_refused() -> None:
    keras.utils.set_random_seed(0)
    tokens = keras.Input((T,), dtype="int32")
    model = keras.Model(tokens, L.Dense(2)(L.GRU(3)(L.Embedding(9, 2)(tokens))))
    explainer = rnnshap.DeepExplainer(model, np.ones((2, T), np.int64))
    with pytest.raises(rnnshap.InputError, match="token ids"):
        explainer.shap_values(np.full((1, T), 1.5))


# -- 4. causal convolutions, mixed precision, a float64 input before float32 layers ----------------
def test_causal_conv1d_and_future_steps_get_exactly_zero() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((T, F), dtype="float64"),
            L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu", dtype="float64"),
            L.LSTM(3, return_sequences=True, dtype="float64"),
            L.Dense(2, dtype="float64"),
        ]
    )
    rng = np.random.default_rng(6)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)  # (2, T, F, T, 2)
    gap = model_outputs(model, x) - model_outputs(model, background).mean(0)
    np.testing.assert_allclose(values.reshape(2, T * F, -1).sum(1), gap, atol=1e-10)
    for t in range(T):
        assert np.all(values[:, t + 1 :, :, t, :] == 0.0)
        assert np.abs(values[:, t, :, t, :]).max() > 0


@pytest.mark.parametrize(
    ("policy_name", "computed", "ulps"), [("mixed_float16", "float16", 10), ("mixed_bfloat16", "bfloat16", 6.4)]
)
def test_mixed_precision_policies(policy_name: str, computed: str, ulps: float) -> None:
    """(bfloat16, which numpy's finfo does not know, raised a numpy ValueError.)"""
    keras.utils.set_random_seed(0)
    policy = keras.mixed_precision.DTypePolicy(policy_name)
    model = keras.Sequential(
        [keras.Input((T, F)), L.LSTM(4, dtype=policy), L.Dense(2, dtype=policy), L.Activation("linear", dtype="float32")]
    )
    rng = np.random.default_rng(7)
    background, x = rng.normal(size=(3, T, F)).astype(np.float32), rng.normal(size=(2, T, F)).astype(np.float32)
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.dtype == computed
    values = explainer.shap_values(x)
    gap = model_outputs(model, x) - model_outputs(model, background).mean(0)
    # computed in half precision: a few eps of it, against the model's float32 output
    np.testing.assert_allclose(values.reshape(2, -1, 2).sum(1), gap, atol=ulps * eps(computed) * max(1.0, np.abs(gap).max()))


def test_float64_input_before_float32_layers() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, F), dtype="float64"), L.GRU(4), L.Dense(2, activation="tanh")])
    rng = np.random.default_rng(8)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.dtype == "float32"
    values = explainer.shap_values(x)
    gap = model_outputs(model, x) - model_outputs(model, background).mean(0)
    assert_adds_up_to(values.reshape(2, -1, 2).sum(1), gap, np.float32, what="Σφ against f(x) − E[f]")


def test_a_subclass_that_overrides_call_is_refused_by_name() -> None:
    class Doubled(L.Dense):
        def call(self, inputs: Any) -> Any:
            return super().call(inputs) * 2.0

    class Cell(L.GRUCell):
        def call(self, *args: Any, **kwargs: Any) -> Any:
            output, states = super().call(*args, **kwargs)
            return output * 2.0, states

    model = keras.Sequential([keras.Input((T, F)), L.RNN(Cell(3), name="custom_rnn"), Doubled(2, name="doubled")])
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)custom_rnn.*Cell overrides call.*doubled"):
        rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.float32))


# -- named inputs: a dict where the model takes one -------------------------------------------------
def _named_inputs(as_dict: bool) -> Any:
    """One network, its inputs named ``x`` (a sequence) and ``z`` (extra features): taken as a dict or a list."""
    keras.utils.set_random_seed(4)
    x = keras.Input((T, F), name="x", dtype="float64")
    z = keras.Input((2,), name="z", dtype="float64")
    h = L.LSTM(3, dtype="float64")(x)
    out = L.Dense(2, activation="tanh", dtype="float64")(L.Concatenate(dtype="float64")([h, L.Dense(2, dtype="float64")(z)]))
    return keras.Model({"z": z, "x": x} if as_dict else [x, z], out)


def test_a_dict_of_named_inputs_is_explained_per_key_as_the_positional_model() -> None:
    named, positional = _named_inputs(True), _named_inputs(False)
    positional.set_weights(named.get_weights())
    weights = [w.copy() for w in named.get_weights()]
    rng = np.random.default_rng(11)
    background = {"z": rng.normal(size=(4, 2)), "x": rng.normal(size=(4, T, F))}
    X = {"x": rng.normal(size=(3, T, F)), "z": rng.normal(size=(3, 2))}
    explainer = rnnshap.DeepExplainer(named, background)  # a dict where the model takes one
    values = explainer.shap_values(X)
    assert [v.shape for v in values] == [(3, 2, 2), (3, T, F, 2)]  # one per key, in the background's order
    expected = rnnshap.DeepExplainer(positional, [background["x"], background["z"]]).shap_values([X["x"], X["z"]])
    np.testing.assert_allclose(values[0], expected[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(values[1], expected[0], rtol=1e-12, atol=1e-14)
    gap = model_outputs(named, X) - model_outputs(named, background).mean(0)  # the model's own outputs
    assert_adds_up_to(values[0].sum((1,)) + values[1].sum((1, 2)), gap, "float64")
    assert all(np.array_equal(a, b) for a, b in zip(named.get_weights(), weights, strict=True))
    with pytest.raises(rnnshap.InputError, match="keys"):
        explainer.shap_values({"x": X["x"]})
    with pytest.raises(rnnshap.InputError, match="keys"):
        rnnshap.DeepExplainer(named, {"x": background["x"], "w": background["z"]})


def test_named_inputs_take_no_list_and_summarize_takes_the_dict() -> None:
    """After a dict background, a list X is refused (it would be read in the dict's key order, not the
    model's: two same-shaped inputs would swap silently); ``summarize`` takes the dict as shap_values does."""
    named = _named_inputs(True)
    rng = np.random.default_rng(12)
    background = {"z": rng.normal(size=(4, 2)), "x": rng.normal(size=(4, T, F))}
    X = {"x": rng.normal(size=(5, T, F)), "z": rng.normal(size=(5, 2))}
    explainer = rnnshap.DeepExplainer(named, background)
    for call in (explainer.shap_values, explainer.shapley_values):
        with pytest.raises(rnnshap.InputError, match="pass X as a dict with the same keys"):
            call([X["z"], X["x"]])
    with pytest.raises(rnnshap.InputError, match="pass data as a dict"):
        explainer.summarize([X["z"], X["x"]])
    summary = explainer.summarize(X, batch_size=2)
    values = explainer.shap_values(X)
    assert summary.count == 5
    np.testing.assert_allclose(summary.mean_abs[1], np.abs(values[1]).mean(0), rtol=1e-12, atol=1e-15)
