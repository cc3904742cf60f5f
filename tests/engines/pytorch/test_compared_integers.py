"""Integer inputs read by comparisons.

- An integer input that a comparison reads into a mask, other than token ids, is metadata: context
  wherever it is used, a cast to float included (masked mean pooling divides by the lengths). The
  truth: the same function written with the count taken from the mask, which was context before,
  additivity, and exact zeros on the lengths and on the masked steps.
- ``pad in ids`` is a comparison: followed where every row answers alike; the truth is the same model
  without the check.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...conftest import assert_additive, relative_to_max
from ...models.torch import Composite

Tensor = torch.Tensor
F64 = torch.float64
PAD, V, T = 0, 9, 6


def mean_over_valid_steps(m: nn.Module, x: Tensor, lengths: Tensor) -> Tensor:
    out = m.lstm(x)[0]
    mask = (torch.arange(x.shape[1]) < lengths[:, None]).unsqueeze(-1)
    count = lengths[:, None].to(out.dtype) if m.count == "cast" else mask.sum(1).to(out.dtype)
    return m.head((out * mask).sum(1) / count)


def masked_mean(count: str) -> nn.Module:
    """An LSTM over padded steps, mean-pooled over the valid steps (``count``: how the count is taken)."""
    return Composite(mean_over_valid_steps, count=count, lstm=nn.LSTM(3, 5, batch_first=True), head=nn.Linear(5, 2))


def test_lengths_compared_and_cast_to_float_are_context() -> None:
    model, reference = masked_mean("cast").to(F64).eval(), masked_mean("mask").to(F64).eval()
    reference.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    background = [torch.randn(6, T, 3, generator=g, dtype=F64), torch.randint(1, T + 1, (6,), generator=g)]
    X = [torch.randn(3, T, 3, generator=g, dtype=F64), torch.tensor([T, 2, 4])]
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X)
    assert explainer.engine.token_inputs == [] and explainer.engine.number_inputs == []  # type: ignore[attr-defined]
    assert np.all(values[1] == 0.0)  # the lengths: context, never attributed
    for row, length in enumerate(X[1].tolist()):
        assert np.all(values[0][row, length:] == 0.0)  # masked steps
    totals = values[0].reshape(3, -1, 2).sum(1)
    assert relative_to_max(values, rnnshap.DeepExplainer(reference, background).shap_values(X)) <= 1e-12
    base = explainer(X)[0].base_values
    with torch.no_grad():
        gap = model(*X).numpy() - base
    np.testing.assert_allclose(totals, gap, rtol=0, atol=1e-10 * max(1.0, float(np.abs(gap).max())))


def warn_of_padding(m: nn.Module, ids: Tensor) -> Tensor:
    if m.check and PAD in ids[:, [-1, 0]]:
        warnings.warn("padding without an attention mask", stacklevel=2)
    return m.head(m.lstm(m.embedding(ids))[0][:, -1])


def checks_padding(check: bool) -> nn.Module:
    """A token model that checks, as transformers' BERT does without an attention mask, whether the
    first or last ids are padding (``check``), and warns."""
    return Composite(warn_of_padding, check=check, embedding=nn.Embedding(V, 4), lstm=nn.LSTM(4, 5, batch_first=True),
                     head=nn.Linear(5, 2))  # fmt: skip


@pytest.mark.parametrize("padded", [False, True])
def test_membership_of_a_pad_id_that_every_row_answers_alike_is_followed(padded: bool) -> None:
    model, plain = checks_padding(True).to(F64).eval(), checks_padding(False).to(F64).eval()
    plain.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    background, X = torch.randint(1, V, (5, T), generator=g), torch.randint(1, V, (3, T), generator=g)
    if padded:  # every row ends with padding: the check answers True on every row, on both sides
        background[:, -1], X[:, -1] = PAD, PAD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, F64)
    assert relative_to_max(values, rnnshap.DeepExplainer(plain, background).shap_values(X)) <= 1e-12


def test_membership_that_rows_answer_differently_is_refused_by_name() -> None:
    background = torch.randint(1, V, (5, T))
    background[2, -1] = PAD
    with pytest.raises(rnnshap.UnsupportedOperationError, match="__contains__"):
        rnnshap.DeepExplainer(checks_padding(True).eval(), background)


def cast_and_back(m: nn.Module, ids: Tensor) -> Tensor:
    as_float = ids.to(torch.float32)
    assert as_float.shape == ids.shape  # reading its shape is not a use
    tokens = ids if m.how == "direct" else as_float.to(torch.int32)
    out = m.head(m.lstm(m.embedding(tokens))[0][:, -1])
    return out + as_float[:, :1] if m.how == "number" else out


def round_trip(how: str) -> nn.Module:
    """Token ids cast to float and back before the embedding (what Keras on torch does with a float32
    ``keras.Input`` before an ``Embedding``), or not ("direct"); "number": the float cast also used as a number."""
    return Composite(cast_and_back, how=how, embedding=nn.Embedding(V, 4), lstm=nn.LSTM(4, 5, batch_first=True),
                     head=nn.Linear(5, 2))  # fmt: skip


def test_integers_cast_to_float_and_back_are_the_token_ids() -> None:
    model, direct = round_trip("round-trip").to(F64).eval(), round_trip("direct").to(F64).eval()
    direct.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(4)
    background, X = torch.randint(0, V, (5, T), generator=g), torch.randint(0, V, (3, T), generator=g)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X)
    assert explainer.engine.token_inputs == [0]  # type: ignore[attr-defined]
    assert_additive(values, model, X, background, F64)
    assert relative_to_max(values, rnnshap.DeepExplainer(direct, background).shap_values(X)) <= 1e-12


def test_a_float_cast_also_used_as_a_number_is_still_refused_with_the_token_ids() -> None:
    with pytest.raises(rnnshap.InputError, match="both as token ids"):
        rnnshap.DeepExplainer(round_trip("number").eval(), torch.randint(0, V, (5, T)))
