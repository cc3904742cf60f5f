"""The reference passes the PyTorch engine keeps for later blocks and calls (:class:`KeptPasses`, a base of
:class:`~rnnshap.engines.pytorch.engine.TorchEngine`): which are kept (by a block's references and the context
inputs' values), how a kept pass is vetted by a plain forward before it is reused, and when they are dropped.
What runs a reference pass and decides to keep it (``_distinct_reference_pass``, ``_keep``, within
``KEPT_TAPE_BYTES``) is the engine's, in engine.py.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from ..base import Block, Engine
from .captured import CapturedPasses
from .checks import ModelChecks
from .state import PreservedState
from .tape import Tape, TapeEntry
from .traced import TracedPasses

Tensor = torch.Tensor


class KeptPasses(Engine):
    """The kept reference passes of a :class:`~rnnshap.engines.pytorch.engine.TorchEngine` (see
    ``_distinct_reference_pass`` there)."""

    #: context inputs (set by the engine: see its constructor)
    context_inputs: list[int]
    model: torch.nn.Module
    background: list[Tensor]
    checks: ModelChecks
    #: the explained output tensor of the model's result (the engine's)
    _take: Callable[[Any], Any]
    _traced: TracedPasses | None
    _captured: CapturedPasses | None
    _distinct_allowed: bool
    _rows_laid_out: bool | None

    def _init_kept(self) -> None:
        """No pass kept yet."""
        #: the tapes and outputs of reference passes on distinct references, by (r0, r1, the context's bytes) (see
        #: _distinct_reference_pass)
        self._kept_tapes: dict[Any, tuple[list[TapeEntry], Tensor, int]] = {}
        #: blocks whose reference pass is not kept (over the bytes allowed, or no plain forward gives its outputs)
        self._unkept: set[Any] = set()
        #: kept tapes not yet vetted by a plain forward (the constructor's reference pass, see ``_keep``)
        self._unchecked: set[Any] = set()
        #: during a call of the front door (:meth:`call`), the kept tapes vetted (or recorded) in it; None outside one,
        #: where every block vets what it reuses
        self._vetted: set[Any] | None = None
        #: kept tapes over the bytes kept between calls, held for the first call only (the constructor's reference
        #: pass, which that call would run again: see ``_keep``)
        self._first_call_only: set[Any] = set()
        #: kept tapes whose plain forward gives the pass's outputs with autograd recording (see ``_computes``)
        self._vetted_with_grad: set[Any] = set()

    @property
    def distinct_references(self) -> bool:
        """Whether a block of several samples runs its reference pass on its distinct references only, the tape then
        repeated for its samples (see ``ModelChecks.rows_alone``, checked on first use); set to False, every block runs its
        reference pass on its pairs."""
        if self._distinct_allowed and self._rows_laid_out is None:
            self._rows_laid_out = self.checks.rows_alone()
        return self._distinct_allowed and bool(self._rows_laid_out)

    @distinct_references.setter
    def distinct_references(self, value: bool) -> None:
        self._distinct_allowed = self._distinct_allowed and value

    @contextlib.contextmanager
    def call(self, just_built: bool = False) -> Iterator[None]:
        # the kept reference passes are vetted once a call (see _distinct_reference_pass); a just-built explainer's
        # are its constructor's, recorded on the model as it is
        self._vetted = set(self._kept_tapes) if just_built else set()
        try:
            yield
        finally:
            self._vetted = None
            self._release_held()

    def _release_held(self) -> None:
        """Drop the tapes held for the first call only (over the bytes kept between calls: see ``_keep``)."""
        for key in self._first_call_only:
            self._kept_tapes.pop(key, None)
            self._unchecked.discard(key)
            self._unkept.add(key)
        self._first_call_only.clear()

    def forget_reference_passes(self) -> None:
        """Drop every kept reference pass: the next call runs its reference passes afresh (see
        ``_distinct_reference_pass``)."""
        self._kept_tapes.clear()
        self._unkept.clear()
        self._unchecked.clear()
        self._first_call_only.clear()
        self._vetted_with_grad.clear()
        if self._vetted is not None:
            self._vetted.clear()
        if self._traced is not None:
            self._traced.forget()  # (their constants are the kept passes' tensors)
        if self._captured is not None:
            self._captured.forget()

    def _distinct_rows(self, block: Block, context: list[Tensor]) -> list[Tensor]:
        """Copies of the block's distinct references, the context inputs at ``context``'s values (one row, repeated)."""
        given = dict(zip(self.context_inputs, context, strict=True))
        n = block.r1 - block.r0
        return [
            given[t].expand(n, *given[t].shape[1:]).clone() if t in given else b[block.r0 : block.r1].clone()
            for t, b in enumerate(self.background)
        ]

    def _shared_context(self, inputs: list[Tensor], block: Block) -> list[Tensor] | None:
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

    def _kept_bytes(self) -> int:
        """The bytes of the tapes kept between calls (a tape held for the first call only is not counted)."""
        return sum(size for key, (_, _, size) in self._kept_tapes.items() if key not in self._first_call_only)

    def _computes(self, block: Block, context: list[Tensor], outputs: Tensor, state: PreservedState) -> bool:
        """Whether a plain forward of the block's references (with ``context``) gives ``outputs`` bit for bit (see
        ``_distinct_reference_pass``); the model's state is restored to ``state`` (taken before).

        The forward runs without autograd first and, where that misses, once with it: torch's transformer layers take
        a fused fast path when nothing is recorded for autograd (``nn.TransformerEncoderLayer``,
        ``nn.MultiheadAttention`` in eval mode), whose outputs differ in their last bits from the layer's own
        operations, which the pass runs; with autograd recording (the rows' floating inputs require grad, as the
        pass's tracked inputs do, frozen parameters or not) they run those. Which one gave the outputs is remembered
        for the block, so that a later vet runs one forward."""
        key = kept_key(block, context)
        for grad in (False, True) if key not in self._vetted_with_grad else (True,):
            rows = self._distinct_rows(block, context)  # (copies: their own leaves)
            if grad:
                rows = [r.requires_grad_() if r.is_floating_point() else r for r in rows]
            try:
                with torch.set_grad_enabled(grad):
                    now = self._take(self.model(*rows))
            except Exception:  # noqa: BLE001 (the pass runs and reports what fails)
                return False
            finally:
                state.restore()
            same = isinstance(now, Tensor) and now.shape == outputs.shape and now.dtype == outputs.dtype
            if same and bool(torch.equal(now, outputs)):
                if grad:
                    self._vetted_with_grad.add(key)
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
