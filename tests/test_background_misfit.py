"""A background that does not fit the model (issue 22, items 8-10): an InputError from the constructor
that says what reached the model and carries the model's own message, not a torch error from deep
inside a pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.errors import InputError


class Sequence(nn.Module):
    """(N, T, 4) → (N, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(4, 5, batch_first=True), nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def test_a_background_with_other_features_names_its_shape_and_the_models_message() -> None:
    with pytest.raises(InputError) as info:
        rnnshap.DeepExplainer(Sequence().eval(), torch.randn(6, 7, 5))
    message = str(info.value)
    assert "run through the model" in message and "(6, 7, 5)" in message, message
    assert "Expected 4, got 5" in message, message  # the model's own message
    assert info.value.__cause__ is not None  # the torch error is kept as the cause


def test_a_nested_python_list_says_it_was_read_as_several_inputs() -> None:
    background = np.random.default_rng(0).normal(size=(6, 7, 4)).tolist()
    with pytest.raises(InputError, match=r"a list of 6 inputs") as info:
        rnnshap.DeepExplainer(Sequence().eval(), background)
    assert "np.asarray(background)" in str(info.value)
    rnnshap.DeepExplainer(Sequence().eval(), np.asarray(background, dtype=np.float32))  # the advice works


def test_one_sequence_without_its_batch_dimension_gets_the_advice_to_add_it() -> None:
    with pytest.raises(InputError, match=r"\(7, 4\)") as info:
        rnnshap.DeepExplainer(Sequence().eval(), torch.randn(7, 4))
    assert "x[None]" in str(info.value)
    rnnshap.DeepExplainer(Sequence().eval(), torch.randn(7, 4)[None])  # the advice works


def test_an_error_of_rnnshap_itself_is_not_reported_as_a_misfit() -> None:
    """The model runs on the background as it is: a failure inside a pass is not blamed on the input."""

    class Refused(Sequence):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(torch.round(x))

    with pytest.raises(rnnshap.UnsupportedOperationError):
        rnnshap.DeepExplainer(Refused().eval(), torch.randn(6, 7, 4))
