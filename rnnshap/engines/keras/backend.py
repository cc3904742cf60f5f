"""What the Keras engine needs from its backend beyond ``keras.ops``: derivatives, dtype limits.

The dual pass is written with ``keras.ops`` (the same code on the TensorFlow and JAX backends); the
one thing ``keras.ops`` does not give is the derivative of a function, which TensorFlow computes with a
``tf.GradientTape`` and JAX with ``jax.vjp``. Everything backend-specific the engine does is here.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import ml_dtypes  # (a dependency of keras)

#: a tensor of the backend (``tf.Tensor``, ``jax.Array``): the engine's annotations
Tensor = Any


def name() -> str:
    """The Keras backend this process runs ("tensorflow" or "jax")."""
    return str(keras.backend.backend())


def dtype_name(dtype: Any) -> str:
    """A dtype of any backend (``tf.float32``, ``jnp.float32``, numpy's, a string) by its Keras name."""
    return str(keras.backend.standardize_dtype(dtype))


def computed_dtype(dtype: Any, rounded: bool = True) -> str:
    """The precision the backend computes a declared ``dtype`` in. JAX without ``jax_enable_x64`` computes
    float64 (and int64) in float32 (int32); with it, Keras 3 on JAX still computes some float64 ops in
    float32 (``ops.tanh`` of a float64 tensor is float32: its dtype promotion takes a Python float as
    float32), so a float64 model there is exact to float32 rounding only, its attributions checked at that
    precision. ``rounded=False``: the precision the model holds its tensors in, leaving out those ops' rounding
    (float64 there), which the pass reproduces, so that it reproduces the model to that precision."""
    declared = dtype_name(dtype)
    if name() == "jax" and declared in ("float64", "int64", "uint64"):
        import jax

        if not jax.config.read("jax_enable_x64"):
            return declared.replace("64", "32")
        if rounded and declared == "float64" and not _keeps_float64():
            return "float32"
    return declared


def _keeps_float64() -> bool:
    """Whether this Keras computes ``tanh`` of a float64 tensor in float64 (asked each time: x64 may change)."""
    probe = keras.ops.tanh(keras.ops.convert_to_tensor([0.5], "float64"))
    return dtype_name(probe.dtype) == "float64"


def finfo(dtype: Any) -> Any:
    """The limits of a floating dtype of any backend (``eps``, ``tiny``, ``max``; numpy's finfo lacks bfloat16)."""
    return ml_dtypes.finfo(dtype_name(dtype))


def derivative(fn: Callable[[Any], Any], point: Any) -> Any:
    """The gradient of ``sum(fn(point))`` with respect to ``point`` (for an elementwise ``fn``, its
    derivative at every entry); zeros where ``fn`` does not depend on ``point``."""
    if name() == "jax":
        import jax
        import jax.numpy as jnp

        return jax.grad(lambda p: jnp.sum(fn(p)))(point)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(point)
        total = fn(point)
    return tape.gradient(total, point, unconnected_gradients=tf.UnconnectedGradients.ZERO)


# -- the gradient of a pass ---------------------------------------------------------------------------
class Marks:
    """The tensors a pass's gradient is taken with respect to, marked as the pass meets them (the floating
    inputs, then the embeddings token inputs reach): :meth:`mark` returns the tensor the pass goes on with.

    On TensorFlow a tape watches each; on JAX each is replaced by the next of ``primals`` (the arguments
    ``jax.vjp`` differentiates, equal in value), and one met beyond them is kept as it is and listed in
    ``missing``: the engine then runs the pass again with it among the primals."""

    def __init__(self, tape: Any = None, primals: list[Any] | None = None) -> None:
        self.tape, self.primals = tape, primals
        self.marked: list[Any] = []
        self.missing: list[Any] = []

    def mark(self, t: Any) -> Any:
        if self.tape is not None:
            self.tape.watch(t)
        elif self.primals is not None:
            index = len(self.marked)
            if index < len(self.primals):
                t = self.primals[index]
            else:
                self.missing.append(t)
        self.marked.append(t)
        return t


def gradient(run_pass: Callable[[Marks], tuple[Any, Any]], primals: list[Any]) -> tuple[Any, list[Any]]:
    """``run_pass(marks)`` returns ``(target, aux)``; the gradient of ``sum(target)`` with respect to every
    tensor the pass marked (``primals``: the floating inputs, marked first), zeros where unconnected.
    Returns ``(aux, gradients)``, the aux's tensors concrete."""
    if name() == "jax":
        import jax
        import jax.numpy as jnp

        known = list(primals)
        while True:
            marks = Marks(primals=known)

            def traced(values: list[Any], marks: Marks = marks) -> tuple[Any, Any]:
                marks.primals = values
                return run_pass(marks)

            target, pullback, aux = jax.vjp(traced, known, has_aux=True)
            if not marks.missing:
                return aux, list(pullback(jnp.ones_like(target))[0])
            known = known + [jax.lax.stop_gradient(t) for t in marks.missing]  # (embeddings: constants of the inputs)
    import tensorflow as tf

    with tf.GradientTape(watch_accessed_variables=False) as tape:
        marks = Marks(tape=tape)
        target, aux = run_pass(marks)
    return aux, tape.gradient(target, marks.marked, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def compiled(fn: Callable[..., Any], variables: list[Any] | None = None, static: tuple[int, ...] = ()) -> Callable[..., Any]:
    """``fn`` (of tensors, returning tensors) compiled once per input shape: ``tf.function`` or ``jax.jit``.

    ``variables``: the Keras variables ``fn`` reads (the model's weights). A ``tf.function`` reads them by
    reference; under ``jax.jit`` they are arguments of the compiled function, read inside through a
    ``keras.StatelessScope``, so that it computes with the weights the model has at each call (a
    variable read inside ``jax.jit`` otherwise becomes a constant of the trace: new weights, old values).
    ``static``: the positions of arguments that are Python values (hashable), a new trace for each value."""
    if name() == "jax":
        import jax

        held = list(variables or [])

        def stateful(values: list[Any], *args: Any) -> Any:
            with keras.StatelessScope(state_mapping=list(zip(held, values, strict=True))) as scope:
                given = dict(scope.state_mapping)
                out = fn(*args)
            # the variables the call assigned (a SeedGenerator's state: a Dropout called with training=True), by position
            now = scope.state_mapping
            return out, {i: now[id(v)] for i, v in enumerate(held) if now[id(v)] is not given[id(v)]}

        jitted = jax.jit(stateful, static_argnums=tuple(i + 1 for i in static))

        def call(*args: Any) -> Any:
            out, assigned = jitted([v.value for v in held], *args)
            for i, value in assigned.items():  # as the eager call would: the next call draws anew
                held[i].assign(value)
            return out

        return call
    import tensorflow as tf

    return tf.function(fn, reduce_retracing=True)


def concrete_scope() -> Any:
    """A context where JAX computes what does not depend on traced values at once (``jax.ensure_compile_time_eval``):
    constants made there (a traced ``call()``'s ``ops.ones``) may be kept beyond the ``jax.jit`` being traced."""
    if name() != "jax":
        import contextlib

        return contextlib.nullcontext()
    import jax

    return jax.ensure_compile_time_eval()


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a JAX tracer (the pass is being traced by ``jax.jit``); False on TensorFlow."""
    if name() != "jax":
        return False
    import jax

    return isinstance(value, jax.core.Tracer)


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor of the backend (not a Python number, a numpy array or a Dual)."""
    return bool(keras.ops.is_tensor(value))


def is_floating(dtype: Any) -> bool:
    return dtype_name(dtype).startswith(("float", "bfloat"))


def to_numpy(t: Any) -> Any:
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(t))
