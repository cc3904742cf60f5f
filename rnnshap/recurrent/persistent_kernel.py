"""The Triton kernel of :mod:`.persistent`: a layer's reverse recurrence over every step, one launch (imported only
where it runs: it needs Triton)."""

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


def reverse_steps(  # noqa: PLR0913 (a kernel's arguments are its pointers, strides and sizes)
    d_out,
    so_k,
    so_t,
    so_p,  # (K, T, P, H) output gradients; last stride 1
    coef,
    sc_t,
    sc_p,  # (T, P, C·H) coefficients; last stride 1
    w,
    sw,  # (G·H, H) recurrent weight as the math's matrix (dh_prev = du W); last stride 1
    du,
    sd_k,
    sd_t,
    sd_p,  # (K, T, P, G·H) out: each step's gate gradients
    dh_next,
    dh_now,
    dc,
    op,  # (N, H) scratch and results: dh entering a step, dh of the step, dc; (N, G·H) GRU's operand
    rows_total,
    pairs,
    steps,
    hidden,
    KIND: tl.constexpr,
    G: tl.constexpr,
    ROWS: tl.constexpr,
    TILE: tl.constexpr,
    INNER: tl.constexpr,
    FLOAT64: tl.constexpr,
):
    """The reverse recurrence of ``rows_total`` rows over ``steps`` steps (:mod:`.persistent`), for one kind."""
    first = tl.program_id(0) * ROWS
    rows = first + tl.arange(0, ROWS)
    live = rows < rows_total
    k = rows // pairs
    p = rows % pairs
    width = G * hidden
    for step in range(steps):
        t = steps - 1 - step
        # -- 1. elementwise, one tile of hidden units at a time
        for j0 in range(0, hidden, TILE):
            j = j0 + tl.arange(0, TILE)
            at = live[:, None] & (j < hidden)[None, :]
            state = rows[:, None] * hidden + j[None, :]
            dh = tl.load(dh_next + state, mask=at, other=0.0)
            dh = dh + tl.load(d_out + (k * so_k + t * so_t + p * so_p)[:, None] + j[None, :], mask=at, other=0.0)
            c = coef + (t * sc_t + p * sc_p)[:, None] + j[None, :]
            o = du + (k * sd_k + t * sd_t + p * sd_p)[:, None] + j[None, :]
            if KIND == 0:  # LSTM: [A_i, A_f, A_g, A_o, A_k, A_c]
                dcv = tl.load(dc + state, mask=at, other=0.0)
                dcv = dcv + dh * tl.load(c + 4 * hidden, mask=at, other=0.0)
                tl.store(o, dcv * tl.load(c, mask=at, other=0.0), mask=at)
                tl.store(o + hidden, dcv * tl.load(c + hidden, mask=at, other=0.0), mask=at)
                tl.store(o + 2 * hidden, dcv * tl.load(c + 2 * hidden, mask=at, other=0.0), mask=at)
                tl.store(o + 3 * hidden, dh * tl.load(c + 3 * hidden, mask=at, other=0.0), mask=at)
                tl.store(dc + state, dcv * tl.load(c + 5 * hidden, mask=at, other=0.0), mask=at)
            elif KIND == 1:  # GRU (reset after, torch's gate order): [A_r, A_z, A_n, A_h, A_a]
                dv = dh * tl.load(c + 2 * hidden, mask=at, other=0.0)
                du_r = dv * tl.load(c, mask=at, other=0.0)
                du_z = dh * tl.load(c + hidden, mask=at, other=0.0)
                tl.store(o, du_r, mask=at)
                tl.store(o + hidden, du_z, mask=at)
                tl.store(o + 2 * hidden, dv, mask=at)
                operand = op + rows[:, None] * width + j[None, :]
                tl.store(operand, du_r, mask=at)
                tl.store(operand + hidden, du_z, mask=at)
                tl.store(operand + 2 * hidden, dv * tl.load(c + 4 * hidden, mask=at, other=0.0), mask=at)
                tl.store(dh_now + state, dh * tl.load(c + 3 * hidden, mask=at, other=0.0), mask=at)
            else:  # Elman: [m]
                tl.store(o, dh * tl.load(c, mask=at, other=0.0), mask=at)
        tl.debug_barrier()
        # -- 2. dh_prev = du W (GRU: dh A_h + [du_r, du_z, dv A_a] W), one tile of its hidden units at a time
        for j0 in range(0, hidden, TILE):
            j = j0 + tl.arange(0, TILE)
            at = live[:, None] & (j < hidden)[None, :]
            state = rows[:, None] * hidden + j[None, :]
            if KIND == 1:
                acc = tl.load(dh_now + state, mask=at, other=0.0)
                source = op + (rows * width)[:, None]
            else:
                acc = tl.full(
                    (ROWS, TILE), 0.0, dh_next.dtype.element_ty
                )  # (tl.full: a builtin, which the interpreter runs beside compiled kernels; tl.zeros is not)
                source = du + (k * sd_k + t * sd_t + p * sd_p)[:, None]
            for i0 in range(0, width, INNER):
                i = i0 + tl.arange(0, INNER)
                a = tl.load(source + i[None, :], mask=live[:, None] & (i < width)[None, :], other=0.0)
                b = tl.load(w + i[:, None] * sw + j[None, :], mask=(i < width)[:, None] & (j < hidden)[None, :], other=0.0)
                if FLOAT64:
                    acc = tl.dot(a, b, acc, out_dtype=tl.float64)  # (float64: no other precision)
                else:
                    acc = tl.dot(a, b, acc, input_precision="ieee")  # (never TensorFloat-32)
            tl.store(dh_next + state, acc, mask=at)
        tl.debug_barrier()


#: compiled for the GPU by Triton
COMPILED = triton.jit(reverse_steps)
#: run by Triton's interpreter (numpy on the CPU), on tensors of any device
INTERPRETED = InterpretedFunction(reverse_steps)
