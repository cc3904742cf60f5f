"""The small graph the graph-recurrent zoo tests share (tests/zoo/test_torch_geometric*.py): its edges,
PyG's batch of copies of it, the nodes whose readouts are explained, and hop distances for the exact zeros
outside a receptive field."""

from __future__ import annotations

import numpy as np
import torch

T, F, HIDDEN = 3, 2, 4
#: a path 0 - 1 - ... - 8 with a chord 2 - 5: undirected, as PyG stores it (both directions)
EDGES = [(i, i + 1) for i in range(8)] + [(2, 5)]
V = 9
EDGE_INDEX = torch.tensor(EDGES + [(j, i) for i, j in EDGES]).T
#: the nodes whose readouts the wrappers return: (N, 2)
EXPLAINED = [0, V - 1]


def hops(source: int) -> np.ndarray:
    """Breadth-first distances from ``source`` in the graph."""
    distance = np.full(V, -1)
    distance[source], frontier, d = 0, {source}, 0
    while frontier:
        d += 1
        frontier = {j for i, j in EDGE_INDEX.T.tolist() if i in frontier and distance[j] < 0}
        distance[list(frontier)] = d
    return distance


def batched(n: int) -> torch.Tensor:
    """The edge index of the disjoint union of n copies of the graph (PyG's batch)."""
    offsets = torch.arange(n).repeat_interleave(EDGE_INDEX.shape[1]) * V
    return EDGE_INDEX.repeat(1, n) + offsets
