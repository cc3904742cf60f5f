"""DeepExplainer's check that a row's output does not depend on the other rows of its batch
(rnnshap/engines/pytorch/checks.py, ``ModelChecks.rows_independent``) allows the rounding of the model's own dtype.

Truths: a float32 model whose output for a row changes with its place in the batch by a few float32 eps
(what kernels that sum in another order for another batch do, as sktime's MVTS transformer's) is accepted and
its values add up to its own outputs; the same change on a float64 model is no float64 rounding and is
refused; a model that normalizes over the batch is refused in float32 too; a coupling smaller than the float32
tolerance (floored at an output scale of 1) is refused at the same batch size, a float64 copy showing it is no rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnshap

from ...conftest import additivity_tol, assert_additive, eps
from ...models.torch import Composite


def odd_places_larger(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = torch.tanh(m.linear(x.flatten(1)))
    odd = (torch.arange(x.shape[0], device=x.device) % 2).to(out.dtype)[:, None]
    return out * (1 + m.relative * odd)


def place_rounding(dtype: torch.dtype, ulps: float) -> nn.Module:
    """A linear model whose rows at odd places of the batch come out ``ulps`` float32 eps larger: rounding
    that depends on the batch, of the size the check must allow in float32."""
    return Composite(odd_places_larger, linear=nn.Linear(6, 3).to(dtype), relative=ulps * torch.finfo(torch.float32).eps)


def batch_centred() -> nn.Module:
    """Rows that interact: each row's output is centred on the batch's mean."""
    return Composite(lambda m, x: (out := m.linear(x.flatten(1))) - out.mean(0, keepdim=True), linear=nn.Linear(6, 3))


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 2, 3, generator=generator).to(dtype), torch.randn(8, 2, 3, generator=generator).to(dtype)


def test_the_premise_batched_and_row_wise_outputs_differ() -> None:
    model = place_rounding(torch.float32, 8).eval()
    _, background = data(torch.float32)
    with torch.no_grad():
        together = model(background)
        reversed_ = model(background.flip(0)).flip(0)
    gap = float((together - reversed_).abs().max())
    assert 0 < gap <= 16 * eps(torch.float32) * float(together.abs().max())


def test_float32_rounding_between_batches_is_accepted_and_adds_up() -> None:
    model = place_rounding(torch.float32, 8).eval()
    x, background = data(torch.float32)
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert_additive(values, model, x, background, torch.float32)
    assert additivity_tol(torch.float32) > 0


def test_the_same_gap_on_a_float64_model_is_refused() -> None:
    """8 float32 eps are 2^32 float64 eps: no float64 kernel rounds that much."""
    model = place_rounding(torch.float64, 8).eval()
    _, background = data(torch.float64)
    with pytest.raises(rnnshap.InputError, match="mixes the rows of axis 0"):
        rnnshap.DeepExplainer(model, background)


def test_rows_that_interact_are_refused_in_float32() -> None:
    """The mean over the batch is the same in either order: the two halves of the background tell."""
    model = batch_centred().eval()
    _, background = data(torch.float32)
    with pytest.raises(rnnshap.InputError, match="(?s)mixes the rows of axis 0.*two halves.*normalizes over the batch"):
        rnnshap.DeepExplainer(model, background)


def gated_heads(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch = x.shape[0]
    v = torch.tanh(m.values(x.flatten(1))).reshape(batch * m.heads, 4)  # batch-major
    g = torch.sigmoid(m.gate(x.flatten(1)))  # (batch, 1), one per sample
    return m.scale * (v * g.repeat(m.heads, 1)).reshape(batch, -1)


def folded_heads(heads: int = 2, scale: float = 1e-4) -> nn.Module:
    """Transformers' Autoformer's coupling, small: per-sample gates repeated heads-major (``g.repeat(heads)``) along a
    batch-major (batch · heads) axis, so row ``b`` reads the gates of rows ``(b · heads + h) mod batch``; its outputs of
    scale ``scale`` move by less than the rows check's float32 tolerance floored at an output scale of 1."""
    return Composite(gated_heads, heads=heads, scale=scale, values=nn.Linear(6, 4 * heads), gate=nn.Linear(6, 1))


def test_a_coupling_below_the_tolerance_floor_is_refused_at_the_same_batch_size() -> None:
    """The coupling is no rounding (float64 shows it too: 1e-2 of the outputs' scale), but in float32 it is below the
    reversal and halves tests' tolerance (1e3 eps of an output scale floored at 1): the third test, half the rows kept
    and the others replaced at the same batch size, refuses it by name (it used to fail the additivity check, which
    blamed float32's rounding)."""
    torch.manual_seed(0)
    model = folded_heads().eval()
    background, _ = data(torch.float32)
    with torch.no_grad():
        double = folded_heads().double().eval()
        double.load_state_dict(model.state_dict())
        together = double(background.double())
        alone = torch.cat([double(row[None]) for row in background.double()])
    scale = float(together.abs().max())
    assert float((together - alone).abs().max()) > 1e-2 * scale  # (coupled, not rounding)
    assert float((together - alone).abs().max()) < 1e3 * eps(torch.float32)  # (under the floored tolerance)
    with pytest.raises(rnnshap.InputError, match=r"mixes the rows of axis 0.*\(the same batch size\)"):
        rnnshap.DeepExplainer(model, background)
    single = folded_heads(heads=1).eval()  # one head: no coupling, explained exactly
    values = rnnshap.DeepExplainer(single, background).shap_values(data(torch.float32)[1])
    assert_additive(values, single, data(torch.float32)[1], background, torch.float32)


def summed_by_size(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An ill-conditioned sum (terms of 1e6 that cancel to about 1) that a batch of more than 2 rows sums in another
    order, as a BLAS kernel chosen by the batch size may: each row's output is a function of that row alone, the
    orders differ by float32's rounding of 1e6 (about 0.06, far over the check's tolerance of the outputs' scale)
    and by float64's (1e-10) in float64."""
    terms = x * m.weights
    if x.shape[0] > 2:
        return ((terms[:, 0] + terms[:, 1]) + terms[:, 2])[:, None]
    return (terms[:, 0] + (terms[:, 1] + terms[:, 2]))[:, None]


def test_rows_that_round_otherwise_in_another_batch_size_are_not_refused_as_mixed() -> None:
    """The background run in two halves moves a float32 model's outputs by far more than its ε where the batch size
    changes the order of an ill-conditioned sum; a float64 copy run the same way moves them by a millionth of that
    or less: rounding, not a row that reads another. The model is not refused as mixing its rows (it was, on a CPU
    whose matrix kernels change with the batch size), and a count over the batch still is (test_missing_values)."""
    g = torch.Generator().manual_seed(0)
    base = 1 + torch.rand(4, 1, generator=g)
    background = torch.cat([base, base + 1e-6 * torch.randn(4, 1, generator=g), torch.rand(4, 1, generator=g)], 1)
    model = Composite(summed_by_size, weights=nn.Buffer(torch.tensor([1e6, -1e6, 1.0]))).eval()
    with torch.no_grad():
        whole, halves = model(background), torch.cat([model(background[:2]), model(background[2:])])
    assert (whole - halves).abs().max() > 1e3 * eps(torch.float32) * whole.abs().max()  # (the halves do differ)
    rnnshap.DeepExplainer(model, background)  # not refused
