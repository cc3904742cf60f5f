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
