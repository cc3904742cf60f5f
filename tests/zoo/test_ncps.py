"""ncps (Neural Circuit Policies): CfC in its three modes, with mixed memory, wired by an NCP; LTC fully
connected and wired.

Not here: CfC's ``timespans`` (irregular time steps). ncps 1.0.1 squeezes ``timespans[:, t]`` to
shape (N,) and multiplies it with an (N, units) tensor, which fails for any batch of more than one
sequence (unless N equals the number of units), in the library itself."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_causal, check, params, steps

pytest.importorskip("ncps")
from ncps.torch import LTC, CfC  # noqa: E402
from ncps.wirings import AutoNCP  # noqa: E402

T, F, UNITS = 6, 3, 8


def _sequence(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The library's layer on the sequence, its readout at two steps: (N, 2).

    ncps creates the zero initial state in the default dtype; the model passes the same zeros in
    the input's dtype (``hx``), so that a float64 copy runs in float64."""
    zeros = x.new_zeros(x.shape[0], m.rnn.state_size)
    hx = (zeros, zeros) if m.mixed else zeros
    out, _ = m.rnn(x, hx)
    return out[:, steps(T), 0]


def _build(make: Callable[[], nn.Module], mixed: bool = False) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        model = Composite(_sequence, rnn=make(), mixed=mixed).eval()
        return Case(model, [torch.randn(N_BACKGROUND, T, F)], [torch.randn(N_EXPLAINED, T, F)])

    return build


ZOO = {
    "CfC-default": Spec(_build(lambda: CfC(F, UNITS, proj_size=1))),
    "CfC-pure": Spec(_build(lambda: CfC(F, UNITS, proj_size=1, mode="pure"))),
    "CfC-no_gate": Spec(_build(lambda: CfC(F, UNITS, proj_size=1, mode="no_gate"))),
    "CfC-mixed_memory": Spec(_build(lambda: CfC(F, UNITS, proj_size=1, mixed_memory=True), mixed=True)),
    "CfC-AutoNCP": Spec(_build(lambda: CfC(F, AutoNCP(10, 1)))),
    "LTC": Spec(_build(lambda: LTC(F, UNITS, ode_unfolds=3))),
    "LTC-AutoNCP": Spec(_build(lambda: LTC(F, AutoNCP(10, 1), ode_unfolds=3))),
}


@pytest.mark.parametrize("name", params(ZOO))
def test_exact_and_causal(name: str) -> None:
    """Exact, and causal: a step's readout gets exactly 0 from every later step."""
    assert_causal(check(ZOO[name]).values[0], T, name)
