"""Keras 3 models on the torch backend, explained by the PyTorch engine.

On the torch backend a Keras model is an ``nn.Module`` whose layers run torch operations, so the
PyTorch engine sees inside it like any other module: the same rules, token ids through Keras'
Embedding, initial states as inputs. Only the call differs: Keras takes one tensor, or a list of
them for several inputs, and a ``training`` flag.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import UnsupportedOperationError
from ..keras.training_calls import refuse_training_calls
from .calls import Intercepting

Tensor = torch.Tensor

#: the comparison a Keras ``Masking`` makes (see :func:`masked_input_op`)
_NOT_EQUAL = frozenset({torch.not_equal, torch.ne, torch.Tensor.ne, torch.Tensor.not_equal, torch.Tensor.__ne__})
#: dtype conversions, followed from a masked input to the tensor that is compared
_CASTS = frozenset({
    torch.Tensor.to, torch.Tensor.type, torch.Tensor.float, torch.Tensor.double, torch.Tensor.half, torch.Tensor.bfloat16,
    torch.as_tensor,
})


def input_maskings(model: Any) -> list[tuple[Any, int]]:
    """The model's Keras ``Masking`` layers, each with the index of the model input it masks; those
    whose input is computed inside the model are refused by name.

    On the torch backend a ``Masking`` layer computes its mask from its input's values,
    ``any(x != mask_value)``: a step function of the input with no multiplier. Keras' convention
    (and rnnshap's Keras engine on TensorFlow) reads each reference with the mask of the input it is
    paired with, and masked steps get exactly 0. For a ``Masking`` on a model input, the engine does the
    same: its comparison of the input with the mask value reads the explained sample's values on both sides
    (``run_pass(sample_masks=...)``), so the two backends give the same values."""
    import keras

    found, refused = [], []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Masking):
            indices = _input_indices(layer, model)
            if not indices:
                refused.append(layer)
            found += [(layer, index) for index in indices]
    if refused:
        reason = (
            "on the torch backend it computes its mask from the values of its input, a step function with no multiplier, "
            "and rnnshap cannot trace that input to a model input here (a tensor the model computes, or a nested "
            "model's input); a Masking applied to a model input takes the explained sample's mask, as on TensorFlow"
        )
        raise UnsupportedOperationError([(f"keras.layers.Masking ({layer.name})", reason, "keras_masking") for layer in refused])
    return found


def _input_indices(layer: Any, model: Any) -> list[int]:
    """The indices of the model inputs that ``layer`` is applied to; none where any of its calls
    (a loaded model's layers keep one node per build) takes a tensor that is not a model input."""
    import keras

    inputs = list(getattr(model, "inputs", None) or [])
    indices: list[int] = []
    for node in getattr(layer, "_inbound_nodes", []):
        tensors = list(node.input_tensors)
        history = getattr(tensors[0], "_keras_history", None) if len(tensors) == 1 else None
        if history is None or not isinstance(history[0], keras.layers.InputLayer):
            return []
        indices += [i for i, t in enumerate(inputs) if t is tensors[0] and i not in indices]
    if not indices and isinstance(model, keras.Sequential) and model.layers and model.layers[0] is layer and len(inputs) == 1:
        indices = [0]  # a Sequential's first layer: its only input
    return indices


def refuse_stateful(model: Any) -> None:
    """Refuse, before anything runs, the recurrent layers built with ``stateful=True``: each call starts
    from the state the previous call left and writes a new one (the explainer would change it), and
    its batch size is fixed. The Keras engine on TensorFlow refuses them alike."""
    import keras

    stateful = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.RNN) and getattr(layer, "stateful", False)
    ]
    if stateful:
        reason = (
            "stateful=True: each call starts from the state the previous call left (and writes a new one), so the output is "
            "not a function of the input alone, and the batch size is fixed"
        )
        raise UnsupportedOperationError(
            [(f"keras.layers.{type(layer).__name__} ({layer.name})", reason, "stateful") for layer in stateful]
        )


def masked_input_op(
    mode: Intercepting, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], user_grad: bool, decided: bool
) -> Any:
    """An operation of a pass (``mode``) on an input the model masks by comparing it with a value (a Keras
    ``Masking``; see :func:`input_maskings`): that comparison (``input != value``) is the mask of the
    explained samples on both sides of their pairs, context and not attributed, as masks made from token
    ids are; a cast of the input (Keras casts it to the layer's dtype) is followed with the samples' values
    cast alike; any other operation runs as usual."""
    values, compared = mode.sample_masks[args[0]]
    other = args[1] if len(args) == 2 else None
    if func in _NOT_EQUAL and other is not None and not mode.is_tracked(other):
        if isinstance(other, (int, float)) or (isinstance(other, Tensor) and other.dim() == 0):
            if float(other) in compared:
                return func(values, other, **kwargs)
    result = mode.intercept(func, types, args, kwargs, user_grad, decided, masks=False)
    if func in _CASTS and isinstance(result, Tensor) and result is not args[0] and result.is_floating_point():
        mode.sample_masks[result] = (func(values, *args[1:], **kwargs), compared)
    return result


class KerasModule(nn.Module):
    """``forward(*inputs)`` → ``model(inputs, training=False)``, the calling convention the engine uses."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        refuse_stateful(model)
        refuse_training_calls(model)
        self.keras_model = model
        #: Masking layers on model inputs, with the input's index (see ``input_maskings``)
        self.maskings = input_maskings(model)

    @property
    def output_names(self) -> list[str] | None:
        """The Keras model's output names (for a model with several outputs, see engines/outputs.py)."""
        return getattr(self.keras_model, "output_names", None)

    @property
    def masked_inputs(self) -> dict[int, frozenset[float]]:
        """The model inputs ``Masking`` layers mask: index → the mask values they compare with."""
        masked: dict[int, set[float]] = {}
        for layer, index in self.maskings:
            masked.setdefault(index, set()).add(float(layer.mask_value))
        return {index: frozenset(values) for index, values in masked.items()}

    def forward(self, *inputs: Any) -> Any:
        args = inputs[0] if len(inputs) == 1 else list(inputs)
        return self.keras_model(args, training=False)  # several outputs: the engine flattens them or picks one


__all__ = ["KerasModule", "input_maskings", "masked_input_op", "refuse_stateful"]
