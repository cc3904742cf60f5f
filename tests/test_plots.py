"""``rnnshap.plots``: every plot renders headless from numpy output and from shap.Explanations,
token highlighting marks the sign, and ``flatten`` makes sequences fit shap's own plots."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import plots

from .conftest import model_outputs

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # headless, whatever the environment says
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

T, F, K = 6, 4, 3


class Reader(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(F, 5, batch_first=True)
        self.head = nn.Linear(5, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 4)
        self.gru = nn.GRU(4, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.embedding(tokens))[0][:, -1])


@pytest.fixture(scope="module")
def explained() -> dict:
    torch.manual_seed(0)
    model = Reader().double().eval()
    background, X = torch.randn(8, T, F, dtype=torch.float64), torch.randn(5, T, F, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    return {"model": model, "explainer": explainer, "background": background, "X": X, "values": explainer.shap_values(X)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig: Figure) -> set[str]:
    texts = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()}
    texts |= {ax.get_title() for ax in fig.axes}
    if fig._suptitle is not None:
        texts.add(fig._suptitle.get_text())
    return texts


def _rendered(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


# -- numpy output -----------------------------------------------------------------------------------------------------
def test_heatmap_from_numpy_output_with_input_beside_it(explained: dict) -> None:
    values, X = explained["values"], explained["X"].numpy()
    names, times = [f"feat{j}" for j in range(F)], [f"step{t}" for t in range(T)]
    fig = plots.heatmap(values, X, sample=1, output=2, feature_names=names, time_labels=times)
    assert isinstance(fig, Figure)
    pixels = _rendered(fig)
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 50
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2  # the input and the attributions
    np.testing.assert_array_equal(images[0].get_array(), X[1])
    np.testing.assert_allclose(images[1].get_array(), values[1, :, :, 2])
    low, high = images[1].get_clim()
    assert high > 0 and low == -high  # diverging scale centred at zero
    assert images[1].get_cmap().name == "RdBu_r"
    texts = _texts(fig)
    assert set(names) <= texts and set(times) <= texts
    assert any("output 2" in t for t in texts)


def test_heatmap_without_data_and_along_x(explained: dict) -> None:
    fig = plots.heatmap(explained["values"][0, :, :, 0], time_axis="x", annotate=False, title="mine")
    assert isinstance(fig, Figure)
    (image,) = [ax.images[0] for ax in fig.axes if ax.images]
    assert image.get_array().shape == (F, T)
    assert "mine" in _texts(fig)


def test_plots_ask_for_sample_and_output_when_the_shape_is_ambiguous(explained: dict) -> None:
    with pytest.raises(ValueError, match="sample=.*output="):
        plots.heatmap(explained["values"])
    with pytest.raises(ValueError, match="sample="):
        plots.over_time(explained["values"][..., 0])
    with pytest.raises(ValueError, match="output="):
        plots.global_importance(explained["values"])


def test_over_time_bars_sum_features_and_running_total_ends_at_the_gap(explained: dict) -> None:
    values = explained["values"]
    fig = plots.over_time(values, sample=3, output=1)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = np.array([bar.get_height() for bar in ax.patches])
    np.testing.assert_allclose(heights, values[3, :, :, 1].sum(-1))
    positive = matplotlib.colors.to_rgba(np.array(plots.POSITIVE) / 255)
    for bar, height in zip(ax.patches, heights, strict=True):
        assert (bar.get_facecolor() == positive) == (height >= 0)
    running = ax.lines[-1].get_ydata()
    gap = model_outputs(explained["model"], explained["X"])[3, 1] - explained["explainer"].expected_value[1]
    assert running[-1] == pytest.approx(gap, abs=1e-9)


def test_global_importance_by_time_and_feature(explained: dict) -> None:
    values = explained["values"]
    fig = plots.global_importance(values, output=0, feature_names=list("abcd"))
    assert isinstance(fig, Figure)
    importance = np.abs(values[..., 0]).mean(0)
    (image,) = [ax.images[0] for ax in fig.axes if ax.images]
    np.testing.assert_allclose(image.get_array(), importance)
    bars = {len(ax.patches): ax for ax in fig.axes if ax.patches}
    np.testing.assert_allclose([b.get_width() for b in bars[T].patches], importance.sum(1))
    np.testing.assert_allclose([b.get_height() for b in bars[F].patches], importance.sum(0))
    assert set("abcd") <= _texts(fig)


def test_global_importance_with_one_output_per_sample(explained: dict) -> None:
    values = explained["values"]
    chosen = np.array([0, 2, 1, 1, 0])
    fig = plots.global_importance(values, output=chosen)
    (image,) = [ax.images[0] for ax in fig.axes if ax.images]
    expected = np.abs(np.stack([values[i, :, :, k] for i, k in enumerate(chosen)])).mean(0)
    np.testing.assert_allclose(image.get_array(), expected)
    _rendered(fig)


def test_token_plots_from_token_model() -> None:
    model = Tokens().eval()
    explainer = rnnshap.DeepExplainer(model, torch.randint(0, 12, (6, 7)))
    values = explainer.shap_values(torch.randint(0, 12, (4, 7)))  # (4, 7, 2): one value per token
    assert values.shape == (4, 7, 2)
    fig = plots.global_importance(values, output=1, time_labels=[f"w{i}" for i in range(7)])
    assert isinstance(fig, Figure)
    np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches], np.abs(values[..., 1]).mean(0))
    assert isinstance(plots.over_time(values, sample=0, output=0), Figure)
    assert isinstance(plots.heatmap(values, sample=0, output=0), Figure)


# -- token_html -------------------------------------------------------------------------------------------------------
def test_token_html_marks_the_sign_and_escapes() -> None:
    out = plots.token_html(["good", "<bad>", "meh"], np.array([0.8, -0.4, 0.0]))
    spans = re.findall(
        r'<span class="rnnshap-token rnnshap-(\w+)"[^>]*style="background-color: rgba\((\d+), (\d+), (\d+), ([\d.]+)\)', out
    )
    assert [s[0] for s in spans] == ["pos", "neg", "zero"]
    (_, *red, a_pos), (_, *blue, a_neg), (_, _, _, _, a_zero) = spans
    assert int(red[0]) > int(red[2]) and int(blue[2]) > int(blue[0])  # red for positive, blue for negative
    assert float(a_pos) > float(a_neg) > float(a_zero) == 0.0  # strength follows |φ|
    assert "&lt;bad&gt;" in out and "<bad>" not in out
    assert 'data-phi="-0.4"' in out


def test_token_html_from_explanation_and_batch(explained: dict) -> None:
    values = explained["values"][..., 0].sum(-1)  # (N, T): one value per step
    out = plots.token_html([f"t{i}" for i in range(T)], values, sample=2, max_abs=10.0, legend=False)
    assert out.count('class="rnnshap-token ') == T
    with pytest.raises(ValueError, match="tokens"):
        plots.token_html(["a"], values[0])


def test_matplotlib_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, explained: dict) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape("rnnshap[plot]")):
        plots.heatmap(explained["values"][0, :, :, 0])
    assert "rnnshap-token" in plots.token_html(["a"], np.array([1.0]))  # needs no matplotlib


# -- shap.Explanation -----------------------------------------------------------------------------------------------
def plots_explanation(explained: dict, **labels: object):
    pytest.importorskip("shap")
    return explained["explainer"](explained["X"], **labels)


def test_plots_take_an_explanation_and_its_labels(explained: dict) -> None:
    names, times = [f"x{j}" for j in range(F)], [f"day {t}" for t in range(T)]
    explanation = plots_explanation(explained, feature_names=names, time_labels=times, output_names=["a", "b", "c"])
    fig = plots.heatmap(explanation, sample=0, output="b")
    texts = _texts(fig)
    assert set(names) <= texts and set(times) <= texts
    assert any("b:" in t and "f(x) =" in t for t in texts)  # the title names the output and adds up the base value
    images = [ax.images[0] for ax in fig.axes if ax.images]
    np.testing.assert_array_equal(images[0].get_array(), explained["X"][0].numpy())  # the Explanation's own data
    assert isinstance(plots.heatmap(explanation[1], output=0), Figure)
    assert isinstance(plots.over_time(explanation[2, :, :, "c"]), Figure)
    fig = plots.global_importance(explanation, output=1)
    assert set(names) <= _texts(fig)


def test_explanation_carries_feature_names_and_time_labels(explained: dict) -> None:
    names, times = ["a", "b", "c", "d"], [f"12:0{t}" for t in range(T)]  # colons in the time labels
    explanation = plots_explanation(explained, feature_names=names, time_labels=times)
    grid = np.asarray(explanation.feature_names)
    assert grid.shape == (5, T, F)
    assert grid[0, 3, 2] == "12:03:c"
    assert np.asarray(explanation[1].feature_names).shape == (T, F)  # survives slicing a sample
    assert np.asarray(explanation[:, :, :, 0].feature_names).shape == (5, T, F)
    assert plots._names(explanation.feature_names) == (times, names)
    only_features = plots_explanation(explained, feature_names=names)
    assert np.asarray(only_features.feature_names)[0, 0, 0] == "t0:a"
    unnamed = np.asarray(plots_explanation(explained).feature_names)  # default labels, so that ex.sum(1) names its features
    assert unnamed[0, 2, 1] == "t2:f1"
    with pytest.raises(ValueError, match="feature_names"):
        plots_explanation(explained, feature_names=["too", "few"])


def test_flatten_names_time_by_feature_and_keeps_additivity(explained: dict) -> None:
    explanation = plots_explanation(explained, feature_names=list("abcd"))
    flat = plots.flatten(explanation)
    assert flat.values.shape == (5, T * F, K) and flat.data.shape == (5, T * F)
    assert list(flat.feature_names)[: F + 1] == ["t0:a", "t0:b", "t0:c", "t0:d", "t1:a"]
    np.testing.assert_allclose(
        flat.base_values + flat.values.sum(1), model_outputs(explained["model"], explained["X"]), atol=1e-9
    )
    np.testing.assert_array_equal(flat.values[:, 3 * F + 2], explanation.values[:, 3, 2])  # t3:c
    one = plots.flatten(explanation[2])
    assert one.values.shape == (T * F, K) and list(one.feature_names)[F * 3 + 2] == "t3:c"
    default = plots.flatten(plots_explanation(explained))
    assert list(default.feature_names)[-1] == f"t{T - 1}:f{F - 1}"
    relabelled = plots.flatten(explanation, time_labels=[f"s{t}" for t in range(T)])
    assert list(relabelled.feature_names)[F] == "s1:a"


def test_shap_plots_render_on_rnnshap_explanations(explained: dict) -> None:
    shap = pytest.importorskip("shap")
    flat = plots.flatten(plots_explanation(explained, feature_names=list("abcd")))
    one_output = flat[:, :, 1]
    shap.plots.bar(one_output, show=False)
    shap.plots.heatmap(one_output, show=False)
    shap.plots.waterfall(flat[0, :, 1], show=False)
    shap.plots.beeswarm(one_output, show=False)
    labels = {t.get_text() for ax in plt.gcf().axes for t in ax.get_yticklabels()}
    assert any(re.fullmatch(r"t\d+:[abcd]", label) for label in labels)
    # a model over flat features needs no flattening
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    flat_explanation = rnnshap.DeepExplainer(model, torch.randn(10, 5))(torch.randn(6, 5), feature_names=list("vwxyz"))
    shap.plots.bar(flat_explanation[:, :, 0], show=False)
    shap.plots.waterfall(flat_explanation[0, :, 1], show=False)
    shap.plots.heatmap(flat_explanation[:, :, 1], show=False)
    assert plt.get_fignums()
