"""The forecasting adapters against what the libraries ship, one library after the other in one run.

Each library's script times its own explainer and rnnshap's (DeepSHAP and the Shapley mode) interleaved on
the same fitted models, and measures the distance of each to the exact Shapley values at equal numbers of
model rows (docs/forecasting.md has the tables):

- ``bench_forecasting_darts.py``: darts' ``ShapExplainer`` (shap's permutation sampler, its default) against
  ``rnnshap.darts.ShapExplainer``;
- ``bench_forecasting_neuralforecast.py``: ``NeuralForecast.explain`` (Integrated Gradients where it runs,
  ShapleyValueSampling) against ``rnnshap.neuralforecast.explain``.

pytorch-forecasting ships no attribution to compare with.

    python benchmarks/bench_forecasting.py                  # both
    python benchmarks/bench_forecasting.py darts            # one of them (its own options: run its script)
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

LIBRARIES = ("darts", "neuralforecast")


def main() -> None:
    chosen = sys.argv[1:] or list(LIBRARIES)
    unknown = [name for name in chosen if name not in LIBRARIES]
    if unknown:
        raise SystemExit(f"unknown library {unknown}: choose from {', '.join(LIBRARIES)}")
    here = Path(__file__).resolve().parent
    for name in chosen:
        print(f"\n## {name}\n", flush=True)
        sys.argv = [f"bench_forecasting_{name}.py"]
        runpy.run_path(str(here / f"bench_forecasting_{name}.py"), run_name="__main__")


if __name__ == "__main__":
    main()
