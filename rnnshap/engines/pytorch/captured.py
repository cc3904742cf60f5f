"""The pass captured once per input signature and interpreted on (input, reference) pairs (``compile="capture"``).

torch.compile's graph capture (dynamo) writes the model's forward as a graph of the torch functions, tensor methods
and Python operators the rule table is keyed by, once per input signature. It keeps guards on the Python state the
forward read (attributes, globals, submodules, hooks, the training flag): where one no longer holds, the model is
captured again at that call, never run stale; its weights are read at every call, and rules registered or removed
make the plan anew. On each graph a :class:`GraphPlan` decides once what the intercepted pass decides per operation
at every call: which values depend on the explained inputs, and each such operation's rule. The plan then runs on
(input, reference) pairs: every value that depends on the inputs is a :class:`PairValue` of sides, every operation on
one runs through its rule, as in the intercepted pass, and everything else runs once.

Where a block's pairs hold its distinct references alike for every sample, the reference side runs on those
references alone, is repeated for the pairs, and is kept for later calls (:class:`_Sides`). A comparison of
input-dependent values is a :class:`MaskValue` with its gate beside it (rules/gates.py) where its mask gates a
``where`` or ``masked_fill``, is cast to floating point (the gate's step as a value), or is combined or moved for
those uses.

What the plan does not take yet runs the intercepted pass instead, and ``pass_path`` names it: a forward the capture
cannot write as one graph (a value read on the host), writes into views or into values that depend on no input,
picked indices, a comparison's mask used otherwise, random draws, rules registered for module classes, forward hooks,
integer arithmetic on integer inputs used as numbers (before their cast or promotion to floating point), a forward
that changes the model's Python state.
"""

from __future__ import annotations

import contextvars
import inspect
import operator
import re
import types
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils._pytree import tree_flatten, tree_map

from ...errors import RnnShapError
from ...rules.base import Constant, EvalOnly, Linear, OpCall, PairGrid, Refuse, Rule
from ...rules.composite import Quotient
from ...rules.elementwise import Product, with_multipliers
from ...rules.gates import (
    CASTS,
    FILLED,
    FILLS,
    GATES,
    LOGICAL,
    MOVES,
    PROMOTING,
    SAME_ON_MASKS,
    Comparison,
    FilledOperand,
    Gate,
    Predicate,
    Side,
    check_fills,
    combined,
    fills_of,
    gate_of,
)
from ...rules.refusals import misfit
from ...rules.registry import RuleRegistry, op_key, op_name
from ...rules.spectral import complex_rule
from .calls import BROADCASTS, REPEATED_WRITE, flatten_call, in_place_target, out_of_place, repeats_positions
from .captured_picks import pick_use, picked_handle, selected, selection_rule
from .captured_program import WRITE_AFTER, WRITTEN_ON, Programs
from .captured_tokens import Lookup, TokenValue, lookup, move, reads_layout, token_contributions, token_use
from .gradients import chosen_gradients
from .handwritten_norms import canonical, mark_of, normalizing_rule
from .integer_ops import CONSTANT, SHAPE_OF_OTHER
from .model_forms import BatchedExperts
from .randomness import random_call
from .state import python_state
from .tape import batch_axis, repeat_along
from .traced import waited

Tensor = torch.Tensor

#: Python operators in a captured graph, by the tensor method the rule table keys them by, and the reflected method
#: where a number stands first (``2.0 - x``: ``x.__rsub__(2.0)``)
_OPERATORS: dict[Any, tuple[str, str | None]] = {
    operator.add: ("__add__", "__radd__"),
    operator.sub: ("__sub__", "__rsub__"),
    operator.mul: ("__mul__", "__rmul__"),
    operator.truediv: ("__truediv__", "__rtruediv__"),
    operator.matmul: ("__matmul__", "__rmatmul__"),
    operator.pow: ("__pow__", "__rpow__"),
    operator.neg: ("__neg__", None),
    operator.pos: ("__pos__", None),
    operator.getitem: ("__getitem__", None),
    operator.ge: ("__ge__", "__le__"),
    operator.gt: ("__gt__", "__lt__"),
    operator.le: ("__le__", "__ge__"),
    operator.lt: ("__lt__", "__gt__"),
    operator.eq: ("__eq__", "__eq__"),
    operator.ne: ("__ne__", "__ne__"),
    operator.and_: ("__and__", "__rand__"),
    operator.or_: ("__or__", "__ror__"),
    operator.xor: ("__xor__", "__rxor__"),
    operator.invert: ("__invert__", None),
    operator.iadd: ("__iadd__", None),
    operator.isub: ("__isub__", None),
    operator.imul: ("__imul__", None),
    operator.itruediv: ("__itruediv__", None),
}

#: calls that only switch the grad mode: the model's own ``no_grad()`` holds for what depends on no input; what does is
#: followed as ``detach()`` is (the function the model computes does not change)
_GRAD_MODE = {torch._C._set_grad_enabled}


#: torch's modules with a fused inference path, taken where no argument requires a gradient (``torch._native_multi_head_
#: attention``, ``torch._transformer_encoder_layer_fwd``: no graph of the operations the rules are keyed by)
_FAST_PATHS = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder)

#: the most bytes of reference sides an explainer's captured pass keeps between calls
KEPT_BYTES = 64 * 2**20
#: the most graphs an explainer captures (one per input signature, where the batch is a size of the graph: other shapes,
#: dtypes, and again after a change to the model): a new signature beyond them runs intercepted, while those captured
#: still run
CAPTURES = 64


class PlanFault(RuntimeError):
    """A fault of the captured pass's own plan (not of torch.compile, nor of the model): raised as it is."""


class NotCaptured(Exception):
    """What the captured pass does not take (yet), in words: the call runs the intercepted pass."""


@dataclass(frozen=True)
class PairValue:
    """A value that depends on the explained inputs: its input side (with the rules' multipliers as its gradient) and
    its reference side."""

    x: Any
    r: Any


class MaskValue(PairValue):
    """A comparison's mask of input-dependent values on both sides, its gate beside the input side's (rules/gates.py):
    the condition of a ``where``, not an operand of its own."""


@dataclass(frozen=True)
class PickedValue(PairValue):
    """Indices an ordering picked from input-dependent values (``topk``, ``argmax``, ``max`` over a dimension), or the
    result that holds them, on both sides, with their ``handle`` on the input side: the indices as float64 values
    with the pick's multipliers (rules/selection.py), which a selection by them takes in their place (None in the
    reference run, and where the indices are a constant)."""

    handle: Any = None


#: the functions whose condition a :class:`MaskValue` may be, by the position of the condition among their arguments
_CONDITIONS = {"where": (0, 1), "masked_fill": (1,), "masked_fill_": (1,)}


def _is_condition(user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` takes ``node`` as the condition of a ``where`` or a ``masked_fill``, and nowhere else."""
    fn, _ = _function(user)
    name = getattr(fn, "__name__", "")
    # (torch.where(condition, a, b) takes it first; Tensor.where(self, condition, other) and masked_fill second)
    at = _CONDITIONS.get(name, ())
    position = 0 if name == "where" and user.op == "call_function" and fn is torch.where else 1
    if position not in at or len(user.args) <= position or user.args[position] is not node:
        return False
    return not any(a is node for i, a in enumerate(user.args) if i != position) and node not in user.kwargs.values()


def _mask_use(user: fx.Node, node: fx.Node) -> str | None:
    """How ``user`` uses the mask ``node``, where the plan attributes it: "cast" (to floating point: its step as a
    value), "promote" (arithmetic that promotes it to floating point: on its step), "logic" (a logical combination: a
    mask of its own) or "move" (its elements moved: a mask of its own); None for any other use."""
    fn, _ = _function(user)
    name = getattr(fn, "__name__", "")
    example = user.meta.get("example_value")
    if not isinstance(example, Tensor) or user.kwargs and name not in ("to", "type"):
        return None
    first = tree_flatten(user.args[0])[0] if user.args else []
    others = tree_flatten((user.args[1:], user.kwargs))[0]
    if name in CASTS and example.is_floating_point() and user.args[0] is node and node not in others:
        return "cast"
    if name in PROMOTING and example.is_floating_point() and len(user.args) == 2 and not user.kwargs:
        return "promote"
    if example.dtype != torch.bool:
        return None
    operands = [_example(a) for a in user.args]
    if name in LOGICAL and len(operands) <= 2 and all(_is_bool(a) for a in operands):  # (bool masks and Python bools)
        return "logic"
    if (name in MOVES or name in SAME_ON_MASKS) and node in first and node not in others:
        return "move"
    return None


def _is_bool(value: Any) -> bool:
    return type(value) is bool or isinstance(value, Tensor) and value.dtype == torch.bool


def _mask_uses_only(node: fx.Node) -> bool:
    """Whether every use of the mask ``node`` is one the plan attributes: the condition of a ``where`` or a
    ``masked_fill``, a cast to floating point, or a logical combination or rearrangement whose uses are as well."""
    for user in node.users:
        if _is_condition(user, node):
            continue
        use = _mask_use(user, node)
        if use is None or (use not in ("cast", "promote") and not _mask_uses_only(user)):
            return False
    return True


@dataclass
class _Step:
    """One node of the graph as the plan runs it: ``kind`` is "input" (an explained input, a pair), "value" (run once:
    it depends on no explained input), "linear" (run on each side, the ordinary gradient exact), "rule" (the rule's
    input and reference sides), "mask" (a comparison's, a :class:`MaskValue`), "logic" and "move_mask" (a mask
    combined or moved: a :class:`MaskValue`), "unmask" (a mask cast to floating point: its step), "same" (a
    missing-value test that answers alike on both sides: a constant), "pick" (an ordering whose indices are read: a
    :class:`PickedValue`), "indices" (those indices taken from its result), "move_picked" and "cast_picked" (indices
    moved or cast to integers: their handle with them), or "output". A "rule" step that selects by picked indices names them in
    ``picked``."""

    node: fx.Node
    kind: str
    fn: Callable[..., Any] | None = None
    rule: Rule | None = None
    name: str = ""
    position: int = -1
    swap: bool = False
    #: the positions of the input-dependent operands among the call's flattened arguments (set at its first run)
    tracked: tuple[int, ...] | None = None
    #: the arguments the step calls ``fn`` with, where they are not the node's (an in-place call run out of place)
    call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    #: the node an in-place call wrote into, and the results of earlier in-place calls on it (the same tensor): they take
    #: the step's value from then on
    writes: tuple[fx.Node, ...] = ()
    #: operands of integers used as numbers that this floating-point step meets without a cast (``day * 0.5``, a ``cat``
    #: with floats): each cast to the step's dtype first, as torch's type promotion does, and attributed there
    promoted: tuple[fx.Node, ...] = ()
    #: masks of comparisons that this floating-point step's arithmetic promotes (``x * mask``): each its step, cast
    unmasked: tuple[fx.Node, ...] = ()
    #: the picked indices a selection reads (its rule :class:`~rnnshap.rules.selection.Selection`), or that a move
    #: moves: a :class:`PickedValue`
    picked: fx.Node | None = None

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments ``fn`` takes, nodes among them (a Python operator's operands swapped where ``swap``)."""
        if self.call is not None:
            return self.call
        node = self.node
        return ((node.args[1], node.args[0], *node.args[2:]) if self.swap else tuple(node.args)), dict(node.kwargs)


@dataclass
class _Sides:
    """The reference side of a call whose pairs hold the block's distinct references, each repeated for the block's
    ``repeats`` samples: recorded by a run of the forward on those references alone (``recorded`` None while it
    runs), then taken, repeated, by the run on the pairs. ``names``: the input-dependent steps in the order the
    reference run met them, which the run on the pairs must meet alike."""

    repeats: int
    recorded: list[Any] | None = None
    names: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    #: where the reference side was kept from an earlier call, how many graphs had been captured when it was kept: a
    #: graph captured since (a guard that failed, another signature) may run otherwise, so it is recorded again
    captures: int | None = None
    #: the first run of a graph with given sides: each step's reference side also computed from its operands' on the
    #: pairs, and compared with the given one (a layout the repeat would misplace: every pair from then on)
    verifying: bool = False


class _Stale(Exception):
    """A kept reference side met a graph captured after it was kept: the call records it again."""


class _NotDistinct(Exception):
    """The run on the pairs does not take the reference run's values (another graph, a value whose rows are not the
    references' repeated): the call runs its reference side on every pair."""


class _Call:
    """One call of the captured forward on pairs: the reference side of each explained input (by position among the
    model's inputs), the pairs' grid, and what the plan leaves for the caller (the reference side of the outputs).
    ``sides``: where the reference side is run on the distinct references (see :class:`_Sides`)."""

    def __init__(
        self, references: dict[int, Tensor], grid: PairGrid, tokens: frozenset[int] = frozenset(), sides: _Sides | None = None
    ) -> None:
        self.references, self.grid, self.tokens, self.sides = references, grid, tokens, sides
        #: the sizes of this call, by the symbols of a graph captured for any batch (see :func:`_concrete`)
        self.sizes: dict[Any, int] = {}
        self.outputs: dict[int, Any] | None = None  # id of an input-side output tensor → its reference side
        self.planned = False
        #: the explained outputs' columns on the pairs (None: a run that takes no backward), and where a program ran
        #: the call (captured_program.py), the gradients of those outputs w.r.t. the explained inputs
        self.columns: Tensor | None = None
        self.grads: list[Tensor] | None = None
        #: where the plan or a program ran the call: its plan, signature and the graph's outputs (captured_program.py)
        self.ran: tuple[GraphPlan, tuple[Any, ...], Any] | None = None
        #: puts the model back to the call's state (where a program failed midway: the plan runs it again)
        self.restore: Callable[[], None] = lambda: None
        #: the token inputs' embedding lookups, in the order the graph made them (captured_tokens.py)
        self.lookups: list[Lookup] = []
        #: the explained inputs' copies that carry their gradient, by position among the model's inputs, while the
        #: captured forward runs (the capture itself sees copies that require none: see CapturedPasses._invoke)
        self.attached: dict[int, Tensor] = {}
        #: the captured pass this call runs for (its plans)
        self.owner: CapturedPasses | None = None

    def like(self, references: dict[int, Tensor], grid: PairGrid, recorded: list[Any] | None) -> _Call:
        """A call like this one on other tensors (a program's, being written): its references, grid and given
        reference sides (``recorded``, where this call's are given)."""
        sides = self.sides
        given = None if sides is None or recorded is None else _Sides(sides.repeats, recorded, list(sides.names))
        return _Call(references, grid, self.tokens, given)

    @property
    def recording(self) -> bool:
        """Whether this is the reference run of :class:`_Sides`: each input-dependent step's reference side alone."""
        return self.sides is not None and self.sides.recorded is None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("rnnshap_captured_call", default=None)


def _input_position(node: fx.Node) -> int:
    """The position among the model's inputs of a placeholder that is one of them, else -1. torch.compile names a
    graph's inputs after where they came from: ``L_inputs_0_`` is ``inputs[0]`` of :func:`_forward`, the model's
    parameters are ``L_model_…``."""
    match = re.fullmatch(r"L_inputs_(\d+)_", str(node.target))
    return int(match.group(1)) if match else -1


def _inplace_flag(fn: Any, args: tuple[Any, ...]) -> bool:
    """Whether a functional form's ``inplace`` flag is given True by position (``F.leaky_relu(x, 0.01, True)``)."""
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # (a builtin without a signature)
        return False
    return "inplace" in names and len(args) > names.index("inplace") and args[names.index("inplace")] is True


#: operations whose result may share its memory with their first operand: a write into one is a write into the other
_ALIASING = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "t", "permute", "__getitem__", "getitem", "unsqueeze",
    "squeeze", "expand", "expand_as", "narrow", "select", "flatten", "unflatten", "as_strided", "split", "chunk",
    "unbind", "tensor_split", "diagonal", "contiguous", "detach", "movedim", "moveaxis", "swapaxes", "swapdims",
    "unfold", "real", "imag", "alias", "split_with_sizes", "view_as_real", "view_as_complex", "getattr",
    # (operations that may return their operand itself: dropout in eval mode, casts to what it is already)
    "dropout", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "to", "type", "type_as",
    "float", "double", "half", "bfloat16", "cpu", "cuda", "identity",
})  # fmt: skip


#: the rule of ``torch.broadcast_tensors`` (:data:`.calls.BROADCASTS`): each result linear in its own operand
_EACH_ITS_OWN = Linear()


def _aliases(node: fx.Node) -> bool:
    """Whether a node's value may share memory with another value of the graph (a view), or is an input's."""
    if node.op == "placeholder":
        return True
    if node.target is operator.getitem and not isinstance(_example(node.args[0]), Tensor):
        return False  # (an item of a tuple of results)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return canonical(str(name)) in _ALIASING


def _out_of_place(
    node: fx.Node,
    fn: Any,
    name: str,
    tracked: set[fx.Node] | None,
    order: dict[fx.Node, int],
    written_as: dict[fx.Node, tuple[fx.Node, ...]],
) -> tuple[Any, tuple[tuple[Any, ...], dict[str, Any]], fx.Node]:
    """An in-place call on an input-dependent value run out of place (``x.relu_()`` as ``x.relu()``, ``F.relu(x,
    inplace=True)`` as ``F.relu(x)``), its value taken by the node it wrote into from then on: the function, its
    arguments (nodes among them) and that node. Raises :class:`NotCaptured` where the write could reach another value
    (the target a view or an input, or a view of it taken before and read after) or writes into a value that does not
    depend on the inputs (``buffer[t] = h``), unless ``tracked`` is None: a tensor the forward made (not the model's
    own), written by a call linear in what it writes (``out.scatter_add_(0, idx, msg)``) or at picked indices."""
    if node.target is operator.setitem:
        raise NotCaptured(f"{name}: an input-dependent value written into a tensor in place")
    examples = fx.node.map_arg((tuple(node.args), dict(node.kwargs)), _example)
    base, args, kwargs, target = out_of_place(fn, *examples)
    by_example = {id(_example(n)): n for n in node.all_input_nodes}
    written = by_example.get(id(target)) if target is not None else None
    if written is None or base is fn and kwargs == examples[1] and args == examples[0]:
        raise NotCaptured(f"{name}: written in place, with no out-of-place form known")
    if (written.op == "get_attr") if tracked is None else (written not in tracked):
        raise NotCaptured(f"{name}: an input-dependent value written into a tensor in place")
    same = written_as.get(written, (written,))
    if _aliases(same[0]) or _views_read_after(same, node, order):
        raise NotCaptured(f"{name}: written in place into a view of an input-dependent value, or one with views")
    # (each value that came of a node back to its node: tensors, and sizes of a graph captured for any batch)
    back = lambda a: by_example.get(id(a), a) if isinstance(a, (Tensor, torch.SymInt, torch.SymFloat, torch.SymBool)) else a  # noqa: E731
    return base, (tree_map(back, tuple(args)), tree_map(back, dict(kwargs))), written  # (in tuples too: index_put_'s)


def _views_read_after(same: tuple[fx.Node, ...], node: fx.Node, order: dict[fx.Node, int]) -> bool:
    """Whether a view of the tensor ``node`` writes into (``same``: its nodes), taken before the write, is used after
    it (directly or through further views): a write into a copy would not reach it."""
    views = [u for n in same for u in n.users if u is not node and order[u] < order[node] and _aliases(u)]
    while views:
        view = views.pop()
        for user in view.users:
            if order[user] > order[node]:
                return True
            if _aliases(user):
                views.append(user)
    return False


def _set_item(
    node: fx.Node, tracked: set[fx.Node], order: dict[fx.Node, int], written_as: dict[fx.Node, tuple[fx.Node, ...]]
) -> _Step:
    """``target[index] = value`` with an input-dependent value or target, as a linear step that writes into a copy of
    the target (on each side), which takes the target's place from then on. Raises :class:`NotCaptured` where the
    positions depend on the input, or the target is an input, a view, the model's own tensor, or has views taken
    before and read after."""
    target, index, _ = node.args
    if not isinstance(target, fx.Node) or not isinstance(_example(target), Tensor):
        raise NotCaptured("setitem: a write into what is not a tensor")
    positions: list[fx.Node] = []
    fx.node.map_arg(index, positions.append)
    if any(n in tracked for n in positions):
        raise NotCaptured("setitem: a write at positions that depend on the input")
    same = written_as.get(target, (target,))
    if _aliases(same[0]) or same[0].op == "get_attr" or _views_read_after(same, node, order):
        raise NotCaptured("setitem: a write into an input, a view, the model's own tensor, or a tensor with views")
    return _Step(node, "linear", fn=_written, name="setitem", call=(tuple(node.args), {}), writes=(target,))


def _written(target: Tensor, index: Any, value: Any) -> Tensor:
    """``target`` with ``value`` written at ``index``, in a copy (the target may be shared by both sides)."""
    out = target.clone()
    out[index] = value
    return out


def _values_only(node: fx.Node) -> bool:
    """Whether a node gives values and integer indices (``torch.max(x, 1)``, ``topk``, ``sort``) of which only the
    values are read (``[0]``, ``.values``): its rule's values are the node's."""
    example = node.meta.get("example_value")
    if not isinstance(example, tuple) or not example or not isinstance(example[0], Tensor) or not example[0].is_floating_point():
        return False
    return all(
        (u.target is operator.getitem and u.args[1] == 0) or (u.target is getattr and u.args[1] == "values") for u in node.users
    )


def _shape_only(fn: Any, node: fx.Node, tracked: set[fx.Node]) -> bool:
    """Whether a node reads only the shape of its input-dependent operands: a tensor made like one of them
    (``zeros_like(x)``, ``x.new_zeros(n)``), or an operation whose input-dependent operand gives a shape only
    (``mask.expand_as(x)``)."""
    key = op_key(fn)
    operands = [n for n in node.all_input_nodes if n in tracked]
    if key in CONSTANT:
        return operands == [node.args[0]] and list(node.args).count(node.args[0]) == 1
    return key in SHAPE_OF_OTHER and len(node.args) == 2 and operands == [node.args[1]]


def _example(argument: Any) -> Any:
    """What an argument of a node was when the graph was captured: a node's example value (fake tensors), else the
    argument itself."""
    return argument.meta.get("example_value") if isinstance(argument, fx.Node) else argument


def _floating(value: Any, complex_too: bool = False) -> bool:
    leaves = [t for t in tree_flatten(value)[0] if isinstance(t, Tensor)]
    return bool(leaves) and all(t.is_floating_point() or complex_too and t.is_complex() for t in leaves)


def _indices_in(example: Any) -> bool:
    """Whether an ordering's result holds indices (``torch.max(u, 1)``), not its values alone (``torch.max(a, b)``,
    ``amax``)."""
    return any(isinstance(t, Tensor) and t.dtype in (torch.int32, torch.int64) for t in tree_flatten(example)[0])


def _compared(node: fx.Node, fn: Any, rule: Rule, name: str, swap: bool) -> _Step:
    """A comparison's (or a missing-value test's) step: a "mask" used as a gate's condition (or, a comparison's, cast
    to floating point, combined or moved for those uses); a missing-value test used otherwise is "same" (the same on
    both sides: a constant). Raises :class:`NotCaptured` for a comparison's mask used otherwise."""
    conditions = all(_is_condition(user, node) for user in node.users)
    if conditions or isinstance(rule, Comparison) and _mask_uses_only(node):
        return _Step(node, "mask", fn=fn, rule=rule, name=name, swap=swap)
    if isinstance(rule, Predicate):
        return _Step(node, "same", fn=fn, rule=rule, name=name, swap=swap)
    raise NotCaptured(f"{name}: a comparison's mask used other than as a where's condition or cast to floating point")


def _complex_call(node: fx.Node, example: Any) -> bool:
    """Whether a node computes on complex values: a complex operand or a complex result."""
    values = [*tree_flatten(example)[0], *(_example(n) for n in node.all_input_nodes)]
    return any(isinstance(v, Tensor) and v.is_complex() for v in values) or any(
        isinstance(a, complex) for a in tree_flatten((node.args, node.kwargs))[0]
    )


def _on_complex(node: fx.Node, fn: Any, rule: Rule, name: str, tracked: set[fx.Node], out_of_place: bool) -> Rule:
    """The rule of a call on complex values, as the intercepted pass decides it: the table's rule where it is linear in
    the call's input-dependent operands (a Fourier transform, a view, a product with a constant spectrum), else the rule
    for complex values (rules/spectral.py: a product of two spectra, a magnitude, an analytic function of one). Raises
    :class:`NotCaptured` for any other (the intercepted pass refuses it by name)."""
    nodes, spec, layout = flatten_call(tuple(node.args), dict(node.kwargs))  # (a node is a leaf of the arguments)
    positions = tuple(i for i, leaf in enumerate(nodes) if isinstance(leaf, fx.Node) and leaf in tracked)
    leaves = [_example(leaf) for leaf in nodes]
    operands = [n for n in node.all_input_nodes if n in tracked]
    if type(rule) in (Linear, Constant) or rule.is_linear(OpCall.flat(fn, name, leaves, spec, positions, None, layout)):
        return rule
    if any(isinstance(_example(n), Tensor) and _example(n).is_complex() for n in operands):
        complex_rule_ = complex_rule(fn, rule, len(positions), out_of_place)
        if complex_rule_ is not None:
            return complex_rule_
        raise NotCaptured(f"{name}: a nonlinear operation on a complex value without a rule for complex values")
    raise NotCaptured(f"{name}: a real input-dependent value with a complex one through a nonlinear operation")


class GraphPlan:
    """The decisions on one captured graph for the rules as they are (``registry``): :meth:`run` interprets it on
    pairs. Raises :class:`NotCaptured` where the graph holds what it does not take yet."""

    def __init__(
        self, graph: fx.Graph, registry: RuleRegistry, explained: set[int], tokens: frozenset[int],
        numbers: frozenset[int] = frozenset(),
    ) -> None:  # fmt: skip
        self.changes = registry.changes
        #: the plan's run and backward as programs, by call signature (captured_program.py)
        self.programs = Programs()
        #: whether a run of this graph with given reference sides found them its own (see :class:`_Sides`)
        self.sides_verified = False
        self.steps: list[_Step] = []
        tracked: set[fx.Node] = set()
        #: nodes of followed integers (token ids, integers used as numbers: captured_tokens.py), by the input they came from
        ids: dict[fx.Node, int] = {}
        #: roots and inverse roots of input-dependent values, and what keeps them (handwritten_norms.py), by node
        self.marks: dict[fx.Node, int] = {}
        self._first_only: set[fx.Node] = set()  # (std_mean's results: its std is a root, its mean is not)
        order = {node: i for i, node in enumerate(graph.nodes)}
        written_as: dict[fx.Node, tuple[fx.Node, ...]] = {}  # (each in-place result: the nodes of the same tensor)
        masks: set[fx.Node] = set()  # (the nodes of comparisons' masks, their combinations and rearrangements)
        picks: dict[fx.Node, bool] = {}  # (nodes of picked indices, or of results holding them: whether a result)
        for node in graph.nodes:
            step = self._decide_ids(node, tokens, ids, tracked, numbers) if self._uses_ids(node, ids) else None
            if step is None and any(n in picks for n in node.all_input_nodes):
                step = self._on_picks(node, picks, (order, written_as))  # (None: the values of a pick's result)
            if step is None and any(n in masks for n in node.all_input_nodes):
                step = self._on_masks(node, masks, registry)
                if step is not None and step.kind == "promote":  # (arithmetic on the masks' steps, through its rule)
                    step = self._decide(node, registry, explained, tracked, (order, written_as))
                    step.unmasked = tuple(n for n in node.all_input_nodes if n in masks)
            if step is not None and step.kind == "promote":
                step = self._promoted(node, registry, explained, tracked, ids, (order, written_as))
            if step is None:
                step = self._decide(node, registry, explained, tracked, (order, written_as))
            if step.kind in ("tokens", "move", "cast", "meta"):
                if step.kind != "meta":
                    ids[node] = step.position
                self.steps.append(step)
                continue
            if step.writes:  # (an in-place call's result is the tensor it wrote into, as are earlier ones' on it)
                same = written_as.get(step.writes[0], step.writes)
                step.writes = same
                for member in (*same, node):
                    written_as[member] = (*same, node)
                tracked.update(same)  # (a value written into by an input-dependent one depends on the input from then on)
            if step.kind in ("mask", "logic", "move_mask"):
                masks.add(node)
            if step.kind in ("pick", "indices", "move_picked", "cast_picked"):
                picks[node] = step.kind == "pick" and isinstance(node.meta.get("example_value"), tuple)
                tracked.add(node)
            if step.kind in ("input", "linear", "rule", "lookup", "mask"):
                tracked.add(node)
                self._mark(step, tracked | set(step.promoted))  # (promoted integers: input-dependent operands)
            elif step.kind in ("logic", "move_mask", "unmask"):
                tracked.add(node)
            self.steps.append(step)

    def _mark(self, step: _Step, tracked: set[fx.Node]) -> None:
        """Mark a step's node as a root or inverse root where its operation makes or keeps one (its one input-dependent
        operand marked), and give a product or quotient of a marked operand the normalization's rule, as the
        intercepted pass does operation by operation."""
        node = step.node
        if step.fn is None or node.op == "placeholder":
            return
        args, kwargs = step.arguments()
        operands = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, fx.Node) and a in tracked]
        if len(operands) == 1:
            source = operands[0]
            marks = self.marks
            if source.target is operator.getitem and source in self._first_only and source.args[1] != 0:
                marks = {}  # (std_mean's mean: not a root)
            mark = mark_of(step.fn, args, kwargs, source, marks)
            if mark is not None:
                self.marks[node] = mark
                if canonical(getattr(step.fn, "__name__", "")) == "std_mean":
                    self._first_only.add(node)
        if self.marks and (type(step.rule) is Product or type(step.rule) is Quotient):
            call = types.SimpleNamespace(fn=step.fn, args=args, kwargs=kwargs, inputs=operands)
            step.rule = normalizing_rule(step.rule, call, self.marks)

    @staticmethod
    def _on_masks(node: fx.Node, masks: set[fx.Node], registry: RuleRegistry) -> _Step | None:
        """A step on masks of comparisons (rules/gates.py): "unmask" (a cast to floating point: the step as a value),
        "logic" (a logical combination) or "move_mask" (a slice, a reshape); None where the node takes a mask as a
        condition (its own rule reads the gate)."""
        mask = next(n for n in node.all_input_nodes if n in masks)
        use = _mask_use(node, mask)
        if use is None:
            return None
        fn, _ = _function(node)
        name = _node_name(node, fn)
        if use == "move" and name.rsplit(".", 1)[-1] not in SAME_ON_MASKS and type(registry.op_rule(op_key(fn))) is not Linear:
            raise NotCaptured(f"{name}: a comparison's mask moved by an operation whose rule is not linear")
        return _Step(node, {"cast": "unmask", "logic": "logic", "move": "move_mask"}.get(use, use), fn=fn, name=name)

    @staticmethod
    def _on_picks(
        node: fx.Node, picks: dict[fx.Node, bool], writes: tuple[dict[fx.Node, int], dict[fx.Node, tuple[fx.Node, ...]]]
    ) -> _Step | None:
        """A step on picked indices (captured_picks.py): "indices", "move_picked", or a "rule" step of a selection by
        them (``writes``: see :meth:`_decide`); None for the values of an ordering's result (an ordinary step). Raises
        :class:`NotCaptured` for any other use (the intercepted pass attributes or refuses it by name)."""
        fn, _ = _function(node)
        name = _node_name(node, fn)
        use = pick_use(fn, node, picks)
        if use is None:
            raise NotCaptured(f"{name}: a use of picked indices other than a selection by them, a move or a cast")
        kind, source = use
        if kind == "values":
            return None
        if kind == "select":
            rule = selection_rule(fn, node, source)
            examples = fx.node.map_arg((tuple(node.args), dict(node.kwargs)), _example)
            if in_place_target(fn, *examples) is None:
                return _Step(node, "rule", fn=fn, rule=rule, name=name, picked=source)
            # (a constant written at the picks in place, zeros.scatter_(1, idx, 1): into a copy that takes its place)
            fn, call, written = _out_of_place(node, fn, name, None, *writes)
            return _Step(node, "rule", fn=fn, rule=rule, name=name, picked=source, call=call, writes=(written,))
        if kind == "indices":  # (an item of the ordering's result: a tuple's, not a tensor's)
            item = operator.getitem if node.target is operator.getitem else getattr
            return _Step(node, "indices", fn=item, name="indices", picked=source)
        return _Step(node, "move_picked" if kind == "move" else "cast_picked", fn=fn, name=name, picked=source)

    @staticmethod
    def _uses_ids(node: fx.Node, ids: dict[fx.Node, int]) -> bool:
        return node.op == "placeholder" or any(n in ids for n in node.all_input_nodes)

    @staticmethod
    def _decide_ids(
        node: fx.Node, tokens: frozenset[int], ids: dict[fx.Node, int], tracked: set[fx.Node], numbers: frozenset[int]
    ) -> _Step | None:
        """A placeholder of a followed integer input, or a node on its integers (captured_tokens.py); None for another
        placeholder. A cast to floating point of an input used as a number (``numbers``) is where it is attributed: a
        lookup of the integers' values, each position its own."""
        if node.op == "placeholder":
            position = _input_position(node)
            return _Step(node, "tokens", position=position) if position in tokens else None
        fn, _ = _function(node)
        use = token_use(fn, node, ids.keys(), tracked) if fn is not None else None
        source = next(ids[n] for n in node.all_input_nodes if n in ids)
        floating = _floating(node.meta.get("example_value"))
        if use == "cast" and floating and source in numbers:
            use = "lookup"
        if use is None and floating and all(ids[n] in numbers for n in node.all_input_nodes if n in ids):
            return _Step(node, "promote", position=source)  # (decided as a floating-point step: see __init__)
        if use is None:
            name = _node_name(node, fn)
            what = "an integer input used as a number" if source in numbers else "token ids"
            raise NotCaptured(f"{name} on {what} (only their moves, casts to floating point and embedding lookups are taken)")
        return _Step(node, use, fn=fn, name=op_name(fn), position=source)

    @classmethod
    def _promoted(
        cls,
        node: fx.Node,
        registry: RuleRegistry,
        explained: set[int],
        tracked: set[fx.Node],
        ids: dict[fx.Node, int],
        writes: tuple[dict[fx.Node, int], dict[fx.Node, tuple[fx.Node, ...]]],
    ) -> _Step:
        """A floating-point step on integers used as numbers without a cast (type promotion): its rule's step, each of
        those operands cast to its dtype first (:attr:`_Step.promoted`)."""
        promoted = tuple(n for n in node.all_input_nodes if n in ids)
        step = cls._decide(node, registry, explained, tracked | set(promoted), writes)
        if step.kind not in ("linear", "rule") or step.writes:
            fn, _ = _function(node)
            name = _node_name(node, fn)
            raise NotCaptured(f"{name} on an integer input used as a number, written in place or not a rule's operation")
        step.promoted = promoted
        return step

    @staticmethod
    def _decide(
        node: fx.Node,
        registry: RuleRegistry,
        explained: set[int],
        tracked: set[fx.Node],
        writes: tuple[dict[fx.Node, int], dict[fx.Node, tuple[fx.Node, ...]]],
    ) -> _Step:
        """One node's step (``writes``: the graph's order, and each in-place result's nodes of the same tensor)."""
        if node.op == "placeholder":
            position = _input_position(node)
            kind = "input" if position in explained else "value"
            return _Step(node, kind, position=position)
        if node.op == "output":
            return _Step(node, "output")
        fn, swap = _function(node)
        if fn is not None and random_call(fn, tuple(node.args), dict(node.kwargs)):
            raise NotCaptured(f"{op_name(fn)}: a random draw (the intercepted pass refuses it where it reaches the output)")
        if node.op == "get_attr" or not any(n in tracked for n in node.all_input_nodes):
            return _Step(node, "value")
        if fn in _GRAD_MODE:
            return _Step(node, "value")
        name = _node_name(node, fn)
        if fn is None:
            raise NotCaptured(f"{node.target} on an input-dependent value (no rule of the table names it)")
        if node.target is operator.setitem:
            return _set_item(node, tracked, *writes)
        examples = fx.node.map_arg((tuple(node.args), dict(node.kwargs)), _example)
        written, call = None, None
        if in_place_target(fn, *examples) is not None or _inplace_flag(fn, node.args):
            # (linear in what it writes, into a buffer the forward made: out.scatter_add_(0, idx, msg), as setitem)
            into = None if type(registry.op_rule(op_key(out_of_place(fn, *examples)[0]))) is Linear else tracked
            fn, call, written = _out_of_place(node, fn, name, into, *writes)
        if reads_layout(fn, node) or _shape_only(fn, node, tracked):
            return _Step(node, "value")  # (the same on both sides of every pair: run on the input side)
        rule = registry.op_rule(op_key(fn)) if fn not in BROADCASTS else _EACH_ITS_OWN
        if fn is getattr and isinstance(examples[0][0], Tensor) and isinstance(node.args[1], str):
            rule, name = registry.op_rule(("getter", node.args[1])), f"torch.Tensor.{node.args[1]}"  # (x.real, x.mT)
        if isinstance(rule, (Comparison, Predicate)) and written is None:
            return _compared(node, fn, rule, name, swap)
        example = node.meta.get("example_value")
        picks = getattr(rule, "index_handle", None) is not None and _indices_in(example)
        if picks and written is None and not _values_only(node):
            return _Step(node, "pick", fn=fn, rule=rule, name=name, swap=swap)  # (its indices' uses: on_picks)
        if rule is not None and not isinstance(rule, Refuse) and _complex_call(node, example):
            rule = _on_complex(node, fn, rule, name, tracked, written is None)
        if not _floating(example, complex_too=True) and not _values_only(node):
            raise NotCaptured(f"{name}: an integer or boolean result of input-dependent values (a comparison or a pick)")
        if node.target is operator.getitem and not isinstance(_example(node.args[0]), Tensor):
            return _Step(node, "linear", fn=operator.getitem, name="getitem")  # (an item of a tuple of results)
        if fn is getattr and node.args[1] == "values" and not isinstance(_example(node.args[0]), Tensor):
            return _Step(node, "linear", fn=getattr, name="values")  # (a named tuple's values)
        if rule is None or isinstance(rule, Refuse):
            raise NotCaptured(f"{name}: no attribution rule (the intercepted pass refuses it by name)")
        kind = "linear" if type(rule) in (Linear, Constant) else "rule"
        return _Step(node, kind, fn=fn, rule=rule, name=name, swap=swap and written is None, call=call,
                     writes=() if written is None else (written,))  # fmt: skip

    def run(self, args: tuple[Any, ...], call: _Call) -> Any:
        """The graph on the pairs: the input side of its outputs (the reference side kept in ``call.outputs``)."""
        env: dict[fx.Node, Any] = {}
        placeholders = iter(args)
        sides = call.sides
        if sides is not None and sides.recorded is not None and not self.sides_verified:
            sides.verifying = True  # (this graph's first run with given sides)
        grad = True  # (the model's own no_grad(): what depends on no input runs as it asks, the rest is followed)
        for step in self.steps:
            node = step.node
            if node.op == "placeholder":
                env[node] = self._placeholder(step, next(placeholders), call)
            elif node.op == "call_function" and node.target in _GRAD_MODE:
                grad = bool(node.args[0])
            elif step.kind == "value":
                with torch.set_grad_enabled(grad):
                    env[node] = _value(node, env)
            elif step.kind in ("move", "cast", "lookup", "meta"):
                env[node] = self._on_ids(step, env, call)
            elif step.kind == "same":
                env[node] = self._same(step, env)
            elif step.kind == "output":
                return self._output(node, env, call)
            else:
                try:
                    self._on_pairs(step, env, call)
                except (NotCaptured, _NotDistinct, _Stale):
                    raise
                except Exception as error:  # (the intercepted pass runs it again, and refuses it by name where it must)
                    raise NotCaptured(f"{step.name} ({type(error).__name__} in its rule)") from error
        raise NotCaptured("a graph without an output")

    @staticmethod
    def _placeholder(step: _Step, value: Any, call: _Call) -> Any:
        """An input of the graph on the pairs: token ids with their positions, an explained input as a pair (the copy
        that carries the gradient on the input side), or the value given."""
        _bind(step.node.meta.get("example_value"), value, call.sizes)
        if step.kind == "tokens":
            positions = torch.arange(1, value.numel() + 1, device=value.device).reshape(value.shape)
            return TokenValue(value, call.references[step.position], positions, step.position)
        if step.kind == "input":
            value = call.attached.get(step.position, value)
            return PairValue(value, value if call.recording else call.references[step.position])
        return value

    def _output(self, node: fx.Node, env: dict[fx.Node, Any], call: _Call) -> Any:
        """The input side of the graph's outputs, their reference sides kept in ``call.outputs``."""
        sides = call.sides
        if sides is not None and sides.recorded is not None and len(sides.values) != len(sides.recorded):
            raise _NotDistinct("the pairs' graph stopped before the references' did")
        if sides is not None and sides.verifying:
            self.sides_verified = True
        pairs: list[PairValue] = []
        out = _resolve(node.args[0], env, 0, pairs)
        call.outputs = {id(p.x): p.r for p in pairs if isinstance(p.x, Tensor)}
        return out

    def _on_pairs(self, step: _Step, env: dict[fx.Node, Any], call: _Call) -> None:
        """A step on input-dependent operands, into ``env``: its pair (its reference side given where the call has
        it, and checked against the one its operands give on a graph's first run with given sides)."""
        node, sides = step.node, call.sides
        side = self._side(step, call)
        operands = self._promote(step, env, call) if step.promoted else env
        operands = self._unmask(step, operands) if step.unmasked else operands
        verifying = sides is not None and sides.verifying
        live = self._pair(step, operands, call.grid, (True, None)).r if verifying else None
        env[node] = self._pair(step, operands, call.grid, side)
        if live is not None:
            self._verify(step, live, side[1])
        if step.kind == "mask":
            env[node] = MaskValue(env[node].x, env[node].r)
        if call.recording:
            call.sides.values.append(env[node].r)  # type: ignore[union-attr]
        for written in step.writes:  # (the value written into in place is the step's from now on)
            env[written] = env[node]

    @staticmethod
    def _promote(step: _Step, env: dict[fx.Node, Any], call: _Call) -> dict[fx.Node, Any]:
        """``env`` with each of the step's operands of integers used as numbers cast to the step's dtype: a lookup of
        the integers' values (captured_tokens.py), attributed to their positions."""
        dtype = _example(step.node).dtype
        operands = dict(env)
        for node in step.promoted:
            value = env[node]
            leaf, reference, made = lookup(torch.Tensor.to, (value, dtype), {}, value)
            call.lookups.append(made)
            operands[node] = PairValue(leaf, reference)
        return operands

    @staticmethod
    def _unmask(step: _Step, env: dict[fx.Node, Any]) -> dict[fx.Node, Any]:
        """``env`` with each mask the step's arithmetic promotes (``x * mask``) as its step cast to the step's dtype
        on the input side, the reference side's mask so cast on the other: the same values, attributed."""
        dtype = _example(step.node).dtype
        operands = dict(env)
        for node in step.unmasked:
            value = env[node]
            gate = gate_of(value.x)
            x = gate.step if gate is not None and gate.step is not None else value.x
            operands[node] = PairValue(x.to(dtype), value.r.to(dtype))
        return operands

    @staticmethod
    def _same(step: _Step, env: dict[fx.Node, Any]) -> Tensor:
        """A missing-value test (``isnan``) of input-dependent values whose mask is used other than as a condition: its
        mask where it answers alike on both sides of every pair (a constant of the explained function); else
        :class:`NotCaptured` (the intercepted pass refuses it by name)."""
        assert step.fn is not None
        args, kwargs = step.arguments()
        with torch.no_grad():
            x = step.fn(*_resolve(args, env, 0), **_resolve(kwargs, env, 0))
            r = step.fn(*_resolve(args, env, 1), **_resolve(kwargs, env, 1))
        if x.shape != r.shape or not torch.equal(x, r):
            raise NotCaptured(f"{step.name}: an answer that differs between an input and its reference")
        return x

    @staticmethod
    def _on_ids(step: _Step, env: dict[fx.Node, Any], call: _Call) -> Any:
        """A move or cast of token ids, or an embedding lookup of them (captured_tokens.py)."""
        node, fn = step.node, step.fn
        assert fn is not None
        args, kwargs = _resolve(node.args, env, 0), _resolve(node.kwargs, env, 0)
        value = next(v for v in tree_flatten((args, kwargs))[0] if isinstance(v, TokenValue))
        if step.kind == "meta":
            return fn(*(value.x if a is value else a for a in args), **kwargs)
        if step.kind != "lookup":
            return move(fn, args, kwargs, value, step.kind)
        leaf, reference, made = lookup(fn, args, kwargs, value)
        call.lookups.append(made)
        return PairValue(leaf, reference)

    @staticmethod
    def _verify(step: _Step, live: Any, given: Any) -> None:
        """The reference side ``live`` a step computed from its operands' on the pairs, against the ``given`` one (the
        references' repeated), within the rounding of kernels that order sums by the number of rows:
        :class:`_NotDistinct` where they differ (a layout the repeat misplaces)."""
        for a, b in zip(tree_flatten(live)[0], tree_flatten(given)[0], strict=True):
            if isinstance(a, Tensor) and (a.shape != b.shape or not _close(a, b)):
                raise _NotDistinct(f"{step.name}: its reference side on the pairs is not the references' repeated")

    @staticmethod
    def _side(step: _Step, call: _Call) -> tuple[bool, Any]:
        """Where the call's reference side is :class:`_Sides`': whether this is its reference run (the step's reference
        side alone), and in the run on the pairs the step's reference side, the reference run's repeated (None
        otherwise)."""
        sides = call.sides
        if sides is None:
            return False, None
        if sides.recorded is None:
            sides.names.append(step.name)
            return True, None
        k = len(sides.values)
        if k >= len(sides.recorded) or sides.names[k] != step.name:
            raise _NotDistinct(f"{step.name}: not the step the references' graph ran there")
        example = step.node.meta.get("example_value") if not step.writes else _example(step.writes[0])
        value = _repeated(sides.recorded[k], example, sides.repeats, call.sizes)
        sides.values.append(value)
        return False, value

    @staticmethod
    def _pair(step: _Step, env: dict[fx.Node, Any], grid: PairGrid, side: tuple[bool, Any] = (False, None)) -> PairValue:
        """A step on input-dependent operands: each side, the input side through the step's rule where it has one.
        ``side``: (reference side alone, the reference side given) (see :meth:`_side`)."""
        fn = step.fn
        assert fn is not None
        alone, given = side
        args, kwargs = step.arguments()
        if step.kind in ("logic", "move_mask", "unmask"):
            return GraphPlan._on_mask_pair(step, env, side)
        if step.kind in ("indices", "move_picked", "cast_picked"):
            return GraphPlan._on_picked_pair(step, env, side)
        if step.kind == "linear":
            r = _reference_side(fn, args, kwargs, env) if given is None else given
            if alone:
                return PairValue(r, r)
            x_args, x_kwargs = _resolve(args, env, 0), _resolve(kwargs, env, 0)
            if FILLS and fills_of(tree_flatten((x_args, x_kwargs))[0]) is not None:
                raise NotCaptured(f"{step.name}: {FILLED}")
            if repeats_positions(torch.Tensor.__setitem__ if fn is _written else fn, x_args, x_kwargs):
                raise NotCaptured(f"{step.name}: {REPEATED_WRITE}")
            return PairValue(fn(*x_args, **x_kwargs), r)
        rule = step.rule
        assert rule is not None
        ref_leaves, spec, layout = flatten_call(_resolve(args, env, 1), _resolve(kwargs, env, 1))
        if step.tracked is None:  # (the same positions at every call: the graph's structure gives them)
            marked = flatten_call(_resolve(args, env, 2), _resolve(kwargs, env, 2))[0]
            step.tracked = tuple(i for i, v in enumerate(marked) if v is _TRACKED)
        reference_call = OpCall.flat(fn, step.name, ref_leaves, spec, step.tracked, grid, layout)
        why = misfit(rule, reference_call)
        if why is not None:
            raise NotCaptured(f"{step.name}: {why}")
        r = given
        if r is None:
            with torch.no_grad():
                r = rule.reference(reference_call)
            if alone:
                return PickedValue(r, r) if step.kind == "pick" else PairValue(r, r)
        x_args, x_kwargs = _resolve(args, env, 0), _resolve(kwargs, env, 0)
        leaves = flatten_call(x_args, x_kwargs)[0]
        if step.picked is not None:  # (a selection by picked indices: their handle in the index's place)
            rule = selected(fn, step.name, x_args, x_kwargs, leaves, env[step.picked])
        # the reference side's output is handed to the rule where it is the operation's own on the operands alone (a
        # rule with its own reference computation, or tensors beside the operands, may want it computed otherwise)
        own = type(rule).reference is Rule.reference and not any(
            isinstance(leaf, Tensor) for i, leaf in enumerate(leaves) if i not in step.tracked
        )
        call = OpCall(fn, step.name, leaves, ref_leaves, spec, step.tracked, grid, layout, r if own else None)
        if isinstance(rule, EvalOnly) and rule.is_active(call):
            raise NotCaptured(f"{step.name}: {rule.what}, which the intercepted pass refuses by name")
        try:
            check_fills(rule, [leaves[i] for i in step.tracked])  # (linear or not: x * 2.0 passes a fill on too)
        except FilledOperand as error:
            raise NotCaptured(f"{step.name}: {error}") from error
        if rule.is_linear(call) and not rule.attaches_gradient:  # (a linear rule's own node for the ordinary gradient)
            return PairValue(fn(*x_args, **x_kwargs), r)
        out = rule.attribute(call)
        if step.kind == "pick":
            return PickedValue(out, r, picked_handle(rule, call, out))
        return PairValue(out, r)

    @staticmethod
    def _on_picked_pair(step: _Step, env: dict[fx.Node, Any], side: tuple[bool, Any]) -> PairValue:
        """Picked indices taken from a pick's result ("indices"), moved ("move_picked") or cast to integers
        ("cast_picked"), on both sides, their handle with them (moved alike; kept by a cast)."""
        fn, source = step.fn, step.picked
        assert fn is not None and source is not None
        alone, given = side
        args, kwargs = step.arguments()
        r = _reference_side(fn, args, kwargs, env) if given is None else given
        if alone:
            return PickedValue(r, r)
        picked = env[source]
        x = fn(*_resolve(args, env, 0), **_resolve(kwargs, env, 0))
        if picked.handle is None or step.kind != "move_picked":
            return PickedValue(x, r, picked.handle)  # (a result's handle is its indices'; a cast keeps the values)
        handled = {**env, source: PairValue(picked.handle, picked.handle)}
        return PickedValue(x, r, fn(*_resolve(args, handled, 0), **_resolve(kwargs, handled, 0)))

    @staticmethod
    def _on_mask_pair(step: _Step, env: dict[fx.Node, Any], side: tuple[bool, Any]) -> PairValue:
        """A step on masks (see :meth:`_on_masks`) on both sides: the reference side's masks as the model computes
        them, the input side's with its gate beside it (a cast: the gate's step)."""
        fn = step.fn
        assert fn is not None
        alone, given = side
        args, kwargs = step.arguments()
        r = _reference_side(fn, args, kwargs, env) if given is None else given
        if alone:
            return PairValue(r, r) if step.kind == "unmask" else MaskValue(r, r)
        x_args, x_kwargs = _resolve(args, env, 0), _resolve(kwargs, env, 0)
        gates: dict[int, tuple[Tensor, Tensor, bool]] = {}  # (each gated mask's reference side, step, and combined)
        for value in tree_flatten((x_args, x_kwargs))[0]:
            gate = gate_of(value)
            if gate is not None:
                if gate.step is None or gate.reference is None:
                    raise NotCaptured(f"{step.name}: a mask whose comparison left no step")
                gates[id(value)] = (gate.reference, gate.step, gate.combined)
        if step.kind == "unmask":
            return PairValue(gates[id(x_args[0])][1].to(r.dtype, copy=True), r)  # (a copy: a write into it stays in it)
        with torch.no_grad():
            x = fn(*x_args, **x_kwargs)
        if step.kind == "logic":
            kind = LOGICAL[step.name.rsplit(".", 1)[-1]]
            operands = [a for a in x_args if isinstance(a, (Tensor, bool))]
            sides: list[Side] = [(a, *gates[id(a)][:2]) if id(a) in gates else (a, a, None) for a in operands]
            _, players, multipliers, dtype = combined(kind, sides)
            joined = kind != "not" or any(gates[id(a)][2] for a in operands if id(a) in gates)  # (~c: one step)
            GATES[x] = Gate(step.name, r, with_multipliers(x.to(dtype), players, multipliers), combined=joined)
            return MaskValue(x, r)
        first = next(iter(gates.values()))[1]

        def as_step(a: Any) -> Any:
            if not isinstance(a, Tensor):
                return a
            return gates[id(a)][1] if id(a) in gates else a.to(first.dtype) if a.dtype == torch.bool else a

        steps = fn(*tree_map(as_step, x_args[:1]), *x_args[1:], **x_kwargs)
        if not steps.is_floating_point():  # (a cast that keeps the mask a mask: mask.bool(), mask.to(device))
            steps = first
        GATES[x] = Gate(step.name, r, steps, combined=any(c for _, _, c in gates.values()))
        return MaskValue(x, r)


def _reference_side(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], env: dict[fx.Node, Any]) -> Any:
    """A step's function on its operands' reference sides, as the model computes it."""
    with torch.no_grad():
        return fn(*_resolve(args, env, 1), **_resolve(kwargs, env, 1))


#: the mark of an input-dependent operand among a call's arguments (:func:`_resolve` with ``side`` 2)
_TRACKED = object()


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal, or within a few hundred ulps of the largest magnitude (floating point; NaN where both are NaN)."""
    if not a.is_floating_point() or a.dtype != b.dtype:
        return bool(torch.equal(a, b))
    scale = float(torch.nan_to_num(b.abs(), posinf=0.0).max()) if b.numel() else 0.0
    bound = 256 * torch.finfo(a.dtype).eps * max(scale, torch.finfo(a.dtype).tiny)
    return bool(torch.allclose(a, b, rtol=0.0, atol=bound, equal_nan=True))


def _bind(example: Any, value: Any, sizes: dict[Any, int]) -> None:
    """Bind the symbols of a graph's input captured for any batch (a size, or a tensor's symbolic dimensions) to this
    call's ``value``."""
    if isinstance(example, torch.SymInt) and example.node.expr.is_Symbol:
        sizes[example.node.expr] = int(value)
    elif isinstance(example, Tensor) and isinstance(value, Tensor):
        for symbolic, size in zip(example.shape, value.shape, strict=False):
            if isinstance(symbolic, torch.SymInt) and symbolic.node.expr.is_Symbol:
                sizes[symbolic.node.expr] = int(size)


def _concrete(shape: Any, sizes: dict[Any, int]) -> tuple[int, ...]:
    """A captured value's shape at this call: each symbolic size with the call's sizes put in (see :func:`_bind`)."""
    return tuple(int(d.node.expr.xreplace(sizes)) if isinstance(d, torch.SymInt) else int(d) for d in shape)


def _repeated(value: Any, example: Any, repeats: int, sizes: dict[Any, int]) -> Any:
    """``value``, a step's reference side on the block's distinct references, repeated for the pairs (each tensor
    along the one axis where the pairs' graph holds ``repeats`` times its rows: ``example``, that graph's value).
    Raises :class:`_NotDistinct` where the pairs' value is not so made of the references' (a value that mixes rows)."""
    if isinstance(value, Tensor):
        if not isinstance(example, Tensor):
            raise _NotDistinct("a value the pairs' graph does not hold as a tensor")
        shape = _concrete(example.shape, sizes)
        if repeats == 1 and tuple(value.shape) == shape:
            return value
        axis = batch_axis(tuple(value.shape), shape, repeats)
        if axis < 0:
            raise _NotDistinct(f"a value of shape {shape} on the pairs, {tuple(value.shape)} on the references")
        return repeat_along(value, axis, repeats)
    if isinstance(value, (tuple, list)) and isinstance(example, (tuple, list)) and len(value) == len(example):
        items = [_repeated(v, e, repeats, sizes) for v, e in zip(value, example, strict=True)]
        return items if isinstance(value, list) else type(value)(items) if type(value) is not tuple else tuple(items)
    if isinstance(value, (Tensor, tuple, list)) or value != example:
        raise _NotDistinct("a value the pairs' graph holds otherwise")
    return value


def _resolve(a: Any, env: dict[fx.Node, Any], side: int, pairs: list[PairValue] | None = None) -> Any:
    """``a`` (a node's arguments) with each node's value: a pair's input side (``side`` 0), its reference side (1) or
    :data:`_TRACKED` (2); the pairs met are added to ``pairs``."""
    if isinstance(a, fx.Node):
        v = env[a]
        if isinstance(v, PairValue):
            if pairs is not None:
                pairs.append(v)
            return v.x if side == 0 or (side == 2 and isinstance(v, MaskValue)) else v.r if side == 1 else _TRACKED
        return v
    if isinstance(a, (tuple, list)):
        values = [_resolve(v, env, side, pairs) for v in a]
        return tuple(values) if isinstance(a, tuple) else values
    if isinstance(a, dict):
        return {k: _resolve(v, env, side, pairs) for k, v in a.items()}
    return a


def _value(node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    """A node that depends on no explained input, run once."""
    if node.op == "get_attr":
        raise NotCaptured("a graph that reads its module's attributes itself")
    args, kwargs = _resolve(node.args, env, 0), _resolve(node.kwargs, env, 0)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _node_name(node: fx.Node, fn: Any) -> str:
    """How a refusal names a node: its function's name in the rule table, else its target."""
    return op_name(fn) if fn is not None else str(node.target)


def _function(node: fx.Node) -> tuple[Any, bool]:
    """The function object the rule table keys a node by (None where it has none), and whether a Python operator's
    operands are swapped to reach it (``2.0 - x``: ``x.__rsub__(2.0)``)."""
    if node.op == "call_method":
        return getattr(torch.Tensor, str(node.target), None), False
    if node.op != "call_function":
        return None, False
    named = _OPERATORS.get(node.target)
    if named is None:
        return node.target, False
    method, reflected = named
    first = _example(node.args[0])
    if isinstance(first, Tensor) or reflected is None:
        return getattr(torch.Tensor, method), False
    return getattr(torch.Tensor, reflected), True


class CapturedPasses:
    """The model's forward captured by torch.compile's graph capture, once per input signature (and again where a
    guard on what it read fails), and run on pairs by a :class:`GraphPlan` per graph."""

    def __init__(self, model: torch.nn.Module, registry: RuleRegistry, numbers: frozenset[int] = frozenset()) -> None:
        self.model, self.registry = model, registry
        #: the integer inputs used as numbers, attributed at their casts to floating point (among the followed inputs a
        #: call names, the others token ids)
        self.numbers = numbers
        self.path = "captured: not run yet"
        #: the most graphs this explainer captures (:data:`CAPTURES`), and how many it has captured
        self.captures, self.captured = CAPTURES, 0
        #: how many runs of a call signature through a graph's plan before it is written as a program
        #: (captured_program.py); None: WRITE_AFTER on the devices of WRITTEN_ON, else never
        self.write_after: int | None = None
        #: why this explainer's calls run the intercepted pass from now on (None: they are captured)
        self.off: str | None = None
        #: why this explainer's calls run their reference side on every pair from now on (None: on a block's distinct
        #: references where the engine finds them so laid out)
        self.distinct_off: str | None = None
        #: reference sides kept between calls, by the block's references: the sides, the model's outputs on those
        #: references when kept, and their bytes (see :meth:`_distinct_sides`)
        self._kept: dict[Any, tuple[_Sides, Tensor, int]] = {}
        #: each captured graph's plan (or why it has none), by the graph's id; the graphs kept beside, so that an id
        #: stays its graph's
        self._plans: dict[int, GraphPlan | NotCaptured] = {}
        self._graphs: list[fx.GraphModule] = []

    def on_graph(self, graph_module: fx.GraphModule, args: tuple[Any, ...], call: _Call) -> Any:
        """A captured graph run for ``call`` by its plan (or its plan's program)."""
        try:
            plan = self._plan(graph_module, call)
        except NotCaptured:
            raise
        except Exception as error:  # (a fault of the plan's own, not torch.compile's: raised, never handed back)
            raise PlanFault(f"rnnshap's captured pass failed to plan the graph ({type(error).__name__}: {error})") from error
        call.planned = True
        if call.sides is not None and call.sides.captures not in (None, len(self._graphs)):
            raise _Stale
        key = Programs.signature(args, call)
        out = plan.programs.run(plan, args, call, key)
        if out is None:
            out = plan.run(args, call)
        if key is not None and not call.lookups:
            call.ran = (plan, key, out)
        return out

    def _plan(self, graph_module: fx.GraphModule, call: _Call) -> GraphPlan:
        plan = self._plans.get(id(graph_module))
        if isinstance(plan, GraphPlan) and plan.changes != self.registry.changes:
            plan = None  # (rules registered or removed since: decided again)
        if plan is None:
            try:
                plan = GraphPlan(
                    graph_module.graph, self.registry, set(call.references) - call.tokens, call.tokens, self.numbers
                )
            except NotCaptured as error:
                plan = error
            else:
                device = next(iter(call.references.values())).device
                plan.programs.write_after = self.write_after or (WRITE_AFTER if device.type in WRITTEN_ON else None)
            self._plans[id(graph_module)] = plan
            self._graphs.append(graph_module)
        if isinstance(plan, NotCaptured):
            raise plan
        return plan

    def run(
        self,
        leaves: list[Tensor],
        references: list[Tensor],
        grid: PairGrid,
        take: Callable[[Any], Any],
        tokens: frozenset[int] = frozenset(),
        distinct: tuple[Any, list[Tensor], Tensor] | None = None,
        restore: Callable[[], None] = lambda: None,
        columns: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], Tensor, dict[int, Tensor]] | None:
        """The explained outputs on the pairs' input side (pairs, outputs), the gradients of those at ``columns`` (each
        pair's explained ones: the rules' multipliers) w.r.t. the explained inputs, the outputs on the pairs' reference
        side, and each token input's contributions per position (``tokens``: those attributed at their embedding
        lookups, ``(k, pairs × its elements per sample)``); or None where this call runs the intercepted pass (``path``
        says why).
        ``distinct``: where the pairs hold the block's distinct references once per sample and nothing else enters
        their reference side, a key of those references, their rows, and the model's own outputs on them: that side is
        then run on them alone and repeated for the pairs, and kept for later calls (see :meth:`_distinct_sides`).
        ``restore`` puts the model back to the call's state between the runs a call makes."""
        why = self._not_now()
        if why is not None:
            self.path = f"intercepted: {why}"
            return None
        explained = {
            i: r for i, (x, r) in enumerate(zip(leaves, references, strict=True)) if x.requires_grad or i in tokens
        }
        start = waited(leaves[0].device)
        ran = self._attempt(leaves, explained, grid, (tokens, columns), distinct, restore)
        if ran is None:
            return None
        call, out = ran
        if not call.planned or call.outputs is None:
            self.path = "intercepted: torch.compile ran the forward without its graph (a limit on recompiles)"
            return None
        flat = take(out)
        reference = call.outputs.get(id(flat)) if isinstance(flat, Tensor) else None
        if reference is None:
            self.path = "intercepted: the explained output is not one of the captured graph's outputs"
            return None
        grads, per_position = call.grads, dict[int, Tensor]()
        if grads is None:  # (the plan's run: its backward here)
            assert columns is not None
            grads, per_position = _gradients(flat, leaves, columns, call.lookups, tokens)
        unwritten = None
        if call.ran is not None and grid.all_held():  # (a signature the plan or its program ran, and answered: timed,
            # for writing and keeping programs)
            plan, key, graph_out = call.ran
            explained_at = next(i for i, t in enumerate(tree_flatten(graph_out)[0]) if t is flat)
            plan.programs.took(key, explained_at, waited(leaves[0].device) - start, call.grads is not None)
            unwritten = plan.programs.why_not(key)
        sides = call.sides
        self.path = "captured: the forward's graph run on the pairs" + (
            " as one program with its backward" if call.grads is not None
            else "" if unwritten is None else f" (not as one program: {unwritten})"
        ) + (
            "" if sides is None else ", its reference side on the block's distinct references"
            + ("" if sides.captures is None else ", kept from an earlier call")
        )
        return flat.reshape(flat.shape[0], -1), grads, reference.detach(), per_position

    def _attempt(self, *run: Any) -> tuple[_Call, Any] | None:
        """:meth:`_pairs_run` of ``run``, or None where the call runs the intercepted pass (``path`` says why; ``off``
        where this explainer captures no more)."""
        before = python_state(self.model)
        try:
            ran = self._pairs_run(*run)
        except NotCaptured as error:
            self.path = f"intercepted: the captured pass does not take {error} yet"
            return None
        except (RnnShapError, PlanFault):
            raise
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            self.path = f"intercepted: a new input signature, beyond the {self.captures} graphs an explainer captures"
            return None
        except Exception as error:  # (torch.compile's own refusals, and what it raises where it fails to trace: a
            # forward that fails by itself fails the intercepted pass alike, which raises it as it is)
            lines = str(error).strip().splitlines()
            reason = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
            # (tried again at every call, it would fail again at a capture's cost: this explainer captures no more)
            self.off = f"torch.compile cannot capture the forward as one graph ({reason})"
            self.path = f"intercepted: {self.off}"
            return None
        if python_state(self.model) != before:  # (captured anew at every call: this explainer captures no more)
            self.off = "the forward changes the model's Python state, so it is captured anew at every call"
            self.path = f"intercepted: {self.off}"
            return None
        return ran

    def _not_now(self) -> str | None:
        """Why this call runs the intercepted pass before any capture, or None."""
        if self.off is not None:
            return self.off
        if is_in_torch_dispatch_mode():
            return "a TorchDispatchMode is active, which torch.compile's capture does not run under"
        ruled = next((m for m in self.model.modules() if self.registry.module_rule(m) is not None), None)
        if ruled is not None:
            return f"a rule registered for the module class {type(ruled).__qualname__}"
        return None

    def _pairs_run(
        self,
        leaves: list[Tensor],
        explained: dict[int, Tensor],
        grid: PairGrid,
        asked: tuple[frozenset[int], Tensor | None],
        distinct: tuple[Any, list[Tensor], Tensor] | None,
        restore: Callable[[], None],
    ) -> tuple[_Call, Any]:
        """The captured forward on the pairs (see :meth:`run`; ``asked``: its token inputs and columns): its call and
        output. ``restore`` puts the model back to the call's state before each run after the first (a forward may
        write into its own buffers)."""
        tokens, columns = asked
        sides, kept = None, True
        for _ in range(3):  # (a kept side met a graph captured since; the sides do not fit the pairs: every pair)
            if distinct is not None and self.distinct_off is None and grid.samples > 1:
                sides = self._distinct_sides(distinct, list(explained), grid, tokens, kept)
                restore()
            try:
                call = _Call(explained, grid, tokens, sides)
                call.columns, call.restore = columns, restore
                out = self._invoke(call, leaves)
                break
            except (_Stale, _NotDistinct) as error:
                restore()
                if grid.deferred is not None:
                    grid.deferred.clear()  # (the checks of a run stopped midway do not count)
                if isinstance(error, _Stale):  # (recorded again)
                    kept = False
                else:  # (this explainer runs the reference side on every pair from now on)
                    self.distinct_off, sides = str(error), None
                    self._kept.clear()
        else:
            raise PlanFault("rnnshap's captured pass found no reference side its graph takes")
        if sides is not None and call.planned and distinct is not None:
            self._keep(distinct[0], sides, distinct[2])
        return call, out

    def _distinct_sides(
        self,
        distinct: tuple[Any, list[Tensor], Tensor],
        positions: list[int],
        grid: PairGrid,
        tokens: frozenset[int],
        kept: bool = True,
    ) -> _Sides | None:
        """The reference side on the block's distinct references: kept from an earlier call where the model's own
        outputs on them are those it was kept with, bit for bit (a change of the model its parameters' versions do not
        show, such as a tensor attribute written into, moves them), and no graph was captured since (a guard of the
        capture that failed); else recorded by a run on them (:meth:`_reference_run`)."""
        key, rows, plain = distinct
        held = self._kept.get(key) if kept else None
        if held is not None:
            sides, outputs, _ = held
            if outputs.shape == plain.shape and outputs.dtype == plain.dtype and bool(torch.equal(outputs, plain)):
                return _Sides(grid.samples, sides.recorded, sides.names, captures=sides.captures)
            del self._kept[key]
        return self._reference_run(rows, positions, grid, tokens)

    def _keep(self, key: Any, sides: _Sides, outputs: Tensor) -> None:
        """Keep a reference side for later calls, within :data:`KEPT_BYTES` in all."""
        self._kept.pop(key, None)
        size = sum(t.numel() * t.element_size() for t in tree_flatten(sides.recorded)[0] if isinstance(t, Tensor))
        if size + sum(held[2] for held in self._kept.values()) <= KEPT_BYTES:
            kept = _Sides(sides.repeats, sides.recorded, sides.names, captures=len(self._graphs))
            self._kept[key] = (kept, outputs, size)

    def forget(self) -> None:
        """Drop the reference sides kept between calls (the model changed)."""
        self._kept.clear()

    def _invoke(self, call: _Call, tensors: list[Tensor]) -> Any:
        """The captured forward on copies of ``tensors`` (a forward may write into its inputs), run by the plan of its
        graph for ``call``.

        The batch (each input's first axis) is a size of the graph, so that one graph serves every number of pairs,
        each run binding it (:func:`_bind`); but where the model holds a fused recurrent layer, whose steps torch's fake
        evaluation walks 3-7x slower with the batch as a symbol than as a number (a GRU over 200 steps: 6.7 s against
        0.9 s for a first call), each number of pairs is a graph of its own.

        The capture sees copies that require no gradient, in every run (torch.compile guards on it): the run on a
        block's distinct references takes the pairs' graph, and the capture's fake evaluation records no autograd
        through each operation (a recurrent layer's steps: seconds); but where the model holds a module with a fused
        inference path, which torch takes where no argument requires a gradient (a transformer layer), the explained
        inputs' copies require one in every run. The plan takes the explained inputs' copies that carry their gradient
        (``call.attached``)."""
        token = _CALL.set(call)
        call.owner = self
        try:
            with _capture_settings(self.captures), torch.enable_grad(), BatchedExperts.switched(self.model):
                copies = [t.detach().clone() for t in tensors]
                held = {type(m) for m in self.model.modules()}
                if any(issubclass(kind, _FAST_PATHS) for kind in held):
                    for i, copy in enumerate(copies):
                        if i in call.references and copy.is_floating_point():
                            copy.requires_grad_()
                call.attached = {i: t.clone() for i, t in enumerate(tensors) if i in call.references and t.requires_grad}
                if not any(issubclass(kind, torch.nn.RNNBase) for kind in held):
                    for copy in copies:  # (one graph for every number of rows: the batch a size of the graph)
                        if copy.dim() > 0:
                            torch._dynamo.maybe_mark_dynamic(copy, 0)
                try:
                    return _compiled_forward(type(self.model))(self.model, *copies)
                except torch._dynamo.exc.FailOnRecompileLimitHit:
                    if self.captured >= self.captures:
                        raise
                    # (the class's graphs are other explainers': a new cache for the class, where they capture theirs
                    # again as they need them)
                    return _compiled_forward(type(self.model), fresh=True)(self.model, *copies)
        finally:
            call.attached = {}
            _CALL.reset(token)

    def _reference_run(self, rows: list[Tensor], positions: list[int], grid: PairGrid, tokens: frozenset[int]) -> _Sides | None:
        """The forward on the block's distinct references ``rows`` (one per model input; ``positions``: the explained
        ones), each input-dependent step's reference side recorded for the run on the pairs (:class:`_Sides`); None
        where it does not run as one graph (the run on the pairs then meets what stopped it)."""
        sides = _Sides(grid.samples)
        call = _Call({i: rows[i] for i in positions}, PairGrid(1, grid.references), tokens, sides)
        try:
            self._invoke(call, rows)
        except Exception:  # noqa: BLE001 (the run on the pairs meets it, and says or raises it)
            return None
        if not call.planned:
            return None
        # (detached: the run took the pairs' graph, its explained inputs requiring a gradient where the capture's copies
        # do; a kept side holds values)
        sides.recorded, sides.values = tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, sides.values), []
        return sides


def _gradients(
    flat: Tensor, leaves: list[Tensor], columns: Tensor, lookups: list[Lookup], tokens: frozenset[int]
) -> tuple[list[Tensor], dict[int, Tensor]]:
    """The gradients of the explained outputs ``flat`` at ``columns`` w.r.t. the attributed ``leaves``, and each token
    input's contributions per position from its embedding lookups' gradients (captured_tokens.py)."""
    with torch.enable_grad():
        grads, looked_up = chosen_gradients(flat, columns, leaves, [lookup.leaf for lookup in lookups])
    return grads, token_contributions(lookups, looked_up, {t: leaves[t].numel() for t in tokens})


def _capture_settings(captures: int) -> Any:
    """torch.compile's settings for a capture, for its duration: recurrent layers captured as the torch functions their
    rules are keyed by, guards on what torch leaves unguarded by default (hooks added to a module after capture, a
    function's default arguments), so that a model changed in those ways is captured again, and ``captures`` graphs
    for the forward (torch's limit is eight); sizes other than the batch marked for one graph by the caller (see
    :meth:`CapturedPasses._invoke`) stay those of the capture (no automatic dynamic shapes, which torch decides from
    what earlier explainers' forwards met)."""
    accumulated = max(captures, torch._dynamo.config.accumulated_recompile_limit)
    return torch._dynamo.config.patch(
        allow_rnn=True, skip_nnmodule_hook_guards=False, skip_guards_on_constant_func_defaults=False,
        recompile_limit=captures, accumulated_recompile_limit=accumulated, automatic_dynamic_shapes=False,
    )  # fmt: skip


def _forward(model: Any, *inputs: Any) -> Any:
    return model(*inputs)


#: the forward compiled for each model class: torch.compile keeps what it captured (graphs, and guards on what the
#: forward read) on the code it compiles, so that every explainer of a model of that class, of that model or of another
#: instance alike, runs the graphs captured where their guards hold (captures cost far more than a small model's pass);
#: kept for the process, as torch.compile keeps what it compiles (the guards hold the class; a graph holds no model)
_COMPILED: weakref.WeakKeyDictionary[type, Callable[..., Any]] = weakref.WeakKeyDictionary()


def _compiled_forward(kind: type, fresh: bool = False) -> Callable[..., Any]:
    """The forward compiled for models of class ``kind`` (a code object of its own: ``fresh``, a new one, where the
    class's holds as many graphs as torch.compile keeps for one code object)."""
    compiled = None if fresh else _COMPILED.get(kind)
    if compiled is None:
        forward = types.FunctionType(_forward.__code__.replace(), {"__builtins__": __builtins__}, "rnnshap_forward")
        compiled = _COMPILED[kind] = torch.compile(forward, backend=_backend, fullgraph=True, dynamic=None)
    return compiled


def _backend(graph_module: fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """torch.compile's backend: each captured graph run by the plan of the explainer whose call it is (a call outside
    an explainer's, as the graph is)."""

    def run(*args: Any) -> Any:
        call = _CALL.get()
        if call is None or call.owner is None:
            return graph_module(*args)
        return call.owner.on_graph(graph_module, args, call)

    capturing = _CALL.get()
    if capturing is not None and capturing.owner is not None:
        capturing.owner.captured += 1
    return run


__all__ = ["CapturedPasses", "GraphPlan", "MaskValue", "NotCaptured", "PairValue", "PickedValue"]
