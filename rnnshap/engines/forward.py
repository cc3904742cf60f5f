"""Forward-only models: what :class:`rnnshap.ShapleyExplainer` needs of any model (its outputs on
rows of inputs), for PyTorch modules, Keras 3 models and plain functions of numpy arrays.

No operation is inspected, so every model works, including the ones DeepSHAP's engines refuse.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .outputs import OutputChoice, OutputLayout, output_parts


class ForwardModel:
    """A model's forward on numpy rows, with its background checked and evaluated once."""

    def __init__(
        self,
        call: Callable[[list[np.ndarray]], Any],
        data: Any,
        output: OutputChoice,
        to_numpy: Callable[[Any], np.ndarray],
        model: Any = None,
    ) -> None:
        from torch import nn

        from .pytorch.safety import RandomStates, random_forward_error

        self._call = call
        self._to_numpy = to_numpy
        self.outputs = OutputLayout(output)
        self.multi_input = isinstance(data, (list, tuple))
        self.background = self.arrays(data, "background")
        if any(b.shape[0] == 0 for b in self.background):
            raise InputError("the background is empty: give at least one reference row")
        # a forward that draws random numbers is not a function of its inputs: no game to play (the states
        # it drew from are put back)
        states = RandomStates(model if isinstance(model, nn.Module) else None)
        out = self(self.background)
        drawn = states.drawn()
        if drawn:
            raise random_forward_error(drawn)
        self.output_shape: tuple[int, ...] = self._shape
        self.background_outputs = out

    def arrays(self, X: Any, what: str) -> list[np.ndarray]:
        """``X`` (one array or a list per input) as numpy arrays, checked against the background."""
        given = list(X) if isinstance(X, (list, tuple)) else [X]
        if isinstance(X, (list, tuple)) != self.multi_input:
            expected = "a list of inputs" if self.multi_input else "one array"
            raise InputError(f"{what} must be {expected}, like the background")
        arrays = [self._to_numpy(x) for x in given]
        background = getattr(self, "background", None)
        if background is not None:
            if len(arrays) != len(background):
                raise InputError(f"{what} has {len(arrays)} input(s) but the background has {len(background)}")
            for t, (a, b) in enumerate(zip(arrays, background, strict=True)):
                if a.shape[1:] != b.shape[1:]:
                    raise InputError(
                        f"input {t} of {what} has shape {a.shape}, its background {b.shape}: all dimensions after the first "
                        "must agree"
                    )
        return arrays

    def __call__(self, rows: list[np.ndarray]) -> np.ndarray:
        """f on ``rows``: (m, n_outputs) float64."""
        out = self._call(rows)
        if isinstance(out, list) and not any(hasattr(t, "shape") for t in out):
            out = np.asarray(out)  # a Python list of numbers (or of lists): one value (or vector) per row
        leaf = self.outputs.leaf(out, lambda t: hasattr(t, "shape"))  # (a nested result: the tensor output= picks)
        if leaf is not None:
            taken = np.asarray(self._to_numpy(leaf))
        else:
            flat, names = output_parts(out)
            arrays = [self._to_numpy(t) for t in flat]
            taken = self.outputs.take(
                arrays, names, lambda a: a.shape, lambda parts: np.concatenate([p.reshape(p.shape[0], -1) for p in parts], 1)
            )
            taken = np.asarray(taken)
        m = rows[0].shape[0]
        if taken.ndim == 0 or taken.shape[0] != m:
            raise InputError(
                f"the model maps {m} rows to an output of shape {taken.shape}; the output's first dimension must be the batch"
            )
        self._shape = tuple(taken.shape[1:])
        return taken.reshape(m, -1).astype(np.float64)


def forward_model(model: Any, data: Any, output: OutputChoice = None) -> ForwardModel:
    """The :class:`ForwardModel` of a PyTorch module, a Keras 3 model, or a callable on numpy arrays."""
    from . import is_keras_model

    if is_keras_model(model):
        import keras

        def keras_call(rows: list[np.ndarray]) -> Any:
            return model(rows if len(rows) > 1 or isinstance(data, (list, tuple)) else rows[0], training=False)

        return ForwardModel(keras_call, data, output, lambda t: np.asarray(keras.ops.convert_to_numpy(t)))
    try:
        import torch
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(model, nn.Module):
        return ForwardModel(_torch_call(model), data, output, _torch_numpy, model)
    if callable(model):
        return ForwardModel(lambda rows: model(*rows), data, output, np.asarray, model)
    raise InputError(
        f"ShapleyExplainer takes an nn.Module, a Keras model or a function of numpy arrays, not {type(model).__name__}"
    )


def _torch_numpy(value: Any) -> np.ndarray:
    """A tensor (or anything array-like) as a numpy array; 16-bit floats as float32."""
    if hasattr(value, "detach"):
        import torch

        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def _torch_call(model: Any) -> Callable[[list[np.ndarray]], Any]:
    import torch

    from .pytorch.safety import PreservedState, has_active_randomness, model_device_and_dtype

    device, dtype = model_device_and_dtype(model)
    # modules whose training mode draws randomness or batch statistics (dropout, batch norm) run in
    # eval mode, the function shap and DeepExplainer explain; their flags are put back after each call
    switched = [m for m in model.modules() if m.training and has_active_randomness(m)]
    if switched:
        names = sorted({type(m).__name__ for m in switched})
        warnings.warn(
            f"the model is in training mode with {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}: "
            "ShapleyExplainer explains its eval-mode function and leaves every module's training flag as it was",
            stacklevel=4,
        )
    scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())

    def call(rows: list[np.ndarray]) -> Any:
        tensors = []
        for a in rows:
            t = torch.from_numpy(np.ascontiguousarray(a))
            if t.is_floating_point() and dtype is not None:
                t = t.to(dtype)
            tensors.append(t.to(device) if device is not None else t)
        state = None if scripted else PreservedState(model)  # TorchScript keeps its state out of Python's reach
        try:
            for m in switched:
                m.training = False
            with torch.no_grad():
                return model(*tensors)
        finally:
            for m in switched:
                m.training = True
            if state is not None:
                state.restore()

    return call
