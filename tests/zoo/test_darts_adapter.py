"""rnnshap.darts.ShapExplainer: darts' call and result types, values held to darts' own truths.

The truths are independent of rnnshap: darts' own ``predict`` / ``historical_forecasts`` (the values of
every forecast plus its base value add up to what darts returns, in the user's units), the recipe path
(the network's ``forward(PLModuleInput)`` and ``rnnshap.DeepExplainer`` on windows sliced by hand from the
series, docs/recipes.md), the closed form of a linear model (DLinear: DeepSHAP = Shapley = w · (x − mean
background), w from darts' own ``predict`` of a float64 model), and zeros additivity cannot see (the past covariates
after the forecast start for the first output chunk; RNNModel's first historic future covariate).

Models are tiny and fitted once per module for one epoch on a short random walk.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("darts")
pytest.importorskip("shap")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
from darts import TimeSeries  # noqa: E402
from darts.dataprocessing.transformers import Scaler  # noqa: E402
from darts.explainability.explainability_result import ShapExplainabilityResult, ShapSingleExplainabilityResult  # noqa: E402
from darts.models import (  # noqa: E402
    BlockRNNModel,
    DLinearModel,
    NBEATSModel,
    NHiTSModel,
    RNNModel,
    TCNModel,
    TFTModel,
    TiDEModel,
    TSMixerModel,
)
from darts.utils.data.torch_datasets.utils import ModuleStage, PLModuleInput  # noqa: E402
from darts.utils.likelihood_models import GaussianLikelihood, QuantileRegression  # noqa: E402
from torch import nn  # noqa: E402

import rnnshap  # noqa: E402
from rnnshap.darts import ShapExplainer, forecast_module, standard_errors  # noqa: E402

from ..models.torch import Composite  # noqa: E402

L, H, N = 6, 2, 5  # input chunk, output chunk, auto-regressive horizon
TRAINER = dict(
    pl_trainer_kwargs=dict(
        enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu"
    ),
    random_state=0, n_epochs=1, batch_size=16,
)  # fmt: skip
TOL = 1e-5  # float32 models: relative to max(1, |forecast|)

rng = np.random.default_rng(0)
TARGET = TimeSeries.from_values(rng.normal(size=(30, 1)).cumsum(0).astype(np.float32) + 10.0, columns=["y"])
COV = TimeSeries.from_values(rng.normal(size=(40, 2)).astype(np.float32), columns=["a", "b"])
BACKGROUND = TARGET[:18]  # 18 - L + 1 = 13 windows at n = H: every one of them is used, no sampling
FOREGROUND = TARGET[14:26]


def _quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("darts").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


BUILDERS: dict[str, tuple[Any, str]] = {
    "RNNModel": (lambda: RNNModel(input_chunk_length=L, model="LSTM", hidden_dim=8, training_length=L + 2, **TRAINER), "f"),
    "BlockRNNModel": (
        lambda: BlockRNNModel(input_chunk_length=L, output_chunk_length=H, model="GRU", hidden_dim=8, **TRAINER), "p"
    ),
    "TCNModel": (lambda: TCNModel(input_chunk_length=L, output_chunk_length=H, kernel_size=2, num_filters=4, **TRAINER), "p"),
    "NBEATSModel": (
        lambda: NBEATSModel(
            input_chunk_length=L, output_chunk_length=H, num_stacks=2, num_blocks=1, num_layers=2, layer_widths=8, **TRAINER
        ),
        "p",
    ),
    "NHiTSModel": (
        lambda: NHiTSModel(
            input_chunk_length=L, output_chunk_length=H, num_stacks=2, num_blocks=1, num_layers=2, layer_widths=8, **TRAINER
        ),
        "p",
    ),
    "TiDEModel": (
        lambda: TiDEModel(input_chunk_length=L, output_chunk_length=H, hidden_size=8, decoder_output_dim=4,
                          temporal_decoder_hidden=4, temporal_width_past=0, temporal_width_future=0,
                          use_reversible_instance_norm=True, **TRAINER),
        "pf",
    ),  # fmt: skip
    "DLinearModel": (lambda: DLinearModel(input_chunk_length=L, output_chunk_length=H, kernel_size=3, **TRAINER), "pf"),
    "TSMixerModel": (
        lambda: TSMixerModel(input_chunk_length=L, output_chunk_length=H, hidden_size=8, ff_size=8, num_blocks=1, **TRAINER), "pf"
    ),
    "TFTModel": (
        lambda: TFTModel(input_chunk_length=L, output_chunk_length=H, hidden_size=4, lstm_layers=1, num_attention_heads=1,
                         hidden_continuous_size=2, likelihood=QuantileRegression([0.1, 0.5, 0.9]), **TRAINER),
        "pf",
    ),  # fmt: skip
    "BlockRNNModel-quantiles": (
        lambda: BlockRNNModel(input_chunk_length=L, output_chunk_length=H, model="LSTM", hidden_dim=8,
                              likelihood=QuantileRegression([0.1, 0.5, 0.9]), **TRAINER),
        "p",
    ),  # fmt: skip
    "TiDEModel-gaussian": (
        lambda: TiDEModel(input_chunk_length=L, output_chunk_length=H, hidden_size=8, decoder_output_dim=4,
                          temporal_decoder_hidden=4, likelihood=GaussianLikelihood(), **TRAINER),
        "p",
    ),  # fmt: skip
}


def covariates(kinds: str, prefix: str = "") -> dict[str, TimeSeries]:
    out = {}
    if "p" in kinds:
        out[f"{prefix}past_covariates"] = COV
    if "f" in kinds:
        out[f"{prefix}future_covariates"] = COV
    return out


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    """Every model of BUILDERS, fitted once (built lazily: a test that needs one model fits one)."""
    class Lazy(dict):
        def __missing__(self, name: str) -> Any:
            _quiet()
            torch.manual_seed(0)
            build, kinds = BUILDERS[name]
            model = build()
            model.fit(TARGET, verbose=False, **covariates(kinds))
            self[name] = model
            return model

    return Lazy()


def explainer(model: Any, kinds: str, **kwargs: Any) -> ShapExplainer:
    _quiet()
    return ShapExplainer(model, BACKGROUND, **covariates(kinds, "background_"), **kwargs)


def _predict(model: Any, n: int, series: TimeSeries, kinds: str) -> TimeSeries:
    likelihood = model.supports_likelihood_parameter_prediction
    return model.predict(
        n, series=series, verbose=False, show_warnings=False, predict_likelihood_parameters=likelihood, **covariates(kinds)
    )


def _assert_adds_up(totals: np.ndarray, truth: np.ndarray, where: str) -> None:
    error = np.abs(totals - truth) / np.maximum(1.0, np.abs(truth))
    assert error.max() <= TOL, f"{where}: values + base miss darts' forecast by {error.max():.3g} (relative)"


# -- one truth: every forecast of explain() adds up to darts' own forecasts ----------------------------------
@pytest.mark.parametrize("name", ["RNNModel", "BlockRNNModel"])
@pytest.mark.parametrize("n", [None, N])
def test_explain_adds_up_to_historical_forecasts(fitted: Any, name: str, n: int | None) -> None:
    """Every forecast explain() explains (every window of the foreground), every horizon up to n (beyond
    output_chunk_length: darts' auto-regression), adds up to darts' ``historical_forecasts``."""
    model, kinds = fitted[name], BUILDERS[name][1]
    ex = explainer(model, kinds, n=n)
    horizon = ex.n
    result = ex.explain(FOREGROUND, **covariates(kinds, "foreground_"))
    assert isinstance(result, ShapExplainabilityResult)
    forecasts = model.historical_forecasts(
        FOREGROUND, forecast_horizon=horizon, stride=1, retrain=False, last_points_only=False, overlap_end=True,
        verbose=False, show_warnings=False, **covariates(kinds),
    )  # fmt: skip
    by_start = {f.start_time(): f.values()[:, 0] for f in forecasts}
    checked = 0
    for h in range(1, horizon + 1):
        e = result.get_shap_explanation_object(h)
        totals = e.values.sum(1) + e.base_values
        for row, start in enumerate(result.get_explanation(h).time_index):
            if start in by_start:
                _assert_adds_up(totals[row], by_start[start][h - 1], f"{name} forecast at {start}, horizon {h}")
                checked += 1
    assert checked >= (len(FOREGROUND) - L - horizon) * horizon  # (darts stops where its covariates end)


ALL = [
    "RNNModel", "BlockRNNModel", "TCNModel", "NBEATSModel", "NHiTSModel", "TiDEModel", "DLinearModel", "TSMixerModel", "TFTModel"
]


@pytest.mark.parametrize("name", ALL + ["BlockRNNModel-quantiles", "TiDEModel-gaussian"])
def test_explain_single_adds_up_to_predict(fitted: Any, name: str) -> None:
    """explain_single (the forecast of ``predict(n, series=...)``) adds up to darts' ``predict`` for every
    component (likelihood models: every likelihood parameter, darts' ``predict_likelihood_parameters=True``),
    at ``n = output_chunk_length`` and, for the point forecasters, at n = 5 by auto-regression."""
    model, kinds = fitted[name], BUILDERS[name][1]
    horizons = [None] if model.likelihood is not None else [None, N]
    for n in horizons:
        ex = explainer(model, kinds, n=n)
        result = ex.explain_single(FOREGROUND, **covariates(kinds, "foreground_"))
        assert isinstance(result, ShapSingleExplainabilityResult)
        truth = _predict(model, ex.n, FOREGROUND, kinds)
        assert list(result.available_components) == list(truth.components)
        for component in result.available_components:
            e = result.get_shap_explanation_object(component)
            assert e.values.shape == (ex.n, len(ex.explainer.feature_names))
            _assert_adds_up(e.values.sum(1) + e.base_values, truth[component].values()[:, 0], f"{name} n={ex.n} {component}")


def test_several_series_static_covariates_and_components() -> None:
    """Several series with static covariates and a two-component target (TiDE reads the static
    covariates): darts' ``statcov`` names, one result per series, and every component's forecast
    (auto-regressive, n = 4) adds up to darts' ``predict``."""
    _quiet()
    import pandas as pd

    r = np.random.default_rng(1)

    def one(i: int) -> TimeSeries:
        s = TimeSeries.from_values(r.normal(size=(24, 2)).cumsum(0).astype(np.float32), columns=["u", "v"])
        return s.with_static_covariates(pd.DataFrame({"size": [float(i)], "kind": [float(i % 2)]}))

    series = [one(i) for i in range(3)]
    cov = [TimeSeries.from_values(r.normal(size=(30, 1)).astype(np.float32), columns=["c"]) for _ in range(3)]
    torch.manual_seed(0)
    model = TiDEModel(
        input_chunk_length=L, output_chunk_length=H, hidden_size=8, decoder_output_dim=2, temporal_decoder_hidden=4, **TRAINER
    )
    model.fit(series, past_covariates=cov, verbose=False)
    ex = ShapExplainer(model, series, background_past_covariates=cov, n=4)
    assert ex.explainer.feature_names[-2:] == ["size_statcov_target_global_components", "kind_statcov_target_global_components"]
    result = ex.explain(series[:2], foreground_past_covariates=cov[:2])
    assert isinstance(result.get_explanation(1, "u"), list) and len(result.get_explanation(1, "u")) == 2
    single = ex.explain_single(series[1][:18], foreground_past_covariates=cov[1])
    truth = model.predict(4, series=series[1][:18], past_covariates=cov[1], verbose=False, show_warnings=False)
    for c in ("u", "v"):
        e = single.get_shap_explanation_object(c)
        _assert_adds_up(e.values.sum(1) + e.base_values, truth[c].values()[:, 0], f"TiDE component {c}")


# -- the recipe path ---------------------------------------------------------------------------------------
def _recipe(m: nn.Module, past_target: torch.Tensor, past_covariates: torch.Tensor) -> torch.Tensor:
    """docs/recipes.md's darts wrapper (tests/zoo/test_recipes.py runs the page as written): the fitted module's
    forward in the predict stage."""
    x_in = PLModuleInput(past_target=past_target, past_covariates=past_covariates, stage=ModuleStage.PREDICT)
    return m.module(x_in).prediction.flatten(1)


def _windows_by_hand(series: TimeSeries, starts: range) -> list[torch.Tensor]:
    target, cov = series.values(), COV.values()
    offset = int(series.start_time())
    pt = np.stack([target[t - offset - L : t - offset] for t in starts])
    pc = np.stack([cov[t - L : t] for t in starts])
    return [torch.from_numpy(pt), torch.from_numpy(pc)]


def test_equals_the_recipe_path(fitted: Any) -> None:
    """BlockRNNModel: the same values as rnnshap.DeepExplainer on the recipe wrapper, with every window
    sliced by hand from the series, and darts' feature names on the right columns."""
    model = fitted["BlockRNNModel"]
    ex = explainer(model, "p")
    result = ex.explain(FOREGROUND, foreground_past_covariates=COV)
    starts = list(result.get_explanation(1).time_index)
    background = _windows_by_hand(BACKGROUND, range(L, len(BACKGROUND) + 1))
    assert background[0].shape[0] == ex.explainer.background_windows[0].shape[0]  # all the background's windows
    X = _windows_by_hand(FOREGROUND, range(starts[0], starts[-1] + 1))
    recipe = rnnshap.DeepExplainer(Composite(_recipe, module=model.model).eval(), background)
    phi_target, phi_cov = recipe.shap_values(X)  # (E, L, 1, H), (E, L, 2, H)
    names = ex.explainer.feature_names
    for h in (1, H):
        values = result.get_explanation(h)
        for lag in range(1, L + 1):
            np.testing.assert_allclose(
                values[f"y_target_lag-{lag}"].values()[:, 0], phi_target[:, L - lag, 0, h - 1], rtol=1e-5, atol=1e-6
            )
            for c, comp in enumerate(["a", "b"]):
                np.testing.assert_allclose(
                    values[f"{comp}_pastcov_lag-{lag}"].values()[:, 0], phi_cov[:, L - lag, c, h - 1], rtol=1e-5, atol=1e-6
                )
        np.testing.assert_allclose(result.get_shap_explanation_object(h).base_values, recipe.expected_value[h - 1], rtol=1e-6)
    assert names[:2] == ["y_target_lag-6", "y_target_lag-5"] and names[L] == "a_pastcov_lag-6"


def _network_recipe(m: nn.Module, *tensors: torch.Tensor) -> torch.Tensor:
    """The recipe wrapper for any darts model: the network's forward in the predict stage on named window
    tensors, then what darts' ``_produce_predict_output`` does with the network's output (the likelihood's
    parameters, or the point forecast)."""
    x_in = PLModuleInput(**dict(zip(m.names, tensors, strict=True)), stage=ModuleStage.PREDICT)
    prediction = m.module(x_in).prediction
    likelihood = m.module.likelihood
    prediction = likelihood.predict_likelihood_parameters(prediction) if likelihood else prediction.squeeze(-1)
    return prediction.flatten(1)


@pytest.mark.parametrize("name", ALL + ["BlockRNNModel-quantiles", "TiDEModel-gaussian"])
def test_every_model_equals_the_recipe_path(fitted: Any, name: str) -> None:
    """Every model: the adapter's values equal rnnshap.DeepExplainer on the recipe wrapper (the network's
    forward, no darts prediction loop) on the same windows (darts' own, as the adapter built them)."""
    model, kinds = fitted[name], BUILDERS[name][1]
    ex = explainer(model, kinds)
    result = ex.explain(FOREGROUND, **covariates(kinds, "foreground_"))
    adapter = ex.explainer
    names = [field for field, _ in adapter._layout()]
    X = adapter._windows(adapter.create_shap_input(FOREGROUND, *[
        covariates(kinds).get(k) for k in ("past_covariates", "future_covariates")
    ],
                                                   input_type="foreground")[0])  # fmt: skip
    training = model.model.training
    recipe = rnnshap.DeepExplainer(Composite(_network_recipe, module=model.model, names=names).eval(), adapter.background_windows)
    values = recipe.shap_values(X, check_additivity=False)
    values = values if isinstance(values, list) else [values]
    flat = np.concatenate([v.reshape(v.shape[0], -1, v.shape[-1]) for v in values], axis=1)  # (E, F, H · params)
    model.model.train(training)
    for h in result.available_horizons:
        for c, component in enumerate(result.available_components):
            column = (h - 1) * len(result.available_components) + c
            np.testing.assert_allclose(result.get_explanation(h, component).values(), flat[:, :, column], rtol=1e-5, atol=1e-6)


# -- zeros additivity cannot see -----------------------------------------------------------------------------
def test_zero_for_what_the_model_cannot_read(fitted: Any) -> None:
    """The first output chunk of predict(n > output_chunk_length) cannot read the past covariates after the
    forecast start (darts feeds them in only when it rolls the window): exactly 0. RNNModel pairs the
    target at t with the covariates at t + 1: its first historic future covariate gets exactly 0."""
    ex = explainer(fitted["BlockRNNModel"], "p", n=N)
    result = ex.explain(FOREGROUND, foreground_past_covariates=COV)
    later = [name for name in ex.explainer.feature_names if "_pastcov_lag" in name and not name.split("lag")[1].startswith("-")]
    assert len(later) == 2 * (N - H)
    for h in range(1, H + 1):
        rnnshap_zero = result.get_explanation(h)[later].values()
        assert np.count_nonzero(rnnshap_zero) == 0, f"horizon {h} got values from past covariates after the forecast start"
    assert np.count_nonzero(result.get_explanation(N)[later].values()) > 0  # the last chunk reads them
    ex = explainer(fitted["RNNModel"], "f")
    values = ex.explain(FOREGROUND, foreground_future_covariates=COV).get_explanation(1)
    assert np.count_nonzero(values[["a_futcov_lag-6", "b_futcov_lag-6"]].values()) == 0


# -- a closed form: DLinear is linear ------------------------------------------------------------------------
T64, COV64 = TARGET.astype(np.float64), COV.astype(np.float64)
COLUMNS = {"target": ["y"], "pastcov": ["a", "b"], "futcov": ["a", "b"]}


def _lagged(name: str) -> tuple[str, int, int]:
    """darts' feature name -> (role, column, lag): ``a_pastcov_lag-2`` -> ("pastcov", 0, -2)."""
    stem, lag = name.rsplit("_lag", 1)
    component, role = stem.rsplit("_", 1)
    return role, COLUMNS[role].index(component), int(lag)


@pytest.fixture(scope="module")
def dlinear64() -> Any:
    """DLinear fitted in float64 (darts builds a float64 network for float64 series)."""
    _quiet()
    torch.manual_seed(0)
    model = DLinearModel(input_chunk_length=L, output_chunk_length=H, kernel_size=3, **TRAINER)
    model.fit(T64, past_covariates=COV64, future_covariates=COV64, verbose=False)
    assert model.model.dtype == torch.float64
    return model


@pytest.mark.parametrize("n", [H, N])
def test_dlinear_closed_form(dlinear64: Any, n: int) -> None:
    """DLinear (and its auto-regressive forecast: linear in its inputs too) is f(x) = W x + b: DeepSHAP
    and the Shapley values are W (x − mean background). W comes from darts alone: ``model.predict(n)`` of
    the float64 model with each input of one forecast moved by 1 (exact for an affine map, up to rounding),
    the input named by darts' feature name (its series, component and lag); x and the background windows
    are sliced by hand from the series. The Shapley mode gets the same values (every walk of an additive
    game is exact), with standard errors of rounding size."""
    model = dlinear64
    foreground, background = T64[14:26], T64[:18]
    kwargs = dict(background_past_covariates=COV64, background_future_covariates=COV64, n=n)
    ex = ShapExplainer(model, background, **kwargs)
    result = ex.explain(foreground, foreground_past_covariates=COV64, foreground_future_covariates=COV64)
    names = result.get_explanation(1).components.tolist()
    lagged = [_lagged(name) for name in names]
    arrays = {"target": T64.values(), "pastcov": COV64.values(), "futcov": COV64.values()}

    # W (F, n): darts' predict(n) from t0 = 26 (the end of the foreground), each input moved by 1 in turn
    t0 = 26
    inputs = []
    for moved in [None, *lagged]:
        a = {role: array.copy() for role, array in arrays.items()}
        if moved is not None:
            role, column, lag = moved
            a[role][t0 + lag, column] += 1.0
        inputs.append(
            {role: TimeSeries.from_values(a[role][:t0] if role == "target" else a[role], columns=COLUMNS[role]) for role in a}
        )
    forecasts = model.predict(
        n, series=[i["target"] for i in inputs], past_covariates=[i["pastcov"] for i in inputs],
        future_covariates=[i["futcov"] for i in inputs], verbose=False, show_warnings=False,
    )  # fmt: skip
    base = forecasts[0].values()[:, 0]
    W = np.stack([f.values()[:, 0] - base for f in forecasts[1:]])  # (F, n)
    assert np.count_nonzero(W) > len(names)  # the test is not vacuous: the forecast reads the inputs
    later = [j for j, (role, _, lag) in enumerate(lagged) if role == "pastcov" and lag >= 0]
    assert np.all(W[later, :H] == 0)  # darts' own zeros: the first chunk cannot read the later past covariates

    # x and the mean background window, by darts' feature name, sliced by hand
    starts = list(result.get_explanation(1).time_index)
    background_starts = range(L, len(background) + 1)
    assert ex.explainer.background_arr.shape[0] == len(background_starts)  # every background window is used
    x = np.array([[arrays[role][t + lag, column] for role, column, lag in lagged] for t in starts])  # (E, F)
    mean = np.array([[arrays[role][t + lag, column] for role, column, lag in lagged] for t in background_starts]).mean(0)
    closed = np.einsum("fk,ef->efk", W, x - mean)  # (E, F, n)
    shapley = ShapExplainer(model, background, method="shapley", budget=400, random_state=0, **kwargs).explain(
        foreground, foreground_past_covariates=COV64, foreground_future_covariates=COV64
    )
    for h in range(1, n + 1):
        np.testing.assert_allclose(result.get_explanation(h).values(), closed[:, :, h - 1], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(shapley.get_explanation(h).values(), closed[:, :, h - 1], rtol=1e-10, atol=1e-10)
        assert standard_errors(shapley, h).values().max() < 1e-9


# -- the Shapley mode ---------------------------------------------------------------------------------------
def test_shapley_mode_carries_standard_errors(fitted: Any) -> None:
    """method="shapley" returns darts' result types with ``error_std`` on the shap objects and
    ``standard_errors(result, horizon)``; the estimate is efficient (adds up to predict exactly), and at
    a budget covering every coalition it is exact (standard errors 0) and equals the lag players'
    Shapley values enumerated by hand from darts' own forward."""
    model = fitted["BlockRNNModel"]
    ex = explainer(model, "p", method="shapley", budget=300, random_state=0)
    result = ex.explain(FOREGROUND, foreground_past_covariates=COV)
    truth = model.historical_forecasts(FOREGROUND, past_covariates=COV, forecast_horizon=H, retrain=False, last_points_only=False,
                                       verbose=False, show_warnings=False)  # fmt: skip
    e = result.get_shap_explanation_object(H)
    totals = (e.values.sum(1) + e.base_values)[: len(truth)]
    _assert_adds_up(totals, np.array([f.values()[H - 1, 0] for f in truth]), "shapley mode")
    se = standard_errors(result, H)
    assert se.components.tolist() == result.get_explanation(H).components.tolist() and (se.values() > 0).any()
    single = ex.explain_single(FOREGROUND, foreground_past_covariates=COV)
    assert standard_errors(single).values().shape == (H, len(ex.explainer.feature_names))
    with pytest.raises(rnnshap.InputError, match="method='shapley'"):
        standard_errors(explainer(model, "p").explain(FOREGROUND, foreground_past_covariates=COV), 1)


def test_shapley_mode_exact_on_few_players(fitted: Any) -> None:
    """L=2 window, no covariates: 2 lag players; at a budget covering 2^2 coalitions x background the
    values are exact and equal the Shapley values computed here from darts' ``predict`` on spliced windows."""
    _quiet()
    model = BlockRNNModel(input_chunk_length=2, output_chunk_length=1, model="GRU", hidden_dim=4, **TRAINER)
    model.fit(TARGET, verbose=False)
    background = TARGET[:12]  # 11 windows
    ex = ShapExplainer(model, background, method="shapley", budget=10_000)
    result = ex.explain_single(FOREGROUND)
    e = result.get_shap_explanation_object()
    assert np.all(ex.last_attribution.exact) and np.all(e.error_std == 0)
    x = FOREGROUND.values()[-2:, 0]
    refs = np.stack([background.values()[t - 2 : t, 0] for t in range(2, 13)])

    def v(mask: tuple[bool, bool]) -> float:  # the game: mean over references of darts' predict on spliced windows
        rows = [np.where(mask, x, r) for r in refs]
        series = [TimeSeries.from_values(row.astype(np.float32)[:, None], columns=["y"]) for row in rows]
        return float(np.mean([p.values()[0, 0] for p in model.predict(1, series=series, verbose=False, show_warnings=False)]))

    phi0 = 0.5 * ((v((True, False)) - v((False, False))) + (v((True, True)) - v((False, True))))
    phi1 = 0.5 * ((v((False, True)) - v((False, False))) + (v((True, True)) - v((True, False))))
    np.testing.assert_allclose(e.values[0], [phi0, phi1], atol=1e-6)


def _spectral(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A head with an operation rnnshap has no DeepSHAP rule for (the phase of an FFT of the hidden state: the
    transform is linear, its angle has no rule)."""
    return m.fc(x + 0.1 * torch.fft.rfft(x, dim=-1).angle().mean(-1, keepdim=True))


def test_refused_by_name_with_the_shapley_fallback() -> None:
    """A network with an operation DeepSHAP has no exact rule for: DeepSHAP refuses it naming the model,
    the operation and method='shapley'; the Shapley mode explains it from the forward alone, adding up
    to darts' predict."""
    _quiet()
    torch.manual_seed(0)
    model = BUILDERS["BlockRNNModel"][0]()
    model.fit(TARGET, past_covariates=COV, verbose=False)
    model.model.fc = Composite(_spectral, fc=model.model.fc)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)darts BlockRNNModel.*method='shapley'.*angle"):
        explainer(model, "p").explain_single(FOREGROUND, foreground_past_covariates=COV)
    result = explainer(
        model, "p", method="shapley", budget=200, random_state=0
    ).explain_single(FOREGROUND, foreground_past_covariates=COV)
    e = result.get_shap_explanation_object()
    _assert_adds_up(
        e.values.sum(1) + e.base_values, _predict(model, H, FOREGROUND, "p").values()[:, 0],
        "spectral BlockRNNModel, Shapley mode"
    )
    assert (e.error_std > 0).any()


# -- scaling -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scaled() -> tuple[Any, Any]:
    """A darts Scaler fitted on TARGET and a BlockRNNModel fitted on the scaled TARGET with past covariates."""
    _quiet()
    torch.manual_seed(0)
    scaler = Scaler().fit(TARGET)
    model = BlockRNNModel(input_chunk_length=L, output_chunk_length=H, model="GRU", hidden_dim=8, **TRAINER)
    model.fit(scaler.transform(TARGET), past_covariates=COV, verbose=False)
    return scaler, model


def test_target_scaler_in_the_users_units(scaled: Any) -> None:
    """With a fitted darts Scaler of the target, the values are in the unscaled series' units and add up
    to ``scaler.inverse_transform(model.predict(n, series=scaler.transform(series)))``."""
    _quiet()
    scaler, model = scaled
    ex = ShapExplainer(model, BACKGROUND, background_past_covariates=COV, n=N, target_scaler=scaler)
    result = ex.explain_single(FOREGROUND, foreground_past_covariates=COV)
    e = result.get_shap_explanation_object()
    truth = scaler.inverse_transform(
        model.predict(N, series=scaler.transform(FOREGROUND), past_covariates=COV, verbose=False, show_warnings=False)
    )
    _assert_adds_up(e.values.sum(1) + e.base_values, truth.values()[:, 0], "scaled BlockRNNModel")
    assert np.allclose(result.get_feature_values().values()[0, :L], FOREGROUND.values()[-L:, 0])  # unscaled inputs


def test_target_scaler_default_background_and_foreground_are_unscaled(scaled: Any) -> None:
    """With no background series darts falls back to ``model.training_series``, which is the *scaled*
    series the model was fit on; with ``target_scaler`` the explainer uses its unscaled copy (the scaler's
    map is part of the explained function and must be applied once). The base value equals the one with
    the unscaled training series given explicitly, and the default foreground (no series: the training
    series) adds up to darts' own forecast from the end of the training series, unscaled."""
    _quiet()
    scaler, model = scaled
    default = ShapExplainer(model, target_scaler=scaler)  # darts' fallback: the training series and covariates
    given = ShapExplainer(model, TARGET, background_past_covariates=COV, target_scaler=scaler)
    truth = scaler.inverse_transform(
        model.predict(H, series=scaler.transform(FOREGROUND), past_covariates=COV, verbose=False, show_warnings=False)
    )
    bases = []
    for ex in (default, given):
        e = ex.explain_single(FOREGROUND, foreground_past_covariates=COV).get_shap_explanation_object()
        _assert_adds_up(
            e.values.sum(1) + e.base_values, truth.values()[:, 0], "default background" if ex is default else "TARGET"
        )
        bases.append(e.base_values)
    np.testing.assert_allclose(
        bases[0], bases[1], rtol=TOL, err_msg="the default background's base value is not the unscaled training series'"
    )
    # no foreground: the training series, explained in its own (unscaled) units
    forecast = scaler.inverse_transform(
        model.predict(H, verbose=False, show_warnings=False)
    ).values()[:, 0]  # from the training series' end
    single = default.explain_single()
    e = single.get_shap_explanation_object()
    _assert_adds_up(e.values.sum(1) + e.base_values, forecast, "explain_single() with no series")
    np.testing.assert_allclose(single.get_feature_values().values()[0, :L], TARGET.values()[-L:, 0], rtol=1e-6)  # unscaled inputs
    result = default.explain(horizons=[1])
    last = result.get_shap_explanation_object(1)
    _assert_adds_up(last.values.sum(1)[-1] + last.base_values[-1], forecast[0], "explain() with no series, last forecast")


# -- darts' own result API and plots --------------------------------------------------------------------------
def test_darts_result_api_and_plots(fitted: Any) -> None:
    """darts' ``get_explanation`` / ``get_feature_values`` / ``get_shap_explanation_object``, names from
    ``create_lagged_component_names``, and darts' ``summary_plot`` / ``force_plot`` run on the result."""
    import matplotlib.pyplot as plt

    model = fitted["TiDEModel"]
    ex = explainer(model, "pf", n=N)
    result = ex.explain(FOREGROUND, foreground_past_covariates=COV, foreground_future_covariates=COV, horizons=[1, N])
    assert result.available_horizons == [1, N]
    names = result.get_explanation(N).components.tolist()
    assert "y_target_lag-1" in names and "a_futcov_lag4" in names and "b_pastcov_lag2" in names
    assert result.get_feature_values(N).values().shape == result.get_explanation(N).values().shape
    shaps = ex.summary_plot(FOREGROUND, foreground_past_covariates=COV, foreground_future_covariates=COV, horizons=N)
    assert set(shaps) == {N}
    ex.force_plot(
        FOREGROUND, foreground_past_covariates=COV, foreground_future_covariates=COV, horizon=N, plot_kwargs={"matplotlib": False}
    )
    plt.close("all")


def test_explaining_never_changes_the_model(fitted: Any) -> None:
    """Parameters, buffers, training flags and darts' cached attributes are bit-identical afterwards
    (TFT caches its attention mask and batch size in its forward)."""
    model = fitted["TFTModel"]
    model.predict(H, series=FOREGROUND, past_covariates=COV, future_covariates=COV, verbose=False)  # inference-mode buffers
    module = model.model
    before = {k: v.clone() for k, v in module.state_dict(keep_vars=True).items()}
    buffers = {k: (None if b is None else b.clone()) for k, b in module.named_buffers()}
    flags = [m.training for m in module.modules()]
    attrs = {k: v for k, v in vars(module).items() if isinstance(v, (int, float, bool, str, type(None)))}
    for kwargs in (dict(), dict(method="shapley", budget=60, random_state=0)):
        explainer(model, "pf", **kwargs).explain_single(
            FOREGROUND, foreground_past_covariates=COV, foreground_future_covariates=COV
        )
    after = module.state_dict(keep_vars=True)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(b, dict(module.named_buffers())[k]) for k, b in buffers.items() if b is not None)
    assert flags == [m.training for m in module.modules()]
    assert attrs == {k: v for k, v in vars(module).items() if isinstance(v, (int, float, bool, str, type(None)))}


def test_forecast_module_as_documented_restores_the_model(fitted: Any) -> None:
    """forecast_module's documented use (``with module.predicting(): module(*windows)``) is darts'
    ``predict(n)`` on windows sliced by hand, and leaves the Lightning module's predict parameters,
    training flags and cached attributes as they were."""
    model = fitted["BlockRNNModel"]
    truth = _predict(model, N, FOREGROUND, "p").values()[:, 0]
    model.predict(1, series=FOREGROUND, past_covariates=COV, verbose=False, show_warnings=False)  # other predict parameters
    pl = model.model
    training = pl.training
    pl.train()
    attrs = {k: v for k, v in vars(pl).items() if isinstance(v, (int, float, bool, str, type(None)))}
    t0 = int(FOREGROUND.end_time()) + 1
    target, cov = TARGET.values(), COV.values()
    windows = [torch.from_numpy(w[None]) for w in (target[t0 - L : t0], cov[t0 - L : t0], cov[t0 : t0 + N - H])]
    module = forecast_module(model, N, ["past_target", "past_covariates", "future_past_covariates"])
    with module.predicting():
        out = module(*windows).detach().numpy()[0]
    _assert_adds_up(out, truth, "forecast_module")
    assert all(m.training for m in pl.modules()), "the training flags were not put back"
    assert attrs == {k: v for k, v in vars(pl).items() if isinstance(v, (int, float, bool, str, type(None)))}
    pl.train(training)


# -- bad input in darts' terms ------------------------------------------------------------------------------
def test_bad_input(fitted: Any) -> None:
    _quiet()
    model = fitted["BlockRNNModel"]
    unfitted = BlockRNNModel(input_chunk_length=L, output_chunk_length=H, **TRAINER)
    with pytest.raises(ValueError, match="must be fitted"):
        ShapExplainer(unfitted, BACKGROUND, background_past_covariates=COV)
    ex = explainer(model, "p")
    with pytest.raises(ValueError, match="shorter than the model's input_chunk_length=6"):
        ex.explain(TARGET[:4], foreground_past_covariates=COV)
    with pytest.raises(ValueError, match=r"larger than `output_chunk_length`"):
        ex.explain(FOREGROUND, foreground_past_covariates=COV, horizons=[3])
    with pytest.raises(ValueError, match="requires past covariates"):
        ex.explain(FOREGROUND)
    with pytest.raises(ValueError, match="fit without future covariates"):
        ex.explain(FOREGROUND, foreground_past_covariates=COV, foreground_future_covariates=COV)
    with pytest.raises(ValueError, match="must contain at least 10 samples"):
        ShapExplainer(model, TARGET[:12], background_past_covariates=COV)
    with pytest.raises(ValueError, match="choose 'deepshap'"):
        ShapExplainer(model, BACKGROUND, background_past_covariates=COV, method="ig")
    with pytest.raises(ValueError, match="the covariates end too soon"):  # darts' predict(5) raises, darts' explainer moves back
        explainer(model, "p", n=N).explain_single(TARGET[:25], foreground_past_covariates=COV[:26])
    with pytest.raises(ValueError, match="feeding back sampled values"):
        explainer(fitted["BlockRNNModel-quantiles"], "p", n=N)


def test_integer_arguments(fitted: Any) -> None:
    """n, horizons, background_num_samples and batch_size are counts: a float (or a bool) is refused by name,
    never truncated (n=2.5 used to explain n=2, horizons=[1.5] to fail inside darts' indexing)."""
    _quiet()
    model = fitted["BlockRNNModel"]
    for kwargs, name in [
        (dict(n=2.5), "n=2.5"), (dict(n=0.5), "n=0.5"), (dict(n=np.float64(2.0)), "n=2.0"), (dict(n=True), "n=True"),
        (
            dict(background_num_samples=10.5), "background_num_samples=10.5"
        ), (dict(background_num_samples=0), "background_num_samples=0"),
        (dict(batch_size=100.5), "batch_size=100.5"), (dict(batch_size=0), "batch_size=0"),
    ]:  # fmt: skip
        with pytest.raises(rnnshap.InputError, match=rf"{name}: .*(integer|at least 1)"):
            explainer(model, "p", **kwargs)
    ex = explainer(model, "p", n=np.int64(N))
    assert ex.n == N and type(ex.n) is int
    for horizons in ([1.5], 1.0, [True], [1, "2"]):
        with pytest.raises(rnnshap.InputError, match=r"horizons=.*integers between 1 and n=5"):
            ex.explain(FOREGROUND, foreground_past_covariates=COV, horizons=horizons)
    assert ex.explain(FOREGROUND, foreground_past_covariates=COV, horizons=np.int64(2)).available_horizons == [2]
    assert ex.explain(FOREGROUND, foreground_past_covariates=COV, horizons=np.array([1, N])).available_horizons == [1, N]


def test_background_sampling_is_seeded(fitted: Any) -> None:
    """background_num_samples draws its windows with a numpy Generator seeded by random_state (default: a
    fixed seed): the same seed gives the same background, and numpy's global random state is untouched."""
    model = fitted["BlockRNNModel"]
    np.random.seed(123)
    state = np.random.get_state()
    draws = [
        explainer(model, "p", background_num_samples=10, **kwargs).explainer.background_arr
        for kwargs in (dict(), dict(), dict(random_state=1), dict(random_state=1), dict(random_state=2))
    ]
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2:] == after[2:], "the global numpy random state moved"
    assert draws[0].shape[0] == 10 and len(BACKGROUND) - L + 1 > 10  # a draw, not every window
    np.testing.assert_array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(draws[2], draws[3])
    assert not np.array_equal(draws[2], draws[4])
    generator = np.random.default_rng(1)
    np.testing.assert_array_equal(
        explainer(model, "p", background_num_samples=10, random_state=generator).explainer.background_arr, draws[2]
    )


def test_import_rnnshap_does_not_import_darts() -> None:
    code = "import sys, rnnshap, rnnshap.forecasting; assert 'darts' not in sys.modules and 'rnnshap.darts' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
