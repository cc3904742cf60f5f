r"""The reverse-time multiplier recurrences of the fused LSTM, GRU and Elman layers, as custom operators.

Each layer's backward (``fused.py``) is one call to one of these operators. The explainer asks for the
gradients of all K outputs at once by running the backward under ``torch.func.vmap``; an operator written
inside the vmap would pay vmap's bookkeeping on every one of the ~10 operations of every time step. As a
custom operator with its own vmap rule, the recurrence sees the K axis as an ordinary leading axis of plain
tensors: every operation below broadcasts over leading axes (``...``), the steps are axis -3 of ``d_out``
and the pairs axis -2 of every state. The same code runs without vmap (one output), with no leading axis.

Per time step the loop runs only what depends on the step before (LSTM: 8 operations; GRU: 10; Elman: 3;
see :func:`lstm_recurrence`); the input gradient, which feeds nothing later, is one matrix product per chunk of
steps (:class:`_InputGradient`: all steps on an accelerator, a cache's worth on the CPU). A masked (packed)
batch's rows past their length get an input gradient of exactly 0, set once after the products.

``docs/recurrent.md`` derives the coefficients; ``fused.py`` computes them in the forward.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

Tensor = torch.Tensor

#: functorch's own test of whether a tensor is batched by ``torch.func.vmap`` (absent: every call takes the operator)
_IS_BATCHED: Callable[[Tensor], bool] | None = getattr(torch._C._functorch, "is_batchedtensor", None)


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
    (..., P, H). Per step: dh += d_t; dc' = dc + dh A_k; du_ifg = dc' A_ifg; du_o = dh A_o;
    dh_prev = du_ifg W_hh,ifg + du_o W_hh,o; dc_prev = dc' A_c (8 operations)."""
    steps, pairs = coefficients.shape[:2]
    hidden = w_hh.shape[0] // 4
    a_ifg = coefficients[..., : 3 * hidden].unflatten(-1, (3, hidden))
    a_o, a_k, a_c = coefficients[..., 3 * hidden :].split(hidden, dim=2)
    # the gate blocks [i, f, g] and [o] of the weights apart: du's two parts go through them without being
    # joined first (a join would copy du every step, and change the order of the products' sums)
    w_hh_ifg, w_hh_o = w_hh[: 3 * hidden], w_hh[3 * hidden :]

    def step(dh: Tensor, dc: Tensor, ifg_t: Tensor, o_t: Tensor, k_t: Tensor, c_t: Tensor) -> tuple[Tensor, ...]:
        dh_full = dh @ w_hr if w_hr is not None else dh
        dcc = torch.addcmul(dc, dh_full, k_t)
        du_ifg = (dcc.unsqueeze(-2) * ifg_t).flatten(-2)
        du_o = dh_full * o_t
        return du_ifg, du_o, du_ifg @ w_hh_ifg + du_o @ w_hh_o, dcc * c_t

    dh, dc = d_h, d_c
    dx = _InputGradient([w_ih[: 3 * hidden], w_ih[3 * hidden :]], steps)
    # each step's coefficients as views made at once (unbind), not picked step by step
    per_step = list(zip(a_ifg.unbind(0), a_o.unbind(0), a_k.unbind(0), a_c.unbind(0), d_out.unbind(-3), strict=True))
    for t in reversed(range(steps)):
        *coefficients_t, d_t = per_step[t]
        if active is not None:  # a packed batch: the first n pairs run step t, the rest pass through
            n = active[t]
            du_ifg, du_o, dh_prev, dc_prev = step(_pairs(dh, n) + _pairs(d_t, n), _pairs(dc, n), *(a[:n] for a in coefficients_t))
            dh, dc = torch.cat([dh_prev, dh[..., n:, :]], -2), torch.cat([dc_prev, dc[..., n:, :]], -2)
            du_ifg, du_o = _pad_pairs(du_ifg, pairs), _pad_pairs(du_o, pairs)
        else:
            dh = dh + (d_t * mask[t] if mask is not None else d_t)
            du_ifg, du_o, dh_prev, dc_prev = step(dh, dc, *coefficients_t)
            if mask is not None:  # past its length a pair's states pass through
                dh, dc = torch.where(mask[t], dh_prev, dh), torch.where(mask[t], dc_prev, dc)
            else:
                dh, dc = dh_prev, dc_prev
        dx.add(du_ifg, du_o)
    return dx.result(mask), dh, dc


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
    and the gradients of its outputs (..., T, P, H) and final state (..., P, H). Per step: dh += d_t;
    dv = dh A_n; [du_r, du_z] = [dv, dh] [A_r, A_z]; dh_prev = dh A_h + [du_r, du_z] W_hh,rz + (dv A_a) W_hh,n
    (10 operations)."""
    steps, pairs = coefficients.shape[:2]
    hidden = w_hh.shape[0] // 3
    a_rz = coefficients[..., : 2 * hidden]
    a_n, a_h, a_a = coefficients[..., 2 * hidden :].split(hidden, dim=2)
    # the gate blocks [r, z] and [n] of the weights apart (see lstm_recurrence)
    w_hh_rz, w_hh_n = w_hh[: 2 * hidden], w_hh[2 * hidden :]

    def step(dh: Tensor, rz_t: Tensor, n_t: Tensor, h_t: Tensor, a_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dv = dh * n_t
        du_rz = torch.cat([dv, dh], dim=-1) * rz_t
        return du_rz, dv, dh * h_t + du_rz @ w_hh_rz + (dv * a_t) @ w_hh_n

    dh = d_h
    dx = _InputGradient([w_ih[: 2 * hidden], w_ih[2 * hidden :]], steps)  # [du_r, du_z, dv] through W_ih
    per_step = list(zip(a_rz.unbind(0), a_n.unbind(0), a_h.unbind(0), a_a.unbind(0), d_out.unbind(-3), strict=True))
    for t in reversed(range(steps)):
        *coefficients_t, d_t = per_step[t]
        if active is not None:  # a packed batch: the first n pairs run step t, the rest pass through
            n = active[t]
            du_rz, dv, dh_prev = step(_pairs(dh, n) + _pairs(d_t, n), *(a[:n] for a in coefficients_t))
            dh = torch.cat([dh_prev, dh[..., n:, :]], -2)
            du_rz, dv = _pad_pairs(du_rz, pairs), _pad_pairs(dv, pairs)
        else:
            dh = dh + (d_t * mask[t] if mask is not None else d_t)
            du_rz, dv, dh_prev = step(dh, *coefficients_t)
            dh = torch.where(mask[t], dh_prev, dh) if mask is not None else dh_prev
        dx.add(du_rz, dv)
    return dx.result(mask), dh


def rnn_recurrence(
    coefficients: Tensor, mask: Tensor | None, active: list[int] | None, d_out: Tensor, d_h: Tensor, w_ih: Tensor, w_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """(dx, dh_0) of one Elman layer-direction from its activation's multipliers (T, P, H) and the gradients
    of its outputs (..., T, P, H) and final state (..., P, H). Per step: dh += d_t; du = dh m_t;
    dh_prev = du W_hh (3 operations)."""
    steps, pairs = coefficients.shape[:2]
    dh = d_h
    dx = _InputGradient([w_ih], steps)
    for t, (m_t, d_t) in reversed(list(enumerate(zip(coefficients.unbind(0), d_out.unbind(-3), strict=True)))):
        if active is not None:  # a packed batch: the first n pairs run step t, the rest pass through
            n = active[t]
            du = (_pairs(dh, n) + _pairs(d_t, n)) * m_t[:n]
            dh = torch.cat([du @ w_hh, dh[..., n:, :]], -2)
            du = _pad_pairs(du, pairs)
        else:
            dh = dh + (d_t * mask[t] if mask is not None else d_t)
            du = dh * m_t
            dh = torch.where(mask[t], du @ w_hh, dh) if mask is not None else du @ w_hh
        dx.add(du)
    return dx.result(mask), dh


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
