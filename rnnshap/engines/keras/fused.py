r"""The fast path of Keras LSTM and GRU layers: the PyTorch side's ``recurrent/fused.py`` in TensorFlow.

The dual pass runs a block of pairs laid out as ``(copies, samples, references)`` rows: the input
side of a row depends on its sample only and the reference side on its reference only. So the
forward recurrence runs on the distinct rows of each side (``samples + references`` rows instead of
``2 x copies x samples x references``), and one ``tf.custom_gradient`` gives the layer the
DeepLIFT multipliers of the step-by-step dual path (:func:`rnnshap.engines.keras.recurrent._step`):
Rescale on the gates (:func:`rnnshap.engines.keras.dual.rescale`: the quotient, or the secant in
closed form where ``|Δz|`` is below the threshold) and the exact Shapley rule on ``f ⊙ c``,
``i ⊙ g`` and ``o ⊙ tanh(c)``, composed by the reverse-time recurrence

.. math::

    G_o = G_h \bar a, \quad G_c \mathrel{+}= G_h \bar o\, m_{\tanh}(c_t), \quad
    G_f = G_c \bar c_{t-1}, \quad G_i = G_c \bar g, \quad G_g = G_c \bar i, \quad
    G_{c_{t-1}} = G_c \bar f, \quad G_{h_{t-1}} \mathrel{+}= G_z U^\top, \quad G_{x_t} = G_z W^\top

with :math:`\bar v = (v_x + v_r)/2` and :math:`G_z` the gate gradients times their Rescale
multipliers, per pair (for an LSTM; :func:`gru` does the same for a GRU with ``reset_after``). The recurrence is
the PyTorch engine's, written once in :mod:`rnnshap.formulas.recurrence` (each step and the loop) and run here on
:data:`~rnnshap.formulas.keras_ops.KERAS`; this module computes its coefficients, per block of steps
(:class:`_Blocks`), in Keras' gate order (i, f, c, o; z, r, h), and the input gradient as one product over all
steps (:class:`_AllStepsInputGradient`).
Used for layers with sigmoid / tanh activations, zero initial states, a batch that is the grid of
pairs (not inside ``TimeDistributed``), and no Keras mask anywhere before them: a mask computed on
the input side is read on the reference side too (``Run.masked``), which makes the reference side
depend on the sample. Anything else takes the step-by-step path.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import keras
import tensorflow as tf

from ...formulas import recurrence
from ...formulas.keras_ops import KERAS
from ...formulas.recurrence import reverse_time
from ...formulas.secant import CLOSED_FORMS, columns_secant
from . import backend
from .dual import Dual, small_delta_threshold

L = keras.layers


def applies(cell: Any, mask: Any, zero_start: bool, grid: tuple[int, int, int] | None, steps: int, rows: int) -> bool:
    """Whether the fast path computes this call of ``cell`` (see the module docstring): an LSTM cell,
    or a GRU cell with ``reset_after`` (Keras 3's default)."""
    if backend.name() != "tensorflow":  # (its compiled kernel and custom gradient are TensorFlow's)
        return False
    if grid is None or mask is not None or not zero_start or steps < 2:
        return False
    if rows != grid[0] * grid[1] * grid[2]:  # TimeDistributed, or rows concatenated inside a layer: not the grid
        return False
    if type(cell) is not L.LSTMCell and not (type(cell) is L.GRUCell and cell.reset_after):
        return False
    return getattr(cell.activation, "__name__", "") == "tanh" and getattr(cell.recurrent_activation, "__name__", "") == "sigmoid"


Grid = tuple[int, int, int]
#: ``weight(variable, dtype)``: a layer's variable as its call reads it (``activations.weight``)
Weight = Callable[[Any, tf.DType], tf.Tensor]


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


def _half_mean(rows: tf.Tensor, samples: int, grid: Grid) -> tf.Tensor:
    """(v_x + v_r)/2 per pair of the stacked distinct rows ``rows`` (S + R, ...), the ½ taken on the rows."""
    x, r = _split_sides(rows * 0.5, samples)
    return _per_pair(x + r, grid)


def _secants(
    y: tf.Tensor, u: tf.Tensor, columns: list[tuple[int, str]], samples: int, grid: Grid, factors: tf.Tensor | None = None
) -> tf.Tensor:
    r"""Per pair, the Rescale multiplier of every column of ``y = act(u)`` (stacked distinct rows
    (S + R, n, W); ``columns``: (width, "sigmoid" | "tanh") from the left), times the mean of
    ``factors`` (S + R, n, W) over the pair's two sides where given (the Shapley share of the
    product the activation enters): (pairs, n, W).

    The where-form :func:`rnnshap.formulas.secant.columns_secant` (the quotient, or below the threshold the secant
    in closed form from the constants of each column), in one pass over all columns; the mean's ½ is taken on the
    distinct rows.
    """
    pairs_elements = grid[0] * grid[1] * grid[2] * int(y.shape[1]) * int(y.shape[2])
    if pairs_elements >= XLA_ELEMENTS and _xla_compiles():
        global _COMPILED
        _COMPILED = True
        return _secants_compiled(y, u, columns, samples, grid, factors)
    return _secants_body(y, u, columns, samples, grid, factors)


#: a block of per-pair coefficients of at least this many elements is computed by one XLA-compiled
#: function: a dozen elementwise passes fused into one, where each would read and write the whole
#: block (memory-bound: an LSTM at 16 samples took 1.9-2x its compiled floor, 1.1-1.4x since). Below
#: it, the compile time (about half a second, once per block shape) would not be paid back.
XLA_ELEMENTS = 1 << 20


def _xla_compiles() -> bool:
    """Whether TensorFlow compiles with XLA here (tried once)."""
    global _XLA
    if _XLA is None:
        try:
            tf.function(lambda t: t * 2 + 1, jit_compile=True)(tf.ones((2,)))
            _XLA = True
        except Exception:  # noqa: BLE001 - a TensorFlow build without XLA's CPU or GPU compiler: the plain graph
            _XLA = False
    return _XLA


_XLA: bool | None = None
#: whether a graph has been built with the compiled coefficients
_COMPILED = False


def give_up_compiling() -> bool:
    """After an error running a graph: stop compiling the coefficients, and say whether any graph
    used them (then the caller traces its graph again, without; otherwise the error is not ours)."""
    global _XLA, _COMPILED
    used, _XLA, _COMPILED = _COMPILED, False, False
    return used


def _secants_body(
    y: tf.Tensor, u: tf.Tensor, columns: list[tuple[int, str]], samples: int, grid: Grid, factors: tf.Tensor | None
) -> tf.Tensor:
    dtype = y.dtype
    mu, kappa, c = (
        tf.constant([value for width, kind in columns for value in [CLOSED_FORMS[kind][k]] * width], dtype) for k in range(3)
    )
    half = 0.5 if factors is not None else 1.0
    threshold = small_delta_threshold(dtype, True)
    u_x, u_r = _split_sides(u, samples)
    y_x, y_r = _split_sides(y * half, samples)
    centred_x, centred_r = _split_sides(y - mu, samples)
    m = columns_secant(KERAS, y_x - y_r, u_x - u_r, centred_x * half, centred_r, kappa * half, c, threshold)
    if factors is not None:
        f_x, f_r = _split_sides(factors, samples)
        m = m * (f_x + f_r)
    return _per_pair(m, grid)


_secants_compiled = tf.function(_secants_body, jit_compile=True, autograph=False)


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


class _AllStepsInputGradient:
    """The input gradient of every step: each step's ``du`` (its parts, in reverse time) kept, then one product of
    all steps' with the kernel (F, 4H or 3H), read transposed: (pairs, T, F)."""

    def __init__(self, kernel: tf.Tensor) -> None:
        self.kernel = kernel
        self.steps: list[tuple[tf.Tensor, ...]] = []

    def add(self, *parts: tf.Tensor) -> None:
        self.steps.append(parts)

    def result(self) -> tf.Tensor:
        joined = tf.concat([tf.stack(part[::-1], 1) for part in zip(*self.steps, strict=True)], -1)  # (pairs, T, 4H)
        return tf.tensordot(joined, self.kernel, [[2], [1]])


def lstm(cell: Any, seq: Dual, grid: Grid, weight: Weight) -> tuple[list[Dual], list[Dual]]:
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

    # i, f, g, o, tanh(c)
    columns = [(units, "sigmoid"), (units, "sigmoid"), (units, "tanh"), (units, "sigmoid"), (units, "tanh")]

    def per_pair(t0: int, t1: int) -> list[tf.Tensor]:
        """For steps t0..t1, per pair: the gates' coefficients (each gate's Rescale multiplier times
        the mean of the factor it multiplies: ḡ, c̄_{t−1}, ī, mean tanh(c)), tanh(c)'s (its multiplier
        times ō), and f̄."""
        steps_ = slice(t0, t1)
        a, tc = a_all[:, steps_], tc_all[:, steps_]
        i, f, g, o = tf.split(a, 4, axis=-1)
        factors = tf.concat([g, c_all[:, steps_], i, tc, o], -1)  # on the distinct rows
        inputs = tf.concat([z_all[:, steps_], c_all[:, t0 + 1 : t1 + 1]], -1)
        both = _secants(tf.concat([a, tc], -1), inputs, columns, samples, grid, factors)
        a_ifg = tf.reshape(both[..., : 3 * units], (-1, t1 - t0, 3, units))
        return [a_ifg, both[..., 3 * units : 4 * units], both[..., 4 * units :], _half_mean(f, samples, grid)]

    @tf.custom_gradient
    def attributed(seq_x: tf.Tensor) -> Any:
        def backward(grad_h: tf.Tensor | None, grad_c: tf.Tensor | None) -> tf.Tensor:
            grad_h = tf.zeros_like(h_x) if grad_h is None else grad_h
            g_c = tf.zeros_like(c_x) if grad_c is None else grad_c
            blocks = _Blocks(steps, int(h_x.shape[0]) * 6 * units, per_pair)
            step = partial(recurrence.lstm_step, recurrent=KERAS.weight_blocks(recurrent_kernel, [3 * units, units], True))
            dx = _AllStepsInputGradient(kernel)
            reverse_time(KERAS, step, steps, lambda t: (grad_h[:, t], blocks.at(t)), (tf.zeros_like(g_c), g_c), dx)
            return dx.result()

        return (tf.identity(h_x), tf.identity(c_x)), backward

    out_x, c_last_x = attributed(seq.x)
    outputs = [Dual(o_x, o_r) for o_x, o_r in zip(tf.unstack(out_x, axis=1), tf.unstack(h_r, axis=1), strict=True)]
    return outputs, [outputs[-1], Dual(c_last_x, c_r)]


def gru(cell: Any, seq: Dual, grid: Grid, weight: Weight) -> tuple[list[Dual], list[Dual]]:
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

    columns = [(2 * units, "sigmoid"), (units, "tanh")]  # z and r, tanh

    def per_pair(t0: int, t1: int) -> list[tf.Tensor]:
        """For steps t0..t1, per pair: z's and r's coefficients (their multipliers times the means of
        h_{t−1} − h̃ and of h U_h + b_h), tanh's (its multiplier times 1 − z̄), and z̄, r̄."""
        at = {name: value[:, t0:t1] for name, value in stacked.items()}
        z = at["act"][..., :units]
        factors = tf.concat([at["h"] - at["hh"], at["rh"], 1 - z], -1)  # on the distinct rows
        inputs = tf.concat([at["pre"], at["a"]], -1)
        both = _secants(tf.concat([at["act"], at["hh"]], -1), inputs, columns, samples, grid, factors)
        z_mean, r_mean = tf.split(_half_mean(at["act"], samples, grid), 2, axis=-1)
        return [both[..., : 2 * units], both[..., 2 * units :], z_mean, r_mean]

    @tf.custom_gradient
    def attributed(seq_x: tf.Tensor) -> Any:
        def backward(grad_h: tf.Tensor | None) -> tf.Tensor:
            grad_h = tf.zeros_like(h_x) if grad_h is None else grad_h
            blocks = _Blocks(steps, int(h_x.shape[0]) * 5 * units, per_pair)
            recurrent_blocks = KERAS.weight_blocks(recurrent_kernel, [2 * units, units], True)
            step = partial(recurrence.gru_step, recurrent=recurrent_blocks, reset_first=False)  # (Keras' gates: z, r)
            dx = _AllStepsInputGradient(kernel)
            reverse_time(KERAS, step, steps, lambda t: (grad_h[:, t], blocks.at(t)), (tf.zeros_like(h_x[:, 0]),), dx)
            return dx.result()

        return tf.identity(h_x), backward

    out_x = attributed(seq.x)
    outputs = [Dual(o_x, o_r) for o_x, o_r in zip(tf.unstack(out_x, axis=1), tf.unstack(h_r, axis=1), strict=True)]
    return outputs, [outputs[-1]]
