"""What glibc's allocator settings change for an explanation with large temporaries on the CPU.

A 2-layer TransformerEncoder (width 64, 4 heads) at T = 200, 16 samples x 16 references, one thread: the rules hold
attention scores of every pair and head (about 160 MB each). The same script is run twice, with glibc's defaults and
with freed memory kept for reuse (the settings docs/faq.md gives), each against the floor (the model's forward + one
backward per output on the same pairs) in the same process:

    python benchmarks/bench_memory.py
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456 python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import rnnshap


class Encoder(nn.Module):
    def __init__(self, features: int, width: int, heads: int, outputs: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, batch_first=True, dropout=0.0)
        self.project, self.head = nn.Linear(features, width), nn.Linear(width, outputs)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.project(x)).mean(1))


def _best(call: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=16, help="samples, and references")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Encoder(8, 64, 4, 3).eval()
    background, X = torch.randn(args.pairs, args.steps, 8), torch.randn(args.pairs, args.steps, 8)
    explainer = rnnshap.DeepExplainer(model, background, compile=False)
    explainer.shap_values(X[:2], check_additivity=False)
    seconds = _best(lambda: explainer.shap_values(X, check_additivity=False), args.repeats)
    tiled = X.repeat_interleave(args.pairs, 0).requires_grad_(True)

    def floor() -> None:
        out = model(tiled)
        for k in range(out.shape[1]):
            torch.autograd.grad(out[:, k].sum(), tiled, retain_graph=k + 1 < out.shape[1])

    floor()
    base = _best(floor, args.repeats)
    print(f"rnnshap {seconds:.2f} s, floor {base:.2f} s: {seconds / base:.2f}x")


if __name__ == "__main__":
    main()
