r"""Rules for operations that are not elementwise: softmax, logsumexp, max-pool and max
reductions, layer / RMS / group norm.

Each is attributed either by decomposition into elementwise rules (softmax, log-softmax,
logsumexp, the norms) or by routing the change of every selected maximum to the positions that
produced it (max-pool and max reductions, as shap's max-pool rule). Entries that are ``-inf`` on
both sides (attention masks) contribute 0 and get multiplier 0 in all of them.

The maxima and orderings (:class:`MaxPool`, :class:`MaxReduction`, :func:`routed_max`, :func:`ranked_values`,
:func:`picked_index`) are in :mod:`rnnshap.rules.maxima`, and are named here too.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from ..formulas import pairs
from ..formulas import secant as formulas
from ..formulas.torch_ops import TORCH
from ..formulas.torch_ops import vmap_batched as _IS_BATCHED
from .base import EvalOnly, OpCall, PairGrid, Rule
from .elementwise import attach, product, with_multipliers
from .maxima import MaxPool, MaxReduction, picked_index, ranked_values, routed_max
from .secant import rsqrt_slope, secant, secant_output, secant_slope

Tensor = torch.Tensor


def _bind(signature: inspect.Signature, call: OpCall) -> dict[str, Any]:
    bound = signature.bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _softmax_signature(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None) -> None: ...


_SOFTMAX = inspect.signature(_softmax_signature)


def _softmax_parts(call: OpCall) -> tuple[Tensor, Tensor, int]:
    if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
        raise ValueError(f"{call.name}: expected the input-dependent tensor as the first argument")
    bound = _bind(_SOFTMAX, call)
    x, r = call.inputs[0], call.references[0]
    if bound["dtype"] is not None:
        x, r = x.to(bound["dtype"]), r.to(bound["dtype"])
    dim = bound["dim"]
    if dim is None:  # torch's legacy implicit dimension
        dim = 0 if x.dim() in (0, 1, 3) else 1
    return x, r, dim


def shifted_logsumexp(x: Tensor, r: Tensor, dim: int | tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\log \sum_i e^{x_i}` by its decomposition: Rescale on exp, the linear sum, Rescale on log.

    Both sides are shifted by the same :math:`c` (the larger of their maxima, detached), which
    changes neither the values nor the multipliers: with :math:`e = e^{x - c}`,
    :math:`S = \sum e`, the multiplier of :math:`x_i` is the product of the two secants
    :math:`\frac{e_i - e_{r,i}}{x_i - r_i} \cdot \frac{\log S - \log S_r}{S - S_r}`, each in a
    closed form (:mod:`rnnshap.rules.secant`). Where one side's sum underflows (its maximum lies
    more than ~87 below the other's in float32), its log is taken from a stable logsumexp instead
    of :math:`\log 0`.

    Entries that are ``-inf`` on both sides (masked) get multiplier 0; a row that is ``-inf``
    throughout on both sides has :math:`\log S = \log S_r = -\infty` and multiplier 0.

    Returns ``(x - c, r - c, log S, log S_r, c)``, ``log S`` carrying the multipliers; the
    logsumexp is ``log S + c``. Everything is keepdim.
    """
    top = _common_shift(x.detach(), r.detach(), dim)
    xs = x - top
    rs, log_total, log_total_ref, multiplier = _logsumexp_parts(xs.detach(), r.detach(), top, dim)
    log_total = with_multipliers(log_total, [xs], [multiplier])
    return xs, rs, log_total, log_total_ref, top


def _common_shift(x: Tensor, r: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    return pairs.common_shift(TORCH, x.amax(dim, keepdim=True), r.amax(dim, keepdim=True))


def _logsumexp_parts(xs: Tensor, r: Tensor, top: Tensor, dim: int | tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`shifted_logsumexp`'s values, without gradients: ``(r - c, log S, log S_r, the multiplier of x - c)``,
    ``xs`` = ``x - c`` given."""
    rs = r - top
    e, e_ref = torch.exp(xs), torch.exp(rs)
    e_slopes = _exp_secant(e, e_ref, xs, rs)
    total, total_ref = e.sum(dim, keepdim=True), e_ref.sum(dim, keepdim=True)
    log_total, log_total_ref = _stable_log(total, xs, dim), _stable_log(total_ref, rs, dim)
    log_slopes = pairs.log_sum_multiplier(TORCH, total, total_ref, log_total, log_total_ref)
    return rs, log_total, log_total_ref, e_slopes * log_slopes


def _softmax_chain(ctx: Any, grad: Tensor) -> list[Tensor]:
    r"""The backward of softmax's decomposition (:class:`Softmax`) as one node: the backward of its chain, the same
    operations in the same order. With :math:`a = x_s - \log S` and the output :math:`e^a`, the chain's backward is
    :math:`g_2 = g \cdot m_{\exp}` (the last exp's secant), :math:`s = \sum (-g_2)` over the softmax's axis (the
    subtraction of :math:`\log S`), :math:`g_1 = s \cdot m_{\log S}` (the logsumexp's multiplier), and
    :math:`g_2 + g_1` (the two uses of :math:`x_s`); :math:`\sum(-g_2) = -\sum g_2` exactly. Where a pass meets
    missing values, each multiplier's product is 0 where its incoming gradient is (as ``with_multipliers``)."""
    m_exp, m_log = ctx.saved_tensors
    missing = ctx.missing is not None and ctx.missing.seen
    g2 = grad * m_exp
    if missing:
        g2 = g2.masked_fill(grad == 0, 0.0)
    s = -g2.sum_to_size(ctx.state)
    g1 = s * m_log
    if missing:
        g1 = g1.masked_fill(s == 0, 0.0)
    return [g2 + g1]


def _fused_softmax(x: Tensor, r: Tensor, dim: int, grid: PairGrid | None = None) -> Tensor | None:
    """:class:`Softmax`'s output with its multipliers as one node (:func:`fused_softmax`); None where a row is masked
    throughout."""
    fused = fused_softmax(x, r, dim, reference=False, grid=grid)
    return None if fused is None else fused[0]


def fused_softmax(
    x: Tensor, r: Tensor, dim: int, reference: bool = True, unless: Tensor | None = None, grid: PairGrid | None = None
) -> tuple[Tensor, Tensor | None] | None:
    """Softmax's decomposition (:class:`Softmax`) with its multipliers as one node (:func:`_softmax_chain`): the
    chain's values (and, with ``reference``, the reference side's, as the chain computes them); None where a row of
    ``x`` is masked throughout (``-inf``: the chain handles it), or where ``unless`` (a bool tensor on ``x``'s device,
    a caller's own test) is true: read together, one host read in all.

    With a ``grid`` that defers its checks (:meth:`PairGrid.defer`, the explainer's pass) the test is not read here:
    the fused node is taken, and the test that it was the right choice waits for the end of the pass with the rows'
    checks, one host read for all (a call's every softmax and attention layer: TinyTimeMixer's eight). Where it
    failed, the engine runs the pass again with each test read at once, which takes the other path there."""
    xd, rd = x.detach(), r.detach()
    max_x = xd.amax(dim, keepdim=True)
    top = pairs.common_shift(TORCH, max_x, rd.amax(dim, keepdim=True))
    xs = xd - top
    rs, log_total, log_total_ref, m_log = _logsumexp_parts(xs, rd, top, dim)
    # (a choice of path, read on every device: surely_none would say False unread on an accelerator, and the chain
    # would run where the fused node gives the same values with fewer operations. Read once, after the parts, which a
    # row masked throughout makes -inf or NaN but which are then not used; log S is -inf only where a row of x is)
    masked = torch.isneginf(max_x).any() | torch.isneginf(log_total).any()
    if unless is not None:
        masked = masked | unless
    if grid is not None and grid.deferred is not None:
        grid.defer(~masked)
    elif bool(masked):
        return None
    shifted, shifted_ref = xs - log_total, rs - log_total_ref
    output = torch.exp(shifted)
    if not x.requires_grad:
        return output, torch.exp(shifted_ref) if reference else None
    ref_output = torch.exp(shifted_ref)
    m_exp = _exp_secant(output, ref_output, shifted, shifted_ref).expand(output.shape)
    return attach(output, [x], _softmax_chain, (m_exp, m_log), log_total.shape), ref_output if reference else None


def _exp_secant(e: Tensor, e_ref: Tensor, x: Tensor, r: Tensor) -> Tensor:
    """``secant_slope(exp_slope, x, r)`` from ``e = exp(x)`` and ``e_ref = exp(r)``, which the caller has."""
    return formulas.still_zero(TORCH, formulas.exp_secant(TORCH, torch.maximum(e, e_ref), x - r), x, r)


def _stable_log(total: Tensor, shifted: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """:func:`pairs.stable_log` of ``total`` (the sum of ``exp(shifted)`` over ``dim``), its logsumexp computed only
    where some sum is not a normal number (elsewhere the where picks the log of the sum: the same values)."""
    if TORCH.surely_all(total >= TORCH.tiny(total.dtype)):
        return torch.log(total)
    return pairs.stable_log(TORCH, total, torch.logsumexp(shifted, dim, keepdim=True))


def finite_total(total: Tensor, total_ref: Tensor) -> tuple[Tensor, Tensor]:
    """The totals with rows masked throughout (``-inf`` on both sides) replaced by 0: no gradient
    flows there, and the outputs there become ``-inf`` instead of ``-inf - (-inf)``."""
    dead = torch.isneginf(total.detach()) & torch.isneginf(total_ref)
    if TORCH.surely_none(dead):  # (elsewhere the where's pick the totals: the same values)
        return total, total_ref
    return torch.where(dead, torch.zeros_like(total), total), torch.where(dead, torch.zeros_like(total_ref), total_ref)


def _as_torch_in_dead_rows(output: Tensor, total: Tensor) -> Tensor:
    """NaN in fully masked rows, as torch gives; the gradient there is 0, so no NaN flows back."""
    dead = torch.isneginf(total.detach())
    if TORCH.surely_none(dead):
        return output
    return torch.where(dead, torch.full_like(output, float("nan")), output)


class Softmax(Rule):
    r"""softmax(x) = exp(x − logsumexp(x)), each part by its rule: Rescale on exp, the linear sum,
    Rescale on log (together :func:`shifted_logsumexp`), the linear difference, Rescale on the
    final exp.

    DESIGN.md first proposed e / Σe with Shapley on the division; its cross terms e/Σe_r grow
    like exp(max x − max r), so for confident logits the exact values reach 1e7 on an output in
    [0, 1] and cancel, which float32 cannot carry. This decomposition stays bounded.

    Entries that are ``-inf`` on both sides (an additive or ``masked_fill`` mask) contribute 0 and
    get multiplier 0; rows that are ``-inf`` throughout give NaN, as in torch, with a zero gradient.
    """

    def attribute(self, call: OpCall) -> Any:
        x, r, dim = _softmax_parts(call)
        fused = _fused_softmax(x, r, dim, call.pairs)
        if fused is not None:
            return fused
        xs, rs, total, total_ref, _ = shifted_logsumexp(x, r, dim)
        safe, safe_ref = finite_total(total, total_ref)
        output = secant_output(torch.exp, xs - safe, rs - safe_ref)
        return _as_torch_in_dead_rows(output, total)


class LogSoftmax(Rule):
    r"""log_softmax(x) = x − logsumexp(x): :func:`shifted_logsumexp`, then the linear difference.

    Masked (``-inf``) entries stay ``-inf``; fully masked rows give NaN, as in torch.
    """

    def attribute(self, call: OpCall) -> Any:
        x, r, dim = _softmax_parts(call)
        xs, rs, total, total_ref, _ = shifted_logsumexp(x, r, dim)
        safe, _ = finite_total(total, total_ref)
        output = xs - safe
        masked = torch.isneginf(xs.detach()) & torch.isneginf(rs)
        if bool(masked.any()):  # -inf on both sides: nothing moves, so no gradient either
            output = torch.where(masked, torch.full_like(output, float("-inf")), output)
        return _as_torch_in_dead_rows(output, total)


def _logsumexp_signature(input: Tensor, dim: Any, keepdim: bool = False) -> None: ...


_LOGSUMEXP = inspect.signature(_logsumexp_signature)


class LogSumExp(Rule):
    """torch.logsumexp, by :func:`shifted_logsumexp` (Rescale on exp and log, the sum linear)."""

    def refusal(self, call: OpCall) -> str | None:
        return _through_input_only(call)

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            raise ValueError(f"{call.name}: expected the input-dependent tensor as the first argument")
        bound = _bind(_LOGSUMEXP, call)
        dim = bound["dim"]
        dims = tuple(dim) if isinstance(dim, (list, tuple)) else dim
        _, _, total, _, top = shifted_logsumexp(call.inputs[0], call.references[0], dims)
        output = total + top
        if not bound["keepdim"]:
            output = output.squeeze(dims)
        return output


def _layer_norm_signature(
    input: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> None: ...


_LAYER_NORM = inspect.signature(_layer_norm_signature)


def scaled(c: Tensor, s: Tensor, c_ref: Tensor, s_ref: Tensor, reference: bool = True) -> tuple[Tensor, Tensor | None]:
    r"""``c ⊙ s`` for a positive scale ``s`` (the inverse norm of a normalization), exactly additive
    and well conditioned however far apart :math:`s` and :math:`s_r` are.

    The two orders of the pair's players are weighted by the scales instead of ½ each (a weighted
    Shapley value): c first (at :math:`s_r`) with weight :math:`s/(s + s_r)`, s first (at
    :math:`c_r`) with :math:`s_r/(s + s_r)`. So :math:`m_c = 2 s s_r/(s + s_r)`, the harmonic mean
    of the two scales, and :math:`m_s = (s c + s_r c_r)/(s + s_r)`, and
    :math:`m_c \Delta c + m_s \Delta s = s c - s_r c_r` exactly. Swapping the two sides negates
    every attribution, as with the Shapley rule. Where one side's row is all zeros and its scale is
    :math:`\epsilon^{-1/2}` (a padded step under an RMSNorm with eps = 1e-16), the Shapley rule's
    terms are of that order and cancel (attributions of 1e7 for an output that moves by 1, additive
    only to 1e-8 in float64), while these stay of the size of the output's change:
    :math:`m_c \le 2\min(s, s_r)` and :math:`|m_s \Delta s| \le |s c| + |s_r c_r|`.

    The price: the values are not the Shapley rule's. Its :math:`m_c` is the arithmetic mean
    :math:`(s + s_r)/2`, larger by :math:`(s - s_r)^2 / (2 (s + s_r))` (11 % of it where one
    side's deviation is twice the other's, 0.2 % where they differ by 10 %). A normalization written
    with elementwise ops takes this rule too (the engine recognises the product with an inverse
    root and the division by a root: rnnshap/engines/pytorch/handwritten_norms.py), so it gets the values of the
    built-in one. Where ``s`` and ``s_r`` are not of one sign (a root times a weight of 0) the
    element takes the Shapley rule, the limit of this one there. Returns ``(output, reference_output)``, the
    reference output None unless ``reference``.
    """
    cd, sd = c.detach(), s.detach()
    output, ref_output = cd * sd, c_ref * s_ref if reference else None
    m_c, m_s = pairs.scaled_multipliers(TORCH, cd, sd, c_ref, s_ref)
    return with_multipliers(output, [c, s], [m_c.expand(output.shape), m_s.expand(output.shape)]), ref_output


def standardize(
    x: Tensor, r: Tensor, dims: tuple[int, ...], eps: float, centre: bool = True, reference: bool = True
) -> tuple[Tensor, Tensor | None]:
    r"""``c / sqrt(mean(c ⊙ c) + eps)`` over ``dims`` with ``c`` the centred input (``centre``) or the input.

    Centring and the mean are linear, c ⊙ c takes the Shapley rule (multiplier :math:`c + c_r`),
    :math:`s = (v + \epsilon)^{-1/2}` the Rescale rule with its secant in closed form (no
    cancellation however small the variances: the generic quotient lost up to 3 % of a layer norm's
    Δ in float32 on small inputs), c ⊙ s the scale-weighted rule of :func:`scaled` (the Shapley rule
    where the two scales are close; bounded where a zero row makes one of them
    :math:`\epsilon^{-1/2}`). Returns ``(output, reference_output)``, the reference output None unless ``reference``.
    """
    # one node where the input is centred: the centred c is read by the chain alone, and the centring adds to the
    # input's gradient twice in a row (the difference's node, then the mean's, created one after the other), as the
    # node does; uncentred, c is the caller's input, whose other uses may add to its gradient between the chain's
    # nodes: the chain, for autograd's order
    if centre and x.requires_grad:
        return _standardized(x, r, dims, eps, reference)
    return _standardized_chain(x, r, dims, eps, centre, reference)


def _standardized_chain(
    x: Tensor, r: Tensor, dims: tuple[int, ...], eps: float, centre: bool, reference: bool
) -> tuple[Tensor, Tensor | None]:
    """:func:`standardize`, each step by its rule (one autograd node each)."""
    c, c_ref = (x - x.mean(dims, keepdim=True), r - r.mean(dims, keepdim=True)) if centre else (x, r)
    square, square_ref = product(c, c, c_ref, c_ref)
    inv_std, inv_std_ref = secant(torch.rsqrt, square.mean(dims, keepdim=True) + eps, square_ref.mean(dims, keepdim=True) + eps)
    return scaled(c, inv_std, c_ref, inv_std_ref, reference)


def _standardized_backward(ctx: Any, grad: Tensor) -> list[Tensor]:
    r"""The backward of :func:`standardize`'s chain on a centred input (the centring, c ⊙ c, its mean, the rsqrt
    secant, c ⊙ s by :func:`scaled`) as one autograd node, the chain's operations in the chain's order:
    :math:`g m_c` and :math:`\sum g m_s` (:func:`scaled`), times the rsqrt secant, the mean's backward (the gradient
    over the count, ``ctx.state``, taken before it is broadcast: the same quotient on every entry), times the
    square's midpoint, added to c's gradient twice (the square's two operands) after :func:`scaled`'s, as autograd
    accumulates them; then the centring's two parts of the input's gradient, c's gradient and minus its sum over the
    count (the negation after the sum: exact), given to the input one after the other (the node's two operands are
    the input twice), as the chain's two nodes give them. Where a pass meets missing values, each multiplier's
    product is 0 where its incoming gradient is (as ``with_multipliers``)."""
    m_c, m_s, m_inv, m_square = ctx.saved_tensors
    count = ctx.state
    missing = ctx.missing is not None and ctx.missing.seen
    g_c = grad * m_c
    g_s = grad * m_s
    if missing:
        unreached = grad == 0
        g_c, g_s = g_c.masked_fill(unreached, 0.0), g_s.masked_fill(unreached, 0.0)
    g_s = g_s.sum_to_size(m_inv.shape)
    g_v = g_s * m_inv
    if missing:
        g_v = g_v.masked_fill(g_s == 0, 0.0)
    g_square = (g_v / count).expand(grad.shape)
    g_part = g_square * m_square
    if missing:
        g_part = g_part.masked_fill(g_square == 0, 0.0)
    g_centred = g_c + g_part + g_part
    g_mean = -g_centred.sum_to_size(m_inv.shape)
    return [g_centred, (g_mean / count).expand(grad.shape)]


def _standardized(x: Tensor, r: Tensor, dims: tuple[int, ...], eps: float, reference: bool) -> tuple[Tensor, Tensor | None]:
    """:func:`standardize` of a centred input, its values computed as the chain computes them, its multipliers in
    one node (:func:`_standardized_backward`)."""
    xd = x.detach()
    cd, c_ref = xd - xd.mean(dims, keepdim=True), r - r.mean(dims, keepdim=True)
    square = cd * cd
    square_ref = c_ref * c_ref
    m_square = pairs.midpoint(TORCH, cd, c_ref).expand(square.shape)
    v, v_ref = square.mean(dims, keepdim=True) + eps, square_ref.mean(dims, keepdim=True) + eps
    inv_std, inv_std_ref = torch.rsqrt(v), torch.rsqrt(v_ref)
    m_inv = secant_slope(rsqrt_slope, v, v_ref).expand(inv_std.shape)
    output, ref_output = cd * inv_std, c_ref * inv_std_ref if reference else None
    m_c, m_s = pairs.scaled_multipliers(TORCH, cd, inv_std, c_ref, inv_std_ref)
    count = math.prod(square.shape[d] for d in dims)
    saved = (m_c.expand(output.shape), m_s.expand(output.shape), m_inv, m_square)
    return attach(output, [x, x], _standardized_backward, saved, count), ref_output


def _input_only(call: OpCall, what: str) -> tuple[Tensor, Tensor]:
    if call.tracked_positions() not in ((0,), (-1,)):
        raise ValueError(f"{call.name}: rnnshap attributes {what} through its input only, not through its weight or bias")
    return call.inputs[0], call.references[0]


def _through_input_only(call: OpCall) -> str | None:
    """The engine's question (in both passes): why this call cannot be attributed, or None."""
    if call.tracked_positions() not in ((0,), (-1,)):
        return "its rule attributes it through its input only, not through an input-dependent weight or bias"
    return None


class LayerNorm(Rule):
    r"""layer_norm by decomposition (:func:`standardize`): centring (linear), variance as the mean
    of c ⊙ c (Shapley), :math:`(v + \epsilon)^{-1/2}` (Rescale), c ⊙ that (:func:`scaled`), the
    affine part (linear)."""

    def attribute(self, call: OpCall) -> Any:
        x, r = _input_only(call, "layer_norm")
        bound = _bind(_LAYER_NORM, call)
        shape = bound["normalized_shape"]
        dims = tuple(range(-len(shape if not isinstance(shape, int) else (shape,)), 0))
        normalized, _ = standardize(x, r, dims, bound["eps"], reference=False)
        if bound["weight"] is not None:
            normalized = normalized * bound["weight"]
        if bound["bias"] is not None:
            normalized = normalized + bound["bias"]
        return normalized


def _rms_norm_signature(input: Tensor, normalized_shape: Any, weight: Tensor | None = None, eps: float | None = None) -> None: ...


_RMS_NORM = inspect.signature(_rms_norm_signature)


class RMSNorm(Rule):
    r"""rms_norm (``nn.RMSNorm``): :func:`standardize` without centring, then the weight (linear)."""

    def refusal(self, call: OpCall) -> str | None:
        return _through_input_only(call)

    def attribute(self, call: OpCall) -> Any:
        x, r = _input_only(call, "rms_norm")
        bound = _bind(_RMS_NORM, call)
        shape = bound["normalized_shape"]
        dims = tuple(range(-len(shape if not isinstance(shape, int) else (shape,)), 0))
        eps = bound["eps"] if bound["eps"] is not None else float(torch.finfo(x.dtype).eps)
        normalized, _ = standardize(x, r, dims, eps, centre=False, reference=False)
        if bound["weight"] is not None:
            normalized = normalized * bound["weight"]
        return normalized


def _group_norm_signature(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enabled: bool = True,
) -> None: ...


_GROUP_NORM = inspect.signature(_group_norm_signature)


class GroupNorm(Rule):
    r"""group_norm: the channels split into groups, each group (with the spatial axes) standardized
    as in :func:`standardize`, then the per-channel affine part (linear)."""

    def refusal(self, call: OpCall) -> str | None:
        return _through_input_only(call)

    def attribute(self, call: OpCall) -> Any:
        x, r = _input_only(call, "group_norm")
        bound = _bind(_GROUP_NORM, call)
        groups = int(bound["num_groups"])
        grouped, grouped_ref = x.reshape(x.shape[0], groups, -1), r.reshape(r.shape[0], groups, -1)
        normalized, _ = standardize(grouped, grouped_ref, (-1,), bound["eps"], reference=False)
        return _per_channel_affine(normalized.reshape(x.shape), bound["weight"], bound["bias"])


def _per_channel_affine(normalized: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """A channel norm's affine part (linear): ``weight`` and ``bias`` per channel, the axis after the batch."""
    affine = (1, -1) + (1,) * (normalized.dim() - 2)
    if weight is not None:
        normalized = normalized * weight.reshape(affine)
    if bias is not None:
        normalized = normalized + bias.reshape(affine)
    return normalized


def _instance_norm_signature(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> None: ...


def _torch_instance_norm_signature(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool,
) -> None: ...


_INSTANCE_NORM = inspect.signature(_instance_norm_signature)
_TORCH_INSTANCE_NORM = inspect.signature(_torch_instance_norm_signature)


class InstanceNorm(Rule):
    r"""instance_norm (``nn.InstanceNorm1d/2d/3d``): each (sample, channel) standardized over its own steps, as
    :func:`standardize` over the axes after the channels (group_norm with a group per channel), then the per-channel
    affine part (linear). With the running statistics (``track_running_stats`` in eval mode) it is affine: linear."""

    def refusal(self, call: OpCall) -> str | None:
        return _through_input_only(call)

    @staticmethod
    def _bound(call: OpCall) -> dict[str, Any]:
        return _bind(_TORCH_INSTANCE_NORM if call.fn is torch.instance_norm else _INSTANCE_NORM, call)

    def is_linear(self, call: OpCall) -> bool:
        return not self._bound(call)["use_input_stats"]

    def attribute(self, call: OpCall) -> Any:
        x, r = _input_only(call, "instance_norm")
        bound = self._bound(call)
        normalized, _ = standardize(x, r, tuple(range(2, x.dim())), bound["eps"], reference=False)
        return _per_channel_affine(normalized, bound["weight"], bound["bias"])


def _batch_norm_parts(call: OpCall) -> tuple[Tensor, Tensor | None, float] | None:
    """``(running_var, weight, eps)`` of a batch norm at inference (``F.batch_norm`` or ``torch.batch_norm``) through
    its input alone; None for any other call."""
    if call.tracked_positions() != (0,):
        return None
    if call.fn is torch.batch_norm:  # (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
        names = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
        defaults: dict[str, Any] = {}
    else:  # F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
    if len(call.args) > len(names) + (call.fn is torch.batch_norm):
        return None
    bound = {**defaults, **dict(zip(names, call.args, strict=False)), **call.kwargs}
    var, weight, eps = bound.get("running_var"), bound.get("weight"), bound.get("eps")
    if bound.get("training") or not isinstance(var, Tensor) or not isinstance(eps, (int, float)) or eps <= 0:
        return None
    if weight is not None and not isinstance(weight, Tensor):
        return None
    return var, weight, float(eps)


def _through_weights(call: OpCall) -> str | None:
    """Why a batch norm call is not linear in its input-dependent operands (a weight, bias or running statistic among
    them: a product with the input then), or None."""
    if not call.tracked or _through_input_only(call) is None:
        return None
    return "its weight, bias or running statistics depend on the input, where batch norm is no longer linear"


class BatchNormAtInference(EvalOnly):
    r"""batch_norm with running statistics: linear in its input, refused in training (:class:`EvalOnly`).

    Its gradient is the ordinary one, :math:`(g \cdot \sigma^{-1}) \cdot w` per channel with
    :math:`\sigma^{-1} = 1/\sqrt{\mathrm{var} + \epsilon}` taken in float64 by ``torch.rsqrt``, attached as one node of two
    broadcast products where that is torch's CPU kernel's value bit for bit (float32 and float64 on the CPU,
    measured on contiguous, transposed and channels-last inputs): the kernel loops over the channels of each
    row, and where the rows are short and the outputs' backward is batched (vmap folds the outputs into the
    channels) it took 1.7 ms a layer on PatchTST's 5 patches, the products 0.1 ms. Elsewhere (a device, 16-bit
    floats) torch's backward, as a linear rule's. A weight, bias or running statistic that depends on the input is
    refused by name: batch norm is not linear in it."""

    attaches_gradient = True

    def is_linear(self, call: OpCall) -> bool:
        return _through_weights(call) is None

    def refusal(self, call: OpCall) -> str | None:
        return _through_weights(call)

    def attribute(self, call: OpCall) -> Any:
        x = call.inputs[0]
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not x.requires_grad:
            return call.evaluate(call.inputs)
        parts = _batch_norm_parts(call)
        if parts is None:
            return call.evaluate(call.inputs)
        var, weight, eps = parts
        if x.dim() < 2 or var.shape != (x.shape[1],) or var.dtype != x.dtype:
            return call.evaluate(call.inputs)
        if weight is not None and (weight.shape != var.shape or weight.dtype != x.dtype):
            return call.evaluate(call.inputs)
        with torch.no_grad():
            value = call.fn(*call.args, **call.kwargs)
            per_channel = (-1,) + (1,) * (x.dim() - 2)
            # (torch's rsqrt, as the kernel's value: 1 / sqrt differs from it by an ulp in 0.7 % of float64 channels)
            inverse = torch.rsqrt(var.to(torch.float64) + eps).to(x.dtype).reshape(per_channel)
            saved = [inverse] if weight is None else [inverse, weight.detach().reshape(per_channel)]
        return attach(value, [x], _batch_norm_backward, saved)


def _batch_norm_backward(ctx: Any, grad: Tensor) -> list[Tensor]:
    """:class:`BatchNormAtInference`'s gradient: the incoming gradient times the inverse deviation, then the weight,
    as torch's kernel takes it for one output (and under autograd's own batched backward, which runs it once per
    output); under ``torch.func.vmap`` (the outputs' batched backward) the weight first, as vmap's rule for the kernel
    takes it: the same values as torch's backward on either path, bit for bit."""
    if len(ctx.saved_tensors) == 1:
        return [grad * ctx.saved_tensors[0]]
    inverse, weight = ctx.saved_tensors
    # (the second product in place on the first's: the same values, one fresh tensor in place of two)
    if _IS_BATCHED is not None and _IS_BATCHED(grad):
        return [(grad * weight).mul_(inverse)]
    return [(grad * inverse).mul_(weight)]


__all__ = [
    "Softmax", "LogSoftmax", "LogSumExp", "shifted_logsumexp", "fused_softmax", "MaxPool", "MaxReduction", "LayerNorm",
    "RMSNorm", "GroupNorm", "BatchNormAtInference",
    "scaled", "standardize", "routed_max", "ranked_values", "picked_index",
]  # fmt: skip
