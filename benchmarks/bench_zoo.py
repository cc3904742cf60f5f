"""The zoo (tests/zoo/) in one table: what rnnshap does with each library model, how exact, how fast.

For every entry of every ``tests/zoo/test_<library>.py`` whose library is installed:

- **status**: exact, refused (with the operation the constructor names), or a known bug;
- **float32 / float64 error**: ``max |Σφ − (f(x) − mean_r f(r))| / max(1, |Δ|)`` on the zoo's own
  case (the model's outputs, both dtypes, the float64 one on a ``.double()`` copy, or the case's own float64 build);
- **× native**: ``shap_values`` (explainer built outside the timed region, ``check_additivity=False``
  so that the known-bug entries run too) against one native forward + backward of the model on the
  same tiled (sample, reference) pairs, gradient w.r.t. the floating-point inputs only
  (``benchmarks/bench_recurrent.py``'s ``native``; w.r.t. the parameters for a model of token ids
  only). The two are timed round-robin after a warm-up, median of
  ``--repeats``, on a bigger case: the zoo case's background and samples resampled to ``--refs`` and
  ``--samples`` rows, floating-point inputs jittered so that every row is distinct.
- **× native, k backward**: the same ``shap_values`` against one forward and a batched backward of
  each of the model's k outputs (``is_grads_batched``), what a gradient method pays to explain every
  output (``shap_values`` explains all k; the floor of ``bench_throughput.py``'s K-outputs case). The
  column before it is against one backward of the outputs' sum, whatever k.

The last lines give the median and the worst of both ratio columns.

Run from the repository root, in an environment with the zoo's libraries
(``pip install -e '.[zoo]' -c constraints/cpu-torch.txt``)::

    python benchmarks/bench_zoo.py                 # every library, 16 refs × 4 samples, median of 3
    python benchmarks/bench_zoo.py --libraries ncps,mambapy --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402  (the zoo modules skip themselves with pytest.importorskip)

import rnnshap  # noqa: E402
from tests.conftest import additivity_excess  # noqa: E402
from tests.zoo.harness import Case, Spec, double, explain, median_seconds, native_call, shap_call  # noqa: E402

LIBRARIES = [
    "neuralforecast", "pytorch_forecasting", "darts", "ncps", "xlstm", "mambapy", "mingru", "sb3_contrib", "torch_geometric"
]


def grow(case: Case, refs: int, samples: int, seed: int = 0) -> Case:
    """The case with ``refs`` background rows and ``samples`` explained rows, resampled from its own
    rows; floating-point inputs get a small jitter so that no two rows are equal."""
    generator = torch.Generator().manual_seed(seed)

    def resample(tensors: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        rows = torch.arange(n) % tensors[0].shape[0]
        out = []
        for t in tensors:
            t = t[rows].clone()
            if t.is_floating_point():
                t = t + 0.01 * (1 + t.abs()) * torch.randn(t.shape, generator=generator, dtype=t.dtype)
            out.append(t)
        return out

    return Case(case.model, resample(case.background, refs), resample(case.X, samples))


def errors(case: Case) -> tuple[float, float]:
    model = case.model.eval()
    e32 = float(additivity_excess(explain(model, case.background, case.X), model, case.X, case.background).max())
    model64 = (copy.deepcopy(model) if case.model64 is None else case.model64).double().eval()  # see Case.model64
    b64, x64 = double(case.background), double(case.X)
    e64 = float(additivity_excess(explain(model64, b64, x64), model64, x64, b64).max())
    return e32, e64


def status(spec: Spec) -> str:
    if spec.refused is not None:
        return f"refused: `{spec.refused}`" + (f" (from `{spec.mentions}`)" if spec.mentions else "")
    return "bug (xfail)" if spec.bug is not None else "exact"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated, from: " + ", ".join(LIBRARIES))
    parser.add_argument("--refs", type=int, default=16, help="background rows for the timing (default 16)")
    parser.add_argument("--samples", type=int, default=4, help="explained rows for the timing (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, median (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: steadier on a shared CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.time()
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"timing on {args.samples} samples × {args.refs} references = {args.samples * args.refs} pairs\n")  # fmt: skip
    print(
        "| library | model | status | float32 error | float64 error | k | shap_values s | native fwd+bwd s | × native | native "
        "fwd + k bwd s | × native, k bwd |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    blank = " | | | | | | |"
    ratios: dict[str, list[tuple[float, str]]] = {"× native": [], "× native, k bwd": []}
    for library in args.libraries.split(","):
        try:
            module = importlib.import_module(f"tests.zoo.test_{library}")
        except (ImportError, pytest.skip.Exception) as missing:
            print(f"| {library} | — | not installed: {str(missing).splitlines()[0]} | | | | | |")
            continue
        zoo: dict[str, Spec] = module.ZOO
        for name, spec in zoo.items():
            row = f"| {library} | {name} | {status(spec)} |"
            try:
                case = spec.build()
                if spec.refused is not None:
                    try:
                        rnnshap.DeepExplainer(
                            case.model.eval(), case.background[0] if len(case.background) == 1 else case.background
                        )
                        row += " not refused any more!" + blank
                    except rnnshap.UnsupportedOperationError as error:
                        row += " " + ", ".join(f"`{op}`" for op, _ in error.ops) + blank
                    print(row, flush=True)
                    continue
                e32, e64 = errors(case)
                big = grow(case, args.refs, args.samples)
                calls = {"ours": shap_call(big), "native": native_call(big), "per output": native_call(big, per_output=True)}
                seconds = median_seconds(calls, args.repeats)
                ours, native, per_output = seconds["ours"], seconds["native"], seconds["per output"]
                with torch.no_grad():
                    k = case.model.eval()(*case.X).reshape(len(case.X[0]), -1).shape[1]
                row += f" {e32:.1e} | {e64:.1e} | {k} | {ours:.3f} | {native:.4f} | {ours / native:.1f} |"
                row += f" {per_output:.4f} | {ours / per_output:.1f} |"
                ratios["× native"].append((ours / native, name))
                ratios["× native, k bwd"].append((ours / per_output, name))
            except Exception as failure:  # one entry failing does not stop the table
                row += f" crashed: {type(failure).__name__}: {str(failure).splitlines()[0][:120]}" + blank
            print(row, flush=True)
    for column, values in ratios.items():
        if values:
            worst = max(values)
            print(
                f"\n{column}: median {statistics.median(v for v, _ in values):.1f}, worst {worst[0]:.1f} ({worst[1]}), "
                f"over {len(values)} models",
                end=""
            )
    print()
    print(f"\n{time.time() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
