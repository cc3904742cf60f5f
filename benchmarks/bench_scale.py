"""Throughput at scale: several outputs, packed sequences, peak memory, streaming and Ray workers.

Every rnnshap figure is printed with its floor measured in the same run, on the same tiled batch
of N × B (sample, reference) pairs:

1. ``K outputs``: ``shap_values`` of all K outputs against one forward plus K backward passes
   (``torch.autograd.grad`` with ``is_grads_batched`` over the K one-hot output vectors: the
   cheapest way autograd has to get K gradients);
2. ``packed``: a bidirectional LSTM over a ``PackedSequence`` (lengths 10-50) against the packed
   model's forward+backward;
3. ``peak memory``: the peak resident memory growth of ``shap_values`` against that of the native
   forward+backward, each in a fresh subprocess;
4. ``throughput``: samples per second of ``shap_values`` in memory, of ``summarize`` streaming
   batches, and of ``rnnshap.ray.explain`` on a local Ray with 1 and 2 actors (one torch thread each).

Run ``python benchmarks/bench_scale.py`` (a few minutes on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402


class Classifier(nn.Module):
    def __init__(self, features: int = 32, hidden: int = 64, outputs: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class PackedText(nn.Module):
    def __init__(self, features: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        return self.head(torch.cat([h[0], h[1]], 1))


def make_classifier() -> nn.Module:
    torch.manual_seed(0)
    return Classifier().eval()


def timed(call: Callable[[], Any], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def several_outputs(n: int, b: int, steps: int, repeats: int) -> tuple[float, float]:
    model = make_classifier()
    x, background = torch.randn(n, steps, 32), torch.randn(b, steps, 32)
    tiled = x.repeat_interleave(b, 0)
    k = 10

    def native() -> None:
        leaf = tiled.detach().requires_grad_(True)
        out = model(leaf)
        eye = torch.eye(k)[:, None, :].expand(k, *out.shape)
        torch.autograd.grad(out, leaf, eye, is_grads_batched=True)

    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(n * b, 2048))
    return timed(native, repeats), timed(lambda: explainer.shap_values(x), repeats)


def packed(n: int, b: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = PackedText().eval()
    steps = 50
    x, background = torch.randn(n, steps, 32), torch.randn(b, steps, 32)
    lengths = torch.randint(10, steps + 1, (n,))
    tiled, tiled_lengths = x.repeat_interleave(b, 0), lengths.repeat_interleave(b)

    def native() -> None:
        leaf = tiled.detach().requires_grad_(True)
        torch.autograd.grad(model(leaf, tiled_lengths).sum(), leaf)

    explainer = rnnshap.DeepExplainer(model, [background, torch.full((b,), steps)], batch_size=max(n * b, 2048))
    return timed(native, repeats), timed(lambda: explainer.shap_values([x, lengths]), repeats)


_MEMORY_SCRIPT = """
import os, sys, threading, time, torch
sys.path.insert(0, {root!r})
import rnnshap
from benchmarks.bench_scale import make_classifier
torch.manual_seed(1)
model = make_classifier()
x, background = torch.randn({n}, {steps}, 32), torch.randn({b}, {steps}, 32)
explainer = rnnshap.DeepExplainer(model, background, batch_size={n} * {b})
tiled = x.repeat_interleave({b}, 0)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, running = [0], [True]
def sample():  # resident memory every millisecond: the peak of this call, not of the imports before it
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
def native():
    leaf = tiled.detach().requires_grad_(True)
    torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
def ours():
    explainer.shap_values(x, outputs=[0])
call = native if {which!r} == "native" else ours
call()  # warm-up: allocator caches and lazy initialisation
before = rss()
peak[0] = before
thread = threading.Thread(target=sample)
thread.start()
call()
running[0] = False
thread.join()
print((peak[0] - before) / 2**20)
"""


def peak_memory(n: int, b: int, steps: int) -> tuple[float, float]:
    """Peak resident-memory growth in MiB during one native fwd+bwd and one ``shap_values`` (one
    output), each in a fresh process after a warm-up call, sampled every millisecond."""
    root = str(Path(__file__).resolve().parents[1])
    found = []
    for which in ("native", "rnnshap"):
        script = _MEMORY_SCRIPT.format(root=root, n=n, b=b, steps=steps, which=which)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        found.append(float(out.stdout.strip().splitlines()[-1]))
    return found[0], found[1]


def throughput(n: int, b: int, steps: int, batch: int, ray_workers: list[int]) -> dict[str, float]:
    torch.set_num_threads(1)
    model = make_classifier()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, steps, 32)).astype(np.float32)
    background = rng.normal(size=(b, steps, 32)).astype(np.float32)
    explainer = rnnshap.DeepExplainer(model, background)
    rates = {}
    start = time.perf_counter()
    explainer.shap_values(x, outputs=[0])
    rates["in memory, 1 thread"] = n / (time.perf_counter() - start)
    start = time.perf_counter()
    explainer.summarize(x, batch_size=batch, outputs=[0])
    rates["summarize, 1 thread"] = n / (time.perf_counter() - start)
    try:
        import ray

        from rnnshap import ray as rnnshap_ray
    except ImportError:
        return rates
    ray.init(num_cpus=max(ray_workers), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        dataset = ray.data.from_numpy(x).rename_columns({"data": "x"}).repartition(max(1, n // batch)).materialize()
        for workers in ray_workers:
            start = time.perf_counter()
            rnnshap_ray.explain(
                dataset, _one_thread_classifier, background, column="x", batch_size=batch, concurrency=workers, outputs=[0]
            ).materialize()
            rates[f"ray explain, {workers} actor(s)"] = n / (time.perf_counter() - start)
            start = time.perf_counter()
            rnnshap_ray.summarize(
                dataset, _one_thread_classifier, background, column="x", batch_size=batch, concurrency=workers, outputs=[0]
            )
            rates[f"ray summarize, {workers} actor(s)"] = n / (time.perf_counter() - start)
    finally:
        ray.shutdown()
    return rates


def _one_thread_classifier() -> nn.Module:
    torch.set_num_threads(1)
    return make_classifier()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="outputs,packed,memory,throughput", help="which measurements to run, comma-separated")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    n, b, steps = (8, 4, 10) if args.quick else (64, 10, 50)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; {n} samples x {b} references")
    if "outputs" in parts:
        floor, ours = several_outputs(n, b, steps, repeats)
        print(
            f"K = 10 outputs, LSTM(32->64, 2 layers), T = {steps}: native fwd + 10 bwd {floor:.3f} s, rnnshap {ours:.3f} s: "
            f"{ours / floor:.2f}x"
        )
    if "packed" in parts:
        floor, ours = packed(n, b, repeats)
        print(
            f"packed bidirectional LSTM, lengths 10-50: native fwd+bwd {floor:.3f} s, rnnshap {ours:.3f} s: {ours / floor:.2f}x"
        )
    if "memory" in parts:
        floor, ours = peak_memory(n, b, steps)
        print(f"peak memory growth, one output: native {floor:.0f} MiB, rnnshap {ours:.0f} MiB: {ours / max(floor, 1e-9):.2f}x")
    if "throughput" in parts:
        rates = throughput(n * 16 if not args.quick else n, b, steps, 64 if not args.quick else 8, [1, 2])
        for name, rate in rates.items():
            print(f"throughput, {name}: {rate:.1f} samples/s")


if __name__ == "__main__":
    main()
