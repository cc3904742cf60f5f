"""rnnshap.darts.ShapExplainer on a long series: a default background a user would not
regret (a seeded sample of windows, its size said in the result), progress on long work, and a
``summary_plot`` whose cost and points do not grow with the number of forecasts.

Truths: darts' own ``historical_forecasts`` (the values add up to each forecast), the background
windows the explanation actually ran against, and the points matplotlib holds after the plot.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("darts")
pytest.importorskip("shap")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from darts import TimeSeries  # noqa: E402
from darts.models import DLinearModel  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from rnnshap.darts import ShapExplainer  # noqa: E402
from rnnshap.forecasting import darts as adapter  # noqa: E402

L, H = 6, 2
LENGTH = 700  # LENGTH - L + 1 = 695 windows of L steps (darts forecasts from the last too): more than the defaults
TRAINER = dict(
    pl_trainer_kwargs=dict(
        enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu"
    ),
    random_state=0, n_epochs=1, batch_size=64,
)  # fmt: skip
TOL = 1e-5  # float32 model: relative to max(1, |forecast|)

rng = np.random.default_rng(1)
TIMES = pd.date_range("1960-01-01", periods=LENGTH, freq="MS")
SERIES = TimeSeries.from_times_and_values(TIMES, rng.normal(size=(LENGTH, 1)).cumsum(0).astype(np.float32), columns=["y"])
WINDOWS = LENGTH - L + 1


@pytest.fixture(scope="module")
def model() -> Any:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("darts").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    return DLinearModel(input_chunk_length=L, output_chunk_length=H, kernel_size=3, **TRAINER).fit(SERIES, verbose=False)


def test_default_background_is_a_seeded_sample_said_in_the_result(model: Any) -> None:
    assert WINDOWS > adapter.DEFAULT_BACKGROUND_SAMPLES
    explainer = ShapExplainer(model)
    # the windows the explanation runs against, counted from the tensors themselves
    assert explainer.explainer.background_windows[0].shape[0] == adapter.DEFAULT_BACKGROUND_SAMPLES
    result = explainer.explain(horizons=[1, 2])
    assert result.background_num_samples == adapter.DEFAULT_BACKGROUND_SAMPLES
    assert result.background_windows == WINDOWS
    # the values still add up to darts' own forecasts, at every window
    forecasts = model.historical_forecasts(
        SERIES, forecast_horizon=H, stride=1, retrain=False, last_points_only=False, overlap_end=True, verbose=False,
        show_warnings=False,
    )  # fmt: skip
    by_start = {f.start_time(): f.values()[:, 0] for f in forecasts}
    checked = 0
    for h in (1, 2):
        e = result.get_shap_explanation_object(h, "y")
        totals = e.values.sum(1) + e.base_values
        for row, start in enumerate(result.get_explanation(h, "y").time_index):
            truth = by_start[start][h - 1]
            assert abs(totals[row] - truth) <= TOL * max(1.0, abs(truth)), f"horizon {h} at {start}"
            checked += 1
    assert checked >= 2 * WINDOWS  # every forecast the series allows, each matched to darts' own
    # seeded: the same call draws the same background (the same base value)
    again = ShapExplainer(model).explain(horizons=[1])
    np.testing.assert_array_equal(
        again.get_shap_explanation_object(1, "y").base_values, result.get_shap_explanation_object(1, "y").base_values
    )


def test_given_background_num_samples_is_used_as_given(model: Any) -> None:
    explainer = ShapExplainer(model, background_num_samples=WINDOWS)
    assert explainer.explainer.background_windows[0].shape[0] == WINDOWS
    assert explainer.background_num_samples == WINDOWS


def test_a_short_background_is_used_whole(model: Any) -> None:
    short = SERIES[:60]  # 55 windows, fewer than the default sample
    explainer = ShapExplainer(model, background_series=short)
    assert explainer.explainer.background_windows[0].shape[0] == 60 - L + 1
    assert explainer.background_num_samples == 60 - L + 1


def test_progress_bar_on_request(model: Any, capsys: Any) -> None:
    pytest.importorskip("tqdm")
    ShapExplainer(model, background_series=SERIES[:200], batch_size=256, progress=True).explain(horizons=[1])
    assert "rnnshap" in capsys.readouterr().err


def _points_per_feature(ax: Any, features: int) -> int:
    total = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert total % features == 0
    return total // features


def test_summary_plot_draws_a_bounded_sample_of_forecasts(model: Any) -> None:
    explainer = ShapExplainer(model)
    plt.close("all")
    shaps = explainer.summary_plot(horizons=[1], plot_kwargs={"show": False, "max_display": 5})
    ax = plt.gca()
    drawn = _points_per_feature(ax, 5)
    assert drawn == adapter.SUMMARY_PLOT_POINTS < WINDOWS
    assert f"{adapter.SUMMARY_PLOT_POINTS} of {WINDOWS} forecasts" in ax.get_title()
    e = shaps[1]["y"]
    assert e.values.shape[0] == adapter.SUMMARY_PLOT_POINTS
    # the sampled forecasts are explained as any other: they add up to predict on their window
    forecasts = model.historical_forecasts(
        SERIES, forecast_horizon=H, stride=1, retrain=False, last_points_only=False, overlap_end=True, verbose=False,
        show_warnings=False,
    )  # fmt: skip
    by_start = {f.start_time(): f.values()[0, 0] for f in forecasts}
    totals = e.values.sum(1) + e.base_values
    for row, start in enumerate(e.time_index):
        assert abs(totals[row] - by_start[start]) <= TOL * max(1.0, abs(by_start[start]))
    plt.close("all")


def test_summary_plot_num_samples_is_honoured(model: Any) -> None:
    explainer = ShapExplainer(model)
    plt.close("all")
    explainer.summary_plot(horizons=[1], num_samples=40, plot_kwargs={"show": False, "max_display": 5})
    assert _points_per_feature(plt.gca(), 5) == 40
    plt.close("all")


def test_explain_without_foreground_explains_every_window_beyond_darts_cap(model: Any) -> None:
    """The background series are the default foreground: every forecast they allow is explained, in time
    order, even beyond darts' 1000-window cap on backgrounds (which drew 1000 windows out of order, and
    darts' result assembly then failed on the unordered time index)."""
    length = 1100
    values = np.random.default_rng(2).normal(size=(length, 1)).cumsum(0).astype(np.float32)
    long = TimeSeries.from_times_and_values(pd.date_range("1900-01-01", periods=length, freq="MS"), values, columns=["y"])
    explainer = ShapExplainer(model, background_series=long)
    assert explainer.background_num_samples == adapter.DEFAULT_BACKGROUND_SAMPLES
    result = explainer.explain(horizons=[1])
    times = result.get_explanation(1, "y").time_index
    assert len(times) == length - L + 1 and times.is_monotonic_increasing
    forecasts = model.historical_forecasts(
        long, forecast_horizon=H, stride=1, retrain=False, last_points_only=False, overlap_end=True, verbose=False,
        show_warnings=False,
    )  # fmt: skip
    by_start = {f.start_time(): f.values()[0, 0] for f in forecasts}
    e = result.get_shap_explanation_object(1, "y")
    totals = e.values.sum(1) + e.base_values
    truth = np.array([by_start[t] for t in times])
    assert np.max(np.abs(totals - truth) / np.maximum(1.0, np.abs(truth))) <= TOL
