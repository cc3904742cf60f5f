r"""The reverse-time multiplier recurrences of the fused LSTM, GRU and Elman layers, as custom operators.

The recurrences' math, each layer's step and the loop over the steps, is written once in
:mod:`rnnshap.formulas.recurrence` (the Keras engine's fused layers run it too); this module binds it to torch
(:data:`~rnnshap.formulas.torch_ops.TORCH`), with what only this engine has: the vmap rule below, masked and packed
batches (:func:`_through`), an LSTM's projection, and the input gradient a chunk of steps at a time.

Each layer's backward (``fused.py``) is one call to one of these operators. The explainer asks for the
gradients of all K outputs at once by running the backward under ``torch.func.vmap``; an operator written
inside the vmap would pay vmap's bookkeeping on every one of the ~10 operations of every time step. As a
custom operator with its own vmap rule, the recurrence sees the K axis as an ordinary leading axis of plain
tensors: every operation below broadcasts over leading axes (``...``), the steps are axis -3 of ``d_out``
and the pairs axis -2 of every state. The same code runs without vmap (one output), with no leading axis.

Per time step the loop runs only what depends on the step before (LSTM: 8 operations; GRU: 10; Elman: 3;
see :func:`rnnshap.formulas.recurrence.lstm_step`); the input gradient, which feeds nothing later, is one matrix
product per chunk of steps (:class:`_InputGradient`: all steps on an accelerator, a cache's worth on the CPU). A
masked (packed) batch's rows past their length get an input gradient of exactly 0, set once after the products.

``docs/recurrent.md`` derives the coefficients; ``fused.py`` computes them in the forward.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Sequence

import torch

from ..formulas import recurrence
from ..formulas.recurrence import Run, Through, reverse_time
from ..formulas.torch_ops import TORCH
from ..formulas.torch_ops import vmap_batched as _IS_BATCHED  # (absent: every call takes the operator)
from . import persistent

Tensor = torch.Tensor


def _pairs(t: Tensor, n: int) -> Tensor:
    """The first ``n`` pairs (axis -2) of ``t``."""
    return t[..., :n, :]


def _pad_pairs(t: Tensor, pairs: int) -> Tensor:
    """``t`` with zero rows appended on the pairs axis (-2) up to ``pairs``."""
    return torch.nn.functional.pad(t, (0, 0, 0, pairs - t.shape[-2]))


#: bytes of step gradients kept before their input gradient is computed, on the CPU: 8 MiB, the forward's chunk
#: (fused._CHUNK_ELEMENTS). All steps at once would write and read back every step's gradients, 315 MB at hidden 128,
#: 16 x 16 pairs, 3 outputs and T = 200, measured 10 % slower than a product per step there; 1 MiB (a product
#: per step at that size) and 32 MiB were no faster than 8. On an accelerator every step's at once (fewest launches).
_CHUNK_BYTES = 8 << 20


class _InputGradient:
    """The input gradient Σ_j du_j W_j of every step, from the steps' gradients in reverse time, a chunk of steps
    at a time: one matrix product per weight block and chunk (``add`` each step's parts, then ``result``)."""

    def __init__(self, weights: Sequence[Tensor], steps: int) -> None:
        self.weights, self.steps = weights, steps
        self.pending: list[list[Tensor]] = [[] for _ in weights]
        self.done: list[Tensor] = []  # (chunks in reverse time)
        self.chunk = 0

    def add(self, *parts: Tensor) -> None:
        if not self.chunk:
            size = sum(p.numel() * p.element_size() for p in parts)
            self.chunk = self.steps if parts[0].device.type != "cpu" else max(1, _CHUNK_BYTES // max(1, size))
        for pending, part in zip(self.pending, parts, strict=True):
            pending.append(part)
        if len(self.pending[0]) == self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self.pending[0]:
            return
        dx: Tensor | None = None
        for pending, weight in zip(self.pending, self.weights, strict=True):
            steps = pending[0].unsqueeze(-3) if len(pending) == 1 else torch.stack(pending[::-1], dim=-3)  # (one: a cell)
            term = steps @ weight
            dx = term if dx is None else dx + term
            pending.clear()
        assert dx is not None
        self.done.append(dx)

    def result(self, mask: Tensor | None) -> Tensor:
        """(..., T, P, F), zero where ``mask`` (T, P, 1) is False."""
        self._flush()
        dx = self.done[0] if len(self.done) == 1 else torch.cat(self.done[::-1], dim=-3)
        return dx if mask is None else torch.where(mask, dx, 0.0)


def _through(mask: Tensor | None, active: list[int] | None, pairs: int) -> Through | None:
    """How a step's pairs go through it (:func:`rnnshap.formulas.recurrence.reverse_time`): with ``active`` (a packed
    batch) the first n pairs run step t and the rest pass their states through; with ``mask`` (T, P, 1) every pair
    runs it and a pair past its length keeps its states; else None, every pair runs every step."""
    if active is not None:

        def packed(t: int, run: Run, states: tuple[Tensor, ...], d_t: Tensor, at: Sequence[Tensor]) -> Any:
            n = active[t]
            dh, *rest = states
            du, *new = run(_pairs(dh, n) + _pairs(d_t, n), *(_pairs(s, n) for s in rest), *(a[:n] for a in at))
            kept = tuple(torch.cat([s_new, s[..., n:, :]], -2) for s_new, s in zip(new, states, strict=True))
            return [_pad_pairs(part, pairs) for part in du], kept

        return packed
    if mask is not None:

        def masked(t: int, run: Run, states: tuple[Tensor, ...], d_t: Tensor, at: Sequence[Tensor]) -> Any:
            dh, *rest = states
            dh = dh + d_t * mask[t]
            du, *new = run(dh, *rest, *at)
            return du, tuple(torch.where(mask[t], s_new, s) for s_new, s in zip(new, (dh, *rest), strict=True))

        return masked
    return None


def _run(
    step: Callable[..., tuple[Any, ...]],
    coefficients: Sequence[Tensor],
    mask: Tensor | None,
    active: list[int] | None,
    d_out: Tensor,
    states: tuple[Tensor, ...],
    input_weights: Sequence[Tensor],
) -> tuple[Tensor, ...]:
    """(dx, *initial states' gradients) of a layer-direction: the shared loop with ``step`` over the steps (axis 0)
    of ``coefficients`` (each step's as views made at once, by unbind, not picked step by step)."""
    steps, pairs = coefficients[0].shape[:2]
    per_step = list(zip(*(a.unbind(0) for a in coefficients), strict=True))
    d_steps = d_out.unbind(-3)
    dx = _InputGradient(input_weights, steps)
    states = reverse_time(TORCH, step, steps, lambda t: (d_steps[t], per_step[t]), states, dx, _through(mask, active, pairs))
    return dx.result(mask), *states


# -- a long recurrence on a CUDA device, replayed as one CUDA graph ---------------------------------------
#: a recurrence of at least this many steps on a CUDA device is replayed as a CUDA graph from its second call with the
#: same layout (a step launches about 8 kernels, each about 10-15 us of Python and dispatch on the host: a graph
#: launches them all at once; fewer steps pay less launching than a graph's copies in and out)
GRAPH_STEPS = 8
#: the most recurrences kept as CUDA graphs (one per layout), the least recently used dropped first
GRAPHS_KEPT = 8
#: the most layouts noted as seen once or refused (each a few shapes), the oldest dropped first
GRAPHS_NOTED = 64
#: the share of a device's memory the graphs kept may hold together; a layout that does not fit beside those kept is
#: refused (not captured at every call in place of another: a loop of layouts that do not all fit would pay a capture
#: each call)
GRAPHS_SHARE = 1 / 8
#: what a graph holds between calls, in its arguments' bytes: a copy of them, its intermediate tensors (each step's
#: input gradients, kept for one product after the loop: about 2.3 times the arguments, measured on the CPU for an
#: LSTM with 3 and 10 outputs) and its results
GRAPH_HOLDS = 4


class _Graphs:
    """The reverse recurrences replayed as CUDA graphs, by layout (:func:`_replayed`): those kept (with the bytes each
    holds), those seen once (the first call of a layout runs as it is), and those refused, with why."""

    def __init__(self) -> None:
        self.kept: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.seen: OrderedDict[Any, None] = OrderedDict()
        self.refused: OrderedDict[Any, str] = OrderedDict()
        self.lock = threading.Lock()

    def note(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        """``table[key] = value``, the oldest entries dropped past :data:`GRAPHS_NOTED` (layouts seen or refused)."""
        table[key] = value
        while len(table) > GRAPHS_NOTED:
            table.popitem(last=False)

    def held(self) -> int:
        return sum(size for _, size in self.kept.values())

    def forget(self) -> None:
        with self.lock:
            self.kept.clear()
            self.seen.clear()
            self.refused.clear()


GRAPHS = _Graphs()


def forget_graphs() -> None:
    """Drop every reverse recurrence kept as a CUDA graph, and the memory each holds."""
    GRAPHS.forget()


def _layout(a: Any) -> Any:
    """What of an argument decides the kernels a recurrence launches: a tensor's shape, strides, dtype, device and
    alignment to 64 bytes (cuBLAS chooses its kernels by alignment: a graph's copies are aligned, a weight's view may
    not be; an allocation is aligned to 64 bytes on the CPU, 512 on CUDA), a list's items, else the value."""
    if isinstance(a, Tensor):
        return (tuple(a.shape), a.stride(), a.dtype, a.device, a.data_ptr() % 64)
    return tuple(a) if isinstance(a, list) else a


def _settings(device: torch.device) -> tuple[Any, ...]:
    """The process's settings that decide how the recurrence's matrix products round (TF32, autocast)."""
    return (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.is_autocast_enabled(device.type),
    )


def _may_capture(steps: int, tensors: list[Tensor], memory: int) -> bool:
    """Whether a recurrence of ``steps`` on ``tensors`` (on one CUDA device of ``memory`` bytes) may be captured: long
    enough, graphs wanted, nothing tracing, compiling or differentiating it, and what it would hold, alone, within
    :data:`GRAPHS_SHARE` of the device (beside the graphs kept: :func:`_replayed`)."""
    from torch._subclasses.fake_tensor import is_fake
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    from ..engines.cuda_graphs import cuda_graphs_wanted

    if steps < GRAPH_STEPS or not cuda_graphs_wanted() or get_proxy_mode() is not None or torch.compiler.is_compiling():
        return False
    if any(is_fake(t) for t in tensors) or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return False
    return _holds(tensors) <= GRAPHS_SHARE * memory


def _holds(tensors: list[Tensor]) -> int:
    return GRAPH_HOLDS * sum(t.numel() * t.element_size() for t in tensors)


def _graphable(steps: int, tensors: list[Tensor]) -> bool:
    """Whether a recurrence may run as a CUDA graph: on one CUDA device, no graph being captured, and
    :func:`_may_capture`."""
    if not tensors or any(not t.is_cuda or t.device != tensors[0].device for t in tensors):
        return False
    if torch.cuda.is_current_stream_capturing():
        return False
    return _may_capture(steps, tensors, _memory(tensors[0].device))


def _memory(device: torch.device) -> int:
    """The device's memory in bytes (none off CUDA)."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0


def _replayed(impl: Callable[..., tuple[Tensor, ...]], args: tuple[Any, ...]) -> tuple[Tensor, ...] | None:
    """``impl(*args)`` from a CUDA graph of it, where it may run as one (:func:`_graphable`) and is kept; else None: the
    caller runs it as it is. A layout's first call runs as it is; its second captures the graph, checks that its replay
    gives what ``impl`` gives on the same arguments bit for bit (the call returns the latter), and keeps it only then
    (else the layout is refused for good, as one that does not fit beside the graphs kept); later calls copy their
    arguments into the graph's and replay it. The graph reads its weights from those copies too, so a model changed in
    place is seen. A packed or masked batch's recurrence runs as it is."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if args[1] is not None or args[2] is not None or not _graphable(args[0].shape[0], tensors):
        return None  # (a packed or masked batch runs as it is: its layout is its lengths', which batches seldom repeat)
    from ..engines.cuda_graphs import Replayed, same_bits

    key = (impl.__name__, tuple(_layout(a) for a in args), _settings(tensors[0].device))
    holds = _holds(tensors)
    with GRAPHS.lock:
        kept = GRAPHS.kept.get(key)
        if kept is not None:
            GRAPHS.kept.move_to_end(key)
        elif key in GRAPHS.refused:
            return None
        elif key not in GRAPHS.seen:
            GRAPHS.note(GRAPHS.seen, key, None)
            return None
        elif GRAPHS.held() + holds > GRAPHS_SHARE * _memory(tensors[0].device):
            GRAPHS.note(GRAPHS.refused, key, "the graphs kept already hold their share of the device's memory")
            return None
    # (a broadcast view, as vmap's rule makes of a gradient not batched, is copied whole: a graph's input cannot be one)
    given = [t.contiguous() if t.numel() > 1 and 0 in t.stride() else t for t in tensors]
    if kept is not None:
        return tuple(kept[0](*given))
    at = [i for i, a in enumerate(args) if isinstance(a, Tensor)]

    def run(*tensors: Tensor) -> list[Tensor]:
        whole = list(args)
        for i, t in zip(at, tensors, strict=True):
            whole[i] = t
        return list(impl(*whole))

    expected = impl(*args)
    try:
        replayed = Replayed(run, given)
        got = replayed(*given)
    except Exception as error:  # noqa: BLE001 (an operation a capture refuses: the recurrence runs as it is)
        why = f"its capture failed ({type(error).__name__}: {str(error).strip()[:200]})"
    else:
        same = len(got) == len(expected) and all(same_bits(a, b) for a, b in zip(got, expected, strict=True))
        why = "" if same else "its replay gave other values than the recurrence"
    with GRAPHS.lock:
        if why:
            GRAPHS.note(GRAPHS.refused, key, why)
        else:
            GRAPHS.kept[key] = (replayed, holds)
            while len(GRAPHS.kept) > GRAPHS_KEPT:
                GRAPHS.kept.popitem(last=False)
    return expected


def _on_cuda_graphs(impl: Callable[..., tuple[Tensor, ...]]) -> Callable[..., tuple[Tensor, ...]]:
    """``impl``, a recurrence, replayed as a CUDA graph where :func:`_replayed` does so."""

    @functools.wraps(impl)
    def recurrence(*args: Any) -> tuple[Tensor, ...]:
        replayed = _replayed(impl, args)
        return impl(*args) if replayed is None else replayed

    return recurrence


#: the gradients of the states each kind's recurrence receives and returns
_STATES = {"lstm": 2, "gru": 1, "rnn": 1}


def _on_kernel(kind: str) -> Callable[[Callable[..., tuple[Tensor, ...]]], Callable[..., tuple[Tensor, ...]]]:
    """A recurrence run as one Triton kernel (:mod:`.persistent`) where :func:`.persistent.taken` says so, else as
    it is (step by step, on a CUDA device replayed as a CUDA graph: :func:`_on_cuda_graphs`)."""

    def wrap(impl: Callable[..., tuple[Tensor, ...]]) -> Callable[..., tuple[Tensor, ...]]:
        count = _STATES[kind]

        @functools.wraps(impl)
        def recurrence(
            coefficients: Tensor, mask: Tensor | None, active: list[int] | None, d_out: Tensor, *rest: Any
        ) -> tuple[Tensor, ...]:
            states, (w_ih, w_hh, *projection) = rest[:count], rest[count:]
            masked, projected = mask is not None or active is not None, any(w is not None for w in projection)
            if persistent.taken(kind, coefficients, d_out, states, (w_ih, w_hh), masked=masked, projected=projected):
                if persistent.tracing([coefficients, d_out, *states, w_ih, w_hh]):
                    # (one operator in the program, which runs the kernel when the program runs: not the steps traced)
                    return _OPERATORS[kind](coefficients, mask, active, d_out, *rest)
                ran = persistent.guarded(kind, coefficients, d_out, states, w_ih, w_hh)  # type: ignore[arg-type]
                if ran is not None:
                    return ran
            return impl(coefficients, mask, active, d_out, *rest)

        return recurrence

    return wrap


@_on_kernel("lstm")
@_on_cuda_graphs
def lstm_recurrence(
    coefficients: Tensor,
    mask: Tensor | None,
    active: list[int] | None,
    d_out: Tensor,
    d_h: Tensor,
    d_c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dh_0, dc_0) of one LSTM layer-direction from its coefficients [A_i, A_f, A_g, A_o, A_k, A_c]
    (T, P, 6H) and the gradients of its outputs (..., T, P, H_out) and final states (..., P, H_out),
    (..., P, H): :func:`rnnshap.formulas.recurrence.lstm_step` per step (8 operations)."""
    hidden = w_hh.shape[0] // 4
    a_ifg = coefficients[..., : 3 * hidden].unflatten(-1, (3, hidden))
    a_o, a_k, a_c = coefficients[..., 3 * hidden :].split(hidden, dim=2)
    # the gate blocks [i, f, g] and [o] of the weights apart: du's two parts go through them without being
    # joined first (a join would copy du every step, and change the order of the products' sums)
    widths = [3 * hidden, hidden]
    step = partial(
        recurrence.lstm_step,
        recurrent=TORCH.weight_blocks(w_hh, widths),
        projection=None if w_hr is None else TORCH.weight_blocks(w_hr, [w_hr.shape[0]]),
    )
    dx, dh, dc = _run(step, (a_ifg, a_o, a_k, a_c), mask, active, d_out, (d_h, d_c), TORCH.weight_blocks(w_ih, widths))
    return dx, dh, dc


@_on_kernel("gru")
@_on_cuda_graphs
def gru_recurrence(
    coefficients: Tensor,
    mask: Tensor | None,
    active: list[int] | None,
    d_out: Tensor,
    d_h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
) -> tuple[Tensor, Tensor]:
    """(dx, dh_0) of one GRU layer-direction from its coefficients [A_r, A_z, A_n, A_h, A_a] (T, P, 5H)
    and the gradients of its outputs (..., T, P, H) and final state (..., P, H):
    :func:`rnnshap.formulas.recurrence.gru_step` per step (10 operations)."""
    hidden = w_hh.shape[0] // 3
    a_rz = coefficients[..., : 2 * hidden]
    a_n, a_h, a_a = coefficients[..., 2 * hidden :].split(hidden, dim=2)
    widths = [2 * hidden, hidden]  # the gate blocks [r, z] and [n] of the weights apart (see lstm_recurrence)
    step = partial(recurrence.gru_step, recurrent=TORCH.weight_blocks(w_hh, widths), reset_first=True)
    dx, dh = _run(step, (a_rz, a_n, a_h, a_a), mask, active, d_out, (d_h,), TORCH.weight_blocks(w_ih, widths))
    return dx, dh


@_on_kernel("rnn")
@_on_cuda_graphs
def rnn_recurrence(
    coefficients: Tensor, mask: Tensor | None, active: list[int] | None, d_out: Tensor, d_h: Tensor, w_ih: Tensor, w_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """(dx, dh_0) of one Elman layer-direction from its activation's multipliers (T, P, H) and the gradients
    of its outputs (..., T, P, H) and final state (..., P, H): :func:`rnnshap.formulas.recurrence.rnn_step` per
    step (3 operations)."""
    step = partial(recurrence.rnn_step, recurrent=TORCH.weight_blocks(w_hh, [w_hh.shape[0]]))
    dx, dh = _run(step, (coefficients,), mask, active, d_out, (d_h,), [w_ih])
    return dx, dh


# -- the operators and their vmap rule -------------------------------------------------------------
#: each operator's arguments: (coefficients, mask, active) first, then the gradients it receives (batched under
#: vmap), then the weights
_GRADIENTS = {"lstm": 3, "gru": 2, "rnn": 2}


def _vmap_rule(name: str, impl: Callable[..., tuple[Tensor, ...]]) -> Callable[..., Any]:
    """The vmap rule of an operator: the batched gradients (batch axis anywhere, or none) moved to a leading
    axis and the recurrence run once on all of them; anything else batched (the coefficients or the weights,
    never by the explainer) one batch element at a time."""
    gradients = slice(3, 3 + _GRADIENTS[name])

    def rule(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        size = info.batch_size
        dims = [d if isinstance(a, Tensor) else None for a, d in zip(args, in_dims, strict=True)]  # (a list's are a list)
        if any(d is not None for i, d in enumerate(dims) if not gradients.start <= i < gradients.stop):
            one = [[a if d is None else a.select(d, b) for a, d in zip(args, dims, strict=True)] for b in range(size)]
            per_element = [impl(*element) for element in one]
            return tuple(torch.stack(outs) for outs in zip(*per_element, strict=True)), (0,) * len(per_element[0])
        given = zip(args[gradients], dims[gradients], strict=True)
        front = [a.movedim(d, 0) if d is not None else a.expand(size, *a.shape) for a, d in given]
        outs = impl(*args[: gradients.start], *front, *args[gradients.stop :])
        return outs, (0,) * len(outs)

    return rule


@torch.library.custom_op("rnnshap::lstm_reverse", mutates_args=())
def lstm_reverse(
    coefficients: Tensor,
    mask: Tensor | None,
    active: list[int] | None,
    d_out: Tensor,
    d_h: Tensor,
    d_c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lstm_recurrence` as an operator (its outputs never alias its inputs)."""
    dx, dh, dc = lstm_recurrence(coefficients, mask, active, d_out, d_h, d_c, w_ih, w_hh, w_hr)
    return dx, _fresh(dh, d_h), _fresh(dc, d_c)


@torch.library.custom_op("rnnshap::gru_reverse", mutates_args=())
def gru_reverse(
    coefficients: Tensor, mask: Tensor | None, active: list[int] | None, d_out: Tensor, d_h: Tensor, w_ih: Tensor, w_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`gru_recurrence` as an operator."""
    dx, dh = gru_recurrence(coefficients, mask, active, d_out, d_h, w_ih, w_hh)
    return dx, _fresh(dh, d_h)


@torch.library.custom_op("rnnshap::rnn_reverse", mutates_args=())
def rnn_reverse(
    coefficients: Tensor, mask: Tensor | None, active: list[int] | None, d_out: Tensor, d_h: Tensor, w_ih: Tensor, w_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`rnn_recurrence` as an operator."""
    dx, dh = rnn_recurrence(coefficients, mask, active, d_out, d_h, w_ih, w_hh)
    return dx, _fresh(dh, d_h)


#: each kind's operator, by which a traced program calls its recurrence
_OPERATORS = {"lstm": lstm_reverse, "gru": gru_reverse, "rnn": rnn_reverse}


def batched(*gradients: Tensor | None) -> bool:
    """Whether a layer's backward runs under the explainer's vmap (one of its ``gradients`` is batched): then the
    operator, whose vmap rule runs the loop once on all K; else the plain recurrence, the operator's own body. (An
    operator called outside vmap, one output, imports ``torch._dynamo`` on its first call in a process, about a
    second, to disable a compiler nothing runs.)"""
    return _IS_BATCHED is None or any(g is not None and _IS_BATCHED(g) for g in gradients)


def _fresh(t: Tensor, given: Tensor) -> Tensor:
    """``t``, copied where it is the given tensor itself (an operator's output may not alias its input)."""
    return t.clone() if t is given else t


torch.library.register_vmap("rnnshap::lstm_reverse", _vmap_rule("lstm", lstm_recurrence))
torch.library.register_vmap("rnnshap::gru_reverse", _vmap_rule("gru", gru_recurrence))
torch.library.register_vmap("rnnshap::rnn_reverse", _vmap_rule("rnn", rnn_recurrence))


def _input_shape(coefficients: Tensor, d_out: Tensor, w_ih: Tensor) -> tuple[int, ...]:
    return (*d_out.shape[:-3], *coefficients.shape[:2], w_ih.shape[1])


@lstm_reverse.register_fake
def _(coefficients, mask, active, d_out, d_h, d_c, w_ih, w_hh, w_hr):  # type: ignore[no-untyped-def]
    return d_out.new_empty(_input_shape(coefficients, d_out, w_ih)), torch.empty_like(d_h), torch.empty_like(d_c)


@gru_reverse.register_fake
def _(coefficients, mask, active, d_out, d_h, w_ih, w_hh):  # type: ignore[no-untyped-def]
    return d_out.new_empty(_input_shape(coefficients, d_out, w_ih)), torch.empty_like(d_h)


@rnn_reverse.register_fake
def _(coefficients, mask, active, d_out, d_h, w_ih, w_hh):  # type: ignore[no-untyped-def]
    return d_out.new_empty(_input_shape(coefficients, d_out, w_ih)), torch.empty_like(d_h)
