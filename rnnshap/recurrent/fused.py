r"""One autograd Function per recurrent layer and direction: the fast path.

The forward pass runs the input trajectory and the reference trajectory side by side (one
batch of 2B rows, the input projection of all steps as one matrix product), then computes every
step's multipliers at once over the whole sequence. The backward pass runs the reverse-time
multiplier recurrence: per step a few elementwise products and one small matrix product, and at
the end one large product for the input projection. See ``docs/recurrent.md`` for the formulas.

Every layer takes ``mask``, a (T, B, 1) boolean tensor or None: rows where it is False are past
the end of their sequence (packed input); their states are carried over unchanged and their
outputs are zero.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..rules.elementwise import small_delta_threshold
from .weights import CellWeights

Tensor = torch.Tensor


def secant(derivative: Callable[[Tensor], Tensor], u: Tensor, u_r: Tensor, y: Tensor, y_r: Tensor, smooth: bool) -> Tensor:
    """Rescale multiplier (y − y_r)/(u − u_r), or the derivative where |u − u_r| is tiny.

    The derivative is evaluated only at the (few) tiny-Δ elements.
    """
    delta = u - u_r
    small = delta.abs() <= small_delta_threshold(u.dtype, smooth)
    quotient = (y - y_r).div_(delta.masked_fill_(small, 1.0))
    if bool(small.any()):
        at = (u[small] + u_r[small]) / 2 if smooth else u[small]
        quotient[small] = derivative(at)
    return quotient


def _dsigmoid(u: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return s * (1 - s)


def _dtanh(u: Tensor) -> Tensor:
    return 1 - torch.tanh(u) ** 2


def _drelu(u: Tensor) -> Tensor:
    return (u > 0).to(u.dtype)


def _mid(a: Tensor, b: Tensor) -> Tensor:
    return (a + b) / 2


def _input_projection(both: Tensor, w: CellWeights) -> Tensor:
    """W_ih [x; x_r] + b_ih + b_hh for all steps at once: (T, 2B, G)."""
    bias = None
    if w.b_ih is not None and w.b_hh is not None:
        bias = w.b_ih + w.b_hh
    return torch.nn.functional.linear(both, w.w_ih, bias)


def _add_recurrent(projected: Tensor, h_prev: Tensor, w_hh: Tensor) -> Tensor:
    """projected + W_hh h_prev for all steps, as one matrix product, in place of ``projected``."""
    flat = projected.view(-1, projected.shape[-1])
    return flat.addmm_(h_prev.reshape(-1, h_prev.shape[-1]), w_hh.t()).view(projected.shape)


def _carry(mask: Tensor | None, t: int, new: Tensor, old: Tensor) -> Tensor:
    if mask is None:
        return new
    m = torch.cat([mask[t], mask[t]], dim=0)
    return torch.where(m, new, old)


def _split(t: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    return t[:, :batch], t[:, batch:]


def _native_params(w: CellWeights) -> list[Tensor]:
    params = [w.w_ih, w.w_hh]
    if w.b_ih is not None and w.b_hh is not None:
        params += [w.b_ih, w.b_hh]
    if w.w_hr is not None:
        params.append(w.w_hr)
    return params


def _native(op: Callable[..., Any], w: CellWeights, both: Tensor, state: Any) -> Any:
    """One layer-direction of ``torch.lstm`` / ``gru`` / ``rnn_*`` on (T, 2B, F), torch's own kernel."""
    return op(both, state, _native_params(w), w.b_ih is not None, 1, 0.0, False, False, False)


def _lstm_gates(u: Tensor) -> Tensor:
    """σ on the i, f, o blocks and tanh on the g block of pre-activations (..., 4H)."""
    gates = torch.sigmoid(u)
    hidden = u.shape[-1] // 4
    torch.tanh(u[..., 2 * hidden : 3 * hidden], out=gates[..., 2 * hidden : 3 * hidden])
    return gates


def _lstm_trajectories(w: CellWeights, mask: Tensor | None, x: Tensor, x_ref: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    """Both trajectories as one batch of 2B rows.

    Returns the gate pre-activations u and activations (T, 2B, 4H), the cell state before and
    after each step, the outputs (T, 2B, H_out) and the final h and c. Without a mask, torch's
    LSTM kernel runs the trajectories; the pre-activations of all steps are then one matrix
    product and the cell states one fused multiply-add per step.
    """
    steps = x.shape[0]
    both = torch.cat([x, x_ref], 1)
    projected = _input_projection(both, w)
    if mask is None:
        out, h_last, _ = _native(torch.lstm, w, both, (h[None], c[None]))
        u = _add_recurrent(projected, torch.cat([h[None], out[:-1]]), w.w_hh)
        gates = _lstm_gates(u)
        i, f, g, _ = gates.chunk(4, dim=2)
        ig = i * g
        cells = torch.empty_like(ig)
        previous = torch.empty_like(ig)
        for t in range(steps):
            previous[t] = c
            c = torch.addcmul(ig[t], f[t], c, out=cells[t])
        return u, gates, previous, cells, out, h_last[0], c
    pre, previous_list, cells_list, outs = [], [], [], []
    w_hh_t = w.w_hh.t()
    for t in range(steps):
        u_t = torch.addmm(projected[t], h, w_hh_t)
        i, f, g, o = _lstm_gates(u_t).chunk(4, dim=1)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        if w.w_hr is not None:
            h_new = h_new @ w.w_hr.t()
        previous_list.append(c)
        c = _carry(mask, t, c_new, c)
        h = _carry(mask, t, h_new, h)
        pre.append(u_t)
        cells_list.append(c_new)
        outs.append(h_new * torch.cat([mask[t], mask[t]]).to(h_new.dtype))
    u = torch.stack(pre)
    return u, _lstm_gates(u), torch.stack(previous_list), torch.stack(cells_list), torch.stack(outs), h, c


def _finish(ctx: Any, w: CellWeights, mask: Tensor | None, coefficients: Tensor, batch: int, outputs: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
    """Save what the backward needs and return (outputs, final states, and the same for the
    reference side, not differentiable), splitting the 2B rows into input and reference halves."""
    ctx.save_for_backward(coefficients, mask if mask is not None else torch.empty(0))
    ctx.weights, ctx.has_mask = w, mask is not None
    out_x, out_r = _split(outputs, batch)
    finals_x, finals_r = [s[:batch] for s in states], [s[batch:] for s in states]
    ctx.mark_non_differentiable(out_r, *finals_r)
    return (out_x, *finals_x, out_r, *finals_r)


class FusedLSTM(torch.autograd.Function):
    """One LSTM layer-direction: returns (outputs, h_T, c_T) and, not differentiable, their references."""

    @staticmethod
    def forward(ctx: Any, w: CellWeights, mask: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor, x_ref: Tensor, h0_ref: Tensor, c0_ref: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        batch = x.shape[1]
        hidden = w.w_hh.shape[0] // 4
        trajectories = _lstm_trajectories(w, mask, x, x_ref, torch.cat([h0, h0_ref]), torch.cat([c0, c0_ref]))
        u_all, gates_all, c_prev_all, c_new_all, out_all, h, c = trajectories

        # multipliers of all steps at once; every coefficient is a mean of the two sides times a
        # Rescale multiplier, written straight into its slice of one (T, B, 6H) tensor
        u_x, u_r = _split(u_all, batch)
        a_x, a_r = _split(gates_all, batch)
        derivatives = (_dsigmoid, _dsigmoid, _dtanh, _dsigmoid)
        m = [secant(d, ux, ur, gx, gr, True) for d, ux, ur, gx, gr in zip(derivatives, u_x.chunk(4, 2), u_r.chunk(4, 2), a_x.chunk(4, 2), a_r.chunk(4, 2), strict=True)]
        (i_x, f_x, g_x, o_x), (i_r, f_r, g_r, o_r) = a_x.chunk(4, 2), a_r.chunk(4, 2)
        c_new_x, c_new_r = _split(c_new_all, batch)
        c_prev_x, c_prev_r = _split(c_prev_all, batch)
        k_x, k_r = torch.tanh(c_new_x), torch.tanh(c_new_r)
        m_k = secant(_dtanh, c_new_x, c_new_r, k_x, k_r, True)
        coefficients = x.new_empty((x.shape[0], batch, 6 * hidden))
        blocks = coefficients.split(hidden, dim=2)
        pairs = ((g_x, g_r, m[0]), (c_prev_x, c_prev_r, m[1]), (i_x, i_r, m[2]), (k_x, k_r, m[3]), (o_x, o_r, m_k))
        for block, (a, b, multiplier) in zip(blocks, pairs, strict=False):
            torch.mul(torch.add(a, b), multiplier, out=block)  # A_i, A_f, A_g, A_o, A_k (× 2)
        torch.add(f_x, f_r, out=blocks[5])  # A_c (× 2)
        coefficients.mul_(0.5)
        ctx.hidden = hidden
        return _finish(ctx, w, mask, coefficients, batch, out_all, h, c)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor, d_c: Tensor, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        coefficients, mask = ctx.saved_tensors
        w: CellWeights = ctx.weights
        hidden = ctx.hidden
        a_i, a_f, a_g, a_o, a_k, a_c = coefficients.split(hidden, dim=2)
        dh, dc = d_h, d_c
        du_steps = []
        for t in reversed(range(coefficients.shape[0])):
            d_output = d_out[t] if not ctx.has_mask else d_out[t] * mask[t]
            dh = dh + d_output
            dh_full = dh @ w.w_hr if w.w_hr is not None else dh
            dcc = dc + dh_full * a_k[t]
            du = torch.cat([dcc * a_i[t], dcc * a_f[t], dcc * a_g[t], dh_full * a_o[t]], dim=-1)
            dh_prev, dc_prev = du @ w.w_hh, dcc * a_c[t]
            if ctx.has_mask:
                du = du * mask[t]
                dh_prev = torch.where(mask[t], dh_prev, dh)
                dc_prev = torch.where(mask[t], dc_prev, dc)
            dh, dc = dh_prev, dc_prev
            du_steps.append(du)
        du_all = torch.stack(du_steps[::-1])
        dx = du_all @ w.w_ih
        return None, None, dx, dh, dc, None, None, None


class FusedGRU(torch.autograd.Function):
    """One GRU layer-direction: returns (outputs, h_T) and, not differentiable, their references."""

    @staticmethod
    def forward(ctx: Any, w: CellWeights, mask: Tensor | None, x: Tensor, h0: Tensor, x_ref: Tensor, h0_ref: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        steps, batch = x.shape[0], x.shape[1]
        hidden = w.w_hh.shape[0] // 3
        both = torch.cat([x, x_ref], dim=1)
        projected = torch.nn.functional.linear(both, w.w_ih, w.b_ih)  # (T, 2B, 3H)
        h = torch.cat([h0, h0_ref])
        if mask is None:  # torch's kernel runs both trajectories; everything else is vectorized over time
            out_all, h_last = _native(torch.gru, w, both, h[None])
            h_prev = torch.cat([h[None], out_all[:-1]])
            a_all, px_all, h = torch.nn.functional.linear(h_prev, w.w_hh, w.b_hh), projected, h_last[0]
        else:
            hid, previous, outs = [], [], []
            for t in range(steps):
                a = torch.nn.functional.linear(h, w.w_hh, w.b_hh)  # (2B, 3H): W_h[r,z,n] h + b_h
                px = projected[t]
                r, z = torch.sigmoid(px[:, : 2 * hidden] + a[:, : 2 * hidden]).chunk(2, dim=1)
                n = torch.tanh(px[:, 2 * hidden :] + r * a[:, 2 * hidden :])
                h_new = (1 - z) * n + z * h
                previous.append(h)
                h = _carry(mask, t, h_new, h)
                hid.append(a)
                outs.append(h_new * torch.cat([mask[t], mask[t]]).to(h_new.dtype))
            a_all, px_all, h_prev, out_all = torch.stack(hid), projected, torch.stack(previous), torch.stack(outs)
        a_x, a_r = _split(a_all, batch)
        p_x, p_r = _split(px_all, batch)
        hp_x, hp_r = _split(h_prev, batch)
        u_rz_x = p_x[..., : 2 * hidden] + a_x[..., : 2 * hidden]
        u_rz_r = p_r[..., : 2 * hidden] + a_r[..., : 2 * hidden]
        g_x, g_r = torch.sigmoid(u_rz_x), torch.sigmoid(u_rz_r)
        m_rz = secant(_dsigmoid, u_rz_x, u_rz_r, g_x, g_r, True)
        (r_x, z_x), (r_r, z_r), (m_r, m_z) = g_x.chunk(2, 2), g_r.chunk(2, 2), m_rz.chunk(2, 2)
        an_x, an_r = a_x[..., 2 * hidden :], a_r[..., 2 * hidden :]
        v_x, v_r = p_x[..., 2 * hidden :] + r_x * an_x, p_r[..., 2 * hidden :] + r_r * an_r
        n_x, n_r = torch.tanh(v_x), torch.tanh(v_r)
        m_n = secant(_dtanh, v_x, v_r, n_x, n_r, True)
        coefficients = torch.cat(
            [
                (2 - z_x - z_r) / 2 * m_n,  # dv = dh · A_n
                (_mid(hp_x, hp_r) - _mid(n_x, n_r)) * m_z,  # du_z = dh · A_z
                _mid(z_x, z_r),  # dh_prev (direct) = dh · A_h
                _mid(an_x, an_r) * m_r,  # du_r = dv · A_r
                _mid(r_x, r_r),  # da_n = dv · A_a
            ],
            dim=2,
        )
        ctx.hidden = hidden
        return _finish(ctx, w, mask, coefficients, batch, out_all, h)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        coefficients, mask = ctx.saved_tensors
        w: CellWeights = ctx.weights
        a_n, a_z, a_h, a_r, a_a = coefficients.split(ctx.hidden, dim=2)
        dh = d_h
        dx_steps = []
        for t in reversed(range(coefficients.shape[0])):
            d_output = d_out[t] if not ctx.has_mask else d_out[t] * mask[t]
            dh = dh + d_output
            dv = dh * a_n[t]
            du_r, du_z, da_n = dv * a_r[t], dh * a_z[t], dv * a_a[t]
            d_hidden = torch.cat([du_r, du_z, da_n], dim=-1)
            d_input = torch.cat([du_r, du_z, dv], dim=-1)
            dh_prev = dh * a_h[t] + d_hidden @ w.w_hh
            if ctx.has_mask:
                d_input = d_input * mask[t]
                dh_prev = torch.where(mask[t], dh_prev, dh)
            dh = dh_prev
            dx_steps.append(d_input)
        dx = torch.stack(dx_steps[::-1]) @ w.w_ih
        return None, None, dx, dh, None, None


class FusedRNN(torch.autograd.Function):
    """One Elman RNN layer-direction (tanh or relu)."""

    @staticmethod
    def forward(ctx: Any, w: CellWeights, mask: Tensor | None, relu: bool, x: Tensor, h0: Tensor, x_ref: Tensor, h0_ref: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        steps, batch = x.shape[0], x.shape[1]
        both = torch.cat([x, x_ref], 1)
        projected = _input_projection(both, w)
        act = torch.relu if relu else torch.tanh
        h = torch.cat([h0, h0_ref])
        if mask is None:  # torch's kernel runs both trajectories; the pre-activations are one product
            out_all, h_last = _native(torch.rnn_relu if relu else torch.rnn_tanh, w, both, h[None])
            u_all, h = _add_recurrent(projected, torch.cat([h[None], out_all[:-1]]), w.w_hh), h_last[0]
        else:
            w_hh_t = w.w_hh.t()
            pre, outs = [], []
            for t in range(steps):
                u = torch.addmm(projected[t], h, w_hh_t)
                h_new = act(u)
                h = _carry(mask, t, h_new, h)
                pre.append(u)
                outs.append(h_new * torch.cat([mask[t], mask[t]]).to(h_new.dtype))
            u_all, out_all = torch.stack(pre), torch.stack(outs)
        u_x, u_r = _split(u_all, batch)
        coefficients = secant(_drelu if relu else _dtanh, u_x, u_r, act(u_x), act(u_r), not relu)
        return _finish(ctx, w, mask, coefficients, batch, out_all, h)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        coefficients, mask = ctx.saved_tensors
        w: CellWeights = ctx.weights
        dh = d_h
        du_steps = []
        for t in reversed(range(coefficients.shape[0])):
            d_output = d_out[t] if not ctx.has_mask else d_out[t] * mask[t]
            dh = dh + d_output
            du = dh * coefficients[t]
            dh_prev = du @ w.w_hh
            if ctx.has_mask:
                du = du * mask[t]
                dh_prev = torch.where(mask[t], dh_prev, dh)
            dh = dh_prev
            du_steps.append(du)
        dx = torch.stack(du_steps[::-1]) @ w.w_ih
        return None, None, None, dx, dh, None, None
