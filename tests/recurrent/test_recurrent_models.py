"""Models built around recurrent layers: attention, pooling over time, sequence outputs, tokens."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..models.torch import Composite, RecurrentHead


def _attend(m: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    states, _ = m.lstm(m.embedding(tokens))
    weights = torch.softmax(m.score(states).squeeze(-1), dim=1)
    return m.out((weights.unsqueeze(-1) * states).sum(1))


def attention(forward: Callable[..., torch.Tensor] = _attend, vocabulary: int = 20) -> Composite:
    """Embedding → LSTM → softmax attention over time (weighted sum) → Linear."""
    return Composite(forward, embedding=nn.Embedding(vocabulary, 5), lstm=nn.LSTM(5, 6, batch_first=True, bidirectional=True),
                     score=nn.Linear(12, 1), out=nn.Linear(12, 3))  # fmt: skip


def pooled(pool: str) -> RecurrentHead:
    return RecurrentHead("gru", 3, 5, 2, layers=2, read=pool, names="gru out")


def sequence_output() -> RecurrentHead:
    return RecurrentHead("lstm", 3, 4, 2, read="steps", names="lstm out")  # (N, T, 2)


def _additivity(values: np.ndarray, outputs: np.ndarray, base: np.ndarray, feature_axes: tuple[int, ...]) -> float:
    return float(np.abs(values.sum(feature_axes) - (outputs - base)).max())


def test_embedding_lstm_attention_is_attributed_per_token_and_adds_up() -> None:
    torch.manual_seed(0)
    model = attention().double().eval()
    background, tokens = torch.randint(0, 20, (6, 9)), torch.randint(0, 20, (4, 9))
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(tokens)
    assert values.shape == (4, 9, 3)
    with torch.no_grad():
        outputs = model(tokens).numpy()
        base = model(background).mean(0).numpy()
    assert _additivity(values, outputs, base, (1,)) < 1e-10
    # a token equal to every reference token at its position gets no attribution
    same = background[0:1].clone()
    single = rnnshap.DeepExplainer(model, background[0:1]).shap_values(same)
    assert np.abs(single).max() == 0.0


def test_token_mask_computed_from_the_tokens_is_the_explained_samples() -> None:
    """A mask made from the token ids is taken from the explained sample on both sides, as if it
    were a context input (see tests/engines/pytorch/test_tokens.py)."""

    def masked(m: nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _attend(m, tokens) * (tokens != 0 if mask is None else mask).any(1, keepdim=True)

    model = attention(masked).double().eval()
    background, tokens = torch.randint(0, 20, (3, 5)), torch.randint(0, 20, (2, 5))
    tokens[1] = 0
    values = rnnshap.DeepExplainer(model, background).shap_values(tokens)
    given = rnnshap.DeepExplainer(model, [background, background != 0]).shap_values([tokens, tokens != 0])
    np.testing.assert_allclose(values, given[0], rtol=0, atol=1e-12)
    assert np.abs(values[1]).max() == 0.0  # all padding: masked on both sides


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_over_time_adds_up(pool: str) -> None:
    torch.manual_seed(1)
    model = pooled(pool).double().eval()
    background, x = torch.randn(5, 7, 3, dtype=torch.float64), torch.randn(3, 7, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    with torch.no_grad():
        outputs = model(x).numpy()
    assert values.shape == (3, 7, 3, 2)
    assert _additivity(values, outputs, explainer.expected_value, (1, 2)) < 1e-10


def test_sequence_output_explains_all_outputs_or_the_chosen_ones() -> None:
    torch.manual_seed(2)
    model = sequence_output().double().eval()
    background, x = torch.randn(4, 6, 3, dtype=torch.float64), torch.randn(2, 6, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    everything = explainer.shap_values(x)
    assert everything.shape == (2, 6, 3, 6, 2)
    with torch.no_grad():
        outputs = model(x).numpy()
    assert _additivity(everything, outputs, explainer.expected_value, (1, 2)) < 1e-10
    chosen = explainer.shap_values(x, outputs=[(5, 1), (2, 0), (-1, 0)])
    assert chosen.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(chosen[..., 0], everything[..., 5, 1])
    np.testing.assert_array_equal(chosen[..., 1], everything[..., 2, 0])
    np.testing.assert_array_equal(chosen[..., 2], everything[..., 5, 0])
    # causality: the output at step 2 owes nothing to later inputs
    assert np.abs(everything[:, 3:, :, 2, :]).max() == 0.0
    with pytest.raises(ValueError, match="output shape"):
        explainer.shap_values(x, outputs=[(6, 0)])


def test_all_outputs_in_one_batched_backward_equal_one_output_at_a_time() -> None:
    torch.manual_seed(3)
    model = pooled("mean").double().eval()
    background, x = torch.randn(5, 7, 3, dtype=torch.float64), torch.randn(3, 7, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    together = explainer.shap_values(x)
    for k in range(2):
        alone = explainer.shap_values(x, outputs=[k])[..., 0]
        np.testing.assert_allclose(together[..., k], alone, rtol=0, atol=1e-14)


def _state_from_input(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    summary = x.mean(1)
    h0 = torch.tanh(m.init_h(summary)).expand(2, -1, -1).contiguous()
    c0 = m.init_c(summary).expand(2, -1, -1).contiguous()
    return m.out(m.lstm(x, (h0, c0))[0][:, -1])


def state_from_input() -> Composite:
    """The LSTM's initial states are computed from the input itself."""
    return Composite(_state_from_input, init_h=nn.Linear(3, 4), init_c=nn.Linear(3, 4),
                     lstm=nn.LSTM(3, 4, batch_first=True, num_layers=2, dropout=0.5), out=nn.Linear(4, 1))  # fmt: skip


def test_initial_states_computed_from_the_input_and_eval_mode_dropout_add_up() -> None:
    torch.manual_seed(5)
    model = state_from_input().double().eval()
    background, x = torch.randn(4, 6, 3, dtype=torch.float64), torch.randn(3, 6, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    with torch.no_grad():
        outputs = model(x).numpy()
    assert _additivity(values, outputs, explainer.expected_value, (1, 2)) < 1e-10
    # in training mode the dropout between the two layers is active: explained in eval mode, as shap does
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        in_training = rnnshap.DeepExplainer(model, background).shap_values(x)
    np.testing.assert_array_equal(in_training, values)
    assert all(m.training for m in model.modules())
