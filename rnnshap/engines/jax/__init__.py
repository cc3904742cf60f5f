"""The JAX engine: DeepSHAP for Flax NNX models (``flax.nnx.Module``), by the model's jaxpr run on pairs.

:mod:`~rnnshap.engines.jax.pairs` evaluates a jaxpr on (input, reference) pairs, each primitive by its rule
(:mod:`~rnnshap.engines.jax.rules`: the formulas of :mod:`rnnshap.formulas` on ``jax.numpy``);
:mod:`~rnnshap.engines.jax.engine` builds it from a module and attaches the multipliers to ``jax.vjp``. Keras
models on the JAX backend are the Keras engine's (:mod:`rnnshap.engines.keras`). This package imports JAX and
Flax: the registry loads it only for a Flax model.
"""

from __future__ import annotations

import sys
from typing import Any


def is_flax_module(value: Any) -> bool:
    """Whether ``value`` is a ``flax.nnx.Module``, without importing Flax."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(value, nnx.Module)


__all__ = ["is_flax_module"]
