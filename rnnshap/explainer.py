"""``rnnshap.DeepExplainer``: DeepSHAP with exact rules, with the call shapes of shap's DeepExplainer."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from .engine.passes import run_pass
from .engine.safety import as_tensors, check_matching, check_model, model_device_and_dtype
from .engine.tape import Tape
from .errors import AdditivityError, InputError
from .keras import is_keras_model
from .rules.base import PairGrid, Rule
from .rules.registry import DEFAULT_REGISTRY, RuleRegistry

Tensor = torch.Tensor
ArrayLike = Union[Tensor, np.ndarray]
Inputs = Union[ArrayLike, Sequence[ArrayLike]]

#: relative additivity tolerance per dtype, against max(|f(x)|, |E[f]|, Σ|φ|)
ADDITIVITY_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class DeepExplainer:
    """Exact DeepSHAP values for a PyTorch model, recurrent layers included.

    Drop-in for ``shap.DeepExplainer``: ``DeepExplainer(model, background)`` then
    ``shap_values(X)``, with the same shapes and return types. The attributions of every sample
    sum to ``f(x) - expected_value`` up to float rounding, which is checked by default.

    A Keras 3 model (TensorFlow backend) gets :class:`rnnshap.keras.explainer.KerasDeepExplainer`,
    a subclass with the same arguments and results; TensorFlow is imported only then.

    Args:
        model: an ``nn.Module`` in eval mode (or at least without active dropout or batch
            statistics). It is not modified.
        data: the background: a tensor or array whose first dimension indexes reference samples,
            or a list/tuple of them for a model with several inputs.
        batch_size: the largest number of (sample, reference) pairs run through the model at once,
            rounded down to whole samples (a multiple of the background size) when it is at least
            that, so that recurrent layers can run on the distinct rows of each side. Memory grows
            with it; results do not depend on it.
        rules: rules for this explainer only, ``{torch_function_or_module_class: rule}``, on top of
            the ones registered with :func:`rnnshap.register_rule`.
        progress: show a tqdm progress bar over the batches of (sample, reference) pairs. ``None``
            (the default): only when stderr is a terminal and there is more than one batch.
    """

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> DeepExplainer:
        # A Keras model goes to the Keras explainer (a subclass); TensorFlow is imported only then.
        if cls is DeepExplainer and is_keras_model(model):
            from .keras.explainer import KerasDeepExplainer

            return super().__new__(KerasDeepExplainer)
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        data: Inputs,
        *,
        batch_size: int = 2048,
        rules: Mapping[Any, Rule] | None = None,
        progress: bool | None = None,
    ) -> None:
        check_model(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.progress = progress
        self._rules = dict(rules or {})
        self.multi_input = isinstance(data, (list, tuple))
        self.device, self.dtype = model_device_and_dtype(model)
        self.data = as_tensors(data, "background", self.multi_input, self.device, self.dtype)
        check_matching(self.data, self.data)
        self._base_values = torch.zeros(0)
        # The background runs as a reference pass, which also finds unsupported operations now and
        # tells which integer inputs are token ids (they feed an embedding) and which are context.
        integer_inputs = [i for i, b in enumerate(self.data) if not b.is_floating_point()]
        try:
            with torch.no_grad():  # copies: a forward() that works in place must not rewrite the background
                outputs, probe = run_pass(model, [b.clone() for b in self.data], self._registry(), Tape(), replay=False, follow=integer_inputs)
        except RuntimeError as error:
            if not integer_inputs:
                raise
            raise InputError(
                f"The model failed on the background ({error}). Input(s) {integer_inputs} are integers: rnnshap "
                "treats integer inputs as token ids (when they feed an nn.Embedding) or as context such as lengths "
                "(used as given). If they are numbers to attribute to, pass them as floating point."
            ) from error
        for index in sorted(probe.token_uses & set(probe.context_uses)):
            raise InputError(
                f"Input {index} holds token ids that feed an embedding, and {probe.context_uses[index]} also uses "
                "them directly (a padding mask or lengths computed from the tokens?). Their values differ between "
                "the input and its reference, so that use cannot be attributed. Pass the mask or lengths to the "
                "model as a separate input: integer inputs that feed no embedding are context, used as given."
            )
        #: integer inputs whose attributions are taken at their embedding (per token)
        self.token_inputs = sorted(probe.token_uses)
        if not self.token_inputs and not any(b.is_floating_point() for b in self.data):
            raise InputError("No input is floating point or feeds an embedding, so there is nothing to attribute to")
        if outputs.dim() == 0 or outputs.shape[0] != self.data[0].shape[0]:
            raise InputError(
                f"The model maps {self.data[0].shape[0]} background rows to an output of shape "
                f"{tuple(outputs.shape)}; rnnshap needs the output's first dimension to be the batch."
            )
        self.output_shape = tuple(outputs.shape[1:])
        mean = _numpy(outputs.mean(0))
        self.expected_value: float | np.ndarray = float(mean) if mean.ndim == 0 else mean

    # -- public API -------------------------------------------------------------------------------
    def shap_values(
        self,
        X: Inputs,
        ranked_outputs: int | None = None,
        output_rank_order: str = "max",
        check_additivity: bool | float = True,
        *,
        outputs: Sequence[int | tuple[int, ...]] | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> Any:
        """SHAP values of ``X``, shaped like shap's DeepExplainer output.

        Returns, per model input, an array of shape ``(*X.shape, *output_shape)`` (the outputs on
        the last axes; no output axis for a model with a 1-D output), a list of such arrays for a
        multi-input model, and ``(values, ranks)`` with ``ranked_outputs=k``, where the last axis
        then indexes each sample's top-k outputs in the order given by ``ranks``.

        ``check_additivity`` may be a float: the relative tolerance to use instead of the dtype's.

        ``outputs`` picks which outputs to explain, as indices into the model's output shape (without
        the batch): ``[(t, k), ...]`` for a sequence output of shape (N, T, K), ``[k, ...]`` for
        (N, K). The last axis of the result then follows that list. By default all are explained.

        ``progress`` overrides the explainer's ``progress`` setting for this call.
        """
        inputs = as_tensors(X, "X", self.multi_input, self.device, self.dtype)
        check_matching(inputs, self.data)
        n = inputs[0].shape[0]
        def scores() -> np.ndarray:
            with torch.no_grad():
                return _numpy(self.model(*inputs).reshape(n, -1))

        chosen = self._selected_outputs(n, ranked_outputs, output_rank_order, outputs, scores)
        selected = torch.from_numpy(chosen).to(inputs[0].device)

        show = self.progress if progress is None else progress
        phis, model_outputs = self._attribute(inputs, selected, batch_size or self.batch_size, show)
        if check_additivity is not False:
            rtol = None if check_additivity is True else float(check_additivity)
            self._check_additivity(phis, model_outputs, selected, rtol)

        values = [self._shape_values(phi, ranked_outputs is not None or outputs is not None) for phi in phis]
        result: Any = values if self.multi_input else values[0]
        if ranked_outputs is not None:
            return result, selected.cpu()
        return result

    def __call__(
        self,
        X: Inputs,
        *,
        feature_names: Sequence[Any] | None = None,
        time_labels: Sequence[Any] | None = None,
        output_names: Sequence[str] | None = None,
        check_additivity: bool | float = True,
    ) -> Any:
        """A ``shap.Explanation`` of ``X`` (one per input for a multi-input model), with base values.

        Labels: for an input of shape (N, F), or token ids (N, T), ``feature_names`` (or
        ``time_labels``) name axis 1, as in shap. For a sequence input (N, T, F), ``feature_names``
        name the F features and ``time_labels`` the T steps (default ``f0, f1, ...`` and
        ``t0, t1, ...`` when only one is given); the Explanation's ``feature_names`` then hold, per
        sample, the name ``"<time label>:<feature name>"`` of every (t, f), the layout that survives
        shap's slicing. :func:`rnnshap.plots.flatten` turns it into (N, T·F) named features for
        shap's plots. With several inputs, give a list of names per input. ``output_names`` label
        the model's outputs.
        """
        try:
            import shap
        except ImportError as error:
            raise ImportError(
                "explainer(X) returns a shap.Explanation and needs shap: pip install 'rnnshap[shap]'. "
                "explainer.shap_values(X) works without it."
            ) from error
        values = self.shap_values(X, check_additivity=check_additivity)
        inputs = as_tensors(X, "X", self.multi_input, self.device, self.dtype)
        per_input = values if self.multi_input else [values]
        n = inputs[0].shape[0]
        base = self._base_values.reshape(n, *self.output_shape).cpu().numpy()
        features = _per_input(feature_names, len(inputs)) if self.multi_input else [feature_names]
        times = _per_input(time_labels, len(inputs)) if self.multi_input else [time_labels]
        explanations = [
            shap.Explanation(
                values=v,
                base_values=base,
                data=_numpy(x),
                feature_names=_axis_labels(tuple(x.shape), f, t),
                output_names=None if output_names is None else list(output_names),
            )
            for v, x, f, t in zip(per_input, inputs, features, times, strict=True)
        ]
        return explanations if self.multi_input else explanations[0]

    def _selected_outputs(
        self,
        n: int,
        ranked_outputs: int | None,
        output_rank_order: str,
        outputs: Sequence[int | tuple[int, ...]] | None,
        scores: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """(n, k) flat indices of the outputs to explain for each sample: the chosen ``outputs``,
        each sample's top ``ranked_outputs`` by ``scores()`` (the model's outputs), or all."""
        if outputs is not None and ranked_outputs is not None:
            raise ValueError("give either ranked_outputs or outputs, not both")
        if outputs is not None:
            return np.broadcast_to(self._select(outputs).numpy(), (n, len(outputs))).copy()
        if ranked_outputs is not None:
            if not 1 <= ranked_outputs:
                raise ValueError(f"ranked_outputs must be a positive integer, got {ranked_outputs}")
            order = {"max": lambda s: -s, "min": lambda s: s, "max_abs": lambda s: -np.abs(s)}
            if output_rank_order not in order:
                raise ValueError(f"output_rank_order must be 'max', 'min' or 'max_abs', got {output_rank_order!r}")
            return np.argsort(order[output_rank_order](scores()), axis=1, kind="stable")[:, :ranked_outputs].astype(np.int64)
        n_outputs = int(np.prod(self.output_shape)) if self.output_shape else 1
        return np.broadcast_to(np.arange(n_outputs, dtype=np.int64), (n, n_outputs)).copy()

    def _select(self, outputs: Sequence[int | tuple[int, ...]]) -> Tensor:
        """Flat output indices of ``outputs`` (indices into ``output_shape``)."""
        shape = self.output_shape or (1,)
        flat = []
        for index in outputs:
            multi = (index,) if isinstance(index, (int, np.integer)) else tuple(index)
            if len(multi) != len(shape) or any(not -size <= i < size for i, size in zip(multi, shape, strict=False)):
                raise ValueError(f"output index {index!r} does not fit the model's output shape {self.output_shape}")
            flat.append(int(np.ravel_multi_index(tuple(i % size for i, size in zip(multi, shape, strict=False)), shape)))
        if not flat:
            raise ValueError("outputs is empty; give at least one output index")
        return torch.tensor(flat, dtype=torch.long)[None, :]

    # -- engine -----------------------------------------------------------------------------------
    def _registry(self) -> RuleRegistry:
        return DEFAULT_REGISTRY.merged(self._rules) if self._rules else DEFAULT_REGISTRY

    def _attribute(self, inputs: list[Tensor], selected: Tensor, batch_size: int, progress: bool | None = None) -> tuple[list[Tensor], Tensor]:
        """Mean over the background of multiplier × (x − r), for every (sample, selected output).

        Returns float64 attributions of shape ``(n, *input_shape, k)`` per input and the model's
        outputs on the inputs, shape ``(n, n_outputs)``.
        """
        registry = self._registry()
        n, k = selected.shape
        n_refs = self.data[0].shape[0]
        sums = [torch.zeros((k, n, *x.shape[1:]), dtype=torch.float64, device=x.device) for x in inputs]
        model_outputs: Tensor | None = None
        base_values: Tensor | None = None
        total = n * n_refs
        # whole samples per chunk where the batch size allows: rules may then compute on the
        # distinct rows of each side only (see PairGrid)
        step = batch_size - batch_size % n_refs if batch_size >= n_refs else batch_size
        for start in _progress(range(0, total, step), progress):
            pairs = torch.arange(start, min(start + step, total), device=inputs[0].device)
            grid = PairGrid(pairs.shape[0] // n_refs, n_refs) if step % n_refs == 0 else None
            sample, ref = pairs // n_refs, pairs % n_refs
            # context inputs (integer inputs that feed no embedding: lengths, masks) take the explained
            # sample's values on both sides; token ids are compared with the background's tokens
            references = [
                b[ref] if b.is_floating_point() or t in self.token_inputs else x[sample] for t, (x, b) in enumerate(zip(inputs, self.data, strict=False))
            ]
            leaves = [x[sample].requires_grad_(True) if x.is_floating_point() else x[sample] for x in inputs]
            with torch.no_grad():
                copies = [r.clone() for r in references]  # forward() may work in place on its inputs
                ref_outputs, _ = run_pass(self.model, copies, registry, tape := Tape(), replay=False, follow=self.token_inputs, pairs=grid)
            with torch.enable_grad():
                outputs, mode = run_pass(self.model, [leaf.clone() for leaf in leaves], registry, tape, replay=True, follow=self.token_inputs, pairs=grid)
                flat = outputs.reshape(outputs.shape[0], -1)
                chosen = flat.gather(1, selected[sample])
                attributed_leaves = [leaf for leaf in leaves if leaf.requires_grad] + [leaf for _, leaf, _ in mode.embedded]
                grads = _grads_per_output(chosen, attributed_leaves)
            if model_outputs is None or base_values is None:
                model_outputs = torch.zeros((n, flat.shape[1]), dtype=torch.float64, device=flat.device)
                base_values = torch.zeros_like(model_outputs)
            model_outputs[sample] = flat.detach().to(torch.float64)
            base_values.index_add_(0, sample, ref_outputs.reshape(flat.shape).to(torch.float64))
            attributed = iter(grads)
            for t, (leaf, reference) in enumerate(zip(leaves, references, strict=False)):
                if leaf.requires_grad:
                    contribution = (next(attributed) * (leaf.detach() - reference)).to(torch.float64)
                    sums[t].index_add_(1, sample, contribution)
            for (t, embedding, embedding_ref), grad in zip(mode.embedded, attributed, strict=False):
                per_token = (grad * (embedding.detach() - embedding_ref)).sum(-1).to(torch.float64)
                if per_token.shape[2:] != sums[t].shape[2:]:
                    raise InputError(
                        f"Input {t} (token ids) of shape {tuple(inputs[t].shape)} reaches an embedding with shape "
                        f"{tuple(embedding.shape[:-1])}; apply the embedding to the token input as given (before reshaping it)."
                    )
                sums[t].index_add_(1, sample, per_token)
        assert model_outputs is not None and base_values is not None
        self._base_values = base_values.div_(n_refs)
        phis = [s.div_(n_refs).movedim(0, -1) for s in sums]
        return phis, model_outputs

    def _check_additivity(self, phis: list[Tensor], model_outputs: Tensor, selected: Tensor, rtol: float | None) -> None:
        n, k = selected.shape
        expected = self._base_values.gather(1, selected)
        fx = model_outputs.gather(1, selected)
        totals = sum(phi.reshape(n, -1, k).sum(1) for phi in phis)
        magnitude = sum(phi.reshape(n, -1, k).abs().sum(1) for phi in phis)
        assert isinstance(totals, Tensor) and isinstance(magnitude, Tensor)
        error = (totals - (fx - expected)).abs()
        scale = torch.maximum(torch.maximum(fx.abs(), expected.abs()), magnitude)
        rtol = rtol if rtol is not None else ADDITIVITY_RTOL.get(self.data[0].dtype, 1e-4)
        excess = error - rtol * scale
        failing = ~(error <= rtol * scale)  # NaN fails too
        if bool(failing.any()):
            ranking = (excess / scale.clamp_min(torch.finfo(scale.dtype).tiny)).nan_to_num(nan=float("inf"))
            flat_index = int(torch.argmax(ranking).item())
            sample, column = divmod(flat_index, k)
            output = int(selected[sample, column])
            raise AdditivityError(
                f"The attributions do not add up: for sample {sample}, output {output}, "
                f"sum(phi) = {totals[sample, column]:.6g} but f(x) - E[f] = {fx[sample, column] - expected[sample, column]:.6g} "
                f"(error {error[sample, column]:.3g}, {error[sample, column] / scale[sample, column]:.3g} of the output's "
                f"scale {scale[sample, column]:.3g}; tolerance {rtol:.1g} for {self.data[0].dtype}); "
                f"{int(failing.sum())} of {n * k} (sample, output) pairs fail. Likely causes: a custom rule "
                "that does not add up, an operation registered as linear that is not, work done outside torch "
                "(numpy, .item()), or a forward() whose result depends on something other than its inputs. "
                "Pass check_additivity=False to get the values anyway."
            )

    def _shape_values(self, phi: Tensor, ranked: bool) -> np.ndarray:
        """(n, *input_shape, k) → the output layout of shap for this model's output shape."""
        array = phi.detach().cpu().numpy()
        if ranked:
            return array
        if not self.output_shape:
            return array[..., 0]
        return array.reshape(*array.shape[:-1], *self.output_shape)


def _numpy(t: Tensor) -> np.ndarray:
    """``t`` as a numpy array; bfloat16, which numpy lacks, as float32."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _grads_per_output(chosen: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """Gradients of every column of ``chosen`` w.r.t. ``leaves``: shape (k, *leaf.shape) each.

    All columns go through one batched backward pass (``is_grads_batched``), not one per output.
    """
    k = chosen.shape[1]
    if k == 1:
        grads = torch.autograd.grad(chosen, leaves, torch.ones_like(chosen), allow_unused=True)
        return [_or_zeros(g, leaf).unsqueeze(0) for g, leaf in zip(grads, leaves, strict=False)]
    eye = torch.eye(k, dtype=chosen.dtype, device=chosen.device)
    grad_outputs = eye[:, None, :].expand(k, *chosen.shape).contiguous()
    grads = torch.autograd.grad(chosen, leaves, grad_outputs, is_grads_batched=True, allow_unused=True)
    return [_or_zeros(g, leaf, k) for g, leaf in zip(grads, leaves, strict=False)]


def _or_zeros(grad: Tensor | None, leaf: Tensor, k: int | None = None) -> Tensor:
    if grad is not None:
        return grad
    shape = leaf.shape if k is None else (k, *leaf.shape)
    return torch.zeros(shape, dtype=leaf.dtype, device=leaf.device)


def _progress(batches: range, enabled: bool | None) -> Iterable[int]:
    """``batches`` wrapped in a tqdm progress bar when ``enabled``; ``None``: only when stderr is a
    terminal and there is more than one batch. Without tqdm there is no bar (a warning if asked for)."""
    explicit = enabled is not None
    if enabled is None:
        try:
            enabled = len(batches) > 1 and sys.stderr is not None and sys.stderr.isatty()
        except (AttributeError, ValueError):  # stderr replaced by an object without isatty, or closed
            enabled = False
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if explicit:
            warnings.warn("progress=True needs tqdm (pip install 'rnnshap[progress]'); explaining without a progress bar", stacklevel=4)
        return batches
    return tqdm(batches, total=len(batches), desc="rnnshap", unit="batch")  # closes itself when the loop ends



def _per_input(labels: Sequence[Any] | None, count: int) -> list[Any]:
    """Labels given for a multi-input model: one list per input (or None for all)."""
    if labels is None:
        return [None] * count
    if len(labels) != count or any(isinstance(item, str) or not hasattr(item, "__len__") for item in labels if item is not None):
        raise ValueError(f"the model has {count} inputs: give one list of labels per input (None for an input without)")
    return list(labels)


def _axis_labels(shape: tuple[int, ...], feature_names: Sequence[Any] | None, time_labels: Sequence[Any] | None) -> Any:
    """The ``feature_names`` of a shap.Explanation for an input of ``shape`` (batch first)."""
    if feature_names is None and time_labels is None:
        return None
    axes = shape[1:]

    def checked(labels: Sequence[Any] | None, size: int, what: str, default: str) -> list[str]:
        if labels is None:
            return [f"{default}{i}" for i in range(size)]
        if len(labels) != size:
            raise ValueError(f"{len(labels)} {what} for an input of shape {shape}: it needs {size}")
        return [str(label) for label in labels]

    if len(axes) == 1:
        if feature_names is not None and time_labels is not None:
            raise ValueError(f"an input of shape {shape} has one axis to label: give feature_names or time_labels, not both")
        return checked(feature_names if feature_names is not None else time_labels, axes[0], "labels", "f")
    if len(axes) == 2:
        times = checked(time_labels, axes[0], "time_labels", "t")
        features = checked(feature_names, axes[1], "feature_names", "f")
        grid = np.array([[f"{t}:{f}" for f in features] for t in times])
        return np.broadcast_to(grid, (shape[0], *grid.shape)).copy()  # per sample: see __call__
    raise ValueError(f"labels for an input of shape {shape} are not supported: only (N, F) and (N, T, F) inputs take names")
