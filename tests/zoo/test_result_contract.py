"""One result contract for every door: each door's result is a ``rnnshap.result.AttributionResult``,
its standard errors in ``stderr`` shaped like ``values`` (None for DeepSHAP), the game and the background stated, and
the names a door used before (``forecast``, ``prediction``, ``game``, pytorch-forecasting's parts) equal to the
contract's."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rnnshap
from rnnshap.backgrounds import DEFAULTS
from rnnshap.result import ABSENT, AttributionResult, stderr_matches

from ..models.torch import RecurrentHead

ROOT = Path(__file__).resolve().parents[2]


def assert_contract(result: Any, method: str) -> None:
    """What every door's result holds, whatever the door."""
    assert isinstance(result, AttributionResult)
    assert result.method == method
    if method == "deepshap":
        assert result.stderr is None and result.exact is None
    else:
        assert result.stderr is not None and stderr_matches(result.values, result.stderr)
        for e in result.stderr.values() if isinstance(result.stderr, dict) else np.atleast_1d(result.stderr):
            assert np.all(np.asarray(e) >= 0)
        assert np.asarray(result.exact).dtype == bool and np.asarray(result.n_evals).min() > 0
    assert result.absent in ABSENT and result.players
    assert isinstance(result.background, str) and result.background


# -- the contract itself ---------------------------------------------------------------------------------------
def test_stderr_is_shaped_like_values_in_each_of_the_three_layouts() -> None:
    a, b = np.zeros((2, 3)), np.zeros((2, 4))
    assert stderr_matches(a, None) and stderr_matches(a, np.ones((2, 3)))
    assert stderr_matches([a, b], [a, b]) and stderr_matches({"x": a, "y": b}, {"x": a, "y": b})
    assert not stderr_matches(a, np.ones((3, 2)))
    assert not stderr_matches([a, b], [a]) and not stderr_matches([a, b], [a, a])
    assert not stderr_matches({"x": a, "y": b}, {"x": a}) and not stderr_matches({"x": a}, [a])
    assert not stderr_matches(a, [a])


def test_a_result_whose_stderr_is_not_shaped_like_its_values_is_not_built() -> None:
    ok = AttributionResult(values=np.zeros((2, 3)), outputs=np.zeros(2), base_values=np.zeros(2), method="shapley",
                           stderr=np.zeros((2, 3)))  # fmt: skip
    assert ok.absent == "background"
    with pytest.raises(ValueError, match="stderr is not shaped like values"):
        AttributionResult(values=np.zeros((2, 3)), outputs=np.zeros(2), base_values=np.zeros(2), method="shapley",
                          stderr=np.zeros((3, 2)))  # fmt: skip
    with pytest.raises(ValueError, match="absent="):
        AttributionResult(values=np.zeros(1), outputs=np.zeros(1), base_values=np.zeros(1), method="deepshap", absent="zero")


def test_no_class_name_is_defined_twice_in_the_package() -> None:
    """Module-level classes (the result types, errors, engines...): each name once in rnnshap/. (The torch modules
    built inside a function per call, each named ``Forecast`` in its own door, are not counted.)"""
    names: Counter[str] = Counter()
    for path in (ROOT / "rnnshap").rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                names[node.name] += 1
    assert len(names) > 100
    assert {name: n for name, n in names.items() if n > 1} == {}


# -- the front doors ---------------------------------------------------------------------------------------------
def _recurrent() -> RecurrentHead:
    torch.manual_seed(0)
    return RecurrentHead("gru", 2, 4, 2)


def test_the_shapley_mode_of_both_front_doors_returns_the_contract() -> None:
    model = _recurrent().double()
    x, background = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64)
    for result in (
        rnnshap.ShapleyExplainer(model, background).shapley_values(x, players="steps", budget=10**4),
        rnnshap.DeepExplainer(model, background).shapley_values(x, players="steps", budget=10**4),
    ):
        assert_contract(result, "shapley")
        assert result.background == "4 rows given" and result.players == "steps"
        with torch.no_grad():  # (the model run on other batches: float64 rounding apart)
            np.testing.assert_allclose(result.outputs, model(x).numpy(), rtol=1e-12, atol=1e-12)


def test_the_forecasting_doors_shared_attribute_returns_the_contract_both_ways() -> None:
    from rnnshap.forecasting import WindowAttribution, attribute

    model = _recurrent().double()
    x, background = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64)
    deep = attribute(model, [background], [x], method="deepshap")
    shapley = attribute(model, [background], [x], method="shapley", budget=10**4)
    for result, method in ((deep, "deepshap"), (shapley, "shapley")):
        assert isinstance(result, WindowAttribution)
        assert_contract(result, method)
        assert [v.shape for v in result.values] == [(3, 5, 2, 2)]
    assert shapley.exact.all()  # 5 steps x 2 channels: every coalition enumerated within the budget
    np.testing.assert_allclose(shapley.values[0].sum((1, 2)), shapley.outputs - shapley.base_values, rtol=1e-10, atol=1e-12)


# -- the library doors ----------------------------------------------------------------------------------------
def test_the_foundation_door_returns_the_contract_with_its_old_names_equal_to_the_new(tmp_path: Path) -> None:
    pytest.importorskip("tsfm_public")
    from .foundation_models import ttm

    model = ttm()
    t = np.arange(40, dtype=np.float64)
    context = np.stack([np.sin(t / 3)[-16:], np.cos(t / 5)[-16:]])
    background = np.stack([np.sin(t / 3 + s)[-16:] for s in (1.0, 2.0, 3.0)])
    deep = rnnshap.foundation.explain(model, context, prediction_length=2, background=background)
    dropped = rnnshap.foundation.explain(model, context, prediction_length=2, method="shapley", players=4)
    assert_contract(deep, "deepshap")
    assert_contract(dropped, "shapley")
    for result in (deep, dropped):
        assert result.forecast is result.outputs and result.game == result.absent
        np.testing.assert_allclose(result.total(), result.forecast, rtol=1e-4, atol=1e-5)
    assert deep.absent == "background" and deep.background == "3 rows given"
    assert dropped.absent == "dropped" and DEFAULTS["foundation"] in dropped.background


def test_a_classifier_door_returns_the_contract_and_states_its_default_background() -> None:
    pytest.importorskip("aeon")
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    import rnnshap.aeon

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 2, 6))
    y = np.array(["a", "b"] * 6)
    clf = KNeighborsTimeSeriesClassifier(n_neighbors=3).fit(X, y)
    result = rnnshap.aeon.explain(clf, X[:3], method="shapley", players="channels", budget=10**4)
    assert_contract(result, "shapley")
    assert result.background == f"3 rows: the default of classifiers, {DEFAULTS['classifiers']}"
    given = rnnshap.aeon.explain(clf, X[:2], background=X[6:10], method="shapley", players="channels", budget=10**4)
    assert given.background == "4 rows given" and given.exact.all()
    np.testing.assert_allclose(given.values.sum((1, 2)), given.outputs - given.base_values, atol=1e-12)


def test_the_pytorch_forecasting_door_returns_the_contract_with_its_old_names_equal_to_the_new() -> None:
    pytest.importorskip("pytorch_forecasting")
    import pandas as pd
    from pytorch_forecasting import RecurrentNetwork, TimeSeriesDataSet

    import rnnshap.pytorch_forecasting as door

    assert door.ForecastExplanation is door.VariableExplanation
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "series": np.repeat(["a", "b"], 12), "time_idx": np.tile(np.arange(12), 2),
        "value": rng.normal(size=24).cumsum() + 5.0,
    })  # fmt: skip
    data = TimeSeriesDataSet(frame, time_idx="time_idx", target="value", group_ids=["series"], max_encoder_length=4,
                             max_prediction_length=2, min_prediction_length=2, min_encoder_length=4,
                             time_varying_unknown_reals=["value"])  # fmt: skip
    torch.manual_seed(0)
    model = RecurrentNetwork.from_dataset(data, hidden_size=4, rnn_layers=1, cell_type="GRU")
    deep = door.explain(model, data, windows=[0, 1], n_background=3)
    shapley = door.explain(model, data, windows=[0], n_background=3, method="shapley", budget=2000, random_state=0)
    assert_contract(deep, "deepshap")
    assert_contract(shapley, "shapley")
    for result in (deep, shapley):
        assert result.prediction is result.outputs
        for part in ("encoder", "decoder", "static", "target_scale"):
            assert getattr(result, part) is result.values[part]
        np.testing.assert_allclose(result.total(), result.prediction - result.base_values, rtol=1e-4, atol=1e-5)
    assert set(shapley.stderr) == set(shapley.values)
    assert deep.background == f"3 rows: the default of pytorch-forecasting, {DEFAULTS['pytorch-forecasting']}"
    one = deep._sample(1)
    assert np.array_equal(one.encoder, deep.encoder[1:2]) and np.array_equal(one.prediction, deep.prediction[1:2])


def test_darts_result_carries_the_contract_with_its_background_stated() -> None:
    pytest.importorskip("darts")
    pytest.importorskip("shap")
    from darts import TimeSeries
    from darts.models import BlockRNNModel

    from rnnshap.darts import ShapExplainer

    rng = np.random.default_rng(0)
    target = TimeSeries.from_values(rng.normal(size=(30, 1)).cumsum(0).astype(np.float32) + 10.0, columns=["y"])
    trainer = dict(n_epochs=1, random_state=0, pl_trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False,
                                                                  "enable_model_summary": False, "logger": False})  # fmt: skip
    model = BlockRNNModel(input_chunk_length=2, output_chunk_length=1, model="GRU", hidden_dim=4, **trainer)
    model.fit(target, verbose=False)
    for method in ("deepshap", "shapley"):
        explainer = ShapExplainer(model, target[:12], method=method, budget=10_000)
        result = explainer.explain_single(target[14:26])
        assert result.attribution is explainer.last_attribution
        assert_contract(result.attribution, method)
        assert result.attribution.background == "11 rows given"  # 12 steps, windows of 2: 11 windows
        e = result.get_shap_explanation_object()
        if method == "shapley":  # darts' own error_std is the contract's stderr, laid out as darts lays its values out
            assert np.array_equal(np.asarray(e.error_std).ravel(), result.attribution.stderr[0][-1].ravel())


def test_neuralforecast_entries_carry_the_contract_with_the_forecast_as_outputs() -> None:
    pytest.importorskip("neuralforecast")
    import logging
    import warnings

    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM, DLinear
    from neuralforecast.utils import AirPassengersPanel, AirPassengersStatic

    from rnnshap.neuralforecast import explain

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    L, H = 6, 3
    quiet = dict(enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False,
                 max_steps=2, random_seed=0)  # fmt: skip
    cut = AirPassengersPanel.ds.values[-12]
    df = AirPassengersPanel[AirPassengersPanel.ds < cut].reset_index(drop=True)
    futr = AirPassengersPanel[AirPassengersPanel.ds >= cut].drop(columns="y").groupby("unique_id").head(H).reset_index(drop=True)
    torch.manual_seed(0)
    models = [
        LSTM(h=H, input_size=L, encoder_hidden_size=8, decoder_hidden_size=8, encoder_n_layers=1, recurrent=True,
             futr_exog_list=["trend"], stat_exog_list=["airline1"], scaler_type="standard", **quiet),
        DLinear(h=H, input_size=L, moving_avg_window=3, **quiet),
    ]  # fmt: skip
    nf = NeuralForecast(models=models, freq="ME")
    nf.fit(df, static_df=AirPassengersStatic)
    for method, options in (("deepshap", {}), ("shapley", {"budget": 300, "random_state": 0, "horizons": [1]})):
        fcsts, explanations = explain(nf, futr_df=futr, static_df=AirPassengersStatic, method=method, verbose=False, **options)
        for name in ("LSTM", "DLinear"):
            entry = explanations[name]
            result = entry["attribution"]
            assert_contract(result, method)
            assert result.values["insample"] is entry["insample"] and result.base_values is entry["baseline_predictions"]
            assert result.background == f"1 row: the default of neuralforecast, {DEFAULTS['neuralforecast']}"
            if method == "shapley":
                assert result.stderr["insample"] is entry["insample_stderr"]
            # the outputs are the forecasts neuralforecast's own predict made, in the data's units
            forecast = fcsts[name].to_numpy().reshape(2, H)[:, options.get("horizons", slice(None))]
            outputs = result.outputs.double().numpy()[:, :, 0, 0]
            np.testing.assert_allclose(outputs, forecast, rtol=1e-5, atol=1e-5 * np.abs(forecast).max())
