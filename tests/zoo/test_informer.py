"""Informer (transformers 4.56), built tiny from ``InformerConfig``: ProbSparse attention draws keys with
``torch.randint``.

It keeps the top ``u = min(factor · ⌈ln(1 + L_Q)⌉, L_Q)`` queries by a score on the sampled keys. At short contexts
``u = L_Q``: every query is kept, and the draws flow into the output without changing it; at longer ones they
change it. rnnshap's two passes would each draw their own keys, so both are refused, and the refusal says what it
checked (issue 50): the draws followed into the output, and the outputs the same under every seed or not. With
``attention_type="full"`` (the refusal's advice) the model is explained exactly. Truth: the model's own forward
(additivity, float32).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive

transformers = pytest.importorskip("transformers")
from transformers import InformerConfig, InformerForPrediction  # noqa: E402

Tensor = torch.Tensor
HORIZON = 4


class Location(nn.Module):
    """``(batch, context + 1) -> (batch, horizon)``: the Student-t location the model forecasts (teacher-forced)."""

    def __init__(self, context: int, attention: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = InformerConfig(
            prediction_length=HORIZON, context_length=context, input_size=1, lags_sequence=[1], num_time_features=1,
            d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=8, decoder_ffn_dim=8, attention_type=attention, distil=False, dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
        )
        self.model = InformerForPrediction(config).eval()
        self.length = context + 1

    def forward(self, x: Tensor) -> Tensor:
        return teacher_forced_location(self.model, x, self.length, HORIZON)


def teacher_forced_location(model: nn.Module, x: Tensor, length: int, horizon: int) -> Tensor:
    """The Student-t location a transformers time-series forecaster (Informer, Autoformer) gives for ``x`` (batch,
    ``length``), its time feature the step over ``length``, its future values zero (teacher-forced)."""
    batch = x.shape[0]
    past_time = (torch.arange(length, dtype=x.dtype) / length).expand(batch, length)[..., None]
    future_time = ((length + torch.arange(horizon, dtype=x.dtype)) / length).expand(batch, horizon)[..., None]
    out = model(
        past_values=x, past_time_features=past_time, past_observed_mask=torch.ones_like(x),
        future_time_features=future_time, future_values=torch.zeros(batch, horizon, dtype=x.dtype),
    )
    return out.params[1].flatten(1)


def _data(length: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, length, generator=g), torch.randn(2, length, generator=g)


@pytest.mark.parametrize(("context", "changed"), [(8, False), (64, True)], ids=["every-query-kept", "some-queries-kept"])
def test_informer_prob_sparse_attention_is_refused_saying_what_was_checked(context: int, changed: bool) -> None:
    model = Location(context, "prob").eval()
    background, _ = _data(context + 1)
    with pytest.raises(rnnshap.ModelStateError, match=r"torch\.randint") as refused:
        rnnshap.DeepExplainer(model, background)
    message = str(refused.value)
    assert "flow into its output (the pass followed them there)" in message, message
    if changed:
        assert "they matter" in message and "differ by up to" in message, message
    else:
        assert "gave the same outputs, bit for bit" in message and "attention_type='full'" in message, message
        assert "they matter" not in message and "differ by up to" not in message, message


def test_informer_with_full_attention_is_exact() -> None:
    model = Location(8, "full").eval()
    background, X = _data(9)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)
