"""Which axis is time, in the Shapley mode: read from the layer that reads an input, given as
``time_axis=``, and refused where neither says (aeon and sktime panels are (N, channels, T); a
function of arrays does not say). Truths: Shapley values enumerated from the definition of the game,

    v(S) = mean over background rows r of f(x on the players in S, r elsewhere),

and exact zeros for steps a function provably does not read."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import InputError, ShapleyExplainer

from ..models.torch import Composite, RecurrentHead


def enumerated(f, x: np.ndarray, background: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact Shapley values of one sample x (no batch axis) for player ids shaped like x: (P, k), float64."""
    players = sorted(int(i) for i in np.unique(ids))
    P = len(players)

    def v(coalition: tuple[int, ...]) -> np.ndarray:
        take = np.isin(ids, coalition)
        rows = np.where(take[None], x[None], background)
        return np.asarray(f(rows), dtype=np.float64).reshape(len(background), -1).mean(0)

    values = np.zeros((P, v(()).size))
    for i in players:
        others = [p for p in players if p != i]
        for size in range(P):
            weight = math.factorial(size) * math.factorial(P - size - 1) / math.factorial(P)
            for subset in itertools.combinations(others, size):
                values[i] += weight * (v((*subset, i)) - v(subset))
    return values


def panel_function(x: np.ndarray) -> np.ndarray:
    """A classifier-like function of aeon panels (N, C=2, T=5): reads time steps 1 and 3 only."""
    a, b = x[:, 0, 1], x[:, 1, 3]
    logits = np.stack([a * b + np.tanh(a), b - a**2], 1)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _panels(n: int = 2, B: int = 3, C: int = 2, T: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, C, T)), rng.normal(size=(B, C, T))


def test_steps_on_a_function_of_panels_is_refused_not_guessed() -> None:
    # the mix-up: (N, C, T) read as (N, T, F) gives each *channel* a value and calls it a step
    X, bg = _panels()
    explainer = ShapleyExplainer(panel_function, bg)
    with pytest.raises(InputError, match="time_axis=2"):
        explainer.shapley_values(X, "steps")
    with pytest.raises(InputError, match="time_axis"):
        explainer.shapley_values(X, "features")
    with pytest.raises(InputError, match="time_axis"):
        explainer.shapley_values(X, "steps", prune=0.1)


def test_time_axis_gives_steps_of_panels_their_exact_values() -> None:
    X, bg = _panels()
    estimate = ShapleyExplainer(panel_function, bg).shapley_values(X, "steps", time_axis=2, budget=10**5)
    assert estimate.exact.all() and estimate.values.shape == (2, 5, 2)
    steps = np.broadcast_to(np.arange(5)[None], (2, 5))
    for i in range(2):
        truth = enumerated(panel_function, X[i], bg, steps)
        np.testing.assert_allclose(estimate.values[i], truth, rtol=1e-12, atol=1e-12)
    # steps 0, 2 and 4 are never read: exactly zero
    assert (estimate.values[:, [0, 2, 4]] == 0).all()
    assert np.abs(estimate.values[:, [1, 3]]).max() > 1e-3
    # -1 names the same axis; "features" with time on axis 2 are the channels
    again = ShapleyExplainer(panel_function, bg).shapley_values(X, "steps", time_axis=-1, budget=10**5)
    np.testing.assert_array_equal(again.values, estimate.values)
    channels = ShapleyExplainer(panel_function, bg).shapley_values(X, "features", time_axis=2, budget=10**5)
    for i in range(2):
        truth = enumerated(panel_function, X[i], bg, np.broadcast_to(np.arange(2)[:, None], (2, 5)))
        np.testing.assert_allclose(channels.values[i], truth, rtol=1e-12, atol=1e-12)


def test_time_axis_one_keeps_the_time_major_layout() -> None:
    X, bg = _panels()
    Xt, bgt = X.transpose(0, 2, 1).copy(), bg.transpose(0, 2, 1).copy()

    def f(x: np.ndarray) -> np.ndarray:
        return panel_function(x.transpose(0, 2, 1))

    by_steps = ShapleyExplainer(f, bgt).shapley_values(Xt, "steps", time_axis=1, budget=10**5)
    by_panels = ShapleyExplainer(panel_function, bg).shapley_values(X, "steps", time_axis=2, budget=10**5)
    np.testing.assert_allclose(by_steps.values, by_panels.values, rtol=1e-12, atol=1e-14)


def test_one_value_per_step_for_a_two_dimensional_input() -> None:
    rng = np.random.default_rng(1)
    X, bg = rng.normal(size=(2, 6)), rng.normal(size=(3, 6))

    def f(x: np.ndarray) -> np.ndarray:
        return np.tanh(x[:, 0] * x[:, 2]) + x[:, 5] ** 2

    estimate = ShapleyExplainer(f, bg).shapley_values(X, "steps", budget=10**5)
    assert estimate.values.shape == (2, 6)
    for i in range(2):
        np.testing.assert_allclose(estimate.values[i], enumerated(f, X[i], bg, np.arange(6))[:, 0], rtol=1e-12, atol=1e-12)
    assert (estimate.values[:, [1, 3, 4]] == 0).all()


@pytest.mark.parametrize("layout", ["panels", "time-major", "series"])
def test_windows_are_consecutive_steps_the_last_shorter(layout: str) -> None:
    X, bg = _panels(T=5)
    f, axis = panel_function, 2
    if layout == "time-major":
        X, bg = X.transpose(0, 2, 1).copy(), bg.transpose(0, 2, 1).copy()
        f, axis = (lambda x: panel_function(x.transpose(0, 2, 1))), 1
    elif layout == "series":
        X, bg = X[:, 0], bg[:, 0]
        f, axis = (lambda x: np.stack([np.sin(x[:, 1]) * x[:, 4], x[:, 0] + x[:, 2] * x[:, 3]], 1)), 1
    estimate = ShapleyExplainer(f, bg).shapley_values(X, "steps", time_axis=axis, windows=2, budget=10**5)
    assert estimate.players == "windows" and estimate.n_players == 3  # steps {0, 1}, {2, 3}, {4}
    window = np.arange(5) // 2
    ids = window if X.ndim == 2 else np.broadcast_to(window.reshape([1 if a != axis - 1 else 5 for a in range(2)]), X.shape[1:])
    for i in range(2):
        np.testing.assert_allclose(estimate.values[i], enumerated(f, X[i], bg, ids), rtol=1e-12, atol=1e-12)
    # the same as the mask written by hand
    masked = ShapleyExplainer(f, bg).shapley_values(X, np.ascontiguousarray(ids), budget=10**5)
    np.testing.assert_allclose(estimate.values, masked.values, rtol=1e-12, atol=1e-14)
    with pytest.raises(InputError, match="windows"):
        ShapleyExplainer(f, bg).shapley_values(X, "cells", windows=2)
    with pytest.raises(InputError, match="windows"):
        ShapleyExplainer(f, bg).shapley_values(X, "steps", time_axis=axis, windows=0)


def test_bad_time_axes_are_refused() -> None:
    X, bg = _panels()
    explainer = ShapleyExplainer(panel_function, bg)
    for axis in (0, 3, -3, 1.0, True):
        with pytest.raises(InputError, match="time_axis"):
            explainer.shapley_values(X, "steps", time_axis=axis)
    with pytest.raises(InputError, match="time_axis"):
        explainer.shapley_values(X, "steps", time_axis=[2, 2])


def conv_reader() -> nn.Module:
    """A torch Conv1d classifier: its input is (N, C, T)."""
    return Composite(lambda m, x: m.head(torch.tanh(m.conv(m.drop(x))).mean(2)),
                     drop=nn.Dropout(0.0), conv=nn.Conv1d(2, 3, kernel_size=2), head=nn.Linear(3, 2))  # fmt: skip


def projected_gru() -> nn.Module:
    """An input projection and an activation before the GRU: layers that move no axis, looked through."""
    return Composite(lambda m, x: m.head(m.rnn(m.project(x[:, 1:] * 2.0))[0][:, -1]),
                     project=nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.LayerNorm(5)),
                     rnn=nn.GRU(5, 4, batch_first=True), head=nn.Linear(4, 2))  # fmt: skip


def flat() -> nn.Module:
    return Composite(lambda m, x: m.head(x.flatten(1)), head=nn.Linear(10, 2))


def _torch_f(model: nn.Module):
    def f(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(rows)).numpy()

    return f


@pytest.mark.parametrize("door", ["shapley", "deep"])
def test_a_conv1d_model_says_its_input_is_channels_by_time(door: str) -> None:
    torch.manual_seed(0)
    model = conv_reader().double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, bg = (torch.from_numpy(a) for a in _panels(T=4))
    explainer = ShapleyExplainer(model, bg) if door == "shapley" else rnnshap.DeepExplainer(model, bg)
    estimate = explainer.shapley_values(X, "steps", budget=10**5)
    ids = np.broadcast_to(np.arange(4)[None], (2, 4))
    for i in range(2):
        truth = enumerated(_torch_f(model), X[i].numpy(), bg.numpy(), ids)
        np.testing.assert_allclose(estimate.values[i], truth, rtol=1e-10, atol=1e-12)
    # explaining left the model as it was: no hooks, the same weights
    assert not model._forward_pre_hooks and not model.conv._forward_pre_hooks and not model.conv._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("door", ["shapley", "deep"])
def test_a_recurrent_model_says_its_input_is_time_by_features(door: str) -> None:
    torch.manual_seed(0)
    model = RecurrentHead("gru", 2, 4, 2).double().eval()
    X, bg = (torch.from_numpy(a.transpose(0, 2, 1).copy()) for a in _panels(T=4))
    explainer = ShapleyExplainer(model, bg) if door == "shapley" else rnnshap.DeepExplainer(model, bg)
    estimate = explainer.shapley_values(X, "steps", budget=10**5)
    ids = np.broadcast_to(np.arange(4)[:, None], (4, 2))
    for i in range(2):
        np.testing.assert_allclose(
            estimate.values[i], enumerated(_torch_f(model), X[i].numpy(), bg.numpy(), ids), rtol=1e-10, atol=1e-12
        )
    # the caller may still say otherwise: the channels as "steps" is then what was asked for
    channels = explainer.shapley_values(X, "steps", time_axis=2, budget=10**5)
    assert channels.n_players == 2


def test_layers_that_move_no_axis_are_looked_through() -> None:
    from rnnshap.shapley.layout import read_layout

    torch.manual_seed(0)
    model = projected_gru().double().eval()
    bg = np.random.default_rng(0).normal(size=(3, 5, 2))
    layout = read_layout(model, _torch_f_rows(model), [bg])
    assert layout.axes == [0], layout.why
    # and the channels-first reader behind a projection over time: (C, T)
    conv = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Conv1d(2, 3, 2), nn.Flatten(), nn.Linear(12, 2)).double().eval()
    assert read_layout(conv, _torch_f_rows(conv), [bg.transpose(0, 2, 1).copy()]).axes == [1]
    # a reader that rearranges axes first says nothing of the input's layout
    swapped = nn.Sequential(Swap(), nn.GRU(2, 3, batch_first=True)).double().eval()
    unknown = read_layout(swapped, _torch_f_rows(swapped), [bg.transpose(0, 2, 1).copy()])
    assert unknown.axes == [None] and "Swap, does not say" in unknown.why[0]


class Swap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def _torch_f_rows(model: nn.Module):
    def call(rows: list[np.ndarray]):
        with torch.no_grad():
            return model(*[torch.from_numpy(r) for r in rows])

    return call


def test_a_model_whose_reader_does_not_say_is_refused() -> None:
    model = flat().double().eval()
    X, bg = (torch.from_numpy(a) for a in _panels())
    with pytest.raises(InputError, match="Linear|does not say|time_axis"):
        ShapleyExplainer(model, bg).shapley_values(X, "steps")
    estimate = ShapleyExplainer(model, bg).shapley_values(X, "steps", time_axis=2, budget=10**5)
    ids = np.broadcast_to(np.arange(5)[None], (2, 5))
    np.testing.assert_allclose(
        estimate.values[0], enumerated(_torch_f(model), X[0].numpy(), bg.numpy(), ids), rtol=1e-10, atol=1e-12
    )


def test_keras_layers_say_their_layout() -> None:
    keras = pytest.importorskip("keras")
    from rnnshap.shapley.layout import read_layout

    last = keras.Sequential([keras.Input((5, 2)), keras.layers.Dropout(0.1), keras.layers.Conv1D(3, 2), keras.layers.Flatten()])
    first = keras.Sequential(
        [keras.Input((2, 5)), keras.layers.Conv1D(3, 2, data_format="channels_first"), keras.layers.Flatten()]
    )
    dense = keras.Sequential([keras.Input((5, 2)), keras.layers.Dense(3)])
    inputs = [keras.Input((5, 2)), keras.Input((2, 5))]
    merged = keras.layers.Concatenate()(
        [keras.layers.LSTM(3)(inputs[0]), keras.layers.GlobalAveragePooling1D(data_format="channels_first")(inputs[1])]
    )
    two = keras.Model(inputs, merged)
    bg = [np.zeros((1, 5, 2))]
    assert read_layout(last, None, bg).axes == [0]
    assert read_layout(first, None, bg).axes == [1]
    assert read_layout(dense, None, bg).axes == [None]
    assert read_layout(two, None, bg + bg).axes == [0, 1]
