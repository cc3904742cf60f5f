r"""Keras layers on :class:`~rnnshap.keras.dual.Dual` tensors, each by the rule of ``docs/recurrent.md``.

:func:`problem` says why a layer cannot be explained (or ``None``); :func:`run_model` runs a
Functional or Sequential model on Duals, layer by layer. Recurrent layers (``LSTM``, ``GRU``,
``SimpleRNN``, ``RNN`` over their cells or ``StackedRNNCells``, ``Bidirectional``) run both
trajectories step by step: gates by Rescale, gate ⊙ state products by the exact Shapley rule.
"""

from __future__ import annotations

import sys
import weakref
from functools import partial
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src import backend as keras_backend
from keras.src import tree as keras_tree
from keras.src.models.functional import Functional

from ...rules.catalog import keras_activation_families
from . import attention, dual, fused, kops, picked, trace
from .dual import Dual

L = keras.layers

#: elementwise activations by name: the catalog's view (rnnshap/rules/catalog.py), those keras has
_ELEMENTWISE = {name: entry for name, entry in keras_activation_families().items() if hasattr(keras.activations, name)}
_STRUCTURED = {"softmax": dual.softmax, "log_softmax": dual.log_softmax}

#: layers that are linear in their input at inference: both sides run through the layer itself
_LINEAR = (
    L.Flatten, L.Reshape, L.Permute, L.RepeatVector, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D,
    L.Cropping2D, L.AveragePooling1D, L.AveragePooling2D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.UpSampling1D, L.Identity, L.BatchNormalization,
    L.Normalization,  # (adapted or given mean and variance: (x - mean) / sqrt(variance), or its inverse: affine)
)  # fmt: skip
_MERGE = (L.Concatenate, L.Add, L.Subtract, L.Average)
_GLOBAL_MAX = (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D)
_WINDOW_MAX = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D)
_RECURRENT_CELLS = (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)
try:  # the cell of ConvLSTM1D/2D/3D (not exported by keras.layers)
    from keras.src.layers.rnn.conv_lstm import ConvLSTMCell as _ConvLSTMCell

    _CONV_CELLS: tuple[type, ...] = (_ConvLSTMCell,)
except ImportError:  # pragma: no cover - another keras layout
    _CONV_CELLS = ()
#: keras ops a Functional graph computes masks with (Masking: NotEqual + Any; Embedding: NotEqual;
#: Concatenate: ZerosLike, OnesLike, LogicalOr): they read only the input side (or only its shape)
_MASK_OPS = {
    "NotEqual", "Equal", "Any", "All", "LogicalAnd", "LogicalOr", "LogicalNot", "LogicalXor", "ZerosLike", "OnesLike",
    "FullLike", "Greater", "GreaterEqual", "Less", "LessEqual", "Isnan", "Isfinite", "Isinf",
}  # fmt: skip
#: attention layers and normalization layers with their own rules (rnnshap/engines/keras/attention.py)
_ATTENTION = (L.Attention, L.AdditiveAttention, L.MultiHeadAttention)
_NORMALIZATION = (L.LayerNormalization, L.GroupNormalization, *((L.RMSNormalization,) if hasattr(L, "RMSNormalization") else ()))


class Run:
    """What one dual pass collects: the tape, the embeddings that token inputs reach, and which
    pairs read their reference with the masks the model itself computes on that reference.

    Masks are computed on the input side and used on both (see :func:`call_layer`). Wherever a mask
    is computed from values, the mask the reference would get is computed too: ``agree`` marks the
    rows (pairs) where every such mask is the same on both sides, whose reference side is then the
    model's own function of the reference (``None``: no mask was computed from values, every row).
    """

    def __init__(self, tape: tf.GradientTape | None, rows: int) -> None:
        self.tape = tape
        self.rows = rows
        self.embedded: list[tuple[int, tf.Tensor, tf.Tensor]] = []  # (input index, input side, reference side)
        self.agree: tf.Tensor | None = None
        #: the probe collects every refusal here instead of raising at the first (see unsupported_in)
        self.collect: list[tuple[str, str]] | None = None
        #: the traced layers (Lambda, custom call()) the pass is inside, outermost first, for refusals
        self.scope: list[str] = []
        #: ``(copies, samples, references)`` when the rows are that grid of pairs, sample-major (the
        #: input side of a row depends on its sample only, the reference side on its reference only)
        self.grid: tuple[int, int, int] | None = None
        #: a Keras mask has been met: the reference side of a row is read with its input's mask, so
        #: it depends on the sample too, and recurrent layers run on every row (see fused.py)
        self.masked = False
        #: plain tensors the pass computed from masks (by id, held): any other plain tensor a layer gets
        #: is a constant of the model's graph (``ops.zeros((n, units))`` as a cell's initial state)
        self.from_masks: dict[int, Any] = {}

    def computed_from_masks(self, out: Any) -> Any:
        for t in keras_tree.flatten(out):
            if isinstance(t, tf.Tensor):
                self.from_masks[id(t)] = t
        return out

    def compare(self, mask_x: Any, mask_r: Any) -> None:
        """Record, per row, whether the input side's mask ``mask_x`` equals the reference side's ``mask_r``.
        (A mask computed on the input side is read on the reference side too: see ``masked``.)"""
        if mask_x is mask_r:
            return
        self.masked = True
        same: tf.Tensor
        if mask_x is None or mask_r is None or not hasattr(mask_x, "shape") or mask_x.shape != mask_r.shape:
            same = tf.zeros((self.rows,), tf.bool)
        elif mask_x.shape.rank == 0 or mask_x.shape[0] != self.rows:
            same = tf.fill((self.rows,), tf.reduce_all(tf.equal(mask_x, mask_r)))
        else:
            equal = tf.equal(mask_x, mask_r)
            same = tf.reduce_all(equal, axis=list(range(1, equal.shape.rank))) if equal.shape.rank > 1 else equal
        self.agree = same if self.agree is None else tf.logical_and(self.agree, same)


class TokenDual(Dual):
    """Integer token ids of model input ``index``; only an Embedding may consume them."""

    __slots__ = ("index",)

    def __init__(self, x: tf.Tensor, r: tf.Tensor, index: int) -> None:
        super().__init__(x, r)
        self.index = index


# -- what is supported ---------------------------------------------------------------------------
def _activation_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def activation_problem(fn: Any) -> str | None:
    name = _activation_name(fn)
    if name == "linear" or name in _ELEMENTWISE or name in _STRUCTURED:
        return None
    return f"activation {name!r} has no rule (supported: linear, softmax, log_softmax, {', '.join(sorted(_ELEMENTWISE))})"


def _is_mask_op(op: Any) -> bool:
    return type(op).__name__ in _MASK_OPS and type(op).__module__.startswith("keras.src.ops")


def _keras_base(layer: Any) -> str:
    return next((k.__name__ for k in type(layer).__mro__ if k.__module__.startswith("keras.")), "keras")


def _custom_call(layer: Any) -> str | None:
    """The name of a class outside keras between ``type(layer)`` and keras that overrides ``call``, or None."""
    for klass in type(layer).__mro__:
        if klass.__module__.startswith("keras."):
            return None
        if "call" in vars(klass) or "__call__" in vars(klass):
            return klass.__name__
    return None


def problem(layer: Any) -> str | None:
    """Why ``layer`` cannot be explained exactly, or None."""
    if _is_mask_op(layer):
        return None  # mask ops run on the explained input (see call_layer)
    if kops.is_keras_op(layer):
        return None  # checked when it runs: an op without a rule is refused where an input-dependent tensor reaches it
    if trace.traced_kind(layer) is not None:
        return None  # its call() is traced when it runs (rnnshap/engines/keras/trace.py)
    if (custom := _custom_call(layer)) is not None:
        return (
            f"{custom} overrides call() of the built-in {_keras_base(layer)} layer, which rnnshap re-implements; subclass "
            "keras.layers.Layer instead (rnnshap traces the call() of Layer and Model subclasses), or build it functionally"
        )
    if isinstance(layer, getattr(L, "GroupQueryAttention", ())):
        return "GroupedQueryAttention has no rule in rnnshap (MultiHeadAttention, Attention and AdditiveAttention do)"
    if isinstance(layer, _ATTENTION + _NORMALIZATION):
        hooks = ("_compute_attention", "_masked_softmax", "_calculate_scores", "_apply_scores", "_calculate_score_mask", "_reshape_into_groups")
        for klass in type(layer).__mro__:
            if klass.__module__.startswith("keras."):
                break
            if changed := [name for name in hooks if name in vars(klass)]:
                return f"{klass.__name__} overrides {', '.join(changed)} of {_keras_base(layer)}, which rnnshap re-implements"
        return None
    if isinstance(layer, L.EinsumDense):
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return "quantized or LoRA layers are not supported"
        return None if layer.activation is None else activation_problem(layer.activation)
    if isinstance(layer, (keras.Sequential, Functional)):
        return None  # its layers are checked one by one
    if isinstance(layer, L.InputLayer) or isinstance(layer, _LINEAR + _MERGE) or isinstance(layer, L.Multiply):
        if isinstance(layer, L.BatchNormalization) and getattr(layer, "renorm", False):
            return "BatchNormalization with renorm is not supported"
        return None
    if isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return "quantized or LoRA layers are not supported"
        return None if layer.activation is None else activation_problem(layer.activation)
    if isinstance(layer, L.Activation):
        return activation_problem(layer.activation)
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax)):
        return None
    if isinstance(layer, _GLOBAL_MAX + _WINDOW_MAX):
        return None
    if isinstance(layer, L.TimeDistributed):
        return problem(layer.layer)
    if isinstance(layer, (L.Embedding, L.Masking)):
        return None
    if isinstance(layer, L.Bidirectional):
        return problem(layer.forward_layer) or problem(layer.backward_layer)
    if isinstance(layer, _RECURRENT_CELLS):
        for fn in (layer.activation, getattr(layer, "recurrent_activation", None)):
            if fn is not None and (why := activation_problem(fn)):
                return why
        return None
    if isinstance(layer, L.RNN):
        if layer.stateful:
            return "stateful recurrent layers are not supported (the state would carry between calls)"
        cells = layer.cell.cells if isinstance(layer.cell, L.StackedRNNCells) else [layer.cell]
        for cell in cells:
            if isinstance(cell, _CONV_CELLS) and getattr(cell, "data_format", None) != "channels_last":
                return "ConvLSTM with data_format='channels_first' is not supported (channels_last is)"
            if not isinstance(cell, _RECURRENT_CELLS + _CONV_CELLS):
                return f"recurrent cell {type(cell).__name__} is not supported (LSTMCell, GRUCell, SimpleRNNCell, ConvLSTM's are)"
            if (custom := _custom_call(cell)) is not None:
                return f"cell {custom} overrides call(); rnnshap re-implements the keras cells and cannot follow a custom call"
            for fn in (cell.activation, getattr(cell, "recurrent_activation", None)):
                if fn is not None and (why := activation_problem(fn)):
                    return f"{type(cell).__name__}: {why}"
        return None
    return f"{type(layer).__name__} has no rule in rnnshap's Keras support"


def problems(model: Any) -> list[tuple[str, str]]:
    """Every (layer name, reason) of ``model`` and the models inside it that cannot be explained."""
    found: list[tuple[str, str]] = []
    if not isinstance(model, (keras.Sequential, Functional)) or _custom_call(model) is not None:
        if trace.traced_kind(model) is not None:
            return []  # a subclassed model: its call() is traced when it runs
        return [(model.name, f"{type(model).__name__} is not a Functional, Sequential or subclassed Keras model with its own call()")]
    layers = model.layers if isinstance(model, keras.Sequential) else model.operations
    for layer in layers:
        if isinstance(layer, (keras.Sequential, Functional)) or isinstance(layer, keras.Model):
            found += problems(layer)
        elif (why := problem(layer)) is not None:
            found.append((f"{layer.name} ({type(layer).__name__})", why))
    return found


# -- running a model -----------------------------------------------------------------------------
def run_model(model: Any, inputs: list[Dual], run: Run, as_list: bool = True) -> Any:
    """``model`` on Duals: a Dual (or the structure of the model's outputs, of Duals). ``as_list``: a
    subclassed model takes its inputs as a list (else the one Dual), as the engine calls it."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is not None:
            return run_model(functional, inputs, run)
        (value,) = inputs
        out: Any = value
        for layer in model.layers:
            out = call_layer(layer, run, out)
        return out
    if isinstance(model, Functional) and _custom_call(model) is None:
        inputs = [_as_input(value, spec) for value, spec in zip(inputs, model.inputs, strict=False)]
        return model._run_through_graph(inputs, operation_fn=lambda op: (lambda *args, **kwargs: call_layer(op, run, *args, **kwargs)))
    if trace.traced_kind(model) is not None:  # a subclassed model: called as the engine calls it
        return call_layer(model, run, inputs if as_list else inputs[0])
    raise TypeError(f"{type(model).__name__} is not a Functional, Sequential or subclassed Keras model")


def _as_input(value: Any, spec: Any) -> Any:
    """A Functional converts each input to the dtype of its ``keras.Input``: floating values here."""
    dtype = str(getattr(spec, "dtype", "")).replace("tf.", "")
    if isinstance(value, Dual) and not isinstance(value, TokenDual) and value.x.dtype.is_floating and dtype.startswith(("float", "bfloat")):
        return _cast(value, dtype)
    return value


def _no_tokens(layer: Any, *values: Any) -> None:
    for value in values:
        if isinstance(value, TokenDual):
            raise _integer_input_error(value.index, layer)


def _integer_input_error(index: int, layer: Any) -> Exception:
    from ...errors import InputError

    error = InputError(
        f"Input {index} holds integers and reaches layer {layer.name!r} ({type(layer).__name__}) directly: rnnshap "
        "treats integer inputs as token ids, attributed at the Embedding that reads them. Pass numbers to attribute "
        "to as floating point (and declare the keras.Input floating)."
    )
    error.input_index = index  # type: ignore[attr-defined]  # the engine reads it to treat the input as numbers
    return error


def _flat(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        return [item for v in values for item in _flat(v)]
    return [values]


def _mask_of(value: Any) -> Any:
    """The Keras masks of ``value`` in its structure (``tree.map_structure(get_keras_mask, value)``)."""
    if isinstance(value, Dual):
        return value.mask
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_of(v) for v in value)
    if isinstance(value, dict):
        return {key: _mask_of(v) for key, v in value.items()}
    return None


def _is_tensor_argument(value: Any) -> bool:
    """Whether Keras counts a call argument as a tensor argument (a tensor, or a nest of tensors and Nones)."""
    if isinstance(value, (Dual, tf.Tensor)):
        return True
    if isinstance(value, (list, tuple, dict)) and len(value) > 0:
        leaves = _flat(list(value.values()) if isinstance(value, dict) else value)
        return all(v is None or isinstance(v, (Dual, tf.Tensor)) for v in leaves)
    return False


def keras_masks(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(call mask, previous mask, first argument)`` of ``layer(*args, **kwargs)`` as Keras 3's
    ``Layer.__call__`` computes them: the mask ``call()`` receives (an explicit ``mask=``, or the mask of
    the only tensor argument when ``call()`` takes one), and the mask that ``compute_mask`` gets."""
    try:
        bound = layer._call_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
    except (AttributeError, TypeError):
        arguments = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
    names = list(arguments)
    first = arguments[names[0]] if names else None
    tensors = [name for name in names if _is_tensor_argument(arguments[name])]
    call_mask = arguments.get("mask")
    if isinstance(call_mask, Dual):
        call_mask = call_mask.x
    if call_mask is None and "mask" in arguments and len(tensors) == 1:
        call_mask = _mask_of(arguments[tensors[0]])
    return call_mask, (call_mask if call_mask is not None else _mask_of(first)), first


def _output_masks(layer: Any, run: Run, out: Any, first: Any, previous_mask: Any) -> Any:
    """Set the masks of ``out`` as ``Layer.__call__`` does: a layer that supports masking fills the
    masks its call did not set with ``compute_mask``; any other layer sets none (Keras drops the mask)."""
    if not getattr(layer, "supports_masking", False):
        return out
    flat = [d for d in _flat(list(out.values()) if isinstance(out, dict) else out) if isinstance(d, Dual)]
    if flat and all(d.mask is not None for d in flat):
        return out  # the call set them (Masking, Multiply)
    masks = layer.compute_mask(dual.side(first, 0), previous_mask)
    if masks is None:
        return out
    masks_r = layer.compute_mask(dual.side(first, 1), previous_mask)
    for d, m, m_r in zip(flat, keras_tree.flatten(masks), keras_tree.flatten(masks_r), strict=False):
        if d.mask is None and m is not None:
            d.mask = m
            run.compare(m, m_r)
    return out


def call_layer(layer: Any, run: Run, *args: Any, **kwargs: Any) -> Any:
    """One layer (or nested model, or keras op) on Duals.

    Masks follow Keras 3 (``Layer.__call__``, see :func:`keras_masks` and :func:`_output_masks`): a
    layer's ``call`` gets the mask Keras would give it, a layer that does not support masking drops it,
    keras ops keep none. Masks are computed on the explained input and used on both sides, so a
    reference is read with the mask of the input it is paired with.
    """
    kwargs.pop("training", None)
    chosen = [a for a in _flat([*args, *kwargs.values()]) if isinstance(a, dual.PickedIndices)]
    if chosen:
        return _picked_use(layer, run, chosen[0], args, kwargs)
    if _is_mask_op(layer):
        run.masked = True
        out = layer(*dual.side(args, 0), **dual.side(kwargs, 0))
        if any(isinstance(a, Dual) for a in _flat([*args, *kwargs.values()])):
            run.compare(out, layer(*dual.side(args, 1), **dual.side(kwargs, 1)))
        return run.computed_from_masks(out)
    if kops.is_keras_op(layer):
        if not any(isinstance(a, Dual) for a in _flat([*args, *kwargs.values()])):
            out = layer(*args, **kwargs)  # on masks or constants only (Concatenate's compute_mask in the graph)
            if any(isinstance(a, tf.Tensor) for a in _flat([*args, *kwargs.values()])):
                return run.computed_from_masks(out)  # computed from masks: read on the explained input
            # made from Python values alone (ops.zeros((n, units)), a cell's get_initial_state): a constant the
            # model makes, the same on both sides
            return keras_tree.map_structure(lambda t: Dual(_bare(t), _bare(t)) if isinstance(t, tf.Tensor) else t, out)
        values = [v for v in _flat([*args, *kwargs.values()]) if isinstance(v, Dual)]
        tokens = [v for v in values if isinstance(v, TokenDual)]
        if tokens and type(layer).__name__ == "Cast" and str(layer.dtype) == "bool":
            out = layer(*dual.side(args, 0), **dual.side(kwargs, 0))  # token ids (0/1) cast to a mask: a mask op
            run.compare(out, layer(*dual.side(args, 1), **dual.side(kwargs, 1)))
            return out
        structural = type(layer).__name__ in kops.STRUCTURAL and not (type(layer).__name__ == "Cast" and str(layer.dtype).startswith(("float", "bfloat")))
        if tokens and len(tokens) == len(values) and structural:  # token ids (or an integer mask) moved around
            x, r = layer(*dual.side(args, 0), **dual.side(kwargs, 0)), layer(*dual.side(args, 1), **dual.side(kwargs, 1))
            return TokenDual(x, r, tokens[0].index)
        _no_tokens(layer, *tokens)
        try:
            out = kops.call_op(layer, run, args, kwargs, _unsupported)
        except Exception as error:
            if not _is_refusal(error):
                raise
            out = unsupported_in(layer, run, _refusal_reason(error), lambda: kops.both(layer, args, kwargs))
        if isinstance(out, Dual) and out.mask is None:
            for value in _flat([*args, *kwargs.values()]):  # an op that returns its input keeps that tensor's mask
                if isinstance(value, Dual) and value.x is out.x:
                    out.mask = value.mask
        return out
    if not any(isinstance(a, Dual) for a in _flat([*args, *kwargs.values()])) and not isinstance(layer, (keras.Sequential, Functional)):
        out = layer(*args, **kwargs)  # on constants only (positions from ops.arange): a constant, the same on both sides
        return keras_tree.map_structure(lambda t: Dual(_bare(t), _bare(t)) if isinstance(t, tf.Tensor) else t, out)
    if any(isinstance(a, tf.Tensor) and id(a) in run.from_masks for a in _flat(args)):
        raise _unsupported(layer, "a tensor computed from a mask reaches this layer as data")
    # constants of the model's graph (a cell loop's zero initial states): the same on both sides
    args = keras_tree.map_structure(lambda a: Dual(a, a) if isinstance(a, tf.Tensor) else a, args)
    if not isinstance(layer, (keras.Sequential, Functional)):
        dtype = getattr(layer, "input_dtype", None) if getattr(layer, "autocast", True) else None
        if dtype is not None:
            args = tuple(_cast(a, dtype) for a in args)  # keras casts floating inputs to the layer's dtype
            kwargs = {key: _cast(value, dtype) for key, value in kwargs.items()}
    call_mask, previous_mask, first = keras_masks(layer, args, kwargs)
    kwargs.pop("mask", None)
    if call_mask is not None and any(m is not None for m in keras_tree.flatten(call_mask)):
        run.masked = True
    out = _output_masks(layer, run, _call_layer(layer, run, call_mask, *args, **kwargs), first, previous_mask)
    if any(isinstance(d, Dual) and d.mask is not None for d in keras_tree.flatten(out)):
        run.masked = True  # the reference side is read with the input side's mask from here on
    return out


def _picked_use(layer: Any, run: Run, index: dual.PickedIndices, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A use of indices picked from an input-dependent tensor (``argmax``, ``top_k``'s): a keras op or an
    ``Embedding`` by the picked-index rules (rnnshap/engines/keras/picked.py); anything else is refused."""
    if kops.is_keras_op(layer) and not _is_mask_op(layer):

        def by_rule(new_args: tuple[Any, ...], new_kwargs: dict[str, Any]) -> Any:
            return call_layer(layer, run, *new_args, **new_kwargs)

        try:
            return picked.use(layer, args, kwargs, by_rule, _unsupported)
        except Exception as error:
            if not _is_refusal(error):
                raise
            return unsupported_in(layer, run, _refusal_reason(error), lambda: kops.both(layer, args, kwargs))
    if isinstance(layer, L.Embedding) and len(args) == 1 and args[0] is index and not kwargs:
        return picked.select(lambda _, i: _bare(layer(i)), None, index, lambda t: t[..., None])  # greedy decoding
    how = "compares" if _is_mask_op(layer) else "reads as data"
    why = f"it {how} the indices {index.origin} picked from an input-dependent tensor; {picked.ATTRIBUTED}"
    if kops.is_keras_op(layer):  # refused with the model's other refusals, by its path (lambda > op)
        return unsupported_in(layer, run, why, lambda: kops.both(layer, args, kwargs))
    raise _unsupported(layer, why)


def _bare(t: tf.Tensor) -> tf.Tensor:
    """``t`` without the Keras mask a real layer call attached to it (the Duals carry masks)."""
    if keras_backend.get_keras_mask(t) is not None:
        keras_backend.set_keras_mask(t, None)
    return t


def _call_layer(layer: Any, run: Run, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(layer, (keras.Sequential, Functional)):
        inputs = list(args[0]) if isinstance(args[0], (list, tuple)) else [args[0]]
        if call_mask is not None:  # Functional.call sets the masks it is given on its inputs
            for index, mask in enumerate(keras_tree.flatten(call_mask)[: len(inputs)]):
                if mask is not None and isinstance(inputs[index], Dual):
                    inputs[index] = _with_mask(inputs[index], mask)
        return run_model(layer, inputs, run)
    if isinstance(layer, L.Embedding):
        (tokens,) = args
        if not isinstance(tokens, TokenDual):
            raise _integer_input_error(-1, layer) if not isinstance(tokens, Dual) else _embedding_error(layer, tokens)
        ex, er = _bare(layer(tokens.x)), _bare(layer(tokens.r))
        if run.tape is not None:
            run.tape.watch(ex)
        run.embedded.append((tokens.index, ex, er))
        return Dual(ex, er)
    if isinstance(layer, L.MultiHeadAttention):  # its attention_mask may be a model input (token ids, 0/1)
        _no_tokens(layer, *_flat(args[:3]), *(kwargs.get(k) for k in ("query", "value", "key")))
        return attention.multi_head_attention(layer, run, call_layer, *args, **kwargs)
    if (kind := trace.traced_kind(layer)) is not None:  # its call() may take token ids (to an Embedding inside)
        takes_mask = layer._fn_expects_mask_arg if kind == "lambda" else layer._call_has_mask_arg
        if call_mask is not None and any(m is not None for m in keras_tree.flatten(call_mask)) and takes_mask:
            return unsupported_in(layer, run, "a Keras mask reaches its call(), which takes it; rnnshap traces call() without masks", lambda: _plain(layer, args, kwargs))
        run.scope.append(f"{layer.name} ({type(layer).__name__})")
        try:
            return trace.call_traced(layer, run, args, kwargs, sys.modules[__name__])
        except trace.TraceError as error:
            return unsupported_in(layer, run, str(error), lambda: _plain(layer, args, kwargs))
        finally:
            run.scope.pop()
    _no_tokens(layer, *_flat([*args, *kwargs.values()]))
    if isinstance(layer, (L.Attention, L.AdditiveAttention)):
        return attention.attention(layer, run, *args, **{**kwargs, "mask": call_mask})
    if isinstance(layer, L.LayerNormalization):
        return attention.layer_normalization(layer, args[0])
    if isinstance(layer, L.GroupNormalization):
        return attention.group_normalization(layer, args[0])
    if isinstance(layer, _NORMALIZATION):  # RMSNormalization
        return attention.rms_normalization(layer, args[0])
    if isinstance(layer, L.EinsumDense):
        return attention.einsum_dense(layer, args[0], activate)
    if isinstance(layer, L.Masking):
        (value,) = args
        keep = tf.reduce_any(tf.not_equal(value.x, layer.mask_value), axis=-1)
        run.compare(keep, tf.reduce_any(tf.not_equal(value.r, layer.mask_value), axis=-1))
        weight = tf.cast(keep[..., None], value.x.dtype)
        return Dual(value.x * weight, value.r * weight, keep)  # Masking's call sets the mask itself
    uses_mask = call_mask is not None and any(m is not None for m in keras_tree.flatten(call_mask))
    if isinstance(layer, _LINEAR):
        (value,) = args
        if layer._call_has_mask_arg:
            kwargs["mask"] = call_mask
        return value.map(lambda t: _bare(layer(t, training=False, **kwargs)))
    if uses_mask and layer._call_has_mask_arg and not isinstance(layer, (L.RNN, L.Bidirectional, L.Softmax, L.TimeDistributed)):
        raise _unsupported(layer, "a Keras mask reaches this layer, which uses it; rnnshap has no rule for that")
    if isinstance(layer, _MERGE):
        (values,) = args
        return Dual(layer([v.x for v in values]), layer([v.r for v in values]))
    if isinstance(layer, L.Multiply):
        (values,) = args
        if len(values) > 2:
            raise _unsupported(layer, "Multiply of more than two inputs (the pairwise Shapley rule is not exact for three)")
        return _masked_product(values) if any(v.mask is not None for v in values) else dual.product(*values)
    if isinstance(layer, L.Dense):
        (value,) = args
        u = value.map(lambda t: _dense(layer, t))
        return activate(layer.activation, u)
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        (value,) = args
        return activate(layer.activation, value.map(lambda t: _conv(layer, t)))
    if isinstance(layer, L.Activation):
        (value,) = args
        return activate(layer.activation, value)
    if isinstance(layer, L.TimeDistributed):
        (value,) = args
        batch, steps = tf.shape(value.x)[0], value.x.shape[1]
        inner_kwargs = {}
        if uses_mask and layer.layer._call_has_mask_arg:  # TimeDistributed hands each step its mask
            inner_kwargs["mask"] = tf.reshape(call_mask, (-1, *call_mask.shape[2:]))
        inner = call_layer(layer.layer, run, value.map(lambda z: tf.reshape(z, (-1, *z.shape[2:]))), **inner_kwargs)
        return Dual(*(tf.reshape(z, tf.concat([[batch, steps], tf.shape(z)[1:]], 0)) for z in (inner.x, inner.r)))
    if isinstance(layer, _GLOBAL_MAX):
        (value,) = args
        first = layer.data_format == "channels_first"
        value = _channels_last(value) if first else value
        spatial = value.x.shape[1:-1]
        flat = value.map(lambda t: tf.reshape(t, (-1, int(np.prod(spatial)), t.shape[-1])))
        pooled = dual.max_over(flat, 1, keepdims=False)
        if layer.keepdims:
            pooled = pooled.map(lambda t: tf.reshape(t, (-1, *([1] * len(spatial)), t.shape[-1])))
            return _channels_first(pooled) if first else pooled
        return pooled
    if isinstance(layer, _WINDOW_MAX):
        (value,) = args
        if layer.data_format == "channels_first":
            return _channels_first(_window_max(layer, _channels_last(value)))
        return _window_max(layer, value)
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.PReLU, L.ELU)):
        (value,) = args
        elu = isinstance(layer, L.ELU)  # (smooth but for its second derivative at 0, and its first where alpha ≠ 1)
        return dual.rescale(lambda t: _bare(layer(t)), value, smooth=elu, kinks=(0.0,) if elu else ())
    if isinstance(layer, L.Softmax):
        (value,) = args
        axis = layer.axis
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                raise _unsupported(layer, "softmax over several axes")
            axis = axis[0]
        if uses_mask:  # Softmax's call puts a large negative number at masked positions, on both sides
            keep = call_mask if call_mask.dtype == tf.bool else tf.greater(call_mask, tf.cast(0.5, call_mask.dtype))
            floor = tf.cast(_large_negative(value.x.dtype), value.x.dtype)
            value = value.map(lambda t: tf.where(keep, t, floor))
        return dual.softmax(value, axis)
    if isinstance(layer, L.Bidirectional):
        kwargs["mask"] = call_mask
        return bidirectional(layer, run, *args, **kwargs)
    if isinstance(layer, _RECURRENT_CELLS):
        return cell_step(layer, *args, **kwargs)
    if isinstance(layer, L.RNN):
        kwargs["mask"] = call_mask
        return recurrent(layer, *args, run=run, **kwargs)
    why = problem(layer) or f"{type(layer).__name__} has no rule in rnnshap's Keras support"
    raise _unsupported(layer, why)


def _windows(spatial: tuple[int, ...], pool: tuple[int, ...], strides: tuple[int, ...], same: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """For a pooling over ``spatial`` positions: the flat position of every element of every window,
    ``(windows, window size)``, with ``prod(spatial)`` where a window reaches into the padding; and
    the output's spatial shape. Padding as TensorFlow's "SAME" (the extra one at the end)."""
    per_axis, out_shape = [], []
    for n, p, s in zip(spatial, pool, strides, strict=True):
        out = -(-n // s) if same else (n - p) // s + 1
        before = max((out - 1) * s + p - n, 0) // 2 if same else 0
        positions = np.arange(out)[:, None] * s - before + np.arange(p)[None, :]  # (out, p)
        per_axis.append(positions)
        out_shape.append(out)
    grids = np.meshgrid(*[np.arange(o) for o in out_shape], *[np.arange(p) for p in pool], indexing="ij")
    axes = len(spatial)
    coordinates = [per_axis[a][grids[a], grids[axes + a]] for a in range(axes)]
    inside = np.all([(c >= 0) & (c < n) for c, n in zip(coordinates, spatial, strict=True)], axis=0)
    flat = np.ravel_multi_index([np.clip(c, 0, n - 1) for c, n in zip(coordinates, spatial, strict=True)], spatial)
    flat = np.where(inside, flat, int(np.prod(spatial)))
    return flat.reshape(int(np.prod(out_shape)), int(np.prod(pool))), tuple(out_shape)


def _channels_last(value: Dual) -> Dual:
    """(N, C, *spatial) → (N, *spatial, C) on both sides: a linear move."""
    order = [0, *range(2, len(value.x.shape)), 1]
    return value.map(lambda t: tf.transpose(t, order))


def _channels_first(value: Dual) -> Dual:
    """(N, *spatial, C) → (N, C, *spatial) on both sides: a linear move."""
    rank = len(value.x.shape)
    return value.map(lambda t: tf.transpose(t, [0, rank - 1, *range(1, rank - 1)]))


def _window_max(layer: Any, value: Dual) -> Dual:
    """``MaxPooling1D/2D/3D`` (channels last; a channels_first layer's input is moved there and back): every window gathered (a linear move, padding at the
    dtype's lowest value, never a window's maximum where the window holds a value), then each window's
    maximum by shap's max-pool rule, as the PyTorch engine's ``max_pool`` rule routes it."""
    spatial = tuple(int(d) for d in value.x.shape[1:-1])
    index, out_shape = _windows(spatial, tuple(layer.pool_size), tuple(layer.strides), layer.padding == "same")
    channels = int(value.x.shape[-1])
    lowest = value.x.dtype.min

    def windows(t: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(t, (-1, int(np.prod(spatial)), channels))
        padded = tf.concat([flat, tf.fill((tf.shape(flat)[0], 1, channels), tf.cast(lowest, t.dtype))], 1)
        return tf.gather(padded, index, axis=1)  # (N, windows, window size, channels)

    pooled = dual.max_over(value.map(windows), 2, keepdims=False)
    return pooled.map(lambda t: tf.reshape(t, (-1, *out_shape, channels)))


def _plain(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The layer itself on each side (for the probe that lists refusals; never attributed)."""
    x = layer(*dual.side(args, 0), **dual.side(kwargs, 0))
    r = layer(*dual.side(args, 1), **dual.side(kwargs, 1))
    return keras_tree.map_structure(lambda a, b: Dual(_bare(a), _bare(b)), x, r)


def _large_negative(dtype: tf.DType) -> float:
    from keras.src.layers.activations.softmax import _large_negative_number

    return float(_large_negative_number(dtype.name))


def _with_mask(value: Dual, mask: Any) -> Dual:
    copy = TokenDual(value.x, value.r, value.index) if isinstance(value, TokenDual) else Dual(value.x, value.r)
    copy.mask = mask
    return copy


def _masked_product(values: list[Dual]) -> Dual:
    """Keras's Multiply of masked inputs: masked entries count as 1, and where every input is masked the
    product is 0; the masks (of the input side) hold on both sides, the product is the Shapley rule."""
    factors, output_mask = [], None
    every = all(v.mask is not None for v in values)
    for v in values:
        if v.mask is None:
            factors.append(v)
            continue
        keep = tf.broadcast_to(tf.expand_dims(v.mask, -1), tf.shape(v.x))
        factors.append(Dual(tf.where(keep, v.x, tf.ones_like(v.x)), tf.where(keep, v.r, tf.ones_like(v.r))))
        if every:
            output_mask = keep if output_mask is None else tf.logical_or(output_mask, keep)
    out = dual.product(*factors)
    if output_mask is None:
        return out
    zeros = tf.zeros_like(out.x)
    return Dual(tf.where(output_mask, out.x, zeros), tf.where(output_mask, out.r, zeros), tf.reduce_any(output_mask, axis=-1))


def _cast(value: Any, dtype: str) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, Dual) and not isinstance(value, TokenDual) and value.x.dtype.is_floating and value.x.dtype.name != dtype:
        return Dual(tf.cast(value.x, dtype), tf.cast(value.r, dtype), value.mask)
    if isinstance(value, tf.Tensor) and value.dtype.is_floating and value.dtype.name != dtype:
        return tf.cast(value, dtype)  # a floating tensor argument (an explicit float mask) is cast too
    return value


def _embedding_error(layer: Any, tokens: Dual) -> Exception:
    from ...errors import InputError

    fractional = [t for t in (tokens.x, tokens.r) if bool(tf.reduce_any(tf.not_equal(t, tf.round(t))))]
    if fractional:
        example = float(tf.boolean_mask(fractional[0], tf.not_equal(fractional[0], tf.round(fractional[0])))[0])
        return InputError(
            f"Embedding {layer.name!r} receives fractional values ({example:g}): Keras casts them to integer ids, a "
            "step function of the values, which has no multiplier. Pass the token ids as integers (an integer array), "
            "or compute the Embedding's input inside the model from integers only."
        )
    return InputError(
        f"Embedding {layer.name!r} reads floating point values (a floating keras.Input, or a tensor computed inside "
        "the model); rnnshap attributes token ids at an Embedding that reads an integer model input directly: declare "
        "keras.Input(..., dtype='int32') where the model declares its inputs, and pass the token ids as an integer array."
    )


def _unsupported(layer: Any, why: str) -> Exception:
    return refusal([(f"{layer.name} ({type(layer).__name__})", why)])


def refusal(ops: list[tuple[str, str]]) -> Exception:
    """An UnsupportedOperationError for Keras layers, listing each one by name."""
    from ...errors import UnsupportedOperationError

    error = UnsupportedOperationError(ops)
    lines = "\n".join(f"  - {name}: {why}" for name, why in ops)
    error.args = (
        f"rnnshap cannot attribute {len(ops)} layer(s) of this Keras model exactly:\n{lines}\n"
        "rnnshap refuses rather than return attributions that do not add up. Supported: Dense, EinsumDense, Conv1D/2D/3D, "
        "Embedding, Activation/ReLU/Softmax, LSTM/GRU/SimpleRNN, RNN over their cells or StackedRNNCells, "
        "Bidirectional, Masking, Attention, AdditiveAttention, MultiHeadAttention, LayerNormalization, GroupNormalization, Normalization, "
        "linear reshaping, pooling (average, max, global max), merging and dropout layers, Multiply of two inputs, keras ops "
        "(rnnshap/engines/keras/kops.py), Lambda layers and Layer/Model subclasses whose call() traces into those, and "
        "Functional/Sequential models of them.",
    )
    return error


def _is_refusal(error: Exception) -> bool:
    from ...errors import UnsupportedOperationError

    return isinstance(error, UnsupportedOperationError)


def _refusal_reason(error: Exception) -> str:
    ops = getattr(error, "ops", None)
    return "; ".join(why for _, why in ops) if ops else str(error)


def unsupported_in(layer: Any, run: Run, why: str, fallback: Any) -> Any:
    """Refuse ``layer`` (an op or layer without a rule) by name, or, in the probe that lists every
    refusal of a model (``run.collect``), record it and go on with ``fallback()`` (its values on
    both sides; the probe's attributions are never used)."""
    own = f"{layer.name} ({type(layer).__name__})"
    name = " > ".join(run.scope if run.scope and run.scope[-1] == own else [*run.scope, own])
    if run.collect is None:
        raise refusal([(name, why)])
    entry = (name, why)
    if entry not in run.collect:
        run.collect.append(entry)
    return fallback()


def activate(fn: Any, u: Dual) -> Dual:
    """The rule of an activation function (a keras activation) on ``u``."""
    if fn is None:
        return u
    name = _activation_name(fn)
    if name == "linear":
        return u
    if name == "sigmoid":
        return dual.sigmoid(u)
    if name == "tanh":
        return dual.tanh(u)
    if name in _STRUCTURED:
        return _STRUCTURED[name](u, -1)
    entry = _ELEMENTWISE.get(name)
    if entry is not None:
        if entry.family == "secant":
            unary, slope = dual.SLOPES_BY_NAME[entry.name]
            return dual.secant(unary or fn, u, slope)
        near = getattr(dual, f"{entry.near}_secant_near") if entry.near else None
        return dual.rescale(fn, u, smooth=entry.smooth, near=near, kinks=entry.kinks if entry.smooth else ())
    raise ValueError(activation_problem(fn))


def _weight(variable: Any, dtype: tf.DType) -> tf.Tensor:
    """A layer's variable as its call reads it: cast to the compute dtype (mixed precision policies)."""
    value = tf.convert_to_tensor(variable)
    return value if value.dtype == dtype else tf.cast(value, dtype)


def _dense(layer: Any, t: tf.Tensor) -> tf.Tensor:
    out = tf.tensordot(t, _weight(layer.kernel, t.dtype), [[t.shape.rank - 1], [0]])
    return out + _weight(layer.bias, t.dtype) if layer.use_bias else out


def _conv(layer: Any, t: tf.Tensor) -> tf.Tensor:
    if layer.padding == "causal":  # Conv1D pads on the left, then convolves with "valid" padding
        t = tf.pad(t, layer._compute_causal_padding())
        out = keras.ops.conv(
            t, _weight(layer.kernel, t.dtype), strides=list(layer.strides), padding="valid", dilation_rate=layer.dilation_rate, data_format=layer.data_format
        )
    else:
        out = layer.convolution_op(t, _weight(layer.kernel, t.dtype))
    if layer.use_bias:
        shape = (1,) * (layer.rank + 1) + (layer.filters,) if layer.data_format == "channels_last" else (1, layer.filters) + (1,) * layer.rank
        out = out + tf.reshape(_weight(layer.bias, t.dtype), shape)
    return out


# -- recurrent layers ----------------------------------------------------------------------------
def _matmul(t: tf.Tensor, w: Any) -> tf.Tensor:
    return tf.tensordot(t, _weight(w, t.dtype), [[t.shape.rank - 1], [0]])


def _zeros(like: tf.Tensor, units: int) -> tf.Tensor:
    return tf.zeros((tf.shape(like)[0], units), dtype=like.dtype)


def _split(d: Dual, parts: int) -> list[Dual]:
    xs, rs = tf.split(d.x, parts, axis=-1), tf.split(d.r, parts, axis=-1)
    return [Dual(a, b) for a, b in zip(xs, rs, strict=True)]


def _cell_sequence(
    cell: Any, seq: Dual, states: list[Dual], mask: tf.Tensor | None = None, zero_output: bool = False, grid: tuple[int, int, int] | None = None, zero_start: bool = False
) -> tuple[list[Dual], list[Dual]]:
    """One cell over all steps of ``seq`` (B, T, F): its outputs per step and its final states.

    An LSTM or GRU cell from zero states without a mask, in a pass over a grid of pairs, takes the
    fast path of ``fused.py``. Otherwise the input projection of all steps is one product; for sequences
    of at least :data:`COMPILE_MIN_STEPS` steps each step runs as one compiled ``tf.function``
    (traced once per cell and batch shape, recorded by the gradient tape as one operation); shorter
    ones run eagerly, where tracing would cost more than it saves.
    """
    if fused.applies(cell, mask, zero_start, grid, int(seq.x.shape[1]), int(seq.x.shape[0])):
        assert grid is not None
        return (fused.lstm if isinstance(cell, L.LSTMCell) else fused.gru)(cell, seq, grid, _weight)
    projected = seq.map(lambda t: _matmul(t, cell.kernel))
    if cell.use_bias:
        bias = _weight(cell.bias, projected.x.dtype)
        input_bias = bias[0] if isinstance(cell, L.GRUCell) and cell.reset_after else bias
        projected = projected.map(lambda t: t + input_bias)
    step_fn = _compiled_step(cell) if seq.x.shape[1] >= COMPILE_MIN_STEPS else partial(_eager_step, cell)
    outputs = []
    flat = [t for state in states for t in (state.x, state.r)]
    previous = [tf.zeros_like(flat[0]), tf.zeros_like(flat[1])]
    for step in range(seq.x.shape[1]):
        new = list(step_fn(projected.x[:, step], projected.r[:, step], *flat))
        if mask is None:
            flat = new
        else:  # masked steps carry the states and output the previous output (or zeros)
            keep = mask[:, step, None]
            previous = [tf.where(keep, n, tf.zeros_like(n) if zero_output else p) for n, p in zip(new[:2], previous, strict=True)]
            flat = [tf.where(keep, n, old) for n, old in zip(new, flat, strict=True)]
            new = previous + new[2:]
        outputs.append(Dual(new[0], new[1]))
    return outputs, [Dual(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


#: sequences at least this long run each step as a compiled tf.function
COMPILE_MIN_STEPS = 32

_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _compiled_step(cell: Any) -> Any:
    if cell not in _COMPILED:

        _COMPILED[cell] = tf.function(partial(_eager_step, cell), reduce_retracing=True)
    return _COMPILED[cell]


def _eager_step(cell: Any, p_x: tf.Tensor, p_r: tf.Tensor, *flat: tf.Tensor) -> list[tf.Tensor]:
    states = [Dual(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return [t for state in _step(cell, Dual(p_x, p_r), states) for t in (state.x, state.r)]


def _step(cell: Any, p: Dual, states: list[Dual]) -> list[Dual]:
    """One step of ``cell`` on both sides from the projected input ``p`` (input bias included)."""
    recurrent_kernel = _weight(cell.recurrent_kernel, p.x.dtype)
    act = lambda u: activate(cell.activation, u)
    if isinstance(cell, L.LSTMCell):
        h, c = states
        z = p + h.map(lambda t: tf.matmul(t, recurrent_kernel))
        zi, zf, zc, zo = _split(z, 4)
        ra = lambda u: activate(cell.recurrent_activation, u)
        i, f, o = ra(zi), ra(zf), ra(zo)
        c = dual.product(f, c) + dual.product(i, act(zc))
        return [dual.product(o, act(c)), c]
    if isinstance(cell, L.GRUCell):
        (h,) = states
        units = cell.units
        ra = lambda u: activate(cell.recurrent_activation, u)
        px_z, px_r, px_h = _split(p, 3)
        if cell.reset_after:
            rec = h.map(lambda t: tf.matmul(t, recurrent_kernel))
            if cell.use_bias:
                recurrent_bias = _weight(cell.bias, p.x.dtype)[1]
                rec = rec.map(lambda t: t + recurrent_bias)
            rz, rr, rh = _split(rec, 3)
            z, r = ra(px_z + rz), ra(px_r + rr)
            hh = act(px_h + dual.product(r, rh))
        else:
            rec = h.map(lambda t: tf.matmul(t, recurrent_kernel[:, : 2 * units]))
            rz, rr = _split(rec, 2)
            z, r = ra(px_z + rz), ra(px_r + rr)
            hh = act(px_h + dual.product(r, h).map(lambda t: tf.matmul(t, recurrent_kernel[:, 2 * units :])))
        one_minus_z = z.map(lambda t: 1 - t)
        return [dual.product(z, h) + dual.product(one_minus_z, hh)]
    (h,) = states  # SimpleRNNCell
    return [act(p + h.map(lambda t: tf.matmul(t, recurrent_kernel)))]


def cell_step(cell: Any, inputs: Dual, states: Any, **kwargs: Any) -> Any:
    """One step of a cell called as a layer: ``(output, new_states)`` like the cell's own call."""
    if kwargs:
        raise _unsupported(cell, f"call arguments {sorted(kwargs)} are not supported")
    nested = isinstance(states, (list, tuple))
    given = list(states) if nested else [states]
    if len(given) != _state_count(cell):
        raise _unsupported(cell, f"expected {_state_count(cell)} state tensor(s), got {len(given)}")
    outputs, new_states = _cell_sequence(cell, inputs.map(lambda t: t[:, None]), given)
    return outputs[0], (new_states if nested else new_states[0])


def _state_count(cell: Any) -> int:
    return 2 if isinstance(cell, (L.LSTMCell, *_CONV_CELLS)) else 1


def _conv_zeros(cell: Any, seq: Dual) -> Dual:
    """ConvLSTM's zero state: shaped like the input convolution of one step (its spatial output, ``filters``)."""
    kernel = _weight(cell.kernel, seq.x.dtype)[..., : cell.filters]
    zeros = tf.zeros_like(cell.input_conv(seq.x[:, 0], kernel, None, padding=cell.padding))
    return Dual(zeros, tf.zeros_like(zeros))


def _conv_lstm_sequence(cell: Any, seq: Dual, states: list[Dual]) -> tuple[list[Dual], list[Dual]]:
    """ConvLSTM's cell over every step of ``seq`` (B, T, *spatial, channels), as keras' ConvLSTMCell.call:
    the gates from an input and a recurrent convolution (linear), activated by their rules, the state's
    products by the product rule."""
    dtype = seq.x.dtype
    kernel, recurrent_kernel = _weight(cell.kernel, dtype), _weight(cell.recurrent_kernel, dtype)
    bias = _weight(cell.bias, dtype) if cell.use_bias else None
    act = lambda u: activate(cell.activation, u)  # noqa: E731
    ra = lambda u: activate(cell.recurrent_activation, u)  # noqa: E731
    h, c = states
    outputs = []
    for step in range(seq.x.shape[1]):
        x = seq.map(lambda t: t[:, step])
        projected = x.map(lambda t: cell.input_conv(t, kernel, None, padding=cell.padding))
        if bias is not None:  # (channels last: the four gates' biases along the last axis)
            projected = projected.map(lambda t: t + bias)
        z = projected + h.map(lambda t: cell.recurrent_conv(t, recurrent_kernel))
        zi, zf, zc, zo = _split(z, 4)
        i, f, o = ra(zi), ra(zf), ra(zo)
        c = dual.product(f, c) + dual.product(i, act(zc))
        h = dual.product(o, act(c))
        outputs.append(h)
    return outputs, [h, c]


def recurrent(layer: Any, sequences: Dual, initial_state: Any = None, mask: Any = None, *, run: Run | None = None, **kwargs: Any) -> Any:
    """A keras RNN layer (LSTM, GRU, SimpleRNN, RNN(cell), RNN(StackedRNNCells)) on Duals, with the
    mask its ``call`` gets (see :func:`keras_masks`)."""
    if kwargs:
        raise _unsupported(layer, f"call arguments {sorted(kwargs)} are not supported")
    if layer.stateful:
        raise _unsupported(layer, "stateful recurrent layers are not supported")
    cells = list(layer.cell.cells) if isinstance(layer.cell, L.StackedRNNCells) else [layer.cell]
    given = [] if initial_state is None else list(initial_state if isinstance(initial_state, (list, tuple)) else [initial_state])
    if isinstance(mask, (list, tuple)):
        mask = keras_tree.flatten(mask)[0]
    if mask is not None and mask.dtype != tf.bool:
        mask = tf.cast(mask, tf.bool)
    seq = sequences
    if layer.go_backwards:
        seq = seq.map(lambda t: tf.reverse(t, [1]))
        mask = None if mask is None else tf.reverse(mask, [1])
    final_states: list[Dual] = []
    outputs: list[Dual] = []
    for cell in cells:
        count = _state_count(cell)
        zero_start = not given
        if isinstance(cell, _CONV_CELLS):
            if mask is not None:
                raise _unsupported(layer, "a mask reaching a ConvLSTM layer is not supported")
            if given:
                states, given = list(given[:count]), given[count:]
            else:
                states = [_conv_zeros(cell, seq) for _ in range(count)]
            outputs, states = _conv_lstm_sequence(cell, seq, states)
            final_states += states
            seq = Dual(tf.stack([o.x for o in outputs], 1), tf.stack([o.r for o in outputs], 1))
            continue
        if given:
            states, given = list(given[:count]), given[count:]
        else:
            states = [Dual(_zeros(seq.x, cell.units), _zeros(seq.r, cell.units)) for _ in range(count)]
        grid = None if run is None or run.masked else run.grid
        outputs, states = _cell_sequence(cell, seq, states, mask, bool(getattr(layer, "zero_output_for_mask", False)), grid, zero_start)
        final_states += states
        seq = Dual(tf.stack([o.x for o in outputs], 1), tf.stack([o.r for o in outputs], 1))
    output = seq if layer.return_sequences else outputs[-1]
    if layer.return_state:
        return [output, *final_states]
    return output


def bidirectional(layer: Any, run: Run, sequences: Dual, initial_state: Any = None, mask: Any = None, **kwargs: Any) -> Any:
    forward_state = backward_state = None
    if initial_state is not None:
        half = len(initial_state) // 2
        forward_state, backward_state = initial_state[:half], initial_state[half:]
    y: Any = recurrent(layer.forward_layer, sequences, forward_state, mask=mask, run=run, **kwargs)
    y_rev: Any = recurrent(layer.backward_layer, sequences, backward_state, mask=mask, run=run, **kwargs)
    states: list[Dual] = []
    if layer.return_state:
        states = list(y[1:]) + list(y_rev[1:])
        y, y_rev = y[0], y_rev[0]
    if layer.return_sequences:
        y_rev = y_rev.map(lambda t: tf.reverse(t, [1]))
    merged: Any
    mode = layer.merge_mode
    if mode == "concat":
        merged = Dual(tf.concat([y.x, y_rev.x], -1), tf.concat([y.r, y_rev.r], -1))
    elif mode == "sum":
        merged = y + y_rev
    elif mode == "ave":
        merged = (y + y_rev).scale(0.5)
    elif mode == "mul":
        merged = dual.product(y, y_rev)
    elif mode is None:
        merged = [y, y_rev]
    else:
        raise _unsupported(layer, f"merge_mode {mode!r}")
    if layer.return_state:
        return (merged if mode is None else [merged]) + states
    return merged

