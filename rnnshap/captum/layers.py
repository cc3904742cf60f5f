"""Captum's layer and neuron doors: :class:`LayerDeepLift` and :class:`LayerDeepLiftShap` attribute to a
layer's output (or input), :class:`NeuronDeepLift` and :class:`NeuronDeepLiftShap` one neuron of a layer
to the inputs. Each is a model door (:mod:`rnnshap.captum.deeplift`) of the model cut at the layer
(:class:`_Cut`) or stopped at it (:class:`_Neuron`). See :mod:`rnnshap.captum`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import InputError
from .arguments import (
    Target,
    Tensor,
    TensorOrTuple,
    baseline_distribution,
    deeplift_baselines,
    expand_args,
    expand_target,
    format_extra,
    format_inputs,
)
from .deeplift import DeepLift, DeepLiftShap


class _AtLayer(DeepLift):
    """What the layer and neuron doors share: Captum's constructor, with the layer checked to be a submodule."""

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        multiply_by_inputs: bool = True,
        eps: float = 1e-10,
        *,
        batch_size: int = 2048,
        rules: Mapping[Any, Any] | None = None,
        check_additivity: bool | float = False,
    ) -> None:
        super().__init__(model, multiply_by_inputs, eps, batch_size=batch_size, rules=rules, check_additivity=check_additivity)
        self.layer = _checked_layer(model, layer)
        self.device_ids = None

    def _settings(self) -> dict[str, Any]:
        """The options the inner model door takes from this one."""
        return {
            "batch_size": self.batch_size, "rules": self.rules, "check_additivity": self.check_additivity,
            "keep_explainers": 0,  # (the inner door is made for one call)
        }  # fmt: skip


class LayerDeepLift(_AtLayer):
    """DeepLIFT attributions to a layer's output (or input), with ``captum.attr.LayerDeepLift``'s call.

    ``LayerDeepLift(model, layer).attribute(inputs, baselines=..., target=...)`` returns, per input row,
    ``multiplier × (z(x) − z(baseline))`` for the tensors ``z`` of ``layer``: its output (Captum's
    default), or with ``attribute_to_layer_input=True`` its positional inputs. Every floating-point
    tensor of that output counts: an ``nn.LSTM`` gives ``(out, h_n, c_n)``, the hidden states over time,
    then the final states (with their batch axis first). The multipliers are those of rnnshap's exact
    rules for the part of the model after the layer, so the attributions of each row add up to
    ``f(x_i) − f(baseline_i)`` at its target, recurrent layers after the cut included. Captum takes
    plain gradients inside ``nn.LSTM`` / ``nn.GRU`` and through products, and misses it there.

    It is :class:`DeepLift` of the model split at the layer (``rnnshap.engines.pytorch.model_forms.FromLayer``:
    the model with the layer's tensors replaced), explained at ``z(x)`` against ``z(baseline)``. The
    layer's tensors must be a cut: a model whose output depends on its inputs other than through them
    (a skip connection around the layer) is refused (:class:`rnnshap.InputError`), since no
    attribution to them alone adds up; Captum returns values whose delta shows the missing path.

    Args:
        model: the ``nn.Module`` to explain, in eval mode; not modified (no hooks are left on it).
        layer: a submodule of ``model`` that runs once per forward.
        multiply_by_inputs, eps, batch_size, rules, check_additivity: as for :class:`DeepLift`
            (``multiply_by_inputs=False``: the multipliers at the layer's tensors).

    Example:
        >>> attributions = LayerDeepLift(model, model.lstm).attribute(x, baselines=b, target=1)  # doctest: +SKIP
        >>> out, h_n, c_n = attributions              # out: (N, T, hidden), the hidden states   # doctest: +SKIP
    """

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Target = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
        grad_kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Attributions to the layer's output (or input) of each input row against its baseline row.

        Args:
            inputs, baselines, target, additional_forward_args: as for :meth:`DeepLift.attribute`.
            return_convergence_delta: also return ``delta``, shape ``(n,)``: the sum of each row's layer
                attributions minus ``f(x_i) − f(baseline_i)`` at its target.
            attribute_to_layer_input: False (Captum's default): attribute to the layer's output; True:
                to its positional inputs.
            custom_attribution_func: ``f(multipliers, layer_inputs, layer_baselines)`` on the layer's
                tensors, as in Captum.
            grad_kwargs: Captum's arguments for ``torch.autograd.grad``; rnnshap takes none (must be None).

        Returns:
            the attributions, shaped like the layer's tensors with the batch axis first: a tensor where
            the layer has one, else a tuple (an LSTM's output: ``(out, h_n, c_n)``); with
            ``return_convergence_delta=True`` also ``delta``.

        Raises:
            rnnshap.InputError: the layer is not called, is called twice, or is not a cut of the model.
        """
        _no_grad_kwargs(grad_kwargs)
        _, xs = format_inputs(inputs)
        extra = format_extra(additional_forward_args)
        bases = [b.expand_as(x) for b, x in zip(deeplift_baselines(baselines, xs), xs, strict=True)]
        cut = _Cut(self.model, self.layer, "input" if attribute_to_layer_input else "output", xs, extra)
        zx, zb = cut.tensors(xs, extra), cut.tensors(bases, extra)
        inner = DeepLift(cut.split, self.multiplies_by_inputs, self.eps, **self._settings())
        result = inner.attribute(
            tuple(zx), tuple(zb), target, additional_forward_args, return_convergence_delta, custom_attribution_func
        )
        return _layer_result(result, len(zx), return_convergence_delta)


class LayerDeepLiftShap(LayerDeepLift):
    """DeepSHAP attributions to a layer's output (or input), with ``captum.attr.LayerDeepLiftShap``'s call.

    The mean over the baseline distribution of :class:`LayerDeepLift`'s attributions: with no per-row
    ``additional_forward_args`` it is ``rnnshap.DeepExplainer((model, layer), baselines,
    layer_output=True).shap_values(inputs)`` at the target. Each row's attributions add up to
    ``f(x_i) − mean_j f(b_j)``; ``delta`` is per (row, baseline) pair, shape ``(n * n_baselines,)``, as
    in Captum (see :class:`DeepLiftShap`).

    Args: as for :class:`LayerDeepLift`.

    Example:
        >>> explainer = LayerDeepLiftShap(model, model.lstm)                                    # doctest: +SKIP
        >>> (out, h_n, c_n), delta = explainer.attribute(x, background, target=1, return_convergence_delta=True)  # doctest: +SKIP
    """

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: Any,
        target: Target = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        """Attributions to the layer's tensors averaged over the baseline distribution, as Captum's.

        Args:
            inputs, target, additional_forward_args: as for :meth:`LayerDeepLift.attribute`.
            baselines: the baseline distribution (at least 2 rows), or a callable returning one, as for
                :meth:`DeepLiftShap.attribute`.
            return_convergence_delta: also return ``delta``, shape ``(n * n_baselines,)``.
            attribute_to_layer_input, custom_attribution_func: as for :meth:`LayerDeepLift.attribute`.

        Returns:
            as for :meth:`LayerDeepLift.attribute`.

        Raises:
            rnnshap.captum.BaselineError: the baselines are not a distribution of at least 2 rows.
            rnnshap.InputError: the layer is not called, is called twice, or is not a cut of the model.
        """
        _, xs = format_inputs(inputs)
        bases = baseline_distribution(baselines, inputs, xs)
        n, count = int(xs[0].shape[0]), int(bases[0].shape[0])
        extra = format_extra(additional_forward_args)
        side = "input" if attribute_to_layer_input else "output"
        cut = _Cut(self.model, self.layer, side, xs, extra)
        zx = cut.tensors(xs, extra)
        per_row = any(isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n for a in extra)
        settings = self._settings()
        if not per_row:  # the baselines' layer tensors are a distribution of their own
            zb = cut.tensors(bases, extra)
            inner = DeepLiftShap(cut.split, self.multiplies_by_inputs, self.eps, **settings)
            result = inner.attribute(
            tuple(zx), tuple(zb), target, additional_forward_args, return_convergence_delta, custom_attribution_func
        )
            return _layer_result(result, len(zx), return_convergence_delta)
        # a per-row argument reaches the layer: the baseline j of row i has its own layer tensors, as in Captum's pairs
        pair_args = expand_args(additional_forward_args, n, count)
        pair_extra = format_extra(pair_args)
        zb = cut.tensors([b.repeat(n, *[1] * (b.dim() - 1)) for b in bases], pair_extra)
        zx_pairs = tuple(z.repeat_interleave(count, dim=0) for z in zx)
        pairs = DeepLift(cut.split, self.multiplies_by_inputs, self.eps, **settings)
        answer = pairs.attribute(
            zx_pairs, tuple(zb), expand_target(target, n, count), pair_args, return_convergence_delta, custom_attribution_func
        )
        per_pair, delta = answer if return_convergence_delta else (answer, None)
        per_pair = per_pair if isinstance(per_pair, tuple) else (per_pair,)
        mean = tuple(a.reshape(n, count, *a.shape[1:]).mean(1) for a in per_pair)
        return _layer_result((mean, delta) if return_convergence_delta else mean, len(zx), return_convergence_delta)


class NeuronDeepLift(_AtLayer):
    """DeepLIFT attributions of one neuron of a layer to the model's inputs, with
    ``captum.attr.NeuronDeepLift``'s call.

    ``NeuronDeepLift(model, layer).attribute(inputs, neuron_selector, baselines=...)`` explains the
    neuron that ``neuron_selector`` picks in the layer's output (or input, with
    ``attribute_to_neuron_input=True``): the model is run up to the layer and stopped there, and the
    neuron's value is explained with rnnshap's exact rules, so each row's attributions add up to
    ``neuron(x_i) − neuron(baseline_i)``, a hidden unit of an ``nn.LSTM`` at a time step included.

    ``neuron_selector``: an int or a tuple of ints and slices indexing the layer's tensor without its
    batch axis (a slice sums the neurons it covers), as in Captum, for a layer with one floating-point
    tensor; or a callable that takes the layer's output as the layer returns it (an LSTM's
    ``(out, (h_n, c_n))``) and returns one value per row, e.g. ``lambda out: out[0][:, -1, 3]``.

    Args:
        model, layer: as for :class:`LayerDeepLift`.
        multiply_by_inputs, eps, batch_size, rules, check_additivity: as for :class:`DeepLift`.

    Example:
        >>> unit = NeuronDeepLift(model, model.lstm).attribute(x, lambda out: out[0][:, -1, 3], baselines=b)  # doctest: +SKIP
    """

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        """Attributions of the selected neuron to ``inputs``, each row against its baseline row.

        Args:
            inputs, baselines, additional_forward_args, custom_attribution_func: as for
                :meth:`DeepLift.attribute`.
            neuron_selector: see the class docstring.
            attribute_to_neuron_input: select the neuron in the layer's input instead of its output.

        Returns:
            attributions shaped like ``inputs`` (a tensor or a tuple), as Captum's.

        Raises:
            rnnshap.InputError: the layer is not called or called twice, or an index selector on a layer
                with several tensors.
        """
        neuron = _Neuron(self.model, self.layer, neuron_selector, attribute_to_neuron_input)
        inner = DeepLift(neuron, self.multiplies_by_inputs, self.eps, **self._settings())
        return inner.attribute(inputs, baselines, None, additional_forward_args, False, custom_attribution_func)


class NeuronDeepLiftShap(NeuronDeepLift):
    """DeepSHAP attributions of one neuron of a layer, with ``captum.attr.NeuronDeepLiftShap``'s call:
    :class:`NeuronDeepLift`'s attributions averaged over a baseline distribution; each row's add up
    to ``neuron(x_i) − mean_j neuron(b_j)``.

    Args: as for :class:`NeuronDeepLift`.

    Example:
        >>> unit = NeuronDeepLiftShap(model, model.fc1).attribute(x, 3, baselines=background)   # doctest: +SKIP
    """

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        neuron_selector: Any,
        baselines: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        """Attributions of the selected neuron averaged over the baseline distribution.

        Args:
            inputs: as for :meth:`NeuronDeepLift.attribute`, and so are ``neuron_selector``,
                ``additional_forward_args``, ``attribute_to_neuron_input`` and ``custom_attribution_func``.
            baselines: the baseline distribution, as for :meth:`DeepLiftShap.attribute`.

        Returns:
            attributions shaped like ``inputs`` (a tensor or a tuple), as Captum's.

        Raises:
            rnnshap.captum.BaselineError: the baselines are not a distribution of at least 2 rows.
        """
        neuron = _Neuron(self.model, self.layer, neuron_selector, attribute_to_neuron_input)
        inner = DeepLiftShap(neuron, self.multiplies_by_inputs, self.eps, **self._settings())
        return inner.attribute(inputs, baselines, None, additional_forward_args, False, custom_attribution_func)


class _Cut:
    """The model split at a layer's input or output, for inputs like ``xs`` and the arguments ``extra``."""

    def __init__(self, model: nn.Module, layer: nn.Module, side: str, xs: list[Tensor], extra: tuple[Any, ...]) -> None:
        from ..engines.pytorch.model_forms import FromLayer, probe_positions

        self.model, self.layer, self.side = model, layer, side
        self.name = next((name or "the model" for name, module in model.named_modules() if module is layer), type(layer).__name__)
        self.positions = probe_positions(model, layer, xs, extra, side)
        self.split = FromLayer(model, layer, [x[:1].clone() for x in xs], self.positions, side)

    def tensors(self, xs: list[Tensor], extra: tuple[Any, ...]) -> list[Tensor]:
        """The layer's tensors (batch axis first) for the model's inputs ``xs``, checked to be a cut."""
        from ..engines.pytorch.model_forms import layer_tensors

        leaves, whole = layer_tensors(self.model, self.layer, xs, extra, self.side)
        z = [leaves[i].detach().movedim(axis, 0).clone() for i, axis in self.positions]
        with torch.no_grad():
            split = self.split(*z, *extra)
        if not isinstance(whole, Tensor) or not isinstance(split, Tensor):
            raise TypeError(f"rnnshap.captum explains a model that returns one tensor, not {type(whole).__name__}")
        scale = float(whole.abs().max()) if whole.numel() else 0.0
        if split.shape != whole.shape or float((split - whole).abs().max()) > 64 * torch.finfo(whole.dtype).eps * max(scale, 1.0):
            raise InputError(
                f"The model's output depends on its inputs other than through the {self.side} of the layer {self.name!r} "
                f"(a skip connection around it, or an input used after it): attributions to the layer's {self.side} "
                "alone cannot add up (Captum would return them with a delta of the size of the missing path). Pick a "
                f"layer whose {self.side} every path to the output goes through."
            )
        return z


class _Reached(Exception):
    """Raised by the hook on the layer once its tensor is there: the rest of the model does not run."""

    def __init__(self, value: Any) -> None:
        super().__init__("layer reached")
        self.value = value


class _Neuron(nn.Module):
    """The model up to a layer, returning the neuron ``selector`` picks in its output (or input)."""

    def __init__(self, model: nn.Module, layer: nn.Module, selector: Any, to_input: bool) -> None:
        super().__init__()
        self.model = model
        self.hooked: nn.Module
        object.__setattr__(self, "hooked", layer)  # a submodule of model, not registered twice
        self.selector = selector
        self.to_input = bool(to_input)
        self.name = next((name or "the model" for name, module in model.named_modules() if module is layer), type(layer).__name__)
        if not callable(selector) and not isinstance(selector, (int, tuple)):
            raise TypeError(
                "neuron_selector is an int, a tuple of ints and slices, or a callable (as for Captum), "
                f"not {type(selector).__name__}"
            )

    def forward(self, *given: Any) -> Tensor:
        def stop(module: nn.Module, args: Any, output: Any = None) -> None:
            raise _Reached(args if self.to_input else output)

        if self.to_input:
            handle = self.hooked.register_forward_pre_hook(stop)
        else:
            handle = self.hooked.register_forward_hook(stop)
        try:
            self.model(*given)
        except _Reached as reached:
            value = reached.value
        else:
            raise InputError(f"The layer {self.name!r} given with the model was not called by its forward()")
        finally:
            handle.remove()
        if callable(self.selector):
            chosen = self.selector(value[0] if self.to_input and isinstance(value, tuple) and len(value) == 1 else value)
        else:
            leaves = [a for a in tree_flatten(value)[0] if isinstance(a, Tensor) and a.is_floating_point()]
            if len(leaves) != 1:
                raise InputError(
                    f"The {'input' if self.to_input else 'output'} of the layer {self.name!r} holds {len(leaves)} floating-point "
                    "tensors: an index neuron_selector picks in one. Give a callable that takes the layer's "
                    f"{'input' if self.to_input else 'output'} and returns one value per row, e.g. lambda out: out[0][:, -1, 3] "
                    "for an nn.LSTM's last step, unit 3."
                )
            index = self.selector if isinstance(self.selector, tuple) else (self.selector,)
            chosen = leaves[0][(slice(None), *index)]
            if any(isinstance(i, slice) for i in index):
                chosen = chosen.reshape(chosen.shape[0], -1).sum(1)
        if not isinstance(chosen, Tensor) or chosen.dim() != 1:
            raise InputError(
                "neuron_selector must pick one value per row (a tensor of shape (batch,)); got "
                + (f"shape {tuple(chosen.shape)}" if isinstance(chosen, Tensor) else type(chosen).__name__)
            )
        return chosen


def _checked_layer(model: nn.Module, layer: nn.Module) -> nn.Module:
    if not isinstance(layer, nn.Module) or not any(module is layer for module in model.modules()):
        raise InputError(
            f"the layer ({type(layer).__name__}) is not a submodule of the model; give one of model.modules(), e.g. model.lstm"
        )
    return layer


def _no_grad_kwargs(grad_kwargs: Any) -> None:
    if grad_kwargs:
        raise ValueError("grad_kwargs (arguments for torch.autograd.grad) are Captum's; rnnshap's rules take none: leave it None")


def _layer_result(result: Any, count: int, with_delta: bool) -> Any:
    """Captum's form for a layer: a tensor where the layer has one tensor, else a tuple."""
    values, delta = result if with_delta else (result, None)
    values = values if isinstance(values, tuple) else (values,)
    formatted = values[0] if count == 1 else tuple(values)
    return (formatted, delta) if with_delta else formatted


__all__ = ["LayerDeepLift", "LayerDeepLiftShap", "NeuronDeepLift", "NeuronDeepLiftShap"]
