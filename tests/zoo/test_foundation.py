"""rnnshap.foundation.explain on the foundation forecasters, held to each library's own public forecast call.

Truths independent of rnnshap: the library's own forecast (``model(past_values=...)``, ``forecast()``,
``predict_quantiles()``, ...) on the same context, which base value plus values must equal; Shapley values
enumerated here over every coalition through that same call; exact zeros for context the model trims.
Models are tiny, built from each library's own config classes with random weights (the code path of the
pretrained ones); the series is a random walk (the docs use statsmodels' datasets).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Callable
from unittest import mock

import numpy as np
import pytest
import torch

import rnnshap.foundation
from rnnshap.errors import InputError

from . import foundation_models

RNG = np.random.default_rng(0)
SERIES = RNG.standard_normal(400).cumsum() + 40.0  # positive, as many real series are


def windows(length: int, starts: list[int]) -> np.ndarray:
    return np.stack([SERIES[s : s + length] for s in starts])


def tolerance(forecast: np.ndarray) -> float:
    """float32 models: a few hundred eps of the forecast's magnitude (sums over steps and quantiles)."""
    return 256 * float(np.finfo(np.float32).eps) * max(1.0, float(np.abs(forecast).max()))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    after = module.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def enumerated_shapley(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, references: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """Shapley values of the players ``ids`` (per step) by every coalition: v(S) = mean_r f(x on S, r elsewhere),
    ``f`` the library's own call on rows (m, L) -> (m, k). Returns (P, k)."""
    P = int(ids.max()) + 1
    value: dict[tuple[int, ...], np.ndarray] = {}
    for size in range(P + 1):
        for S in itertools.combinations(range(P), size):
            keep = np.isin(ids, S)
            rows = np.where(keep[None], x[None], references)
            value[S] = f(rows).mean(0)
    phi = np.zeros((P, next(iter(value.values())).size))
    for i in range(P):
        for S, v in value.items():
            if i in S:
                continue
            s = len(S)
            weight = math.factorial(s) * math.factorial(P - s - 1) / math.factorial(P)
            phi[i] += weight * (value[tuple(sorted((*S, i)))] - v)
    return phi


def check_past_covariate_shapley(forecaster: Any, own_forecast_with: Callable[..., np.ndarray], H: int) -> None:
    """The Shapley mode on patches with one past covariate beside the target (Moirai 2, TimesFM 3): the covariate's
    two patches are players beside the target's two, and every coalition of the four is enumerated through the
    library's own call ``own_forecast_with(forecaster, target rows, [covariate rows], H)``."""
    context, price = windows(8, [300]), windows(8, [150])
    target_rows, price_rows = windows(8, [0, 100]), windows(8, [30, 130])
    result = rnnshap.foundation.explain(
        forecaster, context, prediction_length=H, background={"target": target_rows, "past_covariates": {"price": price_rows}},
        covariates={"past_covariates": {"price": price}}, method="shapley", players="patches", budget=1000,
        quantile_levels=[0.5],
    )  # fmt: skip

    def own(rows: np.ndarray) -> np.ndarray:  # rows (m, 16): the target's 8 steps, then the covariate's
        return own_forecast_with(forecaster, rows[:, :8], [rows[:, 8:]], H)[..., 1]

    ids = np.arange(16) // 4
    truth = enumerated_shapley(own, np.concatenate([context[0], price[0]]), np.concatenate([target_rows, price_rows], 1), ids)
    assert result.exact.all() and result.values.shape == (1, 2, H, 1) and result.covariates["price"].shape == (1, 2, H, 1)
    np.testing.assert_allclose(result.values[0, :, :, 0], truth[:2], rtol=0, atol=tolerance(truth))
    np.testing.assert_allclose(result.covariates["price"][0, :, :, 0], truth[2:], rtol=0, atol=tolerance(truth))


# -- TinyTimeMixer (granite-tsfm) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ttm() -> Any:
    pytest.importorskip("tsfm_public")
    return foundation_models.ttm()


def ttm_forecast(model: Any, rows: np.ndarray) -> np.ndarray:
    """granite-tsfm's own call: the last context_length steps, NaN given as past_observed_mask=False."""
    rows = rows[:, -model.config.context_length :]
    missing = np.isnan(rows)
    with torch.no_grad():
        out = model(
            past_values=torch.tensor(np.where(missing, 0.0, rows), dtype=torch.float32)[..., None],
            past_observed_mask=torch.tensor(~missing)[..., None],
        ).prediction_outputs
    return out[..., 0].double().numpy()


def test_ttm_deepshap_adds_up_to_its_forecast_with_zeros_for_trimmed_context(ttm: Any) -> None:
    context, background = windows(20, [300, 310]), windows(24, [0, 40, 80, 120])
    before = state(ttm)
    result = rnnshap.foundation.explain(ttm, context, prediction_length=3, background=background)
    own = ttm_forecast(ttm, context)[:, :3, None]
    assert result.values.shape == (2, 20, 3, 1) and result.quantile_levels == ["point"]
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[:, :4] == 0)  # context_length=16: the first 4 steps are never read
    assert np.abs(result.values[:, 4:]).max() > 0
    assert unchanged(before, ttm)


def test_ttm_shapley_patches_are_enumerated_through_its_own_call(ttm: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 60, 120])
    result = rnnshap.foundation.explain(
        ttm, context, prediction_length=2, background=background, method="shapley", players="patches", budget=10_000
    )
    ids = np.arange(16) // 4
    truth = enumerated_shapley(lambda rows: ttm_forecast(ttm, rows)[:, :2], context[0], background, ids)
    assert (
        result.values.shape == (1, 4, 2, 1) and result.exact.all() and result.player_steps == [(0, 4), (4, 8), (8, 12), (12, 16)]
    )
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))
    assert np.all(result.stderr == 0)
    np.testing.assert_allclose(result.total(), ttm_forecast(ttm, context)[:, :2, None], rtol=0, atol=tolerance(truth))


def test_ttm_dropping_context_gives_missing_players_as_its_observed_mask(ttm: Any) -> None:
    context = windows(16, [300])
    result = rnnshap.foundation.explain(ttm, context, prediction_length=2, method="shapley", players=8, budget=10_000)
    ids = np.arange(16) // 8
    truth = enumerated_shapley(lambda rows: ttm_forecast(ttm, rows)[:, :2], context[0], np.full((1, 16), np.nan), ids)
    assert result.game == "dropped" and result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))
    everything_dropped = ttm_forecast(ttm, np.full((1, 16), np.nan))[:, :2, None]
    np.testing.assert_allclose(result.base_values, everything_dropped, rtol=0, atol=tolerance(truth))


def test_a_constant_or_zero_background_is_refused_naming_the_scaling(ttm: Any) -> None:
    context = windows(16, [300])
    for background in (np.zeros((3, 16)), np.full((3, 16), 5.0)):
        with pytest.raises(InputError, match="scales each window by its own spread"):
            rnnshap.foundation.explain(ttm, context, prediction_length=2, background=background)
    with pytest.raises(InputError, match="needs background windows"):
        rnnshap.foundation.explain(ttm, context, prediction_length=2)
    with pytest.raises(InputError, match="refuses shorter context"):
        rnnshap.foundation.explain(ttm, context[:, :8], prediction_length=2, background=windows(16, [0, 50]))


def test_the_shapley_modes_settings_are_refused_with_deepshap_not_ignored(ttm: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 40, 80])
    for setting in ({"budget": 64}, {"random_state": 0}, {"players": "patches"}):
        with pytest.raises(InputError, match=f"{next(iter(setting))}=.*method='shapley'"):
            rnnshap.foundation.explain(ttm, context, prediction_length=2, background=background, **setting)


def test_a_model_of_no_supported_library_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="rnnshap.foundation.explain takes"):
        rnnshap.foundation.explain(torch.nn.Linear(4, 2), np.zeros((1, 4)), prediction_length=1, background=np.ones((1, 4)))


# -- TimesFM 2.5 (timesfm) -----------------------------------------------------------------------------------
def tiny_timesfm(compiled: bool = True, **forecast_config: Any) -> Any:
    pytest.importorskip("timesfm")
    return foundation_models.timesfm(compiled, **forecast_config)


@pytest.fixture(scope="module")
def timesfm_model() -> Any:
    return tiny_timesfm(normalize_inputs=True, use_continuous_quantile_head=True, fix_quantile_crossing=True)


def test_timesfm_deepshap_adds_up_to_forecast_with_zeros_for_trimmed_and_padded_context(timesfm_model: Any) -> None:
    model = timesfm_model
    context = [SERIES[300:320], SERIES[350:362]]  # 20 steps (4 trimmed by max_context=16) and 12 (padded)
    background = windows(20, [0, 100])
    before = state(model.model)
    result = rnnshap.foundation.explain(model, context, prediction_length=9, background=background)
    _, own = model.forecast(horizon=9, inputs=[np.array(c) for c in context])  # the library's own call
    assert result.values.shape == (2, 20, 9, 10) and result.quantile_levels[0] == "mean"
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, :4] == 0)  # beyond max_context
    assert np.all(result.values[1, :8] == 0)  # the padding of the shorter series
    assert np.abs(result.values[0, 4:]).max() > 0 and np.abs(result.values[1, 8:]).max() > 0
    assert unchanged(before, model.model)


def test_timesfm_quantile_levels_pick_forecast_columns(timesfm_model: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 100])
    result = rnnshap.foundation.explain(
        timesfm_model, context, prediction_length=3, background=background, quantile_levels=[0.1, 0.9]
    )
    _, own = timesfm_model.forecast(horizon=3, inputs=[context[0]])
    np.testing.assert_allclose(result.total(), own[:, :, [1, 9]], rtol=0, atol=tolerance(own))
    with pytest.raises(InputError, match="not one of them"):
        rnnshap.foundation.explain(timesfm_model, context, prediction_length=3, background=background, quantile_levels=[0.25])


def test_timesfm_shapley_windows_are_enumerated_through_forecast(timesfm_model: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 100])
    result = rnnshap.foundation.explain(
        timesfm_model, context, prediction_length=2, background=background, method="shapley", players=4, budget=10_000,
        quantile_levels=[0.5],
    )  # fmt: skip

    def own(rows: np.ndarray) -> np.ndarray:
        return timesfm_model.forecast(horizon=2, inputs=list(rows))[1][:, :, 5]

    truth = enumerated_shapley(own, context[0], background, np.arange(16) // 4)
    assert result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


def test_timesfm_uncompiled_and_all_missing_are_refused() -> None:
    with pytest.raises(InputError, match="not compiled"):
        rnnshap.foundation.explain(
            tiny_timesfm(compiled=False), windows(16, [0]), prediction_length=2, background=windows(16, [50])
        )
    # timesfm 3.0.2's forecast() raises on a series with every value missing: no value for the empty coalition
    with pytest.raises(InputError, match="every value missing"):
        rnnshap.foundation.explain(tiny_timesfm(), windows(16, [0]), prediction_length=2, method="shapley", players=8)


def test_timesfm_default_config_nonnegative_clamp_is_context(timesfm_model: Any) -> None:
    """ForecastConfig's defaults (flip invariance, the clamp of a non-negative series at zero) as shipped."""
    model = tiny_timesfm()
    context = np.abs(windows(16, [0, 200]) - 40.0)  # non-negative: forecast() clamps its quantiles at zero
    context[1, 6:8] = np.nan  # a gap: the flag is the filled series'
    background = windows(16, [0, 100]) - 40.0
    result = rnnshap.foundation.explain(model, context, prediction_length=4, background=background)
    _, own = model.forecast(horizon=4, inputs=[c.copy() for c in context])
    assert (own == 0).any()  # the clamp acts
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))


def test_the_result_plots(ttm: Any) -> None:
    pytest.importorskip("matplotlib")
    result = rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]))
    fig = result.plot(horizon=1)
    assert len(fig.axes) == 2
    shapley = rnnshap.foundation.explain(
        ttm, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]), method="shapley", players="patches",
        budget=64,
    )  # fmt: skip
    assert len(shapley.plot().axes) == 2
    with pytest.raises(InputError, match="horizon"):
        result.plot(horizon=5)


def test_copying_the_model_is_not_needed(ttm: Any) -> None:
    """The door explains the object the user holds; a deep copy forecasts the same (nothing was left on it)."""
    result = rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]))
    twin = copy.deepcopy(ttm)
    np.testing.assert_array_equal(ttm_forecast(twin, windows(16, [300])), ttm_forecast(ttm, windows(16, [300])))
    assert result.forecast.shape == (1, 2, 1)


def test_ttm_gaps_are_its_observed_mask_and_get_zeros(ttm: Any) -> None:
    context, background = windows(16, [300, 320]), windows(16, [0, 60, 120])
    context[0, 6:9] = np.nan
    result = rnnshap.foundation.explain(ttm, context, prediction_length=3, background=background)
    own = ttm_forecast(ttm, context)[:, :3, None]
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, 6:9] == 0) and np.abs(result.values[1, 6:9]).max() > 0


# -- Chronos-Bolt (chronos-forecasting) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bolt() -> Any:
    pytest.importorskip("chronos")
    return foundation_models.bolt()


def bolt_forecast(pipeline: Any, rows: Any, H: int, levels: list[float] | None = None) -> np.ndarray:
    """chronos' own call: predict_quantiles on a tensor, or on a list of series of different lengths."""
    if isinstance(rows, np.ndarray):
        rows = torch.tensor(rows, dtype=torch.float32)
    else:
        rows = [torch.tensor(r, dtype=torch.float32) for r in rows]
    quantiles, _ = pipeline.predict_quantiles(rows, prediction_length=H, quantile_levels=levels or [0.1, 0.5, 0.9])
    return quantiles.double().numpy()


def test_bolt_deepshap_is_its_predict_quantiles_with_zeros_for_trimmed_and_padded_context(bolt: Any) -> None:
    context = [SERIES[300:320], SERIES[350:360]]  # 20 steps (4 past context_length=16) and 10 (left-padded with NaN)
    background = windows(24, [0, 50, 100])
    before = state(bolt.model)
    result = rnnshap.foundation.explain(bolt, context, prediction_length=3, background=background)
    own = bolt_forecast(bolt, context, 3)
    assert result.values.shape == (2, 20, 3, 3) and result.quantile_levels == [0.1, 0.5, 0.9]
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, :4] == 0) and np.all(result.values[1, :10] == 0)
    assert np.abs(result.values[0, 4:]).max() > 0 and np.abs(result.values[1, 10:]).max() > 0
    assert unchanged(before, bolt.model)
    inner = rnnshap.foundation.explain(bolt.model, context, prediction_length=3, background=background)  # the model inside
    np.testing.assert_array_equal(inner.values, result.values)


def test_bolt_past_its_horizon_is_its_rollout_by_deepshap_and_by_shapley(bolt: Any) -> None:
    """Past its own 4 steps predict() feeds its quantiles back and takes torch.quantile of the results: two ranks of
    a sort, interpolated (rnnshap/rules/quantile.py), exact through DeepSHAP as through the Shapley mode."""
    context, background = windows(8, [300]), windows(8, [0, 50])
    with pytest.warns(UserWarning, match="prediction length"):
        result = rnnshap.foundation.explain(bolt, context, prediction_length=6, background=background)
    own = bolt_forecast(bolt, context, 6)
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.abs(result.values[..., 4:, :]).max() > 0  # (the steps of the rollout are explained too)
    with pytest.warns(UserWarning, match="prediction length"):  # chronos' own advice, from its own call
        result = rnnshap.foundation.explain(
            bolt, context, prediction_length=6, background=background, method="shapley", players="patches", budget=1000
        )
    truth = enumerated_shapley(lambda rows: bolt_forecast(bolt, rows, 6).reshape(len(rows), -1), context[0], background,
                               np.arange(8) // 4)  # fmt: skip
    assert result.exact.all()
    np.testing.assert_allclose(result.values[0].reshape(2, -1), truth, rtol=0, atol=tolerance(truth))


def test_bolt_dropping_context_is_nan_as_chronos_takes_it(bolt: Any) -> None:
    context = windows(12, [300])
    result = rnnshap.foundation.explain(bolt, context, prediction_length=2, method="shapley", players="patches", budget=1000)
    truth = enumerated_shapley(lambda rows: bolt_forecast(bolt, rows, 2).reshape(len(rows), -1), context[0],
                               np.full((1, 12), np.nan), np.arange(12) // 4)  # fmt: skip
    assert result.game == "dropped" and result.exact.all()
    np.testing.assert_allclose(result.values[0].reshape(3, -1), truth, rtol=0, atol=tolerance(truth))
    np.testing.assert_allclose(result.total(), bolt_forecast(bolt, context, 2), rtol=0, atol=tolerance(truth))


def test_bolt_near_flat_windows_are_refused_naming_the_window_never_answered_off_its_forecast(bolt: Any) -> None:
    """A flat window to explain, and a background window of a stuck sensor (5 + 1e-6 noise): the model divides by
    their spread's floor, the values are ~1e5 times the forecast and cancel, and float32 cannot carry their sum to
    the forecast (it missed by 0.019 and 0.18 of forecasts ~3 and ~28 before): refused, naming the window."""
    flat, background = np.full((1, 32), 3.0), windows(32, [0, 50, 100])
    with pytest.raises(rnnshap.AdditivityError, match=r"context window 0 .*near-flat.*method='shapley'") as info:
        rnnshap.foundation.explain(bolt, flat, prediction_length=3, background=background)
    assert info.value.ill_conditioned and "times the output's scale" in str(info.value)
    stuck = 5 + 1e-6 * np.random.default_rng(0).standard_normal((1, 32))
    with pytest.raises(rnnshap.AdditivityError, match=r"context window 0 .*background window with spread|near-flat"):
        rnnshap.foundation.explain(bolt, windows(32, [300]), prediction_length=3, background=stuck)
    # where the values are not that large, the same door adds up to the library's own forecast as before
    result = rnnshap.foundation.explain(bolt, windows(32, [300]), prediction_length=3, background=background)
    own = bolt_forecast(bolt, windows(32, [300]), 3)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))


# -- TiRex (tirex-ts) ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tirex_model() -> Any:
    pytest.importorskip("tirex")
    return foundation_models.tirex()


def tirex_forecast(model: Any, rows: Any, H: int) -> np.ndarray:
    """tirex' own call: forecast() on a tensor or on a list of series of different lengths."""
    context = torch.tensor(rows, dtype=torch.float32) if isinstance(rows, np.ndarray) else [torch.tensor(r) for r in rows]
    quantiles, _ = model.forecast(context, prediction_length=H)
    return quantiles.double().numpy()


def test_tirex_deepshap_adds_up_to_its_forecast_to_bfloat16_precision(tirex_model: Any) -> None:
    context = [SERIES[300:320], SERIES[350:360]]  # 20 steps (4 past train_ctx_len=16) and 10 (NaN-padded by forecast)
    background = windows(20, [0, 50, 100])
    before = state(tirex_model)
    result = rnnshap.foundation.explain(tirex_model, context, prediction_length=6, background=background)  # 2 patches
    own = tirex_forecast(tirex_model, context, 6)
    assert result.values.shape == (2, 20, 6, 9)
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    # the sLSTM computes in bfloat16: the values add up to its precision (8 bits of mantissa) of the forecast's scale
    bfloat16 = 2.0**-8 * max(1.0, float(np.abs(own).max()))
    assert np.abs(result.total() - own).max() < 4 * bfloat16
    assert np.all(result.values[0, :4] == 0) and np.all(result.values[1, :10] == 0)
    assert np.abs(result.values[0, 4:]).max() > 0
    assert unchanged(before, tirex_model)


def tirex_float32_forecast(model: Any, rows: np.ndarray, H: int) -> np.ndarray:
    """tirex' own forecast() with its sLSTM cells run in float32: the cell's torch path (``_impl_torch``) written
    here from tirex' code without its casts to bfloat16."""
    from tirex.models.slstm.cell import sLSTMCell

    def impl(cell: Any, x: torch.Tensor, state: torch.Tensor) -> Any:
        c = cell.config
        bias = cell._bias_.float().reshape(c.num_heads, c.num_gates, c.head_dim).permute(1, 0, 2).reshape(-1)
        x = x.float().view(x.shape[0], x.shape[1], -1)
        return cell._impl_forward_torch(x, state.float(), cell._recurrent_kernel_.float(), bias)

    with mock.patch.object(sLSTMCell, "_impl_torch", impl):
        return tirex_forecast(model, rows, H)


def test_tirex_float32_twin_adds_up_to_its_own_forecast_to_float32_precision(tirex_model: Any) -> None:
    context, background = windows(16, [300, 340]), windows(16, [0, 50, 100, 150])
    before = state(tirex_model)
    result = rnnshap.foundation.explain(tirex_model, context, prediction_length=6, background=background, precision="float32")
    twin, own = tirex_float32_forecast(tirex_model, context, 6), tirex_forecast(tirex_model, context, 6)
    np.testing.assert_allclose(result.forecast, twin, rtol=0, atol=tolerance(twin))
    np.testing.assert_allclose(result.total(), twin, rtol=0, atol=tolerance(twin))
    # another function than the bfloat16 model's, which it approximates to bfloat16's precision
    assert np.abs(twin - own).max() > tolerance(twin)
    assert np.abs(twin - own).max() < 16 * 2.0**-8 * max(1.0, float(np.abs(own).max()))
    assert result.precision == "float32" and "float32 twin" in result.model
    assert unchanged(before, tirex_model)  # and the model computes in bfloat16 again afterwards
    assert all("_impl_torch" not in b.slstm_layer.slstm_cell.__dict__ for b in tirex_model.blocks)
    np.testing.assert_array_equal(tirex_forecast(tirex_model, context, 6), own)
    default = rnnshap.foundation.explain(tirex_model, context, prediction_length=6, background=background)
    assert default.precision == "bfloat16" and default.model == "TiRex"
    np.testing.assert_array_equal(default.forecast, own)


def test_tirex_float32_twin_refuses_a_near_flat_background_window_naming_it(tirex_model: Any) -> None:
    """TiRex's float32 twin (documented exact to float32) with a background window at 5 + 1e-6 noise missed its own
    twin's forecast by 0.024 before: refused now, naming the window explained and the cause."""
    stuck = 5 + 1e-6 * np.random.default_rng(0).standard_normal((1, 16))
    with pytest.raises(rnnshap.AdditivityError, match=r"context window 0 .*near-flat"):
        rnnshap.foundation.explain(tirex_model, windows(16, [300]), prediction_length=6, background=stuck, precision="float32")


def test_precision_refused_where_the_model_has_no_twin(tirex_model: Any, ttm: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 50])
    with pytest.raises(InputError, match=r"precision='float16': TiRex computes in bfloat16; it can also run in float32"):
        rnnshap.foundation.explain(tirex_model, context, prediction_length=4, background=background, precision="float16")
    with pytest.raises(InputError, match=r"precision='bfloat16': TinyTimeMixer computes in float32\. Give one of \['float32'\]"):
        rnnshap.foundation.explain(ttm, context, prediction_length=4, background=background, precision="bfloat16")
    own = rnnshap.foundation.explain(ttm, context, prediction_length=4, background=background)
    named = rnnshap.foundation.explain(ttm, context, prediction_length=4, background=background, precision="float32")
    assert own.precision == named.precision == "float32" and own.model == named.model == "TinyTimeMixer"
    np.testing.assert_array_equal(named.values, own.values)  # its own precision: the same call


def test_tirex_shapley_patches_dropping_context_enumerated_through_forecast(tirex_model: Any) -> None:
    context = windows(12, [300])
    result = rnnshap.foundation.explain(
        tirex_model, context, prediction_length=4, method="shapley", players="patches", budget=1000, quantile_levels=[0.5]
    )
    truth = enumerated_shapley(lambda rows: tirex_forecast(tirex_model, rows, 4)[..., 4], context[0],
                               np.full((1, 12), np.nan), np.arange(12) // 4)  # fmt: skip
    assert result.game == "dropped" and result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


# -- MOMENT (momentfm) -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moment_model() -> Any:
    pytest.importorskip("momentfm")
    with pytest.warns(UserWarning, match="must be fine-tuned"):  # momentfm's own note on a forecasting head
        return foundation_models.moment()


def moment_forecast(model: Any, rows: np.ndarray) -> np.ndarray:
    """momentfm's own call on seq_len steps: NaN in x_enc where input_mask is 0."""
    with torch.no_grad():
        out = model(
            x_enc=torch.tensor(rows, dtype=torch.float32)[:, None], input_mask=torch.tensor(~np.isnan(rows), dtype=torch.float32)
        ).forecast
    return out[:, 0].double().numpy()


def test_moment_deepshap_adds_up_to_its_forecast_with_zeros_for_trimmed_context_and_gaps(moment_model: Any) -> None:
    context, background = windows(20, [300, 330]), windows(24, [0, 50, 100])
    context[1, 10:12] = np.nan
    before = state(moment_model)
    result = rnnshap.foundation.explain(moment_model, context, prediction_length=3, background=background)
    own = moment_forecast(moment_model, context[:, 4:])[:, :3, None]
    assert result.values.shape == (2, 20, 3, 1)
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[:, :4] == 0) and np.all(result.values[1, 10:12] == 0)
    assert np.abs(result.values[0, 4:]).max() > 0
    assert unchanged(before, moment_model)


def test_moment_shapley_windows_enumerated_through_its_call(moment_model: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 60])
    result = rnnshap.foundation.explain(
        moment_model, context, prediction_length=2, background=background, method="shapley", players=8, budget=1000
    )
    truth = enumerated_shapley(
        lambda rows: moment_forecast(moment_model, rows)[:, :2], context[0], background, np.arange(16) // 8
    )
    assert result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


# -- Chronos-2 (chronos-forecasting) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chronos2() -> Any:
    pytest.importorskip("chronos")
    return foundation_models.chronos2()


def chronos2_forecast(pipeline: Any, tasks: list[Any], H: int, levels: list[float] | None = None) -> np.ndarray:
    """chronos' own call on a list of series or of {"target", "past_covariates", "future_covariates"} dicts."""
    quantiles, _ = pipeline.predict_quantiles(tasks, prediction_length=H, quantile_levels=levels or pipeline.quantiles)
    return np.stack([q.double().numpy()[0] for q in quantiles])


def test_chronos2_deepshap_adds_up_to_predict_quantiles_with_zeros_for_trimmed_and_padded(chronos2: Any) -> None:
    context = [SERIES[300:320], SERIES[350:360]]
    background = windows(24, [0, 50, 100])
    before = state(chronos2.model)
    result = rnnshap.foundation.explain(
        chronos2, context, prediction_length=5, background=background, quantile_levels=[0.1, 0.5, 0.9]
    )
    own = chronos2_forecast(chronos2, [torch.tensor(c) for c in context], 5, [0.1, 0.5, 0.9])
    assert result.values.shape == (2, 20, 5, 3)
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, :4] == 0) and np.all(result.values[1, :10] == 0)
    assert np.abs(result.values[0, 4:]).max() > 0
    assert unchanged(before, chronos2.model)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="past the model's own 8 steps"):
        with pytest.warns(UserWarning, match="prediction length"):
            rnnshap.foundation.explain(chronos2, context, prediction_length=10, background=background)


def test_chronos2_covariates_past_and_known_future_add_up_with_the_target(chronos2: Any) -> None:
    n, L, H = 2, 16, 4
    context, background = windows(L, [300, 320]), windows(L, [0, 50, 100])
    covariates = {
        "past_covariates": {"price": windows(L, [150, 170]), "promo": windows(L, [200, 220])},
        "future_covariates": {"promo": windows(H, [216, 236])},
    }
    reference = {
        "target": background,
        "past_covariates": {"price": windows(L, [10, 60, 110]), "promo": windows(L, [20, 70, 120])},
        "future_covariates": {"promo": windows(H, [36, 86, 136])},
    }
    result = rnnshap.foundation.explain(chronos2, context, prediction_length=H, background=reference, covariates=covariates)
    tasks = [
        {
            "target": context[i],
            "past_covariates": {k: v[i] for k, v in covariates["past_covariates"].items()},
            "future_covariates": {"promo": covariates["future_covariates"]["promo"][i]},
        }
        for i in range(n)
    ]
    own = chronos2_forecast(chronos2, tasks, H)
    assert set(result.covariates) == {"price", "promo"}
    assert result.covariates["price"].shape == (n, L, H, 9) and result.covariates["promo"].shape == (n, L + H, H, 9)
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.abs(result.covariates["promo"][:, L:]).max() > 0  # the known future values are read
    partial = {"target": background, "past_covariates": {"price": reference["past_covariates"]["price"]}}
    with pytest.raises(InputError, match="reference windows for the covariates"):
        rnnshap.foundation.explain(chronos2, context, prediction_length=H, background=partial, covariates=covariates)


def test_chronos2_shapley_patches_dropping_context_enumerated_through_predict_quantiles(chronos2: Any) -> None:
    context = windows(12, [300])
    result = rnnshap.foundation.explain(
        chronos2, context, prediction_length=2, method="shapley", players="patches", budget=1000, quantile_levels=[0.5]
    )

    def own(rows: np.ndarray) -> np.ndarray:
        return chronos2_forecast(chronos2, list(torch.tensor(rows, dtype=torch.float32)), 2, [0.5])[..., 0]

    truth = enumerated_shapley(own, context[0], np.full((1, 12), np.nan), np.arange(12) // 4)
    assert result.game == "dropped" and result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


def test_a_forecast_path_that_drifts_from_the_library_call_is_refused(ttm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library release that changes its forecast path: the module no longer computes the library's forecast."""
    from rnnshap.forecasting.foundation.tinytimemixer import TinyTimeMixerAdapter

    original = TinyTimeMixerAdapter.library_forecast
    monkeypatch.setattr(TinyTimeMixerAdapter, "library_forecast", lambda self, w, H, levels: original(self, w, H, levels) + 1.0)
    with pytest.raises(rnnshap.RnnShapError, match="away from the library's own forecast call"):
        rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]))


def test_an_unverified_library_version_is_refused_by_name(ttm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnshap.forecasting import VERIFIED, UnverifiedVersionError

    monkeypatch.setitem(VERIFIED, "granite-tsfm", ((9, 0), (9, 1)))
    with pytest.raises(UnverifiedVersionError, match="granite-tsfm"):
        rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]))


@pytest.mark.parametrize("metadata", [True, False], ids=["installed-but-broken", "not-installed"])
def test_a_tinytimemixer_without_granite_tsfm_names_the_extra_that_installs_it(
    metadata: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """granite-tsfm is in the foundation-ttm extra, not the foundation one (it pins transformers 4.56): a model of
    tsfm_public's whose library does not import, or is not installed at all, is refused naming that extra."""
    import importlib.metadata
    import sys

    version = importlib.metadata.version

    def granite_missing(name: str) -> str:
        if name == "granite-tsfm":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    if metadata:
        monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.3.2" if name == "granite-tsfm" else version(name))
    else:
        monkeypatch.setattr(importlib.metadata, "version", granite_missing)
    monkeypatch.setitem(sys.modules, "tsfm_public", None)  # importing it raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tsfm_public.models", None)
    monkeypatch.setitem(sys.modules, "tsfm_public.models.tinytimemixer", None)
    model = type("TinyTimeMixerForPrediction", (torch.nn.Module,), {"__module__": "tsfm_public.models.tinytimemixer"})()
    with pytest.raises(ImportError, match=r"TinyTimeMixer through granite-tsfm.*pip install 'rnnshap\[foundation-ttm\]'"):
        rnnshap.foundation.explain(model, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]))


def test_sampled_shapley_values_add_up_and_their_errors_cover_the_enumerated_ones(ttm: Any) -> None:
    """Below the enumeration's cost: antithetic walks, values that still add up to the forecast, standard errors
    that cover the distance to the values enumerated through granite-tsfm's own call."""
    context, background = windows(16, [300]), windows(16, [0, 60])
    result = rnnshap.foundation.explain(
        ttm, context, prediction_length=2, background=background, method="shapley", players=2, budget=120, random_state=0
    )
    truth = enumerated_shapley(lambda rows: ttm_forecast(ttm, rows)[:, :2], context[0], background, np.arange(16) // 2)
    assert not result.exact.any() and result.n_evals[0] <= 120 and (result.stderr > 0).any()
    np.testing.assert_allclose(result.total(), ttm_forecast(ttm, context)[:, :2, None], rtol=0, atol=tolerance(truth))
    error = np.abs(result.values[0, :, :, 0] - truth)
    assert np.mean(error <= 4 * result.stderr[0, :, :, 0] + tolerance(truth)) >= 0.9


def test_timesfm_gaps_are_interpolated_as_forecast_does_and_get_zeros(timesfm_model: Any) -> None:
    context, background = windows(16, [300, 330]), windows(16, [0, 100, 200])
    context[0, [5, 6, 9, 15]] = np.nan  # inside the series, and its last step (filled with the last observed value)
    result = rnnshap.foundation.explain(timesfm_model, context, prediction_length=3, background=background)
    _, own = timesfm_model.forecast(horizon=3, inputs=[c.copy() for c in context])
    np.testing.assert_allclose(result.forecast, own, rtol=0, atol=tolerance(own))
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, [5, 6, 9, 15]] == 0) and np.abs(result.values[0, [4, 7, 8, 14]]).max() > 0


def test_chronos2_shapley_covariates_are_players_enumerated_through_predict_quantiles(chronos2: Any) -> None:
    """Shapley mode with covariates: windows of 4 steps of the target and of each covariate (its future steps too)
    as players, against background windows and dropped; every coalition through chronos' own call."""
    L, H = 8, 4
    context = windows(L, [300])
    covariates = {"past_covariates": {"promo": windows(L, [200])}, "future_covariates": {"promo": windows(H, [208])}}
    reference = {
        "target": windows(L, [0, 50]),
        "past_covariates": {"promo": windows(L, [20, 70])},
        "future_covariates": {"promo": windows(H, [28, 78])},
    }
    promo = np.concatenate([covariates["past_covariates"]["promo"], covariates["future_covariates"]["promo"]], axis=1)
    promo_reference = np.concatenate([reference["past_covariates"]["promo"], reference["future_covariates"]["promo"]], axis=1)

    def own(rows: np.ndarray) -> np.ndarray:  # rows: target steps then promo's past and future steps
        tasks = [
            {"target": r[:L], "past_covariates": {"promo": r[L : 2 * L]}, "future_covariates": {"promo": r[2 * L :]}}
            for r in rows
        ]
        return chronos2_forecast(chronos2, tasks, H, [0.5])[..., 0]

    x = np.concatenate([context[0], promo[0]])
    ids = np.concatenate([np.arange(L) // 4, 2 + (np.arange(L + H) + 0) // 4])  # promo: 12 steps, windows of 4
    for background, refs in ((reference, np.concatenate([reference["target"], promo_reference], axis=1)), (None, None)):
        result = rnnshap.foundation.explain(
            chronos2, context, prediction_length=H, background=background, covariates=covariates, method="shapley",
            players=4, budget=10_000, quantile_levels=[0.5],
        )  # fmt: skip
        truth = enumerated_shapley(own, x, np.full((1, x.size), np.nan) if refs is None else refs, ids)
        assert result.exact.all() and result.covariates is not None and result.covariate_stderr is not None
        np.testing.assert_allclose(result.values[0, :, :, 0], truth[:2], rtol=0, atol=tolerance(truth))
        np.testing.assert_allclose(result.covariates["promo"][0, :, :, 0], truth[2:], rtol=0, atol=tolerance(truth))
        np.testing.assert_allclose(result.total(), own(x[None])[:, :, None], rtol=0, atol=tolerance(truth))


# -- review: inputs a user gives next, and missing context in the Shapley mode against a background -------------
def test_shapley_against_a_background_gives_padding_and_gaps_exactly_zero_as_deepshap_does(bolt: Any) -> None:
    """The padding of a shorter series and a gap are missing in the explained window: no player, exactly 0, as
    DeepSHAP gives them (its references miss the same steps); the others enumerated through predict_quantiles
    against background windows missing the same steps."""
    gappy = SERIES[300:312].copy()
    gappy[5] = np.nan
    context = [gappy, SERIES[350:358]]  # 12 steps with a gap, 8 steps (4 of padding)
    background = windows(12, [0, 50])
    result = rnnshap.foundation.explain(bolt, context, prediction_length=2, background=background, method="shapley",
                                        players="patches", budget=10_000)  # fmt: skip
    assert result.exact.all()
    np.testing.assert_allclose(result.total(), bolt_forecast(bolt, context, 2), rtol=0, atol=tolerance(result.forecast))
    assert np.all(result.values[1, 0] == 0)  # the second series' first patch is all padding
    for i, x in enumerate(result.context):
        references = np.where(np.isnan(x)[None], np.nan, background)
        truth = enumerated_shapley(lambda rows: bolt_forecast(bolt, rows, 2).reshape(len(rows), -1), x, references,
                                   np.arange(12) // 4)  # fmt: skip
        np.testing.assert_allclose(result.values[i].reshape(3, -1), truth, rtol=0, atol=tolerance(truth))
    steps = rnnshap.foundation.explain(
        bolt, context, prediction_length=2, background=background, method="shapley", budget=400, random_state=0
    )  # sampled: the missing steps are still no players
    assert np.all(steps.values[0, 5] == 0) and np.all(steps.values[1, :4] == 0)
    assert np.abs(steps.values[0, 4]).max() > 0 and np.abs(steps.values[1, 4:]).max() > 0
    np.testing.assert_allclose(steps.total(), steps.forecast, rtol=0, atol=tolerance(steps.forecast))


def test_a_pandas_series_is_one_series_and_a_dataframe_is_refused_with_advice(bolt: Any) -> None:
    pd = pytest.importorskip("pandas")
    background = windows(16, [0, 50])
    series = pd.Series(SERIES[300:316], index=pd.date_range("2000-01-01", periods=16, freq="D"))
    result = rnnshap.foundation.explain(bolt, series, prediction_length=2, background=background)
    np.testing.assert_array_equal(
        result.values, rnnshap.foundation.explain(bolt, SERIES[300:316], prediction_length=2, background=background).values
    )
    listed = rnnshap.foundation.explain(bolt, [series, series.iloc[6:]], prediction_length=2, background=background)
    np.testing.assert_allclose(listed.total(), bolt_forecast(bolt, [SERIES[300:316], SERIES[306:316]], 2), rtol=0,
                               atol=tolerance(listed.forecast))  # fmt: skip
    with pytest.raises(InputError, match="to_numpy"):
        rnnshap.foundation.explain(bolt, pd.DataFrame({"a": SERIES[300:316]}), prediction_length=2, background=background)


def test_bolt_levels_it_was_not_trained_on_are_its_interpolation(bolt: Any) -> None:
    """predict_quantiles interpolates a level the model does not forecast with torch.quantile: exact (its rule)."""
    context = windows(16, [300])
    result = rnnshap.foundation.explain(bolt, context, prediction_length=2, background=windows(16, [0, 50]),
                                        quantile_levels=[0.25])  # fmt: skip
    own = bolt_forecast(bolt, context, 2, [0.25])
    assert result.quantile_levels == [0.25]
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.abs(result.values).max() > 0


def test_chronos2_shapley_covariate_steps_before_its_context_length_are_no_players(chronos2: Any) -> None:
    """Chronos-2 cuts every row of a group (covariates too) to the last context_length=16 steps: a covariate's
    earlier steps are never read, so they are no players (exactly 0, as the target's and as DeepSHAP gives them),
    and the players left are those of a window of 16 steps, enumerated through chronos' own call."""
    L, H = 20, 2
    context = windows(L, [300])
    covariates = {"past_covariates": {"price": windows(L, [200])}}
    reference = {"target": windows(L, [0, 50]), "past_covariates": {"price": windows(L, [20, 70])}}
    options = dict(background=reference, covariates=covariates, method="shapley", quantile_levels=[0.5])
    sampled = rnnshap.foundation.explain(chronos2, context, prediction_length=H, budget=200, random_state=0, **options)
    assert np.all(sampled.values[0, :4] == 0) and np.all(sampled.covariates["price"][0, :4] == 0)
    np.testing.assert_allclose(sampled.total(), sampled.forecast, rtol=0, atol=tolerance(sampled.forecast))
    patches = rnnshap.foundation.explain(chronos2, context, prediction_length=H, players="patches", budget=10_000, **options)
    assert patches.covariates["price"].shape == patches.values.shape == (1, 4, H, 1) and patches.exact.all()

    def own(rows: np.ndarray) -> np.ndarray:  # rows: the target's last 16 steps, then price's
        tasks = [{"target": r[:16], "past_covariates": {"price": r[16:]}} for r in rows]
        return chronos2_forecast(chronos2, tasks, H, [0.5])[..., 0]

    x = np.concatenate([context[0, 4:], covariates["past_covariates"]["price"][0, 4:]])
    refs = np.concatenate([reference["target"][:, 4:], reference["past_covariates"]["price"][:, 4:]], axis=1)
    truth = enumerated_shapley(own, x, refs, np.arange(32) // 4)
    np.testing.assert_allclose(patches.values[0, :, :, 0], truth[:4], rtol=0, atol=tolerance(truth))
    np.testing.assert_allclose(patches.covariates["price"][0, :, :, 0], truth[4:], rtol=0, atol=tolerance(truth))


@pytest.mark.parametrize("levels", [[], [0.5], [0.1]])
def test_a_point_forecaster_refuses_any_quantile_levels(ttm: Any, levels: list[float]) -> None:
    """TinyTimeMixer's one column is its point forecast (a mean under its MSE training), no quantile: no level, not
    even 0.5 or none at all, is quietly taken for it."""
    with pytest.raises(InputError, match="point forecast"):
        rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=windows(16, [0, 60]),
                                   quantile_levels=levels)  # fmt: skip


def test_chronos2_covariate_references_are_matched_by_name_and_a_missing_future_is_named(chronos2: Any) -> None:
    """Reference covariates are found by name (in any order); a known covariate whose references lack its future
    steps is refused naming it (it was an engine error on stacked shapes)."""
    L, H = 16, 2
    context, target = windows(L, [300]), windows(L, [0, 50])
    covariates = {"past_covariates": {"a": windows(L, [200]), "b": windows(L, [220])}}
    ordered = {"target": target, "past_covariates": {"a": windows(L, [20, 70]), "b": windows(L, [40, 90])}}
    swapped = {"target": target, "past_covariates": {"b": windows(L, [40, 90]), "a": windows(L, [20, 70])}}
    one = rnnshap.foundation.explain(chronos2, context, prediction_length=H, background=ordered, covariates=covariates)
    other = rnnshap.foundation.explain(chronos2, context, prediction_length=H, background=swapped, covariates=covariates)
    np.testing.assert_array_equal(one.covariates["a"], other.covariates["a"])
    np.testing.assert_array_equal(one.values, other.values)
    known = {**covariates, "future_covariates": {"b": windows(H, [236])}}
    for settings in ({"method": "deepshap"}, {"method": "shapley", "players": 8}):
        with pytest.raises(InputError, match=r"'b'.*future"):
            rnnshap.foundation.explain(chronos2, context, prediction_length=H, background=ordered, covariates=known,
                                       **settings)  # fmt: skip


def test_the_plot_of_a_forecast_with_covariates_says_where_their_share_is(chronos2: Any) -> None:
    """The bars are the target's steps only: with covariates they do not add up to the forecast's change, which the
    plot says, with the covariates' share of it."""
    pytest.importorskip("matplotlib")
    L = 16
    result = rnnshap.foundation.explain(
        chronos2, windows(L, [300]), prediction_length=2, covariates={"past_covariates": {"price": windows(L, [200])}},
        background={"target": windows(L, [0, 50]), "past_covariates": {"price": windows(L, [20, 70])}},
    )  # fmt: skip
    bottom = result.plot().axes[1]
    share = float(result.covariates["price"][0, :, 0, 4].sum())
    assert "price" in bottom.get_title() and f"{share:.3g}" in bottom.get_title()


def test_a_background_window_with_nothing_observed_is_refused_as_missing_not_as_all_zero(ttm: Any) -> None:
    background = windows(16, [0, 60])
    background[1] = np.nan
    with pytest.raises(InputError, match=r"row\(s\) \[1\] .*no observed value"):
        rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=background, method="shapley")


# -- ForecastExplainer: the setup kept between calls ----------------------------------------------------------------
def _setups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts DeepSHAP's setups (the check that the model computes each row alone, run by every explainer built)."""
    from rnnshap.engines.pytorch.checks import ModelChecks

    calls: list[int] = []
    check = ModelChecks.rows_independent

    def counted(self: Any, eps: float, probed: Any) -> None:
        calls.append(1)
        check(self, eps, probed)

    monkeypatch.setattr(ModelChecks, "rows_independent", counted)
    return calls


def test_forecast_explainer_gives_explains_values_bit_for_bit_and_sets_up_once(
    ttm: Any, timesfm_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    setups = _setups(monkeypatch)
    for model in (ttm, timesfm_model):  # (TimesFM: boolean masks beside the windows, a fill map per missing pattern)
        background = windows(16, [0, 40, 80, 120])
        before = state(getattr(model, "model", model))
        explainer = rnnshap.foundation.ForecastExplainer(model, background=background)
        gapped = windows(16, [200, 220])
        gapped[1, 3:5] = np.nan
        for context in (windows(16, [300, 310]), windows(16, [330]), gapped):
            setups.clear()
            fresh = rnnshap.foundation.explain(model, context, prediction_length=3, background=background)
            built = len(setups)
            assert built >= 1
            for _ in range(2):
                kept = explainer.explain(context, prediction_length=3)
                np.testing.assert_array_equal(kept.values, fresh.values)
                np.testing.assert_array_equal(kept.base_values, fresh.base_values)
                np.testing.assert_array_equal(kept.forecast, fresh.forecast)
        setups.clear()
        explainer.explain(windows(16, [250, 260, 270]), prediction_length=3)  # settings and references seen before
        assert setups == []
        explainer.explain(windows(16, [250]), prediction_length=2)  # another prediction length: its own setup
        assert len(setups) >= 1
        assert unchanged(before, getattr(model, "model", model))


def test_a_setup_used_at_once_runs_no_vetting_forward(ttm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """explain() and a ForecastExplainer's first call build DeepSHAP's explainer and use it at once: the reference pass
    its setup kept is taken without the plain forward that vets a kept pass; a later call vets it, once."""
    from rnnshap.engines.pytorch.kept import KeptReferencePasses

    vettings: list[int] = []
    computes = KeptReferencePasses.computes

    def counted(self: Any, *args: Any) -> bool:
        vettings.append(1)
        return computes(self, *args)

    monkeypatch.setattr(KeptReferencePasses, "computes", counted)
    background, context = windows(16, [0, 40, 80, 120]), windows(16, [300])
    once = rnnshap.foundation.explain(ttm, context, prediction_length=3, background=background)
    assert vettings == []
    explainer = rnnshap.foundation.ForecastExplainer(ttm, background=background)
    first = explainer.explain(context, prediction_length=3)
    assert vettings == []
    later = explainer.explain(context, prediction_length=3)
    assert len(vettings) == 1
    for result in (first, later):
        np.testing.assert_array_equal(result.values, once.values)


def test_forecast_explainer_sees_the_model_trained_between_calls(ttm: Any) -> None:
    """Weights changed in place after a call: the next call explains the changed model, as a fresh explain() does."""
    model = copy.deepcopy(ttm)
    background, context = windows(16, [0, 40, 80, 120]), windows(16, [300, 310])
    explainer = rnnshap.foundation.ForecastExplainer(model, background=background)
    first = explainer.explain(context, prediction_length=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    kept = explainer.explain(context, prediction_length=3)
    fresh = rnnshap.foundation.explain(model, context, prediction_length=3, background=background)
    assert np.abs(kept.forecast - first.forecast).max() > 1e-3  # the weights changed the forecast
    np.testing.assert_array_equal(kept.values, fresh.values)
    np.testing.assert_array_equal(kept.base_values, fresh.base_values)
    np.testing.assert_allclose(kept.total(), kept.forecast, rtol=0, atol=tolerance(kept.forecast))


def test_forecast_explainer_takes_no_other_model_or_background(ttm: Any) -> None:
    explainer = rnnshap.foundation.ForecastExplainer(ttm, background=windows(16, [0, 40]))
    with pytest.raises(InputError, match="ForecastExplainer's own"):
        explainer.explain(windows(16, [300]), prediction_length=2, background=windows(16, [80, 120]))


def test_forecast_explainer_keeps_the_most_recently_used_setups(ttm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnshap.forecasting.foundation import methods

    monkeypatch.setattr(methods, "KEPT_EXPLAINERS", 2)  # (where DeepSHAP's explainers are kept)
    setups = _setups(monkeypatch)
    explainer = rnnshap.foundation.ForecastExplainer(ttm, background=windows(16, [0, 40, 80]))
    context = windows(16, [300])
    for horizon in (1, 2, 3, 1):  # the fourth call's setup was the oldest of three: dropped, built again
        explainer.explain(context, prediction_length=horizon)
    assert len(setups) == 4
    setups.clear()
    explainer.explain(context, prediction_length=3)  # the second most recent: kept
    assert setups == []


# -- refusals that name their cause and say what to do ------------------------------------------------------
def test_a_bfloat16_bolt_is_named_as_the_cause_of_the_gap_and_its_shapley_mode_adds_up_to_its_forecast() -> None:
    """Chronos-Bolt cast to bfloat16: the module's forecast moves off the library's by bfloat16 rounding, which the
    refusal names (not a change of the library's forecast path); the Shapley mode runs the library's own call."""
    pytest.importorskip("chronos")
    pipeline = foundation_models.bolt()
    pipeline.model.to(torch.bfloat16)
    context, background = windows(16, [300]), windows(16, [0, 50, 100])
    before = state(pipeline.model)
    with pytest.raises(rnnshap.RnnShapError, match=r"bfloat16.*model\.float\(\).*method='shapley'") as refused:
        rnnshap.foundation.explain(pipeline, context, prediction_length=3, background=background)
    assert "may have changed" not in str(refused.value)
    assert unchanged(before, pipeline.model) and next(pipeline.model.parameters()).dtype == torch.bfloat16
    result = rnnshap.foundation.explain(
        pipeline, context, prediction_length=2, background=background[:2], method="shapley", players="patches", budget=100
    )
    own = bolt_forecast(pipeline, context, 2)
    assert result.exact.all()
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))


def test_timesfm_an_all_missing_window_to_explain_is_refused_naming_it() -> None:
    """timesfm's forecast() raises numpy's "truth value of an empty array" on a series with no value: refused as
    rnnshap's InputError naming the window, in both modes, with the library's error as its cause."""
    model = tiny_timesfm()
    context = windows(16, [300, 320])
    context[1] = np.nan
    for options in ({}, {"method": "shapley", "players": 8}):
        with pytest.raises(InputError, match=r"window\(s\) \[1\] .*no observed value.*Drop those windows") as refused:
            rnnshap.foundation.explain(model, context, prediction_length=2, background=windows(16, [0, 50]), **options)
        assert isinstance(refused.value.__cause__, ValueError) and not isinstance(refused.value.__cause__, InputError)


def test_moment_dropping_context_it_forecasts_nan_from_says_to_give_background_windows(moment_model: Any) -> None:
    """MOMENT forecasts NaN from a context with every value missing: the game that drops context has no value for its
    empty coalition, and the refusal says to give background windows (not to fill NaN the user never gave)."""
    with pytest.raises(InputError, match=r"MOMENT.*nan.*every value missing.*Give background windows") as refused:
        rnnshap.foundation.explain(moment_model, windows(16, [300]), prediction_length=3, method="shapley", players=8)
    assert "fill or mask" not in str(refused.value)


def test_a_background_window_with_a_gap_is_refused_by_deepshap_naming_it_and_taken_by_the_shapley_mode(bolt: Any) -> None:
    """DeepSHAP's references hold no NaN: the refusal names the row and step and says what to do; the Shapley mode
    takes the gappy window (the library's own call reads it as missing), as the refusal says."""
    context, background = windows(12, [300]), windows(12, [0, 50, 100])
    background[1, 3] = np.nan
    with pytest.raises(InputError, match=r"background window\(s\) \[1\] .*step 3.*without gaps.*method='shapley'"):
        rnnshap.foundation.explain(bolt, context, prediction_length=2, background=background)
    result = rnnshap.foundation.explain(
        bolt, context, prediction_length=2, background=background, method="shapley", players="patches", budget=1000
    )
    truth = enumerated_shapley(lambda rows: bolt_forecast(bolt, rows, 2).reshape(len(rows), -1), context[0], background,
                               np.arange(12) // 4)  # fmt: skip
    assert result.exact.all()
    np.testing.assert_allclose(result.values[0].reshape(3, -1), truth, rtol=0, atol=tolerance(truth))


def test_ttm_a_context_shorter_than_its_context_length_is_refused_saying_what_to_give(ttm: Any) -> None:
    with pytest.raises(InputError, match=r"reads 16 steps.*has 8.*at least 16 steps.*NaN"):
        rnnshap.foundation.explain(ttm, windows(8, [300]), prediction_length=2, background=windows(16, [0, 50]))
    # the advice holds: padded in front with NaN (missing: past_observed_mask=False), it is explained, the pad 0
    padded = np.concatenate([np.full((1, 8), np.nan), windows(8, [300])], axis=1)
    result = rnnshap.foundation.explain(ttm, padded, prediction_length=2, background=windows(16, [0, 50]))
    own = ttm_forecast(ttm, padded)[:, :2, None]
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, :8] == 0)


@pytest.mark.parametrize("method", ["deepshap", "shapley"])
def test_an_infinite_value_in_the_context_or_background_is_refused_naming_the_context(ttm: Any, method: str) -> None:
    context, background = windows(16, [300, 310]), windows(16, [0, 50])
    context[1, 5] = np.inf
    with pytest.raises(InputError, match=r"^context holds an infinite value \(window 1, step 5: inf\).*NaN") as refused:
        rnnshap.foundation.explain(ttm, context, prediction_length=2, background=background, method=method)
    assert "X" not in str(refused.value).split(":")[0]
    background[0, 2] = -np.inf
    with pytest.raises(InputError, match=r"^background holds an infinite value \(window 0, step 2: -inf\)"):
        rnnshap.foundation.explain(ttm, windows(16, [300]), prediction_length=2, background=background, method=method)
