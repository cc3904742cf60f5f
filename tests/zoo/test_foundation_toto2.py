"""rnnshap.foundation.explain on Toto 2 (toto-2 2.0.0's ``Toto2Model``), held to its own public forecast call,
``forecast({"target", "target_mask", "series_ids"}, horizon)`` (every quantile).

Truths independent of rnnshap: that call on the inputs of the same context (built here: one variate per window, a
missing value 0 with ``target_mask`` False), which base value plus values must equal, at one patch and rolled out
past it; Shapley values enumerated here over every coalition through it (against background windows, and with the
missing players given as unobserved); exact zeros for the padding of a shorter series and for gaps; contexts that
are not whole patches refused.

toto-2 declares Python >= 3.12 but runs on 3.11: install it with ``--ignore-requires-python --no-deps`` beside
unit-scaling, dd-unit-scaling, docstring-parser and gluonts (tests/zoo/test_toto2.py); skipped where it is missing.
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

pytest.importorskip("toto2.model")


@pytest.fixture(scope="module")
def model() -> Any:
    return foundation_models.toto2(20)


def own_forecast(model: Any, rows: Any, H: int) -> np.ndarray:
    """The library's own call on the inputs of ``rows`` (m, L): every quantile, (m, H, Q); of multivariate rows
    (m, V, L), every variate's, (m, V, H, Q) (the variates of one series, ``series_ids`` 0)."""
    rows = np.asarray(rows, dtype=np.float64)
    univariate = rows.ndim == 2
    rows = rows[:, None] if univariate else rows
    inputs = {
        "target": torch.as_tensor(np.nan_to_num(rows), dtype=torch.float32),
        "target_mask": torch.as_tensor(~np.isnan(rows)),
        "series_ids": torch.zeros(rows.shape[:2], dtype=torch.long),
    }
    with torch.no_grad():
        out = model.forecast(inputs, H)[..., :H].permute(1, 2, 3, 0).double().numpy()  # (m, V, H, Q)
    return out[:, 0] if univariate else out


def variates(length: int, starts: list[int], shared: np.ndarray) -> np.ndarray:
    """Windows of three variates (m, 3, length): the series from ``starts``, 50 steps later, and ``shared`` (the same
    values in every window: a variate that differs nowhere between the explained windows and the background)."""
    return np.stack([np.stack([SERIES[s : s + length], SERIES[s + 50 : s + 50 + length], shared]) for s in starts])


@pytest.mark.parametrize("H", [4, 9], ids=["one-patch", "rolled-out"])
def test_toto2_deepshap_adds_up_to_its_forecast_with_zeros_for_padding_and_gaps(model: Any, H: int) -> None:
    context = [SERIES[300:320].copy(), SERIES[350:362].copy()]  # 20 steps, and 12 (a shorter series: padded)
    context[0][[10, 11, 15]] = np.nan
    background = windows(20, [0, 100, 200])
    before = state(model)
    result = rnnshap.foundation.explain(model, context, prediction_length=H, background=background)
    padded = np.full((2, 20), np.nan)
    padded[0], padded[1, 8:] = context[0], context[1]
    own = own_forecast(model, padded, H)
    assert result.values.shape == (2, 20, H, 9) and result.quantile_levels == foundation_models.QUANTILES
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, [10, 11, 15]] == 0) and np.all(result.values[1, :8] == 0)
    assert np.abs(result.values[0, :10]).max() > 0 and np.abs(result.values[1, 8:]).max() > 0
    assert unchanged(before, model)


def test_toto2_shapley_patches_against_background_and_dropped_are_enumerated_through_its_forecast(model: Any) -> None:
    context, background = windows(12, [300]), windows(12, [0, 100])
    for reference, given in ((background, background), (np.full((1, 12), np.nan), None)):
        result = rnnshap.foundation.explain(
            model, context, prediction_length=4, background=given, method="shapley", players="patches", budget=1000,
            quantile_levels=[0.1, 0.9],
        )  # fmt: skip
        truth = enumerated_shapley(
            lambda rows: own_forecast(model, rows, 4)[..., [0, 8]].reshape(len(rows), -1), context[0], reference,
            np.arange(12) // 4,
        )  # fmt: skip
        assert result.exact.all() and result.game == ("dropped" if given is None else "background")
        np.testing.assert_allclose(result.values[0].reshape(3, -1), truth, rtol=0, atol=tolerance(truth))


def test_toto2_a_context_of_part_of_a_patch_is_refused_saying_what_to_give(model: Any) -> None:
    with pytest.raises(InputError, match="whole patches of 4"):
        rnnshap.foundation.explain(model, windows(14, [300]), prediction_length=4, background=windows(14, [0, 100]))


@pytest.mark.parametrize("H", [4, 9], ids=["one-patch", "rolled-out"])
def test_toto2_multivariate_deepshap_adds_up_per_variate_with_zeros_for_gaps_padding_and_an_unchanged_variate(
    model: Any, H: int
) -> None:
    """Every variate's quantiles from every variate's context (one series): the values per (variate, step) add up to
    the library's own forecast of each variate, its rollout included; gaps and a shorter variate's padding get exact
    zeros, and so does the variate whose values are the same in the explained windows and every background window."""
    shared = SERIES[20:40].copy()
    context = variates(20, [300, 330], shared)
    context[0, 0, [5, 6, 11]] = np.nan
    context[1, 1, :8] = np.nan
    background = variates(20, [0, 100, 200], shared)
    before = state(model)
    result = rnnshap.foundation.explain(model, context, prediction_length=H, background=background)
    own = own_forecast(model, context, H)
    assert result.values.shape == (2, 3, 20, 3, H, 9) and result.forecast.shape == (2, 3, H, 9)
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, 0, [5, 6, 11]] == 0) and np.all(result.values[1, 1, :8] == 0)
    assert np.all(result.values[:, 2] == 0)
    assert np.abs(result.values[:, 1, 8:, 0]).max() > 0 and np.abs(result.values[:, 0, :, 1]).max() > 0  # across variates
    assert unchanged(before, model)


def test_toto2_multivariate_shapley_patches_are_enumerated_through_its_forecast(model: Any) -> None:
    context = variates(8, [300], SERIES[20:28])[:, :2]
    background = variates(8, [0, 100], SERIES[20:28])[:, :2]
    ids = np.concatenate([np.arange(8) // 4, 2 + np.arange(8) // 4])

    def own(rows: np.ndarray) -> np.ndarray:
        return own_forecast(model, rows.reshape(-1, 2, 8), 4)[..., [0, 8]].reshape(len(rows), -1)

    for reference, given in ((background.reshape(2, 16), background), (np.full((1, 16), np.nan), None)):
        result = rnnshap.foundation.explain(
            model, context, prediction_length=4, background=given, method="shapley", players="patches", budget=1000,
            quantile_levels=[0.1, 0.9],
        )  # fmt: skip
        truth = enumerated_shapley(own, context[0].reshape(16), reference, ids)
        assert result.exact.all() and result.values.shape == (1, 2, 2, 2, 4, 2)
        np.testing.assert_allclose(result.values[0].reshape(4, -1), truth, rtol=0, atol=tolerance(truth))
