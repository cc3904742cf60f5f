"""The flat weight lists of ``torch.lstm`` / ``torch.gru`` / ``torch.rnn_*``, split per layer and direction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class CellWeights:
    """Weights of one layer and direction. Gate blocks are stacked in torch's order
    (LSTM: i, f, g, o; GRU: r, z, n). ``w_hr`` is the LSTM projection (``proj_size > 0``)."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None = None

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1] if self.w_hr is None else self.w_hr.shape[1]


def split_weights(params: Sequence[Tensor], has_biases: bool, num_layers: int, bidirectional: bool) -> list[list[CellWeights]]:
    """``params`` as torch passes them (per layer, per direction: w_ih, w_hh, [b_ih, b_hh], [w_hr])."""
    directions = 2 if bidirectional else 1
    groups = num_layers * directions
    if len(params) % groups:
        raise ValueError(f"{len(params)} recurrent weight tensors do not split into {groups} layer-directions")
    per_group = len(params) // groups
    plain = 4 if has_biases else 2
    if per_group not in (plain, plain + 1):
        raise ValueError(f"unexpected {per_group} weight tensors per layer-direction (has_biases={has_biases})")
    layers: list[list[CellWeights]] = []
    for layer in range(num_layers):
        row = []
        for direction in range(directions):
            chunk = list(params[(layer * directions + direction) * per_group :][:per_group])
            w_ih, w_hh = chunk[0], chunk[1]
            b_ih, b_hh = (chunk[2], chunk[3]) if has_biases else (None, None)
            w_hr = chunk[-1] if per_group == plain + 1 else None
            row.append(CellWeights(w_ih, w_hh, b_ih, b_hh, w_hr))
        layers.append(row)
    return layers
