"""The reference tape: what the reference pass saw, consumed in order by the input pass."""

from __future__ import annotations

from dataclasses import dataclass, field

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
                f"reference pass ran {entry.name} on shapes {list(entry.shapes)}, the input pass ran "
                f"{name} on shapes {list(shapes)}. {_CAUSES}"
            )
        self.cursor += 1
        return entry

    def check_consumed(self) -> None:
        if self.cursor != len(self.entries):
            entry = self.entries[self.cursor]
            raise TapeMismatchError(
                f"The input pass stopped after {self.cursor} operations on input-dependent tensors but "
                f"the reference pass went on with {entry.name}. {_CAUSES}"
            )


_CAUSES = (
    "rnnshap runs the model once on the references and once on the inputs and pairs their "
    "operations in order, so both must run the same operations. Control flow that depends on "
    "input values, randomness in forward(), or state that changes between calls break this; "
    "make the model's forward() deterministic and independent of the input's values."
)
