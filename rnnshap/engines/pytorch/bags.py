"""An embedding bag (``F.embedding_bag``, ``nn.EmbeddingBag``) as the lookup of every token and the bag's
reduction, so that each token of a bag gets its share.

:class:`~rnnshap.engines.pytorch.discrete.Integers` follows the token ids to the lookup (each looked-up
vector a leaf of the input pass, like an embedding's output) and runs the reduction below through the
pass, where its operations meet their rules (``index_add`` is linear; the max of ``mode="max"`` is
rnnshap's max rule). What is here is the index arithmetic of a bag, apart from the follower's state:
:func:`bag_layout`, which bag each token falls in and which tokens count, and :func:`reduce_bag`, the
bag's sum, mean or max of the looked-up vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass
class BagLayout:
    """Where each of the ``n`` tokens of an embedding bag call (flattened) goes."""

    #: the number of bags
    bags: int
    #: int64 (n,): the bag of each token
    bag: Tensor
    #: int64 (n,): each token's position within its bag
    within: Tensor
    #: bool (n,): the tokens that count (in a bag, and not ``padding_idx`` in the explained sample)
    keep: Tensor
    #: the tokens' device
    device: torch.device


def bag_layout(
    tokens: Tensor, offsets: Any, include_last_offset: bool, padding_idx: int | None, rows: int, shadow: Tensor
) -> BagLayout:
    """The bags of ``tokens``: a 2-D ``tokens`` is one bag per row; a 1-D one is cut by ``offsets``
    (``include_last_offset``: the last offset ends the last bag). ``padding_idx`` (of a table of ``rows``
    rows) leaves out the tokens that are padding in ``shadow``, the explained sample's ids, on both sides."""
    device = tokens.device
    n = tokens.numel()
    position = torch.arange(n, device=device)
    if tokens.dim() == 2:
        bags, width = tokens.shape
        bag = position // max(width, 1)
        within = position % max(width, 1)
        keep = torch.ones(n, dtype=torch.bool, device=device)
    else:
        assert isinstance(offsets, Tensor)
        starts = offsets.to(torch.int64)
        if include_last_offset:
            ends, starts = starts[1:], starts[:-1]
        else:
            ends = torch.cat([starts[1:], torch.tensor([n], device=device)])
        bags = int(starts.numel())
        bag = (torch.searchsorted(starts, position, right=True) - 1).clamp(min=0)
        within = position - starts[bag]
        keep = (position >= starts[bag]) & (position < ends[bag]) if bags else torch.zeros(n, dtype=torch.bool, device=device)
    if padding_idx is not None:
        pad = padding_idx + rows if padding_idx < 0 else padding_idx
        keep = keep & (shadow.reshape(-1) != pad)
    return BagLayout(int(bags), bag, within, keep, device)


def reduce_bag(
    looked_up: Tensor, layout: BagLayout, mode: str, weights: Tensor | None, weight: Tensor, dim: int, dtype: torch.dtype
) -> Tensor:
    """The bag's ``mode`` ("sum", "mean" or "max") of ``looked_up`` (n, ``dim``), each token's vector, with
    ``weights`` (per token, "sum" only) and ``layout``: (bags, dim) in ``dtype``, the table's (``weight``). An
    empty bag is zeros, as torch's. (``dim`` and ``dtype`` are read by the caller, outside the pass.)"""
    bags, bag, within, keep, device = layout.bags, layout.bag, layout.within, layout.keep, layout.device
    if mode in ("sum", "mean"):
        coefficient = keep.to(dtype)
        if weights is not None:
            coefficient = weights.reshape(-1) * coefficient
        weighted = looked_up * coefficient.unsqueeze(-1)
        result = torch.zeros(bags, dim, dtype=dtype, device=device).index_add(0, bag, weighted)
        if mode == "mean":
            count = torch.zeros(bags, dtype=dtype, device=device).index_add(0, bag, keep.to(dtype))
            result = result / count.clamp(min=1).unsqueeze(-1)
        return result
    kept = keep.nonzero().squeeze(1)
    length = int(within[kept].max()) + 1 if kept.numel() else 0
    if length == 0:
        return torch.zeros(bags, dim, dtype=dtype, device=device)
    fill = float(weight.detach().min()) - 1.0  # below every row: never a bag's maximum, equal on both sides
    slots = bag[kept] * length + within[kept]
    padded = torch.full((bags * length, dim), fill, dtype=dtype, device=device).index_copy(0, slots, looked_up[kept])
    maxima = padded.reshape(bags, length, dim).amax(1)
    nonempty = torch.zeros(bags, dtype=torch.bool, device=device).index_fill(0, bag[kept], True)
    return torch.where(nonempty.unsqueeze(-1), maxima, torch.zeros((), dtype=dtype, device=device))


__all__ = ["BagLayout", "bag_layout", "reduce_bag"]
