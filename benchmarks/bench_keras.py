"""rnnshap on a Keras model against the floor: one plain tf.GradientTape forward+backward.

The floor runs the Keras model itself on the same tiled batch rnnshap works on (every
(sample, reference) pair: the inputs and the references, 2·n·B rows) and takes one gradient per
explained output, which is what any DeepSHAP implementation has to do at least. rnnshap's time
includes the whole ``shap_values`` call (dual pass, gradients, averaging, additivity check).

    python benchmarks/bench_keras.py [--layer lstm|gru] [--steps 50] [--samples 16] [--background 10]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rnnshap  # noqa: E402


def best_of(repeats: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--background", type=int, default=10)
    parser.add_argument("--outputs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rnn = keras.layers.LSTM if args.layer == "lstm" else keras.layers.GRU
    model = keras.Sequential([keras.Input((args.steps, args.features)), rnn(args.hidden), keras.layers.Dense(args.outputs)])
    rng = np.random.default_rng(0)
    background = rng.normal(size=(args.background, args.steps, args.features)).astype(np.float32)
    x = rng.normal(size=(args.samples, args.steps, args.features)).astype(np.float32)
    explainer = rnnshap.DeepExplainer(model, background)

    pairs = args.samples * args.background
    tiled = tf.constant(np.concatenate([np.repeat(x, args.background, 0), np.tile(background, (args.samples, 1, 1))]))

    def floor() -> list[tf.Tensor]:
        with tf.GradientTape(persistent=args.outputs > 1) as tape:
            tape.watch(tiled)
            out = model(tiled, training=False)[:pairs]
            columns = [out[:, k] for k in range(args.outputs)]  # inside the tape: a slice taken after it has no gradient
        return [tape.gradient(column, tiled) for column in columns]

    @tf.function
    def compiled_floor() -> list[tf.Tensor]:  # the same, traced once into a graph
        return floor()

    assert all(g is not None for g in floor() + compiled_floor())  # the backward pass is really taken
    explainer.shap_values(x)  # warm-up
    t_floor = best_of(args.repeats, floor)
    t_compiled = best_of(args.repeats, compiled_floor)
    t_rnnshap = best_of(args.repeats, lambda: explainer.shap_values(x))
    values = explainer.shap_values(x)
    gap = np.asarray(model(x), np.float64) - np.asarray(model(background), np.float64).mean(0)
    error = float(np.abs(values.reshape(args.samples, -1, args.outputs).sum(1) - gap).max())
    print(
        f"{args.layer}({args.features}->{args.hidden}), T={args.steps}, {args.samples} inputs x {args.background} background, "
        f"{args.outputs} output(s)"
    )
    print(f"  tf.GradientTape forward+backward on the tiled batch: {t_floor * 1e3:8.1f} ms")
    print(f"  the same, compiled (tf.function):                    {t_compiled * 1e3:8.1f} ms")
    print(f"  rnnshap shap_values:                                 {t_rnnshap * 1e3:8.1f} ms")
    print(
        f"  ratio: {t_rnnshap / t_floor:.2f}x eager, {t_rnnshap / t_compiled:.2f}x compiled   (max additivity error {error:.2g})"
    )


if __name__ == "__main__":
    main()
