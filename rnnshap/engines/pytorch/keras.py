"""Keras 3 models on the torch backend, explained by the PyTorch engine.

On the torch backend a Keras model is an ``nn.Module`` whose layers run torch operations, so the
PyTorch engine sees inside it like any other module: the same rules, token ids through Keras'
Embedding, initial states as inputs. Only the call differs: Keras takes one tensor, or a list of
them for several inputs, and a ``training`` flag.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class KerasModule(nn.Module):
    """``forward(*inputs)`` → ``model(inputs, training=False)``, the calling convention the engine uses."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.keras_model = model

    def forward(self, *inputs: Any) -> Any:
        args = inputs[0] if len(inputs) == 1 else list(inputs)
        out = self.keras_model(args, training=False)
        if isinstance(out, (list, tuple, dict)):
            raise TypeError("The Keras model has several outputs; rnnshap explains models with one output tensor")
        return out
