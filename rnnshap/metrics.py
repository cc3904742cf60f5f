"""How good is an explanation? Its distance to the exact Shapley values, and its deletion curve.

``distance_to_exact`` scores any attribution array (rnnshap's, shap's, Captum's, any tool's) against the
Shapley values of the game that DeepSHAP, KernelSHAP, TimeSHAP and WindowSHAP approximate,

    v(S) = mean over the background rows r of f(x on the players in S, r elsewhere),

computed by rnnshap's Shapley mode (:class:`rnnshap.ShapleyExplainer`): enumerated where the coalitions can be,
otherwise estimated, with standard errors the result carries. ``deletion`` removes the top-ranked players one
by one, replacing them by a baseline, and reports the model's output after each removal and its AOPC;
``insertion`` puts them back into the baseline one by one.

Both take the values in the layout of ``X`` ((N, T, F) or (N, C, T); ``time_axis`` says which axis is time
where the model does not), with or without a trailing output axis, and sum them over each player's entries
(steps, windows of steps, channels, cells or a player mask) before scoring. Every result carries the game it
scored (:class:`ScoredGame`): which players, how many background rows, which outputs. The output is the
model's output as it returns it: wrap the model in a softmax to score probabilities rather than logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .explainer import DeepExplainer
from .perturbation import (
    Infidelity,
    RoadCurve,
    ScoredGame,
    aggregate,
    as_array,
    baseline_like,
    infidelity,
    one_input,
    per_player,
    player_kind,
    road,
    scored_outputs,
    scoring,
    shapley_players,
)
from .shapley import ShapleyExplainer
from .shapley.estimator import enumeration_rows
from .shapley.players import Players

__all__ = [
    "Distance",
    "DistanceToExact",
    "Infidelity",
    "PerturbationCurve",
    "RoadCurve",
    "ScoredGame",
    "deletion",
    "distance_to_exact",
    "explain_func",
    "infidelity",
    "insertion",
    "road",
    "spread_to_entries",
]

#: ``budget=None`` enumerates every coalition up to this many players (2^P · B rows per sample); above it the
#: reference is estimated with the Shapley mode's default budget (16× DeepSHAP's cost) and carries standard errors
ENUMERATE_UP_TO = 10

#: the distances of :class:`Distance`, in order
METRICS = ("cosine", "relative_l2", "spearman", "sign_agreement", "top_k_overlap")


def check_metric(metric: str) -> str:
    """``metric``, one of :data:`METRICS`; else an InputError naming them."""
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    return metric


@dataclass(frozen=True)
class Distance:
    """How far attributions are from the exact Shapley values of :attr:`game`, per sample (and output).

    The five distances are shaped ``(N,)`` for values without an output axis, else ``(N, *outputs)``; the
    player arrays ``(N, P)`` or ``(N, P, *outputs)``. With a and b the values and the reference of one sample
    and output over the P players:

    - ``cosine``: a·b / (‖a‖‖b‖) (NaN where either is all zeros);
    - ``relative_l2``: ‖a − b‖ / ‖b‖ (0 where a = b = 0, inf where only b is 0);
    - ``spearman``: Pearson's correlation of their ranks, ties given their average rank (NaN where either is constant);
    - ``sign_agreement``: the share of players where sign(a) = sign(b) (0 is a sign of its own);
    - ``top_k_overlap``: the share of the k players of largest magnitude in a that are among the k largest in b
      (ties: the first player).
    """

    cosine: np.ndarray
    relative_l2: np.ndarray
    spearman: np.ndarray
    sign_agreement: np.ndarray
    top_k_overlap: np.ndarray
    #: the values scored, summed to the players
    values: np.ndarray
    #: the Shapley values of the game
    reference: np.ndarray
    #: their standard errors (0 where every coalition was enumerated)
    stderr: np.ndarray
    #: True where the reference was enumerated (exact); False where it was estimated
    exact: bool
    #: √(Σ stderr²) / ‖reference‖ per sample (and output): the relative L2 distance the reference's own noise
    #: accounts for (0 where exact); a ``relative_l2`` near it is as close as the reference can tell
    reference_noise: np.ndarray
    #: the k of ``top_k_overlap``
    top_k: int
    #: per sample: the rows the reference ran through the model
    n_evals: np.ndarray
    game: ScoredGame

    def summary(self, statistic: str = "median") -> dict[str, float]:
        """Each distance aggregated over samples and outputs: ``"median"`` or ``"mean"`` (NaN left out)."""
        return {name: aggregate(getattr(self, name), statistic) for name in METRICS}


@dataclass(frozen=True)
class PerturbationCurve:
    """The model's output as the top-ranked players are removed one by one (replaced by the baseline:
    :func:`deletion`) or put back one by one into the baseline (:func:`insertion`).

    Players are ranked by their value, the most positive first (the ones that raise the explained output
    most); each output is ranked by its own values.
    """

    #: "deletion" or "insertion"
    kind: str
    #: ``(N, s + 1)`` or ``(N, s + 1, *outputs)``, for 0 .. s players moved: deletion, f(x) with the first players
    #: of ``order`` replaced by the baseline (``curve[:, 0]`` is f(x)); insertion, f(baseline) with them taking
    #: x's values (``curve[:, 0]`` is f(baseline))
    curve: np.ndarray
    #: ``(N,)`` or ``(N, *outputs)``: the area over the perturbation curve, the mean over the curve of
    #: f(x) − curve (deletion: Samek et al. 2017) or curve − f(baseline) (insertion); larger is better
    aopc: np.ndarray
    #: ``(N, P)`` or ``(N, P, *outputs)``: the players in the order they are moved
    order: np.ndarray
    #: the values that ranked them, summed to the players
    values: np.ndarray
    game: ScoredGame

    def summary(self, statistic: str = "median") -> dict[str, float]:
        """The AOPC aggregated over samples and outputs: ``"median"`` or ``"mean"`` (NaN left out)."""
        return {"aopc": aggregate(self.aopc, statistic)}


def distance_to_exact(
    values: Any,
    model: Any,
    X: Any,
    background: Any,
    *,
    players: Any = "steps",
    time_axis: Any = None,
    windows: int | None = None,
    budget: int | None = None,
    outputs: Sequence[Any] | int | None = None,
    top_k: int | None = None,
    random_state: Any = 0,
    batch_size: int = 2048,
) -> Distance:
    """How far ``values`` are from the exact Shapley values of the game DeepSHAP approximates.

    The reference is the Shapley values of v(S) = mean over the rows r of ``background`` of f(x on the players
    in S, r elsewhere), from rnnshap's Shapley mode (:class:`rnnshap.ShapleyExplainer`, docs/shapley.md):
    enumerated where ``budget`` covers every coalition against every background row (``exact``), otherwise
    estimated by antithetic permutation walks with standard errors (``stderr``, ``reference_noise``).

    Args:
        values: attributions of ``X`` from any tool (a numpy array or a tensor): in the layout of ``X``
            (per step × feature, per channel × step), with or without a trailing output axis, or already one
            value per player, ``(N, P)`` or ``(N, P, outputs)`` (a :class:`rnnshap.ShapleyEstimate`'s values).
            Values per entry are **summed over each player's entries** (a step's features, a window's steps, a
            channel's steps) before they are compared: a distance is between values of the same players.
        model: any model :class:`rnnshap.ShapleyExplainer` takes (an ``nn.Module``, a Keras 3 model, a function
            of numpy arrays); one input.
        X: the explained samples, ``(N, T, F)`` or ``(N, C, T)``.
        background: the background rows r of the game, shaped like ``X``.
        players: ``"steps"`` (with ``windows=k``: k consecutive steps per player), ``"channels"`` (or
            ``"features"``: one channel at every step), ``"cells"`` (every entry: P = T·F, estimated unless tiny)
            or an integer array of player ids shaped like one sample.
        time_axis: the axis of ``X`` that is time (1 for (N, T, F), 2 for (N, C, T)) where the layer reading the
            input does not say (a recurrent layer or a channels-last convolution says (T, F), torch's ``Conv1d``
            (C, T)); never guessed.
        windows: with ``players="steps"``, steps per player (the last window shorter).
        budget: rows per sample for the reference (see ``shapley_values``). None: every coalition (exact) up to
            :data:`ENUMERATE_UP_TO` players, else the Shapley mode's default (16× DeepSHAP's cost), estimated.
        outputs: the model's outputs scored (indices as for ``shap_values``); None: all of them. Values without an
            output axis need a model with one output, or one output chosen here.
        top_k: the k of ``top_k_overlap`` (default: a quarter of the players, at least 1).
        random_state: the seed of the reference's estimate (the same seed, the same reference).
        batch_size: the most rows run through the model at once.

    Returns:
        a :class:`Distance`: ``cosine``, ``relative_l2``, ``spearman``, ``sign_agreement``, ``top_k_overlap`` per
        sample (and output), the ``values`` scored and the ``reference`` per player, ``stderr``, ``exact``, and
        the ``game`` scored.
    """
    one_input(values, X, background)
    explainer = ShapleyExplainer(model, background, batch_size=batch_size)
    kind = shapley_players(players)
    plan = explainer.player_ids(kind, time_axis=time_axis, windows=windows)
    x = explainer.forward.arrays(X, "X")[0]
    chosen, columns, expected = scored_outputs(explainer, outputs)
    given, trailing = per_player(values, x, plan, columns.size, expected)
    n, P, k = given.shape
    B = int(explainer.forward.background[0].shape[0])
    k_top = _top_k(top_k, P)
    if budget is None and P <= ENUMERATE_UP_TO:
        budget = enumeration_rows(P, B, False)
    estimate = explainer.shapley_values(
        x, kind, budget, outputs=chosen, random_state=random_state, time_axis=time_axis, windows=windows
    )
    reference = np.asarray(estimate.values, dtype=np.float64).reshape(n, P, k)
    stderr = np.asarray(estimate.stderr, dtype=np.float64).reshape(n, P, k)

    def rows(a: np.ndarray) -> np.ndarray:  # (n, P, k) → (n·k, P): one row per sample and output
        return a.transpose(0, 2, 1).reshape(n * k, P)

    def scored(a: np.ndarray) -> np.ndarray:  # (n·k,) → (n, *trailing)
        return a.reshape(n, *trailing)

    scores = _scores(rows(given), rows(reference), k_top)
    noise = np.sqrt((stderr**2).sum(1))
    size = np.sqrt((reference**2).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_noise = np.where(size > 0, noise / np.where(size > 0, size, 1.0), np.where(noise > 0, np.inf, 0.0))
    return Distance(
        **{name: scored(scores[name]) for name in METRICS},
        values=given.reshape(n, P, *trailing),
        reference=reference.reshape(n, P, *trailing),
        stderr=stderr.reshape(n, P, *trailing),
        exact=bool(np.all(estimate.exact)),
        reference_noise=relative_noise.reshape(n, *trailing),
        top_k=k_top,
        n_evals=np.asarray(estimate.n_evals),
        game=ScoredGame(player_kind(players, plan), P, B, tuple(int(c) for c in columns), windows),
    )


def deletion(
    values: Any,
    model: Any,
    X: Any,
    baseline: Any,
    *,
    players: Any = "steps",
    time_axis: Any = None,
    windows: int | None = None,
    outputs: Sequence[Any] | int | None = None,
    removals: int | None = None,
    batch_size: int = 2048,
) -> PerturbationCurve:
    """The deletion curve of ``values``: the model's output as the top-ranked players are replaced by ``baseline``.

    Players are ranked by their value (the most positive first; each output by its own values); the curve holds
    f(x) with the first 0, 1, ..., ``removals`` of them replaced, and ``aopc`` its mean drop, f(x) − curve.

    Args:
        values: attributions of ``X``, as for :func:`distance_to_exact` (summed over each player's entries first).
        model: any model :class:`rnnshap.ShapleyExplainer` takes; one input.
        X: the explained samples, ``(N, T, F)`` or ``(N, C, T)``.
        baseline: what a removed player's entries become: a number, one sample shaped like ``X[0]``, or one per
            sample shaped like ``X`` (a numpy array or a tensor).
        players, time_axis, windows, outputs: as for :func:`distance_to_exact`.
        removals: how many players to remove (default: all of them).
        batch_size: the most rows run through the model at once.
    """
    return _curve("deletion", values, model, X, baseline, players, time_axis, windows, outputs, removals, batch_size)


def insertion(
    values: Any,
    model: Any,
    X: Any,
    baseline: Any,
    *,
    players: Any = "steps",
    time_axis: Any = None,
    windows: int | None = None,
    outputs: Sequence[Any] | int | None = None,
    removals: int | None = None,
    batch_size: int = 2048,
) -> PerturbationCurve:
    """The insertion curve of ``values``: the model's output as the top-ranked players are put back into ``baseline``.

    The mirror of :func:`deletion` (the same arguments; ``removals``: how many players to insert): the curve holds
    f of the baseline with the first 0, 1, ..., ``removals`` players of the ranking taking the sample's values, and
    ``aopc`` its mean gain, curve − f(baseline).
    """
    return _curve("insertion", values, model, X, baseline, players, time_axis, windows, outputs, removals, batch_size)


def _curve(
    kind: str,
    values: Any,
    model: Any,
    X: Any,
    baseline: Any,
    players: Any,
    time_axis: Any,
    windows: int | None,
    outputs: Any,
    removals: int | None,
    batch_size: int,
) -> PerturbationCurve:
    """A deletion or insertion curve: one row per sample, output and number of players moved."""
    scored = scoring(values, model, X, baseline, players, time_axis, windows, outputs, batch_size)
    explainer, plan, x, columns, given, trailing = (
        scored.explainer, scored.plan, scored.x, scored.columns, scored.given, scored.trailing
    )
    n, P, k = given.shape
    base = baseline_like(baseline, x)
    steps = P if removals is None else removals
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= P:
        raise InputError(f"removals must be a number of players from 1 to {P}, got {removals!r}")
    steps = int(steps)
    order = np.argsort(-given, axis=1, kind="stable")  # (n, P, k): most positive first
    # moved[i, j, s]: the players moved after s steps of output j's ranking (removed, or inserted)
    moved = np.zeros((n, k, steps + 1, P), dtype=bool)
    for s in range(1, steps + 1):
        moved[:, :, s] = moved[:, :, s - 1]
        np.put_along_axis(moved[:, :, s], order[:, s - 1, :, None], True, axis=2)
    takes_x = ~moved if kind == "deletion" else moved
    per_sample = k * (steps + 1)
    group = max(1, int(batch_size) // per_sample)
    curve = np.empty((n, k, steps + 1))
    for start in range(0, n, group):
        stop = min(n, start + group)
        rows = np.concatenate(
            [plan.coalition_rows(takes_x[i].reshape(per_sample, P), [x[i]], [np.repeat(base[i][None], per_sample, 0)])[0]
             for i in range(start, stop)]
        )  # fmt: skip
        out = explainer.forward.rows([rows])
        explainer.forward.refuse_non_finite(out, f"{kind} row")
        picked = out.reshape(stop - start, k, steps + 1, -1)
        curve[start:stop] = np.take_along_axis(picked, columns.reshape(1, k, 1, 1), axis=3)[..., 0]
    change = curve[:, :, :1] - curve if kind == "deletion" else curve - curve[:, :, :1]
    return PerturbationCurve(
        kind=kind,
        curve=curve.transpose(0, 2, 1).reshape(n, steps + 1, *trailing),
        aopc=change.mean(2).reshape(n, *trailing),
        order=order.reshape(n, P, *trailing),
        values=given.reshape(n, P, *trailing),
        game=scored.game(),
    )


def explain_func(
    model: Any,
    inputs: Any,
    targets: Any = None,
    *,
    background: Any,
    explainer: str | None = None,
    players: Any = "steps",
    time_axis: Any = None,
    windows: int | None = None,
    budget: int | None = None,
    random_state: Any = 0,
    batch_size: int = 2048,
    method: Any = None,
    device: Any = None,
) -> np.ndarray:
    """rnnshap's explanations in Quantus' calling convention: ``explain_func(model, inputs, targets, **kwargs)``.

    Give it to a Quantus metric as ``explain_func=rnnshap.metrics.explain_func`` with
    ``explain_func_kwargs={"background": rows, ...}`` (or in ``quantus.evaluate``'s ``xai_methods``). It returns
    attributions shaped like ``inputs``, each sample's for its own target output:

    - ``explainer="deepshap"`` (the default): :class:`rnnshap.DeepExplainer`'s values (exact rules, additive);
    - ``explainer="shapley"``: the Shapley values of the players (``players``, ``time_axis``, ``windows``,
      ``budget``, ``random_state`` as for :func:`distance_to_exact`) from :class:`rnnshap.ShapleyExplainer`, each
      player's value spread evenly over its entries (so that they still add up to f(x) − E[f]).

    ``targets``: one output index per sample (or one for all; None for a model with one output). ``method`` is the
    name Quantus' ``evaluate`` passes (its ``xai_methods`` key): where ``explainer`` is not given, a key
    ``"deepshap"`` or ``"shapley"`` (any case) chooses it, any other means DeepSHAP. ``device`` is accepted and not
    used (the model's own device is).
    """
    del device
    if explainer is None:
        named_method = method.lower() if isinstance(method, str) else ""
        explainer = named_method if named_method in ("deepshap", "shapley") else "deepshap"
    x = as_array(inputs, "inputs")
    n = int(x.shape[0])
    if explainer not in ("deepshap", "shapley"):
        raise InputError(f"explainer must be 'deepshap' or 'shapley', not {explainer!r}")
    if explainer == "deepshap":
        deep = DeepExplainer(model, background, batch_size=batch_size)
        wanted = _targets(targets, n, int(np.prod(deep.output_shape, dtype=np.int64)))
        chosen = sorted(set(wanted.tolist()))
        values = np.asarray(deep.shap_values(inputs, outputs=chosen), dtype=np.float64)  # (n, *shape, k)
        return own_targets(values, chosen, wanted)
    shapley = ShapleyExplainer(model, background, batch_size=batch_size)
    named = shapley_players(players)
    plan = shapley.player_ids(named, time_axis=time_axis, windows=windows)
    wanted = _targets(targets, n, int(shapley.forward.background_outputs.shape[1]))
    chosen = sorted(set(wanted.tolist()))
    estimate = shapley.shapley_values(
        inputs, named, budget, outputs=chosen, random_state=random_state, time_axis=time_axis, windows=windows
    )
    per_player = np.asarray(estimate.values, dtype=np.float64).reshape(n, plan.count, len(chosen))
    return spread_to_entries(own_targets(per_player, chosen, wanted), plan)


def own_targets(values: np.ndarray, chosen: list[int], wanted: np.ndarray) -> np.ndarray:
    """Per sample, the values of its own target out of values for the ``chosen`` outputs (last axis): ``values``
    (n, ..., len(chosen)) → (n, ...), sample i's at ``wanted[i]``, one of ``chosen`` (sorted)."""
    where = np.searchsorted(chosen, wanted)
    return np.take_along_axis(values, where.reshape(-1, *[1] * (values.ndim - 1)), -1)[..., 0]


def spread_to_entries(per_player: np.ndarray, plan: Players) -> np.ndarray:
    """Values per player ``(n, P)`` spread evenly over each player's entries, ``(n, *sample)``: a window's value
    shared by its steps, a channel's by its cells, so that they still add up to the same total."""
    ids = plan.ids[0]
    assert ids is not None
    counts = np.bincount(ids.reshape(-1), minlength=plan.count)
    return per_player[:, ids] / counts[ids]


class DistanceToExact:
    """The distance to the exact Shapley values as a metric in Quantus' calling convention.

    ``DistanceToExact(background, metric="cosine", ...)`` is called as a Quantus metric is,
    ``metric(model=..., x_batch=..., y_batch=..., a_batch=..., explain_func=..., explain_func_kwargs=...)``
    (``a_batch`` None: the explanations are made by ``explain_func``), and returns one score per sample: the
    chosen distance (a field of :class:`Distance`) of each sample's attributions to the Shapley values of its
    target output (``y_batch``). What Quantus has no room for is kept on the instance after each call:
    ``distance`` holds the five distances per sample (a dict), and ``reference``, ``stderr``, ``exact`` and
    ``reference_noise`` per sample, with ``game``. The other arguments are as for :func:`distance_to_exact`.
    """

    def __init__(
        self,
        background: Any,
        *,
        metric: str = "cosine",
        players: Any = "steps",
        time_axis: Any = None,
        windows: int | None = None,
        budget: int | None = None,
        top_k: int | None = None,
        random_state: Any = 0,
        batch_size: int = 2048,
    ) -> None:
        self.metric = check_metric(metric)
        self.background = background
        self.options: dict[str, Any] = dict(
            players=players, time_axis=time_axis, windows=windows, budget=budget, top_k=top_k,
            random_state=random_state, batch_size=batch_size,
        )  # fmt: skip
        self.distance: dict[str, np.ndarray] = {}
        self.reference: np.ndarray | None = None
        self.stderr: np.ndarray | None = None
        self.exact: np.ndarray | None = None
        self.reference_noise: np.ndarray | None = None
        self.game: ScoredGame | None = None

    def __call__(
        self,
        model: Any,
        x_batch: Any,
        y_batch: Any = None,
        a_batch: Any = None,
        s_batch: Any = None,
        *,
        explain_func: Any = None,
        explain_func_kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> list[float]:
        """One score per sample (Quantus' other call arguments, ``device``, ``channel_first``, ... are not used)."""
        del s_batch, options
        x = as_array(x_batch, "x_batch")
        n = int(x.shape[0])
        if a_batch is None:
            if explain_func is None:
                raise InputError("give a_batch, or an explain_func to make it (rnnshap.metrics.explain_func)")
            a_batch = explain_func(model=model, inputs=x_batch, targets=y_batch, **(explain_func_kwargs or {}))
        a = as_array(a_batch, "a_batch")
        if a.shape != x.shape:
            raise InputError(f"a_batch shaped {a.shape}: give one attribution per entry of x_batch, shaped {x.shape}")
        shapley = ShapleyExplainer(model, self.background, batch_size=self.options["batch_size"])
        wanted = _targets(y_batch, n, int(shapley.forward.background_outputs.shape[1]))
        scores = {name: np.full(n, np.nan) for name in METRICS}
        reference: np.ndarray | None = None
        stderr: np.ndarray | None = None
        exact = np.zeros(n, dtype=bool)
        noise = np.zeros(n)
        for target in sorted(set(wanted.tolist())):
            rows = np.flatnonzero(wanted == target)
            result = distance_to_exact(a[rows], model, x[rows], self.background, outputs=[target], **self.options)
            for name in METRICS:
                scores[name][rows] = getattr(result, name)
            if reference is None:
                reference = np.zeros((n, *result.reference.shape[1:]))
                stderr = np.zeros_like(reference)
            assert stderr is not None
            reference[rows], stderr[rows] = result.reference, result.stderr
            exact[rows], noise[rows] = result.exact, result.reference_noise
            self.game = result.game
        self.distance, self.reference, self.stderr, self.exact, self.reference_noise = scores, reference, stderr, exact, noise
        return [float(v) for v in scores[self.metric]]


def _targets(targets: Any, n: int, outputs: int) -> np.ndarray:
    """One output index per sample, (n,) int64, checked against the model's ``outputs``."""
    if targets is None:
        if outputs != 1:
            raise InputError(f"the model has {outputs} outputs: give targets (y_batch), one output index per sample")
        return np.zeros(n, dtype=np.int64)
    given = targets.detach().cpu().numpy() if hasattr(targets, "detach") else np.asarray(targets)
    if given.dtype.kind not in "iu" or given.ndim > 1 or given.size not in (1, n):
        raise InputError(f"targets must be one integer output index per sample ({n}) or one for all, not {given!r}")
    wanted = np.broadcast_to(given.reshape(-1).astype(np.int64), (n,)).copy()
    if wanted.min() < 0 or wanted.max() >= outputs:
        raise InputError(f"targets {sorted(set(wanted.tolist()))}: the model has {outputs} outputs")
    return wanted


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..P along the last axis of ``a`` (m, P), tied values given the mean of their ranks."""
    ranks = np.empty(a.shape, dtype=np.float64)
    for values, out in zip(a, ranks, strict=True):
        ordered = np.sort(values)
        left = np.searchsorted(ordered, values, side="left")
        right = np.searchsorted(ordered, values, side="right")
        out[:] = (left + right + 1) / 2  # the mean of positions left .. right − 1, counted from 1
    return ranks


def _scores(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The five distances of values ``a`` to the reference ``b``, both (m, P) float64: each (m,)."""
    norm_a, norm_b = np.sqrt((a * a).sum(1)), np.sqrt((b * b).sum(1))
    gap = np.sqrt(((a - b) ** 2).sum(1))
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    spread = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    top_a = np.zeros(a.shape, dtype=bool)
    top_b = np.zeros(b.shape, dtype=bool)
    np.put_along_axis(top_a, np.argsort(-np.abs(a), axis=1, kind="stable")[:, :k], True, axis=1)
    np.put_along_axis(top_b, np.argsort(-np.abs(b), axis=1, kind="stable")[:, :k], True, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        both = norm_a * norm_b
        return {
            "cosine": np.where(both > 0, np.clip((a * b).sum(1) / np.where(both > 0, both, 1.0), -1.0, 1.0), np.nan),
            "relative_l2": np.where(norm_b > 0, gap / np.where(norm_b > 0, norm_b, 1.0), np.where(gap > 0, np.inf, 0.0)),
            "spearman": np.where(spread > 0, (ra * rb).sum(1) / np.where(spread > 0, spread, 1.0), np.nan),
            "sign_agreement": (np.sign(a) == np.sign(b)).mean(1),
            "top_k_overlap": (top_a & top_b).sum(1) / k,
        }


def _top_k(top_k: int | None, P: int) -> int:
    if top_k is None:
        return max(1, math.ceil(P / 4))
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= P:
        raise InputError(f"top_k must be a number of players from 1 to {P}, got {top_k!r}")
    return int(top_k)
