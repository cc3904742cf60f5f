"""What a model's forward reads, as a guard of a traced program (``engines/pytorch/traced.py``).

A traced program keeps the model as it was traced: the Python code its forward ran and every value that code read
(a number in a config dict, a class attribute, a global, a function or submodule it called, a tensor held in a list).
Whatever of that reaches the computation reaches it through torch's functions and methods: as the function called,
as a Python number, shape or flag passed to it, or as a tensor the forward did not make itself. :class:`ForwardReads`
notes each of them while a plain forward runs (a ``TorchFunctionMode``, on the explained samples); the engine replays
a program only where the forward of this call reads what the forward of the traced call read:

- each torch function or method called, in order, with its arguments: Python values by value, tensors the forward
  made (and its inputs) by shape, dtype and device, every other tensor (parameters, buffers, tensors in lists, dicts
  or globals) by identity, version counter, address (a ``.data`` replaced moves it), shape and strides;
- what each call returned, by shape, dtype and device (a tensor made without a dtype follows the default dtype).

The objects a reading names by identity are kept alive with it, so a new object never takes an old one's identity.
What does not reach torch (a value used only in Python) changes no attribution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Parameter
from torch.overrides import TorchFunctionMode

from .state import tensor_version

Tensor = torch.Tensor

#: argument types kept by value
_VALUES = frozenset({bool, int, float, complex, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format})


class ForwardReads(TorchFunctionMode):
    """``with ForwardReads(inputs) as reads: model(*inputs)``: ``reads.calls`` then lists what the forward read (see
    the module's docstring); two readings are the same where their ``calls`` are equal."""

    def __init__(self, inputs: list[Tensor]) -> None:
        super().__init__()
        #: the ids of the tensors the forward made (and of its inputs), those tensors kept alive meanwhile
        self._made: dict[int, Tensor] = {id(t): t for t in inputs}
        #: what the forward read, one entry a torch call
        self.calls: list[tuple[Any, ...]] = []
        #: the objects ``calls`` names by identity, kept alive with it
        self.alive: list[Any] = []
        #: the tensors the forward did not make, by id: their identity, memory, shape, strides and dtype
        self._held: dict[int, tuple[Any, ...]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        try:  # (before the call: it may write in place)
            read: tuple[Any, ...] = (func, self._key(args), self._key(kwargs) if kwargs else None)
        except Exception:  # noqa: BLE001 (an argument that cannot be described: a reading equal to no other)
            read = (object(),)
        out = func(*args, **kwargs)
        try:
            self.calls.append((*read, self._made_by(out)))
        except Exception:  # noqa: BLE001
            self.calls.append((object(),))
        return out

    def _key(self, value: Any) -> Any:
        kind = type(value)
        if kind is Tensor or kind is Parameter or isinstance(value, Tensor):
            if id(value) in self._made:
                return ("made", value.shape, value.dtype, value.device)
            held = self._held.get(id(value))
            if held is None:  # (where it lies and how, noted once a reading: the version counter at every use)
                held = self._held[id(value)] = (id(value), _address(value), value.shape, value.stride(), value.dtype)
                self.alive.append(value)
            return (held, tensor_version(value))
        if kind in _VALUES:
            return value if value == value else "nan"  # (NaN compares unequal to itself)
        if kind is tuple or kind is list or isinstance(value, (tuple, list)):
            return (kind, *map(self._key, value))
        if kind is dict:
            return tuple((k, self._key(v)) for k, v in value.items())
        if kind is slice:
            return ("slice", self._key(value.start), self._key(value.stop), self._key(value.step))
        if value is Ellipsis:
            return "..."
        self.alive.append(value)  # (a function, a module, any other object: by identity)
        return ("object", id(value))

    def _made_by(self, out: Any) -> Any:
        """What a call returned, by shape, dtype and device; its tensors noted as the forward's own."""
        if isinstance(out, Tensor):
            self._made[id(out)] = out
            return (out.shape, out.dtype, out.device)
        if isinstance(out, (tuple, list)):
            return tuple(self._made_by(o) for o in out)
        return out if type(out) in _VALUES else type(out)


def _address(t: Tensor) -> int | None:
    try:
        return t.data_ptr()
    except (RuntimeError, NotImplementedError):  # (a tensor without memory of its own: sparse, a wrapper subclass)
        return None


__all__ = ["ForwardReads"]
