r"""The reverse recurrences of the fused LSTM, GRU and Elman layers as one Triton kernel per layer and direction.

:mod:`.reverse` runs a layer's reverse recurrence step by step from Python: per step about ten kernels (the
elementwise products of :func:`rnnshap.formulas.recurrence.lstm_step` and two matrix products), each a launch. Here
the whole loop over the steps is one launch. Each program of the kernel owns a block of rows (a row is one output's
multipliers for one pair: the recurrence never mixes rows) and runs every step for them, persistent over T:

1. **elementwise** (one tile of hidden units at a time): the step's output gradient added to ``dh``, the products
   of the step (LSTM: ``dc' = dc + dh A_k``, ``du = [dc' A_i, dc' A_f, dc' A_g, dh A_o]``, ``dc = dc' A_c``),
   ``du`` written to the kernel's output, which the input gradient reads afterwards;
2. **the recurrent product** ``dh_prev = du W_hh`` (GRU: ``dh A_h + [du_r, du_z, dv A_a] W_hh``), tile by tile,
   reading the step's ``du`` back from the program's own rows and the recurrent weight from the cache
   (``tl.dot`` in IEEE arithmetic, never TF32: the values are the float32 or float64 ones).

A barrier separates the phases (their tiles are read by other threads of the same program). The input gradient, which
feeds nothing later, is one matrix product of every step's ``du`` after the kernel, as on the accelerator path of
:mod:`.reverse`.

The values are today's up to the order in which the matrix products sum their terms: each differs from the exact
recurrence by at most γ_n = n ε / (1 − n ε) of the recurrence run on the absolute values of its terms, n the
operations one value goes through (``tests/recurrent/test_persistent.py`` proves it for both paths against a float64
run from the equations, and that they agree within twice that).

Taken on a CUDA device where Triton imports, for float32 and float64, for layers without a projection (``proj_size``)
and batches that are not packed or masked; :data:`MODE` chooses. Everything else runs :mod:`.reverse` as it is.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Literal

import torch

Tensor = torch.Tensor

#: where the kernels run: ``"cuda"`` (default: on a CUDA device where Triton imports), ``None`` (never: the step by step
#: recurrence of :mod:`.reverse` everywhere), ``"interpret"`` (on every device, the CPU included, through Triton's
#: interpreter: slow, for checking the kernels where no GPU is). Set it in your own code:
#: ``rnnshap.recurrent.persistent.MODE = None``.
MODE: Literal["cuda", "interpret"] | None = "cuda"

#: per kind: (gate blocks of du, coefficient blocks)
_BLOCKS = {"lstm": (4, 6), "gru": (3, 5), "rnn": (1, 1)}
_KIND = {"lstm": 0, "gru": 1, "rnn": 2}
#: hidden units per tile of the elementwise phase and of the product's output; and of its inner sum; warps per program
TILE, INNER, WARPS = 128, 32, 4


def available() -> bool:
    """Whether Triton imports here (the kernels' only requirement beside a CUDA device, or :data:`MODE` "interpret").
    Not beside TensorFlow: Triton's LLVM, loaded after TensorFlow's, aborts the process (a Keras and PyTorch process
    then runs the recurrences step by step)."""
    if "triton" in sys.modules:
        return _imports()
    if "tensorflow" in sys.modules:
        return False
    return _imports()


@functools.cache
def _imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


#: (kind, dtype, device type) whose kernel failed to compile or launch, with why: the step by step recurrence runs there
FAILED: dict[tuple[str, torch.dtype, str], str] = {}


def guarded(
    kind: str, coefficients: Tensor, d_out: Tensor, states: tuple[Tensor, ...], w_ih: Tensor, w_hh: Tensor
) -> tuple[Tensor, ...] | None:
    """:func:`recurrence`, or None where the kernel failed to compile or launch for this kind, dtype and device (now or
    before: once, with a warning; the caller then runs the step by step recurrence, whose values are the same up to
    rounding)."""
    key = (kind, d_out.dtype, d_out.device.type)
    if key in FAILED:
        return None
    try:
        return recurrence(kind, coefficients, d_out, states, w_ih, w_hh)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001 (Triton's compiler or driver refusing: the recurrence runs step by step)
        import warnings

        FAILED[key] = f"{type(error).__name__}: {str(error).strip()[:300]}"
        warnings.warn(
            f"rnnshap: the Triton kernel of the {kind.upper()} reverse recurrence ({d_out.dtype}, {d_out.device.type}) failed "
            f"({FAILED[key]}); the step by step recurrence runs instead, with the same values up to rounding. "
            "rnnshap.recurrent.persistent.MODE = None turns the kernels off.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The kernel compiled by Triton, or run by its interpreter (numpy, on any device) where ``interpret``."""
    from . import persistent_kernel

    return persistent_kernel.INTERPRETED if interpret else persistent_kernel.COMPILED


def taken(
    kind: str,
    coefficients: Tensor,
    d_out: Tensor,
    states: tuple[Tensor, ...],
    weights: tuple[Tensor, ...],
    *,
    masked: bool,
    projected: bool,
) -> bool:
    """Whether a layer's reverse recurrence runs as the kernel: :data:`MODE` and the device agree, Triton imports, every
    tensor is float32, or every one float64, nothing is masked, packed or projected, the kernel's offsets fit 32 bits,
    and no gradient of the tensors themselves is asked for (:func:`tracing` says whether they are values yet)."""
    tensors = [coefficients, d_out, *states, *weights]
    device = d_out.device
    if MODE is None or (MODE == "cuda" and device.type != "cuda") or masked or projected:
        return False
    if len({t.dtype for t in tensors}) != 1 or d_out.dtype not in (torch.float32, torch.float64) or not available():
        return False
    outputs = math.prod(torch.broadcast_shapes(d_out.shape[:-3], *(s.shape[:-2] for s in states)))
    if outputs * d_out.shape[-3] * d_out.shape[-2] * _BLOCKS[kind][0] * d_out.shape[-1] >= 2**31:
        return False  # (each step's du, the largest tensor the kernel indexes)
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def tracing(tensors: list[Tensor]) -> bool:
    """Whether ``tensors`` are a trace's or a compiler's (make_fx, torch.compile), not values a kernel can read: the
    recurrence is then recorded as one operator, which runs the kernel when the program runs."""
    from torch._subclasses.fake_tensor import is_fake
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None or torch.compiler.is_compiling() or any(is_fake(t) for t in tensors)


def _rows_per_program(rows: int, device: torch.device) -> int:
    """The most rows per program (of 64, 32, 16) that still gives every multiprocessor of the device one program: more
    rows share each read of the recurrent weight, more programs run at once."""
    if device.type != "cuda":
        return 16  # (the interpreter: most programs, each checked)
    units = torch.cuda.get_device_properties(device).multi_processor_count
    return next((size for size in (64, 32) if (rows + size - 1) // size >= units), 16)


def recurrence(
    kind: Literal["lstm", "gru", "rnn"],
    coefficients: Tensor,
    d_out: Tensor,
    states: tuple[Tensor, ...],
    w_ih: Tensor,
    w_hh: Tensor,
    *,
    interpret: bool | None = None,
) -> tuple[Tensor, ...]:
    """(dx, *initial states' gradients) of one layer-direction, as :func:`.reverse.lstm_recurrence` (``kind``
    "lstm", ``states`` (d_h, d_c)), :func:`~.reverse.gru_recurrence` ("gru", (d_h,)) and
    :func:`~.reverse.rnn_recurrence` ("rnn", (d_h,)) return them, without mask, packing or projection.

    ``coefficients`` (T, P, C·H); ``d_out`` (..., T, P, H) and ``states`` (..., P, H), any leading axes (the outputs
    explained) broadcasting; ``w_ih`` (G·H, F), ``w_hh`` (G·H, H). ``interpret``: run Triton's interpreter (default:
    where :data:`MODE` says so or the tensors are not on a CUDA device)."""
    blocks, coefficient_blocks = _BLOCKS[kind]
    steps, pairs, width = coefficients.shape
    hidden = w_hh.shape[1]
    if width != coefficient_blocks * hidden or w_hh.shape[0] != blocks * hidden or d_out.shape[-1] != hidden:
        raise ValueError(
            f"{kind}: coefficients {tuple(coefficients.shape)}, recurrent weight {tuple(w_hh.shape)} and "
            f"output gradients {tuple(d_out.shape)} do not fit one layer of {hidden} hidden units"
        )
    lead = torch.broadcast_shapes(d_out.shape[:-3], *(s.shape[:-2] for s in states))
    d_out = d_out.expand(*lead, *d_out.shape[-3:]).reshape(-1, steps, pairs, hidden)
    outputs = d_out.shape[0]
    rows = outputs * pairs
    dtype, device = d_out.dtype, d_out.device
    coefficients = coefficients.to(dtype).contiguous()
    w = w_hh.to(dtype).contiguous()
    d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
    scratch = [s.expand(*lead, pairs, hidden).reshape(rows, hidden).to(dtype).clone() for s in states]
    dh_next = scratch[0]
    dc = scratch[1] if kind == "lstm" else dh_next  # (unused but for an LSTM)
    dh_now = torch.empty_like(dh_next) if kind == "gru" else dh_next
    op = d_out.new_empty((rows, blocks * hidden)) if kind == "gru" else dh_next
    du = d_out.new_empty((outputs, steps, pairs, blocks * hidden))
    if rows and steps:
        if interpret is None:
            interpret = MODE == "interpret" or device.type != "cuda"
        size = _rows_per_program(rows, device)
        grid = ((rows + size - 1) // size,)
        _kernel(interpret)[grid](
            d_out, d_out.stride(0), d_out.stride(1), d_out.stride(2),
            coefficients, coefficients.stride(0), coefficients.stride(1),
            w, w.stride(0),
            du, du.stride(0), du.stride(1), du.stride(2),
            dh_next, dh_now, dc, op,
            rows, pairs, steps, hidden,
            _KIND[kind], blocks, size, TILE, INNER, dtype == torch.float64,
            **({} if interpret else {"num_warps": WARPS}),
        )  # fmt: skip
    dx = du @ w_ih.to(dtype)
    initial = [dh_next.reshape(*lead, pairs, hidden)]
    if kind == "lstm":
        initial.append(dc.reshape(*lead, pairs, hidden))
    return dx.reshape(*lead, steps, pairs, w_ih.shape[1]), *initial
