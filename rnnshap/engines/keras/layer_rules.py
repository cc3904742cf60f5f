r"""The Keras layer table: for each layer class rnnshap explains, why a layer of it is refused and
how it runs on :class:`~rnnshap.engines.keras.dual.Dual` tensors, each by the rule of ``docs/recurrent.md``.

:data:`RULES` maps a layer class to its :class:`LayerRule`: the ``check`` (why a layer of the class
cannot be explained exactly, or None) and the ``call`` (the layer on Duals) live together, so adding a
layer is one entry. A layer takes the entry of the first class of its MRO that has one, so a subclass
gets its keras base's rule; :func:`problem` refuses a subclass of a built-in layer that overrides
``call()`` (rnnshap re-implements the built-in and cannot follow the override), and a Layer or Model
subclass with its own ``call()``, or a ``Lambda``, runs through the trace of its call (``trace.py``).

The walker (``walker.py``) runs a model layer by layer and hands each layer to its entry's call;
the recurrent layers' rules are in ``recurrent.py``, attention and normalization in ``attention.py``.

A call is ``call(layer, run, walker, call_mask, *args, **kwargs)``: ``call_mask`` is the mask Keras
gives the layer's ``call`` (see ``walker.keras_masks``), ``walker`` the walker's entry points for
layers that run other layers. Before calling, the walker refuses token ids unless the entry
``reads_tokens``, and a mask reaching a ``call()`` that takes one unless the entry ``handles_mask``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
from keras import ops
from keras import tree as keras_tree

from . import attention, dual, kops, recurrent, trace
from .activations import activate, activation_problem, weight
from .backend import Tensor, finfo, to_numpy
from .dual import Dual
from .pass_state import Run, TokenDual, Walker, bare, flat, integer_input_error, no_tokens, plain, unsupported, unsupported_in
from .private import Functional, call_takes_mask, causal_padding, lambda_takes_mask, softmax_floor

L = keras.layers

#: ``call(layer, run, walker, call_mask, *args, **kwargs)``: the layer on Duals
LayerCall = Callable[..., Any]


@dataclass(frozen=True, eq=False)
class LayerRule:
    """One entry of the layer table."""

    #: the layer on Duals: ``call(layer, run, walker, call_mask, *args, **kwargs)``
    call: LayerCall
    #: why a layer of the class cannot be explained exactly (its settings, its activation), or None
    check: Callable[[Any], str | None] | None = None
    #: the call reads token ids itself (an Embedding, a nested model); else the walker refuses them
    reads_tokens: bool = False
    #: the call handles the Keras mask it is given; else a mask reaching a ``call()`` that takes one is refused
    handles_mask: bool = False


# -- checks ---------------------------------------------------------------------------------------
def _keras_base(layer: Any) -> str:
    return next((k.__name__ for k in type(layer).__mro__ if k.__module__.startswith("keras.")), "keras")


def _no_rule_problem(layer: Any) -> str:
    return f"{type(layer).__name__} has no rule in rnnshap's Keras support"


def _grouped_query_problem(layer: Any) -> str:
    return "GroupedQueryAttention has no rule in rnnshap (MultiHeadAttention, Attention and AdditiveAttention do)"


#: the methods of the attention and normalization layers whose computation rnnshap re-implements
_HOOKS = (
    "_compute_attention", "_masked_softmax", "_calculate_scores", "_apply_scores", "_calculate_score_mask",
    "_reshape_into_groups",
)  # fmt: skip


def _hooks_problem(layer: Any) -> str | None:
    for klass in type(layer).__mro__:
        if klass.__module__.startswith("keras."):
            break
        if changed := [name for name in _HOOKS if name in vars(klass)]:
            return f"{klass.__name__} overrides {', '.join(changed)} of {_keras_base(layer)}, which rnnshap re-implements"
    return None


def _weights_problem(layer: Any) -> str | None:
    """Dense, EinsumDense, Conv: quantized or LoRA weights are refused, and an activation without a rule."""
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return "quantized or LoRA layers are not supported"
    return None if layer.activation is None else activation_problem(layer.activation)


def _batch_norm_problem(layer: Any) -> str | None:
    return "BatchNormalization with renorm is not supported" if getattr(layer, "renorm", False) else None


def _activation_problem(layer: Any) -> str | None:
    return activation_problem(layer.activation)


def _time_distributed_problem(layer: Any) -> str | None:
    return problem(layer.layer)


def _bidirectional_problem(layer: Any) -> str | None:
    return problem(layer.forward_layer) or problem(layer.backward_layer)


def problem(layer: Any) -> str | None:
    """Why ``layer`` cannot be explained exactly, or None."""
    if kops.is_mask_op(layer):
        return None  # mask ops run on the explained input (see walker.call_layer)
    if kops.is_keras_op(layer):
        return None  # checked when it runs: an op without a rule is refused where an input-dependent tensor reaches it
    if trace.traced_kind(layer) is not None:
        return None  # its call() is traced when it runs (rnnshap/engines/keras/trace.py)
    if (custom := trace.custom_call(layer)) is not None:
        return (
            f"{custom} overrides call() of the built-in {_keras_base(layer)} layer, which rnnshap re-implements; "
            "subclass keras.layers.Layer instead (rnnshap traces the call() of Layer and Model subclasses), or build "
            "it functionally"
        )
    check = rule_of(type(layer)).check
    return None if check is None else check(layer)


def problems(model: Any) -> list[tuple[str, str]]:
    """Every (layer name, reason) of ``model`` and the models inside it that cannot be explained."""
    found: list[tuple[str, str]] = []
    if not isinstance(model, (keras.Sequential, Functional)) or trace.custom_call(model) is not None:
        if trace.traced_kind(model) is not None:
            return []  # a subclassed model: its call() is traced when it runs
        reason = f"{type(model).__name__} is not a Functional, Sequential or subclassed Keras model with its own call()"
        return [(model.name, reason)]
    layers = model.layers if isinstance(model, keras.Sequential) else model.operations
    for layer in layers:
        if isinstance(layer, (keras.Sequential, Functional)) or isinstance(layer, keras.Model):
            found += problems(layer)
        elif (why := problem(layer)) is not None:
            found.append((f"{layer.name} ({type(layer).__name__})", why))
    return found


# -- calls ----------------------------------------------------------------------------------------
def _uses_mask(call_mask: Any) -> bool:
    return call_mask is not None and any(m is not None for m in keras_tree.flatten(call_mask))


def _no_rule(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    raise unsupported(layer, problem(layer) or _no_rule_problem(layer))


def _nested_model(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    inputs = list(args[0]) if isinstance(args[0], (list, tuple)) else [args[0]]
    if call_mask is not None:  # Functional.call sets the masks it is given on its inputs
        for index, mask in enumerate(keras_tree.flatten(call_mask)[: len(inputs)]):
            if mask is not None and isinstance(inputs[index], Dual):
                inputs[index] = _with_mask(inputs[index], mask)
    return walker.run_model(layer, inputs, run)


def _with_mask(value: Dual, mask: Tensor) -> Dual:
    copy = TokenDual(value.x, value.r, value.index) if isinstance(value, TokenDual) else Dual(value.x, value.r)
    copy.mask = mask
    return copy


def _embedding(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (tokens,) = args
    if not isinstance(tokens, TokenDual):
        raise integer_input_error(-1, layer) if not isinstance(tokens, Dual) else _embedding_error(layer, tokens)
    ex, er = bare(layer(tokens.x)), bare(layer(tokens.r))
    if run.marks is not None:
        ex = run.marks.mark(ex)
    run.embedded.append((tokens.index, ex, er))
    return Dual(ex, er)


def _embedding_error(layer: Any, tokens: Dual) -> Exception:
    from ...errors import InputError

    fractional = [t for t in (tokens.x, tokens.r) if bool(ops.any(ops.not_equal(t, ops.round(t))))]
    if fractional:
        values = to_numpy(fractional[0])
        example = float(values[values != np.round(values)][0])
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


def _multi_head_attention(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    # its attention_mask may be a model input (token ids, 0/1): only its query, value and key may not
    no_tokens(layer, *flat(args[:3]), *(kwargs.get(k) for k in ("query", "value", "key")))
    return attention.multi_head_attention(layer, run, walker.call_layer, *args, **kwargs)


def _traced(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    """A Lambda or a Layer/Model subclass with its own ``call()``: through the trace of its call (which
    may take token ids, to an Embedding inside)."""
    kind = trace.traced_kind(layer)
    takes_mask = lambda_takes_mask(layer) if kind == "lambda" else call_takes_mask(layer)
    if _uses_mask(call_mask) and takes_mask:
        why = "a Keras mask reaches its call(), which takes it; rnnshap traces call() without masks"
        return unsupported_in(layer, run, why, lambda: plain(layer, args, kwargs))
    run.scope.append(f"{layer.name} ({type(layer).__name__})")
    try:
        return trace.call_traced(layer, run, args, kwargs, walker)
    except trace.TraceError as error:
        return unsupported_in(layer, run, str(error), lambda: plain(layer, args, kwargs))
    finally:
        run.scope.pop()


def _attention(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    return attention.attention(layer, run, *args, **{**kwargs, "mask": call_mask})


def _layer_normalization(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    return attention.layer_normalization(layer, args[0])


def _group_normalization(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    return attention.group_normalization(layer, args[0])


def _rms_normalization(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    return attention.rms_normalization(layer, args[0])


def _einsum_dense(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    return attention.einsum_dense(layer, args[0], activate)


def _masking(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    keep = ops.any(ops.not_equal(value.x, layer.mask_value), axis=-1)
    run.compare(keep, ops.any(ops.not_equal(value.r, layer.mask_value), axis=-1))
    weight_ = ops.cast(keep[..., None], value.x.dtype)
    return Dual(value.x * weight_, value.r * weight_, keep)  # Masking's call sets the mask itself


def _linear(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    """A layer linear in its input at inference: both sides run through the layer itself. Where Keras computes
    it narrower than its input (``dual.narrowed``: a float64 BatchNormalization or global average in float32 on
    JAX), its values are the layer's own, with the multipliers of its exact twin and Rescale on the rounding."""
    (value,) = args
    if call_takes_mask(layer):
        kwargs["mask"] = call_mask
    out = value.map(lambda t: bare(layer(t, training=False, **kwargs)))
    twin = _rounding_twin(layer, call_mask) if dual.narrowed(value.x.dtype) is not None else None
    return out if twin is None else dual.rounded(value.map(twin), out.x, out.r)


def _rounding_twin(layer: Any, call_mask: Any) -> Callable[[Tensor], Tensor] | None:
    """The exact function (in its input's dtype) of a linear layer that Keras computes in a narrower dtype, or None."""
    if isinstance(layer, L.BatchNormalization):
        return lambda t: _batch_norm_exact(layer, t)
    if isinstance(layer, (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D)) and not _uses_mask(call_mask):
        rank = 1 if isinstance(layer, L.GlobalAveragePooling1D) else 2
        axes = list(range(1, rank + 1)) if layer.data_format == "channels_last" else list(range(2, rank + 2))
        return lambda t: dual.mean(t, axes, keepdims=layer.keepdims)
    return None


def _batch_norm_exact(layer: Any, t: Tensor) -> Tensor:
    """BatchNormalization at inference (``ops.batch_normalization`` with the moving statistics), in ``t``'s dtype."""
    shape = [1] * len(t.shape)
    shape[layer.axis % len(t.shape)] = -1
    inv = ops.rsqrt(ops.reshape(weight(layer.moving_variance, t.dtype), shape) + ops.convert_to_tensor(layer.epsilon, t.dtype))
    if layer.scale:
        inv = inv * ops.reshape(weight(layer.gamma, t.dtype), shape)
    res = -ops.reshape(weight(layer.moving_mean, t.dtype), shape) * inv
    if layer.center:
        res = res + ops.reshape(weight(layer.beta, t.dtype), shape)
    return t * inv + res


def _merge(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (values,) = args
    return Dual(layer([v.x for v in values]), layer([v.r for v in values]))


def _multiply(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (values,) = args
    if len(values) > 2:
        raise unsupported(layer, "Multiply of more than two inputs (the pairwise Shapley rule is not exact for three)")
    return _masked_product(values) if any(v.mask is not None for v in values) else dual.product(*values)


def _masked_product(values: list[Dual]) -> Dual:
    """Keras's Multiply of masked inputs: masked entries count as 1, and where every input is masked the
    product is 0; the masks (of the input side) hold on both sides, the product is the Shapley rule."""
    factors, output_mask = [], None
    every = all(v.mask is not None for v in values)
    for v in values:
        if v.mask is None:
            factors.append(v)
            continue
        keep = ops.broadcast_to(ops.expand_dims(v.mask, -1), ops.shape(v.x))
        factors.append(Dual(ops.where(keep, v.x, ops.ones_like(v.x)), ops.where(keep, v.r, ops.ones_like(v.r))))
        if every:
            output_mask = keep if output_mask is None else ops.logical_or(output_mask, keep)
    out = dual.product(*factors)
    if output_mask is None:
        return out
    zeros = ops.zeros_like(out.x)
    return Dual(ops.where(output_mask, out.x, zeros), ops.where(output_mask, out.r, zeros), ops.any(output_mask, axis=-1))


def _dense(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    u = value.map(lambda t: _dense_linear(layer, t))
    return activate(layer.activation, u)


def _dense_linear(layer: Any, t: Tensor) -> Tensor:
    out = ops.tensordot(t, weight(layer.kernel, t.dtype), [[len(t.shape) - 1], [0]])
    return out + weight(layer.bias, t.dtype) if layer.use_bias else out


def _conv(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    return activate(layer.activation, value.map(lambda t: _conv_linear(layer, t)))


def _conv_linear(layer: Any, t: Tensor) -> Tensor:
    if layer.padding == "causal":  # Conv1D pads on the left, then convolves with "valid" padding
        t = ops.pad(t, causal_padding(layer))
        kernel = weight(layer.kernel, t.dtype)
        out = keras.ops.conv(
            t, kernel, strides=list(layer.strides), padding="valid", dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    else:
        out = layer.convolution_op(t, weight(layer.kernel, t.dtype))
    if layer.use_bias:
        if layer.data_format == "channels_last":
            shape = (1,) * (layer.rank + 1) + (layer.filters,)
        else:
            shape = (1, layer.filters) + (1,) * layer.rank
        out = out + ops.reshape(weight(layer.bias, t.dtype), shape)
    return out


def _depthwise_conv(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    """SeparableConv1D/2D and DepthwiseConv1D/2D: linear in their input (a depthwise convolution, then
    for the separable ones a pointwise one), so both sides run through the same convolutions."""
    (value,) = args
    return activate(layer.activation, value.map(lambda t: _depthwise_linear(layer, t)))


def _depthwise_linear(layer: Any, t: Tensor) -> Tensor:
    options = dict(strides=layer.strides, padding=layer.padding, dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    if hasattr(layer, "pointwise_kernel"):  # separable
        out = keras.ops.separable_conv(
            t, weight(layer.depthwise_kernel, t.dtype), weight(layer.pointwise_kernel, t.dtype), **options
        )
    else:
        out = keras.ops.depthwise_conv(t, weight(layer.kernel, t.dtype), **options)
    if layer.use_bias:
        shape = (1,) * (layer.rank + 1) + (-1,) if layer.data_format == "channels_last" else (1, -1) + (1,) * layer.rank
        out = out + ops.reshape(weight(layer.bias, t.dtype), shape)
    return out


def _activation(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    return activate(layer.activation, value)


def _time_distributed(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    batch, steps = ops.shape(value.x)[0], value.x.shape[1]
    inner_kwargs = {}
    if _uses_mask(call_mask) and call_takes_mask(layer.layer):  # TimeDistributed hands each step its mask
        inner_kwargs["mask"] = ops.reshape(call_mask, (-1, *call_mask.shape[2:]))
    inner = walker.call_layer(layer.layer, run, value.map(lambda z: ops.reshape(z, (-1, *z.shape[2:]))), **inner_kwargs)
    return Dual(*(ops.reshape(z, (batch, steps, *ops.shape(z)[1:])) for z in (inner.x, inner.r)))


def _global_max(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    first = layer.data_format == "channels_first"
    value = _channels_last(value) if first else value
    spatial = value.x.shape[1:-1]
    flat_ = value.map(lambda t: ops.reshape(t, (-1, int(np.prod(spatial)), t.shape[-1])))
    pooled = dual.max_over(flat_, 1, keepdims=False)
    if layer.keepdims:
        pooled = pooled.map(lambda t: ops.reshape(t, (-1, *([1] * len(spatial)), t.shape[-1])))
        return _channels_first(pooled) if first else pooled
    return pooled


def _window_max(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    if layer.data_format == "channels_first":
        return _channels_first(_window_max_last(layer, _channels_last(value)))
    return _window_max_last(layer, value)


def _windows(
    spatial: tuple[int, ...], pool: tuple[int, ...], strides: tuple[int, ...], same: bool
) -> tuple[np.ndarray, tuple[int, ...]]:
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
    flat_ = np.ravel_multi_index([np.clip(c, 0, n - 1) for c, n in zip(coordinates, spatial, strict=True)], spatial)
    flat_ = np.where(inside, flat_, int(np.prod(spatial)))
    return flat_.reshape(int(np.prod(out_shape)), int(np.prod(pool))), tuple(out_shape)


def _channels_last(value: Dual) -> Dual:
    """(N, C, *spatial) → (N, *spatial, C) on both sides: a linear move."""
    order = [0, *range(2, len(value.x.shape)), 1]
    return value.map(lambda t: ops.transpose(t, order))


def _channels_first(value: Dual) -> Dual:
    """(N, *spatial, C) → (N, C, *spatial) on both sides: a linear move."""
    rank = len(value.x.shape)
    return value.map(lambda t: ops.transpose(t, [0, rank - 1, *range(1, rank - 1)]))


def _window_max_last(layer: Any, value: Dual) -> Dual:
    """``MaxPooling1D/2D/3D`` (channels last; a channels_first layer's input is moved there and back): every
    window gathered (a linear move, padding at the dtype's lowest value, never a window's maximum where the
    window holds a value), then each window's maximum by shap's max-pool rule, as the PyTorch engine's
    ``max_pool`` rule routes it."""
    spatial = tuple(int(d) for d in value.x.shape[1:-1])
    index, out_shape = _windows(spatial, tuple(layer.pool_size), tuple(layer.strides), layer.padding == "same")
    channels = int(value.x.shape[-1])
    lowest = float(finfo(value.x.dtype).min)

    def windows(t: Tensor) -> Tensor:
        flat_ = ops.reshape(t, (-1, int(np.prod(spatial)), channels))
        padded = ops.concatenate([flat_, ops.full((ops.shape(flat_)[0], 1, channels), lowest, dtype=t.dtype)], 1)
        return ops.take(padded, index, axis=1)  # (N, windows, window size, channels)

    pooled = dual.max_over(value.map(windows), 2, keepdims=False)
    return pooled.map(lambda t: ops.reshape(t, (-1, *out_shape, channels)))


def _relu_family(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    """ReLU, LeakyReLU, PReLU, ELU: the layer itself on each side, by Rescale."""
    (value,) = args
    elu = isinstance(layer, L.ELU)  # (smooth but for its second derivative at 0, and its first where alpha ≠ 1)
    return dual.rescale(lambda t: bare(layer(t)), value, smooth=elu, kinks=(0.0,) if elu else ())


def _softmax(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Dual:
    (value,) = args
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise unsupported(layer, "softmax over several axes")
        axis = axis[0]
    if _uses_mask(call_mask):  # Softmax's call puts a large negative number at masked positions, on both sides
        keep = call_mask if call_mask.dtype == "bool" else ops.greater(call_mask, ops.cast(0.5, call_mask.dtype))
        floor = ops.cast(_large_negative(value.x.dtype), value.x.dtype)
        value = value.map(lambda t: ops.where(keep, t, floor))
    return dual.softmax(value, axis)


def _large_negative(dtype: Any) -> float:
    return softmax_floor(dtype)


def _bidirectional(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["mask"] = call_mask
    return recurrent.bidirectional(layer, run, *args, **kwargs)


def _cell(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    return recurrent.cell_step(layer, *args, **kwargs)


def _rnn(layer: Any, run: Run, walker: Walker, call_mask: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["mask"] = call_mask
    return recurrent.recurrent(layer, *args, run=run, **kwargs)


# -- the table ------------------------------------------------------------------------------------
#: a layer class without an entry (nor one in its MRO): refused by name
NO_RULE = LayerRule(_no_rule, _no_rule_problem)
#: a Lambda, or a Layer/Model subclass with its own call() (see trace.traced_kind): not by class
TRACED = LayerRule(_traced, reads_tokens=True, handles_mask=True)

_LINEAR = LayerRule(_linear, handles_mask=True)
_NESTED = LayerRule(_nested_model, reads_tokens=True, handles_mask=True)
_EMBEDDING = LayerRule(_embedding, reads_tokens=True, handles_mask=True)
_MULTI_HEAD = LayerRule(_multi_head_attention, _hooks_problem, reads_tokens=True, handles_mask=True)
_ATTENTION = LayerRule(_attention, _hooks_problem, handles_mask=True)
_MERGE = LayerRule(_merge)
_RELU_FAMILY = LayerRule(_relu_family)
_CELL = LayerRule(_cell, recurrent.cell_problem)

RULES: dict[type, LayerRule] = {
    keras.Sequential: _NESTED,
    Functional: _NESTED,
    L.InputLayer: LayerRule(_no_rule),  # (never called: the graph starts after it)
    L.Embedding: _EMBEDDING,
    L.MultiHeadAttention: _MULTI_HEAD,
    L.Attention: _ATTENTION,
    L.AdditiveAttention: _ATTENTION,
    L.LayerNormalization: LayerRule(_layer_normalization, _hooks_problem, handles_mask=True),
    L.GroupNormalization: LayerRule(_group_normalization, _hooks_problem, handles_mask=True),
    **({L.RMSNormalization: LayerRule(_rms_normalization, _hooks_problem, handles_mask=True)}
       if hasattr(L, "RMSNormalization") else {}),
    **({L.GroupQueryAttention: LayerRule(_no_rule, _grouped_query_problem)} if hasattr(L, "GroupQueryAttention") else {}),
    L.EinsumDense: LayerRule(_einsum_dense, _weights_problem, handles_mask=True),
    L.Masking: LayerRule(_masking, handles_mask=True),
    # linear in their input at inference: both sides run through the layer itself
    **dict.fromkeys((
        L.Flatten, L.Reshape, L.Permute, L.RepeatVector, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
        L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D,
        L.Cropping2D, L.AveragePooling1D, L.AveragePooling2D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
        L.UpSampling1D, L.Identity,
        L.Normalization,  # (adapted or given mean and variance: (x - mean) / sqrt(variance), or its inverse: affine)
    ), _LINEAR),  # fmt: skip
    L.BatchNormalization: LayerRule(_linear, _batch_norm_problem, handles_mask=True),
    **dict.fromkeys((L.Concatenate, L.Add, L.Subtract, L.Average), _MERGE),
    L.Multiply: LayerRule(_multiply),
    L.Dense: LayerRule(_dense, _weights_problem),
    **dict.fromkeys((L.Conv1D, L.Conv2D, L.Conv3D), LayerRule(_conv, _weights_problem)),
    **dict.fromkeys(
        (L.SeparableConv1D, L.SeparableConv2D, L.DepthwiseConv1D, L.DepthwiseConv2D), LayerRule(_depthwise_conv, _weights_problem)
    ),
    L.Activation: LayerRule(_activation, _activation_problem),
    L.TimeDistributed: LayerRule(_time_distributed, _time_distributed_problem, handles_mask=True),
    **dict.fromkeys((L.GlobalMaxPooling1D, L.GlobalMaxPooling2D), LayerRule(_global_max)),
    **dict.fromkeys((L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D), LayerRule(_window_max)),
    **dict.fromkeys((L.ReLU, L.LeakyReLU, L.PReLU, L.ELU), _RELU_FAMILY),
    L.Softmax: LayerRule(_softmax, handles_mask=True),
    L.Bidirectional: LayerRule(_bidirectional, _bidirectional_problem, handles_mask=True),
    **dict.fromkeys(recurrent.RECURRENT_CELLS, _CELL),
    L.RNN: LayerRule(_rnn, recurrent.rnn_problem, handles_mask=True),  # LSTM, GRU, SimpleRNN, ConvLSTM1D/2D/3D too
}  # fmt: skip

#: the entries the walker looks up before a traced call() (as it always has): models, Embedding, MultiHeadAttention
_BEFORE_TRACED = (_NESTED, _EMBEDDING, _MULTI_HEAD)
#: the entry each layer class runs by, found once per class (see rule_for); weak, so that a class
#: defined in a function (a test's, a user's notebook cell) is not kept alive by the cache
_BY_CLASS: weakref.WeakKeyDictionary[type, LayerRule] = weakref.WeakKeyDictionary()


def rule_of(cls: type) -> LayerRule:
    """The entry of the first class of ``cls``'s MRO that has one (:data:`NO_RULE` if none does)."""
    for klass in cls.__mro__:
        rule = RULES.get(klass)
        if rule is not None:
            return rule
    return NO_RULE


def rule_for(layer: Any) -> LayerRule:
    """The entry that runs ``layer``: its class's (:func:`rule_of`), or :data:`TRACED` for a Lambda or a
    Layer/Model subclass with its own ``call()``, which is not a nested model, Embedding or MultiHeadAttention."""
    cls = type(layer)
    rule = _BY_CLASS.get(cls)
    if rule is None:
        rule = rule_of(cls)
        if not any(rule is before for before in _BEFORE_TRACED) and trace.traced_kind(layer) is not None:
            rule = TRACED
        _BY_CLASS[cls] = rule
    return rule
