"""The two sides of a batch of (sample, reference) pairs, reduced to their distinct rows.

The explainer runs every sample against every reference, so a batch of ``S x R`` pairs holds
only ``S`` distinct input rows (each repeated ``R`` times) and ``R`` distinct reference rows
(cycling), as long as nothing sample-specific entered the reference side (see
:class:`~rnnshap.rules.base.PairGrid`). A recurrent layer runs both trajectories on those
``S + R`` rows; only the multipliers, which depend on both sides, are per pair. That is what
makes the fused layers cost less than torch's own forward and backward pass on the tiled batch.

Nothing is assumed: a side is reduced only after checking that its rows repeat exactly as the
grid says; otherwise it keeps all its rows and the result is the same, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..rules.base import PairGrid

Tensor = torch.Tensor


@dataclass(frozen=True)
class Side:
    """One side of a batch of ``samples x references`` pairs.

    ``axis`` is the grid axis along which the side's distinct rows vary: 0 for the input side
    reduced to one row per sample, 1 for the reference side reduced to one row per reference,
    None for a side that keeps one row per pair.
    """

    samples: int
    references: int
    axis: Literal[0, 1] | None

    @classmethod
    def of(cls, which: Literal["input", "reference"], grid: PairGrid | None, pairs: int, tensors: Sequence[tuple[Tensor | None, int]]) -> Side:
        """The side for ``tensors`` (each with its batch dimension), reduced where they allow it."""
        if grid is None or grid.pairs != pairs or pairs == 0:
            return cls(pairs, 1, None)
        reduced = cls(grid.samples, grid.references, 0 if which == "input" else 1)
        present = [(t, dim) for t, dim in tensors if t is not None]
        if all(torch.equal(t.unflatten(dim, (reduced.samples, reduced.references)), reduced._repeated(reduced.take(t, dim), dim)) for t, dim in present):
            return reduced
        return cls(grid.samples, grid.references, None)

    @property
    def rows(self) -> int:
        """Number of distinct rows."""
        if self.axis == 0:
            return self.samples
        if self.axis == 1:
            return self.references
        return self.samples * self.references

    def take(self, t: Tensor, dim: int) -> Tensor:
        """The distinct rows of a per-pair tensor (batch along ``dim``)."""
        if self.axis is None:
            return t
        return t.unflatten(dim, (self.samples, self.references)).select(dim + 1 - self.axis, 0)

    def spread(self, t: Tensor, dim: int) -> Tensor:
        """Distinct rows back to one row per pair (a new tensor)."""
        if self.axis is None:
            return t
        spread = self._repeated(t, dim).flatten(dim, dim + 1)
        return spread.clone() if spread.data_ptr() == t.data_ptr() else spread

    def grid(self, t: Tensor) -> Tensor:
        """A (T, rows, C) tensor as a (T, samples | 1, references | 1, C) view that broadcasts
        against the other side to every pair."""
        shape = {0: (self.samples, 1), 1: (1, self.references), None: (self.samples, self.references)}[self.axis]
        return t.unflatten(1, shape)

    def _repeated(self, rows: Tensor, dim: int) -> Tensor:
        """``rows`` broadcast to (…, samples, references, …) at ``dim``, without copying."""
        if self.axis is None:
            raise AssertionError("only a reduced side repeats")
        expanded = rows.unsqueeze(dim + 1 - self.axis)
        shape = list(expanded.shape)
        shape[dim], shape[dim + 1] = self.samples, self.references
        return expanded.expand(shape)


def pair_sides(grid: PairGrid | None, pairs: int, inputs: Sequence[tuple[Tensor | None, int]], references: Sequence[tuple[Tensor | None, int]]) -> tuple[Side, Side]:
    """The input side and the reference side of one call."""
    return Side.of("input", grid, pairs, inputs), Side.of("reference", grid, pairs, references)


__all__ = ["Side", "pair_sides"]
