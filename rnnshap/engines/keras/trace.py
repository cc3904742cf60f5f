r"""Layers and models with a custom ``call()``: ``Lambda`` layers, subclasses of ``keras.layers.Layer``
and of ``keras.Model``.

rnnshap cannot re-implement code it has not seen, so it traces it, once per input shape:

1. **Into a Functional graph.** ``call`` runs on ``keras.Input`` placeholders (with the batch size
   of the pass, so ``ops.shape(x)[0]`` is a number): the sublayers it calls and the keras ops it
   applies become the nodes of a Functional model, which the walker runs like any other, each node
   by its rule (:mod:`~rnnshap.engines.keras.kops` for the ops).
2. **Into a TensorFlow graph**, when ``call`` uses TensorFlow functions (``tf.gather``,
   ``tf.math.unsorted_segment_mean``, ...), which do not take Keras placeholders: ``call`` is traced
   by ``tf.function`` with every sublayer's ``call`` marked, and the graph is walked op by op, each
   sublayer call by its layer's rule and each TensorFlow op by its rule (:data:`TF_LINEAR`,
   :data:`TF_BILINEAR`, ...). Python control flow on tensor values cannot be traced and is refused.

Either way an operation without a rule is refused by name, naming the layer and the op.
"""

from __future__ import annotations

import inspect
import weakref
from typing import TYPE_CHECKING, Any, Callable

import keras
import numpy as np
from keras import tree as keras_tree

from ...operations import tf_binary, tf_op_families
from . import backend, dual
from .backend import dtype_name, is_tensor
from .dual import Dual
from .pass_state import Run, Walker, unsupported_in
from .private import Functional, flat_layers, nodes

if TYPE_CHECKING:  # TensorFlow is imported where the TensorFlow backend runs only (a JAX install may lack it)
    import tensorflow as tf

#: traces per layer: {signature of the call: KerasTrace | GraphTrace}
_TRACES: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()

#: the keras classes whose subclasses' ``call`` rnnshap traces (a subclass of a built-in layer that
#: overrides ``call`` is refused instead: its ``call`` wraps a layer rnnshap re-implements)
_TRACED_BASES = ("Layer", "Model", "Lambda")


def traced_kind(layer: keras.layers.Layer) -> str | None:
    """``"lambda"``, ``"subclass"`` (a Layer or Model subclass with its own ``call``), or None."""
    if isinstance(layer, keras.layers.Lambda) and type(layer).__module__.startswith("keras."):
        return "lambda"
    for klass in type(layer).__mro__:
        if klass.__module__.startswith("keras."):
            return None
        if "call" in vars(klass):
            keras_base = next(k for k in type(layer).__mro__ if k.__module__.startswith("keras."))
            return "subclass" if keras_base.__name__ in _TRACED_BASES else None
    return None


def custom_call(layer: keras.layers.Layer) -> str | None:
    """The name of a class outside keras between ``type(layer)`` and keras that overrides ``call``, or None."""
    for klass in type(layer).__mro__:
        if klass.__module__.startswith("keras."):
            return None
        if "call" in vars(klass) or "__call__" in vars(klass):
            return klass.__name__
    return None


def _leaves(values: Any) -> list[Dual]:
    if isinstance(values, Dual):
        return [values]
    if isinstance(values, (list, tuple)):
        return [leaf for v in values for leaf in _leaves(v)]
    if isinstance(values, dict):
        return [leaf for v in values.values() for leaf in _leaves(v)]
    return []


def _replace(values: Any, new: Callable[[Dual], Any]) -> Any:
    """``values`` with each Dual replaced by ``new(dual)``, in the order of :func:`_leaves`."""
    if isinstance(values, Dual):
        return new(values)
    if isinstance(values, (list, tuple)):
        return type(values)(_replace(v, new) for v in values)
    if isinstance(values, dict):
        return {key: _replace(v, new) for key, v in values.items()}
    return values


def _signature(values: Any) -> Any:
    """A hashable summary of the call's arguments: shapes and dtypes of Duals, other values by repr."""
    if isinstance(values, Dual):
        return ("dual", tuple(values.x.shape), dtype_name(values.x.dtype), type(values).__name__)
    if isinstance(values, (list, tuple)):
        return (type(values).__name__, tuple(_signature(v) for v in values))
    if isinstance(values, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in sorted(values.items())))
    if is_tensor(values):
        return ("tensor", tuple(values.shape), dtype_name(values.dtype))
    return ("value", repr(values))


def _accepts(layer: keras.layers.Layer, argument: str) -> bool:
    try:
        parameters = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class TraceError(Exception):
    """Why a custom ``call`` could not be traced (becomes a refusal naming the layer)."""


def call_traced(layer: keras.layers.Layer, run: Run, args: tuple[Any, ...], kwargs: dict[str, Any], walker: Walker) -> Any:
    """``layer(*args, **kwargs)`` on Duals through the trace of its ``call``."""
    if any(is_tensor(v) for v in dual.flat_values((args, kwargs))):
        raise TraceError(
            "a tensor computed from a mask (or a Keras mask) reaches its custom call(); "
            "rnnshap traces call() on model tensors only"
        )
    kwargs = dict(kwargs)
    if "training" not in kwargs and _accepts(layer, "training"):
        kwargs["training"] = False
    key = _signature((args, kwargs))
    traces = _TRACES.setdefault(layer, {})
    trace = traces.get(key)
    if trace is None:
        scope = _tf().init_scope() if backend.name() == "tensorflow" else backend.concrete_scope()
        with scope:  # outside any tf.function (or jax.jit) being traced, so that later passes can reuse it
            trace = traces[key] = _trace(layer, args, kwargs)
    leaves = _leaves((args, kwargs))
    return trace.run(leaves, run, walker)


def _trace(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return KerasTrace(layer, args, kwargs)
    except Exception as keras_error:  # noqa: BLE001 - any failure of the symbolic trace: try TensorFlow's
        if backend.name() != "tensorflow":
            # (Keras: "A KerasTensor cannot be used as input to a TensorFlow function")
            uses_tensorflow = "TensorFlow function" in str(keras_error)
            why = "it calls TensorFlow functions, " if uses_tensorflow else ""
            raise TraceError(
                f"its call() could not be traced into keras ops: {why}({type(keras_error).__name__}: {_short(keras_error)}); "
                f"on the {backend.name()} backend rnnshap traces call() into keras ops only (the trace into a TensorFlow graph, "
                "for calls that use TensorFlow functions, needs the TensorFlow backend): write its call() with keras.ops, or "
                "save the model and explain it with KERAS_BACKEND=tensorflow"
            ) from keras_error
        try:
            return GraphTrace(layer, args, kwargs)
        except TraceError:
            raise
        except Exception as error:  # noqa: BLE001 - report both traces' failures
            raise TraceError(
                f"its call() could not be traced into keras ops ({type(keras_error).__name__}: {_short(keras_error)}) nor into a "
                f"TensorFlow graph ({type(error).__name__}: {_short(error)}); build it as a Functional model of keras layers and "
                "keras.ops, or write its call() with keras.ops"
            ) from error


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 160 else text[:157] + "..."


class KerasTrace:
    """``call`` traced on ``keras.Input`` placeholders into a Functional model."""

    def __init__(self, layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        placeholders = []

        def placeholder(value: Dual) -> Any:
            tensor = keras.Input(batch_shape=tuple(value.x.shape), dtype=value.x.dtype.name)
            placeholders.append(tensor)
            return tensor

        sym_args, sym_kwargs = _replace((args, kwargs), placeholder)
        sublayers = flat_layers(layer)
        counts = [(sub, *map(len, nodes(sub))) for sub in sublayers]
        try:
            outputs = layer.call(*sym_args, **sym_kwargs)
            if not all(isinstance(t, keras.KerasTensor) for t in keras_tree.flatten(outputs)):
                raise TypeError("call() returned something other than tensors computed from its inputs")
            self.functional = Functional(placeholders, outputs)
        finally:  # the trace leaves the sublayers as they were (no extra nodes)
            for sub, inbound, outbound in counts:
                del nodes(sub)[0][inbound:]
                del nodes(sub)[1][outbound:]

    def run(self, leaves: list[Dual], run: Run, walker: Walker) -> Any:
        return walker.run_model(self.functional, leaves, run)


# -- TensorFlow graphs -----------------------------------------------------------------------------
#: TensorFlow ops linear in their input-dependent inputs: None = any input, else the allowed positions
TF_LINEAR: dict[str, tuple[int, ...] | None] = {
    "Identity": None, "IdentityN": None, "Snapshot": None, "EnsureShape": (0,), "CheckNumerics": (0,),
    "AddV2": None, "Add": None, "Sub": None, "Neg": None, "AddN": None, "ConcatV2": None, "Pack": None,
    "Unpack": (0,), "Transpose": (0,), "Reshape": (0,), "ExpandDims": (0,), "Squeeze": (0,),
    "StridedSlice": (0,), "Slice": (0,), "Split": (1,), "SplitV": (0,), "GatherV2": (0,), "Gather": (0,),
    "GatherNd": (0,), "ResourceGather": (), "UnsortedSegmentSum": (0,), "SegmentSum": (0,), "Sum": (0,),
    "Mean": (0,), "Tile": (0,), "Pad": (0,), "PadV2": (0,), "MirrorPad": (0,), "ReverseV2": (0,),
    "BroadcastTo": (0,), "Cumsum": (0,), "BiasAdd": None, "Conv2D": (0,), "Conv3D": (0,), "Conv1D": (0,),
    "DepthwiseConv2dNative": (0,), "AvgPool": (0,), "AvgPool3D": (0,), "MatrixBandPart": (0,),
    "TensorScatterUpdate": (0, 2), "TensorScatterAdd": (0, 2), "ScatterNd": (1,), "Roll": (0,),
    "SelectV2": (1, 2), "Select": (1, 2), "MatrixDiagPartV3": (0,), "MatrixDiagV3": (0,),
}  # fmt: skip
#: linear in each operand: the exact two-player Shapley rule when both are input-dependent
TF_BILINEAR = {"Mul", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"}
TF_DIVISION = {"RealDiv", "Div", "DivNoNan"}
#: ops whose output depends on their inputs' shapes only
TF_SHAPE = {"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"}
#: comparisons and logic: mask ops, read on the explained input
TF_MASK = {
    "Equal", "NotEqual", "Greater", "GreaterEqual", "Less", "LessEqual", "LogicalAnd", "LogicalOr", "LogicalNot", "Any",
    "All", "IsNan", "IsFinite", "IsInf",
}  # fmt: skip
#: unary elementwise graph ops: the operation table's view (rnnshap/operations.py), op type → its entry
#: (no TensorFlow needed to build these: a graph holds only ops its TensorFlow has)
TF_ELEMENTWISE = tf_op_families()
TF_SMOOTH = {t for t, entry in TF_ELEMENTWISE.items() if entry.smooth}
TF_PIECEWISE = {t for t, entry in TF_ELEMENTWISE.items() if not entry.smooth} | {"ClipByValue"}
#: binary graph ops (the operation table's view): op type → whether it is smooth
TF_BINARY = {t: entry.smooth for t, entry in tf_binary().items()}
#: closed-form secant slopes (the TensorFlow kernels of the catalog's "secant" entries)
TF_SLOPES = {t: dual.SLOPES_BY_NAME[entry.name][1] for t, entry in TF_ELEMENTWISE.items() if entry.family == "secant"}

_RAW_SIGNATURES: dict[str, list[str]] = {}


def _tf() -> Any:
    """TensorFlow, imported on first use: the graph trace runs on the TensorFlow backend only."""
    import tensorflow

    return tensorflow


def rerun(op: tf.Operation, inputs: list[Any]) -> list[Any]:
    """The graph op ``op`` run eagerly on ``inputs`` (its outputs, as a list)."""
    tf = _tf()
    if op.type == "Const":
        return [tf.constant(tf.make_ndarray(op.get_attr("value")))]
    fn = getattr(tf.raw_ops, op.type, None)
    if fn is None:
        raise TraceError(f"TensorFlow op {op.type} ({op.name}) cannot be re-run")
    params = _RAW_SIGNATURES.get(op.type)
    if params is None:  # the wrapper's parameters: the op's inputs in order (some renamed), then its attributes
        params = _RAW_SIGNATURES[op.type] = [p for p in inspect.signature(fn).parameters if p != "name"]
    kwargs: dict[str, Any] = {}
    index = 0
    for position, arg in enumerate(op.op_def.input_arg):
        if arg.number_attr:
            count = int(op.get_attr(arg.number_attr))
            value: Any = list(inputs[index : index + count])
        elif arg.type_list_attr:
            count = len(op.get_attr(arg.type_list_attr))
            value = list(inputs[index : index + count])
        else:
            count, value = 1, inputs[index]
        kwargs[params[position]] = value
        index += count
    for attr in op.op_def.attr:
        if attr.name in params and attr.name not in kwargs:
            kwargs[attr.name] = op.get_attr(attr.name)
    out = fn(**kwargs)
    if len(op.outputs) == 1:
        return [out]
    return list(out) if isinstance(out, (list, tuple)) else [out]


class GraphTrace:
    """``call`` traced by ``tf.function``, every sublayer's ``call`` marked in the graph."""

    def __init__(self, layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tf = _tf()
        self.layer = layer
        leaves = _leaves((args, kwargs))
        specs = [tf.TensorSpec(d.x.shape, d.x.dtype) for d in leaves]
        records: list[tuple[Any, Any, Any, list[Any], Any]] = []
        sublayers = flat_layers(layer)

        def marked(sub: Any, original: Any) -> Any:
            def call(*a: Any, **k: Any) -> Any:
                out = original(*a, **k)
                flat = [tf.identity(t) for t in keras_tree.flatten(out)]
                records.append((sub, a, k, flat, out))
                return keras_tree.pack_sequence_as(out, flat)

            return call

        for sub in sublayers:
            object.__setattr__(sub, "call", marked(sub, sub.call))

        def traced(*tensors: Any) -> Any:
            it = iter(tensors)
            a, k = _replace((args, kwargs), lambda _: next(it))
            return layer.call(*a, **k)

        try:
            concrete = tf.function(traced, autograph=False).get_concrete_function(*specs)
        finally:
            for sub in sublayers:
                if "call" in vars(sub):
                    object.__delattr__(sub, "call")
        self.concrete = concrete
        graph = concrete.graph
        self.inputs = list(graph.inputs[: len(specs)])
        self.captures = {id(internal): external for external, internal in graph.captures}
        self.outputs = concrete.structured_outputs
        # a marked sublayer call: its identity ops stand for the call, its arguments are its inputs
        self.records: dict[int, tuple[Any, Any, Any, list[Any]]] = {}
        for sub, a, k, flat, _ in records:
            for t in flat:
                self.records[id(t.op)] = (sub, a, k, flat)
        self.order = self._needed(graph)

    def _needed(self, graph: Any) -> list[Any]:
        """The ops the outputs depend on, in graph order, stopping at marked sublayer calls."""
        tf = _tf()
        needed: set[int] = set()
        stack = [t for t in keras_tree.flatten(self.outputs) if isinstance(t, tf.Tensor)]
        inputs = {id(t) for t in self.inputs} | set(self.captures)
        while stack:
            tensor = stack.pop()
            op = tensor.op
            if id(op) in needed or id(tensor) in inputs:
                continue
            needed.add(id(op))
            if id(op) in self.records:
                _, a, k, _ = self.records[id(op)]
                stack.extend(t for t in dual.flat_values((a, k)) if isinstance(t, tf.Tensor))
            else:
                stack.extend(op.inputs)
        return [op for op in graph.get_operations() if id(op) in needed]

    def run(self, leaves: list[Dual], run: Run, walker: Walker) -> Any:
        tf = _tf()
        env: dict[int, Any] = {id(t): leaf for t, leaf in zip(self.inputs, leaves, strict=True)}
        env.update(self.captures)
        for op in self.order:
            if not op.outputs or id(op.outputs[0]) in env:
                continue
            if id(op) in self.records:
                sub, a, k, flat = self.records[id(op)]
                value = lambda t: env[id(t)] if isinstance(t, tf.Tensor) else t  # noqa: E731
                sub_args = keras_tree.map_structure(value, list(a))
                sub_kwargs = {key: keras_tree.map_structure(value, v) for key, v in k.items()}
                out = walker.call_layer(sub, run, *sub_args, **sub_kwargs)
                for t, v in zip(flat, _flat_out(out), strict=True):
                    env[id(t)] = v
                continue
            inputs = [env[id(t)] for t in op.inputs]
            try:
                outs = self._op(op, inputs, run)
            except TraceError as error:
                why = f"TensorFlow op {op.type} ({op.name}) in its call(): {error}"
                outs = unsupported_in(self.layer, run, why, lambda: _fallback(op, inputs))
            for t, v in zip(op.outputs, outs, strict=False):
                env[id(t)] = v
        return keras_tree.map_structure(lambda t: env[id(t)] if isinstance(t, tf.Tensor) else t, self.outputs)

    def _op(self, op: tf.Operation, inputs: list[Any], run: Run) -> list[Any]:
        tf = _tf()
        t = op.type
        duals = [i for i, v in enumerate(inputs) if isinstance(v, Dual)]
        if not duals:
            return rerun(op, inputs)
        xs = [v.x if isinstance(v, Dual) else v for v in inputs]
        rs = [v.r if isinstance(v, Dual) else v for v in inputs]
        if t in TF_SHAPE:
            return rerun(op, xs)
        if t in TF_MASK:
            mx, mr = rerun(op, xs), rerun(op, rs)
            run.compare(mx[0], mr[0])
            return mx
        if t == "Cast":
            if not tf.as_dtype(op.get_attr("DstT")).is_floating:
                raise TraceError("casts an input-dependent tensor to integers or booleans (a step function)")
            return _both(op, xs, rs)
        if t in TF_LINEAR:
            allowed = TF_LINEAR[t]
            if allowed is None or all(i in allowed for i in duals):
                return _both(op, xs, rs)
            raise TraceError(f"an input-dependent tensor at input {duals} (the op is linear in input(s) {allowed} only)")
        if t in TF_BILINEAR:
            if len(duals) == 1:
                return _both(op, xs, rs)
            if len(duals) == 2:
                i, j = duals
                return [dual.bilinear(lambda a, b: rerun(op, _put(xs, {i: a, j: b}))[0], inputs[i], inputs[j])]
            raise TraceError(f"a product of {len(duals)} input-dependent tensors")
        if t in TF_DIVISION:
            if duals == [0]:
                return _both(op, xs, rs)
            inverse = dual.reciprocal(inputs[1])
            if duals == [1]:
                numerator = inputs[0]
                return [inverse.map(lambda u: numerator * u)]
            return [dual.product(inputs[0], inverse)]
        single = len(duals) == 1
        if (t in TF_SMOOTH or t in TF_PIECEWISE) and single and duals == [0]:
            if t in TF_SLOPES:
                return [dual.secant(lambda u: rerun(op, [u])[0], inputs[0], TF_SLOPES[t])]
            kinks = TF_ELEMENTWISE[t].kinks if t in TF_SMOOTH else ()
            return [dual.rescale(lambda u: rerun(op, _put(xs, {0: u}))[0], inputs[0], smooth=t in TF_SMOOTH, kinks=kinks)]
        if t in TF_BINARY:
            if single:
                i = duals[0]
                return [dual.rescale(lambda u: rerun(op, _put(xs, {i: u}))[0], inputs[i], smooth=TF_BINARY[t])]
            return [dual.shapley2(lambda a, b: rerun(op, [a, b])[0], inputs[0], inputs[1], smooth=TF_BINARY[t])]
        if t in ("Softmax", "LogSoftmax") and single:
            return [dual.softmax(inputs[0], -1) if t == "Softmax" else dual.log_softmax(inputs[0], -1)]
        if t in ("Max", "Min") and duals == [0]:
            axes = np.atleast_1d(np.asarray(inputs[1])).tolist()
            rank = inputs[0].x.shape.rank
            axes = [a % rank for a in axes]
            if len(axes) != 1 or axes[0] == 0:
                raise TraceError(f"a max or min over axes {axes}: rnnshap routes a max over one non-batch axis")
            keep = bool(op.get_attr("keep_dims"))
            if t == "Max":
                return [dual.max_over(inputs[0], axes[0], keepdims=keep)]
            return [dual.max_over(inputs[0].map(lambda u: -u), axes[0], keepdims=keep).map(lambda u: -u)]
        if t == "StopGradient":  # changes training, not the function: the identity (as detach on torch)
            return [inputs[0]]
        raise TraceError("no rule for this op on an input-dependent tensor")


def _put(values: list[Any], replace: dict[int, Any]) -> list[Any]:
    return [replace.get(i, v) for i, v in enumerate(values)]


def _both(op: tf.Operation, xs: list[Any], rs: list[Any]) -> list[Any]:
    return [Dual(a, b) for a, b in zip(rerun(op, xs), rerun(op, rs), strict=True)]


def _fallback(op: tf.Operation, inputs: list[Any]) -> list[Any]:
    """The op on each side, for the probe that lists every refusal (its attributions are never used)."""
    xs = [v.x if isinstance(v, Dual) else v for v in inputs]
    rs = [v.r if isinstance(v, Dual) else v for v in inputs]
    return _both(op, xs, rs)


def _flat_out(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [leaf for v in out for leaf in _flat_out(v)]
    if isinstance(out, dict):
        return [leaf for key in sorted(out) for leaf in _flat_out(out[key])]
    return [out]
