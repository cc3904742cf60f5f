"""The bookkeeping of integer inputs in one pass (:class:`FollowedIntegers`, the base of
:class:`~rnnshap.engines.pytorch.discrete.Integers`): the followed integer tensors, each with the ids of the input
positions its elements come from and its shadow (the same tensor computed from the explained samples' values), the
uses of each input, the positions lost, and the leaves where token ids and numbers are attributed. See
``discrete.py`` for what each kind of operation does to them."""


from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from .calls import Tracking
from .integer_ops import (
    Call,
    is_floating,
)

Tensor = torch.Tensor

#: kinds of use of a followed integer input
TOKEN, NUMBER, MASK, CONTEXT = "token", "number", "mask", "context"


@dataclass
class Followed:
    """What is known of an integer tensor computed from followed inputs."""

    #: the followed inputs it is computed from
    inputs: frozenset[int]
    #: int64, its shape: the id of the input position of every element (0: a constant); None when
    #: it went through an operation the positions cannot be followed through (named by ``via``)
    ids: Tensor | None
    #: reference pass: the same tensor computed from the explained samples' values (for masks)
    shadow: Tensor | None = None
    #: the operation that lost the positions (when ``ids`` is None)
    via: str = ""
    #: made by comparing ids (``ids != pad``): used on floating-point values or as lengths, it is
    #: context, and takes the explained sample's values
    mask: bool = False


@dataclass
class Leaf:
    """Where an integer input is attributed: an embedding lookup's output or a cast to float."""

    #: int64: the input position id of each looked-up vector or cast element (0: none)
    ids: Tensor
    #: the input pass's value, a leaf that requires grad: ``ids.shape + feature shape``
    leaf: Tensor
    #: its value in the reference pass
    reference: Tensor
    #: how many trailing dimensions belong to one position (the embedding's vector): summed
    feature_dims: int


class FollowedIntegers:
    """The integer inputs of one pass: the followed tensors with their ids and shadows, their uses, and their
    attribution leaves (see the module docstring)."""

    def __init__(self, mode: Tracking) -> None:
        self.mode = mode
        self._followed: WeakIdKeyDictionary = WeakIdKeyDictionary()
        #: input index → {kind of use: the first operation that made it}
        self.uses: dict[int, dict[str, str]] = {}
        #: input index → why its positions were lost on the way to an embedding or a cast
        self.unfollowable: dict[int, str] = {}
        #: every embedding output and cast of a followed input (input pass only)
        self.leaves: list[Leaf] = []
        #: input index → its first id minus one (ids run over the followed inputs laid end to end)
        self.offsets: dict[int, int] = {}
        self.size = 0
        self._user_grad = True
        self._bypass = 0
        #: casts of followed integers to float whose use as numbers is not yet known → (the integers, their
        #: Followed, the cast's name): cast back to integers or compared (Keras' float32 Input before an
        #: Embedding), they are the integers again; any other use makes the input a number
        self.numbers: WeakIdKeyDictionary = WeakIdKeyDictionary()

    # -- bookkeeping ------------------------------------------------------------------------------
    def follow(self, index: int, tensor: Tensor, shadow: Tensor | None = None) -> None:
        """Follow integer input ``index``; ``shadow`` is its explained samples' values (reference pass)."""
        ids = torch.arange(self.size + 1, self.size + 1 + tensor.numel(), device=tensor.device).reshape(tensor.shape)
        self.offsets[index] = self.size
        self.size += tensor.numel()
        self._followed[tensor] = Followed(frozenset((index,)), ids, shadow)
        self.uses.setdefault(index, {})

    def involves(self, leaves: Iterable[Any]) -> bool:
        followed = self._followed
        return not self._bypass and len(followed) > 0 and any(isinstance(leaf, Tensor) and leaf in followed for leaf in leaves)

    def _get(self, value: Any) -> Followed | None:
        return self._followed.get(value) if isinstance(value, Tensor) else None

    def _all(self, values: Iterable[Any]) -> list[Followed]:
        return [f for value in values if (f := self._get(value)) is not None]

    def _use(self, followed: Iterable[Followed], kind: str, name: str) -> None:
        """Record a use of the inputs behind ``followed`` (a mask's context use is a MASK use)."""
        for f in followed:
            for index in f.inputs:
                self.uses.setdefault(index, {}).setdefault(MASK if kind == CONTEXT and f.mask else kind, name)

    def _lose(self, followed: Followed, what: str) -> None:
        for index in followed.inputs:
            self.unfollowable.setdefault(index, f"{what} after {followed.via}")

    def _register(self, value: Any, ids: Any, shadow: Any, followed: list[Followed], via: str = "") -> None:
        """Record the integer outputs of an operation on ``followed`` (``ids``/``shadow`` mirror ``value``)."""
        inputs = frozenset().union(*(f.inputs for f in followed))
        mask = all(f.mask for f in followed)
        via = via or next((f.via for f in followed if f.ids is None), "")
        outs = tree_flatten(value)[0]
        id_outs = tree_flatten(ids)[0] if ids is not None else [None] * len(outs)
        shadow_outs = tree_flatten(shadow)[0] if shadow is not None else [None] * len(outs)
        for out, out_ids, out_shadow in zip(outs, id_outs, shadow_outs, strict=True):
            if isinstance(out, Tensor) and not is_floating(out):
                if out_ids is not None and tuple(out_ids.shape) != tuple(out.shape):
                    out_ids, via = None, via or "an operation that changes the layout of the integers"
                self._followed[out] = Followed(inputs, out_ids, out_shadow, via, mask)

    def _substitute(self, args: tuple[Any, ...], kwargs: dict[str, Any], replace: Callable[[Tensor, Followed], Any]) -> Call:
        flat, spec = tree_flatten((args, kwargs))
        replaced = [replace(leaf, f) if (f := self._get(leaf)) is not None else leaf for leaf in flat]
        new_args, new_kwargs = tree_unflatten(replaced, spec)
        return new_args, new_kwargs

    def _shadowed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """The call with every followed tensor replaced by its shadow (where it has one)."""
        return self._substitute(args, kwargs, lambda leaf, f: f.shadow if f.shadow is not None else leaf)

    def _shadow_of_call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's result on the explained samples' values; None when no operand has a shadow."""
        if not any(f.shadow is not None for f in self._all(tree_flatten((args, kwargs))[0])):
            return None
        shadow_args, shadow_kwargs = self._shadowed(args, kwargs)
        return func(*shadow_args, **shadow_kwargs)

    @staticmethod
    def _combined(followed: list[Followed], shape: torch.Size) -> Tensor | None:
        """The ids of an elementwise result of ``followed`` operands: each element must come from
        at most one input position (operands from other positions would make it a function of
        several tokens). None when it does not."""
        if not followed or any(f.ids is None for f in followed):
            return None
        ids = torch.broadcast_to(followed[0].ids, shape)  # type: ignore[arg-type]
        for f in followed[1:]:
            other = torch.broadcast_to(f.ids, shape)  # type: ignore[arg-type]
            if bool(((ids != 0) & (other != 0) & (ids != other)).any()):
                return None
            ids = torch.where(ids != 0, ids, other)
        return ids

    @contextlib.contextmanager
    def _through_mode(self) -> Iterator[None]:
        """Run operations through the mode again (the floating-point path and its rules), with the
        model's grad mode; followed integers left in them are used as they are."""
        self._bypass += 1
        try:
            with torch.set_grad_enabled(self._user_grad), self.mode:
                yield
        finally:
            self._bypass -= 1


__all__ = ["CONTEXT", "MASK", "NUMBER", "TOKEN", "Followed", "FollowedIntegers", "Leaf"]
