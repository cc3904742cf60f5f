"""Every private part of Keras the engine relies on, in one place, and the Keras versions it was verified on.

The engine re-implements Keras layers, so it reads what Keras keeps private: the Functional graph's
runner, a layer's call signature and mask flags, the masks Keras attaches to tensors, the attention
layers' sub-layers and equations, the large negative numbers that mask logits. Each is named here, once;
no other module of the engine imports ``keras.src`` or reads a ``layer._attribute`` (a test checks it).
A Keras release may change any of them, so the engine checks the installed Keras against
:data:`VERIFIED` (:func:`check_version`) and refuses another, naming the versions it was verified on.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable, NamedTuple

import keras

from ... import versions
from ...versions import release as release

#: the Keras releases the engine was verified on: ``(lowest, first not verified)``, from the version pinned
#: in ``constraints/cpu-torch.txt`` (as the forecasting adapters' :data:`rnnshap.forecasting.VERIFIED`); the
#: ``keras`` bounds of pyproject.toml's extras are these (a test checks it)
VERIFIED: tuple[tuple[int, ...], tuple[int, ...]] = ((3, 15), (3, 16))


class UnverifiedKerasError(versions.UnverifiedVersionError):
    """The installed Keras is outside the releases the Keras engine was verified on."""


def installed_version() -> str:
    """The installed Keras's version (its package metadata, else ``keras.__version__``)."""
    version = getattr(keras, "__version__", None)
    if isinstance(version, str):
        return version
    return metadata.version("keras")  # pragma: no cover - keras always sets __version__


def check_version(version: str | None = None) -> str:
    """The installed Keras version (or ``version``), or an :class:`UnverifiedKerasError` naming it and the
    versions the engine was verified on (as the forecasting adapters' ``check_version``)."""
    return versions.check_version(
        "keras",
        VERIFIED,
        door="Keras engine",
        reads="reads private parts of Keras that other versions may change (rnnshap/engines/keras/private.py)",
        advice="save the model and explain it on the torch backend (KERAS_BACKEND=torch: the PyTorch engine)",
        version=version if version is not None else installed_version(),
        error=UnverifiedKerasError,
        named=True,
    )


# A Keras whose private layout moved gets the message above, not an ImportError from keras.src. (Not checked where
# the import works: the torch backend's and the Shapley mode's calls read a layer's nodes here, and an unverified
# Keras is refused by the Keras engine only, whose advice is to explain on the torch backend.)
try:
    from keras.src import backend as keras_backend
    from keras.src.models.functional import Functional as Functional  # (the class of Functional models)
except ImportError:
    check_version()
    raise


# -- masks and graphs -----------------------------------------------------------------------------
def keras_mask(t: Any) -> Any:
    """The Keras mask a layer call attached to the tensor ``t``, or None."""
    return keras_backend.get_keras_mask(t)


def drop_keras_mask(t: Any) -> Any:
    """``t`` without the Keras mask a real layer call attached to it."""
    if keras_backend.get_keras_mask(t) is not None:
        keras_backend.set_keras_mask(t, None)
    return t


def flat_layers(model: Any) -> list[Any]:
    """Every layer inside ``model`` (nested ones too), not ``model`` itself."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def inputs_struct(model: Any) -> Any:
    """The structure a Functional model takes its inputs in (a dict of ``keras.Input`` by name, a list...)."""
    return getattr(model, "_inputs_struct", None)


def sequential_graph(model: Any) -> Any:
    """The Functional graph Keras builds for a Sequential model with a known input, or None."""
    return getattr(model, "_functional", None)


def run_through_graph(model: Any, inputs: Any, operation_fn: Callable[[Any], Callable[..., Any]]) -> Any:
    """A Functional model's graph run on ``inputs``, each layer or op called through ``operation_fn(op)``."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def call_signature(layer: Any) -> Any:
    """The ``inspect.Signature`` of ``layer.call``."""
    return layer._call_signature


def call_takes_mask(layer: Any) -> bool:
    """Whether ``layer.call`` takes a ``mask`` argument."""
    return bool(layer._call_has_mask_arg)


def lambda_takes_mask(layer: Any) -> bool:
    """Whether a ``Lambda`` layer's function takes a ``mask`` argument."""
    return bool(layer._fn_expects_mask_arg)


def nodes(layer: Any) -> tuple[list[Any], list[Any]]:
    """The lists of a layer's inbound and outbound nodes (the lists themselves: a trace trims them back)."""
    return getattr(layer, "_inbound_nodes", None) or [], getattr(layer, "_outbound_nodes", None) or []


def is_keras_op(op: Any) -> bool:
    """Whether ``op`` is a keras op (an ``Operation`` of ``keras.ops``) rather than a layer."""
    return type(op).__module__.startswith("keras.src.ops")


try:  # the cell of ConvLSTM1D/2D/3D (not exported by keras.layers)
    from keras.src.layers.rnn.conv_lstm import ConvLSTMCell

    CONV_CELLS: tuple[type, ...] = (ConvLSTMCell,)
except ImportError:  # pragma: no cover - another keras layout
    CONV_CELLS = ()


# -- the numbers that mask logits -----------------------------------------------------------------
def softmax_floor(dtype: Any) -> float:
    """The number the ``Softmax`` layer adds at masked positions (``_large_negative_number``)."""
    from keras.src.layers.activations.softmax import _large_negative_number

    return float(_large_negative_number(keras.backend.standardize_dtype(dtype)))


def attention_floor(dtype: Any) -> float:
    """The logit ``ops.dot_product_attention`` puts at masked positions, on this backend."""
    import ml_dtypes

    name = keras.backend.standardize_dtype(dtype)
    if keras.backend.backend() == "tensorflow":
        from keras.src.backend.tensorflow.nn import _get_large_negative

        return float(_get_large_negative(name).numpy())
    return float(-0.7 * ml_dtypes.finfo(name).max)  # keras.src.backend.jax.nn: -0.7 * finfo(dtype).max


# -- attention and group normalization --------------------------------------------------------------
class MultiHeadParts(NamedTuple):
    """What a ``MultiHeadAttention`` keeps private: its sub-layers, equations and settings."""

    query: Any
    key: Any
    value: Any
    output: Any
    gate: Any  # the gate's Dense, or None
    dropout: float
    inverse_sqrt_key_dim: float
    attention_axes: tuple[int, ...]
    dot_product_equation: str
    combine_equation: str
    sliding_window: Any


def multi_head_parts(layer: Any) -> MultiHeadParts:
    return MultiHeadParts(
        layer._query_dense,
        layer._key_dense,
        layer._value_dense,
        layer._output_dense,
        layer._gate_dense if getattr(layer, "_use_gate", False) else None,
        layer._dropout,
        layer._inverse_sqrt_key_dim,
        tuple(layer._attention_axes),
        layer._dot_product_equation,
        layer._combine_equation,
        getattr(layer, "_sliding_window", None),
    )


def flash_attention(layer: Any) -> Any:
    """``MultiHeadAttention``'s ``flash_attention`` setting, as its call hands it to ``ops.dot_product_attention``."""
    return getattr(layer, "_flash_attention", None)


def score_mask(layer: Any, scores: Any, v_mask: Any, use_causal_mask: bool) -> Any:
    """``Attention``/``AdditiveAttention``'s mask of its scores."""
    return layer._calculate_score_mask(scores, v_mask, use_causal_mask)


def attention_mask(layer: Any, query: Any, value: Any, **masks: Any) -> Any:
    """``MultiHeadAttention``'s combined attention mask."""
    return layer._compute_attention_mask(query, value, **masks)


def causal_mask(layer: Any, query: Any, value: Any) -> Any:
    return layer._compute_causal_mask(query, value)


def causal_padding(layer: Any) -> Any:
    """A convolution's padding for ``padding="causal"``."""
    return layer._compute_causal_padding()


def groups(layer: Any, t: Any) -> Any:
    """``GroupNormalization``: ``t`` with its channels reshaped into groups."""
    return layer._reshape_into_groups(t)


def group_broadcast_shape(layer: Any, shape: Any) -> Any:
    return layer._create_broadcast_shape(shape)
