"""Engines: one per framework, behind the one front door :class:`rnnshap.DeepExplainer`.

- :mod:`rnnshap.engines.pytorch`: PyTorch ``nn.Module`` models (the reference tape, the rules of
  :mod:`rnnshap.rules` and :mod:`rnnshap.recurrent`).
- :mod:`rnnshap.engines.keras`: Keras 3 models on the TensorFlow and JAX backends (a dual pass over the
  model's layer graph). On the torch backend a Keras model is an ``nn.Module`` and goes to the
  PyTorch engine (:mod:`rnnshap.engines.pytorch.keras_on_torch`).

:func:`engine_for` (DeepExplainer) and :func:`forward_model` (ShapleyExplainer) pick one by what the model
is, from one table, the registry (:mod:`rnnshap.engines.registry`); a framework is imported only when its
engine is. Every engine meets one contract (:class:`rnnshap.engines.base.Engine`).
"""

from __future__ import annotations

from typing import Any, Mapping

from . import registry
from .base import Block, BlockResult, Engine
from .keras import is_keras_model
from .outputs import OutputChoice
from .registry import forward_model


def engine_for(
    model: Any,
    data: Any,
    *,
    rules: Mapping[Any, Any] | None = None,
    output: OutputChoice = None,
    layer_output: bool = False,
) -> Engine:
    """The engine for ``model``, set up with the background ``data``, explaining the output tensor
    ``output`` of a model with several (all of them, flattened and concatenated, for None): the one the
    first entry of the registry (:mod:`rnnshap.engines.registry`) that recognises the model builds.

    ``model`` may also take shap's other forms: ``(inputs, output)`` of Keras symbolic tensors (the
    sub-model between them), and ``(module, layer)`` for PyTorch (attributions to the input of
    ``layer``, see :mod:`rnnshap.engines.pytorch.model_forms`). A PyTorch model in training mode with
    dropout or batch statistics is explained in eval mode, as shap does, and left as given.

    ``layer_output``: with ``(module, layer)``, attributions to the output of ``layer`` instead of its
    input (a ``LayerForm`` with ``side="output"``)."""
    if layer_output and not registry.is_layer_pair(model):
        from ..errors import InputError

        raise InputError(
            "layer_output=True attributes to the output of a layer: give model=(module, layer), a PyTorch model and one "
            f"of its submodules, e.g. DeepExplainer((model, model.lstm), data, layer_output=True); got {type(model).__name__}"
        )
    setup = registry.Setup(rules=rules, output=output, layer_output=layer_output)
    return registry.deep_engine(keras_submodel(model, data), data, setup)


def keras_submodel(model: Any, data: Any) -> Any:
    """shap's TensorFlow form ``(inputs, output)``: Keras symbolic tensors (a tensor or a list of them
    each), as ``keras.Model(inputs, output)``, the network between them; anything else as it is. A
    one-element list of inputs for a background that is one array is that input alone."""
    if not isinstance(model, tuple) or len(model) != 2:
        return model
    inputs, output = model

    def symbolic(value: Any) -> bool:
        items = value if isinstance(value, (list, tuple)) else [value]
        return bool(items) and all(type(item).__name__ == "KerasTensor" for item in items)

    if not (symbolic(inputs) and symbolic(output)):
        return model
    import keras

    if isinstance(inputs, (list, tuple)) and len(inputs) == 1 and not isinstance(data, (list, tuple)):
        inputs = inputs[0]
    if isinstance(output, (list, tuple)) and len(output) == 1:
        output = output[0]
    return keras.Model(inputs=inputs, outputs=output)


__all__ = ["Block", "BlockResult", "Engine", "engine_for", "forward_model", "is_keras_model"]
