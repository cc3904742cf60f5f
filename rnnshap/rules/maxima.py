r"""Rules for maxima and orderings: max-pool and max reductions (shap's max-pool rule, :func:`routed_max`), the
values at ranks of a sort, a top-k, a k-th value or a median (:func:`ranked_values`), and the indices such an
operation picks (:func:`picked_index`). Each routes the change of a selected value to the position that decided
it; values that are the same infinity on both sides (masked entries) get multiplier 0.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from ..formulas import orderings, pairs
from ..formulas.torch_ops import TORCH
from ..recurrent.pairs import Side, defers, pair_sides
from .base import OpCall, Rule
from .elementwise import attach, shapley
from .gates import FILLS, Fill

Tensor = torch.Tensor


def _routed_maximum(ctx: Any, grad: Tensor) -> list[Tensor]:
    """Backward of a max selection: each output's change goes to the winning input position."""
    index_x, weight_x, index_r, weight_r, inverse_delta = ctx.saved_tensors
    flat_grad = grad.reshape(index_x.shape)
    # (in place on a tensor of its own: the out-of-place chain's values, one fresh tensor of the input's size in place of
    # four)
    routed = flat_grad.new_zeros(inverse_delta.shape)  # (batched where the gradient is: vmap's rule for new_zeros)
    routed.scatter_add_(-1, index_x, flat_grad * weight_x).scatter_add_(-1, index_r, flat_grad * weight_r)
    return [routed.mul_(inverse_delta).reshape(ctx.shapes[0])]


def routed_max(
    select: Callable[[Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    r: Tensor,
    largest: bool = True,
    sides: tuple[Side, Side] | None = None,
) -> Tensor:
    r"""Attribute a max (or min) selection by shap's max-pool rule.

    ``select(t)`` returns the selected values and, for a view of ``t`` flattened over the last
    axis, the flat indices that produced them. With :math:`y = \max(x)`, :math:`y_r = \max(r)` and
    :math:`c = \max(y, y_r)`, the part :math:`c - y_r` is credited to the position of x's maximum
    and :math:`y - c` to the position of r's maximum; the multiplier at a position is its credit
    divided by its :math:`\Delta x`. Exactly one part is non-zero, and then that position's
    :math:`|\Delta x|` is at least :math:`|\Delta y|`, so the division is safe.

    ``sides``: the sides of a pass's pairs (:class:`~rnnshap.recurrent.pairs.Side`) along axis 0 of ``x`` and ``r``,
    where ``select`` works on each row of axis 0 apart (a pool): it then runs on each side's distinct rows only, the
    samples' and the references' (S + R rows in place of 2 S R), and the credits are formed on the grid of pairs.
    A selection is exact, so the values are the same bit for bit.
    """
    with torch.no_grad():
        xd = x.detach()
        if sides is None:
            (y, index_x), (y_ref, index_r), delta = select(xd), select(r), xd - r
        else:
            on_grid = [[side.grid(s, 0) for s in select(side.take(t, 0))] for side, t in zip(sides, (xd, r), strict=True)]
            (y, index_x), (y_ref, index_r) = on_grid
            grid = (sides[0].samples, sides[0].references)
            index_x, index_r = (i.expand(*grid, *i.shape[2:]) for i in (index_x, index_r))  # (views)
            delta = (xd - r).view(*grid, *xd.shape[1:])
        weight_x, weight_r = pairs.max_credits(TORCH, y, y_ref, largest)  # (0 where the maximum is the same on both sides)
        weight_x, weight_r = weight_x.reshape(index_x.shape), weight_r.reshape(index_r.shape)
        inverse_delta = pairs.inverse_delta(TORCH, _flat_last(delta, index_x.shape))
        if sides is not None:  # (the output: one row per pair, a tensor of its own in the layout a pool gives)
            y = y.expand(*grid, *y.shape[2:]).flatten(0, 1).contiguous(memory_format=_pooled_layout(xd))
    return attach(y, [x], _routed_maximum, (index_x, weight_x, index_r, weight_r, inverse_delta))


def _pooled_layout(x: Tensor) -> torch.memory_format:
    """The memory format torch's pool gives its output on ``x``: channels last where ``x`` is, else contiguous."""
    for dims, layout in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == dims and not x.is_contiguous() and x.is_contiguous(memory_format=layout):
            return layout
    return torch.contiguous_format


def _routed(ctx: Any, grad: Tensor) -> list[Tensor]:
    """The backward of an output each of whose elements' change is credited to one position of ``x`` along its last
    axis (``deciding``): the multiplier there is the incoming gradient times ``factor`` (see
    :func:`rnnshap.formulas.orderings.deciding`); ``ctx.state``: x's dtype."""
    deciding, factor = ctx.saved_tensors
    shape, dtype = ctx.shapes[0], ctx.state
    credit = (grad.reshape(deciding.shape) * factor).to(dtype)
    routed = torch.zeros((*deciding.shape[:-1], shape[-1]), dtype=dtype, device=grad.device)
    return [routed.scatter_add(-1, deciding, credit).reshape(shape)]


def _decided(
    x: Tensor, r: Tensor, order_x: Tensor, order_r: Tensor, largest: bool, fills: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`rnnshap.formulas.orderings.deciding` on ``x`` and ``r``, and the sides it decided on. ``fills`` (None,
    or bool like ``x``): entries a moving mask filled with an infinity on one side of the pair
    (:data:`rnnshap.rules.gates.FILLS`), decided as the limit of finite fills: each such infinity, and each entry
    that is the same infinity on both sides (masked on both: tied with the fills, as finite fills tie), a finite value
    past every other value of its row, and a fill's change one unit of the mask's step (the fill's
    :class:`~rnnshap.rules.gates.Where` passes the change itself to the step). Returns (deciding positions, their
    changes, the values at the ranks on each side, the two sides decided on)."""
    xd, rd = x.detach(), r
    if fills is not None:
        both = torch.cat([xd, rd], -1)
        past = both.masked_fill(~torch.isfinite(both), 0.0).abs().amax(-1, keepdim=True) * 2 + 1
        tied = torch.isinf(xd) & (xd == rd)
        xd, rd = (torch.where((fills | tied) & torch.isinf(t), torch.sign(t) * past, t) for t in (xd, rd))
    deciding, delta, y, y_ref = orderings.deciding(TORCH, xd, rd, order_x, order_r, largest)
    if fills is not None:  # (the values at the ranks the sides' own, infinities included)
        delta = torch.where(fills.gather(-1, deciding), torch.ones_like(delta), delta)
        y, y_ref = x.detach().gather(-1, order_x), r.gather(-1, order_r)
    return deciding, delta, y, y_ref, xd, rd


def _refuse_infinite(delta: Tensor, moved: Tensor) -> None:
    if bool((torch.isinf(delta) & (moved != 0)).any()):
        raise InfinitePick(
            "a position that decided a pick moved to or from an infinite value between an input and its reference "
            "that no moving mask filled it with, and that change has no finite multiplier"
        )


def ranked_values(
    x: Tensor, r: Tensor, order_x: Tensor, order_r: Tensor, largest: bool = True, fills: Tensor | None = None
) -> Tensor:
    r"""The values of ``x`` at the ranks ``order_x`` lists along its last axis (``order_r`` for the
    reference ``r``; see :func:`rnnshap.formulas.orderings.deciding`), each with its change :math:`y_j - y_{r,j}` credited to
    the position that decided rank ``j``: sorted values, top-k values, k-th values and medians.

    At rank 0 this is shap's max-pool rule (:func:`routed_max`). Where the ordering does not
    change, the multipliers are the permutation that sorts ``x``. Values that are the same infinity
    on both sides (masked entries) get multiplier 0; ``fills``: see :func:`_decided`.
    """
    with torch.no_grad():
        deciding, delta, y, y_ref, _, _ = _decided(x, r, order_x, order_r, largest, fills)
        _refuse_infinite(delta, torch.where(y == y_ref, 0.0, 1.0))
        factor = torch.where(y == y_ref, torch.zeros_like(y), pairs.usable_quotient(TORCH, y - y_ref, delta))
    values = attach(y, [x], _routed, (deciding, factor), x.dtype)
    if fills is not None:  # (a rank past the values left unmasked on one side: a fill of its own, which nothing may read)
        reached = torch.isinf(y) ^ torch.isinf(y_ref)
        if bool(reached.any()):
            FILLS[values] = Fill(reached, limit=False)
    return values


def picked_index(
    x: Tensor,
    r: Tensor,
    index_x: Tensor,
    index_r: Tensor,
    largest: bool = True,
    order_x: Tensor | None = None,
    order_r: Tensor | None = None,
    fills: Tensor | None = None,
) -> Tensor:
    r"""The indices ``index_x`` that the operation picked from ``x`` over its last axis (``(..., k)``:
    the positions at ranks 0..k−1, those it picks from the reference ``r`` being ``index_r``: the
    operation's own, ties broken as it breaks them), as a float64 tensor whose multiplier is the
    DeepLIFT multiplier of a step function of ``x``. ``order_x`` and ``order_r`` give the ranks
    0..k−1 when the indices are not those ranks' positions (the k-th value: its last rank).

    A picked index is piecewise constant in ``x``: it changes from :math:`j_r` (the reference's pick)
    to :math:`j_x` only because some values moved past others. Whatever a use of the index makes of
    that change (its multiplier times :math:`j_x - j_r`) is credited, as :func:`ranked_values`
    credits a value's change, to the position that decided the rank (see :func:`rnnshap.formulas.orderings.deciding`; for the
    maximum, :math:`j_x` where the input's maximum is at least the reference's, else :math:`j_r`),
    with multiplier credit / :math:`\Delta x` there. Where :math:`j_x = j_r` nothing is credited. ``fills``: see
    :func:`_decided`.
    """
    with torch.no_grad():
        rank_x = index_x if order_x is None else order_x
        rank_r = index_r if order_r is None else order_r
        deciding, delta, _, _, xd, rd = _decided(x, r, rank_x, rank_r, largest, fills)
        if order_x is not None:  # only the last rank is the index's
            deciding, delta = deciding[..., -1:].expand(index_x.shape), delta[..., -1:].expand(index_x.shape)
        moved = (index_x - index_r).to(torch.float64)
        _refuse_infinite(delta, moved)
        deciding, factor = orderings.index_credit(TORCH, xd, rd, deciding, delta, moved)
        if fills is not None:  # (a fill taking the credit, also where the index moved past no rank: one unit)
            factor = torch.where(fills.gather(-1, deciding), moved, factor)
    return attach(index_x.to(torch.float64), [x], _routed, (deciding, factor), x.dtype)


class InfinitePick(ValueError):
    """A pick decided by a position whose value is infinite on one side of a pair only (refused with the advice
    ``"infinite_pick"``)."""

    advice = "infinite_pick"


def _flat_last(t: Tensor, index_shape: torch.Size) -> Tensor:
    """``t`` reshaped so that its leading axes match ``index_shape`` and the rest is one axis."""
    lead = index_shape[:-1]
    return t.reshape(*lead, -1)


class MaxPool(Rule):
    """max_pool1d/2d/3d and adaptive max-pool, by shap's max-pool rule (see :func:`routed_max`).

    ``with_indices`` is the variant of the pooling function that also returns the argmax indices
    (``F.max_pool2d_with_indices``); it is called with the arguments of the intercepted call.
    """

    def __init__(self, with_indices: Callable[..., tuple[Tensor, Tensor]], spatial_dims: int) -> None:
        self.with_indices = with_indices
        self.spatial_dims = spatial_dims

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            raise ValueError(f"{call.name}: expected the input-dependent tensor as the first argument")
        bound = inspect.signature(self.with_indices).bind(*call.args, **call.kwargs).arguments
        wants_indices = bool(bound.pop("return_indices", False))
        bound.pop("input")
        x, r = call.inputs[0], call.references[0]
        out_shape: list[torch.Size] = []

        def select(t: Tensor) -> tuple[Tensor, Tensor]:
            values, indices = self.with_indices(t, **bound)
            out_shape[:] = [values.shape]
            lead = values.shape[: values.dim() - self.spatial_dims]
            return values, indices.reshape(*lead, -1)

        # a pool works on each row of axis 0 apart (its batch, or a channel of an unbatched input): on a pass's pairs,
        # each side's distinct rows only, where they repeat as the grid says (tested at once on the CPU, where reading
        # costs nothing and torch.equal makes no copy; on an accelerator after the pass, where the grid defers)
        sides = None
        if call.pairs is not None and x.dim() > self.spatial_dims and x.shape[0] == call.pairs.pairs:
            sides = pair_sides(call.pairs, x.shape[0], [(x.detach(), 0)], [(r, 0)], defer=defers(call.pairs, x))
            if sides[0].axis is None and sides[1].axis is None:
                sides = None
        values = routed_max(select, x, r, sides=sides).reshape(x.shape[0], *out_shape[0][1:])
        if wants_indices:
            return values, self.with_indices(x.detach(), **bound)[1]
        return values


def _moved_last(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t`` with ``dims`` moved to the end and merged into one axis."""
    dims = tuple(d % t.dim() for d in dims)
    keep = [d for d in range(t.dim()) if d not in dims]
    moved = t.permute(*keep, *dims)
    return moved.reshape(*moved.shape[: len(keep)], -1)


class MaxReduction(Rule):
    """torch.max / torch.min / amax / amin over dimensions, by the rule of :func:`routed_max`.

    Called with a second tensor (``torch.max(a, b)``), max and min are elementwise and use the
    exact Shapley rule instead.
    """

    def __init__(self, largest: bool = True, returns_indices: bool = True) -> None:
        self.largest = largest
        self.returns_indices = returns_indices

    def attribute(self, call: OpCall) -> Any:
        args, kwargs = call.args, dict(call.kwargs)
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if isinstance(other, Tensor):
            output, _ = shapley(call.evaluate, call.inputs, call.references, smooth=False)
            return output
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            raise ValueError(f"{call.name}: expected the input-dependent tensor as the first argument")
        x, r = call.inputs[0], call.references[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        dims = tuple(range(x.dim())) if dim is None or dim == () else ((dim,) if isinstance(dim, int) else tuple(dim))
        reduce = torch.max if self.largest else torch.min

        def select(t: Tensor) -> tuple[Tensor, Tensor]:
            return reduce(t, dim=-1, keepdim=True)

        flat_x = _moved_last(x, dims)
        flat_r = _moved_last(r, dims)
        values = routed_max(select, flat_x, flat_r, self.largest).squeeze(-1)
        if keepdim:
            for d in sorted(d % x.dim() for d in dims):
                values = values.unsqueeze(d)
        if self.returns_indices and dim is not None and dim != () and isinstance(dim, int):
            indices = reduce(x.detach(), dim, keepdim).indices
            result_type = torch.return_types.max if self.largest else torch.return_types.min
            return result_type((values, indices))
        return values

    def index_handle(self, call: OpCall, indices: Tensor) -> Tensor | None:
        """The picked indices as a value with the pick's multipliers (see :func:`picked_index`)."""
        dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim")
        if not isinstance(dim, int) or len(call.tracked) != 1:
            return None
        keepdim = bool(call.args[2] if len(call.args) > 2 else call.kwargs.get("keepdim", False))
        x, r = call.inputs[0].movedim(dim, -1), call.references[0].movedim(dim, -1)
        index_r = call.evaluate(call.references).indices
        index_x, index_r = (t if keepdim else t.unsqueeze(dim) for t in (indices, index_r))
        return picked_index(x, r, index_x.movedim(dim, -1), index_r.movedim(dim, -1), self.largest).reshape(indices.shape)


__all__ = ["MaxPool", "MaxReduction", "picked_index", "ranked_values", "routed_max"]
