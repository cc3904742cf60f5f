"""The reference tape: what the reference pass saw, consumed in order by the input pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import TapeMismatchError


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

    def append(self, entry: TapeEntry) -> None:
        self.entries.append(entry)

    def take(self, key: object, name: str, tracked: tuple[int, ...], shapes: tuple[tuple[int, ...], ...]) -> TapeEntry:
        """The next entry, which must be the same operation on operands of the same shapes."""
        index = self.cursor
        if index >= len(self.entries):
            raise TapeMismatchError(
                f"The input pass ran {name} (operation #{index + 1} on input-dependent tensors) but the "
                f"reference pass stopped after {len(self.entries)} such operations. {_CAUSES}"
            )
        entry = self.entries[index]
        if entry.key != key or entry.tracked != tracked or entry.shapes != shapes:
            raise TapeMismatchError(
                f"The two passes diverged at operation #{index + 1} on input-dependent tensors: the "
                f"reference pass ran {entry.name} on shapes {[tuple(s) for s in entry.shapes]}, the input pass ran "
                f"{name} on shapes {[tuple(s) for s in shapes]}. {_CAUSES}"
            )
        self.cursor += 1
        self.entries[index] = _TAKEN  # the input pass holds it while it needs it: its copies are freed then
        return entry

    def check_consumed(self) -> None:
        if self.cursor != len(self.entries):
            entry = self.entries[self.cursor]
            raise TapeMismatchError(
                f"The input pass stopped after {self.cursor} operations on input-dependent tensors but "
                f"the reference pass went on with {entry.name}. {_CAUSES}"
            )


#: what the tape holds in place of an entry the input pass has taken (never read again)
_TAKEN = TapeEntry("taken", "", (), ())

_CAUSES = (
    "rnnshap runs the model once on the references and once on the inputs and pairs their "
    "operations in order, so both must run the same operations. Control flow that depends on "
    "input values, randomness in forward(), or state that changes between calls break this; "
    "make the model's forward() deterministic and independent of the input's values."
)
