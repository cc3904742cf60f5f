r"""Missing values (NaN): ``nanmean``, ``nansum``, ``nan_to_num``, and the NaN-safe backward.

Forecasters mark missing context with NaN and handle it themselves: a mean over the observed entries
(``nanmean``, ``nansum``), a fill (``nan_to_num``), a mask (``isnan(x)``, whose rule is
:class:`~rnnshap.rules.gates.Predicate`) used as a feature or as the condition of a ``where``.

Where an input and its reference hold NaN at the same entries (none at all, or both missing there),
which entries are missing is a constant of the explained function on that pair:

- ``nansum(x)`` is a sum over a constant set of entries, ``nanmean(x)`` that sum divided by a
  constant count: linear in ``x``, with multiplier 1 (``1 / count``) on the observed entries and 0
  on the missing ones. torch's own gradient is exactly that (``grad · ¬isnan(x)``), so the rule
  checks the two sides and lets torch differentiate.
- ``nan_to_num(x)`` is the identity on finite entries and a constant on the others: multiplier 1
  and 0, which is again torch's own gradient (``grad · isfinite(x)``).

Where the entries differ (an input is missing where its reference is observed, or the other way),
the difference of a missing value has no size, and anything the model computes from it has no
multiplier: these rules refuse by name (:class:`MissingMismatch`, advice ``"missing"``).

A missing entry that the model masks out is NaN on both sides of a pair, and the rules on the way to
the mask (the ``(x - loc) / scale`` before ``nan_to_num``) compute NaN multipliers there, which the
mask's multiplier 0 meets in the backward pass: ``0 · NaN`` is NaN, and it would spread through every
sum the entry takes part in. The rules above mark the pass (:func:`saw_missing_values`, kept in ``elementwise.py``
beside the multiplier rules that read it) whenever they meet a missing entry; the backward of every
multiplier rule in such a pass then passes 0 where the gradient arriving is 0, which is the exact product wherever the
multiplier is finite, and the only value that is right where it is not: nothing downstream depends
on that entry. A NaN that does reach the output keeps its non-zero gradient and stays NaN.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import OpCall, Rule
from .elementwise import (
    MissingValues,
    attach,
    missing_values_state,
    saw_missing_values,
    tracking_missing_values,
    with_multipliers,
)

Tensor = torch.Tensor


class MissingMismatch(ValueError):
    """A rule met a missing value on one side of a pair only (refused with the advice ``"missing"``)."""

    advice = "missing"


def _kinds(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.isnan(t), torch.isposinf(t), torch.isneginf(t)


def check_same_missing(x: Tensor, r: Tensor, what: str, non_finite: bool = False) -> bool:
    """Raise :class:`MissingMismatch` where ``x`` and ``r`` are missing (NaN; with ``non_finite`` also
    ±inf, each kind apart) at different entries; return whether any entry is missing."""
    if non_finite:
        finite = torch.isfinite(x)
        if bool(finite.all()) and bool(torch.isfinite(r).all()):
            return False
        same = all(torch.equal(a, b) for a, b in zip(_kinds(x), _kinds(r), strict=True))
    else:
        missing = torch.isnan(x)
        if not bool(missing.any()) and not bool(torch.isnan(r).any()):
            return False
        same = torch.equal(missing, torch.isnan(r))
    if not same:
        raise MissingMismatch(
            f"an explained input and its reference hold missing values (NaN{' or inf' if non_finite else ''}) at "
            f"different entries of what {what} ({mismatch_side(x, r)}), so the difference there has no size and what "
            "the model computes from it has no multiplier"
        )
    return True


def mismatch_side(x: Tensor, r: Tensor) -> str:
    """Which side of a pair holds the first entry missing on one side only: what a user changes (the explained
    windows or the background rows)."""
    xf, rf = ~torch.isfinite(x), ~torch.isfinite(r)
    if xf.shape != rf.shape:
        return "missing on one side only"
    first = (xf != rf).nonzero()
    if not first.numel():
        return "NaN on one side, an infinity on the other"
    position = tuple(int(i) for i in first[0])
    side = "the explained input" if bool(xf[position]) else "the background row"
    return f"first missing in {side} only, at {position} of that operand"


class _ThroughInputOnly(Rule):
    """A rule that attributes its operation through its one input tensor only (refused otherwise)."""

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) != 1 or call.tracked_positions() not in ((0,), (-1,)):
            return "rnnshap attributes it through its input only"
        return None


class NanToNum(_ThroughInputOnly):
    r"""``nan_to_num``: the identity on finite entries, a constant on NaN and ±inf entries.

    With the non-finite entries the same on both sides of every pair (each kind apart), multiplier 1 on
    the finite entries and 0 on the others. Refused where they differ.
    """

    def attribute(self, call: OpCall) -> Any:
        (x,), (r,) = call.inputs, call.references
        xd = x.detach()
        if check_same_missing(xd, r, "it fills", non_finite=True):
            saw_missing_values()
        output = call.evaluate([xd])
        return with_multipliers(output, [x], [torch.isfinite(xd).to(output.dtype)])


def _weighted(ctx: Any, grad: Tensor) -> list[Tensor]:
    """The backward of a reduction (:class:`NanReduction`): the gradient spread over its operand's entries, times the
    saved weights (``ctx.state``: the reduced dimensions, keepdim, the operand's dtype)."""
    (weights,) = ctx.saved_tensors
    dims, keepdim, dtype = ctx.state
    if not keepdim:
        for d in dims:  # (ascending: each unsqueeze puts back one reduced dimension where it was)
            grad = grad.unsqueeze(d)
    return [(grad * weights).to(dtype)]


def _reduced_dims(call: OpCall, x: Tensor) -> tuple[tuple[int, ...], bool]:
    """(the dimensions ``call`` reduces, ascending and non-negative; keepdim) of ``nansum`` / ``nanmean``."""
    args, kwargs = call.args, call.kwargs
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(x.dim())), keepdim
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted(d % max(x.dim(), 1) for d in dims)), keepdim


class NanReduction(_ThroughInputOnly):
    r"""``nansum`` / ``nanmean`` (any ``dim``, ``keepdim``, ``dtype``): a sum or mean over the observed entries.

    With the missing entries the same on both sides of every pair, linear in the input, with multiplier
    1 (``nansum``) or 1 / the number of observed entries (``nanmean``) on the observed entries and 0 on
    the missing ones. Refused where the missing entries differ.
    """

    def attribute(self, call: OpCall) -> Any:
        (x,), (r,) = call.inputs, call.references
        xd = x.detach()
        if check_same_missing(xd, r, "it reduces"):
            saw_missing_values()
        output = call.evaluate([xd])
        dims, keepdim = _reduced_dims(call, xd)
        weights = (~torch.isnan(xd)).to(output.dtype)
        if getattr(call.fn, "__name__", "") == "nanmean":
            weights = weights / weights.sum(dims, keepdim=True).clamp(min=1)
        return attach(output, [x], _weighted, [weights], (dims, keepdim, x.dtype))


NAN_REDUCTIONS = ("nanmean", "nansum")


def missing_value_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → rule for ``nanmean``, ``nansum`` and ``nan_to_num`` (see the module docstring)."""
    table: dict[Any, Rule] = {}
    for fn in forms(*NAN_REDUCTIONS):
        table[fn] = NanReduction()
    for fn in forms("nan_to_num"):
        table[fn] = NanToNum()
    return table


__all__ = [
    "MissingMismatch", "MissingValues", "NAN_REDUCTIONS", "NanReduction", "NanToNum", "check_same_missing", "mismatch_side",
    "missing_value_rules", "missing_values_state", "saw_missing_values", "tracking_missing_values",
]
