"""Custom ``torch.autograd.Function`` and ``torch.utils.checkpoint`` inside an explained model.

A TorchFunctionMode sees the operations inside a custom Function's ``forward()``, but not the call
of the Function itself, and torch runs that forward with gradients disabled and takes the
Function's own ``backward()`` for its gradient: plain gradients, not DeepLIFT multipliers. So while
a pass runs (and only in the thread that runs it), ``Function.apply`` is routed to the pass, which
runs ``forward()`` itself, with gradients enabled, so that every operation in it goes through its
rule and the custom ``backward()`` is never used (:func:`call_function`). The code of
``Function.apply`` is swapped for the pass's duration, rather than the class attribute, so that an
``apply`` bound before the pass (mambapy's ``pscan = PScan.apply`` at import) is routed too. A forward whose result
does not come out of operations the pass can see (a kernel outside torch's Python API) is refused
by the Function's name.

Checkpointing only trades memory for recomputation, but its recomputation would run outside the
pass: inside a pass, ``checkpoint(fn, *args)`` simply runs ``fn(*args)`` (both ``use_reentrant``
variants).

Both patches are installed for the duration of a pass and removed after it
(:func:`routed_functions`); outside a pass, and in other threads, torch behaves as always.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
from typing import Any, Iterator

import torch
import torch.utils.checkpoint as _checkpoint
from torch.overrides import _get_current_function_mode_stack
from torch.utils._pytree import tree_flatten

Tensor = torch.Tensor

_FUNCTION = torch.autograd.function.Function
#: ``Function.apply`` as a plain function. Models often bind it early (mambapy: ``pscan = PScan.apply``
#: at import), so the pass swaps the code of this very function object rather than the attribute.
_APPLY = _FUNCTION.__dict__["apply"].__func__
_APPLY_CODE = _APPLY.__code__
#: an untouched copy of it, which runs torch's own apply whatever code the original holds
_TORCH_APPLY = types.FunctionType(_APPLY_CODE, _APPLY.__globals__, _APPLY.__name__, _APPLY.__defaults__, _APPLY.__closure__)
_ORIGINAL_GENERATOR = getattr(_checkpoint, "_checkpoint_without_reentrant_generator", None)
_CHECKPOINT_FUNCTION = getattr(_checkpoint, "CheckpointFunction", None)
_BACKWARD_CONTEXT = getattr(torch.autograd.function, "BackwardCFunction", None)

_LOCK = threading.Lock()
_USERS = 0
_ACTIVE = threading.local()


def _active_modes() -> list[Any]:
    modes = getattr(_ACTIVE, "modes", None)
    if modes is None:
        modes = _ACTIVE.modes = []
    return modes


def current_mode() -> Any:
    """The pass whose mode is active in this thread and not suspended (torch suspends a mode while
    its own ``__torch_function__`` runs, and ``DisableTorchFunction`` suspends all), or None."""
    modes = _active_modes()
    if not modes or not torch._C._is_torch_function_mode_enabled():
        return None
    mode = modes[-1]
    return mode if any(m is mode for m in _get_current_function_mode_stack()) else None


def original_apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls.apply(*args, **kwargs)`` as torch does it, counted in this thread while it runs (see
    :func:`enclosing_function`)."""
    state = _ACTIVE
    state.applying = getattr(state, "applying", 0) + 1
    try:
        return _TORCH_APPLY(cls, *args, **kwargs)
    finally:
        state.applying -= 1


def route_apply(cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What ``Function.apply`` does while a pass runs: the pass's in its thread, torch's elsewhere."""
    mode = current_mode()
    if mode is None:
        return original_apply(cls, *args, **kwargs)
    return call_function(mode, cls, args, kwargs)


class _Trampoline:
    """Holds the code ``Function.apply`` runs during a pass. That code runs with torch's globals,
    so it imports what it calls; it names ``__class__`` to have the same free variable as the
    code it replaces (a code swap keeps the function's closure)."""

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - it becomes a classmethod's function
        _ = __class__  # type: ignore[name-defined]
        from rnnshap.engines.pytorch.functions import route_apply

        return route_apply(cls, args, kwargs)


_TRAMPOLINE_CODE = _Trampoline.apply.__code__


def _generator(*args: Any, **kwargs: Any) -> Iterator[None]:
    """Non-reentrant checkpointing (its before/after generator): inside a pass, nothing to do."""
    if current_mode() is None:
        assert _ORIGINAL_GENERATOR is not None
        yield from _ORIGINAL_GENERATOR(*args, **kwargs)
        return
    yield


@contextlib.contextmanager
def routed_functions(mode: Any) -> Iterator[None]:
    """Route custom Functions and checkpoints to ``mode`` while the block runs, in this thread."""
    global _USERS
    with _LOCK:
        if _USERS == 0:
            _APPLY.__code__ = _TRAMPOLINE_CODE
            if _ORIGINAL_GENERATOR is not None:
                _checkpoint._checkpoint_without_reentrant_generator = _generator  # type: ignore[assignment]
        _USERS += 1
    modes = _active_modes()
    modes.append(mode)
    try:
        yield
    finally:
        modes.pop()
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                _APPLY.__code__ = _APPLY_CODE
                if _ORIGINAL_GENERATOR is not None:
                    _checkpoint._checkpoint_without_reentrant_generator = _ORIGINAL_GENERATOR


class ForwardContext:
    """Stands in for ``ctx`` when a pass runs a custom Function's ``forward()`` itself.

    What ``forward()`` prepares for ``backward()`` (saved tensors, marks, attributes) is kept, so
    that ``forward()`` may read it back, and otherwise ignored: ``backward()`` is never called.
    """

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        self.saved_tensors: tuple[Any, ...] = ()
        self.materialize_grads = True

    @property
    def saved_variables(self) -> tuple[Any, ...]:
        return self.saved_tensors

    def save_for_backward(self, *tensors: Any) -> None:
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors: Any) -> None:
        pass

    def mark_dirty(self, *tensors: Any) -> None:
        pass

    def mark_non_differentiable(self, *tensors: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = value


def function_name(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _runs_as_torch_does(cls: Any) -> bool:
    """Functions of torch itself (backward hooks' identity, distributed helpers) and of rnnshap
    (its rules, which run inside the mode's handler anyway) keep torch's behaviour."""
    module = getattr(cls, "__module__", "") or ""
    return module == "torch" or module.startswith(("torch.", "rnnshap."))


def call_function(mode: Any, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``cls.apply(*args, **kwargs)`` inside a pass: ``forward()`` run under the mode, so that its
    operations are attributed by their rules; the custom ``backward()`` is not used."""
    if _CHECKPOINT_FUNCTION is not None and cls is _CHECKPOINT_FUNCTION:
        run_function, _preserve_rng_state, *inputs = args
        return run_function(*inputs)
    leaves = tree_flatten((args, kwargs))[0]
    if not any(mode.is_tracked(leaf) for leaf in leaves):
        return original_apply(cls, *args, **kwargs)
    if _runs_as_torch_does(cls):
        return mode.opaque(lambda: original_apply(cls, *args, **kwargs), track=False)
    name = function_name(cls)
    if cls.forward is _FUNCTION.forward:
        mode.refuse(name, "it defines no forward() of its own", "function")
        return mode.opaque(lambda: original_apply(cls, *args, **kwargs))
    setup_context = getattr(torch.autograd.function, "_is_setup_context_defined", None)
    separate_setup = bool(setup_context(cls.setup_context)) if setup_context is not None else False
    try:
        output = cls.forward(*args, **kwargs) if separate_setup else cls.forward(ForwardContext(args), *args, **kwargs)
    except Exception as error:  # noqa: BLE001 - refuse by name, then let torch run it to see whether it fails there too
        reason = f"its forward() failed when rnnshap ran it with gradients enabled ({type(error).__name__}: {error})"
        mode.refuse(name, reason, "function")
        return mode.opaque(lambda: original_apply(cls, *args, **kwargs))
    outputs = [t for t in tree_flatten(output)[0] if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())]
    if outputs and not any(mode.is_tracked(t) for t in outputs):
        mode.refuse(name, "its forward() computes its result outside the torch operations rnnshap sees", "function")
    return output


def enclosing_function() -> Any:
    """The custom Function whose ``forward()`` torch is running on this thread's stack, or None.

    While a pass runs, every ``Function.apply`` goes through :func:`original_apply` where torch runs it
    (``routed_functions`` swaps its code), which counts them: with none running, no frame is looked at
    (a model under its own ``no_grad()`` asks on every operation)."""
    if _BACKWARD_CONTEXT is None or not getattr(_ACTIVE, "applying", 0):
        return None
    frame = sys._getframe(1)
    for _ in range(200):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name == "forward" and code.co_argcount >= 1:
            ctx = frame.f_locals.get(code.co_varnames[0])
            if isinstance(ctx, _BACKWARD_CONTEXT):
                return getattr(type(ctx), "_forward_cls", None)
        frame = frame.f_back  # type: ignore[assignment]
    return None


__all__ = ["ForwardContext", "call_function", "current_mode", "enclosing_function", "function_name", "routed_functions"]
