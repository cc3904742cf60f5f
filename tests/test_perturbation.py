"""ROAD and infidelity written for time series (Quantus 0.6's own fail on (N, 1, T) inputs): each against its
closed form on a linear model, on both layouts (N, T, F) and (N, C, T), with steps and windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.errors import InputError
from rnnshap.metrics import infidelity, road

from .models.torch import Composite

N, T, F = 3, 12, 2
RNG = np.random.default_rng(0)


def line(shape: tuple[int, int]) -> nn.Module:
    """f(x) = w · x + c, outputs 2: on (N, T, F) with time_axis=1, or (N, C, T) with time_axis=2."""
    torch.manual_seed(0)
    return Composite(lambda m, x: m.head(x.flatten(1)), head=nn.Linear(shape[0] * shape[1], 2).double())


LAYOUTS = {"(N, T, F)": ((T, F), 1), "(N, C, T)": ((F, T), 2)}


def case(layout: str) -> tuple[nn.Module, np.ndarray, int, np.ndarray]:
    shape, axis = LAYOUTS[layout]
    model = line(shape).eval()
    x = RNG.standard_normal((N, *shape))
    w = model.head.weight.detach().numpy().reshape(2, *shape)
    return model, x, axis, w


def interpolated(series: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The closed form of ROAD's imputation without noise: the line between the kept steps, the nearest kept value
    beyond the ends (np.interp), per channel; ``series`` (T, channels)."""
    steps = np.arange(len(series))
    return np.stack([np.interp(steps, steps[kept], series[kept, c]) for c in range(series.shape[1])], 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("windows", [None, 3])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_without_noise_equals_the_model_on_the_linearly_interpolated_series(
    layout: str, windows: int | None, order: str
) -> None:
    model, x, axis, w = case(layout)
    values = RNG.standard_normal((N, *x.shape[1:], 2))
    curve = road(values, model, x, time_axis=axis, windows=windows, percentages=(25, 50, 75), order=order, noise=0.0)
    size = windows or 1
    P = -(-T // size)
    per_player = np.moveaxis(values, axis, 1).reshape(N, T, -1, 2).sum(2)  # (N, T, 2) per step
    per_player = np.add.reduceat(per_player, np.arange(0, T, size), axis=1)  # (N, P, 2)
    assert curve.game.n_players == P and list(curve.removed) == [round(P * p / 100) for p in (25, 50, 75)]
    c = model.head.bias.detach().numpy()
    for i in range(N):
        series = np.moveaxis(x[i], axis - 1, 0)  # (T, channels)
        for j in range(2):
            ranked = np.argsort(-per_player[i, :, j] if order == "morf" else per_player[i, :, j], kind="stable")
            assert curve.curve[i, 0, j] == pytest.approx(float((w[j] * x[i]).sum() + c[j]), abs=1e-12)
            for m, count in enumerate(curve.removed, 1):
                gone = np.isin(np.arange(T) // size, ranked[:count])
                imputed = np.moveaxis(interpolated(series, ~gone), 0, axis - 1)
                assert curve.curve[i, m, j] == pytest.approx(float((w[j] * imputed).sum() + c[j]), abs=1e-10)
    assert np.allclose(curve.aopc, (curve.curve[:, :1] - curve.curve[:, 1:]).mean(1), atol=1e-12)


def test_road_noise_moves_only_the_imputed_steps_by_its_seed() -> None:
    model, x, axis, w = case("(N, T, F)")
    values = RNG.standard_normal((N, T, F, 2))
    quiet = road(values, model, x, time_axis=axis, percentages=(50,), noise=0.0)
    noisy = road(values, model, x, time_axis=axis, percentages=(50,), noise=0.1, random_state=3)
    again = road(values, model, x, time_axis=axis, percentages=(50,), noise=0.1, random_state=3)
    assert np.array_equal(noisy.curve, again.curve) and not np.allclose(noisy.curve[:, 1], quiet.curve[:, 1])
    assert np.array_equal(noisy.curve[:, 0], quiet.curve[:, 0])  # f(x) itself is not perturbed


def test_road_refuses_channels_and_a_removal_of_everything() -> None:
    model, x, axis, _ = case("(N, C, T)")
    values = RNG.standard_normal((N, F, T, 2))
    with pytest.raises(InputError, match="neighbours in time"):
        road(values, model, x, time_axis=axis, players="channels")
    with pytest.raises(InputError, match="keep at least one"):
        road(values, model, x, time_axis=axis, percentages=(99,))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("players", ["steps", "channels"])
def test_infidelity_equals_its_closed_form_on_a_line(layout: str, players: str) -> None:
    model, x, axis, w = case(layout)
    baseline = RNG.standard_normal(x.shape[1:])
    values = RNG.standard_normal((N, *x.shape[1:], 2))
    result = infidelity(values, model, x, baseline, time_axis=axis, players=players, subsets=40, random_state=1)
    # the line's own per-player change: g_p = Σ_{e ∈ p} w_e (x_e − b_e); f(x) − f(x_S←b) = Σ_{p ∈ S} g_p
    channel_axis = 3 - axis  # the other axis of one sample, batch axis 0
    reduce = channel_axis if players == "steps" else axis
    g = np.stack([(w[j] * (x - baseline)).sum(reduce) for j in range(2)], -1)  # (N, P, 2)
    a = values.sum(reduce)
    S = result.subsets.astype(np.float64)  # (m, P)
    closed = ((np.einsum("mp,npk->nmk", S, a - g)) ** 2).mean(1)
    assert result.subsets.shape == (40, g.shape[1]) and 0 < result.subsets.mean() < 1
    assert np.allclose(result.infidelity, closed, rtol=1e-10, atol=1e-12)
    own = np.stack([w[j] * (x - baseline) for j in range(2)], -1)  # per entry: summed to the players, g
    exact = infidelity(own, model, x, baseline, time_axis=axis, players=players)
    assert np.allclose(exact.infidelity, 0.0, atol=1e-20)  # the line's own values: no miss on any coalition


def test_infidelity_of_deepshap_with_the_baseline_as_its_one_reference_is_zero_on_a_line() -> None:
    model, x, axis, _ = case("(N, C, T)")
    baseline = RNG.standard_normal(x.shape[1:])
    values = rnnshap.DeepExplainer(model, torch.tensor(baseline[None])).shap_values(torch.tensor(x))
    assert np.allclose(infidelity(values, model, x, baseline, time_axis=axis, windows=4).infidelity, 0.0, atol=1e-20)


def test_infidelity_normalized_scores_direction_only() -> None:
    model, x, axis, w = case("(N, T, F)")
    baseline = np.zeros(x.shape[1:])
    g = np.stack([w[j] * x for j in range(2)], -1)  # per entry, the line's own values against a zero baseline
    scaled = infidelity(3.0 * g, model, x, baseline, time_axis=axis, normalize=True)
    assert np.allclose(scaled.scale, 1 / 3.0) and np.allclose(scaled.infidelity, 0.0, atol=1e-20)
    assert np.all(infidelity(3.0 * g, model, x, baseline, time_axis=axis).infidelity > 0)
