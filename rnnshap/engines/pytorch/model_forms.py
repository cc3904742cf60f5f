"""shap's other model forms for PyTorch: a model in training mode, and ``(model, layer)``.

- A model in training mode with dropout or batch statistics is explained in eval mode, as shap does
  (it calls ``model.eval()``): :class:`EvalMode` switches every module to eval for each pass and puts
  every training flag back after it, so the model is left as given.
- ``(model, layer)``, shap's "interim layer" form: the values are attributions to the input of
  ``layer``, for samples and background given as the model's own inputs. The engine explains
  :class:`FromLayer`, the model split at ``layer`` (the layer's input is the function's input), on the
  layer's inputs computed from the model's by a :class:`LayerForm` it holds. With ``layer_output=True`` the split is
  after ``layer``: the values are attributions to its output (every floating-point tensor of it: an
  ``nn.LSTM``'s ``out``, ``h_n`` and ``c_n``), the hidden states over time of a recurrent layer.
- A model whose mixture-of-experts layers come from transformers runs their experts in its "batched_mm" form while
  explaining (:class:`BatchedExperts`): every form computes the same function, and the batched one is written with
  operations that have exact rules.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...errors import InputError, ModelStateError
from .safety import as_tensors, check_matching, has_active_randomness, model_device_and_dtype, refuse_scripted
from .state import AsFunction, PreservedState, compiled_anywhere

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
        if module.training
        and (has_active_randomness(module) or (isinstance(module, nn.MultiheadAttention) and module.dropout > 0))
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


class Eager(nn.Module):
    """A model holding compiled modules (``torch.compile``, ``module.compile()``), run as the function it
    computes: each call runs the original modules eagerly (:class:`~.state.AsFunction`), so nothing is
    compiled while explaining, and the model is left as given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.training = model.training  # (its own flag only)

    def forward(self, *inputs: Any) -> Any:
        with AsFunction(self.module):
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


class _Batched:
    """``with _Batched(configs):`` transformers' experts modules reading these configs run in their "batched_mm" form,
    each config's own form put back once no pass holds it (passes in other threads, or nested, may overlap: the first
    switches a config, the last puts its form back)."""

    def __init__(self, configs: list[Any]) -> None:
        self.configs = configs

    def __enter__(self) -> None:
        with _SWITCHING:
            for config in self.configs:
                own, holders = _SWITCHED.get(id(config), (None, 0))
                if not holders:
                    own = vars(config).get(_FORM)
                    setattr(config, _FORM, BATCHED)
                _SWITCHED[id(config)] = (own, holders + 1)

    def __exit__(self, *exc: Any) -> None:
        with _SWITCHING:
            for config in self.configs:
                own, holders = _SWITCHED.pop(id(config))
                if holders > 1:
                    _SWITCHED[id(config)] = (own, holders - 1)
                else:
                    setattr(config, _FORM, own)


#: transformers' name of the experts' form on a model's config, and the form rnnshap explains them in
_FORM, BATCHED = "_experts_implementation_internal", "batched_mm"
#: the configs switched to the batched form by passes running now (by id: each one's own form and how many passes hold
#: it), and the lock of their switching
_SWITCHED: dict[int, tuple[Any, int]] = {}
_SWITCHING = threading.Lock()


def experts_configs(model: nn.Module) -> list[Any]:
    """The configs of ``model``'s mixture-of-experts modules of transformers (each class decorated by its
    ``use_experts_implementation``), each once: every pass switches them to "batched_mm", whatever form they name
    then (a form set after the explainer was made included; one already batched stays so).

    The router of such a module picks each token's top-k experts; their form decides only how the picked experts'
    products are written: "grouped_mm" (transformers' default on the CPU) sorts the picks by expert, runs one grouped
    product, and puts the rows back by the inverse permutation (integer floor divisions, counts and cumulative sums of
    the picks); "eager" loops over the experts hit (a value read on the host per expert); "batched_mm" gathers each
    token's experts' weights by the picks and multiplies them, which the rules of picked indices and products
    attribute exactly. The forms give the same values up to the order of their sums."""
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = vars(module).get("config")
        if "_is_expert_parallel" in vars(module) and config is not None and isinstance(vars(config).get(_FORM), str):
            configs[id(config)] = config
    return list(configs.values())


class BatchedExperts(nn.Module):
    """``model`` with its transformers mixture-of-experts layers in their "batched_mm" form (:func:`experts_configs`):
    each call switches them to it and puts each config's own form back afterwards, so the model is left as given."""

    def __init__(self, model: nn.Module, configs: list[Any]) -> None:
        super().__init__()
        self.module = model
        self.configs = configs
        self.training = model.training  # (its own flag only)

    def forward(self, *inputs: Any) -> Any:
        if torch.compiler.is_compiling():  # (the captured pass switches them around its compiled call: :meth:`switched`)
            return self.module(*inputs)
        with _Batched(self.configs):
            return self.module(*inputs)

    @staticmethod
    def switched(model: nn.Module) -> Any:
        """``with BatchedExperts.switched(model):`` the experts of every :class:`BatchedExperts` in ``model`` in their
        batched form, around a call torch.compile captures (which cannot trace the switch's lock)."""
        configs = [c for m in model.modules() if isinstance(m, BatchedExperts) for c in m.configs]
        return _Batched(configs)


def in_eval_mode(model: nn.Module, build: Any) -> Any:
    """``build(model)``, for a model in training mode with randomness ``build(EvalMode(model))`` built
    with the model in eval mode (the engine checks and probes it then), with one warning that names
    the modules switched. A model holding compiled modules is explained as its original modules (:class:`Eager`), one with
    transformers' mixtures of experts with its experts in their batched form (:class:`BatchedExperts`)."""
    refuse_scripted(model)  # (before any flag is read: a frozen TorchScript module has no `training`)
    if compiled_anywhere(model) and not isinstance(model, Eager):
        model = Eager(model)
    configs = experts_configs(model)
    if configs:
        model = BatchedExperts(model, configs)
    switched = training_randomness(_given(model))
    if not switched:
        try:
            return build(model)
        except ModelStateError as error:
            # forward() draws random numbers or updates running statistics: where it does so in training mode
            # only (a GaussianNoise, a running normalization), the model forgot .eval(): explained in eval mode
            training = [name or "the model" for name, module in _given(model).named_modules() if module.training]
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
    """The model split at ``layer``: ``forward(*z, *args)`` runs the model with the layer's floating-point
    positional inputs (``side="input"``) or the floating-point tensors of its output (``side="output"``)
    replaced by ``z``; ``args`` follow the model's inputs unchanged.

    What the model computes before the cut runs on a constant (``anchor``: one row of the model's
    inputs, repeated to the batch) and is discarded where it reaches the cut; :class:`LayerForm`
    (and :mod:`rnnshap.captum`'s layer classes) check that nothing of it reaches the output another way."""

    def __init__(
        self, model: nn.Module, layer: nn.Module, anchor: list[Tensor], positions: list[tuple[int, int]], side: str = "input"
    ) -> None:
        super().__init__()
        if side not in ("input", "output"):
            raise ValueError(f"side is 'input' or 'output', not {side!r}")
        self.model = model
        self.layer_name = _name_of(model, layer)
        self.hooked: nn.Module
        object.__setattr__(self, "hooked", layer)  # a submodule of model, not registered twice
        self.anchor = anchor
        self.positions = positions
        self.side = side

    def forward(self, *given: Any) -> Any:
        z, args = given[: len(self.positions)], given[len(self.positions) :]
        batch = int(z[0].shape[0])
        calls = 0

        def replaced(tensors: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise InputError(_reused(self.layer_name))
            leaves, spec = tree_flatten(tensors)
            for (position, axis), value in zip(self.positions, z, strict=True):
                leaves[position] = value.movedim(0, axis)
            return tree_unflatten(leaves, spec)

        if self.side == "input":
            handle = self.hooked.register_forward_pre_hook(lambda module, inputs: tuple(replaced(inputs)))
        else:
            handle = self.hooked.register_forward_hook(lambda module, inputs, output: replaced(output))
        try:
            with torch._C.DisableTorchFunction():  # a constant, not an operation to attribute
                inputs = [a.expand(batch, *a.shape[1:]) for a in self.anchor]
            out = self.model(*inputs, *args)
        finally:
            handle.remove()
        if calls == 0:
            raise InputError(f"The layer {self.layer_name!r} given with the model was not called by its forward()")
        return out


def layer_tensors(
    model: nn.Module, layer: nn.Module, inputs: list[Tensor], args: tuple[Any, ...] = (), side: str = "input"
) -> tuple[list[Any], Any]:
    """The flattened leaves of ``layer``'s positional inputs (``side="input"``) or of its output
    (``side="output"``) when ``model(*inputs, *args)`` runs without grad, and the model's output; the
    model's parameters, buffers and flags are put back afterwards. Refuses a layer that is not called, or
    called more than once."""
    name = _name_of(model, layer)
    seen: list[Any] = []
    if side == "input":
        handle = layer.register_forward_pre_hook(lambda module, given: seen.append(given))
    else:
        handle = layer.register_forward_hook(lambda module, given, output: seen.append(output))
    state = PreservedState(model)
    try:
        with torch.no_grad():
            out = model(*inputs, *args)
    finally:
        handle.remove()
        state.restore()
    if not seen:
        raise InputError(f"The layer {name!r} given with the model was not called by its forward()")
    if len(seen) > 1:
        raise InputError(_reused(name))
    return tree_flatten(seen[0])[0], out


def batch_axes(
    leaves: list[Any], batch: int, other: list[Any] | None, other_batch: int, name: str, side: str
) -> list[tuple[int, int]]:
    """For each floating-point tensor among ``leaves`` (the layer's tensors for a batch of ``batch``), its
    position and its batch axis: the first axis of size ``batch`` that has size ``other_batch`` in
    ``other`` (the same tensors for another batch size), which tells an LSTM's ``h_n`` of shape
    ``(layers, batch, hidden)`` from one whose layer count equals the batch."""
    positions: list[tuple[int, int]] = []
    for i, a in enumerate(leaves):
        if not (isinstance(a, Tensor) and a.is_floating_point()):
            continue
        twin = other[i] if other is not None and i < len(other) and isinstance(other[i], Tensor) else None
        axes = [
            d for d in range(a.dim())
            if a.shape[d] == batch and (twin is None or (twin.dim() == a.dim() and twin.shape[d] == other_batch))
        ]  # fmt: skip
        if not axes:
            raise InputError(
                f"The {side} of the layer {name!r} has a tensor of shape {tuple(a.shape)} for a batch of {batch}: "
                "none of its dimensions is the batch"
            )
        positions.append((i, axes[0]))
    if not positions:
        raise InputError(
            f"The layer {name!r} takes no floating-point tensor as a positional input: there is nothing to attribute to"
            if side == "input"
            else f"The output of the layer {name!r} holds no floating-point tensor: there is nothing to attribute to"
        )
    return positions


def probe_positions(
    model: nn.Module, layer: nn.Module, inputs: list[Tensor], args: tuple[Any, ...], side: str
) -> list[tuple[int, int]]:
    """The positions and batch axes of the layer's floating-point tensors (:func:`batch_axes`), found by
    running the model on ``inputs`` and on a batch of another size (the first row, or two copies of it)."""
    batch = int(inputs[0].shape[0])
    leaves, _ = layer_tensors(model, layer, inputs, args, side)
    other_batch = 1 if batch > 1 else 2
    per_row = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == batch]
    pick = torch.zeros(other_batch, dtype=torch.long)
    other_args = tuple(a[pick.to(a.device)] if i in per_row else a for i, a in enumerate(args))
    other: list[Any] | None
    try:
        other, _ = layer_tensors(model, layer, [x[pick.to(x.device)] for x in inputs], other_args, side)
    except InputError:
        raise
    except Exception:  # a model that cannot run another batch size: the first axis of the batch's size
        other = None
    return batch_axes(leaves, batch, other, other_batch, _name_of(model, layer), side)


class LayerForm:
    """``DeepExplainer((model, layer), data)``: attributions to the input of ``layer`` (shap's form), or
    with ``side="output"`` (``DeepExplainer(..., layer_output=True)``) to its output.

    ``data`` and every ``X`` are the model's inputs; :meth:`layer_inputs` turns them into the layer's inputs
    (or outputs: one forward pass), which the engine (``TorchEngine(form.split, form.background, layer=form)``)
    then explains as the inputs of :class:`FromLayer`. The base value is the mean model output over the background, as
    in shap. A model whose output depends on its inputs other than through the cut (a skip connection around it) is
    refused: no attribution to the layer's tensors alone adds up then.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, data: Any, side: str = "input") -> None:
        if not any(module is layer for module in model.modules()):
            raise InputError(
                f"(model, layer): the layer ({type(layer).__name__}) is not a submodule of the model; give one of "
                "model.modules(), e.g. (model, model.features[3])"
            )
        if side not in ("input", "output"):
            raise ValueError(f"side is 'input' or 'output', not {side!r}")
        self.whole = model
        self.side = side
        self.model_multi_input = isinstance(data, (list, tuple))
        device, dtype = model_device_and_dtype(model)
        self.model_background = as_tensors(data, "background", self.model_multi_input, device, dtype)
        check_matching(self.model_background, self.model_background, "background")
        self.layer_name = _name_of(model, layer)
        self.layer = layer
        self.positions = probe_positions(model, layer, self.model_background, (), side)
        z, direct = self._layer_tensors(self.model_background)
        anchor = [b[:1].clone() for b in self.model_background]
        #: the model split at the layer: the function the engine explains
        self.split = FromLayer(model, layer, anchor, self.positions, side)
        #: the layer's tensors on the background (as the engine's background), and the model's own output on it
        self.background: Any = z if len(z) > 1 or self.model_multi_input else z[0]
        self.background_cut = (z, direct)
        #: the layer tensors this form made, by id (a weak reference tells that it is the same tensor)
        self._converted: dict[int, weakref.ref[Tensor]] = {}

    def refuse_refresh(self) -> None:
        """The layer's tensors on the background were computed by the model as it was: refuse."""
        raise ModelStateError(
            f"The model was changed (its parameters or buffers written or replaced) after this (model, layer) explainer "
            f"was built, and the background's {self.side}s of the layer {self.layer_name!r} were computed by the model as "
            "it was. Build a new explainer for the model as it is now."
        )

    def _layer_tensors(self, inputs: list[Tensor]) -> tuple[list[Tensor], Any]:
        """The layer's floating-point tensors (its positional inputs, nested ones too, or its output's)
        when the model runs on ``inputs``, each with its batch axis first, and the model's output."""
        leaves, out = layer_tensors(self.whole, self.layer, inputs, (), self.side)
        batch = int(inputs[0].shape[0])
        z = []
        for i, axis in self.positions:
            a = leaves[i] if i < len(leaves) else None
            if not (isinstance(a, Tensor) and a.is_floating_point() and a.dim() > axis and a.shape[axis] == batch):
                raise InputError(
                    f"The {self.side} of the layer {self.layer_name!r} for these inputs does not have the structure it has for "
                    "the background (a floating-point tensor with the batch on the same axis)"
                )
            z.append(a.detach().movedim(axis, 0).clone())
        return z, out

    def check_cut(self, z: list[Tensor], direct: Any, take: Any) -> None:
        """Refuse a model whose output on the layer's tensors ``z`` from a constant upstream differs from its own output
        ``direct`` (``take``: the explained output of a model's result)."""
        state = PreservedState(self.whole)
        try:
            with torch.no_grad():
                split = take(self.split(*z))
        finally:
            state.restore()
        whole = take(direct)
        scale = float(whole.detach().abs().max()) if whole.numel() else 0.0
        tolerance = 64 * torch.finfo(whole.dtype).eps * max(scale, 1.0) if whole.is_floating_point() else 0.0
        if split.shape != whole.shape or float((split - whole).abs().max()) > tolerance:
            raise InputError(
                f"The model's output depends on its inputs other than through the {self.side} of the layer "
                f"{self.layer_name!r} (a path around the layer: a skip connection, or an input used after it). "
                f"Attributions to the layer's {self.side} alone cannot add up then (shap's interim-layer form would "
                f"silently drop that path). Pick a layer whose {self.side} every path to the output goes through."
            )

    def layer_inputs(self, X: Any, what: str, take: Any) -> Any | None:
        """``X``, the model's inputs, as the layer's tensors (in the form of the engine's background), the cut checked
        on them; None where ``X`` is layer tensors this form made already."""
        items = X if isinstance(X, (list, tuple)) else [X]
        if items and all(isinstance(x, Tensor) and self._made(x) for x in items):
            return None
        tensors = as_tensors(X, what, self.model_multi_input, *model_device_and_dtype(self.whole))
        check_matching(tensors, self.model_background, what)
        z, direct = self._layer_tensors(tensors)
        self.check_cut(z, direct, take)
        return z if len(z) > 1 or self.model_multi_input else z[0]

    def remember(self, tensors: list[Tensor]) -> None:
        """Mark ``tensors`` as layer tensors made here (the engine's inputs, and the blocks it takes of them)."""
        self._converted = {key: ref for key, ref in self._converted.items() if ref() is not None}
        self._converted.update((id(t), weakref.ref(t)) for t in tensors)

    def _made(self, tensor: Tensor) -> bool:
        ref = self._converted.get(id(tensor))
        return ref is not None and ref() is tensor


def _name_of(model: nn.Module, layer: nn.Module) -> str:
    """The layer's name in the model as the user gave it (inside the forms rnnshap wraps it in)."""
    return next((name or "the model" for name, module in _given(model).named_modules() if module is layer), type(layer).__name__)


def _given(model: nn.Module) -> nn.Module:
    """The model as the user gave it, inside the forms rnnshap wraps it in (its modules' names are the user's)."""
    while isinstance(model, (EvalMode, Eager, BatchedExperts)):
        model = model.module
    return model


def _reused(name: str) -> str:
    return (
        f"The layer {name!r} is called more than once in one forward(): its input is not one tensor to attribute to. "
        "Give a layer that runs once per forward."
    )
