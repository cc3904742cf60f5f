"""Speed of rnnshap on recurrent models that loop over time in Python, against native autograd.

Models written as a Python loop over time steps (a hand-written LSTM or GRU cell, an
``nn.LSTMCell`` loop, an ncps-style CfC cell) do not reach the fused recurrent rules: every step
runs through the engine's ``TorchFunctionMode`` op by op. For each model this times, as the
median of ``--repeats`` runs after one warm-up run, round-robin so that a busy machine slows all
rows alike:

1. ``native``: ``torch.autograd.grad(model(tiled).sum(), tiled)`` on the tiled batch of all
   (sample, reference) pairs: one forward + backward, the floor;
2. ``rnnshap``: ``rnnshap.DeepExplainer(model, background, batch_size >= pairs).shap_values(x)``
   (``check_additivity=True``, as users run it; the explainer is built before the timed region);
3. with ``--baseline DIR``: the same with another copy of the package (``DIR/rnnshap``, e.g. a
   ``git archive`` of an older commit), loaded as ``rnnshap_baseline``; its attributions are
   compared with the current ones (max abs difference).

and prints seconds and ratios to native. Models: T = 50, 32 features, hidden 64, 64 samples x 10
references (``--steps``, ``--hidden``, ``--samples``, ``--references`` change them).

    python benchmarks/bench_loops.py                         # all four models, median of 5
    python benchmarks/bench_loops.py --models lstm --profile # plus a cProfile of rnnshap on it
    python benchmarks/bench_loops.py --baseline /tmp/before  # before/after in one run
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import os
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402

Tensor = torch.Tensor


# -- models -----------------------------------------------------------------------------------------
class TextbookLSTM(nn.Module):
    """An LSTM cell written with torch ops: x@W + h@U + b, chunk, sigmoid/tanh, products."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.W = nn.Parameter(torch.randn(features, 4 * hidden) / features**0.5)
        self.U = nn.Parameter(torch.randn(hidden, 4 * hidden) / hidden**0.5)
        self.b = nn.Parameter(torch.zeros(4 * hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            gates = x[:, t] @ self.W + h @ self.U + self.b
            i, f, g, o = gates.chunk(4, 1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
        return self.head(h)


class CellLoop(nn.Module):
    """``nn.LSTMCell`` applied step by step."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(features, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


class HandGRU(nn.Module):
    """A GRU cell written with torch ops (torch's gate layout: r, z, n)."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(features, 3 * hidden)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            i_r, i_z, i_n = self.input(x[:, t]).chunk(3, 1)
            h_r, h_z, h_n = self.recurrent(h).chunk(3, 1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
        return self.head(h)


class CfC(nn.Module):
    """An ncps-style closed-form continuous-time cell (CfCCell, mode "default", one backbone layer)."""

    def __init__(self, features: int, hidden: int, backbone: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.backbone = nn.Linear(features + hidden, backbone)
        self.ff1 = nn.Linear(backbone, hidden)
        self.ff2 = nn.Linear(backbone, hidden)
        self.time_a = nn.Linear(backbone, hidden)
        self.time_b = nn.Linear(backbone, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        ts = 1.0
        for t in range(x.shape[1]):
            z = torch.cat([x[:, t], h], 1)
            z = 1.7159 * torch.tanh(0.666 * self.backbone(z))  # LeCun tanh
            ff1 = torch.tanh(self.ff1(z))
            ff2 = torch.tanh(self.ff2(z))
            t_interp = torch.sigmoid(self.time_a(z) * ts + self.time_b(z))
            h = ff1 * (1.0 - t_interp) + t_interp * ff2
        return self.head(h)


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "lstm": TextbookLSTM,
    "lstmcell": CellLoop,
    "gru": HandGRU,
    "cfc": CfC,
}
DESCRIPTIONS = {
    "lstm": "(a) textbook LSTM cell loop",
    "lstmcell": "(b) nn.LSTMCell loop",
    "gru": "(c) hand-written GRU cell loop",
    "cfc": "(d) CfC-like cell loop",
}


def make_problem(name: str, args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(args.seed)
    model = MODELS[name](args.features, args.hidden).eval()
    x = torch.randn(args.samples, args.steps, args.features)
    background = torch.randn(args.references, args.steps, args.features)
    return model, x, background


# -- methods --------------------------------------------------------------------------------------
def load_baseline(directory: str) -> Any:
    """The package at ``directory/rnnshap`` imported as ``rnnshap_baseline`` (its imports are relative).

    Both copies swap the code of ``torch.autograd.Function.apply`` while a pass runs, and the swapped
    code imports ``rnnshap.engines.pytorch.functions``: that module is imported first, here, so that
    it keeps torch's own code rather than a copy's swapped one."""
    import rnnshap.engines.pytorch.functions  # noqa: F401

    root = Path(directory) / "rnnshap"
    spec = importlib.util.spec_from_file_location(
        "rnnshap_baseline", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"no package at {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["rnnshap_baseline"] = module
    spec.loader.exec_module(module)
    return module


def native(model: nn.Module, x: Tensor, background: Tensor) -> Callable[[], Any]:
    tiled = x.repeat_interleave(background.shape[0], dim=0)  # the (sample, reference) pair layout

    def call() -> None:
        leaf = tiled.detach().requires_grad_(True)
        torch.autograd.grad(model(leaf).sum(), leaf)

    return call


def explainer_call(package: Any, model: nn.Module, x: Tensor, background: Tensor) -> Callable[[], Any]:
    pairs = x.shape[0] * background.shape[0]
    explainer = package.DeepExplainer(model, background, batch_size=max(pairs, 2048))
    return lambda: explainer.shap_values(x, check_additivity=True)


def measure(
    calls: dict[str, Callable[[], Any]], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[dict[str, float], dict[str, Any]]:
    """Round-robin: one warm-up round (whose outputs are kept), then ``repeats`` timed rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    outputs: dict[str, Any] = {}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = clock()
            output = call()
            elapsed = clock() - start
            if round_ == 0:
                outputs[name] = output
            else:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def profile(call: Callable[[], Any], top: int) -> str:
    call()
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--references", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default) or this process's CPU time, steadier on a shared machine (meaningful with --threads 1)",
    )
    parser.add_argument("--baseline", default=None, help="a directory holding another copy of the package as rnnshap/")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one rnnshap call per model")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    baseline = load_baseline(args.baseline) if args.baseline else None
    print(
        f"# loop models: T = {args.steps}, {args.features} features, hidden {args.hidden}, "
        f"{args.samples} samples x {args.references} references; torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"{args.clock} clock, median of {args.repeats} after 1 warm-up, round-robin"
    )
    header = "| model | native s | rnnshap s | x native |"
    rule = "|---|---:|---:|---:|"
    if baseline is not None:
        header = "| model | native s | baseline s | rnnshap s | baseline x native | rnnshap x native | speed-up | max abs diff |"
        rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    print(header)
    print(rule)
    for name in names:
        model, x, background = make_problem(name, args)
        calls = {"native": native(model, x, background)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if baseline is not None:
                calls["baseline"] = explainer_call(baseline, model, x, background)
            calls["rnnshap"] = explainer_call(rnnshap, model, x, background)
            seconds, outputs = measure(calls, args.repeats, time.process_time if args.clock == "cpu" else time.perf_counter)
        floor = seconds["native"]
        row = f"| {DESCRIPTIONS[name]} | {floor:.4f} |"
        if baseline is not None:
            diff = float(np.max(np.abs(np.asarray(outputs["baseline"]) - np.asarray(outputs["rnnshap"]))))
            row += (
                f" {seconds['baseline']:.4f} | {seconds['rnnshap']:.4f} | {seconds['baseline'] / floor:.2f} |"
                f" {seconds['rnnshap'] / floor:.2f} | {seconds['baseline'] / seconds['rnnshap']:.2f} | {diff:.1e} |"
            )
        else:
            row += f" {seconds['rnnshap']:.4f} | {seconds['rnnshap'] / floor:.2f} |"
        print(row, flush=True)
        if args.profile:
            print(profile(calls["rnnshap"], args.profile_top))
    print(f"(load at the end: {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
