r"""``torch.linalg.solve_triangular``: the exact Shapley split of a triangular solve between its matrix and its
right-hand side.

With :math:`X = A^{-1}B` (``left=True``) the two players' Shapley values are

.. math::

    \phi_B = \tfrac12\,(A^{-1} + A_r^{-1})\,\Delta B, \qquad
    \phi_A = \tfrac12\,(A^{-1} - A_r^{-1})(B + B_r) = -A^{-1}\,\Delta A\,A_r^{-1}\bar B,

the second through the resolvent identity :math:`A^{-1} - A_r^{-1} = -A^{-1}(A - A_r)A_r^{-1}`, with
:math:`\bar B = (B + B_r)/2`. Both are linear in their player's change, so each is a multiplier map and their sum is
:math:`X - X_r` exactly. ``left=False`` (:math:`X = BA^{-1}`) mirrors it: :math:`\phi_A = -\bar B A_r^{-1}\,\Delta A\,
A^{-1}`. The solve reads one triangle of :math:`A` (without its diagonal where ``unitriangular``): the other entries are
no players, and get exactly 0. Where only :math:`B` depends on the input the solve is linear in it (its gradient).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .base import OpCall, Rule

Tensor = torch.Tensor


def _solve_signature(A: Tensor, B: Tensor, *, upper: bool, left: bool = True, unitriangular: bool = False) -> None: ...


_SIGNATURE = inspect.signature(_solve_signature)


def _parts(call: OpCall) -> dict[str, Any]:
    bound = _SIGNATURE.bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def read_part(a: Tensor, upper: bool, unitriangular: bool) -> Tensor:
    """The entries of ``a`` a triangular solve reads (the rest 0): its upper or lower triangle, without the diagonal
    where ``unitriangular`` (the solve takes it as ones)."""
    offset = 1 if unitriangular else 0
    return a.triu(offset) if upper else a.tril(-offset)


class TriangularSolve(Rule):
    """``torch.linalg.solve_triangular(A, B, upper=, left=, unitriangular=)`` with input-dependent ``A``, ``B`` or
    both: the exact two-player Shapley split of the module docstring, as multipliers."""

    def refusal(self, call: OpCall) -> str | None:
        try:
            parts = _parts(call)
        except TypeError:
            return "a triangular solve is attributed as solve_triangular(A, B, upper=..., left=..., unitriangular=...)"
        tracked = [call.leaves[i] for i in call.tracked]
        if not all(any(t is parts[name] for name in ("A", "B")) for t in tracked):
            return "its input-dependent operands are attributed as the matrix A and the right-hand side B only"
        if parts["A"].is_complex() or parts["B"].is_complex():
            return "a complex triangular solve is not attributed"
        return None

    def is_linear(self, call: OpCall) -> bool:
        return not call.is_tracked_value(_parts(call)["A"])

    def attribute(self, call: OpCall) -> Any:
        parts = _parts(call)
        a, b = parts["A"], parts["B"]
        upper, left, unit = bool(parts["upper"]), bool(parts["left"]), bool(parts["unitriangular"])
        a_r, b_r = call.reference_of(a, a), call.reference_of(b, b)

        def solve(matrix: Tensor, rhs: Tensor) -> Tensor:
            return torch.linalg.solve_triangular(matrix, rhs, upper=upper, left=left, unitriangular=unit)

        a_d, a_rd = a.detach(), a_r.detach()
        with torch.no_grad():
            value = solve(a_d, b.detach())
            mid = (b.detach() + b_r.detach()) / 2
            through = solve(a_rd, mid)  # A_r⁻¹ B̄ (left), B̄ A_r⁻¹ (right)
        surrogate = (solve(a_d, b) + solve(a_rd, b)) / 2 if call.is_tracked_value(b) else torch.zeros_like(value)
        if call.is_tracked_value(a):
            moved = read_part(a, upper, unit)  # (only the entries the solve reads are players)
            surrogate = surrogate - solve(a_d, moved @ through if left else through @ moved)
        return surrogate + (value - surrogate).detach()


__all__ = ["TriangularSolve", "read_part"]
