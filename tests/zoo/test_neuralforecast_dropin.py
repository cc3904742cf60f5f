"""rnnshap.neuralforecast.explain as a drop-in for ``NeuralForecast.explain``.

Code that names one of neuralforecast's Captum explainers keeps working (neuralforecast's own answers, the
result says so); multivariate models are explained exactly; a model rnnshap does not take inside a
multi-model call is skipped with a warning naming it, never failing the rest. Truths: neuralforecast's own
``explain`` on the same call, its own ``predict`` (values + baseline_predictions, per series) and its errors.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("neuralforecast")
pytest.importorskip("captum")
from neuralforecast import NeuralForecast  # noqa: E402
from neuralforecast.losses.pytorch import DistributionLoss, HuberIQLoss, IQLoss  # noqa: E402
from neuralforecast.models import LSTM, MLP, MLPMultivariate, TSMixer  # noqa: E402
from neuralforecast.utils import AirPassengersPanel, AirPassengersStatic  # noqa: E402

from rnnshap.errors import InputError  # noqa: E402
from rnnshap.neuralforecast import explain  # noqa: E402

L, H, S = 6, 3, 2  # input size, horizon, series in AirPassengersPanel
QUIET = dict(
    enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, max_steps=2, random_seed=0
)
EXOG = dict(futr_exog_list=["trend"], hist_exog_list=["y_[lag12]"], stat_exog_list=["airline1"])


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    cut = AirPassengersPanel.ds.values[-12]
    df = AirPassengersPanel[AirPassengersPanel.ds < cut].reset_index(drop=True)
    futr = AirPassengersPanel[AirPassengersPanel.ds >= cut].drop(columns=["y", "y_[lag12]"]).groupby("unique_id").head(H)
    return {"df": df, "futr_df": futr.reset_index(drop=True), "static_df": AirPassengersStatic.drop(columns=["airline2"])}


def _fit(models: list[Any], data: dict[str, Any]) -> NeuralForecast:
    _quiet()
    torch.manual_seed(0)
    nf = NeuralForecast(models=models, freq="ME")
    nf.fit(data["df"], static_df=data["static_df"])
    return nf


def _call(data: dict[str, Any]) -> dict[str, Any]:
    return {"futr_df": data["futr_df"], "static_df": data["static_df"], "verbose": False}


def _assert_adds_up(total: np.ndarray, forecast: np.ndarray, where: str) -> None:
    """float32 networks: to 1e-5 of max(1, |forecast|), the float32 sums' rounding over a few hundred terms"""
    error = np.abs(total - forecast) / np.maximum(1.0, np.abs(forecast))
    assert error.max() <= 1e-5, f"{where}: attributions + baseline miss the forecast by {error.max():.3g} (relative)"


def _total(entry: dict[str, Any], multivariate: bool) -> np.ndarray:
    """baseline + every attribution: [batch, horizon, series_out, output]"""
    trailing = {"insample": 3 if multivariate else 2, "futr_exog": 3 if multivariate else 2,
                "hist_exog": 3 if multivariate else 2, "stat_exog": 2 if multivariate else 1}  # fmt: skip
    total = entry["baseline_predictions"].double()
    for key, n in trailing.items():
        if entry[key] is not None:
            total = total + entry[key].double().sum(dim=tuple(range(-n, 0)))
    return total.numpy()


# -- neuralforecast's own explainers, named -------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp(data: dict[str, Any]) -> NeuralForecast:
    return _fit([MLP(h=H, input_size=L, hidden_size=8, num_layers=1, **EXOG, **QUIET)], data)


@pytest.mark.parametrize("name", ["InputXGradient", "IntegratedGradients"])
def test_captum_explainer_named_is_answered_by_neuralforecast(mlp: NeuralForecast, data: dict[str, Any], name: str) -> None:
    """explainer='IntegratedGradients' (neuralforecast's default) or another of its Captum names: neuralforecast's
    own explain answers (the same tensors), and each entry says which answered."""
    _quiet()
    fcsts, ours = explain(mlp, explainer=name, **_call(data))
    their_fcsts, theirs = mlp.explain(explainer=name, **_call(data))
    assert ours.keys() == theirs.keys() == {"MLP"}
    assert ours["MLP"].pop("explained_by") == f"neuralforecast (captum.attr.{name})"
    assert ours["MLP"].keys() == theirs["MLP"].keys()
    for key, value in theirs["MLP"].items():
        if value is None:
            assert ours["MLP"][key] is None
        else:
            torch.testing.assert_close(ours["MLP"][key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(fcsts["MLP"].to_numpy(), their_fcsts["MLP"].to_numpy())


def test_neuralforecast_errors_for_its_own_checks(mlp: NeuralForecast, data: dict[str, Any]) -> None:
    _quiet()
    for run in (lambda **k: explain(mlp, **k), lambda **k: mlp.explain(**k)):
        with pytest.raises(ValueError, match="Explainer NoSuch is not available in captum"):
            run(explainer="NoSuch", **_call(data))
        with pytest.raises(ValueError, match="Invalid indices. Make sure to select horizon steps"):
            run(explainer="InputXGradient", horizons=[H], **_call(data))
    with pytest.raises(InputError, match=r"takes none of rnnshap's arguments \['budget'\]"):
        explain(mlp, explainer="InputXGradient", budget=100, **_call(data))


def test_a_wrapper_without_wraps_routing_explain_to_rnnshap_keeps_neuralforecasts_own_for_captum_names(
    mlp: NeuralForecast, data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NeuralForecast.explain`` replaced by a plain function calling rnnshap's (no functools.wraps): a Captum name
    is still answered by neuralforecast's own explain, kept when rnnshap.neuralforecast was imported, not by the
    wrapper again and again until RecursionError."""
    import rnnshap.neuralforecast

    _quiet()
    _, theirs = mlp.explain(explainer="InputXGradient", **_call(data))
    monkeypatch.setattr(NeuralForecast, "explain", lambda self, *a, **k: rnnshap.neuralforecast.explain(self, *a, **k))
    _, ours = mlp.explain(explainer="InputXGradient", **_call(data))
    assert ours["MLP"].pop("explained_by") == "neuralforecast (captum.attr.InputXGradient)"
    for key, value in theirs["MLP"].items():
        if value is not None:
            torch.testing.assert_close(ours["MLP"][key], value, rtol=0, atol=0)
    # where neuralforecast's own could not be kept (replaced before rnnshap saw it), the loop is refused by name
    from rnnshap.forecasting import neuralforecast as door

    monkeypatch.setattr(door, "_kept_explain", None)
    with pytest.raises(InputError, match=r"NeuralForecast.explain.*calls rnnshap.neuralforecast.explain.*functools.wraps"):
        mlp.explain(explainer="InputXGradient", **_call(data))


def test_neuralforecasts_own_explain_is_kept_when_it_is_imported_after_rnnshaps_door() -> None:
    """``import rnnshap.neuralforecast`` first (it does not import neuralforecast), then neuralforecast, then the
    wrapper: the own explain was kept as neuralforecast.core was imported."""
    import subprocess
    import sys

    script = (
        "import sys, rnnshap.neuralforecast\n"
        "assert 'neuralforecast' not in sys.modules\n"
        "from neuralforecast import NeuralForecast\n"
        "own = NeuralForecast.explain\n"
        "NeuralForecast.explain = lambda self, *a, **k: rnnshap.neuralforecast.explain(self, *a, **k)\n"
        "from rnnshap.forecasting import neuralforecast as door\n"
        "assert door._own_explain() is own, door._own_explain()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_default_is_rnnshap_and_says_so(mlp: NeuralForecast, data: dict[str, Any]) -> None:
    _quiet()
    fcsts, ex = explain(mlp, **_call(data))
    assert ex["MLP"]["explained_by"] == "rnnshap (deepshap)"
    _assert_adds_up(_total(ex["MLP"], False)[:, :, 0, 0], fcsts["MLP"].to_numpy().reshape(S, H), "MLP")


# -- multivariate models, exactly -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multivariate(data: dict[str, Any]) -> NeuralForecast:
    models = [
        MLPMultivariate(h=H, input_size=L, n_series=S, hidden_size=8, num_layers=1, **EXOG, **QUIET),
        TSMixer(h=H, input_size=L, n_series=S, n_block=1, ff_dim=4, **QUIET),
    ]
    return _fit(models, data)


def test_multivariate_models_add_up_to_predict(multivariate: NeuralForecast, data: dict[str, Any]) -> None:
    """MLPMultivariate (every exogenous kind) and TSMixer (RevIN): for every series, the attributions across all
    series' inputs plus baseline_predictions equal nf.predict's forecast; shapes are neuralforecast's own
    explain's (its IntegratedGradients on the same call); the model is unchanged."""
    _quiet()
    nf = multivariate
    before = {type(m).__name__: {k: v.clone() for k, v in m.state_dict().items()} for m in nf.models}
    forecast = nf.predict(**_call(data))
    fcsts, ours = explain(nf, **_call(data))
    _, theirs = nf.explain(explainer="IntegratedGradients", **_call(data))
    for name in ("MLPMultivariate", "TSMixer"):
        for key, value in theirs[name].items():
            assert (ours[name][key] is None) == (value is None), (name, key)
            if value is not None:
                assert tuple(ours[name][key].shape) == tuple(value.shape), (name, key)
        total = _total(ours[name], True)[0, :, :, 0]  # (H, series)
        _assert_adds_up(total.T, forecast[name].to_numpy().reshape(S, H), name)
        np.testing.assert_array_equal(fcsts[name].to_numpy(), forecast[name].to_numpy())
    for m in nf.models:
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[type(m).__name__][k]), f"{type(m).__name__}.{k} changed"


def test_multivariate_series_selection(multivariate: NeuralForecast, data: dict[str, Any]) -> None:
    """series=[1]: the second series' forecast, explained from every series' inputs; an index out of range is
    neuralforecast's own error."""
    _quiet()
    nf = multivariate
    forecast = nf.predict(**_call(data))
    _, ex = explain(nf, series=[1], **_call(data))
    e = ex["MLPMultivariate"]
    assert tuple(e["insample"].shape) == (1, H, 1, 1, L, S, 2)
    assert tuple(e["stat_exog"].shape) == (1, H, 1, 1, S, 1)
    _assert_adds_up(_total(e, True)[0, :, 0, 0], forecast["MLPMultivariate"].to_numpy().reshape(S, H)[1], "series 1")
    for run in (lambda **k: explain(nf, **k), lambda **k: nf.explain(**k)):
        with pytest.raises(ValueError, match=r"Invalid series indices. Valid indices are \[0, 1\]"):
            run(series=[5], **_call(data))


# -- a model rnnshap does not take never fails the rest ----------------------------------------------------
def test_unsupported_model_beside_others_is_skipped_with_a_warning(data: dict[str, Any]) -> None:
    """A Tweedie DistributionLoss model beside an MLP: skipped with a warning naming it (neuralforecast's own explain
    skips every DistributionLoss model the same way); the MLP is explained and adds up to predict."""
    tweedie = MLP(h=H, input_size=L, hidden_size=8, num_layers=1, loss=DistributionLoss("Tweedie", rho=1.5), alias="Tw", **QUIET)
    nf = _fit([MLP(h=H, input_size=L, hidden_size=8, num_layers=1, **QUIET), tweedie], data)
    with pytest.warns(UserWarning, match="Skipping Tw uses DistributionLoss"):
        fcsts, ex = explain(nf, verbose=False)
    assert set(ex) == {"MLP"}
    _assert_adds_up(_total(ex["MLP"], False)[:, :, 0, 0], fcsts["MLP"].to_numpy().reshape(S, H), "MLP beside Tweedie")
    with pytest.raises(InputError, match="Tw uses DistributionLoss"):
        explain(_fit([tweedie], data), verbose=False)


class _Rounded(MLP):
    """An MLP whose forecast is rounded to quarters (torch.round: a step function, refused by DeepSHAP)."""

    def forward(self, windows_batch: dict[str, Any]) -> Any:
        return torch.round(super().forward(windows_batch) * 4) / 4


def test_deepshap_refusal_of_one_model_skips_it_with_a_warning(data: dict[str, Any]) -> None:
    rounded = _Rounded(h=H, input_size=L, hidden_size=8, num_layers=1, alias="Rounded", **QUIET)
    nf = _fit([MLP(h=H, input_size=L, hidden_size=8, num_layers=1, **QUIET), rounded], data)
    with pytest.warns(UserWarning, match="Skipping Rounded.*method='shapley'"):
        fcsts, ex = explain(nf, verbose=False)
    assert set(ex) == {"MLP"}
    _assert_adds_up(_total(ex["MLP"], False)[:, :, 0, 0], fcsts["MLP"].to_numpy().reshape(S, H), "MLP beside Rounded")


# -- IQLoss's reported quantile --------------------------------------------------------------------
def test_iqloss_explains_the_forecast_predict_reports(data: dict[str, Any]) -> None:
    """IQLoss: without quantiles=, the values add up to the column nf.predict reports (the network's median,
    MLP_ql0.5)."""
    nf = _fit([MLP(h=H, input_size=L, hidden_size=8, num_layers=1, loss=IQLoss(), **QUIET)], data)
    forecast = nf.predict()
    fcsts, ex = explain(nf, verbose=False)
    assert list(forecast.columns[-1:]) == list(fcsts.columns[-1:]) == ["MLP_ql0.5"]
    _assert_adds_up(_total(ex["MLP"], False)[:, :, 0, 0], forecast["MLP_ql0.5"].to_numpy().reshape(S, H), "IQLoss median")


@pytest.mark.parametrize(
    "asked", [{"quantiles": [0.75, 0.3]}, {"level": [80]}], ids=["quantiles-on-and-off-the-grid", "level"]
)
def test_iqloss_with_quantiles_explains_each_quantile_predict_reports(data: dict[str, Any], asked: dict[str, Any]) -> None:
    """IQLoss with quantiles= (or level=): neuralforecast runs the network at 11 fixed quantiles (the quantile an input
    of the network) and reports np.quantile over those 11 forecasts, a sort and a linear interpolation (the values used
    to explain the network's 0.99 forecast, the last of the 11, then were refused). Each quantile asked is explained:
    output i is the i-th column nf.predict(quantiles=...) reports, and its values add up to it (0.3 is on the grid,
    0.75 between 0.7 and 0.8; level=[80] asks 0.1 and 0.9)."""
    nf = _fit([MLP(h=H, input_size=L, hidden_size=8, num_layers=1, loss=IQLoss(), **QUIET)], data)
    forecast = nf.predict(**asked)
    columns = [c for c in forecast.columns if c.startswith("MLP")]
    assert len(columns) == 2, columns
    fcsts, ex = explain(nf, outputs=[0, 1], verbose=False, **asked)
    assert [c for c in fcsts.columns if c.startswith("MLP")] == columns
    total = _total(ex["MLP"], False)  # (S, H, 1, 2)
    assert total.shape == (S, H, 1, 2)
    for i, column in enumerate(columns):
        reported = forecast[column].to_numpy().reshape(S, H)
        np.testing.assert_array_equal(fcsts[column].to_numpy().reshape(S, H), reported)
        _assert_adds_up(total[:, :, 0, i], reported, f"IQLoss {column}")
    assert not np.allclose(total[:, :, 0, 0], total[:, :, 0, 1])  # (two quantiles, two forecasts)


@pytest.mark.parametrize("kind", ["multivariate", "recurrent", "huber"])
def test_iqloss_with_quantiles_adds_up_for_multivariate_recurrent_and_huber_models(data: dict[str, Any], kind: str) -> None:
    """The same for a multivariate network (every series' quantiles), a recurrent one (the rollout run at each
    quantile of the grid) and HuberIQLoss: each quantile asked adds up to its column of nf.predict."""
    models = {
        "multivariate": lambda: MLPMultivariate(h=H, input_size=L, n_series=S, hidden_size=8, num_layers=1, loss=IQLoss(),
                                                **QUIET),
        "recurrent": lambda: LSTM(h=H, input_size=L, encoder_hidden_size=8, decoder_hidden_size=8, recurrent=True,
                                  loss=IQLoss(), **QUIET),
        "huber": lambda: MLP(h=H, input_size=L, hidden_size=8, num_layers=1, loss=HuberIQLoss(), **QUIET),
    }  # fmt: skip
    nf = _fit([models[kind]()], {"df": data["df"][["unique_id", "ds", "y"]], "static_df": None})
    forecast = nf.predict(quantiles=[0.25, 0.9])
    name = type(nf.models[0]).__name__
    columns = [f"{name}_ql0.25", f"{name}_ql0.9"]
    assert [c for c in forecast.columns if c.startswith(name)] == columns
    _, ex = explain(nf, outputs=[0, 1], quantiles=[0.25, 0.9], verbose=False)
    multivariate = kind == "multivariate"
    total = _total(ex[name], multivariate)
    for i, column in enumerate(columns):
        got = total[0, :, :, i].T if multivariate else total[:, :, 0, i]  # (series, horizon)
        _assert_adds_up(got, forecast[column].to_numpy().reshape(S, H), f"{kind} {column}")


def test_multivariate_with_a_global_scaler_adds_up_in_the_datas_units(data: dict[str, Any]) -> None:
    """local_scaler_type='standard' beside a multivariate model: each output series' values take that series' affine
    map (they used to be refused, failing the univariate model beside it too); both add up to nf.predict."""
    _quiet()
    torch.manual_seed(0)
    models = [MLPMultivariate(h=H, input_size=L, n_series=S, hidden_size=8, num_layers=1, **QUIET),
              MLP(h=H, input_size=L, hidden_size=8, num_layers=1, **QUIET)]  # fmt: skip
    nf = NeuralForecast(models=models, freq="ME", local_scaler_type="standard")
    nf.fit(data["df"][["unique_id", "ds", "y"]])
    forecast = nf.predict()
    _, ex = explain(nf, verbose=False)
    _assert_adds_up(_total(ex["MLPMultivariate"], True)[0, :, :, 0].T, forecast["MLPMultivariate"].to_numpy().reshape(S, H), "MV")
    _assert_adds_up(_total(ex["MLP"], False)[:, :, 0, 0], forecast["MLP"].to_numpy().reshape(S, H), "MLP beside it")
