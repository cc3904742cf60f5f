"""Explanations shaped like shap's, and shap's idioms on sequences: ``ex.sum(1)`` per feature,
``ex.sum(2)`` per step, slicing outputs by name, and shap's plots rendering them with their labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from .models.torch import Composite, RecurrentHead

shap = pytest.importorskip("shap")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

T, F = 6, 3
FEATURES, DAYS, CLASSES = ["price", "volume", "spread"], [f"day{t}" for t in range(T)], ["down", "flat", "up"]


def _read(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = m.head(m.lstm(x)[0][:, -1])
    return out.squeeze(-1) if out.shape[-1] == 1 and m.squeeze else out


def _explain(outputs: int, squeeze: bool = False) -> tuple[Any, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Composite(_read, lstm=nn.LSTM(F, 5, batch_first=True), head=nn.Linear(5, outputs), squeeze=squeeze)
    model = model.double().eval()
    x = torch.randn(7, T, F, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, torch.randn(4, T, F, dtype=torch.float64))
    names = CLASSES if outputs == 3 else None
    return explainer(x, feature_names=FEATURES, time_labels=DAYS, output_names=names), model, x


def _outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("squeeze", [False, True])
def test_a_single_output_model_has_no_output_axis(squeeze: bool) -> None:
    """Outputs (N, 1) and (N,) both give values shaped like the input and base values (N,)."""
    ex, model, x = _explain(1, squeeze)
    assert ex.shape == (7, T, F) and np.shape(ex.base_values) == (7,)
    total = np.asarray(ex.values).reshape(7, -1).sum(1) + ex.base_values
    np.testing.assert_allclose(total, _outputs(model, x).reshape(7), rtol=0, atol=1e-10)


def test_a_multi_output_model_has_the_outputs_last_sliceable_by_name() -> None:
    ex, model, x = _explain(3)
    assert ex.shape == (7, T, F, 3) and np.shape(ex.base_values) == (7, 3)
    up = ex[..., "up"]
    assert up.shape == (7, T, F) and np.shape(up.base_values) == (7,)
    np.testing.assert_array_equal(up.values, np.asarray(ex.values)[..., 2])
    np.testing.assert_array_equal(ex[:, :, :, "up"].values, up.values)
    one = ex[2, ..., "flat"]
    assert one.shape == (T, F) and np.ndim(one.base_values) == 0
    np.testing.assert_allclose(np.sum(one.values) + one.base_values, _outputs(model, x)[2, 1], rtol=0, atol=1e-10)
    with pytest.raises(KeyError, match="sideways"):
        ex[..., "sideways"]


@pytest.mark.parametrize("output", [None, "up"])
def test_sums_over_time_and_features_carry_their_labels_and_base_values(output: str | None) -> None:
    ex, model, x = _explain(1 if output is None else 3)
    view = ex if output is None else ex[..., output]
    column = 0 if output is None else CLASSES.index(output)
    fx = _outputs(model, x).reshape(7, -1)[:, column]
    per_feature, per_step = view.sum(1), view.sum(2)
    assert isinstance(per_feature, shap.Explanation) and type(per_feature) is shap.Explanation  # shap's own from here on
    assert per_feature.shape == (7, F) and list(per_feature.feature_names) == FEATURES
    assert per_step.shape == (7, T) and list(per_step.feature_names) == DAYS
    for summed in (per_feature, per_step):
        np.testing.assert_allclose(np.asarray(summed.values).sum(1) + summed.base_values, fx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(per_feature.data, x.numpy().mean(1))  # inputs averaged over time, for colouring
    one = per_feature[3]
    assert one.shape == (F,) and list(one.feature_names) == FEATURES
    np.testing.assert_allclose(np.sum(one.values) + one.base_values, fx[3], rtol=0, atol=1e-10)
    importance = ex.abs.mean(0) if output is None else ex[..., output].abs.mean(0)
    assert importance.shape == (T, F)
    np.testing.assert_allclose(importance.values, np.abs(np.asarray(view.values)).mean(0))


def _labels(ax: Any) -> set[str]:
    return {t.get_text() for t in [*ax.get_yticklabels(), *ax.get_xticklabels()]}


@pytest.mark.parametrize("plot", ["bar", "beeswarm", "violin", "heatmap"])
def test_shap_plots_render_sums_with_their_labels(plot: str) -> None:
    ex, _, _ = _explain(3)
    for summed, names in ((ex[..., "up"].sum(1), FEATURES), (ex[..., "up"].sum(2), DAYS)):
        before = plt.get_fignums()
        result = getattr(shap.plots, plot)(summed, show=False)
        figure = plt.gcf() if result is None or not hasattr(result, "figure") else result.figure
        texts = set().union(*(_labels(ax) for ax in figure.axes))
        shown = [name for name in names if any(name in text for text in texts)]
        assert shown, f"{plot}: none of {names} on the axes ({sorted(texts)[:8]}...)"
        assert len(shown) >= min(len(names), 3)
        plt.close("all")
        assert plt.get_fignums() == [] or plt.get_fignums() == before


def test_shap_waterfall_renders_one_sample_per_feature() -> None:
    ex, model, x = _explain(3)
    one = ex[0, ..., "down"].sum(0)  # one sample, summed over time: (F,)
    assert one.shape == (F,) and list(one.feature_names) == FEATURES
    shap.plots.waterfall(one, show=False)
    texts = set().union(*(_labels(ax) for ax in plt.gcf().axes))
    assert any("price" in text for text in texts)
    plt.close("all")


def test_token_explanations_render_as_text() -> None:
    torch.manual_seed(0)
    model = RecurrentHead("gru", 4, 5, 1, vocabulary=6, names="embedding gru head").eval()
    vocabulary = ["<pad>", "the", "cat", "sat", "on", "mat"]
    tokens = torch.tensor([[1, 2, 3, 4, 1, 5], [1, 5, 3, 0, 0, 0]])
    ex = rnnshap.DeepExplainer(model, torch.zeros(1, 6, dtype=torch.long))(tokens, vocabulary=vocabulary)
    assert ex.shape == (2, 6) and list(ex.data[0]) == ["the", "cat", "sat", "on", "the", "mat"]
    html = shap.plots.text(ex[0], display=False)
    assert "cat" in html and "mat" in html
    with pytest.raises(ValueError, match="token id"):
        rnnshap.DeepExplainer(model, torch.zeros(1, 6, dtype=torch.long))(tokens, vocabulary=vocabulary[:3])
