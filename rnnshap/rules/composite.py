r"""Rules for composite operations, each by decomposition into exact rules.

- ``F.glu``: :math:`a \odot \sigma(b)`, Rescale on σ, Shapley on the product.
- ``torch.lerp``: :math:`a + w \odot (b - a)`, linear unless the weight and an end both depend on
  the input, then Shapley on :math:`w \odot (b - a)`.
- ``var``, ``var_mean`` (a quadratic form): the gradient at the midpoint :math:`(x + r)/2`, exact
  for any quadratic form; ``std``, ``std_mean``: the same, then Rescale on the square root.
- ``F.normalize``: :math:`x / \max(\lVert x\rVert_p, \epsilon)`: the norm (Shapley on the squares
  and Rescale on the root, or Rescale on :math:`|x|` for p = 1), Rescale on the clamp, Shapley on
  the division (closed form).
- ``torch.logcumsumexp``: Rescale on exp, the linear cumulative sum, Rescale on log, with the
  multipliers of every (step, output) pair kept between 0 and 1 times the secants (no overflow
  however far the running totals drift).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch

from ..formulas import pairs
from ..formulas.torch_ops import TORCH
from .base import OpCall, Rule
from .elementwise import Shapley, attach, product, rescale, with_multipliers
from .secant import exp_ratio_slope, exp_slope, reciprocal_slope, secant, secant_output, secant_slope
from .structured import scaled

Tensor = torch.Tensor

#: ``inspect.signature``, read once per function (the module-level stubs of the torch functions the
#: rules serve; it is slow, and asked for on every call of a rule)
_signature = functools.cache(inspect.signature)


def _bind(fn: Callable[..., Any], call: OpCall) -> dict[str, Any]:
    bound = _signature(fn).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _first_operand(call: OpCall) -> tuple[Tensor, Tensor]:
    why = _not_first(call)
    if why is not None:
        raise ValueError(f"{call.name}: {why}")
    return call.inputs[0], call.references[0]


def _not_first(call: OpCall) -> str | None:
    if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
        return "its rule attributes it through its first argument only, but other arguments depend on the input"
    return None


class _FirstOperand(Rule):
    """A rule that attributes its operation through the first argument only."""

    def refusal(self, call: OpCall) -> str | None:
        """Why this call cannot be attributed (asked by the engine in both passes), or None."""
        return _not_first(call)


def quotient(a: Tensor, b: Tensor, a_ref: Tensor, b_ref: Tensor) -> tuple[Tensor, Tensor]:
    """``a / b`` with the exact two-player Shapley rule (:func:`rnnshap.formulas.pairs.quotient_multipliers`)."""
    ad, bd = a.detach(), b.detach()
    output, ref_output = ad / bd, a_ref / b_ref
    m_a, m_b = pairs.quotient_multipliers(TORCH, ad, bd, a_ref, b_ref)
    return with_multipliers(output, [a, b], [m_a.expand(output.shape), m_b.expand(output.shape)]), ref_output


def _quotient_operands(call: OpCall) -> tuple[Any, Any] | None:
    """(numerator, denominator) of a true division call, or None if it is not one."""
    if len(call.leaves) != 2 or len(call.args) != 2:
        return None
    a, b = call.args
    return (b, a) if call.name.endswith(("__rtruediv__", "__rdiv__")) else (a, b)


def _rounding_mode(call: OpCall) -> Any:
    return call.kwargs.get("rounding_mode", call.args[2] if len(call.args) > 2 else None)


class Quotient(Shapley):
    """True division ``a / b``: linear in ``a`` alone; with ``b`` tracked the exact two-player
    Shapley rule in closed form (:func:`rnnshap.formulas.pairs.quotient_multipliers`), exact on the small denominators of
    a normalization written by hand. A rounding mode (floor or trunc division) is refused."""

    def __init__(self, reverse: bool = False) -> None:
        super().__init__(linear_in=() if reverse else (0,))

    def refusal(self, call: OpCall) -> str | None:
        """Why this call cannot be attributed (asked by the engine in both passes), or None."""
        if _rounding_mode(call) is not None:
            return "it rounds the quotient (rounding_mode): a step function, whose change has no multiplier"
        return None

    def is_linear(self, call: OpCall) -> bool:
        return _rounding_mode(call) is None and super().is_linear(call)

    def attribute(self, call: OpCall) -> Any:
        operands = _quotient_operands(call)
        if operands is None:
            return super().attribute(call)
        a, b = operands
        tracked = [call.leaves[i] for i in call.tracked]
        if not any(b is t for t in tracked) or not all(isinstance(t, Tensor) and t.is_floating_point() for t in tracked):
            return super().attribute(call)
        a_ref, b_ref = call.reference_of(a, a), call.reference_of(b)
        output = call.evaluate([t.detach() for t in tracked])
        m_a, m_b = pairs.quotient_multipliers(TORCH, a.detach() if isinstance(a, Tensor) else a, b.detach(), a_ref, b_ref)
        if any(a is t for t in tracked):
            return with_multipliers(output, [a, b], [m_a.expand(output.shape), m_b.expand(output.shape)])
        return with_multipliers(output, [b], [m_b.expand(output.shape)])


class ScaledQuotient(Quotient):
    """``a / b``, both input-dependent, ``b`` a root (``sqrt``, ``std``, a norm): a normalization
    written by hand. The scale-weighted rule of the built-in norms (:func:`rnnshap.formulas.pairs.scaled_quotient_multipliers`);
    the engine chooses it (rnnshap/engines/pytorch/handwritten_norms.py)."""

    def attribute(self, call: OpCall) -> Any:
        operands = _quotient_operands(call)
        if operands is None or len(call.tracked) != 2:
            return super().attribute(call)
        a, b = operands
        a_ref, b_ref = call.reference_of(a), call.reference_of(b)
        output = call.evaluate([t.detach() for t in call.inputs])
        m_a, m_b = pairs.scaled_quotient_multipliers(TORCH, a.detach(), b.detach(), a_ref, b_ref)
        return with_multipliers(output, [a, b], [m_a.expand(output.shape), m_b.expand(output.shape)])


class ScaledProduct(Rule):
    """``c * s``, both input-dependent, ``s`` an inverse root (``rsqrt``, ``1 / sqrt``, ``pow(-0.5)``):
    a normalization written by hand, by the scale-weighted rule of the built-in norms
    (:func:`~rnnshap.rules.structured.scaled`). ``scale`` is the position of ``s`` among the two
    input-dependent operands; the engine chooses it (rnnshap/engines/pytorch/handwritten_norms.py)."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 2:
            raise ValueError(f"{call.name}: the scale-weighted product takes two input-dependent operands")
        k = self.scale
        output, _ = scaled(call.inputs[1 - k], call.inputs[k], call.references[1 - k], call.references[k], reference=False)
        return output

    def __repr__(self) -> str:
        return f"ScaledProduct(scale={self.scale})"


# -- glu -----------------------------------------------------------------------------------------------
def _glu_signature(input: Tensor, dim: int = -1) -> None: ...


class Glu(_FirstOperand):
    r"""glu(x) = a ⊙ σ(b) with (a, b) the halves of x: Rescale on σ, exact Shapley on the product."""

    def attribute(self, call: OpCall) -> Any:
        x, r = _first_operand(call)
        dim = _bind(_glu_signature, call)["dim"]
        a, b = x.chunk(2, dim)
        a_ref, b_ref = r.chunk(2, dim)
        gate, gate_ref = rescale(torch.sigmoid, b, b_ref)
        output, _ = product(a, gate, a_ref, gate_ref)
        return output


# -- lerp ----------------------------------------------------------------------------------------------
def _lerp_signature(input: Tensor, end: Tensor, weight: Any) -> None: ...


class Lerp(Rule):
    r"""lerp(a, b, w) = a + w ⊙ (b − a): linear in (a, b) for a constant w and in w for constant
    ends; otherwise exact Shapley on the product w ⊙ (b − a), the rest linear."""

    def is_linear(self, call: OpCall) -> bool:
        bound = _bind(_lerp_signature, call)
        weight_tracked = call.is_tracked_value(bound["weight"])
        ends_tracked = call.is_tracked_value(bound["input"]) or call.is_tracked_value(bound["end"])
        return not (weight_tracked and ends_tracked)

    def attribute(self, call: OpCall) -> Any:
        bound = _bind(_lerp_signature, call)
        a, b, w = bound["input"], bound["end"], bound["weight"]
        a_ref, b_ref, w_ref = (call.reference_of(t, t) for t in (a, b, w))
        span, span_ref = b - a, b_ref - a_ref
        moved, _ = product(w, span, w_ref, span_ref)
        return a + moved


# -- variance and standard deviation ---------------------------------------------------------------------
def midpoint_quadratic(op: Callable[[Tensor], Any], x: Tensor, r: Tensor) -> Any:
    r"""``op(x)`` for an ``op`` that is a quadratic form of ``x`` (plus linear parts), with the
    gradient taken at the midpoint :math:`\bar x = (x + r)/2`.

    For a quadratic form, :math:`Q(x) - Q(r) = \nabla Q(\bar x) \cdot (x - r)` exactly, so the
    midpoint gradient is the exact multiplier (for :math:`Q(x) = \lVert x \rVert^2` it is the
    Shapley rule of :math:`x \odot x`, :math:`x + r`). The gradient is carried by
    :math:`S(x) = (Q(\bar x + x) - Q(\bar x - x))/2`, whose gradient is
    :math:`(\nabla Q(\bar x + x) + \nabla Q(\bar x - x))/2 = \nabla Q(\bar x)` because
    :math:`\nabla Q` is affine; linear parts (the mean of ``var_mean``) pass unchanged. Works for
    any arguments of ``op`` (dimensions, correction, keepdim), since it only calls ``op``.
    """
    mid = ((x.detach() + r) / 2).detach()
    with torch.no_grad():
        value = op(x.detach())
    plus, minus = op(mid + x), op(mid - x)
    if isinstance(value, tuple):
        return type(value)(tuple(v + ((p - m) / 2 - ((p - m) / 2).detach()) for v, p, m in zip(value, plus, minus, strict=True)))
    surrogate = (plus - minus) / 2
    return value + (surrogate - surrogate.detach())


class Variance(_FirstOperand):
    """var and var_mean (all their forms and arguments), by :func:`midpoint_quadratic`."""

    def attribute(self, call: OpCall) -> Any:
        x, r = _first_operand(call)
        return midpoint_quadratic(lambda t: call.evaluate([t]), x, r)


class Deviation(_FirstOperand):
    """std and std_mean: the variance of the same call (``variance``: torch.var for torch.std,
    Tensor.var_mean for Tensor.std_mean, ...) by :func:`midpoint_quadratic`, then Rescale on the
    square root with its secant :math:`1/(\\sqrt v + \\sqrt{v_r})` in closed form."""

    def __init__(self, variance: Callable[..., Any]) -> None:
        self.variance = variance

    def attribute(self, call: OpCall) -> Any:
        x, r = _first_operand(call)
        args, kwargs = call.args, call.kwargs

        def variance(t: Tensor) -> Any:
            return self.variance(t, *args[1:], **kwargs)

        var = midpoint_quadratic(variance, x, r)
        with torch.no_grad():
            var_ref = variance(r)
        if isinstance(var, tuple):  # std_mean: (std, mean)
            std = secant_output(torch.sqrt, var[0], var_ref[0])
            return type(var)((std, var[1]))
        std = secant_output(torch.sqrt, var, var_ref)
        return std

    def __repr__(self) -> str:
        return f"Deviation({getattr(self.variance, '__qualname__', self.variance)})"


# -- normalize -----------------------------------------------------------------------------------------
def _normalize_signature(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Tensor | None = None) -> None: ...


class Normalize(_FirstOperand):
    r"""F.normalize(x, p, dim, eps) = x / max(‖x‖_p, eps) for p = 2 and p = 1.

    p = 2: the squares by Shapley (multiplier :math:`x + x_r`), the sum linear, the root by Rescale
    (closed-form secant); p = 1: Rescale on :math:`|x|` (exact quotient), the sum linear. Then
    Rescale on the clamp at eps (piecewise: the quotient is exact), Rescale on the inverse
    (closed-form secant :math:`-1/(n n_r)`) and x ⊙ inverse by the scale-weighted rule of
    :func:`~rnnshap.rules.structured.scaled` (the Shapley rule where the two norms are close,
    bounded where an all-zero row is clamped at eps = 1e-12). Other p are refused.
    """

    def refusal(self, call: OpCall) -> str | None:
        why = _not_first(call)
        if why is None and float(_bind(_normalize_signature, call)["p"]) not in (1.0, 2.0):
            why = "rnnshap attributes F.normalize for p = 1 and p = 2 only"
        return why

    def attribute(self, call: OpCall) -> Any:
        x, r = _first_operand(call)
        bound = _bind(_normalize_signature, call)
        p, dim, eps = float(bound["p"]), bound["dim"], float(bound["eps"])
        if p == 2.0:
            square, square_ref = product(x, x, r, r)
            norm, norm_ref = secant(torch.sqrt, square.sum(dim, keepdim=True), square_ref.sum(dim, keepdim=True))
        elif p == 1.0:
            size, size_ref = rescale(torch.abs, x, r, smooth=False)
            norm, norm_ref = size.sum(dim, keepdim=True), size_ref.sum(dim, keepdim=True)
        else:
            raise ValueError(f"{call.name}: rnnshap attributes F.normalize for p = 1 and p = 2 only, not p = {p}")
        clamped, clamped_ref = rescale(lambda t: t.clamp_min(eps), norm, norm_ref, smooth=False)
        inverse, inverse_ref = secant(torch.reciprocal, clamped, clamped_ref, reciprocal_slope)
        output, _ = scaled(x, inverse, r, inverse_ref, reference=False)
        return output


# -- vector norms ----------------------------------------------------------------------------------------
def _norm_arguments(call: OpCall) -> tuple[Any, Any, bool, Any]:
    """(p, dim, keepdim, dtype) of ``torch.norm``, ``Tensor.norm`` or ``torch.linalg.vector_norm``."""
    args, kwargs = call.args, call.kwargs
    vector = getattr(call.fn, "__name__", "") == "linalg_vector_norm"
    p = args[1] if len(args) > 1 else kwargs.get("ord" if vector else "p", 2 if vector else "fro")
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    keepdim = bool(args[3] if len(args) > 3 else kwargs.get("keepdim", False))
    return p, dim, keepdim, kwargs.get("dtype")


class VectorNorm(_FirstOperand):
    r"""``torch.norm``, ``Tensor.norm`` and ``torch.linalg.vector_norm`` over given dimensions, p = 2
    (or ``"fro"``) and p = 1, decomposed as ``F.normalize`` decomposes its norm: p = 2 the squares by
    Shapley (multiplier :math:`x + x_r`), the sum linear, the root by Rescale (closed-form secant);
    p = 1 Rescale on :math:`|x|`, the sum linear. So ``x / x.norm(dim=1, keepdim=True).clamp_min(eps)``
    gets the values of ``F.normalize(x, dim=1)``. Other p, no dimension (a norm over the batch) and
    a ``dtype`` are refused."""

    def refusal(self, call: OpCall) -> str | None:
        why = _not_first(call)
        if why is not None:
            return why
        p, dim, _, dtype = _norm_arguments(call)
        if p not in (1, 2, 1.0, 2.0, "fro"):
            return f"rnnshap attributes vector norms for p = 1 and p = 2 only, not p = {p!r}"
        if dim is None:
            return "a norm over every dimension mixes the samples of the batch: give dim"
        if dtype is not None:
            return "rnnshap attributes a norm in its input's dtype: cast the input instead of passing dtype"
        return None

    def attribute(self, call: OpCall) -> Any:
        why = self.refusal(call)
        if why is not None:
            raise ValueError(f"{call.name}: {why}")
        x, r = _first_operand(call)
        p, dim, keepdim, _ = _norm_arguments(call)
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if p in (1, 1.0):
            size, size_ref = rescale(torch.abs, x, r, smooth=False)
            norm = size.sum(dims, keepdim=keepdim)
        else:
            square, square_ref = product(x, x, r, r)
            norm = secant_output(torch.sqrt, square.sum(dims, keepdim=keepdim), square_ref.sum(dims, keepdim=keepdim))
        return norm


# -- logcumsumexp ----------------------------------------------------------------------------------------
def _cumulative_logsumexp(ctx: Any, grad: Tensor) -> list[Tensor]:
    r"""Backward of :math:`L_t = \log \sum_{s \le t} e^{x_s}` (last axis) with the multipliers
    :math:`W_{st} = k_s\, g_t\, e^{\mu_s - \Lambda_t}` (see :class:`LogCumSumExp`)."""
    k, g, decay, lift = ctx.saved_tensors
    a = grad * g
    steps = a.shape[-1]
    carried = a[..., steps - 1]
    sums = [carried]
    for t in range(steps - 2, -1, -1):  # R_s = a_s + exp(Λ_s − Λ_{s+1}) R_{s+1}
        carried = a[..., t] + decay[..., t] * carried
        sums.append(carried)
    reverse = torch.stack(sums[::-1], -1)
    return [k * lift * reverse]


def _logcumsumexp_signature(input: Tensor, dim: int) -> None: ...


class LogCumSumExp(_FirstOperand):
    r"""torch.logcumsumexp by its decomposition: Rescale on exp, the linear cumulative sum, Rescale
    on log.

    The multiplier of step :math:`s` for output :math:`t \ge s` is the product of the secants,
    :math:`\frac{e^{x_s} - e^{r_s}}{x_s - r_s}\cdot\frac{L_t - L_{r,t}}{e^{L_t} - e^{L_{r,t}}}`.
    With :math:`\mu_s = \max(x_s, r_s)` and :math:`\Lambda_t = \max(L_t, L_{r,t})` it is
    :math:`k_s g_t e^{\mu_s - \Lambda_t}`, where :math:`k_s \in (0, 1]` is the exp secant at the
    shifted pair, :math:`g_t = |d|/(1 - e^{-|d|})`, :math:`d = L_t - L_{r,t}`, and
    :math:`\mu_s \le \Lambda_t`: nothing overflows and nothing is a difference of large numbers,
    however far the running totals drift (minGRU's log-space scan). The backward pass sums over
    :math:`t \ge s` by a reverse recursion with factors :math:`e^{\Lambda_s - \Lambda_{s+1}} \le 1`.
    Entries ``-inf`` on both sides get multiplier 0.
    """

    def attribute(self, call: OpCall) -> Any:
        x, r = _first_operand(call)
        dim = _bind(_logcumsumexp_signature, call)["dim"]
        xl, rl = x.movedim(dim, -1), r.movedim(dim, -1)
        with torch.no_grad():
            xd = xl.detach()
            total, total_ref = torch.logcumsumexp(xd, -1), torch.logcumsumexp(rl, -1)
            top = torch.maximum(xd, rl)
            finite_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            k = secant_slope(exp_slope, xd - finite_top, rl - finite_top)
            ceiling = torch.maximum(total, total_ref)
            g = exp_ratio_slope(-(total - total_ref).abs())  # |d| / (1 - e^-|d|)
            g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
            lift = torch.exp(top - ceiling)
            lift = torch.where(torch.isfinite(lift), lift, torch.zeros_like(lift))
            decay = torch.exp(ceiling[..., :-1] - ceiling[..., 1:])
            decay = torch.where(torch.isfinite(decay), decay, torch.zeros_like(decay))
        output = attach(total, [xl], _cumulative_logsumexp, (k, g, decay, lift))
        return output.movedim(-1, dim)


__all__ = [
    "Deviation",
    "Glu",
    "Lerp",
    "LogCumSumExp",
    "Normalize",
    "Quotient",
    "ScaledProduct",
    "ScaledQuotient",
    "Variance",
    "VectorNorm",
    "midpoint_quadratic",
    "quotient",
]
