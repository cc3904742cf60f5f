r"""The walker: a Keras model run on :class:`~rnnshap.engines.keras.dual.Dual` tensors, layer by layer.

:func:`run_model` runs a Functional, Sequential or subclassed model; :func:`call_layer` runs one
layer, nested model or keras op, with the masks Keras 3 would give it (:func:`keras_masks`), and
hands it to its rule: a keras op to ``kops.py``, a layer to its entry in the layer table
(``layer_rules.py``), which runs recurrent layers by ``recurrent.py`` and traced ``call()`` by
``trace.py``. What a pass carries (``Run``) and the refusals are in ``pass_state.py``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from keras import tree as keras_tree

from . import dual, kops, picked, trace
from .backend import dtype_name, is_floating, is_tensor
from .dual import Dual
from .layer_rules import rule_for
from .pass_state import Run, TokenDual, Walker, bare, flat, no_tokens, unsupported, unsupported_in
from .private import Functional, call_signature, call_takes_mask, run_through_graph, sequential_graph

L = keras.layers


# -- running a model -----------------------------------------------------------------------------
def run_model(model: keras.layers.Layer, inputs: list[Dual], run: Run, as_list: bool = True) -> Any:
    """``model`` on Duals: a Dual (or the structure of the model's outputs, of Duals). ``as_list``: a
    subclassed model takes its inputs as a list (else the one Dual), as the engine calls it."""
    if isinstance(model, keras.Sequential):
        functional = sequential_graph(model)
        if functional is not None:
            return run_model(functional, inputs, run)
        (value,) = inputs
        out: Any = value
        for layer in model.layers:
            out = call_layer(layer, run, out)
        return out
    if isinstance(model, Functional) and trace.custom_call(model) is None:
        inputs = [_as_input(value, spec) for value, spec in zip(inputs, model.inputs, strict=False)]
        return run_through_graph(model, inputs, lambda op: (lambda *args, **kwargs: call_layer(op, run, *args, **kwargs)))
    if trace.traced_kind(model) is not None:  # a subclassed model: called as the engine calls it
        return call_layer(model, run, inputs if as_list else inputs[0])
    raise TypeError(f"{type(model).__name__} is not a Functional, Sequential or subclassed Keras model")


def _as_input(value: Any, spec: Any) -> Any:
    """A Functional converts each input to the dtype of its ``keras.Input``: floating values here."""
    dtype = dtype_name(spec.dtype) if getattr(spec, "dtype", None) is not None else ""
    if (
        isinstance(value, Dual)
        and not isinstance(value, TokenDual)
        and is_floating(value.x.dtype)
        and dtype.startswith(("float", "bfloat"))
    ):
        return _cast(value, dtype)
    return value


def _cast(value: Any, dtype: str) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, Dual) and value.narrow is not None and dtype_name(value.x.dtype) == dtype:
        return Dual(value.x, value.r, value.mask)  # keras widens the model's narrower tensor: the pass holds it so
    if (
        isinstance(value, Dual)
        and not isinstance(value, TokenDual)
        and is_floating(value.x.dtype)
        and dtype_name(value.x.dtype) != dtype
    ):
        return Dual(ops.cast(value.x, dtype), ops.cast(value.r, dtype), value.mask)
    if is_tensor(value) and is_floating(value.dtype) and dtype_name(value.dtype) != dtype:
        return ops.cast(value, dtype)  # a floating tensor argument (an explicit float mask) is cast too
    return value


# -- masks ----------------------------------------------------------------------------------------
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
    if isinstance(value, Dual) or is_tensor(value):
        return True
    if isinstance(value, (list, tuple, dict)) and len(value) > 0:
        leaves = flat(list(value.values()) if isinstance(value, dict) else value)
        return all(v is None or isinstance(v, Dual) or is_tensor(v) for v in leaves)
    return False


def keras_masks(layer: keras.layers.Layer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(call mask, previous mask, first argument)`` of ``layer(*args, **kwargs)`` as Keras 3's
    ``Layer.__call__`` computes them: the mask ``call()`` receives (an explicit ``mask=``, or the mask of
    the only tensor argument when ``call()`` takes one), and the mask that ``compute_mask`` gets."""
    try:
        bound = call_signature(layer).bind(*args, **kwargs)
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


def _output_masks(layer: keras.layers.Layer, run: Run, out: Any, first: Any, previous_mask: Any) -> Any:
    """Set the masks of ``out`` as ``Layer.__call__`` does: a layer that supports masking fills the
    masks its call did not set with ``compute_mask``; any other layer sets none (Keras drops the mask)."""
    if not getattr(layer, "supports_masking", False):
        # Keras keeps a mask on the tensor object and does not clear it here: a layer that returns its input itself
        # hands on the input's mask (an identity Permute on JAX, whose jnp.transpose returns its operand)
        if isinstance(out, Dual) and isinstance(first, Dual) and out.x is first.x and out.mask is None:
            out.mask = first.mask
        return out
    duals = [d for d in flat(list(out.values()) if isinstance(out, dict) else out) if isinstance(d, Dual)]
    if duals and all(d.mask is not None for d in duals):
        return out  # the call set them (Masking, Multiply)
    masks = layer.compute_mask(dual.side(first, 0), previous_mask)
    if masks is None:
        return out
    masks_r = layer.compute_mask(dual.side(first, 1), previous_mask)
    for d, m, m_r in zip(duals, keras_tree.flatten(masks), keras_tree.flatten(masks_r), strict=False):
        if d.mask is None and m is not None:
            d.mask = m
            run.compare(m, m_r)
    return out


# -- one layer ------------------------------------------------------------------------------------
def call_layer(layer: Any, run: Run, *args: Any, **kwargs: Any) -> Any:
    """One layer (or nested model, or keras op) on Duals.

    Masks follow Keras 3 (``Layer.__call__``, see :func:`keras_masks` and :func:`_output_masks`): a
    layer's ``call`` gets the mask Keras would give it, a layer that does not support masking drops it,
    keras ops keep none. Masks are computed on the explained input and used on both sides, so a
    reference is read with the mask of the input it is paired with.
    """
    kwargs.pop("training", None)
    chosen = [a for a in flat([*args, *kwargs.values()]) if isinstance(a, dual.PickedIndices)]
    if chosen:
        return _picked_use(layer, run, chosen[0], args, kwargs)
    if kops.is_mask_op(layer):
        run.masked = True
        out = layer(*dual.side(args, 0), **dual.side(kwargs, 0))
        if any(isinstance(a, Dual) for a in flat([*args, *kwargs.values()])):
            run.compare(out, layer(*dual.side(args, 1), **dual.side(kwargs, 1)))
        return run.computed_from_masks(out)
    if kops.is_keras_op(layer):
        return _call_op(layer, run, args, kwargs)
    on_constants = not any(isinstance(a, Dual) for a in flat([*args, *kwargs.values()]))
    if on_constants and not isinstance(layer, (keras.Sequential, Functional)):
        out = layer(*args, **kwargs)  # (positions from ops.arange): a constant, the same on both sides
        return keras_tree.map_structure(lambda t: Dual(bare(t), bare(t)) if is_tensor(t) else t, out)
    if any(is_tensor(a) and id(a) in run.from_masks for a in flat(args)):
        raise unsupported(layer, "a tensor computed from a mask reaches this layer as data")
    # constants of the model's graph (a cell loop's zero initial states): the same on both sides
    args = keras_tree.map_structure(lambda a: Dual(a, a) if is_tensor(a) else a, args)
    if not isinstance(layer, (keras.Sequential, Functional)):
        dtype = getattr(layer, "input_dtype", None) if getattr(layer, "autocast", True) else None
        if dtype is not None:
            args = tuple(_cast(a, dtype) for a in args)  # keras casts floating inputs to the layer's dtype
            kwargs = {key: _cast(value, dtype) for key, value in kwargs.items()}
    call_mask, previous_mask, first = keras_masks(layer, args, kwargs)
    kwargs.pop("mask", None)
    uses_mask = call_mask is not None and any(m is not None for m in keras_tree.flatten(call_mask))
    if uses_mask:
        run.masked = True
    rule = rule_for(layer)
    if not rule.reads_tokens:
        no_tokens(layer, *flat([*args, *kwargs.values()]))
    if not rule.handles_mask and uses_mask and call_takes_mask(layer):
        raise unsupported(layer, "a Keras mask reaches this layer, which uses it; rnnshap has no rule for that")
    out = _output_masks(layer, run, rule.call(layer, run, WALKER, call_mask, *args, **kwargs), first, previous_mask)
    if any(isinstance(d, Dual) and d.mask is not None for d in keras_tree.flatten(out)):
        run.masked = True  # the reference side is read with the input side's mask from here on
    return out


def _call_op(op: Any, run: Run, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A keras op (not a mask op): on constants, on token ids, or by its rule (``kops.py``)."""
    if not any(isinstance(a, Dual) for a in flat([*args, *kwargs.values()])):
        out = op(*args, **kwargs)  # on masks or constants only (Concatenate's compute_mask in the graph)
        if any(is_tensor(a) for a in flat([*args, *kwargs.values()])):
            return run.computed_from_masks(out)  # computed from masks: read on the explained input
        # made from Python values alone (ops.zeros((n, units)), a cell's get_initial_state): a constant the
        # model makes, the same on both sides
        return keras_tree.map_structure(lambda t: Dual(bare(t), bare(t)) if is_tensor(t) else t, out)
    values = [v for v in flat([*args, *kwargs.values()]) if isinstance(v, Dual)]
    tokens = [v for v in values if isinstance(v, TokenDual)]
    if tokens and type(op).__name__ == "Cast" and str(op.dtype) == "bool":
        out = op(*dual.side(args, 0), **dual.side(kwargs, 0))  # token ids (0/1) cast to a mask: a mask op
        run.compare(out, op(*dual.side(args, 1), **dual.side(kwargs, 1)))
        return out
    structural = type(op).__name__ in kops.STRUCTURAL and not (
        type(op).__name__ == "Cast" and str(op.dtype).startswith(("float", "bfloat"))
    )
    if tokens and len(tokens) == len(values) and structural:  # token ids (or an integer mask) moved around
        x, r = op(*dual.side(args, 0), **dual.side(kwargs, 0)), op(*dual.side(args, 1), **dual.side(kwargs, 1))
        return TokenDual(x, r, tokens[0].index)
    no_tokens(op, *tokens)
    try:
        out = kops.call_op(op, run, args, kwargs, unsupported)
    except Exception as error:
        if not _is_refusal(error):
            raise
        out = unsupported_in(op, run, _refusal_reason(error), lambda: kops.both(op, args, kwargs))
    if isinstance(out, Dual) and out.mask is None:
        for value in flat([*args, *kwargs.values()]):  # an op that returns its input keeps that tensor's mask
            if isinstance(value, Dual) and value.x is out.x:
                out.mask = value.mask
    return out


def _picked_use(layer: Any, run: Run, index: dual.PickedIndices, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A use of indices picked from an input-dependent tensor (``argmax``, ``top_k``'s): a keras op or an
    ``Embedding`` by the picked-index rules (rnnshap/engines/keras/picked.py); anything else is refused."""
    if kops.is_keras_op(layer) and not kops.is_mask_op(layer):

        def by_rule(new_args: tuple[Any, ...], new_kwargs: dict[str, Any]) -> Any:
            return call_layer(layer, run, *new_args, **new_kwargs)

        try:
            return picked.use(layer, args, kwargs, by_rule, unsupported)
        except Exception as error:
            if not _is_refusal(error):
                raise
            return unsupported_in(layer, run, _refusal_reason(error), lambda: kops.both(layer, args, kwargs))
    if isinstance(layer, L.Embedding) and len(args) == 1 and args[0] is index and not kwargs:
        return picked.select(lambda _, i: bare(layer(i)), None, index, lambda t: t[..., None])  # greedy decoding
    how = "compares" if kops.is_mask_op(layer) else "reads as data"
    why = f"it {how} the indices {index.origin} picked from an input-dependent tensor; {picked.ATTRIBUTED}"
    if kops.is_keras_op(layer):  # refused with the model's other refusals, by its path (lambda > op)
        return unsupported_in(layer, run, why, lambda: kops.both(layer, args, kwargs))
    raise unsupported(layer, why)


def _is_refusal(error: Exception) -> bool:
    from ...errors import UnsupportedOperationError

    return isinstance(error, UnsupportedOperationError)


def _refusal_reason(error: Exception) -> str:
    ops = getattr(error, "ops", None)
    return "; ".join(why for _, why in ops) if ops else str(error)


#: the walker's entry points, for the layer rules that run layers inside a layer (see pass_state.Walker)
WALKER = Walker(call_layer=call_layer, run_model=run_model)
