"""Perturbation metrics written for time series: ROAD's noisy linear imputation along time, and infidelity over
coalitions of players replaced by a baseline; with the pieces every score of :mod:`rnnshap.metrics` shares (the
players a score is summed to, the outputs scored, the baseline, the game a score belongs to).

Quantus 0.6's ``ROAD`` and ``Infidelity`` are written for images: ROAD imputes a removed pixel from its eight
neighbours in two dimensions and Infidelity perturbs square patches, and both fail on an (N, 1, T) series. Here a
removed step is imputed from its neighbours **in time** (in each channel), and infidelity perturbs the players of the
game (steps, windows, channels), so that both score time series as :func:`rnnshap.metrics.deletion` does: on the
model's output, with the players, the outputs and the baseline stated in the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .engines.outputs import select_outputs
from .errors import InputError
from .shapley import ShapleyExplainer
from .shapley.players import Players

__all__ = ["Infidelity", "RoadCurve", "ScoredGame", "infidelity", "road"]


@dataclass(frozen=True)
class ScoredGame:
    """The game a score belongs to: the same explanation scores differently on another one."""

    #: "steps", "windows", "channels", "features", "cells" or "mask"
    players: str
    #: the number of players P
    n_players: int
    #: the background rows r of v(S) (``distance_to_exact``); None for ``deletion``, which replaces by a baseline
    background_rows: int | None
    #: the flat indices of the model's outputs scored (its output vector flattened per sample)
    outputs: tuple[int, ...]
    #: with players "windows": the steps per window
    windows: int | None = None



def aggregate(a: np.ndarray, statistic: str) -> float:
    if statistic not in ("median", "mean"):
        raise InputError(f"statistic must be 'median' or 'mean', not {statistic!r}")
    finite = np.asarray(a, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if not finite.size:
        return math.nan
    return float(np.median(finite) if statistic == "median" else np.mean(finite))


def one_input(values: Any, X: Any, other: Any) -> None:
    if any(isinstance(a, (list, tuple, dict)) for a in (values, X, other)):
        raise InputError(
            "rnnshap.metrics scores models with one input: give values, X and the background (or baseline) as one "
            "array or tensor each"
        )


def shapley_players(players: Any) -> Any:
    """``players`` as :meth:`rnnshap.ShapleyExplainer.player_ids` names them: rnnshap.metrics' ``"channels"`` is its
    ``"features"``."""
    return "features" if isinstance(players, str) and players == "channels" else players


def player_kind(players: Any, plan: Players) -> str:
    return "channels" if isinstance(players, str) and players == "channels" else plan.kind


def scored_outputs(explainer: ShapleyExplainer, outputs: Any) -> tuple[list[Any] | None, np.ndarray, tuple[int, ...]]:
    """The ``outputs=`` to pass on (None: all), their flat indices, and the output axes values should end with."""
    shape = explainer.output_shape
    if outputs is None:
        count = int(explainer.forward.background_outputs.shape[1])
        return None, np.arange(count, dtype=np.int64), tuple(shape) or (1,)
    chosen = [outputs] if isinstance(outputs, (int, np.integer)) and not isinstance(outputs, bool) else list(outputs)
    if not chosen:
        raise InputError("outputs=[]: choose at least one output, or None for all of them")
    columns = np.asarray(select_outputs(shape, chosen), dtype=np.int64).reshape(-1)
    return chosen, columns, (columns.size,)


def as_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    elif not hasattr(values, "shape") and hasattr(values, "values"):  # a ShapleyEstimate, a shap.Explanation
        values = values.values
        return as_array(values, what)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} must be a numeric array or tensor, not {type(values).__name__}") from error
    return array


def per_player(
    values: Any, x: np.ndarray, plan: Players, k: int, expected: tuple[int, ...]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """``values`` summed to the players, (n, P, k) float64, and the output axes they came with (() for none)."""
    a = as_array(values, "values")
    if isinstance(values, list) or a.dtype == object:
        raise InputError("values must be one array or tensor")
    n, sample, P = int(x.shape[0]), tuple(x.shape[1:]), plan.count
    if a.ndim == 0 or a.shape[0] != n:
        raise InputError(f"values shaped {a.shape} hold {a.shape[0] if a.ndim else 0} samples; X holds {n} samples, {x.shape}")
    if not np.isfinite(a).all():
        raise InputError("values hold NaN or infinite entries: a distance to them is undefined")
    allowed = {(), expected, (k,)} if k == 1 else {expected, (k,)}
    d = len(sample)
    in_layout = a.shape[1 : 1 + d] == sample
    if in_layout:
        trailing = tuple(a.shape[1 + d :])
        if trailing not in allowed:
            if trailing == ():
                raise InputError(
                    f"values shaped {a.shape} have no output axis, and {k} outputs are scored: choose the one they explain "
                    "with outputs=[j], or give values with the outputs last"
                )
            raise InputError(
                f"values shaped {a.shape} end with an output axis {trailing}; the outputs scored are {expected} (the "
                "model's outputs, or those chosen with outputs=): give values for exactly those outputs, last"
            )
        per_entry = a.reshape(n, *sample, k)
        moved = np.moveaxis(per_entry, -1, 1).reshape(n * k, *sample)
        summed = plan.per_player([moved]).reshape(n, k, P).transpose(0, 2, 1)
        return summed, trailing
    if plan.kind != "cells" and a.ndim >= 2 and a.shape[1] == P and tuple(a.shape[2:]) in allowed:
        trailing = tuple(a.shape[2:])
        return a.reshape(n, P, k).copy(), trailing
    hint = ""
    if sorted(a.shape[1 : 1 + d]) == sorted(sample):
        hint = (
            " They hold the same axes in another order: give them in the layout of X (an explainer given (N, T, F) "
            "rows of a model that reads (N, C, T) panels returns (N, T, F) values: transpose them back)."
        )
    raise InputError(
        f"values shaped {a.shape} do not fit X shaped {x.shape}: give them in the layout of X, {(n, *sample)} then the "
        f"output axis {expected} (none for one output), or one value per player, ({n}, {P}) then the output axis.{hint}"
    )


def baseline_like(baseline: Any, x: np.ndarray) -> np.ndarray:
    """The baseline of every sample, shaped like ``x``."""
    b = as_array(baseline, "baseline")
    sample = tuple(x.shape[1:])
    if b.ndim == 0 or b.shape == sample or b.shape == (1, *sample) or b.shape == x.shape:
        return np.broadcast_to(b.astype(x.dtype, copy=False), x.shape)
    raise InputError(f"baseline shaped {b.shape}: give a number, one sample shaped {sample}, or one per sample shaped {x.shape}")




@dataclass(frozen=True)
class Scoring:
    """What a perturbation score needs: the model's forward checked on X's rows (``explainer``), the players, X's
    rows, the outputs scored (``columns``, flat indices), and the values summed to the players, ``(n, P, k)``."""

    explainer: ShapleyExplainer
    plan: Players
    x: np.ndarray
    columns: np.ndarray
    given: np.ndarray
    trailing: tuple[int, ...]
    players: Any
    windows: int | None

    def outputs(self, rows: np.ndarray, what: str, batch_size: int) -> np.ndarray:
        """The model's outputs scored, f(x) for X's rows then for ``rows``: ``(n + len(rows), k)``."""
        forward = self.explainer.forward
        out = np.concatenate([forward.rows([self.x]), *[
            forward.rows([rows[s : s + batch_size]]) for s in range(0, len(rows), batch_size)
        ]])  # fmt: skip
        forward.refuse_non_finite(out, what)
        return out[:, self.columns]

    def game(self, background_rows: int | None = None) -> ScoredGame:
        columns = tuple(int(c) for c in self.columns)
        return ScoredGame(player_kind(self.players, self.plan), self.plan.count, background_rows, columns, self.windows)


def scoring(
    values: Any, model: Any, X: Any, other: Any, players: Any, time_axis: Any, windows: int | None, outputs: Any,
    batch_size: int,
) -> Scoring:
    """The :class:`Scoring` of ``values`` of ``X``: ``other`` is the baseline (or X), checked to be one input too."""
    one_input(values, X, other)
    explainer = ShapleyExplainer(model, X, batch_size=batch_size)  # the model's layout, its forward checked on X
    plan = explainer.player_ids(shapley_players(players), time_axis=time_axis, windows=windows)
    x = explainer.forward.background[0]
    _, columns, expected = scored_outputs(explainer, outputs)
    given, trailing = per_player(values, x, plan, columns.size, expected)
    return Scoring(explainer, plan, x, columns, given, trailing, players, windows)


@dataclass(frozen=True)
class RoadCurve:
    """ROAD (Rong et al. 2022, "Remove And Debias") on a time series: the model's output as a share of the players is
    removed, each removed step imputed from its neighbours in time (noisy linear imputation)."""

    #: "morf" (the most positive values removed first) or "lerf" (the least first)
    order: str
    #: ``(m,)``: the percentages of players removed
    percentages: np.ndarray
    #: ``(m,)``: the players removed at each percentage (round(P · p / 100))
    removed: np.ndarray
    #: ``(N, m + 1)`` or ``(N, m + 1, *outputs)``: f(x), then f of x with each percentage removed and imputed
    curve: np.ndarray
    #: ``(N,)`` or ``(N, *outputs)``: the mean over the percentages of f(x) − curve (MoRF: larger is better; LeRF:
    #: smaller is better)
    aopc: np.ndarray
    #: the standard deviation of the Gaussian noise added to every imputed entry
    noise: float
    game: ScoredGame


@dataclass(frozen=True)
class Infidelity:
    """Infidelity (Yeh et al. 2019) over coalitions of players: for each coalition S replaced by the baseline, the
    squared miss of the values' sum over S against the change of the output, f(x) − f(x with S at the baseline)."""

    #: ``(N,)`` or ``(N, *outputs)``: the mean over the coalitions of (Σ_{p∈S} φ_p − (f(x) − f(x_S←b)))²
    infidelity: np.ndarray
    #: ``(m, P)`` bool: the coalitions S perturbed (True: replaced by the baseline)
    subsets: np.ndarray
    #: ``(N, m)`` or ``(N, m, *outputs)``: f(x) − f(x_S←b) per coalition
    change: np.ndarray
    #: the scale β the values were multiplied by first (``normalize=True``: Yeh et al.'s optimal scale; else 1)
    scale: np.ndarray
    #: the values scored, summed to the players
    values: np.ndarray
    game: ScoredGame


def road(
    values: Any,
    model: Any,
    X: Any,
    *,
    players: Any = "steps",
    time_axis: Any = None,
    windows: int | None = None,
    outputs: Sequence[Any] | int | None = None,
    percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    order: str = "morf",
    noise: float = 0.01,
    random_state: Any = 0,
    batch_size: int = 2048,
) -> RoadCurve:
    """ROAD on a time series: the top-ranked players (steps or windows) removed, each removed entry imputed as the mean
    of its neighbours in time (t − 1 and t + 1, in its channel; removed neighbours are unknowns of the same linear
    system), plus Gaussian noise of standard deviation ``noise``. Without noise a removed run of steps becomes the line
    between the kept steps around it (the nearest kept value beyond either end of the series).

    Args:
        values, model, X, players, time_axis, windows, outputs: as for :func:`rnnshap.metrics.deletion`; players are
            steps or windows of steps (a channel removed whole has no neighbour in time to impute it from: use
            ``deletion`` with a baseline).
        percentages: the shares of players removed, each in (0, 100).
        order: ``"morf"`` (the most positive values first) or ``"lerf"`` (the least positive first).
        noise: the standard deviation of the noise added to every imputed entry (0: none).
        random_state: the seed of the noise.
    """
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', not {order!r}")
    scored = scoring(values, model, X, X, players, time_axis, windows, outputs, batch_size)
    plan, x, given = scored.plan, scored.x, scored.given
    if plan.kind not in ("steps", "windows"):
        raise InputError(
            f"ROAD imputes a removed step from its neighbours in time, so its players are steps or windows of steps, "
            f"not {player_kind(players, plan)}: a channel removed whole has none. Score channels with "
            "rnnshap.metrics.deletion and a baseline"
        )
    n, P, k = given.shape
    shares = np.asarray(percentages, dtype=np.float64).reshape(-1)
    removed = np.rint(P * shares / 100).astype(np.int64)
    if shares.size == 0 or np.any((shares <= 0) | (shares >= 100)) or removed.max() >= P:
        raise InputError(f"percentages must lie in (0, 100) and keep at least one of the {P} players, got {list(percentages)}")
    ids = plan.ids[0]
    assert ids is not None
    axis = next(a for a in range(ids.ndim) if ids.shape[a] > 1 and np.any(np.diff(ids, axis=a) != 0))
    step_player = np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)[:, 0]  # (T,): the player of each step
    ranked = np.argsort(-given if order == "morf" else given, axis=1, kind="stable")  # (n, P, k)
    rank_of = np.empty_like(ranked)
    np.put_along_axis(rank_of, ranked, np.arange(P)[None, :, None], axis=1)  # rank_of[i, p, j]: p's place in j's order
    gone = rank_of[:, step_player, :, None] < removed[None, None, None, :]  # (n, T, k, m): step t removed
    series = np.moveaxis(x, 1 + axis, 1).astype(np.float64)  # (n, T, ...)
    T = series.shape[1]
    rows = np.broadcast_to(series[:, None, None], (n, k, removed.size, *series.shape[1:])).reshape(-1, *series.shape[1:])
    imputed = imputed_in_time(rows, gone.transpose(0, 2, 3, 1).reshape(-1, T))
    if noise:
        mask = gone.transpose(0, 2, 3, 1).reshape(-1, T, *[1] * (series.ndim - 2))
        imputed = imputed + noise * np.where(mask, np.random.default_rng(random_state).standard_normal(imputed.shape), 0.0)
    out = scored.outputs(np.moveaxis(imputed, 1, 1 + axis).astype(x.dtype), "ROAD row", batch_size)
    f_x = out[:n]  # (n, k)
    after = out[n:].reshape(n, k, removed.size, k)[:, np.arange(k), :, np.arange(k)].transpose(1, 0, 2)  # (n, k, m)
    curve = np.concatenate([f_x[:, :, None], after], axis=2)  # (n, k, m + 1)
    return RoadCurve(
        order=order,
        percentages=shares,
        removed=removed,
        curve=curve.transpose(0, 2, 1).reshape(n, removed.size + 1, *scored.trailing),
        aopc=(f_x[:, :, None] - after).mean(2).reshape(n, *scored.trailing),
        noise=float(noise),
        game=scored.game(),
    )


def imputed_in_time(rows: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """``rows`` (R, T, ...) with the steps where ``gone`` (R, T) is True replaced by the solution of ROAD's linear
    system along time: each removed entry equals the mean of its neighbours t − 1 and t + 1 (those that exist),
    every kept entry its own value. Tridiagonal, solved by Thomas' algorithm over all rows and channels at once;
    every row must keep at least one step."""
    R, T = gone.shape
    rhs = np.where(gone.reshape(R, T, *[1] * (rows.ndim - 2)), 0.0, rows).astype(np.float64)
    neighbours = np.full((R, T), 2.0)
    neighbours[:, 0] = neighbours[:, -1] = 1.0
    below = np.where(gone, -1.0 / neighbours, 0.0)  # the coefficient of x[t − 1] in row t
    above = np.where(gone, -1.0 / neighbours, 0.0)  # of x[t + 1]
    below[:, 0] = above[:, -1] = 0.0
    if T == 1:
        return rhs
    shape = (R, *[1] * (rows.ndim - 2))
    c = np.empty((R, T))
    d = np.empty_like(rhs)
    c[:, 0] = above[:, 0]
    d[:, 0] = rhs[:, 0]
    for t in range(1, T):
        pivot = 1.0 - below[:, t] * c[:, t - 1]
        c[:, t] = above[:, t] / pivot
        d[:, t] = (rhs[:, t] - below[:, t].reshape(shape) * d[:, t - 1]) / pivot.reshape(shape)
    solved = np.empty_like(rhs)
    solved[:, -1] = d[:, -1]
    for t in range(T - 2, -1, -1):
        solved[:, t] = d[:, t] - c[:, t].reshape(shape) * solved[:, t + 1]
    return solved


def infidelity(
    values: Any,
    model: Any,
    X: Any,
    baseline: Any,
    *,
    players: Any = "steps",
    time_axis: Any = None,
    windows: int | None = None,
    outputs: Sequence[Any] | int | None = None,
    subsets: Any = 64,
    probability: float = 0.5,
    normalize: bool = False,
    random_state: Any = 0,
    batch_size: int = 2048,
) -> Infidelity:
    """Infidelity over coalitions of players replaced by ``baseline``: the mean of (Σ_{p∈S} φ_p − (f(x) − f(x with S
    at the baseline)))² over coalitions S. This is Yeh et al.'s infidelity with the perturbation I = x − baseline on
    S's entries, written for attributions that already carry the input's difference (DeepSHAP, Shapley values,
    Integrated Gradients, gradient × input): I·Φ is then the sum of their values over S.

    Args:
        values, model, X, baseline, players, time_axis, windows, outputs: as for :func:`rnnshap.metrics.deletion`.
        subsets: how many coalitions to draw (each player in S with ``probability``, the same coalitions for every
            sample), or the coalitions themselves, an (m, P) bool array.
        normalize: multiply the values first by Yeh et al.'s optimal scale β = E[I·Φ · Δf] / E[(I·Φ)²] per sample
            (and output), so that only their direction is scored.
        random_state: the seed of the coalitions drawn.
    """
    scored = scoring(values, model, X, baseline, players, time_axis, windows, outputs, batch_size)
    plan, x, given, trailing = scored.plan, scored.x, scored.given, scored.trailing
    n, P, k = given.shape
    if isinstance(subsets, (int, np.integer)) and not isinstance(subsets, bool):
        if subsets < 1 or not 0 < probability <= 1:
            raise InputError(f"draw at least one coalition with a probability in (0, 1], got {subsets}, {probability}")
        drawn = np.random.default_rng(random_state).random((int(subsets), P)) < probability
    else:
        drawn = np.asarray(subsets)
        if drawn.dtype != bool or drawn.ndim != 2 or drawn.shape[1] != P:
            raise InputError(f"subsets must be a number of coalitions or an (m, {P}) bool array, got {drawn.shape}")
    base = baseline_like(baseline, x)
    m = drawn.shape[0]
    rows = np.concatenate([plan.coalition_rows(~drawn, [x[i]], [np.repeat(base[i][None], m, 0)])[0] for i in range(n)])
    out = scored.outputs(rows, "infidelity row", batch_size)
    change = out[:n, None, :] - out[n:].reshape(n, m, k)  # (n, m, k)
    summed = np.einsum("mp,npk->nmk", drawn.astype(np.float64), given)  # Σ_{p∈S} φ_p
    scale = np.ones((n, k))
    if normalize:
        power = (summed**2).mean(1)
        scale = np.where(power > 0, (summed * change).mean(1) / np.where(power > 0, power, 1.0), 1.0)
    miss = ((scale[:, None, :] * summed - change) ** 2).mean(1)
    return Infidelity(
        infidelity=miss.reshape(n, *trailing),
        subsets=drawn,
        change=change.reshape(n, m, *trailing),
        scale=scale.reshape(n, *trailing),
        values=given.reshape(n, P, *trailing),
        game=scored.game(),
    )
