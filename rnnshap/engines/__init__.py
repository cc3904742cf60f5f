"""Engines: one per framework, behind the one front door :class:`rnnshap.DeepExplainer`.

- :mod:`rnnshap.engines.pytorch`: PyTorch ``nn.Module`` models (the reference tape, the rules of
  :mod:`rnnshap.rules` and :mod:`rnnshap.recurrent`).
- :mod:`rnnshap.engines.keras`: Keras 3 models on the TensorFlow backend (a dual pass over the
  model's layer graph). On the torch backend a Keras model is an ``nn.Module`` and goes to the
  PyTorch engine (:mod:`rnnshap.engines.pytorch.keras`); the JAX backend is refused.

:func:`engine_for` picks one by the model's type; a framework is imported only when its engine is.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import Block, BlockResult, Engine
from .keras import is_keras_model
from .outputs import OutputChoice


def engine_for(model: Any, data: Any, *, rules: Mapping[Any, Any] | None = None, output: OutputChoice = None) -> Engine:
    """The engine for ``model``, set up with the background ``data``, explaining the output tensor
    ``output`` of a model with several (all of them, flattened and concatenated, for None)."""
    if is_keras_model(model):
        import keras

        backend = keras.backend.backend()
        if backend == "torch":  # the model is an nn.Module running torch operations
            from .pytorch.engine import TorchEngine
            from .pytorch.keras import KerasModule

            return TorchEngine(KerasModule(model), data, rules=rules, output=output)
        if backend != "tensorflow":
            from ..errors import InputError

            raise InputError(
                f"rnnshap explains Keras models on the TensorFlow and torch backends; this Keras runs on {backend!r}. "
                "Save the model and load it with KERAS_BACKEND=tensorflow or torch set before keras is imported: "
                "the attributions are the same on both."
            )
        if rules:
            raise ValueError("custom rules are for PyTorch models and Keras models on the torch backend only")
        from .keras.engine import KerasEngine

        return KerasEngine(model, data, output=output)
    from .pytorch.engine import TorchEngine

    return TorchEngine(model, data, rules=rules, output=output)


__all__ = ["Block", "BlockResult", "Engine", "engine_for", "is_keras_model"]
