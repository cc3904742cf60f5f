"""Rules for the fused recurrent ops behind nn.LSTM / nn.GRU / nn.RNN and their cells.

``nn.LSTM`` calls ``torch.lstm`` with either the padded signature
``(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)`` or the
packed one ``(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)``;
``nn.GRU`` and ``nn.RNN`` call ``torch.gru`` / ``torch.rnn_tanh`` / ``torch.rnn_relu`` the same way.
Cells call ``torch.lstm_cell(input, (h, c), w_ih, w_hh, b_ih, b_hh)`` and the like. Each layer and
direction runs as one fused autograd Function (``fused.py``) or, with ``fused=False``, step by step
through the elementwise rules (``decomposed.py``); both give the same multipliers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import ModelStateError
from ..rules.base import OpCall, PairGrid, Rule
from . import decomposed, fused
from .kernels import run_kernel
from .pairs import Side
from .weights import CellWeights, split_weights

Tensor = torch.Tensor


@dataclass
class _Layout:
    """Where time and batch are, and the masks of a packed input."""

    packed: bool
    batch_first: bool
    mask: Tensor | None = None  # (T, B, 1) bool, packed only
    positions: Tensor | None = None  # flat (t * B + b) positions of the packed rows
    #: (T * B,) the flat (t * B + b) row each row takes in the per-row time reversal, packed only
    reverse_rows: Tensor | None = None


def _packed_layout(batch_sizes: Tensor, device: torch.device) -> _Layout:
    sizes = batch_sizes.to(device=device, dtype=torch.long)
    steps, batch = sizes.shape[0], int(sizes[0])
    lengths = (sizes[:, None] > torch.arange(batch, device=device)[None, :]).sum(0)  # (B,)
    time = torch.arange(steps, device=device)[:, None]
    active = time < lengths[None, :]  # (T, B)
    positions = torch.nonzero(active.reshape(-1)).squeeze(1)
    reverse_time = torch.where(active, lengths[None, :] - 1 - time, time.expand(steps, batch))
    reverse_rows = (reverse_time * batch + torch.arange(batch, device=device)[None, :]).reshape(-1)
    return _Layout(True, False, active[..., None], positions, reverse_rows)


def _to_padded(data: Tensor, layout: _Layout) -> Tensor:
    assert layout.mask is not None and layout.positions is not None
    steps, batch = layout.mask.shape[:2]
    flat = data.new_zeros(steps * batch, data.shape[-1]).index_copy(0, layout.positions, data)
    return flat.reshape(steps, batch, data.shape[-1])


def _from_padded(padded: Tensor, layout: _Layout) -> Tensor:
    assert layout.positions is not None
    return padded.reshape(-1, padded.shape[-1]).index_select(0, layout.positions)


def _reverse(sequence: Tensor, layout: _Layout) -> Tensor:
    if layout.reverse_rows is None:
        return sequence.flip(0)
    # whole rows of C values moved (index_select), not every value looked up on its own (gather)
    return sequence.flatten(0, 1).index_select(0, layout.reverse_rows).unflatten(0, sequence.shape[:2])


#: a layer-direction's run: its outputs (one per sequence given), h_T, and c_T (None but for an LSTM)
_LayerRun = tuple[tuple[Tensor, ...], Tensor, Tensor | None]


def _over_layers(
    layers: list[list[CellWeights]],
    layout: _Layout,
    sequences: tuple[Tensor, ...],
    run: Callable[[CellWeights, int, tuple[Tensor, ...]], _LayerRun],
) -> tuple[tuple[Tensor, ...], list[Tensor], list[Tensor]]:
    """A stack of layers of one or two directions: ``run(weights, index, sequences)`` runs layer-direction ``index``
    (``layer * directions + d``) on ``sequences`` (padded, time first; the reverse direction's reversed in time, its
    outputs reversed back), each layer on the previous one's outputs, the directions' concatenated. Returns the last
    layer's outputs, and the h_T and c_T of every layer-direction in order (c_T where ``run`` returns one)."""
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    for layer, row in enumerate(layers):
        outputs = []
        for d, weights in enumerate(row):
            index = layer * len(row) + d
            given = sequences if d == 0 else tuple(_reverse(s, layout) for s in sequences)
            out, h, c = run(weights, index, given)
            outputs.append(out if d == 0 else tuple(_reverse(o, layout) for o in out))
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        sequences = outputs[0] if len(outputs) == 1 else tuple(torch.cat(side, -1) for side in zip(*outputs, strict=True))
    return sequences, h_n, c_n


class RecurrentLayer(Rule):
    """``torch.lstm`` / ``torch.gru`` / ``torch.rnn_tanh`` / ``torch.rnn_relu``, padded or packed."""

    def __init__(self, kind: str, relu: bool = False, fused: bool = True) -> None:
        if kind not in ("lstm", "gru", "rnn"):
            raise ValueError(f"kind must be 'lstm', 'gru' or 'rnn', not {kind!r}")
        self.kind, self.relu, self.fused = kind, relu, fused

    def __repr__(self) -> str:
        return f"RecurrentLayer({self.kind!r}, relu={self.relu}, fused={self.fused})"

    def attribute(self, call: OpCall) -> Any:
        args, ref_args = call.args, call.ref_args
        packed = isinstance(args[1], Tensor) if self.kind == "lstm" else isinstance(args[2], Tensor)
        if packed:
            data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional = args
            data_r, _, hx_r = ref_args[:3]
            layout = _packed_layout(batch_sizes, data.device)
            x, x_r = _to_padded(data, layout), _to_padded(data_r, layout)
        else:
            x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
            x_r, hx_r = ref_args[0], ref_args[1]
            layout = _Layout(False, bool(batch_first))
            if x.dim() != 3:
                raise ValueError(f"{call.name}: expected a 3-D input, got shape {tuple(x.shape)}")
            if batch_first:
                x, x_r = x.transpose(0, 1), x_r.transpose(0, 1)
        if train and dropout > 0 and num_layers > 1:
            raise ModelStateError(
                f"{call.name} runs with dropout={dropout} in training mode; call model.eval() before explaining"
            )
        if any(call.is_tracked_value(p) for p in params):
            raise ValueError(f"{call.name}: rnnshap attributes to the inputs of a recurrent layer, not to its weights")
        layers = split_weights(params, has_biases, num_layers, bidirectional)
        if self.kind == "lstm":
            (h0, c0), (h0_r, c0_r) = hx, hx_r
        else:
            h0, c0, h0_r, c0_r = hx, None, hx_r, None
        output, h_n, c_n = self._stack(layers, layout, call.pairs, x, x_r, h0, h0_r, c0, c0_r)
        if packed:
            output = _from_padded(output, layout)
        elif layout.batch_first:
            output = output.transpose(0, 1)
        return (output, h_n, c_n) if self.kind == "lstm" else (output, h_n)

    def reference(self, call: OpCall) -> Any:
        """The reference pass: torch's kernel on the distinct reference rows only, when the
        batch cycles through the references (the usual case; see ``pairs.py``)."""
        args = call.args
        packed = isinstance(args[1], Tensor) if self.kind == "lstm" else isinstance(args[2], Tensor)
        if packed:
            return self._packed_reference(call)
        return _on_distinct_references(call, 0 if args[8] else 1, 1, defer=False)

    def _packed_reference(self, call: OpCall) -> Any:
        """The reference pass of a packed layer on the distinct rows of each layer-direction
        (``fused.masked_layer``), torch's kernel unmasked on them."""
        data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional = call.args
        states = list(hx) if self.kind == "lstm" else [hx]
        dropping = train and dropout > 0 and num_layers > 1
        if call.kwargs or dropping or not all(isinstance(s, Tensor) for s in states) or data.dim() != 2:
            return super().reference(call)
        layout = _packed_layout(batch_sizes, data.device)
        mask = layout.mask
        assert mask is not None
        x = _to_padded(data, layout)
        h0, c0 = states[0], states[1] if self.kind == "lstm" else None
        layers = split_weights(params, has_biases, num_layers, bidirectional)

        def run(weights: CellWeights, index: int, sequences: tuple[Tensor, ...]) -> _LayerRun:
            c0_index = None if c0 is None else c0[index]
            out, h, c = fused.masked_layer(self.kind, self.relu, weights, mask, sequences[0], h0[index], c0_index)
            return (out,), h, c

        (x,), h_n, c_n = _over_layers(layers, layout, (x,), run)
        output = _from_padded(x, layout)
        return (output, torch.stack(h_n), torch.stack(c_n)) if self.kind == "lstm" else (output, torch.stack(h_n))

    def _stack(
        self,
        layers: list[list[CellWeights]],
        layout: _Layout,
        grid: PairGrid | None,
        x: Tensor,
        x_r: Tensor,
        h0: Tensor,
        h0_r: Tensor,
        c0: Tensor | None,
        c0_r: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:

        def run(weights: CellWeights, index: int, sequences: tuple[Tensor, ...]) -> _LayerRun:
            seq, seq_r = sequences
            states = (h0[index], h0_r[index], None if c0 is None else c0[index], None if c0_r is None else c0_r[index])
            out, out_r, h_last, c_last = self._layer(weights, layout.mask, grid, seq, seq_r, *states)
            assert out_r is not None and h_last is not None  # (a layer's call returns them all)
            return (out, out_r), h_last, c_last

        (x, _), h_n, c_n = _over_layers(layers, layout, (x, x_r), run)
        return x, torch.stack(h_n), torch.stack(c_n) if c_n else None

    def _layer(
        self,
        w: CellWeights,
        mask: Tensor | None,
        grid: PairGrid | None,
        x: Tensor,
        x_r: Tensor,
        h0: Tensor,
        h0_r: Tensor,
        c0: Tensor | None,
        c0_r: Tensor | None,
        cell: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """One layer-direction; returns (output, reference output, h_T, c_T). A cell's call (``cell``, fused) returns
        None for the reference output and h_T, which it does not use (``fused._finish``)."""
        if self.kind == "lstm":
            assert c0 is not None and c0_r is not None
            if self.fused:
                out, h, c, out_r, _, _ = fused.FusedLSTM.apply(w, mask, grid, x, h0, c0, x_r, h0_r, c0_r, cell)
            else:
                out, h, c, out_r, _, _ = decomposed.lstm_layer(w, mask, x, h0, c0, x_r, h0_r, c0_r)
            return out, out_r, h, c
        if self.kind == "gru":
            if self.fused:
                out, h, out_r, _ = fused.FusedGRU.apply(w, mask, grid, x, h0, x_r, h0_r, cell)
            else:
                out, h, out_r, _ = decomposed.gru_layer(w, mask, x, h0, x_r, h0_r)
            return out, out_r, h, None
        if self.fused:
            out, h, out_r, _ = fused.FusedRNN.apply(w, mask, grid, self.relu, x, h0, x_r, h0_r, cell)
        else:
            out, h, out_r, _ = decomposed.rnn_layer(w, mask, self.relu, x, h0, x_r, h0_r)
        return out, out_r, h, None


class RecurrentCell(RecurrentLayer):
    """``torch.lstm_cell`` / ``gru_cell`` / ``rnn_tanh_cell`` / ``rnn_relu_cell``: one step, as a layer with T = 1."""

    def __repr__(self) -> str:
        return f"RecurrentCell({self.kind!r}, relu={self.relu}, fused={self.fused})"

    def reference(self, call: OpCall) -> Any:
        return _on_distinct_references(call, 0, 0, defer=True)

    def attribute(self, call: OpCall) -> Any:
        (x, hx, w_ih, w_hh, *biases), (x_r, hx_r) = call.args, call.ref_args[:2]
        b_ih, b_hh = (biases + [None, None])[:2]
        weights = CellWeights(w_ih, w_hh, b_ih, b_hh)
        if any(call.is_tracked_value(p) for p in (w_ih, w_hh, b_ih, b_hh) if p is not None):
            raise ValueError(f"{call.name}: rnnshap attributes to the inputs of a recurrent cell, not to its weights")
        if self.kind == "lstm":
            (h, c), (h_r, c_r) = hx, hx_r
            out, _, _, c_new = self._layer(weights, None, call.pairs, x[None], x_r[None], h, h_r, c, c_r, cell=True)
            assert c_new is not None
            return out[0], c_new
        out, _, _, _ = self._layer(weights, None, call.pairs, x[None], x_r[None], hx, hx_r, None, None, cell=True)
        return out[0]


def _on_distinct_references(call: OpCall, input_dim: int, state_dim: int, defer: bool) -> Any:
    """Run ``call`` (input, hx, *rest) on the distinct rows of a reference batch and spread the
    results back to one row per pair; run it as it is when the rows do not cycle (``defer``: a cell's
    call, see :meth:`Side.of`)."""
    (x, hx, *rest), kwargs = call.args, call.kwargs
    states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
    if call.pairs is None or kwargs or not all(isinstance(s, Tensor) for s in states):
        return call.fn(*call.args, **kwargs)
    side = Side.of("reference", call.pairs, x.shape[input_dim], [(x, input_dim), *((s, state_dim) for s in states)], defer)
    if side.axis is None:
        return run_kernel(call.fn, x, hx, *rest)
    distinct = [side.take(s, state_dim).contiguous() for s in states]  # (cuDNN takes a contiguous state only)
    state = tuple(distinct) if isinstance(hx, (tuple, list)) else distinct[0]
    result = run_kernel(call.fn, side.take(x, input_dim), state, *rest)
    if isinstance(result, Tensor):
        return side.spread(result, input_dim)
    output, *finals = result
    return (side.spread(output, input_dim), *(side.spread(f, state_dim) for f in finals))


def recurrent_rules() -> dict[Any, Rule]:
    """The registry entries for every recurrent op."""
    return {
        torch.lstm: RecurrentLayer("lstm"),
        torch.gru: RecurrentLayer("gru"),
        torch.rnn_tanh: RecurrentLayer("rnn"),
        torch.rnn_relu: RecurrentLayer("rnn", relu=True),
        torch.lstm_cell: RecurrentCell("lstm"),
        torch.gru_cell: RecurrentCell("gru"),
        torch.rnn_tanh_cell: RecurrentCell("rnn"),
        torch.rnn_relu_cell: RecurrentCell("rnn", relu=True),
    }


__all__: Sequence[str] = ["RecurrentCell", "RecurrentLayer", "recurrent_rules"]
