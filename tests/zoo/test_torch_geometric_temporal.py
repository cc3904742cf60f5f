"""torch-geometric-temporal's own recurrent graph cells: GConvGRU, GConvLSTM, DCRNN, TGCN, A3TGCN.

The package cannot be imported here: its ``__init__`` imports every model, and one of them
(EvolveGCN) imports ``torch_sparse``, which does not build against this CPU torch. The models we
explain import only torch and PyG, so they are loaded from the installed distribution's own files
(``pip install --no-deps torch-geometric-temporal``, as CI does), unchanged, as modules of a
stand-in package whose path is the library's ``nn/recurrent`` folder: no code of the library runs
but the model's own.

A batch of N graph sequences is PyG's disjoint union of N copies of the graph; the wrapper runs a
cell over T steps from its zero state and reads out two nodes. Truths: additivity from the model's
own outputs (float32 and a float64 copy), and exact zeros for the nodes a readout cannot reach: a
cell's state after step t reads node features within a receptive field that the cell's equations
give (below), which additivity cannot see.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .graph import EXPLAINED, HIDDEN, F, T, V, batched, hops
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_zero, check, params

pytest.importorskip("torch_geometric")

PACKAGE = "_tgt_recurrent"  # the stand-in package holding the library's files


def _recurrent() -> types.ModuleType:
    """A package whose ``__path__`` is the library's ``nn/recurrent`` folder (its ``__init__`` never runs)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    try:
        distribution = importlib.metadata.distribution("torch-geometric-temporal")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch-geometric-temporal is not installed (pip install --no-deps torch-geometric-temporal)")
    folder = distribution.locate_file("torch_geometric_temporal/nn/recurrent")
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    return package


def library(module: str, name: str) -> Any:
    """The class ``name`` from the library's file ``nn/recurrent/<module>.py``."""
    _recurrent()
    return getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)




def _stepped(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    edge_index = batched(n)
    weight = torch.ones(edge_index.shape[1], dtype=m.weight_dtype or x.dtype)
    h = c = x.new_zeros(n * V, HIDDEN)  # the zero state None means, in the data's dtype
    for t in range(T):
        step = x[:, t].reshape(n * V, F)
        if m.state == "HC":
            h, c = m.cell(step, edge_index, weight, H=h, C=c)
        else:
            h = m.cell(step, edge_index, weight, H=h)
    assert h is not None
    return m.head(h).reshape(n, V)[:, EXPLAINED]


def stepped(cell: nn.Module, state: str = "H", weight_dtype: torch.dtype | None = None) -> Composite:
    """``f(x) -> (N, 2)``, x (N, T, V, F): the library's cell called once per step with its state
    (``state="H"``: ``cell(X, edge_index, edge_weight, H=H) -> H``; ``"HC"``: GConvLSTM's ``-> (H, C)``),
    then a linear readout of the last state of the nodes ``EXPLAINED``. The edge weights are ones and the
    first states zeros, as ``None`` means to the cells, but in the data's dtype: with ``None`` they are
    float32 and a float64 copy of the model fails without rnnshap. DCRNN computes its degree
    normalization with float32 ``torch.ones`` whatever the data: its weights stay float32
    (``weight_dtype``), constants of the float64 copy."""
    return Composite(_stepped, cell=cell, state=state, weight_dtype=weight_dtype, head=nn.Linear(HIDDEN, 1))


def _periods(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A3TGCN takes the whole window at once, X (nodes, F, periods), and attends over the periods."""
    n = x.shape[0]
    window = x.permute(0, 2, 3, 1).reshape(n * V, F, T)
    edge_index = batched(n)
    weight = x.new_ones(edge_index.shape[1])
    return m.head(m.cell(window, edge_index, weight)).reshape(n, V)[:, EXPLAINED]


def _build(make: Callable[[], nn.Module]) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        return Case(make().eval(), [torch.randn(N_BACKGROUND, T, V, F)], [torch.randn(N_EXPLAINED, T, V, F)])

    return build


ZOO = {
    "GConvGRU-K2": Spec(_build(lambda: stepped(library("gconv_gru", "GConvGRU")(F, HIDDEN, 2)))),
    "GConvLSTM-K2": Spec(_build(lambda: stepped(library("gconv_lstm", "GConvLSTM")(F, HIDDEN, 2), state="HC"))),
    "DCRNN-K2": Spec(_build(lambda: stepped(library("dcrnn", "DCRNN")(F, HIDDEN, 2), weight_dtype=torch.float32))),
    "TGCN": Spec(_build(lambda: stepped(library("temporalgcn", "TGCN")(F, HIDDEN)))),
    "A3TGCN": Spec(_build(lambda: Composite(_periods, cell=library("attentiontemporalgcn", "A3TGCN")(F, HIDDEN, T),
                                            head=nn.Linear(HIDDEN, 1)))),  # fmt: skip
}

#: how many hops the readout reaches into the features of step t (0-based), from each cell's equations.
#: GConvGRU: Chebyshev K = 2 convolutions (1 hop) of X_t and H; the candidate convolves r ⊙ H with r a
#: convolution of X_t: 2 hops from the step's own input (1 at step 0, where H = 0 and r ⊙ H is exactly 0),
#: and 2 more per later step. GConvLSTM: every gate convolves X_t (1 hop) and H (1 hop) and C enters
#: pointwise (peepholes): 1 hop from X_t, 1 more per later step. DCRNN with K = 2: a diffusion step each
#: way (1 hop) on [X_t, H] and on [X_t, R ⊙ H], R 1 hop from X_t: as GConvGRU. TGCN: GCNs of X_t inside
#: GRU gates whose state stays on its node: 1 hop at every step; A3TGCN attends over TGCNs of the
#: periods, each from a zero state: 1 hop.
RECEPTIVE_FIELD: dict[str, Callable[[int], int]] = {
    "GConvGRU-K2": lambda t: (2 if t > 0 else 1) + 2 * (T - 1 - t),
    "GConvLSTM-K2": lambda t: 1 + (T - 1 - t),
    "DCRNN-K2": lambda t: (2 if t > 0 else 1) + 2 * (T - 1 - t),
    "TGCN": lambda t: 1,
    "A3TGCN": lambda t: 1,
}


@pytest.mark.parametrize("name", params(ZOO))
def test_zoo(name: str) -> None:
    """Exact; and a node outside the receptive field of an explained node, at a step, gets exactly 0
    for that node's readout, while the farthest nodes in reach do not (the check has something to see)."""
    result = check(ZOO[name])
    phi = result.values[0]  # (N, T, V, F, 2)
    for j, node in enumerate(EXPLAINED):
        distance = hops(node)
        for t in range(T):
            reach = RECEPTIVE_FIELD[name](t)
            outside = distance > reach
            if outside.any():
                assert_zero(phi[:, t, outside, :, j], f"{name}: nodes {np.flatnonzero(outside)} at step {t} for node {node}")
            assert np.count_nonzero(phi[:, t, distance == min(reach, distance.max()), :, j]) > 0, (
                f"{name}: the farthest nodes in reach of node {node} at step {t} get 0"
            )


def test_the_cells_are_the_librarys() -> None:
    """The loaded classes are the library's own, from its installed files, not stand-ins."""
    cell = library("gconv_gru", "GConvGRU")
    assert "torch_geometric_temporal" in sys.modules[cell.__module__].__file__
