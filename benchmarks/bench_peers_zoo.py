"""shap and Captum against rnnshap on the zoo's recurrent networks: how far from exact their DeepLIFT-style values are.

For one or two representative models of each zoo library (minGRU and minLSTM in their parallel
log-space scan, an ``xLSTMBlockStack`` of mLSTM blocks, mambapy's Mamba with its parallel and its
sequential scan, ncps' CfC and LTC), built by the zoo's own builders (``tests/zoo/test_<library>.py``)
and run on a float64 copy, this explains one scalar output (the readout at the last time step, the
zoo wrapper's last output, as ``(N, 1)``) of ``--samples`` inputs against ``--refs`` background rows,
all standard normal, with three methods on the same model, inputs and background:

- **rnnshap**: ``rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False)``;
- **shap**: ``shap.DeepExplainer(model, background).shap_values(X, check_additivity=False)``;
- **Captum**: ``captum.attr.DeepLiftShap(model).attribute(X, baselines=background, target=0)``.

Each method gets its own deep copy of the model (the peers attach hooks to its modules). A method
that raises is reported by its exception's type and message: that is a result too. Per method:

- **additivity error**: ``max_i |Σφ_i − (f(x_i) − mean_r f(r))| / max(1, |f(x_i) − mean_r f(r)|)``,
  with ``f`` the model's own outputs, called directly (no explainer's ``expected_value``). DeepSHAP
  values add up to this gap by construction; float64 rounding alone gives ~1e-15–1e-12;
- **distance to rnnshap** (peers): ``Σ|φ_peer − φ_rnnshap| / Σ|φ_rnnshap|`` over every sample,
  time step and feature. rnnshap is exact (its additivity error is at float64 rounding, and the
  zoo tests check it on every entry), so this is the distance from the exact DeepSHAP values of the
  model's decomposition (Rescale on the elementwise nonlinearities, the exact Shapley rule on the
  products); additivity alone needs no reference. The table also gives ``max_i |Δ_i|`` and, for the
  peers, their largest miss relative to it: the gaps of these small untrained models are mostly below
  1, where ``max(1, |Δ|)`` is an absolute error;
- for rnnshap, an independent check of its DeepSHAP structure: each background row alone as the
  background (plain DeepLIFT against one reference), whose values must add up to ``f(x) − f(r)``
  for every pair, and whose mean over the rows must be the values for the whole background.

Below the table, a note per model says what each peer's values turned out to be: where it matches
one of the plain gradient × Δ forms, ``mean_r ∇f(x)·(x − r)`` or ``mean_r ∇f(r)·(x − r)``, to float64
rounding (a DeepLIFT implementation falls back to the gradient on every operation it has no rule
for), which, and the modules shap warns it does not recognise.

Run from the repository root, in an environment with torch, shap, captum and the zoo's libraries
(``pip install -e '.[zoo]' shap captum -c constraints/cpu-torch.txt``)::

    python -m benchmarks.bench_peers_zoo              # 8 refs × 4 samples, about 15 s on a 2-core CPU
    python benchmarks/bench_peers_zoo.py --models minGRU-parallel,LTC --refs 16
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata as metadata
import os
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

import pytest  # noqa: E402  (the zoo modules skip themselves with pytest.importorskip)

import rnnshap  # noqa: E402

#: zoo entry → its library (the module ``tests.zoo.test_<library>``)
MODELS = {
    "minGRU-parallel": "mingru",
    "minLSTM-parallel": "mingru",
    "xLSTMBlockStack-mLSTM": "xlstm",
    "xLSTMBlockStack-sLSTM-vanilla": "xlstm",
    "Mamba-pscan": "mambapy",
    "Mamba-sequential": "mambapy",
    "CfC-default": "ncps",
    "LTC": "ncps",
}

Attributor = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]


class LastOutput(nn.Module):
    """The zoo wrapper's last output (its readout at the last time step) as ``(N, 1)``: one scalar
    output, the same for every method."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, -1:]


@dataclass
class Problem:
    model: nn.Module  # float64, eval mode, (N, T, F) -> (N, 1)
    background: torch.Tensor
    X: torch.Tensor


def build(name: str, refs: int, samples: int, seed: int) -> Problem:
    """The zoo entry's model (a float64 copy) with a standard normal background and inputs of its shape."""
    zoo = importlib.import_module(f"tests.zoo.test_{MODELS[name]}").ZOO
    case = zoo[name].build()
    model64 = copy.deepcopy(case.model if case.model64 is None else case.model64).double().eval()
    shape = case.background[0].shape[1:]
    generator = torch.Generator().manual_seed(seed)
    background = torch.randn(refs, *shape, generator=generator, dtype=torch.float64)
    X = torch.randn(samples, *shape, generator=generator, dtype=torch.float64)
    return Problem(LastOutput(model64).eval(), background, X)


# -- the three methods, each as its library returns the values (made comparable by one_output) ----------
def with_rnnshap(model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> np.ndarray:
    return np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False), np.float64)


def with_shap(model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> np.ndarray:
    import shap

    return np.asarray(shap.DeepExplainer(model, background).shap_values(X, check_additivity=False), np.float64)


def with_captum(model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> np.ndarray:
    from captum.attr import DeepLiftShap

    return DeepLiftShap(model).attribute(X, baselines=background, target=0).detach().double().numpy()


METHODS: dict[str, Attributor] = {"rnnshap": with_rnnshap, "shap": with_shap, "Captum": with_captum}


def one_output(values: Any, X: torch.Tensor) -> np.ndarray:
    """The values of the one output in the input's shape: drops shap's list per output or its
    trailing output axis of length 1, whichever the version returns."""
    if isinstance(values, (list, tuple)):
        if len(values) != 1:
            raise ValueError(f"expected the values of one output, got a list of {len(values)}")
        values = values[0]
    values = np.asarray(values, np.float64)
    if values.shape == (*X.shape, 1):
        values = values[..., 0]
    if values.shape != X.shape:
        raise ValueError(f"values of shape {values.shape} for inputs of shape {tuple(X.shape)}")
    return values


# -- measurements ------------------------------------------------------------------------------------------
def outputs(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """f on every row, called directly, float64 ``(n,)``."""
    with torch.no_grad():
        return model(inputs.clone()).reshape(-1).double().numpy()


def output_gap(model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> np.ndarray:
    """f(x_i) − mean_r f(r), float64 ``(n,)``."""
    return outputs(model, X) - outputs(model, background).mean()


def misses(values: np.ndarray, model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """|Σφ_i − (f(x_i) − mean_r f(r))| and f(x_i) − mean_r f(r), per sample."""
    gap = output_gap(model, background, X)
    return np.abs(values.reshape(values.shape[0], -1).sum(1) - gap), gap


def additivity_error(values: np.ndarray, model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> float:
    """max_i |Σφ_i − (f(x_i) − mean_r f(r))| / max(1, |f(x_i) − mean_r f(r)|)."""
    miss, gap = misses(values, model, background, X)
    return float((miss / np.maximum(1.0, np.abs(gap))).max())


def distance(values: np.ndarray, exact: np.ndarray) -> float:
    """Σ|φ − φ_exact| / Σ|φ_exact|."""
    return float(np.abs(values - exact).sum() / np.abs(exact).sum())


def per_reference_check(model: nn.Module, background: torch.Tensor, X: torch.Tensor, values: np.ndarray) -> tuple[float, float]:
    """rnnshap with each background row alone: the worst additivity error of one (sample, reference)
    pair against ``f(x) − f(r)``, and the distance of the mean over the rows to ``values``."""
    singles = [one_output(with_rnnshap(model, background[r : r + 1], X), X) for r in range(background.shape[0])]
    worst = max(additivity_error(phi, model, background[r : r + 1], X) for r, phi in enumerate(singles))
    return worst, distance(np.mean(singles, axis=0), values)


def gradient_times_delta(model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> dict[str, np.ndarray]:
    """The plain-gradient answers a DeepLIFT implementation falls back to where it has no rule:
    ``mean_r ∇f(x)·(x − r)`` (the gradient on the input's side) and ``mean_r ∇f(r)·(x − r)`` (on the
    reference's side)."""

    def gradient(inputs: torch.Tensor) -> torch.Tensor:
        leaf = inputs.clone().requires_grad_(True)
        return torch.autograd.grad(model(leaf).sum(), leaf)[0].detach()

    delta = X[:, None] - background[None]  # (sample, reference, ...)
    return {
        "mean_r ∇f(x)·(x − r)": (gradient(X)[:, None] * delta).mean(1).numpy(),
        "mean_r ∇f(r)·(x − r)": (gradient(background)[None] * delta).mean(1).numpy(),
    }


def crash_message(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if len(message) <= 240:
        return message
    cut = message[:240]
    return cut[: cut.rindex(".") + 1] + " ..." if cut.rfind(".") > 60 else cut[:237] + "..."


@dataclass
class Outcome:
    values: np.ndarray | None = None
    error: float | None = None
    crashed: str | None = None
    #: max_i |Σφ_i − Δ_i| / max_i |Δ_i|: the same misses against the largest gap
    share: float | None = None
    seconds: float = 0.0
    #: shap's "unrecognized nn.Module" warnings (it takes the plain gradient through those modules)
    unrecognized: list[str] = field(default_factory=list)


def attribute(method: Attributor, problem: Problem) -> Outcome:
    """One method on its own copy of the model; an exception is an outcome, as is its message."""
    model = copy.deepcopy(problem.model)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = one_output(method(model, problem.background, problem.X), problem.X)
        except Exception as error:  # a peer crashing is a finding, not the end of the run
            values, crashed = None, crash_message(error)
        else:
            crashed = None
    seconds = time.perf_counter() - start
    prefix = "unrecognized nn.Module: "
    unrecognized = sorted({str(w.message).removeprefix(prefix) for w in caught if str(w.message).startswith(prefix)})
    if values is None:
        return Outcome(crashed=crashed, seconds=seconds, unrecognized=unrecognized)
    miss, gap = misses(values, problem.model, problem.background, problem.X)
    error, share = float((miss / np.maximum(1.0, np.abs(gap))).max()), float(miss.max() / np.abs(gap).max())
    return Outcome(values, error, share=share, seconds=seconds, unrecognized=unrecognized)


def peer_cell(peer: Outcome, exact: Outcome) -> str:
    if peer.crashed is not None:
        return "crashed: `" + peer.crashed.replace("|", "/").replace("`", "'") + "`"
    assert peer.values is not None and peer.error is not None and peer.share is not None
    cell = f"{peer.error:.1e} ({peer.share:.0%} of max \\|Δ\\|)"
    return cell + (" / —" if exact.values is None else f" / {distance(peer.values, exact.values):.1%}")


def row(name: str, problem: Problem, check_references: bool) -> tuple[str, str]:
    """The table row of one model, and a note on it: what each peer's values turned out to be."""
    outcomes = {method: attribute(call, problem) for method, call in METHODS.items()}
    ours = outcomes["rnnshap"]
    largest_gap = float(np.abs(output_gap(problem.model, problem.background, problem.X)).max())
    cells = [f"{MODELS[name]} {name}", f"{largest_gap:.2f}"]
    if ours.crashed is not None:
        cells += [f"crashed: `{ours.crashed}`", "—"]
    else:
        cells.append(f"{ours.error:.1e}")
        if check_references:
            assert ours.values is not None
            worst, mismatch = per_reference_check(problem.model, problem.background, problem.X, ours.values)
            cells.append(f"{worst:.1e} / {mismatch:.1e}")
        else:
            cells.append("—")
    cells += [peer_cell(outcomes[peer], ours) for peer in ("shap", "Captum")]

    fallbacks = gradient_times_delta(problem.model, problem.background, problem.X)
    apart = distance(*fallbacks.values())
    parts = []
    for peer in ("shap", "Captum"):
        outcome = outcomes[peer]
        if outcome.values is not None:
            matches = [(formula, distance(outcome.values, v)) for formula, v in fallbacks.items()]
            formula, gap = min(matches, key=lambda match: match[1])
            found = (
                f"= {formula} (to {gap:.0e})" if gap < 1e-9 else "= neither gradient form (its hooks changed some multipliers)"
            )
            parts.append(f"{peer} {found}")
        if outcome.unrecognized:
            parts.append(f"{peer} warns `unrecognized nn.Module` for {', '.join(outcome.unrecognized)}")
    parts.append(f"the two gradient forms are {apart:.1%} apart")
    note = f"{name}: " + "; ".join(parts)
    timing = ", ".join(f"{method} {outcome.seconds:.2f} s" for method, outcome in outcomes.items())
    print(f"  [{name}] {timing}", file=sys.stderr, flush=True)
    return "| " + " | ".join(cells) + " |", note


def versions() -> str:
    found = []
    for package in ("torch", "shap", "captum", "mingru-pytorch", "xlstm", "mambapy", "ncps"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} missing")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--refs", type=int, default=8, help="background rows (default 8)")
    parser.add_argument("--samples", type=int, default=4, help="explained rows (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the background and the inputs (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: steadier on a shared CPU)")
    parser.add_argument("--skip-reference-check", action="store_true", help="leave out rnnshap's per-reference check")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.time()

    print(f"# rnnshap {rnnshap.__version__} against shap and Captum on the zoo's recurrent networks: {versions()}")
    print(f"float64, CPU, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"{args.samples} samples × {args.refs} references, one output (the readout at the last step)\n")  # fmt: skip
    print("| model | max \\|Δ\\| | rnnshap additivity error | rnnshap per reference: additivity / mean vs. whole background "
          "| shap DeepExplainer: additivity error / distance to rnnshap "
          "| Captum DeepLiftShap: additivity error / distance to rnnshap |")  # fmt: skip
    print("|---|---:|---:|---:|---|---|")
    notes: list[str] = []
    for name in names:
        try:
            problem = build(name, args.refs, args.samples, args.seed)
        except (ImportError, pytest.skip.Exception) as missing:
            print(f"| {MODELS[name]} {name} | not installed: {str(missing).splitlines()[0]} | | | | |", flush=True)
            continue
        line, note = row(name, problem, not args.skip_reference_check)
        print(line, flush=True)
        notes.append(note)
    print(
        "\nΔ = f(x) − mean_r f(r), the model's own outputs. Additivity error: max_i |Σφ_i − Δ_i| / max(1, |Δ_i|); "
        "in brackets, the same absolute error relative to max_i |Δ_i| (the gaps here are mostly below 1). "
        "Distance: Σ|φ − φ_rnnshap| / "
        "Σ|φ_rnnshap|. rnnshap is exact (additivity at float64 rounding), so the distance is the distance from the exact "
        "DeepSHAP values. Per reference: rnnshap with each background row alone, the worst additivity error against "
        "f(x) − f(r), and the relative L1 distance of the mean over the rows to the values for the whole background."
    )
    if notes:
        print(
            "\nWhat the peers computed (∇f: the plain gradient; how far apart its two forms are says how nonlinear f is "
            "on these data):\n"
        )
        print("\n".join(f"- {note}" for note in notes))
    print(f"\n{time.time() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
