r"""One LSTM or GRU cell step, fully decomposed: every new-state unit against every input.

:func:`explain_cell_step` returns, for every unit :math:`j` of the new hidden state (and, for an
LSTM, of the new cell state), its DeepLIFT attribution to each unit of the input :math:`x`, of the
previous hidden state :math:`h` and of the previous cell state :math:`c`, as full matrices. Row
:math:`j` of the three matrices sums to :math:`h'_j - h'_{r,j}` (or :math:`c'_j - c'_{r,j}`). The
formulas are in ``docs/recurrent.md``: gates by Rescale through their linear pre-activation (one
denominator per output unit), gate ⊙ state products by the exact two-player Shapley rule (the midpoints from
:func:`rnnshap.formulas.pairs.midpoint`, the σ/tanh multipliers from the fused layers' ``smooth_secant``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..formulas.pairs import midpoint
from ..formulas.torch_ops import TORCH
from .fused import SIGMOID, TANH, smooth_secant

Tensor = torch.Tensor


@dataclass
class CellStepAttribution:
    """Attribution matrices of one cell step.

    ``hidden["x"]`` has shape (batch, hidden, input features): entry ``[b, j, k]`` is the part of
    ``h'_j − h'_{r,j}`` credited to ``x_k − x_{r,k}``; ``hidden["h"]`` and ``hidden["c"]`` are
    (batch, hidden, hidden). ``cell`` holds the same for the new cell state (LSTM only).
    ``delta_hidden`` / ``delta_cell`` are the changes the rows sum to.
    """

    hidden: dict[str, Tensor]
    delta_hidden: Tensor
    cell: dict[str, Tensor] | None = None
    delta_cell: Tensor | None = None


def _rows(weight: Tensor, scale: Tensor, delta: Tensor) -> Tensor:
    """[b, j, k] = scale[b, j] · weight[j, k] · delta[b, k]."""
    return scale[:, :, None] * weight[None, :, :] * delta[:, None, :]


def _affine(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
    return nn.functional.linear(x, w_ih, b_ih) + nn.functional.linear(h, w_hh, b_hh)


@torch.no_grad()
def explain_cell_step(
    cell: nn.LSTMCell | nn.GRUCell,
    x: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    x_ref: Tensor,
    hx_ref: Tensor | tuple[Tensor, Tensor],
) -> CellStepAttribution:
    """Decompose one step of ``cell`` from ``(x, hx)`` against the reference ``(x_ref, hx_ref)``.

    ``hx`` is ``(h, c)`` for an LSTMCell and ``h`` for a GRUCell; all tensors are batched
    (batch, features). References broadcast against the inputs.
    """
    if isinstance(cell, nn.LSTMCell):
        (h, c), (h_r, c_r) = hx, hx_ref  # type: ignore[misc]
        references = [torch.broadcast_tensors(r, t)[0] for r, t in ((x_ref, x), (h_r, h), (c_r, c))]
        return _lstm(cell, x, h, c, *references)
    if isinstance(cell, nn.GRUCell):
        assert isinstance(hx, Tensor) and isinstance(hx_ref, Tensor)
        return _gru(cell, x, hx, torch.broadcast_tensors(x_ref, x)[0], torch.broadcast_tensors(hx_ref, hx)[0])
    raise TypeError(f"explain_cell_step takes an nn.LSTMCell or nn.GRUCell, not {type(cell).__name__}")


def _lstm(cell: nn.LSTMCell, x: Tensor, h: Tensor, c: Tensor, x_r: Tensor, h_r: Tensor, c_r: Tensor) -> CellStepAttribution:
    w_ih, w_hh = cell.weight_ih, cell.weight_hh
    u = _affine(x, h, w_ih, w_hh, cell.bias_ih, cell.bias_hh).chunk(4, 1)
    u_r = _affine(x_r, h_r, w_ih, w_hh, cell.bias_ih, cell.bias_hh).chunk(4, 1)
    acts = (torch.sigmoid, torch.sigmoid, torch.tanh, torch.sigmoid)
    kinds = (SIGMOID, SIGMOID, TANH, SIGMOID)
    gates = [a(v) for a, v in zip(acts, u, strict=False)]
    gates_r = [a(v) for a, v in zip(acts, u_r, strict=False)]
    m = [smooth_secant(v, v_r, g, g_r, *kind) for kind, v, v_r, g, g_r in zip(kinds, u, u_r, gates, gates_r, strict=True)]
    (i, f, g, o), (i_r, f_r, g_r, o_r) = gates, gates_r
    c_new, c_new_r = f * c + i * g, f_r * c_r + i_r * g_r
    k, k_r = torch.tanh(c_new), torch.tanh(c_new_r)
    m_k = smooth_secant(c_new, c_new_r, k, k_r, *TANH)
    w_i, w_f, w_g, w_o = w_ih.chunk(4, 0)
    v_i, v_f, v_g, v_o = w_hh.chunk(4, 0)
    dx, dh, dc = x - x_r, h - h_r, c - c_r
    # c' = f ⊙ c + i ⊙ g: Shapley on both products, Rescale on each gate through its pre-activation
    scale_f, scale_i, scale_g = midpoint(TORCH, c, c_r) * m[1], midpoint(TORCH, g, g_r) * m[0], midpoint(TORCH, i, i_r) * m[2]
    cell_x = _rows(w_f, scale_f, dx) + _rows(w_i, scale_i, dx) + _rows(w_g, scale_g, dx)
    cell_h = _rows(v_f, scale_f, dh) + _rows(v_i, scale_i, dh) + _rows(v_g, scale_g, dh)
    cell_c = torch.diag_embed(midpoint(TORCH, f, f_r) * dc)
    # h' = o ⊙ tanh(c'): Shapley on the product, Rescale on o and on tanh
    scale_o, through_cell = midpoint(TORCH, k, k_r) * m[3], (midpoint(TORCH, o, o_r) * m_k)[:, :, None]
    hidden = {
        "x": _rows(w_o, scale_o, dx) + through_cell * cell_x,
        "h": _rows(v_o, scale_o, dh) + through_cell * cell_h,
        "c": through_cell * cell_c,
    }
    h_new_delta = o * k - o_r * k_r
    return CellStepAttribution(hidden, h_new_delta, {"x": cell_x, "h": cell_h, "c": cell_c}, c_new - c_new_r)


def _gru(cell: nn.GRUCell, x: Tensor, h: Tensor, x_r: Tensor, h_r: Tensor) -> CellStepAttribution:
    size = cell.hidden_size
    w_r, w_z, w_n = cell.weight_ih.chunk(3, 0)
    v_r, v_z, v_n = cell.weight_hh.chunk(3, 0)
    px, px_r = nn.functional.linear(x, cell.weight_ih, cell.bias_ih), nn.functional.linear(x_r, cell.weight_ih, cell.bias_ih)
    a, a_r = nn.functional.linear(h, cell.weight_hh, cell.bias_hh), nn.functional.linear(h_r, cell.weight_hh, cell.bias_hh)
    u_rz, u_rz_r = px[:, : 2 * size] + a[:, : 2 * size], px_r[:, : 2 * size] + a_r[:, : 2 * size]
    g, g_r = torch.sigmoid(u_rz), torch.sigmoid(u_rz_r)
    m_r, m_z = smooth_secant(u_rz, u_rz_r, g, g_r, *SIGMOID).chunk(2, 1)
    (r, z), (r_r, z_r) = g.chunk(2, 1), g_r.chunk(2, 1)
    a_n, a_n_r = a[:, 2 * size :], a_r[:, 2 * size :]
    v, v_ref = px[:, 2 * size :] + r * a_n, px_r[:, 2 * size :] + r_r * a_n_r
    n, n_r = torch.tanh(v), torch.tanh(v_ref)
    m_n = smooth_secant(v, v_ref, n, n_r, *TANH)
    dx, dh = x - x_r, h - h_r
    # h' = (1 − z) ⊙ n + z ⊙ h; n = tanh(W_n x + b_in + r ⊙ (V_n h + b_hn))
    scale_z = ((h + h_r) - (n + n_r)) / 2 * m_z
    scale_n = (2 - z - z_r) / 2 * m_n
    scale_r = scale_n * (a_n + a_n_r) / 2 * m_r
    scale_a = scale_n * (r + r_r) / 2
    carried = midpoint(TORCH, z, z_r) * dh
    hidden = {
        "x": _rows(w_z, scale_z, dx) + _rows(w_n, scale_n, dx) + _rows(w_r, scale_r, dx),
        "h": _rows(v_z, scale_z, dh) + _rows(v_n, scale_a, dh) + _rows(v_r, scale_r, dh) + torch.diag_embed(carried),
    }
    delta = (1 - z) * n + z * h - ((1 - z_r) * n_r + z_r * h_r)
    return CellStepAttribution(hidden, delta)
