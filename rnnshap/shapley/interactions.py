"""Shapley interactions between players (time steps, features, cells, groups), through shapiq.

rnnshap supplies the game, shapiq the interaction indices and their estimators. For one explained
sample x, one output and background rows r, the game is the one the Shapley mode plays:

    v(S) = mean over r of f(x on the players in S, r elsewhere)

evaluated in batches of rows through the model's forward, context inputs taking x's values, token
inputs taking the reference's tokens outside the coalition, several inputs played together
(:mod:`rnnshap.shapley.players`). Each (sample, output) is a ``shapiq.Game`` (:class:`SequenceGame`);
every shapiq approximator or the exact computer runs on it. A coalition costs B rows (one per background
row), the budget is counted in rows as in ``shapley_values``, and the values of a coalition are kept
for every output, so explaining k outputs costs the rows of one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..progress import progress_counter
from .door import ModelView, ValueTable

#: the interaction indices shapiq computes that rnnshap exposes, with whether they are efficient
#: (their values of every order up to ``order`` add up to v(N) − v(∅))
INDICES = {"k-SII": True, "STII": True, "FSII": True, "SII": False, "FBII": False, "SV": True, "BV": False}


def _shapiq() -> Any:
    try:
        import shapiq
    except ImportError as error:
        raise ImportError(
            "shapley_interactions uses shapiq's interaction indices: pip install 'rnnshap[interactions]'"
        ) from error
    return shapiq


def _game_class() -> Any:
    shapiq = _shapiq()

    class SequenceGame(shapiq.Game):  # type: ignore[misc,name-defined]
        """One explained sample and output as a shapiq game, centred at v(∅)."""

        def __init__(self, table: ValueTable, output: int, n_players: int, player_names: list[str] | None = None) -> None:
            self.table, self.output = table, output
            empty = float(table(np.zeros((1, n_players), dtype=bool))[0, output])
            super().__init__(n_players, normalization_value=empty, player_names=player_names)

        def value_function(self, coalitions: np.ndarray) -> np.ndarray:
            return self.table(coalitions)[:, self.output]

    return SequenceGame


def _from_baseline(values: Any, empty: float) -> Any:
    """shapiq's values of the game centred at v(∅), set to add up from v(∅) as shapiq's own uncentred games
    do: ``baseline_value`` and the empty coalition's value are v(∅) (the mean output over the background),
    so that shapiq's plots and sums start from it."""
    values.baseline_value = empty
    stored = getattr(values, "interactions", None)  # (shapiq's store; values and dict_values are views of it)
    if isinstance(stored, dict) and () in stored:
        stored[()] = empty
    return values


@dataclass
class InteractionEstimate:
    """Shapley interactions of a batch of samples, one ``shapiq.InteractionValues`` per sample and output.

    ``interactions[i][j]`` is sample i's for output j: shapiq's object, which shapiq's plots take
    (``shapiq.network_plot``, ``upset_plot``, ``force_plot``...); :meth:`matrix` gives arrays."""

    #: per sample, per explained output: shapiq's ``InteractionValues``, adding up from ``baseline_value`` = v(∅)
    interactions: list[list[Any]]
    #: (n, k): v(∅), the mean output over the background (context inputs at the sample's)
    base_values: np.ndarray
    #: (n, k): v(N) = f(x)
    outputs: np.ndarray
    #: the flat output indices explained, (n, k)
    columns: np.ndarray
    index: str
    order: int
    n_players: int
    #: "steps", "features", "cells" or "mask"
    players: str
    #: per sample: True where every coalition was evaluated (the values are the index's, exactly)
    exact: np.ndarray
    #: per sample: the rows run through the model's forward
    n_evals: np.ndarray

    def matrix(self) -> np.ndarray:
        """Order-2 values as arrays ``(N, P, P, k)``: the first-order values on the diagonal and each
        pair's value split in half over its two cells, so that for an efficient index (k-SII, STII,
        FSII) the whole matrix adds up to f(x) − v(∅), as shap's interaction values do."""
        if self.order < 2:
            raise InputError(f"matrix() needs interactions of order 2, these are of order {self.order}")
        n, k, P = len(self.interactions), self.columns.shape[1], self.n_players
        out = np.zeros((n, P, P, k))
        for i, per_output in enumerate(self.interactions):
            for j, values in enumerate(per_output):
                for players, value in values.dict_values.items():
                    if len(players) == 1:
                        out[i, players[0], players[0], j] = value
                    elif len(players) == 2:
                        a, b = players
                        out[i, a, b, j] += value / 2
                        out[i, b, a, j] += value / 2
        return out

    def first_order(self) -> np.ndarray:
        """The values of single players, ``(N, P, k)``."""
        n, k, P = len(self.interactions), self.columns.shape[1], self.n_players
        out = np.zeros((n, P, k))
        for i, per_output in enumerate(self.interactions):
            for j, values in enumerate(per_output):
                for players, value in values.dict_values.items():
                    if len(players) == 1:
                        out[i, players[0], j] = value
        return out


def interaction_terms(players: int, order: int) -> int:
    """How many interactions of up to ``order`` players there are among ``players``: Σ_k C(P, k)."""
    from math import comb

    return sum(comb(players, k) for k in range(1, order + 1))


def default_interaction_budget(players: int, references: int, order: int = 2) -> int:
    """Rows per sample when no budget is given: every coalition where that costs at most 4 coalitions per
    interaction estimated and 256 (P ≤ 8 for pairs), else 4 coalitions per interaction (840 for 20 steps and
    pairs), each one row per background row. A default a user can wait for (shapiq's regression estimators
    settle further at ~64·P² coalitions: give ``budget=`` for that); a long run says its count first."""
    coalitions = max(4 * interaction_terms(players, order), 256)
    return references * (2**players if 2**players <= coalitions else coalitions)


#: a default run of more rows than this in all is announced by a warning before it starts
ANNOUNCED_ROWS = 1_000_000


def shapley_interactions(
    view: ModelView,
    X: Any,
    players: Any = "steps",
    *,
    index: str = "k-SII",
    order: int = 2,
    budget: int | None = None,
    approximator: Any = "auto",
    outputs: Sequence[Any] | None = None,
    random_state: int | None = None,
    batch_size: int,
    player_names: Sequence[str] | None = None,
    time_axis: Any = None,
    windows: int | None = None,
    progress: bool | None = None,
) -> InteractionEstimate:
    """See :meth:`rnnshap.DeepExplainer.shapley_interactions`."""
    shapiq = _shapiq()
    from shapiq.explainer.configuration import setup_approximator

    if index not in INDICES:
        raise InputError(f"index={index!r}: choose one of {', '.join(INDICES)} (shapiq's interaction indices)")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise InputError(f"order must be a positive integer, got {order!r}")
    x, _ = view.convert(X)
    n = int(x[0].shape[0])
    B = int(view.background[0].shape[0])
    plan = view.plan(players, time_axis, windows)
    P = plan.count
    if order > P:
        raise InputError(f"order={order} is more than the {P} players")
    n_outputs = int(view.background_outputs.shape[1])
    columns = _columns(view, outputs, n_outputs)
    defaulted = budget is None
    if budget is None:
        budget = default_interaction_budget(P, B, int(order))
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise InputError(f"budget must be an integer number of rows per sample, not {budget!r}")
    coalitions = int(budget) // B
    if coalitions < 2:
        raise InputError(
            f"budget={budget} rows buys {coalitions} coalition(s) against the {B} background rows; give at least {2 * B}"
        )
    if player_names is not None and len(player_names) != P:
        raise InputError(f"player_names has {len(player_names)} names for {P} players")
    names = None if player_names is None else [str(name) for name in player_names]
    enumerate_all = 2**P <= coalitions
    seed = _seed(random_state)
    Game = _game_class()
    results: list[list[Any]] = []
    base = np.zeros((n, columns.size))
    full = np.zeros((n, columns.size))
    n_evals = np.zeros(n, dtype=np.int64)
    per_sample = min(2**P, coalitions + 2) * B  # (the most rows one sample can take: the coalitions, ∅ and N)
    if defaulted and not enumerate_all and n * per_sample > ANNOUNCED_ROWS:
        warnings.warn(
            f"shapley_interactions: no budget given, so {coalitions:,} coalitions of {P} players per sample, each "
            f"against the {B} background rows: up to {per_sample:,} model rows per sample, {n * per_sample:,} for the "
            f"{n} samples, estimated by shapiq ({index}, order {order}). budget= sets the rows per sample (every "
            f"coalition: {2**P * B:,}); fewer background rows or players (windows=, a mask) cost less.",
            UserWarning,
            stacklevel=3,
        )
    counter = progress_counter(n * per_sample, progress, desc=f"rnnshap {index}", unit="row")
    try:
        for i in range(n):
            table = ValueTable(view, plan, [a[i] for a in x], columns, batch_size)
            empty_full = table(np.stack([np.zeros(P, dtype=bool), np.ones(P, dtype=bool)]))
            base[i], full[i] = empty_full
            counted = table.rows
            counter.update(counted)
            per_output = []
            for j in range(columns.size):
                game = Game(table, j, P, names)
                if enumerate_all:
                    values = shapiq.ExactComputer(game=game, n_players=P)(index, order)
                else:
                    estimator = setup_approximator(approximator, index, order, P, seed + i)  # type: ignore[arg-type]
                    values = estimator.approximate(budget=coalitions, game=game)
                counter.update(table.rows - counted)
                counted = table.rows
                per_output.append(_from_baseline(values, float(base[i, j])))
            results.append(per_output)
            n_evals[i] = table.rows
    finally:
        counter.close()
    return InteractionEstimate(
        interactions=results,
        base_values=base,
        outputs=full,
        columns=np.broadcast_to(columns, (n, columns.size)).copy(),
        index=index,
        order=int(order),
        n_players=P,
        players=plan.kind,
        exact=np.full(n, enumerate_all),
        n_evals=n_evals,
    )


def _columns(view: ModelView, outputs: Sequence[Any] | None, n_outputs: int) -> np.ndarray:
    """The output columns explained: those ``outputs`` selects, else all ``n_outputs``."""
    if outputs is not None:
        assert view.select is not None
        return np.asarray(view.select(outputs), dtype=np.int64).reshape(-1)
    return np.arange(n_outputs, dtype=np.int64)


def _seed(random_state: Any) -> int:
    """One seed per call: every output of a sample samples the same coalitions (evaluated once, kept)."""
    if random_state is None or not isinstance(random_state, int):
        return int(np.random.default_rng(random_state).integers(2**31 - 1))
    return random_state
