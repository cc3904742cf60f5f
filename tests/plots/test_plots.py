"""``rnnshap.plots``: every plot renders headless from numpy output and from shap.Explanations,
token highlighting marks the sign, and ``flatten`` makes sequences fit shap's own plots."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import plots
from rnnshap.plots import inputs, style

from ..conftest import model_outputs
from ..models.torch import RecurrentHead

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # headless, whatever the environment says
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

T, F, K = 6, 4, 3


@pytest.fixture(scope="module")
def explained() -> dict:
    torch.manual_seed(0)
    model = RecurrentHead("lstm", F, 5, K, names="lstm head").double().eval()
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


def test_over_time_bars_sum_features_and_running_total_runs_from_the_base_to_the_output(explained: dict) -> None:
    values, explainer = explained["values"], explained["explainer"]
    fig = plots.over_time(values, sample=3, output=1, base_value=explainer.expected_value)
    assert isinstance(fig, Figure)
    total_ax, bars_ax = fig.axes
    heights = np.array([bar.get_height() for bar in bars_ax.patches])
    np.testing.assert_allclose(heights, values[3, :, :, 1].sum(-1))
    positive = matplotlib.colors.to_rgba(np.array(plots.POSITIVE) / 255)
    for bar, height in zip(bars_ax.patches, heights, strict=True):
        assert (bar.get_facecolor() == positive) == (height >= 0)
    running = total_ax.lines[0].get_ydata()
    fx = model_outputs(explained["model"], explained["X"])[3, 1]
    assert running[0] == pytest.approx(explainer.expected_value[1], abs=1e-12)  # starts at E[f]
    assert running[-1] == pytest.approx(fx, abs=1e-9)  # ends at f(x)
    assert bars_ax.get_xlabel() == "time step" and "running total" in total_ax.get_ylabel()
    assert "f(x) = E[f] + Σφ" in fig._suptitle.get_text()


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
    model = RecurrentHead("gru", 4, 5, 2, vocabulary=12, names="embedding gru head").eval()
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
    assert inputs.split_names(explanation.feature_names) == (times, names)
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


# -- pyplot's state, long and wide sequences, the new plots ------------------------------------------------------------
def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _every_plot(values: np.ndarray, data: np.ndarray, **extra: object) -> dict[str, Figure]:
    """Every matplotlib plot of rnnshap on (N, T, F) values and data."""
    return {
        "heatmap": plots.heatmap(values, data, sample=0, **extra),
        "over_time": plots.over_time(values, sample=0, **extra),
        "signal": plots.signal(values, data, sample=0, **extra),
        "beeswarm_over_time": plots.beeswarm_over_time(values, data, **extra),
        "global_importance": plots.global_importance(values, **extra),
        "output_map": plots.output_map(values, sample=0, **extra),
    }


def _overlaps(labels: list) -> list[tuple[str, str]]:
    """Pairs of drawn tick labels whose boxes overlap."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in labels if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]


def test_plots_leave_pyplot_alone() -> None:
    values, data = _random((3, 8, 3)), _random((3, 8, 3), 1)
    plt.close("all")
    plots.heatmap(values, data, sample=0)
    plots.global_importance(values)
    assert plt.get_fignums() == []  # no figure was made with pyplot
    mine = plt.figure()
    figures = _every_plot(values, data)
    assert plt.gcf() is mine and plt.get_fignums() == [mine.number]  # shap's next plot draws on a figure of its own
    for fig in figures.values():
        assert fig.canvas.manager is None
    assert len(np.unique(_rendered(figures["signal"]).reshape(-1, 4), axis=0)) > 50  # draws without pyplot


def test_single_panel_plots_draw_into_a_given_axes() -> None:
    values, data = _random((3, 8, 3)), _random((3, 8, 3), 1)
    fig, axes = plt.subplots(2, 2)
    assert plots.heatmap(values, data, sample=0, ax=axes[0, 0]) is fig
    assert plots.over_time(values, sample=0, ax=axes[0, 1]) is fig
    assert plots.beeswarm_over_time(values, data, ax=axes[1, 0]) is fig
    assert plots.output_map(values, sample=0, ax=axes[1, 1]) is fig
    assert len(axes[0, 0].images) == 1 and len(axes[0, 1].patches) == 8 and axes[1, 0].collections
    assert plt.gcf() is fig


def test_long_sequences_keep_few_round_ticks_that_do_not_overlap() -> None:
    values, data = _random((3, 500, 30)), _random((3, 500, 30), 1)
    figures = _every_plot(values, data)
    for name, fig in figures.items():
        time_axes = [ax for ax in fig.axes if ax.get_xlabel() in ("time step", "input step")]
        assert time_axes, name
        for ax in time_axes:
            labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
            assert 5 <= len(labels) <= 30, (name, labels)
            assert all(int(label) % 10 == 0 for label in labels), (name, labels)  # round step numbers
    for name in ("heatmap", "over_time"):  # drawing is slow: check these two for overlaps
        fig = figures[name]
        fig.canvas.draw()
        for ax in fig.axes:
            assert not _overlaps(ax.get_xticklabels()) and not _overlaps(ax.get_yticklabels()), (name, ax.get_ylabel())
    assert all(line.get_marker() in (None, "None", "") for line in figures["over_time"].axes[0].lines)  # no marker per step


def test_heatmap_of_200_steps_and_12_features_is_tall_enough_to_read() -> None:
    values = _random((1, 200, 12))
    fig = plots.heatmap(values, _random((1, 200, 12), 1), sample=0, feature_names=[f"channel {j}" for j in range(12)])
    assert fig.get_figheight() * 100 >= 500  # pixels at 100 dpi, for two panels of 12 rows
    fig.canvas.draw()
    for ax in fig.axes:
        assert not _overlaps(ax.get_yticklabels()) and not _overlaps(ax.get_xticklabels())
    image = next(ax.images[0] for ax in fig.axes if ax.images and ax.get_title() == "attribution φ")
    assert image.get_array().shape == (12, 200)  # time runs along x for a long sequence
    assert {f"channel {j}" for j in range(12)} <= _texts(fig)


def test_top_k_keeps_the_features_with_the_largest_mean_abs_phi() -> None:
    rng = np.random.default_rng(3)
    scale = rng.permutation(np.linspace(0.1, 5.0, 30))
    values = rng.standard_normal((6, 40, 30)) * scale
    names = [f"x{j}" for j in range(30)]
    top5 = list(np.argsort(-np.abs(values[0]).mean(0))[:5])
    fig = plots.heatmap(values, sample=0, feature_names=names, max_features=5, time_axis="y")
    (image,) = [ax.images[0] for ax in fig.axes if ax.images]
    shown = np.asarray(image.get_array())
    assert shown.shape == (40, 6)
    np.testing.assert_allclose(shown[:, :5], values[0][:, top5])
    np.testing.assert_allclose(shown[:, 5], np.delete(values[0], top5, axis=1).sum(1))  # the others, summed: Σφ is kept
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == [names[j] for j in top5] + ["Σ 25 others"]
    overall = list(np.argsort(-np.abs(values).mean((0, 1)))[:4])
    fig = plots.global_importance(values, feature_names=names, max_features=4, time_axis="y")
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == [names[j] for j in overall] + ["Σ 26 others"]
    fig = plots.signal(values, rng.standard_normal((6, 40, 30)), sample=0, feature_names=names, max_features=3)
    assert [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.lines] == [names[j] for j in top5[:3]]
    fig = plots.heatmap(values, sample=0, max_features=None, time_axis="y")
    assert fig.axes[0].images[0].get_array().shape == (40, 30)


def test_a_window_of_steps_draws_those_steps_with_their_own_numbers() -> None:
    values, data = _random((2, 500, 5)), _random((2, 500, 5), 1)
    for steps in [(100, 160), slice(100, 160)]:
        fig = plots.heatmap(values, data, sample=1, steps=steps)
        images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
        np.testing.assert_allclose(images["attribution φ"].get_array(), values[1, 100:160].T)
        np.testing.assert_allclose(images["input x"].get_array(), data[1, 100:160].T)
        shown = next(ax for ax in fig.axes if ax.get_title() == "attribution φ")
        ticks = [int(t.get_text()) for t in shown.get_xticklabels() if t.get_text()]
        assert ticks and min(ticks) >= 100 and max(ticks) < 160
        assert "steps 100–159 of 500" in fig._suptitle.get_text()
    fig = plots.over_time(values, sample=1, steps=(100, 160))
    bars = fig.axes[1].patches
    np.testing.assert_allclose([b.get_height() for b in bars], values[1, 100:160].sum(-1))
    np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in bars], np.arange(100, 160))
    running = fig.axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(running[[0, -1]], [values[1, :100].sum(), values[1, :160].sum()])  # carried in from before
    fig = plots.beeswarm_over_time(values, data, steps=(-50, None))
    offsets = fig.axes[0].collections[0].get_offsets()
    assert len(offsets) == 2 * 50 and offsets[:, 0].min() > 449.4
    with pytest.raises(ValueError, match="no time step"):
        plots.heatmap(values, sample=0, steps=(600, 700))


def test_colour_limit_is_robust_and_the_colour_bar_says_so() -> None:
    values = _random((1, 60, 4)) * 0.1
    values[0, 10, 2] = 50.0  # one huge value would wash out every other colour
    fig = plots.heatmap(values, sample=0)
    image = next(ax.images[0] for ax in fig.axes if ax.images)
    low, high = image.get_clim()
    assert low == -high and high < 1.0
    bar = fig.axes[-1]
    assert "clipped at ±" in bar.get_ylabel() and "largest 50" in bar.get_ylabel()
    small = plots.heatmap(_random((1, 8, 3)), sample=0)  # 24 cells: the largest |φ| is the limit
    low, high = next(ax.images[0] for ax in small.axes if ax.images).get_clim()
    assert high == pytest.approx(np.abs(_random((1, 8, 3))).max())
    fig = plots.heatmap(values, sample=0, vmax=2.0)
    assert next(ax.images[0] for ax in fig.axes if ax.images).get_clim() == (-2.0, 2.0)


def test_titles_say_f_of_x_equals_base_plus_sum_with_the_numbers(explained: dict) -> None:
    values, explainer = explained["values"], explained["explainer"]
    base, fx = explainer.expected_value[2], model_outputs(explained["model"], explained["X"])[0, 2]
    total = values[0, :, :, 2].sum()
    sign = "+" if total >= 0 else "−"
    expected = style.identity(base, total)
    assert expected.startswith("f(x) = E[f] + Σφ = ") and f" {sign} " in expected
    base_text, _, rest = expected.removeprefix("f(x) = E[f] + Σφ = ").partition(f" {sign} ")
    total_text, _, fx_text = rest.partition(" = ")
    for text, number in [(base_text, base), (total_text, abs(total)), (fx_text, fx)]:
        assert float(text.replace("−", "-")) == pytest.approx(number, abs=0.006)
    for fig in [
        plots.heatmap(values, sample=0, output=2, base_value=explainer.expected_value),
        plots.over_time(values, sample=0, output=2, base_value=explainer.expected_value),
        plots.signal(values, explained["X"].numpy(), sample=0, output=2, base_value=explainer.expected_value),
    ]:
        assert expected in fig._suptitle.get_text()
    assert "Σφ = f(x) − E[f] =" in plots.heatmap(values, sample=0, output=2)._suptitle.get_text()  # E[f] unknown


def test_single_output_explanations_with_and_without_an_output_axis() -> None:
    shap = pytest.importorskip("shap")
    values, data = _random((3, 8, 3)), _random((3, 8, 3), 1)
    base = np.array([0.5, -0.25, 1.0])
    layouts = [
        shap.Explanation(values=values, base_values=base, data=data),  # no output axis
        shap.Explanation(values=values[..., None], base_values=base[:, None], data=data),  # a trailing output axis of 1
    ]
    for explanation in layouts:
        for output in (None, 0):
            fig = plots.heatmap(explanation, sample=1, output=output)
            np.testing.assert_allclose(
                next(ax.images[0] for ax in fig.axes if ax.images and ax.get_title() == "attribution φ").get_array(), values[1]
            )
            assert style.identity(-0.25, values[1].sum()) in fig._suptitle.get_text()
        assert style.identity(1.0, values[2].sum()) in plots.over_time(explanation, sample=2)._suptitle.get_text()
        plots.signal(explanation, sample=0)
        plots.beeswarm_over_time(explanation)
        plots.global_importance(explanation)
    numpy_trailing = plots.heatmap(values[..., None], data, sample=1, base_value=0.3)  # numpy output with a trailing axis of 1
    assert style.identity(0.3, values[1].sum()) in numpy_trailing._suptitle.get_text()


def test_signal_draws_each_features_input_over_its_attributions(explained: dict) -> None:
    values, X = explained["values"], explained["X"].numpy()
    names = [f"s{j}" for j in range(F)]
    fig = plots.signal(values, X, sample=2, output=0, feature_names=names)
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == F
    for ax, j in zip(panels, range(F), strict=True):
        assert ax.get_ylabel().startswith(f"s{j}\nΣφ")
        np.testing.assert_allclose(ax.lines[0].get_ydata(), X[2, :, j])  # the raw signal
        np.testing.assert_allclose(ax.images[0].get_array()[0], values[2, :, j, 0])  # coloured by φ behind it
    assert panels[-1].get_xlabel() == "time step"
    with pytest.raises(ValueError, match="data="):
        plots.signal(values, sample=0, output=0)


def test_output_map_of_a_sequence_to_sequence_model() -> None:
    torch.manual_seed(1)
    model = RecurrentHead("gru", 3, 6, 2, read="steps", names="gru head").double().eval()  # (N, T, 2): a forecast per step
    explainer = rnnshap.DeepExplainer(model, torch.randn(4, 10, 3, dtype=torch.float64))
    X = torch.randn(2, 10, 3, dtype=torch.float64)
    outputs = [(2, 1), (5, 1), (9, 1)]
    values = explainer.shap_values(X, outputs=outputs)  # (2, 10, 3, 3)
    fig = plots.output_map(values, sample=1, outputs=outputs)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), values[1].sum(1).T)  # rows: outputs; columns: input steps
    assert ax.get_xlabel() == "input step" and ax.get_ylabel() == "explained output step"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "5", "9"]
    gaps = model_outputs(model, X)[1].reshape(10, 2)[[2, 5, 9], 1] - np.asarray(explainer.expected_value)[[2, 5, 9], 1]
    right = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    for text, gap in zip(right, gaps, strict=True):  # each row adds up to its f(x) − E[f]
        assert float(text.removeprefix("Σφ ").replace("−", "-")) == pytest.approx(gap, rel=0.01, abs=1e-4)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [2, 5, 9])  # input step = output step
    full = explainer.shap_values(X)  # (2, 10, 3, 10, 2): every output step, both channels
    fig = plots.output_map(full, sample=0, output=1)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), full[0, :, :, :, 1].sum(1).T)
    with pytest.raises(ValueError, match="sample="):
        plots.output_map(full)


def test_beeswarm_over_time_spreads_samples_and_colours_by_the_input(explained: dict) -> None:
    values, X = explained["values"], explained["X"].numpy()
    names = list("abcd")
    fig = plots.beeswarm_over_time(values, X, output=1, feature="c", feature_names=names)
    ax = fig.axes[0]
    points = ax.collections[0]
    offsets = np.asarray(points.get_offsets())
    assert len(offsets) == 5 * T
    order = np.lexsort((offsets[:, 1], np.round(offsets[:, 0])))
    expected = values[:, :, 2, 1]
    np.testing.assert_allclose(np.sort(offsets[:, 1]), np.sort(expected.ravel()))
    assert np.all(np.abs(offsets[:, 0] - np.round(offsets[:, 0])) <= 0.4)  # each dot stays in its step's column
    colours = np.asarray(points.get_array())
    by_point = {(round(float(x)), float(y)): c for (x, y), c in zip(offsets[order], colours[order], strict=True)}
    for n in range(5):
        for t in range(T):
            assert by_point[(t, float(expected[n, t]))] == pytest.approx(X[n, t, 2])  # coloured by that input's value
    assert ax.get_xlabel() == "time step" and ax.get_ylabel() == "φ of c"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), expected.mean(0))
    summed = plots.beeswarm_over_time(values, X, output=np.array([0, 1, 2, 0, 1]))
    assert "Σ over features" in summed.axes[0].get_ylabel()


def test_beeswarm_over_time_takes_a_summary() -> None:
    values, data = _random((20, 8, 3)), _random((20, 8, 3), 1)
    summary = rnnshap.Summary([(8, 3)], [(8, 3)], (), sample_size=12, seed=0)
    summary.update([values], np.zeros(20), [data], np.arange(20))
    fig = plots.beeswarm_over_time(summary)
    assert len(fig.axes[0].collections[0].get_offsets()) == 12 * 8
    assert "a uniform sample of the 20 summarized" in " ".join(fig._suptitle.get_text().split())


def test_gallery_script_writes_every_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/examples/plots_gallery.py, headless (no display; its figures never touch pyplot), small size."""
    import importlib.util

    monkeypatch.delenv("DISPLAY", raising=False)
    script = Path(__file__).resolve().parents[2] / "docs" / "examples" / "plots_gallery.py"
    spec = importlib.util.spec_from_file_location("plots_gallery", script)
    assert spec is not None and spec.loader is not None
    gallery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gallery)
    gallery.main([str(tmp_path), "--sizes", "small"])
    assert "wrote 7 files" in capsys.readouterr().out
    assert plt.get_fignums() == []
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = [
        f"{plot}_small.png"
        for plot in ("heatmap", "over_time", "signal", "beeswarm_over_time", "global_importance", "output_map")
    ]
    assert sorted(expected + ["token_html.html"]) == names
    for name in expected:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_examples_of_docs_plots_md_run() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "plots.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict[str, object] = {"__name__": "docs_plots"}
    for number, block in enumerate(blocks, 1):
        namespace["fig"] = None
        exec(compile(block.replace('fig.savefig("heatmap.png")', ""), f"plots.md, example {number}", "exec"), namespace)
        assert number == 1 or isinstance(namespace["fig"], Figure)  # the first example sets up the model
    assert plt.get_fignums() == []
