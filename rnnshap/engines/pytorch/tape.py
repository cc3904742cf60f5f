"""The reference tape: what the reference pass saw, consumed in order by the input pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import SHAPLEY_DOOR, TapeMismatchError


@dataclass
class TapeEntry:
    """One operation with a rule other than the gradient, as the reference pass ran it.

    ``references`` holds copies of its input-dependent operands; the name and shapes tell when the
    two passes diverge.
    """

    key: object
    name: str
    tracked: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    references: list[torch.Tensor] | None = None
    #: the operation's output in the reference pass, kept for rules that would compute it again from
    #: ``references`` (see ``keep_output``), with its version counter and the call's other leaves
    output: torch.Tensor | None = None
    output_version: int = 0
    output_context: tuple[Any, ...] = ()
    #: the entry repeated for an input pass (see ``Tape.keeps_repeats``): (repeats, entry, the
    #: version counters of its tensors)
    repeated: tuple[int, TapeEntry, tuple[int, ...]] | None = None

    def keep_output(self, output: torch.Tensor, context: tuple[Any, ...]) -> None:
        """Keep ``output``, which the operation computed from operands equal to ``references`` (in
        value and layout) and from ``context`` (its other leaves, none of them a tensor)."""
        self.output, self.output_version, self.output_context = output, output._version, context

    def kept_output(self, context: tuple[Any, ...]) -> torch.Tensor | None:
        """The kept output, if the input pass's call has the same other leaves and the output has
        not been written into since (a later in-place operation of the model)."""
        output = self.output
        if output is None or output._version != self.output_version or len(context) != len(self.output_context):
            return None
        if any(type(a) is not type(b) or a != b for a, b in zip(context, self.output_context, strict=True)):
            return None
        return output


@dataclass
class Tape:
    entries: list[TapeEntry] = field(default_factory=list)
    cursor: int = 0
    #: how many times the input pass's batch holds each row of the reference pass's: 1 where the
    #: reference pass ran on the reference side of every pair, the number of samples where it ran on
    #: the distinct references only (then ``take`` repeats each operand along its batch axis)
    repeats: int = 1
    #: whether the repeated entries are kept on the entries, for the next input pass of as many
    #: samples (a kept tape, see the engine): each is handed out again while no tensor of it has
    #: been written into (its version counters)
    keeps_repeats: bool = False

    def append(self, entry: TapeEntry) -> None:
        self.entries.append(entry)

    def take(self, key: object, name: str, tracked: tuple[int, ...], shapes: tuple[tuple[int, ...], ...]) -> TapeEntry:
        """The next entry, which must be the same operation on operands of the same shapes (with
        ``repeats``: of the shapes repeated along one axis, the batch's; the entry returned then
        holds its operands and output repeated so)."""
        index = self.cursor
        if index >= len(self.entries):
            raise TapeMismatchError(
                f"The input pass ran {name} (operation #{index + 1} on input-dependent tensors) but the "
                f"reference pass stopped after {len(self.entries)} such operations. {_CAUSES}"
            )
        entry = self.entries[index]
        repeated = self.repeats > 1 and bool(tracked)
        if repeated:
            axes = [batch_axis(r, s, self.repeats) for r, s in zip(entry.shapes, shapes, strict=False)]
            same = len(entry.shapes) == len(shapes) and -1 not in axes
        else:
            same = entry.shapes == shapes
        if entry.key != key or entry.tracked != tracked or not same:
            raise TapeMismatchError(
                f"The two passes diverged at operation #{index + 1} on input-dependent tensors: the "
                f"reference pass ran {entry.name} on shapes {[tuple(s) for s in entry.shapes]}, the input pass ran "
                f"{name} on shapes {[tuple(s) for s in shapes]}. {_CAUSES}"
            )
        self.cursor += 1
        self.entries[index] = _TAKEN  # the input pass holds it while it needs it: its copies are freed then
        if not repeated:
            return entry
        if self.keeps_repeats and entry.repeated is not None:
            count, kept, versions = entry.repeated
            if count == self.repeats and _versions(kept) == versions:
                return kept
        out = self._repeated(entry, axes)
        if self.keeps_repeats:
            entry.repeated = (self.repeats, out, _versions(out))
        return out

    def _repeated(self, entry: TapeEntry, axes: list[int]) -> TapeEntry:
        """``entry`` with its operands (and output, where it has the first operand's shape) repeated
        along their batch axes ``axes``, as the input pass's batch repeats the references."""
        assert entry.references is not None
        references = [repeat_along(r, axis, self.repeats) for r, axis in zip(entry.references, axes, strict=True)]
        out = TapeEntry(entry.key, entry.name, entry.tracked, entry.shapes, references)
        kept = entry.kept_output(entry.output_context) if entry.output is not None else None
        if kept is not None and kept.shape == entry.references[0].shape:  # (elementwise: the operand's axes)
            out.keep_output(repeat_along(kept, axes[0], self.repeats), entry.output_context)
        return out

    def check_consumed(self) -> None:
        if self.cursor != len(self.entries):
            entry = self.entries[self.cursor]
            raise TapeMismatchError(
                f"The input pass stopped after {self.cursor} operations on input-dependent tensors but "
                f"the reference pass went on with {entry.name}. {_CAUSES}"
            )


def _versions(entry: TapeEntry) -> tuple[int, ...]:
    return tuple(t._version for t in [*(entry.references or ()), *(() if entry.output is None else (entry.output,))])


def batch_axis(reference: tuple[int, ...], shape: tuple[int, ...], repeats: int) -> int:
    """The axis along which ``shape`` is ``reference`` repeated ``repeats`` (> 1) times: the only
    axis where the sizes differ, by that factor (-1: no such axis)."""
    if len(reference) != len(shape):
        return -1
    differ = [a for a, (r, s) in enumerate(zip(reference, shape, strict=True)) if r != s]
    if len(differ) != 1 or shape[differ[0]] != reference[differ[0]] * repeats:
        return -1
    return differ[0]


def repeat_along(t: torch.Tensor, axis: int | None, repeats: int) -> torch.Tensor:
    """``t`` repeated ``repeats`` times along ``axis`` (whole, block after block, as the pairs of
    a block hold the references: row ``p`` pairs with reference ``p % references``)."""
    if axis is None or repeats == 1:
        return t
    shape = t.shape
    expanded = t.unsqueeze(axis).expand(*shape[:axis], repeats, *shape[axis:])  # (a copy by reshape: faster than repeat)
    return expanded.reshape(*shape[:axis], repeats * shape[axis], *shape[axis + 1 :])


#: what the tape holds in place of an entry the input pass has taken (never read again)
_TAKEN = TapeEntry("taken", "", (), ())

_CAUSES = (
    "rnnshap runs the model once on the references and once on the inputs and pairs their "
    "operations in order, so both must run the same operations. Control flow that depends on "
    "input values, randomness in forward(), or state that changes between calls break this; "
    "make the model's forward() deterministic and independent of the input's values. Where the "
    "control flow is the model's own (and deterministic): " + SHAPLEY_DOOR
)
