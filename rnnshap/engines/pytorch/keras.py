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

    @property
    def output_names(self) -> list[str] | None:
        """The Keras model's output names (for a model with several outputs, see engines/outputs.py)."""
        return getattr(self.keras_model, "output_names", None)

    def forward(self, *inputs: Any) -> Any:
        args = inputs[0] if len(inputs) == 1 else list(inputs)
        return self.keras_model(args, training=False)  # several outputs: the engine flattens them or picks one
