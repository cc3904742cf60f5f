"""The JAX engine: DeepSHAP for Flax NNX models, by the model's own jaxpr run on (input, reference) pairs.

The model is written as a jaxpr once per input shape (``jax.make_jaxpr`` of the module's call, its
parameters as arguments); :func:`rnnshap.engines.jax.pairs.run` evaluates it on a block's pairs, each
primitive by its rule, and one ``jax.vjp`` per explained output (``jax.vmap`` over the outputs) gives the
multipliers, all under one ``jax.jit``. The model is explained as it predicts (``model.eval()``: dropout off,
batch statistics from their running averages) on a copy: the user's module is never changed, and its
parameters are read again at every call, so an explainer follows the model's training.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...errors import InputError, RnnShapError
from ..base import RTOL, Block, BlockResult, Engine, batch_axis_advice, one_sample_hint
from ..outputs import OutputLayout, output_parts
from .layout import time_axes
from .pairs import Ids, Pair, Sites, float_dtypes, run


def _frozen(model: nnx.Module) -> tuple[Any, Any]:
    """The graph and state of an evaluation-mode copy of ``model`` (the user's module untouched)."""
    copy = nnx.merge(*nnx.split(model))
    copy.eval()
    return nnx.split(copy)


def time_axes_of(model: nnx.Module, background: list[Any]) -> list[tuple[int | None, str]]:
    """Per input of ``model`` (rows shaped as ``background``'s): the axis of one sample that is time, read from the
    model's jaxpr (:func:`rnnshap.engines.jax.layout.time_axes`), or None, and why."""
    graph, state = _frozen(model)
    closed, _ = JaxEngine.jaxpr_of(graph, state, [jnp.asarray(b[:1]) for b in background])
    return time_axes(closed.jaxpr, closed.jaxpr.invars[-len(background) :])


class JaxEngine(Engine):
    """DeepSHAP's engine for a ``flax.nnx.Module`` (see the module docstring)."""

    name = "jax (flax nnx)"

    def __init__(self, model: Any, data: Any, output: Any = None) -> None:
        self.model = model
        self.multi_input = isinstance(data, (list, tuple))
        arrays = list(data) if self.multi_input else [data]
        self.background = [self._array(a, "background") for a in arrays]
        self.references = int(self.background[0].shape[0])
        if any(int(b.shape[0]) != self.references for b in self.background):
            shapes = [tuple(b.shape) for b in self.background]
            raise InputError(
                f"every background input needs the same number of rows, got {[s[0] for s in shapes]}. "
                f"{batch_axis_advice(shapes, 'jax')}"
            )
        if self.references < 1:
            raise InputError("the background has no rows")
        integers = [i for i, b in enumerate(self.background) if jnp.issubdtype(b.dtype, jnp.integer)]
        self.outputs = OutputLayout(output)
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self._kept: tuple[Any, tuple[Any, Any]] | None = None  # (model_version(), its evaluation-mode copy's graph and state)
        out = self.predict(self.background)
        self._refuse_non_finite(out, self.background, "background row")
        sites = self._sites(*self._frozen(), self.background)
        #: integer inputs read by an embedding (attributed per token) and cast to floats (attributed as numbers)
        self.token_inputs = sorted({source for source, kind, *_ in sites if kind == "token"})
        self.number_inputs = sorted({source for source, kind, *_ in sites if kind == "number"} - set(self.token_inputs))
        unread = [i for i in integers if i not in self.token_inputs and i not in self.number_inputs]
        if unread:
            raise InputError(
                f"integer input(s) {unread} reach no embedding and no cast to a float in the model: rnnshap's JAX engine "
                "attributes integer inputs where they become floats"
            )
        floats = [b.dtype for b in self.background if jnp.issubdtype(b.dtype, jnp.floating)]
        given = jnp.result_type(*floats) if floats else jnp.result_type(float)
        computed = float_dtypes(self.jaxpr_of(*self._frozen(), self.background)[0].jaxpr) | {given}
        narrowest = min(computed, key=lambda d: jnp.finfo(d).bits)
        self.dtype = str(narrowest)
        if jnp.finfo(narrowest).bits < jnp.finfo(given).bits:  # (a float32 model given float64 inputs casts them first)
            self.precision_note = (
                f"The model computes in {narrowest} (its jaxpr casts to it) though its inputs are {given}: its outputs, "
                f"and the attributions' sums, are exact to {narrowest} rounding."
            )
        self.output_shape = tuple(self._output_shape)
        self.background_outputs = out.reshape(self.references, *self.output_shape)

    # -- inputs ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _array(value: Any, what: str) -> Any:
        array = jnp.asarray(value)
        if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
            raise InputError(
                f"{what}: rnnshap's JAX engine takes floating-point inputs and integer ones (token ids); got {array.dtype}"
            )
        if array.ndim < 1:
            raise InputError(f"{what} needs a batch axis: got a scalar")
        return array

    def inputs(self, X: Any, what: str) -> list[Any]:
        arrays = list(X) if isinstance(X, (list, tuple)) else [X]
        if len(arrays) != len(self.background):
            raise InputError(f"{what}: the model takes {len(self.background)} input(s), got {len(arrays)}")
        converted = []
        for i, (a, b) in enumerate(zip(arrays, self.background, strict=True)):
            array = self._array(a, what)
            if jnp.issubdtype(b.dtype, jnp.integer) != jnp.issubdtype(array.dtype, jnp.integer):
                kind = "integer (token ids)" if jnp.issubdtype(b.dtype, jnp.integer) else "floating-point"
                raise InputError(f"{what}: input {i} is {array.dtype}, the background's is {kind}")
            array = array.astype(b.dtype)
            if array.shape[1:] != b.shape[1:]:
                hint = one_sample_hint(what, tuple(array.shape), tuple(b.shape[1:]))
                raise InputError(
                    f"{what}: input {i} has rows of shape {array.shape[1:]}, the background's are {b.shape[1:]}{hint}"
                )
            converted.append(array)
        if len({int(a.shape[0]) for a in converted}) != 1:
            shapes = [tuple(a.shape) for a in converted]
            raise InputError(
                f"{what}: the inputs have different numbers of rows: {[s[0] for s in shapes]}. {batch_axis_advice(shapes, 'jax')}"
            )
        return converted

    def to_numpy(self, inputs: list[Any]) -> list[np.ndarray]:
        return [np.asarray(x) for x in inputs]

    # -- the model ---------------------------------------------------------------------------------------------------------
    def model_version(self) -> Any:
        """The module's graph (its structure and static attributes) and the identities of its arrays: JAX arrays are
        immutable, so training (or any update) replaces them."""
        graph, state = nnx.split(self.model)
        return graph, tuple(map(id, jax.tree_util.tree_leaves(state)))

    def _frozen(self) -> tuple[Any, Any]:
        """The graph and state of an evaluation-mode copy of the model as it is now (kept while its arrays are)."""
        version = self.model_version()
        if self._kept is None or self._kept[0] != version:
            self._kept = (version, _frozen(self.model))
        return self._kept[1]

    def _flat(self, out: Any, rows: int) -> Any:
        """The explained output of the model's result, ``(rows, n_outputs)``."""
        leaf = self.outputs.leaf(out, lambda t: isinstance(t, jax.Array))
        if leaf is None:
            flat, names = output_parts(out)
            if not flat:
                flat, names = [out], None
            leaf = self.outputs.take(
                flat, names, lambda t: t.shape, lambda parts: jnp.concatenate([p.reshape(rows, -1) for p in parts], axis=1)
            )
        if leaf.ndim == 0 or leaf.shape[0] != rows:
            raise InputError(f"The model maps {rows} rows to an output of shape {leaf.shape}: its first axis must be the batch")
        if jnp.iscomplexobj(leaf):
            raise InputError(
                f"The model returns complex values ({leaf.dtype}): rnnshap explains real numbers. Explain their real and "
                "imaginary parts: return jnp.concatenate([out.real, out.imag], -1), or the magnitude written as "
                "jnp.sqrt(out.real ** 2 + out.imag ** 2)."
            )
        self._output_shape = leaf.shape[1:]
        return leaf.reshape(rows, -1)

    def predict(self, inputs: list[Any]) -> np.ndarray:
        graph, state = self._frozen()
        return np.asarray(self._forward(graph)(state, inputs), dtype=np.float64)

    def _forward(self, graph: Any) -> Callable[..., Any]:
        key = ("forward", graph)
        if key not in self._compiled:

            def forward(state: Any, inputs: list[Any]) -> Any:
                return self._flat(nnx.merge(graph, state)(*inputs), inputs[0].shape[0])

            self._compiled[key] = jax.jit(forward)
        return self._compiled[key]

    # -- the pairs ---------------------------------------------------------------------------------------------------------
    def attribute(
        self, inputs: list[Any], block: Block, columns: np.ndarray, per_pair: bool = False, multipliers: bool = False
    ) -> BlockResult:
        graph, state = self._frozen()
        samples = [x[block.s0 : block.s1] for x in inputs]
        refs = [b[block.r0 : block.r1] for b in self.background]
        xs = [jnp.repeat(x, block.references, axis=0) for x in samples]
        rs = [jnp.tile(b, (block.samples,) + (1,) * (b.ndim - 1)) for b in refs]
        cols = jnp.asarray(np.repeat(np.asarray(columns), block.references, axis=0))  # (pairs, k)
        outputs, reference_outputs, found = self._pass(graph, state, xs, rs)(state, xs, rs, cols)
        outputs = np.asarray(outputs, dtype=np.float64)
        reference_outputs = np.asarray(reference_outputs, dtype=np.float64)
        own = self._check(outputs, graph, state, samples, block)
        k = columns.shape[1]
        sums = []
        for i, (m, x, r) in enumerate(zip(found, xs, rs, strict=True)):
            per = np.asarray(m, dtype=np.float64)  # an integer input's: already multiplier × change, at its sites
            if not multipliers and i not in self.token_inputs + self.number_inputs:
                per = per * np.asarray(x - r, dtype=np.float64)
            per = per.reshape(k, block.samples, block.references, *x.shape[1:])
            sums.append(per if per_pair else per.sum(axis=2))
        return BlockResult(
            sums=sums,
            outputs=own,
            reference_outputs=reference_outputs.reshape(block.samples, block.references, -1).sum(axis=1),
        )

    @staticmethod
    def jaxpr_of(graph: Any, state: Any, xs: list[Any]) -> tuple[Any, Any]:
        """The model's call on inputs shaped as ``xs`` as a jaxpr of (its state's arrays, its inputs), and its
        output's tree."""
        leaves, tree = jax.tree_util.tree_flatten(state)

        def call(leaves: list[Any], *inputs: Any) -> Any:
            return nnx.merge(graph, jax.tree_util.tree_unflatten(tree, leaves))(*inputs)

        closed, shape = jax.make_jaxpr(call, return_shape=True)(leaves, *xs)
        return closed, jax.tree_util.tree_structure(shape)

    def _pass(self, graph: Any, state: Any, xs: list[Any], rs: list[Any]) -> Callable[..., Any]:
        """The compiled pass for these shapes: the model's jaxpr on the pairs, and its multipliers by ``jax.vjp``."""
        key = ("pass", graph, tuple((x.shape, str(x.dtype)) for x in xs))
        if key in self._compiled:
            return self._compiled[key]
        closed, out_tree = self.jaxpr_of(graph, state, xs)
        integer = [jnp.issubdtype(x.dtype, jnp.integer) for x in xs]
        shapes = self._sites(graph, state, xs, closed)

        def paired(xs: list[Any], probes: list[Any], rs: list[Any], leaves: list[Any]) -> tuple[Any, Any]:
            sites = Sites(probes)
            args = [Ids(x, r, i) if integer[i] else Pair(x, r) for i, (x, r) in enumerate(zip(xs, rs, strict=True))]
            values = run(closed.jaxpr, closed.consts, list(leaves) + args, sites=sites)
            rows = xs[0].shape[0]
            x_side = [v.x if isinstance(v, Pair) else v for v in values]
            r_side = [v.r if isinstance(v, Pair) else v for v in values]
            return (
                self._flat(jax.tree_util.tree_unflatten(out_tree, x_side), rows),
                (jax.lax.stop_gradient(self._flat(jax.tree_util.tree_unflatten(out_tree, r_side), rows)), sites.deltas),
            )

        def attribute(state: Any, xs: list[Any], rs: list[Any], cols: Any) -> Any:
            leaves = jax.tree_util.tree_leaves(state)
            floats = [x for x, i in zip(xs, integer, strict=True) if not i]
            probes = [jnp.zeros(shape, dtype) for _, _, shape, dtype in shapes]

            def function(floats: list[Any], probes: list[Any]) -> Any:
                it = iter(floats)
                return paired([x if i else next(it) for x, i in zip(xs, integer, strict=True)], probes, rs, leaves)

            y, vjp, (y_r, deltas) = jax.vjp(function, floats, probes, has_aux=True)
            one_hot = jax.nn.one_hot(cols.T, y.shape[1], dtype=y.dtype)  # (k, pairs, n_outputs)
            by_float, by_site = jax.vmap(vjp)(one_hot)
            it = iter(by_float)
            found: list[Any] = [None if i else next(it) for i in integer]
            for (source, _, shape, _), m, delta in zip(shapes, by_site, deltas, strict=True):
                rank = len(xs[source].shape)  # a lookup's trailing axes are the embedding's: summed
                credit = jnp.sum(m * delta, axis=tuple(range(1 + rank, 1 + len(shape))))
                found[source] = credit if found[source] is None else found[source] + credit
            k = one_hot.shape[0]
            return y, y_r, [f if f is not None else jnp.zeros((k, *x.shape)) for f, x in zip(found, xs, strict=True)]

        self._compiled[key] = compiled = jax.jit(attribute)
        return compiled

    def _sites(self, graph: Any, state: Any, xs: list[Any], closed: Any = None) -> list[tuple[int, str, Any, Any]]:
        """Where the model's integer inputs become floats (an embedding's lookup, a cast), found by tracing the pass on
        inputs shaped as ``xs``: per site, (the input, "token" or "number", the site's shape, its dtype)."""
        if not any(jnp.issubdtype(x.dtype, jnp.integer) for x in xs):
            return []
        if closed is None:
            closed, _ = self.jaxpr_of(graph, state, xs)
        sites = Sites()

        def trace(leaves: list[Any], xs: list[Any]) -> Any:
            args = [Ids(x, x, i) if jnp.issubdtype(x.dtype, jnp.integer) else Pair(x, x) for i, x in enumerate(xs)]
            values = run(closed.jaxpr, closed.consts, list(leaves) + args, sites=sites)
            return [v.x if isinstance(v, Pair) else v for v in values]

        jax.eval_shape(trace, jax.tree_util.tree_leaves(state), list(xs))
        return list(sites.found)

    def _check(self, outputs: np.ndarray, graph: Any, state: Any, samples: list[Any], block: Block) -> np.ndarray:
        """The model's own outputs on ``samples``, which the pass must give: a primitive misread would show here."""
        own = np.asarray(self._forward(graph)(state, samples), dtype=np.float64)
        self._refuse_non_finite(own, samples, "sample", first=block.s0)
        mine = outputs.reshape(block.samples, block.references, -1)
        scale = max(float(np.abs(own).max(initial=0.0)), 1e-30)
        gap = float(np.abs(mine - own[:, None]).max(initial=0.0))
        if not gap <= RTOL.get(self.dtype, 1e-4) * scale:  # (NaN too: a pass that went non-finite)
            raise RnnShapError(
                f"rnnshap's pass through this Flax model does not reproduce the model: its outputs differ by {gap:.3g} "
                f"(largest output {scale:.3g}). Please report this model."
            )
        return own

    def _refuse_non_finite(self, out: np.ndarray, inputs: list[Any], what: str, first: int = 0) -> None:
        """Refuse rows whose output from the model's own call is NaN or infinite, naming the row and what in it the
        model cannot take (a token id outside its nnx.Embed tables, NaN or inf): the input is the cause, not the pass.
        ``first``: the index of ``inputs``' first row among the rows given."""
        bad = ~np.isfinite(out.reshape(out.shape[0], -1))
        if not bad.any():
            return
        row, column = (int(i) for i in np.argwhere(bad)[0])
        sizes = sorted({int(m.num_embeddings) for _, m in nnx.iter_graph(self.model) if isinstance(m, nnx.Embed)})
        found = []
        for i, a in enumerate(inputs):
            values = np.asarray(a[row])
            where = f" (input {i})" if len(inputs) > 1 else ""
            if jnp.issubdtype(values.dtype, jnp.integer) and sizes:
                outside = values[(values < 0) | (values >= sizes[0])]
                if outside.size:
                    tables = " / ".join(f"0..{n - 1}" for n in sizes)
                    found.append(
                        f"it holds the token id {int(outside[0])}{where}, outside the ids {tables} of the model's nnx.Embed "
                        "table (nnx.Embed gives NaN for an id out of its range). Map ids outside the vocabulary to one "
                        "inside it (an unknown-token id) before explaining"
                    )
            elif jnp.issubdtype(values.dtype, jnp.floating) and not np.isfinite(values).all():
                found.append(
                    f"it holds {values[~np.isfinite(values)][0]}{where}. Fill missing values (NaN) first, or give the model "
                    "a mask input and have it replace them"
                )
        cause = "; ".join(found) if found else (
            "the model itself overflows or reads an entry it cannot compute with (a token id past an embedding's table, a "
            "log or division of 0): check that row"
        )
        raise InputError(
            f"the model's own output is {out.reshape(out.shape[0], -1)[row, column]} for {what} {first + row} (output "
            f"{column}), from the model's own call before any attribution: the input is the cause, and a NaN output has "
            f"no attribution. {cause[0].upper()}{cause[1:]}."
        )


__all__ = ["JaxEngine"]
