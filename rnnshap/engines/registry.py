"""The engine registry: which engine explains a model, chosen by what the model is.

:data:`ENTRIES` is one table, read first to last; the first entry that recognises a model explains it.
Each entry says how its models are recognised (without importing a framework: by what is loaded), which
engine DeepSHAP builds for them (:class:`rnnshap.DeepExplainer`, through :func:`deep_engine`), which
forward-only model the Shapley mode builds (:class:`rnnshap.ShapleyExplainer`, through
:func:`forward_model`), and what to tell the user where the entry refuses one of the two. A Keras model
is then chosen by its backend in :data:`KERAS_BACKENDS`, the one place that says which backends DeepSHAP
takes.

Adding an engine is one entry here: its recogniser, its builders, its advice (docs/architecture.md).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import InputError, ModelTypeError
from .base import Engine
from .jax import is_flax_module
from .keras import is_keras_model
from .outputs import OutputChoice


@dataclass(frozen=True)
class Setup:
    """What :class:`rnnshap.DeepExplainer` asks of every engine beside the model and the background."""

    #: rules for this explainer only (PyTorch models and Keras models on the torch backend)
    rules: Mapping[Any, Any] | None = None
    #: which output tensor of a model with several is explained (None: all, flattened)
    output: OutputChoice = None
    #: with ``(module, layer)``: attributions to the layer's output instead of its input
    layer_output: bool = False


#: DeepSHAP's engine for a model: (model, background, setup) → Engine
DeepBuilder = Callable[[Any, Any, Setup], Engine]
#: the forward-only model of the Shapley mode: (model, background, output, batch_size) → ForwardModel
ForwardBuilder = Callable[[Any, Any, OutputChoice, "int | None"], Any]


@dataclass(frozen=True)
class Entry:
    """One kind of model: how it is recognised, the engines built for it, and the advice where one is refused."""

    #: what the models of this entry are, for messages
    kind: str
    #: whether ``model`` is one of this entry's (never imports a framework: it looks at what is loaded)
    recognises: Callable[[Any], bool]
    #: DeepSHAP's engine (None: DeepExplainer refuses these models, with ``refusal``)
    deep: DeepBuilder | None
    #: the forward-only model (None: ShapleyExplainer refuses these models, with ``refusal``)
    forward: ForwardBuilder | None
    #: what to do instead, where ``deep`` or ``forward`` is None
    refusal: str = ""
    #: the top-level modules the builders import, and what to install where one is missing
    requires: tuple[str, ...] = ()
    missing: str = ""


# -- how models are recognised -------------------------------------------------------------------------------------------
def is_module(value: Any) -> bool:
    """Whether ``value`` is a ``torch.nn.Module`` (and not a Keras model), without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module) and not is_keras_model(value)


def is_layer_pair(value: Any) -> bool:
    """shap's PyTorch form ``(model, layer)``: a module and one of its submodules."""
    return isinstance(value, tuple) and len(value) == 2 and is_module(value[0]) and is_module(value[1])


def is_function(value: Any) -> bool:
    """A callable that is neither a module nor a Keras model: a function of numpy arrays."""
    return callable(value) and not is_module(value) and not is_keras_model(value) and not is_flax_module(value)


# -- the builders ----------------------------------------------------------------------------------------------------------
def _interim_engine(model: Any, data: Any, setup: Setup) -> Engine:
    from .pytorch.engine import TorchEngine
    from .pytorch.model_forms import LayerForm, in_eval_mode

    whole, layer = model
    side = "output" if setup.layer_output else "input"

    def build(m: Any) -> TorchEngine:
        form = LayerForm(m, layer, data, side)
        return TorchEngine(form.split, form.background, rules=setup.rules, output=setup.output, layer=form)

    return in_eval_mode(whole, build)  # type: ignore[no-any-return]


def _torch_engine(model: Any, data: Any, setup: Setup) -> Engine:
    from .pytorch.engine import TorchEngine
    from .pytorch.model_forms import DictInputs, in_eval_mode

    rules, output = setup.rules, setup.output
    if isinstance(data, dict):  # a model called with a dict of inputs: one input per key, in the dict's order
        names = list(data)
        inputs = [data[k] for k in names]
        return in_eval_mode(  # type: ignore[no-any-return]
            model, lambda m: TorchEngine(DictInputs(m, names), inputs, rules=rules, output=output, input_names=names)
        )
    return in_eval_mode(model, lambda m: TorchEngine(m, data, rules=rules, output=output))  # type: ignore[no-any-return]


def _keras_engine(model: Any, data: Any, setup: Setup) -> Engine:
    """The Keras engine (a dual pass over the model's layer graph)."""
    if setup.rules:
        raise ValueError("custom rules are for PyTorch models and Keras models on the torch backend only")
    from .keras.engine import KerasEngine

    return KerasEngine(model, data, output=setup.output)


def _keras_on_torch(model: Any, data: Any, setup: Setup) -> Engine:
    """A Keras model on the torch backend is an nn.Module running torch operations: the PyTorch engine."""
    from .pytorch.engine import TorchEngine
    from .pytorch.keras_on_torch import KerasModule

    return TorchEngine(KerasModule(model), data, rules=setup.rules, output=setup.output)


#: DeepSHAP's engine per Keras backend (``keras.backend.backend()``); None: refused, with the advice to load the
#: model on a backend that is taken. The Keras engine runs on TensorFlow and JAX (engines/keras/backend.py).
KERAS_BACKENDS: dict[str, DeepBuilder | None] = {
    "tensorflow": _keras_engine,
    "torch": _keras_on_torch,
    "jax": _keras_engine,
}


def _keras_by_backend(model: Any, data: Any, setup: Setup) -> Engine:
    import keras

    backend = keras.backend.backend()
    build = KERAS_BACKENDS.get(backend)
    if build is None:
        taken = sorted(name for name, builder in KERAS_BACKENDS.items() if builder is not None)
        raise InputError(
            f"rnnshap explains Keras models on the {' and '.join(taken)} backends; this Keras runs on {backend!r}. "
            f"Save the model and load it with KERAS_BACKEND={' or '.join(taken)} set before keras is imported: the "
            "attributions are the same on each."
        )
    return build(model, data, setup)


def _flax_engine(model: Any, data: Any, setup: Setup) -> Engine:
    """The JAX engine (the module's jaxpr run on pairs)."""
    if setup.rules:
        raise ValueError("custom rules are for PyTorch models and Keras models on the torch backend only")
    if setup.layer_output:
        raise ValueError("layer_output= is for shap's (model, layer) form of PyTorch models")
    from .jax.engine import JaxEngine

    return JaxEngine(model, data, output=setup.output)


def _keras_forward(model: Any, data: Any, output: OutputChoice, batch_size: int | None) -> Any:
    from .forward import keras_forward

    return keras_forward(model, data, output, batch_size)


def _torch_forward(model: Any, data: Any, output: OutputChoice, batch_size: int | None) -> Any:
    from .forward import torch_forward

    return torch_forward(model, data, output, batch_size)


def _function_forward(model: Any, data: Any, output: OutputChoice, batch_size: int | None) -> Any:
    from .forward import function_forward

    return function_forward(model, data, output, batch_size)


#: the registry, read first to last (a Keras model is callable, and a module too: the function entry comes last)
ENTRIES: tuple[Entry, ...] = (
    Entry(
        kind="a PyTorch model and one of its layers, shap's (model, layer) form",
        recognises=is_layer_pair,
        deep=_interim_engine,
        forward=None,
        refusal=(
            "ShapleyExplainer plays the model's own inputs; (module, layer) attributes to a layer's input or output. "
            "Give the model itself, or explain the part after the layer as a model of its own"
        ),
    ),
    Entry(
        kind="a Keras 3 model",
        recognises=is_keras_model,
        deep=_keras_by_backend,
        forward=_keras_forward,
        requires=("keras",),
        missing="pip install 'rnnshap[keras]' (Keras 3 and TensorFlow)",
    ),
    Entry(kind="a PyTorch nn.Module", recognises=is_module, deep=_torch_engine, forward=_torch_forward),
    Entry(
        kind="a Flax NNX module",
        recognises=is_flax_module,
        deep=_flax_engine,
        forward=_function_forward,
        requires=("flax", "jax"),
        missing="pip install 'rnnshap[flax]' (Flax and JAX)",
    ),
    Entry(
        kind="a function of numpy arrays",
        recognises=is_function,
        deep=None,
        forward=_function_forward,
        refusal=(
            "rnnshap.DeepExplainer takes a torch.nn.Module, a Keras model or a Flax NNX module, not a function: DeepSHAP "
            "follows the model's operations. Wrap a function in an nn.Module whose forward() calls it (a JAX function: in "
            "a flax.nnx.Module whose __call__ calls it), or give the function to rnnshap.ShapleyExplainer, which needs "
            "its outputs only"
        ),
    ),
)


def entry_for(model: Any) -> Entry | None:
    """The first entry of :data:`ENTRIES` that recognises ``model``, or None."""
    return next((entry for entry in ENTRIES if entry.recognises(model)), None)


def _check_requires(entry: Entry) -> None:
    absent = [name for name in entry.requires if importlib.util.find_spec(name) is None]
    if absent:
        raise ImportError(f"{entry.kind} needs {', '.join(absent)}: {entry.missing}")


def deep_engine(model: Any, data: Any, setup: Setup) -> Engine:
    """DeepSHAP's engine for ``model`` (see :func:`rnnshap.engines.engine_for`), or a refusal with advice."""
    entry = entry_for(model)
    if entry is None:
        if isinstance(model, tuple):
            raise ModelTypeError(
                "rnnshap.DeepExplainer takes a model, or one of shap's two tuple forms: (inputs, output) of Keras symbolic "
                "tensors (e.g. (model.inputs, model.layers[-2].output)), or (torch_model, layer) with layer one of its "
                f"submodules; got a tuple of {', '.join(type(part).__name__ for part in model)}"
            )
        raise ModelTypeError(
            f"rnnshap.DeepExplainer takes a torch.nn.Module, a Keras model or a Flax NNX module, not {type(model).__name__}. "
            "Wrap a function in an nn.Module whose forward() calls it."
        )
    if entry.deep is None:
        raise ModelTypeError(f"{entry.refusal}; got {type(model).__name__}.")
    _check_requires(entry)
    return entry.deep(model, data, setup)


def forward_model(model: Any, data: Any, output: OutputChoice = None, batch_size: int | None = None) -> Any:
    """The :class:`~rnnshap.engines.forward.ForwardModel` of a PyTorch module, a Keras 3 model, or a callable on
    numpy arrays (``batch_size``: the most rows in one call, the background's included; 1 runs every row alone)."""
    entry = entry_for(model)
    if entry is None:
        raise InputError(
            f"ShapleyExplainer takes an nn.Module, a Keras model or a function of numpy arrays, not {type(model).__name__}"
        )
    if entry.forward is None:
        raise InputError(f"{entry.refusal}.")
    _check_requires(entry)
    return entry.forward(model, data, output, batch_size)
