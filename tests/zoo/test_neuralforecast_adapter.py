"""rnnshap.neuralforecast.explain: neuralforecast's ``explain`` call, answered exactly.

Truths: the forecast neuralforecast's own ``predict`` returns (attributions + baseline_predictions,
in the data's units), neuralforecast's own ``explain`` (its baseline_predictions; its
IntegratedGradients values on a linear model), the recipe path (network + hand wrapper on windows
scaled by hand), a closed form for a linear model (DLinear), and exact zeros where a model cannot read
an input. Tiny models, fitted once per module on AirPassengersPanel (bundled with neuralforecast).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("neuralforecast")
from neuralforecast import NeuralForecast  # noqa: E402
from neuralforecast.losses.pytorch import DistributionLoss, MQLoss  # noqa: E402
from neuralforecast.models import GRU, LSTM, MLP, NHITS, RNN, TFT, DilatedRNN, DLinear, TSMixer, xLSTM  # noqa: E402
from neuralforecast.utils import AirPassengersPanel, AirPassengersStatic  # noqa: E402

import rnnshap  # noqa: E402
from rnnshap.errors import InputError  # noqa: E402
from rnnshap.neuralforecast import explain  # noqa: E402

from ..models.torch import Function  # noqa: E402

L, H = 6, 3
QUIET = dict(
    enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, max_steps=2, random_seed=0
)
EXOG = dict(futr_exog_list=["trend"], hist_exog_list=["y_[lag12]"], stat_exog_list=["airline1"])
RECURRENT = ("LSTM", "GRU", "RNN")
POINT = (*RECURRENT, "DilatedRNN", "xLSTM", "TFT", "NHITS", "MLP", "DLinear")


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    cut = AirPassengersPanel.ds.values[-12]
    df = AirPassengersPanel[AirPassengersPanel.ds < cut].reset_index(drop=True)
    futr = AirPassengersPanel[AirPassengersPanel.ds >= cut].drop(columns="y").groupby("unique_id").head(H).reset_index(drop=True)
    return {"df": df, "futr_df": futr, "static_df": AirPassengersStatic}


def _fit(models: list[Any], data: dict[str, Any]) -> NeuralForecast:
    _quiet()
    torch.manual_seed(0)
    nf = NeuralForecast(models=models, freq="ME")
    nf.fit(data["df"], static_df=data["static_df"])
    return nf


@pytest.fixture(scope="module")
def point(data: dict[str, Any]) -> dict[str, Any]:
    rnn = dict(encoder_hidden_size=8, decoder_hidden_size=8, encoder_n_layers=1, recurrent=True)
    kw = dict(h=H, input_size=L, **EXOG, **QUIET)
    models = [
        LSTM(**rnn, scaler_type="standard", **kw),
        GRU(**rnn, scaler_type="robust", **kw),
        RNN(**rnn, scaler_type="minmax", **kw),
        DilatedRNN(encoder_hidden_size=8, decoder_hidden_size=8, dilations=[[1, 2]], scaler_type="standard", **kw),
        xLSTM(encoder_hidden_size=8, decoder_hidden_size=8, encoder_n_blocks=1, scaler_type="robust", **kw),
        TFT(hidden_size=8, n_head=2, scaler_type="standard", **kw),
        NHITS(mlp_units=[[8, 8]] * 3, scaler_type="robust", **kw),
        MLP(hidden_size=8, num_layers=2, scaler_type="revin", **kw),
        DLinear(h=H, input_size=L, moving_avg_window=3, **QUIET),
    ]
    nf = _fit(models, data)
    nf.predict(futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)  # what a plain predict sets
    before = {type(m).__name__: {k: v.clone() for k, v in m.state_dict().items()} for m in nf.models}
    flags = {type(m).__name__: [mod.training for mod in m.modules()] for m in nf.models}
    attrs = {type(m).__name__: set(m.__dict__) for m in nf.models}
    plain = (bool, int, float, str, type(None))
    values = {type(m).__name__: {k: v for k, v in vars(m).items() if isinstance(v, plain)} for m in nf.models}
    fcsts, explanations = explain(nf, futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    return {"nf": nf, "fcsts": fcsts, "ex": explanations, "before": before, "flags": flags, "attrs": attrs, "values": values}


def _total(e: dict[str, Any]) -> np.ndarray:
    """Attributions summed over every input, plus the baseline: [batch, horizon, 1, output]."""
    total = e["insample"].sum((-1, -2)) + e["baseline_predictions"]
    for key in ("futr_exog", "hist_exog"):
        if e[key] is not None:
            total = total + e[key].sum((-1, -2))
    if e["stat_exog"] is not None:
        total = total + e["stat_exog"].sum(-1)
    return total.double().numpy()


def _assert_adds_up(total: np.ndarray, forecast: np.ndarray, what: str) -> None:
    gap = np.abs(total - forecast).max()
    assert gap <= 2e-6 * max(1.0, float(np.abs(forecast).max())), f"{what}: attributions + baseline miss nf.predict by {gap:.3g}"


@pytest.mark.parametrize("name", POINT)
def test_adds_up_to_predict(point: dict[str, Any], name: str) -> None:
    """Every forecast: Σ attributions + baseline_predictions == nf.predict's forecast, in the data's units
    (the model's scaler_type included), every horizon step, recurrent rollouts included."""
    e, fcsts = point["ex"][name], point["fcsts"]
    assert e["insample"].shape == (2, H, 1, 1, L + H if name in RECURRENT else L, 2)
    if name != "DLinear":
        assert e["futr_exog"].shape[:5] == (2, H, 1, 1, 1) and e["stat_exog"].shape == (2, H, 1, 1, 1)
    forecast = fcsts[name].to_numpy().reshape(2, H)
    _assert_adds_up(_total(e)[:, :, 0, 0], forecast, name)


@pytest.mark.parametrize("name", POINT)
def test_zero_where_unread(point: dict[str, Any], name: str) -> None:
    """Exactly 0 where the forecast cannot read an input: the availability mask (these networks do not
    read it); for the recurrent rollouts, the future exogenous after the step being forecast and the
    target positions after the last observed one (neuralforecast's recurrent windows are L + h long: the
    L + 1 observed targets it reads, input_size + 1 for the shift, at positions 0..L, then h − 1 unknown
    ones; step j's future exogenous at L + j). DilatedRNN and xLSTM read step j's future exogenous only in
    the forecast for step j, TFT only in the forecasts from step j on (its causal decoder). NHITS reads the
    mask (it gets a share)."""
    e = point["ex"][name]
    if name != "NHITS":
        assert (e["insample"][..., 1] == 0).all(), f"{name}: the mask got a share"
    else:
        assert e["insample"][..., 1].abs().sum() > 0
    if name in RECURRENT:
        for j in range(H):
            assert (e["futr_exog"][:, j, ..., L + j + 1 :] == 0).all(), f"{name}: future exogenous after step {j}"
            assert (e["insample"][:, j, ..., L + 1 :, 0] == 0).all(), f"{name}: target after the window"
            assert (e["futr_exog"][:, j, ..., L + j] != 0).all(), f"{name}: step {j}'s own exogenous got nothing"
            assert (e["insample"][:, j, ..., L, 0] != 0).all(), f"{name}: the last observed target got nothing"
    if name in ("DilatedRNN", "xLSTM", "TFT"):
        for j in range(H):
            other = [L + k for k in range(H) if (k > j if name == "TFT" else k != j)]
            assert (e["futr_exog"][:, j, ..., other] == 0).all(), f"{name}: future exogenous of other steps for step {j}"
            assert (e["futr_exog"][:, j, ..., L + j] != 0).all(), f"{name}: step {j}'s own future exogenous got nothing"


def test_model_unchanged(point: dict[str, Any]) -> None:
    """Explaining changes no parameter, buffer, training flag or attribute of the fitted models."""
    for model in point["nf"].models:
        name = type(model).__name__
        after = model.state_dict()
        assert after.keys() == point["before"][name].keys()
        for key, value in point["before"][name].items():
            assert torch.equal(after[key], value), f"{name}.{key} changed"
        assert [m.training for m in model.modules()] == point["flags"][name]
        assert set(model.__dict__) == point["attrs"][name], f"{name}: attributes left behind"
        plain = {k: v for k, v in vars(model).items() if isinstance(v, (bool, int, float, str, type(None)))}
        assert plain == point["values"][name], f"{name}: an attribute's value changed (h, maintain_state, input_size...)"


def test_baseline_and_linear_values_are_neuralforecasts(point: dict[str, Any], data: dict[str, Any]) -> None:
    """neuralforecast's own explain (IntegratedGradients, which runs on the direct models): the same
    baseline_predictions for every model, and on the linear DLinear the same values (IG is exact there)."""
    pytest.importorskip("captum")  # neuralforecast's explain needs it; rnnshap.neuralforecast does not
    _quiet()
    _, theirs = point["nf"].explain(futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    assert set(theirs) == {"DilatedRNN", "xLSTM", "TFT", "NHITS", "MLP", "DLinear"}  # it skips the recurrent models
    for name, e in theirs.items():
        ours = point["ex"][name]
        np.testing.assert_allclose(
            ours["baseline_predictions"].numpy(), e["baseline_predictions"].detach().numpy(), rtol=1e-5, atol=1e-4
        )
    np.testing.assert_allclose(
        point["ex"]["DLinear"]["insample"].numpy(), theirs["DLinear"]["insample"].detach().numpy(), rtol=1e-4, atol=1e-4
    )


def _windows(data: dict[str, Any], series: int) -> dict[str, np.ndarray]:
    """The last window of one series, built by hand from the frames: target and hist (L), futr (L + H)."""
    df = data["df"][data["df"].unique_id == data["df"].unique_id.unique()[series]]
    futr = data["futr_df"][data["futr_df"].unique_id == df.unique_id.iloc[0]]
    return {
        "y": df.y.to_numpy()[-L:],
        "hist": df["y_[lag12]"].to_numpy()[-L:],
        "futr": np.concatenate([df.trend.to_numpy()[-L:], futr.trend.to_numpy()]),
        "stat": data["static_df"].set_index("unique_id").loc[df.unique_id.iloc[0], "airline1"],
    }


def test_recipe_path(point: dict[str, Any], data: dict[str, Any]) -> None:
    """TFT (standard scaler): the network + a hand wrapper on windows scaled by hand (mean, population std
    of the window; the forecast scaled back), explained against the zero window, gives the same values."""
    model = copy.deepcopy(next(m for m in point["nf"].models if type(m).__name__ == "TFT")).eval()

    def stats(x: np.ndarray) -> tuple[float, float]:
        std = x.std()
        return x.mean(), (1.0 if std == 0 else std) + 1e-6

    for series in range(2):
        w = _windows(data, series)
        (my, sy), (mh, sh), (mf, sf) = stats(w["y"]), stats(w["hist"]), stats(w["futr"][:L])

        def window(y: torch.Tensor, hist: torch.Tensor, futr: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
            batch = {
                "insample_y": y, "insample_mask": torch.ones_like(y), "hist_exog": hist, "futr_exog": futr, "stat_exog": stat
            }
            return model(batch)[..., 0] * sy + my

        def t(a: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32))

        X = [
            t((w["y"] - my) / sy)[None, :, None], t((w["hist"] - mh) / sh)[None, :, None],
            t((w["futr"] - mf) / sf)[None, :, None], t([[w["stat"]]])
        ]
        explainer = rnnshap.DeepExplainer(Function(window).eval(), [torch.zeros_like(x) for x in X])
        phi = explainer.shap_values(X)
        e = point["ex"]["TFT"]
        np.testing.assert_allclose(e["insample"][series, :, 0, 0, :, 0].numpy(), phi[0][0, :, 0].T, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(e["hist_exog"][series, :, 0, 0, 0].numpy(), phi[1][0, :, 0].T, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(e["futr_exog"][series, :, 0, 0, 0].numpy(), phi[2][0, :, 0].T, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            e["baseline_predictions"][series, :, 0, 0].numpy(), np.ravel(explainer.expected_value), rtol=1e-5
        )


def test_dlinear_closed_form(point: dict[str, Any], data: dict[str, Any]) -> None:
    """DLinear (identity scaler) is linear: the value of lag j is f(y_j e_j) − f(0), from its forward alone."""
    model = next(m for m in point["nf"].models if type(m).__name__ == "DLinear")
    e = point["ex"]["DLinear"]
    for series in range(2):
        y = _windows(data, series)["y"]
        eye = np.diag(y).astype(np.float32)
        rows = torch.as_tensor(np.vstack([eye, np.zeros((1, L), np.float32)]))[:, :, None]
        with torch.no_grad():
            out = model({
                "insample_y": rows, "insample_mask": torch.ones_like(rows), "futr_exog": None, "hist_exog": None,
                "stat_exog": None
            })[..., 0]
        closed = (out[:L] - out[L:]).numpy()  # (lag, horizon)
        np.testing.assert_allclose(e["insample"][series, :, 0, 0, :, 0].numpy(), closed.T, rtol=1e-4, atol=1e-3)


def _only(nf: NeuralForecast, name: str) -> NeuralForecast:
    """The fitted ``nf`` with one of its models (a shallow copy sharing its data)."""
    sub = copy.copy(nf)
    sub.models = [m for m in nf.models if type(m).__name__ == name]
    return sub


def test_shapley_mode_exact_on_linear(point: dict[str, Any]) -> None:
    """method='shapley' on DLinear (12 players: target and mask): the budget covers every coalition, the
    values are exact Shapley values with zero standard errors, equal to DeepSHAP's (a linear model)."""
    nf = _only(point["nf"], "DLinear")
    _, ex = explain(nf, method="shapley", budget=2**12, random_state=0, verbose=False)
    e = ex["DLinear"]
    assert (e["insample_stderr"] == 0).all()
    np.testing.assert_allclose(e["insample"].numpy(), point["ex"]["DLinear"]["insample"].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        e["baseline_predictions"].numpy(), point["ex"]["DLinear"]["baseline_predictions"].numpy(), rtol=1e-5
    )


def test_shapley_mode_estimates(point: dict[str, Any], data: dict[str, Any]) -> None:
    """method='shapley' on a recurrent LSTM rollout: efficient (adds up to nf.predict), standard errors shaped
    like the values and positive somewhere, the same zeros where the forecast cannot read an input."""
    nf = _only(point["nf"], "LSTM")
    fcsts, ex = explain(
        nf, horizons=[1], futr_df=data["futr_df"], static_df=data["static_df"], method="shapley", budget=400, random_state=0,
        verbose=False
    )
    e = ex["LSTM"]
    assert e["insample_stderr"].shape == e["insample"].shape and e["futr_exog_stderr"].shape == e["futr_exog"].shape
    assert (e["insample_stderr"] > 0).any()
    _assert_adds_up(_total(e)[:, 0, 0, 0], fcsts["LSTM"].to_numpy().reshape(2, H)[:, 1], "LSTM shapley")
    assert (e["futr_exog"][..., L + 2 :] == 0).all() and (e["insample"][..., 1] == 0).all()


@pytest.fixture(scope="module")
def target_only(data: dict[str, Any]) -> NeuralForecast:
    kw = dict(h=H, input_size=L, **QUIET)
    # MLP with one series per batch: neuralforecast's predict loop runs twice, each with its recursive steps
    models = [
        LSTM(encoder_hidden_size=8, decoder_hidden_size=8, recurrent=True, **kw),
        MLP(hidden_size=8, num_layers=1, valid_batch_size=1, **kw)
    ]
    return _fit(models, {"df": data["df"][["unique_id", "ds", "y"]], "static_df": None})


def test_beyond_the_fitted_horizon(target_only: NeuralForecast) -> None:
    """h=5 > the fitted h=3: the recurrent LSTM's rollout over 5 steps and MLP's direct recursion (explained
    chunk by chunk, as neuralforecast does) add up to nf.predict(h=5); the frame is predict's."""
    fcsts, ex = explain(target_only, h=5, verbose=False)
    plain = target_only.predict(h=5, verbose=False)
    assert fcsts.equals(plain)
    for name in ("LSTM", "MLP"):
        assert ex[name]["insample"].shape[1] == 5
        _assert_adds_up(_total(ex[name])[:, :, 0, 0], plain[name].to_numpy().reshape(2, 5), f"{name}, h=5")
    _, ex = explain(_only(target_only, "MLP"), h=5, method="shapley", budget=200, random_state=0, verbose=False)
    assert ex["MLP"]["insample_stderr"].shape == ex["MLP"]["insample"].shape == (2, 5, 1, 1, L, 2)
    assert (ex["MLP"]["insample_stderr"][..., 0] > 0).all() and ex["MLP"]["n_evals"].shape == (2,)
    _assert_adds_up(_total(ex["MLP"])[:, :, 0, 0], plain["MLP"].to_numpy().reshape(2, 5), "MLP, h=5, shapley")


def test_background_windows(point: dict[str, Any], data: dict[str, Any]) -> None:
    """background= (reference windows in the network's layout) in place of the zero window: the values
    still add up to nf.predict, the baseline is the mean forecast over the references; a zero background of
    one window is neuralforecast's reference (the same values as the default)."""
    nf = _only(point["nf"], "MLP")
    g = torch.Generator().manual_seed(0)
    layout = {"insample_y": (L, 1), "insample_mask": (L, 1), "futr_exog": (L + H, 1), "hist_exog": (L, 1), "stat_exog": (1,)}
    background = {k: torch.randn(4, *shape, generator=g) for k, shape in layout.items()}
    fcsts, ex = explain(nf, futr_df=data["futr_df"], static_df=data["static_df"], background=background, verbose=False)
    _assert_adds_up(_total(ex["MLP"])[:, :, 0, 0], fcsts["MLP"].to_numpy().reshape(2, H), "MLP, background")
    assert not np.allclose(ex["MLP"]["baseline_predictions"].numpy(), point["ex"]["MLP"]["baseline_predictions"].numpy())
    zeros = {k: torch.zeros(1, *shape) for k, shape in layout.items()}
    _, ex = explain(nf, futr_df=data["futr_df"], static_df=data["static_df"], background=zeros, verbose=False)
    np.testing.assert_array_equal(ex["MLP"]["insample"].numpy(), point["ex"]["MLP"]["insample"].numpy())
    with pytest.raises(InputError, match="background has no 'insample_mask'"):
        explain(
            nf, futr_df=data["futr_df"], static_df=data["static_df"], background={"insample_y": zeros["insample_y"]},
            verbose=False
        )


def test_global_scaler(data: dict[str, Any]) -> None:
    """local_scaler_type='standard' (outside the network, an affine map per series): the values are put in the
    data's units and add up to nf.predict (neuralforecast's explain warns that additivity may not hold)."""
    _quiet()
    torch.manual_seed(0)
    nf = NeuralForecast(
        models=[MLP(h=H, input_size=L, hidden_size=8, num_layers=1, **QUIET)], freq="ME", local_scaler_type="standard"
    )
    nf.fit(data["df"][["unique_id", "ds", "y"]])
    fcsts, ex = explain(nf, verbose=False)
    _assert_adds_up(_total(ex["MLP"])[:, :, 0, 0], fcsts["MLP"].to_numpy().reshape(2, H), "MLP, global scaler")


@pytest.fixture(scope="module")
def probabilistic(data: dict[str, Any]) -> dict[str, Any]:
    kw = dict(h=H, input_size=L, **EXOG, **QUIET)
    models = [
        MLP(hidden_size=8, num_layers=1, loss=MQLoss(level=[80]), scaler_type="robust", **kw),
        NHITS(mlp_units=[[8, 8]] * 3, loss=DistributionLoss("Normal", return_params=True), scaler_type="standard", **kw),
        LSTM(
            encoder_hidden_size=8, decoder_hidden_size=8, recurrent=True, loss=DistributionLoss("StudentT", return_params=True),
            **kw
        ),
        GRU(encoder_hidden_size=8, decoder_hidden_size=8, recurrent=True, loss=MQLoss(level=[80]), **kw),
    ]
    nf = _fit(models, data)
    nf.predict(futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)  # what a plain predict sets
    before = {
        type(m).__name__: ({k: v.clone() for k, v in m.state_dict().items()}, set(m.__dict__), m.h, m.training) for m in nf.models
    }
    fcsts, ex = explain(nf, outputs=[0, 1], futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    return {"nf": nf, "fcsts": fcsts, "ex": ex, "before": before}


def test_probabilistic_models_unchanged(probabilistic: dict[str, Any]) -> None:
    """The distribution rollout and the MQLoss models leave parameters, attributes, h and the mode as they were."""
    for model in probabilistic["nf"].models:
        state, attrs, h, training = probabilistic["before"][type(model).__name__]
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        assert set(model.__dict__) == attrs and model.h == h and model.training == training


@pytest.mark.parametrize("name", ["MLP", "GRU"])
def test_mqloss_outputs_by_index(probabilistic: dict[str, Any], name: str) -> None:
    """MQLoss: outputs 0 and 1 are the loss's outputs in order (the median, the 80% lower bound), for a
    direct MLP and a recurrent GRU (whose rollout feeds back the mean of its quantiles)."""
    model = next(m for m in probabilistic["nf"].models if type(m).__name__ == name)
    for k, suffix in enumerate(model.loss.output_names[:2]):
        forecast = probabilistic["fcsts"][f"{name}{suffix}"].to_numpy().reshape(2, H)
        _assert_adds_up(_total(probabilistic["ex"][name])[:, :, 0, k], forecast, f"{name}{suffix}")


@pytest.mark.parametrize("name", ["NHITS", "LSTM"])
def test_distribution_parameters(probabilistic: dict[str, Any], name: str) -> None:
    """DistributionLoss (which neuralforecast's explain skips): NHITS's Normal loc and scale, and a recurrent
    LSTM's StudentT df and loc (its rollout feeding back the distribution's mean), in the data's units, add
    up to the parameters nf.predict returns (return_params=True)."""
    model = next(m for m in probabilistic["nf"].models if type(m).__name__ == name)
    for k, suffix in enumerate(model.loss.param_names[:2]):
        forecast = probabilistic["fcsts"][f"{name}{suffix}"].to_numpy().reshape(2, H)
        _assert_adds_up(_total(probabilistic["ex"][name])[:, :, 0, k], forecast, f"{name}{suffix}")


# -- bad input, in neuralforecast's terms ----------------------------------------------------------------
def test_bad_input(point: dict[str, Any], data: dict[str, Any]) -> None:
    nf = point["nf"]
    # a NaN the models read (a historic exogenous value inside the input window) is refused, never filled with the
    # reference's 0 (neuralforecast's own check answers first; the adapter's guard is behind it)
    holed = data["df"].copy()
    column = EXOG["hist_exog_list"][0]
    holed.loc[holed.index[holed.unique_id == holed.unique_id.iloc[0]][-2], column] = np.nan
    with pytest.raises(ValueError, match="missing values|NaN value"):
        explain(nf, df=holed, futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    with pytest.raises(InputError, match="horizon steps within"):
        explain(nf, horizons=[H], futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    with pytest.raises(InputError, match="valid outputs"):
        explain(nf, outputs=[1], futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    with pytest.raises(InputError, match="series"):
        explain(nf, series=[1], futr_df=data["futr_df"], static_df=data["static_df"], verbose=False)
    with pytest.raises(ValueError, match="future exogenous"):
        explain(nf, static_df=data["static_df"], verbose=False)
    with pytest.raises(InputError, match="method="):
        explain(nf, method="lime")


def test_unfitted_and_unsupported_models() -> None:
    with pytest.raises(InputError, match="fit"):
        explain(NeuralForecast(models=[MLP(h=H, input_size=L, **QUIET)], freq="ME"))
    normal = TSMixer(h=H, input_size=L, n_series=2, loss=DistributionLoss("Normal"), **QUIET)
    with pytest.raises(InputError, match="TSMixer is a multivariate model.*DistributionLoss"):
        explain(NeuralForecast(models=[normal], freq="ME"))
    tweedie = MLP(h=H, input_size=L, loss=DistributionLoss("Tweedie", rho=1.5), **QUIET)
    with pytest.raises(InputError, match="MLP uses DistributionLoss.Tweedie"):
        explain(NeuralForecast(models=[tweedie], freq="ME"))


def test_import_is_lazy() -> None:
    """``import rnnshap`` (and rnnshap.neuralforecast) imports neuralforecast only when explain is called."""
    import subprocess
    import sys

    code = "import sys, rnnshap, rnnshap.neuralforecast; print('neuralforecast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
