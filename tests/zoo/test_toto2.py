"""Toto 2 (toto-2 2.0.0), built tiny from its own ``Toto2ModelConfig``, explained through its own
``Toto2Model.forecast`` (every quantile, past one patch: it feeds its median back).

Truth: the forecast call itself (additivity; float32: parts of the model compute in float32 whatever its
parameters' dtype), and exact zeros where the model cannot look: a variate with a ``series_ids`` of its own is
never read by another's forecast.

toto-2 declares Python >= 3.12 but runs on 3.11 (installed with ``--ignore-requires-python --no-deps``, beside
unit-scaling, dd-unit-scaling, docstring-parser and gluonts); this file is skipped where it is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite

pytest.importorskip("toto2.model")
from toto2.configuration import Toto2ModelConfig  # noqa: E402
from toto2.model import Toto2Model  # noqa: E402

Tensor = torch.Tensor
VARIATES, CONTEXT, PATCH, HORIZON, QUANTILES = 2, 16, 4, 6, 9


def _forecast(m: nn.Module, x: Tensor) -> Tensor:
    batch = x.shape[0]
    ids = torch.arange(VARIATES) if m.separate else torch.zeros(VARIATES, dtype=torch.long)
    inputs = {"target": x, "target_mask": torch.ones_like(x, dtype=torch.bool), "series_ids": ids.expand(batch, VARIATES)}
    return m.model.forecast(inputs, HORIZON).movedim(0, -1).flatten(1)  # (quantiles first in its output)


def forecast(separate: bool) -> Composite:
    """``(batch, variates, time) -> (batch, variates · horizon · quantiles)``: Toto2Model.forecast as a user calls it."""
    torch.manual_seed(0)
    config = Toto2ModelConfig(
        patch_size=PATCH, d_model=16, num_heads=2, num_layers=2, layer_group_size=2, num_variate_layers_per_group=1,
        variate_layer_first=False, residual_attn_ratio=Toto2ModelConfig.compute_residual_attn_ratio(CONTEXT, PATCH),
    )
    return Composite(_forecast, model=Toto2Model(config).eval(), separate=separate)


@pytest.mark.parametrize("separate", [False, True], ids=["one-series", "a-series-each"])
def test_toto2_forecast_is_exact_and_a_separate_series_gets_exactly_zero(separate: bool) -> None:
    model = forecast(separate).eval()
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(3, VARIATES, CONTEXT, generator=g), torch.randn(2, VARIATES, CONTEXT, generator=g)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)
    by_variate = values.reshape(2, VARIATES, CONTEXT, VARIATES, HORIZON, QUANTILES)
    across = np.abs(by_variate[:, 1, :, 0]).max() + np.abs(by_variate[:, 0, :, 1]).max()
    assert (across == 0.0) if separate else (across > 1e-3)
