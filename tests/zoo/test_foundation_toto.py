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
    """The library's own call on the MaskedTimeseries of ``rows`` (m, L): its mean, (m, H)."""
    from toto.data.util.dataset import MaskedTimeseries

    rows = np.asarray(rows, dtype=np.float64)
    dtype = next(forecaster.model.parameters()).dtype
    m, L = rows.shape
    inputs = MaskedTimeseries(
        series=torch.as_tensor(np.nan_to_num(rows), dtype=dtype)[:, None],
        padding_mask=torch.as_tensor(~np.isnan(rows))[:, None],
        id_mask=torch.zeros(m, 1, L, dtype=torch.int),
        timestamp_seconds=torch.zeros(m, 1, L, dtype=torch.int),
        time_interval_seconds=torch.ones(m, 1, dtype=torch.int),
    )
    return forecaster.forecast(inputs, prediction_length=H).mean[:, 0].double().numpy()


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
