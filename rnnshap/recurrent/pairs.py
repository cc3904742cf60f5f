"""The two sides of a batch of (sample, reference) pairs, reduced to their distinct rows.

The explainer runs every sample against every reference, so a batch of ``S x R`` pairs holds
only ``S`` distinct input rows (each repeated ``R`` times) and ``R`` distinct reference rows
(cycling), as long as nothing sample-specific entered the reference side (see
:class:`~rnnshap.rules.base.PairGrid`). A recurrent layer runs both trajectories on those
``S + R`` rows; only the multipliers, which depend on both sides, are per pair. That is what
makes the fused layers cost less than torch's own forward and backward pass on the tiled batch.

Nothing is assumed: a side is reduced only where its rows repeat exactly as the grid says;
otherwise it keeps all its rows and the result is the same, only slower. A cell's test (one step of a
Python loop) runs on the device where the grid defers it (:meth:`PairGrid.defer`): the engine reads the
tests of a whole pass at once after it, and runs the passes again with each test read at once if one
failed; a layer reads its test at once, once per call. The max-pool rule (``rnnshap/rules/maxima.py``) pools each
side's distinct rows the same way, its test read at once on the CPU and deferred as a cell's on an accelerator.

Packed sequences (a mask) are sorted by length, out of grid order, and each pair's reference is
truncated at its sample's length; :meth:`Side.masked` groups their rows by value instead, a row
standing for every row whose unmasked steps are a prefix of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..formulas.torch_ops import readable, valueless
from ..rules.base import PairGrid

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class Side:
    """One side of a batch of ``samples x references`` pairs.

    ``axis`` is the grid axis along which the side's distinct rows vary: 0 for the input side
    reduced to one row per sample, 1 for the reference side reduced to one row per reference,
    None for a side that keeps one row per pair (or, with ``index``, one row per group of pairs).

    Masked (packed) sequences only (:meth:`masked`): ``reps`` (rows,) names the pair whose row
    stands for each distinct row and ``index`` (pairs,) the distinct row of each pair.
    """

    samples: int
    references: int
    axis: Literal[0, 1] | None
    reps: Tensor | None = None
    index: Tensor | None = None

    @classmethod
    def of(
        cls,
        which: Literal["input", "reference"],
        grid: PairGrid | None,
        pairs: int,
        tensors: Sequence[tuple[Tensor | None, int]],
        defer: bool = False,
    ) -> Side:
        """The side for ``tensors`` (each with its batch dimension), reduced where they allow it.

        With ``defer`` (a cell's call, one time step of a loop) the test runs on the device and, where the grid
        defers its checks and reading would wait on a device (:func:`defers`), is read after the pass with every other
        (:meth:`PairGrid.defer`): read at once, it would wait on the device at every step. On the CPU, and in a
        layer's call, it is read at once (``torch.equal``: no tensor made, no wait on the CPU; a layer's once per
        call whatever its length: a pass run again would repeat what a stateful model did in the first)."""
        reduced, full, tests = cls._plan(which, grid, pairs, tensors)
        if full is None:
            return reduced
        if defer and grid is not None and tests and defers(grid, tests[0][0]):
            grid.defer(*(torch.eq(a, b).all() for a, b in tests))
            return reduced
        return reduced if all(torch.equal(a, b.expand_as(a)) for a, b in tests) else full

    @classmethod
    def _plan(
        cls, which: Literal["input", "reference"], grid: PairGrid | None, pairs: int, tensors: Sequence[tuple[Tensor | None, int]]
    ) -> tuple[Side, Side | None, list[tuple[Tensor, Tensor]]]:
        """(the side reduced, the side with all its rows or None where there is nothing to test, and the pairs of
        tensors equal where the reduced side holds, the second broadcasting to the first): :meth:`of`'s test, not yet
        read. Each tensor's rows on the grid (…, samples, references, …) against its first row along the axis the
        reduced side repeats them on (a view: the cheapest form of the test, run at every step of a cell's loop)."""
        if grid is None or grid.pairs != pairs or pairs == 0:
            return cls(pairs, 1, None), None, []
        reduced = cls(grid.samples, grid.references, 0 if which == "input" else 1)
        shape = (reduced.samples, reduced.references)
        repeated_along = 1 if which == "input" else 0  # (the input side's rows repeat along the references)
        tests = []
        for t, dim in tensors:
            if t is not None:
                on_grid = t.view(*t.shape[:dim], *shape, *t.shape[dim + 1 :])
                tests.append((on_grid, on_grid.narrow(dim + repeated_along, 0, 1)))
        return reduced, cls(grid.samples, grid.references, None), tests

    @classmethod
    def masked(cls, mask: Tensor, sequence: Tensor, states: Sequence[Tensor]) -> Side:
        """One side of a masked (packed) layer, reduced to the rows that differ: ``sequence``
        (T, pairs, C) with ``mask`` (T, pairs, 1), ``states`` (pairs, H).

        A packed batch is sorted by length, so its rows are not in grid order; the rows are
        grouped by their values instead. A masked row's trajectory up to its length depends only
        on its steps up to its length and its initial state, and nothing past its length is used,
        so a row can stand for every row whose unmasked steps are a prefix of its own: one row
        per reference in the forward direction (each pair holds its reference truncated at its
        sample's length), one row per (reference, length) in the reverse direction, which starts
        at the last step. Rows are grouped by their first steps (those every row has), the
        longest of a group stands for it, and the groups are checked on the values; where that
        fails, only rows equal up to their (equal) length are grouped. The result has
        ``samples`` = pairs, ``references`` = 1 and an ``index``.
        """
        steps, pairs = mask.shape[:2]
        if pairs < 2 or steps == 0:
            return cls(pairs, 1, None)
        lengths = mask.reshape(steps, pairs).sum(0)
        flat_states = [s.reshape(pairs, -1) for s in states]
        common = int(lengths.min())

        def first() -> Tensor:
            return torch.cat([sequence[:common].transpose(0, 1).reshape(pairs, -1), *flat_states], 1)

        def whole() -> Tensor:  # (made only where the first steps do not group the rows)
            steps = torch.where(mask, sequence, sequence.new_zeros(())).transpose(0, 1).reshape(pairs, -1)
            return torch.cat([steps, lengths[:, None].to(sequence.dtype), *flat_states], 1)

        pair = torch.arange(pairs, device=lengths.device)
        for key in (first, whole):
            index = _groups_of_equal_rows(key())
            rows = int(index.max()) + 1
            if rows == pairs:
                break
            longest = lengths.new_zeros(rows).scatter_reduce_(0, index, lengths, "amax")
            candidate = torch.where(lengths == longest[index], pair, pairs)
            reps = torch.full((rows,), pairs, dtype=torch.long, device=index.device).scatter_reduce_(0, index, candidate, "amin")
            if _same_prefixes(mask, sequence, states, reps[index]):
                return cls(pairs, 1, None, reps=reps, index=index)
        return cls(pairs, 1, None)

    @property
    def rows(self) -> int:
        """Number of distinct rows."""
        if self.reps is not None:
            return self.reps.shape[0]
        if self.axis == 0:
            return self.samples
        if self.axis == 1:
            return self.references
        return self.samples * self.references

    def take(self, t: Tensor, dim: int) -> Tensor:
        """The distinct rows of a per-pair tensor (batch along ``dim``)."""
        if self.reps is not None:
            return t.index_select(dim, self.reps)
        if self.axis is None:
            return t
        return t.unflatten(dim, (self.samples, self.references)).select(dim + 1 - self.axis, 0)

    def spread(self, t: Tensor, dim: int) -> Tensor:
        """Distinct rows back to one row per pair (a new tensor)."""
        if self.index is not None:
            return t.index_select(dim, self.index)
        if self.axis is None:
            return t
        spread = self._repeated(t, dim).flatten(dim, dim + 1)
        return spread.clone() if spread._is_view() else spread  # (flatten copies where it cannot view)

    def grid(self, t: Tensor, dim: int = 1) -> Tensor:
        """A (T, rows, C) tensor (the rows along ``dim``) as a (T, samples | 1, references | 1, C) view that
        broadcasts against the other side to every pair."""
        if self.index is not None:
            return t.index_select(dim, self.index).unflatten(dim, (self.samples, self.references))
        shape = {0: (self.samples, 1), 1: (1, self.references), None: (self.samples, self.references)}[self.axis]
        return t.view(*t.shape[:dim], *shape, *t.shape[dim + 1 :])  # (unflatten's view without its Python wrapper: hot in a cell)

    def row_of_pairs(self, device: torch.device) -> Tensor:
        """The distinct row of every pair, (pairs,)."""
        if self.index is not None:
            return self.index
        pair = torch.arange(self.samples * self.references, device=device)
        return {0: pair // self.references, 1: pair % self.references, None: pair}[self.axis]

    def _repeated(self, rows: Tensor, dim: int) -> Tensor:
        """``rows`` broadcast to (…, samples, references, …) at ``dim``, without copying."""
        if self.axis is None:
            raise AssertionError("only a reduced side repeats")
        expanded = rows.unsqueeze(dim + 1 - self.axis)
        shape = list(expanded.shape)
        shape[dim], shape[dim + 1] = self.samples, self.references
        return expanded.expand(shape)


#: the integer type of each float size, to read a float's bits as
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _groups_of_equal_rows(key: Tensor) -> Tensor:
    """A group index per row of ``key`` (rows, columns) such that rows with the same bits share one:
    the rows' bit patterns hashed with integer arithmetic (exact, so equal rows hash alike) and the
    hashes grouped, instead of ``torch.unique(key, dim=0)``, whose row sort compares the rows
    pairwise. Rows that collide are grouped too; the caller checks every group on the values."""
    bits = key.contiguous().view(_BITS[key.element_size()]).to(torch.int64)
    weights = torch.arange(1, bits.shape[1] + 1, dtype=torch.int64, device=bits.device) * 0x9E3779B1 + 0x85EBCA6B
    hashed = (bits * weights).sum(1) ^ (bits.sum(1) * 0xC2B2AE35)
    return torch.unique(hashed, return_inverse=True)[1]


def _same_prefixes(mask: Tensor, sequence: Tensor, states: Sequence[Tensor], source: Tensor) -> bool:
    """Whether every pair's unmasked steps and initial states equal those of pair ``source[p]``."""
    if bool((mask.index_select(1, source) < mask).any()):  # the source must run at least as long
        return False
    if not all(torch.equal(s, s.index_select(0, source)) for s in states):
        return False
    zero = sequence.new_zeros(())
    return torch.equal(torch.where(mask, sequence, zero), torch.where(mask, sequence.index_select(1, source), zero))


def defers(grid: PairGrid, t: Tensor) -> bool:
    """Whether a rule's test of the rows of ``t`` waits for the end of the pass (``defer`` of :meth:`Side.of`): where
    the grid defers its checks and reading ``t`` would wait on a device; on the CPU it is read at once (``torch.equal``,
    no copy). The max-pool and attention rules' tests."""
    return grid.deferred is not None and not readable(t)


def pair_sides(
    grid: PairGrid | None,
    pairs: int,
    inputs: Sequence[tuple[Tensor | None, int]],
    references: Sequence[tuple[Tensor | None, int]],
    defer: bool = False,
) -> tuple[Side, Side]:
    """The input side and the reference side of one call (``defer``: see :meth:`Side.of`). On an accelerator a
    layer's tests of both sides are read at once, one host read (on the CPU ``torch.equal`` reads as it goes); on
    tensors without values (a pass being written as a program) they wait for the end of the pass where the grid
    defers its checks."""
    given = next((t for t, _ in inputs if t is not None), None)
    defer = defer or (grid is not None and grid.deferred is not None and given is not None and valueless(given))
    if defer or given is None or readable(given):
        return Side.of("input", grid, pairs, inputs, defer), Side.of("reference", grid, pairs, references, defer)
    plans = [Side._plan("input", grid, pairs, inputs), Side._plan("reference", grid, pairs, references)]
    tests = [torch.stack([torch.eq(a, b).all() for a, b in plan[2]]).all() for plan in plans if plan[1] is not None]
    both = bool(torch.stack(tests).all()) if tests else True  # (the one read where both hold, as they mostly do)
    held = iter([True] * len(tests) if both else [bool(t) for t in tests])
    input_side, reference_side = (reduced if full is None or next(held) else full for reduced, full, _ in plans)
    return input_side, reference_side


__all__ = ["Side", "defers", "pair_sides"]
