"""Checks that a model and its inputs can be explained exactly, with errors that say what to do."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import InputError, ModelStateError

Tensor = torch.Tensor


def check_model(model: Any) -> None:
    """Refuse models rnnshap cannot see into or whose forward pass is random."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"rnnshap.DeepExplainer takes a torch.nn.Module (or a Keras model), not {type(model).__name__}. "
            "Wrap a function in an nn.Module whose forward() calls it."
        )
    for name, module in model.named_modules():
        where = f"the submodule {name!r}" if name else "the model"
        if isinstance(module, torch.jit.ScriptModule):
            raise ModelStateError(
                f"{where} is a TorchScript module ({type(module).__name__}). Its operations run inside "
                "the TorchScript interpreter, out of rnnshap's sight, so attributions through it would "
                "be silently wrong. Explain the original Python nn.Module instead."
            )
        if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
            raise ModelStateError(
                f"{where} was compiled with torch.compile, whose graphs run out of rnnshap's sight. "
                "Explain the original module instead (model._orig_mod)."
            )
        if module.training and _has_active_randomness(module):
            raise ModelStateError(
                f"{where} ({type(module).__name__}) is in training mode with active dropout or batch "
                "statistics, which make the output random or couple the samples of a batch, so no "
                "attribution can add up. Call model.eval() before explaining."
            )


def _has_active_randomness(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return False


def model_device_and_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of the model's parameters, or None where it has none or several."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    devices = {t.device for t in tensors}
    dtypes = {t.dtype for t in tensors}
    device = devices.pop() if len(devices) == 1 else None
    dtype = tensors[0].dtype if len(dtypes) == 1 else (tensors[0].dtype if tensors else None)
    return device, dtype


def as_tensors(
    value: Any,
    what: str,
    multi_input: bool,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> list[Tensor]:
    """Turn ``value`` (a tensor, an array, or a list/tuple of them) into checked tensors."""
    if multi_input:
        if not isinstance(value, (list, tuple)):
            raise InputError(
                f"The background was a list (one tensor per model input), so {what} must be a list or "
                f"tuple too, not {type(value).__name__}."
            )
        items: Sequence[Any] = value
    else:
        if isinstance(value, (list, tuple)):
            raise InputError(
                f"The background was a single tensor, so {what} must be a single tensor or array, not a "
                f"{type(value).__name__}. For a model with several inputs, pass the background as a list too."
            )
        items = [value]
    if multi_input and len(items) == 0:
        raise InputError(f"{what} is an empty list; give one tensor per model input")
    return [_as_tensor(item, f"{what}[{i}]" if multi_input else what, device, dtype) for i, item in enumerate(items)]


def _as_tensor(value: Any, what: str, device: torch.device | None, dtype: torch.dtype | None) -> Tensor:
    """A checked tensor on the model's device. Floating inputs take the model's dtype; integer and
    boolean inputs (lengths, masks) are context: they keep their dtype and get no attribution."""
    if not isinstance(value, Tensor):
        try:
            array = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - report any conversion failure the same way
            raise InputError(f"{what} cannot be turned into an array: {error}") from error
        if array.dtype == object or array.dtype.kind in "USV":
            raise InputError(f"{what} has dtype {array.dtype}; give numbers (a float tensor or array)")
        value = torch.from_numpy(np.ascontiguousarray(array))
    tensor = value.detach()
    if tensor.is_complex():
        raise InputError(f"{what} is complex ({tensor.dtype}); rnnshap explains real-valued inputs")
    if tensor.dim() == 0:
        raise InputError(f"{what} is a scalar; inputs need a leading batch dimension")
    if tensor.shape[0] == 0:
        raise InputError(f"{what} is empty (its first dimension, the batch, has size 0)")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise InputError(f"{what} contains NaN or infinite values (first at index {tuple(bad)}); attributions of them are undefined")
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if device is not None and tensor.device != device:
        tensor = tensor.to(device)
    return tensor


def check_matching(inputs: list[Tensor], background: list[Tensor]) -> None:
    """Inputs and background must agree in count and in every dimension but the batch."""
    if len(inputs) != len(background):
        raise InputError(f"The model was given {len(background)} background input(s) but {len(inputs)} input(s) to explain")
    n = inputs[0].shape[0]
    for i, (x, b) in enumerate(zip(inputs, background, strict=False)):
        if x.shape[1:] != b.shape[1:]:
            raise InputError(
                f"Input {i} has shape {tuple(x.shape)} but its background has shape {tuple(b.shape)}: all "
                "dimensions after the first (the batch) must agree"
            )
        if x.shape[0] != n:
            raise InputError(f"All inputs need the same number of samples; input 0 has {n}, input {i} has {x.shape[0]}")
        if x.device != b.device:
            raise InputError(f"Input {i} is on {x.device} but its background is on {b.device}")
