"""Masks of comparisons sliced, reshaped and combined (``&``, ``|``, ``^``, ``~``) before the ``where`` that uses them.

A comparison's mask is a step of the input; a slice of it is the same steps, and a combination is a
function of the steps, written exactly as a multilinear polynomial (``a & b = ab``, ``a | b = a + b - ab``,
``a ^ b = a + b - 2ab``, ``~a = 1 - a``) whose two-player Shapley split is exact. So
``where(m1 | m2, f(x), g(x))`` of one element stays the piecewise function it is, with the Rescale
multiplier ``(h(x) - h(r)) / (x - r)``; a function of two steps alone gets the Shapley values of its two
inputs. The references here are closed forms computed from the function itself, in float64.

Masks that feed only a check (``if not valid.all(): raise``, torch.distributions' argument validation) are
context; one used as a value without a gate of its own stays refused by name.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...conftest import assert_additive
from ...models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64


def _explain(model: nn.Module, background: Tensor, X: Tensor) -> np.ndarray:
    return rnnshap.DeepExplainer(model, background).shap_values(X)


def _elementwise_truth(h: Callable[[Tensor], Tensor], X: Tensor, background: Tensor) -> np.ndarray:
    """φ of input j on output i for an elementwise h: δ_ij (h(x_j) - h(r_j)), averaged over the references,
    in shap's layout (samples, inputs, outputs)."""
    n = X.shape[1]
    change = (h(X)[:, None, :] - h(background)[None, :, :]).mean(1)  # (samples, n)
    return (torch.eye(n, dtype=F64)[None] * change[:, :, None]).numpy()





def _sliced(x: Tensor) -> Tensor:
    """One mask, used whole on one half and sliced (and reshaped) on the other: TimesFM 3's ``apply_detrend``."""
    mask = x > 0.3
    left = torch.where(mask[:, :3], x[:, :3] ** 2, -x[:, :3])
    right = torch.where(mask.unsqueeze(-1)[:, 3:, 0], torch.tanh(x[:, 3:]), 0.5 * x[:, 3:])
    return torch.cat([left, right], 1)


PIECEWISE: dict[str, Callable[[Tensor], Tensor]] = {
    "or": lambda x: torch.where((x > 1.0) | (x < -1.0), x**2, x),
    "logical_or": lambda x: torch.where(torch.logical_or(x > 1.0, x.lt(-1.0)), torch.sigmoid(x), 2 * x),
    "and": lambda x: torch.where((x > -1.0) & (x < 0.5), torch.tanh(x), x - 1),
    "and_not": lambda x: torch.where((x > -1.0) & ~(x > 0.5), x * 3, -x),
    "xor": lambda x: torch.where((x > -0.5) ^ (x > 0.8), x.exp(), x),
    "with_a_constant_mask": lambda x: torch.where((x > 0.0) & torch.tensor([True, False, True, True, False, True]), x, -x),
    "extreme_values": lambda x: torch.where(torch.isinf(x) | torch.isnan(x) | (x.abs() >= 1.2), 0.0, x),
    "sliced": _sliced,
    "flipped": lambda x: torch.where((x < 0.2).flip(1), x.flip(1) * 2, x.flip(1)).flip(1),
}


@pytest.mark.parametrize("name", PIECEWISE)
def test_a_sliced_or_combined_gate_is_the_piecewise_function_it_computes(name: str) -> None:
    """Closed form: each output element is a piecewise function of its own input element, so its values are
    h(x_j) - h(r_j) on that element (averaged over the references) and exactly 0 on every other; crossings of
    the thresholds on both sides (the masks change between an input and its references)."""
    h = PIECEWISE[name]
    g = torch.Generator().manual_seed(3)
    background, X = torch.randn(5, 6, generator=g, dtype=F64) * 1.5, torch.randn(4, 6, generator=g, dtype=F64) * 1.5
    X[0] = background[2]  # Δ = 0 for one pair
    crossings = sum(int((h(X[i : i + 1]) != h(background[j : j + 1])).sum()) for i in range(4) for j in range(5))
    assert crossings > 0
    values = _explain(Function(h), background, X)
    np.testing.assert_allclose(values, _elementwise_truth(h, X, background), rtol=1e-12, atol=1e-13)


def _shapley_of_two(h: Callable[[Tensor, Tensor], Tensor], X: Tensor, background: Tensor) -> Tensor:
    """The exact Shapley values of h(x0, x1) (one output), by definition, averaged over the references."""
    x0, x1 = X[:, None, 0], X[:, None, 1]
    r0, r1 = background[None, :, 0], background[None, :, 1]
    phi0 = 0.5 * ((h(x0, r1) - h(r0, r1)) + (h(x0, x1) - h(r0, x1)))
    phi1 = 0.5 * ((h(r0, x1) - h(r0, r1)) + (h(x0, x1) - h(x0, r1)))
    return torch.stack([phi0.mean(1), phi1.mean(1)], 1)


LOGIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "and": lambda a, b: (a > 0) & (b > 0.2),
    "or": lambda a, b: (a > 0) | (b > 0.2),
    "xor": lambda a, b: torch.logical_xor(a > 0, b > 0.2),
    "not_or": lambda a, b: ~((a > 0) | (b < 0.2)),
}


def _view_and_ed(x: Tensor) -> Tensor:
    m = x > 0
    v = m[:, :2]
    v &= x[:, :2] > 1.0  # (writes into m through the view)
    return torch.where(m, x**2, -x)


def _base_and_ed(x: Tensor) -> Tensor:
    m = x > 0
    v = m[:, :2]
    m &= x > -1.0  # (writes into v, which m is the base of)
    return torch.where(v, x[:, :2] ** 2, -x[:, :2])


def _fresh_and_ed(x: Tensor) -> Tensor:
    m = (x > 0).clone()
    m &= x < 1.0
    return torch.where(m, x**2, -x)


@pytest.mark.parametrize("write", [_view_and_ed, _base_and_ed, _fresh_and_ed], ids=["view", "base", "fresh"])
def test_a_mask_combined_in_place_is_refused_by_name(write: Callable[[Tensor], Tensor]) -> None:
    """An in-place &=, |=, ^= writes into every view of the mask, whose gates would keep the old steps: refused by
    name, as before masks were combined (no model of the zoo writes a mask in place)."""
    g = torch.Generator().manual_seed(8)
    background, X = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="__iand__"):
        rnnshap.DeepExplainer(Function(write), background).shap_values(X, check_additivity=False)


@pytest.mark.parametrize("name", LOGIC)
def test_a_function_of_two_comparisons_gets_their_shapley_values(name: str) -> None:
    """where(m(x0, x1), x2 + 5, x2 - 5) = 10·m(x0, x1) + x2 - 5 with m a logical combination of a step of x0 and a
    step of x1: x2 gets its change, and x0 and x1 the exact Shapley values of 10·m, computed by definition
    (pairs where m stays put while both steps move included: their credits cancel, they are not 0)."""
    logic = LOGIC[name]

    def two_steps(x: Tensor) -> Tensor:
        return torch.where(logic(x[:, :1], x[:, 1:2]), x[:, 2:] + 5, x[:, 2:] - 5)

    g = torch.Generator().manual_seed(5)
    background, X = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    values = _explain(Function(two_steps), background, X)[:, :, 0]
    steps = _shapley_of_two(lambda a, b: 10.0 * logic(a, b).to(F64), X, background)
    assert steps.abs().max() > 2
    np.testing.assert_allclose(values[:, :2], steps.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values[:, 2], (X[:, 2] - background[:, 2].mean()).numpy(), rtol=1e-12, atol=1e-12)


def validated(m: nn.Module, x: Tensor) -> Tensor:
    """A categorical distribution built with argument validation (torch.distributions checks its probabilities:
    ``(p >= 0).all(-1) & ((p.sum(-1) - 1).abs() < 1e-6)``, then ``if not valid.all(): raise``): the masks only
    feed the check."""
    probs = torch.softmax(m.lin(x), -1)
    categorical = torch.distributions.Categorical(probs=probs, validate_args=True)
    return (categorical.probs * torch.arange(3, dtype=x.dtype)).sum(-1, keepdim=True)


def test_masks_that_only_feed_a_check_are_context() -> None:
    torch.manual_seed(2)
    model = Composite(validated, lin=nn.Linear(4, 3)).to(F64).eval()
    g = torch.Generator().manual_seed(6)
    background, X = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, F64)

    def unchecked(x: Tensor) -> Tensor:  # the same model without the check
        categorical = torch.distributions.Categorical(probs=torch.softmax(model.lin(x), -1), validate_args=False)
        return (categorical.probs * torch.arange(3, dtype=x.dtype)).sum(-1, keepdim=True)

    np.testing.assert_array_equal(values, _explain(Function(unchecked), background, X))


def test_a_combined_mask_without_a_gate_is_still_refused_as_a_value() -> None:
    """``(x >= 0).all(-1) & (x < 2)`` reduces one comparison along a row before combining: no gate, so a where on
    it is refused by name (the values it would change have no multiplier)."""

    def reduced(x: Tensor) -> Tensor:
        valid = (x >= 0).all(-1, keepdim=True) & (x < 2)
        return torch.where(valid, x, 0.0)

    background = torch.rand(4, 3, dtype=F64)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="where"):
        _explain(Function(reduced), background, background[:2] + 0.5)


def test_a_branch_on_a_combined_mask_that_differs_between_elements_is_refused() -> None:
    def _branch(x: Tensor) -> Tensor:
        if ((x > 0) & (x < 10)).all():
            return x * 2
        return x

    background = torch.rand(4, 3, dtype=F64)
    background[1:, 1] = -1.0  # rows 1 to 3 alone take the other branch than row 0 alone
    with pytest.raises(rnnshap.UnsupportedOperationError, match="branches on a comparison"):
        _explain(Function(_branch), background, background[:2])


@pytest.mark.parametrize("combined", [False, True], ids=["one_step", "combined"])
def test_an_infinite_branch_where_the_mask_moves_is_refused_by_name_where_read(combined: bool) -> None:
    """softmax(where(mask, x, -inf)) with the mask moving between a pair's sides: no finite value adds up, and the
    softmax that reads the fill is refused by name, for a combined mask as for one comparison."""

    def h(x: Tensor) -> Tensor:
        mask = ((x > -0.5) & (x < 1)) if combined else (x > -0.5)
        return torch.softmax(torch.where(mask, x, float("-inf")), -1)

    g = torch.Generator().manual_seed(0)
    background, X = torch.randn(5, 6, generator=g, dtype=F64), torch.randn(3, 6, generator=g, dtype=F64)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"softmax: it reads values filled with an infinity"):
        rnnshap.DeepExplainer(Function(h), background).shap_values(X)
