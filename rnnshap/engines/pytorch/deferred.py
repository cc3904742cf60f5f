"""Refusals that wait for the output: an operation with no rule whose results may never reach it.

A model may compute more than it returns (a norm that only feeds a training loss, a statistic for
logging). Refusing such an operation at once would refuse a model whose output is perfectly
explainable, so where that is safe the pass *defers* the refusal: the results of the operation carry
its name (a *taint*), every operation on tainted tensors passes the names on to its results (and to
the tensors it writes into), and at the end of the pass the operations whose names reach the output
are refused (``AttributionMode.refuse_deferred``). Refusals of values taken out of torch and of
branches are never deferred (:data:`NEVER_DEFERRED`): what follows them is not a tensor to taint.
"""

from __future__ import annotations

from typing import Any

import torch

from .calls import flatten_call, in_place_target
from .tensor_map import TensorMap, tensors_of

Tensor = torch.Tensor

#: kinds of refusal never deferred: values taken out of torch, branches, grad-off and detached paths
NEVER_DEFERRED = frozenset({"control", "escape", "integer", "no_grad", "function", "detach"})


class DeferredRefusals:
    """The deferred refusals of one pass, and the tensors computed from their results."""

    def __init__(self) -> None:
        #: the deferred operations: name → (reason, advice)
        self.pending: dict[str, tuple[str, str]] = {}
        #: tensors computed from the results of deferred refusals → the names of those operations
        self.taints = TensorMap()
        #: the random draws of the pass (see :meth:`draw`), by name
        self.draws: set[str] = set()

    def draw(self, name: str, result: Any) -> None:
        """A random draw: its results carry ``name`` on like a deferred refusal's, so that a draw whose
        result reaches the output (or a Python value, a branch) is told from one that never does (a
        dropout mask Keras draws and does not use at inference; see :meth:`draws_reaching`)."""
        self.draws.add(name)
        self._taint(result, name)

    def _taint(self, result: Any, name: str) -> None:
        """The tensors of ``result`` carry ``name`` on."""
        for t in tensors_of(result):
            if isinstance(t, Tensor):
                self.taints[t] = self.taints.get(t, set()) | {name}

    def _names_reaching(self, output: Any) -> set[str]:
        """The names carried by the tensors of ``output`` (and the tensors they are views of)."""
        reached: set[str] = set()
        for t in tensors_of(output):
            if isinstance(t, Tensor):
                reached |= self.taints.get(t, set())
                if t._base is not None:
                    reached |= self.taints.get(t._base, set())
        return reached

    def draws_reaching(self, output: Any) -> set[str]:
        """The names of the pass's draws whose results reach ``output`` (a draw read into a Python value, a
        branch, is not followed: the forward run from other random states tells whether it matters)."""
        return self._names_reaching(output) & self.draws if self.draws else set()

    def constant(self, value: Tensor) -> None:
        """``value`` depends on no tainted value (the indices of a ``topk`` of every position, taken in order)."""
        if value in self.taints:
            del self.taints[value]

    def defer(self, name: str, reason: str, advice: str, result: Any, refused: bool) -> None:
        """Refuse ``name`` only if the output turns out to depend on its ``result`` (a norm that only feeds a
        training loss changes no value of the output): its results carry its name on. ``refused``: the pass
        refused ``name`` already (its results are tainted all the same)."""
        if not refused:
            self.pending.setdefault(name, (reason, advice))
        self._taint(result, name)

    def spread(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        """Results (and the targets written in place, with the tensors they are views of) of an operation
        on tensors computed from a deferred refusal's result carry its name on."""
        taints = self.taints
        leaves = flatten_call(args, kwargs)[0]
        names: set[str] = set()
        for leaf in leaves:
            if isinstance(leaf, Tensor):
                names |= taints.get(leaf, set())
                if leaf._base is not None:
                    names |= taints.get(leaf._base, set())
        if not names:
            return
        targets = [t for t in tensors_of(result) if isinstance(t, Tensor)]
        target = in_place_target(func, args, kwargs)
        name = getattr(func, "__name__", "")
        if target is None and args and isinstance(args[0], Tensor) and name.endswith("_") and not name.endswith("__"):
            target = args[0]  # (an in-place method by its name; not a dunder: ``h[i]``, ``__getitem__``, reads h)
        if target is not None:
            targets += [target] + ([target._base] if target._base is not None else [])
        for t in targets:
            taints[t] = taints.get(t, set()) | names

    def reached_by(self, output: Any) -> list[tuple[str, str, str]]:
        """``(name, reason, advice)`` of each deferred operation that ``output`` depends on, by name."""
        reached = self._names_reaching(output)
        return [(name, *self.pending[name]) for name in sorted(reached) if name in self.pending]


__all__ = ["NEVER_DEFERRED", "DeferredRefusals"]
