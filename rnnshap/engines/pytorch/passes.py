"""The two passes of the engine, as one ``TorchFunctionMode``.

1. Reference pass (``replay=False``, no grad): the model runs on the references. Every operation
   that touches an input-dependent ("tracked") tensor is looked up in the rule registry; ones
   with a rule other than the gradient copy their reference operands to the tape; ones with no
   rule are collected and reported together.
2. Input pass (``replay=True``): the model runs on the inputs. Every operation takes its entry
   from the tape, checks that it is the same operation on the same shapes, and runs through its
   rule, which builds the output so that one backward pass yields the DeepLIFT multipliers.

Which tensors are tracked is decided the same way in both passes: the model's inputs are, and so
is every floating-point result of an operation with a tracked operand (and the target of an
in-place operation with a tracked operand). Parameters and anything computed from them alone are
not, so ``x * weight`` is a product with a constant.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from ...errors import ModelStateError, UnsupportedOperationError
from ...rules.base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from ...rules.registry import RuleRegistry, op_key, op_name
from .tape import Tape, TapeEntry

Tensor = torch.Tensor


def _shapes(leaves: list[Any], tracked: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(leaves[i].shape) for i in tracked)


_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature(fn)``, cached (it is slow and asked for on every operation)."""
    try:
        return _SIGNATURES[fn]
    except KeyError:
        pass
    except TypeError:  # unhashable
        return None
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    _SIGNATURES[fn] = signature
    return signature


def _out_of_place(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any], Tensor | None]:
    """The out-of-place form of an in-place call, and the tensor the call writes into.

    ``x.relu_()`` → ``(Tensor.relu, (x,), {}, x)``; ``F.relu(x, inplace=True)`` →
    ``(F.relu, (x,), {"inplace": False}, x)``; ``torch.tanh(x, out=y)`` → ``(torch.tanh, (x,), {}, y)``.
    Calls that are not in place come back unchanged with ``None``.
    """
    if "out" in kwargs and isinstance(kwargs["out"], Tensor):
        kwargs = dict(kwargs)
        return func, args, kwargs, kwargs.pop("out")
    name = getattr(func, "__name__", "")
    if name.startswith("__i") and name.endswith("__") and args:
        plain = getattr(torch.Tensor, "__" + name[3:], None)
        if plain is not None:
            return plain, args, kwargs, args[0]
    if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], Tensor):
        owners = (torch.Tensor,) if "Tensor" in getattr(func, "__qualname__", "") else (torch, torch._C._nn, torch.nn.functional)
        plain = next((getattr(owner, name[:-1]) for owner in owners if hasattr(owner, name[:-1])), None)
        if plain is not None:
            return plain, args, kwargs, args[0]
    if kwargs.get("inplace") is True:
        return func, args, {**kwargs, "inplace": False}, args[0]
    signature = _signature(func) if len(args) > 1 else None
    if signature is not None and "inplace" in signature.parameters:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return func, args, kwargs, None
        if bound.arguments.get("inplace") is True:
            bound.arguments["inplace"] = False
            return func, bound.args, bound.kwargs, args[0]
    return func, args, kwargs, None


class AttributionMode(TorchFunctionMode):
    """Intercepts torch operations for one pass of the engine (see the module docstring)."""

    def __init__(self, registry: RuleRegistry, tape: Tape, replay: bool, pairs: PairGrid | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.tape = tape
        self.replay = replay
        self.pairs = pairs
        self._tracked: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.unsupported: dict[str, str] = {}
        # integer inputs followed to see whether they are token ids (consumed by an embedding)
        self._discrete: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.token_uses: set[int] = set()
        self.context_uses: dict[int, str] = {}
        #: (input index, embedding output leaf, its reference) for every embedding of a token input
        self.embedded: list[tuple[int, Tensor, Tensor]] = []

    # -- tracking -------------------------------------------------------------------------------
    def track(self, value: Any) -> None:
        """Mark every floating-point tensor in ``value`` as input-dependent."""
        for leaf in tree_flatten(value)[0]:
            if isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
                self._tracked[leaf] = True

    def is_tracked(self, value: Any) -> bool:
        return isinstance(value, Tensor) and value in self._tracked

    def _refuse(self, name: str, reason: str) -> None:
        self.unsupported.setdefault(name, reason)

    def raise_if_unsupported(self) -> None:
        if self.unsupported:
            raise UnsupportedOperationError(list(self.unsupported.items()))

    # -- interception ---------------------------------------------------------------------------
    def follow_discrete(self, index: int, tensor: Tensor) -> None:
        """Follow the integer input ``index`` (token ids or context such as lengths)."""
        self._discrete[tensor] = index

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        discrete = [self._discrete[leaf] for leaf in leaves if isinstance(leaf, Tensor) and leaf in self._discrete]
        if discrete:
            handled, result = self._discrete_op(func, args, kwargs, discrete[0])
            if handled:
                return result
        if not any(self.is_tracked(leaf) for leaf in leaves):
            return func(*args, **kwargs)
        rule = self.registry.op_rule(func)
        name = op_name(func)
        base, base_args, base_kwargs, target = func, args, kwargs, None
        if rule is None or not rule.is_linear(self._call(func, args, kwargs, name)):
            # in place and not linear (x.relu_(), F.relu(x, inplace=True)): run out of place, copy back
            base, base_args, base_kwargs, target = _out_of_place(func, args, kwargs)
            if target is not None:
                rule = self.registry.op_rule(base)
        return self.dispatch(func, args, kwargs, base, base_args, base_kwargs, target, rule, name)

    def _discrete_op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> tuple[bool, Any]:
        """An operation on a followed integer input: an embedding lookup makes it a token input,
        whose attribution is taken at the embedding's output; shape and indexing operations pass
        it on; anything else is a context use (the values are used as they are, unattributed)."""
        if func in _EMBEDDINGS:
            self.token_uses.add(index)
            result = func(*args, **kwargs)
            name, shapes = op_name(func), (tuple(result.shape),)
            if not self.replay:
                self.tape.append(TapeEntry(func, name, (), shapes, [result.detach().clone()]))
                self.track(result)
                return True, result
            entry = self.tape.take(func, name, (), shapes)
            assert entry.references is not None
            leaf = result.detach().requires_grad_(True)
            self.embedded.append((index, leaf, entry.references[0]))
            output = leaf.clone()
            self.track(output)
            return True, output
        rule = self.registry.op_rule(func)
        if type(rule) is Linear:
            result = func(*args, **kwargs)
            outputs = [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]
            if outputs and not any(t.is_floating_point() for t in outputs):
                for t in outputs:
                    self._discrete[t] = index
                return True, result
        self.context_uses.setdefault(index, op_name(func))
        return False, None

    def _call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> OpCall:
        """The call with both sides equal (the reference side is filled in from the tape later)."""
        leaves, spec = tree_flatten((args, kwargs))
        tracked = tuple(i for i, leaf in enumerate(leaves) if self.is_tracked(leaf))
        return OpCall(fn, name, leaves, leaves, spec, tracked, self.pairs)

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
    ) -> Any:
        """Run one operation with tracked operands through its rule (see the module docstring).

        ``func(*args, **kwargs)`` is the call as the model made it; ``base`` with its arguments
        is the same call out of place, writing into ``target`` when the original was in place.
        """
        call = self._call(base, base_args, base_kwargs, name)
        key = op_key(base)
        shapes = _shapes(call.leaves, call.tracked)

        if rule is None or isinstance(rule, Refuse):
            result = func(*args, **kwargs)
            if rule is None and not any(isinstance(leaf, Tensor) for leaf in tree_flatten(result)[0]):
                return result  # a query such as x.shape or x.dim(): no value flows on
            self._refuse(name, rule.reason if isinstance(rule, Refuse) else "no attribution rule is registered for it")
            self.track(result)
            return result
        if isinstance(rule, EvalOnly) and rule.is_active(call):
            raise ModelStateError(
                f"The model runs {rule.what} ({name}), which makes its output random or couples the "
                "samples of a batch, so no attribution can add up. Call model.eval() before explaining."
            )

        if rule.is_linear(call):
            # Linear operations need nothing from the reference pass and stay off the tape: the
            # input pass may run extra ones (autograd's backward hooks wrap inputs in views).
            result = func(*args, **kwargs)
            if isinstance(rule, Constant):
                return result
            outputs = [leaf for leaf in tree_flatten(result)[0] if isinstance(leaf, Tensor)]
            if outputs and not any(t.is_floating_point() or t.is_complex() for t in outputs):
                self._refuse(name, "its result is not floating point, so the input's influence through it is lost")
            self.track(result)
            if target is not None:
                self.track(target)
            return result

        if not self.replay:
            references = [call.leaves[i].detach().clone() for i in call.tracked]
            self.tape.append(TapeEntry(key, name, call.tracked, shapes, references))
            result = rule.reference(call) if target is None and func is base else func(*args, **kwargs)
            self.track(result)
            if target is not None:
                self.track(target)
            return result

        entry = self.tape.take(key, name, call.tracked, shapes)
        assert entry.references is not None
        ref_leaves = list(call.leaves)
        for i, reference in zip(call.tracked, entry.references, strict=False):
            ref_leaves[i] = reference
        call = OpCall(call.fn, name, call.leaves, ref_leaves, call.spec, call.tracked, self.pairs)
        result = rule.attribute(call)
        if target is not None:
            target.copy_(result)
            result = target if func is not base or "out" not in kwargs else kwargs["out"]
        self.track(result)
        return result

    # -- modules with their own rule --------------------------------------------------------------
    def module_call(self, module: nn.Module, forward: Callable[..., Any], rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call of a module that has a module-level rule: attributed as one operation."""
        leaves, _ = tree_flatten((args, kwargs))
        if not any(self.is_tracked(leaf) for leaf in leaves):
            return forward(*args, **kwargs)
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        with torch._C.DisableTorchFunction():
            return self.dispatch(forward, args, kwargs, forward, args, kwargs, None, rule, name)


class ModuleRules:
    """Routes calls of modules that have a module-level rule through the mode, and undoes it.

    The module's ``forward`` is shadowed by an instance attribute for the duration of a pass and
    the attribute is deleted afterwards, which leaves the module exactly as it was.
    """

    def __init__(self, model: nn.Module, registry: RuleRegistry) -> None:
        self.targets = [(m, rule) for m in model.modules() if (rule := registry.module_rule(m)) is not None]
        self._patched: list[tuple[nn.Module, bool, Any]] = []

    def install(self, mode: AttributionMode) -> None:
        for module, rule in self.targets:
            had_own = "forward" in module.__dict__
            original = module.forward

            def routed(*args: Any, _m: nn.Module = module, _f: Any = original, _r: Rule = rule, **kwargs: Any) -> Any:
                return mode.module_call(_m, _f, _r, args, kwargs)

            self._patched.append((module, had_own, module.__dict__.get("forward")))
            module.forward = routed  # type: ignore[method-assign]

    def remove(self) -> None:
        for module, had_own, previous in reversed(self._patched):
            if had_own:
                module.forward = previous  # type: ignore[method-assign]
            else:
                del module.forward
        self._patched.clear()


_EMBEDDINGS = (torch.nn.functional.embedding,)


def run_pass(
    model: nn.Module,
    inputs: list[Tensor],
    registry: RuleRegistry,
    tape: Tape,
    replay: bool,
    follow: Sequence[int] = (),
    pairs: PairGrid | None = None,
) -> tuple[Tensor, AttributionMode]:
    """Run ``model(*inputs)`` as the reference pass (``replay=False``) or the input pass.

    ``follow`` lists integer inputs to follow as possible token ids; ``pairs`` says how the batch
    is made of (sample, reference) pairs, when it is (see :class:`PairGrid`). Returns the output and the
    mode, which holds the embedding leaves of token inputs and what was learned about them.
    """
    mode = AttributionMode(registry, tape, replay, pairs)
    module_rules = ModuleRules(model, registry)
    module_rules.install(mode)
    try:
        with mode:
            mode.track(inputs)
            for index in follow:
                mode.follow_discrete(index, inputs[index])
            output = model(*inputs)
    finally:
        module_rules.remove()
    mode.raise_if_unsupported()
    if replay:
        tape.check_consumed()
    if not isinstance(output, Tensor):
        raise TypeError(
            f"The model returned {type(output).__name__}; rnnshap explains models that return one "
            "tensor. Wrap the model in an nn.Module whose forward() returns the tensor to explain."
        )
    if not mode.is_tracked(output):
        raise UnsupportedOperationError(
            [("the model's output", "it does not depend on the explained inputs through operations rnnshap can see")]
        )
    return output, mode


__all__ = ["AttributionMode", "ModuleRules", "run_pass", "tree_unflatten"]
