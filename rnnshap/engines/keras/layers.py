r"""Keras layers on :class:`~rnnshap.keras.dual.Dual` tensors, each by the rule of ``docs/recurrent.md``.

:func:`problem` says why a layer cannot be explained (or ``None``); :func:`run_model` runs a
Functional or Sequential model on Duals, layer by layer. Recurrent layers (``LSTM``, ``GRU``,
``SimpleRNN``, ``RNN`` over their cells or ``StackedRNNCells``, ``Bidirectional``) run both
trajectories step by step: gates by Rescale, gate ⊙ state products by the exact Shapley rule.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional

from . import dual
from .dual import Dual

L = keras.layers

#: elementwise activations by name: whether they are smooth (midpoint derivative for tiny Δ)
_ELEMENTWISE = {
    "sigmoid": True, "tanh": True, "softplus": True, "softsign": True, "elu": True, "selu": True, "gelu": True,
    "silu": True, "exponential": True, "mish": True, "hard_silu": True, "celu": True, "log_sigmoid": True,
    "relu": False, "relu6": False, "leaky_relu": False, "hard_sigmoid": False, "hard_tanh": False,
}  # fmt: skip
_STRUCTURED = {"softmax": dual.softmax, "log_softmax": dual.log_softmax}

#: layers that are linear in their input at inference: both sides run through the layer itself
_LINEAR = (
    L.Flatten, L.Reshape, L.Permute, L.RepeatVector, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D,
    L.Cropping2D, L.AveragePooling1D, L.AveragePooling2D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.UpSampling1D, L.Identity, L.BatchNormalization,
)  # fmt: skip
_MERGE = (L.Concatenate, L.Add, L.Subtract, L.Average)
_GLOBAL_MAX = (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D)
_RECURRENT_CELLS = (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)
#: boolean keras ops a Functional graph computes masks with (Masking: NotEqual + Any; Embedding: NotEqual)
_MASK_OPS = {"NotEqual", "Equal", "Any", "All", "LogicalAnd", "LogicalOr", "LogicalNot"}


class Run:
    """What one dual pass collects: the tape, and the embeddings that token inputs reach."""

    def __init__(self, tape: tf.GradientTape | None) -> None:
        self.tape = tape
        self.embedded: list[tuple[int, tf.Tensor, tf.Tensor]] = []  # (input index, input side, reference side)


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


#: keras ops (as nodes of a Functional graph) that are linear in their input-dependent arguments
_LINEAR_OPS = {
    "GetItem", "Add", "Subtract", "Negative", "Reshape", "Transpose", "Concatenate", "Stack", "Sum", "Mean",
    "Squeeze", "ExpandDims", "Flip", "Moveaxis", "Swapaxes", "Tile", "Repeat", "Cast",
}  # fmt: skip


def _is_keras_op(op: Any, names: set[str]) -> bool:
    return type(op).__name__ in names and type(op).__module__.startswith("keras.src.ops")


def _is_mask_op(op: Any) -> bool:
    return type(op).__name__ in _MASK_OPS and type(op).__module__.startswith("keras.src.ops")


def problem(layer: Any) -> str | None:
    """Why ``layer`` cannot be explained exactly, or None."""
    if _is_mask_op(layer) or _is_keras_op(layer, _LINEAR_OPS | {"Multiply"}):
        return None  # mask ops run on the explained input (see call_layer); the others are linear or a product
    if isinstance(layer, (keras.Sequential, Functional)):
        return None  # its layers are checked one by one
    if isinstance(layer, L.InputLayer) or isinstance(layer, _LINEAR + _MERGE) or isinstance(layer, L.Multiply):
        if isinstance(layer, L.BatchNormalization) and getattr(layer, "renorm", False):
            return "BatchNormalization with renorm is not supported"
        return None
    if isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D)):
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return "quantized or LoRA layers are not supported"
        return None if layer.activation is None else activation_problem(layer.activation)
    if isinstance(layer, L.Activation):
        return activation_problem(layer.activation)
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax)):
        return None
    if isinstance(layer, _GLOBAL_MAX):
        return None if layer.data_format == "channels_last" else "global max pooling with channels_first is not supported"
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
            if not isinstance(cell, _RECURRENT_CELLS):
                return f"recurrent cell {type(cell).__name__} is not supported (LSTMCell, GRUCell, SimpleRNNCell are)"
            for fn in (cell.activation, getattr(cell, "recurrent_activation", None)):
                if fn is not None and (why := activation_problem(fn)):
                    return f"{type(cell).__name__}: {why}"
        return None
    return f"{type(layer).__name__} has no rule in rnnshap's Keras support"


def problems(model: Any) -> list[tuple[str, str]]:
    """Every (layer name, reason) of ``model`` and the models inside it that cannot be explained."""
    found: list[tuple[str, str]] = []
    if not isinstance(model, (keras.Sequential, Functional)):
        return [(model.name, f"{type(model).__name__} is a subclassed Keras model; rnnshap explains Functional and Sequential models")]
    layers = model.layers if isinstance(model, keras.Sequential) else model.operations
    for layer in layers:
        if isinstance(layer, (keras.Sequential, Functional)) or isinstance(layer, keras.Model):
            found += problems(layer)
        elif (why := problem(layer)) is not None:
            found.append((f"{layer.name} ({type(layer).__name__})", why))
    return found


# -- running a model -----------------------------------------------------------------------------
def run_model(model: Any, inputs: list[Dual], run: Run) -> Any:
    """``model`` on Duals: a Dual (or the structure of the model's outputs, of Duals)."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is not None:
            return run_model(functional, inputs, run)
        (value,) = inputs
        out: Any = value
        for layer in model.layers:
            out = call_layer(layer, run, out)
        return out
    if isinstance(model, Functional):
        return model._run_through_graph(inputs, operation_fn=lambda op: (lambda *args, **kwargs: call_layer(op, run, *args, **kwargs)))
    raise TypeError(f"{type(model).__name__} is not a Functional or Sequential Keras model")


def _no_tokens(layer: Any, *values: Any) -> None:
    for value in values:
        if isinstance(value, TokenDual):
            raise _integer_input_error(value.index, layer)


def _integer_input_error(index: int, layer: Any) -> Exception:
    from ...errors import InputError

    return InputError(
        f"Input {index} holds integers and reaches layer {layer.name!r} ({type(layer).__name__}) directly: rnnshap "
        "treats integer inputs as token ids, attributed at the Embedding that reads them. Pass numbers to attribute "
        "to as floating point."
    )


def _side(values: Any, which: int) -> Any:
    """``values`` with every Dual replaced by its input side (0) or reference side (1)."""
    if isinstance(values, Dual):
        return values.x if which == 0 else values.r
    if isinstance(values, (list, tuple)):
        return type(values)(_side(v, which) for v in values)
    if isinstance(values, dict):
        return {key: _side(v, which) for key, v in values.items()}
    return values


def _flat(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        return [item for v in values for item in _flat(v)]
    return [values]


def _masks(values: Any) -> list[tf.Tensor | None]:
    if isinstance(values, (list, tuple)):
        return [m for v in values for m in _masks(v)]
    return [values.mask] if isinstance(values, Dual) else []


def call_layer(layer: Any, run: Run, *args: Any, **kwargs: Any) -> Any:
    """One layer (or nested model) on Duals.

    Masks follow Keras: the explained input's mask (from Masking or Embedding(mask_zero=True)) is
    used on both sides, so a reference is read with the mask of the input it is paired with.
    """
    kwargs.pop("training", None)
    kwargs.pop("mask", None)  # the Duals carry the mask (equal to this one)
    if _is_mask_op(layer):
        return layer(*[a.x if isinstance(a, Dual) else a for a in args], **kwargs)
    if _is_keras_op(layer, _LINEAR_OPS | {"Multiply"}):
        _no_tokens(layer, *_flat(args))
    if _is_keras_op(layer, _LINEAR_OPS):
        return Dual(layer(*_side(args, 0), **_side(kwargs, 0)), layer(*_side(args, 1), **_side(kwargs, 1)))
    if _is_keras_op(layer, {"Multiply"}):
        a, b = args
        if isinstance(a, Dual) and isinstance(b, Dual):
            return dual.product(a, b)
        return Dual(layer(*_side(args, 0)), layer(*_side(args, 1)))
    if any(isinstance(a, tf.Tensor) for a in _flat(args)):
        raise _unsupported(layer, "a tensor computed from a mask reaches this layer as data")
    masks = _masks(args)
    if any(m is not None for m in masks) and not isinstance(layer, (keras.Sequential, Functional, L.RNN, L.Bidirectional)):
        out = _call_layer(layer, run, *args, **kwargs)
        if isinstance(out, Dual):
            first = args[0]
            inputs = [v.x for v in first] if isinstance(first, (list, tuple)) else first.x
            mask_in = [v.mask for v in first] if isinstance(first, (list, tuple)) else first.mask
            out.mask = layer.compute_mask(inputs, mask_in)
        return out
    return _call_layer(layer, run, *args, **kwargs)


def _call_layer(layer: Any, run: Run, *args: Any, **kwargs: Any) -> Any:
    dtype = getattr(layer, "compute_dtype", None)
    if dtype is not None and not isinstance(layer, (keras.Sequential, Functional)):
        args = tuple(_cast(a, dtype) for a in args)  # keras casts floating inputs to the layer's dtype
        kwargs = {key: _cast(value, dtype) for key, value in kwargs.items()}
    if isinstance(layer, (keras.Sequential, Functional)):
        inputs = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        return run_model(layer, list(inputs), run)
    if isinstance(layer, L.Embedding):
        (tokens,) = args
        if not isinstance(tokens, TokenDual):
            raise _integer_input_error(-1, layer) if not isinstance(tokens, Dual) else _embedding_error(layer)
        ex, er = layer(tokens.x), layer(tokens.r)
        if run.tape is not None:
            run.tape.watch(ex)
        run.embedded.append((tokens.index, ex, er))
        return Dual(ex, er, tokens.x != 0 if layer.mask_zero else None)
    _no_tokens(layer, *args)
    if isinstance(layer, L.Masking):
        (value,) = args
        keep = tf.reduce_any(tf.not_equal(value.x, layer.mask_value), axis=-1)
        weight = tf.cast(keep[..., None], value.x.dtype)
        return Dual(value.x * weight, value.r * weight, keep)
    if isinstance(layer, _LINEAR):
        (value,) = args
        if value.mask is not None and layer._call_has_mask_arg:
            kwargs["mask"] = value.mask
        return value.map(lambda t: layer(t, training=False, **kwargs))
    if any(m is not None for m in _masks(args)) and getattr(layer, "_call_has_mask_arg", False) and not isinstance(layer, (L.RNN, L.Bidirectional)):
        raise _unsupported(layer, "a Keras mask reaches this layer, which uses it; rnnshap has no rule for that")
    if isinstance(layer, _MERGE):
        (values,) = args
        _no_tokens(layer, *values)
        return Dual(layer([v.x for v in values]), layer([v.r for v in values]))
    if isinstance(layer, L.Multiply):
        (values,) = args
        out = values[0]
        for value in values[1:]:
            if len(values) > 2:
                raise _unsupported(layer, "Multiply of more than two inputs (the pairwise Shapley rule is not exact for three)")
            out = dual.product(out, value)
        return out
    if isinstance(layer, L.Dense):
        (value,) = args
        u = value.map(lambda t: _dense(layer, t))
        return activate(layer.activation, u)
    if isinstance(layer, (L.Conv1D, L.Conv2D)):
        (value,) = args
        return activate(layer.activation, value.map(lambda t: _conv(layer, t)))
    if isinstance(layer, L.Activation):
        (value,) = args
        return activate(layer.activation, value)
    if isinstance(layer, L.TimeDistributed):
        (value,) = args
        batch, steps = tf.shape(value.x)[0], value.x.shape[1]
        inner = call_layer(layer.layer, run, value.map(lambda z: tf.reshape(z, (-1, *z.shape[2:]))))
        return Dual(*(tf.reshape(z, tf.concat([[batch, steps], tf.shape(z)[1:]], 0)) for z in (inner.x, inner.r)))
    if isinstance(layer, _GLOBAL_MAX):
        (value,) = args
        spatial = value.x.shape[1:-1]
        flat = value.map(lambda t: tf.reshape(t, (-1, int(np.prod(spatial)), t.shape[-1])))
        pooled = dual.max_over(flat, 1, keepdims=False)
        if layer.keepdims:
            pooled = pooled.map(lambda t: tf.reshape(t, (-1, *([1] * len(spatial)), t.shape[-1])))
        return pooled
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.PReLU, L.ELU)):
        (value,) = args
        return dual.rescale(lambda t: layer(t), value, smooth=isinstance(layer, L.ELU))
    if isinstance(layer, L.Softmax):
        (value,) = args
        axis = layer.axis
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                raise _unsupported(layer, "softmax over several axes")
            axis = axis[0]
        return dual.softmax(value, axis)
    if isinstance(layer, L.Bidirectional):
        return bidirectional(layer, run, *args, **kwargs)
    if isinstance(layer, _RECURRENT_CELLS):
        return cell_step(layer, *args, **kwargs)
    if isinstance(layer, L.RNN):
        return recurrent(layer, *args, **kwargs)
    why = problem(layer) or f"{type(layer).__name__} has no rule in rnnshap's Keras support"
    raise _unsupported(layer, why)


def _cast(value: Any, dtype: str) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, Dual) and not isinstance(value, TokenDual) and value.x.dtype.is_floating and value.x.dtype.name != dtype:
        return Dual(tf.cast(value.x, dtype), tf.cast(value.r, dtype), value.mask)
    return value


def _embedding_error(layer: Any) -> Exception:
    from ...errors import InputError

    return InputError(
        f"Embedding {layer.name!r} reads a tensor computed inside the model; rnnshap attributes token ids at an "
        "Embedding that reads a model input directly."
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
        "rnnshap refuses rather than return attributions that do not add up. Supported: Dense, Conv1D/2D, "
        "Embedding, Activation/ReLU/Softmax, LSTM/GRU/SimpleRNN, RNN over their cells or StackedRNNCells, "
        "Bidirectional, Masking, linear reshaping, pooling (average; global max), merging and dropout layers, Multiply of two "
        "inputs, and Functional/Sequential models of them.",
    )
    return error


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
    if name in _ELEMENTWISE:
        return dual.rescale(fn, u, smooth=_ELEMENTWISE[name])
    raise ValueError(activation_problem(fn))


def _dense(layer: Any, t: tf.Tensor) -> tf.Tensor:
    out = tf.tensordot(t, tf.convert_to_tensor(layer.kernel), [[t.shape.rank - 1], [0]])
    return out + layer.bias if layer.use_bias else out


def _conv(layer: Any, t: tf.Tensor) -> tf.Tensor:
    out = layer.convolution_op(t, layer.kernel)
    if layer.use_bias:
        shape = (1,) * (layer.rank + 1) + (layer.filters,) if layer.data_format == "channels_last" else (1, layer.filters) + (1,) * layer.rank
        out = out + tf.reshape(layer.bias, shape)
    return out


# -- recurrent layers ----------------------------------------------------------------------------
def _matmul(t: tf.Tensor, w: Any) -> tf.Tensor:
    return tf.tensordot(t, tf.convert_to_tensor(w), [[t.shape.rank - 1], [0]])


def _zeros(like: tf.Tensor, units: int) -> tf.Tensor:
    return tf.zeros((tf.shape(like)[0], units), dtype=like.dtype)


def _split(d: Dual, parts: int) -> list[Dual]:
    xs, rs = tf.split(d.x, parts, axis=-1), tf.split(d.r, parts, axis=-1)
    return [Dual(a, b) for a, b in zip(xs, rs, strict=True)]


def _cell_sequence(cell: Any, seq: Dual, states: list[Dual], mask: tf.Tensor | None = None, zero_output: bool = False) -> tuple[list[Dual], list[Dual]]:
    """One cell over all steps of ``seq`` (B, T, F): its outputs per step and its final states.

    The input projection of all steps is one product. For sequences of at least
    :data:`COMPILE_MIN_STEPS` steps each step runs as one compiled ``tf.function`` (traced once per
    cell and batch shape, recorded by the gradient tape as one operation); shorter ones run eagerly,
    where tracing would cost more than it saves.
    """
    projected = seq.map(lambda t: _matmul(t, cell.kernel))
    if cell.use_bias:
        bias = tf.convert_to_tensor(cell.bias)
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
    recurrent_kernel = tf.convert_to_tensor(cell.recurrent_kernel)
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
                recurrent_bias = tf.convert_to_tensor(cell.bias)[1]
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
    return 2 if isinstance(cell, L.LSTMCell) else 1


def recurrent(layer: Any, sequences: Dual, initial_state: Any = None, **kwargs: Any) -> Any:
    """A keras RNN layer (LSTM, GRU, SimpleRNN, RNN(cell), RNN(StackedRNNCells)) on Duals."""
    if kwargs:
        raise _unsupported(layer, f"call arguments {sorted(kwargs)} are not supported")
    if layer.stateful:
        raise _unsupported(layer, "stateful recurrent layers are not supported")
    cells = list(layer.cell.cells) if isinstance(layer.cell, L.StackedRNNCells) else [layer.cell]
    given = [] if initial_state is None else list(initial_state if isinstance(initial_state, (list, tuple)) else [initial_state])
    seq, mask = sequences, sequences.mask
    if layer.go_backwards:
        seq = seq.map(lambda t: tf.reverse(t, [1]))
        mask = None if mask is None else tf.reverse(mask, [1])
    final_states: list[Dual] = []
    outputs: list[Dual] = []
    for cell in cells:
        count = _state_count(cell)
        if given:
            states, given = list(given[:count]), given[count:]
        else:
            states = [Dual(_zeros(seq.x, cell.units), _zeros(seq.r, cell.units)) for _ in range(count)]
        outputs, states = _cell_sequence(cell, seq, states, mask, bool(getattr(layer, "zero_output_for_mask", False)))
        final_states += states
        seq = Dual(tf.stack([o.x for o in outputs], 1), tf.stack([o.r for o in outputs], 1))
    output = Dual(seq.x, seq.r, sequences.mask) if layer.return_sequences else outputs[-1]
    if layer.return_state:
        return [output, *final_states]
    return output


def bidirectional(layer: Any, run: Run, sequences: Dual, initial_state: Any = None, **kwargs: Any) -> Any:
    forward_state = backward_state = None
    if initial_state is not None:
        half = len(initial_state) // 2
        forward_state, backward_state = initial_state[:half], initial_state[half:]
    y: Any = recurrent(layer.forward_layer, sequences, forward_state, **kwargs)
    y_rev: Any = recurrent(layer.backward_layer, sequences, backward_state, **kwargs)
    states: list[Dual] = []
    if layer.return_state:
        states = list(y[1:]) + list(y_rev[1:])
        y, y_rev = y[0], y_rev[0]
    if layer.return_sequences:
        y_rev = Dual(tf.reverse(y_rev.x, [1]), tf.reverse(y_rev.r, [1]), y_rev.mask)
    merged: Any
    mode = layer.merge_mode
    if mode == "concat":
        merged = Dual(tf.concat([y.x, y_rev.x], -1), tf.concat([y.r, y_rev.r], -1), y.mask)
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
    if isinstance(merged, Dual):
        merged.mask = y.mask
    if layer.return_state:
        return (merged if mode is None else [merged]) + states
    return merged

