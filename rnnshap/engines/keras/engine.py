"""The Keras engine: Keras 3 models on the TensorFlow backend.

The model's own layer graph runs on pairs of tensors (:class:`~rnnshap.engines.keras.dual.Dual`):
the explained inputs and their references, each pair through every layer by its rule, with one
``tf.GradientTape`` gradient for all selected outputs giving the multipliers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from ...errors import InputError, RnnShapError
from ..base import Block, BlockResult, Engine
from .dual import Dual
from .layers import Run, TokenDual, problems, refusal, run_model


class KerasEngine(Engine):
    """DeepSHAP for a Keras 3 Functional or Sequential model (TensorFlow backend)."""

    name = "keras (tensorflow)"

    def __init__(self, model: Any, data: Any) -> None:
        found = problems(model)
        if found:
            raise refusal(found)
        self.model = model
        self.multi_input = isinstance(data, (list, tuple))
        self._dtypes = self._input_dtypes(model, len(data) if self.multi_input else 1)
        self.background: list[np.ndarray] = []
        self.background = self.inputs(data, "background")
        self.references = int(self.background[0].shape[0])
        outputs = self._call(self.background)
        self.output_shape = tuple(outputs.shape[1:])
        self.background_outputs = outputs.astype(np.float64)
        self.token_inputs = [i for i, b in enumerate(self.background) if not np.issubdtype(b.dtype, np.floating)]
        floating = [self._dtypes[i] for i in range(len(self._dtypes)) if i not in self.token_inputs]
        self.dtype = floating[0] if floating else str(model.compute_dtype)
        # a dual pass over a few background rows finds unsupported layers and misused integer inputs now
        probe = [b[:2] for b in self.background]
        dual_out, _, _ = self._dual_pass(probe, [b[-2:] for b in self.background], tape=None)
        gap = float(np.abs(np.asarray(dual_out.x, np.float64) - outputs[:2].astype(np.float64)).max())
        if gap > 1e-3 * max(1.0, float(np.abs(outputs[:2]).max())):
            raise RnnShapError(f"rnnshap's pass through this Keras model gives outputs {gap:.3g} away from the model's own; please report this model")

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

    def inputs(self, X: Any, what: str) -> list[np.ndarray]:
        if self.multi_input != isinstance(X, (list, tuple)):
            given = "a list" if isinstance(X, (list, tuple)) else "one array"
            raise InputError(f"{what} is {given} but the background was {'a list' if self.multi_input else 'one array'}; pass both the same way")
        arrays = []
        for index, (value, dtype) in enumerate(zip(X if self.multi_input else [X], self._dtypes, strict=False)):
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
        for index, (a, b) in enumerate(zip(arrays, self.background, strict=False)):
            if a.shape[1:] != b.shape[1:]:
                raise InputError(f"{what}[{index}] has shape {a.shape}; the background has rows of shape {b.shape[1:]}")
        return arrays

    def _call(self, arrays: list[np.ndarray]) -> np.ndarray:
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

    def predict(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self._call(inputs).reshape(inputs[0].shape[0], -1).astype(np.float64)

    def to_numpy(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return list(inputs)

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

    def rows_per_pair(self, outputs: int) -> int:
        return outputs  # every pair runs once per selected output (see attribute)

    def attribute(self, inputs: list[np.ndarray], block: Block, columns: np.ndarray) -> BlockResult:
        """Σ over the block's references of multiplier × (x − r) for each selected output.

        Every pair runs once per selected output, as k copies in one batch, each copy
        differentiating its own output: one gradient for all outputs.
        """
        s, n_refs, k = block.samples, block.references, columns.shape[1]
        p = s * n_refs
        xs = [np.concatenate([np.repeat(x[block.s0 : block.s1], n_refs, axis=0)] * k) for x in inputs]
        rs = [np.concatenate([np.tile(b[block.r0 : block.r1], (s,) + (1,) * (b.ndim - 1))] * k) for b in self.background]
        chosen_columns = np.repeat(columns, n_refs, axis=0).T.reshape(-1)  # copy j differentiates output columns[:, j]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            out, watched, run = self._dual_pass(xs, rs, tape)
            flat = tf.reshape(out.x, (k * p, -1))
            chosen = tf.gather(flat, tf.convert_to_tensor(chosen_columns[:, None]), batch_dims=1)
        sources = watched + [e for _, e, _ in run.embedded]
        grads = tape.gradient(chosen, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        def per_sample(contribution: np.ndarray) -> np.ndarray:
            """(k·pairs, *shape) → Σ over each sample's references, (k, s, *shape)."""
            return contribution.reshape(k, s, n_refs, *contribution.shape[1:]).sum(2)

        sums = [np.zeros((k, s, *x.shape[1:])) for x in inputs]
        floating = [t for t in range(len(inputs)) if t not in self.token_inputs]
        for t, grad in zip(floating, grads[: len(floating)], strict=True):
            sums[t] += per_sample(grad.numpy().astype(np.float64) * (xs[t].astype(np.float64) - rs[t].astype(np.float64)))
        for (t, ex, er), grad in zip(run.embedded, grads[len(floating) :], strict=True):
            per_token = (grad.numpy().astype(np.float64) * (ex.numpy().astype(np.float64) - er.numpy().astype(np.float64))).sum(-1)
            if per_token.shape[1:] != sums[t].shape[2:]:
                raise InputError(f"Input {t} (token ids) of shape {inputs[t].shape} reaches an embedding with shape {tuple(ex.shape[:-1])}")
            sums[t] += per_sample(per_token)
        model_outputs = flat[:p].numpy().astype(np.float64).reshape(s, n_refs, -1)[:, 0]
        ref_sums = tf.reshape(out.r, flat.shape)[:p].numpy().astype(np.float64).reshape(s, n_refs, -1).sum(1)
        return BlockResult(sums, model_outputs, ref_sums)
