r"""The reverse-time multiplier recurrences of the fused LSTM, GRU and Elman layers: one step of each, and the loop.

A fused layer's backward runs the DeepLIFT multipliers of its outputs back through time (``docs/recurrent.md``,
"Composing steps through time"). Per step, from the gradient ``dh`` of the hidden state (the step's own output
gradient added) and the step's per-pair coefficients, a step function gives the gate pre-activations' gradients
(the parts of the input gradient of that step) and the gradients of the previous states. The steps are written
here once, on an array namespace; the PyTorch engine (``rnnshap/recurrent/reverse.py``, on :data:`TORCH`) and the
Keras engine on TensorFlow (``rnnshap/engines/keras/fused.py``, on :data:`KERAS`) call them, each through
:func:`reverse_time`, with its own coefficients, weights and input-gradient accumulator.

The coefficients are the per-pair means of the other factor of each product (the exact Shapley rule) times the
Rescale multiplier of the activation it goes through:

- LSTM: ``A_ifg`` (..., 3, H) = [ḡ m_i, c̄_{t−1} m_f, ī m_g], ``A_o`` = mean tanh(c') m_o, ``A_k`` = ō m_tanh(c'),
  ``A_c`` = f̄;
- GRU (``reset_after``): the gates' ``A_gates`` in the backend's order ([r, z] on torch, [z, r] on Keras:
  ``reset_first``), r's = ā m_r (ā the mean of V_n h + b_hn), z's = mean(h − n) m_z; ``A_n`` = mean(1 − z) m_n,
  ``A_h`` = z̄, ``A_a`` = r̄;
- Elman: ``m`` the activation's Rescale multiplier.

Where the two backends used to round differently for the same math (a product of joined blocks against the sum
of the blocks' products), the step says the math through a namespace primitive,
:meth:`~rnnshap.formulas.namespace.Ops.joined_matmul`, whose binding keeps each backend's order: the values of both
engines are the ones they had when each wrote its own loop, bit for bit (``benchmarks/identical_values.py``).
Elementwise products and ``a + b·c`` are correctly rounded, so their order of operands does not matter.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from .namespace import Array, Ops


def lstm_step(
    xp: Ops, dh: Array, dc: Array, a_ifg: Array, a_o: Array, a_k: Array, a_c: Array, *, recurrent: Any, projection: Any = None
) -> tuple[list[Array], Array, Array]:
    r"""One reverse step of an LSTM: ``(du, dh_prev, dc_prev)``, ``du`` = [du_ifg, du_o] the gate pre-activations'
    gradients (the input gradient of the step is ``du`` times the input weight).

    ``dh`` (..., P, H_out) already holds the step's output gradient; ``dc`` (..., P, H). ``recurrent`` is the
    recurrent weight (4H, H_out as a matrix of the math: dh_prev = du W) as :meth:`Ops.weight_blocks` made it, with
    the blocks [i, f, g] and [o]; ``projection`` the projection's (H_out, H), where the layer has one (torch's
    ``proj_size``). Per step::

        dh' = dh W_hr                 (with a projection)
        dc' = dc + dh' A_k            (through tanh(c'))
        du_ifg = dc' [A_i, A_f, A_g];  du_o = dh' A_o
        dh_prev = [du_ifg, du_o] W_hh; dc_prev = dc' A_c
    """
    if projection is not None:
        dh = xp.joined_matmul([dh], projection)
    dc = xp.addcmul(dc, dh, a_k, 1.0)
    du = [xp.merge_last(dc[..., None, :] * a_ifg), dh * a_o]
    return du, xp.joined_matmul(du, recurrent), dc * a_c


def gru_step(
    xp: Ops, dh: Array, a_gates: Array, a_n: Array, a_h: Array, a_a: Array, *, recurrent: Any, reset_first: bool
) -> tuple[list[Array], Array]:
    r"""One reverse step of a GRU with ``reset_after``: ``(du, dh_prev)``, ``du`` = [du_gates, dv] the gradients of
    the gates' pre-activations (in the order of ``a_gates``: [r, z] where ``reset_first``, else [z, r]) and of n's.

    ``recurrent`` is the recurrent weight (3H, H as a matrix of the math, blocks [gates] and [n]) as
    :meth:`Ops.weight_blocks` made it. Per step::

        dv = dh A_n
        du_gates = [dv, dh] [A_r, A_z]      (or [dh, dv] [A_z, A_r])
        dh_prev = dh A_h + [du_gates, dv A_a] W_hh
    """
    dv = dh * a_n
    du_gates = xp.concat([dv, dh] if reset_first else [dh, dv], -1) * a_gates
    return [du_gates, dv], xp.joined_matmul([du_gates, dv * a_a], recurrent, dh * a_h)


def rnn_step(xp: Ops, dh: Array, m: Array, *, recurrent: Any) -> tuple[list[Array], Array]:
    """One reverse step of an Elman layer: ``([du], dh_prev)``, du = dh m, dh_prev = du W_hh."""
    du = dh * m
    return [du], xp.joined_matmul([du], recurrent)


class Gradient(Protocol):
    """Where a driver puts each step's ``du`` (in reverse time): the input gradient's accumulator of a backend."""

    def add(self, *parts: Array) -> None: ...


#: ``step(xp, dh, *other_states, *coefficients) -> (du, dh_prev, *other_previous)``; the same without ``xp``: ``Run``
Step = Callable[..., tuple[Any, ...]]
Run = Callable[..., tuple[Any, ...]]
#: ``through(t, run, states, d_t, coefficients) -> (du, states)``: how step t's pairs go through it
Through = Callable[[int, Run, tuple[Array, ...], Array, Sequence[Array]], tuple[Any, tuple[Array, ...]]]


def reverse_time(
    xp: Ops,
    step: Step,
    steps: int,
    at: Callable[[int], tuple[Array, Sequence[Array]]],
    states: tuple[Array, ...],
    gradient: Gradient,
    through: Through | None = None,
) -> tuple[Array, ...]:
    """The loop of a reverse-time recurrence: for t = T − 1, ..., 0, ``dh += d_t``, one ``step``, its ``du`` to
    ``gradient``; returns the gradients of the initial states.

    ``at(t)`` gives step t's output gradient ``d_t`` and coefficients; ``states`` the gradients of the final states
    (dh first). ``through``, where given, runs a step in place of ``dh + d_t`` and ``step`` on all pairs (the
    PyTorch engine's masked and packed batches, whose pairs past their length pass their states through).
    """

    def run(*args: Array) -> tuple[Any, ...]:
        return step(xp, *args)

    for t in reversed(range(steps)):
        d_t, coefficients = at(t)
        if through is None:
            dh, *rest = states
            du, *new = run(dh + d_t, *rest, *coefficients)
            states = tuple(new)
        else:
            du, states = through(t, run, states, d_t, coefficients)
        gradient.add(*du)
    return states


__all__ = ["Gradient", "Run", "Step", "Through", "gru_step", "lstm_step", "reverse_time", "rnn_step"]
