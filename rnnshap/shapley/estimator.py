"""Shapley values of the game DeepSHAP approximates, by enumeration or by antithetic permutation walks.

The game, for an explained sample x, a background of B rows r and players 1..P:

    v(S) = mean over r of f(x on the players in S, r elsewhere)

so that v(N) = f(x) and v(∅) = E[f(background)], and the Shapley values sum to f(x) − E[f].

**Enumeration** evaluates every coalition against every background row (2^P·B rows, the empty and full coalitions included)
and applies the definition: φ_i = Σ_{S ∌ i} |S|!(P−|S|−1)!/P! · (v(S ∪ i) − v(S)). It is exact, and
it is chosen whenever the budget covers it.

**Sampling** runs permutation walks: a walk adds the players one at a time in a random order, all
against one background row r, and each player's marginal contribution v_r(S ∪ i) − v_r(S) is a
sample of its Shapley value in the game of that one reference. A unit is an antithetic pair (an
order and its reverse, the same r), which is exact for games with at most pairwise interactions,
so the noise left comes from interactions of three players and more within each reference's game.
A walk costs P − 1 rows (v_r(∅) = f(r) and v_r(N) = f(x) are run once).

**Orders from a design.** Units come in blocks of three whose orders are a fixed design
(:func:`_design`) relabelled by one random permutation: across the three orders and their
reverses, each player of every triple is the middle one as evenly as can be found, which balances
the three-player interactions that a single pair leaves. Each order alone is uniformly random, so
the estimate stays unbiased. Once the budget gives every reference three units, each reference
runs one whole block (the per-reference games' interactions are what dominates); below that,
consecutive units form the blocks and the references are cycled evenly (a fresh random order each
cycle).

**Control variate.** Each unit's estimate subtracts a per-reference value c_r whose mean over the
whole background is known, and the mean is added back:

    φ̂ = mean over units u of (walk pair_u − c_{r_u}) + mean over r of c_r

which is unbiased for any c. With c_r = DeepSHAP's values for the pair (x, r), summed per player
(one backward pass per pair, :class:`rnnshap.DeepExplainer`), every unit sums to zero and the
estimate removes the variance of DeepSHAP's part between references. Without a backward pass
(:class:`rnnshap.ShapleyExplainer`) c_r splits f(x) − f(r) evenly over the players. Either makes
every estimate efficient: its values sum to f(x) − E[f] exactly, whatever the references drawn.

**Standard errors** (:class:`_Stats`): sd/√U over the units (a conservative bound: the references
are drawn without replacement), until every reference has two units or more; from then on, from
the spread within references. Once every reference has a unit each weighs the same (the mean of
its units). ``tol`` stops a sample after the round (a cycle of
references) where every standard error has fallen to tol × max(1, |f(x) − E[f]|).

Every random choice comes from ``random_state`` and the sample's position, before any row is
evaluated; rows are evaluated in chunks of 256 rows (fewer where ``batch_size`` is smaller) and each lands
in its own slot, so the values are bit-identical for every ``batch_size`` of at least 256 (and for
smaller ones too where the model's kernels round each row the same in batches of any size).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..progress import progress_bar
from .players import Players

#: rows per forward pass: the values are bit-identical for every batch_size of at least this
CHUNK = 256
#: samples estimated together (their rows share forward passes): bounds the memory of a call
GROUP = 32

#: forward(rows per input, each (m, *shape)) → (m, n_outputs) float64
Forward = Callable[[list[np.ndarray]], np.ndarray]


@dataclass
class Game:
    """The game of every explained sample, and what is known of it without evaluating rows."""

    forward: Forward
    #: per input, (n, *shape): the explained samples
    x: list[np.ndarray]
    #: per input, (B, *shape)
    background: list[np.ndarray]
    #: (B, n_outputs): f on the background rows, usable as v_r(∅) where no entry follows x
    background_outputs: np.ndarray
    players: Players
    #: (n, k): the flat output indices explained per sample
    columns: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.x[0].shape[0])

    @property
    def references(self) -> int:
        return int(self.background[0].shape[0])

    @property
    def empty_follows_x(self) -> bool:
        """Whether some entries always take x's values (context inputs), so that v_r(∅) ≠ f(r)."""
        return any(ids is None for ids in self.players.ids)


@dataclass
class Result:
    """Estimates of one call, float64, before shaping: ``(n, P, k)`` values and standard errors."""

    values: np.ndarray
    stderr: np.ndarray
    base_values: np.ndarray  # (n, k)
    outputs: np.ndarray  # (n, k): f(x)
    n_evals: np.ndarray  # (n,) rows per sample
    exact: np.ndarray  # (n,) bool
    units: np.ndarray  # (n,) antithetic walk pairs run (0 where enumerated)
    control_mean: np.ndarray | None = None  # (n, P, k): the mean over the background of the control values given


def enumeration_rows(players: int, references: int, empty_follows_x: bool) -> int:
    """Rows that enumerating every coalition against every background row costs per sample."""
    return 2**players * references


def default_budget(players: int, references: int) -> int:
    """16× DeepSHAP's cost (3 rows per sample-reference pair: 48 per background row), and at least
    the rows of 20 antithetic walk pairs."""
    return max(48 * references, 40 * max(players - 1, 1) + 1)


def estimate(
    game: Game,
    budget: int,
    *,
    tol: float | None,
    random_state: Any,
    batch_size: int,
    progress: bool | None,
    control: Callable[[int, int], np.ndarray] | None = None,
    control_rows: int = 0,
) -> Result:
    """Shapley values of ``game`` for every sample, with at most ``budget`` rows per sample.

    ``control(start, stop)``: (stop − start, B, P, k) per-reference values of samples [start,
    stop) (DeepSHAP's), costing ``control_rows`` of the budget per sample; None: f(x) − v_r(∅)
    split evenly over the players. The background's own rows run once per group of samples, and
    count as their share per sample."""
    n, B, P = game.samples, game.references, game.players.count
    background_share = 0 if game.empty_follows_x else -(-B // min(n, GROUP))
    fixed = 1 + (B if game.empty_follows_x else background_share) + control_rows
    minimum = max(P + 1, fixed + P - 1)
    if budget < minimum:
        raise InputError(
            f"budget={budget} is below one permutation walk: {P} players need {minimum} rows per sample here "
            f"(the walk's {P - 1} coalitions, f(x)"
            + (
                f", v(∅) against each of the {B} references (context follows the sample)"
                if game.empty_follows_x
                else f", the background's {B} rows shared by {min(n, GROUP)} sample(s)"
            )
            + (f" and {control_rows} for DeepSHAP's pass" if control is not None else "")
            + "). Raise the budget or use fewer players (players='features', or a player mask that groups entries)."
        )
    exhaustive = enumeration_rows(P, B, game.empty_follows_x)
    if exhaustive <= budget:
        return _enumerate(game, batch_size, progress, exhaustive)
    seeds = np.random.SeedSequence(_entropy(random_state)).spawn(n)
    parts = []
    starts = list(range(0, n, GROUP))  # a fixed number of samples at a time bounds memory (not batch_size: bit-identical values)
    for start in progress_bar(starts, progress if len(starts) > 1 else False, desc="rnnshap shapley", unit="group"):
        chosen = slice(start, start + GROUP)
        rows = [x[chosen] for x in game.x]
        part = Game(game.forward, rows, game.background, game.background_outputs, game.players, game.columns[chosen])
        values = None if control is None else control(start, min(start + GROUP, n))
        shown = progress if len(starts) == 1 else False
        parts.append(_sample(part, budget, fixed, seeds[chosen], tol, batch_size, shown, values))
    joined = {
        name: None if getattr(parts[0], name) is None else np.concatenate([getattr(r, name) for r in parts])
        for name in Result.__dataclass_fields__
    }
    return Result(**joined)  # type: ignore[arg-type]


def _sample(
    game: Game,
    budget: int,
    fixed: int,
    seeds: Sequence[np.random.SeedSequence],
    tol: float | None,
    batch_size: int,
    progress: bool | None,
    control: np.ndarray | None,
) -> Result:
    """Antithetic walks for the samples of ``game`` (see the module): ``fixed`` rows per sample
    are spent outside the walks."""
    n, B, P = game.samples, game.references, game.players.count
    rows_n = np.arange(n)[:, None]
    k = game.columns.shape[1]
    walk_rows = max(P - 1, 0)
    walks = (budget - fixed) // walk_rows if walk_rows else 2
    units = walks // 2
    single = units == 0  # room for one walk only: no reverse, no standard error
    if single:
        units = 1
    design = _design(P)
    m = 1 if design is None or single else len(design)
    blocks = units // (m * B) if m > 1 else 0  # cycles of per-reference design blocks
    cycle = m * B if blocks else B
    rounds = [cycle] * (units // cycle) + ([units % cycle] if units % cycle else [])  # tol may stop a sample after each
    orders, refs = _plan(seeds, units, P, B, design, blocks)
    stats = _Stats(n, B, P, k)
    active = np.arange(n)
    scale = np.ones((n, k))
    c: np.ndarray | None = control
    base = fx_k = np.zeros((n, k))
    known: tuple[np.ndarray, np.ndarray] | None = None  # f(x) and v_r(∅), once the first round has run them
    for round_size in progress_bar(rounds, progress and len(rounds) > 1, desc="rnnshap shapley", unit="round", total=len(rounds)):
        if active.size == 0:
            break
        start = int(stats.done[active[0]])
        stop = start + round_size
        # f(x) and v_r(∅) run in the first round's forward passes, beside the walks' rows, so that a
        # player the model ignores changes no output by a rounding of another batch size's kernels
        head = _head(game) if start == 0 else None
        estimates, head_out = _walks(
            game, active, orders[active, start:stop], refs[active, start:stop], head, known, batch_size, single
        )
        if head_out is not None:
            known = fx, empty = head_out
            base = empty.mean(1)[rows_n, game.columns]  # (n, k)
            fx_k = fx[rows_n, game.columns]
            scale = np.maximum(1.0, np.abs(fx_k - base))
            gaps = fx_k[:, None, :] - np.take_along_axis(empty, game.columns[:, None, :], axis=2)  # (n, B, k): f(x) − v_r(∅)
            if c is None:  # f(x) − v_r(∅) split evenly over the players
                c = np.broadcast_to((gaps / P)[:, :, None, :], (n, B, P, k))
            else:
                # what DeepSHAP's values of a pair miss of the walk's total (rounding; or, where the reference
                # side reads the sample's masks, f(r) read so) is split in proportion to their sizes: still a
                # known mean, every unit efficient, and a player DeepSHAP gives exactly 0 keeps 0
                size = np.abs(c)
                total = size.sum(2, keepdims=True)
                share = np.where(total > 0, size / np.where(total > 0, total, 1.0), 1.0 / P)
                c = c + (gaps - c.sum(2))[:, :, None, :] * share
        assert c is not None
        stats.add(active, refs[active, start:stop], estimates - c[active[:, None], refs[active, start:stop]])
        if tol is not None:
            _, se = stats.mean_and_stderr()
            finished = (se[active] <= tol * scale[active, None, :]).all(axis=(1, 2))
            active = active[~finished]
    assert c is not None
    mean, stderr = stats.mean_and_stderr()
    if single:
        stderr = np.full_like(mean, np.inf)
    n_evals = fixed + stats.done * (1 if single else 2) * walk_rows
    controls = None if control is None else control.mean(1)
    return Result(mean + c.mean(1), stderr, base, fx_k, n_evals, np.zeros(n, dtype=bool), stats.done, controls)


class _Stats:
    """Per sample and reference: the count, sum and sum of squares of the units' control-variate
    residuals, and from them the estimate and its standard error.

    Once every reference has a unit, each reference weighs the same (the mean of its units), so the
    estimate is the game of the whole background; once every reference has two, the standard error
    comes from the spread within references (pooled): the variance between references no longer
    enters. Before that, sd/√U over the units (conservative: it counts the variance between
    references, which the even cycling removes in part). A pooled spread from the few references
    that have two units misses the players that matter for a few references only (a pixel column
    that is blank in most digits), so it is not used."""

    def __init__(self, n: int, B: int, P: int, k: int) -> None:
        self.count = np.zeros((n, B), dtype=np.int64)
        self.sum = np.zeros((n, B, P, k))
        self.squares = np.zeros((n, B, P, k))
        self.done = np.zeros(n, dtype=np.int64)

    def add(self, samples: np.ndarray, refs: np.ndarray, residuals: np.ndarray) -> None:
        for row, (sample, sample_refs) in enumerate(zip(samples, refs, strict=True)):
            np.add.at(self.count[sample], sample_refs, 1)
            np.add.at(self.sum[sample], sample_refs, residuals[row])
            np.add.at(self.squares[sample], sample_refs, residuals[row] ** 2)
        self.done[samples] += refs.shape[1]

    def mean_and_stderr(self) -> tuple[np.ndarray, np.ndarray]:
        n, B = self.count.shape
        mean = np.zeros(self.sum.shape[:1] + self.sum.shape[2:])
        stderr = np.full_like(mean, np.inf)
        for i in range(n):
            count = self.count[i]
            units = int(self.done[i])
            if units == 0:
                continue
            if (count > 0).all():
                per_reference = self.sum[i] / count[:, None, None]
                mean[i] = per_reference.mean(0)
                if (count >= 2).all():
                    within = (self.squares[i] - count[:, None, None] * per_reference**2).sum(0)
                    variance = np.maximum(within, 0) / int((count - 1).sum())
                    stderr[i] = np.sqrt(variance * (1.0 / count).sum() / B**2)
                    continue
            else:
                mean[i] = self.sum[i].sum(0) / units
            if units >= 2:
                centre = self.sum[i].sum(0) / units
                spread = np.maximum(self.squares[i].sum(0) - units * centre**2, 0) / (units - 1)
                stderr[i] = np.sqrt(spread / units)
        return mean, stderr


def _entropy(random_state: Any) -> Any:
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if random_state is None:
        return None
    if isinstance(random_state, (int, np.integer)) and random_state >= 0:
        return int(random_state)
    raise InputError(f"random_state must be a non-negative integer, a numpy Generator or None, not {random_state!r}")


def _plan(
    seeds: Sequence[np.random.SeedSequence], units: int, P: int, B: int, design: np.ndarray | None, blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the order of each unit's forward walk (n, U, P) and its reference (n, U).

    The orders are the ``design``'s (:func:`_design`), the players relabelled by a random
    permutation per block of units, so that each order alone is uniformly random (the estimate
    stays unbiased) and a block balances the interactions of three players. The first ``blocks``
    cycles give every reference one block of its own (m·B units per cycle: reference rho[q] runs
    the m design orders, one relabelling); the units after them run one design block after another
    over the references cycled evenly (a fresh random order each cycle). Without a design the
    orders are drawn independently."""
    orders = np.empty((len(seeds), units, P), dtype=np.int64)
    refs = np.empty((len(seeds), units), dtype=np.int64)
    m = 1 if design is None else len(design)
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        start = 0
        for _ in range(blocks):
            assert design is not None
            rho = rng.permutation(B)
            relabel = rng.permuted(np.broadcast_to(np.arange(P), (B, P)), axis=1)  # one per reference
            for j in range(m):
                orders[i, start + j * B : start + (j + 1) * B] = relabel[:, design[j]]
                refs[i, start + j * B : start + (j + 1) * B] = rho
            start += m * B
        rest = units - start
        if rest == 0:
            continue
        refs[i, start:] = np.concatenate([rng.permutation(B) for _ in range(-(-rest // B))])[:rest]
        if design is None:
            orders[i, start:] = rng.permuted(np.broadcast_to(np.arange(P), (rest, P)), axis=1)
        else:
            unit = np.arange(rest)
            relabel = rng.permuted(np.broadcast_to(np.arange(P), (-(-rest // m), P)), axis=1)
            orders[i, start:] = np.take_along_axis(relabel[unit // m], design[unit % m], axis=1)
    return orders, refs


@functools.cache
def _design(P: int) -> np.ndarray | None:
    """Three walk orders of P players chosen so that, over the three (and their reverses), each
    player of every triple is the middle one of the three as evenly as can be found: a block of
    antithetic pairs relabelled by one random permutation is then exact for interactions of up to
    two players (as one pair is) and nearly balanced for those of three, which are what is left of
    the walks' noise. Found by a fixed, seeded annealing search (the same on every machine), for
    3 ≤ P ≤ 24 (None otherwise: orders are drawn independently)."""
    if not 3 <= P <= 24:
        return None
    triples = np.array(list(itertools.combinations(range(P), 3)))
    rng = np.random.default_rng(20261123)

    def imbalance(orders: np.ndarray) -> float:
        positions = np.argsort(orders, axis=1)[:, triples]  # (3, triples, 3)
        middle = np.argsort(positions, axis=2)[:, :, 1]
        counts = np.stack([(middle == a).sum(0) for a in range(3)], 1)
        return float(((counts - 1) ** 2).sum())

    orders = np.stack([rng.permutation(P) for _ in range(3)])
    cost = imbalance(orders)
    best, lowest = orders, cost
    steps = 4000
    for step in range(steps):
        temperature = 2.0 * (1 - step / steps) + 0.01
        row, (a, b) = rng.integers(3), rng.choice(P, 2, replace=False)
        candidate = orders.copy()
        candidate[row, [a, b]] = candidate[row, [b, a]]
        new = imbalance(candidate)
        if new <= cost or rng.random() < math.exp(-(new - cost) / temperature):
            orders, cost = candidate, new
            if cost < lowest:
                best, lowest = orders, cost
    return best


def _walks(
    game: Game,
    samples: np.ndarray,
    orders: np.ndarray,
    refs: np.ndarray,
    head: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    known: tuple[np.ndarray, np.ndarray] | None,
    batch_size: int,
    single: bool,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Antithetic walk pairs (or one forward walk when ``single``): per sample and unit, the mean of
    the two walks' marginal contributions, (s, U, P, k). ``head``: the rows of f(x) and v_r(∅)
    (:func:`_head`), run first in the same forward passes, and returned as (fx, empty); without it,
    ``known`` holds them from an earlier round."""
    s, U, P = orders.shape
    directions = [orders] if single else [orders, orders[:, :, ::-1]]
    D = len(directions)
    # coalition masks of every walk's inner prefixes: (s, U, D, P-1, P)
    ranks = np.stack([np.argsort(o, axis=2) for o in directions], axis=2)  # position of each player
    masks = ranks[:, :, :, None, :] < np.arange(1, P)[:, None]
    row_samples = np.repeat(samples, U * D * (P - 1))
    row_refs = np.repeat(refs, D * (P - 1), axis=1).reshape(-1)
    flat_masks = masks.reshape(-1, P)
    head_rows = 0
    if head is not None:
        head_rows = head[0].shape[0]
        row_samples = np.concatenate([head[0], row_samples])
        flat_masks = np.concatenate([head[1], flat_masks])
        row_refs = np.concatenate([head[2], row_refs])
    outputs = _evaluate(game, row_samples, flat_masks, row_refs, batch_size)
    head_out = _split_head(game, outputs[:head_rows]) if head is not None else None
    ends = head_out if head_out is not None else known
    assert ends is not None
    fx, empty = ends
    k = game.columns.shape[1]
    columns = game.columns[samples]
    chosen = np.take_along_axis(outputs[head_rows:].reshape(s, -1, outputs.shape[1]), columns[:, None, :], axis=2)
    inner_values = chosen.reshape(s, U, D, P - 1, k)
    start = np.take_along_axis(empty[samples], columns[:, None, :], axis=2)  # (s, B, k)
    start = np.take_along_axis(start, refs[:, :, None], axis=1)  # (s, U, k)
    end = fx[samples][np.arange(s)[:, None], columns]  # (s, k)
    path = np.concatenate(
        [
            np.broadcast_to(start[:, :, None, None], (s, U, D, 1, k)),
            inner_values,
            np.broadcast_to(end[:, None, None, None], (s, U, D, 1, k)),
        ],
        axis=3,
    )  # (s, U, D, P+1, k): v along each walk
    steps = np.diff(path, axis=3)  # (s, U, D, P, k): the marginal of the player added at each position
    marginals = np.zeros((s, U, D, P, k))
    np.put_along_axis(marginals, np.stack(directions, axis=2)[..., None], steps, axis=3)
    return marginals.mean(2), head_out


def _head(game: Game) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of f(x) (the full coalition, every sample) and of v_r(∅) (the empty coalition, every
    background row; every sample's where entries follow x): (samples, masks, refs)."""
    n, B, P = game.samples, game.references, game.players.count
    empty_samples = np.repeat(np.arange(n), B) if game.empty_follows_x else np.zeros(B, dtype=np.int64)
    empty_refs = np.tile(np.arange(B), n) if game.empty_follows_x else np.arange(B)
    samples = np.concatenate([np.arange(n), empty_samples])
    masks = np.concatenate([np.ones((n, P), dtype=bool), np.zeros((empty_samples.size, P), dtype=bool)])
    return samples, masks, np.concatenate([np.zeros(n, dtype=np.int64), empty_refs])


def _split_head(game: Game, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fx (n, n_outputs), empty (n, B, n_outputs)) from the outputs of the :func:`_head` rows."""
    n, B = game.samples, game.references
    fx, rest = out[:n], out[n:]
    empty = rest.reshape(n, B, -1) if game.empty_follows_x else np.broadcast_to(rest, (n, B, rest.shape[1]))
    return fx, empty


def _evaluate(game: Game, samples: np.ndarray, masks: np.ndarray, refs: np.ndarray, batch_size: int) -> np.ndarray:
    """f on the rows of coalitions ``masks`` (m, P) of ``samples`` (m,) against background rows
    ``refs`` (m,): (m, n_outputs), in chunks of :data:`CHUNK` rows (fewer where ``batch_size`` is
    smaller): a model's kernels may round a row differently in batches of other sizes, so the chunks
    do not follow ``batch_size`` above it."""
    batch_size = min(batch_size, CHUNK)
    chunks = [
        game.forward(_rows(game, samples[b : b + batch_size], masks[b : b + batch_size], refs[b : b + batch_size]))
        for b in range(0, samples.size, batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, game.background_outputs.shape[1]))


def _rows(game: Game, samples: np.ndarray, masks: np.ndarray, refs: np.ndarray) -> list[np.ndarray]:
    """The model's rows for coalitions ``masks`` (m, P) of ``samples`` (m,) against ``refs`` (m,)."""
    rows = []
    for ids, x, b in zip(game.players.ids, game.x, game.background, strict=True):
        if ids is None:
            rows.append(x[samples].copy())
        else:
            take_x = masks[:, ids]  # (m, *shape)
            rows.append(np.where(take_x, x[samples], b[refs]))
    return rows


def _enumerate(game: Game, batch_size: int, progress: bool | None, rows: int) -> Result:
    """Exact Shapley values from every coalition (the empty and the full one included) against
    every background row, each sample's rows in one stream of forward passes."""
    n, B, P = game.samples, game.references, game.players.count
    k = game.columns.shape[1]
    codes = np.arange(2**P, dtype=np.int64)
    masks = ((codes[:, None] >> np.arange(P)) & 1).astype(bool)  # coalition code → members (bit i: player i)
    v = np.zeros((n, 2**P, k))
    row_masks = np.repeat(masks, B, axis=0)
    row_refs = np.tile(np.arange(B), 2**P)
    for s in progress_bar(list(range(n)), progress, desc="rnnshap shapley", unit="sample", total=n):
        out = _evaluate(game, np.full(row_refs.size, s), row_masks, row_refs, batch_size)
        v[s] = out[:, game.columns[s]].reshape(2**P, B, k).mean(1)
    values = np.zeros((n, P, k))
    sizes = masks.sum(1)
    weights = np.array([math.factorial(z) * math.factorial(P - z - 1) / math.factorial(P) for z in range(P)])
    for i in range(P):
        without = codes[~masks[:, i]]
        values[:, i] = ((v[:, without | (1 << i)] - v[:, without]) * weights[sizes[without]][None, :, None]).sum(1)
    return Result(
        values, np.zeros_like(values), v[:, 0], v[:, -1], np.full(n, rows), np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)
    )
