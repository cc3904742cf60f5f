"""A comparison's mask cast to floating point: a step of its operands' difference, attributed by Rescale.

KAN layers (efficient-kan, neuralforecast's KAN, pytorch-forecasting's NBeatsKAN) build their B-spline bases from
indicators ``((x >= g[:-1]) & (x < g[1:])).to(x.dtype)``; a model may also use ``(z > 0).float()`` as a feature.
The cast mask is the step :math:`c = 1[d \\ge 0]` of :math:`d = u - v` as 0/1 floats, with the exact Rescale multiplier
:math:`(c - c_r) / (d - d_r)` (rules/gates.py), its logical combinations the multilinear polynomials of
engines/pytorch/gate_masks.py. The references here are written from the equations in float64: where every such
function is elementwise in one input, that input's attribution is the change of its own terms, whatever rule splits
them; a comparison of two inputs splits its step's change in proportion to their moves.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite, Function

Tensor = torch.Tensor
D = torch.float64
PATHS = [False, "capture"]


#: forms the captured pass hands to the intercepted one (a write into a value that may share memory with another)
INTERCEPTED = {"written_after_cast"}


def _explain(model: nn.Module, background: Tensor, X: Tensor, compile: Any, captured: bool = True) -> np.ndarray:
    explainer = rnnshap.DeepExplainer(model, background, compile=compile)
    values = explainer.shap_values(X, check_additivity=False)
    if compile == "capture":
        assert explainer.pass_path.startswith("captured" if captured else "intercepted"), explainer.pass_path
    return np.asarray(values)


def _doubled(step: Tensor) -> Tensor:
    step.mul_(2.0)  # (in place: into the cast, not into the comparison's step)
    return step


def _elementwise_reference(h: Callable[[np.ndarray], np.ndarray], X: Tensor, background: Tensor) -> np.ndarray:
    """φ of ``sum_i h(x_i)`` (one output): each input's own change, averaged over the references."""
    x, r = X.numpy(), background.numpy()
    return (h(x)[:, None, :] - h(r)[None, :, :]).mean(1)


INDICATORS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[np.ndarray], np.ndarray]]] = {
    # name: (the model's form, the same function written in numpy)
    "window": (lambda x: ((x > -0.5) & (x < 0.5)).to(x.dtype) * x, lambda x: ((x > -0.5) & (x < 0.5)) * x),
    "float": (lambda x: (x >= 0.2).float().to(x.dtype) + x, lambda x: (x >= 0.2) + x),
    "not_or": (lambda x: (~(x > 0) | (x < -1)).double() * 2.0, lambda x: (~(x > 0) | (x < -1)) * 2.0),
    "type_as": (lambda x: (x < x * 0.5 + 0.1).type_as(x) * x, lambda x: (x < x * 0.5 + 0.1) * x),
    "sliced": (lambda x: (x > 0)[:, :].reshape(x.shape).to(x.dtype) - x, lambda x: (x > 0) * 1.0 - x),
    # pykan's (and pytorch-forecasting's NBeatsKAN's) basis: masks multiplied, then promoted by arithmetic
    "written_after_cast": (lambda x: _doubled((x > 0.3).to(x.dtype)) + (x > 0.3).to(x.dtype), lambda x: (x > 0.3) * 3.0),
    "promoted": (
        lambda x: torch.nan_to_num((x >= -0.5) * (x < 0.5))[:, :] * (x - 0.5) + 1.0 * (x > 1),
        lambda x: ((x >= -0.5) & (x < 0.5)) * (x - 0.5) + (x > 1),
    ),
    # a where whose branches are both constants: the same function as the mask cast, scaled and shifted (Python
    # numbers give torch's default dtype, float32: its rounding would reach the multipliers passed through it here)
    "where_numbers": (lambda x: torch.where(x > 0.1, x.new_ones(()), x.new_zeros(())) * x, lambda x: (x > 0.1) * x),
    "where_levels": (lambda x: torch.where(x > 0.1, 0.7, -0.3) + x, lambda x: np.where(x > 0.1, 0.7, -0.3) + x),
    "where_tensors": (
        lambda x: torch.where((x < 0.5) & (x > -1.0), torch.full_like(x, 2.5), torch.zeros_like(x)) * x,
        lambda x: ((x < 0.5) & (x > -1.0)) * 2.5 * x,
    ),
    "masked_fill": (lambda x: torch.ones_like(x).masked_fill(x >= 0.0, -2.0) - x, lambda x: np.where(x >= 0.0, -2.0, 1.0) - x),
}


@pytest.mark.parametrize("compile", PATHS)
@pytest.mark.parametrize("case", list(INDICATORS))
def test_an_elementwise_indicator_gets_each_input_its_own_change(case: str, compile: Any) -> None:
    form, written = INDICATORS[case]
    model = Function(lambda x: form(x).sum(-1, keepdim=True)).eval()
    torch.manual_seed(0)
    background, X = torch.randn(7, 6, dtype=D), torch.randn(4, 6, dtype=D)
    values = _explain(model, background, X, compile, captured=case not in INTERCEPTED)
    expected = _elementwise_reference(written, X, background)
    assert np.abs(values[..., 0] - expected).max() <= 1e-12
    assert_additive(values, model, X, background, D)


def _b_splines(x: Tensor, grid: Tensor, order: int) -> Tensor:
    """efficient-kan's basis (KANLinear.b_splines): indicators of the grid's intervals, raised by Cox-de Boor."""
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, order + 1):
        bases = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)]) * bases[:, :, :-1] + (grid[:, k + 1 :] - x) / (
            grid[:, k + 1 :] - grid[:, 1:(-k)]
        ) * bases[:, :, 1:]
    return bases


def _cox_de_boor(x: np.ndarray, knots: np.ndarray, order: int) -> np.ndarray:
    """The same bases from the recursion's definition, one knot interval at a time: (..., intervals - order)."""
    bases = np.stack([(x >= knots[j]) & (x < knots[j + 1]) for j in range(len(knots) - 1)], -1).astype(np.float64)
    for k in range(1, order + 1):
        bases = np.stack(
            [
                (x - knots[j]) / (knots[j + k] - knots[j]) * bases[..., j]
                + (knots[j + k + 1] - x) / (knots[j + k + 1] - knots[j + 1]) * bases[..., j + 1]
                for j in range(bases.shape[-1] - 1)
            ],
            -1,
        )
    return bases


def _kan_layer(m: nn.Module, x: Tensor) -> Tensor:
    """A KAN layer as efficient-kan writes it: a SiLU base branch and a spline branch of learned coefficients."""
    base = torch.nn.functional.linear(torch.nn.functional.silu(x), m.base_weight)
    splines = _b_splines(x, m.grid, m.order).view(x.size(0), -1)
    return base + torch.nn.functional.linear(splines, m.spline_weight.view(m.spline_weight.size(0), -1))


def kan_layer(features: int, outputs: int, grid_size: int = 5, order: int = 3) -> nn.Module:
    knots = torch.arange(-order, grid_size + order + 1, dtype=D) * (2.0 / grid_size) - 1.0
    return Composite(
        _kan_layer, grid=nn.Buffer(knots.expand(features, -1).contiguous()), order=order,
        base_weight=nn.Parameter(torch.randn(outputs, features, dtype=D) * 0.5),
        spline_weight=nn.Parameter(torch.randn(outputs, features, grid_size + order, dtype=D) * 0.5),
    )  # fmt: skip


@pytest.mark.parametrize("compile", PATHS)
def test_a_kan_layer_gets_the_change_of_each_inputs_own_basis_functions(compile: Any) -> None:
    """Each input of a KAN layer feeds only its own basis functions, summed by the layer: its attribution is
    Σ_k w_k (B_k(x_i) - B_k(r_i)) + w (silu(x_i) - silu(r_i)), computed here from the bases' definition."""
    torch.manual_seed(1)
    model = kan_layer(4, 3).eval()
    background, X = torch.rand(6, 4, dtype=D) * 1.8 - 0.9, torch.rand(3, 4, dtype=D) * 1.8 - 0.9
    values = _explain(model, background, X, compile)  # (samples, features, outputs)
    knots = model.grid[0].numpy()
    spline, base = model.spline_weight.detach().numpy(), model.base_weight.detach().numpy()

    def terms(x: np.ndarray) -> np.ndarray:  # (rows, features, outputs)
        silu = x / (1.0 + np.exp(-x))
        return np.einsum("rfk,ofk->rfo", _cox_de_boor(x, knots, model.order), spline) + silu[..., None] * base.T[None]

    expected = (terms(X.numpy())[:, None] - terms(background.numpy())[None]).mean(1)
    assert np.abs(values - expected).max() <= 1e-12
    assert_additive(values, model, X, background, D)


@pytest.mark.parametrize("compile", PATHS)
def test_a_comparison_of_two_inputs_splits_its_step_by_their_moves(compile: Any) -> None:
    """``3 · 1[x0 > x1]``: the step of d = x0 - x1, its change split by Rescale in proportion to Δx0 and -Δx1; the
    third input, which the model ignores, gets exactly 0."""
    model = Function(lambda x: (x[:, :1] > x[:, 1:2]).to(x.dtype) * 3.0).eval()
    torch.manual_seed(2)
    background, X = torch.randn(8, 3, dtype=D), torch.randn(5, 3, dtype=D)
    values = _explain(model, background, X, compile)[..., 0]
    x, r = X.numpy()[:, None], background.numpy()[None]
    step = 3.0 * ((x[..., 0] > x[..., 1]) * 1.0 - (r[..., 0] > r[..., 1]))
    gap = (x[..., 0] - x[..., 1]) - (r[..., 0] - r[..., 1])
    share = np.where(step != 0, step / np.where(step != 0, gap, 1.0), 0.0)
    expected = np.stack([(share * (x[..., 0] - r[..., 0])).mean(1), (-share * (x[..., 1] - r[..., 1])).mean(1)], -1)
    assert np.abs(values[:, :2] - expected).max() <= 1e-12
    assert np.all(values[:, 2] == 0.0)


BOTH_PATHS: dict[str, Callable[[Tensor], Tensor]] = {
    "cast": lambda z: ((z > -0.3) & ~(z > 0.7)).to(z.dtype) * z,
    "where_of_combined": lambda z: torch.where((z > -0.5) & (z < 0.5), z * z, torch.tanh(z)),
    "where_of_moved": lambda z: torch.where((z > 0)[:, None, :].expand(-1, 2, -1).reshape(z.shape[0], -1)[:, :5], z, -z),
    "tests_and_compare": lambda z: torch.where(torch.isnan(z) | (z.abs() >= 0.8), 0.0, z) + (z < 0).float(),
    "cast_and_gate": lambda z: torch.where(z > 0, z, 0.1 * z) * (z > 0).to(z.dtype),
}


@pytest.mark.parametrize("case", list(BOTH_PATHS))
def test_both_paths_give_the_same_values_bit_for_bit(case: str) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 5), Function(BOTH_PATHS[case]), nn.Linear(5, 2)).eval()
    background, X = torch.randn(6, 5), torch.randn(3, 5)
    intercepted = _explain(model, background, X, False)
    captured = _explain(model, background, X, "capture")
    assert np.array_equal(intercepted, captured)
    assert_additive(captured, model, X, background, torch.float32)


@pytest.mark.parametrize("compile", PATHS)
def test_a_mask_counted_is_refused_by_name(compile: Any) -> None:
    """A count of a mask's entries changes by whole numbers between an input and its reference, with no multiplier
    for any one input: refused by name, with the advice that fits."""
    model = Function(lambda x: (x > 0).sum(-1, keepdim=True).to(x.dtype) * x[:, :1]).eval()
    background, X = torch.randn(4, 3, dtype=D), torch.randn(2, 3, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, background, compile=compile).shap_values(X)
    assert "gt" in str(info.value) and "separate bool or integer input" in str(info.value)


def _stale_mask(x: Tensor) -> Tensor:
    m = x > 0.3
    m[:, 0] = False  # (the mask written into: no longer the comparison's)
    return m


def _stale(x: Tensor) -> Tensor:
    return _stale_mask(x).to(x.dtype) * x


#: uses of a mask that are neither casts nor moves nor logic: each refused by name on both paths, never the values of
#: a step they do not compute
NOT_STEPS: dict[str, Callable[[Tensor], Tensor]] = {
    "plus_true": lambda x: ((x > 0.3) + True).to(x.dtype) * x,
    "diff": lambda x: torch.diff(x > 0.3).to(x.dtype),
    "times_int": lambda x: ((x > 0.3) * 2).to(torch.bool).to(x.dtype) * x,
    "and_int": lambda x: ((x > 0.3) & 2).to(x.dtype) * x,
    "written_into": _stale,
    "plus_true_as_a_gate": lambda x: torch.where((x > 0.3) + True, x * x, -x),
    "written_into_as_a_gate": lambda x: torch.where(_stale_mask(x), x, -x),
}


@pytest.mark.parametrize("compile", PATHS)
@pytest.mark.parametrize("case", list(NOT_STEPS))
def test_uses_that_are_not_steps_are_refused(case: str, compile: Any) -> None:
    model = Function(lambda x: NOT_STEPS[case](x).sum(-1, keepdim=True)).eval()
    torch.manual_seed(4)
    background, X = torch.randn(4, 3, dtype=D), torch.randn(2, 3, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError):
        rnnshap.DeepExplainer(model, background, compile=compile).shap_values(X, check_additivity=False)


def test_a_missing_value_tests_mask_used_as_a_feature_stays_a_constant() -> None:
    """``isnan`` answers alike on both sides of every pair (windows padded alike), so its mask cast to floating point
    is a constant of the function, as are the masks and attention biases made from it (Chronos-Bolt's padding): no
    step through the NaN, the same values on both paths, and the padding gets exactly 0."""

    def padded(x: Tensor) -> Tensor:
        seen = torch.isnan(x).logical_not().to(x.dtype)
        filled = torch.where(seen > 0.0, x, 0.0)
        bias = (1.0 - (seen.cumsum(-1) > 0).to(x.dtype)) * torch.finfo(x.dtype).min
        weights = torch.softmax(filled + bias, -1)
        return (weights * filled).sum(-1, keepdim=True) + (torch.tanh(filled) * seen).sum(-1, keepdim=True)

    torch.manual_seed(5)
    background, X = torch.randn(4, 6, dtype=D), torch.randn(2, 6, dtype=D)
    background[:, :2], X[:, :2] = float("nan"), float("nan")
    model = Function(padded).eval()
    intercepted = _explain(model, background, X, False)
    captured = _explain(model, background, X, "capture")
    assert np.array_equal(intercepted, captured)
    assert np.all(captured[:, :2] == 0.0)
    assert_additive(captured, model, X, background, D)


@pytest.mark.parametrize("compile", PATHS)
def test_a_where_between_constants_one_of_them_infinite_is_refused_by_name(compile: Any) -> None:
    """``softmax(s + torch.where(x > 0, 0.0, -inf))``: the step's change times an infinite difference of its branches
    has no finite multiplier; refused by name (the where of input-dependent values, ``masked_fill(-inf)``, says how to
    mask instead)."""
    model = Function(lambda x: torch.softmax(x + torch.where(x > 0, 0.0, float("-inf")), -1)[:, :1]).eval()
    background, X = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    X[:, 0] = background[:, 0].abs().max() + 1.0  # (every row keeps one finite score)
    background[:, 0] = X[0, 0]
    with pytest.raises(rnnshap.UnsupportedOperationError, match="outside a where"):
        rnnshap.DeepExplainer(model, background, compile=compile).shap_values(X)
