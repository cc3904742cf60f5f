"""Plan once, run many: the input pass as a straight-line program.

The input pass runs the model's Python under a ``TorchFunctionMode`` that looks at every torch
call: whether it touches an input-dependent tensor, which rule it takes, which tape entry pairs
with it. For a given block shape the answers repeat from call to call, and on models made of many
small operations (a cell looped over time in Python, the library models) asking them again costs
more than the operations themselves. So an input pass that only took the plain paths (see
:class:`Recorder`) is recorded as a list of steps, each a torch call with its tensor arguments
named by slot (the inputs, or the results of earlier steps) and every other argument kept as it
was, with its path resolved: run as is (untracked and linear operations), or attributed by its rule
against the next tape entry. A later input pass on inputs of the same shapes runs the steps
(:meth:`Plan.run`) instead of the model's Python, and builds the same graph with the same values,
bit for bit.

When a plan holds: the steps stand for the model's Python as long as that Python makes the same
calls with the same arguments other than tensors. A recording stops (no plan) where the pass reads
a tensor's values into Python (``bool(x.any())``, ``.item()``, ``.tolist()``: control flow that may
depend on them), disables gradients, runs a custom ``autograd.Function``, follows integers or picked
indices, writes a rule's result in place, or takes any path other than those above. A plan is kept
with the *fingerprint* of a plain forward of the block's references (the calls it made and their
arguments other than tensors, see :class:`Fingerprint`) and used only while that fingerprint is
the same: an attribute forward() reads (a temperature, a flag), changed between calls, changes it.
Running a plan checks every step's result shapes against the recording's (a shape that depends on
values, ``x[x > 0]``, would differ) and each tape entry against its step, and gives up
(:class:`PlanMismatch`) at the first difference: the engine then runs the full pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from ...rules.base import OpCall, PairGrid, Rule
from .calls import flatten_call

Tensor = torch.Tensor

#: how a step runs
RUN, RULE = 0, 1
#: calls that read a tensor's metadata only: no value reaches Python through them
_METADATA = frozenset(
    {
        "size", "dim", "numel", "__len__", "__get__", "stride", "is_contiguous", "nelement", "ndimension", "element_size",
        "is_floating_point", "is_complex", "get_device", "storage_offset", "data_ptr", "__hash__", "untyped_storage",
    }
)  # fmt: skip


class PlanMismatch(Exception):
    """A plan's step gave a result other than the recording's: the full pass runs instead."""


@dataclass
class Step:
    """One torch call of the recorded input pass."""

    kind: int
    func: Callable[..., Any]
    name: str
    #: the call's flattened arguments, with None where a slot's tensor goes
    template: list[Any]
    #: (position in ``template``, slot) for every tensor that is a slot
    slots: tuple[tuple[int, int], ...]
    spec: TreeSpec
    layout: tuple[int, tuple[str, ...]] | None
    #: the slots of the result's tensors, in tree_flatten order, and their shapes
    outputs: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    # RULE steps:
    rule: Rule | None = None
    key: object = None
    tracked: tuple[int, ...] = ()


@dataclass
class Plan:
    """The recorded input pass (see the module)."""

    steps: list[Step]
    inputs: tuple[int, ...]
    output: int
    slots: int
    fingerprint: tuple[Any, ...]

    def run(self, inputs: list[Tensor], attribute: Callable[[OpCall, Rule, object, str], Any], pairs: PairGrid | None) -> Tensor:
        """The input pass's output on ``inputs``; ``attribute(call, rule, key, name)`` takes a rule
        step's tape entry and runs its rule (``AttributionMode.attribute_from_tape``)."""
        values: list[Any] = [None] * self.slots
        for slot, tensor in zip(self.inputs, inputs, strict=True):
            values[slot] = tensor
        for step in self.steps:
            leaves = list(step.template)
            for position, slot in step.slots:
                leaves[position] = values[slot]
            if step.kind == RULE:
                assert step.rule is not None
                call = OpCall.flat(step.func, step.name, leaves, step.spec, step.tracked, pairs, step.layout)
                result = attribute(call, step.rule, step.key, step.name)
            else:
                if step.layout is None:
                    args, kwargs = tree_unflatten(leaves, step.spec)
                else:
                    count, names = step.layout
                    args, kwargs = leaves[:count], dict(zip(names, leaves[count:], strict=True))
                result = step.func(*args, **kwargs)
            if not step.outputs:
                continue
            tensors = [result] if isinstance(result, Tensor) else [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]
            if len(tensors) != len(step.outputs) or any(tuple(t.shape) != shape for t, shape in zip(tensors, step.shapes, strict=True)):
                raise PlanMismatch(f"{step.name} gave results of shapes {[tuple(t.shape) for t in tensors]}, the recording {list(step.shapes)}")
            for slot, tensor in zip(step.outputs, tensors, strict=True):
                values[slot] = tensor
        return values[self.output]  # type: ignore[no-any-return]


@dataclass
class Recorder:
    """Records an input pass as a :class:`Plan`, while the pass runs as usual (``AttributionMode``
    calls :meth:`add` for every call it runs on a plain path, and :meth:`stop` where it takes any
    other; a call it handles without either stops the recording too, see :meth:`opened` /
    :meth:`closed`)."""

    inputs: list[Tensor]
    steps: list[Step] = field(default_factory=list)
    #: why no plan can be made (None: none so far)
    stopped: str | None = None
    _slots: dict[int, tuple[Any, int]] = field(default_factory=dict)
    _count: int = 0
    _open: int = 0
    _added: int = 0

    def __post_init__(self) -> None:
        self._input_slots = tuple(self._new_slot(t) for t in self.inputs)

    def _new_slot(self, tensor: Tensor) -> int:
        slot = self._count
        self._count += 1
        self._slots[id(tensor)] = (tensor, slot)  # the tensor is held: no other tensor can take its id meanwhile
        return slot

    def _slot_of(self, tensor: Tensor) -> int | None:
        entry = self._slots.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def stop(self, why: str) -> None:
        if self.stopped is None:
            self.stopped = why

    def opened(self) -> int:
        """A call reaches the pass: it must be recorded (``add``) before :meth:`closed`."""
        self._open += 1
        return self._added

    def closed(self, before: int, name: str) -> None:
        self._open -= 1
        if self._added == before and self.stopped is None:
            self.stop(f"{name} took a path a plan does not record")

    def add(
        self,
        kind: int,
        func: Any,
        name: str,
        leaves: list[Any],
        spec: TreeSpec,
        layout: tuple[int, tuple[str, ...]] | None,
        result: Any,
        rule: Rule | None = None,
        key: object = None,
        tracked: tuple[int, ...] = (),
    ) -> None:
        self._added += 1
        if self.stopped is not None:
            return
        outputs = [result] if isinstance(result, Tensor) else [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]
        if not outputs:
            if kind == RUN and getattr(func, "__name__", "") in _METADATA:
                return  # a query of shapes or types: the same on inputs of the same shapes, and not needed to run
            self.stop(f"{name} reads values into Python (control flow may depend on them)")
            return
        template = list(leaves)
        slots = []
        for position, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor):
                slot = self._slot_of(leaf)
                if slot is not None:
                    template[position] = None
                    slots.append((position, slot))
        shapes = tuple(tuple(t.shape) for t in outputs)
        produced = tuple(self._new_slot(t) for t in outputs)
        self.steps.append(Step(kind, func, name, template, tuple(slots), spec, layout, produced, shapes, rule, key, tracked))

    def add_call(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        """A call run as it is, given by its arguments."""
        if self.stopped is None:
            leaves, spec, layout = flatten_call(args, kwargs)
            self.add(RUN, func, name, leaves, spec, layout, result)
        else:
            self._added += 1

    def plan(self, output: Tensor, fingerprint: tuple[Any, ...]) -> Plan | None:
        """The plan, or None where the recording stopped or the output is not a step's result."""
        slot = self._slot_of(output) if self.stopped is None else None
        if slot is None:
            return None
        return Plan(self.steps, self._input_slots, slot, self._count, fingerprint)


class Fingerprint(TorchFunctionMode):
    """The calls a plain forward makes on ``inputs``, each with its arguments other than tensors,
    and with its tensors named by shape and dtype, and by identity where they do not come from the
    inputs through the calls (parameters, buffers, tensor attributes): what a plan's steps take as
    constants. A tensor attribute replaced by another object changes it."""

    def __init__(self, inputs: list[Tensor]) -> None:
        super().__init__()
        self.calls: list[Any] = []
        self._made: dict[int, Tensor] = {id(t): t for t in inputs}

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        leaves = flatten_call(args, kwargs)[0]
        self.calls.append((func, tuple(self._tensor(leaf) if isinstance(leaf, Tensor) else _constant(leaf) for leaf in leaves)))
        result = func(*args, **kwargs)
        for t in [result] if isinstance(result, Tensor) else tree_flatten(result)[0]:
            if isinstance(t, Tensor):
                self._made[id(t)] = t  # (held: no other tensor takes its id during the forward)
        return result

    def _tensor(self, leaf: Tensor) -> Any:
        made = self._made.get(id(leaf)) is leaf
        return (leaf.shape, leaf.dtype) if made else ("constant", id(leaf), leaf.shape, leaf.dtype)


def _constant(leaf: Any) -> Any:
    """``leaf`` as a value to compare: floats by their bits (NaN equals NaN), containers as tuples."""
    if isinstance(leaf, float):
        return ("float", leaf.hex())
    if isinstance(leaf, (list, tuple)):
        return tuple(_constant(item) for item in leaf)
    if isinstance(leaf, slice):
        return ("slice", _constant(leaf.start), _constant(leaf.stop), _constant(leaf.step))
    try:
        hash(leaf)
    except TypeError:
        return ("object", id(leaf))
    return leaf


__all__ = ["Fingerprint", "Plan", "PlanMismatch", "Recorder", "RULE", "RUN", "Step"]
