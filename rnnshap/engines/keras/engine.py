"""The Keras engine: Keras 3 models on the TensorFlow and JAX backends.

The model's own layer graph runs on pairs of tensors (:class:`~rnnshap.engines.keras.dual.Dual`):
the explained inputs and their references, each pair through every layer by its rule, with one
gradient for all selected outputs (``backend.gradient``: a ``tf.GradientTape``, or ``jax.vjp``) giving the multipliers.

Because that pass re-implements each layer, every pass checks its outputs against the model's own
(:meth:`KerasEngine._verify`): on the input side against ``model(x)``, on the reference side against
the model on the reference rows wherever the reference is read with the masks the model computes on
it (see :class:`~rnnshap.engines.keras.pass_state.Run`). A mismatch is an :class:`~rnnshap.RnnShapError`.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from keras import ops
from keras import tree as keras_tree

from ...errors import RANDOM_MODEL, InputError, ModelStateError, RnnShapError
from ..base import RTOL, Block, BlockResult
from ..outputs import OutputChoice, OutputLayout
from . import backend
from .backend import Tensor, dtype_name, to_numpy
from .datasets import dataset_rows
from .dual import Dual, narrowed
from .inputs import KerasInputs
from .layer_rules import problems
from .pass_state import Run, TokenDual, refusal
from .private import check_version, flat_layers
from .training_calls import refuse_training_calls
from .walker import run_model

#: floating dtypes from the least to the most precise
_PRECISION = ("bfloat16", "float16", "float32", "float64")
#: the model runs on this many explained rows at a time for the check (one call serves several blocks)
MODEL_ROWS = 256


_INTEGER = ("int32", "int64", "int16", "int8", "uint8", "bool")


def _concatenate(parts: list[Dual]) -> Dual:
    """Several output Duals as one: each flattened per row, in a common dtype, concatenated."""
    dtype = max((dtype_name(d.x.dtype) for d in parts), key=lambda t: np.dtype(t).itemsize if t != "bfloat16" else 2)

    def flat(t: Tensor) -> Tensor:
        return ops.cast(ops.reshape(t, (ops.shape(t)[0], -1)), dtype)

    return Dual(ops.concatenate([flat(d.x) for d in parts], 1), ops.concatenate([flat(d.r) for d in parts], 1))


def _floating(dtype: str | None) -> bool:
    return dtype is not None and dtype in _PRECISION


#: the compiled call of each model (by whether it takes a list of inputs), shared by its explainers
_MODEL_CALLS: weakref.WeakKeyDictionary[Any, dict[tuple[bool, tuple[str, ...] | None], Any]] = weakref.WeakKeyDictionary()


def _model_call(model: Any, multi_input: bool, names: tuple[str, ...] | None = None) -> Any:
    """``model(inputs, training=False)`` as a tf.function, one per model: traced once for every batch
    size (``reduce_retracing`` leaves the batch dimension unknown) and reused by every explainer; on JAX
    under ``jax.jit`` (``backend.compiled``: traced once per batch size, with the model's weights as arguments).
    ``names``: the model takes its inputs as a dict with these keys."""
    calls = _MODEL_CALLS.setdefault(model, {})
    key = (multi_input, names)
    if key not in calls:
        held = weakref.ref(model)  # the cache must not keep the model alive

        def call(tensors: list[Tensor]) -> Any:
            inputs = dict(zip(names, tensors, strict=True)) if names else tensors if multi_input else tensors[0]
            return held()(inputs, training=False)  # type: ignore[misc]

        if backend.name() == "jax":  # (jax.jit: one trace per batch size, the weights read at each call)
            calls[key] = backend.compiled(call, list(model.variables))
        else:
            import tensorflow as tf

            calls[key] = tf.function(call, autograph=False, reduce_retracing=True)
    return calls[key]


def _rounds_float64(model: Any, dtypes: list[str]) -> bool:
    """Whether ``model`` holds float64 tensors (inputs or layers) that Keras computes some ops of in float32
    (``dual.narrowed``: Keras 3.15 on JAX); False on TensorFlow."""
    if narrowed("float64") is None:
        return False
    try:
        layers = flat_layers(model)
    except (AttributeError, TypeError):
        layers = list(getattr(model, "layers", []))
    held = {*dtypes, *(str(getattr(layer, "compute_dtype", "")) for layer in layers)}
    if "float64" not in held:
        return False
    import keras

    L = keras.layers
    rounding = (
        L.LayerNormalization, L.GroupNormalization, L.BatchNormalization, L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D, L.MultiHeadAttention, L.Attention, L.AdditiveAttention, L.Lambda,
        *((L.RMSNormalization,) if hasattr(L, "RMSNormalization") else ()),
    )  # fmt: skip
    ops_nodes = [op for m in (model, *layers) for op in getattr(m, "operations", []) if not isinstance(op, L.Layer)]
    custom = [layer for layer in layers if not type(layer).__module__.startswith("keras.")]  # (a traced call())
    return bool(ops_nodes or custom) or any(isinstance(layer, rounding) for layer in layers)


class KerasEngine(KerasInputs):
    """DeepSHAP for a Keras 3 Functional or Sequential model (TensorFlow backend)."""

    name = "keras (tensorflow)"

    def __init__(self, model: Any, data: Any, output: OutputChoice = None) -> None:
        check_version()  # the private parts of Keras it reads (private.py) are those of the verified releases
        refuse_training_calls(model)
        data = dataset_rows(data, "background")  # (a tf.data.Dataset: its rows, as Keras' predict reads them)
        found = problems(model)
        if found:
            raise refusal(found)
        self.model = model
        #: which output tensor is explained (``output=``), and where each sits in the output vector
        self.outputs = OutputLayout(output)
        #: the compiled dual pass (see :meth:`_graph_pass`): None until first used, False where it cannot be traced
        self._graph: Any = None
        #: the compiled model call (see :meth:`_compiled_call`), the same way
        self._model_graph: Any = None
        #: for each model input, the index of the engine's input it reads (the model's order of named inputs)
        self._model_order: list[int] | None = None
        if isinstance(data, dict):
            data = self._named(model, data)
        self.multi_input = isinstance(data, (list, tuple))
        #: a Python list of Python lists or numbers (``bg.tolist()``), read as one input per item
        self._nested_list = self.multi_input and len(data) > 0 and all(isinstance(d, (list, tuple, int, float)) for d in data)
        self.background: list[np.ndarray] = []
        arrays = self._arrays(data, "background")
        declared = self._in_model_order(self._input_dtypes(model, len(arrays)))
        # integer data are token ids (read by an Embedding) unless they turn out to feed other layers and the
        # keras.Input is not declared integer: then they are numbers, which keras casts to the Input's dtype.
        # A floating keras.Input read by an Embedding (Sequential([Embedding(..., input_shape=(T,)), ...]),
        # whose Input keras makes float32 and casts to integers at the Embedding) takes token ids all the same.
        # Boolean data (or integers) may also be masks (MultiHeadAttention's attention_mask): never attributed.
        self.token_inputs = [i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_]
        self._dtypes = [
            self._token_dtype(arrays[i], declared[i]) if i in self.token_inputs else self._float_dtype(declared[i])
            for i in range(len(arrays))
        ]
        self.background = self._conform(arrays, "background")
        self.references = int(self.background[0].shape[0])
        outputs = self._call(self.background)
        declared = self._in_model_order(self._input_dtypes(model, len(arrays)))  # a Sequential without keras.Input has one now
        while True:  # a dual pass over two background rows finds unsupported layers and integer inputs that are numbers
            try:
                self._probe(outputs)
                break
            except InputError as error:
                index = getattr(error, "input_index", None)
                if index not in self.token_inputs or declared[index] in _INTEGER or self._dtypes[index] == "bool":
                    raise
                self.token_inputs.remove(index)
                self._dtypes[index] = self._float_dtype(declared[index])
                self.background = self._conform(arrays, "background")
        self.output_shape = tuple(outputs.shape[1:])
        self.background_outputs = outputs.astype(np.float64)
        self.dtype = self._least_precise()
        #: the tolerance's dtype of the pass's check against the model (see :meth:`_held_dtype`)
        self.held_dtype = self._held_dtype()

    @staticmethod
    def _token_dtype(array: np.ndarray, declared: str | None) -> str:
        if declared in _INTEGER:
            return str(declared)
        return "bool" if array.dtype == np.bool_ else "int32"

    def _float_dtype(self, declared: str | None) -> str:
        return declared if declared is not None and _floating(declared) else str(self.model.compute_dtype)

    def _least_precise(self, rounded: bool = True) -> str:
        """The least precise floating dtype the model computes in (numeric inputs and layers): it sets the
        tolerance of the additivity check. ``rounded=False``: the least precise dtype it holds its tensors in
        (``backend.computed_dtype``: a float64 model on Keras 3.15's JAX, whose float32 ``tanh`` the pass
        computes as the model does, is float64 there), the tolerance of the pass's check against the model."""
        dtypes = {self._dtypes[i] for i in range(len(self._dtypes)) if i not in self.token_inputs}
        try:
            layers = flat_layers(self.model)
        except (AttributeError, TypeError):
            layers = list(getattr(self.model, "layers", []))
        import keras

        for layer in layers:
            if not isinstance(layer, (keras.Model, keras.layers.InputLayer)):
                dtypes.add(str(getattr(layer, "compute_dtype", "")))
        dtypes = {backend.computed_dtype(d, rounded) if d in _PRECISION else d for d in dtypes}  # (JAX without x64: float32)
        known = [d for d in _PRECISION if d in dtypes]
        return known[0] if known else backend.computed_dtype(self.model.compute_dtype, rounded)

    def _held_dtype(self) -> str:
        """The dtype whose tolerance the pass's check against the model takes: the least precise dtype the model
        holds its tensors in (a float64 model on Keras 3.15's JAX rounds its tanh to float32, which the pass computes
        as it does: float64). Where Keras computes a float64 model's reductions in float32 there (norms, means,
        attention: :func:`_rounds_float64`), the model's own outputs for a row depend on the batch it sits in (XLA
        orders a float32 reduction by the batch's shape: 2.4e-7 apart for a LayerNormalization at 2 and 32 rows),
        so no pass over other rows can match them closer than float32 rounding: the rounded dtype's tolerance."""
        if _rounds_float64(self.model, self._dtypes):
            return self._least_precise()
        return self._least_precise(rounded=False)

    def _probe(self, outputs: np.ndarray) -> None:
        """A pass over two pairs of background rows: it lists every operation without a rule (in traced
        custom calls too) and checks that the pass computes the model."""
        xs, rs = [b[:2] for b in self.background], [b[-2:] for b in self.background]
        out, run = self._dual_pass(xs, rs, None, collect=True)
        if run.collect:
            raise refusal(run.collect)
        self.dtype = self._least_precise()
        self.held_dtype = self._held_dtype()
        n = len(xs[0])  # pairs (x_i, r_i): a grid of n samples with one reference each
        try:
            self._verify(out, run, outputs[:2].reshape(1, n, 1, -1), outputs[-2:].reshape(1, n, 1, -1), (1, n, 1))
        except RnnShapError as mismatch:  # a model whose own calls differ is random, not misread by the pass
            gap = self._random_gap()
            if gap > 0:
                raise ModelStateError(RANDOM_MODEL.format(gap=gap)) from mismatch
            raise

    def _random_gap(self, calls: int = 4) -> float:
        """How far apart the model's own calls on every background row lie (0: it repeats itself). A random model's
        draws can agree by chance on a few rows and in one repeat (dropout on a narrow layer: two rows of four units
        agree once in 256 calls), so ``calls`` calls of every row are compared."""
        first = self._call(list(self.background)).astype(np.float64)
        gaps = [np.abs(self._call(list(self.background)).astype(np.float64) - first) for _ in range(calls - 1)]
        return float(max(np.nanmax(g, initial=0.0) for g in gaps))

    def _call(self, arrays: list[np.ndarray]) -> np.ndarray:
        out = self._compiled_call(arrays)
        if out is None:
            args: Any = arrays if self.multi_input else arrays[0]
            if self.input_names is not None:
                args = dict(zip(self.input_names, arrays, strict=True))
            try:
                out = self.model(args, training=False)
            except Exception as error:  # keras raises ValueError, TypeError or TF errors on a bad shape
                raise InputError(self._misfit(arrays, error)) from error
        rows = arrays[0].shape[0]
        flat = [np.asarray(t) for t in keras_tree.flatten(out)]
        for index, result in enumerate(flat):
            if result.ndim == 0 or result.shape[0] != rows:
                which = "output" if len(flat) == 1 else f"output {index}"
                raise InputError(
                    f"The model maps {rows} rows to an {which} of shape {result.shape}; "
                    "the output's first dimension must be the batch"
                )

        def concatenate(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([p.reshape(rows, -1).astype(np.result_type(*parts)) for p in parts], axis=1)

        return self._take(out, flat, concatenate)

    def _take(self, out: Any, flat: list[Any], concatenate: Any) -> Any:
        names = [str(k) for k in sorted(out)] if isinstance(out, dict) else getattr(self.model, "output_names", None)
        return self.outputs.take(flat, names, lambda t: getattr(t, "x", t).shape, concatenate)

    def predict(self, inputs: list[np.ndarray]) -> np.ndarray:
        outputs = self._call(inputs).reshape(inputs[0].shape[0], -1).astype(np.float64)
        self._outputs_cache = (weakref.ref(inputs[0]), outputs, np.ones(len(outputs), bool))
        return outputs

    def _model_outputs(self, inputs: list[np.ndarray], start: int, stop: int) -> np.ndarray:
        """The model's outputs on rows ``[start, stop)`` of ``inputs`` (float64, flat), for the check of
        :meth:`attribute`: computed :data:`MODEL_ROWS` rows at a time and kept for the next blocks."""
        cache = getattr(self, "_outputs_cache", None)
        if cache is None or cache[0]() is not inputs[0]:
            n = int(inputs[0].shape[0])
            width = int(np.prod(self.output_shape or (1,)))
            cache = self._outputs_cache = (weakref.ref(inputs[0]), np.zeros((n, width)), np.zeros(n, bool))
        _, outputs, done = cache
        if not done[start:stop].all():
            end = min(len(done), max(stop, start + MODEL_ROWS))
            outputs[start:end] = self._call([x[start:end] for x in inputs]).reshape(end - start, -1)
            done[start:end] = True
        return outputs[start:stop]

    def to_numpy(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return list(inputs)

    def _compiled_call(self, arrays: list[np.ndarray]) -> Any:
        """The model's outputs from a compiled call (``tf.function``, traced once per shape), or None
        where that fails: the caller then calls the model eagerly (and reports a bad input)."""
        if self._model_graph is False:
            return None
        if backend.name() == "jax" and not (self.model.built and self.model.variables):
            return None  # (the eager call builds it: a model built inside jax.jit would hold traced weights)
        if self._model_graph is None and _rounds_float64(self.model, self._dtypes):
            # Keras computes parts of a float64 model in float32 there (keras#23223: the norms, means, attention),
            # which XLA fuses otherwise under jax.jit than in the model's own call: the model's outputs are those of
            # its eager call, which the pass's rule for that rounding reproduces (dual.rounded)
            self._model_graph = False
            return None
        if self._model_graph is None:
            names = tuple(self.input_names) if self.input_names is not None else None
            self._model_graph = _model_call(self.model, self.multi_input, names)
        try:
            return self._model_graph([ops.convert_to_tensor(a) for a in arrays])
        except Exception:  # noqa: BLE001 - any failure: the eager call decides, and says what is wrong
            self._model_graph = False
            return None

    # -- the dual pass -----------------------------------------------------------------------------
    def _graph_pass(
        self, xs: list[np.ndarray], rs: list[np.ndarray], chosen_columns: np.ndarray, grid: tuple[int, int, int] | None = None
    ) -> tuple[Dual, Run, list[Tensor]] | None:
        """The dual pass and its gradient as one compiled TensorFlow graph (``tf.function``, traced
        once per block shape; on JAX one ``jax.jit``, see :meth:`_jitted_pass`): the same operations as
        the eager pass without Python's cost per operation and time step. None where the pass cannot be
        traced (token inputs, a layer whose rule needs eager values): the caller runs it eagerly; a failed
        trace is not tried again."""
        if self._graph is False or self.token_inputs:
            return None
        if backend.name() == "jax":
            return self._jitted_pass(xs, rs, chosen_columns, grid)
        import tensorflow as tf

        if self._graph is None:
            self._graph = tf.function(self._graph_body, autograph=False)
        try:
            x, r, agree, grads = self._graph(
                [tf.convert_to_tensor(x) for x in xs],
                [tf.convert_to_tensor(r) for r in rs],
                tf.convert_to_tensor(chosen_columns),
                grid,
            )
        except (TypeError, ValueError, NotImplementedError, AttributeError, tf.errors.OperatorNotAllowedInGraphError):
            self._graph = False
            return None
        except tf.errors.OpError:
            from . import fused  # TensorFlow's kernels: imported on that backend only

            if not fused.give_up_compiling():
                raise
            self._graph = None  # XLA failed on the fused layers' coefficients: the plain graph, traced afresh
            return self._graph_pass(xs, rs, chosen_columns, grid)
        run = Run(None, int(xs[0].shape[0]))
        run.agree = agree
        return Dual(x, r), run, grads

    def _jitted_pass(
        self, xs: list[np.ndarray], rs: list[np.ndarray], chosen_columns: np.ndarray, grid: tuple[int, int, int] | None
    ) -> tuple[Dual, Run, list[Tensor]] | None:
        """:meth:`_graph_pass` on JAX: the pass and its ``jax.vjp`` under one ``jax.jit``, traced once per
        block shape and grid (static), the model's weights its arguments (``backend.compiled``)."""
        if self._graph is None:
            self._graph = backend.compiled(self._graph_body, list(self.model.variables), static=(3,))
        try:
            x, r, agree, grads = self._graph(
                [ops.convert_to_tensor(x) for x in xs], [ops.convert_to_tensor(r) for r in rs],
                ops.convert_to_tensor(chosen_columns), grid,
            )  # fmt: skip
        except (TypeError, ValueError, NotImplementedError, AttributeError):  # (jax's tracer errors are TypeErrors)
            self._graph = False
            return None
        run = Run(None, int(xs[0].shape[0]))
        run.agree = agree
        return Dual(x, r), run, list(grads)

    def _graph_body(
        self, xs: list[Tensor], rs: list[Tensor], chosen_columns: Tensor, grid: tuple[int, int, int] | None
    ) -> tuple[Tensor, ...]:
        out, run, grads = self._pass_and_gradient(xs, rs, chosen_columns, grid)
        agree = run.agree if run.agree is not None else ops.ones((run.rows,), "bool")
        return out.x, out.r, agree, grads

    def _pass_and_gradient(
        self, xs: list[Any], rs: list[Any], chosen_columns: Tensor, grid: tuple[int, int, int] | None = None
    ) -> tuple[Dual, Run, list[Tensor]]:
        """The dual pass, and the gradient of row i's output ``chosen_columns[i]`` with respect to the
        floating inputs and then the embeddings the token inputs reach (``backend.gradient``: a tape on
        TensorFlow, ``jax.vjp`` on JAX). ``grid``: the rows' layout of (copies, samples, references)
        pairs, which lets recurrent layers run on distinct rows."""
        floating = [ops.convert_to_tensor(x) for i, x in enumerate(xs) if i not in self.token_inputs]
        kept: dict[str, Any] = {}

        def run_pass(marks: backend.Marks) -> tuple[Tensor, Any]:
            out, run = self._dual_pass(xs, rs, marks, grid=grid)
            kept["run"] = run  # its Python state; its tensors come back through the aux
            chosen = ops.take_along_axis(ops.reshape(out.x, (int(chosen_columns.shape[0]), -1)), chosen_columns[:, None], 1)
            return chosen, (out.x, out.r, run.agree, [(e_x, e_r) for _, e_x, e_r in run.embedded])

        (x, r, agree, embedded), grads = backend.gradient(run_pass, floating)
        run = kept["run"]
        run.agree = agree
        run.embedded = [(index, e_x, e_r) for (index, _, _), (e_x, e_r) in zip(run.embedded, embedded, strict=True)]
        return Dual(x, r), run, grads

    def _dual_pass(
        self,
        xs: list[np.ndarray],
        rs: list[np.ndarray],
        marks: backend.Marks | None,
        collect: bool = False,
        grid: tuple[int, int, int] | None = None,
    ) -> tuple[Dual, Run]:
        run = Run(marks, int(xs[0].shape[0]))
        run.grid = grid
        if collect:
            run.collect = []
        duals: list[Dual] = []
        for index, (x, r) in enumerate(zip(xs, rs, strict=True)):
            tx, tr = ops.convert_to_tensor(x), ops.convert_to_tensor(r)
            if index in self.token_inputs:
                duals.append(TokenDual(tx, tr, index))
            else:
                if marks is not None:
                    tx = marks.mark(tx)
                duals.append(Dual(tx, tr))
        if self._model_order is not None:  # the model's named inputs, in its order
            duals = [duals[i] for i in self._model_order]
        out = run_model(self.model, duals, run, as_list=self.multi_input)
        flat = keras_tree.flatten(out)
        if not all(isinstance(d, Dual) for d in flat):
            raise RnnShapError(
                "An output of this Keras model does not depend on its inputs (or only through masks); rnnshap cannot attribute it"
            )
        return self._take(out, flat, _concatenate), run

    def _verify(self, out: Dual, run: Run, model_x: np.ndarray, model_r: np.ndarray, grid: tuple[int, int, int]) -> None:
        """Check that the pass computed the model: ``out`` holds the pass's outputs for a grid of
        (copies, samples, references) rows; ``model_x`` and ``model_r`` the model's outputs on the
        samples and on the references, broadcastable to ``(*grid, n_outputs)``. The reference side is
        checked on the rows whose masks match those the model computes on the reference."""
        scale_values = np.abs(np.concatenate([model_x.reshape(-1), model_r.reshape(-1)]).astype(np.float64))
        finite = scale_values[np.isfinite(scale_values)]
        scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        held = self.held_dtype
        tol = RTOL.get(held, 1e-4) * scale
        checks = [("input", out.x, model_x, None), ("reference", out.r, model_r, run.agree)]
        for side, got_tensor, want, rows in checks:
            got = np.asarray(got_tensor, np.float64).reshape(*grid, -1)
            want = np.broadcast_to(np.asarray(want, np.float64), got.shape)
            with np.errstate(invalid="ignore"):
                bad = ~((np.abs(got - want) <= tol) | (got == want) | (np.isnan(got) & np.isnan(want)))
            if rows is not None:
                bad &= np.asarray(rows, bool).reshape(*grid, 1)
            if bad.any():
                copy, sample, reference, output = (int(i) for i in np.argwhere(bad)[0])
                a, b = got[copy, sample, reference, output], want[copy, sample, reference, output]
                raise RnnShapError(
                    f"rnnshap's pass through this Keras model does not reproduce the model on the {side} side: for sample "
                    f"{sample} paired with reference {reference}, output {output} is {a:.9g} where the model gives {b:.9g} "
                    f"(gap {abs(a - b):.3g}, tolerance {tol:.3g} for {held}; {int(bad.sum())} values off). Its "
                    "attributions would explain another function, so rnnshap stops; please report this model."
                )

    def rows_per_pair(self, outputs: int) -> int:
        return outputs  # every pair runs once per selected output (see attribute)

    def attribute(
        self, inputs: list[np.ndarray], block: Block, columns: np.ndarray, per_pair: bool = False, multipliers: bool = False
    ) -> BlockResult:
        """Σ over the block's references of multiplier × (x − r) for each selected output (each
        pair's own with ``per_pair``).

        Every pair runs once per selected output, as k copies in one batch, each copy
        differentiating its own output: one gradient for all outputs. The pass's outputs are checked
        against the model's (see :meth:`_model_outputs`).
        """
        if multipliers:  # (it does not declare gives_multipliers: the front door refuses them before)
            raise InputError("the Keras engine gives multiplier × (x − r), not the multipliers themselves")
        s, n_refs, k = block.samples, block.references, columns.shape[1]
        p = s * n_refs
        xs = [np.concatenate([np.repeat(x[block.s0 : block.s1], n_refs, axis=0)] * k) for x in inputs]
        rs = [np.concatenate([np.tile(b[block.r0 : block.r1], (s,) + (1,) * (b.ndim - 1))] * k) for b in self.background]
        chosen_columns = np.repeat(columns, n_refs, axis=0).T.reshape(-1)  # copy j differentiates output columns[:, j]
        grid = (k, s, n_refs)
        graph = self._graph_pass(xs, rs, chosen_columns, grid)
        if graph is None:
            graph = self._pass_and_gradient(xs, rs, ops.convert_to_tensor(chosen_columns), grid)
        out, run, grads = graph
        flat = ops.reshape(out.x, (k * p, -1))
        model_x = self._model_outputs(inputs, block.s0, block.s1).reshape(1, s, 1, -1)
        model_r = self.background_outputs[block.r0 : block.r1].reshape(1, 1, n_refs, -1)
        self._verify(out, run, model_x, model_r, (k, s, n_refs))

        def per_sample(contribution: np.ndarray) -> np.ndarray:
            """(k·pairs, *shape) → Σ over each sample's references, (k, s, *shape) ((k, s, n_refs,
            *shape) with ``per_pair``)."""
            pairs = contribution.reshape(k, s, n_refs, *contribution.shape[1:])
            return pairs if per_pair else pairs.sum(2)

        sums = [np.zeros((k, s, *((n_refs,) if per_pair else ()), *x.shape[1:])) for x in inputs]
        floating = [t for t in range(len(inputs)) if t not in self.token_inputs]
        for t, grad in zip(floating, grads[: len(floating)], strict=True):
            sums[t] += per_sample(to_numpy(grad).astype(np.float64) * (xs[t].astype(np.float64) - rs[t].astype(np.float64)))
        for (t, ex, er), grad in zip(run.embedded, grads[len(floating) :], strict=True):
            difference = to_numpy(ex).astype(np.float64) - to_numpy(er).astype(np.float64)
            per_token = (to_numpy(grad).astype(np.float64) * difference).sum(-1)
            if per_token.shape[1:] != sums[t].shape[3 if per_pair else 2 :]:
                raise InputError(
                    f"Input {t} (token ids) of shape {inputs[t].shape} reaches an embedding with shape {tuple(ex.shape[:-1])}"
                )
            sums[t] += per_sample(per_token)
        model_outputs = to_numpy(flat[:p]).astype(np.float64).reshape(s, n_refs, -1)[:, 0]
        ref_sums = to_numpy(ops.reshape(out.r, flat.shape)[:p]).astype(np.float64).reshape(s, n_refs, -1).sum(1)
        return BlockResult(sums, model_outputs, ref_sums)
