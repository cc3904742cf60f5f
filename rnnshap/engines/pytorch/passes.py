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
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...errors import InputError, ModelStateError, UnsupportedOperationError
from ...rules.base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from ...rules.composite import Quotient
from ...rules.coverage import misfit
from ...rules.elementwise import Bilinear, Product
from ...rules.gates import COMPARISON_DUNDERS, COMPARISONS, PREDICATES, gate_of
from ...rules.registry import RuleRegistry, op_key, op_name
from .calls import cached_op_name, flatten_call, in_place_target, out_of_place
from .discrete import Integers, Leaf
from .functions import enclosing_function, function_name, routed_functions
from .picked import Picked, PickedUses
from .safety import PreservedState, RandomStates, random_forward_error
from .scales import mark_of, mark_result, normalizing_rule
from .tape import Tape, TapeEntry

Tensor = torch.Tensor


def _shapes(leaves: list[Any], tracked: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The shapes of the tracked operands (``torch.Size``, a tuple)."""
    if len(tracked) == 1:
        return (leaves[tracked[0]].shape,)
    return tuple([leaves[i].shape for i in tracked])


# -- the per-operation fast paths (the flattening and op names are in calls.py) ----------------------
# Every torch call in a pass goes through __torch_function__, so its Python cost is paid once per
# operation per pass. What is below does what torch's pytree and WeakIdKeyDictionary do, for the
# cases that occur on every call, with fewer Python steps; anything else takes torch's own path.

def _tensors_of(value: Any) -> list[Any]:
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


def _is_data_getter(func: Any) -> bool:
    """Whether ``func`` is the getter of ``Tensor.data`` (a fresh method-wrapper on each access)."""
    return type(func).__name__ == "method-wrapper" and getattr(func, "__name__", "") == "__get__" and op_key(func) == ("getter", "data")


_COMPARISON_NAMES = frozenset(COMPARISONS + COMPARISON_DUNDERS + PREDICATES)
#: the comparison a Keras ``Masking`` makes (see ``AttributionMode._on_masked_input``)
_NOT_EQUAL = frozenset({torch.not_equal, torch.ne, torch.Tensor.ne, torch.Tensor.not_equal, torch.Tensor.__ne__})
#: dtype conversions, followed from a masked input to the tensor that is compared
_CASTS = frozenset({torch.Tensor.to, torch.Tensor.type, torch.Tensor.float, torch.Tensor.double, torch.Tensor.half, torch.Tensor.bfloat16, torch.as_tensor})
#: operations that read a tensor's metadata only
_QUERIES = frozenset({"size", "dim", "numel", "__len__", "__get__", "stride", "is_contiguous", "nelement", "ndimension", "element_size"})
#: operations whose second operand gives only a shape (or a dtype): ``idx.expand_as(src)`` as PyG's scatter
#: writes it. With only that operand input-dependent, the result is a constant.
_SHAPE_GIVERS = frozenset({torch.Tensor.expand_as, torch.Tensor.view_as, torch.Tensor.reshape_as, torch.Tensor.type_as})
#: ``torch.broadcast_tensors``: each result is its operand broadcast (linear in it alone)
_BROADCASTS = frozenset(f for f in (torch.broadcast_tensors, getattr(torch.functional, "broadcast_tensors", None)) if f is not None)
#: operations that read only the shape, dtype or device of a tensor: all a ``.data`` view may be used for
_SHAPE_READS = frozenset({"new", "new_zeros", "new_ones", "new_empty", "new_full", "size", "dim", "numel", "__len__", "stride",
                          "is_contiguous", "nelement", "ndimension", "element_size", "zeros_like", "ones_like", "empty_like",
                          "full_like", "__get__"})
#: kinds of refusal never deferred (see ``AttributionMode._defer``): values taken out of torch, branches
_NEVER_DEFERRED = frozenset({"control", "escape", "integer", "no_grad", "function", "detach"})
#: reductions of a comparison's mask that a check makes (``(value == value).all(-1)`` in torch.distributions'
#: argument validation, ``torch._is_all_true``): followed where the mask is the same everywhere
_MASK_REDUCTIONS = frozenset({"all", "any", "_is_all_true", "_is_any_true"})
#: torch's functions that draw random numbers (torch.distributions samples through them): named in the
#: refusal of a forward whose draws change a generator's state (see ``RandomStates``)
_RANDOM = frozenset(
    f
    for f in [
        *(getattr(torch, name, None) for name in (
            "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal", "bernoulli",
            "multinomial", "poisson", "binomial", "_standard_gamma", "_sample_dirichlet", "rrelu", "rrelu_",
        )),
        *(getattr(torch.Tensor, name, None) for name in (
            "uniform_", "normal_", "bernoulli_", "bernoulli", "exponential_", "geometric_", "log_normal_", "cauchy_",
            "random_", "multinomial",
        )),
    ]
    if f is not None
)  # fmt: skip


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
        self._indices = TensorMap()
        #: bool or integer results of refused operations on tracked tensors (x > 0) → the op: a branch on them is named
        self._decisions = TensorMap()
        #: > 0 while a refused custom Function runs as torch runs it (its grad-off inside is not refused again)
        self._quiet = 0
        #: inputs the model masks by comparing them with values → (the explained samples' values, the values):
        #: the comparison reads the sample's values on both sides (see ``_on_masked_input``)
        self.sample_masks = TensorMap()
        #: integer inputs followed to their embeddings, casts to float and other uses (see discrete.py)
        self.discrete = Integers(self)
        #: the uses of indices picked by argmax, max or min, top-1 (see picked.py)
        self.picks = PickedUses(self)
        #: where the followed integer inputs are attributed: every embedding output and cast to float
        self.embedded: list[Leaf] = self.discrete.leaves
        #: the dtypes of input-dependent tensors: the least precise one bounds how exactly Σφ can add up
        self.dtypes: set[torch.dtype] = set()
        #: the operation that first made an input-dependent tensor of each dtype (said where precision drops)
        self.dtype_origins: dict[torch.dtype, str] = {}
        self._last_name = "the model's input"
        #: roots and inverse roots among the tracked tensors (see scales.py): a normalization written by
        #: hand takes the built-in norms' rule
        self.scales = TensorMap()
        #: whether any integer input is followed (until one is, no operation involves one)
        self._following = False
        #: the random functions forward() called (None: not watched; see ``run_pass``'s ``watch_random``)
        self.random_draws: list[str] | None = None
        #: ``.data`` of input-dependent tensors: usable for their shape, dtype and device only (``x.data.new(...)``)
        self._data_views = TensorMap()
        #: refusals of operations whose results may not reach the output: name → (reason, advice), refused
        #: only where the output depends on them (see ``_defer`` and ``raise_if_unsupported``)
        self.deferred: dict[str, tuple[str, str]] = {}
        #: tensors computed from the results of deferred refusals → the names of those operations
        self._taints = TensorMap()

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
        for leaf in _tensors_of(value):
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

    def _tracked_among(self, leaves: list[Any]) -> tuple[int, ...]:
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

    def _refuse(self, name: str, reason: str, advice: str = "rule") -> None:
        """Refuse ``name``; ``advice`` is the kind of advice that fits (a key of rnnshap.errors.ADVICE)."""
        if name not in self.unsupported:
            self.unsupported[name] = reason
            self.advice[name] = advice

    def refuse(self, name: str, reason: str, advice: str = "rule") -> None:
        self._refuse(name, reason, advice)

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

    def _refuse_grad_off(self, name: str) -> None:
        """``name`` runs on a tracked tensor with gradients disabled: refuse what disabled them."""
        if self._quiet:
            return
        function = enclosing_function()
        if function is not None:  # torch runs a custom Function's forward (not routed to the pass)
            self._refuse(
                f"{function_name(function)} (a custom torch.autograd.Function)",
                "torch runs its forward() with gradients disabled and takes its backward(), which gives gradients, "
                "not DeepLIFT multipliers",
                "function",
            )
            return
        if not torch.is_inference_mode_enabled():
            return  # the model's no_grad(): followed as detach() is (see __torch_function__)
        self._refuse("torch.inference_mode() in forward()", f"{name} runs on an input-dependent tensor in inference mode", "no_grad")

    def _mark_indices(self, result: Any, name: str, rule: Rule | None = None, call: OpCall | None = None) -> None:
        """Integer results of a rule (the indices of torch.max) are followed: see ``_index_use``.

        Where the rule picks (``index_handle``: argmax, max and min over a dimension, top-1), each
        carries its handle: the indices as float64 values, tracked, with the pick's multipliers in
        the input pass (see rnnshap/rules/selection.py)."""
        if isinstance(result, Tensor) and (result.is_floating_point() or result.is_complex()):
            return
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
                self._indices[leaf] = Picked(name, handle)

    def _index_use(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool) -> tuple[bool, Any]:
        """An operation on indices chosen from a tracked tensor (``x.max(1).indices``).

        Picked indices with a handle are exact: a selection by them (a gather, an indexing, an
        embedding lookup, a one-hot) takes the rule of rnnshap/rules/selection.py, and any other
        operation runs on their handles with its own rule. Other chosen indices (and comparison
        masks outside a ``where`` gate): shape and indexing operations on them alone pass them on;
        any other use is refused, since they differ between the input and its reference."""
        picked = [self._indices[leaf] for leaf in leaves if isinstance(leaf, Tensor) and leaf in self._indices]
        if not picked:
            return False, None
        origin = picked[0].origin
        # picked indices with handles, and masks of comparisons of those (a gate: where(idx < 0, idx + n, idx),
        # as Keras' torch backend normalizes indices): run on the handles
        handled = [leaf for leaf in leaves if isinstance(leaf, Tensor) and leaf in self._indices and self._indices[leaf].handle is not None]
        gates = all(self._indices[leaf].handle is not None or gate_of(leaf) is not None for leaf in leaves if isinstance(leaf, Tensor) and leaf in self._indices)
        if handled and gates and not self._indices_unchanged(func, leaves):
            return True, self.picks.use(func, types, args, kwargs, leaves, user_grad)
        rule = self.registry.op_rule(func)
        name = op_name(func)
        if origin.rsplit(".", 1)[-1] in _COMPARISON_NAMES and getattr(func, "__name__", "") in _MASK_REDUCTIONS and isinstance(leaves[0], Tensor):
            if len(leaves) == 1:
                return True, self._uniform_decision(func, args, kwargs, leaves[0], name, origin)
            mask = leaves[0]
            if not any(isinstance(leaf, Tensor) for leaf in leaves[1:]) and (bool(mask.all()) or not bool(mask.any())):
                # a reduction along a dimension of a mask that is the same everywhere (the validation of
                # torch.distributions: (value == value).all(-1)): as uniform as the mask; a branch on it is
                # a decision of _uniform_decision
                result = func(*args, **kwargs)
                if isinstance(result, Tensor):
                    self._indices[result] = Picked(origin, None)
                return True, result
        reason = (
            f"it uses the indices that {origin} picked from an input-dependent tensor; they differ between the input "
            "and its reference, and which element is picked has no multiplier"
        )
        if (rule is None or type(rule) in (Linear, Constant)) and not any(self.is_tracked(leaf) for leaf in leaves):
            result = func(*args, **kwargs)
            outputs = [t for t in tree_flatten(result)[0] if isinstance(t, Tensor)]
            target = in_place_target(func, args, kwargs) if type(rule) is Linear else None
            if target is not None:  # written into a buffer (picked[:, t] = idx): the buffer holds them now
                self._indices[target] = Picked(origin, None)
                return True, result
            if not outputs or type(rule) is Constant:
                return True, result  # a query (idx.shape) or a constant (zeros_like)
            if type(rule) is Linear and not any(t.is_floating_point() or t.is_complex() for t in outputs):
                for t in outputs:
                    self._indices[t] = Picked(origin, None)
                return True, result
            self._refuse_index_use(func, name, origin, reason)
            return True, result
        claim = getattr(rule, "takes_gate", None)  # where(x >= 0, f(x), g(x)): the gate rule takes the comparison
        if claim is not None and any(self.is_tracked(leaf) for leaf in leaves) and claim(self._call(func, args, kwargs, name)):
            return False, None
        self._refuse_index_use(func, name, origin, reason)
        return False, None

    def _uniform_decision(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], mask: Tensor, name: str, origin: str) -> Any:
        """``torch.all(mask)`` / ``mask.any()`` over a whole comparison mask, to branch on
        (``if torch.all(n == 0):``, as xlstm's sLSTM writes its first step).

        Where the mask is the same for every element, every row of the batch, alone or with any
        others, takes the branch the batch takes: the pass follows the model's own function on each
        row. The decision is kept on the tape, and the input pass must take it the same way as the
        reference pass (else the two passes would run different operations). A mask that differs
        between elements is refused: the batch's branch is not each row's."""
        result = func(*args, **kwargs)
        what = f"{name} of {origin}"
        key = ("decision", what)
        entry = self.tape.take(key, what, (), ()) if self.replay else None
        differ = "forward() branches on a comparison of input-dependent values that differ between the rows (or elements) of the batch, so the branch the batch takes is not each row's"
        if not (bool(mask.all()) or not bool(mask.any())):
            if self.replay:
                raise UnsupportedOperationError([(what, f"{differ} (here on the inputs explained)", "control")])
            self._refuse(what, differ, "control")
            self._mark_decisions(result, origin)
            return result
        taken = bool(mask.flatten()[0]) if mask.numel() else True
        if entry is None:
            self.tape.append(TapeEntry(key, what, (), (), [torch.tensor(taken)]))
            return result
        assert entry.references is not None
        if bool(entry.references[0]) != taken:
            raise UnsupportedOperationError([(
                what,
                f"forward() branches on it, and the comparison is {bool(entry.references[0])} on the references and "
                f"{taken} on the inputs, so the two passes would run different operations",
                "control",
            )])
        return result

    def _indices_unchanged(self, func: Any, leaves: list[Any]) -> bool:
        """A query of the indices' metadata (``idx.shape``) or a constant made from them (``zeros_like``)."""
        rule = self.registry.op_rule(func)
        if type(rule) is Constant or (rule is None and getattr(func, "__name__", "") in _QUERIES):
            return True
        return False

    def _refuse_index_use(self, func: Any, name: str, origin: str, reason: str) -> None:
        """Refuse a use of picked indices, or of a comparison's mask outside a ``where`` gate, with
        the advice that fits: a comparison is named itself (a step function), a branch on it as control flow."""
        if origin.rsplit(".", 1)[-1] not in _COMPARISON_NAMES:
            self._refuse(name, reason, "selection")
            return
        rule = self.registry.op_rule(func)
        if isinstance(rule, Refuse) and getattr(rule, "advice", None) == "control":
            self._refuse(name, f"{rule.reason}: a value computed by {origin} from input-dependent values", "control")
        else:
            self._refuse(origin, f"it compares input-dependent values and {name} uses the mask outside a where(mask, f(x), g(x)) gate", "comparison")

    def _decision_use(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], user_grad: bool) -> Any:
        """An operation on the bool or integer result of a refused operation (``x > 0``): refused
        itself when it turns it into a Python value (``if (x > 0).any():``), so that the branch is
        named with the comparison. (Only after a refusal: the pass fails anyway, speed is moot.)"""
        origin = next(self._decisions[leaf] for leaf in leaves if isinstance(leaf, Tensor) and leaf in self._decisions)
        rule = self.registry.op_rule(func)
        if isinstance(rule, Refuse) and getattr(rule, "advice", None) == "control":
            self._refuse(op_name(func), f"{rule.reason}: a value computed by {origin} from input-dependent values", "control")
        result = self._intercept(func, types, args, kwargs, user_grad, decided=True)
        self._mark_decisions(result, origin)
        return result

    def _mark_decisions(self, result: Any, name: str) -> None:
        for leaf in tree_flatten(result)[0]:
            if isinstance(leaf, Tensor) and not (leaf.is_floating_point() or leaf.is_complex()):
                self._decisions[leaf] = name

    def raise_if_unsupported(self) -> None:
        """Raise for every refused operation (the deferred ones the output depends on are refused by
        ``refuse_deferred``, which ``run_pass`` calls first)."""
        if self.unsupported:
            raise UnsupportedOperationError([(name, why, self.advice.get(name, "rule")) for name, why in self.unsupported.items()])

    # -- interception ---------------------------------------------------------------------------
    def follow_discrete(self, index: int, tensor: Tensor, shadow: Tensor | None = None) -> None:
        """Follow the integer input ``index`` (token ids, a number, or context such as lengths);
        ``shadow``: in the reference pass, the explained samples' values of the same input."""
        self._following = True
        self.discrete.follow(index, tensor, shadow)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if self._taints:
            result = self._run(func, types, args, kwargs)
            self._spread_taint(func, args, kwargs or {}, result)
            return result
        return self._run(func, types, args, kwargs)

    def _spread_taint(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        """Results (and the targets written in place, with the tensors they are views of) of an operation
        on tensors computed from a deferred refusal's result carry its name on (see ``_defer``)."""
        leaves = flatten_call(args, kwargs)[0]
        names: set[str] = set()
        for leaf in leaves:
            if isinstance(leaf, Tensor):
                names |= self._taints.get(leaf, set())
                if leaf._base is not None:
                    names |= self._taints.get(leaf._base, set())
        if not names:
            return
        targets = [t for t in _tensors_of(result) if isinstance(t, Tensor)]
        target = in_place_target(func, args, kwargs)
        if target is None and args and isinstance(args[0], Tensor) and getattr(func, "__name__", "").endswith("_"):
            target = args[0]
        if target is not None:
            targets += [target] + ([target._base] if target._base is not None else [])
        for t in targets:
            self._taints[t] = self._taints.get(t, set()) | names

    def _defer(self, name: str, reason: str, advice: str, result: Any) -> None:
        """Refuse ``name`` only if the output turns out to depend on its ``result`` (a norm that only feeds a
        training loss changes no value of the output): its results carry its name on."""
        if name not in self.unsupported:
            self.deferred.setdefault(name, (reason, advice))
        for t in _tensors_of(result):
            if isinstance(t, Tensor):
                self._taints[t] = self._taints.get(t, set()) | {name}

    def refuse_deferred(self, output: Any) -> None:
        """Refuse the deferred operations that ``output`` depends on (see ``_defer``)."""
        reached: set[str] = set()
        for t in _tensors_of(output):
            if isinstance(t, Tensor):
                reached |= self._taints.get(t, set())
                if t._base is not None:
                    reached |= self._taints.get(t._base, set())
        for name in sorted(reached):
            if name in self.deferred:
                reason, advice = self.deferred[name]
                self._refuse(name, reason, advice)

    def _run(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if func is _SET_GRAD_ENABLED:
            return func(*args, **(kwargs or {}))  # the model's own no_grad() / enable_grad(), as it asks
        if self.random_draws is not None and func in _RANDOM:
            self.random_draws.append(op_name(func))
        user_grad = torch.is_grad_enabled()
        if not user_grad and self.replay and self._follows_no_grad(args, kwargs):
            # the model's own no_grad(): statistics computed without gradients are part of the
            # function all the same, followed as detach() is (rules/base.py, Identity)
            torch._C._set_grad_enabled(True)
            try:
                return self._intercept(func, types, args, kwargs, True)
            finally:
                torch._C._set_grad_enabled(False)
        if self.replay or not user_grad:
            return self._intercept(func, types, args, kwargs, user_grad)
        # the reference pass runs with gradients enabled as the model sees them, but records no graph
        torch._C._set_grad_enabled(False)
        try:
            return self._intercept(func, types, args, kwargs, user_grad)
        finally:
            torch._C._set_grad_enabled(True)

    def _follows_no_grad(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
        """Whether an operation the model runs under its own ``torch.no_grad()`` involves an
        input-dependent tensor, and runs in the input pass with gradients, as under ``detach()``:
        not in ``torch.inference_mode()`` (its tensors cannot enter a graph) nor in a custom
        Function's forward (refused: see ``_refuse_grad_off``)."""
        if self._quiet or torch.is_inference_mode_enabled():
            return False
        leaves = flatten_call(args, kwargs or {})[0]
        involved = bool(self._tracked_among(leaves)) or (self._following and self.discrete.involves(leaves))
        if not involved and self._indices:
            involved = any(isinstance(leaf, Tensor) and leaf in self._indices for leaf in leaves)
        return involved and enclosing_function() is None

    def _intercept(
        self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, user_grad: bool, decided: bool = False, masks: bool = True
    ) -> Any:
        kwargs = kwargs or {}
        if masks and self.sample_masks and args and isinstance(args[0], Tensor) and args[0] in self.sample_masks:
            return self._on_masked_input(func, types, args, kwargs, user_grad, decided)
        leaves, spec, layout = flatten_call(args, kwargs)
        if self._decisions and not decided and any(isinstance(leaf, Tensor) and leaf in self._decisions for leaf in leaves):
            return self._decision_use(func, types, args, kwargs, leaves, user_grad)
        if self._following and self.discrete.involves(leaves):
            handled, result = self.discrete.op(func, types, args, kwargs, leaves, user_grad)
            if handled:
                return result
        if self._following and self.discrete.numbers and any(isinstance(leaf, Tensor) and leaf in self.discrete.numbers for leaf in leaves):
            handled, result = self.discrete.on_number(func, types, args, kwargs, leaves, user_grad)
            if handled:
                return result
        if self._indices:
            handled, result = self._index_use(func, types, args, kwargs, leaves, user_grad)
            if handled:
                return result
        if self._data_views and any(isinstance(leaf, Tensor) and leaf in self._data_views for leaf in leaves):
            return self._data_use(func, args, kwargs, leaves)
        tracked = self._tracked_among(leaves)
        if not tracked:
            return func(*args, **kwargs)
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
            if not user_grad and any(self.is_tracked(leaf) for leaf in _tensors_of(result)):
                self._refuse_grad_off(name)
            if len(tracked) == 1:
                self._mark_scale(func, args, kwargs, leaves[tracked[0]], result)
            return result
        call = OpCall.flat(func, name, leaves, spec, tracked, self.pairs, layout)
        base, base_args, base_kwargs, target = func, args, kwargs, None
        linear = rule is not None and rule.is_linear(call)
        if not linear:
            # in place and not linear (x.relu_(), F.relu(x, inplace=True)): run out of place, copy back
            base, base_args, base_kwargs, target = out_of_place(func, args, kwargs)
        else:  # linear and maybe in place (outs[:, t] = h, buf.index_put_(..., h)): the target becomes tracked
            target = in_place_target(func, args, kwargs)
        if linear or target is None:
            result = self.dispatch(func, args, kwargs, base, base_args, base_kwargs, target, rule, name, call, linear)
        else:  # another call, out of place: dispatch looks at it afresh
            result = self.dispatch(func, args, kwargs, base, base_args, base_kwargs, target, self.registry.op_rule(base), name)
        if not user_grad and any(self.is_tracked(leaf) for leaf in _tensors_of(result)):
            self._refuse_grad_off(name)  # an input-dependent value computed with gradients disabled flows on
        if len(tracked) == 1:
            self._mark_scale(func, args, kwargs, leaves[tracked[0]], result)
        elif self.scales and target is not None and target in self.scales:
            del self.scales[target]  # (written into in place with an unmarked value)
        return result

    def _broadcast(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any], tracked: tuple[int, ...]) -> Any:
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
        self._refuse("torch.Tensor.data", "`.data` cuts the path from the input to the output", "detach")
        self.track(result)
        return result

    def _mark_scale(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], operand: Tensor, result: Any) -> None:
        """Mark ``result`` as a root or an inverse root where ``func`` makes or keeps one (see scales.py)."""
        mark = mark_of(func, args, kwargs, operand, self.scales)
        if mark is not None:
            mark_result(result, mark, getattr(func, "__name__", ""), self.scales)
        elif self.scales and isinstance(result, Tensor) and result in self.scales:
            del self.scales[result]  # (a marked tensor written into in place with an unmarked value)

    def _on_masked_input(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any], user_grad: bool, decided: bool) -> Any:
        """An operation on an input the model masks by comparing it with a value (a Keras ``Masking``):
        that comparison (``input != value``) is the mask of the explained samples on both sides of
        their pairs, context and not attributed, as masks made from token ids are; a cast of the input
        (Keras casts it to the layer's dtype) is followed with the samples' values cast alike; any
        other operation runs as usual."""
        values, compared = self.sample_masks[args[0]]
        other = args[1] if len(args) == 2 else None
        if func in _NOT_EQUAL and other is not None and not self.is_tracked(other):
            if isinstance(other, (int, float)) or (isinstance(other, Tensor) and other.dim() == 0):
                if float(other) in compared:
                    return func(values, other, **kwargs)
        result = self._intercept(func, types, args, kwargs, user_grad, decided, masks=False)
        if func in _CASTS and isinstance(result, Tensor) and result is not args[0] and result.is_floating_point():
            self.sample_masks[result] = (func(values, *args[1:], **kwargs), compared)
        return result

    def _call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> OpCall:
        """The call with both sides equal (the reference side is filled in from the tape later)."""
        leaves, spec, layout = flatten_call(args, kwargs)
        return OpCall.flat(fn, name, leaves, spec, self._tracked_among(leaves), self.pairs, layout)

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
        """
        if call is None:
            call = self._call(base, base_args, base_kwargs, name)

        if rule is None or isinstance(rule, Refuse):
            result = func(*args, **kwargs)
            if rule is None and not any(isinstance(leaf, Tensor) for leaf in _tensors_of(result)):
                return result  # a query such as x.shape or x.dim(): no value flows on
            if isinstance(rule, Refuse):
                reason, advice = rule.reason, getattr(rule, "advice", "rule")
            else:  # (Rescale is advice for one input-dependent operand only)
                reason, advice = "no attribution rule is registered for it", "rule" if len(call.tracked) < 2 else "rule_operands"
            outputs = [t for t in _tensors_of(result) if isinstance(t, Tensor)]
            deferrable = not self._indices and not self._following  # (picked indices and integer inputs: not followed)
            if deferrable and target is None and func is base and outputs and all(t.is_floating_point() for t in outputs) and advice not in _NEVER_DEFERRED:
                self._defer(name, reason, advice, result)  # refused where the output depends on it
            else:
                self._refuse(name, reason, advice)
            self.track(result)
            self._mark_decisions(result, name)
            return result
        if isinstance(rule, EvalOnly) and rule.is_active(call):
            raise ModelStateError(f"The model runs {rule.what} ({name}), {_eval_only_advice(call, name)}")

        if linear if linear is not None else rule.is_linear(call):
            return self._linear(func, args, kwargs, target, rule, name)
        if self.scales and (type(rule) is Product or type(rule) is Quotient):
            rule = normalizing_rule(rule, call, self.scales)  # a normalization written by hand (scales.py)

        why = misfit(rule, call)
        if why is not None:  # the rule would fail in the input pass: refuse it now, by name
            self._refuse(name, why, getattr(rule, "refusal_advice", "operands"))
            result = func(*args, **kwargs)
            self.track(result)
            if target is not None:
                self._written_into(target)
            return result

        key = op_key(base)
        shapes = _shapes(call.leaves, call.tracked)
        if not self.replay:
            references = [call.leaves[i].detach().clone() for i in call.tracked]
            entry = TapeEntry(key, name, call.tracked, shapes, references)
            self.tape.append(entry)
            plain = target is None and func is base
            result = rule.reference(call) if plain else func(*args, **kwargs)
            if plain and getattr(rule, "reuses_reference_output", False) and isinstance(result, Tensor):
                self._keep_output(entry, rule, call, references, result)
            self.track(result)
            self._mark_indices(result, name, rule, call)
            if target is not None:
                self._written_into(target)
            return result

        entry = self.tape.take(key, name, call.tracked, shapes)
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
            raise UnsupportedOperationError([(name, str(error), "operands")]) from error
        if target is not None:
            target.copy_(result)
            result = target if func is not base or "out" not in kwargs else kwargs["out"]
            self._written_into(target)
        self.track(result)
        self._mark_indices(result, name, rule, call)
        return result

    def _linear(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], target: Tensor | None, rule: Rule, name: str) -> Any:
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
        outputs = [leaf for leaf in _tensors_of(result) if isinstance(leaf, Tensor)]
        if outputs and not any(t.is_floating_point() or t.is_complex() for t in outputs):
            self._refuse(name, "its result is not floating point, so the input's influence through it is lost", "integer")
            self._mark_decisions(result, name)
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
    def module_call(self, module: nn.Module, forward: Callable[..., Any], rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call of a module that has a module-level rule: attributed as one operation."""
        leaves, _ = tree_flatten((args, kwargs))
        if not any(self.is_tracked(leaf) for leaf in leaves):
            return forward(*args, **kwargs)
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        if not torch.is_grad_enabled():
            self._refuse_grad_off(name)
        no_graph = torch.no_grad() if not self.replay else torch.enable_grad() if self._follows_no_grad(args, kwargs) else contextlib.nullcontext()
        with torch._C.DisableTorchFunction(), no_graph:
            result = self.dispatch(forward, args, kwargs, forward, args, kwargs, None, rule, name)
        if self._taints:
            self._spread_taint(forward, args, kwargs, result)
        return result


#: operations that torch's autocast runs in its lower precision dtype with every floating operand cast to
#: it, and whose rules compute with several operations (some of which autocast would not cast, such as an
#: in-place addmm_): the rule runs on the operands cast as autocast casts them, with autocast off inside
_AUTOCAST_LOWERED = frozenset(
    f
    for f in (getattr(torch, name, None) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"))
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
        return [leaf.to(dtype) if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.dtype != dtype else leaf for leaf in leaves]

    return OpCall(call.fn, call.name, cast(call.leaves), cast(call.ref_leaves), call.spec, call.tracked, call.pairs, call.layout, None)


def _context(call: OpCall) -> tuple[Any, ...]:
    """The leaves of ``call`` other than its tracked tensors."""
    tracked = call.tracked
    if len(tracked) == len(call.leaves):
        return ()
    return tuple(leaf for i, leaf in enumerate(call.leaves) if i not in tracked)


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


def run_pass(
    model: nn.Module,
    inputs: list[Tensor],
    registry: RuleRegistry,
    tape: Tape,
    replay: bool,
    follow: Sequence[int] = (),
    pairs: PairGrid | None = None,
    shadows: Mapping[int, Tensor] | None = None,
    take: Callable[[Any], Any] | None = None,
    sample_masks: Mapping[int, tuple[Tensor, frozenset[float]]] | None = None,
    state: PreservedState | None = None,
    watch_random: bool = False,
) -> tuple[Tensor, AttributionMode]:
    """Run ``model(*inputs)`` as the reference pass (``replay=False``) or the input pass.

    ``follow`` lists integer inputs to follow (token ids, numbers or context; see discrete.py);
    ``shadows``, in the reference pass, holds the explained samples' values of followed inputs (the
    masks made from them are taken from the explained samples); ``pairs`` says how the batch is made
    of (sample, reference) pairs, when it is (see :class:`PairGrid`); ``take`` picks the explained
    tensor of a result with several, inside the pass (see engines/outputs.py); ``sample_masks`` maps
    float inputs the model masks by comparing them with values to (the explained samples' values,
    those values): those comparisons read the samples' values; ``state``, the model's state taken
    before the pass (one taken for several passes in a row, each of which restores it), else taken
    here; ``watch_random``: refuse a forward that draws random numbers (the constructor's probe).
    Returns the output and the mode, which holds the attribution leaves of the integer inputs
    and what was learned about them.
    """
    mode = AttributionMode(registry, tape, replay, pairs)
    module_rules = ModuleRules(model, registry)
    if state is None:
        state = PreservedState(model)  # a forward may write into buffers (spectral_norm in training mode)
    randoms = None
    if watch_random:
        mode.random_draws = []
        randoms = RandomStates(model)
    module_rules.install(mode)
    try:
        with torch.enable_grad(), routed_functions(mode), mode:
            mode.track(inputs)
            for index, (values, value) in (sample_masks or {}).items():
                mode.sample_masks[inputs[index]] = (values, value)
            for index in follow:
                mode.follow_discrete(index, inputs[index], None if shadows is None else shadows.get(index))
            output = model(*inputs)
            if take is not None:
                output = take(output)
        written = [name for name, buffer in model.named_buffers() if mode.is_tracked(buffer)] if watch_random else []
    finally:
        drawn = randoms.drawn() if randoms is not None else []  # (before the state is restored: it resets held generators)
        module_rules.remove()
        state.restore()
    if drawn:  # named with the random functions of torch that forward() called
        error = random_forward_error(sorted(set(mode.random_draws or ())) + drawn)
        error.eval_may_help = True  # type: ignore[attr-defined]  # (see forms.in_eval_mode)
        raise error
    if mode.deferred:
        mode.refuse_deferred(output)
    if written:
        error = ModelStateError(
            f"forward() writes values computed from its inputs into the buffer(s) {', '.join(map(repr, written))} (running "
            "statistics updated in place), so each call changes the function the next call computes, and the output of a "
            "batch depends on the batches before it. rnnshap explains the model as it is: stop the update when not "
            "training (if self.training: ...), or keep the statistics out of forward(). The model is left as given."
        )
        error.eval_may_help = True  # type: ignore[attr-defined]
        raise error
    mode.raise_if_unsupported()
    if replay:
        tape.check_consumed()
    if isinstance(output, torch.distributions.Distribution):
        raise InputError(
            f"The model returns a distribution ({type(output).__name__}), not a tensor: rnnshap explains numbers the model "
            "computes. Explain the distribution's parameters or summaries: wrap the model in an nn.Module whose forward() "
            "returns them, e.g. `d = model(x); return torch.cat([d.mean, d.stddev], -1)` (or d.loc, d.scale, d.logits, "
            "d.probs), then pick one with output= or outputs=. Drawing a sample is random and cannot be explained."
        )
    if not isinstance(output, Tensor):
        raise TypeError(
            f"The model returned {type(output).__name__}; rnnshap explains models that return a tensor, or a "
            "list, tuple or dict of tensors (DeepExplainer(..., output=i_or_name) picks one). Wrap the model "
            "in an nn.Module whose forward() returns the tensor to explain."
        )
    if not mode.is_tracked(output):
        raise UnsupportedOperationError(
            [("the model's output", "it does not depend on the explained inputs through operations rnnshap can see", "output")]
        )
    return output, mode


__all__ = ["AttributionMode", "ModuleRules", "run_pass", "tree_unflatten"]
