"""``shapley_values``: the one method behind both doors (:class:`rnnshap.DeepExplainer` and
:class:`rnnshap.ShapleyExplainer`), and the :class:`ShapleyEstimate` it returns.

Each door hands it a :class:`ModelView` of its model: :func:`engine_view` is DeepExplainer's (an engine's
forward, and DeepSHAP's per-pair values from :func:`pair_values` as the control variate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..backgrounds import stated
from ..engines.base import Engine, blocks
from ..engines.outputs import select_outputs
from ..errors import InputError
from ..result import AttributionResult
from .estimator import GROUP, Forward, Game, default_budget, enumeration_rows, estimate
from .layout import Layout, chosen_axes
from .players import Players, resolve

#: DeepSHAP's values per (sample, reference) pair summed to the players: (inputs, columns, players,
#: batch_size) → (n, B, P, k)
PairValues = Callable[[list[Any], np.ndarray, Players, int], np.ndarray]


@dataclass
class ModelView:
    """What the Shapley mode needs of a model, whichever door and framework."""

    #: rows per input (numpy, each (m, *shape)) → (m, n_outputs) float64
    forward: Forward
    #: X → per input, a checked numpy array (n, *shape), and the door's own form of it
    convert: Callable[[Any], tuple[list[np.ndarray], Any]]
    background: list[np.ndarray]
    background_outputs: np.ndarray
    output_shape: tuple[int, ...]
    #: per input: whether its entries may be players (False: context, used as given)
    attributed: list[bool]
    #: per input: whether it holds one token id per position (N, T)
    tokens: list[bool]
    multi_input: bool
    #: DeepSHAP's per-pair values (DeepExplainer's door), or None
    deepshap: PairValues | None = None
    #: flat output indices of ``outputs=`` (n_outputs-sized output vector)
    select: Callable[[Sequence[Any]], np.ndarray] | None = None
    #: the model's layout (which axis of each input is time), read when first needed; None: not known
    layout: Callable[[], Layout] | None = None

    def plan(self, players: Any, time_axis: Any = None, windows: int | None = None) -> Players:
        """The players of ``players`` on this model's inputs (``time_axis``: see :func:`chosen_axes`)."""
        shapes = [tuple(b.shape[1:]) for b in self.background]
        along_time = isinstance(players, str) and players in ("steps", "features")
        needs = along_time and any(
            a and not tok and len(shape) >= 2 for a, tok, shape in zip(self.attributed, self.tokens, shapes, strict=True)
        )
        given = list(time_axis) if isinstance(time_axis, (list, tuple)) else [time_axis]
        known = self.layout() if needs and self.layout is not None and None in given else None
        axes, why = chosen_axes(time_axis, known, shapes)
        return resolve(players, shapes, self.attributed, self.tokens, axes, why, windows)


def engine_view(engine: Engine, method: str, layout: Callable[[], Layout] | None = None) -> ModelView:
    """What the Shapley mode needs of the model behind a DeepExplainer's ``engine``, DeepSHAP's per-pair
    values included (``method`` names the explainer's method in the error for a layer's attributions)."""
    if not engine.attributes_model_inputs:
        raise InputError(
            f"{method} plays the model's own inputs, and this explainer attributes to a layer's "
            f"{engine.side} (shap's (model, layer) form). Explain the part of the model after "
            f"the cut as a model of its own, with the layer's {engine.side}s as data, or use "
            f"DeepExplainer(model, data).{method}."
        )
    background = engine.to_numpy(engine.background)
    followed = set(engine.token_inputs) | set(engine.number_inputs)
    attributed = [bool(np.issubdtype(b.dtype, np.floating)) or t in followed for t, b in enumerate(background)]

    def convert(X: Any) -> tuple[list[np.ndarray], Any]:
        inputs = engine.inputs(X, "X")
        return engine.to_numpy(inputs), inputs

    def forward(rows: list[np.ndarray]) -> np.ndarray:
        return engine.predict(engine.inputs(rows if engine.multi_input else rows[0], "coalition rows"))

    def deepshap(inputs: list[Any], columns: np.ndarray, players: Players, batch_size: int) -> np.ndarray:
        return pair_values(engine, inputs, columns, players, batch_size)

    return ModelView(
        forward=forward,
        convert=convert,
        background=background,
        background_outputs=engine.background_outputs.reshape(engine.references, -1),
        output_shape=engine.output_shape,
        attributed=attributed,
        tokens=[t in engine.token_inputs for t in range(len(background))],
        multi_input=engine.multi_input,
        deepshap=deepshap,
        select=lambda chosen: select_outputs(engine.output_shape, chosen),
        layout=layout,
    )


def pair_values(engine: Engine, inputs: list[Any], columns: np.ndarray, players: Players, batch_size: int) -> np.ndarray:
    """DeepSHAP's values of every (sample, reference) pair summed to ``players``: (n, B, P, k)."""
    n, k = columns.shape
    B = engine.references
    values = np.zeros((n, B, players.count, k))
    # one sample's pairs per block (its references in parts if batch_size holds fewer): the values do
    # not then depend on batch_size, nor on the other samples of the call
    pairs = max(1, batch_size // engine.rows_per_pair(k))
    for block in blocks(n, B, min(pairs, B)):
        result = engine.attribute(inputs, block, columns[block.s0 : block.s1], per_pair=True)
        per_entry = [part.reshape(k * block.pairs, *part.shape[3:]) for part in result.sums]
        summed = players.per_player(per_entry).reshape(k, block.samples, block.references, players.count)
        values[block.s0 : block.s1, block.r0 : block.r1] = summed.transpose(1, 2, 3, 0)
    return values


@dataclass
class ShapleyEstimate(AttributionResult):
    """Shapley values of the game v(S) = mean over background rows r of f(x on S, r elsewhere),
    with standard errors (see docs/shapley.md): the result contract (:class:`rnnshap.result.AttributionResult`)
    with ``method="shapley"``.

    Arrays are shaped ``(N, P, *outputs)`` (players ``"cells"``: like the input, then the outputs;
    a list per input for a model with several), the outputs following ``shap_values``' conventions.
    ``values``: the estimates; ``stderr``: their standard errors (0 where every coalition was enumerated; inf where
    fewer than two walk pairs ran); ``base_values``: per sample and output, v(∅), the mean output over the background
    (with context inputs at the sample's); ``outputs``: per sample and output, f(x); ``n_evals``: per sample, the rows
    run through the model's forward (DeepSHAP's pass counts 3 per pair), never above the budget; ``exact``: per sample,
    True where every coalition was enumerated; ``players``: "steps", "windows", "features", "cells" or "mask".
    """

    #: DeepSHAP's values summed to the same players (DeepExplainer's door; None on ShapleyExplainer, and
    #: where the budget leaves no room for DeepSHAP's pass: 3 rows per background row and two walk pairs,
    #: or 3 per background row beside the enumeration)
    deepshap: Any = None
    #: ``values - deepshap`` (None without deepshap); its standard error is ``stderr``
    deepshap_gap: Any = None
    #: the number of players P
    n_players: int = 0
    #: the sampling's antithetic walk pairs per sample (0 where enumerated)
    walk_pairs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: DeepSHAP's values moved towards the estimate by one empirical-Bayes weight per call
    #: (:func:`shrink`): a *biased* point estimate, closer to the Shapley values than either at small
    #: budgets; each sample's values still add up exactly. None without ``deepshap``.
    shrunk: Any = None
    #: the root-mean-square error ``shrunk`` is expected to have, per sample and output (an error
    #: estimate, not a standard error: the estimate is biased). None without ``deepshap``.
    shrunk_rmse: np.ndarray | None = None
    #: the weight ``shrunk`` gives the estimate's gap to DeepSHAP, per sample and output (1 where exact)
    shrink_weight: np.ndarray | None = None
    #: with ``prune=``: per sample, how many of the oldest steps were grouped into one player (0: none)
    pruned_steps: np.ndarray | None = None
    #: with ``prune=``: that group's value per sample and output (its steps' entries in ``values`` are 0)
    pruned: np.ndarray | None = None
    #: with ``prune=``: its standard error
    pruned_stderr: np.ndarray | None = None

    def __repr__(self) -> str:
        """A short summary (shapes, exactness, the largest standard error and gap to DeepSHAP), not every array:
        the arrays are the attributes."""

        def shape(a: Any) -> Any:
            return [tuple(np.shape(v)) for v in a] if isinstance(a, list) else tuple(np.shape(a))

        def largest(a: Any) -> float:
            return max((float(np.max(np.abs(v), initial=0.0)) for v in (a if isinstance(a, list) else [a])), default=0.0)

        exact = np.asarray(self.exact, dtype=bool).reshape(-1)
        rows = np.asarray(self.n_evals).reshape(-1)
        parts = [
            f"players={self.players!r} ({self.n_players})",
            f"values {shape(self.values)}",
            f"exact for {int(exact.sum())} of {exact.size} samples",
        ]
        if not exact.all():
            parts.append(f"largest stderr {largest(self.stderr):.3g}")
        if rows.size:
            low, high = int(rows.min()), int(rows.max())
            parts.append(f"rows run per sample {low}" + (f"-{high}" if high != low else ""))
        if self.deepshap_gap is not None:
            parts.append(f"largest |deepshap_gap| {largest(self.deepshap_gap):.3g}")
        return "ShapleyEstimate(" + ", ".join(parts) + ")"

    def explanation(self, feature_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None) -> Any:
        """A ``shap.Explanation`` of the estimates, with ``error_std`` set to the standard errors
        (players ``"steps"`` and ``"features"`` and player masks; ``"cells"``: per input)."""
        try:
            import shap
        except ImportError as error:
            raise ImportError("explanation() returns a shap.Explanation and needs shap: pip install 'rnnshap[shap]'") from error
        if isinstance(self.values, list):
            return [self._one(shap, v, s, None, output_names) for v, s in zip(self.values, self.stderr, strict=True)]
        names = feature_names
        if names is None and self.players != "cells":
            prefix = {"steps": "t", "windows": "w", "features": "f"}.get(self.players, "player ")
            names = [f"{prefix}{i}" for i in range(self.n_players)]
        return self._one(shap, self.values, self.stderr, names, output_names)

    def _one(
        self, shap: Any, values: np.ndarray, stderr: np.ndarray, names: Sequence[str] | None, output_names: Sequence[str] | None
    ) -> Any:
        return shap.Explanation(
            values=values,
            base_values=self.base_values,
            error_std=stderr,
            feature_names=None if names is None else list(names),
            output_names=None if output_names is None else list(output_names),
        )


def shrink(values: np.ndarray, stderr: np.ndarray, deepshap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empirical-Bayes blend of DeepSHAP and the unbiased estimate, ``(n, P, k)`` arrays.

    Per sample and output, with g = values − deepshap, s = Σ_players stderr², ν = Σ_players deepshap²: the
    gap's true size τ²ν is estimated from the whole call, τ² = max(0, mean over (sample, output) of
    (‖g‖² − s) / ν), and the weight w = τ²ν / (τ²ν + s) (1 where s = 0: the values are exact) trusts the
    estimate where its noise is small against the gap. Returns ``deepshap + w·g`` (which adds up as both
    do: g sums to 0 over the players), the error estimate √(w²s + (1 − w)²‖g‖²) per sample and output, and w.
    """
    gap = values - deepshap
    noise = (stderr**2).sum(1)  # (n, k)
    size = (deepshap**2).sum(1)
    gap2 = (gap**2).sum(1)
    finite = np.isfinite(noise) & (size > 0)
    tau2 = max(0.0, float(np.mean((gap2[finite] - noise[finite]) / size[finite]))) if finite.any() else 0.0
    signal = tau2 * size
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(noise == 0, 1.0, signal / (signal + noise))
    weight = np.where(np.isfinite(noise), weight, 0.0)
    shrunk = deepshap + weight[:, None, :] * gap
    rmse = np.sqrt(np.where(np.isfinite(noise), weight**2 * noise, 0.0) + (1 - weight) ** 2 * gap2)
    return shrunk, rmse, weight


def shapley_values(
    view: ModelView,
    X: Any,
    players: Any = "steps",
    budget: int | None = None,
    *,
    tol: float | None = None,
    outputs: Sequence[Any] | None = None,
    random_state: Any = None,
    batch_size: int,
    progress: bool | None = None,
    prune: float | None = None,
    time_axis: Any = None,
    windows: int | None = None,
) -> ShapleyEstimate:
    """See :meth:`rnnshap.DeepExplainer.shapley_values`."""
    if prune is not None:
        if windows is not None:
            raise InputError("prune= groups the oldest single steps; it does not combine with windows=")
        return _pruned(view, X, players, budget, tol=tol, outputs=outputs, random_state=random_state,
                       batch_size=batch_size, progress=progress, prune=prune, time_axis=time_axis)  # fmt: skip
    plan = view.plan(players, time_axis, windows)
    x, native = view.convert(X)
    n = int(x[0].shape[0])
    B = int(view.background[0].shape[0])
    P = plan.count
    n_outputs = int(view.background_outputs.shape[1])
    chosen = outputs is not None
    columns = _columns(view, outputs, n, n_outputs)
    budget = _checked_budget(budget, tol, batch_size, P, B)
    game = Game(view.forward, x, view.background, view.background_outputs, plan, columns)
    k = columns.shape[1]
    # DeepSHAP's per-pair values serve as the control variate where they describe the same game:
    # the entries that follow x are DeepSHAP's context inputs, and the budget covers their pass
    # (3 rows per pair) and two antithetic walk pairs besides
    control_rows = 3 * B
    follows_same = all((ids is None) == (not attributed) for ids, attributed in zip(plan.ids, view.attributed, strict=True))
    exhaustive = enumeration_rows(P, B, game.empty_follows_x)
    background_share = 0 if game.empty_follows_x else -(-B // min(n, GROUP))  # f(r) rows, once per group
    if exhaustive <= budget:  # exact; DeepSHAP's pass too where the budget covers both
        use_deepshap = exhaustive + control_rows <= budget
    else:
        use_deepshap = budget >= control_rows + 1 + (B if game.empty_follows_x else background_share) + 4 * max(P - 1, 1)
    use_deepshap = use_deepshap and view.deepshap is not None and follows_same
    enumerated = exhaustive <= budget
    means: list[np.ndarray] = []

    def pair_values(start: int, stop: int) -> np.ndarray:
        """DeepSHAP's per-pair values of samples [start, stop), (m, B, P, k); their means kept."""
        assert view.deepshap is not None
        values = view.deepshap([a[start:stop] for a in native], columns[start:stop], plan, int(batch_size))
        means.append(values.mean(1))
        return values

    result = estimate(
        game,
        int(budget) - (control_rows if use_deepshap and enumerated else 0),
        tol=tol,
        random_state=random_state,
        batch_size=int(batch_size),
        progress=progress,
        control=pair_values if use_deepshap and not enumerated else None,
        control_rows=control_rows if use_deepshap and not enumerated else 0,
    )
    if use_deepshap and enumerated:
        for start in range(0, n, GROUP):
            pair_values(start, min(start + GROUP, n))
        result.n_evals = result.n_evals + control_rows
    deepshap = np.concatenate(means) if means else None  # (n, P, k)

    def shaped(a: np.ndarray | None) -> Any:
        if a is None:
            return None
        return _shape(a, plan, view, chosen, k)

    values = shaped(result.values)
    gap = None if deepshap is None else shaped(result.values - deepshap)
    shrunk = rmse = weight = None
    if deepshap is not None:
        shrunk, rmse, weight = shrink(result.values, result.stderr, deepshap)
    base_shape = (k,) if chosen else view.output_shape
    return ShapleyEstimate(
        method="shapley",
        background=stated("ShapleyExplainer", B, True),
        values=values,
        stderr=shaped(result.stderr),
        base_values=result.base_values.reshape(n, *base_shape),
        outputs=result.outputs.reshape(n, *base_shape),
        n_evals=result.n_evals,
        exact=result.exact,
        deepshap=shaped(deepshap),
        deepshap_gap=gap,
        players=plan.kind,
        n_players=P,
        walk_pairs=result.units,
        shrunk=shaped(shrunk),
        shrunk_rmse=None if rmse is None else rmse.reshape(n, *base_shape),
        shrink_weight=None if weight is None else weight.reshape(n, *base_shape),
    )


def _columns(view: ModelView, outputs: Sequence[Any] | None, n: int, n_outputs: int) -> np.ndarray:
    """The output columns each of the ``n`` samples explains, (n, k): those ``outputs`` selects, else all."""
    if outputs is not None:
        assert view.select is not None
        return np.broadcast_to(view.select(outputs), (n, len(outputs))).copy()
    return np.broadcast_to(np.arange(n_outputs, dtype=np.int64), (n, n_outputs)).copy()


def _checked_budget(budget: int | None, tol: float | None, batch_size: int, P: int, B: int) -> int:
    """``budget`` (by default :func:`default_budget` of ``P`` players and ``B`` background rows), with ``budget``,
    ``tol`` and ``batch_size`` checked."""
    if budget is None:
        budget = default_budget(P, B)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise InputError(f"budget must be an integer number of rows per sample, not {budget!r}")
    if tol is not None and not tol > 0:
        raise InputError(f"tol must be positive, got {tol}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    return budget


def _shape(a: np.ndarray, plan: Players, view: ModelView, chosen: bool, k: int) -> Any:
    """(n, P, k) → (n, P, *outputs), or per input (n, *shape, *outputs) for players "cells"."""
    n = a.shape[0]
    outputs: tuple[int, ...] = (k,) if chosen else view.output_shape
    if plan.kind != "cells":
        return a.reshape(n, plan.count, *outputs)
    per_input = []
    for ids, b in zip(plan.ids, view.background, strict=True):
        shape = tuple(b.shape[1:])
        if ids is None:
            per_input.append(np.zeros((n, *shape, *outputs)))
        else:
            per_input.append(a[:, ids.reshape(-1)].reshape(n, *shape, *outputs))
    return per_input if view.multi_input else per_input[0]


class ValueTable:
    """v(S) of one explained sample for every output, evaluated in batches of rows and kept by coalition."""

    def __init__(self, view: ModelView, plan: Players, x: list[np.ndarray], columns: np.ndarray, batch_size: int) -> None:
        self.view, self.plan, self.x, self.columns = view, plan, x, columns
        self.batch_size = max(1, int(batch_size))
        self.known: dict[bytes, np.ndarray] = {}
        #: rows run through the model's forward so far
        self.rows = 0

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """``coalitions`` (m, P) bool → (m, k): v(S) of each, for every explained output."""
        coalitions = np.asarray(coalitions, dtype=bool)
        keys = [c.tobytes() for c in coalitions]
        missing = sorted({key: c for key, c in zip(keys, coalitions, strict=True) if key not in self.known}.items())
        if missing:
            masks = np.stack([c for _, c in missing])
            for key, value in zip((k for k, _ in missing), self._evaluate(masks), strict=True):
                self.known[key] = value
        return np.stack([self.known[key] for key in keys])

    def _evaluate(self, masks: np.ndarray) -> np.ndarray:
        background = self.view.background
        B = int(background[0].shape[0])
        per_chunk = max(1, self.batch_size // B)
        out = np.empty((masks.shape[0], self.columns.shape[0]))
        for start in range(0, masks.shape[0], per_chunk):
            chunk = masks[start : start + per_chunk]
            m = chunk.shape[0]
            rows = self.plan.coalition_rows(
                np.repeat(chunk, B, axis=0), self.x, [np.tile(b, (m,) + (1,) * (b.ndim - 1)) for b in background]
            )
            outputs = self.view.forward(rows)[:, self.columns]  # (m·B, k)
            out[start : start + m] = outputs.reshape(m, B, -1).mean(1)
            self.rows += m * B
        return out


def pruning_point(table: Any, steps: int, scale: np.ndarray, prune: float) -> tuple[int, np.ndarray]:
    """TimeSHAP's temporal coalition pruning on one sample's game: the most old steps that can be one
    player. For t = T − 1, T − 2, ...: the two-player game of the old steps [0, t) and the recent ones
    [t, T) gives the old block the Shapley value ½[(v(old) − v(∅)) + (v(N) − v(recent))]; the first t
    (from the end) where that is at most ``prune`` × scale for every output is the pruning point.
    Returns t (0: nothing grouped) and the old block's two-player value there."""
    ids = np.arange(steps)
    empty, full = table(np.stack([np.zeros(steps, dtype=bool), np.ones(steps, dtype=bool)]))
    for t in range(steps - 1, 0, -1):
        old = ids < t
        v_old, v_recent = table(np.stack([old, ~old]))
        block = 0.5 * ((v_old - empty) + (full - v_recent))
        if (np.abs(block) <= prune * scale).all():
            return t, block
    return 0, np.zeros_like(empty)


def _pruned(
    view: ModelView, X: Any, players: Any, budget: int | None, *, prune: float, time_axis: Any = None, **options: Any
) -> ShapleyEstimate:
    """``players="steps"`` with the oldest steps grouped into one player where their joint contribution
    is below ``prune`` × max(1, |f(x) − v(∅)|) (TimeSHAP): each sample estimated on its own grouping, the
    pruning's rows counted in its budget; values shaped as for steps, the group's in ``pruned``."""
    if not (isinstance(players, str) and players == "steps"):
        raise InputError(f"prune= groups old time steps: it needs players='steps', not {players!r}")
    if isinstance(prune, bool) or not isinstance(prune, (int, float, np.floating)) or not prune >= 0:
        raise InputError(f"prune must be a non-negative tolerance (a share of |f(x) - base value|), got {prune!r}")
    plan = view.plan("steps", time_axis)
    x, _ = view.convert(X)
    n = int(x[0].shape[0])
    B = int(view.background[0].shape[0])
    T = plan.count
    outputs = options.pop("outputs")
    if outputs is not None:
        assert view.select is not None
        columns = np.asarray(view.select(outputs), dtype=np.int64).reshape(-1)
    else:
        columns = np.arange(int(view.background_outputs.shape[1]), dtype=np.int64)
    if budget is None:
        budget = default_budget(T, B)
    parts: list[ShapleyEstimate] = []
    points = np.zeros(n, dtype=np.int64)
    spent = np.zeros(n, dtype=np.int64)
    for i in range(n):
        table = ValueTable(view, plan, [a[i] for a in x], columns, int(options["batch_size"]))
        empty, full = table(np.stack([np.zeros(T, dtype=bool), np.ones(T, dtype=bool)]))
        points[i], _ = pruning_point(table, T, np.maximum(1.0, np.abs(full - empty)), float(prune))
        spent[i] = table.rows
        first = 1 if points[i] else 0
        mask = [None if ids is None else np.where(ids < points[i], 0, ids - points[i] + first) for ids in plan.ids]
        one = [a[i : i + 1] for a in x]
        parts.append(shapley_values(view, one if view.multi_input else one[0], mask if view.multi_input else mask[0],
                                    int(budget) - int(spent[i]), outputs=outputs, **options))  # fmt: skip

    k = columns.size
    out_shape: tuple[int, ...] = (k,) if outputs is not None else view.output_shape

    def per_step(field: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if getattr(parts[0], field) is None:
            return None, None
        steps = np.zeros((n, T, k))
        group = np.zeros((n, k))
        for i, part in enumerate(parts):
            a = np.asarray(getattr(part, field), dtype=np.float64).reshape(part.n_players, k)
            offset = 1 if points[i] else 0
            steps[i, points[i] :] = a[offset:]
            group[i] = a[0] if points[i] else 0.0
        return steps.reshape(n, T, *out_shape), group.reshape(n, *out_shape)

    values, pruned = per_step("values")
    stderr, pruned_stderr = per_step("stderr")
    deepshap, _ = per_step("deepshap")
    gap, _ = per_step("deepshap_gap")
    shrunk, _ = per_step("shrunk")
    assert values is not None and stderr is not None
    return ShapleyEstimate(
        method="shapley",
        background=parts[0].background,
        values=values,
        stderr=stderr,
        base_values=np.concatenate([p.base_values for p in parts]),
        outputs=np.concatenate([p.outputs for p in parts]),
        n_evals=np.concatenate([p.n_evals for p in parts]) + spent,
        exact=np.concatenate([p.exact for p in parts]),
        deepshap=deepshap,
        deepshap_gap=gap,
        players="steps",
        n_players=T,
        walk_pairs=np.concatenate([p.walk_pairs for p in parts]),
        shrunk=shrunk,
        shrunk_rmse=None if parts[0].shrunk_rmse is None else np.concatenate([p.shrunk_rmse for p in parts]),  # type: ignore[misc]
        shrink_weight=None if parts[0].shrink_weight is None else np.concatenate([p.shrink_weight for p in parts]),  # type: ignore[misc]
        pruned_steps=points,
        pruned=pruned,
        pruned_stderr=pruned_stderr,
    )
