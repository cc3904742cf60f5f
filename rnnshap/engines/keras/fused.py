r"""The fast path of Keras LSTM and GRU layers: the PyTorch side's ``recurrent/fused.py`` in TensorFlow.

The dual pass runs a block of pairs laid out as ``(copies, samples, references)`` rows: the input
side of a row depends on its sample only and the reference side on its reference only. So the
forward recurrence runs on the distinct rows of each side (``samples + references`` rows instead of
``2 x copies x samples x references``), and one ``tf.custom_gradient`` gives the layer the
DeepLIFT multipliers of the step-by-step dual path (:func:`rnnshap.engines.keras.layers._step`):
Rescale on the gates (:func:`rnnshap.engines.keras.dual.rescale`: the secant, or the derivative at
the midpoint where ``|Δz|`` is below the threshold) and the exact Shapley rule on ``f ⊙ c``,
``i ⊙ g`` and ``o ⊙ tanh(c)``, composed by the reverse-time recurrence

.. math::

    G_o = G_h \bar a, \quad G_c \mathrel{+}= G_h \bar o\, m_{\tanh}(c_t), \quad
    G_f = G_c \bar c_{t-1}, \quad G_i = G_c \bar g, \quad G_g = G_c \bar i, \quad
    G_{c_{t-1}} = G_c \bar f, \quad G_{h_{t-1}} \mathrel{+}= G_z U^\top, \quad G_{x_t} = G_z W^\top

with :math:`\bar v = (v_x + v_r)/2` and :math:`G_z` the gate gradients times their Rescale
multipliers, per pair (for an LSTM; :func:`gru` does the same for a GRU with ``reset_after``).
Used for layers with sigmoid / tanh activations, zero initial states, a batch that is the grid of
pairs (not inside ``TimeDistributed``), and no Keras mask anywhere before them: a mask computed on
the input side is read on the reference side too (``Run.masked``), which makes the reference side
depend on the sample. Anything else takes the step-by-step path.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from .dual import Dual, dsigmoid, dtanh, secant_multiplier

L = keras.layers


def applies(cell: Any, mask: Any, zero_start: bool, grid: tuple[int, int, int] | None, steps: int, rows: int) -> bool:
    """Whether the fast path computes this call of ``cell`` (see the module docstring): an LSTM cell,
    or a GRU cell with ``reset_after`` (Keras 3's default)."""
    if grid is None or mask is not None or not zero_start or steps < 2:
        return False
    if rows != grid[0] * grid[1] * grid[2]:  # TimeDistributed, or rows concatenated inside a layer: not the grid
        return False
    if type(cell) is not L.LSTMCell and not (type(cell) is L.GRUCell and cell.reset_after):
        return False
    return getattr(cell.activation, "__name__", "") == "tanh" and getattr(cell.recurrent_activation, "__name__", "") == "sigmoid"


Grid = tuple[int, int, int]


def _distinct(seq: Dual, grid: Grid) -> tuple[tf.Tensor, tf.Tensor]:
    """The distinct rows of each side of ``seq`` (pairs, T, F): (S, T, F) and (R, T, F)."""
    copies, samples, refs = grid
    shape = (copies, samples, refs, int(seq.x.shape[1]), int(seq.x.shape[2]))
    return tf.reshape(seq.x, shape)[0, :, 0], tf.reshape(seq.r, shape)[0, 0]


def _pairs(rows: tf.Tensor, side: int, grid: Grid) -> tf.Tensor:
    """(S or R, ...) → (pairs, ...): each pair's row of the input (0) or reference (1) side."""
    copies, samples, refs = grid
    shape = tf.shape(rows)[1:]
    grid_rows = rows[:, None] if side == 0 else rows[None, :]
    full = tf.broadcast_to(grid_rows[None], tf.concat([[copies, samples, refs], shape], 0))
    return tf.reshape(full, tf.concat([[copies * samples * refs], shape], 0))


def _per_pair(grid_value: tf.Tensor, grid: Grid) -> tf.Tensor:
    """(1, S, R, ...) → (pairs, ...), the copies of the block repeating it."""
    copies, samples, refs = grid
    shape = tf.shape(grid_value)[3:]
    if copies > 1:
        grid_value = tf.broadcast_to(grid_value, tf.concat([[copies, samples, refs], shape], 0))
    return tf.reshape(grid_value, tf.concat([[copies * samples * refs], shape], 0))


def _split_sides(rows: tf.Tensor, samples: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The stacked distinct rows (S + R, ...) as (1, S, 1, ...) and (1, 1, R, ...): arithmetic on the
    two broadcasts to every pair without either being copied out per pair first."""
    return rows[:samples][None, :, None], rows[samples:][None, None, :]


def _mean(rows: tf.Tensor, samples: int, grid: Grid) -> tf.Tensor:
    """(v_x + v_r)/2 per pair of the stacked distinct rows ``rows`` (S + R, ...)."""
    x, r = _split_sides(rows, samples)
    return _per_pair((x + r) / 2, grid)


def _rescale(y: tf.Tensor, u: tf.Tensor, samples: int, grid: Grid, derivative: Any) -> tf.Tensor:
    """The Rescale multiplier per pair of ``y = f(u)`` from the stacked distinct rows."""
    return _per_pair(secant_multiplier(*_split_sides(y, samples), *_split_sides(u, samples), derivative), grid)


#: elements of one per-pair temporary over a block of steps (16 MiB in float32)
_BLOCK_ELEMENTS = 1 << 22


class _Blocks:
    """Per-pair quantities of the backward recurrence, computed for blocks of steps at once (a few
    large operations instead of many small ones per step), each block's temporaries bounded by
    :data:`_BLOCK_ELEMENTS`. ``compute(t0, t1)`` returns tensors ``(pairs, t1 − t0, ...)``."""

    def __init__(self, steps: int, per_step: int, compute: Any) -> None:
        self.steps, self.size, self.compute = steps, max(1, _BLOCK_ELEMENTS // max(1, per_step)), compute
        self.start: int | None = None
        self.values: list[tf.Tensor] = []

    def at(self, t: int) -> list[tf.Tensor]:
        start = t // self.size * self.size
        if start != self.start:
            self.start, self.values = start, self.compute(start, min(self.steps, start + self.size))
        return [v[:, t - start] for v in self.values]


def _gate_rescale(y: tf.Tensor, u: tf.Tensor, samples: int, grid: Grid, derivatives: tuple[Any, ...]) -> tf.Tensor:
    """Rescale multipliers of gates stacked on the last axis, each with its own derivative."""
    parts = zip(tf.split(y, len(derivatives), axis=-1), tf.split(u, len(derivatives), axis=-1), derivatives, strict=True)
    return tf.concat([_rescale(a, v, samples, grid, derivative) for a, v, derivative in parts], -1)


def lstm(cell: Any, seq: Dual, grid: Grid, weight: Any) -> tuple[list[Dual], list[Dual]]:
    """``cell`` over every step of ``seq`` (pairs, T, F) from zero states: the outputs of every step
    and the final states ``[h, c]``, as ``_cell_sequence`` returns them. ``weight(variable, dtype)``
    reads a variable as the cell's call does."""
    samples = grid[1]
    dtype = seq.x.dtype
    steps, units = int(seq.x.shape[1]), cell.units
    kernel, recurrent_kernel = weight(cell.kernel, dtype), weight(cell.recurrent_kernel, dtype)
    x_rows, r_rows = _distinct(seq, grid)
    both = tf.stop_gradient(tf.concat([x_rows, r_rows], 0))  # forward on the distinct rows of both sides at once
    projected = tf.tensordot(both, kernel, [[2], [0]])
    if cell.use_bias:
        projected = projected + weight(cell.bias, dtype)
    h = tf.zeros((samples + grid[2], units), dtype)
    c = tf.zeros((samples + grid[2], units), dtype)
    zs, acts, cs, tcs, hs = [], [], [c], [], []
    for t in range(steps):
        z = projected[:, t] + tf.matmul(h, recurrent_kernel)
        zi, zf, zg, zo = tf.split(z, 4, axis=-1)
        i, f, g, o = tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo)
        c = f * c + i * g
        tc = tf.tanh(c)
        h = o * tc
        zs.append(z)
        acts.append(tf.concat([i, f, g, o], -1))
        cs.append(c)
        tcs.append(tc)
        hs.append(h)
    out, c_last = tf.stack(hs, 1), cs[-1]
    h_x, h_r = _pairs(out[:samples], 0, grid), _pairs(out[samples:], 1, grid)
    c_x, c_r = _pairs(c_last[:samples], 0, grid), _pairs(c_last[samples:], 1, grid)
    z_all, a_all, c_all, tc_all = tf.stack(zs, 1), tf.stack(acts, 1), tf.stack(cs, 1), tf.stack(tcs, 1)
    gates = (dsigmoid, dsigmoid, dtanh, dsigmoid)  # i, f, g, o

    def per_pair(t0: int, t1: int) -> list[tf.Tensor]:
        """For steps t0..t1: the gates' means and multipliers, tanh(c)'s mean and multiplier, c_{t−1}'s mean."""
        steps_ = slice(t0, t1)
        return [
            _mean(a_all[:, steps_], samples, grid),
            _gate_rescale(a_all[:, steps_], z_all[:, steps_], samples, grid, gates),
            _mean(tc_all[:, steps_], samples, grid),
            _rescale(tc_all[:, steps_], c_all[:, t0 + 1 : t1 + 1], samples, grid, dtanh),
            _mean(c_all[:, steps_], samples, grid),
        ]

    @tf.custom_gradient
    def attributed(seq_x: tf.Tensor) -> Any:
        def backward(grad_h: tf.Tensor | None, grad_c: tf.Tensor | None) -> tf.Tensor:
            grad_h = tf.zeros_like(h_x) if grad_h is None else grad_h
            g_c = tf.zeros_like(c_x) if grad_c is None else grad_c
            g_h = tf.zeros_like(g_c)
            blocks = _Blocks(steps, int(h_x.shape[0]) * 4 * units, per_pair)
            g_inputs = []
            for t in reversed(range(steps)):
                gate_mean, m_gates, tc_mean, m_tc, c_prev_mean = blocks.at(t)
                i_mean, f_mean, g_mean, o_mean = tf.split(gate_mean, 4, axis=-1)
                g_h = g_h + grad_h[:, t]
                g_c = g_c + g_h * o_mean * m_tc
                g_z = tf.concat([g_c * g_mean, g_c * c_prev_mean, g_c * i_mean, g_h * tc_mean], -1) * m_gates
                g_c = g_c * f_mean
                g_h = tf.matmul(g_z, recurrent_kernel, transpose_b=True)
                g_inputs.append(g_z)
            g_z_all = tf.stack(g_inputs[::-1], 1)  # (pairs, T, 4H)
            return tf.tensordot(g_z_all, kernel, [[2], [1]])

        return (tf.identity(h_x), tf.identity(c_x)), backward

    out_x, c_last_x = attributed(seq.x)
    outputs = [Dual(o_x, o_r) for o_x, o_r in zip(tf.unstack(out_x, axis=1), tf.unstack(h_r, axis=1), strict=True)]
    return outputs, [outputs[-1], Dual(c_last_x, c_r)]


def gru(cell: Any, seq: Dual, grid: Grid, weight: Any) -> tuple[list[Dual], list[Dual]]:
    """A GRU cell (``reset_after``) over every step of ``seq`` from a zero state, as :func:`lstm`.

    ``h' = z ⊙ h + (1 − z) ⊙ tanh(p_h + r ⊙ (h U_h + b_h))`` with ``z, r`` sigmoid gates: the
    Shapley rule on the three products and Rescale on the activations, as the step-by-step path."""
    samples = grid[1]
    dtype = seq.x.dtype
    steps, units = int(seq.x.shape[1]), cell.units
    kernel, recurrent_kernel = weight(cell.kernel, dtype), weight(cell.recurrent_kernel, dtype)
    bias = weight(cell.bias, dtype) if cell.use_bias else None
    x_rows, r_rows = _distinct(seq, grid)
    both = tf.stop_gradient(tf.concat([x_rows, r_rows], 0))
    projected = tf.tensordot(both, kernel, [[2], [0]])
    if bias is not None:
        projected = projected + bias[0]
    h = tf.zeros((samples + grid[2], units), dtype)
    saved: dict[str, list[tf.Tensor]] = {name: [] for name in ("h", "pre", "act", "rh", "a", "hh")}
    for t in range(steps):
        rec = tf.matmul(h, recurrent_kernel)
        if bias is not None:
            rec = rec + bias[1]
        p_z, p_r, p_h = tf.split(projected[:, t], 3, axis=-1)
        r_z, r_r, r_h = tf.split(rec, 3, axis=-1)
        pre = tf.concat([p_z + r_z, p_r + r_r], -1)
        act = tf.sigmoid(pre)
        z, r = tf.split(act, 2, axis=-1)
        a = p_h + r * r_h
        hh = tf.tanh(a)
        saved["h"].append(h)
        for name, value in (("pre", pre), ("act", act), ("rh", r_h), ("a", a), ("hh", hh)):
            saved[name].append(value)
        h = z * h + (1 - z) * hh
        saved.setdefault("out", []).append(h)
    out = tf.stack(saved["out"], 1)  # (S + R, T, H)
    h_x, h_r = _pairs(out[:samples], 0, grid), _pairs(out[samples:], 1, grid)
    stacked = {name: tf.stack(values, 1) for name, values in saved.items()}

    def per_pair(t0: int, t1: int) -> list[tf.Tensor]:
        """For steps t0..t1: z's and r's means and multipliers, h̄_{t−1} − h̃̄, tanh's multiplier, the mean of h U_h + b_h."""
        at = {name: value[:, t0:t1] for name, value in stacked.items()}
        return [
            _mean(at["act"], samples, grid),
            _rescale(at["act"], at["pre"], samples, grid, dsigmoid),
            _mean(at["h"], samples, grid) - _mean(at["hh"], samples, grid),
            _rescale(at["hh"], at["a"], samples, grid, dtanh),
            _mean(at["rh"], samples, grid),
        ]

    @tf.custom_gradient
    def attributed(seq_x: tf.Tensor) -> Any:
        def backward(grad_h: tf.Tensor | None) -> tf.Tensor:
            grad_h = tf.zeros_like(h_x) if grad_h is None else grad_h
            g_h = tf.zeros_like(h_x[:, 0])
            blocks = _Blocks(steps, int(h_x.shape[0]) * 3 * units, per_pair)
            g_inputs = []
            for t in reversed(range(steps)):
                act_mean, m_act, h_minus_hh, m_hh, rh_mean = blocks.at(t)
                z_mean, r_mean = tf.split(act_mean, 2, axis=-1)
                g_h = g_h + grad_h[:, t]
                g_a = g_h * (1 - z_mean) * m_hh
                g_pre = tf.concat([g_h * h_minus_hh, g_a * rh_mean], -1) * m_act
                g_h = g_h * z_mean + tf.matmul(tf.concat([g_pre, g_a * r_mean], -1), recurrent_kernel, transpose_b=True)
                g_inputs.append(tf.concat([g_pre, g_a], -1))
            g_p = tf.stack(g_inputs[::-1], 1)  # (pairs, T, 3H)
            return tf.tensordot(g_p, kernel, [[2], [1]])

        return tf.identity(h_x), backward

    out_x = attributed(seq.x)
    outputs = [Dual(o_x, o_r) for o_x, o_r in zip(tf.unstack(out_x, axis=1), tf.unstack(h_r, axis=1), strict=True)]
    return outputs, [outputs[-1]]
