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
``tensor_map.py``. The mode itself is one object in three classes, each in its module, so that the per-operation
path stays method calls on one object: :class:`~.tracking.TrackingPass` (``tracking.py``: the per-pass state and the
tracking of input-dependent tensors, refusals, picked indices and decisions), :class:`~.recording.TapePass`
(``recording.py``: the tape, recorded and replayed through the rules) and :class:`AttributionMode` here (the
interception and the dispatch to a rule). One operation goes ``__torch_function__`` → ``_run`` (the grad
mode) → ``intercept`` → ``_followed_use`` (operands the followers own) or ``_on_tracked`` (linear ones
at once) → ``dispatch``, which decides between ``_without_rule`` (refused), ``_linear``, a misfit
(refused), ``_record`` (reference pass) and ``_replay`` (input pass).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ...errors import ModelStateError
from ...rules.base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from ...rules.composite import Quotient
from ...rules.elementwise import Bilinear, Product
from ...rules.refusals import is_reduction, misfit
from ...rules.registry import RuleRegistry, op_key, op_name
from ...rules.selection import topk_of_every_position
from ...rules.spectral import complex_rule
from .calls import BROADCASTS, cached_op_name, flatten_call, in_place_target, out_of_place
from .deferred import NEVER_DEFERRED
from .functions import enclosing_function
from .handwritten_norms import mark_of, mark_result, normalizing_rule
from .keras_on_torch import masked_input_op
from .picked import PickedUses
from .randomness import random_call
from .recording import TapePass
from .tape import Tape
from .tensor_map import tensors_of

Tensor = torch.Tensor


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
#: training's, set aside in rnnshap's passes as modules' backward hooks are (state.AsFunction). Run in rnnshap's
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
#: operations that read only the shape, dtype or device of a tensor: all a ``.data`` view may be used for
_SHAPE_READS = frozenset({"new", "new_zeros", "new_ones", "new_empty", "new_full", "size", "dim", "numel", "__len__", "stride",
                          "is_contiguous", "nelement", "ndimension", "element_size", "zeros_like", "ones_like", "empty_like",
                          "full_like", "__get__"})

#: reads of a tensor's shape, dtype or device (``x.dim()``, ``x.shape``, ``x.device``): they read no value, so there
#: is nothing to follow, record or refuse (a ``.data`` view and a followed integer may be read so too), and the pass
#: hands them to torch before any of its interception (``nn.LSTMCell`` reads ``input.dim()`` four times a step: 12 us
#: each through the interception, 2.5 ms of a tiny cell loop's call at T = 50)
_METADATA = frozenset({
    Tensor.dim, Tensor.ndimension, Tensor.size, Tensor.numel, Tensor.nelement, Tensor.stride, Tensor.element_size,
    Tensor.is_floating_point, Tensor.is_complex, Tensor.is_contiguous,
    *(getattr(Tensor, name).__get__ for name in ("shape", "ndim", "dtype", "device", "is_cuda")),  # (their getters)
})  # fmt: skip


class AttributionMode(TapePass):
    """Intercepts torch operations for one pass of the engine (see the module docstring)."""

    def __init__(self, registry: RuleRegistry, tape: Tape, replay: bool, pairs: PairGrid | None = None) -> None:
        super().__init__(registry, tape, replay, pairs)
        #: the uses of indices picked by argmax, max or min, top-1 (see picked.py)
        self.picks = PickedUses(self)

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

    # -- interception ---------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if func in _METADATA:
            return func(*args, **(kwargs or {}))
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
        if func in BROADCASTS:
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
            # a product of two spectra, a spectrum's magnitude, an analytic function of one (rules/spectral.py)
            rule = complex_rule(func, rule, len(tracked), in_place_target(func, args, kwargs) is None)
            if rule is None:
                return self._complex_refused(func, args, kwargs, name, "it takes a complex input-dependent operand here")
        elif not linear and any(isinstance(leaf, Tensor) and leaf.is_complex() for leaf in leaves):
            return self._complex_refused(func, args, kwargs, name, "it takes a real input-dependent operand with a complex one")
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

    def _complex_refused(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str, why: str) -> Any:
        """A nonlinear operation on a complex input-dependent value without a rule for complex values (rules/spectral.py:
        products, magnitudes, elementwise functions): refused; run as torch does, its results tracked, so that the pass
        goes on to name every refusal."""
        self.refuse(name, f"{why}, and its rule is written for real values", "complex")
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
            if rule.attaches_gradient and self.replay and target is None:
                result = rule.attribute(call)  # (its own node for the ordinary gradient)
                self.track(result)
                return result
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
                self.written_into(target)
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


__all__ = ["AttributionMode"]
