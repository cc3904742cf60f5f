"""The progress bar of ``DeepExplainer.shap_values``: on request, on a terminal, never in the results."""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _explainer(**kwargs: object) -> tuple[rnnshap.DeepExplainer, torch.Tensor]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    return rnnshap.DeepExplainer(  # type: ignore[arg-type]
        model, torch.randn(5, 4, 3), batch_size=7, **kwargs
    ), torch.randn(4, 4, 3)


def test_progress_true_shows_a_bar_and_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    explainer, X = _explainer()
    quiet = explainer.shap_values(X, progress=False)
    assert capsys.readouterr().err == ""
    shown = explainer.shap_values(X, progress=True)
    err = capsys.readouterr().err
    assert "rnnshap" in err and "4/4" in err  # 4 samples x 5 references, batch_size 7: one whole sample (5 pairs) per batch
    np.testing.assert_array_equal(quiet, shown)
    on, _ = _explainer(progress=True)
    on.shap_values(X)
    assert "rnnshap" in capsys.readouterr().err
    on.shap_values(X, progress=False)  # the call overrides the explainer
    assert capsys.readouterr().err == ""


def test_progress_none_only_on_a_terminal_with_several_batches(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    explainer, X = _explainer()
    explainer.shap_values(X)  # stderr captured: not a terminal
    assert capsys.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    explainer.shap_values(X)
    assert "rnnshap" in terminal.getvalue()
    single = _Terminal()
    monkeypatch.setattr(sys, "stderr", single)
    explainer.shap_values(X, batch_size=100)  # one batch: no bar
    assert single.getvalue() == ""


def test_without_tqdm_no_bar_and_a_warning_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    explainer, X = _explainer()
    with pytest.warns(UserWarning, match="tqdm"):
        values = explainer.shap_values(X, progress=True)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(explainer.shap_values(X), values)
