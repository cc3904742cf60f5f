"""Captum's model doors, :class:`DeepLift` and :class:`DeepLiftShap`: each input row against its own
baseline row, or against a distribution of baselines, through one :class:`rnnshap.DeepExplainer` of the
model bound to its additional arguments (:class:`Bound`). See :mod:`rnnshap.captum`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..engines.precision import float32_in_full
from ..engines.pytorch.kept import value_key
from ..explainer import DeepExplainer
from .arguments import (
    Target,
    Tensor,
    TensorOrTuple,
    as_tensor,
    baseline_distribution,
    custom_attributions,
    deeplift_baselines,
    expand_args,
    expand_target,
    flat_targets,
    format_extra,
    format_inputs,
    zero_baselines,
)


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
        keep_explainers: how many explainers the object keeps between calls (the most recently used): a call
            whose baselines serve every row and have the values of an earlier call's, on the same model in the same
            mode, dtype and device, with no additional arguments, reuses the explainer that call built (on a copy of
            the baselines), its reference pass kept, as a kept :class:`rnnshap.DeepExplainer` answers its later
            calls, where a fresh one would run the model on the baselines and check it first (about as long again
            as a call of a recurrent layer at small sizes). 0: every call builds its own.
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
        keep_explainers: int = 2,
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
        self.keep_explainers = int(keep_explainers)
        #: the explainers built by earlier calls, by what each is built from (see ``keep_explainers``, ``_reuse_key``)
        self._explainers: OrderedDict[tuple[Any, ...], tuple[DeepExplainer, nn.Module, Any]] = OrderedDict()

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
        is_tuple, xs = format_inputs(inputs)
        n = int(xs[0].shape[0])
        given = deeplift_baselines(baselines, xs)
        bases = [b[:1] if torch.equal(b, b[:1].expand_as(b)) else b for b in given]
        multipliers = not self._multiply_by_inputs or custom_attribution_func is not None
        rows = np.arange(n)
        if all(b.shape[0] == 1 for b in bases):  # one baseline for every row: it is the background
            values = self._pairs(xs, bases, None, rows, target, additional_forward_args, multipliers)
        else:
            shifts = [b.expand(n, *b.shape[1:]) for b in bases]
            values = self._pairs(xs, zero_baselines(xs), shifts, rows, target, additional_forward_args, multipliers)
        tensors = tuple(as_tensor(v, x.dtype, x.device) for v, x in zip(values, xs, strict=True))
        if custom_attribution_func is not None:
            expanded = tuple(b.expand_as(x) for b, x in zip(given, xs, strict=True))
            tensors = custom_attributions(custom_attribution_func, tensors, tuple(xs), expanded)
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
        """Σ attributions − (f(end_point) − f(start_point)) per row at the target, as Captum's, the model run in float32
        in full as the attributions were (:func:`~rnnshap.engines.precision.float32_in_full`: cuDNN's recurrent layers
        default to TensorFloat-32 on a GPU, whose rounding would stand in the delta as a gap that is not there)."""
        _, ends = format_inputs(end_point)
        starts = [s.expand_as(e) for s, e in zip(deeplift_baselines(start_point, ends), ends, strict=True)]
        _, attrs = format_inputs(attributions)
        n = int(ends[0].shape[0])
        extra = format_extra(additional_forward_args)
        with torch.no_grad(), float32_in_full():
            f_end = self.model(*ends, *extra)
            f_start = self.model(*starts, *extra)
        columns = torch.as_tensor(flat_targets(target, n, tuple(f_end.shape[1:])), device=f_end.device)
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
        bound = Bound(self.model, format_extra(additional_forward_args), n, samples, shifts)
        extra = [torch.zeros(int(background[0].shape[0]), dtype=torch.long, device=device)] if bound.indexed else []
        explainer, built = self._explainer(bound, background + extra)
        check = False if multipliers else self.check_additivity
        given = [x[samples] for x in xs]
        if shifts is not None:
            given = [g - s.to(g.dtype) for g, s in zip(given, shifts, strict=True)]
        if bound.indexed:
            given.append(torch.arange(count, device=device))
        shape = explainer.output_shape
        columns = flat_targets(target, n, shape)[sample_of]
        values = [np.zeros((count, *x.shape[1:])) for x in xs]
        for column in np.unique(columns):  # one call per distinct target
            rows = np.flatnonzero(columns == column)
            index = torch.as_tensor(rows, device=device)
            inputs = explainer.engine.inputs([g[index] for g in given], "inputs")
            output = 0 if not shape else tuple(int(i) for i in np.unravel_index(int(column), shape))
            attribution = explainer.attribution(  # (built or vetted in this call: nothing else runs before or between these)
                inputs, outputs=[output], check_additivity=check, progress=False, multipliers=multipliers, just_built=built
            )
            built = True
            for total, phi in zip(values, attribution.values, strict=False):  # the index input, last, has none
                total[rows] = phi[..., 0]
        return values

    def _explainer(self, bound: Bound, background: list[Tensor]) -> tuple[DeepExplainer, bool]:
        """The explainer of ``background`` (the model bound to the call's arguments), and whether it was built now:
        one an earlier call built where the model needs no binding and the call is that one's in all the explainer is
        built from (see :func:`_reuse_key`; ``keep_explainers``), else a new one (kept where it may be reused, built
        on a copy of the baselines: the caller may write into theirs)."""
        key = _reuse_key(self, background) if not bound.needed and self.keep_explainers > 0 else None
        if key is not None:
            kept = self._explainers.get(key)
            if kept is not None:
                self._explainers.move_to_end(key)
                return kept[0], False
            background = [b.clone() for b in background]
        model = bound if bound.needed else self.model
        explainer = DeepExplainer(model, background, batch_size=self.batch_size, rules=self.rules, progress=False)
        if key is not None:
            self._explainers[key] = (explainer, self.model, self.rules)  # (what the key names by identity, kept alive)
            while len(self._explainers) > self.keep_explainers:
                self._explainers.popitem(last=False)
        return explainer, True


def _reuse_key(door: DeepLift, background: list[Tensor]) -> tuple[Any, ...]:
    """What a door's explainer is built from, as a key: the model (by identity, with its modules' training flags and its
    tensors' devices and dtypes, which a ``.train()``, ``.double()`` or ``.to(device)`` changes in place), the rules (by
    identity), ``batch_size``, and the baselines' dtypes, shapes, devices and bytes. Weights changed in place and
    anything else the model's forward reads, a kept explainer follows (its reference pass checked against a plain
    forward at every call)."""
    model = door.model
    tensors = frozenset((t.device, t.dtype) for t in [*model.parameters(), *model.buffers()])
    state = (id(model), tuple(m.training for m in model.modules()), tensors, id(door.rules), door.batch_size)
    return (*state, tuple(value_key(b) for b in background))


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
        is_tuple, xs = format_inputs(inputs)
        n = int(xs[0].shape[0])
        bases = baseline_distribution(baselines, inputs, xs)
        count = int(bases[0].shape[0])
        multipliers = not self._multiply_by_inputs or custom_attribution_func is not None
        result: tuple[Tensor, ...] | None = None
        if custom_attribution_func is None:
            values = self._pairs(xs, bases, None, np.arange(n), target, additional_forward_args, multipliers)
            result = tuple(as_tensor(v, x.dtype, x.device) for v, x in zip(values, xs, strict=True))
            if not return_convergence_delta:
                return result if is_tuple else result[0]
        shifts = [b.repeat(n, *[1] * (b.dim() - 1)) for b in bases]  # pair i * count + j: baseline j
        sample_of = np.repeat(np.arange(n), count)
        pairs = self._pairs(xs, zero_baselines(xs), shifts, sample_of, target, additional_forward_args, multipliers)
        per_pair = tuple(as_tensor(v, x.dtype, x.device) for v, x in zip(pairs, xs, strict=True))
        expanded_inputs = tuple(x.repeat_interleave(count, dim=0) for x in xs)
        if custom_attribution_func is not None:
            per_pair = custom_attributions(custom_attribution_func, per_pair, expanded_inputs, tuple(shifts))
            result = tuple(a.reshape(n, count, *a.shape[1:]).mean(1) for a in per_pair)
        assert result is not None
        formatted = result if is_tuple else result[0]
        if not return_convergence_delta:
            return formatted
        delta = self.compute_convergence_delta(
            per_pair, tuple(shifts), expanded_inputs, expand_target(target, n, count),
            expand_args(additional_forward_args, n, count),
        )
        return formatted, delta


# -- the model the explainer sees -----------------------------------------------------------------
class Bound(nn.Module):
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
            shifts = None
            if self.shifts is not None:
                shifts = [s[index.to(s.device)].to(g.device, g.dtype) for s, g in zip(self.shifts, given, strict=True)]
        if shifts is not None:
            given = [g + s for g, s in zip(given, shifts, strict=True)]
        return self.model(*given, *args)


__all__ = ["Bound", "DeepLift", "DeepLiftShap"]
