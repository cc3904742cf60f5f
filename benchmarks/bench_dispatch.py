"""What one explanation costs in dispatched operations, host syncs and time, against its floor (issue 53, item 4).

For each model, ``S`` samples against ``R`` references, the explainer built and called once before (the steady
state: a kept explainer, the same shapes), with ``check_additivity=False``:

- ``ops``: operations torch's profiler records in one ``shap_values`` call (every event, views included, as
  ``torch.profiler`` counts them), and ``per step`` their growth per time step of the sequence where the
  model has one (measured at two lengths);
- ``syncs``: host synchronisations in the call: ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``,
  ``int(t)``), ``aten::equal`` and ``aten::nonzero`` (each one stalls a GPU until its queue has run);
- ``ms``: the median wall time of ``--repeats`` calls;

and the same of the floor, native forward + one backward per output on the same ``S x R`` pairs (the tiled
inputs, ``torch.autograd.grad`` of each output column), with the ratios rnnshap / floor.

    python benchmarks/bench_dispatch.py                   # the models of the issue, tiny sizes
    python benchmarks/bench_dispatch.py --size published  # hidden 128-256, 32 x 32 pairs
    python benchmarks/bench_dispatch.py --models lstm gru --device cuda
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402

SYNCS = ("aten::_local_scalar_dense", "aten::equal", "aten::nonzero")


class Head(nn.Module):
    """A recurrent layer (batch first) and a linear head on the last step."""

    def __init__(self, layer: nn.Module, hidden: int, outputs: int) -> None:
        super().__init__()
        self.layer, self.head = layer, nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out[:, -1])


class CellLoop(nn.Module):
    """An ``nn.LSTMCell`` run step by step in a Python loop, a linear head on the last state."""

    def __init__(self, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.cell, self.head, self.hidden = nn.LSTMCell(features, hidden), nn.Linear(hidden, outputs), hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


def build(name: str, hidden: int, features: int, outputs: int) -> nn.Module:
    if name == "lstm":
        return Head(nn.LSTM(features, hidden, batch_first=True), hidden, outputs)
    if name == "gru":
        return Head(nn.GRU(features, hidden, batch_first=True), hidden, outputs)
    if name == "rnn":
        return Head(nn.RNN(features, hidden, batch_first=True), hidden, outputs)
    if name == "transformer":
        layer = nn.TransformerEncoderLayer(features, 2, hidden, dropout=0.0, batch_first=True)
        return Head(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), features, outputs)
    if name == "cell":
        return CellLoop(features, hidden, outputs)
    raise SystemExit(f"unknown model {name!r}")


def count(call: Callable[[], object]) -> tuple[int, int]:
    """(events, host syncs) torch's profiler records in one call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    names = collections.Counter(e.name for e in prof.events())
    return sum(names.values()), sum(names[s] for s in SYNCS)


def timed(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(name: str, steps: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = build(name, args.hidden, args.features, args.outputs).to(device).eval()
    background = torch.randn(args.references, steps, args.features, device=device)
    X = torch.randn(args.samples, steps, args.features, device=device)
    explainer = rnnshap.DeepExplainer(model, background)

    def explain() -> object:
        return explainer.shap_values(X, check_additivity=False)

    tiled = X.repeat_interleave(args.references, 0).requires_grad_(True)

    def floor() -> object:
        out = model(tiled)
        return [torch.autograd.grad(out[:, k].sum(), tiled, retain_graph=True) for k in range(out.shape[1])]

    explain(), floor()  # the first call (and the explainer's kept passes) aside: the steady state
    ops, syncs = count(explain)
    floor_ops, floor_syncs = count(floor)
    return {
        "ops": ops, "syncs": syncs, "ms": timed(explain, args.repeats, device),
        "floor_ops": floor_ops, "floor_syncs": floor_syncs, "floor_ms": timed(floor, args.repeats, device),
    }  # fmt: skip


SIZES = {  # hidden, features, samples, references, outputs, time steps
    "tiny": (32, 8, 8, 8, 3, (50, 200)),
    "published": (128, 8, 16, 16, 3, (50, 200)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lstm", "gru", "rnn", "transformer", "cell"])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    args = parser.parse_args()
    args.hidden, args.features, args.samples, args.references, args.outputs, lengths = SIZES[args.size]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {args.size}: hidden {args.hidden}, "
        f"{args.samples} samples x {args.references} references, {args.outputs} outputs, median of {args.repeats}"
    )
    header = "| model | T | ops | floor ops | ops / floor | ops per step | syncs | floor syncs | ms | floor ms | time / floor |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.models:
        rows = [(steps, measure(name, steps, args, device)) for steps in lengths]
        (t0, first), (t1, last) = rows[0], rows[-1]
        per_step = (last["ops"] - first["ops"]) / (t1 - t0)
        for steps, m in rows:
            print(
                f"| {name} | {steps} | {m['ops']:,} | {m['floor_ops']:,} | {m['ops'] / m['floor_ops']:.1f}x | {per_step:.1f} | "
                f"{m['syncs']} | {m['floor_syncs']} | {m['ms']:.1f} | {m['floor_ms']:.1f} | {m['ms'] / m['floor_ms']:.2f}x |"
            )


if __name__ == "__main__":
    main()
