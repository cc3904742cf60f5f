"""The two passes of the engine, as one ``TorchFunctionMode``.

1. Reference pass (``replay=False``): the model runs on the references. Every operation
   that touches an input-dependent ("tracked") tensor is looked up in the rule registry; ones
   with a rule other than the gradient copy their reference operands to the tape; ones with no
   rule are collected and reported together.
2. Input pass (``replay=True``): the model runs on the inputs. Every operation takes its entry
   from the tape, checks that it is the same operation on the same shapes, and runs through its
   rule, which builds the output so that one backward pass yields the DeepLIFT multipliers.

Which tensors are tracked is decided the same way in both passes: the model's inputs are, and so
is every floating-point result of an operation with a tracked operand (and the target of an
in-place operation with a tracked operand). Parameters and anything computed from them alone are
not, so ``x * weight`` is a product with a constant. A view of a tensor written into in place
with a tracked value (``outs[:, t] = h`` into ``outs = torch.zeros(...)``) is tracked too.

Both passes run with gradients enabled as the model sees them (the reference pass records no graph:
each operation runs with gradients off), so that ``torch.no_grad()`` inside forward() is seen, and
refused, in the reference pass the constructor runs. Custom ``torch.autograd.Function`` calls and
``torch.utils.checkpoint`` are run through their forward's operations (see ``functions.py``);
integer results of rules (the indices of ``torch.max``) are followed, and any use of them refused.
Every pass leaves the model's buffers and tensor attributes as it found them (``PreservedState``).

Where the parts are: ``runner.py`` runs one pass over a model (:func:`~.runner.run_pass`); this module
holds :class:`AttributionMode`, the per-operation handler. It hands integer inputs to ``discrete.py``,
picked indices and comparison masks to ``picked.py``, inputs a Keras ``Masking`` compares to
``keras_on_torch.py``, and refusals that wait for the output to ``deferred.py``; hand-written
normalizations are marked by ``handwritten_norms.py``; its bookkeeping lives in the maps of
``tensor_map.py``. What remains here is one unit: the tracking, the dispatch to a rule and the tape,
which share the mode's per-pass state and sit on the per-operation fast path, where a call into another
module per operation would cost time. One operation goes ``__torch_function__`` → ``_run`` (the grad
mode) → ``intercept`` → ``_followed_use`` (operands the followers own) or ``_on_tracked`` (linear ones
at once) → ``dispatch``, which decides between ``_without_rule`` (refused), ``_linear``, a misfit
(refused), ``_record`` (reference pass) and ``_replay`` (input pass). (This file is over the ~600-line
mark with that reason: the methods on that path share the per-pass state.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ...errors import ModelStateError, UnsupportedOperationError
from ...rules.base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from ...rules.composite import Quotient
from ...rules.elementwise import Bilinear, Product
from ...rules.refusals import is_reduction, misfit
from ...rules.registry import RuleRegistry, op_key, op_name
from ...rules.selection import topk_of_every_position
from ...rules.spectral import complex_rule
from .calls import cached_op_name, flatten_call, in_place_target, out_of_place
from .deferred import NEVER_DEFERRED, DeferredRefusals
from .discrete import Integers, Leaf
from .functions import enclosing_function, function_name
from .handwritten_norms import mark_of, mark_result, normalizing_rule
from .keras_on_torch import masked_input_op
from .picked import Picked, PickedUses
from .safety import random_call
from .tape import Tape, TapeEntry
from .tensor_map import TensorMap, tensors_of

Tensor = torch.Tensor


def _shapes(leaves: list[Any], tracked: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The shapes of the tracked operands (``torch.Size``, a tuple)."""
    if len(tracked) == 1:
        return (leaves[tracked[0]].shape,)
    return tuple([leaves[i].shape for i in tracked])


def _eval_only_advice(call: OpCall, name: str) -> str:
    """What to do about a layer that is random or couples the samples of a batch (EvalOnly)."""
    coupling = "which makes its output random or couples the samples of a batch, so no attribution can add up."
    args = call.args
    running_mean = args[1] if len(args) > 1 else call.kwargs.get("running_mean")
    if "batch_norm" in name and running_mean is None:
        return (
            f"{coupling} It has no running statistics (a BatchNorm built with track_running_stats=False), so it "
            "normalizes with the batch's statistics even in eval mode: give it running statistics, or use a "
            "normalization within each sample (LayerNorm, GroupNorm)."
        )
    return (
        f"{coupling} Call model.eval() before explaining. If the model is in eval mode already, forward() asks for "
        "training behaviour itself (training=True in a functional call): pass training=self.training instead."
    )


_SET_GRAD_ENABLED = torch._C._set_grad_enabled
#: hooks on tensors, registered while the model runs (a gradient-norm monitor a forward hook adds to its output):
#: training's, set aside in rnnshap's passes as modules' backward hooks are (safety.AsFunction). Run in rnnshap's
#: batched backward they would change its multipliers, or crash it (``g.norm().item()`` under vmap)
_TENSOR_HOOKS = frozenset({torch.Tensor.register_hook, torch.Tensor.register_post_accumulate_grad_hook})
#: ``topk``, whose indices are a constant where it returns every position unsorted (rules/selection.py)
_TOPKS = frozenset({torch.topk, torch.Tensor.topk})


class _SetAsideHook:
    """The handle of a tensor hook set aside in rnnshap's passes (never registered): removing it does nothing."""

    def remove(self) -> None:
        return None

    def __enter__(self) -> _SetAsideHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _is_data_getter(func: Any) -> bool:
    """Whether ``func`` is the getter of ``Tensor.data`` (a fresh method-wrapper on each access)."""
    return (
        type(func).__name__ == "method-wrapper"
        and getattr(func, "__name__", "") == "__get__"
        and op_key(func) == ("getter", "data")
    )


#: operations whose second operand gives only a shape (or a dtype): ``idx.expand_as(src)`` as PyG's scatter
#: writes it. With only that operand input-dependent, the result is a constant.
_SHAPE_GIVERS = frozenset({torch.Tensor.expand_as, torch.Tensor.view_as, torch.Tensor.reshape_as, torch.Tensor.type_as})
#: ``torch.broadcast_tensors``: each result is its operand broadcast (linear in it alone)
_BROADCASTS = frozenset(
    f for f in (torch.broadcast_tensors, getattr(torch.functional, "broadcast_tensors", None)) if f is not None
)
#: operations that read only the shape, dtype or device of a tensor: all a ``.data`` view may be used for
_SHAPE_READS = frozenset({"new", "new_zeros", "new_ones", "new_empty", "new_full", "size", "dim", "numel", "__len__", "stride",
                          "is_contiguous", "nelement", "ndimension", "element_size", "zeros_like", "ones_like", "empty_like",
                          "full_like", "__get__"})


class AttributionMode(TorchFunctionMode):
    """Intercepts torch operations for one pass of the engine (see the module docstring)."""

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
        #: the topk calls of every position unsorted, taken in the positions' own order (rules/selection.py): the
        #: constructor checks that the output does not depend on that order (``Engine._check_unordered_topk``)
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
        #: the uses of indices picked by argmax, max or min, top-1 (see picked.py)
        self.picks = PickedUses(self)
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

    def _written_into(self, target: Tensor) -> None:
        """``target`` (and the tensor it is a view of) received a tracked value in place."""
        self.track(target)
        root = target._base if target._base is not None else target
        if root.is_floating_point() or root.is_complex():
            self._tracked[root] = True
            self._written[root] = True

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
        constant = getattr(rule, "constant_indices", None) if rule is not None else None
        if constant is not None and call is not None and constant(call):
            self.unordered_topks.add(name)
            return  # (indices that do not depend on the values: a topk of every position, taken in order)
        handle_of = getattr(rule, "index_handle", None) if rule is not None else None
        for leaf in tree_flatten(result)[0]:
            if isinstance(leaf, Tensor) and not (leaf.is_floating_point() or leaf.is_complex()):
                handle = None
                if handle_of is not None and leaf.dtype != torch.bool:
                    if self.replay:
                        with torch.enable_grad():  # (an argmax under no_grad() picks all the same)
                            handle = handle_of(call, leaf)
                    else:
                        handle = leaf.to(torch.float64)
                    if handle is not None:
                        self.track(handle)
                self.picked_indices[leaf] = Picked(name, handle)

    def _decision_use(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool
    ) -> Any:
        """An operation on the bool or integer result of a refused operation (``x > 0``): refused
        itself when it turns it into a Python value (``if (x > 0).any():``), so that the branch is
        named with the comparison. (Only after a refusal: the pass fails anyway, speed is moot.)"""
        origin = next(self._decisions[leaf] for leaf in leaves if isinstance(leaf, Tensor) and leaf in self._decisions)
        rule = self.registry.op_rule(func)
        if isinstance(rule, Refuse) and getattr(rule, "advice", None) == "control":
            self.refuse(op_name(func), f"{rule.reason}: a value computed by {origin} from input-dependent values", "control")
        result = self.intercept(func, types, args, kwargs, user_grad, decided=True)
        self.mark_decisions(result, origin)
        return result

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

    # -- interception ---------------------------------------------------------------------------
    def follow_discrete(self, index: int, tensor: Tensor, shadow: Tensor | None = None) -> None:
        """Follow the integer input ``index`` (token ids, a number, or context such as lengths);
        ``shadow``: in the reference pass, the explained samples' values of the same input."""
        self._following = True
        self.discrete.follow(index, tensor, shadow)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if func in _TENSOR_HOOKS:
            return _SetAsideHook()
        if self._taints or self.random_draws is not None:
            result = self._run(func, types, args, kwargs)
            self.deferred.spread(func, args, kwargs or {}, result)
            if func in _TOPKS and topk_of_every_position(args, kwargs or {}):
                self.deferred.constant(result.indices)  # (taken in the positions' order: rules/selection.py)
            if self.random_draws is not None and random_call(func, args, kwargs):  # (watched: the constructor's probe)
                self.random_draws.append(op_name(func))
                self.deferred.draw(op_name(func), result)  # its results carry its name (see deferred.py)
            return result
        return self._run(func, types, args, kwargs)

    def refuse_deferred(self, output: Any) -> None:
        """Refuse the deferred operations that ``output`` depends on (see deferred.py)."""
        for name, reason, advice in self.deferred.reached_by(output):
            self.refuse(name, reason, advice)

    def _run(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if func is _SET_GRAD_ENABLED:
            return func(*args, **(kwargs or {}))  # the model's own no_grad() / enable_grad(), as it asks
        user_grad = torch.is_grad_enabled()
        if not user_grad and self.replay:
            kwargs = kwargs or {}
            flat = flatten_call(args, kwargs)  # (flattened once for both)
            tracked = self.tracked_among(flat[0])
            if self._follows_no_grad(flat[0], tracked):
                # the model's own no_grad(): statistics computed without gradients are part of the
                # function all the same, followed as detach() is (rules/base.py, Identity)
                torch._C._set_grad_enabled(True)
                try:
                    return self.intercept(func, types, args, kwargs, True, flat=flat, tracked=tracked)
                finally:
                    torch._C._set_grad_enabled(False)
            return self.intercept(func, types, args, kwargs, user_grad, flat=flat, tracked=tracked)
        if self.replay or not user_grad:
            return self.intercept(func, types, args, kwargs, user_grad)
        # the reference pass runs with gradients enabled as the model sees them, but records no graph
        torch._C._set_grad_enabled(False)
        try:
            return self.intercept(func, types, args, kwargs, user_grad)
        finally:
            torch._C._set_grad_enabled(True)

    def _follows_no_grad(self, leaves: list[Any], tracked: tuple[int, ...] | None = None) -> bool:
        """Whether an operation (its flattened arguments ``leaves``, ``tracked`` the positions of the
        input-dependent ones when known) the model runs under its own ``torch.no_grad()`` involves an
        input-dependent tensor, and runs in the input pass with gradients, as under ``detach()``: not in
        ``torch.inference_mode()`` (its tensors cannot enter a graph) nor in a custom Function's forward
        (refused: see ``_refuse_grad_off``)."""
        if self._quiet or torch.is_inference_mode_enabled():
            return False
        if tracked is None:
            tracked = self.tracked_among(leaves)
        involved = bool(tracked) or (self._following and self.discrete.involves(leaves))
        if not involved and self.picked_indices:
            involved = any(isinstance(leaf, Tensor) and leaf in self.picked_indices for leaf in leaves)
        return involved and enclosing_function() is None

    def intercept(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        user_grad: bool,
        decided: bool = False,
        masks: bool = True,
        flat: tuple[list[Any], Any, Any] | None = None,
        tracked: tuple[int, ...] | None = None,
    ) -> Any:
        """One operation of the pass, its grad mode settled (see ``_run``): integer inputs, picked
        indices, decisions and ``.data`` views go to their followers; operations on tracked tensors
        through their rule. ``decided``: the operation's bool or integer operands from refused
        operations were handled already; ``masks``: look for inputs a Keras ``Masking`` compares;
        ``flat``: ``flatten_call(args, kwargs)`` and ``tracked`` the positions of the input-dependent tensors
        among its leaves, when the caller has them already."""
        kwargs = kwargs or {}
        if masks and self.sample_masks and args and isinstance(args[0], Tensor) and args[0] in self.sample_masks:
            return masked_input_op(self, func, types, args, kwargs, user_grad, decided)
        leaves, spec, layout = flat if flat is not None else flatten_call(args, kwargs)
        if self._decisions or self._following or self.picked_indices or self._data_views:
            handled, result = self._followed_use(func, types, args, kwargs, leaves, user_grad, decided)
            if handled:
                return result
        if tracked is None:
            tracked = self.tracked_among(leaves)
        if not tracked:
            return func(*args, **kwargs)
        return self._on_tracked(func, args, kwargs, leaves, spec, layout, tracked, user_grad)

    def _followed_use(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        user_grad: bool,
        decided: bool,
    ) -> tuple[bool, Any]:
        """``(True, result)`` where an operand is followed by other rules than the tracking (see ``intercept``):
        the bool or integer result of a refused operation, a followed integer input, a number leaf,
        indices picked by a rule, a ``.data`` view; ``(False, None)`` otherwise."""
        if self._decisions and not decided and any(isinstance(leaf, Tensor) and leaf in self._decisions for leaf in leaves):
            return True, self._decision_use(func, types, args, kwargs, leaves, user_grad)
        if self._following and self.discrete.involves(leaves):
            handled, result = self.discrete.op(func, types, args, kwargs, leaves, user_grad)
            if handled:
                return True, result
        if self._following and self.discrete.numbers and any(
            isinstance(leaf, Tensor) and leaf in self.discrete.numbers for leaf in leaves
        ):
            handled, result = self.discrete.on_number(func, types, args, kwargs, leaves, user_grad)
            if handled:
                return True, result
        if self.picked_indices:
            handled, result = self.picks.index_use(func, types, args, kwargs, leaves, user_grad)
            if handled:
                return True, result
        if self._data_views and any(isinstance(leaf, Tensor) and leaf in self._data_views for leaf in leaves):
            return True, self._data_use(func, args, kwargs, leaves)
        return False, None

    def _on_tracked(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        spec: Any,
        layout: Any,
        tracked: tuple[int, ...],
        user_grad: bool,
    ) -> Any:
        """An operation with input-dependent operands (at ``tracked`` among its ``leaves``): shape givers and
        broadcasts, ``.data``, the linear ones without an :class:`OpCall` (the most common), in-place ones run
        out of place, and the rest through :meth:`dispatch`."""
        if tracked[0] != 0 and len(tracked) == 1 and func in _SHAPE_GIVERS:
            return func(*args, **kwargs)  # idx.expand_as(src): src gives the shape only
        if func in _BROADCASTS:
            return self._broadcast(func, args, kwargs, leaves, tracked)
        rule = self.registry.op_rule(func)
        if isinstance(rule, Refuse) and _is_data_getter(func):
            result = func(*args, **kwargs)  # (refused where it is used for more than its shape: see _data_use)
            self._data_views[result] = "torch.Tensor.data"
            return result
        name = self._last_name = cached_op_name(func)
        kind = type(rule)
        if rule is not None and (kind is Linear or (len(tracked) == 1 and (kind is Product or kind is Bilinear))):
            # the most common cases (shapes, indexing, sums, linear layers, a product or matmul with a
            # constant): linear, as the rule's is_linear says, without an OpCall to ask it with
            result = self._linear(func, args, kwargs, in_place_target(func, args, kwargs), rule, name)
            if not user_grad and self._grad_off_refused() and any(self.is_tracked(leaf) for leaf in tensors_of(result)):
                self._refuse_grad_off(name)
            if len(tracked) == 1:
                self._mark_scale(func, args, kwargs, leaves[tracked[0]], result)
            return result
        call = OpCall.flat(func, name, leaves, spec, tracked, self.pairs, layout)
        base, base_args, base_kwargs, target = func, args, kwargs, None
        linear = rule is not None and rule.is_linear(call)
        if not linear and any(leaves[i].is_complex() for i in tracked):
            rule = complex_rule(rule, in_place_target(func, args, kwargs) is None)  # a product of two spectra (spectral.py)
            if rule is None:
                return self._complex_refused(func, args, kwargs, name)
        if not linear:
            # in place and not linear (x.relu_(), F.relu(x, inplace=True)): run out of place, copy back
            base, base_args, base_kwargs, target = out_of_place(func, args, kwargs)
        else:  # linear and maybe in place (outs[:, t] = h, buf.index_put_(..., h)): the target becomes tracked
            target = in_place_target(func, args, kwargs)
        if linear or target is None:
            result = self.dispatch(func, args, kwargs, base, base_args, base_kwargs, target, rule, name, call, linear)
        else:  # another call, out of place: dispatch looks at it afresh
            result = self.dispatch(func, args, kwargs, base, base_args, base_kwargs, target, self.registry.op_rule(base), name)
        if not user_grad and self._grad_off_refused() and any(self.is_tracked(leaf) for leaf in tensors_of(result)):
            self._refuse_grad_off(name)  # an input-dependent value computed with gradients disabled flows on
        if len(tracked) == 1:
            self._mark_scale(func, args, kwargs, leaves[tracked[0]], result)
        elif self.scales and target is not None and target in self.scales:
            del self.scales[target]  # (written into in place with an unmarked value)
        return result

    def _complex_refused(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
        """A nonlinear operation on a complex input-dependent value other than a product (a magnitude): refused,
        since the rules are written for real values (a complex multiplier would need its conjugate in the backward,
        and a magnitude is no function of one complex variable); run as torch does, its results tracked, so that the
        pass goes on to name every refusal."""
        self.refuse(name, "it takes a complex input-dependent operand here, and its rule is written for real values", "complex")
        result = func(*args, **kwargs)
        self.track(result)
        return result

    def _broadcast(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: tuple[int, ...]
    ) -> Any:
        """``torch.broadcast_tensors(*tensors)``: each result is its operand broadcast, a linear function of it
        alone, so the results of input-dependent operands are tracked and the others are constants."""
        result = func(*args, **kwargs)
        outputs = list(result)
        if len(outputs) == len(leaves):
            for i in tracked:
                self.track(outputs[i])
        else:  # (an unusual call: every result depends on every operand as far as is known)
            self.track(result)
        return result

    def _data_use(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]) -> Any:
        """An operation on the ``.data`` of an input-dependent tensor: one that reads its shape, dtype or
        device only (``x.data.new(*size).zero_()``, OpenNMT-py's state init) makes a constant; any other
        use is refused, since ``.data`` cuts the path from the input to the output."""
        name = getattr(func, "__name__", "")
        if name in _SHAPE_READS or type(self.registry.op_rule(func)) is Constant:
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        self.refuse("torch.Tensor.data", "`.data` cuts the path from the input to the output", "detach")
        self.track(result)
        return result

    def _mark_scale(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], operand: Tensor, result: Any) -> None:
        """Mark ``result`` as a root or an inverse root where ``func`` makes or keeps one (see handwritten_norms.py)."""
        mark = mark_of(func, args, kwargs, operand, self.scales)
        if mark is not None:
            mark_result(result, mark, getattr(func, "__name__", ""), self.scales)
        elif self.scales and isinstance(result, Tensor) and result in self.scales:
            del self.scales[result]  # (a marked tensor written into in place with an unmarked value)

    def op_call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> OpCall:
        """The call with both sides equal (the reference side is filled in from the tape later)."""
        leaves, spec, layout = flatten_call(args, kwargs)
        return OpCall.flat(fn, name, leaves, spec, self.tracked_among(leaves), self.pairs, layout)

    def dispatch(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        base: Any,
        base_args: tuple[Any, ...],
        base_kwargs: dict[str, Any],
        target: Tensor | None,
        rule: Rule | None,
        name: str,
        call: OpCall | None = None,
        linear: bool | None = None,
    ) -> Any:
        """Run one operation with tracked operands through its rule (see the module docstring).

        ``func(*args, **kwargs)`` is the call as the model made it; ``base`` with its arguments
        is the same call out of place, writing into ``target`` when the original was in place.
        ``call`` is ``base``'s call when the caller has it already, and ``linear`` what
        ``rule.is_linear(call)`` answered (None: not asked yet).

        What it decides, in order: no rule (or a refusing one): run the operation and refuse it; a layer
        that must not run as it is asked to (:class:`EvalOnly`): raise; linear: no rule needed; a rule that
        does not fit the call: refuse it; else the reference pass records the operands (:meth:`_record`)
        and the input pass runs the rule on them (:meth:`_replay`).
        """
        if call is None:
            call = self.op_call(base, base_args, base_kwargs, name)
        plain = target is None and func is base  # (not in place: a refusal may wait for the output)
        if rule is None or isinstance(rule, Refuse):
            return self._without_rule(func, args, kwargs, rule, call, name, plain)
        if isinstance(rule, EvalOnly) and rule.is_active(call):
            raise ModelStateError(f"The model runs {rule.what} ({name}), {_eval_only_advice(call, name)}")
        if linear if linear is not None else rule.is_linear(call):
            return self._linear(func, args, kwargs, target, rule, name)
        if self.scales and (type(rule) is Product or type(rule) is Quotient):
            rule = normalizing_rule(rule, call, self.scales)  # a normalization written by hand (handwritten_norms.py)
        why = misfit(rule, call)
        if why is not None:  # the rule would fail in the input pass: refuse it by name (where the output depends on it)
            result = func(*args, **kwargs)
            floating = all(t.is_floating_point() for t in tensors_of(result) if isinstance(t, Tensor))
            advice = getattr(rule, "refusal_advice", "operands")
            self._defer_or_refuse(name, why, advice, result, plain and floating)  # (a DeCov loss beside the logits: deferred)
            self.track(result)
            if target is not None:
                self._written_into(target)
            return result
        if not self.replay:
            return self._record(func, args, kwargs, rule, call, name, target, plain)
        return self._replay(func, kwargs, base, rule, call, name, target)

    def _without_rule(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rule: Rule | None, call: OpCall, name: str, plain: bool
    ) -> Any:
        """An operation with tracked operands and no rule, or a refusing one: run as the model asks and refused
        (where the output depends on it, when it is out of place), unless it is a query (``x.shape``)."""
        result = func(*args, **kwargs)
        if rule is None and not any(isinstance(leaf, Tensor) for leaf in tensors_of(result)):
            return result  # a query such as x.shape or x.dim(): no value flows on
        if isinstance(rule, Refuse):
            reason, advice = rule.reason, getattr(rule, "advice", "rule")
        else:  # (Rescale is advice for one input-dependent operand only, and never for a reduction)
            reason, advice = "no attribution rule is registered for it", "rule" if len(call.tracked) < 2 else "rule_operands"
            if is_reduction(call, result):
                advice = "reduction"
        outputs = [t for t in tensors_of(result) if isinstance(t, Tensor)]
        floating = bool(outputs) and all(t.is_floating_point() for t in outputs)
        self._defer_or_refuse(name, reason, advice, result, plain and floating)
        self.track(result)
        self.mark_decisions(result, name)
        return result

    def _defer_or_refuse(self, name: str, reason: str, advice: str, result: Any, deferrable: bool) -> None:
        """Refuse ``name``, or defer its refusal to where the output depends on ``result`` (deferred.py) when
        ``deferrable`` (out of place, floating results) and nothing followed would lose track of it (picked
        indices and integer inputs are not followed through deferred refusals)."""
        if deferrable and not self.picked_indices and not self._following and advice not in NEVER_DEFERRED:
            self.deferred.defer(name, reason, advice, result, name in self.unsupported)
        else:
            self.refuse(name, reason, advice)

    def _record(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        rule: Rule,
        call: OpCall,
        name: str,
        target: Tensor | None,
        plain: bool,
    ) -> Any:
        """The reference pass: copy the tracked operands to the tape and run the operation as the rule
        computes its reference side (keeping the output for the input pass where that is exact)."""
        references = [call.leaves[i].detach().clone() for i in call.tracked]
        entry = TapeEntry(op_key(call.fn), name, call.tracked, _shapes(call.leaves, call.tracked), references)
        self.tape.append(entry)
        result = rule.reference(call) if plain else func(*args, **kwargs)
        if plain and getattr(rule, "reuses_reference_output", False) and isinstance(result, Tensor):
            self._keep_output(entry, rule, call, references, result)
        self.track(result)
        self._mark_indices(result, name, rule, call)
        if target is not None:
            self._written_into(target)
        return result

    def _replay(
        self, func: Any, kwargs: dict[str, Any], base: Any, rule: Rule, call: OpCall, name: str, target: Tensor | None
    ) -> Any:
        """The input pass: take the operation's entry from the tape (the same operation on the same shapes)
        and run the rule on both sides; an in-place call gets the rule's result written into its target."""
        entry = self.tape.take(op_key(base), name, call.tracked, _shapes(call.leaves, call.tracked))
        assert entry.references is not None
        ref_leaves = list(call.leaves)
        for i, reference in zip(call.tracked, entry.references, strict=False):
            ref_leaves[i] = reference
        kept = entry.kept_output(_context(call)) if entry.output is not None else None
        call = call.with_references(ref_leaves, kept)
        autocast = _autocast_of(base, call)
        if autocast is not None:
            call = _cast_call(call, autocast[1])
        try:
            if autocast is None:
                result = rule.attribute(call)
            else:  # (the rule computes in the dtype autocast gives the op; inside it nothing is cast again)
                with torch.autocast(autocast[0], enabled=False):
                    result = rule.attribute(call)
        except ValueError as error:  # a rule that does not fit this call and did not say so in time
            raise UnsupportedOperationError([(name, str(error), getattr(error, "advice", "operands"))]) from error
        if target is not None:
            target.copy_(result)
            result = target if func is not base or "out" not in kwargs else kwargs["out"]
            self._written_into(target)
        self.track(result)
        self._mark_indices(result, name, rule, call)
        return result

    def _linear(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], target: Tensor | None, rule: Rule, name: str
    ) -> Any:
        """Run an operation that is linear in its tracked operands (see ``dispatch``).

        Linear operations need nothing from the reference pass and stay off the tape: the input
        pass may run extra ones (autograd's backward hooks wrap inputs in views).
        """
        result = func(*args, **kwargs)
        if isinstance(rule, Constant):
            return result
        if isinstance(result, Tensor) and result.is_floating_point():
            self.track(result)
            if target is not None:
                self._written_into(target)
            return result
        outputs = [leaf for leaf in tensors_of(result) if isinstance(leaf, Tensor)]
        if outputs and not any(t.is_floating_point() or t.is_complex() for t in outputs):
            self.refuse(name, "its result is not floating point, so the input's influence through it is lost", "integer")
            self.mark_decisions(result, name)
        self.track(result)
        if target is not None:
            self._written_into(target)
        return result

    @staticmethod
    def _keep_output(entry: TapeEntry, rule: Rule, call: OpCall, references: list[Tensor], result: Tensor) -> None:
        """Keep the reference pass's output for the input pass, where the rule would compute it again
        from the copies of the operands on the tape (``OpCall.ref_output``), when that would give the
        very same values: the rule computes it as the operation does (``Rule.reference``), every other
        leaf of the call is a Python value (compared again in the input pass), and every copy has the
        strides of its operand, so that torch runs the same kernel over the same layout. (A copy of a
        non-contiguous operand, a ``chunk`` of the gates, is contiguous: over another layout, torch's
        vectorized and scalar loops share the elements out differently, and the vector and libm
        results of sigmoid or tanh may differ in the last bit.)"""
        if type(rule).reference is not Rule.reference or result.is_inference():  # (no version counter to check)
            return
        if any(copy.stride() != call.leaves[i].stride() for copy, i in zip(references, call.tracked, strict=True)):
            return
        context = _context(call)
        if any(isinstance(leaf, Tensor) for leaf in context):
            return
        entry.keep_output(result, context)

    # -- modules with their own rule --------------------------------------------------------------
    def module_call(
        self, module: nn.Module, forward: Callable[..., Any], rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A call of a module that has a module-level rule: attributed as one operation."""
        leaves, _ = tree_flatten((args, kwargs))
        if not any(self.is_tracked(leaf) for leaf in leaves):
            return forward(*args, **kwargs)
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        if not torch.is_grad_enabled():
            self._refuse_grad_off(name)
        if not self.replay:
            no_graph: Any = torch.no_grad()
        else:
            no_graph = torch.enable_grad() if self._follows_no_grad(leaves) else contextlib.nullcontext()
        with torch._C.DisableTorchFunction(), no_graph:
            result = self.dispatch(forward, args, kwargs, forward, args, kwargs, None, rule, name)
        if self._taints:
            self.deferred.spread(forward, args, kwargs, result)
        return result


#: operations that torch's autocast runs in its lower precision dtype with every floating operand cast to
#: it, and whose rules compute with several operations (some of which autocast would not cast, such as an
#: in-place addmm_): the rule runs on the operands cast as autocast casts them, with autocast off inside
_AUTOCAST_LOWERED = frozenset(
    f
    for f in (
        getattr(torch, name, None)
        for name in ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")
    )
    if f is not None
)


def _autocast_of(func: Any, call: OpCall) -> tuple[str, torch.dtype] | None:
    """``(device type, dtype)`` where ``func`` is an operation of :data:`_AUTOCAST_LOWERED` called under
    ``torch.autocast`` on its operands' device; else None."""
    if func not in _AUTOCAST_LOWERED or not call.tracked:
        return None
    device = call.leaves[call.tracked[0]].device.type
    try:
        if not torch.is_autocast_enabled(device):
            return None
        return device, torch.get_autocast_dtype(device)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return None


def _cast_call(call: OpCall, dtype: torch.dtype) -> OpCall:
    """``call`` with every floating tensor operand (both sides) cast to ``dtype``, as autocast casts them."""

    def cast(leaves: list[Any]) -> list[Any]:
        return [
            leaf.to(dtype) if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.dtype != dtype else leaf
            for leaf in leaves
        ]

    leaves, ref_leaves = cast(call.leaves), cast(call.ref_leaves)
    return OpCall(call.fn, call.name, leaves, ref_leaves, call.spec, call.tracked, call.pairs, call.layout, None)


def _context(call: OpCall) -> tuple[Any, ...]:
    """The leaves of ``call`` other than its tracked tensors."""
    tracked = call.tracked
    if len(tracked) == len(call.leaves):
        return ()
    return tuple(leaf for i, leaf in enumerate(call.leaves) if i not in tracked)


__all__ = ["AttributionMode"]
