r"""The recurrent layers on :class:`~rnnshap.engines.keras.dual.Dual` tensors, by the rules of ``docs/recurrent.md``.

``LSTM``, ``GRU``, ``SimpleRNN``, ``RNN`` over their cells or ``StackedRNNCells``, ``ConvLSTM1D/2D/3D``,
``Bidirectional``, and the cells called on their own: both trajectories run step by step, gates by
Rescale, gate ⊙ state products by the exact Shapley rule. An LSTM or GRU from zero states without a
mask, in a pass over a grid of pairs, takes the fused path of ``fused.py`` instead (the same values).

:func:`recurrent`, :func:`bidirectional` and :func:`cell_step` run a layer; :func:`rnn_problem` and
:func:`cell_problem` say why one is refused. The layer table (``layer_rules.py``) calls them.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any, Callable

import keras
from keras import ops
from keras import tree as keras_tree

from . import backend, dual, private
from .activations import activate, activation_problem, weight
from .backend import Tensor, compiled
from .dual import Dual
from .pass_state import Run, unsupported
from .trace import custom_call

L = keras.layers

#: the cells rnnshap re-implements (each alone, or in an RNN layer)
RECURRENT_CELLS = (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)
#: the cell of ConvLSTM1D/2D/3D (not exported by keras.layers)
CONV_CELLS = private.CONV_CELLS


# -- what is refused ------------------------------------------------------------------------------
def cell_problem(cell: keras.layers.Layer) -> str | None:
    """Why a cell called on its own is refused (an activation without a rule), or None."""
    for fn in (cell.activation, getattr(cell, "recurrent_activation", None)):
        if fn is not None and (why := activation_problem(fn)):
            return why
    return None


def rnn_problem(layer: keras.layers.RNN) -> str | None:
    """Why a recurrent layer (an ``RNN`` over one cell or ``StackedRNNCells``) is refused, or None."""
    if layer.stateful:
        return "stateful recurrent layers are not supported (the state would carry between calls)"
    cells = layer.cell.cells if isinstance(layer.cell, L.StackedRNNCells) else [layer.cell]
    for cell in cells:
        if isinstance(cell, CONV_CELLS) and getattr(cell, "data_format", None) != "channels_last":
            return "ConvLSTM with data_format='channels_first' is not supported (channels_last is)"
        if not isinstance(cell, RECURRENT_CELLS + CONV_CELLS):
            return f"recurrent cell {type(cell).__name__} is not supported (LSTMCell, GRUCell, SimpleRNNCell, ConvLSTM's are)"
        if (custom := custom_call(cell)) is not None:
            return f"cell {custom} overrides call(); rnnshap re-implements the keras cells and cannot follow a custom call"
        for fn in (cell.activation, getattr(cell, "recurrent_activation", None)):
            if fn is not None and (why := activation_problem(fn)):
                return f"{type(cell).__name__}: {why}"
    return None


# -- running them ---------------------------------------------------------------------------------
def _matmul(t: Tensor, w: keras.Variable) -> Tensor:
    return ops.tensordot(t, weight(w, t.dtype), [[len(t.shape) - 1], [0]])


def _zeros(like: Tensor, units: int) -> Tensor:
    return ops.zeros((ops.shape(like)[0], units), dtype=like.dtype)


def _split(d: Dual, parts: int) -> list[Dual]:
    xs, rs = ops.split(d.x, parts, axis=-1), ops.split(d.r, parts, axis=-1)
    return [Dual(a, b) for a, b in zip(xs, rs, strict=True)]


def _cell_sequence(
    cell: keras.layers.Layer,
    seq: Dual,
    states: list[Dual],
    mask: Tensor | None = None,
    zero_output: bool = False,
    grid: tuple[int, int, int] | None = None,
    zero_start: bool = False,
) -> tuple[list[Dual], list[Dual]]:
    """One cell over all steps of ``seq`` (B, T, F): its outputs per step and its final states.

    An LSTM or GRU cell from zero states without a mask, in a pass over a grid of pairs, takes the
    fast path of ``fused.py``. Otherwise the input projection of all steps is one product; for sequences
    of at least :data:`COMPILE_MIN_STEPS` steps each step runs as one compiled ``tf.function``
    (traced once per cell and batch shape, recorded by the gradient tape as one operation); shorter
    ones run eagerly, where tracing would cost more than it saves.
    """
    if backend.name() == "tensorflow":  # fused.py is TensorFlow's kernel: not imported on JAX (no TensorFlow needed there)
        from . import fused

        if fused.applies(cell, mask, zero_start, grid, int(seq.x.shape[1]), int(seq.x.shape[0])):
            assert grid is not None
            return (fused.lstm if isinstance(cell, L.LSTMCell) else fused.gru)(cell, seq, grid, weight)
    projected = seq.map(lambda t: _matmul(t, cell.kernel))
    if cell.use_bias:
        bias = weight(cell.bias, projected.x.dtype)
        input_bias = bias[0] if isinstance(cell, L.GRUCell) and cell.reset_after else bias
        projected = projected.map(lambda t: t + input_bias)
    flat = [t for state in states for t in (state.x, state.r)]
    if backend.is_traced(projected.x):  # inside the pass under jax.jit: one step body, compiled once
        return _scanned(cell, projected, flat, mask, zero_output)
    step_fn = _compiled_step(cell) if seq.x.shape[1] >= COMPILE_MIN_STEPS else partial(_eager_step, cell)
    outputs = []
    previous = [ops.zeros_like(flat[0]), ops.zeros_like(flat[1])]
    for step in range(seq.x.shape[1]):
        new = list(step_fn(projected.x[:, step], projected.r[:, step], *flat))
        if mask is None:
            flat = new
        else:  # masked steps carry the states and output the previous output (or zeros)
            keep = mask[:, step, None]
            previous = [
                ops.where(keep, n, ops.zeros_like(n) if zero_output else p) for n, p in zip(new[:2], previous, strict=True)
            ]
            flat = [ops.where(keep, n, old) for n, old in zip(new, flat, strict=True)]
            new = previous + new[2:]
        outputs.append(Dual(new[0], new[1]))
    return outputs, [Dual(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _scanned(
    cell: keras.layers.Layer, projected: Dual, flat: list[Tensor], mask: Tensor | None, zero_output: bool
) -> tuple[list[Dual], list[Dual]]:
    """The loop of :func:`run_cell` as one ``ops.scan`` (``jax.lax.scan``), for the pass under ``jax.jit``:
    XLA compiles the step once instead of once per time step (the same operations per step)."""
    previous = [ops.zeros_like(flat[0]), ops.zeros_like(flat[1])]
    steps = [ops.moveaxis(projected.x, 1, 0), ops.moveaxis(projected.r, 1, 0)]
    if mask is not None:
        steps.append(ops.moveaxis(mask, 1, 0))

    def body(carry: tuple[list[Tensor], list[Tensor]], inputs: list[Tensor]) -> Any:
        flat, previous = carry
        new = _eager_step(cell, inputs[0], inputs[1], *flat)
        if mask is not None:
            keep = inputs[2][:, None]
            previous = [
                ops.where(keep, n, ops.zeros_like(n) if zero_output else p) for n, p in zip(new[:2], previous, strict=True)
            ]
            flat = [ops.where(keep, n, old) for n, old in zip(new, flat, strict=True)]
            new = previous + new[2:]
        else:
            flat = new
        return (flat, previous), (new[0], new[1])

    (flat, _), (out_x, out_r) = ops.scan(body, (flat, previous), steps)
    outputs = [Dual(out_x[step], out_r[step]) for step in range(int(out_x.shape[0]))]
    return outputs, [Dual(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


#: sequences at least this long run each step as a compiled tf.function
COMPILE_MIN_STEPS = 32

_COMPILED: weakref.WeakKeyDictionary[keras.layers.Layer, Callable[..., list[Tensor]]] = weakref.WeakKeyDictionary()


def _compiled_step(cell: keras.layers.Layer) -> Callable[..., list[Tensor]]:
    if cell not in _COMPILED:

        _COMPILED[cell] = compiled(partial(_eager_step, cell), list(cell.variables))  # (on JAX: the weights as arguments)
    return _COMPILED[cell]


def _eager_step(cell: keras.layers.Layer, p_x: Tensor, p_r: Tensor, *flat: Tensor) -> list[Tensor]:
    states = [Dual(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return [t for state in _step(cell, Dual(p_x, p_r), states) for t in (state.x, state.r)]


def _step(cell: keras.layers.Layer, p: Dual, states: list[Dual]) -> list[Dual]:
    """One step of ``cell`` on both sides from the projected input ``p`` (input bias included)."""
    recurrent_kernel = weight(cell.recurrent_kernel, p.x.dtype)
    act = lambda u: activate(cell.activation, u)
    if isinstance(cell, L.LSTMCell):
        h, c = states
        z = p + h.map(lambda t: ops.matmul(t, recurrent_kernel))
        zi, zf, zc, zo = _split(z, 4)
        ra = lambda u: activate(cell.recurrent_activation, u)
        i, f, o = ra(zi), ra(zf), ra(zo)
        c = dual.product(f, c) + dual.product(i, act(zc))
        return [dual.product(o, act(c)), c]
    if isinstance(cell, L.GRUCell):
        (h,) = states
        units = cell.units
        ra = lambda u: activate(cell.recurrent_activation, u)
        px_z, px_r, px_h = _split(p, 3)
        if cell.reset_after:
            rec = h.map(lambda t: ops.matmul(t, recurrent_kernel))
            if cell.use_bias:
                recurrent_bias = weight(cell.bias, p.x.dtype)[1]
                rec = rec.map(lambda t: t + recurrent_bias)
            rz, rr, rh = _split(rec, 3)
            z, r = ra(px_z + rz), ra(px_r + rr)
            hh = act(px_h + dual.product(r, rh))
        else:
            rec = h.map(lambda t: ops.matmul(t, recurrent_kernel[:, : 2 * units]))
            rz, rr = _split(rec, 2)
            z, r = ra(px_z + rz), ra(px_r + rr)
            hh = act(px_h + dual.product(r, h).map(lambda t: ops.matmul(t, recurrent_kernel[:, 2 * units :])))
        one_minus_z = z.map(lambda t: 1 - t)
        return [dual.product(z, h) + dual.product(one_minus_z, hh)]
    (h,) = states  # SimpleRNNCell
    return [act(p + h.map(lambda t: ops.matmul(t, recurrent_kernel)))]


def cell_step(
    cell: keras.layers.Layer, inputs: Dual, states: Dual | list[Dual] | tuple[Dual, ...], **kwargs: Any
) -> tuple[Dual, Dual | list[Dual]]:
    """One step of a cell called as a layer: ``(output, new_states)`` like the cell's own call."""
    if kwargs:
        raise unsupported(cell, f"call arguments {sorted(kwargs)} are not supported")
    nested = isinstance(states, (list, tuple))
    given = list(states) if isinstance(states, (list, tuple)) else [states]
    if len(given) != _state_count(cell):
        raise unsupported(cell, f"expected {_state_count(cell)} state tensor(s), got {len(given)}")
    outputs, new_states = _cell_sequence(cell, inputs.map(lambda t: t[:, None]), given)
    return outputs[0], (new_states if nested else new_states[0])


def _state_count(cell: keras.layers.Layer) -> int:
    return 2 if isinstance(cell, (L.LSTMCell, *CONV_CELLS)) else 1


def _conv_zeros(cell: keras.layers.Layer, seq: Dual) -> Dual:
    """ConvLSTM's zero state: shaped like the input convolution of one step (its spatial output, ``filters``)."""
    kernel = weight(cell.kernel, seq.x.dtype)[..., : cell.filters]
    zeros = ops.zeros_like(cell.input_conv(seq.x[:, 0], kernel, None, padding=cell.padding))
    return Dual(zeros, ops.zeros_like(zeros))


def _conv_lstm_sequence(cell: keras.layers.Layer, seq: Dual, states: list[Dual]) -> tuple[list[Dual], list[Dual]]:
    """ConvLSTM's cell over every step of ``seq`` (B, T, *spatial, channels), as keras' ConvLSTMCell.call:
    the gates from an input and a recurrent convolution (linear), activated by their rules, the state's
    products by the product rule."""
    dtype = seq.x.dtype
    kernel, recurrent_kernel = weight(cell.kernel, dtype), weight(cell.recurrent_kernel, dtype)
    bias = weight(cell.bias, dtype) if cell.use_bias else None
    act = lambda u: activate(cell.activation, u)  # noqa: E731
    ra = lambda u: activate(cell.recurrent_activation, u)  # noqa: E731
    h, c = states
    outputs = []
    for step in range(seq.x.shape[1]):
        x = seq.map(lambda t: t[:, step])
        projected = x.map(lambda t: cell.input_conv(t, kernel, None, padding=cell.padding))
        if bias is not None:  # (channels last: the four gates' biases along the last axis)
            projected = projected.map(lambda t: t + bias)
        z = projected + h.map(lambda t: cell.recurrent_conv(t, recurrent_kernel))
        zi, zf, zc, zo = _split(z, 4)
        i, f, o = ra(zi), ra(zf), ra(zo)
        c = dual.product(f, c) + dual.product(i, act(zc))
        h = dual.product(o, act(c))
        outputs.append(h)
    return outputs, [h, c]


def recurrent(
    layer: keras.layers.RNN,
    sequences: Dual,
    initial_state: Dual | list[Dual] | None = None,
    mask: Any = None,
    *,
    run: Run | None = None,
    **kwargs: Any,
) -> Dual | list[Dual]:
    """A keras RNN layer (LSTM, GRU, SimpleRNN, RNN(cell), RNN(StackedRNNCells)) on Duals, with the
    mask its ``call`` gets (see :func:`keras_masks`)."""
    if kwargs:
        raise unsupported(layer, f"call arguments {sorted(kwargs)} are not supported")
    if layer.stateful:
        raise unsupported(layer, "stateful recurrent layers are not supported")
    cells = list(layer.cell.cells) if isinstance(layer.cell, L.StackedRNNCells) else [layer.cell]
    given = [] if initial_state is None else list(initial_state if isinstance(initial_state, (list, tuple)) else [initial_state])
    if isinstance(mask, (list, tuple)):
        mask = keras_tree.flatten(mask)[0]
    if mask is not None and mask.dtype != "bool":
        mask = ops.cast(mask, "bool")
    seq = sequences
    if layer.go_backwards:
        seq = seq.map(lambda t: ops.flip(t, axis=1))
        mask = None if mask is None else ops.flip(mask, axis=1)
    final_states: list[Dual] = []
    outputs: list[Dual] = []
    for cell in cells:
        count = _state_count(cell)
        zero_start = not given
        if isinstance(cell, CONV_CELLS):
            if mask is not None:
                raise unsupported(layer, "a mask reaching a ConvLSTM layer is not supported")
            if given:
                states, given = list(given[:count]), given[count:]
            else:
                states = [_conv_zeros(cell, seq) for _ in range(count)]
            outputs, states = _conv_lstm_sequence(cell, seq, states)
            final_states += states
            seq = Dual(ops.stack([o.x for o in outputs], 1), ops.stack([o.r for o in outputs], 1))
            continue
        if given:
            states, given = list(given[:count]), given[count:]
        else:
            states = [Dual(_zeros(seq.x, cell.units), _zeros(seq.r, cell.units)) for _ in range(count)]
        grid = None if run is None or run.masked else run.grid
        zero_output = bool(getattr(layer, "zero_output_for_mask", False))
        outputs, states = _cell_sequence(cell, seq, states, mask, zero_output, grid, zero_start)
        final_states += states
        seq = Dual(ops.stack([o.x for o in outputs], 1), ops.stack([o.r for o in outputs], 1))
    output = seq if layer.return_sequences else outputs[-1]
    if layer.return_state:
        return [output, *final_states]
    return output


def bidirectional(
    layer: keras.layers.Bidirectional,
    run: Run,
    sequences: Dual,
    initial_state: list[Dual] | None = None,
    mask: Any = None,
    **kwargs: Any,
) -> Dual | list[Dual]:
    forward_state = backward_state = None
    if initial_state is not None:
        half = len(initial_state) // 2
        forward_state, backward_state = initial_state[:half], initial_state[half:]
    y: Any = recurrent(layer.forward_layer, sequences, forward_state, mask=mask, run=run, **kwargs)
    y_rev: Any = recurrent(layer.backward_layer, sequences, backward_state, mask=mask, run=run, **kwargs)
    states: list[Dual] = []
    if layer.return_state:
        states = list(y[1:]) + list(y_rev[1:])
        y, y_rev = y[0], y_rev[0]
    if layer.return_sequences:
        y_rev = y_rev.map(lambda t: ops.flip(t, axis=1))
    merged: Any
    mode = layer.merge_mode
    if mode == "concat":
        merged = Dual(ops.concatenate([y.x, y_rev.x], -1), ops.concatenate([y.r, y_rev.r], -1))
    elif mode == "sum":
        merged = y + y_rev
    elif mode == "ave":
        merged = (y + y_rev).scale(0.5)
    elif mode == "mul":
        merged = dual.product(y, y_rev)
    elif mode is None:
        merged = [y, y_rev]
    else:
        raise unsupported(layer, f"merge_mode {mode!r}")
    if layer.return_state:
        return (merged if mode is None else [merged]) + states
    return merged

