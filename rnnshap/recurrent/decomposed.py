r"""Recurrent layers step by step through the elementwise rules: the slow path and cross-check.

Each step is written with :func:`~rnnshap.rules.rescale` on the gates and
:func:`~rnnshap.rules.product` on the gate ⊙ state products, and autograd composes the steps.
The outputs and signatures match the fused Functions in ``fused.py``, so the two can be swapped
(``RecurrentLayer(kind, fused=False)``) and compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rules.elementwise import product, rescale
from .weights import CellWeights

Tensor = torch.Tensor


def _affine(x: Tensor, h: Tensor, w: CellWeights) -> Tensor:
    return F.linear(x, w.w_ih, w.b_ih) + F.linear(h, w.w_hh, w.b_hh)


def carry(mask: Tensor | None, t: int, new: Tensor, old: Tensor) -> Tensor:
    """The state after step ``t``: rows past the end of their sequence keep the old one."""
    return new if mask is None else torch.where(mask[t], new, old)


def emit(mask: Tensor | None, t: int, h: Tensor) -> Tensor:
    """The output of step ``t``: zero for rows past the end of their sequence."""
    return h if mask is None else h * mask[t].to(h.dtype)


def lstm_step(
    w: CellWeights, x: Tensor, h: Tensor, c: Tensor, x_r: Tensor, h_r: Tensor, c_r: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One LSTM step on both sides: returns (h', c', h'_r, c'_r)."""
    u, u_r = _affine(x, h, w), _affine(x_r, h_r, w).detach()
    (ui, uf, ug, uo), (ui_r, uf_r, ug_r, uo_r) = u.chunk(4, -1), u_r.chunk(4, -1)
    i, i_r = rescale(torch.sigmoid, ui, ui_r)
    f, f_r = rescale(torch.sigmoid, uf, uf_r)
    g, g_r = rescale(torch.tanh, ug, ug_r)
    o, o_r = rescale(torch.sigmoid, uo, uo_r)
    fc, fc_r = product(f, c, f_r, c_r)
    ig, ig_r = product(i, g, i_r, g_r)
    c_new, c_new_r = fc + ig, fc_r + ig_r
    k, k_r = rescale(torch.tanh, c_new, c_new_r)
    h_new, h_new_r = product(o, k, o_r, k_r)
    if w.w_hr is not None:
        h_new, h_new_r = F.linear(h_new, w.w_hr), F.linear(h_new_r, w.w_hr)
    return h_new, c_new, h_new_r, c_new_r


def gru_step(w: CellWeights, x: Tensor, h: Tensor, x_r: Tensor, h_r: Tensor) -> tuple[Tensor, Tensor]:
    """One GRU step on both sides: returns (h', h'_r)."""
    px, px_r = F.linear(x, w.w_ih, w.b_ih), F.linear(x_r, w.w_ih, w.b_ih)
    a, a_r = F.linear(h, w.w_hh, w.b_hh), F.linear(h_r, w.w_hh, w.b_hh)
    hidden = w.w_hh.shape[0] // 3
    r, r_r = rescale(torch.sigmoid, px[..., :hidden] + a[..., :hidden], px_r[..., :hidden] + a_r[..., :hidden])
    update = slice(hidden, 2 * hidden)
    z, z_r = rescale(torch.sigmoid, px[..., update] + a[..., update], px_r[..., update] + a_r[..., update])
    q, q_r = product(r, a[..., 2 * hidden :], r_r, a_r[..., 2 * hidden :])
    n, n_r = rescale(torch.tanh, px[..., 2 * hidden :] + q, px_r[..., 2 * hidden :] + q_r)
    keep, keep_r = product(1 - z, n, 1 - z_r, n_r)
    carry, carry_r = product(z, h, z_r, h_r)
    return keep + carry, keep_r + carry_r


def rnn_step(w: CellWeights, relu: bool, x: Tensor, h: Tensor, x_r: Tensor, h_r: Tensor) -> tuple[Tensor, Tensor]:
    """One Elman step on both sides: returns (h', h'_r)."""
    act = torch.relu if relu else torch.tanh
    return rescale(act, _affine(x, h, w), _affine(x_r, h_r, w), smooth=not relu)


def lstm_layer(
    w: CellWeights, mask: Tensor | None, x: Tensor, h: Tensor, c: Tensor, x_r: Tensor, h_r: Tensor, c_r: Tensor
) -> tuple[Tensor, ...]:
    """(outputs, h_T, c_T, reference outputs, reference h_T, reference c_T), like ``fused.FusedLSTM``."""
    outs, outs_r = [], []
    for t in range(x.shape[0]):
        h_new, c_new, h_new_r, c_new_r = lstm_step(w, x[t], h, c, x_r[t], h_r, c_r)
        h, c = carry(mask, t, h_new, h), carry(mask, t, c_new, c)
        h_r, c_r = carry(mask, t, h_new_r, h_r), carry(mask, t, c_new_r, c_r)
        outs.append(emit(mask, t, h_new))
        outs_r.append(emit(mask, t, h_new_r))
    return torch.stack(outs), h, c, torch.stack(outs_r), h_r, c_r


def gru_layer(w: CellWeights, mask: Tensor | None, x: Tensor, h: Tensor, x_r: Tensor, h_r: Tensor) -> tuple[Tensor, ...]:
    """(outputs, h_T, reference outputs, reference h_T), like ``fused.FusedGRU``."""
    outs, outs_r = [], []
    for t in range(x.shape[0]):
        h_new, h_new_r = gru_step(w, x[t], h, x_r[t], h_r)
        h, h_r = carry(mask, t, h_new, h), carry(mask, t, h_new_r, h_r)
        outs.append(emit(mask, t, h_new))
        outs_r.append(emit(mask, t, h_new_r))
    return torch.stack(outs), h, torch.stack(outs_r), h_r


def rnn_layer(
    w: CellWeights, mask: Tensor | None, relu: bool, x: Tensor, h: Tensor, x_r: Tensor, h_r: Tensor
) -> tuple[Tensor, ...]:
    """(outputs, h_T, reference outputs, reference h_T), like ``fused.FusedRNN``."""
    outs, outs_r = [], []
    for t in range(x.shape[0]):
        h_new, h_new_r = rnn_step(w, relu, x[t], h, x_r[t], h_r)
        h, h_r = carry(mask, t, h_new, h), carry(mask, t, h_new_r, h_r)
        outs.append(emit(mask, t, h_new))
        outs_r.append(emit(mask, t, h_new_r))
    return torch.stack(outs), h, torch.stack(outs_r), h_r
