"""shap's other model forms for PyTorch: a model in training mode, and ``(model, layer)``.

- A model in training mode with dropout or batch statistics is explained in eval mode, as shap does
  (it calls ``model.eval()``): :class:`EvalMode` switches every module to eval for each pass and puts
  every training flag back after it, so the model is left as given.
- ``(model, layer)``, shap's "interim layer" form: the values are attributions to the input of
  ``layer``, for samples and background given as the model's own inputs. :class:`InterimEngine`
  explains :class:`FromLayer`, the model split at ``layer`` (the layer's input is the function's
  input), on the layer's inputs computed from the model's.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...errors import InputError, ModelStateError
from ...rules.base import Rule
from ..outputs import OutputChoice
from .engine import TorchEngine
from .safety import PreservedState, as_tensors, check_matching, has_active_randomness, model_device_and_dtype

Tensor = torch.Tensor


class _Evaluating:
    """``with _Evaluating(model):`` every module of ``model`` in eval mode, each flag put back after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(module, module.training) for module in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for module, flag in self.flags:
            module.training = flag


def training_randomness(model: nn.Module) -> list[str]:
    """The modules of ``model`` in training mode whose output eval mode changes (dropout, batch
    statistics, recurrent dropout, attention dropout), by name and class."""
    return [
        f"{name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        for name, module in model.named_modules()
        if module.training and (has_active_randomness(module) or (isinstance(module, nn.MultiheadAttention) and module.dropout > 0))
    ]


class EvalMode(nn.Module):
    """``model`` as the function it computes in eval mode: each call switches every module to eval
    and restores each training flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, *inputs: Any) -> Any:
        with _Evaluating(self.module):
            return self.module(*inputs)


class DictInputs(nn.Module):
    """A model called with a dict of inputs (``forward(batch: dict)``), as a model of one input per key:
    ``forward(*tensors)`` calls ``model(dict(zip(names, tensors)))``."""

    def __init__(self, model: nn.Module, names: list[Any]) -> None:
        super().__init__()
        self.module = model
        self.names = names

    def forward(self, *inputs: Any) -> Any:
        return self.module(dict(zip(self.names, inputs, strict=True)))


def in_eval_mode(model: nn.Module, build: Any) -> Any:
    """``build(model)``, for a model in training mode with randomness ``build(EvalMode(model))`` built
    with the model in eval mode (the engine checks and probes it then), with one warning that names
    the modules switched."""
    switched = training_randomness(model)
    if not switched:
        try:
            return build(model)
        except ModelStateError as error:
            # forward() draws random numbers or updates running statistics: where it does so in training mode
            # only (a GaussianNoise, a running normalization), the model forgot .eval(): explained in eval mode
            training = [name or "the model" for name, module in model.named_modules() if module.training]
            if not getattr(error, "eval_may_help", False) or not training:
                raise
            first = error
        warnings.warn(
            f"The model is in training mode ({len(training)} module(s), e.g. {', '.join(map(repr, training[:4]))}) and its "
            f"forward() is not a function of its input there: {str(first).split(':')[0]}. rnnshap explains the function it "
            "computes in eval mode, as for dropout; each pass switches every module to eval and puts its training flag "
            "back afterwards, so the model is left as given. Call model.eval() before explaining to silence this.",
            UserWarning,
            stacklevel=4,
        )
        try:
            with _Evaluating(model):
                return build(EvalMode(model))
        except ModelStateError as again:
            if getattr(again, "eval_may_help", False):
                raise again from None  # (in eval mode too: the error as it is)
            raise
    shown = ", ".join(switched[:6]) + (f" and {len(switched) - 6} more" if len(switched) > 6 else "")
    warnings.warn(
        f"The model is in training mode, with {shown}: rnnshap explains the function it computes in eval mode, as "
        "shap's DeepExplainer does (dropout off, batch norm with its running statistics). Each pass switches every "
        "module to eval and puts its training flag back afterwards, so the model is left as given. Call model.eval() "
        "before explaining to silence this.",
        UserWarning,
        stacklevel=4,
    )
    with _Evaluating(model):
        return build(EvalMode(model))


class FromLayer(nn.Module):
    """The model split at ``layer``: ``forward(*z)`` runs the model with the layer's floating-point
    positional inputs replaced by ``z``.

    What the model computes before ``layer`` runs on a constant (the first background row, repeated to
    the batch) and is discarded where it feeds ``layer``; :class:`InterimEngine` checks that nothing of
    it reaches the output another way."""

    def __init__(self, model: nn.Module, layer: nn.Module, anchor: list[Tensor], positions: list[tuple[int, int]]) -> None:
        super().__init__()
        self.model = model
        self.layer_name = _name_of(model, layer)
        self.hooked: nn.Module
        object.__setattr__(self, "hooked", layer)  # a submodule of model, not registered twice
        self.anchor = anchor
        self.positions = positions

    def forward(self, *z: Tensor) -> Any:
        batch = int(z[0].shape[0])
        calls = 0

        def replace(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise InputError(_reused(self.layer_name))
            leaves, spec = tree_flatten(args)
            for (position, axis), value in zip(self.positions, z, strict=True):
                leaves[position] = value.movedim(0, axis)
            return tuple(tree_unflatten(leaves, spec))

        handle = self.hooked.register_forward_pre_hook(replace)
        try:
            with torch._C.DisableTorchFunction():  # a constant, not an operation to attribute
                inputs = [a.expand(batch, *a.shape[1:]) for a in self.anchor]
            out = self.model(*inputs)
        finally:
            handle.remove()
        if calls == 0:
            raise InputError(f"The layer {self.layer_name!r} given with the model was not called by its forward()")
        return out


class InterimEngine(TorchEngine):
    """``DeepExplainer((model, layer), data)``: attributions to the input of ``layer`` (shap's form).

    ``data`` and every ``X`` are the model's inputs; :meth:`inputs` turns them into the layer's inputs
    (one forward pass), which the engine then explains as the inputs of :class:`FromLayer`. The base
    value is the mean model output over the background, as in shap. A model whose output depends on
    its inputs other than through the layer's input (a skip connection around it) is refused: the
    layer's input is then not a cut, and no attribution to it alone adds up.
    """

    attributes_model_inputs = False

    def __init__(self, model: nn.Module, layer: nn.Module, data: Any, *, rules: Mapping[Any, Rule] | None = None, output: OutputChoice = None) -> None:
        if not any(module is layer for module in model.modules()):
            raise InputError(
                f"(model, layer): the layer ({type(layer).__name__}) is not a submodule of the model; give one of "
                "model.modules(), e.g. (model, model.features[3])"
            )
        self.whole = model
        self.model_multi_input = isinstance(data, (list, tuple))
        device, dtype = model_device_and_dtype(model)
        self.model_background = as_tensors(data, "background", self.model_multi_input, device, dtype)
        check_matching(self.model_background, self.model_background)
        self.layer_name = _name_of(model, layer)
        self.layer = layer
        z, direct, self.positions = self._layer_inputs(self.model_background)
        anchor = [b[:1].clone() for b in self.model_background]
        self.split = FromLayer(model, layer, anchor, self.positions)
        #: the layer inputs this engine made, by id (a weak reference tells that it is the same tensor)
        self._converted: dict[int, weakref.ref[Tensor]] = {}
        layered: Any = z if len(z) > 1 or self.model_multi_input else z[0]
        super().__init__(self.split, layered, rules=rules, output=output)
        self._check_cut(z, direct)

    def refresh_background_outputs(self) -> None:
        """The layer's inputs on the background were computed by the model as it was: refuse."""
        raise ModelStateError(
            f"The model was changed (its parameters or buffers written or replaced) after this (model, layer) explainer "
            f"was built, and the background's inputs to the layer {self.layer_name!r} were computed by the model as it "
            "was. Build a new explainer for the model as it is now."
        )

    def _layer_inputs(self, inputs: list[Tensor]) -> tuple[list[Tensor], Any, list[tuple[int, int]]]:
        """The floating-point positional inputs of ``layer`` (nested ones too) when the model runs on
        ``inputs``, each with its batch axis first, the model's output, and for each its position among
        the flattened arguments and its batch axis there."""
        seen: list[tuple[Any, ...]] = []

        def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args)

        handle = self.layer.register_forward_pre_hook(capture)
        state = PreservedState(self.whole)
        try:
            with torch.no_grad():
                out = self.whole(*inputs)
        finally:
            handle.remove()
            state.restore()
        if not seen:
            raise InputError(f"The layer {self.layer_name!r} given with the model was not called by its forward()")
        if len(seen) > 1:
            raise InputError(_reused(self.layer_name))
        # every floating tensor the layer takes positionally, nested ones included (an LSTM's (h0, c0)), with
        # the axis of the batch (an LSTM's states are (layers, batch, hidden)): attributed with the batch first
        leaves = tree_flatten(seen[0])[0]
        batch = int(inputs[0].shape[0])
        positions: list[tuple[int, int]] = []
        for i, a in enumerate(leaves):
            if not (isinstance(a, Tensor) and a.is_floating_point()):
                continue
            axes = [d for d in range(a.dim()) if a.shape[d] == batch]
            if not axes:
                raise InputError(
                    f"The input of the layer {self.layer_name!r} has shape {tuple(a.shape)} for a batch of {batch}: "
                    "none of its dimensions is the batch"
                )
            positions.append((i, axes[0]))
        if not positions:
            raise InputError(f"The layer {self.layer_name!r} takes no floating-point tensor as a positional input: there is nothing to attribute to")
        z = [leaves[i].detach().movedim(axis, 0).clone() for i, axis in positions]
        return z, out, positions

    def _check_cut(self, z: list[Tensor], direct: Any) -> None:
        """Refuse a model whose output on ``z`` from a constant upstream differs from its own output."""
        state = PreservedState(self.whole)
        try:
            with torch.no_grad():
                split = self._take(self.model(*z))
        finally:
            state.restore()
        whole = self._take(direct)
        scale = float(whole.detach().abs().max()) if whole.numel() else 0.0
        tolerance = 64 * torch.finfo(whole.dtype).eps * max(scale, 1.0) if whole.is_floating_point() else 0.0
        if split.shape != whole.shape or float((split - whole).abs().max()) > tolerance:
            raise InputError(
                f"The model's output depends on its inputs other than through the input of the layer "
                f"{self.layer_name!r} (a path around the layer: a skip connection, or an input used after it). "
                "Attributions to the layer's input alone cannot add up then (shap's interim-layer form would "
                "silently drop that path). Pick a layer whose input every path to the output goes through."
            )

    def inputs(self, X: Any, what: str) -> list[Tensor]:
        """``X``, the model's inputs, as the inputs of ``layer`` (already converted ones pass)."""
        items = X if isinstance(X, (list, tuple)) else [X]
        if items and all(isinstance(x, Tensor) and self._made(x) for x in items):
            return super().inputs(X, what)
        tensors = as_tensors(X, what, self.model_multi_input, *model_device_and_dtype(self.whole))
        check_matching(tensors, self.model_background)
        z, direct, _ = self._layer_inputs(tensors)
        self._check_cut(z, direct)
        result = super().inputs(z if len(z) > 1 or self.model_multi_input else z[0], what)
        self._remember(result)
        return result

    def take(self, inputs: list[Any], start: int, stop: int) -> list[Any]:  # type: ignore[override]
        part = [x[start:stop] for x in inputs]
        self._remember(part)
        return part

    def _remember(self, tensors: list[Tensor]) -> None:
        self._converted = {key: ref for key, ref in self._converted.items() if ref() is not None}
        self._converted.update((id(t), weakref.ref(t)) for t in tensors)

    def _made(self, tensor: Tensor) -> bool:
        ref = self._converted.get(id(tensor))
        return ref is not None and ref() is tensor


def _name_of(model: nn.Module, layer: nn.Module) -> str:
    return next((name or "the model" for name, module in model.named_modules() if module is layer), type(layer).__name__)


def _reused(name: str) -> str:
    return (
        f"The layer {name!r} is called more than once in one forward(): its input is not one tensor to attribute to. "
        "Give a layer that runs once per forward."
    )
