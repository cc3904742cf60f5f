"""The JAX engine's cost (Flax NNX models) against its floor, measured in the same run.

rnnshap: ``DeepExplainer(model, background).shap_values(x)`` on a Flax LSTM / GRU (``nnx.RNN``) with a Linear head,
a repeat call (the compiled pass kept) and the first call (compiles included). Floor: the model's native forward and
one backward per output over the same (sample, reference) pairs, under ``jax.jit`` and compiled before timing
(``jax.vmap`` of ``jax.vjp`` over the outputs), which is what any gradient method over those pairs pays. Ratios are
rnnshap / floor. Usage: ``python benchmarks/bench_jax.py [--steps 16 50] [--hidden 32] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rnnshap


class Recurrent(nnx.Module):
    def __init__(self, cell: str, features: int, hidden: int, outputs: int) -> None:
        rngs = nnx.Rngs(0)
        make = {"lstm": nnx.LSTMCell, "gru": nnx.GRUCell}[cell]
        self.rnn = nnx.RNN(make(features, hidden, rngs=rngs))
        self.head = nnx.Linear(hidden, outputs, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.head(self.rnn(x)[:, -1])


def best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def floor(model: nnx.Module, pairs: Any) -> Callable[[], Any]:
    """Native forward + one backward per output over the pairs, compiled."""
    graph, state = nnx.split(model)
    leaves, tree = jax.tree_util.tree_flatten(state)

    def call(leaves: list[Any], x: Any) -> Any:
        return nnx.merge(graph, jax.tree_util.tree_unflatten(tree, leaves))(x)

    pure = jax.extend.core.jaxpr_as_fun(jax.make_jaxpr(call)(leaves, pairs))  # the model as a function of arrays

    @jax.jit
    def run(leaves: list[Any], x: Any) -> Any:
        y, vjp = jax.vjp(lambda t: pure(*leaves, t)[0], x)
        eye = jnp.eye(y.shape[1], dtype=y.dtype)
        return jax.vmap(lambda e: vjp(jnp.broadcast_to(e, y.shape))[0])(eye)

    return lambda: run(leaves, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 50])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--outputs", type=int, default=3)
    parser.add_argument("--background", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, {args.samples} samples x {args.background} references, hidden {args.hidden}, "
          f"{args.outputs} outputs; seconds, best of {args.repeats}")  # fmt: skip
    print(f"{'model':<6} {'T':>4} {'first call':>11} {'repeat':>9} {'floor':>9} {'ratio':>7}")
    for cell in ("lstm", "gru"):
        for steps in args.steps:
            model = Recurrent(cell, args.features, args.hidden, args.outputs)
            background = rng.normal(size=(args.background, steps, args.features)).astype(np.float32)
            x = rng.normal(size=(args.samples, steps, args.features)).astype(np.float32)
            pairs = jnp.asarray(np.repeat(x, args.background, axis=0))
            native = floor(model, pairs)
            jax.block_until_ready(native())  # compiled before timing
            start = time.perf_counter()
            explainer = rnnshap.DeepExplainer(model, background)
            explainer.shap_values(x)
            first = time.perf_counter() - start
            repeat = best(lambda explainer=explainer, x=x: explainer.shap_values(x), args.repeats)
            native_time = best(native, args.repeats)
            print(f"{cell:<6} {steps:>4} {first:>11.3f} {repeat:>9.4f} {native_time:>9.4f} {repeat / native_time:>6.2f}x")


if __name__ == "__main__":
    main()
