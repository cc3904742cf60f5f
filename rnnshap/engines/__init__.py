"""Engines: one per framework, behind the one front door :class:`rnnshap.DeepExplainer`.

- :mod:`rnnshap.engines.pytorch`: PyTorch ``nn.Module`` models (the reference tape, the rules of
  :mod:`rnnshap.rules` and :mod:`rnnshap.recurrent`).
- :mod:`rnnshap.engines.keras`: Keras 3 models on the TensorFlow backend (a dual pass over the
  model's layer graph).

:func:`engine_for` picks one by the model's type; a framework is imported only when its engine is.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import Block, BlockResult, Engine
from .keras import is_keras_model


def engine_for(model: Any, data: Any, *, rules: Mapping[Any, Any] | None = None) -> Engine:
    """The engine for ``model``, set up with the background ``data``."""
    if is_keras_model(model):
        import keras

        backend = keras.backend.backend()
        if backend != "tensorflow":
            from ..errors import InputError

            raise InputError(f"rnnshap explains Keras models on the TensorFlow backend; this Keras runs on {backend!r}")
        if rules:
            raise ValueError("custom rules are supported for PyTorch models only")
        from .keras.engine import KerasEngine

        return KerasEngine(model, data)
    from .pytorch.engine import TorchEngine

    return TorchEngine(model, data, rules=rules)


__all__ = ["Block", "BlockResult", "Engine", "engine_for", "is_keras_model"]
