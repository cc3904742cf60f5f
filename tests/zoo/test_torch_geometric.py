"""torch_geometric: message passing inside recurrent models, on a fixed small graph.

``torch-geometric-temporal`` does not install here (it needs ``torch-sparse``, which fails to build),
so its two recurrent graph cells are written from their published equations with PyG's own layers:

- T-GCN (Zhao et al. 2019, as torch-geometric-temporal's ``TGCN`` defines it): a GRU whose update,
  reset and candidate gates each read a ``GCNConv`` of the step's node features next to the node's
  own hidden state, ``u = σ(W_u [GCN_u(X_t), H]), r = σ(W_r [GCN_r(X_t), H]),
  c = tanh(W_c [GCN_c(X_t), r ⊙ H]), H' = u ⊙ H + (1 − u) ⊙ c``;
- GConvGRU (Seo et al. 2018, "Structured sequence modeling with graph convolutional recurrent
  networks"): a GRU whose input and hidden transforms are both Chebyshev convolutions (``ChebConv``,
  K = 2: one hop each), ``z = σ(Cheb_xz(X_t) + Cheb_hz(H)), r = σ(Cheb_xr(X_t) + Cheb_hr(H)),
  h̃ = tanh(Cheb_xh(X_t) + Cheb_hh(r ⊙ H)), H' = z ⊙ H + (1 − z) ⊙ h̃``;

and a plain stack, two ``GCNConv`` layers on every step's node features, then ``nn.GRU`` along time
for every node. A batch of N graph sequences is PyG's disjoint union of N copies of the graph.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .graph import EDGE_INDEX, EXPLAINED, HIDDEN, F, T, V, batched, hops
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_zero, check, params

pytest.importorskip("torch_geometric")
from torch_geometric.nn import ChebConv, GCNConv  # noqa: E402


def _tgcn_cell(m: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, h: torch.Tensor, edge_weight: torch.Tensor | None = None
               ) -> torch.Tensor:  # fmt: skip
    conv_u, conv_r, conv_c = (conv(x, edge_index, edge_weight) for conv in m.convs)
    u = torch.sigmoid(m.linears[0](torch.cat([conv_u, h], -1)))
    r = torch.sigmoid(m.linears[1](torch.cat([conv_r, h], -1)))
    c = torch.tanh(m.linears[2](torch.cat([conv_c, r * h], -1)))
    return u * h + (1 - u) * c


def tgcn_cell(features: int, hidden: int) -> Composite:
    """T-GCN: graph convolutions of the input inside the GRU's gates."""
    return Composite(_tgcn_cell, convs=nn.ModuleList(GCNConv(features, hidden) for _ in range(3)),
                     linears=nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(3)))  # fmt: skip


def _gconv_gru_cell(m: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    (x_z, x_r, x_h), (h_z, h_r, h_h) = m.x_convs, m.h_convs
    z = torch.sigmoid(x_z(x, edge_index) + h_z(h, edge_index))
    r = torch.sigmoid(x_r(x, edge_index) + h_r(h, edge_index))
    candidate = torch.tanh(x_h(x, edge_index) + h_h(r * h, edge_index))
    return z * h + (1 - z) * candidate


def gconv_gru_cell(features: int, hidden: int, K: int = 2) -> Composite:  # noqa: N803 (ChebConv's K)
    """GConvGRU: Chebyshev convolutions of the input and of the hidden state."""
    return Composite(_gconv_gru_cell, x_convs=nn.ModuleList(ChebConv(features, hidden, K) for _ in range(3)),
                     h_convs=nn.ModuleList(ChebConv(hidden, hidden, K) for _ in range(3)))  # fmt: skip


class Recurrent(nn.Module):
    """``f(x) -> (N, 2)``: a recurrent graph cell over the T steps of ``x`` (N, T, V, F) from a zero
    state, and a linear readout of the last state of the nodes ``EXPLAINED``; ``f(x, w)``, with the
    edge weights ``w`` (N, edges) as an input too."""

    def __init__(self, cell: nn.Module, edge_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(HIDDEN, 1)
        self.register_buffer("edge_weight", edge_weight)  # fixed weights of the graph's edges: (edges,)

    def forward(self, x: torch.Tensor, *edge_weight: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        edge_index = batched(n)
        if self.edge_weight is not None:
            edge_weight = (self.edge_weight.to(x.dtype).repeat(n),)
        h = x.new_zeros(n * V, HIDDEN)
        for t in range(T):
            h = self.cell(x[:, t].reshape(n * V, F), edge_index, h, *(w.reshape(-1) for w in edge_weight))
        return self.head(h).reshape(n, V)[:, EXPLAINED]


def _gcn_then_gru(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    edge_index = batched(n * T)  # every (graph, step) is a graph of the batch
    z = torch.relu(m.conv1(x.reshape(n * T * V, F), edge_index))
    z = m.conv2(z, edge_index).reshape(n, T, V, HIDDEN)
    out, _ = m.gru(z.transpose(1, 2).reshape(n * V, T, HIDDEN))  # (graph, node) sequences
    return m.head(out[:, -1]).reshape(n, V)[:, EXPLAINED]


def gcn_then_gru() -> Composite:
    """Two ``GCNConv`` layers on every step's node features, then ``nn.GRU`` along time per node."""
    return Composite(_gcn_then_gru, conv1=GCNConv(F, HIDDEN), conv2=GCNConv(HIDDEN, HIDDEN),
                     gru=nn.GRU(HIDDEN, HIDDEN, batch_first=True), head=nn.Linear(HIDDEN, 1))  # fmt: skip


def _build(make: Callable[[], nn.Module]) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        return Case(make().eval(), [torch.randn(N_BACKGROUND, T, V, F)], [torch.randn(N_EXPLAINED, T, V, F)])

    return build


def _edge_weights() -> Case:
    case = _build(lambda: Recurrent(tgcn_cell(F, HIDDEN)))()
    E = EDGE_INDEX.shape[1]
    return Case(case.model, [*case.background, torch.rand(N_BACKGROUND, E) + 0.5], [*case.X, torch.rand(N_EXPLAINED, E) + 0.5])


ZOO = {
    "TGCN": Spec(_build(lambda: Recurrent(tgcn_cell(F, HIDDEN)))),
    # weighted degrees in gcn_norm, from the model's constants
    "TGCN-fixed_edge_weight": Spec(_build(lambda: Recurrent(tgcn_cell(F, HIDDEN), torch.rand(EDGE_INDEX.shape[1]) + 0.5))),
    "GConvGRU-Cheb_K2": Spec(_build(lambda: Recurrent(gconv_gru_cell(F, HIDDEN)))),
    "GCNConv-GCNConv-GRU": Spec(_build(gcn_then_gru)),
    # the edge weights as an input: GCNConv's gcn_norm sets the inverse square root of a zero degree
    # to 0 with deg_inv_sqrt.masked_fill_(deg_inv_sqrt == inf, 0), a mask of input-dependent values
    "TGCN-edge_weight": Spec(_edge_weights, refused="torch.Tensor.__eq__", mentions="masked_fill_"),
}

#: how many hops the readout after the last step reaches into the features of step t (0-based).
#: T-GCN's hidden state never leaves its node: 1 hop (the gates' GCN) at every step. GConvGRU's
#: candidate convolves r ⊙ H, r a convolution of X_t and H: the state after step t reads X_t within
#: 2 hops (1 at step 0, where H = 0 and r ⊙ H is exactly 0 whatever r), and every later step adds
#: 2. Two GCN layers, then a GRU per node: 2 hops at every step.
RECEPTIVE_FIELD: dict[str, Callable[[int], int]] = {
    "TGCN": lambda t: 1,
    "TGCN-fixed_edge_weight": lambda t: 1,
    "GConvGRU-Cheb_K2": lambda t: (2 if t > 0 else 1) + 2 * (T - 1 - t),
    "GCNConv-GCNConv-GRU": lambda t: 2,
}


@pytest.mark.parametrize("name", params(ZOO))
def test_zoo(name: str) -> None:
    """Exact; and a node outside the receptive field of an explained node, at a step, gets exactly 0
    for that node's readout (and the receptive field is not empty: the check has something to see);
    or refused by name."""
    result = check(ZOO[name])
    if ZOO[name].refused is not None:
        return
    phi = result.values[0]  # (N, T, V, F, 2)
    for j, node in enumerate(EXPLAINED):
        distance = hops(node)
        for t in range(T):
            outside = distance > RECEPTIVE_FIELD[name](t)
            assert outside.any(), f"{name}: every node is within reach of node {node} at step {t}"
            assert_zero(phi[:, t, outside, :, j], f"{name}: nodes {np.flatnonzero(outside)} at step {t} for node {node}")
            assert np.count_nonzero(phi[:, t, distance == RECEPTIVE_FIELD[name](t), :, j]) > 0, (
                f"{name}: the farthest nodes in reach of node {node} at step {t} get 0"
            )
