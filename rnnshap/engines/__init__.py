"""Engines: one per framework, behind the one front door :class:`rnnshap.DeepExplainer`.

- :mod:`rnnshap.engines.pytorch`: PyTorch ``nn.Module`` models (the reference tape, the rules of
  :mod:`rnnshap.rules` and :mod:`rnnshap.recurrent`).
- :mod:`rnnshap.engines.keras`: Keras 3 models on the TensorFlow backend (a dual pass over the
  model's layer graph). On the torch backend a Keras model is an ``nn.Module`` and goes to the
  PyTorch engine (:mod:`rnnshap.engines.pytorch.keras_on_torch`); the JAX backend is refused.

:func:`engine_for` picks one by the model's type; a framework is imported only when its engine is.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

from .base import Block, BlockResult, Engine
from .keras import is_keras_model
from .outputs import OutputChoice


def engine_for(
    model: Any,
    data: Any,
    *,
    rules: Mapping[Any, Any] | None = None,
    output: OutputChoice = None,
    layer_output: bool = False,
) -> Engine:
    """The engine for ``model``, set up with the background ``data``, explaining the output tensor
    ``output`` of a model with several (all of them, flattened and concatenated, for None).

    ``model`` may also take shap's other forms: ``(inputs, output)`` of Keras symbolic tensors (the
    sub-model between them), and ``(module, layer)`` for PyTorch (attributions to the input of
    ``layer``, see :mod:`rnnshap.engines.pytorch.model_forms`). A PyTorch model in training mode with
    dropout or batch statistics is explained in eval mode, as shap does, and left as given.

    ``layer_output``: with ``(module, layer)``, attributions to the output of ``layer`` instead of its
    input (``InterimEngine`` with ``side="output"``)."""
    pair = isinstance(model, tuple) and len(model) == 2 and _is_module(model[0]) and _is_module(model[1])
    if layer_output and not pair:
        from ..errors import InputError

        raise InputError(
            "layer_output=True attributes to the output of a layer: give model=(module, layer), a PyTorch model and one "
            f"of its submodules, e.g. DeepExplainer((model, model.lstm), data, layer_output=True); got {type(model).__name__}"
        )
    model = keras_submodel(model, data)
    if pair:
        from .pytorch.model_forms import InterimEngine, in_eval_mode

        whole, layer = model
        side = "output" if layer_output else "input"
        return in_eval_mode(  # type: ignore[no-any-return]
            whole, lambda m: InterimEngine(m, layer, data, rules=rules, output=output, side=side)
        )
    if isinstance(model, tuple):
        raise TypeError(
            "rnnshap.DeepExplainer takes a model, or one of shap's two tuple forms: (inputs, output) of Keras symbolic "
            "tensors (e.g. (model.inputs, model.layers[-2].output)), or (torch_model, layer) with layer one of its "
            f"submodules; got a tuple of {', '.join(type(part).__name__ for part in model)}"
        )
    if is_keras_model(model):
        import keras

        backend = keras.backend.backend()
        if backend == "torch":  # the model is an nn.Module running torch operations
            from .pytorch.engine import TorchEngine
            from .pytorch.keras_on_torch import KerasModule

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

    if _is_module(model):
        from .pytorch.model_forms import DictInputs, in_eval_mode

        if isinstance(data, dict):  # a model called with a dict of inputs: one input per key, in the dict's order
            names = list(data)
            inputs = [data[k] for k in names]
            engine = in_eval_mode(model, lambda m: TorchEngine(DictInputs(m, names), inputs, rules=rules, output=output))
            engine.input_names = names
            return engine  # type: ignore[no-any-return]
        return in_eval_mode(model, lambda m: TorchEngine(m, data, rules=rules, output=output))  # type: ignore[no-any-return]
    return TorchEngine(model, data, rules=rules, output=output)


def _is_module(value: Any) -> bool:
    """Whether ``value`` is a ``torch.nn.Module`` (and not a Keras model), without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module) and not is_keras_model(value)


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


__all__ = ["Block", "BlockResult", "Engine", "engine_for", "is_keras_model"]
