"""Checks that a model and its inputs can be explained exactly, with errors that say what to do: TorchScript and
meta tensors refused, training-mode randomness, the model's device and dtype, the inputs as tensors and matching the
background. What a pass may change in the model and puts back is in ``state.py`` (:class:`PreservedState`,
:class:`AsFunction`), random draws in ``randomness.py`` (:class:`RandomStates`); both are named here too."""


from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ...errors import SHAPLEY_DOOR, InputError, ModelStateError, ModelTypeError
from ..base import batch_axis_advice, one_sample_hint
from .randomness import (
    DRAW_SEEDS,
    RANDOM_FUNCTIONS,
    SAME_UNDER_SEEDS,
    TORCH_SOURCES,
    RandomStates,
    draws_change,
    draws_matter,
    random_call,
    random_forward_error,
)
from .state import AsFunction, PreservedState, compiled_anywhere, compiled_original

Tensor = torch.Tensor


def refuse_scripted(model: nn.Module) -> None:
    """Refuse a TorchScript model or submodule (``jit.script``, ``jit.trace``, ``jit.freeze``,
    ``optimize_for_inference``) by name, before anything reads its attributes (a frozen module has no
    ``training``)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"the submodule {name!r}" if name else "the model"
            raise ModelStateError(
                f"{where} is a TorchScript module ({type(module).__name__}). Its operations run inside "
                "the TorchScript interpreter, out of rnnshap's sight, so attributions through it would "
                "be silently wrong. Explain the original Python nn.Module instead. " + SHAPLEY_DOOR
            )


def meta_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` with parameters or buffers on the meta device (shapes without values)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if any(p.is_meta for p in module.parameters(recurse=False)) or any(b.is_meta for b in module.buffers(recurse=False))
    ]


def check_meta(model: nn.Module, run: Callable[[], Any]) -> None:
    """Refuse a model whose parameters or buffers on the meta device are read: ``run()`` (its forward on a
    few background rows) fails or returns meta tensors. A meta skeleton called through
    ``torch.func.functional_call`` with real weights (torch.func's ensembling recipe) never reads its own:
    it runs, and is explained."""
    found = meta_modules(model)
    if not found:
        return
    name, module = found[0]
    where = f"the submodule {name!r}" if name else "the model"
    error = ModelStateError(
        f"{where} ({type(module).__name__}) has parameters or buffers on the meta device: they have "
        "shapes but no values, so the model cannot run. Materialize and load the weights first "
        "(model.to_empty(device='cpu') then model.load_state_dict(...))."
    )
    state = PreservedState(model)
    try:
        with torch.no_grad():
            out = run()
    except (NotImplementedError, RuntimeError) as failure:
        raise error from failure
    finally:
        state.restore()
    from torch.utils._pytree import tree_flatten

    if any(isinstance(t, Tensor) and t.is_meta for t in tree_flatten(out)[0]):
        raise error


def check_model(model: Any) -> None:
    """Refuse models rnnshap cannot see into or whose forward pass is random."""
    if not isinstance(model, nn.Module):
        raise ModelTypeError(
            f"The PyTorch engine takes a torch.nn.Module, not {type(model).__name__} (rnnshap.DeepExplainer picks the "
            "engine of a Keras model or a Flax NNX module itself). Wrap a function in an nn.Module whose forward() calls it."
        )
    refuse_scripted(model)
    for name, module in model.named_modules():
        where = f"the submodule {name!r}" if name else "the model"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            raise ModelStateError(
                f"{where} ({type(module).__name__}) was built with track_running_stats=False, so it normalizes "
                "with the mean and variance of the batch even in eval mode: one sample's output depends on the "
                "other samples of the batch, and no attribution can add up. Give it running statistics "
                "(track_running_stats=True, estimated on training data) or replace it with a normalization "
                "within each sample (nn.LayerNorm, nn.GroupNorm)."
            )
        if module.training and has_active_randomness(module):
            raise ModelStateError(
                f"{where} ({type(module).__name__}) is in training mode with active dropout or batch "
                "statistics, which make the output random or couple the samples of a batch, so no "
                "attribution can add up. Call model.eval() before explaining."
            )


def has_active_randomness(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return False


def model_device_and_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of the model's parameters, or None where it has none or several."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and not t.is_meta]
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
    """Turn ``value`` (a tensor, an array, or a list/tuple of them; a ``tf.data.Dataset`` of batches) into
    checked tensors."""
    from ..keras.datasets import dataset_rows, is_dataset

    if is_dataset(value):
        value = dataset_rows(value, what)
        if isinstance(value, list) and len(value) == 1 and not multi_input:
            value = value[0]  # (a dataset whose elements are a tuple of one input)
    candidates = [value] + list(value) if isinstance(value, (list, tuple)) else [value]
    packed = [v for v in candidates if isinstance(v, PackedSequence)]
    if packed:
        raise InputError(
            f"{what} is a PackedSequence, which has no batch dimension to pair samples with references. Give "
            "rnnshap the padded tensor, (batch, time, features), and the lengths as a second (integer) input, "
            "and pack inside forward(): nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, "
            "enforce_sorted=False). Integer inputs that feed no embedding are context, used as given."
        )
    if isinstance(value, dict):
        return [_as_tensor(value, what, device, dtype)]  # (refused there, with what to do)
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
        if isinstance(value, dict):
            keys = list(value)
            raise InputError(
                f"{what} is a dict of inputs ({', '.join(map(repr, keys[:6]))}), and the background was not. For a model "
                "called with a dict (forward(batch: dict)), give the background as a dict too (one tensor per key): the "
                "values then come as a list, one array per key in the background's order. For a model of several "
                "positional inputs, give a list of tensors."
            )
        if isinstance(value, torch.utils.data.DataLoader) or (
            not hasattr(value, "__array__") and not hasattr(value, "__len__") and hasattr(value, "__iter__")
        ):
            raise InputError(
                f"{what} is a {type(value).__name__}, an iterable of batches: give the tensor itself. For a DataLoader "
                "that yields (inputs, labels), torch.cat([x for x, _ in loader]) (a few hundred rows are a background); "
                "explainer.summarize(loader) explains a whole loader batch by batch."
            )
        try:
            array = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - report any conversion failure the same way
            raise InputError(f"{what} cannot be turned into an array: {error}") from error
        if array.dtype == object or array.dtype.kind in "USV":
            raise InputError(f"{what} has dtype {array.dtype}; give numbers (a float tensor or array)")
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # Ray's batches, memory maps: torch warns on a read-only buffer; it is only read
            array = array.copy()
        value = torch.from_numpy(array)
    tensor = value.detach()
    if tensor.is_inference():  # made under torch.inference_mode(): a normal copy, which autograd can take
        with torch.inference_mode(False):
            tensor = tensor.clone()
    if tensor.is_meta:
        raise InputError(
            f"{what} is on the meta device: it has a shape but no values. Give real data (on the CPU or the model's device)."
        )
    if tensor.is_complex():
        raise InputError(f"{what} is complex ({tensor.dtype}); rnnshap explains real-valued inputs")
    if tensor.dim() == 0:
        raise InputError(f"{what} is a scalar; inputs need a leading batch dimension")
    if tensor.shape[0] == 0:
        raise InputError(f"{what} is empty (its first dimension, the batch, has size 0)")
    if tensor.is_floating_point() and bool(torch.isinf(tensor).any()):  # (NaN: a missing value, see rules/missing.py)
        bad = torch.isinf(tensor).nonzero()[0].tolist()
        raise InputError(f"{what} contains infinite values (first at index {tuple(bad)}); attributions of them are undefined")
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if device is not None and tensor.device != device:
        tensor = tensor.to(device)
    return tensor


def check_matching(inputs: list[Tensor], background: list[Tensor], what: str = "X") -> None:
    """Inputs and background must agree in count, kind (floating or not) and in every dimension but
    the batch. A floating input whose dtype differs from its background's takes the background's
    dtype (``inputs`` is updated in place): for a model with floating parameters both already have
    the model's dtype, and a model without any computes in the dtype of what it is given. ``what``: the
    name of ``inputs`` in messages ("X", "background")."""
    if len(inputs) != len(background):
        raise InputError(f"The model was given {len(background)} background input(s) but {len(inputs)} input(s) to explain")
    n = inputs[0].shape[0]
    for i, (x, b) in enumerate(zip(inputs, background, strict=False)):
        if x.shape[1:] != b.shape[1:]:
            raise InputError(
                f"Input {i} has shape {tuple(x.shape)} but its background has shape {tuple(b.shape)}: all "
                f"dimensions after the first (the batch) must agree{one_sample_hint(what, tuple(x.shape), tuple(b.shape[1:]))}"
            )
        if x.shape[0] != n:
            raise InputError(
                f"All inputs need the same number of samples (their first axis, the batch): {what} input 0 has {n}, input "
                f"{i} has {x.shape[0]}. {batch_axis_advice([tuple(t.shape) for t in inputs], 'torch')}"
            )
        if x.device != b.device:
            raise InputError(f"Input {i} is on {x.device} but its background is on {b.device}")
        if x.is_floating_point() != b.is_floating_point():
            raise InputError(
                f"Input {i} is {str(x.dtype).replace('torch.', '')} but its background is "
                f"{str(b.dtype).replace('torch.', '')}. "
                + (
                    "The background is floating point, so the model takes numbers there: pass the input as "
                    "floating point too (x.float())."
                    if b.is_floating_point()
                    else "The background is integer or bool (token ids, lengths or masks): pass the input with "
                    "the same kind of values."
                )
            )
        if x.is_floating_point() and x.dtype != b.dtype:
            inputs[i] = x.to(b.dtype)


__all__ = [
    "DRAW_SEEDS",
    "RANDOM_FUNCTIONS",
    "SAME_UNDER_SEEDS",
    "TORCH_SOURCES",
    "AsFunction",
    "PreservedState",
    "RandomStates",
    "as_tensors",
    "check_matching",
    "check_meta",
    "check_model",
    "compiled_anywhere",
    "compiled_original",
    "draws_change",
    "draws_matter",
    "has_active_randomness",
    "meta_modules",
    "model_device_and_dtype",
    "random_call",
    "random_forward_error",
    "refuse_scripted",
]
