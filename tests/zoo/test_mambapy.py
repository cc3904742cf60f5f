"""mambapy: Mamba with its parallel scan (``pscan=True``, a custom ``autograd.Function`` that scans in
place), its sequential scan (``pscan=False``) and its step-by-step inference path (``Mamba.step``)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_causal, check, params, steps

pytest.importorskip("mambapy")
from mambapy.mamba import Mamba, MambaConfig  # noqa: E402

T, F = 6, 3

#: the generic Rescale switches to the midpoint derivative below an absolute |Δ| of eps^(1/3)
#: (4.9e-3 in float32), whatever the operand's size: on ``torch.rsqrt(mean(x²) + eps)`` (mamba's
#: RMSNorm) of small activations that is off by (Δv/v)², far above float rounding.
def _mamba_head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not m.step:
        return m.head(m.mamba(x))[:, steps(T), 0]
    config = m.mamba.config
    caches = [(None, x.new_zeros(x.shape[0], config.d_inner, config.d_conv - 1)) for _ in m.mamba.layers]
    outputs = []
    for t in range(x.shape[1]):
        y, caches = m.mamba.step(x[:, t], caches)
        outputs.append(m.head(y))
    return torch.cat(outputs, 1)[:, steps(T)]


def mamba_head(pscan: bool = True, step: bool = False) -> Composite:
    """The library's ``Mamba`` (a stack of residual Mamba blocks) on the input, a linear head per step.

    ``step=True`` runs ``Mamba.step`` one time step at a time with the library's cache, as its
    autoregressive inference does. The readout at two steps: (N, 2)."""
    mamba = Mamba(MambaConfig(d_model=F, n_layers=2, d_state=4, expand_factor=2, d_conv=3, pscan=pscan))
    return Composite(_mamba_head, mamba=mamba, head=nn.Linear(F, 1), step=step)


def _build(scale: float = 1.0, **kwargs: bool) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        return Case(
            mamba_head(**kwargs).eval(), [torch.randn(N_BACKGROUND, T, F) * scale], [torch.randn(N_EXPLAINED, T, F) * scale]
        )

    return build


ZOO = {
    "Mamba-pscan": Spec(_build(pscan=True)),
    "Mamba-sequential": Spec(_build(pscan=False)),
    "Mamba-step": Spec(_build(step=True)),
    "Mamba-pscan-small-inputs": Spec(_build(0.1, pscan=True)),
}


@pytest.mark.parametrize("name", params(ZOO))
def test_exact_and_causal(name: str) -> None:
    """Exact, and causal: a step's readout gets exactly 0 from every later step (causal conv and scan)."""
    assert_causal(check(ZOO[name]).values[0], T, name)
