"""Captum's argument forms for :mod:`rnnshap.captum`: inputs, baselines, targets, additional forward
arguments, and the attributions handed back in the inputs' dtype and device (package-internal).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from ..errors import InputError

Tensor = torch.Tensor
TensorOrTuple = Union[Tensor, tuple[Tensor, ...]]
#: Captum's target forms: None, an int, a tuple of ints, a list of ints or tuples, a tensor
Target = Union[None, int, tuple[int, ...], Tensor, Sequence[Union[int, tuple[int, ...]]]]



def zero_baselines(xs: list[Tensor]) -> list[Tensor]:
    return [torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device) for x in xs]


def format_extra(additional_forward_args: Any) -> tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    return additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


class BaselineError(InputError, AssertionError):
    """DeepLiftShap's baselines are not a distribution; an ``AssertionError`` too, as Captum raises."""


def _called(baselines: Callable[..., Any], inputs: Any) -> Any:
    """Captum's baselines given as a function: called with ``inputs`` if it takes an argument."""
    return baselines(inputs) if inspect.signature(baselines).parameters else baselines()


def custom_attributions(
    function: Callable[..., Any], multipliers: tuple[Tensor, ...], inputs: tuple[Tensor, ...], baselines: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """``custom_attribution_func(multipliers, inputs, baselines)`` as a tuple of tensors shaped like the inputs."""
    result = function(multipliers, inputs, baselines)
    result = result if isinstance(result, tuple) else (result,)
    shaped = all(isinstance(r, Tensor) and r.shape == x.shape for r, x in zip(result, inputs, strict=False))
    if len(result) != len(inputs) or not shaped:
        raise ValueError(
            "custom_attribution_func must return one tensor per input, shaped like it (a tuple for several inputs); got "
            + ", ".join(str(tuple(r.shape)) if isinstance(r, Tensor) else type(r).__name__ for r in result)
            + f" for inputs of shapes {', '.join(str(tuple(x.shape)) for x in inputs)}"
        )
    return tuple(result)


def expand_target(target: Target, n: int, count: int) -> Target:
    """A per-row target repeated for each row's ``count`` pairs (Captum's expansion); others as given."""
    if isinstance(target, list):
        return [t for t in target for _ in range(count)]
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat_interleave(count, dim=0)
    return target


def expand_args(additional_forward_args: Any, n: int, count: int) -> Any:
    """Per-row additional arguments (tensors with ``n`` rows) repeated for each row's ``count`` pairs."""
    if additional_forward_args is None:
        return None
    return tuple(
        a.repeat_interleave(count, dim=0) if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n else a
        for a in format_extra(additional_forward_args)
    )


def format_inputs(inputs: Any) -> tuple[bool, list[Tensor]]:
    """(whether ``inputs`` is a tuple, its tensors detached), checked."""
    is_tuple = isinstance(inputs, tuple)
    items = inputs if is_tuple else (inputs,)
    if not items or not all(isinstance(x, Tensor) for x in items):
        raise TypeError(f"inputs must be a tensor or a non-empty tuple of tensors, as for Captum, not {type(inputs).__name__}")
    xs = [x.detach() for x in items]
    for i, x in enumerate(xs):
        if not x.is_floating_point():
            raise TypeError(
                f"input {i} has dtype {x.dtype}: DeepLift attributes to floating-point inputs (as in Captum). Pass "
                "integer or bool tensors the model also needs (lengths, masks) in additional_forward_args; for token "
                "ids attributed at their embedding, use rnnshap.DeepExplainer."
            )
        if x.dim() == 0 or x.shape[0] != xs[0].shape[0]:
            raise ValueError(f"every input needs the same first (batch) dimension; got shapes {[tuple(x.shape) for x in xs]}")
    return is_tuple, xs


def deeplift_baselines(baselines: Any, xs: list[Tensor]) -> list[Tensor]:
    """One baseline tensor per input, with one row or one per input row (Captum's DeepLift forms)."""
    if baselines is None:
        given: tuple[Any, ...] = (0,) * len(xs)
    else:
        given = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(given) != len(xs):
        raise ValueError(f"{len(xs)} input(s) but {len(given)} baseline(s): give one baseline per input")
    result = []
    for i, (b, x) in enumerate(zip(given, xs, strict=True)):
        if isinstance(b, (int, float)):
            result.append(torch.full((1, *x.shape[1:]), b, dtype=x.dtype, device=x.device))
            continue
        if not isinstance(b, Tensor):
            raise TypeError(f"baseline {i} must be a tensor or a number, not {type(b).__name__}")
        if b.dim() != x.dim() or b.shape[1:] != x.shape[1:] or b.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"baseline {i} has shape {tuple(b.shape)} for an input of shape {tuple(x.shape)}: DeepLift pairs each "
                "input row with a baseline row, so give the input's shape, or a first dimension of 1 for every row "
                "(for a distribution of baselines to average over, use DeepLiftShap)"
            )
        result.append(b.detach().to(x.device, x.dtype))
    return result


def baseline_distribution(baselines: Any, inputs: Any, xs: list[Tensor]) -> list[Tensor]:
    """DeepLiftShap's baselines: tensors of at least two rows each (Captum's forms, callables included)."""
    if callable(baselines) and not isinstance(baselines, Tensor):
        baselines = _called(baselines, inputs)
    given = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(given) != len(xs):
        raise BaselineError(f"{len(xs)} input(s) but {len(given)} baseline distribution(s): give one per input")
    if not all(isinstance(b, Tensor) for b in given):
        raise BaselineError(
            "DeepLiftShap's baselines are a distribution: a tensor (a tuple of tensors for several inputs) whose first "
            "dimension indexes the baselines. For a single baseline or a number, use DeepLift."
        )
    count = int(given[0].shape[0]) if given[0].dim() else 0
    if count < 2:
        raise BaselineError(
            f"DeepLiftShap needs a distribution of at least 2 baselines (as Captum), got {count}. "
            "For a single baseline, use DeepLift."
        )
    for i, (b, x) in enumerate(zip(given, xs, strict=True)):
        if b.dim() != x.dim() or b.shape[1:] != x.shape[1:] or b.shape[0] != count:
            raise BaselineError(
                f"baseline distribution {i} has shape {tuple(b.shape)} for an input of shape {tuple(x.shape)}: its "
                f"first dimension indexes the {count} baselines and the others must match the input's"
            )
    return [b.detach().to(x.device, x.dtype) for b, x in zip(given, xs, strict=True)]


def flat_targets(target: Target, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Captum's ``target`` as one flat output index per sample, for outputs of ``shape`` per sample."""
    if target is None:
        if int(np.prod(shape)) != 1:
            raise ValueError(
                f"the model has outputs of shape {shape} per sample: give target= (an output index, a tuple of "
                "indices, or one per sample), as for Captum"
            )
        return np.zeros(n, dtype=np.int64)
    if isinstance(target, Tensor):
        if target.numel() == 1:
            value = target.item()
            if not isinstance(value, int) or target.dtype == torch.bool:
                raise ValueError(f"a target tensor must hold integer indices, got {target}")
            return np.full(n, _flat_index((value,), shape), dtype=np.int64)
        if target.dim() != 1 or target.numel() != n or target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"a target tensor holds one integer index per sample ({n}), got shape {tuple(target.shape)}")
        return np.asarray([_flat_index((int(t),), shape) for t in target.tolist()], dtype=np.int64)
    if isinstance(target, (int, np.integer)):
        return np.full(n, _flat_index((int(target),), shape), dtype=np.int64)
    if isinstance(target, tuple):
        return np.full(n, _flat_index(target, shape), dtype=np.int64)
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"a target list holds one target per sample: {n} samples but {len(target)} targets")
        return np.asarray([_flat_index(t if isinstance(t, tuple) else (t,), shape) for t in target], dtype=np.int64)
    raise TypeError(f"target must be None, an int, a tuple, a list or a tensor, as for Captum, not {type(target).__name__}")


def _flat_index(index: tuple[Any, ...], shape: tuple[int, ...]) -> int:
    """The flat position of the output at ``index`` (leading indices; trailing axes of size 1 may be left out)."""
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in index):
        raise ValueError(f"target {index!r} must hold integer indices")
    if len(index) > len(shape) or any(size != 1 for size in shape[len(index) :]):
        raise ValueError(
            f"target {index!r} does not pick one output of a model whose outputs have shape {shape} per sample: "
            f"give {len(shape)} index(es), one per output dimension" + (" (or target=None)" if not shape else "")
        )
    full = tuple(int(i) for i in index) + (0,) * (len(shape) - len(index))
    for i, size in zip(full, shape, strict=True):
        if not -size <= i < size:
            raise ValueError(f"target {index!r} is out of range for outputs of shape {shape} per sample")
    if not shape:
        return 0
    return int(np.ravel_multi_index(tuple(i % size for i, size in zip(full, shape, strict=True)), shape))


def as_tensor(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).to(device=device, dtype=dtype)




__all__ = [
    "BaselineError", "Target", "Tensor", "TensorOrTuple", "as_tensor", "baseline_distribution", "custom_attributions",
    "deeplift_baselines", "expand_args", "expand_target", "flat_targets", "format_extra", "format_inputs", "zero_baselines",
]  # fmt: skip
