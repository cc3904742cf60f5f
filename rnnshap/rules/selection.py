r"""Indices picked by a maximum or minimum, and their uses: argmax routing, gathers, greedy decoding.

A picked index (``u.argmax(dim)``, ``torch.max(u, dim).indices``, ``u.topk(1, dim).indices``) is a
step function of ``u``. The engine carries it alongside a floating-point *handle*: the same
indices as float64 values, whose multiplier is that of a step function (see
:func:`~rnnshap.rules.maxima.picked_index`: the change a use makes of it is credited to the
position that decided the pick). Arithmetic and shape operations on the indices run on the handle
with their own rules, and a cast to floating point (``idx.float()``) is the handle itself.

An operation that *uses* the indices to select (:class:`Selection`: ``gather``,
``take_along_dim``, indexing ``h[rows, idx]``, ``index_select`` from a table, ``F.embedding``,
``F.one_hot``) computes :math:`s(h, i)`, linear in ``h`` for a fixed index ``i``: a product of the
selector and ``h``. The Shapley rule on that product gives

.. math::

    s(h_x, i_x) - s(h_r, i_r) = \tfrac12\,[s(\Delta h, i_x) + s(\Delta h, i_r)]
    + [s(\bar h, i_x) - s(\bar h, i_r)], \qquad \bar h = \tfrac12 (h_x + h_r),

``h``'s multiplier the mean of the two selections and the selector the second term, which goes to
the handle (divided by :math:`i_x - i_r`) and from there to the deciding position. So
``h.gather(1, idx)``, ``h[rows, idx]`` and ``(F.one_hot(idx).float() * h).sum(1)`` get the same values.
Orderings (:class:`Ordering`: ``sort``, ``argsort``, ``topk`` with any k, ``kthvalue``, ``median``)
extend this rank by rank. The value at rank ``j`` changes only because positions moved past that
rank, so its change is credited to one that did (:func:`~rnnshap.rules.maxima.ranked_values`):
where it rose, among the positions on the value's side of rank ``j`` in the input and on the other
side in the reference (one always is both), the one nearest the rank in the input; where it fell,
the same with the sides swapped. Its :math:`|\Delta u|` is at least the value's, so the multiplier
is at most 1, and the choice does not depend on the direction the operation orders in. At
rank 0 that is the max-pool rule above, so ``topk(k)[..., 0]`` gets ``torch.max``'s values, and
where the order does not change the multipliers are the sorting permutation. The index at each rank
carries the same routing for its uses.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..formulas import orderings, pairs
from ..formulas.torch_ops import TORCH, gradient
from .base import OpCall, Rule
from .elementwise import attach
from .gates import FILLS, Fill, fills_of
from .maxima import InfinitePick, picked_index, ranked_values

Tensor = torch.Tensor


def topk_of_every_position(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``topk(*args, **kwargs)`` asks ``sorted=False`` for as many picks as its dimension holds: every
    position, in an order torch does not specify (Informer's ProbSparse attention keeping every query, ``u = L_Q``).
    rnnshap takes them in the positions' own order (:meth:`Ordering._run`), its indices then a constant."""

    def arg(position: int, name: str, default: Any) -> Any:
        return args[position] if len(args) > position else kwargs.get(name, default)

    operand, k = arg(0, "input", None), arg(1, "k", None)
    if not isinstance(operand, Tensor) or operand.dim() == 0 or k is None or bool(arg(4, "sorted", True)):
        return False
    return int(k) == operand.shape[int(arg(2, "dim", -1))]


def _extremum_dim(call: OpCall) -> tuple[int | None, bool]:
    args, kwargs = call.args, call.kwargs
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    return dim, keepdim


class ArgExtremum(Rule):
    """``argmax`` / ``argmin``: the indices, with a handle for their uses (see the module docstring)."""

    #: the kind of advice for a refusal (a key of rnnshap.errors.ADVICE)
    refusal_advice = "selection"

    def __init__(self, largest: bool = True) -> None:
        self.largest = largest

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            return "rnnshap picks through the first argument only, but another argument depends on the input"
        if _extremum_dim(call)[0] is None:
            return (
                "without a dimension it picks over the whole batch, so every row's pick depends on the other rows: "
                "give it the dimension to pick along"
            )
        return None

    def attribute(self, call: OpCall) -> Any:
        return call.evaluate([call.inputs[0].detach()])

    def index_handle(self, call: OpCall, indices: Tensor) -> Tensor:
        dim, keepdim = _extremum_dim(call)
        assert dim is not None
        x, r = call.inputs[0].movedim(dim, -1), call.references[0].movedim(dim, -1)
        index_r = call.evaluate(call.references)
        index_x, index_r = (t if keepdim else t.unsqueeze(dim) for t in (indices, index_r))
        return picked_index(x, r, index_x.movedim(dim, -1), index_r.movedim(dim, -1), self.largest).reshape(indices.shape)


class Ordering(Rule):
    """Sorting and order statistics along one axis: ``sort``, ``argsort``, ``topk``, ``kthvalue`` and
    ``median`` over a dimension. Each value at a rank has its change credited to the position that
    decided that rank (:func:`~rnnshap.rules.maxima.ranked_values`; at the first rank, shap's
    max-pool rule, so ``topk(1)`` and ``sort(...)[..., -1]`` get the values of ``torch.max``), and
    the indices carry a handle (:func:`~rnnshap.rules.maxima.picked_index`) for their uses.

    ``kind`` is the operation: ``"topk"``, ``"sort"``, ``"argsort"``, ``"kthvalue"`` or ``"median"``.
    """

    #: the kind of advice for a refusal (a key of rnnshap.errors.ADVICE)
    refusal_advice = "selection"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def _bound(self, call: OpCall) -> tuple[int | None, bool, int | None, bool]:
        """(dim, largest, the rank it returns (1-based; None: the first k or all), keepdim)."""
        args, kwargs = call.args, call.kwargs

        def arg(position: int, name: str, default: Any) -> Any:
            return args[position] if len(args) > position else kwargs.get(name, default)

        if self.kind == "topk":
            return int(arg(2, "dim", -1)), bool(arg(3, "largest", True)), None, True
        if self.kind in ("sort", "argsort"):
            return int(arg(1, "dim", -1)), bool(arg(2, "descending", False)), None, True
        if self.kind == "kthvalue":
            dim = int(arg(2, "dim", -1))
            return dim, False, int(arg(1, "k", None)), bool(arg(3, "keepdim", False))
        dim = arg(1, "dim", None)  # median
        if dim is None:
            return None, False, None, False
        n = call.inputs[0].shape[int(dim)] if call.inputs[0].dim() else 1
        return int(dim), False, (n + 1) // 2, bool(arg(2, "keepdim", False))

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            return "rnnshap orders by the first argument only, but another argument depends on the input"
        dim = self._bound(call)[0]
        if dim is None:
            return (
                "without a dimension it takes the median of the whole batch, so every row's value depends on the other rows: "
                "give it the dimension"
            )
        if call.inputs[0].dim() == 0:
            return "it orders a single number; take the value itself"
        return None

    def _sorted(self, call: OpCall) -> bool:
        return bool(call.args[4] if len(call.args) > 4 else call.kwargs.get("sorted", True))

    def _every_position(self, call: OpCall) -> bool:
        """``topk(k, sorted=False)`` with ``k`` the dimension's size (:func:`topk_of_every_position`)."""
        return self.kind == "topk" and topk_of_every_position(tuple(call.args), dict(call.kwargs))

    def unordered(self, call: OpCall) -> bool:
        """Whether the call is a ``topk(sorted=False)``, whose picks come in an order torch does not specify: taken in
        one of those orders (see :meth:`_run`), where the model's output does not read it (the engine checks)."""
        return self.kind == "topk" and not self._sorted(call)

    def _run(self, call: OpCall, operand: Tensor) -> Any:
        """The operation on ``operand``. A ``topk(sorted=False)`` in one of the orders torch may return: of every
        position, in the positions' own order (see :meth:`_every_position`), its values the operand and its indices a
        constant ``arange`` on both sides of every pair, so that nothing is credited to the scores that ordered them;
        of fewer, in the ranks' order, its picks paired by rank as a sorted ``topk``'s (a model whose output depends on
        the order is not a function of its input: torch may return any)."""
        if self.unordered(call) and not self._every_position(call):
            k, dim, largest = call.args[1] if len(call.args) > 1 else call.kwargs["k"], *self._bound(call)[:2]
            return torch.topk(operand, int(k), int(dim or 0), largest, sorted=True)
        if not self._every_position(call):
            return call.evaluate([operand])
        dim = int(self._bound(call)[0] or 0)
        n = operand.shape[dim]
        shape = [1] * operand.dim()
        shape[dim] = n
        indices = torch.arange(n, device=operand.device).reshape(shape).expand(operand.shape).contiguous()
        return torch.return_types.topk((operand.clone(), indices))

    def reference(self, call: OpCall) -> Any:
        return self._run(call, call.inputs[0]) if self.unordered(call) else super().reference(call)

    def constant_indices(self, call: OpCall) -> bool:
        """Whether the indices this call returns are a constant, not picked by the values (see :meth:`_run`)."""
        return self._every_position(call)

    def _orders(self, call: OpCall, dim: int, largest: bool, rank: int | None, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The positions at the ranks the operation returns (up to ``rank``), both sides, over the last
        axis; ``indices``: the operation's own on the input side."""
        sides = (call.inputs[0].detach(), call.references[0])
        if self.kind in ("topk", "sort", "argsort"):
            reference = self._run(call, sides[1])
            return indices.movedim(dim, -1), (reference if isinstance(reference, Tensor) else reference.indices).movedim(dim, -1)
        assert rank is not None
        ordered = [torch.sort(t.movedim(dim, -1), dim=-1, descending=largest, stable=True).indices[..., :rank] for t in sides]
        return ordered[0], ordered[1]

    #: it reads entries a moving mask filled with an infinity as their fill's limit (rules/gates.py: FILLS)
    takes_fills = True

    @staticmethod
    def _fills(call: OpCall, dim: int) -> Tensor | None:
        fills = fills_of(call.inputs[:1])
        if fills is not None and not fills.limit:
            raise InfinitePick(
                "it orders values that a combination of masks fills with an infinity on one side of a pair only, whose "
                "steps may move where it stays put: there is no limit of finite fills to give"
            )
        return None if fills is None else fills.entries.movedim(dim, -1)

    def attribute(self, call: OpCall) -> Any:
        dim, largest, rank, keepdim = self._bound(call)
        assert dim is not None
        result = self._run(call, call.inputs[0].detach())
        if self.kind == "argsort":
            return result
        x, r = call.inputs[0].movedim(dim, -1), call.references[0].movedim(dim, -1)
        order_x, order_r = self._orders(call, dim, largest, rank, result.indices)
        ranked = ranked_values(x, r, order_x, order_r, largest, self._fills(call, dim))
        values = ranked.movedim(-1, dim)
        if rank is not None:  # kthvalue, median: the last rank
            values = ranked[..., -1:].movedim(-1, dim) if keepdim else ranked[..., -1]
        if ranked in FILLS:  # (a rank past the values left unmasked on one side: nothing may read these values)
            FILLS[values] = Fill(torch.ones_like(values, dtype=torch.bool), limit=False)
        return type(result)((values, result.indices))

    def index_handle(self, call: OpCall, indices: Tensor) -> Tensor:
        dim, largest, rank, keepdim = self._bound(call)
        assert dim is not None
        x, r = call.inputs[0].movedim(dim, -1), call.references[0].movedim(dim, -1)
        index_r = self._run(call, call.references[0])
        index_r = index_r if isinstance(index_r, Tensor) else index_r.indices
        fills = self._fills(call, dim)
        if rank is None:
            picked = picked_index(x, r, indices.movedim(dim, -1), index_r.movedim(dim, -1), largest, fills=fills)
            return picked.movedim(-1, dim)
        order_x, order_r = self._orders(call, dim, largest, rank, indices)
        index_x, index_r = (t.unsqueeze(-1) if not keepdim else t.movedim(dim, -1) for t in (indices, index_r))
        handle = picked_index(x, r, index_x, index_r, largest, order_x, order_r, fills)
        return handle.movedim(-1, dim) if keepdim else handle.squeeze(-1)


# -- the uses --------------------------------------------------------------------------------------
#: ``reduce(out, index)``: an output-shaped tensor summed onto the index elements it came from
Reduce = Callable[[Tensor, Tensor], Tensor]


def _same_shape(out: Tensor, index: Tensor) -> Tensor:
    """gather / take_along_dim: one output element per index element (broadcast over the rest)."""
    return out.sum_to_size(index.shape)


def _trailing(out: Tensor, index: Tensor) -> Tensor:
    """embedding / one_hot: the index's shape, then the looked-up vector."""
    return out.reshape(*index.shape, -1).sum(-1)


class Selection(Rule):
    """A selection by picked indices (see the module docstring): the Shapley rule on the product of
    the selector and the selected tensor.

    ``index`` is the leaf position of the picked indices' handle in the call, ``reduce`` sums an
    output-shaped tensor onto the index elements, and ``integer`` is true for ``one_hot``, whose
    result (integers) gets a handle of its own.
    """

    def __init__(self, index: int, reduce: Reduce, integer: bool = False) -> None:
        self.index, self.reduce, self.integer = index, reduce, integer

    def refusal(self, call: OpCall) -> str | None:
        if call.fn is F.embedding and (call.args[3] if len(call.args) > 3 else call.kwargs.get("max_norm")) is not None:
            return (
                "max_norm renormalises rows of the embedding table in place, chosen by the indices looked up, which "
                "differ between the reference and input passes; renormalise the table once and drop max_norm"
            )
        return None

    def _run(self, call: OpCall, index: Tensor, values: Tensor | None) -> Any:
        """The selection by ``index`` (integers) from ``values`` (None: the input side's operand)."""
        players = [index if i == self.index else (call.leaves[i] if values is None else values) for i in call.tracked]
        return call.evaluate(players)

    def reference(self, call: OpCall) -> Any:
        return call.evaluate([call.ref_leaves[i].long() if i == self.index else call.ref_leaves[i] for i in call.tracked])

    def _sides(self, call: OpCall) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        handle = call.leaves[self.index]
        index_x, index_r = handle.detach().long(), call.ref_leaves[self.index].long()
        values = [i for i in call.tracked if i != self.index]
        h = call.leaves[values[0]] if values else None
        h_ref = call.ref_leaves[values[0]] if values else None
        return handle, index_x, index_r, h, h_ref

    def _inverse_moves(self, call: OpCall) -> Tensor:
        """1 / (i_x − i_r) per index element, 0 where the pick did not change."""
        moved = (call.leaves[self.index].detach() - call.ref_leaves[self.index]).to(torch.float64)
        return pairs.inverse_delta(TORCH, moved)  # (an index's change is an integer: finite)

    def attribute(self, call: OpCall) -> Any:
        handle, index_x, index_r, h, h_ref = self._sides(call)
        if self.integer:  # one_hot: integers out; their handle is index_handle's
            return self._run(call, index_x, None)
        inverse = self._inverse_moves(call)
        with torch.no_grad():
            output = self._run(call, index_x, None if h is None else h.detach())

        def select(values: Tensor | None, index: Tensor) -> Any:
            return self._run(call, index, values)

        def backward(grad: Tensor) -> tuple[Tensor | None, ...]:
            with torch.no_grad():  # the selector's part, to the handle
                change = orderings.selector_change(TORCH, select, None if h is None else h.detach(), h_ref, index_x, index_r)
                grad_handle = self.reduce((grad * change).to(torch.float64), index_x) * inverse
            if h is None:
                return (grad_handle,)
            with torch.enable_grad():  # h's part: the mean of the two selections (linear in h)
                probe = h.detach().requires_grad_(True)
                (grad_h,) = gradient(orderings.selected_share(TORCH, select, probe, index_x, index_r), grad, [probe])
            return grad_handle, grad_h

        return attach(output, [handle, *(() if h is None else (h,))], _calling(backward))

    def index_handle(self, call: OpCall, result: Tensor) -> Tensor:
        """one_hot's integers as float64 values; their change goes back to the picked index's handle."""
        handle, index_x, index_r, _, _ = self._sides(call)
        inverse = self._inverse_moves(call)

        def backward(grad: Tensor) -> tuple[Tensor]:
            change = (result - self._run(call, index_r, None)).to(torch.float64)
            return (self.reduce(grad * change, index_x) * inverse,)

        return attach(result.to(torch.float64), [handle], _calling(backward))


class _Repeated(ValueError):
    """Picked indices repeated along the dimension a scatter writes into (refused with the advice ``"selection"``)."""

    advice = "selection"


#: the names of the scatters :class:`Scattered` takes (``t.scatter_(dim, idx, v)``, ``torch.scatter(t, dim, idx, v)``)
SCATTERS = frozenset({"scatter", "scatter_"})


class Scattered(Selection):
    r"""``t.scatter(dim, idx, v)`` (``scatter_``, ``torch.scatter``) by picked indices: constant values ``v`` (a
    number, or a tensor read at the index's positions) written into a constant tensor ``t``, at positions distinct
    along ``dim`` on each side of a pair (a group-limited router's mask of the groups it picked:
    ``zeros.scatter_(1, group_idx, 1)``). With each index element :math:`e` writing :math:`v_e` at position
    :math:`p(e)`, the result is :math:`t + \sum_e (v_e - t_{p(e)})\,\mathbf 1_{p(e)}`, a sum of one-hot vectors
    of the picks: element :math:`e`'s move from :math:`p_r` to :math:`p_x` changes it by
    :math:`(v_e - t_{p_x})\,\mathbf 1_{p_x} - (v_e - t_{p_r})\,\mathbf 1_{p_r}`, which goes to its handle divided
    by :math:`p_x - p_r`, as ``one_hot``'s change does (:class:`Selection`)."""

    refusal_advice = "selection"

    def __init__(self, index: int) -> None:
        super().__init__(index, _same_shape)

    @staticmethod
    def _parts(call: OpCall) -> tuple[Tensor, int, Any]:
        """(the tensor written into, the dimension, the number or the tensor of values written) on the input side,
        given by position or by name (a 0-dim tensor ``value=`` as its number)."""
        args, kwargs = call.args, call.kwargs
        target: Tensor = args[0] if args else kwargs["input"] if "input" in kwargs else kwargs["self"]
        dim = args[1] if len(args) > 1 else kwargs["dim"]
        written = args[3] if len(args) > 3 else kwargs.get("value", kwargs.get("src"))
        if isinstance(written, Tensor) and "value" in kwargs:
            written = written.item()
        return target, int(dim), written

    def refusal(self, call: OpCall) -> str | None:
        if "reduce" in call.kwargs or len(call.args) > 4:
            return "it writes picked indices with a reduction (reduce=); only plain writes of constant values are taken"
        if any(i != self.index for i in call.tracked):
            return (
                "its values (or the tensor it writes into) are written from the input; only constant values written "
                "into a constant tensor at picked positions are taken"
            )
        if not self._parts(call)[0].is_floating_point():
            return "it writes picked indices into an integer tensor; write into a floating-point one (torch.zeros_like(scores))"
        return None

    def reference(self, call: OpCall) -> Any:
        target, dim, written = self._parts(call)
        index = call.ref_leaves[self.index].long()
        return target.scatter(dim, index, written) if isinstance(written, Tensor) else target.scatter(dim, index, value=written)

    def attribute(self, call: OpCall) -> Any:
        handle, index_x, index_r, _, _ = self._sides(call)
        target, dim, written = self._parts(call)
        for side, index in (("an input", index_x), ("its reference", index_r)):
            count = torch.zeros(target.shape, dtype=torch.int32, device=target.device)
            if bool((count.scatter_add_(dim, index, torch.ones_like(index, dtype=torch.int32)) > 1).any()):
                raise _Repeated(
                    f"the indices it writes at repeat along dimension {dim} on {side}'s side, where a scatter writes one "
                    "of the repeated values and leaves the others out: write F.one_hot(idx, n).sum(dim) for counts"
                )
        if isinstance(written, Tensor):
            values = written[tuple(slice(0, n) for n in index_x.shape)].to(target.dtype)
        else:
            values = torch.full(index_x.shape, written, dtype=target.dtype, device=target.device)
        inverse = self._inverse_moves(call)
        with torch.no_grad():
            output = target.scatter(dim, index_x, values)
            # (what each pick writes over, read now: an in-place scatter's target is written with the output next)
            written_x, written_r = values - target.gather(dim, index_x), values - target.gather(dim, index_r)

        def backward(grad: Tensor) -> tuple[Tensor]:
            moved = grad.gather(dim, index_x) * written_x - grad.gather(dim, index_r) * written_r
            return (moved.to(torch.float64) * inverse,)

        return attach(output, [handle], _calling(backward))


def selection_rule(func: Any, index: int, reduce: Reduce, integer: bool) -> Selection:
    """The rule of a selection by picked indices that :func:`selection_of` found (``index``: the position of the
    indices' handle among the call's flattened arguments)."""
    if getattr(func, "__name__", "") in SCATTERS:
        return Scattered(index)
    return Selection(index, reduce, integer)


def _calling(backward: Callable[[Tensor], tuple[Tensor | None, ...]]) -> Any:
    """An :func:`~rnnshap.rules.elementwise.attach` backward that calls ``backward(grad)``."""
    return lambda ctx, grad: backward(grad)


def _getitem_reduce(key: Any, position: int, ndim: int) -> Reduce | None:
    """For ``h[key]`` with the picked index at ``key`` entry ``position``: the reduction onto the index
    elements, when the tensor entries of ``key`` come first and are adjacent, the rest being slices
    or an Ellipsis (``h[idx]``, ``h[torch.arange(B), idx]``, ``h[rows, idx, :]``); None for other forms."""
    entries = key if isinstance(key, tuple) else (key,)
    tensors = [i for i, e in enumerate(entries) if isinstance(e, Tensor)]
    if any(e is None or isinstance(e, (bool, int)) or (isinstance(e, Tensor) and e.dtype == torch.bool) for e in entries):
        return None
    if tensors != list(range(len(tensors))):
        return None  # the tensors index the leading axes (the batch first); h[:, idx] would mix the rows
    before = 0

    def reduce(out: Tensor, index: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(*(entries[i].shape for i in tensors))
        span = range(before, before + len(shape))
        rest = [d for d in range(out.dim()) if d not in span]
        if rest:
            out = out.sum(rest)
        return out.sum_to_size(index.shape)

    return reduce


def selection_of(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], is_picked: Callable[[Any], bool]
) -> tuple[Any, Reduce, bool] | None:
    """Whether ``func(*args, **kwargs)`` selects by picked indices: (the index operand, the
    reduction onto it, whether the result is integers) or None. Exactly one picked index operand."""
    name = getattr(func, "__name__", "")
    index: Any = None
    reduce: Reduce | None = None
    integer = False
    if name == "gather":
        index, reduce = (args[2] if len(args) > 2 else kwargs.get("index")), _same_shape
    elif name == "take_along_dim":
        index, reduce = (args[1] if len(args) > 1 else kwargs.get("indices")), _same_shape
    elif func is F.embedding:
        index, reduce = (args[0] if args else kwargs.get("input")), _trailing
    elif name == "embedding" and len(args) > 1:  # torch.embedding(weight, indices, ...)
        index, reduce = args[1], _trailing
    elif name == "one_hot":
        index, reduce, integer = (args[0] if args else kwargs.get("tensor")), _trailing, True
    elif name in SCATTERS:
        index, reduce = (args[2] if len(args) > 2 else kwargs.get("index")), _same_shape
    elif name == "index_select":
        dim: Any = args[1] if len(args) > 1 else kwargs.get("dim")
        index = args[2] if len(args) > 2 else kwargs.get("index")

        def reduce(out: Tensor, picked: Tensor, dim: int = int(dim)) -> Tensor:
            return out.movedim(dim, 0).reshape(picked.numel(), -1).sum(1).reshape(picked.shape)
    elif name == "__getitem__" and len(args) == 2:
        key = args[1]
        entries = key if isinstance(key, tuple) else (key,)
        found = [i for i, e in enumerate(entries) if is_picked(e)]
        if len(found) != 1:
            return None
        index, reduce = entries[found[0]], _getitem_reduce(key, found[0], args[0].dim())
    if index is None or reduce is None or not is_picked(index):
        return None
    return index, reduce, integer


__all__ = ["ArgExtremum", "Ordering", "SCATTERS", "Scattered", "Selection", "selection_of", "selection_rule"]
