"""Speed and exactness of rnnshap against native autograd, shap and Captum on recurrent models.

For each configuration (see ``CONFIGS``) this times, as the median of ``--repeats`` runs after
one warm-up run:

1. ``native``: one forward + backward of the model on the tiled batch of all (input, background)
   pairs, ``model(tiled).sum().backward()`` with respect to the input: the physical limit for any
   method that needs one backward pass per pair;
2. ``rnnshap``: ``rnnshap.DeepExplainer(model, background, batch_size >= pairs).shap_values(X)``
   with ``check_additivity=True``, as users run it (the explainer is built outside the timed region);
3. ``shap``: ``shap.DeepExplainer(model, background).shap_values(X, check_additivity=False)``
   (its own check fails on recurrent layers; the error is computed here instead);
4. ``captum DeepLiftShap``: ``DeepLiftShap(model).attribute(X, baselines=background, target=0)``;
5. ``captum IG-50``: ``IntegratedGradients(model).attribute(..., n_steps=50)`` averaged over the
   background rows as baselines (``--ig-mode``: one call with the pairs tiled, or one call per
   background row).

and prints, per method, seconds, ratio to ``native`` and the relative additivity error

    max_i |sum(phi_i) - (f(x_i) - mean_r f(r))| / max_i |f(x_i) - mean_r f(r)|.

Run ``python benchmarks/bench_recurrent.py`` (full, a few minutes on a laptop CPU),
``--quick`` for a smoke test, ``--profile`` to add a cProfile of the rnnshap call on config A.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap  # noqa: E402


# -- models and configurations ------------------------------------------------------------------
class RecurrentRegressor(nn.Module):
    """``LSTM``/``GRU`` (batch_first) → ``Linear(hidden → 1)`` on the last step's output."""

    def __init__(self, kind: str, n_features: int, hidden: int, layers: int) -> None:
        super().__init__()
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU}[kind]
        self.rnn = cls(n_features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@dataclass(frozen=True)
class Config:
    name: str
    kind: str
    features: int
    hidden: int
    layers: int
    steps: int
    n_inputs: int
    n_background: int

    @property
    def pairs(self) -> int:
        return self.n_inputs * self.n_background

    def describe(self) -> str:
        return (
            f"{self.kind}({self.features}→{self.hidden}, {self.layers} layers) → Linear({self.hidden}→1), "
            f"T = {self.steps}, {self.n_inputs} inputs × {self.n_background} background = {self.pairs} pairs"
        )


CONFIGS = {
    "A": Config("A", "LSTM", 32, 64, 2, 50, 64, 10),
    "A-GRU": Config("A-GRU", "GRU", 32, 64, 2, 50, 64, 10),
    "B": Config("B", "LSTM", 32, 128, 2, 100, 32, 10),
}
QUICK_CONFIGS = {
    "A": Config("A", "LSTM", 8, 16, 2, 10, 8, 4),
    "A-GRU": Config("A-GRU", "GRU", 8, 16, 2, 10, 8, 4),
    "B": Config("B", "LSTM", 8, 24, 2, 20, 6, 4),
}


def make_problem(config: Config, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = RecurrentRegressor(config.kind, config.features, config.hidden, config.layers).eval()
    x = torch.randn(config.n_inputs, config.steps, config.features)
    background = torch.randn(config.n_background, config.steps, config.features)
    return model, x, background


# -- measurement ----------------------------------------------------------------------------------
@dataclass
class Result:
    method: str
    seconds: float | None = None
    error: float | None = None  # relative additivity error; None where it does not apply
    crashed: str | None = None
    note: str = ""


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run, and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def additivity_error(phi: Any, model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> float:
    """max_i |Σφ_i − (f(x_i) − mean_r f(r))| / max_i |f(x_i) − mean_r f(r)| for a one-output model."""
    if isinstance(phi, (list, tuple)):  # shap's list-per-output layout
        if len(phi) != 1:
            raise ValueError(f"expected one output, got {len(phi)}")
        phi = phi[0]
    if isinstance(phi, torch.Tensor):
        phi = phi.detach().cpu().numpy()
    phi = np.asarray(phi, dtype=np.float64)
    totals = phi.reshape(phi.shape[0], -1).sum(1)
    with torch.no_grad():
        fx = model(x).double().reshape(-1).numpy()
        fr = model(background).double().reshape(-1).numpy()
    delta = fx - fr.mean()
    return float(np.max(np.abs(totals - delta)) / np.max(np.abs(delta)))


def run_native(model: nn.Module, x: torch.Tensor, background: torch.Tensor, repeats: int) -> Result:
    n, m = x.shape[0], background.shape[0]
    tiled = x.repeat_interleave(m, dim=0)  # the same (input, reference) pair layout rnnshap uses

    def step() -> torch.Tensor:
        leaf = tiled.detach().requires_grad_(True)
        model(leaf).sum().backward()
        assert leaf.grad is not None
        return leaf.grad

    assert tiled.shape[0] == n * m
    seconds, _ = timed(step, repeats)
    model.zero_grad(set_to_none=True)
    return Result("native fwd+bwd (tiled)", seconds)


def run_rnnshap(model: nn.Module, x: torch.Tensor, background: torch.Tensor, repeats: int) -> Result:
    pairs = x.shape[0] * background.shape[0]
    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(pairs, 2048))
    seconds, phi = timed(lambda: explainer.shap_values(x, check_additivity=True), repeats)
    return Result("rnnshap DeepExplainer", seconds, additivity_error(phi, model, x, background))


def run_shap(model: nn.Module, x: torch.Tensor, background: torch.Tensor, repeats: int) -> Result:
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.DeepExplainer(model, background)
        seconds, phi = timed(lambda: explainer.shap_values(x, check_additivity=False), repeats)
    return Result("shap DeepExplainer", seconds, additivity_error(phi, model, x, background))


def run_captum_dls(model: nn.Module, x: torch.Tensor, background: torch.Tensor, repeats: int) -> Result:
    from captum.attr import DeepLiftShap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = DeepLiftShap(model)
        seconds, phi = timed(lambda: method.attribute(x, baselines=background, target=0), repeats)
    return Result("captum DeepLiftShap", seconds, additivity_error(phi, model, x, background))


def run_captum_ig(model: nn.Module, x: torch.Tensor, background: torch.Tensor, repeats: int, mode: str) -> Result:
    """Integrated Gradients, n_steps = 50, averaged over the background rows as baselines.

    ``tiled``: one ``attribute`` call on all (input, baseline) pairs (pairs × 50 rows in one
    forward/backward), then the mean over baselines. ``loop``: one call per background row with
    that row broadcast as the baseline of all inputs (inputs × 50 rows per call).
    """
    from captum.attr import IntegratedGradients

    n, m = x.shape[0], background.shape[0]
    method = IntegratedGradients(model)

    if mode == "tiled":
        tiled_x = x.repeat_interleave(m, dim=0)
        tiled_b = background.repeat(n, 1, 1)

        def attribute() -> torch.Tensor:
            phi = method.attribute(tiled_x, baselines=tiled_b, target=0, n_steps=50)
            return phi.reshape(n, m, *x.shape[1:]).mean(1)
    else:

        def attribute() -> torch.Tensor:
            total = torch.zeros_like(x)
            for r in range(m):
                total += method.attribute(x, baselines=background[r : r + 1], target=0, n_steps=50)
            return total / m

    seconds, phi = timed(attribute, repeats)
    return Result(f"captum IG-50 ({mode})", seconds, additivity_error(phi, model, x, background))


def guarded(name: str, fn: Callable[[], Result]) -> Result:
    try:
        return fn()
    except Exception as error:  # a peer crashing is a result, not the end of the run
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        if len(message) > 160:
            message = message[:157] + "..."
        return Result(name, crashed=message)


# -- report ------------------------------------------------------------------------------------------
def table(config: Config, results: list[Result]) -> str:
    native = results[0].seconds
    lines = [
        f"### Config {config.name}: {config.describe()}",
        "",
        "| method | seconds | × native | additivity error (rel.) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        if r.crashed is not None:
            lines.append(f"| {r.method} | crashed: {r.crashed} | | |")
            continue
        assert r.seconds is not None
        ratio = f"{r.seconds / native:.2f}" if native else "—"
        error = "—" if r.error is None else f"{r.error:.2e}"
        lines.append(f"| {r.method} | {r.seconds:.4f} | {ratio} | {error} |")
    return "\n".join(lines)


def seconds_of(results: list[Result], prefix: str) -> float | None:
    for r in results:
        if r.method.startswith(prefix) and r.seconds is not None:
            return r.seconds
    return None


def profile_rnnshap(config: Config, seed: int, top: int) -> str:
    model, x, background = make_problem(config, seed)
    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(config.pairs, 2048))
    explainer.shap_values(x)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    explainer.shap_values(x, check_additivity=True)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(top)
    return stream.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and data, one repeat: a smoke test (< 30 s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method after the warm-up (default 5; 1 with --quick)")
    parser.add_argument("--configs", default="A,B,A-GRU", help="comma-separated subset of A, B, A-GRU (default all)")
    parser.add_argument("--ig-mode", choices=["tiled", "loop"], default="tiled", help="how IG is averaged over baselines (default tiled: one call)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-peers", action="store_true", help="time only native and rnnshap")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the rnnshap call on the first config")
    parser.add_argument("--profile-top", type=int, default=15, help="functions shown by --profile (by cumulative time)")
    args = parser.parse_args(argv)

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    catalogue = QUICK_CONFIGS if args.quick else CONFIGS
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {list(catalogue)}")

    import importlib.metadata as md

    versions = []
    for package in ("torch", "shap", "captum"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            versions.append(f"{package} missing")
    print(
        f"# rnnshap {rnnshap.__version__} benchmark ({'quick' if args.quick else 'full'}): "
        f"{', '.join(versions)}; {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}; median of {repeats} after 1 warm-up; float32, CPU"
    )
    summary = []
    for name in names:
        config = catalogue[name]
        model, x, background = make_problem(config, args.seed)
        runs: list[tuple[str, Callable[[], Result]]] = [
            ("native fwd+bwd (tiled)", lambda: run_native(model, x, background, repeats)),
            ("rnnshap DeepExplainer", lambda: run_rnnshap(model, x, background, repeats)),
        ]
        if not args.skip_peers:
            runs += [
                ("shap DeepExplainer", lambda: run_shap(model, x, background, repeats)),
                ("captum DeepLiftShap", lambda: run_captum_dls(model, x, background, repeats)),
                (f"captum IG-50 ({args.ig_mode})", lambda: run_captum_ig(model, x, background, repeats, args.ig_mode)),
            ]
        results = []
        for label, fn in runs:
            results.append(guarded(label, fn))
            print(f"  [{config.name}] {label}: done", file=sys.stderr, flush=True)
        print()
        print(table(config, results))
        native, ours, ig = seconds_of(results, "native"), seconds_of(results, "rnnshap"), seconds_of(results, "captum IG")
        parts = [f"config {config.name}:"]
        parts.append(f"rnnshap/native = {ours / native:.2f}×" if ours and native else "rnnshap/native = n/a")
        parts.append(f"IG-50/rnnshap = {ig / ours:.1f}×" if ig and ours else "IG-50/rnnshap = n/a")
        summary.append(" ".join(parts))

    print()
    print("Summary: " + "; ".join(summary))

    if args.profile:
        config = catalogue[names[0]]
        print()
        print(f"### cProfile of rnnshap shap_values on config {config.name} (top {args.profile_top} by cumulative time)")
        print("```")
        print(profile_rnnshap(config, args.seed, args.profile_top).rstrip())
        print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
