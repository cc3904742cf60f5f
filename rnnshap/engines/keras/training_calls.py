"""Layers a Keras model calls with ``training=True`` (Monte Carlo dropout), refused on every backend.

``keras.layers.Dropout(0.3)(h, training=True)`` in a functional model keeps dropout on whenever the
model is called as ``model(x)``: two calls on the same x differ, so no attribution of one call adds up
to another. The explainers call the model with ``training=False``, which turns such a layer off: they
would explain a twin without it and say nothing. Both Keras engines (TensorFlow and torch backends)
and the forward-only door refuse it by name instead. Only keras is imported here, not TensorFlow.
"""

from __future__ import annotations

from typing import Any

from ...errors import ModelStateError

#: what is said of a layer called with training=True
REASON = (
    "called with training=True in the model's graph (Monte Carlo dropout, noise or batch statistics kept on at "
    "inference), so the model's own output changes from call to call or with the other rows of the batch; rnnshap "
    "calls the model with training=False, which would explain a model without this layer"
)

#: what to do about it
ADVICE = (
    "Explain the deterministic model: rebuild it without training=True on those layers (the same layers, called "
    "without the argument) and copy the weights over (new.set_weights(model.get_weights())). A Monte Carlo "
    "prediction is an average over draws: explain that average by explaining the deterministic model, whose output "
    "is the expected value of inverted dropout's draws for a linear head. The model as given is left untouched."
)


def training_calls(model: Any) -> list[str]:
    """The layers of ``model`` (nested models included) that its graph calls with ``training=True``, as
    ``"name (Class)"``."""
    from .private import flat_layers, nodes  # (imports keras: only for a Keras model)

    found: list[str] = []
    try:
        layers = flat_layers(model)
    except (AttributeError, TypeError):
        layers = list(getattr(model, "layers", []))
    for layer in layers:
        for node in nodes(layer)[0]:
            arguments = getattr(node, "arguments", None)
            kwargs = getattr(arguments, "kwargs", None) or {}
            if kwargs.get("training") is True:
                name = f"{layer.name} ({type(layer).__name__})"
                if name not in found:
                    found.append(name)
                break
    return found


def refuse_training_calls(model: Any) -> None:
    """Refuse, naming them, the layers ``model`` calls with ``training=True`` (see the module's docstring)."""
    found = training_calls(model)
    if found:
        layers = ", ".join(found)
        raise ModelStateError(f"The Keras layer(s) {layers}: {REASON}. {ADVICE}")


__all__ = ["refuse_training_calls", "training_calls"]
