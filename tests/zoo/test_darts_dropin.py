"""rnnshap.darts.ShapExplainer as a drop-in for darts' own.

Code that names one of darts' shap methods (``shap_method=``) or passes a model rnnshap's door does not
take (darts' regression models) keeps working: darts' own explainer answers, and the result says so
(``explained_by``). darts' own checks raise darts' own errors. Truths: darts' own ``ShapExplainer`` on
the same call, darts' own ``predict`` / ``historical_forecasts`` and darts' own errors.
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
from darts import TimeSeries  # noqa: E402
from darts.explainability import ShapExplainer as DartsShapExplainer  # noqa: E402
from darts.models import DLinearModel, LinearRegressionModel, NaiveSeasonal, TFTModel, TiDEModel  # noqa: E402

import rnnshap  # noqa: E402
from rnnshap.darts import ShapExplainer  # noqa: E402

L, H = 6, 2
TRAINER = dict(
    pl_trainer_kwargs=dict(
        enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu"
    ),
    random_state=0, n_epochs=1, batch_size=16,
)  # fmt: skip
TOL = 1e-5  # float32 models: relative to max(1, |forecast|)

rng = np.random.default_rng(0)
MONTHS = pd.date_range("2000-01-01", periods=40, freq="MS")
WALK = rng.normal(size=(30, 1)).cumsum(0).astype(np.float32) + 10.0
TARGET = TimeSeries.from_times_and_values(MONTHS[:30], WALK, columns=["y"])
COV = TimeSeries.from_times_and_values(MONTHS, rng.normal(size=(40, 2)).astype(np.float32), columns=["a", "b"])


def _quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("darts").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


@pytest.fixture(scope="module")
def dlinear() -> Any:
    _quiet()
    torch.manual_seed(0)
    return DLinearModel(input_chunk_length=L, output_chunk_length=H, kernel_size=3, **TRAINER).fit(TARGET, verbose=False)


def _assert_adds_up(totals: np.ndarray, truth: np.ndarray, where: str) -> None:
    error = np.abs(totals - truth) / np.maximum(1.0, np.abs(truth))
    assert error.max() <= TOL, f"{where}: values + base miss darts' forecast by {error.max():.3g} (relative)"


def _adds_up_to_historical_forecasts(
    model: Any, result: Any, series: TimeSeries, where: str, minimum: int = 2, **cov: Any
) -> None:
    forecasts = model.historical_forecasts(
        series, forecast_horizon=H, stride=1, retrain=False, last_points_only=False, overlap_end=True, verbose=False,
        show_warnings=False, predict_likelihood_parameters=model.supports_likelihood_parameter_prediction, **cov,
    )  # fmt: skip
    by_start = {f.start_time(): f.values() for f in forecasts}
    checked = 0
    for h in result.available_horizons:
        for c, component in enumerate(result.available_components):
            e = result.get_shap_explanation_object(h, component)
            totals = e.values.sum(1) + e.base_values
            for row, start in enumerate(result.get_explanation(h, component).time_index):
                if start in by_start:
                    _assert_adds_up(totals[row], by_start[start][h - 1, c], f"{where} at {start}, horizon {h}, {component}")
                    checked += 1
    assert checked >= minimum * len(result.available_horizons)


# -- darts' own explainer answers where the user names its method, or for a model rnnshap's door does not take ----
@pytest.mark.slow  # shap's permutation sampler through darts' own adapter: about a minute on 2 cores
def test_shap_method_is_answered_by_darts_own_explainer(dlinear: Any) -> None:
    """shap_method= names one of darts' shap explainers: darts' own answers (the same values as
    darts.explainability.ShapExplainer on the same call, same random seed), and the result says which answered."""
    _quiet()
    results = []
    for cls in (ShapExplainer, DartsShapExplainer):
        np.random.seed(0)  # darts' background draw and shap's permutations
        explainer = cls(dlinear, TARGET[:18], background_num_samples=10, shap_method="permutation")
        results.append(explainer.explain(TARGET[16:26], horizons=[1], max_evals=20))
        if cls is ShapExplainer:
            ours = explainer
    a, b = results
    assert a.explained_by.startswith("darts (") and "permutation" in a.explained_by
    assert ours.last_attribution is None
    # the same permutations through the same float32 network (batched differently): equal to float32 rounding of the forecast
    scale = float(np.abs(dlinear.predict(H, series=TARGET, verbose=False).values()).max())
    atol = 64 * np.finfo(np.float32).eps * max(1.0, scale)
    np.testing.assert_allclose(a.get_explanation(1).values(), b.get_explanation(1).values(), rtol=0, atol=atol)
    assert list(a.get_explanation(1).components) == list(b.get_explanation(1).components)
    single = ours.explain_single(TARGET[16:26], max_evals=20)
    assert single.explained_by == a.explained_by


def test_default_is_rnnshap_and_says_so(dlinear: Any) -> None:
    _quiet()
    result = ShapExplainer(dlinear, TARGET[:18]).explain(TARGET[14:26])
    assert result.explained_by == "rnnshap (deepshap)"
    _adds_up_to_historical_forecasts(dlinear, result, TARGET[14:26], "DLinear")


def test_regression_model_is_answered_by_darts_own_explainer() -> None:
    """A darts regression model (not a network) is explained by darts' own explainer (shap's LinearExplainer
    here, exact for a linear model): the same values as darts.explainability.ShapExplainer."""
    _quiet()
    model = LinearRegressionModel(lags=3, output_chunk_length=2).fit(TARGET)
    a = ShapExplainer(model).explain()
    b = DartsShapExplainer(model).explain()
    assert a.explained_by.startswith("darts (")
    for h in (1, 2):
        np.testing.assert_array_equal(a.get_explanation(h).values(), b.get_explanation(h).values())


def test_darts_own_errors_for_darts_own_checks(dlinear: Any) -> None:
    """darts' words and exception types for darts' checks (darts' own explainer raises the same)."""
    _quiet()
    for cls in (ShapExplainer, DartsShapExplainer):
        with pytest.raises(ValueError, match="Only models of type `SKLearnModel` or `TorchForecastingModel` are supported"):
            cls(NaiveSeasonal(K=1).fit(TARGET))
        with pytest.raises(ValueError, match=r"Invalid `shap_method='invalid'`"):
            cls(dlinear, TARGET[:18], shap_method="invalid")
        explainer = cls(dlinear, TARGET[:18])
        with pytest.raises(ValueError, match=r"All `horizons` must be `>=1`\."):
            explainer.explain(TARGET[14:26], horizons=[0])
        with pytest.raises(ValueError, match=r"At least one of the `horizons` is larger than `output_chunk_length`\."):
            explainer.explain(TARGET[14:26], horizons=[H + 1])
        with pytest.raises(ValueError, match=r"All `horizons` must be `>=1`\."):
            explainer.summary_plot(TARGET[14:26], horizons=[0])
        with pytest.raises(ValueError, match="Unknown SHAP method `'invalid'`."):
            explainer.explainer._build_explainer(model=dlinear, background_arr=np.array([0.0]), shap_method="invalid")
        with pytest.raises(ValueError, match="Only models of type `TorchForecastingModel` are supported."):
            explainer.explainer._validate_model(model=NaiveSeasonal(K=1))


def test_rnnshap_arguments_with_darts_own_explainer_are_refused(dlinear: Any) -> None:
    with pytest.raises(rnnshap.InputError, match=r"darts' own ShapExplainer.*\['budget', 'method'\]"):
        ShapExplainer(dlinear, TARGET[:18], shap_method="kernel", method="shapley", budget=100)
    with pytest.raises(rnnshap.InputError, match=r"LinearRegressionModel.*\['n'\]"):
        ShapExplainer(LinearRegressionModel(lags=3).fit(TARGET), n=2)


# -- a shifted model whose covariates end too soon ------------------------------------------------
def test_shifted_model_with_covariates_ending_too_soon_raises_as_predict_does() -> None:
    """output_chunk_shift=2: darts' predict raises when the past covariates end one step too early; explain_single
    raises too (it used to explain an earlier forecast, silently), and with covariates long enough it adds up
    to predict from the forecast predict makes."""
    _quiet()
    torch.manual_seed(0)
    model = DLinearModel(input_chunk_length=L, output_chunk_length=H, output_chunk_shift=2, kernel_size=3, **TRAINER)
    model.fit(TARGET, past_covariates=COV, verbose=False)
    short = COV[: len(TARGET) - 1]
    with pytest.raises(ValueError, match="do not extend far enough"):
        model.predict(H, series=TARGET, past_covariates=short, verbose=False)
    ex = ShapExplainer(model, TARGET[:24], background_past_covariates=COV)
    with pytest.raises(ValueError, match="end too soon"):
        ex.explain_single(TARGET, foreground_past_covariates=short)
    result = ex.explain_single(TARGET, foreground_past_covariates=COV)
    forecast = model.predict(H, series=TARGET, past_covariates=COV, verbose=False)
    explanation = result.get_explanation()
    assert explanation.start_time() == forecast.start_time()
    e = result.get_shap_explanation_object()
    _assert_adds_up(e.values.sum(1) + e.base_values, forecast.values()[:, 0], "shifted DLinear, explain_single")


# -- TFT's cached attention mask and relative index ------------------------------------------
def _tft(**kwargs: Any) -> Any:
    _quiet()
    torch.manual_seed(0)
    return TFTModel(
        input_chunk_length=L, output_chunk_length=H, hidden_size=4, lstm_layers=1, num_attention_heads=1,
        hidden_continuous_size=2, likelihood=None, loss_fn=torch.nn.MSELoss(), **kwargs, **TRAINER,
    )  # fmt: skip


def test_tft_shapley_over_several_windows_adds_up() -> None:
    """TFTModel, method='shapley', explain() over several windows: TFT caches its attention mask per batch size; the
    explanation used to fail in TFT's masked_fill. Every forecast's model output is darts' own forecast, and (the
    Shapley values being efficient) values + base add up to it."""
    model = _tft().fit(TARGET, future_covariates=COV, verbose=False)
    ex = ShapExplainer(model, TARGET[:18], background_future_covariates=COV, method="shapley", budget=300, random_state=0)
    result = ex.explain(TARGET[14:26], foreground_future_covariates=COV)
    _adds_up_to_historical_forecasts(model, result, TARGET[14:26], "TFT shapley", future_covariates=COV)


def test_tft_relative_index_explain_single_after_explain() -> None:
    """TFTModel(add_relative_index=True): explain_single after explain (TFT's relative index, cached per batch size)
    used to fail inside TFT's forward; both add up to darts' own forecasts."""
    model = _tft(add_relative_index=True).fit(TARGET, past_covariates=COV, verbose=False)
    ex = ShapExplainer(model, TARGET[:18], background_past_covariates=COV)
    result = ex.explain(TARGET[14:26], foreground_past_covariates=COV)
    _adds_up_to_historical_forecasts(model, result, TARGET[14:26], "TFT relative index", past_covariates=COV)
    single = ex.explain_single(TARGET[14:26], foreground_past_covariates=COV)
    forecast = model.predict(H, series=TARGET[14:26], past_covariates=COV, verbose=False)
    e = single.get_shap_explanation_object()
    _assert_adds_up(e.values.sum(1) + e.base_values, forecast.values()[:, 0], "TFT relative index, explain_single")


# -- static covariates given per target component --------------------------------------------------
def test_static_covariates_per_component_are_labelled_by_their_values() -> None:
    """Static covariates with one row per target component: darts names them variable-major
    (``size_statcov_target_y1``, ``size_statcov_target_y2``, ``flag_...``) while each window holds them component-major;
    the names used to show other entries' values. Truths: get_feature_values shows, under each name, the value the
    static covariates table holds there; a covariate equal in every series (``flag``) gets exactly 0 (every reference
    holds the same value); and every forecast adds up to darts' predict."""
    _quiet()
    r = np.random.default_rng(2)

    def one(i: int) -> TimeSeries:
        s = TimeSeries.from_values(r.normal(size=(24, 2)).cumsum(0).astype(np.float32), columns=["y1", "y2"])
        table = pd.DataFrame({"size": [float(i), 10.0 + i], "flag": [1.0, 1.0]}, index=["y1", "y2"])
        return s.with_static_covariates(table)

    series = [one(i) for i in range(3)]
    torch.manual_seed(0)
    model = TiDEModel(
        input_chunk_length=L, output_chunk_length=H, hidden_size=8, decoder_output_dim=2, temporal_decoder_hidden=4, **TRAINER
    )
    model.fit(series, verbose=False)
    ex = ShapExplainer(model, series)
    names = ["size_statcov_target_y1", "size_statcov_target_y2", "flag_statcov_target_y1", "flag_statcov_target_y2"]
    assert ex.explainer.feature_names[-4:] == names
    result = ex.explain(series[1])
    table = series[1].static_covariates
    for h in (1, H):
        for component in ("y1", "y2"):
            features = result.get_feature_values(h, component)
            for name in names:
                variable, target = name.split("_statcov_target_")
                np.testing.assert_array_equal(features[name].values()[:, 0], table.loc[target, variable])
            values = result.get_explanation(h, component)
            for name in names[2:]:
                assert not values[name].values().any(), f"{name} is the same in every series, yet has a share"
    single = ex.explain_single(series[1])
    truth = model.predict(H, series=series[1], verbose=False, show_warnings=False)
    for component in ("y1", "y2"):
        e = single.get_shap_explanation_object(component)
        _assert_adds_up(e.values.sum(1) + e.base_values, truth[component].values()[:, 0], f"TiDE {component}")


# -- position encoders --------------------------------------------------------------------------
def test_position_encoders_add_up_to_historical_forecasts() -> None:
    """A relative position encoder (darts indexes it from the end of the series it is given): every forecast of explain()
    adds up to darts' historical_forecasts (retrain=False) at its window, which reads the encoder as positioned in the
    whole series (docs/forecasting.md says so); explain_single adds up to predict."""
    _quiet()
    torch.manual_seed(0)
    model = DLinearModel(
        input_chunk_length=L, output_chunk_length=H, kernel_size=3, add_encoders={"position": {"past": ["relative"]}}, **TRAINER
    ).fit(TARGET, verbose=False)
    ex = ShapExplainer(model, TARGET[:18])
    result = ex.explain(TARGET[10:26])
    _adds_up_to_historical_forecasts(model, result, TARGET[10:26], "DLinear, relative position encoder")
    single = ex.explain_single(TARGET[10:26])
    forecast = model.predict(H, series=TARGET[10:26], verbose=False)
    e = single.get_shap_explanation_object()
    _assert_adds_up(e.values.sum(1) + e.base_values, forecast.values()[:, 0], "DLinear, relative position encoder, single")


def test_stationarity_check_is_darts_default_where_darts_answers(caplog: pytest.LogCaptureFixture) -> None:
    """darts' own explainer checks the background's stationarity by default (a logged warning); where it answers
    through rnnshap's door, it does the same (darts' own suite tests this)."""
    _quiet()
    logging.getLogger("darts").setLevel(logging.WARNING)
    model = LinearRegressionModel(lags=3).fit(TARGET)
    with caplog.at_level(logging.WARNING):
        DartsShapExplainer(model)
    theirs = [r.getMessage() for r in caplog.records if "stationary" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ShapExplainer(model)
    ours = [r.getMessage() for r in caplog.records if "stationary" in r.getMessage()]
    assert theirs and ours == theirs


# -- a foreground of one or two windows -------------------------------------------------------------
@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("index", ["dates", "integers"])
def test_explain_a_foreground_of_one_or_two_windows(dlinear: Any, extra: int, index: str) -> None:
    """A foreground exactly input_chunk_length long (one forecast) or one step longer: darts' result assembly could
    not infer the time index's frequency from one or two stamps (darts' own explainer crashes the same way); the
    forecasts add up to darts' historical forecasts, the last to predict."""
    _quiet()
    model, series = dlinear, TARGET
    if index == "integers":
        series = TimeSeries.from_values(TARGET.values(), columns=["y"])
        torch.manual_seed(0)
        model = DLinearModel(input_chunk_length=L, output_chunk_length=H, kernel_size=3, **TRAINER).fit(series, verbose=False)
    foreground = series[10 : 10 + L + extra]
    result = ShapExplainer(model, series[:18]).explain(foreground)
    assert len(result.get_explanation(1)) == 1 + extra
    _adds_up_to_historical_forecasts(model, result, foreground, f"{index}, {1 + extra} window(s)", minimum=1)
    last = result.get_shap_explanation_object(1)
    forecast = model.predict(H, series=foreground, verbose=False)
    assert result.get_explanation(1).end_time() == forecast.start_time()
    _assert_adds_up(last.values.sum(1)[-1:] + last.base_values[-1:], forecast.values()[:1, 0], f"{index}, last forecast")
