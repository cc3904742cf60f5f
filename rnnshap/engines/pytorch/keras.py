"""Keras 3 models on the torch backend, explained by the PyTorch engine.

On the torch backend a Keras model is an ``nn.Module`` whose layers run torch operations, so the
PyTorch engine sees inside it like any other module: the same rules, token ids through Keras'
Embedding, initial states as inputs. Only the call differs: Keras takes one tensor, or a list of
them for several inputs, and a ``training`` flag.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import UnsupportedOperationError


def refuse_masking(model: Any) -> None:
    """Refuse a Keras ``Masking`` layer by name, before the engine's pass would refuse the comparison
    it makes: on the torch backend it is ``any(x != mask_value)`` of the input's values, a step
    function with no multiplier (on TensorFlow rnnshap's Keras engine follows Keras masks instead)."""
    import keras

    layers = [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, keras.layers.Masking)]
    if layers:
        reason = (
            "on the torch backend it computes its mask from the input's values (any(x != mask_value)), a step "
            "function of the input with no multiplier"
        )
        raise UnsupportedOperationError([(f"keras.layers.Masking ({layer.name})", reason, "keras_masking") for layer in layers])


class KerasModule(nn.Module):
    """``forward(*inputs)`` → ``model(inputs, training=False)``, the calling convention the engine uses."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.keras_model = model

    @property
    def output_names(self) -> list[str] | None:
        """The Keras model's output names (for a model with several outputs, see engines/outputs.py)."""
        return getattr(self.keras_model, "output_names", None)

    def forward(self, *inputs: Any) -> Any:
        args = inputs[0] if len(inputs) == 1 else list(inputs)
        return self.keras_model(args, training=False)  # several outputs: the engine flattens them or picks one
