"""Moirai 2 (uni2ts 2.0.0), built tiny from its own ``Moirai2Module`` / ``Moirai2Forecast``, past one patch.

Past its first predicted patch Moirai 2 rolls out: it feeds every quantile back, forecasts the next patch from each,
and takes ``torch.quantile`` over the quantiles of those forecasts, two ranks of a sort interpolated with fixed
weights (rnnshap/rules/quantile.py). Truth: ``Moirai2Forecast.forward`` itself, which its ``predict``
calls (checked equal here), additivity in float32 (the model's only dtype: its quantile levels are float32), and
exact zeros on the context steps ``past_is_pad`` marks.

uni2ts 2.0.0 pins torch < 2.5 and numpy 1.26: it is not in the ``zoo`` extra (install it with ``--no-deps`` beside
gluonts, jaxtyping, hydra-core and einops); this file is skipped where it is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite

pytest.importorskip("uni2ts.model.moirai2")
from uni2ts.model.moirai2 import Moirai2Forecast, Moirai2Module  # noqa: E402

Tensor = torch.Tensor
CONTEXT, PATCH = 16, 4


def _forecaster(horizon: int) -> Moirai2Forecast:
    torch.manual_seed(0)
    module = Moirai2Module(
        d_model=64, d_ff=64, num_layers=1, patch_size=PATCH, max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0,
        quantile_levels=(0.1, 0.5, 0.9),
    )
    return Moirai2Forecast(
        prediction_length=horizon, target_dim=1, feat_dynamic_real_dim=0, past_feat_dynamic_real_dim=0,
        context_length=CONTEXT, module=module,
    ).eval()


def _forecast(m: nn.Module, x: Tensor) -> Tensor:
    """``(batch, context) -> (batch, quantiles · horizon)``: the forecaster's forward, ``padded`` first steps marked."""
    target = x.unsqueeze(-1)
    pad = torch.zeros(x.shape, dtype=torch.bool)
    pad[:, : m.padded] = True
    observed = torch.ones_like(target, dtype=torch.bool)
    return m.forecaster(past_target=target, past_observed_target=observed, past_is_pad=pad).flatten(1)


@pytest.mark.parametrize("horizon", [PATCH, 2 * PATCH, 3 * PATCH + 2], ids=["one-patch", "two-patches", "rolled-out"])
@pytest.mark.parametrize("padded", [0, PATCH], ids=["whole-context", "padded"])
def test_moirai2_forecast_past_one_patch_is_exact(horizon: int, padded: int) -> None:
    forecaster = _forecaster(horizon)
    model = Composite(_forecast, forecaster=forecaster, padded=padded).eval()
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(4, CONTEXT, generator=g) * 2 + 5, torch.randn(3, CONTEXT, generator=g) * 2 + 5
    if not padded:  # the forecaster's own predict() is this forward
        own = forecaster.predict([row.numpy() for row in X])
        with torch.no_grad():
            np.testing.assert_array_equal(own.reshape(3, -1), model(X).numpy())
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)
    assert np.all(values[:, :padded] == 0.0)
    assert np.abs(values[:, padded:]).max() > 1e-2
