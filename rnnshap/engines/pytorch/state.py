"""What a pass may change in the model, put back after it: :class:`PreservedState` (buffers, tensor attributes,
parameters, counters and random generators, taken before each pass and restored after it, so that explaining
leaves the model bit-identical), and :class:`AsFunction` (the model as the function it computes in rnnshap's passes:
backward hooks set aside, compiled modules run eagerly, all put back afterwards)."""


from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.modules.module as _module_module
from torch import nn

Tensor = torch.Tensor


class PreservedState:
    """The state a forward pass may change, taken before a pass and put back after it.

    A forward pass may write into the model: ``spectral_norm`` in training mode runs a power
    iteration that updates its ``u`` and ``v`` buffers, ``weight_norm`` and the old
    ``spectral_norm`` store the weight they compute as a plain attribute, and a model may cache
    tensors on itself. Every buffer (its values, bit for bit, and the object itself) and every
    tensor-valued attribute of every module is restored after each pass, so that explaining leaves
    the model bit-identical and every pass (reference and input alike) starts from the same state:
    the explained function is the model's forward as it would run next on the model as given.
    Floating parameters are not copied: they are restored as objects, and forward() should not write into
    them; integer parameters (counters: a Keras SeedGenerator's state on the torch backend) get their values
    back. Torch's global generators (CPU, and CUDA where it runs) and those the model holds are put back too,
    so that a draw whose result never reaches the output leaves no trace.
    """

    def __init__(self, model: nn.Module) -> None:
        self.buffers: list[tuple[nn.Module, str, Tensor, Tensor]] = []
        self.parameters: list[tuple[nn.Module, dict[str, Any]]] = []
        self.attributes: list[tuple[nn.Module, dict[str, Tensor]]] = []
        self.counters: list[tuple[Tensor, Tensor]] = []
        #: random number generators the model holds (a draw from one is refused; its state is put back)
        self.generators: list[tuple[torch.Generator, Tensor]] = []
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    self.buffers.append((module, name, buffer, buffer.detach().clone()))
            if module._parameters:
                self.parameters.append((module, dict(module._parameters)))
                # integer parameters are counters, not weights (a Keras SeedGenerator's state on the torch backend,
                # advanced by each call): their values are put back too
                self.counters.extend(
                    (p, p.detach().clone()) for p in module._parameters.values() if p is not None and not p.is_floating_point()
                )
            tensors = {}
            for key, value in vars(module).items():
                if type(value) in PLAIN_TYPES:  # (most of a module's attributes; torch.Generator's isinstance runs Python)
                    continue
                if isinstance(value, Tensor):
                    tensors[key] = value
                elif isinstance(value, torch.Generator):
                    self.generators.append((value, value.get_state()))
            self.attributes.append((module, tensors))
        #: torch's global generator: a draw whose result never reaches the output (a dropout mask Keras makes at
        #: inference, see ``draws_matter``) leaves it as it was
        self.torch_random = torch.get_rng_state()
        self.cuda_random = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self, random_state: bool = True) -> None:
        """Put the state back (``random_state``: the generators too, torch's global one and the model's)."""
        compared: list[tuple[Tensor, Tensor]] = []
        for module, name, buffer, saved in self.buffers:
            if module._buffers.get(name) is not buffer:
                module._buffers[name] = buffer
            if buffer.is_meta:  # shapes without values: nothing to put back
                continue
            if buffer.layout != torch.strided:  # sparse (a graph's adjacency): torch.equal does not take it
                if not _same_sparse(buffer, saved):
                    with torch.no_grad():
                        buffer.copy_(saved)
                continue
            if buffer.shape != saved.shape or buffer.dtype != saved.dtype:
                _put_back(buffer, saved)
            else:
                compared.append((buffer, saved))
        # (compared on the device and read once, not once per buffer: nothing changed is the common case; a copy_ of
        # each instead would bump every buffer's version counter, which tells the explainer that the model changed)
        for buffer, saved in _changed(compared):
            _put_back(buffer, saved)
        for module, parameters in self.parameters:
            now = module._parameters
            if now.keys() != parameters.keys() or any(now[key] is not value for key, value in parameters.items()):
                module._parameters.clear()
                module._parameters.update(parameters)
        for counter, saved in self.counters:
            if not counter.is_meta and not torch.equal(counter, saved):
                with torch.no_grad():
                    counter.copy_(saved)
        for module, tensors in self.attributes:
            own = vars(module)
            for key in [k for k, v in own.items() if type(v) not in PLAIN_TYPES and isinstance(v, Tensor) and k not in tensors]:
                del own[key]
            own.update(tensors)
        if random_state:
            for generator, state in self.generators:
                generator.set_state(state)
            torch.set_rng_state(self.torch_random)
            if self.cuda_random is not None:
                torch.cuda.set_rng_state_all(self.cuda_random)


def python_state(model: nn.Module) -> tuple[Any, ...]:
    """What of the model's Python state a traced program's version names (``engines/pytorch/traced.py``): each
    module's flags, numbers and strings (``training`` among them), tuples and lists of them, and its tensors that are
    neither parameters nor buffers, by identity and version counter (a write into one bumps it). A change of any of
    them makes another version, traced anew. Everything else a forward reads (a function, a submodule or a class
    attribute swapped, a value inside a config object, a global) is guarded at every call by what the forward reads
    (``reads.py``)."""
    state: list[Any] = []
    for module in model.modules():
        for key, value in vars(module).items():
            kind = type(value)
            if kind in _SCALARS:
                state.append((key, value))
            elif kind in (tuple, list):
                if all(type(v) in _SCALARS for v in value):
                    state.append((key, tuple(value)))
            elif kind not in PLAIN_TYPES and isinstance(value, Tensor):
                state.append((key, id(value), tensor_version(value)))
    return tuple(state)


def tensor_version(t: Tensor) -> int:
    """``t``'s version counter (a write into it bumps it), -1 for an inference tensor, which has none."""
    try:
        return t._version
    except RuntimeError:  # (an inference tensor has no version counter)
        return -1


_SCALARS = frozenset({bool, int, float, str, type(None)})

#: the exact types of most attributes of a module (flags, sizes, names, its tables of parameters, buffers, submodules
#: and hooks), none of them a tensor or a generator: passed over without an isinstance check
PLAIN_TYPES = frozenset({bool, int, float, str, type(None), dict, OrderedDict, list, tuple, set, frozenset})


class AsFunction:
    """``with AsFunction(model):`` the model as the function it computes, for rnnshap's passes: the backward
    hooks of its modules (and the global ones) set aside, and compiled modules run eagerly; everything put
    back afterwards (the same hook dicts: their handles still remove them).

    Backward hooks belong to training (a gradient scaled or clipped, a norm logged): run inside rnnshap's
    passes they would change its multipliers, or crash in its batched backward (``float(g.norm())``).
    Forward hooks that change outputs are part of the function, and run. A module compiled with
    ``torch.compile`` (a wrapper, ``OptimizedModule``, anywhere in the model) or ``module.compile()`` (in place)
    computes what its original module computes: that module runs, seen by the passes, and nothing is compiled."""

    _GLOBALS = ("_global_backward_hooks", "_global_backward_pre_hooks")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.hooks: list[tuple[nn.Module, Any, Any]] = []
        self.globals: dict[str, Any] = {}
        self.compiled: list[tuple[nn.Module, str, Any, bool]] = []

    def __enter__(self) -> AsFunction:
        for module in self.model.modules():
            own = module.__dict__
            if own.get("_backward_hooks") or own.get("_backward_pre_hooks"):
                self.hooks.append((module, module._backward_hooks, module._backward_pre_hooks))
                module._backward_hooks = OrderedDict()
                module._backward_pre_hooks = OrderedDict()
            if own.get("_compiled_call_impl") is not None:  # module.compile()
                self.compiled.append((module, "_compiled_call_impl", own["_compiled_call_impl"], True))
                own["_compiled_call_impl"] = None
            if type(module).__name__ == "OptimizedModule":
                original = compiled_original(module)
                if original is not None:  # torch.compile(module): its forward, the compiled call of the original
                    self.compiled.append((module, "forward", own.get("forward"), "forward" in own))
                    own["forward"] = original.__call__
        for name in self._GLOBALS:
            hooks = getattr(_module_module, name, None)
            if hooks:
                self.globals[name] = hooks
                setattr(_module_module, name, OrderedDict())
        return self

    def __exit__(self, *exc: Any) -> None:
        module_module = _module_module
        for module, hooks, pre_hooks in self.hooks:
            module._backward_hooks = hooks
            module._backward_pre_hooks = pre_hooks
        for module, key, value, had in reversed(self.compiled):
            if had:
                vars(module)[key] = value
            else:
                vars(module).pop(key, None)
        for name, hooks in self.globals.items():
            setattr(module_module, name, hooks)
        self.hooks.clear()
        self.compiled.clear()
        self.globals.clear()


def compiled_original(module: nn.Module) -> nn.Module | None:
    """The original module of a ``torch.compile`` wrapper (``OptimizedModule``), or None."""
    if type(module).__name__ == "OptimizedModule":
        original = vars(module).get("_modules", {}).get("_orig_mod")
        if isinstance(original, nn.Module):
            return original
    return None


def compiled_anywhere(model: nn.Module) -> bool:
    """Whether ``model`` holds a module compiled with ``torch.compile`` or ``module.compile()``."""
    return any(compiled_original(m) is not None or vars(m).get("_compiled_call_impl") is not None for m in model.modules())


def _changed(pairs: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """The (buffer, saved copy) pairs, of equal shapes and dtypes, whose values differ (NaN differs, as for
    ``torch.equal``): one read from each device where none does, one per pair on a device where one does."""
    by_device: dict[torch.device, list[tuple[Tensor, Tensor]]] = {}
    for buffer, saved in pairs:
        by_device.setdefault(buffer.device, []).append((buffer, saved))
    changed = []
    for group in by_device.values():
        if len(group) > 1 and not bool(torch.stack([torch.ne(b, s).any() for b, s in group]).any()):
            continue
        changed += [(b, s) for b, s in group if not torch.equal(b, s)]
    return changed


def _put_back(buffer: Tensor, saved: Tensor) -> None:
    with torch.no_grad():
        if buffer.shape != saved.shape:
            buffer.resize_(saved.shape)
        buffer.copy_(saved)


def _same_sparse(a: Tensor, b: Tensor) -> bool:
    """Whether two sparse tensors hold the same values (compared dense: buffers are small)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.layout != b.layout:
        return False
    try:
        return bool(torch.equal(a.to_dense(), b.to_dense()))
    except RuntimeError:  # a layout without to_dense: assume changed (copy_ puts it back)
        return False


__all__ = ["PLAIN_TYPES", "AsFunction", "PreservedState", "compiled_anywhere", "compiled_original"]
