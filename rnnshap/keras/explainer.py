"""``rnnshap.DeepExplainer`` for Keras 3 models (TensorFlow backend).

The model's own layer graph runs on pairs of tensors (:class:`~rnnshap.keras.dual.Dual`): the
explained inputs and their references, each pair through every layer by its rule, with one
``tf.GradientTape`` gradient per explained output giving the multipliers; then, as on the PyTorch
side, φ = mean over the background of multiplier × (x − r).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from ..errors import AdditivityError, InputError, RnnShapError
from ..explainer import DeepExplainer, _axis_labels, _per_input, _progress
from .dual import Dual
from .layers import Run, TokenDual, problems, refusal, run_model

#: relative additivity tolerance per dtype, against max(|f(x)|, |E[f]|, Σ|φ|), as for PyTorch
ADDITIVITY_RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


class KerasDeepExplainer(DeepExplainer):
    """Exact DeepSHAP values for a Keras 3 Functional or Sequential model (TensorFlow backend).

    Made by ``rnnshap.DeepExplainer(keras_model, background)``; the arguments and results are those
    of the PyTorch explainer. ``rules`` (custom rules) are PyTorch-only and refused here.
    """

    def __init__(self, model: Any, data: Any, *, batch_size: int = 2048, rules: Any = None, progress: bool | None = None) -> None:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise InputError(f"rnnshap explains Keras models on the TensorFlow backend; this Keras runs on {keras.backend.backend()!r}")
        if rules:
            raise ValueError("custom rules are supported for PyTorch models only")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        found = problems(model)
        if found:
            raise refusal(found)
        self.model = model
        self.batch_size = int(batch_size)
        self.progress = progress
        self.multi_input = isinstance(data, (list, tuple))
        self._dtypes = self._input_dtypes(model, len(data) if self.multi_input else 1)
        self._background = self._arrays(data, "background")
        outputs = self._predict(self._background)
        self.output_shape = tuple(outputs.shape[1:])
        self.token_inputs = [i for i, b in enumerate(self._background) if not np.issubdtype(b.dtype, np.floating)]
        # a dual pass over a few background rows finds unsupported layers and misused integer inputs now
        probe = [b[:2] for b in self._background]
        dual_out, _, _ = self._dual_pass(probe, [b[-2:] for b in self._background], tape=None)
        gap = float(np.abs(np.asarray(dual_out.x, np.float64) - outputs[:2].astype(np.float64)).max())
        if gap > 1e-3 * max(1.0, float(np.abs(outputs[:2]).max())):
            raise RnnShapError(f"rnnshap's pass through this Keras model gives outputs {gap:.3g} away from the model's own; please report this model")
        mean = outputs.astype(np.float64).mean(0)
        self.expected_value: float | np.ndarray = float(mean) if mean.ndim == 0 else mean
        self._base: np.ndarray = np.zeros(0)

    # -- inputs ------------------------------------------------------------------------------------
    @staticmethod
    def _input_dtypes(model: Any, count: int) -> list[str]:
        inputs = getattr(model, "inputs", None)
        try:
            dtypes = [str(getattr(t, "dtype", model.compute_dtype)) for t in inputs] if inputs else []
        except (AttributeError, ValueError):
            dtypes = []
        if len(dtypes) != count:
            dtypes = [str(model.compute_dtype)] * count
        return [d.replace("tf.", "") for d in dtypes]

    def _arrays(self, values: Any, what: str) -> list[np.ndarray]:
        if self.multi_input != isinstance(values, (list, tuple)):
            given = "a list" if isinstance(values, (list, tuple)) else "one array"
            raise InputError(f"{what} is {given} but the background was {'a list' if self.multi_input else 'one array'}; pass both the same way")
        arrays = []
        for index, (value, dtype) in enumerate(zip(values if self.multi_input else [values], self._dtypes, strict=False)):
            array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            if array.ndim == 0:
                raise InputError(f"{what}[{index}] is a scalar; its first dimension must index samples")
            if np.issubdtype(array.dtype, np.integer):  # token ids: attributed at the Embedding that reads them
                arrays.append(array.astype(np.int64 if dtype == "int64" else np.int32))
            elif np.issubdtype(array.dtype, np.floating) or array.dtype == bool:
                arrays.append(array.astype(dtype))
            else:
                raise InputError(f"{what}[{index}] has dtype {array.dtype}; rnnshap needs numbers")
        if len(arrays) != len(self._dtypes):
            raise InputError(f"{what}: the model takes {len(self._dtypes)} input(s), got {len(arrays)}")
        if len({a.shape[0] for a in arrays}) != 1:
            raise InputError(f"{what}: the inputs have different numbers of rows: {[a.shape[0] for a in arrays]}")
        if hasattr(self, "_background"):
            for index, (a, b) in enumerate(zip(arrays, self._background, strict=True)):
                if a.shape[1:] != b.shape[1:]:
                    raise InputError(f"{what}[{index}] has shape {a.shape}; the background has rows of shape {b.shape[1:]}")
        return arrays

    def _predict(self, arrays: list[np.ndarray]) -> np.ndarray:
        args = arrays if self.multi_input else arrays[0]
        try:
            out = self.model(args, training=False)
        except Exception as error:  # keras raises ValueError, TypeError or TF errors on a bad shape
            raise InputError(f"The model failed on inputs of shape {[a.shape for a in arrays]}: {error}") from error
        if isinstance(out, (list, tuple, dict)):
            raise InputError("The model has several outputs; rnnshap explains models with one output tensor")
        result = np.asarray(out)
        if result.ndim == 0 or result.shape[0] != arrays[0].shape[0]:
            raise InputError(f"The model maps {arrays[0].shape[0]} rows to an output of shape {result.shape}; the output's first dimension must be the batch")
        return result

    # -- the dual pass -----------------------------------------------------------------------------
    def _dual_pass(self, xs: list[np.ndarray], rs: list[np.ndarray], tape: tf.GradientTape | None) -> tuple[Dual, list[tf.Tensor], Run]:
        run = Run(tape)
        watched: list[tf.Tensor] = []
        duals: list[Dual] = []
        for index, (x, r) in enumerate(zip(xs, rs, strict=True)):
            tx, tr = tf.convert_to_tensor(x), tf.convert_to_tensor(r)
            if index in self.token_inputs:
                duals.append(TokenDual(tx, tr, index))
            else:
                if tape is not None:
                    tape.watch(tx)
                watched.append(tx)
                duals.append(Dual(tx, tr))
        out = run_model(self.model, duals, run)
        if not isinstance(out, Dual):
            raise InputError("The model has several outputs; rnnshap explains models with one output tensor")
        return out, watched, run

    def shap_values(  # type: ignore[override]
        self,
        X: Any,
        ranked_outputs: int | None = None,
        output_rank_order: str = "max",
        check_additivity: bool | float = True,
        *,
        outputs: Sequence[int | tuple[int, ...]] | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> Any:
        """SHAP values of ``X``; see :meth:`rnnshap.DeepExplainer.shap_values`."""
        inputs = self._arrays(X, "X")
        n = inputs[0].shape[0]
        selected = self._selected_outputs(n, ranked_outputs, output_rank_order, outputs, lambda: self._predict(inputs).reshape(n, -1))
        show = self.progress if progress is None else progress
        phis, model_outputs = self._attribute_keras(inputs, selected, batch_size or self.batch_size, show)
        if check_additivity is not False:
            rtol = None if check_additivity is True else float(check_additivity)
            self._check(phis, model_outputs, selected, rtol)
        ranked = ranked_outputs is not None or outputs is not None
        values = [self._layout(phi, ranked) for phi in phis]
        result: Any = values if self.multi_input else values[0]
        if ranked_outputs is not None:
            return result, selected
        return result

    def __call__(self, X: Any, *, feature_names: Any = None, time_labels: Any = None, output_names: Any = None, check_additivity: bool | float = True) -> Any:
        """A ``shap.Explanation`` of ``X``; see :meth:`rnnshap.DeepExplainer.__call__`."""
        try:
            import shap
        except ImportError as error:
            raise ImportError("explainer(X) returns a shap.Explanation and needs shap: pip install 'rnnshap[shap]'.") from error
        values = self.shap_values(X, check_additivity=check_additivity)
        inputs = self._arrays(X, "X")
        per_input = values if self.multi_input else [values]
        base = self._base.reshape(inputs[0].shape[0], *self.output_shape)
        features = _per_input(feature_names, len(inputs)) if self.multi_input else [feature_names]
        times = _per_input(time_labels, len(inputs)) if self.multi_input else [time_labels]
        explanations = [
            shap.Explanation(values=v, base_values=base, data=x, feature_names=_axis_labels(x.shape, f, t), output_names=None if output_names is None else list(output_names))
            for v, x, f, t in zip(per_input, inputs, features, times, strict=True)
        ]
        return explanations if self.multi_input else explanations[0]

    def _attribute_keras(self, inputs: list[np.ndarray], selected: np.ndarray, batch_size: int, progress: bool | None) -> tuple[list[np.ndarray], np.ndarray]:
        """Mean over the background of multiplier × (x − r) for every (sample, selected output).

        Every (sample, reference) pair runs once per selected output, as k copies in one batch, each
        copy differentiating its own output: one gradient for all outputs. A batch holds at most
        ``batch_size // k`` pairs (at least one), so memory stays bounded by ``batch_size`` rows.
        """
        n, k = selected.shape
        n_refs = self._background[0].shape[0]
        sums = [np.zeros((k, n, *x.shape[1:])) for x in inputs]
        model_outputs = base = np.zeros(0)
        total = n * n_refs
        step = max(1, batch_size // k)
        floating = [t for t in range(len(inputs)) if t not in self.token_inputs]
        for start in _progress(range(0, total, step), progress):
            pairs = np.arange(start, min(start + step, total))
            p = len(pairs)
            sample, ref = pairs // n_refs, pairs % n_refs
            xs = [np.concatenate([x[sample]] * k) for x in inputs]
            rs = [np.concatenate([b[ref]] * k) for b in self._background]
            columns = selected[sample].T.reshape(-1)  # copy j differentiates output selected[sample, j]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                out, watched, run = self._dual_pass(xs, rs, tape)
                flat = tf.reshape(out.x, (k * p, -1))
                chosen = tf.gather(flat, tf.convert_to_tensor(columns[:, None]), batch_dims=1)
            sources = watched + [e for _, e, _ in run.embedded]
            grads = tape.gradient(chosen, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            if model_outputs.size == 0:
                model_outputs = np.zeros((n, int(flat.shape[1])))
                base = np.zeros_like(model_outputs)
            model_outputs[sample] = flat[:p].numpy().astype(np.float64)
            np.add.at(base, sample, tf.reshape(out.r, flat.shape)[:p].numpy().astype(np.float64))
            for t, grad in zip(floating, grads[: len(floating)], strict=True):
                contribution = grad.numpy().astype(np.float64) * (xs[t].astype(np.float64) - rs[t].astype(np.float64))
                for j in range(k):
                    np.add.at(sums[t][j], sample, contribution[j * p : (j + 1) * p])
            for (t, ex, er), grad in zip(run.embedded, grads[len(floating) :], strict=True):
                per_token = (grad.numpy().astype(np.float64) * (ex.numpy().astype(np.float64) - er.numpy().astype(np.float64))).sum(-1)
                if per_token.shape[1:] != sums[t].shape[2:]:
                    raise InputError(f"Input {t} (token ids) of shape {inputs[t].shape} reaches an embedding with shape {tuple(ex.shape[:-1])}")
                for j in range(k):
                    np.add.at(sums[t][j], sample, per_token[j * p : (j + 1) * p])
        self._base = base / n_refs
        phis = [np.moveaxis(s / n_refs, 0, -1) for s in sums]
        return phis, model_outputs

    def _check(self, phis: list[np.ndarray], model_outputs: np.ndarray, selected: np.ndarray, rtol: float | None) -> None:
        n, k = selected.shape
        rows = np.arange(n)[:, None]
        expected, fx = self._base[rows, selected], model_outputs[rows, selected]
        totals = sum(phi.reshape(n, -1, k).sum(1) for phi in phis)
        magnitude = sum(np.abs(phi.reshape(n, -1, k)).sum(1) for phi in phis)
        error = np.abs(totals - (fx - expected))
        scale = np.maximum(np.maximum(np.abs(fx), np.abs(expected)), magnitude)
        dtype = self._dtypes[0] if not self.token_inputs else str(self.model.compute_dtype)
        rtol = rtol if rtol is not None else ADDITIVITY_RTOL.get(dtype, 1e-4)
        excess = error - rtol * scale
        failing = ~(error <= rtol * scale)  # NaN fails too
        if failing.any():
            ranking = np.nan_to_num(excess / np.maximum(scale, np.finfo(np.float64).tiny), nan=np.inf)
            sample, column = np.unravel_index(int(np.argmax(ranking)), excess.shape)
            raise AdditivityError(
                f"The attributions do not add up: for sample {sample}, output {int(selected[sample, column])}, "
                f"sum(phi) = {totals[sample, column]:.6g} but f(x) - E[f] = {fx[sample, column] - expected[sample, column]:.6g} "
                f"(error {error[sample, column]:.3g}; tolerance {rtol:.1g} of the scale {scale[sample, column]:.3g} for {dtype}); "
                f"{int(failing.sum())} of {n * k} (sample, output) pairs fail. "
                "Pass check_additivity=False to get the values anyway."
            )

    def _layout(self, phi: np.ndarray, ranked: bool) -> np.ndarray:
        if ranked:
            return phi
        if not self.output_shape:
            return phi[..., 0]
        return phi.reshape(*phi.shape[:-1], *self.output_shape)
