"""A traced program made shorter before it runs (``traced.py``): the same values, fewer operations a call.

A traced program runs each operation ``make_fx`` recorded, with a few microseconds of Python and dispatch around
each: at tiny sizes that, not the arithmetic, is its cost (an ``LSTMCell`` loop's program at T = 50 has about 11,000
operations, half of them views). Two passes over its graph leave out operations whose results they can give
otherwise, every value the program computes the same bit for bit:

- **constants folded** (:func:`fold_constants`): an operation whose operands are all tensors of the kept reference
  pass (what a program keeps for its version, ``TracedPasses``) gives the same value at every call, so it runs once,
  here, and the program reads that value (a check of the reference side's rows at every step of a cell's loop). The
  model's own tensors can change unseen by a version (``p.data``), so of them only views are taken once (a weight
  transposed or split at every step), and the program runs only where they still lie where they lay
  (:func:`placements`, ``traced.py``). Not folded: an operation that writes into an operand or draws random numbers,
  one whose value follows a setting (a matrix product's precision, a sum's order of additions: :data:`_UNFOLDED`), a
  factory, a value something later writes into (or into a view of it; a constant wherever it is read) or the program
  returns, and values past :data:`FOLDED_BYTES` of new memory;
- **views joined** (:func:`join_views`): a chain of view operations (a select of a view of a slice...) becomes one
  ``as_strided`` of the chain's first tensor, with the sizes, strides and offset the chain gave when traced. A view
  computes nothing, so it gives the same tensor wherever the chain's first tensor lies as it did when traced: the
  program's inputs are checked to be laid out as they were (:func:`layouts`, ``traced.py``), and every other tensor is
  made by the program's operations from them, or is one of its constants (placed as they were). A graph that relays a
  tensor in place (``set_``, ``t_``...) has none joined.

:func:`simplified` applies both to a copy of the graph, which ``traced.py`` keeps only where its program gives the traced
graph's outputs bit for bit on the inputs it was traced on.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Sequence

import torch
import torch.fx
from torch.fx.node import map_arg

Tensor = torch.Tensor
Node = torch.fx.Node

#: the most bytes of new memory a program's folded constants may take (a folded view of a constant takes none)
FOLDED_BYTES = 64 << 20


def layouts(tensors: Sequence[Tensor]) -> tuple[Any, ...]:
    """How ``tensors`` lie in memory (strides and offset): a program whose views are joined runs only on inputs that
    lie as the ones it was traced on did."""
    return tuple((tuple(t.stride()), t.storage_offset()) for t in tensors)


def placements(tensors: Sequence[Tensor]) -> tuple[Any, ...]:
    """Where ``tensors`` lie (their storages, sizes, strides, offsets and dtypes): a program that took views of a model's
    tensors once, or joined views on how they lay (or replays a CUDA graph of them), runs only where they still lie so."""
    return tuple((t.untyped_storage().data_ptr(), t.shape, t.stride(), t.storage_offset(), t.dtype) for t in tensors)


def simplified(graph: torch.fx.GraphModule, inputs: Sequence[Tensor], owned: set[int]) -> tuple[torch.fx.GraphModule, int, int]:
    """A copy of ``graph`` with its constants folded (those of ``owned``, the storages of the tensors the engine keeps
    for the program's version: the kept reference pass's; and views of the others) and its chains of views joined;
    with how many operations were folded and how many views joined. ``graph`` itself and nothing left out where either
    pass fails, or where a folded value shares its memory with a tensor the program writes into or returns (seen on a
    run on ``inputs``). The caller keeps the copy only where it gives the graph's outputs on ``inputs`` bit for bit
    (``traced.py``, which checks the program it runs)."""
    copied = torch.fx.GraphModule(graph, copy.deepcopy(graph.graph))
    try:
        folded = fold_constants(copied, owned)
        ran = _Run(copied, inputs)
        if ran.shares_folded_memory(copied):
            return graph, 0, 0
        joined = join_views(copied, ran)
    except Exception:  # noqa: BLE001 (the graph as traced runs)
        return graph, 0, 0
    return copied, folded, joined


#: views whose schema does not say so (``_unsafe_view``: the view a matrix product's output is reshaped by;
#: ``unsafe_split``: an LSTM cell's gates), which autograd does not track as views
_UNMARKED_VIEWS = frozenset({
    torch.ops.aten._unsafe_view.default, torch.ops.aten.unsafe_split.Tensor, torch.ops.aten.unsafe_split_with_sizes.default,
    torch.ops.aten.unsafe_chunk.default,
})  # fmt: skip


def _view_source(node: Node) -> Node | None:
    """The node whose tensor ``node``'s output is a view of: the operand of an operation whose output aliases its first
    argument (``view``, ``select``, ``t``, ``unbind``...), or the list of views an item is taken from; else None."""
    if node.op != "call_function":
        return None
    target = node.target
    if target is operator.getitem:
        source = node.args[0]
        return source if isinstance(source, Node) and _view_source(source) is not None else None
    if not isinstance(target, torch._ops.OpOverload):
        return None
    returns = target._schema.returns
    unmarked = target in _UNMARKED_VIEWS
    if not unmarked and (len(returns) != 1 or returns[0].alias_info is None or returns[0].alias_info.is_write):
        return None
    source = node.args[0] if node.args else None
    return source if isinstance(source, Node) else None


def _root(node: Node) -> Node:
    """The first tensor of ``node``'s chain of views (``node`` itself where it is no view)."""
    source = _view_source(node)
    while source is not None:
        node, source = source, _view_source(source)
    return node


def _written(node: Node) -> list[Node]:
    """The operands ``node`` writes into (an in-place operation's, an ``out=``)."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return []
    written: list[Node] = []
    for i, argument in enumerate(target._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
            written += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, Node)]
    return written


def constant(graph: torch.fx.GraphModule, name: str) -> Any:
    """The constant ``graph`` keeps under ``name`` (a ``get_attr`` node's target, dotted)."""
    value: Any = graph
    for part in name.split("."):
        value = getattr(value, part)
    return value


#: operations never folded: those whose values follow global settings a later call may change (a matrix product's or a
#: convolution's precision and algorithms: TF32, ``set_float32_matmul_precision``, cuDNN's flags; a sum's order of
#: additions: the number of threads)
_UNFOLDED = frozenset({
    "mm", "bmm", "addmm", "addbmm", "baddbmm", "matmul", "linear", "mv", "addmv", "dot", "vdot", "einsum", "convolution",
    "_convolution", "conv1d", "conv2d", "conv3d", "cudnn_convolution", "mkldnn_convolution", "sum", "nansum", "mean",
    "nanmean", "prod", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm", "logsumexp", "cumsum", "cumprod",
    "_softmax", "_log_softmax", "softmax", "log_softmax", "_native_batch_norm_legit_no_training", "native_layer_norm",
})  # fmt: skip


def fold_constants(graph: torch.fx.GraphModule, owned: set[int]) -> int:
    """Each operation whose operands are all constants the engine keeps (``owned``: their storages) run once, and its
    value made a constant of ``graph`` where the program reads it (see the module's docstring); returns how many were
    folded. The other constants (the model's parameters and buffers) can change between calls unseen by a program's
    version (``p.data`` written into or replaced), so only views of them are taken once: a view reads
    what is written into its tensor's memory, and the caller checks that each such constant still lies where it did
    (:func:`placements`)."""
    nodes = list(graph.graph.nodes)
    # what must stay computed at every call: the first tensor of anything written into, and of anything returned (a
    # constant by its name: make_fx reads one constant through a node at each use)
    written = _with_namesakes({_root(w) for node in nodes for w in _written(node)}, nodes)
    kept = written | _with_namesakes({_root(n) for node in nodes if node.op == "output" for n in node.all_input_nodes}, nodes)
    values: dict[Node, Any] = {}
    others: set[Node] = set()  # (values that are, or are views of, a constant the engine does not own)
    for node in nodes:
        if node.op == "get_attr" and node not in written:
            value = constant(graph, str(node.target))
            if isinstance(value, Tensor):
                values[node] = value
                if value.untyped_storage().data_ptr() not in owned:
                    others.add(node)
    held = {v.untyped_storage().data_ptr() for v in values.values()}
    folded, spent = [], 0
    for node in nodes:
        target = node.target
        operands = node.all_input_nodes
        if node.op != "call_function" or not operands or _root(node) in kept:
            continue  # (an operation of no tensor, a factory, is not folded: its dtype may be the default one, a setting)
        if not all(n in values and _root(n) not in written for n in operands):
            continue
        if any(n in others for n in operands):
            if _view_source(node) is None:
                continue  # (a model's tensor is read at every call: only views of it are taken once)
            others.add(node)
        if isinstance(target, torch._ops.OpOverload) and (
            target._schema.is_mutable
            or torch.Tag.nondeterministic_seeded in target.tags
            or target._schema.name.split("::")[-1] in _UNFOLDED
        ):
            continue
        try:
            with torch.no_grad():
                value = target(*map_arg(node.args, values.__getitem__), **map_arg(node.kwargs, values.__getitem__))  # type: ignore[operator]
        except Exception:  # noqa: BLE001 (an operation that needs more than its operands: it stays)
            continue
        parts = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(p, Tensor) for p in parts):
            continue
        fresh = sum(p.nbytes for p in parts if p.untyped_storage().data_ptr() not in held)
        if spent + fresh > FOLDED_BYTES:
            continue
        spent += fresh
        held.update(p.untyped_storage().data_ptr() for p in parts)
        values[node] = value
        folded.append(node)
    done = set(folded)
    for i, node in enumerate(n for n in folded if isinstance(values[n], Tensor) and any(u not in done for u in n.users)):
        name = f"{FOLDED}{i}"
        graph.register_buffer(name, values[node], persistent=False)
        with graph.graph.inserting_before(node):
            read = graph.graph.get_attr(name)
        node.replace_all_uses_with(read, delete_user_cb=lambda user: user not in done)
    graph.graph.eliminate_dead_code()
    return len(folded)


#: the names of the folded constants
FOLDED = "_rnnshap_folded_"


def _with_namesakes(found: set[Node], nodes: Sequence[Node]) -> set[Node]:
    """``found`` and every node that reads a constant one of them reads (the same ``get_attr`` target)."""
    names = {n.target for n in found if n.op == "get_attr"}
    return found | {n for n in nodes if n.op == "get_attr" and n.target in names}


#: how a view lies: its dtype, sizes, strides, offset and storage (the storage's address when the tensor was made),
#: None for a tensor ``as_strided`` cannot give (a conjugate or negative bit, another layout)
Layout = tuple[torch.dtype, tuple[int, ...], tuple[int, ...], int, int]


class _Run:
    """One run of a graph on its inputs, noting how the tensor of each view, and of each chain of views' first tensor,
    lay, and the memory of every tensor the graph writes into or returns."""

    def __init__(self, graph: torch.fx.GraphModule, inputs: Sequence[Tensor]) -> None:
        wanted = {n for n in graph.graph.nodes if _view_source(n) is not None}
        wanted |= {_root(n) for n in wanted}
        self.layouts: dict[Node, Layout | None] = {}
        self.touched: set[int] = set()  # (storages written into or returned)
        run = self

        class Recording(torch.fx.Interpreter):
            def run_node(self, n: Node) -> Any:
                for w in _written(n):
                    run.touched.update(storages(self.env.get(w)))
                value = super().run_node(n)
                if n in wanted and isinstance(value, Tensor):
                    run.layouts[n] = _layout(value)
                if n.op == "output":
                    run.touched.update(storages(value))
                return value

        with torch.no_grad():
            Recording(graph).run(*inputs)

    def shares_folded_memory(self, graph: torch.fx.GraphModule) -> bool:
        """Whether a folded constant of ``graph`` lies in memory the run wrote into or returned (an alias the graph's
        operations do not declare)."""
        return any(name.startswith(FOLDED) and bool(storages(t) & self.touched) for name, t in graph.named_buffers())


def storages(value: Any) -> set[int]:
    """The storages (addresses) of the tensors in ``value`` (a tensor, or a list or tuple of them, nested)."""
    if isinstance(value, Tensor):
        return {value.untyped_storage().data_ptr()} - {0}  # (an empty tensor's is 0: no memory to share)
    if isinstance(value, (list, tuple)):
        return set().union(*(storages(v) for v in value))
    return set()


def _layout(t: Tensor) -> Layout | None:
    if t.layout != torch.strided or t.is_conj() or t.is_neg() or t.is_quantized or t.is_nested:
        return None
    return (t.dtype, tuple(t.shape), tuple(t.stride()), int(t.storage_offset()), t.untyped_storage().data_ptr())


#: in-place operations that change where a tensor lies (its storage, sizes or strides): a graph with one has no chain
#: of views joined (a chain's first tensor may lie elsewhere by the time the chain's last view is taken)
_RELAID = frozenset({
    "set_", "resize_", "resize_as_", "as_strided_", "t_", "transpose_", "swapdims_", "swapaxes_", "squeeze_", "unsqueeze_",
    "_resize_output_",
})  # fmt: skip


def join_views(graph: torch.fx.GraphModule, ran: _Run) -> int:
    """Each view whose operand is a view used by it alone made one ``as_strided`` of its chain's first tensor (see the
    module's docstring), laid out as in the run ``ran``; returns how many were joined."""
    names = [n.target._schema.name for n in graph.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
    if any(name.split("::")[-1] in _RELAID for name in names):
        return 0
    laid = ran.layouts
    joined = 0
    for node in list(graph.graph.nodes):
        source = _view_source(node)
        if source is None or operator.getitem in (node.target, source.target):
            continue
        if _view_source(source) is None or len(source.users) != 1:
            continue  # (a view of a view used by it alone: joined, that view is left out)
        root = _root(source)
        view, first = laid.get(node), laid.get(root)
        # (the same dtype and storage: a chain whose first tensor's storage was swapped on the way stays as it is)
        if view is None or first is None or view[0] != first[0] or view[4] != first[4]:
            continue
        with graph.graph.inserting_before(node):
            strided = graph.graph.call_function(torch.ops.aten.as_strided.default, (root, *view[1:4]))
        laid[strided] = view
        node.replace_all_uses_with(strided)
        graph.graph.erase_node(node)
        joined += 1
    graph.graph.eliminate_dead_code()
    return joined


__all__ = [
    "FOLDED", "FOLDED_BYTES", "constant", "fold_constants", "join_views", "layouts", "placements", "simplified", "storages",
]  # fmt: skip
