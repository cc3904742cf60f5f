"""Integer inputs in the two passes: token ids, numbers, and context.

Every integer input the engine follows carries, alongside each tensor computed from it, the
*ids* of the input positions its elements come from: the same operation applied to a tensor of
position ids (``1 +`` the flat index into the followed inputs, laid end to end; ``0`` for a
constant such as padding). Shape, indexing, padding and elementwise integer operations move the
ids with the values, so wherever the integers end up, each element knows its input position.

Where a followed integer tensor ends up decides what the input is:

* **token ids**: it indexes a floating-point table that does not depend on the explained inputs
  (``F.embedding``, ``nn.Embedding``, ``nn.EmbeddingBag``, ``weight[ids]``,
  ``weight.index_select(0, ids)``). The lookup's output becomes a leaf of the input pass, and
  each token's contribution (the sum over the looked-up vector of gradient × (x − r)) is added
  to the input position its ids name. ``F.embedding_bag`` is decomposed into the lookup, the
  weighting and the bag's sum, mean or max (the max by rnnshap's max rule), so that each token
  of a bag is attributed.
* **a number**: it is cast to floating point (``x.float()``, ``.to(torch.float32)``, or
  arithmetic with floats). The cast's output is the leaf; contribution = gradient × (x − r).
* **context**: anything else that reads its values (lengths, indices, reductions). Context is
  used as given by the explained sample on both sides and gets no attribution, so an input that
  is also token ids or a number cannot have such a use (the engine refuses it).

Comparisons (``ids != pad``, ``ids < 0``, ``ids.bool()``) make masks, followed like the ids. A
mask that chooses between the ids and constants at the same positions (``where(ids >= V, UNK,
ids)``) is part of each element's value, computed on each side's own ids. Any other use of a mask
(on floating-point values, as lengths, to index) is context: like a context input, it takes the
explained sample's values on both sides of every pair. For that, in the reference pass every
followed tensor also carries its *shadow*, the same tensor computed from the explained samples'
values, and context uses run on the shadows. Reading metadata (shape, dtype, device) is not a
use, and integer-to-integer casts are followed through.

The engine's first pass, on the background, follows every integer input to tell their kinds apart
(``uses``) and to find what cannot be followed (``unfollowable``); the attribution passes follow the
token and number inputs only, while context inputs simply take the explained sample's values.

Which operation does what to followed integers is data, in ``integer_ops.py``. This module is
:class:`Integers`, whose methods, one per kind of operation (moves, casts, comparisons, embeddings and
bags, number leaves, context uses), all read and write the same per-pass state, kept by its base class
:class:`~.followed.FollowedIntegers` (``followed.py``: the followed tensors with their ids and shadows,
the uses of each input, the leaves of the input pass).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...rules.registry import op_key, op_name
from .bags import bag_layout, reduce_bag
from .calls import out_of_place
from .followed import CONTEXT, MASK, NUMBER, TOKEN, Followed, FollowedIntegers, Leaf
from .integer_ops import (
    CASTS,
    COMPARISONS,
    CONSTANT,
    CONTAINS,
    ELEMENTWISE,
    EMBEDDING,
    EMBEDDING_BAG,
    EMBEDDING_BAG_SIGNATURE,
    EMBEDDING_SIGNATURE,
    GETITEM,
    INDEX_SELECT,
    META,
    MOVES,
    NUMERIC,
    ONE_HOT,
    SETITEM,
    SHAPE_OF_OTHER,
    TORCH_EMBEDDING,
    VIEW,
    Call,
    Mapper,
    Spec,
    floating_dtype,
    identity,
    is_bool,
    is_floating,
    masked_fill_spec,
)
from .tape import TapeEntry

Tensor = torch.Tensor


class Integers(FollowedIntegers):
    """The integer inputs of one pass: their positions, their uses, and their attribution leaves."""

    # -- interception -----------------------------------------------------------------------------
    def op(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool = True
    ) -> tuple[bool, Any]:
        """An operation with a followed integer operand: ``(True, result)`` when handled here,
        ``(False, None)`` when the ordinary path runs it as it is. ``user_grad``: whether the
        model runs it with gradients enabled (operations run through the mode again see that)."""
        self._user_grad = user_grad
        key = op_key(func)
        if key in META:
            return True, func(*args, **kwargs)
        tracked = any(self.mode.is_tracked(leaf) for leaf in leaves)
        if key in CONSTANT:
            return (False, None) if tracked else (True, func(*args, **kwargs))
        if key == SETITEM:
            return self._setitem(func, args, kwargs, tracked)
        # the same in-place detection as the floating-point path
        base, base_args, base_kwargs, target = out_of_place(func, args, kwargs)
        if target is None:
            return self._apply(func, args, kwargs, leaves, tracked)
        if is_floating(target):
            # x.add_(ids), out=x: the integers enter a floating-point tensor as numbers
            if key in NUMERIC or op_key(base) in NUMERIC:
                return True, self._as_numbers(func, args, kwargs, self._all(leaves), op_name(func), target.dtype)
            return self._other(func, args, kwargs, leaves, tracked, op_name(func))
        handled, value = self._apply(base, base_args, base_kwargs, tree_flatten((base_args, base_kwargs))[0], tracked)
        if not handled:
            return False, None
        followed = self._get(value)
        target.copy_(value)
        if followed is not None:
            self._followed[target] = followed
        elif target in self._followed:
            del self._followed[target]
        return True, target

    def _apply(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool
    ) -> tuple[bool, Any]:
        key, name = op_key(func), op_name(func)
        if key in SHAPE_OF_OTHER and self._get(args[0] if args else None) is None:
            return False, None  # x.expand_as(ids), x.type_as(ids): the integers lend their shape or dtype
        if key in CASTS:
            return self._cast(func, args, kwargs, leaves, tracked, name)
        if key in COMPARISONS and not tracked:
            return self._elementwise(func, args, kwargs, leaves, name, comparison=True)
        if key == CONTAINS and len(args) == 2 and self._get(args[1]) is None and not tracked:
            return True, self._membership(args[0], args[1], name)
        if key in (EMBEDDING, TORCH_EMBEDDING):
            return self._embedding(func, args, kwargs, leaves, tracked, name, key == TORCH_EMBEDDING)
        if key == EMBEDDING_BAG:
            result = self._bag(func, args, kwargs, name)
            return (True, result) if result is not None else self._other(func, args, kwargs, leaves, tracked, name)
        if key in ONE_HOT:
            return self._one_hot(func, args, kwargs, leaves, tracked, name)
        if (key == GETITEM or key in INDEX_SELECT) and args and self._get(args[0]) is None:
            return self._indexed_table(func, args, kwargs, leaves, tracked, name, key)
        if key in MOVES:
            return self._move(func, args, kwargs, leaves, tracked, name, MOVES[key])
        if key in NUMERIC:
            value = func(*args, **kwargs)
            dtype = floating_dtype(value)
            if dtype is not None:
                return True, self._as_numbers(func, args, kwargs, self._all(leaves), name, dtype)
            if key in ELEMENTWISE:
                return self._elementwise(func, args, kwargs, leaves, name, value=value)
        return self._other(func, args, kwargs, leaves, tracked, name)

    # -- kinds of operation -----------------------------------------------------------------------
    def _other(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool, name: str
    ) -> tuple[bool, Any]:
        """A context use: the values are read in a way that cannot be followed to positions
        (lengths, indices, reductions, a mask on floating-point values). Like a context input,
        the followed tensors take the explained sample's values (their shadows) on both sides.
        What a mask makes this way is context too; integers made from anything else are followed
        as 'derived', so that an embedding or cast they reach can be refused by name."""
        followed = self._all(leaves)
        self._use(followed, CONTEXT, name)
        shadow_args, shadow_kwargs = self._shadowed(args, kwargs)
        if tracked:
            with self._through_mode():
                return True, func(*shadow_args, **shadow_kwargs)
        value = func(*shadow_args, **shadow_kwargs)
        if all(f.mask for f in followed):
            return True, value
        for out in tree_flatten(value)[0]:
            if is_floating(out):
                for f in followed:
                    self._lose(dataclasses.replace(f, via=f.via or name), f"{name} computes floating-point values from it")
        self._register(value, None, None, followed, via=name)
        return True, value

    def _membership(self, values: Tensor, element: Any, name: str) -> bool:
        """``element in ids`` (transformers' padding check, ``pad_token_id in input_ids``): a comparison
        whose answer is one Python bool for the whole batch. Followed where every row answers alike, on
        the explained samples and on the references: each row alone then takes the batch's branch,
        and both passes take the same one. Refused by name where the rows answer differently."""
        followed = self._get(values)
        assert followed is not None

        def rows(t: Tensor) -> Tensor:
            found = t == element
            return found.reshape(found.shape[0], -1).any(1) if found.dim() else found.reshape(1)

        answers = torch.cat([rows(values)] + ([rows(followed.shadow)] if followed.shadow is not None else []))
        if bool(answers.all()) or not bool(answers.any()):
            return bool(answers[0]) if answers.numel() else False
        self.mode.refuse(
            name,
            "it asks whether a value occurs among integer inputs (`value in ids`), and the rows of the batch answer "
            "differently, so the branch forward() takes on the whole batch is not each row's",
            "control",
        )
        return bool(answers.any())

    def _cast(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool, name: str
    ) -> tuple[bool, Any]:
        followed = self._get(args[0] if args else None)
        if followed is None:
            return (False, None) if tracked else (True, func(*args, **kwargs))  # x.to(ids): dtype and device only
        value = func(*args, **kwargs)
        if not isinstance(value, Tensor):
            return True, value  # ids.type() → 'torch.LongTensor'
        if is_floating(value):
            if followed.mask:  # a mask made from the ids, as floats: context
                return self._other(func, args, kwargs, leaves, tracked, name)
            return True, self._number(value, followed, name, args[0])
        if value.dtype == torch.bool and not followed.mask:  # ids.bool() is ids != 0: a comparison
            return self._elementwise(func, args, kwargs, leaves, name, comparison=True, value=value)
        ids = None if followed.ids is None else followed.ids.to(value.device)
        self._register(value, ids, self._shadow_of_call(func, args, kwargs), [followed])
        return True, value

    def _elementwise(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Any],
        name: str,
        comparison: bool = False,
        value: Any = None,
    ) -> tuple[bool, Any]:
        """Elementwise integer operations and comparisons: each element of the result keeps the
        input position of its operands (which must agree), computed on each side's own values."""
        followed = self._all(leaves)
        if value is None:
            value = func(*args, **kwargs)
        if not isinstance(value, Tensor):
            return self._other(func, args, kwargs, leaves, False, name)
        ids = self._combined(followed, value.shape)
        shadow = self._shadow_of_call(func, args, kwargs)
        if comparison:
            followed = [dataclasses.replace(f, mask=True) for f in followed]
        self._register(value, ids, shadow, followed, via="" if ids is not None or any(f.ids is None for f in followed) else name)
        return True, value

    def _move(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool, name: str, spec: Spec
    ) -> tuple[bool, Any]:
        """Values move (shape, index, pad, cat, where, masked_fill): the ids move the same way.
        A mask made from the ids that chooses between values (``where(ids >= V, UNK, ids)``) is
        computed on each side's own values: each element then depends on one position."""
        data: list[Any] = []
        conditions: list[Any] = []

        def collect(into: list[Any]) -> Mapper:
            def add(x: Any) -> Any:
                into.append(x)
                return x

            return add

        if spec(args, kwargs, collect(data), identity, collect(conditions)) is None or self._view_as_dtype(func, args):
            return self._other(func, args, kwargs, leaves, tracked, name)
        moved = self._all(data)
        choosing = self._all(conditions)
        if not moved:  # the integers only index or mask what moves: a context use
            return self._other(func, args, kwargs, leaves, tracked, name)
        value = func(*args, **kwargs)
        own_choice = bool(choosing) and floating_dtype(value) is None and self._chooses_own(moved, choosing, value)
        context = [
            leaf
            for leaf in leaves
            if self._get(leaf) is not None
            and not any(leaf is x for x in data)
            and not (own_choice and any(leaf is x for x in conditions))
        ]
        if context and op_key(func) not in SHAPE_OF_OTHER:
            # an index made from followed integers, or a mask made from other positions or inputs (a
            # padding mask): context, taken from the explained sample
            self._use(self._all(context), CONTEXT, name)
            args, kwargs = self._substitute(
                args, kwargs, lambda leaf, f: f.shadow if f.shadow is not None and any(leaf is c for c in context) else leaf
            )
            value = func(*args, **kwargs)
        dtype = floating_dtype(value)
        if dtype is not None:  # cat([x, ids]), where(c, ids, 0.5): the integers join floats as numbers
            return True, self._as_numbers(func, args, kwargs, moved, name, dtype)
        shadow = self._shadow_of_call(func, args, kwargs)
        if own_choice:  # where(ids >= V, UNK, ids): each element a function of the id at its position
            self._register(value, self._combined(moved + choosing, value.shape), shadow, moved)
            return True, value
        if any(f.ids is None for f in moved):
            self._register(value, None, shadow, moved)
            return True, value

        def ids_of(x: Any) -> Any:
            followed = self._get(x)
            if followed is not None:
                return followed.ids
            if isinstance(x, Tensor):
                return torch.zeros(x.shape, dtype=torch.int64, device=x.device)
            return 0 if isinstance(x, (int, float, bool)) else x

        def no_id(v: Any) -> Any:
            return 0 if isinstance(v, (int, float, bool, Tensor)) else v

        id_call = spec(args, kwargs, ids_of, no_id, identity)
        assert id_call is not None
        self._register(value, func(*id_call[0], **id_call[1]), shadow, moved)
        return True, value

    def _chooses_own(self, moved: list[Followed], choosing: list[Followed], value: Any) -> bool:
        """Whether the masks ``choosing`` between the ``moved`` ids are made from those same ids, at
        the same positions (``where(ids >= V, UNK, ids)``, ``ids.masked_fill(ids < 0, 0)``)."""
        if not isinstance(value, Tensor) or any(f.ids is None for f in moved + choosing):
            return False
        chosen = self._combined(moved, value.shape)
        if chosen is None:
            return False
        for f in choosing:
            mask_ids = torch.broadcast_to(f.ids, value.shape)  # type: ignore[arg-type]
            if not bool(((mask_ids == 0) | (mask_ids == chosen)).all()):
                return False
        return True

    @staticmethod
    def _view_as_dtype(func: Any, args: tuple[Any, ...]) -> bool:
        """``ids.view(torch.int32)`` reinterprets the bits: not a move."""
        return op_key(func) in VIEW and any(isinstance(a, torch.dtype) for a in args[1:])

    def _as_numbers(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], numbers: list[Followed], name: str, dtype: torch.dtype
    ) -> Any:
        """Run ``func`` with its followed integer operands cast to ``dtype`` (the floating dtype of
        its result, as torch's type promotion does), each cast a number leaf, and the operation
        itself through its rule. Masks made from the ids, and integers that only index, are
        context: they take the explained sample's values."""
        casts: dict[int, Any] = {}

        def replace(leaf: Tensor, followed: Followed) -> Any:
            if id(leaf) not in casts:
                if followed.mask or not any(followed is f for f in numbers):
                    self._use([followed], CONTEXT, name)
                    casts[id(leaf)] = followed.shadow if followed.shadow is not None else leaf
                else:
                    casts[id(leaf)] = self._number(leaf.to(dtype), followed, name)
            return casts[id(leaf)]

        new_args, new_kwargs = self._substitute(args, kwargs, replace)
        with self._through_mode():
            return func(*new_args, **new_kwargs)

    def _number(self, value: Tensor, followed: Followed, name: str, source: Tensor | None = None) -> Tensor:
        """A followed integer tensor cast to floating point: attributed at the cast. With ``source``, the
        integers of an explicit cast, its use as a number waits for the cast's first use (``on_number``)."""
        if followed.ids is None:
            self._lose(followed, f"it is used as a number ({name})")
            self.mode.track(value)  # the pass goes on, to report every problem; the engine refuses
            return value
        if source is None:
            self._use([followed], NUMBER, name)
        key, what = ("rnnshap: integer as a number", name), f"{name} (an integer input as a number)"
        output = self._leaf(key, what, value, followed.ids, 0)
        if source is not None:
            self.numbers[output] = (source, followed, name)
        return output

    def on_number(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool
    ) -> tuple[bool, Any]:
        """An operation on a cast of followed integers to float (see ``numbers``). A cast back to integers
        or a comparison with constants runs on the integers themselves (the float holds them exactly), as if
        the round trip had not been made: Keras on torch casts integer data to a float32 ``keras.Input`` and
        back to integers at the ``Embedding``. Any other use makes the input a number, attributed at the cast."""
        key = op_key(func)
        if key in META or key in CONSTANT:
            return False, None  # its shape or dtype only: not a use
        pending = [leaf for leaf in leaves if isinstance(leaf, Tensor) and leaf in self.numbers]
        others = [leaf for leaf in leaves if isinstance(leaf, Tensor) and leaf not in self.numbers and self.mode.is_tracked(leaf)]
        source = self.numbers[pending[0]][0]
        back = key in CASTS and len(pending) == 1 and args and args[0] is pending[0] and not others
        if back:
            back = not is_floating(func(*args, **kwargs))  # integers (or bools) again
        compared = key in COMPARISONS and len(pending) == 1 and not others
        if back or compared:
            exact = bool(torch.equal(pending[0].detach(), source.to(pending[0].dtype)))
            if exact:
                new_args, new_kwargs = self._substitute_value(args, kwargs, pending[0], source)
                new_leaves = tree_flatten((new_args, new_kwargs))[0]
                return self.op(func, types, new_args, new_kwargs, new_leaves, user_grad)
        for leaf in pending:
            _, followed, name = self.numbers.pop(leaf)
            self._use([followed], NUMBER, name)
        return False, None

    @staticmethod
    def _substitute_value(args: tuple[Any, ...], kwargs: dict[str, Any], old: Tensor, new: Tensor) -> Call:
        flat, spec = tree_flatten((args, kwargs))
        new_args, new_kwargs = tree_unflatten([new if leaf is old else leaf for leaf in flat], spec)
        return new_args, new_kwargs

    def _token(self, key: Any, name: str, value: Tensor, followed: Followed, feature_dims: int) -> Tensor:
        """The output of an embedding lookup of followed ids: attributed per token."""
        if followed.ids is None:
            self._lose(followed, f"it reaches an embedding ({name})")
            self.mode.track(value)
            return value
        self._use([followed], TOKEN, name)
        return self._leaf(key, name, value, followed.ids, feature_dims)

    def _leaf(self, key: Any, name: str, value: Tensor, ids: Tensor, feature_dims: int) -> Tensor:
        """Reference pass: record ``value``; input pass: make it a leaf and remember where it goes."""
        mode = self.mode
        shapes = (tuple(value.shape),)
        if not mode.replay:
            mode.tape.append(TapeEntry(key, name, (), shapes, [value.detach().clone()]))
            mode.track(value)
            return value
        entry = mode.tape.take(key, name, (), shapes)
        assert entry.references is not None
        leaf = value.detach().requires_grad_(True)
        self.leaves.append(Leaf(ids, leaf, entry.references[0], feature_dims))
        output = leaf.clone()
        mode.track(output)
        return output

    def _embedding(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool, name: str, swapped: bool
    ) -> tuple[bool, Any]:
        if swapped:  # torch.embedding(weight, indices, ...)
            weight = args[0] if args else kwargs.get("weight")
            indices = args[1] if len(args) > 1 else kwargs.get("indices")
            max_norm = None
        else:
            try:
                bound = EMBEDDING_SIGNATURE.bind(*args, **kwargs)
            except TypeError:
                return self._other(func, args, kwargs, leaves, tracked, name)
            arguments = bound.arguments
            weight, indices, max_norm = arguments.get("weight"), arguments.get("input"), arguments.get("max_norm")
        followed = self._get(indices)
        if followed is None or not is_floating(weight) or self.mode.is_tracked(weight):
            return self._other(func, args, kwargs, leaves, tracked, name)
        if max_norm is not None:
            self.mode.refuse(
                name,
                "max_norm renormalises rows of the embedding table in place, chosen by the ids looked up, which "
                "differ between the reference and input passes; renormalise the table once and drop max_norm",
            )
        return True, self._token(func, name, func(*args, **kwargs), followed, 1)

    def _indexed_table(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool, name: str, key: Any
    ) -> tuple[bool, Any]:
        """``table[ids]`` or ``table.index_select(0, ids)`` on a table that does not depend on the
        explained inputs: an embedding lookup (a floating table) or a mapping of the ids (an
        integer table)."""
        table = args[0]
        if key == GETITEM:
            indices = args[1] if len(args) > 1 else None
        else:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            indices = (args[2] if len(args) > 2 else kwargs.get("index")) if dim == 0 else None
        followed = self._get(indices)
        mask_index = followed is not None and followed.mask and followed.ids is not None and is_bool(indices)
        if followed is None or not isinstance(table, Tensor) or self.mode.is_tracked(table) or mask_index:
            return self._other(func, args, kwargs, leaves, tracked, name)
        value = func(*args, **kwargs)
        extra = table.dim() - 1
        if is_floating(table):
            return True, self._token(func, name, value, followed, extra)
        ids = None if followed.ids is None else followed.ids.reshape(*followed.ids.shape, *([1] * extra)).expand(value.shape)
        self._register(value, ids, self._shadow_of_call(func, args, kwargs), [followed])
        return True, value

    def _one_hot(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: bool, name: str
    ) -> tuple[bool, Any]:
        followed = self._get(args[0] if args else kwargs.get("input"))
        if followed is None:
            return self._other(func, args, kwargs, leaves, tracked, name)
        value = func(*args, **kwargs)
        ids = None if followed.ids is None else followed.ids.unsqueeze(-1).expand(value.shape)
        self._register(value, ids, self._shadow_of_call(func, args, kwargs), [followed])
        return True, value

    def _setitem(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], tracked: bool) -> tuple[bool, Any]:
        """``t[index] = value`` with followed integers on either side, or in the index."""
        name = op_name(func)
        target, index, value = args[0], args[1], args[2]
        target_f, value_f = self._get(target), self._get(value)
        index_f = self._get(index)
        same_shape = index_f is not None and tuple(index.shape) == tuple(target.shape)
        if same_shape and index.dtype == torch.bool and not is_floating(target):
            # ids[ids >= V] = UNK: the masked_fill of the same positions
            operands = (target, index, value)
            handled, result = self._move(torch.Tensor.masked_fill, operands, {}, list(operands), tracked, name, masked_fill_spec)
            if handled and isinstance(result, Tensor):
                filled = self._get(result)
                target.copy_(result)
                if filled is not None:
                    self._followed[target] = filled
                return True, None
        others = self._all(tree_flatten(index)[0])
        if others:
            self._use(others, CONTEXT, name)
            index = self._shadowed((index,), {})[0][0]
        if is_floating(target) or tracked or (target_f is None and value_f is None):
            if value_f is not None:
                if is_floating(target):
                    value = self._as_numbers(torch.Tensor.to, (value, target.dtype), {}, [value_f], name, target.dtype)
                else:
                    self._use([value_f], CONTEXT, name)
            if tracked:
                with self._through_mode():
                    func(target, index, value)
                return True, None
            return True, func(target, index, value)
        followed = [f for f in (target_f, value_f) if f is not None]
        if any(f.ids is None for f in followed):
            func(target, index, value)
            self._register(target, None, None, followed)
            return True, None
        if target_f is not None and target_f.ids is not None:
            ids = target_f.ids.clone()
        else:
            ids = torch.zeros(target.shape, dtype=torch.int64, device=target.device)
        ids[index] = value_f.ids if value_f is not None and value_f.ids is not None else 0
        shadow = None
        if any(f.shadow is not None for f in followed):
            shadow = (target_f.shadow if target_f is not None and target_f.shadow is not None else target).clone()
            shadow[index] = value_f.shadow if value_f is not None and value_f.shadow is not None else value
        func(target, index, value)
        self._register(target, ids, shadow, followed)
        return True, None

    # -- embedding bags ---------------------------------------------------------------------------
    def _bag(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Tensor | None:
        """``F.embedding_bag`` as the lookup of every token (a leaf), its weight, and the bag's
        sum, mean or max, run through their rules, so that each token gets its share. The tokens
        ``padding_idx`` leaves out are the explained sample's, on both sides (like a padding mask)."""
        try:
            bound = EMBEDDING_BAG_SIGNATURE.bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        a = bound.arguments
        tokens, weight, offsets = a["input"], a["weight"], a["offsets"]
        followed = self._get(tokens)
        if followed is None or not is_floating(weight) or self.mode.is_tracked(weight):
            return None
        value = func(*args, **kwargs)  # torch checks the arguments
        if followed.ids is None:
            self._lose(followed, f"it reaches an embedding bag ({name})")
            self.mode.track(value)
            return value
        if a["max_norm"] is not None:
            reason = "max_norm renormalises rows of the embedding table in place, chosen by the ids looked up; drop it"
            self.mode.refuse(name, reason)
            return value
        offsets_f = self._get(offsets)
        if offsets_f is not None:
            self._use([offsets_f], CONTEXT, name)
            offsets = offsets_f.shadow if offsets_f.shadow is not None else offsets
        shadow = followed.shadow if followed.shadow is not None else tokens
        layout = bag_layout(tokens, offsets, a["include_last_offset"], a["padding_idx"], weight.shape[0], shadow)
        assert followed.ids is not None
        flat = dataclasses.replace(followed, ids=followed.ids.reshape(-1))
        looked_up = self._token(func, name, F.embedding(tokens.reshape(-1), weight), flat, 1)
        dim, dtype = weight.shape[1], weight.dtype
        with self._through_mode():  # the reduction's operations meet their rules (the max of mode="max")
            return reduce_bag(looked_up, layout, a["mode"], a["per_sample_weights"], weight, dim, dtype)


__all__ = ["Followed", "Integers", "Leaf", "TOKEN", "NUMBER", "MASK", "CONTEXT"]
