"""The PyTorch engine: blocks of (sample, reference) pairs through the reference tape.

For each block, the reference pass runs the model on the reference side of every pair (recording
the operands of each nonlinear operation), the input pass replays it on the input side through the
rules, and one backward pass per selected output (batched) gives the multipliers.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ...errors import InputError
from ...rules.base import PairGrid, Rule
from ...rules.registry import DEFAULT_REGISTRY, RuleRegistry
from ..base import Block, BlockResult, Engine
from .passes import run_pass
from .safety import as_tensors, check_matching, check_model, model_device_and_dtype
from .tape import Tape

Tensor = torch.Tensor


class TorchEngine(Engine):
    """DeepSHAP for an ``nn.Module`` (see :mod:`rnnshap.engines.pytorch.passes`)."""

    name = "pytorch"

    def __init__(self, model: nn.Module, data: Any, *, rules: Mapping[Any, Rule] | None = None) -> None:
        check_model(model)
        self.model = model
        self.registry: RuleRegistry = DEFAULT_REGISTRY.merged(dict(rules)) if rules else DEFAULT_REGISTRY
        self.multi_input = isinstance(data, (list, tuple))
        self.device, self.model_dtype = model_device_and_dtype(model)
        self.background = as_tensors(data, "background", self.multi_input, self.device, self.model_dtype)
        check_matching(self.background, self.background)
        self.references = int(self.background[0].shape[0])
        # The background runs as a reference pass, which also finds unsupported operations now and
        # tells which integer inputs are token ids (they feed an embedding) and which are context.
        integer_inputs = [i for i, b in enumerate(self.background) if not b.is_floating_point()]
        try:
            with torch.no_grad():  # copies: a forward() that works in place must not rewrite the background
                outputs, probe = run_pass(model, [b.clone() for b in self.background], self.registry, Tape(), replay=False, follow=integer_inputs)
        except RuntimeError as error:
            if not integer_inputs:
                raise
            raise InputError(
                f"The model failed on the background ({error}). Input(s) {integer_inputs} are integers: rnnshap "
                "treats integer inputs as token ids (when they feed an nn.Embedding) or as context such as lengths "
                "(used as given). If they are numbers to attribute to, pass them as floating point."
            ) from error
        for index in sorted(probe.token_uses & set(probe.context_uses)):
            raise InputError(
                f"Input {index} holds token ids that feed an embedding, and {probe.context_uses[index]} also uses "
                "them directly (a padding mask or lengths computed from the tokens?). Their values differ between "
                "the input and its reference, so that use cannot be attributed. Pass the mask or lengths to the "
                "model as a separate input: integer inputs that feed no embedding are context, used as given."
            )
        self.token_inputs = sorted(probe.token_uses)
        if not self.token_inputs and not any(b.is_floating_point() for b in self.background):
            raise InputError("No input is floating point or feeds an embedding, so there is nothing to attribute to")
        if outputs.dim() == 0 or outputs.shape[0] != self.references:
            raise InputError(
                f"The model maps {self.references} background rows to an output of shape "
                f"{tuple(outputs.shape)}; rnnshap needs the output's first dimension to be the batch."
            )
        self.output_shape = tuple(outputs.shape[1:])
        self.background_outputs = numpy(outputs).astype(np.float64)
        floating = [b.dtype for b in self.background if b.is_floating_point()]
        dtype = floating[0] if floating else (self.model_dtype or outputs.dtype)
        self.dtype = str(dtype).replace("torch.", "")

    # -- inputs -----------------------------------------------------------------------------------
    def inputs(self, X: Any, what: str) -> list[Tensor]:
        tensors = as_tensors(X, what, self.multi_input, self.device, self.model_dtype)
        check_matching(tensors, self.background)
        return tensors

    def predict(self, inputs: list[Tensor]) -> np.ndarray:
        with torch.no_grad():
            out = self.model(*inputs)
        return numpy(out.reshape(inputs[0].shape[0], -1)).astype(np.float64)

    def to_numpy(self, inputs: list[Tensor]) -> list[np.ndarray]:
        return [numpy(x) for x in inputs]

    def ranks(self, selected: np.ndarray) -> Tensor:
        return torch.from_numpy(selected)

    # -- attribution ------------------------------------------------------------------------------
    def attribute(self, inputs: list[Tensor], block: Block, columns: np.ndarray) -> BlockResult:
        """Σ over the block's references of multiplier × (x − r), for each selected output."""
        s, n_refs, k = block.samples, block.references, columns.shape[1]
        device = inputs[0].device
        sample = torch.arange(block.s0, block.s1, device=device).repeat_interleave(n_refs)
        ref = torch.arange(block.r0, block.r1, device=device).repeat(s)
        grid = PairGrid(s, n_refs)  # rules may compute on the distinct rows of each side
        # context inputs (integer inputs that feed no embedding: lengths, masks) take the explained
        # sample's values on both sides; token ids are compared with the background's tokens
        references = [
            b[ref] if b.is_floating_point() or t in self.token_inputs else x[sample]
            for t, (x, b) in enumerate(zip(inputs, self.background, strict=True))
        ]
        leaves = [x[sample].requires_grad_(True) if x.is_floating_point() else x[sample] for x in inputs]
        chosen_columns = torch.from_numpy(columns).to(device).repeat_interleave(n_refs, dim=0)
        with torch.no_grad():
            copies = [r.clone() for r in references]  # forward() may work in place on its inputs
            ref_outputs, _ = run_pass(self.model, copies, self.registry, tape := Tape(), replay=False, follow=self.token_inputs, pairs=grid)
        with torch.enable_grad():
            outputs, mode = run_pass(self.model, [leaf.clone() for leaf in leaves], self.registry, tape, replay=True, follow=self.token_inputs, pairs=grid)
            flat = outputs.reshape(outputs.shape[0], -1)
            chosen = flat.gather(1, chosen_columns)
            attributed_leaves = [leaf for leaf in leaves if leaf.requires_grad] + [leaf for _, leaf, _ in mode.embedded]
            grads = _grads_per_output(chosen, attributed_leaves)

        def per_sample(contribution: Tensor) -> np.ndarray:
            """(k, pairs, *shape) → Σ over each sample's references, (k, s, *shape) in float64."""
            summed = contribution.to(torch.float64).reshape(k, s, n_refs, *contribution.shape[2:]).sum(2)
            return summed.detach().cpu().numpy()

        sums = [np.zeros((k, s, *x.shape[1:])) for x in inputs]
        attributed = iter(grads)
        for t, (leaf, reference) in enumerate(zip(leaves, references, strict=True)):
            if leaf.requires_grad:
                sums[t] += per_sample(next(attributed) * (leaf.detach() - reference))
        for (t, embedding, embedding_ref), grad in zip(mode.embedded, attributed, strict=False):
            per_token = (grad * (embedding.detach() - embedding_ref)).sum(-1)
            if per_token.shape[2:] != sums[t].shape[2:]:
                raise InputError(
                    f"Input {t} (token ids) of shape {tuple(inputs[t].shape)} reaches an embedding with shape "
                    f"{tuple(embedding.shape[:-1])}; apply the embedding to the token input as given (before reshaping it)."
                )
            sums[t] += per_sample(per_token)
        model_outputs = numpy(flat.detach()).astype(np.float64).reshape(s, n_refs, -1)[:, 0]
        ref_sums = numpy(ref_outputs.reshape(flat.shape)).astype(np.float64).reshape(s, n_refs, -1).sum(1)
        return BlockResult(sums, model_outputs, ref_sums)


def numpy(t: Tensor) -> np.ndarray:
    """``t`` as a numpy array; bfloat16, which numpy lacks, as float32."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _grads_per_output(chosen: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """Gradients of every column of ``chosen`` w.r.t. ``leaves``: shape (k, *leaf.shape) each.

    All columns go through one batched backward pass (``is_grads_batched``), not one per output.
    """
    k = chosen.shape[1]
    if k == 1:
        grads = torch.autograd.grad(chosen, leaves, torch.ones_like(chosen), allow_unused=True)
        return [_or_zeros(g, leaf).unsqueeze(0) for g, leaf in zip(grads, leaves, strict=True)]
    eye = torch.eye(k, dtype=chosen.dtype, device=chosen.device)
    grad_outputs = eye[:, None, :].expand(k, *chosen.shape).contiguous()
    grads = torch.autograd.grad(chosen, leaves, grad_outputs, is_grads_batched=True, allow_unused=True)
    return [_or_zeros(g, leaf, k) for g, leaf in zip(grads, leaves, strict=True)]


def _or_zeros(grad: Tensor | None, leaf: Tensor, k: int | None = None) -> Tensor:
    if grad is not None:
        return grad
    shape = leaf.shape if k is None else (k, *leaf.shape)
    return torch.zeros(shape, dtype=leaf.dtype, device=leaf.device)
