"""What a Keras model is given to explain, checked before any pass (:class:`KerasInputs`, the base of
:class:`~rnnshap.engines.keras.engine.KerasEngine`): inputs as a list, one array or a dict of named inputs, each
turned into a checked numpy array in its input's dtype, and what to say when arrays do not fit the model."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError
from ..base import Engine, batch_axis_advice, one_sample_hint
from . import backend
from .datasets import dataset_rows, is_dataset
from .private import Functional, flat_layers, inputs_struct


def _input_names(model: Any) -> list[str] | None:
    """The keys a Functional model takes its inputs by, in the order of ``model.inputs`` (a model built
    on a dict of ``keras.Input``: its keys; else the Inputs' names), or None for another model."""
    if not isinstance(model, Functional):
        return None
    struct = inputs_struct(model)
    if isinstance(struct, dict):
        return [str(key) for key in sorted(struct)]  # (keras flattens a dict by sorted key)
    return [str(t.name) for t in model.inputs]


class KerasInputs(Engine):
    """A Keras engine's inputs: the background's and each call's, checked and in the model's dtypes. The engine
    sets the state they read (the model, its inputs' dtypes and token inputs) as it is built."""

    model: Any
    #: the dtype of each input (token ids as integers, numbers in a floating dtype)
    _dtypes: list[str]
    _nested_list: bool
    _model_order: list[int] | None

    #: the keys of a model's named inputs given as a dict (the background's keys, in its order), else None
    input_names: list[str] | None = None

    def _named(self, model: Any, data: dict[Any, Any]) -> list[Any]:
        """A background given as a dict of named inputs: one input per key, in the dict's order."""
        names = _input_names(model)
        if names is None:
            raise InputError(
                "The background is a dict of inputs: rnnshap takes one for a Functional model built on named "
                "keras.Inputs (the dict's keys); pass a list of arrays, one per model input, for this model"
            )
        if set(map(str, data)) != set(names) or len(data) != len(names):
            raise InputError(
                f"The background has the keys {sorted(map(str, data))}; the model's inputs are named {names}: give one "
                "array per named input"
            )
        self.input_names = [str(key) for key in data]
        self._model_order = [self.input_names.index(name) for name in names]
        return list(data.values())

    def _in_model_order(self, values: list[Any]) -> list[Any]:
        """The model's per-input ``values`` (in the model's order) in the engine's order of inputs."""
        if self._model_order is None or len(values) != len(self._model_order):
            return values
        return [values[self._model_order.index(i)] for i in range(len(values))]

    @staticmethod
    def _input_dtypes(model: Any, count: int) -> list[str | None]:
        """The dtypes of the model's ``keras.Input``s (None where not known: a Sequential not built yet)."""
        try:
            inputs = model.inputs
            dtypes = [str(t.dtype).replace("tf.", "") for t in inputs] if inputs else []
        except (AttributeError, ValueError):
            dtypes = []
        return list(dtypes) if len(dtypes) == count else [None] * count

    def _arrays(self, X: Any, what: str) -> list[np.ndarray]:
        """``X`` as checked numpy arrays: numbers, finite, with a batch dimension that is not empty."""
        if self.background and self.multi_input != isinstance(X, (list, tuple)):
            given = "a list" if isinstance(X, (list, tuple)) else "one array"
            background = "a list" if self.multi_input else "one array"
            raise InputError(f"{what} is {given} but the background was {background}; pass both the same way")
        items = list(X) if isinstance(X, (list, tuple)) else [X]
        if not items:
            raise InputError(f"{what} is an empty list; give one array per model input")
        arrays = []
        for index, value in enumerate(items):
            name = f"{what}[{index}]" if isinstance(X, (list, tuple)) else what
            try:
                array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            except Exception as error:  # noqa: BLE001 - report any conversion failure the same way
                raise InputError(f"{name} cannot be turned into an array: {error}") from error
            if array.dtype == object or array.dtype.kind in "USVc":
                raise InputError(f"{name} has dtype {array.dtype}; rnnshap needs real numbers")
            if array.ndim == 0:
                raise InputError(f"{name} is a scalar; its first dimension must index samples")
            if array.shape[0] == 0:
                raise InputError(f"{name} is empty (its first dimension, the batch, has size 0)")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = np.argwhere(~np.isfinite(array))[0].tolist()
                raise InputError(
                    f"{name} contains NaN or infinite values (first at index {tuple(bad)}); attributions of them are undefined"
                )
            arrays.append(array)
        if self.background:
            if len(arrays) != len(self.background):
                raise InputError(f"{what}: the model takes {len(self.background)} input(s), got {len(arrays)}")
            for index, (a, b) in enumerate(zip(arrays, self.background, strict=True)):
                if a.shape[1:] != b.shape[1:]:
                    name = f"{what}[{index}]" if isinstance(X, (list, tuple)) else what
                    raise InputError(
                        f"{name} has shape {a.shape}; the background has rows of shape {b.shape[1:]}"
                        f"{one_sample_hint(name, a.shape, b.shape[1:])}"
                    )
        if len({a.shape[0] for a in arrays}) != 1:
            raise InputError(
                f"{what}: the inputs have different numbers of rows: {[a.shape[0] for a in arrays]}. "
                f"{batch_axis_advice([a.shape for a in arrays], 'keras')}"
            )
        return arrays

    def _conform(self, arrays: list[np.ndarray], what: str) -> list[np.ndarray]:
        """Each array in its input's dtype: token ids as integers, numbers in the floating dtype."""
        if len(arrays) != len(self._dtypes):
            raise InputError(f"{what}: the model takes {len(self._dtypes)} input(s), got {len(arrays)}")
        out = []
        for index, (array, dtype) in enumerate(zip(arrays, self._dtypes, strict=True)):
            if index in self.token_inputs and array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
                raise InputError(
                    f"{what}[{index}] has non-integer values, but input {index} holds token ids (integers) for an Embedding; "
                    "pass the token ids as integers"
                )
            out.append(array.astype(dtype))
        return out

    def inputs(self, X: Any, what: str) -> list[np.ndarray]:
        if is_dataset(X):  # its rows, as Keras' predict reads them
            X = dataset_rows(X, what)
            if isinstance(X, list) and not self.multi_input and len(X) == 1:
                X = X[0]
        if isinstance(X, dict):
            if self.input_names is None:
                raise InputError(f"{what} is a dict of inputs: give the background as a dict of the same inputs too")
            if set(map(str, X)) != set(self.input_names) or len(X) != len(self.input_names):
                raise InputError(
                    f"{what} has the keys {sorted(map(str, X))}, the background {sorted(self.input_names)}: give the same inputs"
                )
            by_name = {str(key): value for key, value in X.items()}
            X = [by_name[name] for name in self.input_names]
        return self._conform(self._arrays(X, what), what)

    def _misfit(self, arrays: list[np.ndarray], error: Exception) -> str:
        """What to say when arrays do not fit the model: the shapes that reached it, its own message, and
        what the shapes suggest (a nested Python list read as several inputs, one sequence without its
        batch dimension)."""
        count = len(arrays)
        plural = "s" if count > 1 else ""
        message = f"The model failed on {count} input{plural} of shape{plural} {', '.join(str(a.shape) for a in arrays)}: {error}"
        if self._nested_list:
            message += (
                f"\nThe background is a Python list of Python lists, read as a list of {count} inputs (one per model "
                "input, as for a model with several inputs). For a model with one input, pass one array: "
                "np.asarray(background)."
            )
        elif backend.name() == "jax" and "float64" in str(error) and "float32" in str(error):
            message += (
                "\nKeras 3.15 on JAX computes some operations of a float64 tensor in float32 (ops.tanh, sin, cos, arctan: "
                "keras-team/keras#23223), and a float64 layer whose state passes through one (SimpleRNN's tanh: its scan "
                "carries float64 in, float32 out) cannot run: the model fails before rnnshap explains anything. Build it "
                "in float32, or run it on the TensorFlow backend (KERAS_BACKEND=tensorflow)."
            )
        elif backend.name() == "jax" and self._unequal_head_sizes():
            message += (
                f"\nKeras 3.15 on JAX cannot run a MultiHeadAttention whose value_dim differs from its key_dim "
                f"({self._unequal_head_sizes()}) on its dot-product path (no dropout, no attention scores returned): "
                "ops.dot_product_attention there reshapes the output to the query's head size, so the model fails before "
                "rnnshap explains anything. Build it with value_dim equal to key_dim, or run it on the TensorFlow backend "
                "(KERAS_BACKEND=tensorflow)."
            )
        elif any(a.ndim == 2 and a.dtype.kind == "f" for a in arrays):
            message += (
                "\nA 2-D input is (batch, features). If the model expects (batch, time, features) and the 2-D array is "
                "one sequence, add the batch dimension: x[None] (and background[None]) for one sample."
            )
        return message

    def _unequal_head_sizes(self) -> str:
        """The model's MultiHeadAttention layers whose value_dim differs from their key_dim, as "name: value_dim v,
        key_dim k" ("" when none)."""
        import keras

        try:
            layers = flat_layers(self.model)
        except (AttributeError, TypeError):
            return ""
        found = [
            f"{layer.name}: value_dim {layer.value_dim}, key_dim {layer.key_dim}"
            for layer in layers
            if isinstance(layer, keras.layers.MultiHeadAttention) and layer.value_dim != layer.key_dim
        ]
        return "; ".join(found)
