"""Toto (toto-ts 0.2.0), built tiny from its own constructor, explained through its own ``TotoForecaster.forecast``.

Toto's decoding runs under ``torch.no_grad()``, detaches its output, drops extreme values with
``where(isinf(t) | isnan(t) | (t.abs() >= finfo.max / 2), 0, t)`` and builds its mixture of Student-t
distributions with torch.distributions' argument validation on (masks that only feed
``if not valid.all(): raise``). The combined mask is a gate of its own and the validation's masks are context
(rnnshap/engines/pytorch/gate_masks.py). Truth: the forecast call itself (additivity in float64 and
float32), and exact zeros where the model cannot look: a variate in a group of its own (``id_mask``) is never
read by another's forecast.

toto-ts pins torch 2.7 and numpy 1.26: it is not in the ``zoo`` extra (install it with ``--no-deps`` beside
gluonts, jaxtyping and rotary-embedding-torch); this file is skipped where it is missing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite
from . import foundation_models

pytest.importorskip("toto.inference.forecaster")
from toto.data.util.dataset import MaskedTimeseries  # noqa: E402
from toto.inference.forecaster import TotoForecaster  # noqa: E402
from toto.model.toto import Toto  # noqa: E402

Tensor = torch.Tensor
VARIATES, CONTEXT, HORIZON = 2, 16, 6


def _forecast(m: nn.Module, x: Tensor) -> Tensor:
    """``(batch, variates, time) -> (batch, variates · horizon)``: TotoForecaster.forecast's mean, as a user calls it."""
    batch = x.shape[0]
    inputs = MaskedTimeseries(
        series=x,
        padding_mask=torch.ones_like(x, dtype=torch.bool),
        id_mask=m.groups.expand(batch, VARIATES, x.shape[-1]).contiguous(),
        timestamp_seconds=torch.zeros(x.shape, dtype=torch.int),
        time_interval_seconds=torch.full((batch, VARIATES), 60, dtype=torch.int),
    )
    return m.forecaster.forecast(inputs, prediction_length=HORIZON, use_kv_cache=True).mean.flatten(1)


def forecast(toto: Toto, groups: Tensor) -> Composite:
    return Composite(_forecast, toto=toto, groups=groups, forecaster=TotoForecaster(toto.model))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("grouped", [True, False], ids=["one-group", "a-group-each"])
def test_toto_forecast_is_exact_and_a_variate_in_its_own_group_gets_exactly_zero(dtype: torch.dtype, grouped: bool) -> None:
    groups = torch.zeros(1, VARIATES, 1, dtype=torch.int) if grouped else torch.arange(VARIATES, dtype=torch.int).view(1, -1, 1)
    model = forecast(foundation_models.toto(dtype), groups).eval()
    g = torch.Generator().manual_seed(1)
    background = torch.randn(3, VARIATES, CONTEXT, generator=g, dtype=dtype)
    X = torch.randn(2, VARIATES, CONTEXT, generator=g, dtype=dtype)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, dtype)
    by_variate = values.reshape(2, VARIATES, CONTEXT, VARIATES, HORIZON)
    across = abs(by_variate[:, 1, :, 0]).max() + abs(by_variate[:, 0, :, 1]).max()
    if grouped:
        assert across > 1e-3  # (the variates attend to each other)
    else:
        assert across == 0.0
