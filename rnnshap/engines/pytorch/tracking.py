"""The state of one pass of the PyTorch engine and its marking of input-dependent tensors (:class:`TrackingPass`, the
base of :class:`~rnnshap.engines.pytorch.passes.AttributionMode`): which tensors are tracked (the model's inputs,
every floating-point result of an operation on a tracked operand, and buffers a tracked value is written into), the
refusals collected by name, integer results of rules followed as picked indices, and the bool or integer results of
refused operations followed as decisions. See ``passes.py`` for the two passes and how an operation goes through them."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ...errors import UnsupportedOperationError
from ...rules.base import OpCall, PairGrid, Rule
from ...rules.registry import RuleRegistry
from .deferred import DeferredRefusals
from .discrete import Integers, Leaf
from .functions import enclosing_function, function_name
from .picked import Picked
from .tape import Tape
from .tensor_map import TensorMap, tensors_of

Tensor = torch.Tensor


class RefusedNow(Exception):
    """A pass stopped at a refusal (see :meth:`TrackingPass.refuse_now`); not a ``TypeError``."""


class TrackingPass(TorchFunctionMode):
    """One pass's state, and the tracking of input-dependent tensors, refusals, picked indices and decisions it
    keeps (see the module docstring)."""

    def __init__(self, registry: RuleRegistry, tape: Tape, replay: bool, pairs: PairGrid | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.tape = tape
        self.replay = replay
        self.pairs = pairs
        self._tracked = TensorMap()
        self.unsupported: dict[str, str] = {}
        #: the kind of advice for each refused operation (a key of rnnshap.errors.ADVICE)
        self.advice: dict[str, str] = {}
        #: bases written into in place with tracked values: their views are tracked too
        self._written = TensorMap()
        #: integer results of rules on tracked tensors (the indices of torch.max) → the op that chose them
        self.picked_indices = TensorMap()
        #: the topk calls unsorted, taken in one of the orders torch may return (rules/selection.py): the constructor
        #: checks that the output does not depend on that order (``ModelChecks.unordered_topk``)
        self.unordered_topks: set[str] = set()
        #: bool or integer results of refused operations on tracked tensors (x > 0) → the op: a branch on them is named
        self._decisions = TensorMap()
        #: > 0 while a refused custom Function runs as torch runs it (its grad-off inside is not refused again)
        self._quiet = 0
        #: inputs the model masks by comparing them with values → (the explained samples' values, the values):
        #: the comparison reads the sample's values on both sides (see ``keras_on_torch.masked_input_op``)
        self.sample_masks = TensorMap()
        #: integer inputs followed to their embeddings, casts to float and other uses (see discrete.py)
        self.discrete = Integers(self)
        #: where the followed integer inputs are attributed: every embedding output and cast to float
        self.embedded: list[Leaf] = self.discrete.leaves
        #: the rows of the batch the pass runs on (its inputs' first dimension), when known: a branch on a mask
        #: is followed where every row alone would take the batch's (see ``PickedUses._uniform_decision``)
        self.batch_rows: int | None = None
        #: the dtypes of input-dependent tensors: the least precise one bounds how exactly Σφ can add up
        self.dtypes: set[torch.dtype] = set()
        #: the operation that first made an input-dependent tensor of each dtype (said where precision drops)
        self.dtype_origins: dict[torch.dtype, str] = {}
        self._last_name = "the model's input"
        #: roots and inverse roots among the tracked tensors (see handwritten_norms.py): a normalization written by
        #: hand takes the built-in norms' rule
        self.scales = TensorMap()
        #: whether any integer input is followed (until one is, no operation involves one)
        self._following = False
        #: the random functions forward() called (None: not watched; see ``run_pass``'s ``watch_random``)
        self.random_draws: list[str] | None = None
        #: whether the pass drew from a random generator the model holds (watched only: see ``run_pass``)
        self.drew = False
        #: ``.data`` of input-dependent tensors: usable for their shape, dtype and device only (``x.data.new(...)``)
        self._data_views = TensorMap()
        #: refusals of operations whose results may not reach the output, refused only where the output
        #: depends on them (see deferred.py and ``refuse_deferred``)
        self.deferred = DeferredRefusals()
        #: ``self.deferred.taints``, asked on every operation (empty until an operation is deferred)
        self._taints = self.deferred.taints

    # -- tracking -------------------------------------------------------------------------------
    def track(self, value: Any) -> None:
        """Mark every floating-point tensor in ``value`` as input-dependent."""
        if isinstance(value, Tensor):
            if value.is_floating_point() or value.is_complex():
                self._tracked[value] = True
                if value.dtype not in self.dtypes:
                    self.dtypes.add(value.dtype)
                    self.dtype_origins[value.dtype] = self._last_name
            return
        for leaf in tensors_of(value):
            if isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
                self._tracked[leaf] = True
                if leaf.dtype not in self.dtypes:
                    self.dtypes.add(leaf.dtype)
                    self.dtype_origins[leaf.dtype] = self._last_name

    def is_tracked(self, value: Any) -> bool:
        if not isinstance(value, Tensor):
            return False
        if value in self._tracked:
            return True
        if self._written:  # a view of a buffer that a tracked value was written into
            base = value._base
            return base is not None and base in self._written
        return False

    def tracked_among(self, leaves: list[Any]) -> tuple[int, ...]:
        """The positions of the tracked tensors among ``leaves`` (``is_tracked`` of each, inlined)."""
        tracked, written = self._tracked, self._written
        found: list[int] = []
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor) and (leaf in tracked or (written and leaf._base is not None and leaf._base in written)):
                found.append(i)
        return tuple(found)

    def written_into(self, target: Tensor) -> None:
        """``target`` (and the tensor it is a view of) received a tracked value in place."""
        self.track(target)
        root = target._base if target._base is not None else target
        if root.is_floating_point() or root.is_complex():
            self._tracked[root] = True
            self._written[root] = True

    def refuse_now(self, name: str, error: ValueError) -> None:
        """Refuse ``name``, whose rule found as it ran that it does not fit the call (``error``, its advice in
        ``error.advice``; ``"operands"`` by default), and stop the pass: :func:`.runner.run_pass` raises the pass's
        refusals. (An :class:`~rnnshap.errors.UnsupportedOperationError` raised here, a ``TypeError``, would become
        Python's own inside an operator such as ``x > 0``, which torch answers NotImplemented for.)"""
        self.refuse(name, str(error), getattr(error, "advice", "operands"))
        raise RefusedNow(name) from error

    def refuse(self, name: str, reason: str, advice: str = "rule") -> None:
        """Refuse ``name``; ``advice`` is the kind of advice that fits (a key of rnnshap.errors.ADVICE)."""
        if name not in self.unsupported:
            self.unsupported[name] = reason
            self.advice[name] = advice

    def opaque(self, run: Callable[[], Any], track: bool = True) -> Any:
        """Run a custom Function as torch does, gradients disabled inside (a refused one, to go on to
        the end of the pass, with its outputs tracked; or one of torch's own, such as the identity of
        backward hooks, whose operations track their results themselves)."""
        self._quiet += 1
        try:
            result = run()
        finally:
            self._quiet -= 1
        if track:
            self.track(result)
        return result

    def _grad_off_refused(self) -> bool:
        """Whether an input-dependent value computed here with gradients disabled is refused (see
        ``_refuse_grad_off``): in a custom Function's forward that torch runs, or in inference mode; not under
        the model's own ``no_grad()`` (asked first, so that a model under it pays no scan of each result)."""
        return not self._quiet and (torch.is_inference_mode_enabled() or enclosing_function() is not None)

    def _refuse_grad_off(self, name: str) -> None:
        """``name`` runs on a tracked tensor with gradients disabled: refuse what disabled them."""
        if self._quiet:
            return
        function = enclosing_function()
        if function is not None:  # torch runs a custom Function's forward (not routed to the pass)
            self.refuse(
                f"{function_name(function)} (a custom torch.autograd.Function)",
                "torch runs its forward() with gradients disabled and takes its backward(), which gives gradients, "
                "not DeepLIFT multipliers",
                "function",
            )
            return
        if not torch.is_inference_mode_enabled():
            return  # the model's no_grad(): followed as detach() is (see __torch_function__)
        reason = f"{name} runs on an input-dependent tensor in inference mode"
        self.refuse("torch.inference_mode() in forward()", reason, "no_grad")

    def _mark_indices(self, result: Any, name: str, rule: Rule | None = None, call: OpCall | None = None) -> None:
        """Integer results of a rule (the indices of torch.max) are followed: see ``PickedUses.index_use`` (picked.py).

        Where the rule picks (``index_handle``: argmax, max and min over a dimension, top-1), each
        carries its handle: the indices as float64 values, tracked, with the pick's multipliers in
        the input pass (see rnnshap/rules/selection.py)."""
        if isinstance(result, Tensor) and (result.is_floating_point() or result.is_complex()):
            return
        unordered = getattr(rule, "unordered", None) if rule is not None else None
        if unordered is not None and call is not None and unordered(call):
            self.unordered_topks.add(name)  # (taken in one of the orders torch may return: checked at construction)
        constant = getattr(rule, "constant_indices", None) if rule is not None else None
        if constant is not None and call is not None and constant(call):
            return  # (indices that do not depend on the values: a topk of every position, taken in order)
        handle_of = getattr(rule, "index_handle", None) if rule is not None else None
        for leaf in tree_flatten(result)[0]:
            if isinstance(leaf, Tensor) and not (leaf.is_floating_point() or leaf.is_complex()):
                handle = None
                if handle_of is not None and leaf.dtype != torch.bool:
                    if self.replay:
                        with torch.enable_grad():  # (an argmax under no_grad() picks all the same)
                            try:
                                handle = handle_of(call, leaf)
                            except ValueError as error:  # (a pick the rule finds it cannot credit)
                                self.refuse_now(name, error)
                    else:
                        handle = leaf.to(torch.float64)
                    if handle is not None:
                        self.track(handle)
                self.picked_indices[leaf] = Picked(name, handle)

    def mark_decisions(self, result: Any, name: str) -> None:
        for leaf in tree_flatten(result)[0]:
            if isinstance(leaf, Tensor) and not (leaf.is_floating_point() or leaf.is_complex()):
                self._decisions[leaf] = name

    def raise_if_unsupported(self) -> None:
        """Raise for every refused operation (the deferred ones the output depends on are refused by
        ``refuse_deferred``, which ``run_pass`` calls first)."""
        if self.unsupported:
            advice = self.advice
            raise UnsupportedOperationError([(name, why, advice.get(name, "rule")) for name, why in self.unsupported.items()])

    def follow_discrete(self, index: int, tensor: Tensor, shadow: Tensor | None = None) -> None:
        """Follow the integer input ``index`` (token ids, a number, or context such as lengths);
        ``shadow``: in the reference pass, the explained samples' values of the same input."""
        self._following = True
        self.discrete.follow(index, tensor, shadow)


__all__ = ["TrackingPass"]
