"""Batch norm at inference (running statistics): linear in its input, its gradient attached as one product.

torch's backward kernel of an inference batch norm is slow where the per-channel rows are short and the outputs'
backward is batched (vmap folds the outputs into the channels: PatchTST's 5 patches took 1.7 ms a layer against
0.1 ms for the product). rnnshap attaches the same gradient, (g · 1/√(var + ε)) · w with the inverse deviation
in float64, as torch's CPU kernel computes it. The truth is the same layer with torch's own backward (the plain
linear rule, given as a user's rule): the same attributions bit for bit; and no backward kernel of batch norm runs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap
from rnnshap.errors import UnsupportedOperationError
from rnnshap.rules import EvalOnly, OpCall
from rnnshap.rules.structured import BatchNormAtInference

from ..conftest import assert_additive
from ..models.torch import Composite

Tensor = torch.Tensor


def _torch_backward() -> dict[object, EvalOnly]:
    """The batch norm as a plain linear rule: torch's own backward kernel (the rule before)."""
    rule = EvalOnly(lambda call: False, "batch norm with batch statistics (training mode)")
    return {F.batch_norm: rule, torch.batch_norm: rule}


LAYOUTS: dict[str, Callable[[Tensor], Tensor]] = {
    "contiguous (N, C, L)": lambda t: t,
    "transposed (N, L, C)": lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
    "channels-last (N, C, H, W)": lambda t: t.reshape(*t.shape[:2], 2, -1).contiguous(memory_format=torch.channels_last),
    "channels-last (N, C, D, H, W)": lambda t: t.reshape(*t.shape[:2], 1, 2, -1).contiguous(memory_format=torch.channels_last_3d),
    "(N, C)": lambda t: t[..., 0].contiguous(),
}


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_layers_gradient_is_torchs_bit_for_bit_on_many_channels(dtype: torch.dtype, layout: str, weighted: bool) -> None:
    """The rule's node alone against torch's backward of the layer, over 2,000 channels (a rounding difference in
    the inverse deviation shows in about one channel in 150: a few channels could hide it), on each backward path:
    one output, three under ``torch.func.vmap`` and under autograd's own batched backward."""
    generator = torch.Generator().manual_seed(3)
    channels, eps = 2000, 1e-5
    x = LAYOUTS[layout](torch.randn(4, channels, 6, generator=generator, dtype=dtype)).requires_grad_(True)
    mean = torch.randn(channels, generator=generator, dtype=dtype)
    var = torch.rand(channels, generator=generator, dtype=dtype) * 3
    weight = torch.randn(channels, generator=generator, dtype=dtype) if weighted else None
    torchs = F.batch_norm(x, mean, var, weight, None, False, 0.1, eps)
    arguments = [x, mean, var, weight, None, False, 0.1, eps]
    call = OpCall.flat(F.batch_norm, "batch_norm", arguments, None, (0,), None, (len(arguments), ()))  # type: ignore[arg-type]
    ours = BatchNormAtInference(lambda c: False, "").attribute(call)
    assert ours.grad_fn is not None and "Attached" in type(ours.grad_fn).__name__
    assert torch.equal(ours, torchs)
    grads = torch.randn((3, *torchs.shape), generator=generator, dtype=dtype)

    def backward(out: Tensor, batched: str) -> Tensor:
        if batched == "one":
            return torch.autograd.grad(out, x, grads[0], retain_graph=True)[0]
        if batched == "vmap":
            return torch.func.vmap(lambda g: torch.autograd.grad(out, x, g, retain_graph=True)[0])(grads)
        return torch.autograd.grad(out, x, grads, retain_graph=True, is_grads_batched=True)[0]

    for batched in ("one", "vmap", "autograd"):
        assert torch.equal(backward(ours, batched), backward(torchs, batched)), batched


def _with_statistics(model: nn.Module) -> nn.Module:
    """Running statistics far from 0 and 1, weights of either sign: every factor of the gradient counts."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator))
            module.running_var.copy_(torch.rand(c, generator=generator) * 3 + 0.01)
            if module.affine:
                module.weight.data.copy_(torch.randn(c, generator=generator))
                module.bias.data.copy_(torch.randn(c, generator=generator))
    return model.eval()


def _conv(norm: nn.Module) -> nn.Module:
    """PatchTST's layout: (batch, channels, 5 positions), a batch norm over the channels, three outputs."""
    return Composite(lambda m, x: m.head(torch.tanh(m.norm(m.conv(x.transpose(1, 2)))).flatten(1)),
                     conv=nn.Conv1d(3, 6, 4, stride=4), norm=norm, head=nn.Linear(6 * 5, 3))  # fmt: skip


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "BatchNorm1d over (N, C, L)": lambda: (_conv(nn.BatchNorm1d(6)), (20, 3)),
    "BatchNorm1d over a transposed (N, L, C), as PatchTST": lambda: (
        Composite(
            lambda m, x: m.head(torch.tanh(m.norm(m.lin(x).transpose(1, 2))).flatten(1)),
            lin=nn.Linear(3, 6),
            norm=nn.BatchNorm1d(6),
            head=nn.Linear(6 * 20, 3),
        ),
        (20, 3),
    ),  # fmt: skip
    "BatchNorm1d without affine": lambda: (_conv(nn.BatchNorm1d(6, affine=False)), (20, 3)),
    "BatchNorm1d over (N, C)": lambda: (
        Composite(
            lambda m, x: m.head(torch.tanh(m.norm(m.lin(x)))), lin=nn.Linear(4, 6), norm=nn.BatchNorm1d(6), head=nn.Linear(6, 3)
        ),
        (4,),
    ),
    "BatchNorm2d": lambda: (
        Composite(
            lambda m, x: m.head(torch.tanh(m.norm(m.conv(x[:, None]))).flatten(1)),
            conv=nn.Conv2d(1, 4, 3),
            norm=nn.BatchNorm2d(4),
            head=nn.Linear(4 * 4 * 2, 3),
        ),
        (6, 4),
    ),  # fmt: skip
    "F.batch_norm with keywords": lambda: (
        Composite(lambda m, x: m.head(torch.tanh(F.batch_norm(m.lin(x), m.mean, m.var, weight=m.w, eps=1e-3))),
                  lin=nn.Linear(4, 6), head=nn.Linear(6, 3), w=nn.Parameter(torch.randn(6)),
                  mean=nn.Buffer(torch.randn(6)), var=nn.Buffer(torch.rand(6) + 0.1)),
        (4,),
    ),  # fmt: skip
    "torch.batch_norm called directly": lambda: (
        Composite(
            lambda m, x: m.head(torch.tanh(torch.batch_norm(m.lin(x), m.w, m.b, m.mean, m.var, False, 0.1, 1e-3, False))),
            lin=nn.Linear(4, 6),
            head=nn.Linear(6, 3),
            w=nn.Parameter(torch.randn(6)),
            b=nn.Parameter(torch.randn(6)),
            mean=nn.Buffer(torch.randn(6)),
            var=nn.Buffer(torch.rand(6) + 0.1),
        ),
        (4,),
    ),  # fmt: skip
}


def _same_as_torchs_backward(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    background, X = torch.randn(6, *shape, dtype=dtype), torch.randn(4, *shape, dtype=dtype) * 2
    ours = rnnshap.DeepExplainer(model, background, compile=False)
    values = ours.shap_values(X)
    assert_additive(values, model, X, background, dtype)
    theirs = rnnshap.DeepExplainer(model, background, compile=False, rules=_torch_backward())
    np.testing.assert_array_equal(values, theirs.shap_values(X))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_batch_norm_attributions_are_torch_backwards_bit_for_bit(name: str, dtype: torch.dtype) -> None:
    """Three outputs: their backward batched by ``torch.func.vmap``."""
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    _same_as_torchs_backward(_with_statistics(model).to(dtype), shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_output_is_torch_backwards_bit_for_bit(dtype: torch.dtype) -> None:
    """One output: one plain backward, where torch's kernel takes the inverse deviation before the weight."""
    torch.manual_seed(0)
    model, shape = MODELS["BatchNorm1d over (N, C, L)"]()
    model.head = nn.Linear(6 * 5, 1)
    _same_as_torchs_backward(_with_statistics(model).to(dtype), shape, dtype)


def test_autograds_batched_backward_is_torch_backwards_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``torch.func`` cannot batch the outputs' backward, autograd's own batched backward (``is_grads_batched``),
    which runs the kernel once per output."""

    def cannot_batch(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no batching rule here")

    monkeypatch.setattr(torch.func, "vmap", cannot_batch)
    torch.manual_seed(0)
    model, shape = MODELS["BatchNorm1d over (N, C, L)"]()
    _same_as_torchs_backward(_with_statistics(model), shape, torch.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_no_batch_norm_backward_kernel_runs(name: str) -> None:
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    model = _with_statistics(model)
    explainer = rnnshap.DeepExplainer(model, torch.randn(6, *shape), compile=False)
    X = torch.randn(4, *shape)
    explainer.shap_values(X)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        explainer.shap_values(X)
    ran = {e.name for e in profile.events()}
    assert "aten::native_batch_norm" in ran  # (the forward: torch's own values)
    assert not any("batch_norm_backward" in name for name in ran)


def test_a_half_precision_batch_norm_keeps_torchs_backward() -> None:
    """Where the product was not measured against torch's kernel (bfloat16, whose kernel computes in float): torch's
    own backward, as before."""
    torch.manual_seed(0)
    model, shape = MODELS["BatchNorm1d over (N, C, L)"]()
    model = _with_statistics(model).to(torch.bfloat16)
    explainer = rnnshap.DeepExplainer(model, torch.randn(6, *shape, dtype=torch.bfloat16), compile=False)
    X = torch.randn(4, *shape, dtype=torch.bfloat16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        explainer.shap_values(X, check_additivity=False)
    assert any("batch_norm_backward" in e.name for e in profile.events())


def test_a_weight_that_depends_on_the_input_is_refused_by_name() -> None:
    """Batch norm is linear in its input, not in a weight computed from the input (a product with it then): refused
    when the explainer is built, where before the weight's path took the plain gradient. (A weight from the input is
    one per channel for every row, so it reads one row, or mixes them, which the rows check refuses first; with one
    background row that check has nothing to compare.)"""
    model = Composite(lambda m, x: m.head(F.batch_norm(m.lin(x), m.mean, m.var, weight=torch.sigmoid(x[0]))),
                      lin=nn.Linear(6, 6), head=nn.Linear(6, 2),
                      mean=nn.Buffer(torch.zeros(6)), var=nn.Buffer(torch.ones(6)))  # fmt: skip
    with pytest.raises(UnsupportedOperationError, match="batch_norm.*weight, bias or running statistics depend on the input"):
        rnnshap.DeepExplainer(model.eval(), torch.randn(1, 6))
