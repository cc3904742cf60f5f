"""rnnshap.metrics: how far any attribution is from the exact Shapley values of the game it approximates, and the
deletion curve, checked against what can be written down independently:

- the Shapley values of v(S) = mean over background rows r of f(x on S, r elsewhere), enumerated here from the
  definition in float64, and in closed form for a linear model (step t: Σ_f w_tf · (x_tf − mean_r r_tf));
- each distance computed here from its definition with numpy float64 on the same arrays;
- the deletion curve of a linear model: f(x) minus the running sum of the removed players' w · (x − baseline).

Both layouts: (N, T, F) (recurrent, channels-last) and (N, C, T) (aeon's and sktime's panels, torch's Conv1d).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import InputError
from rnnshap.metrics import DistanceToExact, deletion, distance_to_exact, explain_func, insertion

from .models.torch import Composite, RecurrentHead
from .shapley.test_shapley_layouts import enumerated  # (exact Shapley values by definition)

# ---------------------------------------------------------------------------------------------- truths


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..P with ties given their mean rank, by the slowest definition (counting)."""
    less = (a[None, :] < a[:, None]).sum(1)
    equal = (a[None, :] == a[:, None]).sum(1)
    return less + (equal + 1) / 2


def by_hand(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    """The five distances of one (values, reference) pair over P players, from their definitions."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    top = lambda v: set(np.argsort(-np.abs(v), kind="stable")[:k].tolist())
    return {
        "cosine": float(a @ b / math.sqrt((a @ a) * (b @ b))),
        "relative_l2": float(math.sqrt(((a - b) ** 2).sum()) / math.sqrt((b**2).sum())),
        "spearman": float(ra @ rb / math.sqrt((ra @ ra) * (rb @ rb))),
        "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
        "top_k_overlap": len(top(a) & top(b)) / k,
    }


METRICS = ("cosine", "relative_l2", "spearman", "sign_agreement", "top_k_overlap")


def assert_scores(result, values: np.ndarray, reference: np.ndarray, k: int, rtol: float = 1e-12) -> None:
    """Every metric of ``result`` against :func:`by_hand` on values and reference shaped (n, P, outputs)."""
    n, _, outputs = reference.shape
    for i in range(n):
        for j in range(outputs):
            expected = by_hand(values[i, :, j], reference[i, :, j], k)
            for name in METRICS:
                got = np.asarray(getattr(result, name)).reshape(n, outputs)[i, j]
                np.testing.assert_allclose(got, expected[name], rtol=rtol, atol=rtol, err_msg=f"{name}, sample {i}, output {j}")


# ---------------------------------------------------------------------------------------------- models


def linear_tf(T: int = 6, F: int = 3, K: int = 2, seed: int = 0) -> nn.Module:
    """f(x) = Σ_{t,f} W[t, f, k] x[t, f] + b[k] on (N, T, F): its layout says nothing (time_axis=1 needed)."""
    g = torch.Generator().manual_seed(seed)
    return Composite(lambda m, x: torch.einsum("ntf,tfk->nk", x, m.W) + m.b,
                     W=nn.Parameter(torch.randn(T, F, K, generator=g, dtype=torch.float64)),
                     b=nn.Parameter(torch.randn(K, generator=g, dtype=torch.float64)))  # fmt: skip


def linear_ct(C: int = 3, T: int = 6, K: int = 2, seed: int = 0) -> nn.Module:
    """The same on (N, C, T) through a Conv1d spanning all steps: the Conv1d says (C, T)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(C, K, kernel_size=T), nn.Flatten()).double().eval()


def weights(model: nn.Module, layout: str) -> np.ndarray:
    """W in the layout of one sample, outputs last: (T, F, K) or (C, T, K)."""
    if layout == "tf":
        return model.W.detach().numpy()
    return model[0].weight.detach().numpy().transpose(1, 2, 0)


def _read(out: torch.Tensor, state: object) -> torch.Tensor:
    return torch.tanh(out[:, -1]) * out[:, -2]


def gru() -> nn.Module:
    torch.manual_seed(3)
    return RecurrentHead("gru", 3, 8, 2, read=_read).double().eval()


def data(shape: tuple[int, ...], n: int = 3, B: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)), rng.normal(size=(B, *shape))


LAYOUTS = {
    # layout: (model, sample shape, time axis of X, the axis of one sample that is time)
    "tf": (linear_tf, (6, 3), 1, 0),
    "ct": (linear_ct, (3, 6), 2, 1),
}


def step_sums(per_entry: np.ndarray, time: int) -> np.ndarray:
    """(n, A, B, K) per entry → (n, T, K) per step (time = the per-sample time axis)."""
    return per_entry.sum(2 - time)


# ---------------------------------------------------------------------------------------------- distance


@pytest.mark.parametrize("layout", ["tf", "ct"])
def test_the_reference_of_a_linear_model_is_its_closed_form(layout: str) -> None:
    build, shape, axis, time = LAYOUTS[layout]
    model = build()
    X, bg = data(shape)
    W = weights(model, layout)
    closed = step_sums((X - bg.mean(0))[..., None] * W, time)  # (n, T, K): w_t · (x_t − mean r_t)
    result = distance_to_exact(closed, model, X, bg, time_axis=axis)
    assert result.exact and (result.stderr == 0).all()
    np.testing.assert_allclose(result.reference, closed, rtol=1e-10, atol=1e-12)
    assert result.game.players == "steps" and result.game.n_players == 6 and result.game.background_rows == 5


def test_the_exact_values_are_at_distance_zero_from_themselves_on_both_layouts() -> None:
    for layout in ("tf", "ct"):
        build, shape, axis, _ = LAYOUTS[layout]
        model = build()
        X, bg = data(shape)
        first = distance_to_exact(np.ones((3, *shape, 2)), model, X, bg, time_axis=axis)
        again = distance_to_exact(first.reference, model, X, bg, time_axis=axis)  # per player: (n, P, K)
        np.testing.assert_allclose(again.cosine, 1.0, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(again.relative_l2, 0.0)
        np.testing.assert_allclose(again.spearman, 1.0, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(again.sign_agreement, 1.0)
        np.testing.assert_array_equal(again.top_k_overlap, 1.0)
        assert again.cosine.shape == (3, 2)
        # far from it: all-ones values are not the exact ones
        assert (first.relative_l2 > 0.1).all()


def test_the_distance_of_deepshap_on_a_gru_equals_its_definitions_in_float64() -> None:
    model = gru()
    X, bg = data((5, 3), n=3, B=6)
    deepshap = rnnshap.DeepExplainer(model, torch.from_numpy(bg)).shap_values(torch.from_numpy(X))  # (n, T, F, 2)
    assert deepshap.shape == (3, 5, 3, 2)
    result = distance_to_exact(deepshap, model, X, bg, top_k=2)
    f = lambda rows: model(torch.from_numpy(rows)).detach().numpy()
    steps = np.broadcast_to(np.arange(5)[:, None], (5, 3))
    truth = np.stack([enumerated(f, X[i], bg, steps) for i in range(3)])  # (n, T, 2), from the definition
    np.testing.assert_allclose(result.reference, truth, rtol=1e-10, atol=1e-12)
    per_step = deepshap.sum(2)
    np.testing.assert_allclose(result.values, per_step, rtol=1e-12, atol=1e-12)
    assert_scores(result, per_step, truth, 2)
    assert (result.relative_l2 > 1e-3).all()  # DeepSHAP is not the Shapley values of this model
    assert result.cosine.shape == (3, 2) and result.top_k == 2


@pytest.mark.parametrize("layout", ["tf", "ct"])
def test_integrated_gradients_on_a_linear_model_gets_the_closed_form_distance(layout: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    build, shape, axis, time = LAYOUTS[layout]
    model = build()
    X, bg = data(shape)
    W = weights(model, layout)
    ig = captum_attr.IntegratedGradients(model)
    inputs = torch.from_numpy(X)
    # a zero baseline: IG = W ⊙ x (up to its quadrature's weights, which sum to 1 within 1e-9), which is not the
    # Shapley value W ⊙ (x − mean r)
    zero = np.stack([ig.attribute(inputs, target=k).detach().numpy() for k in range(2)], -1)
    np.testing.assert_allclose(zero, X[..., None] * W, rtol=1e-8, atol=1e-12)
    result = distance_to_exact(zero, model, X, bg, time_axis=axis)
    closed_values = step_sums(X[..., None] * W, time)
    closed_reference = step_sums((X - bg.mean(0))[..., None] * W, time)
    assert_scores(result, closed_values, closed_reference, result.top_k, rtol=1e-8)
    assert (result.relative_l2 > 0.05).all()
    # the background's mean as IG's baseline: the Shapley values themselves (the game is additive)
    mean = torch.from_numpy(bg.mean(0, keepdims=True))
    at_mean = np.stack([ig.attribute(inputs, baselines=mean, target=k).detach().numpy() for k in range(2)], -1)
    exact = distance_to_exact(at_mean, model, X, bg, time_axis=axis)
    np.testing.assert_allclose(exact.relative_l2, 0.0, atol=1e-8)
    np.testing.assert_allclose(exact.cosine, 1.0, atol=1e-12)


@pytest.mark.parametrize("layout", ["tf", "ct"])
def test_windows_and_channels_sum_the_values_to_their_players(layout: str) -> None:
    build, shape, axis, time = LAYOUTS[layout]
    model = build()
    X, bg = data(shape)
    W = weights(model, layout)
    per_entry = (X - bg.mean(0))[..., None] * W
    rng = np.random.default_rng(5)
    values = rng.normal(size=(3, *shape, 2))
    # windows of 4 steps: players [0, 4) and [4, 6)
    steps = step_sums(per_entry, time)
    windows = np.stack([steps[:, :4].sum(1), steps[:, 4:].sum(1)], 1)
    result = distance_to_exact(values, model, X, bg, time_axis=axis, windows=4)
    assert result.game.players == "windows" and result.game.n_players == 2
    np.testing.assert_allclose(result.reference, windows, rtol=1e-10, atol=1e-12)
    value_steps = step_sums(values, time)
    np.testing.assert_allclose(result.values, np.stack([value_steps[:, :4].sum(1), value_steps[:, 4:].sum(1)], 1), rtol=1e-12)
    assert_scores(result, result.values, windows, result.top_k)
    # channels (features): one player per feature at every step
    channels = per_entry.sum(1 + time)
    result = distance_to_exact(values, model, X, bg, time_axis=axis, players="channels")
    assert result.game.players == "channels" and result.game.n_players == 3
    np.testing.assert_allclose(result.reference, channels, rtol=1e-10, atol=1e-12)
    assert_scores(result, values.sum(1 + time), channels, result.top_k)


def test_one_output_without_an_output_axis_and_a_chosen_output() -> None:
    model = linear_ct()
    X, bg = data((3, 6))
    W = weights(model, "ct")
    closed = ((X - bg.mean(0))[..., None] * W).sum(1)  # (n, T, K)
    result = distance_to_exact(closed[..., 1], model, X, bg, outputs=[1])  # the Conv1d says (C, T)
    assert result.cosine.shape == (3,) and result.reference.shape == (3, 6)
    np.testing.assert_allclose(result.reference, closed[..., 1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.relative_l2, 0.0, atol=1e-10)
    summary = result.summary()
    assert set(summary) == set(METRICS) and summary["cosine"] == pytest.approx(1.0)


def test_spearman_gives_ties_their_average_rank() -> None:
    model = linear_tf(T=6, F=1, K=1)
    X, bg = data((6, 1))
    values = np.array([[3.0, 1.0, 1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0, 1.0, -1.0], [1, 2, 3, 4, 5, 6.0]])[..., None]
    result = distance_to_exact(values, model, X, bg, time_axis=1)
    stats = pytest.importorskip("scipy.stats")
    for i in range(3):
        expected = stats.spearmanr(values[i, :, 0], result.reference[i]).statistic
        assert result.spearman[i] == pytest.approx(expected, abs=1e-12)


def test_an_estimated_reference_carries_its_standard_errors() -> None:
    model = gru()
    X, bg = data((5, 3), n=2, B=6)
    values = rnnshap.DeepExplainer(model, torch.from_numpy(bg)).shap_values(torch.from_numpy(X))
    result = distance_to_exact(values, model, X, bg, budget=100, random_state=0)  # 2^5 · 6 = 192 rows enumerate
    assert not result.exact and result.stderr.shape == result.reference.shape
    assert np.isfinite(result.stderr).all() and (result.stderr > 0).any()
    noise = np.sqrt((result.stderr**2).sum(1)) / np.sqrt((result.reference**2).sum(1))
    np.testing.assert_allclose(result.reference_noise, noise, rtol=1e-12)
    exact = distance_to_exact(values, model, X, bg)
    assert exact.exact and (exact.reference_noise == 0).all()
    # the reference is the Shapley mode's estimate, standard errors and all, for the same seed
    mode = rnnshap.ShapleyExplainer(model, bg).shapley_values(X, "steps", 100, random_state=0)
    np.testing.assert_array_equal(result.reference, mode.values)
    np.testing.assert_array_equal(result.stderr, mode.stderr)
    assert ((result.reference - exact.reference) ** 2).sum() < 10 * (result.stderr**2).sum()
    again = distance_to_exact(values, model, X, bg, budget=100, random_state=0)
    np.testing.assert_array_equal(again.reference, result.reference)


def test_bad_shapes_and_layouts_are_refused_by_name() -> None:
    model = linear_ct()
    X, bg = data((3, 6))
    good = np.zeros((3, 3, 6, 2))
    with pytest.raises(InputError, match=r"\(3, 6, 3, 2\).*\(3, 3, 6\)"):
        distance_to_exact(good.transpose(0, 2, 1, 3), model, X, bg)  # (N, T, C) values of (N, C, T) inputs
    with pytest.raises(InputError, match="samples"):
        distance_to_exact(good[:2], model, X, bg)
    with pytest.raises(InputError, match="outputs="):
        distance_to_exact(good[..., 0], model, X, bg)  # no output axis, two outputs
    with pytest.raises(InputError, match="output axis"):
        distance_to_exact(good, model, X, bg, outputs=[0])  # two outputs given, one chosen
    with pytest.raises(InputError, match="one input"):
        distance_to_exact([good, good], model, [X, X], bg)
    with pytest.raises(InputError, match="time_axis"):
        distance_to_exact(np.zeros((3, 6, 3, 2)), linear_tf(), *data((6, 3)))  # nothing says which axis is time
    with pytest.raises(InputError, match="top_k"):
        distance_to_exact(good, model, X, bg, top_k=0)
    with pytest.raises(InputError, match="baseline"):
        deletion(good, model, X, np.zeros((6, 3)))


# ---------------------------------------------------------------------------------------------- deletion


@pytest.mark.parametrize("layout", ["tf", "ct"])
@pytest.mark.parametrize("grouping", ["steps", "windows", "channels"])
def test_the_deletion_curve_of_a_linear_model_is_its_closed_form(layout: str, grouping: str) -> None:
    build, shape, axis, time = LAYOUTS[layout]
    model = build()
    X, _ = data(shape)
    rng = np.random.default_rng(7)
    baseline = rng.normal(size=shape)
    values = rng.normal(size=(3, *shape, 2))
    W = weights(model, layout)
    contributions = (X - baseline)[..., None] * W  # each entry's share of f(x) − f(baseline)
    if grouping == "channels":
        per_player, per_value = contributions.sum(1 + time), values.sum(1 + time)
        options: dict = {"players": "channels"}
    else:
        per_player, per_value = step_sums(contributions, time), step_sums(values, time)
        options = {}
        if grouping == "windows":
            per_player = np.stack([per_player[:, i : i + 2].sum(1) for i in (0, 2, 4)], 1)
            per_value = np.stack([per_value[:, i : i + 2].sum(1) for i in (0, 2, 4)], 1)
            options = {"windows": 2}
    result = deletion(values, model, X, baseline, time_axis=axis, **options)
    P = per_player.shape[1]
    fx = model(torch.from_numpy(X)).detach().numpy()
    assert result.curve.shape == (3, P + 1, 2) and result.aopc.shape == (3, 2)
    assert result.game.n_players == P
    for i in range(3):
        for k in range(2):
            order = np.argsort(-per_value[i, :, k], kind="stable")  # most positive first
            removed = np.concatenate([[0.0], np.cumsum(per_player[i, order, k])])
            np.testing.assert_allclose(result.curve[i, :, k], fx[i, k] - removed, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(result.aopc[i, k], removed.mean(), rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(result.order[i, :, k], order)


def test_deletion_with_a_baseline_per_sample_a_scalar_and_fewer_removals() -> None:
    model = linear_ct()
    X, _ = data((3, 6))
    W = weights(model, "ct")
    values = np.random.default_rng(2).normal(size=(3, 3, 6))
    baselines = np.random.default_rng(3).normal(size=(3, 3, 6))
    fx = model(torch.from_numpy(X)).detach().numpy()[:, 0]
    for baseline in (baselines, 0.0, torch.from_numpy(baselines)):
        result = deletion(values, model, X, baseline, outputs=[0], removals=3)
        b = np.broadcast_to(np.asarray(baseline, dtype=np.float64), X.shape)
        per_step = ((X - b) * W[..., 0]).sum(1)
        assert result.curve.shape == (3, 4) and result.aopc.shape == (3,)
        for i in range(3):
            order = np.argsort(-values[i].sum(0), kind="stable")[:3]
            removed = np.concatenate([[0.0], np.cumsum(per_step[i, order])])
            np.testing.assert_allclose(result.curve[i], fx[i] - removed, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(result.aopc[i], removed.mean(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["tf", "ct"])
def test_the_insertion_curve_of_a_linear_model_is_its_closed_form(layout: str) -> None:
    build, shape, axis, time = LAYOUTS[layout]
    model = build()
    X, _ = data(shape)
    rng = np.random.default_rng(8)
    baseline = rng.normal(size=shape)
    values = rng.normal(size=(3, *shape, 2))
    W = weights(model, layout)
    per_player = step_sums((X - baseline)[..., None] * W, time)
    result = insertion(values, model, X, baseline, time_axis=axis)
    f_baseline = model(torch.from_numpy(baseline[None])).detach().numpy()[0]
    assert result.kind == "insertion" and result.curve.shape == (3, 7, 2)
    for i in range(3):
        for k in range(2):
            order = np.argsort(-step_sums(values, time)[i, :, k], kind="stable")
            added = np.concatenate([[0.0], np.cumsum(per_player[i, order, k])])
            np.testing.assert_allclose(result.curve[i, :, k], f_baseline[k] + added, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(result.aopc[i, k], added.mean(), rtol=1e-10, atol=1e-12)


def test_cells_and_a_player_mask_on_a_function_of_panels() -> None:
    # a function of numpy arrays (N, C=2, T=3): any model ShapleyExplainer takes; its layout is not read
    rng = np.random.default_rng(4)
    W = rng.normal(size=(2, 3))
    f = lambda rows: (rows * W).sum((1, 2))[:, None]
    X, bg = data((2, 3))
    closed = (X - bg.mean(0)) * W  # (n, C, T): every cell's exact Shapley value
    cells = distance_to_exact(closed, f, X, bg, players="cells")
    assert cells.exact and cells.game.players == "cells" and cells.game.n_players == 6
    np.testing.assert_allclose(cells.reference, closed.reshape(3, 6), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cells.relative_l2, 0.0, atol=1e-10)
    mask = np.array([[0, 0, 1], [2, 2, 1]])  # three players: two cells each
    grouped = distance_to_exact(closed, f, X, bg, players=mask)
    expected = np.stack([closed[:, 0, :2].sum(1), closed[:, 0, 2] + closed[:, 1, 2], closed[:, 1, :2].sum(1)], 1)
    np.testing.assert_allclose(grouped.reference, expected, rtol=1e-10, atol=1e-12)
    assert grouped.game.players == "mask" and grouped.game.n_players == 3
    with pytest.raises(InputError, match="time_axis"):
        distance_to_exact(closed, f, X, bg)  # a function does not say which axis is time
    steps = distance_to_exact(closed, f, X, bg, time_axis=2)
    np.testing.assert_allclose(steps.reference, closed.sum(1), rtol=1e-10, atol=1e-12)


def test_a_keras_model_is_scored_as_a_torch_one() -> None:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    W = np.asarray(model.layers[-1].get_weights()[0], dtype=np.float64).reshape(5, 3, 2)
    X, bg = (a.astype("float32") for a in data((5, 3)))
    closed = ((X - bg.mean(0))[..., None].astype(np.float64) * W).sum(2)  # (n, T, K)
    result = distance_to_exact(closed, model, X, bg, time_axis=1)  # Flatten first: the layout is not read
    assert result.exact
    np.testing.assert_allclose(result.reference, closed, rtol=1e-5, atol=1e-6)  # float32 rows
    np.testing.assert_allclose(result.cosine, 1.0, atol=1e-6)
    curve = deletion(closed, model, X, 0.0, time_axis=1)
    removed = np.stack(
        [
            np.concatenate([[0.0], np.cumsum((X[i, ..., None] * W).sum(1)[np.argsort(-closed[i, :, k], kind="stable"), k])])
            for i in range(3)
            for k in range(2)
        ]
    ).reshape(3, 2, 6)
    fx = np.asarray(model(X), dtype=np.float64)
    np.testing.assert_allclose(curve.curve, (fx[:, :, None] - removed).transpose(0, 2, 1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Quantus' convention


def conv_classifier() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_explain_func_returns_each_samples_target_in_the_layout_of_its_inputs() -> None:
    model = conv_classifier()
    X, bg = (a.astype("float32") for a in data((1, 8), n=4, B=6))
    targets = np.array([2, 0, 2, 1])
    values = explain_func(model, X, targets, background=bg, method="DeepSHAP", device="cpu")
    assert values.shape == X.shape
    every = rnnshap.DeepExplainer(model, bg).shap_values(X)  # (n, 1, 8, 3)
    np.testing.assert_allclose(values, every[np.arange(4), ..., targets], rtol=1e-6, atol=1e-7)
    # the Shapley mode's windows, each window's value spread evenly over its steps
    spread = explain_func(model, X, targets, background=bg, explainer="shapley", windows=3)
    estimate = rnnshap.ShapleyExplainer(model, bg).shapley_values(X, "steps", 10**6, windows=3, outputs=[0, 1, 2])
    per_window = estimate.values[np.arange(4), :, targets]  # (n, 3 windows)
    for w, steps in enumerate([slice(0, 3), slice(3, 6), slice(6, 8)]):
        np.testing.assert_allclose(spread[:, 0, steps].sum(1), per_window[:, w], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(spread[:, 0, steps], np.repeat(spread[:, 0, steps][:, :1], steps.stop - steps.start, 1))
    with pytest.raises(InputError, match="targets"):
        explain_func(model, X, None, background=bg)
    with pytest.raises(InputError, match="explainer"):
        explain_func(model, X, targets, background=bg, explainer="ig")


def test_distance_to_exact_in_quantus_convention_scores_each_sample_on_its_target() -> None:
    model = conv_classifier()
    X, bg = (a.astype("float32") for a in data((1, 8), n=4, B=6))
    targets = np.array([2, 0, 2, 1])
    metric = DistanceToExact(bg, metric="relative_l2", windows=2)
    scores = metric(model=model, x_batch=X, y_batch=targets, a_batch=None, explain_func=explain_func,
                    explain_func_kwargs={"background": bg})  # fmt: skip
    values = explain_func(model, X, targets, background=bg)
    for target in (0, 1, 2):
        rows = np.flatnonzero(targets == target)
        alone = distance_to_exact(values[rows], model, X[rows], bg, outputs=[target], windows=2)
        np.testing.assert_allclose(np.asarray(scores)[rows], alone.relative_l2, rtol=1e-12)
        np.testing.assert_allclose(metric.distance["cosine"][rows], alone.cosine, rtol=1e-12)
        np.testing.assert_array_equal(metric.reference[rows], alone.reference)
    assert metric.exact.all() and (metric.stderr == 0).all() and metric.game.players == "windows"
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)


@pytest.mark.filterwarnings("ignore:The settings for perturbing input:UserWarning")
def test_quantus_metrics_take_rnnshaps_explain_func_and_distance() -> None:
    quantus = pytest.importorskip("quantus")
    model = conv_classifier()
    X, bg = (a.astype("float32") for a in data((1, 12), n=4, B=6))
    y = model(torch.from_numpy(X)).argmax(1).numpy()
    kwargs = {"background": bg}
    flipping = quantus.PixelFlipping(disable_warnings=True, display_progressbar=False)
    curves = flipping(model=model, x_batch=X, y_batch=y, a_batch=None, explain_func=explain_func,
                      explain_func_kwargs=kwargs, device="cpu")  # fmt: skip
    assert np.asarray(curves).shape == (4, 12)
    results = quantus.evaluate(
        metrics={"distance": DistanceToExact(bg), "sensitivity": quantus.MaxSensitivity(nr_samples=2, disable_warnings=True)},
        xai_methods={"deepshap": explain_func, "shapley": explain_func},
        model=model, x_batch=X, y_batch=y, explain_func_kwargs=kwargs, call_kwargs={"0": {"device": "cpu"}},
    )  # fmt: skip
    # evaluate prints a metric's failure and leaves its result out: every result must be there
    deepshap, shapley = explain_func(model, X, y, background=bg), explain_func(model, X, y, background=bg, explainer="shapley")
    direct = [
        distance_to_exact(a[i : i + 1], model, X[i : i + 1], bg, outputs=[int(y[i])]).cosine[0]
        for a in (deepshap, shapley)
        for i in range(4)
    ]
    # (one sample at a time here, four in a batch there: a float32 model's rounding apart)
    np.testing.assert_allclose(results["deepshap"]["distance"] + results["shapley"]["distance"], direct, rtol=1e-4)
    np.testing.assert_allclose(results["shapley"]["distance"], 1.0, atol=1e-6)  # steps spread evenly: the exact values
    assert np.isfinite(results["deepshap"]["sensitivity"]).all() and len(results["shapley"]["sensitivity"]) == 4


@pytest.mark.filterwarnings("ignore:The settings for perturbing input:UserWarning")
def test_quantus_faithfulness_and_monotonicity_correlations_take_explain_func_and_give_a_line_its_closed_form() -> None:
    """Quantus' own FaithfulnessCorrelation and MonotonicityCorrelation (xai4tsc's "Faithfulness Correlation" and
    "Monotonicity-Nguyen"), each calling rnnshap's explain_func, on (N, 1, T). A line f_k(x) = w_k · x + b, series
    whose smallest entry is 0 (Quantus' "black" baseline: the sample's minimum) and one background row of zeros:
    DeepSHAP's values are w_t x per entry, so that removing any subset changes the target's output by the sum of
    their values (Pearson correlation 1) and removing one entry changes it by that entry's value (Spearman 1)."""
    quantus = pytest.importorskip("quantus")
    T = 12
    line = nn.Sequential(nn.Flatten(), nn.Linear(T, 3)).eval()
    with torch.no_grad():  # three classes weighted differently: a wrong target's values would not correlate
        line[1].weight.copy_(torch.tensor(np.stack([np.linspace(-1, 1, T), np.linspace(2, -1, T) ** 3, np.cos(np.arange(T))])))
    rng = np.random.default_rng(3)
    X = rng.uniform(0.5, 2.0, (4, 1, T)).astype(np.float32)
    X[np.arange(4), 0, [1, 5, 7, 10]] = 0.0  # each series' minimum, where Quantus' "black" puts removed entries
    y = np.array([2, 0, 1, 2])
    kwargs = {"background": np.zeros((1, 1, T), dtype=np.float32)}
    values = explain_func(line, X, y, **kwargs)
    np.testing.assert_allclose(values, line[1].weight.detach().numpy()[y][:, None] * X, rtol=1e-6, atol=1e-7)
    common = {"perturb_baseline": "black", "disable_warnings": True, "display_progressbar": False}
    faithfulness = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=3, abs=False, return_aggregate=False, **common)
    monotonicity = quantus.MonotonicityCorrelation(nr_samples=1, features_in_step=1, **common)  # "black": no noise
    for metric in (faithfulness, monotonicity):
        np.random.seed(0)  # Faithfulness draws its subsets from numpy's global generator; softmax=False: the logit
        scores = metric(model=line, x_batch=X, y_batch=y, a_batch=None, explain_func=explain_func,
                        explain_func_kwargs=kwargs, device="cpu", softmax=False)  # fmt: skip
        assert len(scores) == 4  # one per series
        np.testing.assert_allclose(scores, 1.0, atol=1e-5, err_msg=type(metric).__name__)
