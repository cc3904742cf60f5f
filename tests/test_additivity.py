"""The additivity check where the model's own outputs are not reproducible to the tolerance of its dtype.

A float32 model whose outputs for the same rows move with the batch they run in (a deep stack of long recurrences) cannot
be checked tighter than that: a sum that misses the default tolerance passes within twice the spread the engine
measures, with a warning that says so; a larger miss, a model whose outputs do not move, a tolerance given, and float64
are refused or checked as before. The check is called on attributions made by hand, so that the miss and the spread
are known exactly; the PyTorch engine's measure is tested on models of its own.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import AdditivityError, AdditivityWarning
from rnnshap.additivity import SPREAD_FACTOR, check_additivity
from rnnshap.attribution import Attribution

from .models.torch import Composite

F_X, E_F = 1.0, 0.25  # the model's output on the sample, and its mean over the background


def _attribution(miss: float) -> Attribution:
    """One sample, one output, two input features whose values sum to f(x) − E[f] + ``miss``."""
    gap = F_X - E_F + miss
    return Attribution(
        values=[np.array([[[0.75 * gap], [0.25 * gap]]])],
        selected=np.array([[0]]),
        outputs=np.array([[F_X]]),
        base_values=np.array([[E_F]]),
    )


def _engine(dtype: str = "float32") -> object:
    return types.SimpleNamespace(dtype=dtype, precision_note=None)


def _moved(sample: float, background: float, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    """How far the model's own outputs move with the batch: the sample's by ``sample``, each of two background rows by
    ``background``."""

    def moved() -> tuple[np.ndarray, np.ndarray]:
        if calls is not None:
            calls.append(1)
        return np.array([[sample]]), np.array([[background], [background]])

    return moved


def test_a_miss_within_twice_the_models_own_spread_passes_and_says_so() -> None:
    """A miss of 5e-4 of the scale (five float32 tolerances) where the model's own outputs move by 3e-4 in another
    batch (2e-4 on the sample, 1e-4 on the background's mean): within 1e-4 + 2 × 3e-4."""
    with pytest.warns(AdditivityWarning, match=r"model's own float32 rounding") as caught:
        check_additivity(_attribution(5e-4), _engine(), None, _moved(2e-4, 1e-4))
    message = str(caught[0].message)
    assert "move by up to 0.0003" in message and "model.double()" in message and f"{SPREAD_FACTOR} times" in message


def test_a_model_whose_outputs_do_not_move_is_refused_as_before() -> None:
    with pytest.raises(AdditivityError, match="do not add up") as caught:
        check_additivity(_attribution(5e-4), _engine(), None, _moved(0.0, 0.0))
    assert "move by up to" not in str(caught.value)  # (nothing moved: not a cause)


def test_a_miss_beyond_twice_the_spread_is_refused_with_the_spread_measured() -> None:
    with pytest.raises(AdditivityError, match=r"move by up to 0.0003 when they run in another batch") as caught:
        check_additivity(_attribution(5e-3), _engine(), None, _moved(2e-4, 1e-4))
    assert "this error is larger" in str(caught.value)


def test_a_sum_within_the_tolerance_runs_nothing_again_and_float64_is_not_widened() -> None:
    calls: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no warning either)
        check_additivity(_attribution(5e-5), _engine(), None, _moved(2e-4, 1e-4, calls))
    assert calls == []
    with pytest.raises(AdditivityError):  # (float64 carries a model's outputs to 1e-9: no spread is asked)
        check_additivity(_attribution(5e-4), _engine("float64"), None, _moved(2e-4, 1e-4, calls))
    with pytest.raises(AdditivityError):  # (a tolerance given is kept as given)
        check_additivity(_attribution(5e-4), _engine(), 1e-4, _moved(2e-4, 1e-4, calls))
    assert calls == []


def test_a_model_that_cannot_run_the_batch_again_is_refused_as_before() -> None:
    def fails() -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("out of memory")

    with pytest.raises(AdditivityError, match="do not add up"):
        check_additivity(_attribution(5e-4), _engine(), None, fails)


def test_the_pytorch_engine_measures_its_models_own_outputs_but_not_where_context_enters_the_pairs() -> None:
    """Its measure compares the model's plain forward alone with the same rows run as one batch (a small model's
    outputs move by a few ulps at most); where a context input enters the pairs (a reference side takes the sample's
    mask), the background alone is another function, and it does not measure."""
    torch.manual_seed(0)
    engine = rnnshap.DeepExplainer(nn.Sequential(nn.Linear(6, 3), nn.Tanh()), torch.randn(5, 6)).engine
    measured = engine.outputs_moved(engine.inputs(torch.randn(2, 6), "X"))
    assert measured is not None
    samples, background = measured
    assert samples.shape == (2, 3) and background.shape == (5, 3)
    assert max(samples.max(), background.max()) <= 8 * np.finfo(np.float32).eps
    masked = Composite(lambda m, x, mask: m.lin(torch.tanh(x * mask)), lin=nn.Linear(6, 1)).eval()
    engine = rnnshap.DeepExplainer(masked, [torch.randn(4, 6), torch.rand(4, 6) > 0.5]).engine
    assert engine.outputs_moved(engine.inputs([torch.randn(2, 6), torch.ones(2, 6, dtype=torch.bool)], "X")) is None
