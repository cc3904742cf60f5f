"""The array namespace of :mod:`rnnshap.formulas` on ``keras.ops`` (:data:`KERAS`): the Keras engine's,
the same code on Keras' TensorFlow and JAX backends. Imported only where Keras is (the Keras engine).

Its arrays are the backend's tensors (``tf.Tensor``, ``jax.Array``). :meth:`KerasOps.surely_all` and
:meth:`KerasOps.surely_none` answer False: the engine's pass may run traced (a ``tf.function``,
``jax.jit``), where no value can be read, so the formulas take their every-case path.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import keras
import ml_dtypes  # (a dependency of keras; numpy's finfo lacks bfloat16)

from .namespace import Ops

ops = keras.ops
Tensor = Any


def _finfo(dtype: Any) -> Any:
    return ml_dtypes.finfo(str(keras.backend.standardize_dtype(dtype)))


def _in_its_dtype(op: Any, name: str, x: Tensor) -> Tensor:
    """``op(x)`` in ``x``'s dtype. Keras 3.15 on JAX computes ``sinh``, ``arctanh`` (and ``tanh``, ``sin``...) of a
    float64 tensor in float32 (its dtype promotion maps float64 to float32 off TensorFlow: keras-team/keras#23223);
    there the same function of ``jax.numpy`` keeps float64. Elsewhere ``op(x)`` itself (TensorFlow: unchanged)."""
    out = op(x)
    narrowed = keras.backend.standardize_dtype(out.dtype) != keras.backend.standardize_dtype(x.dtype)
    if narrowed and keras.backend.backend() == "jax":
        import jax.numpy as jnp

        return getattr(jnp, name)(x)
    return out


class KerasOps:
    """The namespace on ``keras.ops``: see :class:`rnnshap.formulas.namespace.Ops` for each member."""

    name = "keras"
    abs = staticmethod(ops.abs)
    exp = staticmethod(ops.exp)
    expm1 = staticmethod(ops.expm1)
    log = staticmethod(ops.log)
    log1p = staticmethod(ops.log1p)
    sqrt = staticmethod(ops.sqrt)
    hypot = staticmethod(ops.hypot)
    rsqrt = staticmethod(ops.rsqrt)

    @staticmethod
    def sinh(x: Tensor, /) -> Tensor:
        return _in_its_dtype(ops.sinh, "sinh", x)

    @staticmethod
    def atanh(x: Tensor, /) -> Tensor:
        return _in_its_dtype(ops.arctanh, "arctanh", x)

    isfinite = staticmethod(ops.isfinite)
    maximum = staticmethod(ops.maximum)
    minimum = staticmethod(ops.minimum)
    floor = staticmethod(ops.floor)
    where = staticmethod(ops.where)
    broadcast_to = staticmethod(ops.broadcast_to)
    shape = staticmethod(ops.shape)
    zeros_like = staticmethod(ops.zeros_like)
    ones_like = staticmethod(ops.ones_like)

    argmin = staticmethod(ops.argmin)
    argmax = staticmethod(ops.argmax)

    @staticmethod
    def take_last(x: Tensor, index: Tensor, /) -> Tensor:
        return ops.take_along_axis(x, index, -1)

    @staticmethod
    def put_last(index: Tensor, values: Tensor, n: int, fill: int, /) -> Tensor:
        placed = ops.one_hot(index, n, dtype=values.dtype)  # (..., k, n): one 1 per row (the positions are distinct)
        return fill + ops.sum(placed * (values[..., None] - fill), axis=-2)

    @staticmethod
    def arange(n: int, like: Tensor, /) -> Tensor:
        return ops.arange(n)

    @staticmethod
    def to_float64(x: Tensor, /) -> Tensor:
        return ops.cast(x, "float64")

    @staticmethod
    def full_like(x: Tensor, value: float, /) -> Tensor:
        return ops.full_like(x, value)

    @staticmethod
    def scalar(value: float, like: Tensor, /) -> float:
        return value

    @staticmethod
    def addcmul(c: Tensor, a: Tensor, b: Tensor, value: float, /) -> Tensor:
        return c + a * b if value == 1 else c + value * a * b

    @staticmethod
    def concat(parts: Sequence[Tensor], axis: int, /) -> Tensor:
        return ops.concatenate(list(parts), axis=axis)

    @staticmethod
    def merge_last(x: Tensor, /) -> Tensor:
        shape = ops.shape(x)
        return ops.reshape(x, (*shape[:-2], shape[-2] * shape[-1]))

    @staticmethod
    def weight_blocks(weight: Tensor, widths: Sequence[int], /, transposed: bool = False) -> tuple[Tensor, bool]:
        return weight, transposed

    @staticmethod
    def joined_matmul(parts: Sequence[Tensor], weight: tuple[Tensor, bool], add: Tensor | None = None, /) -> Tensor:
        matrix, transposed = weight
        joined = parts[0] if len(parts) == 1 else ops.concatenate(list(parts), axis=-1)
        if keras.backend.backend() == "tensorflow":  # (the transposed weight read in the product, not copied first)
            import tensorflow as tf

            product = tf.matmul(joined, matrix, transpose_b=transposed)
        else:
            product = ops.matmul(joined, ops.transpose(matrix) if transposed else matrix)
        return product if add is None else add + product

    @staticmethod
    def surely_all(mask: Tensor, /) -> bool:
        return False

    @staticmethod
    def surely_none(mask: Tensor, /) -> bool:
        return False

    @staticmethod
    def surely_finite(x: Tensor, /) -> bool:
        return False

    @staticmethod
    def extremes(x: Tensor, /) -> None:
        return None

    @staticmethod
    def eps(dtype: Any, /) -> float:
        return float(_finfo(dtype).eps)

    @staticmethod
    def tiny(dtype: Any, /) -> float:
        return float(_finfo(dtype).tiny)


#: the namespace on keras.ops (members checked against the Protocol by tests/formulas/test_formulas.py)
KERAS: Ops = cast(Ops, KerasOps())

__all__ = ["KERAS", "KerasOps"]
