"""A background that does not fit the model: an InputError from the constructor
that says what reached the model and carries the model's own message, not a torch error from deep
inside a pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.errors import InputError

from .models.torch import Composite, RecurrentHead


def sequence() -> RecurrentHead:
    """(N, T, 4) → (N, 1)."""
    return RecurrentHead("lstm", 4, 5, 1, names="lstm head")


def test_a_background_with_other_features_names_its_shape_and_the_models_message() -> None:
    with pytest.raises(InputError) as info:
        rnnshap.DeepExplainer(sequence().eval(), torch.randn(6, 7, 5))
    message = str(info.value)
    assert "run through the model" in message and "(6, 7, 5)" in message, message
    assert "Expected 4, got 5" in message, message  # the model's own message
    assert info.value.__cause__ is not None  # the torch error is kept as the cause


def test_a_nested_python_list_says_it_was_read_as_several_inputs() -> None:
    background = np.random.default_rng(0).normal(size=(6, 7, 4)).tolist()
    with pytest.raises(InputError, match=r"a list of 6 inputs") as info:
        rnnshap.DeepExplainer(sequence().eval(), background)
    assert "np.asarray(background)" in str(info.value)
    rnnshap.DeepExplainer(sequence().eval(), np.asarray(background, dtype=np.float32))  # the advice works


def test_one_sequence_without_its_batch_dimension_gets_the_advice_to_add_it() -> None:
    with pytest.raises(InputError, match=r"\(7, 4\)") as info:
        rnnshap.DeepExplainer(sequence().eval(), torch.randn(7, 4))
    assert "x[None]" in str(info.value)
    rnnshap.DeepExplainer(sequence().eval(), torch.randn(7, 4)[None])  # the advice works


def test_an_error_of_rnnshap_itself_is_not_reported_as_a_misfit() -> None:
    """The model runs on the background as it is: a failure inside a pass is not blamed on the input."""

    with pytest.raises(rnnshap.UnsupportedOperationError):
        rnnshap.DeepExplainer(RecurrentHead("lstm", 4, 5, 1, prepare=torch.round, names="lstm head").eval(), torch.randn(6, 7, 4))


def with_state() -> nn.Module:
    """(N, T, 3) and an initial state h0 → (N, 2): the state as an input of its own."""
    return Composite(lambda m, x, h0=None: m.head(m.rnn(x, h0)[0][:, -1]),
                     rnn=nn.GRU(3, 4, batch_first=True), head=nn.Linear(4, 2))  # fmt: skip


def test_an_initial_state_in_torchs_layout_is_told_to_put_its_batch_axis_first() -> None:
    """torch's h0 is (num_layers, batch, hidden); every input of rnnshap's has its batch axis first."""
    with pytest.raises(InputError, match=r"background.*input 0 has 20.*input 1 has 1.*batch axis first.*h0.transpose\(0, 1\)"):
        rnnshap.DeepExplainer(with_state().eval(), [torch.randn(20, 8, 3), torch.zeros(1, 20, 4)])


def test_a_list_of_sequences_of_different_lengths_says_it_was_read_as_several_inputs_and_how_to_pad() -> None:
    sequences = [torch.randn(8, 3), torch.randn(5, 3), torch.randn(6, 3)]
    with pytest.raises(InputError, match=r"read as 3 inputs.*different lengths.*pad_sequence") as info:
        rnnshap.DeepExplainer(with_state().eval(), sequences)
    assert "h0.transpose" not in str(info.value)


def test_one_sample_to_explain_without_its_batch_axis_gets_the_x_none_hint() -> None:
    explainer = rnnshap.DeepExplainer(with_state().eval(), torch.randn(20, 8, 3))
    with pytest.raises(InputError, match=r"shape \(8, 3\).*one sample without its batch axis.*X\[None\]"):
        explainer.shap_values(torch.randn(8, 3))
