"""Picks written into a tensor and masks made by casting to bool: the group-limited routing of DeepSeek-V3 and GLM-4.5.

Such a router ranks groups of experts, writes the groups it picked into a tensor of zeros (``mask.scatter_(1, idx, 1)``),
casts that to a bool mask, zeroes the scores of every group it did not pick (``masked_fill(~mask.bool(), 0)``) and
picks its experts among the rest. Written with a constant value into a constant tensor at distinct positions, the
scatter is a sum of one-hot vectors of the picks, so each pick's change is credited through its handle as
``F.one_hot``'s is (tests/rules/test_orderings.py); a float cast to bool is the step ``x != 0`` (rules/gates.py).

Filled with ``-inf`` (transformers 5's router), the groups left out on one side of a pair only move by an infinite
amount: the values are the limit of finite fills, checked against fills of -1e3 and -1e6.

Each check compares with an independent form of the same function (the scatter written as a sum of ``one_hot``s, the
cast as a comparison), the model's own outputs (additivity), and a feature the model ignores
(exactly 0); what the rule cannot take (a value written from the input, picks repeated along the scattered dimension,
a reduction) is refused by name.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap

from ..conftest import assert_additive
from ..models.torch import Composite

Tensor = torch.Tensor
D = torch.float64
GROUPS, PER_GROUP, TOP_GROUPS, TOP = 4, 3, 2, 3


def _explain(model: nn.Module, background: Tensor, X: Tensor, **options: object) -> np.ndarray:
    return np.asarray(rnnshap.DeepExplainer(model, background, **options).shap_values(X))


def _multi_hot_by_scatter(idx: Tensor, like: Tensor) -> Tensor:
    return torch.zeros_like(like).scatter_(1, idx, 1)


def _multi_hot_by_one_hot(idx: Tensor, like: Tensor) -> Tensor:
    return F.one_hot(idx, like.shape[1]).sum(1).to(like.dtype)


def _multi_hot_by_scatter_out_of_place(idx: Tensor, like: Tensor) -> Tensor:
    return torch.scatter(torch.zeros_like(like), 1, idx, torch.ones(idx.shape, dtype=like.dtype))


def _mask_by_cast(multi_hot: Tensor) -> Tensor:
    return multi_hot.bool()


def _mask_by_comparison(multi_hot: Tensor) -> Tensor:
    return multi_hot != 0


def group_router(
    multi_hot: Callable[[Tensor, Tensor], Tensor] = _multi_hot_by_scatter,
    mask: Callable[[Tensor], Tensor] = _mask_by_cast,
    fill: float = 0.0,
) -> nn.Module:
    """DeepSeek-V3's router (transformers' ``DeepseekV3TopkRouter.get_topk_indices``, its picks' weights): each
    group's score the sum of its two best experts' scores, the best groups picked, the other groups' scores set to
    ``fill`` (transformers 4: 0, 5: -inf), the best experts picked among the rest and their scores weighted and summed."""

    def forward(m: nn.Module, x: Tensor) -> Tensor:
        scores = torch.sigmoid(m.router(x))
        choice = scores + m.bias
        group_scores = choice.view(-1, GROUPS, PER_GROUP).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=TOP_GROUPS, dim=-1, sorted=False)[1]
        group_mask = multi_hot(group_idx, group_scores)
        score_mask = group_mask.unsqueeze(-1).expand(-1, GROUPS, PER_GROUP).reshape(-1, GROUPS * PER_GROUP)
        choice = choice.masked_fill(~mask(score_mask), fill)
        picked = torch.topk(choice, k=TOP, dim=-1, sorted=False)[1]
        weights = scores.gather(1, picked)
        return (weights * m.value(x).gather(1, picked)).sum(1, keepdim=True)

    experts = GROUPS * PER_GROUP
    return Composite(forward, router=nn.Linear(5, experts), value=nn.Linear(5, experts),
                     bias=nn.Parameter(0.1 * torch.randn(experts)))  # fmt: skip


def _data(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    background, X = torch.randn(5, 5, generator=g, dtype=D), torch.randn(4, 5, generator=g, dtype=D)
    background[:, -1], X[:, -1] = 0.0, torch.randn(4, generator=g, dtype=D)  # (the last feature: read by no one)
    return background, X


def _group_picks(model: nn.Module, x: Tensor) -> set[tuple[int, ...]]:
    with torch.no_grad():
        choice = (torch.sigmoid(model.router(x)) + model.bias).view(-1, GROUPS, PER_GROUP)
        picks = choice.topk(2, -1)[0].sum(-1).topk(TOP_GROUPS, -1)[1].sort(-1).values
    return {tuple(p) for p in picks.tolist()}


@pytest.mark.parametrize("seed", range(3))
def test_group_limited_routing_adds_up_and_a_feature_no_one_reads_gets_exactly_zero(seed: int) -> None:
    torch.manual_seed(seed)
    model = group_router().to(D).eval()
    with torch.no_grad():
        model.router.weight[:, -1] = 0.0
        model.value.weight[:, -1] = 0.0
    background, X = _data(seed)
    assert len(_group_picks(model, torch.cat([X, background]))) > 1  # (the premise: the groups picked differ)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, D)
    assert np.all(values[:, -1] == 0.0)
    assert np.abs(values[:, :-1]).max() > 0


@pytest.mark.parametrize(
    ("multi_hot", "mask"),
    [(_multi_hot_by_scatter_out_of_place, _mask_by_cast), (_multi_hot_by_scatter, _mask_by_comparison),
     (_multi_hot_by_one_hot, _mask_by_comparison)],
    ids=["scatter out of place", "a comparison for the cast", "one_hot for the scatter and a comparison for the cast"],
)  # fmt: skip
def test_the_router_written_otherwise_gets_the_same_values(
    multi_hot: Callable[[Tensor, Tensor], Tensor], mask: Callable[[Tensor], Tensor]
) -> None:
    torch.manual_seed(1)
    given = group_router().to(D).eval()
    other = group_router(multi_hot, mask).to(D).eval()
    other.load_state_dict(given.state_dict())
    background, X = _data(1)
    np.testing.assert_allclose(_explain(other, background, X), _explain(given, background, X), rtol=1e-12, atol=1e-14)


def test_the_router_on_the_captured_pass_gets_the_intercepted_values() -> None:
    torch.manual_seed(2)
    model = group_router().to(D).eval()
    background, X = _data(2)
    explainer = rnnshap.DeepExplainer(model, background, compile="capture")
    np.testing.assert_array_equal(explainer.shap_values(X), _explain(model, background, X))  # (bit for bit)
    assert explainer.pass_path.startswith("captured"), explainer.pass_path


def picks_written(write: Callable[[Tensor, Tensor, Tensor], Tensor]) -> nn.Module:
    """The top 2 of 6 scores picked, ``write(target, idx, u)`` made of them, weighted and summed with the scores."""

    def forward(m: nn.Module, x: Tensor) -> Tensor:
        u = m.u(x)
        idx = u.topk(2, 1).indices
        return ((write(torch.zeros_like(u), idx, u) + 0.5) * m.h(x)).sum(1, keepdim=True)

    return Composite(forward, u=nn.Linear(5, 6), h=nn.Linear(5, 6))


@pytest.mark.parametrize(
    "write",
    [lambda t, idx, u: t.scatter(1, idx, 2.5),
     lambda t, idx, u: torch.scatter(input=t, dim=1, index=idx, value=2.5),
     lambda t, idx, u: t.scatter(1, idx, value=torch.tensor(2.5, dtype=u.dtype)),
     lambda t, idx, u: (t - 1).scatter_(1, idx, torch.full(idx.shape, 3.0, dtype=u.dtype)),
     lambda t, idx, u: t.scatter(1, idx.flip(1), torch.tensor([[1.0, -2.0]], dtype=u.dtype).expand(idx.shape[0], 2))],
    ids=["a number", "every argument by name", "a 0-dim tensor as the value", "a constant tensor into a constant not zero",
         "a value per pick"],
)  # fmt: skip
def test_a_constant_written_at_picked_positions_adds_up(write: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    torch.manual_seed(3)
    model = picks_written(write).to(D).eval()
    background, X = torch.randn(4, 5, dtype=D), torch.randn(5, 5, dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


@pytest.mark.parametrize(
    ("write", "says"),
    [(lambda t, idx, u: t.scatter(1, idx, u[:, :2]), "written from the input"),
     (lambda t, idx, u: t.scatter(1, torch.cat([idx, idx[:, :1]], 1), 1.0), "repeat"),
     (lambda t, idx, u: t.scatter(1, idx, 1.0, reduce="add"), "reduce"),
     (lambda t, idx, u: t.long().scatter(1, idx, 1).to(u.dtype), "integer tensor")],
    ids=["a value from the input", "a pick written twice", "a reduction", "into integers"],
)  # fmt: skip
def test_what_the_scatter_of_picks_cannot_take_is_refused_by_name(write: Callable[..., Tensor], says: str) -> None:
    torch.manual_seed(4)
    model = picks_written(write).to(D).eval()
    background, X = torch.randn(3, 5, dtype=D), torch.randn(2, 5, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=rf"(?s)scatter.*{says}"):
        _explain(model, background, X)


def test_a_float_cast_to_bool_is_the_step_of_its_difference_from_zero() -> None:
    """``x.bool()`` of an input-dependent float (not only 0 or 1) gates as ``x != 0`` does: the same values."""

    def gated(cast: Callable[[Tensor], Tensor]) -> nn.Module:
        return Composite(lambda m, x: torch.where(cast(torch.relu(m.u(x))), m.h(x), -1.0).sum(1, keepdim=True),
                         u=nn.Linear(5, 6), h=nn.Linear(5, 6))  # fmt: skip

    torch.manual_seed(5)
    by_cast = gated(lambda t: t.bool()).to(D).eval()
    by_comparison = gated(lambda t: t != 0).to(D).eval()
    by_comparison.load_state_dict(by_cast.state_dict())
    background, X = torch.randn(4, 5, dtype=D), torch.randn(5, 5, dtype=D)
    values = _explain(by_cast, background, X)
    assert_additive(values, by_cast, X, background, D)
    np.testing.assert_array_equal(values, _explain(by_comparison, background, X))


def test_a_router_that_fills_the_groups_it_leaves_out_with_minus_infinity_gets_the_limit_of_finite_fills() -> None:
    """Filled with ``-inf`` (transformers 5's form of the router), an expert of a group left out on one side of a pair
    only moves by an infinite amount. Filled with a finite value ``F`` below every score, the picks are the same and
    the values exact; as ``F`` falls, the share of such an expert's own score vanishes and its group's step takes the
    pick's whole change: ``-inf`` gets that limit. The values add up, the feature no one reads gets exactly 0, and the
    captured pass gives the intercepted values."""
    torch.manual_seed(0)
    infinite = group_router(fill=-torch.inf).to(D).eval()
    background, X = _data(0)
    with torch.no_grad():
        infinite.router.weight[:, -1] = 0.0
        infinite.value.weight[:, -1] = 0.0
    assert len(_group_picks(infinite, torch.cat([X, background]))) > 1
    values = _explain(infinite, background, X)
    assert_additive(values, infinite, X, background, D)
    assert np.all(values[:, -1] == 0.0) and np.abs(values).max() > 0
    gaps = []
    for fill in (-1e3, -1e6):
        finite = group_router(fill=fill).to(D).eval()
        finite.load_state_dict(infinite.state_dict())
        with torch.no_grad():
            assert torch.equal(finite(X), infinite(X))  # (the same picks: the same outputs)
        gaps.append(np.abs(_explain(finite, background, X) - values).max())
    assert gaps[1] < 2e-3 * gaps[0] and gaps[1] < 1e-5 * np.abs(values).max()  # (the gap falls as 1/|F|)
    captured = rnnshap.DeepExplainer(infinite, background, compile="capture")
    np.testing.assert_array_equal(captured.shap_values(X), values)  # (bit for bit)
    assert captured.pass_path.startswith("captured"), captured.pass_path


def test_values_filled_with_minus_infinity_by_a_moving_mask_are_refused_by_name_where_not_picked_from() -> None:
    """Scores filled with -inf where a comparison's mask differs between an input and its reference have no finite
    multiplier there: their concatenation before a softmax is refused by name (an ordering's picks among them, read
    directly, are taken: the test above)."""
    def forward(m: nn.Module, x: Tensor) -> Tensor:
        scores = torch.where(m.u(x) > 0, m.u(x), -torch.inf)
        return torch.softmax(torch.cat([torch.zeros_like(scores[:, :1]), scores], 1), -1) @ m.w  # (a key always kept)

    model = Composite(forward, u=nn.Linear(5, 6), w=nn.Parameter(torch.randn(7, 1)))
    torch.manual_seed(7)
    model = model.to(D).eval()
    background, X = torch.randn(4, 5, dtype=D), torch.randn(3, 5, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)cat: it reads values filled with an infinity"):
        _explain(model, background, X)


def test_a_one_hot_written_by_scatter_at_an_argmax_gets_one_hots_values() -> None:
    """``zeros.scatter(1, u.argmax(1, keepdim=True), 1.0)`` is ``F.one_hot(u.argmax(1))``: the same values."""

    def hot(write: Callable[[Tensor, Tensor], Tensor]) -> nn.Module:
        return Composite(lambda m, x: (write(m.u(x), m.u(x).argmax(1)) * m.h(x)).sum(1, keepdim=True),
                         u=nn.Linear(5, 6), h=nn.Linear(5, 6))  # fmt: skip

    torch.manual_seed(6)
    scattered = hot(lambda u, idx: torch.zeros_like(u).scatter(1, idx[:, None], 1.0)).to(D).eval()
    one_hot = hot(lambda u, idx: F.one_hot(idx, u.shape[1]).to(u.dtype)).to(D).eval()
    one_hot.load_state_dict(scattered.state_dict())
    background, X = torch.randn(4, 5, dtype=D), torch.randn(5, 5, dtype=D)
    values = _explain(scattered, background, X)
    assert_additive(values, scattered, X, background, D)
    np.testing.assert_allclose(values, _explain(one_hot, background, X), rtol=1e-12, atol=1e-14)


_PAYOFF = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], dtype=D)


def _filled_pick(fill: float, k: int) -> nn.Module:
    """``c[topk(scores.masked_fill(~(logits > 0), fill), k).indices].sum()`` of an input of 6 scores, then 6 logits."""
    return Composite(lambda m, x: _PAYOFF[x[:, :6].masked_fill(~(x[:, 6:] > 0), fill).topk(k, -1).indices].sum(1, keepdim=True))


@pytest.mark.parametrize(
    ("x", "r", "k"),
    [([0, 0, 0, 0, 0, 0, 1, -1, 1, 1, -1, -1], [0, 0, 0, 0, 0, 0, 1, -1, 1, 1, -1, 1], 2),
     ([0.2, -0.1, 0.5, -0.1, -0.8, -0.3, 1, 1, -1, -1, -1, -1], [-1.5, 0.8, -1.4, -0.6, 0, -1.8, 1, -1, -1, 1, -1, 1], 4)],
    ids=["the scores tied: the pick moves past no rank", "more picks than scores left unmasked: among tied fills"],
)  # fmt: skip
def test_picks_among_ties_and_fills_get_the_limit_of_finite_fills(x: list[float], r: list[float], k: int) -> None:
    X, background = torch.tensor([x], dtype=D), torch.tensor([r], dtype=D)
    values = _explain(_filled_pick(-torch.inf, k), background, X)
    assert_additive(values, _filled_pick(-torch.inf, k), X, background, D)
    finite = _explain(_filled_pick(-1e6, k), background, X)
    np.testing.assert_allclose(values, finite, rtol=0, atol=1e-4 * np.abs(finite).max())


def test_what_reads_a_fill_otherwise_than_an_orderings_picks_is_refused_by_name_on_both_passes() -> None:
    """A fill compared (inside an operator: ``s > 0``), scaled (``s * 2.0``), its ordering's values past the scores
    left unmasked read (the ranks' values), or a fill of a combination of masks ordered (whose finite fills have no
    limit): refused by name, on the captured pass as on the intercepted one."""
    def scores(m: nn.Module, x: Tensor) -> Tensor:
        return m.u(x).masked_fill(~(m.g(x) > 0), float("-inf"))

    reads = {
        "compared": lambda m, x: torch.where(scores(m, x) > 0, m.u(x), 0.0) @ m.w,
        "scaled": lambda m, x: torch.softmax(torch.cat([torch.zeros_like(x[:, :1]), scores(m, x) * 2.0], 1), -1)[:, :6] @ m.w,
        "ranks' values": lambda m, x: torch.softmax(scores(m, x).topk(6, -1).values, -1) @ m.w,
        "a combination's fill": lambda m, x: m.w[m.u(x).masked_fill(~((m.g(x) > 0) | (m.u(x) > 1)), float("-inf"))
                                                 .topk(2, -1).indices].sum(1),
    }  # fmt: skip
    background, X = torch.randn(5, 5, dtype=D), torch.randn(4, 5, dtype=D)
    for read in reads.values():
        torch.manual_seed(0)
        model = Composite(read, u=nn.Linear(5, 6), g=nn.Linear(5, 6), w=nn.Parameter(torch.randn(6, 1))).to(D).eval()
        for compile in (False, "capture"):
            with pytest.raises(rnnshap.UnsupportedOperationError, match=r"infinit"):
                _explain(model, background, X, compile=compile)
