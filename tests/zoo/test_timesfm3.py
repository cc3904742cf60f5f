"""TimesFM 3 (timesfm 3.0.2's ``TimesFM3Torch``), built tiny from its own config classes, explained through its own
``decode`` with its default linear detrending.

The detrending decides per window whether to subtract a fitted line (``apply_detrend = std_det < 0.5 · std_orig``)
and reuses that mask sliced (``apply_detrend[:, :, 0, None]``) where it adds the trend back to the forecast: a
slice of a gate is a gate (rnnshap/engines/pytorch/gate_masks.py). Truth: ``decode`` itself
(additivity; the model runs in float32 only, its attention casts to float32), windows detrended and not on both
sides of the pairs, and exact zeros on the context steps ``target_mask`` hides.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite

pytest.importorskip("timesfm3.torch")
from timesfm3 import TimesFM3Torch  # noqa: E402
from timesfm3.torch import configs  # noqa: E402

Tensor = torch.Tensor
CONTEXT, HORIZON, HIDDEN = 16, 6, 5


def _timesfm3() -> TimesFM3Torch:
    torch.manual_seed(0)
    layer = configs.TransformerConfig(
        model_dims=16, hidden_dims=16, num_heads=2, attention_norm="rms", feedforward_norm="rms", qk_norm="rms",
        use_bias=False, use_rope_seq=True, use_rope_var=False, ff_activation="relu", deterministic=True,
        training=False, use_memory_efficient_attention=False,
    )
    return TimesFM3Torch(
        input_patch_len=4, output_patch_len=8, quantiles=[0.1, 0.5, 0.9],
        residual_block_config=configs.ResidualBlockConfig(hidden_dims=16, output_dims=16, use_bias=False, activation="relu"),
        transformer_config=configs.StackedTransformersConfig(num_layers=1, transformer=layer),
    ).eval()


def _decode(m: nn.Module, x: Tensor) -> Tensor:
    """``(batch, 1, context) -> (batch, horizon · quantiles)``: ``decode`` as a user calls it."""
    target_mask = torch.zeros_like(x, dtype=torch.bool)
    target_mask[..., : m.hidden] = True
    return m.model.decode(x, horizon=HORIZON, target_mask=target_mask).flatten(1)


def decode(model: TimesFM3Torch, hidden: int = 0) -> Composite:
    return Composite(_decode, model=model, hidden=hidden)


def _windows() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(CONTEXT, dtype=torch.float32)
    background = torch.randn(4, 1, CONTEXT, generator=g) + 0.3 * t
    X = torch.randn(3, 1, CONTEXT, generator=g) + 0.5 * t * torch.tensor([1.0, -1.0, 0.0])[:, None, None]
    return background, X


@pytest.mark.parametrize("hidden", [0, HIDDEN], ids=["whole-context", "steps-hidden"])
def test_timesfm3_decode_with_linear_detrending_is_exact(hidden: int) -> None:
    model = _timesfm3()
    assert model.use_linear_detrending  # (the default)
    wrapper = decode(model, hidden).eval()
    background, X = _windows()
    plain = copy.deepcopy(model)
    plain.use_linear_detrending = False
    with torch.no_grad():
        windows = torch.cat([background, X])
        detrended = (decode(model, hidden)(windows) != decode(plain, hidden)(windows)).any(1)
    assert detrended.any() and not detrended.all()  # the gate differs between windows
    values = rnnshap.DeepExplainer(wrapper, background).shap_values(X)
    assert_additive(values, wrapper, X, background, torch.float32)
    if hidden:
        assert np.all(values[:, :, :hidden] == 0.0)
        assert np.abs(values[:, :, hidden:]).max() > 1e-2
