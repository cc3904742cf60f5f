"""The PyTorch engine's backward pass: the gradients of every selected output w.r.t. the pairs' inputs in one
batched backward (:func:`grads_per_output`), and each input's contribution, multiplier × (x − r)
(:func:`contribution`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from ...errors import VIEW_WRITTEN_AFTER, WRITTEN_AFTER_READ, ModelStateError, UnsupportedOperationError
from ...formulas.torch_ops import gradient

Tensor = torch.Tensor


def contribution(grad: Tensor, x: Tensor, reference: Tensor) -> Tensor:
    """multiplier × (x − r); where a value is missing (NaN, or an infinity) on both sides its difference is 0, and
    where nothing downstream depends on an entry (multiplier 0) its contribution is 0, never 0 · NaN. A missing
    value on one side of a pair that the output depends on is refused by name."""
    delta = x - reference
    if bool(torch.isfinite(delta).all()):
        return grad * delta
    delta = torch.where((x == reference) | (torch.isnan(x) & torch.isnan(reference)), 0.0, delta)
    contribution = (grad * delta).masked_fill(grad == 0, 0.0)
    if not bool(torch.isfinite(contribution).all()):
        raise UnsupportedOperationError([(
            "a missing value (NaN or inf) of the explained inputs or the background",
            "the output depends on an entry that is missing on one side of a pair only: its difference has no size",
            "missing",
        )])
    return contribution


def chosen_gradients(
    outputs: Tensor, columns: Tensor, leaves: list[Tensor], beside: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """The gradients of each pair's explained outputs (``columns`` of ``outputs`` flattened per pair) w.r.t. the
    ``leaves`` that require grad, and w.r.t. ``beside`` (embedding lookups): :func:`grads_per_output`, split so."""
    attributed = [leaf for leaf in leaves if leaf.requires_grad]
    grads = grads_per_output(outputs.reshape(outputs.shape[0], -1).gather(1, columns), attributed + beside)
    return grads[: len(attributed)], grads[len(attributed) :]


def grads_per_output(chosen: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """Gradients of every column of ``chosen`` w.r.t. ``leaves``: shape (k, *leaf.shape) each.

    All columns go through one batched backward pass, not one per output: ``torch.func.vmap`` over
    the backward, whose batching rules run each operation once on all K (the rules' own backward
    functions included: a matrix product of K × rows). autograd's ``is_grads_batched`` uses torch's
    older vmap, which runs a matrix product or an ``addcmul`` once per output and joins the results
    (1.5–2× slower at K = 10); it is the fallback where ``torch.func`` cannot batch the backward.
    (One output starts from the scalar Σ chosen, whose gradient is the same ones; several give their one-hot rows to
    :func:`rnnshap.formulas.torch_ops.gradient`, which leaves out ``autograd.grad``'s size check and the import of
    sympy it costs a first call.)
    """
    try:
        return _grads_per_output(chosen, leaves)
    except RuntimeError as error:
        if _WRITTEN not in str(error):
            raise
        first = next((line for line in str(error).splitlines() if _WRITTEN in line), _WRITTEN)
        raise ModelStateError(WRITTEN_AFTER_READ.format(torch=first.split(" Hint:")[0].strip())) from error


#: what torch's backward says where a tensor it saved was written into after it was read
_WRITTEN = "modified by an inplace operation"
#: what torch says where a forward with gradients reads a view of several that a write into its base invalidated
_VIEWS = "output of a function that returns multiple views"


@contextlib.contextmanager
def differentiable_forward() -> Iterator[None]:
    """Turn torch's refusal to run a forward with gradients (a view of several, ``split``'s, read after a write into
    its base: :data:`_VIEWS`) into the :class:`~rnnshap.errors.ModelStateError` that says why and what to do."""
    try:
        yield
    except RuntimeError as error:
        if _VIEWS not in str(error):
            raise
        raise ModelStateError(VIEW_WRITTEN_AFTER.format(torch=str(error).split(". ")[0])) from error


def _grads_per_output(chosen: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    k = chosen.shape[1]
    if k == 1:
        ones = torch.autograd.grad(chosen.sum(), leaves, allow_unused=True)
        return [_or_zeros(g, leaf).unsqueeze(0) for g, leaf in zip(ones, leaves, strict=True)]
    eye = torch.eye(k, dtype=chosen.dtype, device=chosen.device)
    grad_outputs = eye[:, None, :].expand(k, *chosen.shape).contiguous()
    try:
        with warnings.catch_warnings():  # an operation without a batching rule runs once per output, as before
            warnings.filterwarnings(
                "ignore", message="There is a performance drop because we have not yet implemented the batching rule"
            )

            def column(v: Tensor) -> tuple[Tensor, ...]:
                each = gradient(chosen, v, leaves, retain_graph=True)
                return tuple(_or_zeros(g, leaf) for g, leaf in zip(each, leaves, strict=True))

            grads: tuple[Tensor | None, ...] = torch.func.vmap(column)(grad_outputs)
    except RuntimeError as error:  # an operation of the backward that torch.func cannot batch
        if _WRITTEN in str(error):
            raise
        grads = gradient(chosen, grad_outputs, leaves, batched=True)
    return [_or_zeros(g, leaf, k) for g, leaf in zip(grads, leaves, strict=True)]


def _or_zeros(grad: Tensor | None, leaf: Tensor, k: int | None = None) -> Tensor:
    if grad is not None:
        return grad
    shape = leaf.shape if k is None else (k, *leaf.shape)
    return torch.zeros(shape, dtype=leaf.dtype, device=leaf.device)
