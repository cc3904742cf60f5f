r"""Rules for operations that are not elementwise: softmax, max-pool and max reductions, layer norm.

Each is attributed either by decomposition into elementwise rules (softmax, log-softmax, layer
norm) or by routing the change of every selected maximum to the positions that produced it
(max-pool and max reductions, as shap's max-pool rule).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from .base import OpCall, Rule
from .elementwise import product, rescale, shapley

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
    # Softmax is invariant to a shift shared by x and r; the decomposition is too (see docs).
    shift = torch.maximum(x.detach().amax(dim, keepdim=True), r.amax(dim, keepdim=True))
    return x - shift, r - shift, dim


class Softmax(Rule):
    r"""softmax(x) = exp(log_softmax(x)), each part by its rule: Rescale on exp, the linear sum,
    Rescale on log, the linear difference, Rescale on the final exp.

    DESIGN.md first proposed e / Σe with Shapley on the division; its cross terms e/Σe_r grow
    like exp(max x − max r), so for confident logits the exact values reach 1e7 on an output in
    [0, 1] and cancel, which float32 cannot carry. This decomposition stays bounded.
    """

    def attribute(self, call: OpCall) -> Any:
        x, r, dim = _softmax_parts(call)
        e, e_ref = rescale(torch.exp, x, r)
        log_total, log_total_ref = rescale(torch.log, e.sum(dim, keepdim=True), e_ref.sum(dim, keepdim=True))
        output, _ = rescale(torch.exp, x - log_total, r - log_total_ref)
        return output


class LogSoftmax(Rule):
    r"""log_softmax(x) = (x − c) − log Σ exp(x − c): Rescale on exp and on log, the rest linear."""

    def attribute(self, call: OpCall) -> Any:
        x, r, dim = _softmax_parts(call)
        e, e_ref = rescale(torch.exp, x, r)
        log_total, _ = rescale(torch.log, e.sum(dim, keepdim=True), e_ref.sum(dim, keepdim=True))
        return x - log_total


class _RoutedMaximum(torch.autograd.Function):
    """Backward of a max selection: each output's change goes to the winning input position."""

    @staticmethod
    def forward(ctx: Any, computed: Callable[[], tuple[Tensor, tuple[Tensor, ...]]], x: Tensor) -> Tensor:  # type: ignore[override]
        output, saved = computed()
        ctx.save_for_backward(*saved)
        ctx.input_shape = x.shape
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        index_x, weight_x, index_r, weight_r, inverse_delta = ctx.saved_tensors
        flat_grad = grad.reshape(index_x.shape)
        routed = torch.zeros(inverse_delta.shape, dtype=grad.dtype, device=grad.device)
        routed = routed.scatter_add(-1, index_x, flat_grad * weight_x).scatter_add(-1, index_r, flat_grad * weight_r)
        return None, (routed * inverse_delta).reshape(ctx.input_shape)


def routed_max(select: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, r: Tensor, largest: bool = True) -> Tensor:
    r"""Attribute a max (or min) selection by shap's max-pool rule.

    ``select(t)`` returns the selected values and, for a view of ``t`` flattened over the last
    axis, the flat indices that produced them. With :math:`y = \max(x)`, :math:`y_r = \max(r)` and
    :math:`c = \max(y, y_r)`, the part :math:`c - y_r` is credited to the position of x's maximum
    and :math:`y - c` to the position of r's maximum; the multiplier at a position is its credit
    divided by its :math:`\Delta x`. Exactly one part is non-zero, and then that position's
    :math:`|\Delta x|` is at least :math:`|\Delta y|`, so the division is safe.
    """
    with torch.no_grad():
        y, index_x = select(x.detach())
        y_ref, index_r = select(r)
        cross = torch.maximum(y, y_ref) if largest else torch.minimum(y, y_ref)
        weight_x = (cross - y_ref).reshape(index_x.shape)
        weight_r = (y - cross).reshape(index_r.shape)
        delta = _flat_last(x.detach() - r, index_x.shape)
        inverse_delta = torch.where(delta == 0, torch.zeros_like(delta), 1 / torch.where(delta == 0, torch.ones_like(delta), delta))
    computed = (y, (index_x, weight_x, index_r, weight_r, inverse_delta))
    output = _RoutedMaximum.apply(lambda: computed, x)
    return output


def _flat_last(t: Tensor, index_shape: torch.Size) -> Tensor:
    """``t`` reshaped so that its leading axes match ``index_shape`` and the rest is one axis."""
    lead = index_shape[:-1]
    return t.reshape(*lead, -1)


class MaxPool(Rule):
    """max_pool1d/2d/3d and adaptive max-pool, by shap's max-pool rule (see :func:`routed_max`).

    ``with_indices`` is the variant of the pooling function that also returns the argmax indices
    (``F.max_pool2d_with_indices``); it is called with the arguments of the intercepted call.
    """

    def __init__(self, with_indices: Callable[..., tuple[Tensor, Tensor]], spatial_dims: int) -> None:
        self.with_indices = with_indices
        self.spatial_dims = spatial_dims

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            raise ValueError(f"{call.name}: expected the input-dependent tensor as the first argument")
        bound = inspect.signature(self.with_indices).bind(*call.args, **call.kwargs).arguments
        wants_indices = bool(bound.pop("return_indices", False))
        bound.pop("input")
        x, r = call.inputs[0], call.references[0]
        out_shape: list[torch.Size] = []

        def select(t: Tensor) -> tuple[Tensor, Tensor]:
            values, indices = self.with_indices(t, **bound)
            out_shape[:] = [values.shape]
            lead = values.shape[: values.dim() - self.spatial_dims]
            return values, indices.reshape(*lead, -1)

        values = routed_max(select, x, r).reshape(out_shape[0])
        if wants_indices:
            return values, self.with_indices(x.detach(), **bound)[1]
        return values


def _moved_last(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t`` with ``dims`` moved to the end and merged into one axis."""
    dims = tuple(d % t.dim() for d in dims)
    keep = [d for d in range(t.dim()) if d not in dims]
    moved = t.permute(*keep, *dims)
    return moved.reshape(*moved.shape[: len(keep)], -1)


class MaxReduction(Rule):
    """torch.max / torch.min / amax / amin over dimensions, by the rule of :func:`routed_max`.

    Called with a second tensor (``torch.max(a, b)``), max and min are elementwise and use the
    exact Shapley rule instead.
    """

    def __init__(self, largest: bool = True, returns_indices: bool = True) -> None:
        self.largest = largest
        self.returns_indices = returns_indices

    def attribute(self, call: OpCall) -> Any:
        args, kwargs = call.args, dict(call.kwargs)
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if isinstance(other, Tensor):
            output, _ = shapley(call.evaluate, call.inputs, call.references, smooth=False)
            return output
        if len(call.tracked) != 1 or call.tracked_positions()[0] not in (0, -1):
            raise ValueError(f"{call.name}: expected the input-dependent tensor as the first argument")
        x, r = call.inputs[0], call.references[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        dims = tuple(range(x.dim())) if dim is None or dim == () else ((dim,) if isinstance(dim, int) else tuple(dim))
        reduce = torch.max if self.largest else torch.min

        def select(t: Tensor) -> tuple[Tensor, Tensor]:
            return reduce(t, dim=-1, keepdim=True)

        flat_x = _moved_last(x, dims)
        flat_r = _moved_last(r, dims)
        values = routed_max(select, flat_x, flat_r, self.largest).squeeze(-1)
        if keepdim:
            for d in sorted(d % x.dim() for d in dims):
                values = values.unsqueeze(d)
        if self.returns_indices and dim is not None and dim != () and isinstance(dim, int):
            indices = reduce(x.detach(), dim, keepdim).indices
            result_type = torch.return_types.max if self.largest else torch.return_types.min
            return result_type((values, indices))
        return values


def _layer_norm_signature(
    input: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> None: ...


_LAYER_NORM = inspect.signature(_layer_norm_signature)


class LayerNorm(Rule):
    r"""layer_norm by decomposition: centring (linear), variance as the mean of c ⊙ c (Shapley),
    :math:`(v + \epsilon)^{-1/2}` (Rescale), c ⊙ that (Shapley), the affine part (linear)."""

    def attribute(self, call: OpCall) -> Any:
        positions = call.tracked_positions()
        if positions not in ((0,), (-1,)):
            raise ValueError(f"{call.name}: rnnshap attributes layer_norm through its input only, not through its weight or bias")
        bound = _bind(_LAYER_NORM, call)
        x, r = call.inputs[0], call.references[0]
        shape = bound["normalized_shape"]
        dims = tuple(range(-len(shape if not isinstance(shape, int) else (shape,)), 0))
        c, c_ref = x - x.mean(dims, keepdim=True), r - r.mean(dims, keepdim=True)
        square, square_ref = product(c, c, c_ref, c_ref)
        eps = bound["eps"]
        inv_std, inv_std_ref = rescale(torch.rsqrt, square.mean(dims, keepdim=True) + eps, square_ref.mean(dims, keepdim=True) + eps)
        normalized, _ = product(c, inv_std, c_ref, inv_std_ref)
        if bound["weight"] is not None:
            normalized = normalized * bound["weight"]
        if bound["bias"] is not None:
            normalized = normalized + bound["bias"]
        return normalized


__all__ = ["Softmax", "LogSoftmax", "MaxPool", "MaxReduction", "LayerNorm", "routed_max"]
