"""torch's recurrent kernels on a CUDA device as one operator (``rnnshap::recurrent_kernel``).

cuDNN's recurrent kernel finds its weights through their storage (an ``aten::set_`` of an ``UntypedStorage``), which
``make_fx`` cannot record: a pass that calls it did not trace (``compile="trace"`` fell back to the intercepted pass,
and said so). Called through the operator, the kernel is one node of the traced program, run as it is, so its values
are torch's own kernel's, bit for bit. Outside a trace, and on the CPU (where torch's kernel traces), the calls are
torch's own.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode

Tensor = torch.Tensor

#: torch's recurrent kernels, by the name the operator takes
KERNELS = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}
_KINDS = {fn: kind for kind, fn in KERNELS.items()}
#: whether the operator runs on the CPU too (tests: the operator's path where no CUDA device is)
ON_CPU_TOO = False


@torch.library.custom_op("rnnshap::recurrent_kernel", mutates_args=())
def recurrent_kernel(
    kind: str,
    input: Tensor,
    hx: list[Tensor],
    params: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> list[Tensor]:
    """``torch.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` on a padded batch: the output and the final states."""
    state: Any = tuple(hx) if kind == "lstm" else hx[0]
    return list(_quietly(KERNELS[kind], input, state, params, has_biases, num_layers, dropout, train, bidirectional, batch_first))


@recurrent_kernel.register_fake
def _(kind, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):  # type: ignore[no-untyped-def]
    steps, rows = (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])
    output = input.new_empty((steps, rows, (2 if bidirectional else 1) * hx[0].shape[-1]))  # (time major, as torch's)
    return [output.transpose(0, 1) if batch_first else output, *(torch.empty_like(h) for h in hx)]


def run_kernel(fn: Any, x: Tensor, hx: Any, *rest: Any) -> Any:
    """``fn(x, hx, *rest)``, torch's recurrent kernel ``fn`` on a padded batch (``rest``: the parameters and the flags),
    through :func:`recurrent_kernel` while make_fx traces a pass on a CUDA device and no gradient is asked of it; any
    other call as it is."""
    kind = _KINDS.get(fn)
    states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
    if (
        kind is None
        or not (x.is_cuda or ON_CPU_TOO)
        or len(rest) != 7
        or not isinstance(rest[0], (list, tuple))  # (a packed batch: data, batch_sizes, hx, params, has_biases, ...)
        or not isinstance(rest[1], bool)
        or not all(isinstance(s, Tensor) for s in states)
        or (torch.is_grad_enabled() and any(t.requires_grad for t in [x, *states, *rest[0]]))
        or get_proxy_mode() is None  # (not tracing: torch's own call, without an operator's cost)
    ):
        return _quietly(fn, x, hx, *rest)
    return tuple(torch.ops.rnnshap.recurrent_kernel(kind, x, states, list(rest[0]), *rest[1:]))


def _quietly(fn: Any, x: Tensor, *rest: Any) -> Any:
    """``fn(x, *rest)``; on a CUDA device without cuDNN's warning that the weights are not one chunk of memory (the
    rules pass one layer-direction's weights, or a model's own after its ``flatten_parameters``: cuDNN copies them)."""
    if not x.is_cuda:
        return fn(x, *rest)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "RNN module weights are not part of single contiguous chunk")
        return fn(x, *rest)
