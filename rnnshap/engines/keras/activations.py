"""Keras activation functions by their rules, and a layer's weights as its ``call`` reads them.

What every layer with weights and an activation shares (the layer table ``layer_rules.py``, the
recurrent layers ``recurrent.py``, attention and EinsumDense ``attention.py``): :func:`activate`
runs an activation on a :class:`~rnnshap.engines.keras.dual.Dual` by the rule the catalog
(``rnnshap/operations.py``) gives it, :func:`activation_problem` says why one has none, and
:func:`weight` reads a variable in the compute dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

from ...operations import keras_activation_families
from . import dual
from .backend import Tensor, dtype_name
from .dual import Dual

#: elementwise activations by name: the operation table's view (rnnshap/operations.py), those keras has
_ELEMENTWISE = {name: entry for name, entry in keras_activation_families().items() if hasattr(keras.activations, name)}
_STRUCTURED = {"softmax": dual.softmax, "log_softmax": dual.log_softmax}


def _activation_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def activation_problem(fn: Callable[..., Any]) -> str | None:
    """Why the activation ``fn`` has no rule, or None."""
    name = _activation_name(fn)
    if name == "linear" or name in _ELEMENTWISE or name in _STRUCTURED:
        return None
    return f"activation {name!r} has no rule (supported: linear, softmax, log_softmax, {', '.join(sorted(_ELEMENTWISE))})"


def activate(fn: Callable[..., Any] | None, u: Dual) -> Dual:
    """The rule of an activation function (a keras activation) on ``u``."""
    if fn is None:
        return u
    name = _activation_name(fn)
    if name == "linear":
        return u
    if name == "sigmoid":
        return dual.sigmoid(u)
    if name == "tanh":
        return dual.tanh(u)
    if name in _STRUCTURED:
        return _STRUCTURED[name](u, -1)
    entry = _ELEMENTWISE.get(name)
    if entry is not None:
        if entry.family == "secant":
            unary, slope = dual.SLOPES_BY_NAME[entry.name]
            return dual.secant(unary or fn, u, slope)
        near = getattr(dual, f"{entry.near}_secant_near") if entry.near else None
        return dual.rescale(fn, u, smooth=entry.smooth, near=near, kinks=entry.kinks if entry.smooth else ())
    raise ValueError(activation_problem(fn))


def weight(variable: Any, dtype: Any) -> Tensor:
    """A layer's variable as its call reads it: cast to the compute dtype (mixed precision policies)."""
    value = ops.convert_to_tensor(variable)
    return value if dtype_name(value.dtype) == dtype_name(dtype) else ops.cast(value, dtype)
