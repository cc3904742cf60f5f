"""The reference passes the PyTorch engine keeps for later blocks and calls (:class:`KeptReferencePasses`): which
are kept (by a block's references and the context inputs' values, within :data:`KEPT_TAPE_BYTES`), how a kept pass is
vetted by a plain forward before it is reused, and when they are dropped. What runs a reference pass is the
engine's (``TorchEngine._distinct_reference_pass``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from ..base import Block
from .state import PreservedState
from .tape import Tape, TapeEntry

Tensor = torch.Tensor

#: the most bytes of reference tapes an engine keeps for later blocks and calls
KEPT_TAPE_BYTES = 64 * 2**20


class KeptReferencePasses:
    """The reference passes on distinct references of one PyTorch engine, kept for later blocks and calls.

    ``model``, ``background``: the engine's; ``context_inputs``: the indices of its context inputs (masks, lengths:
    each kept pass ran with their values, part of its key); ``take``: the explained output tensor of the model's
    result."""

    def __init__(
        self, model: torch.nn.Module, background: list[Tensor], context_inputs: list[int], take: Callable[[Any], Any]
    ) -> None:
        self.model = model
        self.background = background
        self.context_inputs = context_inputs
        self.take = take
        #: the tapes and outputs of reference passes on distinct references, by (r0, r1, the context's bytes)
        self.tapes: dict[Any, tuple[list[TapeEntry], Tensor, int]] = {}
        #: blocks whose reference pass is not kept (over the bytes allowed, or no plain forward gives its outputs)
        self.unkept: set[Any] = set()
        #: kept tapes not yet vetted by a plain forward (the constructor's reference pass, see :meth:`keep`)
        self.unchecked: set[Any] = set()
        #: during a call of the front door (:meth:`call`), the kept tapes vetted (or recorded) in it; None outside one,
        #: where every block vets what it reuses
        self.vetted: set[Any] | None = None
        #: kept tapes over the bytes kept between calls, held for the first call only (the constructor's reference
        #: pass, which that call would run again: see :meth:`keep`)
        self.first_call_only: set[Any] = set()
        #: kept tapes whose plain forward gives the pass's outputs with autograd recording (see :meth:`computes`)
        self.vetted_with_grad: set[Any] = set()

    @contextlib.contextmanager
    def call(self, just_built: bool = False) -> Iterator[None]:
        """One call of the front door: the kept reference passes are vetted once in it (see :meth:`reuse`); a
        just-built explainer's are its constructor's, recorded on the model as it is."""
        self.vetted = set(self.tapes) if just_built else set()
        try:
            yield
        finally:
            self.vetted = None
            self.release_held()

    def release_held(self) -> None:
        """Drop the tapes held for the first call only (over the bytes kept between calls: see :meth:`keep`)."""
        for key in self.first_call_only:
            self.tapes.pop(key, None)
            self.unchecked.discard(key)
            self.unkept.add(key)
        self.first_call_only.clear()

    def forget(self) -> None:
        """Drop every kept reference pass: the next call runs its reference passes afresh."""
        self.tapes.clear()
        self.unkept.clear()
        self.unchecked.clear()
        self.first_call_only.clear()
        self.vetted_with_grad.clear()
        if self.vetted is not None:
            self.vetted.clear()

    def reuse(self, block: Block, context: list[Tensor], state: PreservedState) -> tuple[Tape, Tensor] | None:
        """The kept reference pass of the block's distinct references with ``context`` (a tape to be consumed by one
        input pass, and its outputs), where one is kept and, once a call, a plain forward of those rows still gives
        its outputs bit for bit (else it is dropped); None where none is. ``state``: the model's state, taken before
        (each plain forward restores it)."""
        key = kept_key(block, context)
        vetted = self.vetted
        kept = self.tapes.get(key) if key not in self.unkept else None
        if kept is None:
            return None
        entries, outputs, _ = kept
        if vetted is not None and key in vetted:
            return Tape(list(entries)), outputs
        if self.computes(block, context, outputs, state):
            self.unchecked.discard(key)
            if vetted is not None:
                vetted.add(key)
            return Tape(list(entries)), outputs
        del self.tapes[key]
        if key in self.unchecked:  # the constructor's pass, never vetted: a plain forward does not give
            self.unkept.add(key)  # a pass's outputs (a fast path: torch's fused transformer layers)
        return None

    def keep(
        self,
        block: Block,
        context: Any,
        tape: Tape,
        outputs: Tensor,
        state: PreservedState | None,
        first_call: bool = False,
        recorded_now: bool = False,
    ) -> None:
        """Keep the reference pass ``tape`` on the block's distinct references (and its ``outputs``) for later blocks
        and calls, where it fits the bytes kept and a plain forward gives its outputs bit for bit (checked here with
        ``state``, the model's state taken before; with None, unchecked until its first reuse). ``context``: the
        context inputs' values the pass ran with. ``first_call``: over the bytes kept, held until the end of the
        first call all the same (the memory it takes is taken now, and that call would take it again to run the same
        pass). ``recorded_now``: the pass ran in this call of the front door, which then counts it as vetted."""
        key = kept_key(block, context)
        if recorded_now and self.vetted is not None:
            self.vetted.add(key)
        if key in self.unkept:
            return
        size = tape_bytes(tape) + outputs.numel() * outputs.element_size()
        over = size + self.bytes() > KEPT_TAPE_BYTES
        if (over and not first_call) or (state is not None and not self.computes(block, context, outputs, state)):
            self.unkept.add(key)  # (over the bytes kept, or a plain forward does not give the pass's outputs)
        else:
            if over:
                self.first_call_only.add(key)
            # (the input pass replaces the entries it takes in tape's own list)
            self.tapes[key] = (list(tape.entries), outputs, size)
            if state is None:
                self.unchecked.add(key)

    def held(self, block: Block, context: Any) -> tuple[list[TapeEntry], Tensor, int] | None:
        """The kept pass of the block's references with ``context`` that later calls may take (not one held for the
        first call only), or None."""
        key = kept_key(block, context)
        return None if key in self.first_call_only else self.tapes.get(key)

    def fit_repeated(self, block: Block, context: Any, samples: int) -> bool:
        """Whether the kept pass of the block's references with ``context`` may keep its entries repeated for
        ``samples`` samples too: it is kept between calls, and that fits the bytes kept."""
        return self.held(block, context) is not None and (samples + 1) * self.bytes() <= KEPT_TAPE_BYTES

    def distinct_rows(self, block: Block, context: list[Tensor], copies: bool = True) -> list[Tensor]:
        """The block's distinct references, the context inputs at ``context``'s values (one row, repeated): copies, or
        views of the background where a caller copies them itself (``copies=False``)."""
        given = dict(zip(self.context_inputs, context, strict=True))
        r0, r1 = block.r0, block.r1
        rows = [given[t].expand(r1 - r0, *given[t].shape[1:]) if t in given else b[r0:r1] for t, b in enumerate(self.background)]
        return [row.clone() for row in rows] if copies else rows

    def shared_context(self, inputs: list[Tensor], block: Block) -> list[Tensor] | None:
        """The context inputs' values of the block's first sample (one row each), where every sample of the block
        has the same (then their pairs' references all take them), else None."""
        shared = []
        for t in self.context_inputs:
            rows = inputs[t][block.s0 : block.s1]
            first = rows[:1]
            if not torch.equal(rows, first.expand_as(rows)):
                return None
            shared.append(first)
        return shared

    def bytes(self) -> int:
        """The bytes of the tapes kept between calls (a tape held for the first call only is not counted)."""
        return sum(size for key, (_, _, size) in self.tapes.items() if key not in self.first_call_only)

    def computes(self, block: Block, context: list[Tensor], outputs: Tensor, state: PreservedState) -> bool:
        """Whether a plain forward of the block's references (with ``context``) gives ``outputs`` bit for bit (see
        :meth:`reuse`); the model's state is restored to ``state`` (taken before).

        The forward runs without autograd first and, where that misses, once with it: torch's transformer layers take
        a fused fast path when nothing is recorded for autograd (``nn.TransformerEncoderLayer``,
        ``nn.MultiheadAttention`` in eval mode), whose outputs differ in their last bits from the layer's own
        operations, which the pass runs; with autograd recording (the rows' floating inputs require grad, as the
        pass's tracked inputs do, frozen parameters or not) they run those. Which one gave the outputs is remembered
        for the block, so that a later vet runs one forward."""
        key = kept_key(block, context)
        for grad in (False, True) if key not in self.vetted_with_grad else (True,):
            rows = self.distinct_rows(block, context)  # (copies: their own leaves)
            if grad:
                rows = [r.requires_grad_() if r.is_floating_point() else r for r in rows]
            try:
                with torch.set_grad_enabled(grad):
                    now = self.take(self.model(*rows))
            except Exception:  # noqa: BLE001 (the pass runs and reports what fails)
                return False
            finally:
                state.restore()
            same = isinstance(now, Tensor) and now.shape == outputs.shape and now.dtype == outputs.dtype
            if same and bool(torch.equal(now, outputs)):
                if grad:
                    self.vetted_with_grad.add(key)
                return True
        return False


def kept_key(block: Block, context: Any) -> tuple[Any, ...]:
    """The key of a kept reference pass: the block's references and the context inputs' values it ran with."""
    return (block.r0, block.r1, *(value_key(c) for c in context))


def value_key(t: Tensor) -> tuple[Any, ...]:
    """A tensor's values as a key: its dtype, shape, device and bytes (whatever its dtype: bfloat16 has no numpy one)."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    return str(t.dtype), tuple(t.shape), str(t.device), data


def tape_bytes(tape: Tape) -> int:
    """The bytes of the tensors ``tape``'s entries hold."""
    size = 0
    for entry in tape.entries:
        for t in [*(entry.references or ()), *(() if entry.output is None else (entry.output,))]:
            size += t.numel() * t.element_size()
    return size
