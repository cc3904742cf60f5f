"""Token ids in the captured pass: followed from the model's input to the embedding lookups they feed, and attributed
per input position there; integer inputs used as numbers alike, to their casts to floating point.

A token input enters the graph as a :class:`TokenValue`: the ids of each side of the pairs and, beside them, the
position in the input each id came from (``1 + flat index``; 0 for an id that came from no position, a fill value). An
operation that only moves ids (a view, a transpose, a flip, a slice, an ``index_select`` or ``gather`` by constant
indices, a pad or ``masked_fill`` by a constant, a cast to other integers) runs on the three alike, a fill putting 0
among the positions. A lookup (``F.embedding``, ``torch.embedding``, ``weight[ids]``) makes the input side's vectors a
leaf whose gradient, times the difference of the two sides' vectors and summed over each vector, is added to the
positions the ids came from (:func:`token_contributions`), as the intercepted pass does. A cast of an integer input
used as a number to floating point (explicit, or torch's type promotion where it meets floats) is such a lookup of the
integers' own values (one per position). Any other use of
the ids (a comparison, arithmetic) is not taken: the call runs the intercepted pass, which follows them further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection

import torch
import torch.nn.functional as F
from torch import fx

from ...rules.registry import op_key
from .integer_ops import SAME_ON_BOTH_SIDES, SHAPE_OF_OTHER

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenValue:
    """Token ids that depend on a token input (``input``, its index among the model's inputs): each side's, and the
    position in that input each came from (0: none)."""

    x: Tensor
    r: Tensor
    positions: Tensor
    input: int


@dataclass(frozen=True)
class Lookup:
    """One embedding lookup of token ids: the input it attributes to, the input side's vectors (a leaf), the reference
    side's, the input position of each looked-up vector, and how many trailing dimensions make one vector."""

    position: int
    leaf: Tensor
    reference: Tensor
    positions: Tensor
    vector_dims: int


#: operations that move ids without making new values, run on the positions alike
_MOVES = frozenset(
    op_key(fn)
    for fn in (
        torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten, torch.flatten, torch.Tensor.unsqueeze,
        torch.unsqueeze, torch.Tensor.squeeze, torch.squeeze, torch.Tensor.transpose, torch.transpose, torch.Tensor.t,
        torch.t, torch.Tensor.permute, torch.permute, torch.Tensor.flip, torch.flip, torch.Tensor.roll, torch.roll,
        torch.Tensor.contiguous, torch.Tensor.clone, torch.clone, torch.Tensor.expand, torch.Tensor.expand_as,
        torch.Tensor.repeat, torch.Tensor.narrow, torch.narrow, torch.Tensor.select, torch.select,
        torch.Tensor.index_select, torch.index_select, torch.Tensor.gather, torch.gather, torch.Tensor.__getitem__,
        torch.Tensor.masked_fill, torch.masked_fill, F.pad, torch._C._nn.pad,
    )
)  # fmt: skip
#: casts: to other integers, the ids' values kept and the positions as they are; to floating point, where an integer
#: input used as a number is attributed (captured.py makes that cast a lookup of its values)
_CASTS = frozenset(
    op_key(fn)
    for fn in (
        torch.Tensor.long, torch.Tensor.int, torch.Tensor.to, torch.Tensor.type, torch.Tensor.float, torch.Tensor.double,
        torch.Tensor.half, torch.Tensor.bfloat16,
    )
)  # fmt: skip
#: moves whose fill value puts an id from no position: the positions take 0 there
_FILLS = {op_key(torch.Tensor.masked_fill): 2, op_key(torch.masked_fill): 2, op_key(F.pad): 3, op_key(torch._C._nn.pad): 3}
#: lookups, and where their indices and table are among the arguments
_LOOKUPS = {op_key(F.embedding): (0, 1), op_key(torch.embedding): (1, 0), op_key(torch.Tensor.__getitem__): (1, 0)}


def token_use(fn: Any, node: fx.Node, tokens: Collection[fx.Node], tracked: set[fx.Node]) -> str | None:
    """How a node uses token ids: "lookup", "move", "cast", "meta" (their shape, dtype or device), or None where the
    captured pass does not take it."""
    key = op_key(fn)
    if reads_layout(fn, node):
        return "meta"
    if key in SHAPE_OF_OTHER and len(node.args) == 2 and node.args[1] in tokens and node.args[0] not in tokens:
        return "meta" if not any(n in tracked for n in node.all_input_nodes) else None
    operands = [n for n in node.all_input_nodes if n in tokens or n in tracked]
    if any(n in tracked for n in operands):
        return None  # (ids meeting input-dependent floats)
    where = _LOOKUPS.get(key)
    if where is not None:
        indices, table = (_argument(node, where[0], "input" if key == op_key(F.embedding) else "indices"),
                          _argument(node, where[1], "weight"))  # fmt: skip
        if isinstance(indices, fx.Node) and indices in tokens and isinstance(table, fx.Node) and table not in tokens:
            return "lookup" if len(operands) == 1 else None
        if key != op_key(torch.Tensor.__getitem__):
            return None
    if key in _CASTS:
        return "cast"
    if key in _MOVES and isinstance(node.args[0] if node.args else None, fx.Node) and node.args[0] in tokens:
        return "move" if len(operands) == 1 else None
    return None


def reads_layout(fn: Any, node: fx.Node) -> bool:
    """Whether a node reads its operand's layout only (``x.shape``, ``x.is_meta``, ``x.size(1)``), the same on both
    sides of a pair (:data:`.integer_ops.SAME_ON_BOTH_SIDES`): no tensor comes of it."""
    if isinstance(node.meta.get("example_value"), Tensor):
        return False
    key = ("getter", node.args[1]) if fn is getattr and len(node.args) == 2 else op_key(fn)
    return key in SAME_ON_BOTH_SIDES


def _argument(node: fx.Node, position: int, name: str) -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(name)


def move(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], value: TokenValue, use: str) -> TokenValue:
    """A move or cast of token ids on both sides and on their positions (``args`` hold ``value`` where the ids are)."""

    def on(side: str) -> Any:
        swap = lambda a: getattr(value, side) if a is value else a  # noqa: E731
        side_args, side_kwargs = tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}
        if side == "positions":
            fill = _FILLS.get(op_key(fn))
            if fill is not None:
                side_args, side_kwargs = _zero_fill(side_args, side_kwargs, fill)
        return fn(*side_args, **side_kwargs)

    positions = value.positions if use == "cast" else on("positions")
    return TokenValue(on("x"), on("r"), positions, value.input)


def _zero_fill(args: tuple[Any, ...], kwargs: dict[str, Any], at: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with the fill value (``value=`` or the argument at ``at``) set to 0."""
    if "value" in kwargs:
        return args, {**kwargs, "value": 0}
    if len(args) > at:
        return (*args[:at], 0, *args[at + 1 :]), kwargs
    return args, {**kwargs, "value": 0}  # (F.pad's default fill, 0, is a position of none already)


def lookup(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], value: TokenValue
) -> tuple[Tensor, Tensor, Lookup]:
    """An embedding lookup of token ids: the input side's vectors (a leaf that requires grad), the reference side's,
    and what attributes them to the input's positions."""

    def on(side: Tensor) -> Any:
        return fn(*(side if a is value else a for a in args), **{k: side if v is value else v for k, v in kwargs.items()})

    with torch.no_grad():
        vectors, reference = on(value.x), on(value.r)
    leaf = vectors.detach().requires_grad_(True)
    return leaf, reference, Lookup(value.input, leaf, reference, value.positions, leaf.dim() - value.positions.dim())


def token_contributions(lookups: list[Lookup], grads: list[Tensor], sizes: dict[int, int]) -> dict[int, Tensor]:
    """Σ over each lookup of gradient × (vectors − reference vectors), summed over each vector and added to the input
    position its id came from: per token input, ``(k, numel of the input on the pairs)``. ``grads``: each lookup's
    gradient, ``(k, *vectors.shape)``; ``sizes``: each token input's number of elements on the pairs."""
    sums: dict[int, Tensor] = {}
    for lookup_, grad in zip(lookups, grads, strict=True):
        k = grad.shape[0]
        part = grad * (lookup_.leaf.detach() - lookup_.reference)
        if lookup_.vector_dims:
            part = part.sum(tuple(range(-lookup_.vector_dims, 0)))
        total = sums.get(lookup_.position)
        if total is None:
            total = sums[lookup_.position] = torch.zeros(k, sizes[lookup_.position] + 1, dtype=torch.float64, device=grad.device)
        total.index_add_(1, lookup_.positions.reshape(-1), part.reshape(k, -1).to(torch.float64))
    return {position: total[:, 1:] for position, total in sums.items()}


__all__ = ["Lookup", "TokenValue", "lookup", "move", "reads_layout", "token_contributions", "token_use"]
