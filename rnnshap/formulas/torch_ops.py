"""The array namespace of :mod:`rnnshap.formulas` on torch (:data:`TORCH`).

Its members are torch's own functions wherever their meaning is the namespace's (``TORCH.exp is
torch.exp``), so a formula written against it runs the float operations that the same formula
written with ``torch.*`` runs, in the same order: the PyTorch engine's values are those it had before
its formulas moved here, bit for bit (benchmarks/identical_values.py checks it).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence, cast

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import _disable_current_modes

from .namespace import Ops

Tensor = torch.Tensor

_SCALARS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}
_FINFO: dict[torch.dtype, Any] = {}


def scalar(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype and device, made once: an operation with a
    Python number wraps it in a new tensor on every call (a fill and a copy, about as long as the
    operation itself on the small tensors of a step), with a 0-d tensor it reads the value as the
    number, with the same results."""
    # (an inference tensor, kept, could not be saved for a later backward; a program being written makes its own)
    if torch.is_inference_mode_enabled() or valueless(like):
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    key = (value, like.dtype, like.device)
    constant = _SCALARS.get(key)
    if constant is None:
        constant = _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return constant


def _finfo(dtype: torch.dtype) -> Any:
    info = _FINFO.get(dtype)
    if info is None:
        info = _FINFO[dtype] = torch.finfo(dtype)
    return info


#: from this many entries on, a boolean mask is read as bytes (see :func:`surely_all`)
_BYTES_FROM = 4096


#: whether the ``surely_*`` tests answer unread on the CPU too (:func:`values_unread`)
_unread = False

#: functorch's own test of whether a tensor is batched by ``torch.func.vmap`` (None in a torch without it): the backward
#: of a rule whose values depend on the path (vmap's batched backward or autograd's) asks it
vmap_batched: Callable[[Tensor], bool] | None = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)


def readable(t: Tensor) -> bool:
    """Whether ``t``'s values can be read on the host without waiting: on the CPU (where the operations have run
    when they return). On an accelerator a read stalls the host until the device's queue has run (a host sync), so
    the ``surely_*`` tests, which only let a formula skip work that would give the same values, say False there
    without reading, as they do on Keras and JAX; so they do on the CPU under :func:`values_unread`, and on a tensor
    that holds no values (a fake tensor of a pass being written as a program)."""
    return t.device.type == "cpu" and not _unread and not valueless(t)


def valueless(t: Tensor) -> bool:
    """Whether ``t`` is a fake tensor (shapes without values: a pass being written as a program by ``make_fx``)."""
    return type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and is_fake(t)


@contextlib.contextmanager
def values_unread() -> Iterator[None]:
    """The ``surely_*`` tests answer False unread on every device, as on an accelerator: while a pass is traced
    into a program (``engines/pytorch/traced.py``), which must not depend on the values it was traced on."""
    global _unread
    before, _unread = _unread, True
    try:
        yield
    finally:
        _unread = before


def surely_all(mask: Tensor, /) -> bool:
    """Whether every entry of ``mask`` is true: ``mask.all()``, read as bytes on a large boolean mask (torch's
    ``all``/``any`` on bool run a scalar loop on CPU, 15-40x the time of ``amin``/``amax`` on the same bytes, which
    are 0 or 1: the same answer). False, unread, where reading would wait (:func:`readable`)."""
    if not readable(mask):
        return False
    if mask.dtype is torch.bool and mask.numel() >= _BYTES_FROM:
        return bool(mask.view(torch.uint8).amin())
    return bool(mask.all())


def surely_none(mask: Tensor, /) -> bool:
    """Whether no entry of ``mask`` is true (``not mask.any()``; read as bytes as :func:`surely_all` does; False,
    unread, where reading would wait)."""
    if not readable(mask):
        return False
    if mask.dtype is torch.bool and mask.numel() >= _BYTES_FROM:
        return not bool(mask.view(torch.uint8).amax())
    return not bool(mask.any())


#: autograd's engine as ``torch.autograd.grad`` runs it after checking its arguments, and the vmap it runs it under for
#: ``is_grads_batched`` (see :func:`gradient`), where this torch has them as torch 2.4-2.13 do: None until first asked,
#: then the two, or False where they are missing or take their arguments otherwise (the public call then)
_ENGINE: Any = None


def _engine() -> Any:
    """(autograd's engine, the legacy vmap) where they run a small backward as ``torch.autograd.grad`` does, else
    False; decided once, on a tensor of two entries (real ones, also where the first call comes while a program is
    being written on fake tensors)."""
    global _ENGINE
    if _ENGINE is None:
        with _disable_current_modes():
            _ENGINE = _probe_engine()
    return _ENGINE


def _probe_engine() -> Any:
    """:func:`_engine`'s probe."""
    run = getattr(torch.autograd.graph, "_engine_run_backward", None)
    legacy = getattr(getattr(torch, "_vmap_internals", None), "_vmap", None)
    if run is None or legacy is None:
        return False
    with torch.enable_grad():
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        g = torch.tensor([3.0, 5.0])
        try:  # (arguments: grads, keep and create graph, inputs, allow unreachable, accumulate)
            got = run((x * x,), (g,), False, False, (x,), True, False)
        except TypeError:
            got = None
    ok = isinstance(got, tuple) and len(got) == 1 and torch.equal(got[0], torch.tensor([6.0, 20.0]))
    return (run, legacy) if ok else False


def gradient(
    output: Tensor, grad: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False, batched: bool = False
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(output, inputs, grad, retain_graph=retain_graph, allow_unused=True,
    is_grads_batched=batched)``, ``grad`` of ``output``'s shape and dtype (with a leading batch axis where
    ``batched``), without the check of their sizes: ``autograd.grad`` given ``grad_outputs`` imports torch's symbolic
    shapes and sympy for it on its first use in a process (0.3-0.5 s of a first call, 30 times a tiny model's steady
    one), which the floor's backward of a scalar does not pay. Autograd's engine runs as ``autograd.grad`` runs it
    after that check, where this torch has those functions as torch 2.4-2.13 do (:func:`_engine`); the same gradients,
    bit for bit."""
    engine = _engine()
    if not engine:
        return torch.autograd.grad(output, inputs, grad, retain_graph=retain_graph, allow_unused=True, is_grads_batched=batched)
    run, legacy = engine

    def backward(g: Tensor) -> Any:
        return run((output,), (g,), retain_graph, False, tuple(inputs), True, False)

    return tuple(legacy(backward, 0, 0, allow_none_pass_through=True)(grad) if batched else backward(grad))


class TorchOps:
    """The namespace on torch: see :class:`rnnshap.formulas.namespace.Ops` for each member."""

    name = "torch"
    abs = staticmethod(torch.abs)
    exp = staticmethod(torch.exp)
    expm1 = staticmethod(torch.expm1)
    log = staticmethod(torch.log)
    log1p = staticmethod(torch.log1p)
    sqrt = staticmethod(torch.sqrt)
    hypot = staticmethod(torch.hypot)
    rsqrt = staticmethod(torch.rsqrt)
    sinh = staticmethod(torch.sinh)
    atanh = staticmethod(torch.atanh)
    isfinite = staticmethod(torch.isfinite)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)
    floor = staticmethod(torch.floor)
    where = staticmethod(torch.where)
    broadcast_to = staticmethod(torch.broadcast_to)
    shape = staticmethod(torch.Tensor.size)
    zeros_like = staticmethod(torch.zeros_like)
    ones_like = staticmethod(torch.ones_like)
    full_like = staticmethod(torch.full_like)
    scalar = staticmethod(scalar)

    argmin = staticmethod(torch.argmin)
    argmax = staticmethod(torch.argmax)

    @staticmethod
    def take_last(x: Tensor, index: Tensor, /) -> Tensor:
        return x.gather(-1, index)

    @staticmethod
    def put_last(index: Tensor, values: Tensor, n: int, fill: int, /) -> Tensor:
        base = torch.full((*index.shape[:-1], n), fill, dtype=values.dtype, device=index.device)
        return base.scatter(-1, index, values)

    @staticmethod
    def arange(n: int, like: Tensor, /) -> Tensor:
        return torch.arange(n, device=like.device)

    @staticmethod
    def to_float64(x: Tensor, /) -> Tensor:
        return x.to(torch.float64)

    @staticmethod
    def addcmul(c: Tensor, a: Tensor, b: Tensor, value: float, /) -> Tensor:
        return torch.addcmul(c, a, b, value=value)

    @staticmethod
    def concat(parts: Sequence[Tensor], axis: int, /) -> Tensor:
        return torch.cat(list(parts), dim=axis)

    @staticmethod
    def merge_last(x: Tensor, /) -> Tensor:
        return x.reshape(*x.shape[:-2], -1)  # (not flatten: vmap has no batching rule for it in a layer's backward)

    @staticmethod
    def weight_blocks(weight: Tensor, widths: Sequence[int], /, transposed: bool = False) -> list[Tensor]:
        # (views: W_hh[:3H] and W_hh[3H:] of an LSTM)
        matrix = weight.mT if transposed else weight
        return list(matrix.split(list(widths), dim=0)) if len(widths) > 1 else [matrix]

    @staticmethod
    def joined_matmul(parts: Sequence[Tensor], weight: Sequence[Tensor], add: Tensor | None = None, /) -> Tensor:
        out = add
        for part, block in zip(parts, weight, strict=True):  # (the parts are not joined: that would copy them)
            term = part @ block
            out = term if out is None else out + term
        assert out is not None
        return out

    @staticmethod
    def surely_all(mask: Tensor, /) -> bool:
        return surely_all(mask)

    @staticmethod
    def surely_none(mask: Tensor, /) -> bool:
        return surely_none(mask)

    @staticmethod
    def surely_finite(x: Tensor, /) -> bool:
        # (one reduction: any inf or nan entry makes the sum one; False, unread, where reading would wait)
        return readable(x) and bool(torch.isfinite(x.sum()))

    @staticmethod
    def extremes(x: Tensor, /) -> tuple[float, float] | None:
        # (read on every device: the PyTorch engine's sigmoid and tanh rule did so before it moved here; not while a
        # pass is traced, whose program must not hang on these values: None, the formula's general form)
        if not x.numel() or _unread or valueless(x):
            return None
        least, greatest = torch.aminmax(x)
        return float(least), float(greatest)

    @staticmethod
    def eps(dtype: torch.dtype, /) -> float:
        return float(_finfo(dtype).eps)

    @staticmethod
    def tiny(dtype: torch.dtype, /) -> float:
        return float(_finfo(dtype).tiny)


#: the namespace on torch (torch's overloaded signatures are not the Protocol's to mypy; the members
#: are checked against it by tests/formulas/test_formulas.py)
TORCH: Ops = cast(Ops, TorchOps())

__all__ = ["TORCH", "TorchOps", "scalar", "surely_all", "surely_none"]
