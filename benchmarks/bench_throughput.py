"""The fixed cost per operation: rnnshap against its native floor at small batches.

Four cases, T = 50 steps, 10 references, float32, timed round-robin in one run (one warm-up round,
then ``--repeats`` timed rounds; medians), each against its floor on the same N × B (sample,
reference) pairs:

| case | model | samples | floor |
|---|---|---:|---|
| ``outputs`` | LSTM(32→64, 2 layers) → Linear(64→10), K = 10 outputs | 32 | forward + 10 backward (``is_grads_batched``) |
| ``packed`` | bidirectional LSTM(32→64) over a ``PackedSequence``, lengths 10–50 | 32 | the packed forward + backward |
| ``loop`` | textbook LSTM cell (16→32) written with torch ops, looped in Python | 32 | forward + backward |
| ``keras`` | Keras ``LSTM(64)`` on (T, 32) → ``Dense(1)``, TensorFlow | 16 | compiled ``tf.GradientTape`` forward + backward |

The rnnshap call is ``DeepExplainer(model, background, batch_size >= pairs).shap_values(x)`` with its
additivity check on, as users run it (the explainer is built before the timed region).

    python benchmarks/bench_throughput.py                 # all four cases, median of 7
    python benchmarks/bench_throughput.py --cases loop --profile 25
    python benchmarks/bench_throughput.py --threads 1     # one torch thread: steadier on a busy machine
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loops import TextbookLSTM  # noqa: E402
from bench_scale import Classifier, PackedText  # noqa: E402

import rnnshap  # noqa: E402

STEPS, REFERENCES = 50, 10
Case = tuple[Callable[[], Any], Callable[[], Any]]  # (floor, rnnshap)


def outputs_case(samples: int) -> Case:
    torch.manual_seed(0)
    model = Classifier(32, 64, 10).eval()
    x, background = torch.randn(samples, STEPS, 32), torch.randn(REFERENCES, STEPS, 32)
    tiled = x.repeat_interleave(REFERENCES, 0)

    def floor() -> Any:
        leaf = tiled.detach().requires_grad_(True)
        out = model(leaf)
        eye = torch.eye(out.shape[1])[:, None, :].expand(out.shape[1], *out.shape)
        return torch.autograd.grad(out, leaf, eye, is_grads_batched=True)

    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(samples * REFERENCES, 2048))
    return floor, lambda: explainer.shap_values(x)


def packed_case(samples: int) -> Case:
    torch.manual_seed(0)
    model = PackedText(32, 64).eval()
    x, background = torch.randn(samples, STEPS, 32), torch.randn(REFERENCES, STEPS, 32)
    lengths = torch.randint(10, STEPS + 1, (samples,))
    tiled, tiled_lengths = x.repeat_interleave(REFERENCES, 0), lengths.repeat_interleave(REFERENCES)

    def floor() -> Any:
        leaf = tiled.detach().requires_grad_(True)
        return torch.autograd.grad(model(leaf, tiled_lengths).sum(), leaf)

    explainer = rnnshap.DeepExplainer(
        model, [background, torch.full((REFERENCES,), STEPS)], batch_size=max(samples * REFERENCES, 2048)
    )
    return floor, lambda: explainer.shap_values([x, lengths])


def loop_case(samples: int) -> Case:
    torch.manual_seed(0)
    model = TextbookLSTM(16, 32).eval()
    x, background = torch.randn(samples, STEPS, 16), torch.randn(REFERENCES, STEPS, 16)
    tiled = x.repeat_interleave(REFERENCES, 0)

    def floor() -> Any:
        leaf = tiled.detach().requires_grad_(True)
        return torch.autograd.grad(model(leaf).sum(), leaf)

    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(samples * REFERENCES, 2048))
    return floor, lambda: explainer.shap_values(x)


def keras_case(samples: int) -> Case:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((STEPS, 32)), keras.layers.LSTM(64), keras.layers.Dense(1)])
    rng = np.random.default_rng(0)
    background = rng.normal(size=(REFERENCES, STEPS, 32)).astype(np.float32)
    x = rng.normal(size=(samples, STEPS, 32)).astype(np.float32)
    tiled = tf.constant(np.repeat(x, REFERENCES, 0))

    @tf.function
    def floor() -> Any:
        with tf.GradientTape() as tape:
            tape.watch(tiled)
            out = tf.reduce_sum(model(tiled, training=False))
        return tape.gradient(out, tiled)

    explainer = rnnshap.DeepExplainer(model, background)
    return floor, lambda: explainer.shap_values(x)


CASES: dict[str, tuple[str, Callable[[int], Case], int]] = {
    "outputs": ("K = 10 outputs, LSTM(32->64, 2 layers)", outputs_case, 32),
    "packed": ("packed bidirectional LSTM, lengths 10-50", packed_case, 32),
    "loop": ("textbook LSTM cell loop (16->32)", loop_case, 32),
    "keras": ("Keras LSTM(32->64), compiled tf.GradientTape floor", keras_case, 16),
}
TARGETS = {"outputs": 1.2, "packed": 1.2, "loop": 3.0, "keras": 1.5}


def measure(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Round-robin: one warm-up round, then ``repeats`` timed rounds; the median of each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples", type=int, default=None, help="override every case's sample count")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="K", help="cProfile one rnnshap call per case: top K by total time"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [name for name in args.cases.split(",") if name]
    calls: dict[str, Callable[[], Any]] = {}
    for name in names:
        floor, ours = CASES[name][1](args.samples or CASES[name][2])
        calls[f"{name}/floor"], calls[f"{name}/rnnshap"] = floor, ours
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}; T = {STEPS}, "
        f"{REFERENCES} references, median of {args.repeats} round-robin"
    )
    medians = measure(calls, args.repeats)
    print("| case | samples | floor | rnnshap | rnnshap / floor | target |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        floor, ours = medians[f"{name}/floor"], medians[f"{name}/rnnshap"]
        print(
            f"| {CASES[name][0]} | {args.samples or CASES[name][2]} | {floor * 1e3:.1f} ms | {ours * 1e3:.1f} ms | "
            f"{ours / floor:.2f}x | <= {TARGETS[name]}x |"
        )
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    for name in names if args.profile else []:
        profiler = cProfile.Profile()
        profiler.runcall(calls[f"{name}/rnnshap"])
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(args.profile)
        print(f"\n--- profile: {name} ---\n" + stream.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
