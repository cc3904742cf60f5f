"""Shapley interactions between time steps, against brute-force enumeration of
each index's definition, written here from the papers' formulas in float64."""

from __future__ import annotations

import itertools
from math import comb, factorial

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..models.torch import RecurrentHead

pytest.importorskip("shapiq")

T, F, B = 4, 2, 3


def _without_first(x: torch.Tensor) -> torch.Tensor:
    return x[:, 1:]


def _setup(ignore_first: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    # a GRU over the steps, two outputs; ignore_first makes it blind to step 0
    model = RecurrentHead("gru", F, 6, 2, prepare=_without_first if ignore_first else None, names="gru head").double().eval()
    return model, torch.randn(B, T, F, dtype=torch.float64), torch.randn(2, T, F, dtype=torch.float64)


def _game(model: nn.Module, background: torch.Tensor, x: torch.Tensor) -> dict[frozenset[int], np.ndarray]:
    """v(S) = mean over r of f(x on the steps in S, r elsewhere), for every S: (outputs,)."""
    table = {}
    for size in range(T + 1):
        for S in itertools.combinations(range(T), size):
            rows = background.clone()
            rows[:, list(S)] = x[list(S)]
            with torch.no_grad():
                table[frozenset(S)] = model(rows).mean(0).numpy()
    return table


def _shapley(v: dict, i: int) -> np.ndarray:
    rest = [p for p in range(T) if p != i]
    return sum(
        factorial(len(S)) * factorial(T - len(S) - 1) / factorial(T) * (v[frozenset(S) | {i}] - v[frozenset(S)])
        for size in range(T) for S in itertools.combinations(rest, size)
    )  # fmt: skip


def _delta(v: dict, i: int, j: int, S: frozenset[int]) -> np.ndarray:
    return v[S | {i, j}] - v[S | {i}] - v[S | {j}] + v[S]


def _sii(v: dict, i: int, j: int) -> np.ndarray:
    rest = [p for p in range(T) if p not in (i, j)]
    return sum(
        factorial(len(S)) * factorial(T - len(S) - 2) / factorial(T - 1) * _delta(v, i, j, frozenset(S))
        for size in range(T - 1) for S in itertools.combinations(rest, size)
    )  # fmt: skip


def _stii(v: dict, i: int, j: int) -> np.ndarray:
    rest = [p for p in range(T) if p not in (i, j)]
    return sum(
        2 / T * _delta(v, i, j, frozenset(S)) / comb(T - 1, len(S))
        for size in range(T - 1)
        for S in itertools.combinations(rest, size)
    )


def _expected(index: str, v: dict) -> np.ndarray:
    """(P, P, k): first order on the diagonal, each pair's value halved over its two cells."""
    out = np.zeros((T, T, 2))
    for i, j in itertools.combinations(range(T), 2):
        pair = _sii(v, i, j) if index == "k-SII" else _stii(v, i, j)
        out[i, j] = out[j, i] = pair / 2
    for i in range(T):
        if index == "k-SII":  # Bernoulli B_1 = -1/2: phi_i - 1/2 sum_j SII_ij
            out[i, i] = _shapley(v, i) - sum(_sii(v, i, j) for j in range(T) if j != i) / 2
        else:  # STII below the top order: the marginal at the empty set
            out[i, i] = v[frozenset({i})] - v[frozenset()]
    return out


@pytest.mark.parametrize("door", ["deep", "shapley"])
@pytest.mark.parametrize("index", ["k-SII", "STII"])
def test_interactions_equal_the_definition_by_enumeration(door: str, index: str) -> None:
    model, background, X = _setup()
    explainer = rnnshap.DeepExplainer(model, background) if door == "deep" else rnnshap.ShapleyExplainer(model, background)
    result = explainer.shapley_interactions(X, players="steps", index=index, order=2)
    assert result.exact.all() and (result.n_evals <= 2**T * B).all()
    matrix = result.matrix()
    for i in range(len(X)):
        v = _game(model, background, X[i])
        np.testing.assert_allclose(matrix[i], _expected(index, v), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(result.base_values[i], v[frozenset()], rtol=1e-12)


@pytest.mark.parametrize("index", ["k-SII", "STII", "FSII"])
def test_efficient_indices_add_up_to_the_output_minus_the_base(index: str) -> None:
    model, background, X = _setup()
    result = rnnshap.DeepExplainer(model, background).shapley_interactions(X, index=index)
    with torch.no_grad():
        gap = model(X).numpy() - model(background).numpy().mean(0)
    np.testing.assert_allclose(result.matrix().sum((1, 2)), gap, rtol=1e-7, atol=1e-10)


def test_a_step_the_model_ignores_gets_no_main_effect_and_no_interaction() -> None:
    model, background, X = _setup(ignore_first=True)
    matrix = rnnshap.DeepExplainer(model, background).shapley_interactions(X, index="k-SII").matrix()
    scale = np.abs(matrix).max()
    assert scale > 1e-3
    np.testing.assert_allclose(matrix[:, 0], 0.0, atol=1e-13 * scale)
    np.testing.assert_allclose(matrix[:, :, 0], 0.0, atol=1e-13 * scale)


def test_a_budget_below_every_coalition_estimates_within_it() -> None:
    model, background, X = _setup()
    explainer = rnnshap.DeepExplainer(model, background)
    result = explainer.shapley_interactions(X, index="k-SII", budget=10 * B, random_state=0)
    assert not result.exact.any() and (result.n_evals <= 10 * B).all()
    again = explainer.shapley_interactions(X, index="k-SII", budget=10 * B, random_state=0)
    np.testing.assert_array_equal(result.matrix(), again.matrix())
    exact = explainer.shapley_interactions(X, index="k-SII").matrix()
    assert np.linalg.norm(result.matrix() - exact) < np.linalg.norm(exact)


def test_shapiq_objects_and_bad_arguments() -> None:
    import shapiq

    model, background, X = _setup()
    explainer = rnnshap.DeepExplainer(model, background)
    result = explainer.shapley_interactions(X[:1], outputs=[1], player_names=[f"t{t}" for t in range(T)])
    assert isinstance(result.interactions[0][0], shapiq.InteractionValues) and result.matrix().shape == (1, T, T, 1)
    with pytest.raises(rnnshap.InputError, match="index"):
        explainer.shapley_interactions(X, index="nope")
    with pytest.raises(rnnshap.InputError, match="order"):
        explainer.shapley_interactions(X, order=T + 1)
    with pytest.raises(rnnshap.InputError, match="budget"):
        explainer.shapley_interactions(X, budget=B)


def test_the_map_draws_the_matrix_of_one_sample_and_output() -> None:
    pytest.importorskip("matplotlib")
    model, background, X = _setup()
    result = rnnshap.DeepExplainer(model, background).shapley_interactions(X, index="k-SII")
    figure = rnnshap.plots.interactions(result, sample=1, output=1)
    drawn = figure.axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(drawn), result.matrix()[1, :, :, 1])
    with pytest.raises(ValueError, match="sample"):
        rnnshap.plots.interactions(result, sample=5)
