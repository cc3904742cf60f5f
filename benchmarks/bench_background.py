"""What a call costs as the background grows, at the default ``batch_size`` and at one that holds every pair.

For each background size ``R`` (references), ``S`` samples of an LSTM head are explained with a kept explainer (built
and called once before), at ``batch_size=2048`` (the default) and at ``batch_size=S*R`` (one block), and against
the floor: the model's forward + one backward per output on the same ``S x R`` pairs. Printed: the median of
``--repeats`` calls in ms, the ratio of the two batch sizes, and each against the floor. A cost linear in the
references keeps ``ms / R`` flat down a column.

    python benchmarks/bench_background.py
    python benchmarks/bench_background.py --references 2048 2049 4096 20000 --samples 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

import rnnshap


class Head(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(features, hidden, batch_first=True), nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _floor(model: nn.Module, X: torch.Tensor, background: torch.Tensor) -> None:
    """The model's forward + one backward per output on the S x R pairs."""
    r = background.shape[0]
    pairs = X.repeat_interleave(r, 0).requires_grad_(True)
    out = model(pairs)
    for k in range(out.shape[1]):
        torch.autograd.grad(out[:, k].sum(), pairs, retain_graph=k + 1 < out.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", type=int, nargs="+", default=[512, 2048, 2049, 4096, 8192])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Head(8, args.hidden).eval()
    X = torch.randn(args.samples, args.steps, 8)
    columns = ("R", "default ms", "one block ms", "floor ms", "default/one", "default/floor", "ms/R")
    print(" ".join(f"{c:>14}" for c in columns))
    for r in args.references:
        background = torch.randn(r, args.steps, 8)
        timed = {}
        for batch_size in (2048, args.samples * r):
            explainer = rnnshap.DeepExplainer(model, background, batch_size=batch_size)
            explainer.shap_values(X, check_additivity=False)
            timed[batch_size] = _median_ms(lambda e=explainer: e.shap_values(X, check_additivity=False), args.repeats)
        floor = _median_ms(lambda: _floor(model, X, background), args.repeats)
        default, one = timed[2048], timed[args.samples * r]
        row = (f"{r}", f"{default:.1f}", f"{one:.1f}", f"{floor:.1f}", f"{default / one:.2f}x", f"{default / floor:.2f}x")
        print(" ".join(f"{c:>14}" for c in (*row, f"{default / r:.3f}")))


if __name__ == "__main__":
    main()
