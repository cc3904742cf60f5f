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
   background rows as baselines (``--ig-mode``: ``loop``, the default, is one call per background
   row on all inputs, inputs × 50 rows per forward; ``tiled`` is one call on all pairs, pairs × 50
   rows. ``loop`` measured 1.2–2.8× faster, and internal_batch_size did not help).

and prints, per method, seconds, ratio to ``native`` and the relative additivity error

    max_i |sum(phi_i) - (f(x_i) - mean_r f(r))| / max_i |f(x_i) - mean_r f(r)|.

Run ``python benchmarks/bench_recurrent.py`` (full, a few minutes on a laptop CPU),
``--quick`` for a smoke test, ``--profile`` to add a cProfile of the rnnshap call on config A.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
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
    seconds: float | None = None  # median
    fastest: float | None = None  # min
    error: float | None = None  # relative additivity error; None where it does not apply
    crashed: str | None = None


@dataclass
class Method:
    """One row of a table: ``call()`` runs the method once and returns its attributions (or None)."""

    name: str
    call: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    output: Any = None
    crashed: str | None = None


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


def native(model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Method:
    """Forward + backward of the model on all pairs, gradient w.r.t. the input only.

    ``torch.autograd.grad`` rather than ``.backward()``: no attribution method needs the
    parameter gradients, and rnnshap does not compute them either.
    """
    tiled = x.repeat_interleave(background.shape[0], dim=0)  # the (input, reference) pair layout rnnshap uses

    def call() -> None:
        leaf = tiled.detach().requires_grad_(True)
        torch.autograd.grad(model(leaf).sum(), leaf)

    return Method("native fwd+bwd (tiled)", call)


def with_rnnshap(model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Method:
    pairs = x.shape[0] * background.shape[0]
    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(pairs, 2048))
    return Method("rnnshap DeepExplainer", lambda: explainer.shap_values(x, check_additivity=True))


def with_rnnshap_per_pair(model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Method:
    """rnnshap with the recurrent layers' distinct-row reduction switched off: every pair's two
    trajectories on their own rows, as for packed sequences or a sample-specific reference side."""
    from rnnshap.recurrent.pairs import Side

    pairs = x.shape[0] * background.shape[0]
    explainer = rnnshap.DeepExplainer(model, background, batch_size=max(pairs, 2048))
    reducing = Side.__dict__["of"]

    def call() -> Any:
        Side.of = classmethod(  # type: ignore[method-assign, assignment]
            lambda cls, which, grid, n, tensors: reducing.__func__(cls, which, None, n, tensors)
        )
        try:
            return explainer.shap_values(x, check_additivity=True)
        finally:
            Side.of = reducing  # type: ignore[method-assign]

    return Method("rnnshap, one row per pair", call)


def with_shap(model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Method:
    import shap

    explainer = shap.DeepExplainer(model, background)
    return Method("shap DeepExplainer", lambda: explainer.shap_values(x, check_additivity=False))


def with_captum_dls(model: nn.Module, x: torch.Tensor, background: torch.Tensor) -> Method:
    from captum.attr import DeepLiftShap

    method = DeepLiftShap(model)
    return Method("captum DeepLiftShap", lambda: method.attribute(x, baselines=background, target=0))


def with_captum_ig(model: nn.Module, x: torch.Tensor, background: torch.Tensor, mode: str) -> Method:
    """Integrated Gradients, n_steps = 50, averaged over the background rows as baselines.

    ``loop``: one ``attribute`` call per background row, broadcast as the baseline of all inputs
    (inputs × 50 rows per forward/backward). ``tiled``: one call on all (input, baseline) pairs
    (pairs × 50 rows), then the mean over baselines.
    """
    from captum.attr import IntegratedGradients

    n, m = x.shape[0], background.shape[0]
    method = IntegratedGradients(model)

    if mode == "tiled":
        tiled_x = x.repeat_interleave(m, dim=0)
        tiled_b = background.repeat(n, 1, 1)

        def call() -> torch.Tensor:
            phi = method.attribute(tiled_x, baselines=tiled_b, target=0, n_steps=50)
            return phi.reshape(n, m, *x.shape[1:]).mean(1)
    else:

        def call() -> torch.Tensor:
            total = torch.zeros_like(x)
            for r in range(m):
                total += method.attribute(x, baselines=background[r : r + 1], target=0, n_steps=50)
            return total / m

    return Method(f"captum IG-50 ({mode})", call)


def crash_message(error: BaseException) -> str:
    message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return message if len(message) <= 160 else message[:157] + "..."


def measure(
    factories: list[tuple[str, Callable[[], Method]]],
    model: nn.Module,
    x: torch.Tensor,
    background: torch.Tensor,
    repeats: int,
    label: str,
) -> list[Result]:
    """Build every method, warm each up once, then time them round-robin ``repeats`` times.

    Round-robin (rather than all repeats of one method, then the next) spreads any slowdown of a
    shared machine over all methods alike, so the ratios stay meaningful. A method that raises
    (when built, warmed up or timed) is reported as crashed and leaves the rotation.
    """
    methods = []
    for name, factory in factories:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method = factory()
        except Exception as error:  # a peer crashing is a result, not the end of the run
            method = Method(name, lambda: None, crashed=crash_message(error))
        methods.append(method)
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for method in methods:
            if method.crashed is not None:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    output = method.call()
                    elapsed = time.perf_counter() - start
            except Exception as error:
                method.crashed = crash_message(error)
                continue
            if round_ == 0:
                method.output = output
            else:
                method.times.append(elapsed)
        print(f"  [{label}] round {round_}/{repeats} done", file=sys.stderr, flush=True)

    results = []
    for method in methods:
        if method.crashed is not None:
            results.append(Result(method.name, crashed=method.crashed))
            continue
        error = None
        if method.output is not None:
            try:
                error = additivity_error(method.output, model, x, background)
            except Exception as failure:
                results.append(Result(method.name, crashed=f"additivity check: {crash_message(failure)}"))
                continue
        results.append(Result(method.name, statistics.median(method.times), min(method.times), error))
    return results


# -- report ------------------------------------------------------------------------------------------
def table(config: Config, results: list[Result]) -> str:
    limit = results[0].seconds
    lines = [
        f"### Config {config.name}: {config.describe()}",
        "",
        "| method | seconds (median) | seconds (min) | × native | additivity error (rel.) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.crashed is not None:
            lines.append(f"| {r.method} | crashed: {r.crashed} | | | |")
            continue
        assert r.seconds is not None
        ratio = f"{r.seconds / limit:.2f}" if limit else "—"
        error = "—" if r.error is None else f"{r.error:.2e}"
        lines.append(f"| {r.method} | {r.seconds:.4f} | {r.fastest:.4f} | {ratio} | {error} |")
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
    parser.add_argument("--quick", action="store_true", help="tiny models and data, three repeats: a smoke test (< 30 s)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per method after the warm-up (default 5; 3 with --quick)"
    )
    parser.add_argument("--configs", default="A,B,A-GRU", help="comma-separated subset of A, B, A-GRU (default all)")
    parser.add_argument(
        "--ig-mode",
        choices=["tiled", "loop"],
        default="loop",
        help="how IG is averaged over baselines (default loop: one call per background row, measured fastest)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: leave torch's default alone)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-pair", action="store_true",
        help="add a row for rnnshap with the distinct-row reduction of recurrent layers switched off",
    )
    parser.add_argument("--skip-peers", action="store_true", help="time only native and rnnshap")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the rnnshap call on the first config")
    parser.add_argument("--profile-top", type=int, default=15, help="functions shown by --profile (by cumulative time)")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
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
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"median of {repeats} after 1 warm-up; float32, CPU"
    )
    summary = []
    for name in names:
        config = catalogue[name]
        model, x, background = make_problem(config, args.seed)
        factories: list[tuple[str, Callable[[], Method]]] = [
            ("native fwd+bwd (tiled)", lambda: native(model, x, background)),
            ("rnnshap DeepExplainer", lambda: with_rnnshap(model, x, background)),
        ]
        if args.per_pair:
            factories.append(("rnnshap, one row per pair", lambda: with_rnnshap_per_pair(model, x, background)))
        if not args.skip_peers:
            factories += [
                ("shap DeepExplainer", lambda: with_shap(model, x, background)),
                ("captum DeepLiftShap", lambda: with_captum_dls(model, x, background)),
                (f"captum IG-50 ({args.ig_mode})", lambda: with_captum_ig(model, x, background, args.ig_mode)),
            ]
        results = measure(factories, model, x, background, repeats, config.name)
        print()
        print(table(config, results))
        limit, ours, ig = seconds_of(results, "native"), seconds_of(results, "rnnshap"), seconds_of(results, "captum IG")
        parts = [f"config {config.name}:"]
        parts.append(f"rnnshap/native = {ours / limit:.2f}×" if ours and limit else "rnnshap/native = n/a")
        parts.append(f"IG-50/rnnshap = {ig / ours:.1f}×" if ig and ours else "IG-50/rnnshap = n/a")
        summary.append(" ".join(parts))

    print()
    print("Summary: " + "; ".join(summary))
    print(f"(load average at the end: {os.getloadavg()[0]:.2f})")

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
