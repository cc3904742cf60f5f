"""Flax NNX models shared by the test files (see tests/models/__init__.py). Import it after
``pytest.importorskip("flax.nnx")``: this module imports Flax, JAX and torch."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from .torch import RecurrentHead

F64 = jnp.float64


def _last(h: Any) -> Any:
    return jax.nn.relu(h[:, -1])


class FlaxRecurrent(nnx.Module):
    """nnx.RNN over an LSTMCell or GRUCell (``cell``), float64, and a Linear head; ``read``: what the head sees of the
    recurrent outputs (by default the last step through relu); ``output``: a function of the head's output."""

    def __init__(self, cell: str, features: int = 3, hidden: int = 4, outputs: int = 2, seed: int = 0,
                 read: Callable[[Any], Any] = _last, output: Callable[[Any], Any] | None = None) -> None:  # fmt: skip
        rngs = nnx.Rngs(seed)
        make = {"lstm": nnx.LSTMCell, "gru": nnx.GRUCell}[cell]
        self.rnn = nnx.RNN(make(features, hidden, rngs=rngs, param_dtype=F64, dtype=F64))
        self.head = nnx.Linear(hidden, outputs, rngs=rngs, param_dtype=F64, dtype=F64)
        self.read, self.output = read, output

    def __call__(self, x: Any) -> Any:
        y = self.head(self.read(self.rnn(x)))
        return y if self.output is None else self.output(y)


def _tensor(a: Any) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def copy_cell(rnn: torch.nn.Module, c: Any, cell: str) -> None:
    """Flax's ``c`` (an nnx LSTMCell or GRUCell) into torch's one-layer ``rnn``: torch's LSTM gate order is i, f, g, o,
    and Flax keeps one bias, in the recurrent Linear; a GRU's r, z, n are in the same order in both, the recurrent
    n-part inside r ⊙ (·) in both, and Flax's one bias is the input Linear's."""
    t = _tensor
    with torch.no_grad():
        if cell == "lstm":
            rnn.weight_ih_l0.copy_(torch.cat([t(g.kernel[...]).T for g in (c.ii, c.if_, c.ig, c.io)]))
            rnn.weight_hh_l0.copy_(torch.cat([t(g.kernel[...]).T for g in (c.hi, c.hf, c.hg, c.ho)]))
            rnn.bias_ih_l0.zero_()
            rnn.bias_hh_l0.copy_(torch.cat([t(g.bias[...]) for g in (c.hi, c.hf, c.hg, c.ho)]))
        else:
            rnn.weight_ih_l0.copy_(t(c.dense_i.kernel[...]).T)
            rnn.weight_hh_l0.copy_(t(c.dense_h.kernel[...]).T)
            rnn.bias_ih_l0.copy_(t(c.dense_i.bias[...]))
            rnn.bias_hh_l0.zero_()


def copy_linear(linear: torch.nn.Linear, flax_linear: Any) -> None:
    with torch.no_grad():
        linear.weight.copy_(_tensor(flax_linear.kernel[...]).T)
        linear.bias.copy_(_tensor(flax_linear.bias[...]))


def torch_twin(flax_model: FlaxRecurrent, cell: str, read: Any = "relu_last",
               output: Callable[[torch.Tensor], torch.Tensor] | None = None) -> RecurrentHead:  # fmt: skip
    """The same function in PyTorch (float64), with the Flax model's weights (``read`` and ``output``: those of
    ``RecurrentHead``, the twins of the Flax model's)."""
    c = flax_model.rnn.cell
    outputs = flax_model.head.out_features
    twin = RecurrentHead(cell, c.in_features, c.hidden_features, outputs, read=read, output=output).double()
    copy_cell(twin.rnn, c, cell)
    copy_linear(twin.head, flax_model.head)
    return twin


class FlaxFunction(nnx.Module):
    """``tests.models.torch.Function``'s twin: a model whose ``__call__`` is ``fn(*inputs)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *inputs: Any) -> Any:
        return self.fn(*inputs)


class FlaxComposite(nnx.Module):
    """``tests.models.torch.Composite``'s twin: the given parts as attributes, ``__call__`` is ``fn(self, *inputs)``."""

    def __init__(self, fn: Callable[..., Any], **parts: Any) -> None:
        self.fn = fn
        for name, part in parts.items():
            setattr(self, name, part)

    def __call__(self, *inputs: Any) -> Any:
        return self.fn(self, *inputs)
