"""What the engine's passes (``passes.py``) and the followers of integers and picked indices they
hand operations to (``discrete.py``, ``picked.py``) share: how an operation's arguments are
flattened, its cached name, whether it writes in place, and what those followers ask of the pass.

The flattening and the caches are per-operation fast paths: every torch call in a pass goes
through ``__torch_function__``, so its Python cost is paid once per operation per pass (a model
that loops over time in Python makes thousands of calls on small tensors). What is below does what
torch's pytree does for the cases that occur on every call, with fewer Python steps; anything else
takes torch's own path.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch.utils._pytree import TreeSpec, tree_flatten

from ...rules.registry import op_name

Tensor = torch.Tensor


class Tracking(Protocol):
    """What the follower of integer inputs (``discrete.Integers``) uses of the pass that hands it operations
    (``passes.AttributionMode``): which pass this is and its tape, the marking of input-dependent tensors, and
    the refusal of an operation.

    - ``replay``: the input pass (True) or the reference pass; ``tape``: the pass's tape;
    - ``track`` / ``is_tracked``: mark a tensor as input-dependent, or ask about one;
    - ``refuse``: refuse an operation by name, with the kind of advice that fits;
    - ``__enter__`` / ``__exit__``: run operations through the pass again (a follower hands back what is
      not its own, such as the reduction of an embedding bag).
    """

    replay: bool
    tape: Any

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...
    def track(self, value: Any) -> None: ...
    def written_into(self, target: Tensor) -> None: ...
    def is_tracked(self, value: Any) -> bool: ...
    def refuse(self, name: str, reason: str, advice: str = "rule") -> None: ...


class Intercepting(Protocol):
    """What a Keras ``Masking`` on the torch backend (``keras_on_torch.masked_input_op``) uses of the pass:

    - ``sample_masks``: inputs a Keras ``Masking`` compares with values → (the samples' values, those
      values);
    - ``is_tracked``: whether a tensor is input-dependent;
    - ``intercept``: run an operation through the pass as ``__torch_function__`` does (the pass's
      grad-mode handling already applied).
    """

    sample_masks: Any

    def is_tracked(self, value: Any) -> bool: ...
    def intercept(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        user_grad: bool,
        decided: bool = False,
        masks: bool = True,
    ) -> Any: ...


@dataclass
class Picked:
    """Indices chosen from an input-dependent tensor (``x.argmax(1)``), or a comparison's mask.

    ``origin`` names the operation that chose them; ``handle`` (picked indices only) is the same
    indices as a tracked float64 tensor that carries the pick's multipliers (rules/selection.py)."""

    origin: str
    handle: Tensor | None = None



class PassMode(Tracking, Intercepting, Protocol):
    """What the follower of picked indices (``picked.py``) uses of the pass: all of the above, and

    - ``pairs``: how the batch pairs samples with references; ``registry``: the rules;
    - ``picked_indices``: integer results of rules on tracked tensors (the indices of ``torch.max``)
      → their :class:`Picked`;
    - ``tracked_among``: the positions of the input-dependent tensors among a call's leaves;
    - ``mark_decisions``: follow the bool or integer results of a refused operation, so that a branch
      on them is named with it;
    - ``op_call``: the :class:`~rnnshap.rules.base.OpCall` of a call, both sides equal; ``dispatch``: run
      an operation through a given rule.

    Each follower is typed with the part it uses, so that what it may call back into the pass is said
    where it is written.
    """

    pairs: Any
    registry: Any
    picked_indices: Any

    def tracked_among(self, leaves: list[Any]) -> tuple[int, ...]: ...
    def mark_decisions(self, result: Any, name: str) -> None: ...
    def op_call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any: ...
    def dispatch(self, *args: Any, **kwargs: Any) -> Any: ...


#: why a write of input-dependent values at repeated positions is refused (advice ``"repeated_write"``)
REPEATED_WRITE = "it writes input-dependent values at positions of which some repeat, without accumulating"


#: indexed writes that keep one value a position (not accumulating, unless index_put's ``accumulate``)
_INDEXED_WRITES = frozenset({torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put, torch.index_put,
                             torch.index_put_})  # fmt: skip


def repeats_positions(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an indexed write (``t[key] = v``, ``t.index_put_(indices, v)`` without ``accumulate``) writes at a
    position more than once: torch keeps one of the values written there, which one unspecified, and its gradient
    reaches every one. Read on the host, and only where the key indexes with integers (a tensor or a list)."""
    if func not in _INDEXED_WRITES:
        return False
    if func is torch.Tensor.__setitem__ and len(args) > 1:
        target, key = args[0], args[1]
    elif args:
        if bool(args[3] if len(args) > 3 else kwargs.get("accumulate", False)):
            return False
        target, key = args[0], tuple(args[1] if len(args) > 1 else kwargs["indices"])
    else:
        return False
    entries = key if isinstance(key, tuple) else (key,)
    integers = [e for e in entries if isinstance(e, list) or isinstance(e, Tensor) and e.dtype != torch.bool]
    if not integers or not isinstance(target, Tensor):
        return False
    with torch.no_grad():
        shape = target[key].shape
        ids = torch.arange(math.prod(shape), device=target.device).reshape(shape)
        probe = torch.full(target.shape, -1, dtype=ids.dtype, device=target.device)
        probe[key] = ids
        return int((probe >= 0).sum()) < ids.numel()


#: ``torch.broadcast_tensors``: each result is its own operand broadcast, linear in it alone
BROADCASTS = frozenset(
    f for f in (torch.broadcast_tensors, getattr(torch.functional, "broadcast_tensors", None)) if f is not None
)


#: types that torch's pytree treats as leaves (a Tensor, of any subclass, is a leaf too)
_LEAF_TYPES = frozenset(
    {
        int,
        float,
        bool,
        complex,
        str,
        bytes,
        type(None),
        slice,
        type(Ellipsis),
        torch.dtype,
        torch.device,
        torch.layout,
        torch.memory_format,
    }
)
#: the spec of ``(args, kwargs)`` for each call structure met (see ``flatten_call``), and its flat layout
_SPECS: dict[Any, tuple[TreeSpec, tuple[int, tuple[str, ...]] | None]] = {}
_MAX_SPECS = 4096


def flatten_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], TreeSpec, tuple[int, tuple[str, ...]] | None]:
    """``tree_flatten((args, kwargs))``, and the call's flat layout ``(len(args), kwargs' names)``
    when every argument is a leaf (None otherwise; see ``OpCall``).

    Arguments that are leaves, or tuples and lists of leaves, and keyword arguments that are leaves
    are flattened here and their spec taken from a cache keyed by the call's structure; any other
    structure goes through ``tree_flatten``. The leaves and the spec are the same either way.
    """
    leaves: list[Any] = []
    structure: list[Any] = []
    flat = True
    for a in args:
        kind = type(a)
        if kind in _LEAF_TYPES or isinstance(a, Tensor):
            leaves.append(a)
            structure.append(None)
        elif (kind is tuple or kind is list) and all(type(e) in _LEAF_TYPES or isinstance(e, Tensor) for e in a):
            leaves.extend(a)
            structure.append((kind, len(a)))
            flat = False
        else:
            return _flatten_any(args, kwargs)
    if kwargs:
        for v in kwargs.values():
            if not (type(v) in _LEAF_TYPES or isinstance(v, Tensor)):
                return _flatten_any(args, kwargs)
        leaves.extend(kwargs.values())
    key = (tuple(structure), tuple(kwargs))
    cached = _SPECS.get(key)
    if cached is None:
        spec = tree_flatten((args, kwargs))[1]
        cached = (spec, (len(args), tuple(kwargs)) if flat else None)
        if len(_SPECS) < _MAX_SPECS:
            _SPECS[key] = cached
    return leaves, cached[0], cached[1]


def _flatten_any(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], TreeSpec, None]:
    leaves, spec = tree_flatten((args, kwargs))
    return leaves, spec, None


_NAMES: dict[Any, str] = {}


def cached_op_name(func: Any) -> str:
    """``op_name(func)``, cached per function object (not for bound method-wrappers such as a
    property's ``__get__``, which are made anew on every access)."""
    name = _NAMES.get(func) if type(func) in _NAMED_TYPES else None
    if name is None:
        name = op_name(func)
        if _cacheable(func) and len(_NAMES) < _MAX_SPECS:
            _NAMES[func] = name
    return name


#: the types of torch's functions (builtins, method and slot descriptors, Python functions)
_NAMED_TYPES = frozenset(
    {type(torch.sigmoid), type(torch.Tensor.sigmoid), type(torch.Tensor.__add__), type(torch.nn.functional.relu)}
)


def _cacheable(func: Any) -> bool:
    """Whether ``func`` may be a key of a cache that lives as long as the process: one of torch's
    functions, not a method bound to a tensor (which the cache would keep alive)."""
    return type(func) in _NAMED_TYPES and not isinstance(getattr(func, "__self__", None), Tensor)


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


def out_of_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any], Tensor | None]:
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


def in_place_target(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The tensor a linear call writes into (``outs[:, t] = h``, ``buf.index_put_(i, h)``,
    ``buf.copy_(h)``, ``out=``), or None when it is not in place."""
    if kwargs:
        out = kwargs.get("out")
        if isinstance(out, Tensor):
            return out
    if not args or not isinstance(args[0], Tensor):
        return None
    if _writes_by_name(func):
        return args[0]
    if kwargs and kwargs.get("inplace") is True:
        return args[0]
    return None


_WRITES: dict[Any, bool] = {}


def _writes_by_name(func: Any) -> bool:
    """Whether ``func``'s name says it writes into its first argument (``__setitem__``, ``__iadd__``,
    ``add_``), cached per function object."""
    writes = _WRITES.get(func) if type(func) in _NAMED_TYPES else None
    if writes is None:
        name = getattr(func, "__name__", "")
        writes = (
            name == "__setitem__"
            or (name.startswith("__i") and name.endswith("__"))
            or (name.endswith("_") and not name.endswith("__"))
        )
        if _cacheable(func) and len(_WRITES) < _MAX_SPECS:
            _WRITES[func] = writes
    return writes
