r"""Attention and normalization layers on :class:`~rnnshap.engines.keras.dual.Dual` tensors.

Each layer runs its own computation, with every nonlinear step by its rule:

- scores ``q·kᵀ`` and the weighted sum ``softmax(scores)·v`` are products of two input-dependent
  tensors: the exact two-player Shapley rule (:func:`~rnnshap.engines.keras.dual.bilinear`);
- ``tanh`` of the additive (``concat``) scores by Rescale, softmax by its decomposition;
- masks (Keras masks, ``attention_mask``, causal masks) are read on the explained input and hold on
  both sides, as everywhere in the Keras engine: a masked key gets a constant score on both sides, so
  it gets exactly zero attribution through the scores and zero weight on its value;
- layer and group normalization by :func:`~rnnshap.engines.keras.dual.standardize`, the rule of
  the PyTorch side's ``layer_norm`` and ``group_norm``.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

from . import dual, private
from .activations import weight
from .backend import Tensor, dtype_name
from .dual import Dual
from .pass_state import Run, bare

L = keras.layers


def _mask_side(value: Any, run: Run) -> Tensor | None:
    """A mask given as a tensor of the model (a Dual: a mask input, or computed from one) as a boolean
    tensor of the explained input; the reference side is recorded for the check against the model."""
    if value is None:
        return None
    if isinstance(value, Dual):
        mask_x, mask_r = ops.cast(value.x, "bool"), ops.cast(value.r, "bool")
        run.compare(mask_x, mask_r)
        return mask_x
    return ops.cast(value, "bool")


# -- Attention, AdditiveAttention ------------------------------------------------------------------
def _summed(u: Dual) -> Dual:
    """The sum over the last axis, as the model computes it (in float32 where it holds ``u`` so: see ``dual.as_model``)."""
    return dual.as_model(u.map(lambda t: ops.sum(t, -1)), lambda t: ops.sum(t, -1), u)


def attention(
    layer: keras.layers.Attention,
    run: Run,
    inputs: Any,
    mask: Any = None,
    training: Any = None,
    return_attention_scores: bool = False,
    use_causal_mask: bool = False,
) -> Any:
    """``keras.layers.Attention`` (``score_mode`` dot or concat) and ``AdditiveAttention``."""
    del training  # dropout is off at inference
    q, v = inputs[0], inputs[1]
    k = inputs[2] if len(inputs) > 2 else v
    q_mask = _mask_side(mask[0], run) if mask else None
    v_mask = _mask_side(mask[1], run) if mask else None
    dtype = q.x.dtype
    additive = isinstance(layer, L.AdditiveAttention)
    if not additive and layer.score_mode == "dot":
        scores = dual.bilinear(lambda a, b: ops.matmul(a, ops.swapaxes(b, -1, -2)), q, k)
        if layer.scale is not None:
            scale = weight(layer.scale, dtype)
            scores = scores.map(lambda t: t * scale)
    else:
        summed = q.map(lambda t: ops.expand_dims(t, -2)) + k.map(lambda t: ops.expand_dims(t, -3))
        if additive:
            scale = weight(layer.scale, dtype) if layer.use_scale else None
            squashed = dual.tanh(summed)
            if scale is not None:
                squashed = squashed.map(lambda t: scale * t)  # (a float64 scale widens the model's float32 tanh too)
            scores = _summed(squashed)
        else:
            if layer.scale is not None:
                scale = weight(layer.scale, dtype)
                summed = summed.map(lambda t: scale * t)
            score_weight = weight(layer.concat_score_weight, dtype)
            scores = _summed(dual.tanh(summed)).map(lambda t: score_weight * t)
    scores_mask = private.score_mask(layer, scores.x, v_mask, use_causal_mask)
    if scores_mask is not None:
        padding = ops.logical_not(ops.cast(scores_mask, "bool"))
        if len(padding.shape) == 2:
            padding = ops.expand_dims(padding, -2)
        max_value = ops.cast(65504.0 if dtype == "float16" else 1.0e9, dtype)
        scores = scores.map(lambda t: ops.where(padding, t - max_value, t))
    weights = dual.softmax(scores, -1)
    out = dual.bilinear(ops.matmul, weights, v)
    if q_mask is not None:
        keep = ops.expand_dims(q_mask, -1)
        out = out.map(lambda t: ops.where(keep, t, ops.zeros_like(t)))
    return (out, weights) if return_attention_scores else out


# -- MultiHeadAttention ----------------------------------------------------------------------------
def einsum_dense(
    layer: keras.layers.EinsumDense, value: Dual, activate: Callable[[Callable[..., Any] | None, Dual], Dual]
) -> Dual:
    """``EinsumDense``: the einsum with the kernel and the bias (linear), then the activation."""
    kernel = weight(layer.kernel, value.x.dtype)
    bias = None if layer.bias is None else weight(layer.bias, value.x.dtype)

    def linear(t: Tensor) -> Tensor:
        out = ops.einsum(layer.equation, t, kernel)
        return out if bias is None else out + bias

    return activate(layer.activation, value.map(linear))


def multi_head_attention(
    layer: keras.layers.MultiHeadAttention,
    run: Run,
    call_layer: Callable[..., Any],
    query: Dual,
    value: Dual,
    key: Dual | None = None,
    query_mask: Any = None,
    value_mask: Any = None,
    key_mask: Any = None,
    attention_mask: Any = None,
    return_attention_scores: bool = False,
    training: Any = None,
    use_causal_mask: bool = False,
) -> Any:
    """``keras.layers.MultiHeadAttention`` as its ``call`` computes it (Keras 3): the projections
    (``EinsumDense``, linear), the scaled dot products (Shapley), the masked softmax, the weighted sum
    of the values (Shapley), the optional gate (Shapley) and the output projection."""
    del training, query_mask  # dropout is off at inference; MHA reads the query's Keras mask itself
    if key is None:
        key = value
    parts = private.multi_head_parts(layer)
    q_mask = query.mask
    v_mask = value_mask if value_mask is not None else value.mask
    k_mask = key_mask if key_mask is not None else (key.mask if key is not value else None)
    v_mask, k_mask = _mask_side(v_mask, run), _mask_side(k_mask, run)
    given_mask = _mask_side(attention_mask, run)
    causal_only = (
        use_causal_mask
        and q_mask is None
        and v_mask is None
        and k_mask is None
        and given_mask is None
        and parts.sliding_window is None
    )
    if causal_only:
        mask = None
    else:
        mask = private.attention_mask(
            layer,
            query.x, value.x, query_mask=q_mask, value_mask=v_mask, key_mask=k_mask, attention_mask=given_mask,
            use_causal_mask=use_causal_mask,
        )
    gate = call_layer(parts.gate, run, query) if parts.gate is not None else None
    q = call_layer(parts.query, run, query)
    k = call_layer(parts.key, run, key)
    v = call_layer(parts.value, run, value)
    dot_product_path = not (parts.dropout > 0.0 or return_attention_scores or len(q.x.shape) != 4)
    half = q.x.dtype in ("float16", "bfloat16")
    scale = parts.inverse_sqrt_key_dim
    if dot_product_path:  # ops.dot_product_attention: scaled logits in float32 at least, masked by `where`
        logits = dual.bilinear(lambda a, b: ops.einsum("BTNH,BSNH->BNTS", a, b), q, k)
        if half:
            logits = logits.map(lambda t: ops.cast(t, "float32"))
        logits = logits.map(lambda t: t * ops.cast(scale, t.dtype))
        keep = None
        if causal_only:
            steps_q, steps_k = logits.x.shape[2], logits.x.shape[3]
            keep = ops.cast(ops.tril(ops.ones((steps_q, steps_k), "int32")), "bool")[None, None]
        elif mask is not None:
            keep = ops.cast(mask, "bool")
            for _ in range(4 - len(keep.shape)):
                keep = ops.expand_dims(keep, -len(parts.attention_axes) * 2 - 1)
        given = None if causal_only else keep
        if keep is not None:
            floor = private.attention_floor(logits.x.dtype)
            keep = ops.broadcast_to(keep, ops.shape(logits.x))
            logits = logits.map(lambda t: ops.where(keep, t, ops.cast(floor, t.dtype)))
        weights = dual.softmax(logits, -1)
        if half:
            weights = weights.map(lambda t: ops.cast(t, v.x.dtype))
        out = dual.bilinear(lambda a, b: ops.einsum("BNTS,BSNH->BTNH", a, b), weights, v)
        if dual.narrowed(q.x.dtype) is not None:  # Keras computes it in float32 (on JAX): its values, rounded
            flash = private.flash_attention(layer)

            def core(qt: Tensor, kt: Tensor, vt: Tensor) -> Tensor:
                return ops.dot_product_attention(
                    qt, kt, vt, bias=None, mask=given, scale=scale, is_causal=causal_only, flash_attention=flash
                )

            held = core(ops.stop_gradient(q.x), ops.stop_gradient(k.x), ops.stop_gradient(v.x))
            out = dual.rounded(out, held, core(q.r, k.r, v.r))
    else:  # the explicit path: scaled query, einsum, Softmax layer (an additive mask), einsum
        if use_causal_mask and mask is None:
            mask = private.causal_mask(layer, query.x, value.x)
        q = q.map(lambda t: t * ops.cast(scale, t.dtype))
        scores = dual.bilinear(lambda a, b: ops.einsum(parts.dot_product_equation, a, b), k, q)
        axes = tuple(range(len(scores.x.shape) - len(parts.attention_axes), len(scores.x.shape)))
        if mask is not None:
            mask = ops.cast(mask, "bool")
            for _ in range(len(scores.x.shape) - len(mask.shape)):
                mask = ops.expand_dims(mask, -len(parts.attention_axes) * 2 - 1)
            adder = (1.0 - ops.cast(mask, scores.x.dtype)) * ops.cast(private.softmax_floor(scores.x.dtype), scores.x.dtype)
            scores = scores.map(lambda t: t + adder)
        weights = dual.softmax(scores, axes if len(axes) > 1 else axes[0])
        out = dual.bilinear(lambda a, b: ops.einsum(parts.combine_equation, a, b), weights, v)
    if gate is not None:
        out = dual.product(out, gate)
    out = call_layer(parts.output, run, out)
    if return_attention_scores:
        return out, weights
    return out


# -- normalization ---------------------------------------------------------------------------------
def _normalized_axes(layer: keras.layers.Layer, value: Dual) -> tuple[Dual, Any, list[int], float, list[int]]:
    """What LayerNormalization and RMSNormalization share: the input in their compute dtype
    (float64 stays, anything else float32), the normalized axes, epsilon, and the shape that
    broadcasts a per-axis weight."""
    compute = "float64" if value.x.dtype == "float64" else "float32"
    u = value.map(lambda t: ops.cast(t, compute)) if value.x.dtype != compute else value
    rank = len(u.x.shape)
    axes = sorted(a % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]))
    epsilon = layer.epsilon if layer.epsilon is not None else keras.config.epsilon()
    shape = [u.x.shape[a] if a in axes else 1 for a in range(rank)]
    return u, compute, axes, epsilon, shape


def layer_normalization(layer: keras.layers.LayerNormalization, value: Dual) -> Dual:
    """``LayerNormalization`` over any axes, with or without centre and scale, and ``rms_scaling``
    (Keras's: the input, not centred, over its standard deviation)."""
    u, compute, axes, epsilon, shape = _normalized_axes(layer, value)
    rms = bool(getattr(layer, "rms_scaling", False))
    out = dual.standardize(u, axes, epsilon, centre=True, centre_output=not rms)
    gamma = None if layer.gamma is None else ops.reshape(weight(layer.gamma, compute), shape)
    beta = None if (layer.beta is None or rms) else ops.reshape(weight(layer.beta, compute), shape)
    if gamma is not None:
        out = out.map(lambda t: t * gamma)
    if beta is not None:
        out = out.map(lambda t: t + beta)
    target = dtype_name(layer.compute_dtype)
    return _as_the_layer(layer, value, out.map(lambda t: ops.cast(t, target)) if target != compute else out)


def _as_the_layer(layer: keras.layers.Layer, value: Dual, exact: Dual) -> Dual:
    """A normalization layer's ``exact`` values (the rules in ``value``'s dtype), or where Keras computes the layer
    narrower (:func:`~rnnshap.engines.keras.dual.narrowed`: float64 in float32 on JAX) the layer's own values on
    each side, by Rescale on that rounding (:func:`~rnnshap.engines.keras.dual.rounded`)."""
    if dual.narrowed(value.x.dtype) is None:
        return exact
    return dual.rounded(exact, bare(layer(ops.stop_gradient(value.x))), bare(layer(value.r)))


def group_normalization(layer: keras.layers.GroupNormalization, value: Dual) -> Dual:
    """``GroupNormalization``: the channels in groups, each group standardized over its channels
    and the other non-batch axes, then the per-channel scale and centre (linear)."""
    grouped = value.map(lambda t: private.groups(layer, t))
    original = grouped.x.dtype
    compute = "float64" if original == "float64" else "float32"
    if original != compute:
        grouped = grouped.map(lambda t: ops.cast(t, compute))
    axes = list(range(1, len(grouped.x.shape)))
    axes.pop(-2 if layer.axis == -1 else layer.axis - 1)
    out = dual.standardize(grouped, axes, layer.epsilon)
    broadcast = private.group_broadcast_shape(layer, value.x.shape)
    if layer.scale:
        gamma = ops.reshape(weight(layer.gamma, compute), broadcast)
        out = out.map(lambda t: t * gamma)
    if layer.center:
        beta = ops.reshape(weight(layer.beta, compute), broadcast)
        out = out.map(lambda t: t + beta)
    shape = ops.shape(value.x)
    out = out.map(lambda t: ops.reshape(ops.cast(t, original), shape))
    target = dtype_name(layer.compute_dtype)
    return _as_the_layer(layer, value, out.map(lambda t: ops.cast(t, target)) if target != original else out)


def rms_normalization(layer: keras.layers.Layer, value: Dual) -> Dual:
    """``RMSNormalization``: the input over its root mean square (Shapley on x ⊙ x, Rescale on the
    inverse root), times the scale."""
    u, compute, axes, epsilon, shape = _normalized_axes(layer, value)
    out = dual.standardize(u, axes, epsilon, centre=False)
    if getattr(layer, "scale", None) is not None:
        scale = ops.reshape(weight(layer.scale, compute), shape)
        out = out.map(lambda t: t * scale)
    target = dtype_name(layer.compute_dtype)
    return _as_the_layer(layer, value, out.map(lambda t: ops.cast(t, target)) if target != compute else out)
