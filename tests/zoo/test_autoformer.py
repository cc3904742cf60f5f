"""Autoformer (transformers 4.56), built tiny from ``AutoformerConfig``: the autocorrelation ``irfft(rfft(q) *
conj(rfft(k)))``, a product of two spectra (rnnshap/rules/spectral.py, issue 50), then the top-k delays and the
values rolled by them (picked indices and a gather).

Truth: the model's own forward (additivity, float32: the model builds float32 tensors of its own, so a float64
copy does not run). With one attention head it is exact. With two, transformers' inference aggregation repeats
each sample's delays along the (batch · heads) axis in the wrong order (``top_k_delays_index[:, i].view(-1, 1,
1).repeat(self.num_heads, ...)`` against rows ordered batch-major), so a sample's forecast depends on the other
samples of its batch (checked here on the model's own outputs): no per-row attribution can add up, and rnnshap
says so instead of answering.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from .test_informer import teacher_forced_location

transformers = pytest.importorskip("transformers")
from transformers import AutoformerConfig, AutoformerForPrediction  # noqa: E402

Tensor = torch.Tensor
CONTEXT, HORIZON = 8, 4


class Location(nn.Module):
    """``(batch, context + 1) -> (batch, horizon)``: the Student-t location the model forecasts (teacher-forced)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = AutoformerConfig(
            prediction_length=HORIZON, context_length=CONTEXT, label_length=4, input_size=1, lags_sequence=[1],
            num_time_features=1, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=heads,
            decoder_attention_heads=heads, encoder_ffn_dim=8, decoder_ffn_dim=8, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, moving_average=3,
            autocorrelation_factor=1,
        )
        self.model = AutoformerForPrediction(config).eval()
        self.length = CONTEXT + 1

    def forward(self, x: Tensor) -> Tensor:
        return teacher_forced_location(self.model, x, self.length, HORIZON)


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, CONTEXT + 1, generator=g), torch.randn(2, CONTEXT + 1, generator=g)


def _rows_mix(model: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - torch.cat([model(row[None]) for row in x])).abs().max())


def test_autoformer_autocorrelation_is_exact() -> None:
    model = Location(heads=1).eval()
    background, X = _data()
    assert _rows_mix(model, torch.cat([background, X])) < 1e-7  # (rounding: float32 kernels by batch size)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)


def test_autoformer_with_heads_that_mix_the_rows_of_a_batch_is_not_answered() -> None:
    model = Location(heads=2).eval()
    background, X = _data()
    assert _rows_mix(model, torch.cat([background, X])) > 1e-5  # (transformers' own outputs: a sample reads the others)
    with pytest.raises(rnnshap.errors.RnnShapError):
        rnnshap.DeepExplainer(model, background).shap_values(X)
