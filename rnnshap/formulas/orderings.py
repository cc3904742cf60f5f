r"""The orderings' rule, written once: which position decides each rank of a sort, a top-k or a pick.

A sorted value, a top-k value, a k-th value, a median, or a picked index (``argmax``, ``topk``'s
indices) changes between the reference and the input only because values moved past one another.
Its change is credited to one position along the ordered axis, the one that *decided* the rank
(:func:`deciding`); a picked index whose rank no position crossed (ties ordered differently on the two
sides) is credited to the position that moved most (:func:`index_credit`). The engines attach the
credits (the PyTorch engine by a custom autograd Function that scatters them, the Keras engine by a
gather whose gradient does), so the math is here once.

Each function takes the array namespace ``xp`` first (:mod:`rnnshap.formulas`) and arrays carrying no
gradient; positions are along the last axis.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .namespace import Array, Ops
from .pairs import midpoint, usable_quotient


def nearest(xp: Ops, candidates: Array, key: Array) -> Array:
    """For every rank (``candidates``: ``(..., k, n)``, the positions that may take its credit): the
    candidate with the least ``key`` (``(..., n)``), the first position among equals."""
    keyed = xp.where(candidates, key[..., None, :], xp.scalar(math.inf, key))
    return xp.argmin(keyed, -1)


def position_ranks(xp: Ops, order: Array, n: int) -> Array:
    """The 0-based rank of every position of an axis of ``n`` given ``order`` (``(..., k)``: the positions
    at ranks 0, 1, ..., k−1); ``k`` for the positions ranked below those."""
    k = order.shape[-1]
    return xp.put_last(order, xp.broadcast_to(xp.arange(k, order), xp.shape(order)), n, k)


def _usable(xp: Ops, delta: Array) -> Array:
    return (delta != 0) & xp.isfinite(delta)


def deciding(xp: Ops, x: Array, r: Array, order_x: Array, order_r: Array, largest: bool) -> tuple[Array, Array, Array, Array]:
    r"""The position that decides each rank of an ordering along the last axis, and ``x − r`` there.

    ``order_x`` (``(..., k)``) lists the positions of ``x`` at ranks 0..k−1 from the largest (the
    smallest: ``largest=False``), as the operation orders them, ties included; ``order_r`` those of
    ``r``. With :math:`y_j` and :math:`y_{r,j}` the values at rank ``j``:

    - where the value rose (:math:`y_j > y_{r,j}`), a position with :math:`x_i \ge y_j` and
      :math:`r_i \le y_{r,j}` (by rank, ties as the operation orders them: ranked on the value's
      side of rank ``j`` in ``x`` and on the other side in ``r``; there are ``j + 1`` and ``n − j``
      of those, so one is both) rose past the rank, by at least the value's change. The credit goes
      to the one nearest the rank in ``x`` (the least :math:`x_i`). At the first rank of a maximum
      this is ``x``'s maximum, as in shap's max-pool rule, and at rank ``j`` the position now at
      rank ``j`` unless that one was past it in ``r`` already.
    - where it fell, the same with the sides swapped: the one nearest the rank in ``r``.
    - where it did not change (an index may still move), the position on ``x``'s side.
    - either one where its :math:`\Delta x` is 0 or not finite, and the other can take the credit.

    The choice depends on the values only, not on the direction the operation orders in, so a sort
    in descending order and the reverse of an ascending one get the same values.

    Returns (deciding positions, their ``x − r``, :math:`y_j`, :math:`y_{r,j}`), each ``(..., k)``.
    """
    n, k = x.shape[-1], order_x.shape[-1]
    y, y_ref = xp.take_last(x, order_x), xp.take_last(r, order_r)
    if k == 0:
        return order_x, y - y_ref, y, y_ref
    rank_x, rank_r = (position_ranks(xp, order, n)[..., None, :] for order in (order_x, order_r))
    j = xp.arange(k, x)[:, None]
    x_side = (rank_x <= j) & (rank_r >= j)  # (..., k, n): on the value's side of rank j in x, not in r
    r_side = (rank_r <= j) & (rank_x >= j)
    up, down = (x_side, r_side) if largest else (r_side, x_side)
    rose_at, fell_at = nearest(xp, up, x), nearest(xp, down, r)
    rose, fell = y > y_ref, y < y_ref
    first_x, first_r = (rose_at, fell_at) if largest else (fell_at, rose_at)  # where the value did not change
    primary = xp.where(rose, rose_at, xp.where(fell, fell_at, first_x))
    secondary = xp.where(rose, fell_at, xp.where(fell, rose_at, first_r))
    delta_p, delta_s = (xp.take_last(x, at) - xp.take_last(r, at) for at in (primary, secondary))
    at_p = _usable(xp, delta_p) | ~_usable(xp, delta_s)
    return xp.where(at_p, primary, secondary), xp.where(at_p, delta_p, delta_s), y, y_ref


def index_credit(xp: Ops, x: Array, r: Array, deciding: Array, delta: Array, moved: Array) -> tuple[Array, Array]:
    r"""Where a picked index's change ``moved`` (:math:`i_x - i_r`, float64) goes, and its multiplier there:
    the position that decided its rank (``deciding``, with ``delta`` its :math:`\Delta x`: :func:`deciding`),
    with multiplier ``moved / delta``. An index can move while no position moves past its rank (equal
    values that the operation orders differently on the two sides: topk's order of ties depends on the
    other values); then the position of the row that moved most takes the credit. Nothing where the index
    did not move. Returns (positions, multipliers)."""
    stuck = (moved != 0) & ~_usable(xp, delta)
    if not xp.surely_none(stuck):
        change = xp.abs(x - r)
        change = xp.where(xp.isfinite(change), change, xp.zeros_like(change))
        most = xp.broadcast_to(xp.argmax(change, -1)[..., None], xp.shape(deciding))
        deciding = xp.where(stuck, most, deciding)
        delta = xp.where(stuck, xp.take_last(x, deciding) - xp.take_last(r, deciding), delta)
    return deciding, usable_quotient(xp, moved, xp.to_float64(delta))


#: a selection ``select(h, i)`` from ``h`` (None: from a constant table, or ``one_hot``) by the integer indices ``i``
Select = Callable[[Any, Array], Array]


def selector_change(xp: Ops, select: Select, h: Array | None, h_r: Array | None, index_x: Array, index_r: Array) -> Array:
    r"""The selector's part of a selection :math:`s(h, i)` by picked indices (``take_along_axis``, a gather, an
    embedding of them), the Shapley rule on the product of the selector and :math:`h`:

    .. math:: s(h_x, i_x) - s(h_r, i_r) = \tfrac12\,[s(\Delta h, i_x) + s(\Delta h, i_r)]
        + [s(\bar h, i_x) - s(\bar h, i_r)], \qquad \bar h = \tfrac12 (h_x + h_r),

    the second term (:math:`s(i_x) - s(i_r)` for a selection from a constant, ``h`` None). It goes to the indices'
    handle divided by :math:`i_x - i_r` (:func:`rnnshap.formulas.pairs.inverse_delta`), and from there to the
    position that decided the pick (:func:`index_credit`); the first term is :func:`selected_share`'s."""
    mean = None if h is None or h_r is None else midpoint(xp, h, h_r)
    return select(mean, index_x) - select(mean, index_r)


def selected_share(xp: Ops, select: Select, h: Array, index_x: Array, index_r: Array) -> Array:
    """The selected tensor's part of a selection by picked indices (:func:`selector_change`): the mean of its
    two selections, linear in ``h`` (applied to Δh, or differentiated for h's multiplier)."""
    return (select(h, index_x) + select(h, index_r)) / 2


__all__ = ["Select", "deciding", "index_credit", "nearest", "position_ranks", "selected_share", "selector_change"]
