"""Keras engine (TensorFlow backend): attention and normalization layers, keras ops, Lambda layers,
subclassed layers and models (keras-io's LSTM-GC traffic forecaster), and models with several outputs.

Exactness is checked against the Keras model itself (``model(x)``, never rnnshap's own outputs):
the attributions add up to f(x) − E f(r); a masked key and a future step of a causal model get
exactly zero; the same model explained on the torch backend (the PyTorch engine) gets the same values.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402

from ...conftest import additivity_tol, assert_rounding_close  # noqa: E402
from ...keras_process import KerasProcess  # noqa: E402
from .test_keras_backends import ENGINES, other_backends, rounding_between  # noqa: E402

L = keras.layers
ops = keras.ops
T, F = 5, 3
TOL = {name: additivity_tol(name) for name in ("float32", "float64")}  # |Σφ − Δ| ≤ TOL·max(1, |Δ|)


def outputs_of(model: Any, x: Any) -> np.ndarray:
    """The model's outputs, every output flattened per sample and concatenated."""
    flat = [np.asarray(t, np.float64) for t in keras.tree.flatten(model(x, training=False))]
    return np.concatenate([t.reshape(t.shape[0], -1) for t in flat], axis=1)


def worst_additivity(values: Any, model: Any, x: Any, background: Any) -> float:
    """max |Σφ − (f(x) − E f(r))| / max(1, |Δ|), from the model's own outputs."""
    gap = outputs_of(model, x) - outputs_of(model, background).mean(0, keepdims=True)
    n, k = gap.shape
    totals = sum(np.asarray(v, np.float64).reshape(n, -1, k).sum(1) for v in (values if isinstance(values, list) else [values]))
    return float((np.abs(totals - gap) / np.maximum(1.0, np.abs(gap))).max())


def functional(dtype: str, body: Callable[[Any, str], Any], shape: tuple[int, ...] = (T, F)) -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape, dtype=dtype)
    return keras.Model(inputs, L.Dense(2, dtype=dtype)(L.Flatten(dtype=dtype)(body(inputs, dtype))))


class Gated(L.Layer):
    """A subclassed layer: sublayers and keras ops in a custom call()."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj = L.Dense(units, dtype=self.dtype_policy)
        self.gate = L.Dense(units, activation="sigmoid", dtype=self.dtype_policy)
        self.norm = L.LayerNormalization(dtype=self.dtype_policy)
        self.w = self.add_weight(shape=(units, units), initializer="glorot_uniform")

    def call(self, x: Any) -> Any:
        mixed = ops.matmul(self.proj(x) * self.gate(x), self.w)
        return self.norm(mixed + ops.mean(x, axis=-1, keepdims=True))


LAYERS: dict[str, Callable[[Any, str], Any]] = {
    "attention-dot-scale-causal": lambda i, d: L.Attention(use_scale=True, dtype=d)(
        [L.Dense(4, dtype=d)(i), L.Dense(4, dtype=d)(i)], use_causal_mask=True
    ),
    "attention-query-value-key": lambda i, d: L.Attention(dtype=d)([L.Dense(4, dtype=d)(i), i, L.Dense(4, dtype=d)(i)]),
    "attention-concat-scale": lambda i, d: L.Attention(score_mode="concat", use_scale=True, dtype=d)(
        [L.Dense(4, dtype=d)(i), L.Dense(4, dtype=d)(i)]
    ),
    "additive-attention": lambda i, d: L.AdditiveAttention(dtype=d)([L.Dense(4, dtype=d)(i), L.Dense(4, dtype=d)(i)]),
    "mha-self": lambda i, d: L.MultiHeadAttention(2, 3, dtype=d)(i, i),
    "mha-dims-causal": lambda i, d: L.MultiHeadAttention(2, 3, value_dim=2, output_shape=(4,), dtype=d)(
        i, L.Dense(4, dtype=d)(i), key=i, use_causal_mask=True
    ),
    "mha-scores-dropout": lambda i, d: L.MultiHeadAttention(2, 2, dropout=0.3, dtype=d)(i, i, return_attention_scores=True)[0],
    "mha-attention-axes": lambda i, d: L.MultiHeadAttention(2, 2, attention_axes=(2,), dtype=d)(
        L.Reshape((T, F, 1), dtype=d)(i), L.Reshape((T, F, 1), dtype=d)(i)
    ),
    "layer-norm": lambda i, d: L.LSTM(3, return_sequences=True, dtype=d)(L.LayerNormalization(dtype=d)(i)),
    "layer-norm-axes-no-centre": lambda i, d: L.LayerNormalization(axis=[1, 2], center=False, dtype=d)(i),
    "layer-norm-no-scale": lambda i, d: L.LayerNormalization(axis=1, scale=False, dtype=d)(i),
    "rms-normalization": lambda i, d: L.RMSNormalization(dtype=d)(i),
    "group-norm": lambda i, d: L.GroupNormalization(groups=2, dtype=d)(L.Dense(4, dtype=d)(i)),
    "lambda-keras-ops": lambda i, d: L.Lambda(
        lambda t: ops.softmax(t * t, axis=1) * ops.exp(t) / (1 + ops.abs(t)) + ops.max(t, axis=1, keepdims=True), dtype=d
    )(i),
    "lambda-tf-ops": lambda i, d: L.Lambda(
        lambda t: tf.reduce_sum(tf.gather(tf.nn.relu(t), [0, 2, 2], axis=1) ** 2, axis=1) / tf.reduce_max(t, axis=1), dtype=d
    )(i),
    "subclassed-layer": lambda i, d: Gated(4, dtype=d)(i),
}


#: tf.* inside a Lambda: the model cannot be built on another backend (its output shape is inferred by running the
#: TensorFlow ops on that backend's tensors); the refusal of such a call on JAX: test_unsupported_ops_in_lambdas_...
TF_OPS = "tf.* ops in a Lambda: Keras cannot build the model on another backend"


def keras_cannot_run_it(model: Any, x: Any, background: Any) -> bool:
    """Whether Keras itself cannot call ``model``: on JAX a MultiHeadAttention whose value_dim differs from its key_dim
    (Keras 3.15's ops.dot_product_attention there reshapes the output to the query's head size). Then rnnshap must
    refuse the model with that reason and advice; on TensorFlow every model here runs."""
    try:
        model(x, training=False)
    except Exception as error:  # the model's own failure, whatever Keras raises
        assert keras.backend.backend() == "jax" and "MultiHeadAttention" in str(error), error
        with pytest.raises(rnnshap.InputError, match=r"(?s)value_dim differs from its key_dim.*KERAS_BACKEND=tensorflow"):
            rnnshap.DeepExplainer(model, background)
        return True
    return False


def layer_cases(names: list[str]) -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.tensorflow_only(reason=TF_OPS)) if name == "lambda-tf-ops" else name
        for name in names
    ]


@pytest.mark.parametrize("name", layer_cases(list(LAYERS)))
def test_layers_add_up_to_the_model(name: str) -> None:
    model = functional("float64", LAYERS[name])
    rng = np.random.default_rng(1)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    if keras_cannot_run_it(model, x, background):
        return
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, T, F, 2)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


@pytest.mark.parametrize("name", ["mha-dims-causal", "subclassed-layer"])
def test_float32_layers_add_up(name: str) -> None:
    model = functional("float32", LAYERS[name])
    rng = np.random.default_rng(2)
    background, x = rng.normal(size=(3, T, F)).astype(np.float32), rng.normal(size=(2, T, F)).astype(np.float32)
    if keras_cannot_run_it(model, x, background):
        return
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float32"]


# -- masks and causality: exact zeros ----------------------------------------------------------------
def _per_step(layer: Callable[[Any], Any]) -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), dtype="float64")
    return keras.Model(inputs, L.Dense(1, dtype="float64")(layer(inputs)))  # one output per step


@pytest.mark.parametrize(
    "layer",
    [
        lambda i: L.Attention(dtype="float64")(
            [L.Dense(4, dtype="float64")(i), L.Dense(4, dtype="float64")(i)], use_causal_mask=True
        ),
        lambda i: L.Attention(score_mode="concat", dtype="float64")([i, i], use_causal_mask=True),
        lambda i: L.MultiHeadAttention(2, 3, dtype="float64")(i, i, use_causal_mask=True),
        lambda i: L.MultiHeadAttention(2, 3, dtype="float64")(i, i, use_causal_mask=True, return_attention_scores=True)[0],
    ],
    ids=["attention", "attention-concat", "mha", "mha-explicit-path"],
)
def test_a_future_step_of_a_causal_model_gets_exactly_zero(layer: Callable[[Any], Any]) -> None:
    model = _per_step(layer)
    rng = np.random.default_rng(3)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, T, F, T, 1)
    values = values[..., 0]  # (n, steps in, F, steps out)
    future = np.tril(np.ones((T, T), bool), k=-1)  # [s, t]: input step s after output step t
    assert np.abs(values.transpose(0, 2, 1, 3)[:, :, future]).max() == 0.0
    assert np.abs(values.transpose(0, 2, 1, 3)[:, :, ~future]).max() > 0
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


@pytest.mark.parametrize("kind", ["attention", "mha"])
def test_masked_tokens_get_exactly_zero_and_references_read_the_mask(kind: str) -> None:
    tokens = keras.Input((T,), dtype="int32")
    keras.utils.set_random_seed(0)
    embedded = L.Embedding(9, 4, mask_zero=True, dtype="float64")(tokens)  # token 0 is masked, its embedding is not zero
    if kind == "attention":
        attended = L.Attention(dtype="float64")([embedded, embedded])
    else:
        attended = L.MultiHeadAttention(2, 3, dtype="float64")(embedded, embedded)
    model = keras.Model(tokens, L.Dense(2, dtype="float64")(L.GlobalAveragePooling1D(dtype="float64")(attended)))
    rng = np.random.default_rng(4)
    background, x = rng.integers(1, 9, (3, T)), rng.integers(1, 9, (2, T))
    x[0, 1], x[1, -2:] = 0, 0
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values[0, 1].tolist() == [0.0, 0.0] and np.abs(values[1, -2:]).max() == 0.0
    for i in range(2):  # the reference is read with the sample's mask: masked steps set to token 0
        references = np.where(x[i][None] == 0, 0, background)
        gap = outputs_of(model, x[i : i + 1]) - outputs_of(model, references).mean(0)
        np.testing.assert_allclose(values[i].sum(0), gap[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mask_kind", ["bool-matrix", "int-padding"])
def test_keys_masked_by_an_attention_mask_input_get_exactly_zero(mask_kind: str) -> None:
    keras.utils.set_random_seed(0)
    query, value = keras.Input((T, F), dtype="float64"), keras.Input((T, F), dtype="float64")
    if mask_kind == "bool-matrix":  # (B, T, S) booleans, straight into attention_mask
        mask = keras.Input((T, T), dtype="bool")
        attention_mask = mask
    else:  # a (B, S) 0/1 key padding mask, broadcast over the queries with keras ops
        mask = keras.Input((T,), dtype="int32")
        attention_mask = ops.cast(mask[:, None, :], "bool")
    attended = L.MultiHeadAttention(2, 3, dtype="float64")(query, value, attention_mask=attention_mask)
    model = keras.Model([query, value, mask], L.Dense(2, dtype="float64")(L.Flatten(dtype="float64")(attended)))
    rng = np.random.default_rng(5)
    shape = (T, T) if mask_kind == "bool-matrix" else (T,)
    keep = np.ones((2, *shape), bool if mask_kind == "bool-matrix" else np.int32)
    keep[..., 1] = 0  # every query ignores key 1
    keep[1, ..., 3] = 0  # sample 1 also key 3
    background = [rng.normal(size=(3, T, F)), rng.normal(size=(3, T, F)), np.ones((3, *shape), keep.dtype)]
    x = [rng.normal(size=(2, T, F)), rng.normal(size=(2, T, F)), keep]
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert np.abs(values[1][:, 1]).max() == 0.0 and np.abs(values[1][1, 3]).max() == 0.0
    assert np.abs(values[1][0, 3]).max() > 0 and np.abs(values[2]).max() == 0.0  # the mask itself is not attributed
    for i in range(2):  # each reference is read with the sample's attention mask
        references = [background[0], background[1], np.repeat(keep[i : i + 1], 3, 0)]
        gap = outputs_of(model, [v[i : i + 1] for v in x]) - outputs_of(model, references).mean(0)
        total = values[0][i].reshape(-1, 2).sum(0) + values[1][i].reshape(-1, 2).sum(0)
        np.testing.assert_allclose(total, gap[0], rtol=0, atol=1e-12)


def test_a_masked_value_via_a_mask_op_gets_exactly_zero() -> None:
    keras.utils.set_random_seed(0)
    query, value = keras.Input((T, F), dtype="float64"), keras.Input((T, F), dtype="float64")
    value_mask = ops.not_equal(value[..., 0], 0.0)  # a step whose first feature is 0 is padding
    attended = L.Attention(dtype="float64")(
        [L.Dense(4, dtype="float64")(query), L.Dense(4, dtype="float64")(value)], mask=[None, value_mask]
    )
    model = keras.Model([query, value], L.Dense(2, dtype="float64")(L.Flatten(dtype="float64")(attended)))
    rng = np.random.default_rng(6)
    background = [rng.normal(size=(3, T, F)), rng.normal(size=(3, T, F))]
    x = [rng.normal(size=(2, T, F)), rng.normal(size=(2, T, F))]
    x[1][:, 2, 0] = 0.0  # step 2 of the values is padding; its other features are not zero
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert np.abs(values[1][:, 2]).max() == 0.0 and np.abs(values[1][:, 1]).max() > 0


# -- Lambda layers and subclassed layers and models ------------------------------------------------
def test_unsupported_ops_in_lambdas_are_refused_together_by_name() -> None:
    model = keras.Sequential(
        [
            keras.Input((T, F)),
            # (a comparison of picked indices: argmax's own uses are exact,
            # tests/engines/keras/test_keras_orderings_picks_pooling.py)
            L.Lambda(lambda t: ops.cast(ops.equal(ops.argmax(t, axis=1), 0), "float32")[:, None, :] * t, name="picker"),
            L.Lambda(lambda t: tf.math.cumprod(t, axis=1), name="products"),
            L.Lambda(lambda t: t if float(tf.reduce_sum(t)) > 0 else -t, name="branching"),
            L.Flatten(),
            L.Dense(2),
        ]
    )
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, np.ones((2, T, F), np.float32))
    message = str(info.value)
    assert "picker (Lambda) > equal (Equal)" in message
    if keras.backend.backend() == "tensorflow":  # the TensorFlow ops traced into a graph, each by its rule
        assert "products (Lambda): TensorFlow op Cumprod" in message
        assert "branching (Lambda): its call() could not be traced" in message
    else:  # (on JAX the model runs, but a call with TensorFlow functions is traced into keras ops only: refused by name)
        for name in ("products", "branching"):
            assert f"{name} (Lambda): its call() could not be traced into keras ops: it calls TensorFlow functions" in message
        assert "explain it with KERAS_BACKEND=tensorflow" in message


def test_a_cast_to_integers_in_a_lambda_is_refused_by_name() -> None:
    model = keras.Sequential(
        [keras.Input((T, F)), L.Lambda(lambda t: ops.cast(t * 3, "int32"), name="caster"), L.Flatten(), L.Dense(2)]
    )
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, np.ones((2, T, F), np.float32))
    pattern = r"caster \(Lambda\) > cast(_\d+)? \(Cast\): casts an input-dependent tensor to int32"
    assert re.search(pattern, str(info.value)), str(info.value)


class GraphInfo:
    def __init__(self, edges: tuple[list[int], list[int]], num_nodes: int) -> None:
        self.edges = edges
        self.num_nodes = num_nodes


class GraphConv(L.Layer):
    """keras-io's "Traffic forecasting using graph neural networks and LSTM" graph convolution, as
    published (Keras 3 version): tf.gather and tf.math.unsorted_segment_mean over the node axis."""

    def __init__(
        self, in_feat: int, out_feat: int, graph_info: GraphInfo, aggregation_type: str = "mean",
        combination_type: str = "concat", activation: Any = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.in_feat, self.out_feat, self.graph_info = in_feat, out_feat, graph_info
        self.aggregation_type, self.combination_type = aggregation_type, combination_type
        self.weight = self.add_weight(
            initializer=keras.initializers.GlorotUniform(), shape=(in_feat, out_feat), dtype="float32", trainable=True
        )
        self.activation = L.Activation(activation)

    def aggregate(self, neighbour_representations: Any) -> Any:
        aggregation_func = {"sum": tf.math.unsorted_segment_sum, "mean": tf.math.unsorted_segment_mean}[self.aggregation_type]
        return aggregation_func(neighbour_representations, self.graph_info.edges[0], num_segments=self.graph_info.num_nodes)

    def compute_nodes_representation(self, features: Any) -> Any:
        return ops.matmul(features, self.weight)

    def compute_aggregated_messages(self, features: Any) -> Any:
        neighbour_representations = tf.gather(features, self.graph_info.edges[1])
        return ops.matmul(self.aggregate(neighbour_representations), self.weight)

    def update(self, nodes_representation: Any, aggregated_messages: Any) -> Any:
        if self.combination_type == "concat":
            h = ops.concatenate([nodes_representation, aggregated_messages], axis=-1)
        else:
            h = nodes_representation + aggregated_messages
        return self.activation(h)

    def call(self, features: Any) -> Any:
        return self.update(self.compute_nodes_representation(features), self.compute_aggregated_messages(features))


class LSTMGC(L.Layer):
    """keras-io's LSTM-GC: graph convolution, then an LSTM per node (batch and nodes merged), then Dense."""

    def __init__(
        self, in_feat: int, out_feat: int, lstm_units: int, input_seq_len: int, output_seq_len: int, graph_info: GraphInfo,
        graph_conv_params: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if graph_conv_params is None:
            graph_conv_params = {"aggregation_type": "mean", "combination_type": "concat", "activation": None}
        self.graph_conv = GraphConv(in_feat, out_feat, graph_info, **graph_conv_params)
        self.lstm = L.LSTM(lstm_units, activation="relu")
        self.dense = L.Dense(output_seq_len)
        self.input_seq_len, self.output_seq_len = input_seq_len, output_seq_len

    def call(self, inputs: Any) -> Any:
        inputs = ops.transpose(inputs, [2, 0, 1, 3])  # (num_nodes, batch_size, input_seq_len, in_feat)
        gcn_out = self.graph_conv(inputs)
        shape = ops.shape(gcn_out)
        num_nodes, batch_size, input_seq_len, out_feat = shape[0], shape[1], shape[2], shape[3]
        gcn_out = ops.reshape(gcn_out, (batch_size * num_nodes, input_seq_len, out_feat))
        dense_output = self.dense(self.lstm(gcn_out))
        output = ops.reshape(dense_output, (num_nodes, batch_size, self.output_seq_len))
        return ops.transpose(output, [1, 2, 0])  # (batch_size, output_seq_len, num_nodes)


@pytest.mark.tensorflow_only(
    reason="keras-io's LSTM-GC calls tf.gather and tf.math.unsorted_segment_mean: Keras cannot build it on JAX"
)
def test_keras_io_lstm_gc_traffic_forecaster() -> None:
    """A small copy of keras-io's LSTM-GC: a subclassed layer calling a subclassed graph convolution
    (TensorFlow ops), an LSTM over batch × nodes, Dense and reshapes that move the batch axis."""
    steps, nodes, horizon = 6, 4, 2
    adjacency = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 0, 0]])
    node_indices, neighbor_indices = np.where(adjacency == 1)
    graph = GraphInfo((node_indices.tolist(), neighbor_indices.tolist()), nodes)
    keras.utils.set_random_seed(0)
    st_gcn = LSTMGC(
        1, 3, 4, steps, horizon, graph, {"aggregation_type": "mean", "combination_type": "concat", "activation": "tanh"}
    )
    inputs = L.Input((steps, nodes, 1))
    model = keras.Model(inputs, st_gcn(inputs))
    counts = [(layer, len(layer._inbound_nodes)) for layer in st_gcn._flatten_layers(include_self=False)]
    rng = np.random.default_rng(7)
    background = rng.normal(size=(3, steps, nodes, 1)).astype(np.float32)
    x = rng.normal(size=(2, steps, nodes, 1)).astype(np.float32)
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, steps, nodes, 1, horizon, nodes)
    assert worst_additivity(values, model, x, background) <= TOL["float32"]
    assert all(len(layer._inbound_nodes) == count for layer, count in counts)  # tracing left the layers as they were
    # node 3 reads only itself and its neighbour, node 1: its forecast gets exactly nothing from nodes 0 and 2
    assert np.abs(values[..., 3][:, :, [0, 2]]).max() == 0.0 and np.abs(values[..., 3][:, :, [1, 3]]).max() > 0


class TokenAndPositionEmbedding(L.Layer):
    """keras-io's text-classification transformer: token embeddings plus position embeddings of ops.arange."""

    def __init__(self, maxlen: int, vocab_size: int, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token_emb = L.Embedding(input_dim=vocab_size, output_dim=embed_dim, dtype=self.dtype_policy)
        self.pos_emb = L.Embedding(input_dim=maxlen, output_dim=embed_dim, dtype=self.dtype_policy)

    def call(self, x: Any) -> Any:
        positions = self.pos_emb(ops.arange(start=0, stop=ops.shape(x)[-1], step=1))
        return self.token_emb(x) + positions


class TransformerBlock(L.Layer):
    """keras-io's transformer block: MultiHeadAttention, dropout, residuals, LayerNormalization, a Sequential FFN."""

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, rate: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        policy = self.dtype_policy
        self.att = L.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim, dtype=policy)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu", dtype=policy), L.Dense(embed_dim, dtype=policy)])
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6, dtype=policy)
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6, dtype=policy)
        self.dropout1, self.dropout2 = L.Dropout(rate, dtype=policy), L.Dropout(rate, dtype=policy)

    def call(self, inputs: Any, training: bool = False) -> Any:
        out1 = self.layernorm1(inputs + self.dropout1(self.att(inputs, inputs), training=training))
        return self.layernorm2(out1 + self.dropout2(self.ffn(out1), training=training))


def test_keras_io_transformer_text_classifier() -> None:
    keras.utils.set_random_seed(0)
    tokens = L.Input(shape=(T,), dtype="int32")
    hidden = TransformerBlock(4, 2, 8, dtype="float64")(TokenAndPositionEmbedding(T, 20, 4, dtype="float64")(tokens))
    model = keras.Model(
        tokens, L.Dense(2, activation="softmax", dtype="float64")(L.GlobalAveragePooling1D(dtype="float64")(hidden))
    )
    rng = np.random.default_rng(12)
    background, x = rng.integers(0, 20, (3, T)), rng.integers(0, 20, (2, T))
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert values.shape == (2, T, 2)  # per token
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


class TwoInputNet(keras.Model):
    """A subclassed model with two inputs, a recurrent layer and attention."""

    def __init__(self) -> None:
        super().__init__(dtype="float64")
        self.rnn = L.GRU(4, return_sequences=True, dtype="float64")
        self.attend = L.Attention(dtype="float64")
        self.side = L.Dense(4, dtype="float64")
        self.head = L.Dense(2, dtype="float64")

    def call(self, inputs: Any, training: bool = False) -> Any:
        sequence, context = inputs
        states = self.rnn(sequence)
        pooled = ops.sum(self.attend([states, states]), axis=1)
        return self.head(pooled * ops.tanh(self.side(context)))


def test_subclassed_model_with_two_inputs() -> None:
    keras.utils.set_random_seed(0)
    model = TwoInputNet()
    rng = np.random.default_rng(8)
    background = [rng.normal(size=(3, T, F)), rng.normal(size=(3, 2))]
    x = [rng.normal(size=(2, T, F)), rng.normal(size=(2, 2))]
    model(background)
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert [v.shape for v in values] == [(2, T, F, 2), (2, 2, 2)]
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


# -- models with several outputs -------------------------------------------------------------------
def _two_outputs() -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), dtype="float64")
    states = L.LSTM(3, return_sequences=True, dtype="float64")(inputs)
    return keras.Model(
        inputs, [L.Dense(2, name="per_step", dtype="float64")(states), L.Dense(1, name="final", dtype="float64")(states[:, -1])]
    )


def test_several_outputs_are_explained_as_one_flat_vector_in_a_documented_order() -> None:
    model = _two_outputs()
    rng = np.random.default_rng(9)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.output_layout == [("per_step", (T, 2), 0, 2 * T), ("final", (1,), 2 * T, 2 * T + 1)]
    values = explainer.shap_values(x)
    assert values.shape == (2, T, F, 2 * T + 1)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]


def test_one_output_of_several_by_its_name_or_index() -> None:
    model = _two_outputs()
    rng = np.random.default_rng(10)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    values = rnnshap.DeepExplainer(model, background, output="final").shap_values(x)
    assert values.shape == (2, T, F, 1)
    assert worst_additivity(values, keras.Model(model.inputs[0], model.outputs[1]), x, background) <= TOL["float64"]
    by_position = rnnshap.DeepExplainer(model, background, output=0)
    assert by_position.output_shape == (T, 2)
    np.testing.assert_array_equal(by_position.engine.predict(by_position.engine.inputs(x, "X")), outputs_of(model, x)[:, : 2 * T])
    with pytest.raises(rnnshap.InputError, match="per_step"):
        rnnshap.DeepExplainer(model, background, output="missing")


# -- the same model on the torch backend -----------------------------------------------------------
_SHARED = '''
import keras
from keras import layers as L, ops

def build(dtype="float64"):
    class Gate(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = L.Dense(4, activation="sigmoid", dtype=self.dtype_policy)

        def call(self, x):
            return x * self.dense(x) + ops.mean(x, axis=-1, keepdims=True)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 3), dtype=dtype)
    h = L.LayerNormalization(dtype=dtype)(L.Dense(4, dtype=dtype)(inputs))
    h = h + L.MultiHeadAttention(2, 3, dtype=dtype)(h, h, use_causal_mask=True)
    h = L.Attention(score_mode="concat", use_scale=True, dtype=dtype)([h, L.Dense(4, dtype=dtype)(h)])
    h = L.AdditiveAttention(dtype=dtype)([h, h], use_causal_mask=True)
    h = L.GroupNormalization(groups=2, dtype=dtype)(h)
    # normalizations written with keras ops: the scale-weighted rule of the layers on both backends
    h = L.Lambda(
        lambda t: t * ops.power(ops.mean(ops.square(t), axis=-1, keepdims=True) + 1e-3, -0.5)
        + t / ops.sqrt(ops.mean(ops.square(t - ops.mean(t, axis=-1, keepdims=True)), axis=-1, keepdims=True) + 1e-3),
        dtype=dtype,
    )(h)
    h = L.Lambda(lambda t: ops.tanh(t) * ops.mean(t, axis=1, keepdims=True), dtype=dtype)(h)
    h = Gate(dtype=dtype)(h)
    return keras.Model(inputs, L.Dense(2, dtype=dtype)(L.GRU(3, dtype=dtype)(h)))
'''

_OTHER_SIDE = """
import json, sys
import numpy as np, keras, rnnshap
exec(sys.argv[2])
data = np.load(sys.argv[1])
model = build()
model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
explainer = rnnshap.DeepExplainer(model, data["background"])
np.save(sys.argv[1] + f".{keras.backend.backend()}.npy", explainer.shap_values(data["x"]))
outputs = np.asarray(keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(data["x"]))), np.float64)
print(json.dumps({"engine": type(explainer.engine).__name__, "outputs": outputs.tolist()}))
"""


def test_the_same_model_gets_the_same_values_on_tensorflow_and_torch(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    """The same model on this process's backend and on the others (TensorFlow: torch; JAX: TensorFlow and torch)."""
    pytest.importorskip("torch")
    namespace: dict[str, Any] = {}
    exec(_SHARED, namespace)  # noqa: S102 - the model's code, shared with the other processes
    model = namespace["build"]()
    rng = np.random.default_rng(11)
    background, x = rng.normal(size=(3, T, F)), rng.normal(size=(2, T, F))
    path = tmp_path / "model.npz"
    np.savez(path, background=background, x=x, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    # the other sides run in the session's processes for their backends while this one explains on its own
    others = {backend: keras_process(backend).submit(_OTHER_SIDE, str(path), _SHARED) for backend in other_backends()}
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]
    for backend, side in others.items():
        found = json.loads(side().strip().splitlines()[-1])
        assert found["engine"] == ENGINES[backend], backend
        # Keras on torch runs matmul in float32 even for float64 operands (Keras 3.15 on JAX tanh, keras#23223), so the
        # two models differ by float32 rounding (amplified by the normalizations): the attributions agree to that, far
        # below any rule's difference
        precision = rounding_between(backend)
        model_gap = np.abs(np.asarray(found["outputs"]) - outputs_of(model, x)).max() / np.abs(outputs_of(model, x)).max()
        assert_rounding_close(np.asarray(found["outputs"]), outputs_of(model, x), precision, what=f"f(x) on {backend}")
        other_values = np.load(f"{path}.{backend}.npy")
        assert_rounding_close(other_values, values, precision, what=f"φ on {backend}")
        gap = np.abs(other_values - values).max() / np.abs(values).max()
        print(f"{backend}: model gap {model_gap:.2g}, attribution gap {gap:.2g}")


# -- Conv3D, ConvLSTM and an adapted Normalization (exact on the torch backend already) ---------------------------------
def test_an_adapted_normalization_is_affine_and_exact() -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(size=(30, F)) * np.array([2.0, 0.5, 3.0]) + 1.0
    for invert in (False, True):
        keras.utils.set_random_seed(0)
        norm = L.Normalization(dtype="float64", invert=invert)
        norm.adapt(data)
        inputs = keras.Input((F,), dtype="float64")
        model = keras.Model(inputs, L.Dense(2, activation="tanh", dtype="float64")(norm(inputs)))
        weights = [w.copy() for w in model.get_weights()]
        background, x = rng.normal(size=(6, F)), rng.normal(size=(3, F))
        values = rnnshap.DeepExplainer(model, background).shap_values(x)
        assert worst_additivity(values, model, x, background) <= TOL["float64"]
        # the model written another way: the normalization as arithmetic in a Lambda
        mean, std = np.asarray(norm.mean, np.float64), np.sqrt(np.asarray(norm.variance, np.float64))
        dense = model.layers[-1]
        written_in = keras.Input((F,), dtype="float64")
        scaled = L.Lambda(lambda t: t * std + mean if invert else (t - mean) / std, dtype="float64")(written_in)
        written = keras.Model(written_in, L.Dense(2, activation="tanh", dtype="float64")(scaled))
        written.layers[-1].set_weights(dense.get_weights())
        expected = rnnshap.DeepExplainer(written, background).shap_values(x)
        assert_rounding_close(values, expected, "float64", what=f"Normalization(invert={invert}) against the arithmetic")
        assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_conv3d_is_exact_and_gives_zero_to_voxels_it_skips() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 4, 2), dtype="float64")
    hidden = L.Conv3D(3, 1, strides=2, activation="tanh", dtype="float64")(inputs)  # reads the even voxels only
    model = keras.Model(inputs, L.Dense(2, dtype="float64")(L.Flatten(dtype="float64")(hidden)))
    weights = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(5)
    background, x = rng.normal(size=(4, 4, 4, 4, 2)), rng.normal(size=(2, 4, 4, 4, 2))
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]
    skipped = np.ones((4, 4, 4), bool)
    skipped[::2, ::2, ::2] = False
    assert np.abs(values[:, skipped]).max() == 0.0 and np.abs(values[:, ~skipped]).max() > 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_lstm_is_exact_and_gives_zero_to_positions_it_skips(rank: int) -> None:
    keras.utils.set_random_seed(0)
    layer = {1: L.ConvLSTM1D, 2: L.ConvLSTM2D, 3: L.ConvLSTM3D}[rank]
    spatial = (4,) * rank
    inputs = keras.Input((3, *spatial, 2), dtype="float64")
    hidden = layer(2, 1, strides=2, return_sequences=rank == 2, dtype="float64")(inputs)  # reads even positions only
    model = keras.Model(inputs, L.Dense(2, dtype="float64")(L.Flatten(dtype="float64")(hidden)))
    weights = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(6)
    background, x = rng.normal(size=(3, 3, *spatial, 2)), rng.normal(size=(2, 3, *spatial, 2))
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert worst_additivity(values, model, x, background) <= TOL["float64"]
    read = np.zeros(spatial, bool)
    read[(slice(None, None, 2),) * rank] = True
    assert np.abs(values[:, :, ~read]).max() == 0.0 and np.abs(values[:, :, read]).max() > 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
