r"""Elementwise rules: Rescale for one input-dependent operand, exact Shapley for several.

For an elementwise operation :math:`y = g(a_1, \dots, a_n)` whose operands all depend on the
explained input, the exact Shapley value of operand :math:`i` (each element is its own game) is

.. math::
    \phi_i = \sum_{S \subseteq N \setminus \{i\}} \frac{|S|!\,(n-|S|-1)!}{n!}
             \bigl[g(S \cup \{i\}) - g(S)\bigr],

where :math:`g(S)` evaluates :math:`g` with the operands in :math:`S` at their input values and
the others at their reference values. The multiplier is :math:`m_i = \phi_i / \Delta a_i`, so
:math:`\sum_i m_i \Delta a_i = g(a) - g(a_r)` holds exactly. With one operand this is the
Rescale rule :math:`m = (f(x) - f(r)) / (x - r)`. For a product it is the midpoint rule
:math:`m_a = (b + b_r)/2`, :math:`m_b = (a + a_r)/2`.

Where :math:`|\Delta a_i|` is too small for the quotient to be accurate, the multiplier is the
Shapley-weighted derivative with operand :math:`i` at the midpoint :math:`(a_i + a_{i,r})/2`
(for smooth operations) or at the input (for piecewise operations, whose quotient is exact down
to :math:`\Delta = 0`).
"""

from __future__ import annotations

from math import factorial
from typing import Any, Callable, Sequence

import torch

from .base import OpCall, Rule

Tensor = torch.Tensor
Players = Sequence[Tensor]

MAX_SHAPLEY_PLAYERS = 4


def small_delta_threshold(dtype: torch.dtype, smooth: bool) -> float:
    """Below this |Δ| the multiplier is taken from the derivative instead of the quotient.

    For smooth functions the quotient loses about ``eps / Δ`` relative accuracy while the midpoint
    derivative is off by about ``Δ²``: the two balance at ``eps ** (1/3)``. Piecewise functions
    have no curvature to fear, so only an exact zero needs the derivative.
    """
    if not smooth:
        return 0.0
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


class _MultiplierFunction(torch.autograd.Function):
    """Returns a precomputed output whose backward multiplies by precomputed multipliers.

    Only the multipliers are saved, so in-place changes to the operands after this op cannot
    corrupt the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, computed: Callable[[], tuple[Tensor, Players]], *operands: Tensor) -> Tensor:  # type: ignore[override]
        output, multipliers = computed()
        ctx.save_for_backward(*multipliers)
        ctx.shapes = [op.shape for op in operands]
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grads = [(grad * m).sum_to_size(shape) for m, shape in zip(ctx.saved_tensors, ctx.shapes, strict=False)]
        return (None, *grads)


def with_multipliers(output: Tensor, operands: Players, multipliers: Players) -> Tensor:
    """Attach ``multipliers`` (one per operand, broadcast to ``output``) as the gradient of ``output``."""
    if not any(op.requires_grad for op in operands):
        return output
    # The output is handed over in a closure: a custom Function may not return one of its inputs.
    computed = (output.detach(), [m.detach() for m in multipliers])
    return _MultiplierFunction.apply(lambda: computed, *operands)


def _derivative(g: Callable[[list[Tensor]], Tensor], players: list[Tensor], index: int, shape: torch.Size) -> Tensor:
    """Elementwise ∂g/∂players[index], broadcast to ``shape``."""
    with torch.enable_grad():
        point = players[index].detach().expand(shape).clone().requires_grad_(True)
        args = list(players)
        args[index] = point
        value = g(args)
        (grad,) = torch.autograd.grad(value, point, torch.ones_like(value), allow_unused=True)
    return torch.zeros(shape, dtype=point.dtype, device=point.device) if grad is None else grad


def shapley_multipliers(
    g: Callable[[list[Tensor]], Tensor], inputs: Players, references: Players, smooth: bool = True
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Exact Shapley multipliers of an elementwise function of ``len(inputs)`` operands.

    Returns ``(output, reference_output, multipliers)``; each multiplier has the output's shape.
    """
    n = len(inputs)
    if n > MAX_SHAPLEY_PLAYERS:
        raise ValueError(f"exact Shapley over {n} operands needs 2**{n} evaluations; at most {MAX_SHAPLEY_PLAYERS} are supported")
    inputs = [x.detach() for x in inputs]
    references = [r.detach() for r in references]
    values: dict[int, Tensor] = {}
    for mask in range(2**n):
        values[mask] = g([inputs[i] if mask >> i & 1 else references[i] for i in range(n)])
    full = 2**n - 1
    output, ref_output = values[full], values[0]
    shape = output.shape
    weights = [factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)]
    multipliers = []
    for i in range(n):
        bit = 1 << i
        others = [mask for mask in range(2**n) if not mask & bit]
        phi = sum(weights[bin(mask).count("1")] * (values[mask | bit] - values[mask]) for mask in others)
        delta = (inputs[i] - references[i]).expand(shape)
        small = delta.abs() <= small_delta_threshold(delta.dtype, smooth)
        multiplier = phi / torch.where(small, torch.ones_like(delta), delta)
        if bool(small.any()):
            at = (inputs[i] + references[i]) / 2 if smooth else inputs[i]
            slope = sum(
                weights[bin(mask).count("1")]
                * _derivative(g, [at if j == i else (inputs[j] if mask >> j & 1 else references[j]) for j in range(n)], i, shape)
                for mask in others
            )
            multiplier = torch.where(small, slope, multiplier)
        multipliers.append(_finite_where_still(multiplier, inputs[i], references[i], output, ref_output))
    return output, ref_output, multipliers


def _finite_where_still(multiplier: Tensor, x: Tensor, r: Tensor, output: Tensor, ref_output: Tensor) -> Tensor:
    """0 instead of a non-finite multiplier where nothing moves.

    An operand that is the same infinity on both sides (a ``-inf`` mask entry) gives Δ = inf − inf
    = NaN; no finite change upstream moves it, so its multiplier is 0. A derivative that is
    infinite where Δ = 0 (``sqrt`` at 0) is replaced by 0 too, as is any non-finite multiplier where
    the output is the same on both sides: 0 · inf would otherwise make the backward pass NaN.
    """
    finite = torch.isfinite(multiplier)
    if bool(finite.all()):
        return multiplier
    still = (x == r) | (output == ref_output)
    return torch.where(~finite & still, torch.zeros_like(multiplier), multiplier)


def shapley(
    g: Callable[[list[Tensor]], Tensor], inputs: Players, references: Players, smooth: bool = True
) -> tuple[Tensor, Tensor]:
    """Apply ``g`` elementwise with exact Shapley multipliers; returns ``(output, reference_output)``."""
    output, ref_output, multipliers = shapley_multipliers(g, inputs, references, smooth)
    return with_multipliers(output, inputs, multipliers), ref_output


def rescale(f: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, smooth: bool = True) -> tuple[Tensor, Tensor]:
    """Apply the unary elementwise ``f`` with the Rescale rule; returns ``(f(x), f(r))``."""
    return shapley(lambda p: f(p[0]), [x], [r], smooth)


def product(a: Tensor, b: Tensor, a_ref: Tensor, b_ref: Tensor) -> tuple[Tensor, Tensor]:
    """``a * b`` with the exact two-player Shapley rule: m_a = (b + b_r)/2, m_b = (a + a_r)/2."""
    output = a.detach() * b.detach()
    ref_output = a_ref * b_ref
    m_a = ((b.detach() + b_ref) / 2).expand(output.shape)
    m_b = ((a.detach() + a_ref) / 2).expand(output.shape)
    return with_multipliers(output, [a, b], [m_a, m_b]), ref_output


class Shapley(Rule):
    """Exact Shapley over the input-dependent operands of an elementwise operation.

    ``linear_in`` lists positional arguments in which the operation is linear when it is the only
    input-dependent operand (the numerator of a division), so the plain gradient is used then.
    ``smooth=False`` marks piecewise operations (relu, clamp, maximum): their multipliers are
    never taken from a derivative at a midpoint, which could sit on a kink.
    """

    def __init__(self, smooth: bool = True, linear_in: Sequence[int] = ()) -> None:
        self.smooth = smooth
        self.linear_in = tuple(linear_in)

    def is_linear(self, call: OpCall) -> bool:
        positions = call.tracked_positions()
        return len(positions) == 1 and positions[0] in self.linear_in

    def attribute(self, call: OpCall) -> Any:
        output, _ = shapley(call.evaluate, call.inputs, call.references, self.smooth)
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(smooth={self.smooth})"


class Rescale(Shapley):
    """The Rescale rule, m = (f(x) − f(r)) / (x − r), for an operation with one input-dependent operand."""

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1:
            raise ValueError(
                f"Rescale applies to operations with one input-dependent operand; {call.name} has "
                f"{len(call.tracked)}. Use rnnshap.rules.Shapley() for several operands."
            )
        return super().attribute(call)


class Product(Rule):
    """Elementwise multiplication: linear in one operand, exact two-player Shapley in two."""

    def is_linear(self, call: OpCall) -> bool:
        return len(call.tracked) == 1

    def attribute(self, call: OpCall) -> Any:
        (a, b), (a_ref, b_ref) = call.inputs, call.references
        output, _ = product(a, b, a_ref, b_ref)
        return output


class Bilinear(Rule):
    r"""Operations linear in each of two operands (matmul, bmm, einsum of two tensors).

    For a bilinear :math:`f`, :math:`f(A,B) - f(A_r,B_r) = f(\Delta A, \bar B) + f(\bar A, \Delta B)`
    with midpoints :math:`\bar A = (A + A_r)/2`: the Shapley split of every product term. The
    gradient is therefore taken at the midpoints while the value stays :math:`f(A, B)`.
    """

    def is_linear(self, call: OpCall) -> bool:
        return len(call.tracked) == 1

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 2:
            raise ValueError(f"{call.name}: the bilinear rule takes two input-dependent operands, got {len(call.tracked)}")
        (a, b), (a_ref, b_ref) = call.inputs, call.references
        a_mid, b_mid = ((a + a_ref) / 2).detach(), ((b + b_ref) / 2).detach()
        surrogate = call.evaluate([a, b_mid]) + call.evaluate([a_mid, b])
        with torch.no_grad():
            value = call.evaluate([a.detach(), b.detach()])
        return surrogate + (value - surrogate).detach()
