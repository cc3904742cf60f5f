"""The Shapley mode (``shapley_values``, ``ShapleyExplainer``), checked against oracles written from
the definition of the game, never against the estimator itself:

    v(S) = mean over background rows r of f(x on the players in S, r elsewhere)
    φ_i = Σ_{S ∌ i} |S|! (P − |S| − 1)! / P! · (v(S ∪ i) − v(S))
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import InputError, ShapleyExplainer

from ..models.torch import Composite, Function, RecurrentHead


def oracle(f, x: list[torch.Tensor], background: list[torch.Tensor], ids: list[np.ndarray | None]) -> np.ndarray:
    """Exact Shapley values of one sample, (P, n_outputs), by looping over every coalition, in float64."""
    players = sorted({int(i) for a in ids if a is not None for i in np.unique(a)})
    P = len(players)

    def v(coalition: frozenset[int]) -> np.ndarray:
        total = 0.0
        for r in range(background[0].shape[0]):
            row = []
            for xs, b, a in zip(x, background, ids, strict=True):
                if a is None:
                    row.append(xs[None])
                else:
                    take = torch.from_numpy(np.isin(a, list(coalition)))
                    row.append(torch.where(take, xs, b[r])[None])
            with torch.no_grad():
                total = total + f(*row).double().reshape(-1).numpy()
        return total / background[0].shape[0]

    values = np.zeros((P, np.size(v(frozenset()))))
    cache: dict[frozenset[int], np.ndarray] = {}
    for i in players:
        others = [p for p in players if p != i]
        for size in range(P):
            weight = math.factorial(size) * math.factorial(P - size - 1) / math.factorial(P)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                with_i = s | {i}
                for key in (s, with_i):
                    if key not in cache:
                        cache[key] = v(key)
                values[i] += weight * (cache[with_i] - cache[s])
    return values


def _tanh_gated_last(out: torch.Tensor, state: object) -> torch.Tensor:
    return torch.tanh(out[:, -1]) * out[:, -1]


def _without_first(x: torch.Tensor) -> torch.Tensor:
    return x[:, 1:]


def reader(features: int = 3, hidden: int = 5, ignore_first: bool = False) -> RecurrentHead:
    """A GRU over the steps and a read-out of its last state to 3 outputs."""
    prepare = _without_first if ignore_first else None
    return RecurrentHead("gru", features, hidden, 3, read=_tanh_gated_last, prepare=prepare)


def _data(dtype: torch.dtype, T: int = 4, F: int = 3, B: int = 5, N: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, T, F, generator=g).to(dtype), torch.randn(B, T, F, generator=g).to(dtype)


def _steps(T: int, F: int) -> np.ndarray:
    return np.repeat(np.arange(T)[:, None], F, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("door", ["deep", "shapley"])
def test_a_budget_of_every_coalition_gives_the_exact_values(dtype: torch.dtype, door: str) -> None:
    torch.manual_seed(0)
    model = reader().to(dtype).eval()
    x, bg = _data(dtype)
    explainer = rnnshap.DeepExplainer(model, bg) if door == "deep" else ShapleyExplainer(model, bg)
    estimate = explainer.shapley_values(x, "steps", budget=10_000)
    assert estimate.exact.all() and (estimate.stderr == 0).all()
    assert (estimate.n_evals <= 10_000).all()
    for n in range(x.shape[0]):
        truth = oracle(model, [x[n]], [bg], [_steps(4, 3)])
        tolerance = 1e-9 if dtype == torch.float64 else 1e-5
        assert np.abs(estimate.values[n] - truth).max() <= tolerance * max(1.0, np.abs(truth).max())


def test_feature_players_cells_and_masks_match_the_oracle() -> None:
    torch.manual_seed(1)
    model = reader(features=2).double().eval()
    x, bg = _data(torch.float64, T=3, F=2, B=3, N=1)
    explainer = ShapleyExplainer(model, bg)
    features = explainer.shapley_values(x, "features", budget=10**6)
    assert np.allclose(features.values[0], oracle(model, [x[0]], [bg], [np.repeat(np.arange(2)[None], 3, 0)]), atol=1e-12)
    cells = explainer.shapley_values(x, "cells", budget=10**6)
    assert cells.values.shape == (1, 3, 2, 3)
    truth = oracle(model, [x[0]], [bg], [np.arange(6).reshape(3, 2)])
    assert np.allclose(cells.values[0].reshape(6, 3), truth, atol=1e-12)
    mask = np.array([[5, 5], [7, 5], [7, 9]])  # ids need not be 0..P-1; renumbered in sorted order
    grouped = explainer.shapley_values(x, mask, budget=10**6)
    assert grouped.values.shape == (1, 3, 3)
    assert np.allclose(grouped.values[0], oracle(model, [x[0]], [bg], [np.searchsorted([5, 7, 9], mask)]), atol=1e-12)


def test_an_additive_model_is_exact_at_any_budget_with_either_door() -> None:
    """For f(x) = Σ_t w_t · x_t the Shapley value of step t is w_t · (x_t − mean r_t): every walk
    gives it for its reference, and the control variate makes the reference drawn irrelevant."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).double().eval()
    x, bg = _data(torch.float64, T=4, F=3, B=7, N=3)
    w = model[1].weight.detach().reshape(2, 4, 3)
    truth = torch.einsum("ktf,ntf->ntk", w, x - bg.mean(0)).numpy()
    # DeepSHAP's pass, f(x), f(r) / 3 samples, 2 walk pairs
    estimate = rnnshap.DeepExplainer(model, bg).shapley_values(x, "steps", budget=21 + 1 + 3 + 12, random_state=3, time_axis=1)
    assert not estimate.exact.any()
    assert np.allclose(estimate.values, truth, atol=1e-12)
    assert np.allclose(estimate.deepshap_gap, 0, atol=1e-12)


@pytest.mark.parametrize("budget", [9, 40, 200])
def test_values_add_up_at_every_budget(budget: int) -> None:
    torch.manual_seed(3)
    model = reader().eval()
    x, bg = _data(torch.float32, T=6, B=4, N=3)
    for explainer in (rnnshap.DeepExplainer(model, bg), ShapleyExplainer(model, bg)):
        estimate = explainer.shapley_values(x, "steps", budget=budget, random_state=0)
        assert (estimate.n_evals <= budget).all()
        gap = estimate.outputs - estimate.base_values
        scale = np.maximum(1.0, np.abs(gap))
        assert np.abs(estimate.values.sum(1) - gap).max() <= 50 * np.finfo(np.float32).eps * scale.max()


def test_the_same_seed_gives_bit_identical_values_whatever_the_batch_size() -> None:
    """Every random choice is made before a row runs, every row's output has its own slot, and the
    forward passes take chunks of 256 rows whatever batch_size is above that (torch's CPU kernels
    round a row differently in batches of other sizes)."""
    torch.manual_seed(4)
    model = reader().eval()
    x, bg = _data(torch.float32, T=6, B=4, N=35)  # two groups of samples
    explainer = rnnshap.DeepExplainer(model, bg)
    runs = [explainer.shapley_values(x, "steps", budget=150, random_state=7, batch_size=size) for size in (256, 1000, 4096)]
    assert np.abs(runs[0].values.sum(1) - (runs[0].outputs - runs[0].base_values)).max() <= 1e-5
    for other in runs[1:]:
        assert np.array_equal(runs[0].values, other.values) and np.array_equal(runs[0].stderr, other.stderr)
    different = explainer.shapley_values(x, "steps", budget=150, random_state=8)
    assert not np.array_equal(runs[0].values, different.values)


def test_a_step_the_model_ignores_gets_exactly_zero() -> None:
    torch.manual_seed(5)
    model = reader(ignore_first=True).eval()
    x, bg = _data(torch.float32, T=5, B=4, N=2)
    estimate = rnnshap.DeepExplainer(model, bg).shapley_values(x, "steps", budget=100, random_state=0)
    assert (estimate.values[:, 0] == 0).all() and (estimate.stderr[:, 0] == 0).all()
    # ShapleyExplainer splits f(x) - f(r) evenly as its control variate: exact zeros once every
    # reference has the same number of walks (whole cycles)
    whole = ShapleyExplainer(model, bg).shapley_values(x, "steps", budget=1 + 2 + 4 * 2 * 4 * 2, random_state=0)
    assert (whole.walk_pairs % 4 == 0).all()
    assert np.abs(whole.values[:, 0]).max() <= 1e-12


def test_the_95_percent_intervals_cover_the_exact_values() -> None:
    torch.manual_seed(6)
    model = reader(features=2, hidden=8).double().eval()
    x, bg = _data(torch.float64, T=6, F=2, B=6, N=4)
    explainer = rnnshap.DeepExplainer(model, bg)
    exact = np.stack([oracle(model, [x[n]], [bg], [_steps(6, 2)]) for n in range(4)])
    covered = []
    for seed in range(10):
        estimate = explainer.shapley_values(x, "steps", budget=300, random_state=seed)
        assert not estimate.exact.any() and np.isfinite(estimate.stderr).all()
        covered.append(np.abs(estimate.values - exact) <= 1.96 * estimate.stderr)
    assert np.mean(covered) >= 0.85


@pytest.mark.parametrize("budget", [40, 110])  # walks over references cycled evenly; one design block per reference
def test_the_sampled_values_average_to_the_exact_values(budget: int) -> None:
    """Unbiased: over many seeds, the mean estimate of a game with interactions of three and four
    players (which antithetic pairs do not cancel) converges to the oracle's values."""
    rng = np.random.default_rng(0)
    bg, x = rng.normal(size=(4, 5, 1)), rng.normal(size=(1, 5, 1))

    def f(a: np.ndarray) -> np.ndarray:
        s = a[:, :, 0]
        products = s[:, 0] * s[:, 1] * s[:, 2] + 2 * s[:, 1] * s[:, 3] * s[:, 4] * s[:, 0]
        return (products + np.tanh(s.sum(1)) + s[:, 2] ** 2)[:, None]

    truth = oracle(
        lambda a: torch.from_numpy(f(a.numpy())), [torch.from_numpy(x[0])], [torch.from_numpy(bg)], [_steps(5, 1)]
    )[:, 0]
    explainer = ShapleyExplainer(f, bg)
    runs = np.stack(
        [
            explainer.shapley_values(x, "steps", budget=budget, random_state=seed, time_axis=1).values[0, :, 0]
            for seed in range(400)
        ]
    )
    assert not explainer.shapley_values(x, "steps", budget=budget, time_axis=1).exact.any()
    z = (runs.mean(0) - truth) / (runs.std(0, ddof=1) / np.sqrt(len(runs)))
    assert np.abs(z).max() <= 4.5, z


def test_deepshap_reading_the_samples_masks_keeps_the_values_efficient() -> None:
    """DeepSHAP's reference side reads the sample's padding mask (ids != 0), so its values of a pair
    sum to f(x) − f(r read with x's mask), not to the game's f(x) − f(r): the control variate must
    still give values that add up."""

    torch.manual_seed(14)
    padded = Composite(lambda m, ids: m.head(m.rnn(m.embed(ids) * (ids != 0)[..., None])[0][:, -1]),
                       embed=nn.Embedding(9, 3), rnn=nn.GRU(3, 5, batch_first=True), head=nn.Linear(5, 1))  # fmt: skip
    model = padded.double().eval()
    ids = torch.tensor([[3, 5, 0, 0, 0, 0], [1, 2, 3, 4, 0, 0]])
    background = torch.randint(1, 9, (10, 6))
    for budget in (10 * 3 + 1 + 5 + 2 * 2 * 5, 200):
        estimate = rnnshap.DeepExplainer(model, background).shapley_values(ids, "steps", budget=budget, random_state=0)
        assert estimate.deepshap is not None and not estimate.exact.any()
        assert np.abs(estimate.values.sum(1) - (estimate.outputs - estimate.base_values)).max() <= 1e-12


def test_tol_stops_each_sample_once_its_standard_errors_are_small_enough() -> None:
    torch.manual_seed(6)
    model = reader(features=2, hidden=8).double().eval()
    x, bg = _data(torch.float64, T=8, F=2, B=6, N=6)
    x[0] = 0.99 * bg[0] + 0.01 * bg[1]  # near a reference: a small game, done early
    explainer = rnnshap.DeepExplainer(model, bg)
    full = explainer.shapley_values(x, "steps", budget=1500, random_state=0)
    for tol in (1e-4, 3e-4):
        early = explainer.shapley_values(x, "steps", budget=1500, tol=tol, random_state=0)
        scale = np.maximum(1.0, np.abs(early.outputs - early.base_values))
        met = (early.stderr <= tol * scale[:, None, :]).all(axis=(1, 2))
        assert (met | (early.n_evals == full.n_evals)).all()
        assert (early.n_evals <= full.n_evals).all() and early.n_evals[0] < full.n_evals[0]
        assert np.abs(early.values.sum(1) - (early.outputs - early.base_values)).max() <= 1e-12


def test_deepshap_beside_the_estimate_is_deepshap_summed_to_the_players() -> None:
    torch.manual_seed(7)
    model = reader().eval()
    x, bg = _data(torch.float32, T=5, B=4, N=2)
    explainer = rnnshap.DeepExplainer(model, bg)
    estimate = explainer.shapley_values(x, "features", budget=300, outputs=[2, 0], random_state=0)
    values = explainer.shap_values(x, outputs=[2, 0])
    assert estimate.values.shape == (2, 3, 2)
    assert np.allclose(estimate.deepshap, values.sum(1), atol=1e-6)
    assert np.array_equal(estimate.deepshap_gap, estimate.values - estimate.deepshap)
    assert ShapleyExplainer(model, bg).shapley_values(x, "features", budget=300).deepshap is None


def _read_tokens(m: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    out, _ = m.rnn(m.embed(ids))
    last = out[torch.arange(ids.shape[0]), lengths - 1]
    return m.head(last)


def token_reader() -> Composite:
    return Composite(_read_tokens, embed=nn.Embedding(11, 4), rnn=nn.LSTM(4, 6, batch_first=True), head=nn.Linear(6, 1))


def test_token_positions_are_players_and_context_follows_the_sample() -> None:
    torch.manual_seed(8)
    model = token_reader().double().eval()
    ids = torch.randint(0, 11, (2, 4))
    lengths = torch.tensor([4, 3])
    bg_ids, bg_lengths = torch.randint(0, 11, (3, 4)), torch.tensor([2, 4, 4])
    explainer = rnnshap.DeepExplainer(model, [bg_ids, bg_lengths])
    estimate = explainer.shapley_values([ids, lengths], "steps", budget=10**5)
    assert estimate.exact.all()
    for n in range(2):
        truth = oracle(model, [ids[n], lengths[n]], [bg_ids, bg_lengths], [np.arange(4), None])
        assert np.allclose(estimate.values[n], truth, atol=1e-12)
    assert np.allclose(estimate.values[1, 3], 0, atol=1e-12)  # a step past the sample's length
    sampled = explainer.shapley_values([ids, lengths], "steps", budget=3 * 3 + 1 + 3 + 4 * 3, random_state=0)
    assert np.abs(sampled.values.sum(1) - (sampled.outputs - sampled.base_values)).max() <= 1e-12


def test_bad_input_is_refused_with_advice() -> None:
    torch.manual_seed(9)
    model = reader().eval()
    x, bg = _data(torch.float32, T=4, B=3, N=1)
    explainer = ShapleyExplainer(model, bg)
    with pytest.raises(InputError, match="below one permutation walk"):
        explainer.shapley_values(x, "steps", budget=4)
    with pytest.raises(InputError, match="shape"):
        explainer.shapley_values(x, np.zeros((3, 3), dtype=int))
    with pytest.raises(InputError, match="integer array"):
        explainer.shapley_values(x, np.zeros((4, 3)))
    with pytest.raises(InputError, match="time_axis"):  # Flatten does not say which axis is time
        ShapleyExplainer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(3, 4, 3)).shapley_values(torch.randn(1, 4, 3))
    token = rnnshap.DeepExplainer(token_reader().eval(), [torch.randint(0, 11, (3, 4)), torch.tensor([2, 4, 4])])
    with pytest.raises(InputError, match="context"):
        token.shapley_values([torch.randint(0, 11, (1, 4)), torch.tensor([4])], [np.arange(4), np.zeros((), dtype=int)])
    with pytest.raises(InputError, match="players="):
        explainer.shapley_values(x, "rows")


def test_a_model_deepexplainer_refuses_names_the_door_that_works() -> None:
    def rounds(x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 3).sum((1, 2))[:, None]

    x, bg = _data(torch.float64, T=3, F=2, B=3, N=1)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="ShapleyExplainer"):
        rnnshap.DeepExplainer(Function(rounds), bg)
    estimate = ShapleyExplainer(Function(rounds), bg).shapley_values(x, "steps", budget=10**4, time_axis=1)
    assert np.allclose(estimate.values[0], oracle(Function(rounds), [x[0]], [bg], [_steps(3, 2)]), atol=1e-12)


def test_a_function_of_numpy_arrays_and_the_explanation() -> None:
    pytest.importorskip("shap")
    rng = np.random.default_rng(0)
    bg, x = rng.normal(size=(5, 3, 2)), rng.normal(size=(2, 3, 2))

    def f(a: np.ndarray) -> np.ndarray:
        return (a[:, 0, 0] * a[:, 2, 1] + a[:, 1].sum(1))[:, None]

    explainer = ShapleyExplainer(f, bg)
    explanation = explainer(x, "steps", budget=10**4, time_axis=1)
    truth = oracle(lambda a: torch.from_numpy(f(a.numpy())), [torch.from_numpy(x[0])], [torch.from_numpy(bg)], [_steps(3, 2)])
    assert np.allclose(explanation.values[0], truth, atol=1e-12)
    assert explanation.error_std is not None and explanation.feature_names == ["t0", "t1", "t2"]


def test_keras_on_tensorflow_matches_the_oracle() -> None:
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow backend")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(5), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    bg, x = rng.normal(size=(3, 4, 2)).astype("float32"), rng.normal(size=(1, 4, 2)).astype("float32")
    estimate = rnnshap.DeepExplainer(model, bg).shapley_values(x, "steps", budget=10**4)
    truth = oracle(
        lambda a: torch.from_numpy(np.array(model(a.numpy()))), [torch.from_numpy(x[0])], [torch.from_numpy(bg)], [_steps(4, 2)]
    )
    assert np.abs(estimate.values[0] - truth).max() <= 1e-5 * max(1.0, np.abs(truth).max())
    sampled = rnnshap.DeepExplainer(model, bg).shapley_values(x, "steps", budget=3 * 3 + 1 + 3 + 4 * 3 * 2, random_state=0)
    assert sampled.deepshap is not None and not sampled.exact.any()


def test_shaps_interim_layer_form_is_refused_with_advice() -> None:
    torch.manual_seed(10)
    model = reader().eval()
    x, bg = _data(torch.float32, T=4, B=3, N=1)
    explainer = rnnshap.DeepExplainer((model, model.head), bg)
    with pytest.raises(InputError, match="layer's input"):
        explainer.shapley_values(x, "features")


def test_a_model_in_training_mode_is_played_in_eval_mode_and_left_as_it_was() -> None:
    torch.manual_seed(11)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(12, 2)).double().train()
    x, bg = _data(torch.float64, T=4, F=3, B=3, N=1)
    with pytest.warns(UserWarning, match="training mode with Dropout"):
        estimate = ShapleyExplainer(model, bg).shapley_values(x, "steps", budget=10**4, time_axis=1)
    assert all(m.training for m in model.modules())
    truth = oracle(model.eval(), [x[0]], [bg], [_steps(4, 3)])
    assert np.allclose(estimate.values[0], truth, atol=1e-12)


def test_the_plots_draw_the_intervals_and_deepshap_beside() -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.collections import LineCollection

    torch.manual_seed(12)
    model = reader().eval()
    x, bg = _data(torch.float32, T=5, B=4, N=2)
    estimate = rnnshap.DeepExplainer(model, bg).shapley_values(x, "steps", budget=120, random_state=0)
    assert estimate.deepshap is not None and np.isfinite(estimate.stderr).all()
    fig = rnnshap.plots.shapley_bars(estimate, sample=1, output=2)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert np.allclose(heights[:5], estimate.values[1, :, 2]) and np.allclose(heights[5:10], estimate.deepshap[1, :, 2])
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    lengths = [abs(seg[1][1] - seg[0][1]) for seg in bars.get_segments()]
    assert np.allclose(lengths, 2 * 1.96 * estimate.stderr[1, :, 2])
    assert ax.get_xlabel() == "time step" and "output 2" in fig.texts[0].get_text()  # names what it draws
    timeline = rnnshap.plots.over_time(estimate, sample=1, output=2)
    (bars,) = [c for c in timeline.axes[1].collections if isinstance(c, LineCollection)]
    assert np.allclose([abs(s[1][1] - s[0][1]) for s in bars.get_segments()], 2 * 1.96 * estimate.stderr[1, :, 2])
    with pytest.raises(ValueError, match="players"):
        rnnshap.plots.over_time(rnnshap.DeepExplainer(model, bg).shapley_values(x, "features", budget=120), sample=0, output=0)


def test_a_torchscript_model_deepexplainer_refuses_is_played_by_its_forward() -> None:
    torch.manual_seed(13)
    model = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(6, 2), nn.Tanh()).double().eval())
    x, bg = _data(torch.float64, T=3, F=2, B=3, N=1)
    with pytest.raises(rnnshap.ModelStateError, match="ShapleyExplainer"):
        rnnshap.DeepExplainer(model, bg)
    estimate = ShapleyExplainer(model, bg).shapley_values(x, "steps", budget=10**4, time_axis=1)
    assert np.allclose(estimate.values[0], oracle(model, [x[0]], [bg], [_steps(3, 2)]), atol=1e-12)


# -- the empirical-Bayes blend of DeepSHAP and the estimate --------------------------
def test_shrunk_values_add_up_and_follow_their_definition() -> None:
    torch.manual_seed(3)
    gru = _shrink_reader().double().eval()
    background, X = torch.randn(6, 5, 2, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    estimate = rnnshap.DeepExplainer(gru, background).shapley_values(X, players="steps", budget=150, random_state=0)
    assert estimate.shrunk is not None and not estimate.exact.any()
    # each sample's values add up, as DeepSHAP's and the estimate's do
    np.testing.assert_allclose(estimate.shrunk.sum(1), estimate.outputs - estimate.base_values, rtol=1e-9, atol=1e-12)
    # the definition, written out again from the specification
    g = estimate.values - estimate.deepshap
    s, nu = (estimate.stderr**2).sum(1), (estimate.deepshap**2).sum(1)
    tau2 = max(0.0, float(np.mean(((g**2).sum(1) - s) / nu)))
    w = tau2 * nu / (tau2 * nu + s)
    np.testing.assert_allclose(estimate.shrink_weight, w, rtol=1e-12)
    np.testing.assert_allclose(estimate.shrunk, estimate.deepshap + w[:, None] * g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(estimate.shrunk_rmse, np.sqrt(w**2 * s + (1 - w) ** 2 * (g**2).sum(1)), rtol=1e-12)
    assert ((0 <= w) & (w <= 1)).all()


def test_shrunk_values_are_the_exact_ones_where_every_coalition_was_enumerated() -> None:
    torch.manual_seed(3)
    gru = _shrink_reader().double().eval()
    background, X = torch.randn(4, 5, 2, dtype=torch.float64), torch.randn(2, 5, 2, dtype=torch.float64)
    exact = rnnshap.DeepExplainer(gru, background).shapley_values(X, players="steps", budget=2**5 * 4 + 3 * 4)
    assert exact.exact.all() and exact.deepshap is not None
    np.testing.assert_array_equal(exact.shrink_weight, 1.0)
    np.testing.assert_allclose(exact.shrunk, exact.values, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(exact.shrunk_rmse, 0.0)


def _shrink_reader() -> RecurrentHead:
    return RecurrentHead("gru", 2, 5, 2, names="gru head")


# -- temporal pruning ------------------------------------------------------------------
def _recent(window: int) -> RecurrentHead:
    """An LSTM that reads only the last ``window`` steps: the older ones are null players."""
    return RecurrentHead("lstm", 2, 5, 2, prepare=lambda x: x[:, -window:], names="lstm head")


def test_pruning_groups_exactly_the_steps_the_model_ignores_and_keeps_their_values() -> None:
    torch.manual_seed(0)
    T, window = 12, 3
    model = _recent(window).double().eval()
    background, X = torch.randn(4, T, 2, dtype=torch.float64), torch.randn(2, T, 2, dtype=torch.float64)
    explainer = rnnshap.ShapleyExplainer(model, background)
    pruned = explainer.shapley_values(X, players="steps", prune=1e-12, budget=10_000)
    np.testing.assert_array_equal(pruned.pruned_steps, T - window)
    np.testing.assert_array_equal(pruned.pruned, 0.0)             # the ignored steps, one null player
    np.testing.assert_array_equal(pruned.values[:, : T - window], 0.0)
    assert pruned.exact.all()                                       # 2^(1 + 3) coalitions × 4 rows fit
    # the recent steps' values are the exact Shapley values of the whole game (null players change nothing)
    mask = np.r_[np.full(T - window, window), np.arange(window)]
    full = explainer.shapley_values(X, players=mask[:, None].repeat(2, 1), budget=2**4 * 4)
    np.testing.assert_allclose(pruned.values[:, T - window :], full.values[:, :window], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(pruned.values.sum(1) + pruned.pruned, pruned.outputs - pruned.base_values, rtol=1e-10, atol=1e-12)
    assert (pruned.n_evals <= 10_000).all()


def test_pruning_keeps_every_step_a_model_reads_and_checks_its_arguments() -> None:
    torch.manual_seed(0)
    model = _recent(6).double().eval()
    background, X = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(1, 6, 2, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    # the pruning's own rows (v of the old and recent blocks at each split) count in the budget
    estimate = explainer.shapley_values(X, players="steps", prune=0.0, budget=2**6 * 4 + 12 + 2 * 6 * 4)
    np.testing.assert_array_equal(estimate.pruned_steps, 0)
    assert estimate.exact.all()
    exact = explainer.shapley_values(X, players="steps", budget=2**6 * 4 + 12)
    np.testing.assert_allclose(estimate.values, exact.values, rtol=1e-12)
    with pytest.raises(InputError, match="players='steps'"):
        explainer.shapley_values(X, players="features", prune=0.1)
    with pytest.raises(InputError, match="non-negative"):
        explainer.shapley_values(X, players="steps", prune=-1.0)


# -- a random forward is refused by the forward-only door too ---------------------------
def _noisy() -> nn.Module:
    return Composite(lambda m, x: m.head(x) + 0.1 * torch.randn(x.shape[0], 1), head=nn.Linear(3, 1))


def test_shapley_explainer_refuses_a_forward_that_draws_random_numbers() -> None:
    import random

    from rnnshap.errors import ModelStateError

    torch.manual_seed(0)
    background = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(ModelStateError, match="torch's global random number generator"):
        ShapleyExplainer(_noisy().eval(), background)
    with pytest.raises(ModelStateError, match="Python's random module"):
        ShapleyExplainer(lambda x: x.sum(1) + random.random(), background)
    with pytest.raises(ModelStateError, match="numpy.random"):
        ShapleyExplainer(lambda x: x.sum(1) + np.random.normal(size=len(x)), background)
    # a generator made and seeded inside the call is a constant: accepted
    ShapleyExplainer(lambda x: x.sum(1) + np.random.default_rng(0).normal(), background)
    # and the global states are left as they were by the refused calls
    noisy = _noisy().eval()  # (its initialisation draws; the explainer's call must not)
    state = torch.get_rng_state()
    with pytest.raises(ModelStateError):
        ShapleyExplainer(noisy, background)
    assert torch.equal(state, torch.get_rng_state())


def test_printing_an_estimate_gives_a_short_summary_not_every_array() -> None:
    """print(estimate) says what it holds in a few lines (shapes, exactness, the largest standard error and gap), as
    numpy and shap's Explanation summarize, instead of dumping every array (over 100 lines)."""
    torch.manual_seed(0)
    model = reader().double().eval()
    X, background = _data(torch.float64, T=20, N=4)
    estimate = rnnshap.DeepExplainer(model, background).shapley_values(X, players="steps", budget=400, random_state=0)
    text = repr(estimate)
    assert str(estimate) == text and len(text.splitlines()) <= 3 and len(text) < 400, text
    assert text.startswith("ShapleyEstimate(") and "players='steps' (20)" in text and "(4, 20, 3)" in text
    assert "exact for 0 of 4 samples" in text and "largest stderr" in text and "deepshap_gap" in text
    exact = ShapleyExplainer(model, background).shapley_values(X[:2], players=_steps(20, 3) // 10, budget=100)
    assert "exact for 2 of 2 samples" in repr(exact) and "stderr" not in repr(exact)
