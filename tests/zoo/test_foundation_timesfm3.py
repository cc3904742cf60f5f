"""rnnshap.foundation.explain on TimesFM 3 (timesfm 3.0.2's ``timesfm3.TimesFM3Forecaster``), held to its own
public forecast call, ``predict_batch(contexts, horizon, return_quantiles=True)``.

Truths independent of rnnshap: that call on the same context, which base value plus values must equal; Shapley
values enumerated here over every coalition through it (against background windows, and with the missing players
given as NaN, the way it takes missing values); exact zeros for the padding of a shorter series, for gaps (which it
interpolates) and for the steps before its longest context. The forecaster is tiny, built from the library's config
classes as ``TimesFM3Forecaster(ModelConfig(checkpoint_path=...))`` builds it (tests/zoo/foundation_models.py).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np
import pytest
import torch

import rnnshap
import rnnshap.foundation
from rnnshap.errors import InputError

from . import foundation_models
from .test_foundation import SERIES, check_past_covariate_shapley, enumerated_shapley, state, tolerance, unchanged, windows

forecaster_module = pytest.importorskip("timesfm3.torch.timesfm3_forecaster")


@pytest.fixture(scope="module", autouse=True)
def no_collection_per_call() -> Iterator[None]:
    """``predict_batch`` ends with a full ``gc.collect()`` on the CPU (timesfm 3.0.2's ``try_gc``): 0.1 s a call here,
    1-3 s in a worker of the whole suite, whose collector walks every object TensorFlow and JAX left there; this file
    calls it about 150 times (the enumerations through the library's own call). No value depends on it: off here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forecaster_module, "try_gc", lambda *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def forecaster() -> Any:
    return foundation_models.timesfm3()


def own_forecast(forecaster: Any, rows: Any, H: int) -> np.ndarray:
    """The library's own call: ``predict_batch``'s quantiles, (n, H, Q); of multivariate rows (n, V, L) (the target
    variates of each context), (n, V, H, Q)."""
    outputs = forecaster.predict_batch([np.array(r, dtype=np.float64) for r in rows], horizon=H, return_quantiles=True)
    return np.stack([out.quantiles for out in outputs]).astype(np.float64)


def variates(length: int, starts: list[int], shared: np.ndarray) -> np.ndarray:
    """Windows of three variates (m, 3, length): the series from ``starts``, 50 steps later, and ``shared`` (the same
    values in every window)."""
    return np.stack([np.stack([SERIES[s : s + length], SERIES[s + 50 : s + 50 + length], shared]) for s in starts])


def test_timesfm3_deepshap_adds_up_to_predict_batch_with_zeros_for_padding_and_gaps(forecaster: Any) -> None:
    context = [SERIES[300:316].copy(), SERIES[350:363].copy()]  # 16 steps, and 13 (a shorter series: padded with NaN)
    context[0][[5, 6, 9, 15]] = np.nan  # gaps inside the series and its last step: interpolated by predict_batch
    background = windows(16, [0, 100, 200])
    before = state(forecaster.model)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=5, background=background)
    own = own_forecast(forecaster, context, 5)
    assert result.values.shape == (2, 16, 5, 3) and result.quantile_levels == [0.1, 0.5, 0.9]
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, [5, 6, 9, 15]] == 0) and np.abs(result.values[0, [4, 7, 8, 14]]).max() > 0
    assert np.all(result.values[1, :3] == 0) and np.abs(result.values[1, 3:]).max() > 0
    assert unchanged(before, forecaster.model)
    # what the answer went through: quantiles that cross before predict_batch sorts them, and the linear detrending's
    # gate on some of these windows and off on others (the library's own decode, detrending on and off)
    rows = torch.as_tensor(np.concatenate([background, windows(16, [300, 330, 350])]), dtype=torch.float32)[:, None]
    plain = copy.deepcopy(forecaster.model)
    plain.use_linear_detrending = False
    with torch.no_grad():
        raw = forecaster.model.decode(target=rows, horizon=8)
        detrended = (raw != plain.decode(target=rows, horizon=8)).flatten(1).any(1)
    assert (raw[..., :-1] > raw[..., 1:]).any()
    assert detrended.any() and not detrended.all()


def test_timesfm3_steps_before_its_longest_context_get_exact_zeros(forecaster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict_batch keeps the last ``global_context`` steps (15,360 rounded to patches): here the library's own
    constant set to 12, so that a window of 20 is cut as a longer one is by the released model."""
    from timesfm3.torch import timesfm3_forecaster

    monkeypatch.setattr(timesfm3_forecaster, "_MAX_CONTEXT_LENGTH", 12)
    assert forecaster.global_context == 12
    context, background = windows(20, [300, 330]), windows(20, [0, 100])
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=3, background=background)
    own = own_forecast(forecaster, context, 3)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[:, :8] == 0) and np.abs(result.values[:, 8:]).max() > 0


def test_timesfm3_shapley_patches_are_enumerated_through_predict_batch(forecaster: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 100])
    result = rnnshap.foundation.explain(
        forecaster, context, prediction_length=3, background=background, method="shapley", players="patches",
        budget=10_000, quantile_levels=[0.5, 0.9],
    )  # fmt: skip
    truth = enumerated_shapley(
        lambda rows: own_forecast(forecaster, rows, 3)[..., 1:].reshape(len(rows), -1), context[0], background,
        np.arange(16) // 4,
    )  # fmt: skip
    assert result.exact.all() and result.players == "patches" and result.values.shape == (1, 4, 3, 2)
    np.testing.assert_allclose(result.values[0].reshape(4, -1), truth, rtol=0, atol=tolerance(truth))
    np.testing.assert_allclose(result.total(), own_forecast(forecaster, context, 3)[..., 1:], rtol=0, atol=tolerance(truth))


def test_timesfm3_dropping_context_is_nan_as_predict_batch_takes_it(forecaster: Any) -> None:
    context = windows(12, [300])
    result = rnnshap.foundation.explain(
        forecaster, context, prediction_length=4, method="shapley", players="patches", budget=1000, quantile_levels=[0.5]
    )
    truth = enumerated_shapley(
        lambda rows: own_forecast(forecaster, rows, 4)[..., 1], context[0], np.full((1, 12), np.nan), np.arange(12) // 4
    )
    assert result.game == "dropped" and result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


def test_timesfm3_quantile_levels_pick_its_columns_and_others_are_refused(forecaster: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 100])
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=2, background=background, quantile_levels=[0.9])
    own = own_forecast(forecaster, context, 2)
    np.testing.assert_allclose(result.total(), own[..., [2]], rtol=0, atol=tolerance(own))
    with pytest.raises(InputError, match="not one of them"):
        rnnshap.foundation.explain(forecaster, context, prediction_length=2, background=background, quantile_levels=[0.2])


def test_timesfm3_bare_model_is_refused_naming_the_forecaster(forecaster: Any) -> None:
    with pytest.raises(InputError, match="TimesFM3Forecaster"):
        rnnshap.foundation.explain(forecaster.model, windows(16, [300]), prediction_length=2, background=windows(16, [0, 100]))


def test_timesfm3_the_explained_path_is_exact_in_float64_across_the_detrending_gate(forecaster: Any) -> None:
    """The function DeepSHAP explains, in float64, for a window and a reference on opposite sides of the detrending
    gate: the sum is exact (float64 rounding), so the float32 miss of the door is float32's rounding. In float64 the
    CPM refinement of the horizon's statistics is off: the library builds a float32 tensor inside it."""
    from rnnshap.forecasting.foundation.timesfm3 import TimesFM3Adapter

    model = copy.deepcopy(forecaster)
    model.model.use_iterative_cpm_revin = False
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # decode's own zeros and masks in float64 too
    try:
        module = TimesFM3Adapter(model).module(5, [0.1, 0.5, 0.9]).double()
        module.dtype = torch.float64
        x, reference = (torch.as_tensor(windows(16, [s]), dtype=torch.float64) for s in (300, 100))
        with torch.no_grad():
            change = (module(x) - module(reference))[0].numpy()
            plain = copy.deepcopy(model.model)
            plain.use_linear_detrending = False
            rows = torch.cat([x, reference])[:, None]
            detrended = (model.model.decode(target=rows, horizon=8) != plain.decode(target=rows, horizon=8)).flatten(1).any(1)
        assert detrended.tolist() == [False, True]
        values = np.asarray(rnnshap.DeepExplainer(module, reference).shap_values(x, check_additivity=False))
    finally:
        torch.set_default_dtype(default)
    assert values.shape == (1, 16, 15)
    np.testing.assert_allclose(values[0].sum(0), change, rtol=0, atol=1e-9 * np.abs(change).max())


def test_timesfm3_forecast_explainer_gives_explains_values_bit_for_bit(forecaster: Any) -> None:
    context = [SERIES[300:316].copy(), SERIES[350:363].copy()]  # two missing patterns: two setups kept
    context[0][7] = np.nan
    background = windows(16, [0, 100, 200])
    explainer = rnnshap.foundation.ForecastExplainer(forecaster, background=background)
    once = rnnshap.foundation.explain(forecaster, context, prediction_length=4, background=background)
    for _ in range(2):  # built, then kept
        again = explainer.explain(context, prediction_length=4)
        np.testing.assert_array_equal(again.values, once.values)
        np.testing.assert_array_equal(again.base_values, once.base_values)


def test_timesfm3_multivariate_deepshap_adds_up_per_variate_with_zeros_for_gaps_padding_and_an_unchanged_variate(
    forecaster: Any,
) -> None:
    """Target variates (predict_batch's contexts of shape (V, L)): every variate's quantiles from every variate's
    context; a variate's gaps (interpolated) and the steps missing in every variate (stripped, a shorter series) get
    exact zeros, and so does the variate whose values are the same in the explained windows and every background
    window."""
    shared = SERIES[20:36].copy()
    context = variates(16, [300, 330], shared)
    context[0, 0, [5, 6, 9, 15]] = np.nan  # gaps in one variate, its last step too
    context[1, :, :3] = np.nan  # every variate missing the first steps: a shorter series
    context[1, 1, 3] = np.nan  # and one variate one step more (filled by the interpolation from its first value)
    background = variates(16, [0, 100, 200], shared)
    before = state(forecaster.model)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=5, background=background)
    own = own_forecast(forecaster, context, 5)
    assert result.values.shape == (2, 3, 16, 3, 5, 3) and result.forecast.shape == (2, 3, 5, 3)
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, 0, [5, 6, 9, 15]] == 0) and np.all(result.values[1, :, :3] == 0)
    assert np.all(result.values[1, 1, 3] == 0) and np.all(result.values[:, 2] == 0)
    assert np.abs(result.values[:, 1, 4:, 0]).max() > 0 and np.abs(result.values[:, 0, :, 1]).max() > 0  # across variates
    assert unchanged(before, forecaster.model)


def test_timesfm3_multivariate_shapley_patches_are_enumerated_through_predict_batch(forecaster: Any) -> None:
    context = variates(8, [300], SERIES[20:28])[:, :2]
    background = variates(8, [0, 100], SERIES[20:28])[:, :2]
    ids = np.concatenate([np.arange(8) // 4, 2 + np.arange(8) // 4])

    def own(rows: np.ndarray) -> np.ndarray:
        return own_forecast(forecaster, rows.reshape(-1, 2, 8), 3)[..., [1]].reshape(len(rows), -1)

    for reference, given in ((background.reshape(2, 16), background), (np.full((1, 16), np.nan), None)):
        result = rnnshap.foundation.explain(
            forecaster, context, prediction_length=3, background=given, method="shapley", players="patches",
            budget=1000, quantile_levels=[0.5],
        )  # fmt: skip
        truth = enumerated_shapley(own, context[0].reshape(16), reference, ids)
        assert result.exact.all() and result.values.shape == (1, 2, 2, 2, 3, 1)
        np.testing.assert_allclose(result.values[0].reshape(4, -1), truth, rtol=0, atol=tolerance(truth))


def own_forecast_with(forecaster: Any, rows: np.ndarray, past: list[np.ndarray], H: int) -> np.ndarray:
    """The library's own call with past-only covariates: ``predict_batch(contexts, horizon, past_only_covariates=...)``,
    each context's covariates (C, L) stacked from ``past`` (each (n, L)); (n, H, Q) for one target, (n, V, H, Q) for
    rows (n, V, L)."""
    covariates = [np.stack([c[i] for c in past]) for i in range(len(rows))]
    outputs = forecaster.predict_batch(
        [np.array(r, dtype=np.float64) for r in rows], horizon=H, past_only_covariates=covariates, return_quantiles=True
    )
    return np.stack([out.quantiles for out in outputs]).astype(np.float64)


def test_timesfm3_past_covariates_add_up_to_predict_batch_with_zeros_for_trimmed_steps_gaps_and_an_unchanged_covariate(
    forecaster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict_batch's past_only_covariates beside one target: values per covariate step in ``result.covariates``
    (n, L, H, Q). Exact zeros for the steps before the longest context (the library's constant set to 12, as in the
    test above: 8 of 20 trimmed), for a covariate's gap (interpolated by predict_batch) and for a covariate whose values
    are the same in the explained windows and every background window."""
    from timesfm3.torch import timesfm3_forecaster

    monkeypatch.setattr(timesfm3_forecaster, "_MAX_CONTEXT_LENGTH", 12)
    shared = SERIES[20:40]
    context, price = windows(20, [300, 330]), windows(20, [100, 150])
    price[0, 14] = np.nan  # a gap inside the covariate: interpolated from its neighbours
    covariates = {"past_covariates": {"price": price, "shared": np.stack([shared] * 2)}}
    background = {
        "target": windows(20, [0, 100, 200]),
        "past_covariates": {"price": windows(20, [30, 130, 230]), "shared": np.stack([shared] * 3)},
    }
    before = state(forecaster.model)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=5, background=background, covariates=covariates)
    own = own_forecast_with(forecaster, context, [price, np.stack([shared] * 2)], 5)
    assert result.values.shape == (2, 20, 5, 3) and result.covariates["price"].shape == (2, 20, 5, 3)
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[:, :8] == 0) and np.all(result.covariates["price"][:, :8] == 0)
    assert np.all(result.covariates["price"][0, 14] == 0) and np.all(result.covariates["shared"] == 0)
    assert np.abs(result.covariates["price"][:, 8:]).max() > 0 and np.abs(result.values[:, 8:]).max() > 0
    assert not np.allclose(own, own_forecast(forecaster, context, 5))  # the covariates move the forecast
    assert unchanged(before, forecaster.model)


def test_timesfm3_past_covariates_beside_several_targets_add_up_per_variate(forecaster: Any) -> None:
    """Two target variates and a past covariate: the covariate's values (n, L, V, H, Q), to every variate's forecast."""
    context = variates(16, [300, 330], SERIES[20:36])[:, :2]
    price = windows(16, [100, 150])
    background = {
        "target": variates(16, [0, 100, 200], SERIES[20:36])[:, :2],
        "past_covariates": {"price": windows(16, [30, 130, 230])},
    }
    result = rnnshap.foundation.explain(
        forecaster, context, prediction_length=5, background=background, covariates={"past_covariates": {"price": price}}
    )
    own = own_forecast_with(forecaster, context, [price], 5)
    assert result.values.shape == (2, 2, 16, 2, 5, 3) and result.covariates["price"].shape == (2, 16, 2, 5, 3)
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.abs(result.covariates["price"][:, :, 1]).max() > 0


def test_timesfm3_past_covariates_shapley_patches_are_enumerated_through_predict_batch(forecaster: Any) -> None:
    """The covariate's patches are players beside the target's: every coalition of the four through predict_batch."""
    check_past_covariate_shapley(forecaster, own_forecast_with, 3)


def own_forecast_known(forecaster: Any, rows: np.ndarray, known: np.ndarray, H: int) -> np.ndarray:
    """The library's own call with a covariate known into the future: ``predict_batch(contexts, horizon,
    past_future_covariates=...)``, each context's covariate (1, L + H) from ``known`` (n, L + H); (n, H, Q)."""
    outputs = forecaster.predict_batch(
        [np.array(r, dtype=np.float64) for r in rows], horizon=H, past_future_covariates=[k[None] for k in known],
        return_quantiles=True,
    )  # fmt: skip
    return np.stack([out.quantiles for out in outputs]).astype(np.float64)


@pytest.mark.parametrize("L", [16, 13], ids=["whole-patches", "padded"])
def test_timesfm3_future_covariates_add_up_to_predict_batch_over_their_past_and_future_steps(forecaster: Any, L: int) -> None:
    """predict_batch's past_future_covariates: a covariate's future values are inputs of the forecast, so they get
    values too: ``result.covariates[name]`` (n, L + H, H, Q), its past steps then its future steps. A known
    covariate whose past and future are the same in the explained windows and every background window gets exactly
    0; a context of 13 steps is padded with masked zeros (the covariate with it)."""
    H = 5
    promo = np.stack([SERIES[100 : 100 + L + H], SERIES[150 : 150 + L + H]])
    flat = np.stack([SERIES[20 : 20 + L + H]] * 2)
    covariates = {
        "past_covariates": {"promo": promo[:, :L], "flat": flat[:, :L]},
        "future_covariates": {"promo": promo[:, L:], "flat": flat[:, L:]},
    }
    references = np.stack([SERIES[s : s + L + H] for s in (30, 130, 230)])
    background = {
        "target": windows(L, [0, 100, 200]),
        "past_covariates": {"promo": references[:, :L], "flat": np.stack([flat[0, :L]] * 3)},
        "future_covariates": {"promo": references[:, L:], "flat": np.stack([flat[0, L:]] * 3)},
    }
    context = windows(L, [300, 330])
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=H, background=background, covariates=covariates)
    outputs = forecaster.predict_batch(
        [c for c in context], horizon=H, past_future_covariates=[np.stack([p, f]) for p, f in zip(promo, flat, strict=True)],
        return_quantiles=True,
    )  # fmt: skip
    own = np.stack([out.quantiles for out in outputs]).astype(np.float64)
    assert result.values.shape == (2, L, H, 3) and result.covariates["promo"].shape == (2, L + H, H, 3)
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.covariates["flat"] == 0)
    assert np.abs(result.covariates["promo"][:, L:]).max() > 0 and np.abs(result.covariates["promo"][:, :L]).max() > 0
    moved = own_forecast_known(forecaster, context, np.concatenate([promo[:, :L], promo[:, L:] + 1.0], axis=1), H)
    assert not np.allclose(moved, own_forecast_known(forecaster, context, promo, H))  # its future moves the forecast


def test_timesfm3_the_explained_covariates_path_is_exact_in_float64(forecaster: Any) -> None:
    """The function DeepSHAP explains with a past-only covariate and one known into the future, in float64 (as the
    test of the univariate path above): its values add up to the change to float64 rounding, so the float32 miss of
    the door with covariates is float32's rounding. In float64 the CPM refinement is off (a float32 tensor inside)."""
    from rnnshap.forecasting.foundation.timesfm3 import TimesFM3Adapter

    model = copy.deepcopy(forecaster)
    model.model.use_iterative_cpm_revin = False
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        adapter = TimesFM3Adapter(model)
        adapter.set_variates(3, 1, 1)  # the target, a past-only covariate, a covariate known into the future
        columns = [(0, q) for q in (0.1, 0.5, 0.9)]
        module = adapter.module_for(5, columns, np.zeros(3 * 16 + 5, dtype=bool)).double()
        module.dtype = torch.float64

        def flat(s: int) -> torch.Tensor:  # the three variates' 16 steps, then the known covariate's 5 future steps
            return torch.as_tensor(np.concatenate([SERIES[s : s + 16], SERIES[s + 40 : s + 56], SERIES[s + 80 : s + 101]])[None])

        x, reference = flat(250), flat(100)
        with torch.no_grad():
            change = (module(x) - module(reference))[0].numpy()
        values = np.asarray(rnnshap.DeepExplainer(module, reference).shap_values(x, check_additivity=False))
    finally:
        torch.set_default_dtype(default)
    assert values.shape == (1, 53, 15) and np.abs(values[0, 48:]).max() > 0  # the future steps take a share
    np.testing.assert_allclose(values[0].sum(0), change, rtol=0, atol=1e-9 * np.abs(change).max())


def test_timesfm3_future_covariates_refused_where_not_explained(forecaster: Any) -> None:
    """The Shapley mode with covariates known into the future (its players over their future steps are not built),
    a known covariate with missing values (predict_batch interpolates across its past and future), and the dropped game
    with covariates: refused by name."""
    context, background = windows(16, [300]), windows(16, [0, 100])
    x = windows(16, [200])
    covariates = {"past_covariates": {"x": x}, "future_covariates": {"x": windows(2, [216])}}
    reference = {"target": background, "past_covariates": {"x": background}, "future_covariates": {"x": background[:, :2]}}
    with pytest.raises(InputError, match="past_future_covariates.*method='deepshap'"):
        rnnshap.foundation.explain(
            forecaster, context, prediction_length=2, background=reference, covariates=covariates, method="shapley"
        )
    gappy = {"past_covariates": {"x": x}, "future_covariates": {"x": np.array([[np.nan, 1.0]])}}
    with pytest.raises(InputError, match="NaN"):
        rnnshap.foundation.explain(forecaster, context, prediction_length=2, background=reference, covariates=gappy)
    with pytest.raises(InputError, match="background=None"):
        rnnshap.foundation.explain(
            forecaster, context, prediction_length=2, method="shapley", covariates={"past_covariates": {"x": x}}
        )
