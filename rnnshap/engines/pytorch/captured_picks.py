"""Picked indices in the captured pass: the indices an ordering picks from input-dependent values, followed to the
selections that read them, as the intercepted pass follows them (picked.py).

An ordering whose rule picks (``topk``, ``sort``, ``argmax``, ``max`` over a dimension: rules/selection.py and
rules/maxima.py) gives its indices a *handle* on the input side: the indices as float64 values whose multipliers are
a step's, crediting a pick's change to the positions that decided it. In the captured graph the plan follows the
indices from the ordering's node: taken from its result (``[1]``, ``.indices``), moved (a view, a reshape, a slice)
with their handle moved alike, or cast to other integers with their handle as it is; a selection by them (``gather``,
``take_along_dim``, ``index_select``, ``F.embedding`` or ``weight[idx]`` from a table, ``h[torch.arange(B), idx]``)
takes the rule :class:`~rnnshap.rules.selection.Selection` with the handle in the index's place, and a scatter of
constant values at them (``zeros.scatter_(1, idx, 1)``) :class:`~rnnshap.rules.selection.Scattered`. Any other
use (arithmetic on the indices, a comparison, ``one_hot``, a scatter of input-dependent values) is not taken: the call
runs the intercepted pass, which attributes or refuses it by name.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from ...rules.base import OpCall, Rule
from ...rules.gates import MOVES
from ...rules.selection import Selection, selection_of
from ...rules.selection import selection_rule as rule_of_selection

Tensor = torch.Tensor

#: casts that keep integer values as they are (``idx.long()``): the handle goes with them unchanged
_INTEGER_CASTS = frozenset({"long", "int", "short", "to", "type"})
#: the integer types a cast of picked indices keeps them in (a narrower one wraps an index beyond its range)
WIDE_INTEGERS = frozenset({torch.int32, torch.int64})


def _integers(value: Any) -> bool:
    return isinstance(value, Tensor) and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def pick_use(fn: Any, node: fx.Node, picks: dict[fx.Node, bool]) -> tuple[str, fx.Node] | None:
    """How ``node`` uses picked indices (``picks``: the nodes that hold them, each True where it is an ordering's
    result of values and indices): ("values" | "indices" | "select" | "move" | "cast", the picked node), or None where
    the captured pass does not take the use."""
    sources = [n for n in node.all_input_nodes if n in picks]
    if len(sources) != 1:
        return None  # (two picks' indices met: a selection from picked indices by others, refused alike)
    source = sources[0]
    example = node.meta.get("example_value")
    if picks[source]:  # (an ordering's result: its values are an ordinary step's, its indices followed)
        item = node.args[1] if len(node.args) > 1 else None
        if node.target is operator.getitem or fn is getattr:
            if item in (0, "values"):
                return "values", source
            if item in (1, "indices"):
                return "indices", source
        return None
    examples = fx.node.map_arg((tuple(node.args), dict(node.kwargs)), lambda n: n.meta.get("example_value"))
    index = source.meta.get("example_value")
    selection = selection_of(fn, examples[0], examples[1], lambda v: v is index) if fn is not None else None
    if selection is not None:  # (one_hot's integers, a table of integers indexed: indices again, not taken yet)
        floating = isinstance(example, Tensor) and example.is_floating_point()
        return ("select", source) if floating and not selection[2] else None
    others = [n for n in node.all_input_nodes if n is not source]
    name = getattr(fn, "__name__", "")
    if others or not node.args or node.args[0] is not source or not _integers(example):
        return None
    if name in _INTEGER_CASTS:  # (to 32 or 64 bits: the same values; a narrower type may wrap them)
        return ("cast", source) if isinstance(example, Tensor) and example.dtype in WIDE_INTEGERS else None
    return ("move", source) if name in MOVES else None


def selection_rule(fn: Any, node: fx.Node, source: fx.Node) -> Selection:
    """The Selection rule of a selection by the picked indices of ``source``, as the graph's example values give it
    (the position of the index among the call's flattened arguments; :func:`selected` makes it again at each run,
    with the sizes of the run)."""
    examples = fx.node.map_arg((tuple(node.args), dict(node.kwargs)), lambda n: n.meta.get("example_value"))
    index = source.meta.get("example_value")
    found = selection_of(fn, examples[0], examples[1], lambda v: v is index)
    assert found is not None
    leaves = tree_flatten(examples)[0]
    return rule_of_selection(fn, next(i for i, leaf in enumerate(leaves) if leaf is index), found[1], found[2])


def selected(fn: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], picked: Any) -> Rule:
    """A selection's rule on this run's input side (``args``, ``kwargs``, flattened in ``leaves``), the picked indices'
    handle put in the index's place among ``leaves``. Raises ``LookupError`` where the indices have no handle (a
    constant: the intercepted pass takes them)."""
    if picked.handle is None:
        raise LookupError(f"{name}: indices without a handle")
    found = selection_of(fn, args, kwargs, lambda v: v is picked.x)
    position = next((i for i, leaf in enumerate(leaves) if leaf is picked.x), None)
    if found is None or position is None:
        raise LookupError(f"{name}: not a selection by the picked indices on this run")
    leaves[position] = picked.handle
    return rule_of_selection(fn, position, found[1], found[2])


def picked_handle(rule: Any, call: OpCall, out: Any) -> Tensor | None:
    """The handle of the indices an ordering's ``rule`` gave on the input side (``out``: its result), or None where its
    indices are a constant (a ``topk`` of every position unsorted)."""
    constant = getattr(rule, "constant_indices", None)
    if constant is not None and constant(call):
        return None
    indices = out if isinstance(out, Tensor) else out[1]
    handle: Tensor | None = rule.index_handle(call, indices)
    return handle


__all__ = ["WIDE_INTEGERS", "pick_use", "picked_handle", "selected", "selection_rule"]
