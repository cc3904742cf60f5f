"""Informer (transformers 4.56), built tiny from ``InformerConfig``: ProbSparse attention draws keys with
``torch.randint``.

It keeps the top ``u = min(factor · ⌈ln(1 + L_Q)⌉, L_Q)`` queries by a score on the sampled keys
(``topk(u, sorted=False)``), computes their attention over every key and writes it back at their positions. At short
contexts ``u = L_Q``: ``topk`` returns every position, in an order torch does not specify, the positions gathered and
written back by the same indices, so the draws cannot reach the output. rnnshap takes such a ``topk`` in the positions'
own order (one of the orders torch may return: its indices then a constant), and the model is explained exactly: the
values add up to the model's own forward, do not depend on the draws (the same under other seeds), and equal those of
the same weights with ``attention_type="full"`` (the function it then computes). At longer contexts the draws change
the output, and the refusal says what it checked: the draws followed into the output, and the outputs under
other seeds different. With ``attention_type="full"`` (the refusal's advice) the model is explained exactly. Truth: the
model's own forward (additivity, float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive, assert_rounding_close
from ..models.torch import Composite

transformers = pytest.importorskip("transformers")
from transformers import InformerConfig, InformerForPrediction  # noqa: E402

Tensor = torch.Tensor
HORIZON = 4


def location(context: int, attention: str) -> Composite:
    """``(batch, context + 1) -> (batch, horizon)``: the Student-t location the model forecasts (teacher-forced)."""
    torch.manual_seed(0)
    config = InformerConfig(
        prediction_length=HORIZON, context_length=context, input_size=1, lags_sequence=[1], num_time_features=1,
        d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=8, decoder_ffn_dim=8, attention_type=attention, distil=False, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
    )
    return Composite(lambda m, x: teacher_forced_location(m.model, x, m.length, HORIZON),
                     model=InformerForPrediction(config).eval(), length=context + 1)  # fmt: skip


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


def test_informer_prob_sparse_attention_that_keeps_every_query_is_exact() -> None:
    context = 8
    model = location(context, "prob").eval()
    attention = model.model.model.encoder.layers[0].self_attn
    length = context + 1  # (L_Q = L_K: the lagged window)
    assert min(attention.factor * int(np.ceil(np.log1p(length))), length) == length  # u = L_Q: every query kept
    background, X = _data(length)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)
    torch.manual_seed(123)  # other draws, the same values
    again = rnnshap.DeepExplainer(model, background).shap_values(X)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(values))
    full = location(context, "full").eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():  # (the function it computes)
        assert_rounding_close(model(X), full(X), torch.float32, what="ProbSparse keeping every query against full attention")
    expected = rnnshap.DeepExplainer(full, background).shap_values(X)
    assert_rounding_close(values, expected, torch.float32, what="values against full attention's")


def test_informer_prob_sparse_attention_whose_draws_matter_is_refused_saying_what_was_checked() -> None:
    context = 64
    model = location(context, "prob").eval()
    background, _ = _data(context + 1)
    with pytest.raises(rnnshap.ModelStateError, match=r"torch\.randint") as refused:
        rnnshap.DeepExplainer(model, background)
    message = str(refused.value)
    assert "flow into its output (the pass followed them there)" in message, message
    assert "they matter" in message and "differ by up to" in message, message


def test_informer_with_full_attention_is_exact() -> None:
    model = location(8, "full").eval()
    background, X = _data(9)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)
