"""Keras 3 models (TensorFlow backend): exactness, parity with the PyTorch explainer, the API contract.

The reference values here come from the Keras model itself (``model(x)``), never from rnnshap.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from ...conftest import additivity_tol, assert_rounding_close  # noqa: E402
from ...models.torch import RecurrentHead  # noqa: E402

L = keras.layers
T, F = 5, 3
TOL = {name: additivity_tol(name) for name in ("float32", "float64")}  # |Σφ − Δ| ≤ TOL·max(1, |Δ|)


def outputs_of(model: Any, x: Any) -> np.ndarray:
    out = np.asarray(model(x, training=False), dtype=np.float64)
    return out.reshape(out.shape[0], -1)


def worst_additivity(values: Any, model: Any, x: Any, background: Any) -> float:
    """max |Σφ − (f(x) − E f(r))| / max(1, |Δ|), computed from the model's own outputs."""
    gap = outputs_of(model, x) - outputs_of(model, background).mean(0, keepdims=True)
    n, k = gap.shape
    totals = sum(np.asarray(v, np.float64).reshape(n, -1, k).sum(1) for v in (values if isinstance(values, list) else [values]))
    return float((np.abs(totals - gap) / np.maximum(1.0, np.abs(gap))).max())


def refused_as_keras_cannot_run_it(model: Any, x: Any, background: Any) -> bool:
    """Whether Keras itself cannot call ``model``: on JAX a float64 SimpleRNN with tanh (Keras 3.15 computes
    ``ops.tanh`` of float64 in float32, keras-team/keras#23223, and its scan refuses a float32 carry for a float64
    one). Then rnnshap must refuse the model with that reason and advice; on TensorFlow every model here runs."""
    try:
        model(x, training=False)
    except Exception as error:  # the model's own failure, whatever Keras raises
        assert keras.backend.backend() == "jax" and "float64" in str(error), error
        with pytest.raises(rnnshap.InputError, match="keras-team/keras#23223.*float32"):
            rnnshap.DeepExplainer(model, background)
        return True
    return False


def sequential(dtype: str, *layers: Any, shape: tuple[int, ...] = (T, F)) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(shape, dtype=dtype), *[make(dtype) for make in layers]])


def _functional_return_state(dtype: str) -> Any:
    inputs = keras.Input((T, F), dtype=dtype)
    output, h, c = L.LSTM(4, return_state=True, dtype=dtype)(inputs)
    return keras.Model(inputs, L.Dense(2, dtype=dtype)(L.Concatenate(dtype=dtype)([output, h, c])))


def _bidirectional_none_times(dtype: str) -> Any:
    inputs = keras.Input((T, F), dtype=dtype)
    forward, backward = L.Bidirectional(L.GRU(3, return_sequences=True, dtype=dtype), merge_mode=None, dtype=dtype)(inputs)
    return keras.Model(inputs, L.Dense(2, dtype=dtype)(L.Flatten(dtype=dtype)(L.Multiply(dtype=dtype)([forward, backward]))))


ARCHITECTURES: dict[str, Callable[[str], Any]] = {
    "lstm": lambda d: sequential(d, lambda d: L.LSTM(4, dtype=d), lambda d: L.Dense(3, dtype=d)),
    "gru": lambda d: sequential(d, lambda d: L.GRU(4, dtype=d), lambda d: L.Dense(3, activation="softmax", dtype=d)),
    "gru-reset-before": lambda d: sequential(d, lambda d: L.GRU(4, reset_after=False, dtype=d), lambda d: L.Dense(2, dtype=d)),
    "simple-rnn-relu": lambda d: sequential(
        d, lambda d: L.SimpleRNN(4, activation="relu", dtype=d), lambda d: L.Dense(2, dtype=d)
    ),
    "stacked-sequences": lambda d: sequential(
        d, lambda d: L.LSTM(4, return_sequences=True, dtype=d), lambda d: L.GRU(3, return_sequences=True, dtype=d),
        lambda d: L.Dense(2, activation="tanh", dtype=d)
    ),
    "bidirectional-mul": lambda d: sequential(
        d, lambda d: L.Bidirectional(L.LSTM(4, dtype=d), merge_mode="mul", dtype=d), lambda d: L.Dense(2, dtype=d)
    ),
    "bidirectional-ave": lambda d: sequential(
        d, lambda d: L.Bidirectional(L.GRU(3, return_sequences=True, dtype=d), merge_mode="ave", dtype=d),
        lambda d: L.GlobalAveragePooling1D(dtype=d), lambda d: L.Dense(2, dtype=d)
    ),
    "bidirectional-sum": lambda d: sequential(
        d, lambda d: L.Bidirectional(L.SimpleRNN(3, dtype=d), merge_mode="sum", dtype=d), lambda d: L.Dense(2, dtype=d)
    ),
    "bidirectional-none": _bidirectional_none_times,
    "go-backwards": lambda d: sequential(
        d, lambda d: L.LSTM(4, go_backwards=True, return_sequences=True, dtype=d), lambda d: L.Flatten(dtype=d),
        lambda d: L.Dense(2, dtype=d),
    ),
    "rnn-stacked-cells": lambda d: sequential(
        d, lambda d: L.RNN(L.StackedRNNCells([L.LSTMCell(4, dtype=d), L.GRUCell(3, dtype=d)], dtype=d), dtype=d),
        lambda d: L.Dense(2, dtype=d),
    ),
    "return-state": _functional_return_state,
    "conv2d-activation-layers": lambda d: sequential(
        d,
        lambda d: L.Reshape((T, F, 1), dtype=d),
        lambda d: L.Conv2D(2, (2, 2), padding="same", dtype=d),
        lambda d: L.PReLU(alpha_initializer=keras.initializers.Constant(0.2), dtype=d),
        lambda d: L.Reshape((T, 2 * F), dtype=d),
        lambda d: L.LeakyReLU(0.1, dtype=d),
        lambda d: L.ELU(dtype=d),
        lambda d: L.BatchNormalization(dtype=d),
        lambda d: L.Dropout(0.5, dtype=d),
        lambda d: L.SimpleRNN(3, dtype=d),
        lambda d: L.Dense(2, activation="softplus", dtype=d),
    ),
    "time-distributed": lambda d: sequential(
        d,
        lambda d: L.GRU(3, return_sequences=True, dtype=d),
        lambda d: L.TimeDistributed(L.Dense(2, activation="sigmoid", dtype=d), dtype=d),
        lambda d: L.Flatten(dtype=d),
        lambda d: L.Dense(1, dtype=d),
    ),
    "unrolled-lstm-global-max": lambda d: sequential(
        d, lambda d: L.LSTM(4, return_sequences=True, unroll=True, dtype=d), lambda d: L.GlobalMaxPooling1D(dtype=d),
        lambda d: L.Dense(2, dtype=d)
    ),
    "unrolled-gru-global-max-keepdims": lambda d: sequential(
        d,
        lambda d: L.GRU(4, return_sequences=True, unroll=True, dtype=d),
        lambda d: L.GlobalMaxPooling1D(keepdims=True, dtype=d),
        lambda d: L.Flatten(dtype=d),
        lambda d: L.Dense(2, dtype=d),
    ),
    "conv-lstm-gelu": lambda d: sequential(
        d, lambda d: L.Conv1D(4, 3, padding="same", activation="relu", dtype=d), lambda d: L.LSTM(3, dtype=d),
        lambda d: L.Dense(2, activation="gelu", dtype=d)
    ),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_attributions_add_up(name: str, dtype: str) -> None:
    model = ARCHITECTURES[name](dtype)
    rng = np.random.default_rng(1)
    background, x = rng.normal(size=(4, T, F)).astype(dtype), rng.normal(size=(3, T, F)).astype(dtype)
    if refused_as_keras_cannot_run_it(model, x, background):
        return
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    out_shape = tuple(model.output_shape[1:])
    assert values.shape == (3, T, F, *out_shape) if out_shape != (1,) else values.shape[:3] == (3, T, F)
    assert worst_additivity(values, model, x, background) <= TOL[dtype]
    # E[f] of the explainer's own forward pass and of model(x) differ by rounding only (another batch, another kernel)
    assert_rounding_close(explainer.expected_value, outputs_of(model, background).mean(0).reshape(out_shape), dtype, what="E[f]")


#: the architectures with a mean (GlobalAveragePooling1D), which Keras 3.15 computes in float32 on JAX (keras#23223)
ROUNDS_A_MEAN = {"bidirectional-ave"}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_compiled_pass_gives_the_eager_values(name: str) -> None:
    """The dual pass runs as one compiled graph (tf.function, or jax.jit on JAX): the same operations, so
    the same values as the eager pass (which runs where tracing fails)."""
    model = ARCHITECTURES[name]("float64")
    rng = np.random.default_rng(2)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    if refused_as_keras_cannot_run_it(model, x, background):
        return
    compiled = rnnshap.DeepExplainer(model, background)
    values = compiled.shap_values(x)
    if name in ROUNDS_A_MEAN and keras.backend.result_type("float64", "float32") != "float64":
        # Keras 3.15 on JAX computes its mean in float32, which XLA fuses otherwise under jax.jit than in the model's
        # own call: the pass takes the model's own rounded values, so it runs eagerly (docs/keras.md)
        assert compiled.engine._graph is False
    else:
        assert compiled.engine._graph not in (None, False)  # the graph ran
    eager = rnnshap.DeepExplainer(model, background)
    eager.engine._graph = eager.engine._model_graph = False
    np.testing.assert_allclose(values, eager.shap_values(x), rtol=0, atol=1e-12 * np.abs(values).max())


@pytest.mark.parametrize("steps", [5, 32])  # 32: the eager pass's compiled steps (recurrent.COMPILE_MIN_STEPS)
def test_the_compiled_pass_follows_new_weights(steps: int) -> None:
    """The compiled pass and model call read the model's weights at each call: after set_weights the
    explainer built before gives a fresh explainer's values, adding up to the retrained model's outputs."""
    model = sequential("float64", lambda d: L.LSTM(3, dtype=d), lambda d: L.Dense(1, dtype=d), shape=(steps, F))
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(3, steps, F)), rng.normal(size=(2, steps, F))
    explainer = rnnshap.DeepExplainer(model, background)
    explainer.shap_values(x)  # compiled with the first weights
    model.set_weights([w + rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()])
    again = rnnshap.DeepExplainer(model, background)
    # (the Keras engine cannot tell that the weights changed (model_version None): its reference outputs by hand)
    explainer.engine.refresh_background_outputs()
    explainer.expected_value = again.expected_value
    values = explainer.shap_values(x)
    np.testing.assert_allclose(values, again.shap_values(x), rtol=0, atol=1e-12 * np.abs(values).max())
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


def test_long_sequences_run_compiled_steps_and_add_up() -> None:
    from rnnshap.engines.keras.recurrent import COMPILE_MIN_STEPS

    steps = COMPILE_MIN_STEPS
    model = sequential(
        "float32", lambda d: L.GRU(2, return_sequences=True, dtype=d), lambda d: L.LSTM(2, dtype=d),
        lambda d: L.Dense(1, dtype=d), shape=(steps, 2),
    )
    rng = np.random.default_rng(7)
    background, x = rng.normal(size=(3, steps, 2)).astype(np.float32), rng.normal(size=(2, steps, 2)).astype(np.float32)
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, steps, 2, 1)
    assert worst_additivity(values, model, x, background) <= TOL["float32"]


def test_keras_ops_in_a_functional_graph() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), dtype="float64")
    states = L.LSTM(4, return_sequences=True, dtype="float64")(inputs)
    gate = L.Dense(4, activation="sigmoid", dtype="float64")(states[:, -1])
    mixed = keras.ops.mean(states, axis=1) * gate - keras.ops.sum(states[:, :2], axis=1)
    model = keras.Model(inputs, L.Dense(2, dtype="float64")(mixed))
    rng = np.random.default_rng(11)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


#: float64 layers and ops that Keras 3.15 computes in float32 on JAX (keras-team/keras#23223): name → the layer on
#: (inputs, dtype). On TensorFlow they compute in float64.
ROUNDING_LAYERS: dict[str, Callable[[Any, str], Any]] = {
    "layer-norm": lambda i, d: L.LayerNormalization(dtype=d)(i),
    "rms-norm": lambda i, d: L.RMSNormalization(dtype=d)(i),
    "group-norm": lambda i, d: L.GroupNormalization(groups=3, dtype=d)(i),
    "batch-norm": lambda i, d: L.BatchNormalization(dtype=d)(i),
    "global-average": lambda i, d: L.RepeatVector(T, dtype=d)(L.GlobalAveragePooling1D(dtype=d)(i)),
    "ops-mean-and-layer-norm": lambda i, d: L.Lambda(
        lambda t: keras.ops.layer_normalization(t - keras.ops.mean(t, axis=1, keepdims=True)), dtype=d
    )(i),
    "mha": lambda i, d: L.MultiHeadAttention(2, 3, dtype=d)(i, i),
    "mha-causal": lambda i, d: L.MultiHeadAttention(2, 3, dtype=d)(i, i, use_causal_mask=True),
    "additive-attention-unscaled": lambda i, d: L.AdditiveAttention(use_scale=False, dtype=d)([i, i]),
    "concat-attention": lambda i, d: L.Attention(score_mode="concat", dtype=d)([i, i]),
}


def _float64_layer_norm(x: np.ndarray, epsilon: float) -> np.ndarray:
    """LayerNormalization (ones and zeros as its weights) over the last axis, from its equation in float64."""
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + epsilon)


@pytest.mark.parametrize("name", list(ROUNDING_LAYERS))
def test_layers_keras_computes_in_float32_add_up_to_the_model_at_float64(name: str) -> None:
    """A float64 model whose layer Keras computes in float32 (on JAX, keras-team/keras#23223; in float64 on
    TensorFlow): the model is then ``round ∘ g`` there, and rnnshap explains it as it is, the rounding by Rescale,
    so the attributions add up to the model's own outputs at the float64 bound. The model is unchanged afterwards."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), dtype="float64")
    hidden = L.Dense(F, activation="relu", dtype="float64")(inputs)
    model = keras.Model(inputs, L.Dense(2, dtype="float64")(L.Flatten(dtype="float64")(ROUNDING_LAYERS[name](hidden, "float64"))))
    rng = np.random.default_rng(12)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    before = [np.array(w) for w in model.get_weights()]
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, model.get_weights(), strict=True))


def test_the_layer_norm_rounds_where_keras_computes_it_in_float32() -> None:
    """The premise of the test above: on JAX (Keras 3.15) a float64 LayerNormalization differs from its float64
    equation by float32 rounding; on TensorFlow it is its float64 equation."""
    layer = L.LayerNormalization(dtype="float64")
    x = np.random.default_rng(13).normal(size=(4, 6))
    gap = np.abs(np.asarray(layer(x), np.float64) - _float64_layer_norm(x, layer.epsilon)).max()
    if keras.backend.result_type("float64", "float32") == "float64":
        assert gap <= 1e-14
    else:
        assert 1e-10 < gap <= 1e-5


def test_the_rounding_rule_adds_up_to_the_rounded_values_and_is_one_where_nothing_moves() -> None:
    """``dual.rounded``: the model's own values of a rounded quantity, with multiplier Δ(rounded)/Δ(exact); where
    the exact value does not move, the derivative 1; where only the exact value moves (below the rounding), 0.
    Checked with the rounding of float64 to float32 (``ops.cast``) on any backend."""
    from rnnshap.engines.keras import dual

    exact_x = np.array([0.1, 1.0 + 2.0**-40, 3.0, -2.5, 7.0])
    exact_r = np.array([0.3, 1.0, 3.0, -2.5 + 2.0**-30, -1.0])
    rounded_x, rounded_r = exact_x.astype(np.float32), exact_r.astype(np.float32)
    tensors = [keras.ops.convert_to_tensor(a) for a in (exact_x, exact_r, rounded_x, rounded_r)]
    multiplier = np.asarray(dual.rounding_multiplier(*tensors))
    change = rounded_x.astype(np.float64) - rounded_r.astype(np.float64)
    moved = exact_x != exact_r
    np.testing.assert_array_equal(multiplier[~moved], 1.0)  # nothing moves: the derivative of the rounding
    assert multiplier[1] == 0.0  # the exact value moves below float32's resolution: the rounded one does not
    np.testing.assert_allclose(multiplier[moved] * (exact_x - exact_r)[moved], change[moved], rtol=1e-15, atol=0)


def test_single_lstm_cell_step_over_x_h_c() -> None:
    x_in, h_in, c_in = keras.Input((F,), dtype="float64"), keras.Input((4,), dtype="float64"), keras.Input((4,), dtype="float64")
    keras.utils.set_random_seed(0)
    h, (_, c) = L.LSTMCell(4, dtype="float64")(x_in, [h_in, c_in])
    model = keras.Model([x_in, h_in, c_in], L.Concatenate(dtype="float64")([h, c]))
    rng = np.random.default_rng(2)
    background = [rng.normal(size=(3, size)) for size in (F, 4, 4)]
    x = [rng.normal(size=(2, size)) for size in (F, 4, 4)]
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert [v.shape for v in values] == [(2, F, 8), (2, 4, 8), (2, 4, 8)]
    assert worst_additivity(values, model, x, background) <= 1e-12


def test_embedding_softmax_attention_attributes_per_token() -> None:
    tokens = keras.Input((T,), dtype="int32")
    keras.utils.set_random_seed(0)
    states = L.LSTM(4, return_sequences=True, dtype="float64")(L.Embedding(11, 3, dtype="float64")(tokens))
    weights = L.Softmax(axis=1, dtype="float64")(L.Flatten(dtype="float64")(L.Dense(1, dtype="float64")(states)))
    spread = L.Permute((2, 1), dtype="float64")(L.RepeatVector(4, dtype="float64")(weights))  # (N, T, 4)
    pooled = L.GlobalAveragePooling1D(dtype="float64")(L.Multiply(dtype="float64")([spread, states]))
    model = keras.Model(tokens, L.Dense(2, dtype="float64")(pooled))
    rng = np.random.default_rng(3)
    background, x = rng.integers(0, 11, (4, T)), rng.integers(0, 11, (3, T))
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    assert values.shape == (3, T, 2)
    assert worst_additivity(values, model, x, background) <= 1e-10
    same = rnnshap.DeepExplainer(model, background[:1]).shap_values(background[:1])
    assert np.abs(same).max() == 0.0


# -- parity with the PyTorch explainer -----------------------------------------------------------
def _gru_blocks(w: torch.Tensor) -> np.ndarray:
    """torch GRU blocks r, z, n → keras z, r, h (rows of (3H, ·) or a (3H,) bias)."""
    r, z, n = w.detach().numpy().astype(np.float32).reshape(3, -1, *w.shape[1:])
    return np.concatenate([z, r, n])


def _copy_into(cell: Any, module: nn.RNNBase, suffix: str) -> None:
    w_ih, w_hh = getattr(module, f"weight_ih{suffix}"), getattr(module, f"weight_hh{suffix}")
    b_ih, b_hh = getattr(module, f"bias_ih{suffix}"), getattr(module, f"bias_hh{suffix}")
    if isinstance(module, nn.GRU):
        cell.kernel.assign(_gru_blocks(w_ih).T)
        cell.recurrent_kernel.assign(_gru_blocks(w_hh).T)
        cell.bias.assign(np.stack([_gru_blocks(b_ih), _gru_blocks(b_hh)]))
    else:
        cell.kernel.assign(w_ih.detach().numpy().T)
        cell.recurrent_kernel.assign(w_hh.detach().numpy().T)
        cell.bias.assign((b_ih + b_hh).detach().numpy())


def torch_model(kind: str, num_layers: int, bidirectional: bool, pool: str = "flatten") -> RecurrentHead:
    """Recurrent layer(s), then all steps flattened (``pool="flatten"``) or the max over time, then Linear."""
    width = (T if pool == "flatten" else 1) * 4 * (2 if bidirectional else 1)
    read = (lambda out, state: out.flatten(1)) if pool == "flatten" else "max"
    return RecurrentHead(kind, F, 4, 3, layers=num_layers, bidirectional=bidirectional, read=read, head_inputs=width)


def _keras_twin(module: RecurrentHead, kind: str, num_layers: int, bidirectional: bool, pool: str = "flatten") -> Any:
    layers = []
    for _ in range(num_layers):
        rnn = L.LSTM(4, return_sequences=True) if kind == "lstm" else L.GRU(4, return_sequences=True, reset_after=True)
        layers.append(L.Bidirectional(rnn) if bidirectional else rnn)
    model = keras.Sequential(
        [keras.Input((T, F)), *layers, L.Flatten() if pool == "flatten" else L.GlobalMaxPooling1D(), L.Dense(3)]
    )
    for index, layer in enumerate(layers):
        if bidirectional:
            _copy_into(layer.forward_layer.cell, module.rnn, f"_l{index}")
            _copy_into(layer.backward_layer.cell, module.rnn, f"_l{index}_reverse")
        else:
            _copy_into(layer.cell, module.rnn, f"_l{index}")
    model.layers[-1].kernel.assign(module.head.weight.detach().numpy().T)
    model.layers[-1].bias.assign(module.head.bias.detach().numpy())
    return model


@pytest.mark.parametrize(
    ("kind", "num_layers", "bidirectional", "pool"),
    [
        ("lstm", 1, False, "flatten"), ("gru", 1, False, "flatten"), ("lstm", 1, True, "flatten"), ("gru", 2, False, "flatten"),
        ("lstm", 2, True, "flatten"), ("gru", 1, True, "max"),
    ],
)
def test_same_attributions_as_the_pytorch_explainer(kind: str, num_layers: int, bidirectional: bool, pool: str) -> None:
    torch.manual_seed(0)
    module = torch_model(kind, num_layers, bidirectional, pool).eval()
    model = _keras_twin(module, kind, num_layers, bidirectional, pool)
    rng = np.random.default_rng(4)
    background, x = rng.normal(size=(4, T, F)).astype(np.float32), rng.normal(size=(3, T, F)).astype(np.float32)
    assert_rounding_close(
        outputs_of(model, x), module(torch.from_numpy(x)).detach().numpy(), np.float32, what="Keras twin's f(x)"
    )
    from_keras = rnnshap.DeepExplainer(model, background).shap_values(x)
    from_torch = rnnshap.DeepExplainer(module, torch.from_numpy(background)).shap_values(torch.from_numpy(x))
    assert_rounding_close(from_keras, from_torch, np.float32, what="φ from Keras against φ from PyTorch")


# -- the API contract ----------------------------------------------------------------------------
def test_keras_model_gets_the_keras_engine_behind_the_same_front_door_and_torch_never_imports_tensorflow() -> None:
    from rnnshap.engines.keras.engine import KerasEngine

    model = ARCHITECTURES["lstm"]("float32")
    explainer = rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.float32))
    assert type(explainer) is rnnshap.DeepExplainer and isinstance(explainer.engine, KerasEngine)
    script = (
        "import sys, torch, rnnshap; rnnshap.DeepExplainer(torch.nn.Linear(2, 1).eval(), torch.zeros(2, 2)); "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_ranked_outputs_expected_value_and_model_unchanged() -> None:
    model = ARCHITECTURES["gru"]("float64")
    before = [w.numpy().copy() for w in model.weights]
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    explainer = rnnshap.DeepExplainer(model, background)
    full = explainer.shap_values(x)
    top, ranks = explainer.shap_values(x, ranked_outputs=2)
    assert top.shape == (3, T, F, 2) and ranks.shape == (3, 2)
    np.testing.assert_array_equal(ranks, np.argsort(-outputs_of(model, x), axis=1, kind="stable")[:, :2])
    for i in range(3):
        np.testing.assert_allclose(top[i], full[i][..., ranks[i]], atol=1e-14)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True))


def test_additivity_failure_raises_additivity_error() -> None:
    model = ARCHITECTURES["lstm"]("float32")
    rng = np.random.default_rng(6)
    explainer = rnnshap.DeepExplainer(model, rng.normal(size=(3, T, F)).astype(np.float32))
    with pytest.raises(rnnshap.AdditivityError, match="do not add up"):
        explainer.shap_values(rng.normal(size=(2, T, F)).astype(np.float32) * 5, check_additivity=1e-30)


def test_nan_attributions_fail_the_additivity_check() -> None:
    model = ARCHITECTURES["lstm"]("float32")
    kernel = model.layers[-1].kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))  # NaN out of a finite input
    rng = np.random.default_rng(7)
    explainer = rnnshap.DeepExplainer(model, rng.normal(size=(3, T, F)).astype(np.float32))
    with pytest.raises(rnnshap.AdditivityError, match="do not add up"):
        explainer.shap_values(rng.normal(size=(2, T, F)).astype(np.float32))


def test_bad_input_is_an_input_error() -> None:
    model = ARCHITECTURES["lstm"]("float32")
    explainer = rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.float32))
    with pytest.raises(rnnshap.InputError, match="shape"):
        explainer.shap_values(np.zeros((2, T, F + 1), np.float32))
    with pytest.raises(rnnshap.InputError, match="list"):
        explainer.shap_values([np.zeros((2, T, F), np.float32)])


def test_unsupported_layers_are_refused_together_by_name() -> None:
    model = keras.Sequential(
        [
            keras.Input((T, F)), L.Conv1DTranspose(2, 2, name="deconv"), L.LSTM(3),
            L.Dense(2, activation=lambda t: t**2, name="squared"),
        ]
    )
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.float32))
    assert "deconv (Conv1DTranspose)" in str(info.value) and "squared (Dense)" in str(info.value)


#: channels_first max pooling: (input shape, dtype, the pooling layer given a data format and dtype); TensorFlow's
#: MaxPool3D has no float64 kernel
CHANNELS_FIRST_POOLS = {
    "maxpool1d-same-strided": (
        (4, 7), "float64", lambda f, d: L.MaxPooling1D(3, strides=2, padding="same", data_format=f, dtype=d)
    ),
    "maxpool2d-valid": ((2, 5, 6), "float64", lambda f, d: L.MaxPooling2D((2, 2), strides=(1, 2), data_format=f, dtype=d)),
    "maxpool2d-same": ((2, 5, 5), "float64", lambda f, d: L.MaxPooling2D((2, 3), padding="same", data_format=f, dtype=d)),
    "maxpool3d": ((2, 3, 4, 4), "float32", lambda f, d: L.MaxPooling3D((1, 2, 2), padding="same", data_format=f, dtype=d)),
    "global-max1d": ((4, 7), "float64", lambda f, d: L.GlobalMaxPooling1D(data_format=f, dtype=d)),
    "global-max2d-keepdims": ((2, 5, 6), "float64", lambda f, d: L.GlobalMaxPooling2D(data_format=f, keepdims=True, dtype=d)),
}


@pytest.mark.parametrize("name", list(CHANNELS_FIRST_POOLS))
def test_channels_first_max_pooling_gives_the_values_of_the_channels_last_model(name: str) -> None:
    """The truth is an independent network: the same layers with the pooling in channels_last between
    two Permutes (a linear move), checked against PyTorch's max-pool rule in test_keras_orderings_picks_pooling.py."""
    shape, dtype, pool = CHANNELS_FIRST_POOLS[name]
    rank = len(shape) - 1
    keras.utils.set_random_seed(3)
    # the shared layers: a tanh Dense over the channels (moved last and back), a Dense head
    mix, head = L.Dense(3, activation="tanh", dtype=dtype), L.Dense(2, dtype=dtype)
    inputs = keras.Input(shape, dtype=dtype)
    last = mix(L.Permute((*range(2, rank + 2), 1), dtype=dtype)(inputs))  # (N, *spatial, 3)
    first = L.Permute((rank + 1, *range(1, rank + 1)), dtype=dtype)(last)  # (N, 3, *spatial)
    pooled_first = pool("channels_first", dtype)(first)
    pooled_last = pool("channels_last", dtype)(last)
    if len(pooled_last.shape) > 2:  # back to channels first, so both flatten in the same order
        pooled_last = L.Permute((rank + 1, *range(1, rank + 1)), dtype=dtype)(pooled_last)
    model = keras.Model(inputs, head(L.Flatten(dtype=dtype)(pooled_first)))
    reference = keras.Model(inputs, head(L.Flatten(dtype=dtype)(pooled_last)))
    rng = np.random.default_rng(4)
    background, x = rng.normal(size=(5, *shape)).astype(dtype), rng.normal(size=(3, *shape)).astype(dtype)
    np.testing.assert_array_equal(outputs_of(model, x), outputs_of(reference, x))  # one function, two layouts
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    expected = rnnshap.DeepExplainer(reference, background).shap_values(x)
    assert values.shape == (3, *shape, 2)
    assert_rounding_close(values, expected, dtype, what="channels_first against channels_last")
    assert worst_additivity(values, model, x, background) <= TOL[dtype]
    assert float(np.abs(values).max()) > 0.01  # the pooled values move: not a vacuous match


def test_integer_input_that_feeds_no_embedding_is_refused() -> None:
    inputs = keras.Input((T, F), dtype="int32")
    model = keras.Model(inputs, L.Dense(2)(L.LSTM(3)(inputs)))
    with pytest.raises(rnnshap.InputError, match="integers"):
        rnnshap.DeepExplainer(model, np.zeros((2, T, F), np.int32))


# -- masks ---------------------------------------------------------------------------------------
MASKED: dict[str, Callable[[], Any]] = {
    "lstm-sequences": lambda: [
        L.LSTM(3, return_sequences=True, dtype="float64"), L.GlobalAveragePooling1D(dtype="float64"), L.Dense(2, dtype="float64")
    ],
    "gru-backwards": lambda: [L.GRU(3, go_backwards=True, dtype="float64"), L.Dense(2, dtype="float64")],
    "bidirectional-stacked": lambda: [
        L.Bidirectional(L.LSTM(3, return_sequences=True, dtype="float64"), dtype="float64"),
        L.Bidirectional(L.SimpleRNN(2, dtype="float64"), merge_mode="mul", dtype="float64"),
        L.Dense(2, dtype="float64"),
    ],
}


@pytest.mark.parametrize("name", list(MASKED))
def test_masked_steps_read_references_with_the_inputs_mask(name: str) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, F), dtype="float64"), L.Masking(0.0, dtype="float64"), *MASKED[name]()])
    rng = np.random.default_rng(8)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    x[0, -2:] = 0.0  # padded at the end
    x[1, 1] = 0.0  # a masked step inside
    if refused_as_keras_cannot_run_it(model, x, background):
        return
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    masked = np.all(x == 0.0, axis=-1)
    assert np.abs(values[masked]).max() == 0.0
    for i in range(3):  # the reference is read with the input's mask: masked steps set to the mask value
        references = np.where(masked[i][None, :, None], 0.0, background)
        gap = outputs_of(model, x[i : i + 1]) - outputs_of(model, references).mean(0)
        np.testing.assert_allclose(values[i].reshape(T * F, -1).sum(0), gap[0], atol=1e-10)


def test_a_masked_samples_values_add_up_from_its_own_base_value_which_the_explanation_carries() -> None:
    """With a mask, a sample's values add up from the mean output over references read with its mask: the
    Explanation's per-sample base_values, as the README says, not expected_value (0.027 off here)."""
    pytest.importorskip("shap")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, F), dtype="float64"), L.Masking(0.0, dtype="float64"), *MASKED["gru-backwards"]()])
    rng = np.random.default_rng(9)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    x[0, :2] = 0.0
    explainer = rnnshap.DeepExplainer(model, background)
    explanation = explainer(x)
    gap = outputs_of(model, x) - np.asarray(explanation.base_values)
    np.testing.assert_allclose(np.asarray(explanation.values).sum((1, 2)), gap, atol=1e-10)
    assert np.abs(np.asarray(explanation.base_values)[0] - explainer.expected_value).max() > 1e-3  # masked: its own
    np.testing.assert_allclose(np.asarray(explanation.base_values)[1:], np.broadcast_to(explainer.expected_value, (2, 2)))


def test_embedding_mask_zero_with_a_recurrent_layer() -> None:
    tokens = keras.Input((T,), dtype="int32")
    keras.utils.set_random_seed(0)
    hidden = L.LSTM(3, dtype="float64")(L.Embedding(9, 2, mask_zero=True, dtype="float64")(tokens))
    model = keras.Model(tokens, L.Dense(2, dtype="float64")(hidden))
    rng = np.random.default_rng(9)
    background, x = rng.integers(1, 9, (4, T)), rng.integers(1, 9, (2, T))
    x[0, -2:] = 0
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, T, 2) and np.abs(values[0, -2:]).max() == 0.0
    for i in range(2):
        references = np.where(x[i][None] == 0, 0, background)
        gap = outputs_of(model, x[i : i + 1]) - outputs_of(model, references).mean(0)
        np.testing.assert_allclose(values[i].sum(0), gap[0], atol=1e-10)


def test_initial_states_as_inputs_and_a_nested_model() -> None:
    keras.utils.set_random_seed(0)
    x_in = keras.Input((T, F), dtype="float64")
    h_in, c_in = keras.Input((4,), dtype="float64"), keras.Input((4,), dtype="float64")
    head = keras.Sequential(
        [keras.Input((4,), dtype="float64"), L.Dense(3, activation="sigmoid", dtype="float64"), L.Dense(2, dtype="float64")]
    )
    model = keras.Model([x_in, h_in, c_in], head(L.LSTM(4, dtype="float64")(x_in, initial_state=[h_in, c_in])))
    rng = np.random.default_rng(10)
    background = [rng.normal(size=(3, *shape)) for shape in ((T, F), (4,), (4,))]
    x = [rng.normal(size=(2, *shape)) for shape in ((T, F), (4,), (4,))]
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert [v.shape for v in values] == [(2, T, F, 2), (2, 4, 2), (2, 4, 2)]
    assert np.abs(values[1]).max() > 0 and np.abs(values[2]).max() > 0
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


def test_sequential_without_input_and_integer_tokens() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.Embedding(7, 2), L.GRU(3), L.Dense(2)])
    rng = np.random.default_rng(12)
    background, x = rng.integers(0, 7, (3, T)), rng.integers(0, 7, (2, T))
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, T, 2)
    assert worst_additivity(values, model, x, background) <= TOL["float32"]


def test_two_explainers_on_one_model_with_a_traced_lambda() -> None:
    """A Lambda's trace is cached per layer; made inside the compiled pass, it held that graph's
    constants and broke every later pass (a second explainer, the eager fallback)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), dtype="float64")
    h = L.Lambda(lambda t: t * keras.ops.ones((4,), dtype="float64") * 2.0, dtype="float64")(L.GRU(4, dtype="float64")(inputs))
    model = keras.Model(inputs, L.Dense(2, dtype="float64")(h))
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    first = rnnshap.DeepExplainer(model, background).shap_values(x)
    np.testing.assert_array_equal(rnnshap.DeepExplainer(model, background).shap_values(x), first)
    eager = rnnshap.DeepExplainer(model, background)
    eager.engine._graph = False
    np.testing.assert_allclose(eager.shap_values(x), first, rtol=0, atol=1e-12 * np.abs(first).max())


def test_stop_gradient_is_the_identity() -> None:
    """keras.ops.stop_gradient changes training, not the function (as detach on the torch side)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), dtype="float64")
    h = L.GRU(4, dtype="float64")(inputs)
    stopped = keras.Model(
        inputs, L.Dense(1, dtype="float64")(L.Lambda(lambda t: t + keras.ops.stop_gradient(t * t), dtype="float64")(h))
    )
    plain = keras.Model(inputs, L.Dense(1, dtype="float64")(L.Lambda(lambda t: t + t * t, dtype="float64")(h)))
    plain.set_weights(stopped.get_weights())
    rng = np.random.default_rng(6)
    background, x = rng.normal(size=(4, T, F)), rng.normal(size=(3, T, F))
    values = rnnshap.DeepExplainer(stopped, background).shap_values(x)
    assert worst_additivity(values, stopped, x, background) <= TOL["float64"]
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(plain, background).shap_values(x), rtol=1e-10, atol=1e-14)
