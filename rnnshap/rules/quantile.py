r"""``torch.quantile`` and ``torch.nanquantile`` along a dimension: two order statistics and a linear interpolation.

torch computes a quantile as ``sort`` followed by a fixed interpolation between two ranks: with ``n`` values along
the dimension and the rank :math:`p = q\,(n - 1)`,

.. math:: Q_q(u) = (1 - w)\, u_{(\lfloor p \rfloor)} + w\, u_{(\lceil p \rceil)},

with :math:`w = p - \lfloor p \rfloor` (``interpolation="linear"``), :math:`w = 1/2` (``"midpoint"``), or one rank
alone (``"lower"``, ``"higher"``, ``"nearest"``: :math:`\lfloor p \rfloor`, :math:`\lceil p \rceil`, ``round(p)``).
The weights depend on ``q`` and ``n`` only, never on the values: the quantile is linear in the sorted values,
and each sorted value has the orderings' exact rule (:func:`~rnnshap.rules.maxima.ranked_values`: its change
credited to the position that decided its rank). So the quantile's change is split exactly, the weights times
the two ranks' credits; ``quantile(u, 0.5)`` of an odd count gets ``median``'s values, ``q = 0`` ``min``'s and
``q = 1`` ``max``'s (tests/rules/test_orderings.py).

NaN: ``quantile`` of a row with a NaN is NaN and ``nanquantile`` leaves NaNs out, so a row's ranks depend on where
its NaNs are; a NaN on either side of a pair is refused by name (not silently attributed).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import OpCall, Rule
from .maxima import ranked_values

Tensor = torch.Tensor

_INTERPOLATIONS = ("linear", "lower", "higher", "midpoint", "nearest")


def _bound(call: OpCall) -> tuple[Any, int | None, bool, str]:
    """(q, dim, keepdim, interpolation) of ``quantile(input, q, dim=None, keepdim=False, *, interpolation=...)``."""
    args, kwargs = call.args, call.kwargs

    def arg(position: int, name: str, default: Any) -> Any:
        return args[position] if len(args) > position else kwargs.get(name, default)

    dim = arg(2, "dim", None)
    interpolation = str(kwargs.get("interpolation", "linear"))
    return arg(1, "q", None), None if dim is None else int(dim), bool(arg(3, "keepdim", False)), interpolation


class Quantile(Rule):
    """``quantile`` / ``nanquantile`` over a dimension (see the module docstring)."""

    #: the kind of advice for a refusal (a key of rnnshap.errors.ADVICE)
    refusal_advice = "selection"

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            return "rnnshap takes the quantile of the first argument only, but another argument (q) depends on the input"
        q, dim, _, interpolation = _bound(call)
        if dim is None:
            return (
                "without a dimension it takes the quantile of the whole batch, so every row's value depends on the other "
                "rows: give it the dimension"
            )
        if call.kwargs.get("out") is not None:
            return "it writes into out=; call it without out="
        if interpolation not in _INTERPOLATIONS:
            return f"interpolation={interpolation!r} is none of torch's {_INTERPOLATIONS}"
        if call.inputs[0].dim() == 0:
            return "it takes the quantile of a single number; take the value itself"
        return None

    def attribute(self, call: OpCall) -> Any:
        q, dim, keepdim, interpolation = _bound(call)
        assert dim is not None
        x, r = call.inputs[0], call.references[0]
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(r).all())):
            error = ValueError(
                "it reads a NaN or infinite value on one side of a pair: the ranks it interpolates between depend on "
                "where the missing values are, which no multiplier carries"
            )
            error.advice = "missing"  # type: ignore[attr-defined]
            raise error
        dim = dim % x.dim()
        xs, rs = x.movedim(dim, -1), r.movedim(dim, -1)
        with torch.no_grad():
            order_x = torch.sort(xs.detach(), dim=-1, stable=True).indices
            order_r = torch.sort(rs, dim=-1, stable=True).indices
        ordered = ranked_values(xs, rs, order_x, order_r, largest=False)  # ascending, each rank credited
        qs = torch.as_tensor(q, dtype=x.dtype, device=x.device)
        scalar = qs.dim() == 0
        ranks = qs.reshape(-1) * (xs.shape[-1] - 1)  # as torch computes them (in the input's dtype)
        if interpolation == "lower":
            ranks = ranks.floor()
        elif interpolation == "higher":
            ranks = ranks.ceil()
        elif interpolation == "nearest":
            ranks = ranks.round()
        below = ordered[..., ranks.long()]
        if interpolation in ("linear", "midpoint"):
            weights = torch.full_like(ranks, 0.5) if interpolation == "midpoint" else ranks - ranks.long().to(ranks.dtype)
            values = torch.lerp(below, ordered[..., ranks.ceil().long()], weights)
        else:
            values = below
        values = values.movedim(-1, 0)  # torch's layout: the quantiles first, then the input's other dimensions
        if keepdim:
            values = values.unsqueeze(dim + 1)
        return values[0] if scalar else values


__all__ = ["Quantile"]
