"""A program on a CUDA device captured once as a CUDA graph and replayed: every kernel it launches, launched again by one
call in place of one each from Python. The traced pass's programs (:mod:`.pytorch.traced`) and the fused recurrent layers'
reverse recurrences (:mod:`rnnshap.recurrent.reverse`) are replayed so; ``REPLAY = False`` here leaves both out."""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

Tensor = torch.Tensor


#: False: a traced program, or a recurrent layer's reverse recurrence, on a CUDA device launches its operations one by
#: one, not replayed as a CUDA graph (read when one would be captured; a graph keeps its intermediate tensors' memory
#: between calls). Set it in your own code: ``rnnshap.engines.cuda_graphs.REPLAY = False``.
REPLAY = True


def cuda_graphs_wanted() -> bool:
    return REPLAY


class Replayed:
    """A program on a CUDA device captured once as a CUDA graph (``torch.cuda.CUDAGraph``) and replayed: each call
    copies its inputs into the tensors the graph reads, replays every kernel of the program with one launch, and
    returns copies of the outputs it wrote (a later replay writes them again). One call at a time (a lock: the graph's
    tensors are one set), on the inputs' device and one stream of its own. The graph keeps the program's intermediate
    tensors' memory from call to call, and the program itself (its constants, whose memory the graph reads).

    An output on the CPU is returned as captured: nothing inside a captured program copies from the device (a capture
    refuses it), so such a tensor comes from the program's constants alone, the same at every call."""

    def __init__(self, run: Callable[..., Any], inputs: list[Tensor]) -> None:
        if any(t.numel() > 1 and 0 in t.stride() for t in inputs):
            raise ValueError("an input is a broadcast view, which a graph's own input tensor cannot be")
        self.run, self.device = run, inputs[0].device  # (the program kept alive: the graph reads its constants' memory)
        self.lock = threading.Lock()
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(device=self.device)
            caller = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(caller)
            try:
                with torch.cuda.stream(self.stream), torch.no_grad():
                    self.inputs = [
                        torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t) for t in inputs
                    ]
                    run(*self.inputs)  # (warmed up on the graph's stream before its capture, as torch's CUDA graphs ask)
                self.graph = torch.cuda.CUDAGraph()
                with torch.no_grad(), torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                    self.outputs = run(*self.inputs)
            finally:  # (a capture that failed leaves the capture stream current: the caller's set back)
                torch.cuda.set_stream(caller)
            caller.wait_stream(self.stream)

    def __call__(self, *tensors: Tensor) -> list[Any]:
        with self.lock, torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(caller)  # (the inputs written on the caller's stream, the last results read)
            with torch.cuda.stream(self.stream):
                for mine, given in zip(self.inputs, tensors, strict=True):
                    mine.copy_(given)
                self.graph.replay()
                outputs = [copy_of(o) if isinstance(o, Tensor) and o.device.type == "cuda" else o for o in self.outputs]
            caller.wait_stream(self.stream)
            for o in outputs:  # (made on the graph's stream, used on the caller's)
                if isinstance(o, Tensor) and o.device.type == "cuda":
                    o.record_stream(caller)
            return outputs


def copy_of(t: Tensor) -> Tensor:
    """A copy of ``t`` with its strides (an output that is a view of a larger tensor keeps its layout, as the program
    gives it), but for a broadcast view, copied whole."""
    if 0 in t.stride():
        return t.clone()
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t)


def same_bits(a: Any, b: Any) -> bool:
    """Whether two outputs of a program are the same bit for bit (NaN and -0.0 included), strides too."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        return type(a) is type(b) and repr(a) == repr(b)
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device or a.stride() != b.stride():
        return False
    return torch.equal(*(t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b)))  # (every dtype's bytes)


__all__ = ["Replayed", "copy_of", "cuda_graphs_wanted", "same_bits"]
