"""Per-operation fast paths of the passes: the weak identity map of tensors the pass keeps its
bookkeeping in, and the leaves of an operation's result.

Every torch call in a pass goes through ``__torch_function__``, so its Python cost is paid once per
operation per pass. What is below does what torch's pytree and ``WeakIdKeyDictionary`` do, for the
cases that occur on every call, with fewer Python steps; anything else takes torch's own path. (The
flattening of a call's arguments and the cached op names are in ``calls.py``.)
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator

import torch
from torch.utils._pytree import tree_flatten

Tensor = torch.Tensor


def tensors_of(value: Any) -> list[Any]:
    """The leaves of an operation's result (most results are one tensor, or a tuple of tensors)."""
    if isinstance(value, Tensor):
        return [value]
    if type(value) is tuple and all(isinstance(t, Tensor) for t in value):
        return list(value)
    return tree_flatten(value)[0]


class TensorMap:
    """Tensors, by identity and held weakly, each with a value: what ``torch.utils.weak.WeakIdKeyDictionary``
    does, for a map that lives one pass, with lookups that cost one dict access (several are made per
    operation of a pass).

    Entries hold plain weak references and no callbacks: a lookup checks that the entry's tensor is
    the very one asked about, so the entry of a dead tensor never matches a new tensor that got its
    id (it is replaced when that tensor is added). Dead entries are dropped whenever the map has
    doubled since they were last dropped.
    """

    __slots__ = ("_entries", "_limit")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[Tensor], Any]] = {}
        self._limit = 1024

    def __contains__(self, key: Any) -> bool:
        entry = self._entries.get(id(key))
        return entry is not None and entry[0]() is key

    def __getitem__(self, key: Any) -> Any:
        entry = self._entries.get(id(key))
        if entry is None or entry[0]() is not key:
            raise KeyError(key)
        return entry[1]

    def get(self, key: Any, default: Any = None) -> Any:
        entry = self._entries.get(id(key))
        return entry[1] if entry is not None and entry[0]() is key else default

    def __setitem__(self, key: Any, value: Any) -> None:
        entries = self._entries
        entry = entries.get(id(key))
        if entry is not None and entry[0]() is key:
            entries[id(key)] = (entry[0], value)
            return
        entries[id(key)] = (weakref.ref(key), value)
        if len(entries) > self._limit:
            for ident in [ident for ident, (ref, _) in entries.items() if ref() is None]:
                del entries[ident]
            self._limit = max(1024, 2 * len(entries))

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        del self._entries[id(key)]

    def __len__(self) -> int:
        return sum(1 for ref, _ in self._entries.values() if ref() is not None)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[Any]:
        for ref, _ in list(self._entries.values()):
            key = ref()
            if key is not None:
                key._fix_weakref()  # type: ignore[attr-defined]  # as WeakIdRef does before handing out a tensor
                yield key


__all__ = ["TensorMap", "tensors_of"]
