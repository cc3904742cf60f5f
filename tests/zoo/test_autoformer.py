"""Autoformer (transformers 4.56), built tiny from ``AutoformerConfig``: the autocorrelation ``irfft(rfft(q) *
conj(rfft(k)))``, a product of two spectra (rnnshap/rules/spectral.py), then the top-k delays and the
values rolled by them (picked indices and a gather).

Truth: the model's own forward (additivity, float32: the model builds float32 tensors of its own, ``delays_agg =
torch.zeros_like(value_states).float()``; the float64 runs below keep that tensor in float64). With one attention head
it is exact. With two, transformers' inference aggregation repeats each sample's delays along the (batch · heads) axis
in the wrong order (``top_k_delays_index[:, i].view(-1, 1, 1).repeat(self.num_heads, ...)``, heads-major, against rows
ordered batch-major): row ``b · heads + h`` rolls its values by the delays of sample ``(b · heads + h) mod batch``.
The delays are picked per sample (``topk(..., dim=1)``; the pick over the whole batch is the training branch), but a
sample's forecast depends on the other samples of its batch all the same: in float64 a batch of one and the batch
differ by 0.3 % of the forecast, not rounding. No per-row attribution can add up; the explainer runs the pairs in
batches of its own, so it could not reproduce the user's batch either (the forecast of a sample is not a function of
that sample). The constructor refuses it by name: the difference (3e-3 of a forecast of scale 0.03) was below the
rows check's tolerance (1e3 float32 eps, with the scale floored at 1) and surfaced as an AdditivityError blamed on
float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite
from .test_informer import teacher_forced_location

transformers = pytest.importorskip("transformers")
from transformers import AutoformerConfig, AutoformerForPrediction  # noqa: E402

Tensor = torch.Tensor
CONTEXT, HORIZON = 8, 4


def location(heads: int) -> Composite:
    """``(batch, context + 1) -> (batch, horizon)``: the Student-t location the model forecasts (teacher-forced)."""
    torch.manual_seed(0)
    config = AutoformerConfig(
        prediction_length=HORIZON, context_length=CONTEXT, label_length=4, input_size=1, lags_sequence=[1],
        num_time_features=1, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=8, decoder_ffn_dim=8, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, moving_average=3,
        autocorrelation_factor=1,
    )
    return Composite(lambda m, x: teacher_forced_location(m.model, x, m.length, HORIZON),
                     model=AutoformerForPrediction(config).eval(), length=CONTEXT + 1)  # fmt: skip


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, CONTEXT + 1, generator=g), torch.randn(2, CONTEXT + 1, generator=g)


def _rows_mix(model: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - torch.cat([model(row[None]) for row in x])).abs().max())


def test_autoformer_autocorrelation_is_exact() -> None:
    model = location(heads=1).eval()
    background, X = _data()
    assert _rows_mix(model, torch.cat([background, X])) < 1e-7  # (rounding: float32 kernels by batch size)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)


def _float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's own ``.float()`` of its aggregation buffer keeps float64 (the only float32 tensor it builds)."""
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *args, **kwargs: self)


@pytest.mark.parametrize("heads", [1, 2])
def test_autoformer_heads_couple_the_rows_of_a_batch_in_float64_too(monkeypatch: pytest.MonkeyPatch, heads: int) -> None:
    """The diagnosis, on transformers' own outputs in float64: one head, a batch of one and the batch agree bit for bit;
    two heads, they differ by far more than float64's rounding (and by the same amount as in float32): the rows are
    coupled by the model, not by rounding. rnnshap's explanation follows: exact, or refused by name."""
    _float64(monkeypatch)
    model = location(heads=heads).double().eval()
    background, X = (t.double() for t in _data())
    rows = torch.cat([background, X])
    gap = _rows_mix(model, rows)
    if heads == 1:
        assert gap == 0.0
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
        assert_additive(values, model, X, background, torch.float64)
        return
    with torch.no_grad():
        scale = float(model(rows).abs().max())
    assert gap > 1e-3 * scale, (gap, scale)  # (float64 rounding: ~1e-16 of the scale)
    with pytest.raises(rnnshap.InputError, match="mixes the rows of axis 0"):
        rnnshap.DeepExplainer(model, background)


def test_autoformer_with_heads_that_mix_the_rows_of_a_batch_is_refused_by_the_constructor() -> None:
    model = location(heads=2).eval()
    background, X = _data()
    assert _rows_mix(model, torch.cat([background, X])) > 1e-5  # (transformers' own outputs: a sample reads the others)
    with pytest.raises(rnnshap.InputError, match="mixes the rows of axis 0") as refused:
        rnnshap.DeepExplainer(model, background)
    assert "same batch size" in str(refused.value), str(refused.value)  # (what was compared)
