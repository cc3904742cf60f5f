"""rnnshap.foundation.explain on Toto (toto-ts 0.2.0's ``TotoForecaster``, or the ``Toto`` it wraps), held to its own
public forecast call, ``forecast(MaskedTimeseries(...), prediction_length).mean``.

Truths independent of rnnshap: that call on the MaskedTimeseries of the same context (built here: one variate per
window, a missing value 0 with ``padding_mask`` False), which base value plus values must equal, in float64 and in
float32; Shapley values enumerated here over every coalition through it (against background windows, and with the
missing players dropped the way it takes padding); exact zeros for the padding of a shorter series and for gaps.

toto-ts 0.2.0 pins torch 2.7 and numpy 1.26: it is not an extra; install it beside torch 2.13 with ``--no-deps``
(with gluonts, jaxtyping, wadler-lindig, rotary-embedding-torch, beartype and toolz, as tests/zoo/test_toto.py says);
this file is skipped where it is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import rnnshap.foundation
from rnnshap.errors import InputError

from . import foundation_models
from .test_foundation import SERIES, enumerated_shapley, state, tolerance, unchanged, windows

pytest.importorskip("toto.inference.forecaster")


def own_forecast(forecaster: Any, rows: Any, H: int) -> np.ndarray:
    """The library's own call on the MaskedTimeseries of ``rows`` (m, L): its mean, (m, H); of multivariate rows
    (m, V, L), every variate's mean, (m, V, H) (the variates in one group, id_mask 0)."""
    from toto.data.util.dataset import MaskedTimeseries

    rows = np.asarray(rows, dtype=np.float64)
    univariate = rows.ndim == 2
    rows = rows[:, None] if univariate else rows
    dtype = next(forecaster.model.parameters()).dtype
    m, V, L = rows.shape
    inputs = MaskedTimeseries(
        series=torch.as_tensor(np.nan_to_num(rows), dtype=dtype),
        padding_mask=torch.as_tensor(~np.isnan(rows)),
        id_mask=torch.zeros(m, V, L, dtype=torch.int),
        timestamp_seconds=torch.zeros(m, V, L, dtype=torch.int),
        time_interval_seconds=torch.ones(m, V, dtype=torch.int),
    )
    mean = forecaster.forecast(inputs, prediction_length=H).mean.double().numpy()
    return mean[:, 0] if univariate else mean


def variates(length: int, starts: list[int], shared: np.ndarray) -> np.ndarray:
    """Windows of three variates (m, 3, length): the series from ``starts``, 50 steps later, and ``shared`` (the same
    values in every window: a variate that differs nowhere between the explained windows and the background)."""
    return np.stack([np.stack([SERIES[s : s + length], SERIES[s + 50 : s + 50 + length], shared]) for s in starts])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_toto_deepshap_adds_up_to_its_forecast_with_zeros_for_padding_and_gaps(dtype: torch.dtype) -> None:
    from toto.inference.forecaster import TotoForecaster

    model = foundation_models.toto(dtype)
    forecaster = TotoForecaster(model.model)
    context = [SERIES[300:320].copy(), SERIES[350:362].copy()]  # 20 steps, and 12 (a shorter series: padded)
    context[0][[10, 11, 15]] = np.nan
    background = windows(20, [0, 100, 200])
    before = state(model)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=6, background=background)
    padded = np.full((2, 20), np.nan)
    padded[0], padded[1, 8:] = context[0], context[1]
    own = own_forecast(forecaster, padded, 6)[..., None]
    assert result.values.shape == (2, 20, 6, 1) and result.quantile_levels == ["mean"]
    assert result.precision == str(dtype).replace("torch.", "")
    np.testing.assert_array_equal(result.forecast, own)
    atol = 1e-12 * np.abs(own).max() if dtype == torch.float64 else tolerance(own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=atol)
    assert np.all(result.values[0, [10, 11, 15]] == 0) and np.all(result.values[1, :8] == 0)
    assert np.abs(result.values[0, :10]).max() > 0 and np.abs(result.values[1, 8:]).max() > 0
    assert unchanged(before, model)
    same = rnnshap.foundation.explain(model, context, prediction_length=6, background=background)  # the Toto it wraps
    np.testing.assert_array_equal(same.values, result.values)


def test_toto_shapley_patches_against_background_and_dropped_are_enumerated_through_its_forecast() -> None:
    from toto.inference.forecaster import TotoForecaster

    model = foundation_models.toto(torch.float64)
    forecaster = TotoForecaster(model.model)
    context, background = windows(12, [300]), windows(12, [0, 100])
    for reference, given in ((background, background), (np.full((1, 12), np.nan), None)):
        result = rnnshap.foundation.explain(
            model, context, prediction_length=4, background=given, method="shapley", players="patches", budget=1000
        )
        truth = enumerated_shapley(lambda rows: own_forecast(forecaster, rows, 4), context[0], reference, np.arange(12) // 4)
        assert result.exact.all() and result.game == ("dropped" if given is None else "background")
        np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=1e-12 * np.abs(truth).max())


def test_toto_quantile_levels_are_refused_naming_its_samples() -> None:
    model = foundation_models.toto()
    with pytest.raises(InputError, match="random samples"):
        rnnshap.foundation.explain(
            model, windows(12, [300]), prediction_length=4, background=windows(12, [0, 100]), quantile_levels=[0.5]
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_toto_multivariate_deepshap_adds_up_per_variate_with_zeros_for_gaps_padding_and_an_unchanged_variate(
    dtype: torch.dtype,
) -> None:
    """Every variate's forecast from every variate's context (one group): the values per (variate, step) add up to
    the library's own mean of each variate; a variate's gaps and a shorter variate's padding get exact zeros, and so
    does the variate whose values are the same in the explained windows and every background window (which additivity
    cannot see: its share could be moved to another variate and still add up)."""
    from toto.inference.forecaster import TotoForecaster

    model = foundation_models.toto(dtype)
    forecaster = TotoForecaster(model.model)
    shared = SERIES[20:36].copy()
    context = variates(16, [300, 330], shared)
    context[0, 0, [5, 6, 11]] = np.nan  # gaps in one variate
    context[1, 1, :4] = np.nan  # a shorter variate: padded in front
    background = variates(16, [0, 100, 200], shared)
    before = state(model)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=6, background=background)
    own = own_forecast(forecaster, context, 6)[..., None]  # (n, V, H, 1)
    assert result.values.shape == (2, 3, 16, 3, 6, 1) and result.variates == 3
    assert result.forecast.shape == result.base_values.shape == (2, 3, 6, 1)
    np.testing.assert_array_equal(result.forecast, own)
    atol = 1e-12 * np.abs(own).max() if dtype == torch.float64 else tolerance(own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=atol)
    assert np.all(result.values[0, 0, [5, 6, 11]] == 0) and np.all(result.values[1, 1, :4] == 0)
    assert np.all(result.values[:, 2] == 0)  # the variate that differs nowhere
    assert np.abs(result.values[:, 1, 4:, 0]).max() > 0 and np.abs(result.values[:, 0, :, 1]).max() > 0  # across variates
    assert unchanged(before, model)
    np.testing.assert_array_equal(result.context, context)
    fig = result.plot(sample=1, horizon=2, variate=1)
    assert len(fig.axes) == 2


def test_toto_multivariate_shapley_patches_are_enumerated_through_its_forecast() -> None:
    """Players: each variate's patches (a variate's patch is one player); against background windows and with the
    missing players dropped (padding_mask False), every coalition enumerated through the library's own call."""
    from toto.inference.forecaster import TotoForecaster

    model = foundation_models.toto(torch.float64)
    forecaster = TotoForecaster(model.model)
    context = variates(8, [300], SERIES[20:28])[:, :2]
    background = variates(8, [0, 100], SERIES[20:28])[:, :2]
    ids = np.concatenate([np.arange(8) // 4, 2 + np.arange(8) // 4])  # (variate, patch) per step of the flat window

    def own(rows: np.ndarray) -> np.ndarray:
        return own_forecast(forecaster, rows.reshape(-1, 2, 8), 3).reshape(len(rows), -1)

    for reference, given in ((background.reshape(2, 16), background), (np.full((1, 16), np.nan), None)):
        result = rnnshap.foundation.explain(
            model, context, prediction_length=3, background=given, method="shapley", players="patches", budget=1000
        )
        truth = enumerated_shapley(own, context[0].reshape(16), reference, ids)
        assert result.exact.all() and result.values.shape == (1, 2, 2, 2, 3, 1)
        assert result.player_steps == [(0, 4), (4, 8)] and result.game == ("dropped" if given is None else "background")
        np.testing.assert_allclose(result.values[0].reshape(4, 6), truth, rtol=0, atol=1e-12 * np.abs(truth).max())
        np.testing.assert_allclose(result.total(), own_forecast(forecaster, context, 3)[..., None], rtol=0, atol=1e-10)


def test_toto_multivariate_background_of_another_shape_or_a_constant_variate_is_refused() -> None:
    model = foundation_models.toto()
    context = variates(12, [300], SERIES[20:32])
    with pytest.raises(InputError, match="3 variates"):
        rnnshap.foundation.explain(model, context, prediction_length=4, background=windows(12, [0, 100]))
    flat = variates(12, [0, 100], np.full(12, 3.0))
    with pytest.raises(InputError, match="variate 2"):
        rnnshap.foundation.explain(model, context, prediction_length=4, background=flat)
    with pytest.raises(InputError, match=r"\(n, V, L\)"):
        rnnshap.foundation.explain(model, context[None], prediction_length=4, background=variates(12, [0, 100], SERIES[:12]))
