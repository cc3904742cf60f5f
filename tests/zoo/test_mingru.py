"""mingru-pytorch: minGRU and minLSTM, parallel (log-space scan) and sequential (one step at a time)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_causal, check, params, steps

pytest.importorskip("minGRU_pytorch")
from minGRU_pytorch import minGRU  # noqa: E402
from minGRU_pytorch.minLSTM import minLSTM  # noqa: E402

T, F = 6, 3


def _min_rnn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not m.sequential:
        return m.head(m.layer(x))[:, steps(T), 0]
    hidden, outputs = None, []
    for t in range(x.shape[1]):
        out, hidden = m.layer(x[:, t : t + 1], hidden, return_next_prev_hidden=True)
        outputs.append(out)
    return m.head(torch.cat(outputs, 1))[:, steps(T), 0]


def min_rnn(layer: type[nn.Module], sequential: bool) -> Composite:
    """The layer's own forward on the whole sequence (its parallel log-space scan), or one step at a
    time through the same forward with ``prev_hidden`` (its sequential path); a readout at two steps."""
    # proj_out: a Linear back to F features
    return Composite(_min_rnn, layer=layer(F, expansion_factor=2.0), sequential=sequential, head=nn.Linear(F, 1))


def _build(layer: type[nn.Module], sequential: bool) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        return Case(min_rnn(layer, sequential).eval(), [torch.randn(N_BACKGROUND, T, F)], [torch.randn(N_EXPLAINED, T, F)])

    return build


ZOO = {
    "minGRU-parallel": Spec(_build(minGRU, False)),
    "minGRU-sequential": Spec(_build(minGRU, True)),
    "minLSTM-parallel": Spec(_build(minLSTM, False)),
    "minLSTM-sequential": Spec(_build(minLSTM, True)),
}


@pytest.mark.parametrize("name", params(ZOO))
def test_exact_and_causal(name: str) -> None:
    """Exact, and causal: a step's readout gets exactly 0 from every later step (both paths)."""
    assert_causal(check(ZOO[name]).values[0], T, name)

