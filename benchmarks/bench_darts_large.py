"""rnnshap.darts.ShapExplainer on a long series: the default background against the old one.

Data: a synthetic monthly series of ``--length`` steps (default 1253: with ``input_chunk_length=24``,
1230 windows, the size of the CO2 / El Niño case of the issue; no download). Model: a darts
``BlockRNNModel`` (LSTM, hidden 16) fitted for one epoch. Each setting explains every window of the series:

- ``explain()`` with the default background (``DEFAULT_BACKGROUND_SAMPLES`` seeded windows) and with
  ``background_num_samples=1000`` (what the old default gave on this series: every window, capped at darts' 1000);
- ``summary_plot(horizons=1)`` with the defaults (at most ``SUMMARY_PLOT_POINTS`` forecasts, default background)
  and with ``num_samples`` = every window (the old behaviour's foreground), default background.

Wall time, one run each (the old setting takes minutes; ``--quick`` shortens the series to 400 steps). Also
the largest miss of values + base against the forecast (relative), which must stay at float32 rounding.

Run from the repository root::

    python benchmarks/bench_darts_large.py --quick
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=1253)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-old", action="store_true", help="leave out the 1000-window background")
    args = parser.parse_args()
    length = 400 if args.quick else args.length

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from darts import TimeSeries
    from darts.models import BlockRNNModel

    from rnnshap.darts import ShapExplainer

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("darts").setLevel(logging.ERROR)
    logging.getLogger("rnnshap").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = np.arange(length)
    values = (np.sin(2 * np.pi * t / 12) + 0.01 * t + 0.3 * rng.normal(size=length)).astype(np.float32)[:, None]
    series = TimeSeries.from_times_and_values(pd.date_range("1920-01-01", periods=length, freq="MS"), values, columns=["y"])
    model = BlockRNNModel(
        input_chunk_length=24, output_chunk_length=6, model="LSTM", hidden_dim=16, n_epochs=1, batch_size=64, random_state=0,
        pl_trainer_kwargs=dict(enable_progress_bar=False, logger=False, enable_model_summary=False, accelerator="cpu"),
    )  # fmt: skip
    model.fit(series, verbose=False)

    def miss(result: object) -> float:
        forecasts = model.historical_forecasts(
            series, forecast_horizon=6, stride=1, retrain=False, last_points_only=False, overlap_end=True, verbose=False,
            show_warnings=False,
        )  # fmt: skip
        by_start = {f.start_time(): f.values()[0, 0] for f in forecasts}
        e = result.get_shap_explanation_object(1, "y")  # type: ignore[attr-defined]
        totals = e.values.sum(1) + e.base_values
        truth = np.array([by_start[s] for s in result.get_explanation(1, "y").time_index])  # type: ignore[attr-defined]
        return float(np.max(np.abs(totals - truth) / np.maximum(1.0, np.abs(truth))))

    rows = []
    settings = [("default", {})] + ([] if args.skip_old else [("background_num_samples=1000", {"background_num_samples": 1000})])
    for name, kwargs in settings:
        explainer = ShapExplainer(model, **kwargs)
        start = time.perf_counter()
        result = explainer.explain()
        seconds = time.perf_counter() - start
        rows.append((
            f"explain(), {name}", result.background_num_samples, len(result.get_explanation(1, "y")), seconds, miss(result),
        ))  # fmt: skip
    explainer = ShapExplainer(model)
    windows = explainer.background_windows_total
    explainer.summary_plot(horizons=1, num_samples=20, plot_kwargs={"show": False})  # warm-up: matplotlib's first draw
    for name, num in [("summary_plot(), default", None), (f"summary_plot(num_samples={windows})", windows)]:
        plt.close("all")
        start = time.perf_counter()
        shaps = explainer.summary_plot(horizons=1, num_samples=num, plot_kwargs={"show": False})
        seconds = time.perf_counter() - start
        rows.append((name, explainer.background_num_samples, shaps[1]["y"].values.shape[0], seconds, float("nan")))
    print(f"series of {length} steps, {windows} windows; torch {torch.get_num_threads()} threads\n")
    print("| call | background windows | forecasts explained | seconds | max relative miss |")
    print("|---|---|---|---|---|")
    for name, background, forecasts, seconds, error in rows:
        print(f"| {name} | {background} | {forecasts} | {seconds:.1f} | {error:.2g} |")


if __name__ == "__main__":
    main()
