"""Captum's ``DeepLift`` and ``DeepLiftShap`` call, answered by rnnshap's exact rules.

Change one import and keep the code that calls Captum::

    from captum.attr import DeepLiftShap          # before
    from rnnshap.captum import DeepLiftShap       # after

    explainer = DeepLiftShap(model)
    attributions, delta = explainer.attribute(x, baselines=background, target=3, return_convergence_delta=True)

``attribute`` takes Captum's arguments (``inputs``, ``baselines``, ``target``,
``additional_forward_args``, ``return_convergence_delta``) and returns what Captum returns, in
Captum's shapes, dtypes and devices: a tensor for a tensor, a tuple for a tuple, and with
``return_convergence_delta=True`` the pair ``(attributions, delta)``. What differs is the rules:
Captum hooks activation modules (``nn.ReLU``, ``nn.Tanh``, ...) and takes plain gradients through
everything else, which includes the gates of ``nn.LSTM`` / ``nn.GRU`` and every product of two
input-dependent tensors, so its attributions miss ``f(x) - f(baseline)`` there (``delta`` shows by
how much). rnnshap's rules are exact: ``delta`` is float rounding. On models made of linear layers
and hooked activations only (a ReLU or tanh MLP) both compute the same DeepLIFT Rescale values.

Captum's layer and neuron classes take the same route: :class:`LayerDeepLift` and
:class:`LayerDeepLiftShap` attribute to a layer's output (or input), an ``nn.LSTM``'s hidden states over
time included, exactly (Captum cannot see inside the LSTM and refuses its tuple output);
:class:`NeuronDeepLift` and :class:`NeuronDeepLiftShap` attribute one neuron of a layer (a hidden unit at
a time step) to the inputs. See docs/captum.md, "Layers and neurons".

This module does not need Captum installed.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .errors import InputError
from .explainer import DeepExplainer

Tensor = torch.Tensor
TensorOrTuple = Union[Tensor, tuple[Tensor, ...]]
#: Captum's target forms: None, an int, a tuple of ints, a list of ints or tuples, a tensor
Target = Union[None, int, tuple[int, ...], Tensor, Sequence[Union[int, tuple[int, ...]]]]


class DeepLift:
    """DeepLIFT of each input row against its own baseline row, with ``captum.attr.DeepLift``'s call.

    ``DeepLift(model).attribute(inputs, baselines=..., target=...)`` pairs input row ``i`` with
    baseline row ``i`` (a baseline with one row, a number, or the default zeros, serves every row),
    as Captum does, and returns ``multiplier × (x − baseline)`` from rnnshap's exact rules: the
    attributions of each row sum to ``f(x_i) − f(baseline_i)`` at its target output.

    With one baseline for every row (zeros, a number, a first dimension of 1, or equal rows) this is
    :class:`rnnshap.DeepExplainer` with that row as its background. With a baseline per row, all the
    pairs still run through one explainer: its background is a row of zeros, and pair ``i`` is
    explained as the input ``x_i − b_i`` of the model ``u ↦ f(u + b_i)`` (``b_i`` looked up by the
    pair's index, a context input). Both sides of the pair then see exactly what ``f`` sees for
    ``(x_i, b_i)``; adding a constant has multiplier 1, so the attributions are those of the pair.
    The only cost is the rounding of ``(x_i − b_i) + b_i``: about an ulp of ``max(|x_i|, |b_i|)``.

    Args:
        model: the ``nn.Module`` to explain, in eval mode. It is not modified (no hooks are left on it).
        multiply_by_inputs: True (Captum's default): attributions, ``multiplier × (x − baseline)``.
            False: Captum's "local" attributions, the multipliers themselves (for DeepLiftShap their
            mean over the baselines), taken from the backward pass of rnnshap's rules.
        eps: accepted for Captum's signature and unused. Captum falls back to the gradient where an
            activation's input changes by less than ``eps``; rnnshap's rules handle small and zero
            changes exactly on their own.
        batch_size: the most (sample, reference) pairs run through the model at once (as for
            :class:`rnnshap.DeepExplainer`); results do not depend on it.
        rules: extra rules for this explainer, as for :class:`rnnshap.DeepExplainer`.
        check_additivity: False (the default), as Captum: ``attribute`` never raises on additivity,
            and ``return_convergence_delta=True`` reports it. True (or a float, the relative
            tolerance): check as :meth:`rnnshap.DeepExplainer.shap_values` does and raise
            :class:`rnnshap.AdditivityError` (attributions with ``multiply_by_inputs=True`` and no
            ``custom_attribution_func`` only).
    """

    def __init__(
        self,
        model: nn.Module,
        multiply_by_inputs: bool = True,
        eps: float = 1e-10,
        *,
        batch_size: int = 2048,
        rules: Mapping[Any, Any] | None = None,
        check_additivity: bool | float = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"rnnshap.captum explains a torch.nn.Module, not {type(model).__name__}")
        self._multiply_by_inputs = bool(multiply_by_inputs)
        self.model = model
        self.forward_func = model
        self.eps = eps
        self.batch_size = int(batch_size)
        self.rules = rules
        self.check_additivity = check_additivity

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def attribute_future(self) -> Any:
        """Not implemented, as in Captum."""
        raise NotImplementedError("attribute_future is not implemented for DeepLift (as in Captum)")

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Target = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        """Attributions of ``inputs`` against ``baselines``, as ``captum.attr.DeepLift.attribute``.

        Args:
            inputs: a floating-point tensor, or a tuple of them for a model with several inputs; the
                first axis is the batch.
            baselines: one per input (a tuple for tuple inputs): a tensor shaped like the input, or
                with a first dimension of 1 (used for every row), or a number; default zeros.
            target: which output to explain, as in Captum: None for a model with one output per
                sample; an int (or a one-element tensor) or a tuple of ints for every sample; a list
                of ints or tuples, or a 1-D tensor, with one per sample.
            additional_forward_args: more arguments of ``model.forward`` after the inputs, not
                attributed: a tensor whose first dimension is the batch is taken row by row (row
                ``i`` on both sides of the pair of row ``i``), anything else as it is.
            return_convergence_delta: also return ``delta``, shape ``(n,)``: the sum of each row's
                attributions minus ``f(x_i) − f(baseline_i)`` at its target.
            custom_attribution_func: ``f(multipliers, inputs, baselines)``, each a tuple with a tensor per
                input (the baselines expanded to the inputs' shape), returning the attributions (a tuple
                or a tensor), as in Captum; default: ``multiplier × (x − baseline)``.

        Returns:
            attributions shaped like ``inputs`` (a tensor or a tuple of them), in the inputs' dtype
            and on their device; with ``return_convergence_delta=True`` also ``delta``, which is
            ``compute_convergence_delta(attributions, baselines, inputs, target, additional_forward_args)``.
        """
        is_tuple, xs = _format_inputs(inputs)
        n = int(xs[0].shape[0])
        given = _deeplift_baselines(baselines, xs)
        bases = [b[:1] if torch.equal(b, b[:1].expand_as(b)) else b for b in given]
        multipliers = not self._multiply_by_inputs or custom_attribution_func is not None
        rows = np.arange(n)
        if all(b.shape[0] == 1 for b in bases):  # one baseline for every row: it is the background
            values = self._pairs(xs, bases, None, rows, target, additional_forward_args, multipliers)
        else:
            shifts = [b.expand(n, *b.shape[1:]) for b in bases]
            values = self._pairs(xs, _zeros(xs), shifts, rows, target, additional_forward_args, multipliers)
        tensors = tuple(_as_tensor(v, x.dtype, x.device) for v, x in zip(values, xs, strict=True))
        if custom_attribution_func is not None:
            expanded = tuple(b.expand_as(x) for b, x in zip(given, xs, strict=True))
            tensors = _custom(custom_attribution_func, tensors, tuple(xs), expanded)
        result = tensors if is_tuple else tensors[0]
        if return_convergence_delta:
            return result, self.compute_convergence_delta(result, tuple(given), tuple(xs), target, additional_forward_args)
        return result

    def compute_convergence_delta(
        self,
        attributions: TensorOrTuple,
        start_point: Any,
        end_point: TensorOrTuple,
        target: Target = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """Σ attributions − (f(end_point) − f(start_point)) per row at the target, as Captum's."""
        _, ends = _format_inputs(end_point)
        starts = [s.expand_as(e) for s, e in zip(_deeplift_baselines(start_point, ends), ends, strict=True)]
        _, attrs = _format_inputs(attributions)
        n = int(ends[0].shape[0])
        extra = _format_extra(additional_forward_args)
        with torch.no_grad():
            f_end = self.model(*ends, *extra)
            f_start = self.model(*starts, *extra)
        columns = torch.as_tensor(_flat_targets(target, n, tuple(f_end.shape[1:])), device=f_end.device)
        rows = torch.arange(n, device=f_end.device)
        gap = f_end.reshape(n, -1)[rows, columns] - f_start.reshape(n, -1)[rows, columns]
        total = sum(a.detach().reshape(n, -1).sum(1).to(gap.device, gap.dtype) for a in attrs)
        return total - gap

    def _pairs(
        self,
        xs: list[Tensor],
        background: list[Tensor],
        shifts: list[Tensor] | None,
        sample_of: np.ndarray,
        target: Target,
        additional_forward_args: Any,
        multipliers: bool = False,
    ) -> list[np.ndarray]:
        """Attributions of ``len(sample_of)`` rows, row ``p`` being sample ``sample_of[p]`` of ``xs``.

        Without ``shifts``, each row is explained against ``background`` (mean over its rows). With
        ``shifts`` (a tensor of one row per explained row, per input) and a background of zeros, row
        ``p`` is explained against the baseline ``shifts[p]`` alone (see :class:`DeepLift`).
        Returns the attributions in float64, ``(len(sample_of), *input_shape)`` per input; with
        ``multipliers``, the multipliers instead (their mean over the background).
        """
        n, count, device = int(xs[0].shape[0]), len(sample_of), xs[0].device
        samples = torch.as_tensor(sample_of, device=device)
        bound = _Bound(self.model, _format_extra(additional_forward_args), n, samples, shifts)
        extra = [torch.zeros(int(background[0].shape[0]), dtype=torch.long, device=device)] if bound.indexed else []
        explainer = DeepExplainer(bound if bound.needed else self.model, background + extra, batch_size=self.batch_size, rules=self.rules, progress=False)
        explainer.engine.multipliers = multipliers  # type: ignore[attr-defined]
        check = False if multipliers else self.check_additivity
        given = [x[samples] for x in xs]
        if shifts is not None:
            given = [g - s.to(g.dtype) for g, s in zip(given, shifts, strict=True)]
        if bound.indexed:
            given.append(torch.arange(count, device=device))
        shape = explainer.output_shape
        columns = _flat_targets(target, n, shape)[sample_of]
        values = [np.zeros((count, *x.shape[1:])) for x in xs]
        for column in np.unique(columns):  # one call per distinct target
            rows = np.flatnonzero(columns == column)
            index = torch.as_tensor(rows, device=device)
            inputs = explainer.engine.inputs([g[index] for g in given], "inputs")
            output = 0 if not shape else tuple(int(i) for i in np.unravel_index(int(column), shape))
            attribution = explainer._explain(inputs, None, "max", [output], check, None, False)
            for total, phi in zip(values, attribution.values, strict=False):  # the index input, last, has none
                total[rows] = phi[..., 0]
        return values


class DeepLiftShap(DeepLift):
    """DeepSHAP over a distribution of baselines, with ``captum.attr.DeepLiftShap``'s call.

    ``DeepLiftShap(model).attribute(inputs, baselines=background, target=...)`` averages, for each
    input row, the exact DeepLIFT attributions against every baseline row: it is
    ``rnnshap.DeepExplainer(model, background).shap_values(inputs, outputs=[target])``.

    With ``return_convergence_delta=True`` the delta is Captum's, one per (input row, baseline row)
    pair, shape ``(n * n_baselines,)``, ordered by input row, then baseline: the sum of the pair's
    own attributions minus ``f(x_i) − f(b_j)``, computed by :meth:`compute_convergence_delta` on the
    pairs (the inputs repeated per baseline, the baselines tiled), as Captum does. An explainer with
    the whole background returns the mean over the pairs only, so for the delta the
    ``n * n_baselines`` pairs also run as pairs, in one explainer, as :class:`DeepLift` runs a
    baseline per row; each pair's delta is then measured, not inferred. The attributions returned
    are those of the call without the delta, bit for bit. A recurrent layer runs a trajectory per
    pair there (``2 * n * n_baselines``) instead of one per distinct row of each side, so this costs
    more: ask for the delta when you want it. ``custom_attribution_func`` also runs on the pairs
    (the multipliers of each pair, with the inputs and baselines expanded to the pairs), and its
    results are averaged over the baselines, as in Captum.

    Args: as for :class:`DeepLift`.
    """

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: Any,
        target: Target = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        """Attributions of ``inputs`` averaged over the baseline distribution, as Captum's.

        Args:
            inputs: a floating-point tensor, or a tuple of them (first axis: the batch).
            baselines: the baseline distribution: a tensor (a tuple for tuple inputs) whose first
                axis indexes at least 2 baselines and whose other axes match the input's; or a
                callable returning one, called with ``inputs`` if it takes an argument.
            target, additional_forward_args: as for :meth:`DeepLift.attribute`; a per-row additional
                argument is used with every baseline of its row.
            return_convergence_delta: also return ``delta``, shape ``(n * n_baselines,)``: see the
                class docstring.
            custom_attribution_func: as for :meth:`DeepLift.attribute`, called on the pairs.
        """
        is_tuple, xs = _format_inputs(inputs)
        n = int(xs[0].shape[0])
        bases = _distribution(baselines, inputs, xs)
        count = int(bases[0].shape[0])
        multipliers = not self._multiply_by_inputs or custom_attribution_func is not None
        result: tuple[Tensor, ...] | None = None
        if custom_attribution_func is None:
            values = self._pairs(xs, bases, None, np.arange(n), target, additional_forward_args, multipliers)
            result = tuple(_as_tensor(v, x.dtype, x.device) for v, x in zip(values, xs, strict=True))
            if not return_convergence_delta:
                return result if is_tuple else result[0]
        shifts = [b.repeat(n, *[1] * (b.dim() - 1)) for b in bases]  # pair i * count + j: baseline j
        pairs = self._pairs(xs, _zeros(xs), shifts, np.repeat(np.arange(n), count), target, additional_forward_args, multipliers)
        per_pair = tuple(_as_tensor(v, x.dtype, x.device) for v, x in zip(pairs, xs, strict=True))
        expanded_inputs = tuple(x.repeat_interleave(count, dim=0) for x in xs)
        if custom_attribution_func is not None:
            per_pair = _custom(custom_attribution_func, per_pair, expanded_inputs, tuple(shifts))
            result = tuple(a.reshape(n, count, *a.shape[1:]).mean(1) for a in per_pair)
        assert result is not None
        formatted = result if is_tuple else result[0]
        if not return_convergence_delta:
            return formatted
        delta = self.compute_convergence_delta(
            per_pair, tuple(shifts), expanded_inputs, _expand_target(target, n, count), _expand_args(additional_forward_args, n, count)
        )
        return formatted, delta


# -- layers and neurons ---------------------------------------------------------------------------
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

    It is :class:`DeepLift` of the model split at the layer (``rnnshap.engines.pytorch.forms.FromLayer``:
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
        _, xs = _format_inputs(inputs)
        extra = _format_extra(additional_forward_args)
        bases = [b.expand_as(x) for b, x in zip(_deeplift_baselines(baselines, xs), xs, strict=True)]
        cut = _Cut(self.model, self.layer, "input" if attribute_to_layer_input else "output", xs, extra)
        zx, zb = cut.tensors(xs, extra), cut.tensors(bases, extra)
        inner = DeepLift(cut.split, self._multiply_by_inputs, self.eps, batch_size=self.batch_size, rules=self.rules, check_additivity=self.check_additivity)
        result = inner.attribute(tuple(zx), tuple(zb), target, additional_forward_args, return_convergence_delta, custom_attribution_func)
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
        _, xs = _format_inputs(inputs)
        bases = _distribution(baselines, inputs, xs)
        n, count = int(xs[0].shape[0]), int(bases[0].shape[0])
        extra = _format_extra(additional_forward_args)
        side = "input" if attribute_to_layer_input else "output"
        cut = _Cut(self.model, self.layer, side, xs, extra)
        zx = cut.tensors(xs, extra)
        per_row = any(isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n for a in extra)
        settings: dict[str, Any] = {"batch_size": self.batch_size, "rules": self.rules, "check_additivity": self.check_additivity}
        if not per_row:  # the baselines' layer tensors are a distribution of their own
            zb = cut.tensors(bases, extra)
            inner = DeepLiftShap(cut.split, self._multiply_by_inputs, self.eps, **settings)
            result = inner.attribute(tuple(zx), tuple(zb), target, additional_forward_args, return_convergence_delta, custom_attribution_func)
            return _layer_result(result, len(zx), return_convergence_delta)
        # a per-row argument reaches the layer: the baseline j of row i has its own layer tensors, as in Captum's pairs
        pair_args = _expand_args(additional_forward_args, n, count)
        pair_extra = _format_extra(pair_args)
        zb = cut.tensors([b.repeat(n, *[1] * (b.dim() - 1)) for b in bases], pair_extra)
        zx_pairs = tuple(z.repeat_interleave(count, dim=0) for z in zx)
        pairs = DeepLift(cut.split, self._multiply_by_inputs, self.eps, **settings)
        answer = pairs.attribute(zx_pairs, tuple(zb), _expand_target(target, n, count), pair_args, return_convergence_delta, custom_attribution_func)
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
        inner = DeepLift(neuron, self._multiply_by_inputs, self.eps, batch_size=self.batch_size, rules=self.rules, check_additivity=self.check_additivity)
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
        inner = DeepLiftShap(neuron, self._multiply_by_inputs, self.eps, batch_size=self.batch_size, rules=self.rules, check_additivity=self.check_additivity)
        return inner.attribute(inputs, baselines, None, additional_forward_args, False, custom_attribution_func)


class _Cut:
    """The model split at a layer's input or output, for inputs like ``xs`` and the arguments ``extra``."""

    def __init__(self, model: nn.Module, layer: nn.Module, side: str, xs: list[Tensor], extra: tuple[Any, ...]) -> None:
        from .engines.pytorch.forms import FromLayer, probe_positions

        self.model, self.layer, self.side = model, layer, side
        self.name = next((name or "the model" for name, module in model.named_modules() if module is layer), type(layer).__name__)
        self.positions = probe_positions(model, layer, xs, extra, side)
        self.split = FromLayer(model, layer, [x[:1].clone() for x in xs], self.positions, side)

    def tensors(self, xs: list[Tensor], extra: tuple[Any, ...]) -> list[Tensor]:
        """The layer's tensors (batch axis first) for the model's inputs ``xs``, checked to be a cut."""
        from .engines.pytorch.forms import layer_tensors

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
            raise TypeError(f"neuron_selector is an int, a tuple of ints and slices, or a callable (as for Captum), not {type(selector).__name__}")

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
        raise InputError(f"the layer ({type(layer).__name__}) is not a submodule of the model; give one of model.modules(), e.g. model.lstm")
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


# -- the model the explainer sees -----------------------------------------------------------------
class _Bound(nn.Module):
    """``model(*(inputs + shift), *args)`` for a row of the explained batch.

    The additional arguments are constants. Per-row ones (a tensor with the batch's rows), and the
    per-row baselines of the ``shifts``, are looked up by the row's index: an integer input that
    rnnshap treats as context (the explained row's value on both sides of every pair). The lookup
    runs out of rnnshap's sight, so the values come in as constants; adding the shift to the input is
    an addition of a constant, which rnnshap attributes with multiplier 1.
    """

    def __init__(self, model: nn.Module, args: tuple[Any, ...], n: int, samples: Tensor, shifts: list[Tensor] | None) -> None:
        super().__init__()
        self.model = model
        self.args = args
        self.per_row = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n]
        self.samples = samples  # the explained rows' samples, for the per-row arguments
        self.shifts = shifts
        self.indexed = bool(self.per_row) or shifts is not None
        self.needed = self.indexed or bool(args)

    def forward(self, *inputs: Tensor) -> Any:
        if not self.indexed:
            return self.model(*inputs, *self.args)
        *given, index = inputs
        args = list(self.args)
        with torch._C.DisableTorchFunction():  # constants for the row, not operations to attribute
            for i in self.per_row:
                args[i] = args[i][self.samples[index.to(self.samples.device)].to(args[i].device)]
            shifts = [s[index.to(s.device)].to(g.device, g.dtype) for s, g in zip(self.shifts, given, strict=True)] if self.shifts is not None else None
        if shifts is not None:
            given = [g + s for g, s in zip(given, shifts, strict=True)]
        return self.model(*given, *args)


def _zeros(xs: list[Tensor]) -> list[Tensor]:
    return [torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device) for x in xs]


def _format_extra(additional_forward_args: Any) -> tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    return additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


# -- inputs, baselines, targets -------------------------------------------------------------------
class BaselineError(InputError, AssertionError):
    """DeepLiftShap's baselines are not a distribution; an ``AssertionError`` too, as Captum raises."""


def _called(baselines: Callable[..., Any], inputs: Any) -> Any:
    """Captum's baselines given as a function: called with ``inputs`` if it takes an argument."""
    return baselines(inputs) if inspect.signature(baselines).parameters else baselines()


def _custom(function: Callable[..., Any], multipliers: tuple[Tensor, ...], inputs: tuple[Tensor, ...], baselines: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``custom_attribution_func(multipliers, inputs, baselines)`` as a tuple of tensors shaped like the inputs."""
    result = function(multipliers, inputs, baselines)
    result = result if isinstance(result, tuple) else (result,)
    if len(result) != len(inputs) or not all(isinstance(r, Tensor) and r.shape == x.shape for r, x in zip(result, inputs, strict=False)):
        raise ValueError(
            "custom_attribution_func must return one tensor per input, shaped like it (a tuple for several inputs); got "
            + ", ".join(str(tuple(r.shape)) if isinstance(r, Tensor) else type(r).__name__ for r in result)
            + f" for inputs of shapes {', '.join(str(tuple(x.shape)) for x in inputs)}"
        )
    return tuple(result)


def _expand_target(target: Target, n: int, count: int) -> Target:
    """A per-row target repeated for each row's ``count`` pairs (Captum's expansion); others as given."""
    if isinstance(target, list):
        return [t for t in target for _ in range(count)]
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat_interleave(count, dim=0)
    return target


def _expand_args(additional_forward_args: Any, n: int, count: int) -> Any:
    """Per-row additional arguments (tensors with ``n`` rows) repeated for each row's ``count`` pairs."""
    if additional_forward_args is None:
        return None
    return tuple(
        a.repeat_interleave(count, dim=0) if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == n else a
        for a in _format_extra(additional_forward_args)
    )


def _format_inputs(inputs: Any) -> tuple[bool, list[Tensor]]:
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


def _deeplift_baselines(baselines: Any, xs: list[Tensor]) -> list[Tensor]:
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


def _distribution(baselines: Any, inputs: Any, xs: list[Tensor]) -> list[Tensor]:
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


def _flat_targets(target: Target, n: int, shape: tuple[int, ...]) -> np.ndarray:
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


# -- results --------------------------------------------------------------------------------------
def _as_tensor(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).to(device=device, dtype=dtype)


__all__ = ["BaselineError", "DeepLift", "DeepLiftShap", "LayerDeepLift", "LayerDeepLiftShap", "NeuronDeepLift", "NeuronDeepLiftShap"]
