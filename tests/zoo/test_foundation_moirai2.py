"""rnnshap.foundation.explain on Moirai 2 (uni2ts 2.0.0's ``Moirai2Forecast``), held to its own public forecast
call, ``predict(past_target)`` (under its own ``hparams_context(prediction_length=H)``).

Truths independent of rnnshap: that call on the same context, which base value plus values must equal; Shapley
values enumerated here over every coalition through it (against background windows, and with the missing players
given as NaN, the way it takes missing values); exact zeros for the steps before its ``context_length``, the padding
of a shorter series and gaps (which it marks unobserved and imputes). The forecaster is tiny, built from the
library's own ``Moirai2Module`` (tests/zoo/foundation_models.py).

uni2ts 2.0.0 pins torch < 2.5 and numpy 1.26: it is not an extra; install it beside torch 2.13 with ``--no-deps``
(with gluonts, jaxtyping, wadler-lindig, hydra-core, omegaconf, antlr4-python3-runtime 4.9.3 and toolz, as
tests/zoo/test_moirai2.py says); this file is skipped where it is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnshap.foundation
from rnnshap.errors import InputError

from . import foundation_models
from .test_foundation import SERIES, check_past_covariate_shapley, enumerated_shapley, state, tolerance, unchanged, windows

pytest.importorskip("uni2ts.model.moirai2")


@pytest.fixture(scope="module")
def forecaster() -> Any:
    return foundation_models.moirai2()


def own_forecast(forecaster: Any, rows: Any, H: int) -> np.ndarray:
    """The library's own call: ``predict`` of each series (a list, as it takes them), (n, H, Q)."""
    with forecaster.hparams_context(prediction_length=H):
        return np.asarray(forecaster.predict([np.asarray(r, dtype=np.float64) for r in rows])).transpose(0, 2, 1)


@pytest.mark.parametrize("H", [4, 9], ids=["one-patch", "rolled-out"])
def test_moirai2_deepshap_adds_up_to_predict_with_zeros_for_trimmed_padded_and_missing_context(forecaster: Any, H: int) -> None:
    context = [SERIES[300:320].copy(), SERIES[350:362].copy()]  # 20 steps (4 past context_length=16), and 12 (padded)
    context[0][[10, 11, 15]] = np.nan  # gaps: unobserved, imputed by predict
    background = windows(20, [0, 100, 200])
    before = state(forecaster)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=H, background=background)
    own = own_forecast(forecaster, context, H)
    assert result.values.shape == (2, 20, H, 3) and result.quantile_levels == [0.1, 0.5, 0.9]
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    assert np.all(result.values[0, :4] == 0) and np.all(result.values[0, [10, 11, 15]] == 0)
    assert np.all(result.values[1, :8] == 0)
    assert np.abs(result.values[0, 4:10]).max() > 0 and np.abs(result.values[1, 8:]).max() > 0
    assert unchanged(before, forecaster)


def test_moirai2_shapley_patches_are_enumerated_through_predict(forecaster: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 100])
    result = rnnshap.foundation.explain(
        forecaster, context, prediction_length=4, background=background, method="shapley", players="patches",
        budget=10_000, quantile_levels=[0.5],
    )  # fmt: skip
    truth = enumerated_shapley(lambda rows: own_forecast(forecaster, rows, 4)[..., 1], context[0], background, np.arange(16) // 4)
    assert result.exact.all() and result.players == "patches"
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


def test_moirai2_dropping_context_is_nan_as_predict_takes_it(forecaster: Any) -> None:
    context = windows(12, [300])
    result = rnnshap.foundation.explain(
        forecaster, context, prediction_length=4, method="shapley", players="patches", budget=1000, quantile_levels=[0.9]
    )

    def own(rows: np.ndarray) -> np.ndarray:  # a coalition missing its first players is a shorter series, as explain gives it
        return own_forecast(forecaster, [r[np.argmax(~np.isnan(r)) :] if (~np.isnan(r)).any() else r for r in rows], 4)[..., 2]

    truth = enumerated_shapley(own, context[0], np.full((1, 12), np.nan), np.arange(12) // 4)
    assert result.game == "dropped" and result.exact.all()
    np.testing.assert_allclose(result.values[0, :, :, 0], truth, rtol=0, atol=tolerance(truth))


def test_moirai2_other_quantile_levels_and_covariates_are_refused(forecaster: Any) -> None:
    context, background = windows(16, [300]), windows(16, [0, 100])
    with pytest.raises(InputError, match="not one of them"):
        rnnshap.foundation.explain(forecaster, context, prediction_length=4, background=background, quantile_levels=[0.2])
    from uni2ts.model.moirai2 import Moirai2Forecast

    with_features = Moirai2Forecast(
        prediction_length=4, target_dim=1, feat_dynamic_real_dim=1, past_feat_dynamic_real_dim=0, context_length=16,
        module=forecaster.module,
    )  # fmt: skip
    with pytest.raises(InputError, match="one target variate without covariates"):
        rnnshap.foundation.explain(with_features, context, prediction_length=4, background=background)


def test_moirai2_multivariate_windows_are_refused_naming_the_models_that_take_them(forecaster: Any) -> None:
    """Moirai 2 is explained with one target variate: (n, V, L) windows are refused, never read as something else."""
    context = np.stack([windows(16, [300, 350])] * 2, axis=0)  # (2 windows, 2 variates, 16 steps)
    background = np.stack([windows(16, [0, 100])] * 2, axis=0)
    with pytest.raises(InputError, match="one variate per series.*Toto, Toto 2 and TimesFM 3"):
        rnnshap.foundation.explain(forecaster, context, prediction_length=4, background=background)
    # the reason, named: uni2ts 2.0.0's own predict cannot forecast several target variates
    with pytest.raises(InputError, match="uni2ts 2.0.0's own predict.*target_dim > 1"):
        rnnshap.foundation.explain(forecaster, context, prediction_length=4, background=background)


# -- past covariates (predict's past_feat_dynamic_real) --------------------------------------------------------------
def own_forecast_with(forecaster: Any, rows: np.ndarray, past: list[np.ndarray], H: int) -> np.ndarray:
    """The library's own call with past covariates: ``predict(past_target, past_feat_dynamic_real=...)``, each series'
    covariates (L, C) stacked from ``past`` (each (n, L)), (n, H, Q)."""
    covariates = [np.stack([c[i] for c in past], axis=1) for i in range(len(rows))]
    with forecaster.hparams_context(prediction_length=H):
        out = forecaster.predict([np.asarray(r, dtype=np.float64) for r in rows], past_feat_dynamic_real=covariates)
    return np.asarray(out).transpose(0, 2, 1)


@pytest.mark.parametrize(
    ("L", "H", "names"), [(20, 4, ["price", "shared"]), (12, 9, ["price"])], ids=["trimmed", "padded-rolled-out"]
)
def test_moirai2_past_covariates_add_up_to_predict_with_zeros_for_trimmed_steps_and_an_unchanged_covariate(
    forecaster: Any, L: int, H: int, names: list[str]
) -> None:
    """One target and past covariates (predict's past_feat_dynamic_real): values per covariate step in
    ``result.covariates`` (n, L, H, Q); the steps before context_length=16 get exact zeros (trimmed by predict), and so
    does a covariate whose values are the same in the explained windows and every background window. A context
    shorter than context_length (padded by predict with each input's first value) with one covariate: predict pads
    no more than one column (see the refusal below)."""
    shared = SERIES[20 : 20 + L]
    given = {"price": windows(L, [100, 150]), "shared": np.stack([shared] * 2)}
    references = {"price": windows(L, [30, 130, 230]), "shared": np.stack([shared] * 3)}
    context = windows(L, [300, 340])
    covariates = {"past_covariates": {name: given[name] for name in names}}
    background = {"target": windows(L, [0, 100, 200]), "past_covariates": {name: references[name] for name in names}}
    before = state(forecaster)
    result = rnnshap.foundation.explain(forecaster, context, prediction_length=H, background=background, covariates=covariates)
    own = own_forecast_with(forecaster, context, [given[name] for name in names], H)
    assert result.values.shape == (2, L, H, 3) and sorted(result.covariates) == names
    assert result.covariates["price"].shape == (2, L, H, 3)
    np.testing.assert_array_equal(result.forecast, own)
    np.testing.assert_allclose(result.total(), own, rtol=0, atol=tolerance(own))
    trimmed = max(0, L - 16)
    assert np.all(result.values[:, :trimmed] == 0) and np.all(result.covariates["price"][:, :trimmed] == 0)
    assert "shared" not in names or np.all(result.covariates["shared"] == 0)
    assert np.abs(result.covariates["price"][:, trimmed:]).max() > 0 and np.abs(result.values[:, trimmed:]).max() > 0
    assert not np.allclose(own, own_forecast(forecaster, context, H))  # the covariates move the forecast
    assert unchanged(before, forecaster)


def test_moirai2_several_covariates_on_a_short_context_are_refused_naming_predicts_padding(forecaster: Any) -> None:
    """uni2ts 2.0.0's predict pads a context shorter than context_length with one column: two past covariates make it
    raise (shown here), so rnnshap refuses them there, naming why, instead of answering what predict cannot forecast."""
    context, price = windows(12, [300]), windows(12, [150])
    with pytest.raises(ValueError, match="broadcast"):
        own_forecast_with(forecaster, context, [price, price + 1.0], 4)
    covariates = {"past_covariates": {"a": price, "b": price + 1.0}}
    reference = windows(12, [30, 130])
    with pytest.raises(InputError, match="pads.*one column.*context_length"):
        rnnshap.foundation.explain(
            forecaster, context, prediction_length=4, covariates=covariates,
            background={"target": windows(12, [0, 100]), "past_covariates": {"a": reference, "b": reference + 1.0}},
        )  # fmt: skip


def test_moirai2_past_covariates_shapley_patches_are_enumerated_through_predict(forecaster: Any) -> None:
    """The covariate's patches are players beside the target's: every coalition of the four through predict."""
    check_past_covariate_shapley(forecaster, own_forecast_with, 4)


def test_moirai2_covariates_refused_where_not_explained(forecaster: Any) -> None:
    """Future-known covariates (feat_dynamic_real), the dropped game with covariates and missing values with
    covariates are refused by name."""
    context, price = windows(16, [300]), windows(16, [150])
    covariates = {"past_covariates": {"price": price}}
    with pytest.raises(InputError, match="future_covariates.*Moirai 2"):
        rnnshap.foundation.explain(
            forecaster, context, prediction_length=4, covariates={**covariates, "future_covariates": {"price": price[:, :4]}},
            background={"target": windows(16, [0, 100]), "past_covariates": {"price": windows(16, [30, 130])}},
        )  # fmt: skip
    with pytest.raises(InputError, match="background=None"):
        rnnshap.foundation.explain(forecaster, context, prediction_length=4, covariates=covariates, method="shapley")
    gappy = price.copy()
    gappy[0, 5] = np.nan
    with pytest.raises(InputError, match="holds NaN"):
        rnnshap.foundation.explain(
            forecaster, context, prediction_length=4, covariates={"past_covariates": {"price": gappy}},
            background={"target": windows(16, [0, 100]), "past_covariates": {"price": windows(16, [30, 130])}},
        )  # fmt: skip
    with pytest.raises(InputError, match="reference windows"):
        rnnshap.foundation.explain(
            forecaster, context, prediction_length=4, covariates=covariates, background=windows(16, [0, 100])
        )
