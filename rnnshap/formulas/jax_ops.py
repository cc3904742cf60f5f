"""The array namespace of :mod:`rnnshap.formulas` on ``jax.numpy`` (:data:`JAX`): the JAX engine's
(:mod:`rnnshap.engines.jax`, Flax models and JAX functions). Imported only where JAX is.

Its arrays are ``jax.Array`` s, or tracers: the engine's pass runs under ``jax.jit``, where no value can
be read, so :meth:`JaxOps.surely_all` and :meth:`JaxOps.surely_none` answer False and the formulas take
their every-case path. Every member keeps its argument's dtype (``jax.numpy`` does, with x64 on or off).
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import jax.numpy as jnp

from .namespace import Ops

Array = Any


class JaxOps:
    """The namespace on ``jax.numpy``: see :class:`rnnshap.formulas.namespace.Ops` for each member."""

    name = "jax"
    abs = staticmethod(jnp.abs)
    exp = staticmethod(jnp.exp)
    expm1 = staticmethod(jnp.expm1)
    log = staticmethod(jnp.log)
    log1p = staticmethod(jnp.log1p)
    sqrt = staticmethod(jnp.sqrt)
    hypot = staticmethod(jnp.hypot)
    sinh = staticmethod(jnp.sinh)
    atanh = staticmethod(jnp.arctanh)
    isfinite = staticmethod(jnp.isfinite)
    maximum = staticmethod(jnp.maximum)
    minimum = staticmethod(jnp.minimum)
    floor = staticmethod(jnp.floor)
    where = staticmethod(jnp.where)
    broadcast_to = staticmethod(jnp.broadcast_to)
    zeros_like = staticmethod(jnp.zeros_like)
    ones_like = staticmethod(jnp.ones_like)
    full_like = staticmethod(jnp.full_like)
    argmin = staticmethod(jnp.argmin)
    argmax = staticmethod(jnp.argmax)

    @staticmethod
    def rsqrt(x: Array, /) -> Array:
        return 1 / jnp.sqrt(x)

    @staticmethod
    def shape(x: Array, /) -> Any:
        return jnp.shape(x)

    @staticmethod
    def addcmul(c: Array, a: Array, b: Array, value: float, /) -> Array:
        return c + value * a * b

    @staticmethod
    def concat(parts: Sequence[Array], axis: int, /) -> Array:
        return jnp.concatenate(list(parts), axis=axis)

    @staticmethod
    def merge_last(x: Array, /) -> Array:
        return jnp.reshape(x, (*x.shape[:-2], x.shape[-2] * x.shape[-1]))

    @staticmethod
    def weight_blocks(weight: Array, widths: Sequence[int], /, transposed: bool = False) -> tuple[Array, bool]:
        return weight, transposed

    @staticmethod
    def joined_matmul(parts: Sequence[Array], weight: tuple[Array, bool], add: Array | None = None, /) -> Array:
        matrix, transposed = weight
        joined = parts[0] if len(parts) == 1 else jnp.concatenate(list(parts), axis=-1)
        product = joined @ (matrix.T if transposed else matrix)
        return product if add is None else add + product

    @staticmethod
    def take_last(x: Array, index: Array, /) -> Array:
        return jnp.take_along_axis(x, index, axis=-1)

    @staticmethod
    def put_last(index: Array, values: Array, n: int, fill: int, /) -> Array:
        rows = jnp.full((*index.shape[:-1], n), fill, dtype=values.dtype)
        return jnp.put_along_axis(rows, index, values, axis=-1, inplace=False)

    @staticmethod
    def arange(n: int, like: Array, /) -> Array:
        return jnp.arange(n)

    @staticmethod
    def to_float64(x: Array, /) -> Array:
        return x.astype(jnp.float64)

    @staticmethod
    def scalar(value: float, like: Array, /) -> float:
        return value

    @staticmethod
    def surely_all(mask: Array, /) -> bool:
        return False

    @staticmethod
    def surely_none(mask: Array, /) -> bool:
        return False

    @staticmethod
    def surely_finite(x: Array, /) -> bool:
        return False

    @staticmethod
    def extremes(x: Array, /) -> None:
        return None

    @staticmethod
    def eps(dtype: Any, /) -> float:
        return float(jnp.finfo(dtype).eps)

    @staticmethod
    def tiny(dtype: Any, /) -> float:
        return float(jnp.finfo(dtype).tiny)


#: the namespace on jax.numpy (members checked against the Protocol by tests/formulas/test_formulas.py)
JAX: Ops = cast(Ops, JaxOps())

__all__ = ["JAX", "JaxOps"]
