"""Sorting and order statistics: ``sort``, ``argsort``, ``topk`` with any k, ``kthvalue``, ``median``.

The value at rank ``j`` of an ordering changes from :math:`y_{r,j}` to :math:`y_j` only because
positions moved past that rank. The rule credits the whole change to one position that did: where
:math:`y_j > y_{r,j}`, among the positions ranked at most ``j`` in the input and at least ``j`` in
the reference (one always is both), the one ranked last in the input; where it fell, the same with
the sides swapped. At rank 0 that is shap's max-pool rule. The indices carry the same routing for
their uses (a gather, an indexing, a one-hot), as picked indices do (tests/engines/pytorch/test_picked.py).

Every check compares with an independent reference: the rule written here from those sentences
with numpy sets and loops in float64, the same function written with other operations (``topk``
= ``sort`` = ``max``, ``median`` = ``kthvalue``), the model's own outputs (additivity) and a feature
the model ignores (exactly 0).
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
from ..models.torch import Composite, Function

Tensor = torch.Tensor
D = torch.float64


def _explain(model: nn.Module, background: Tensor, X: Tensor) -> np.ndarray:
    return np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))


def ordered(how: Callable[[Tensor, Tensor], Tensor], d: int = 5, n: int = 6) -> nn.Module:
    """``how(u, h)`` of two linear maps of the input, then a sum: one output."""
    return Composite(lambda m, x: ((out := m.how(m.u(x), m.h(x))) * m.w[: out.shape[1]]).sum(1, keepdim=True),
                     how=how, u=nn.Linear(d, n), h=nn.Linear(d, n), w=nn.Parameter(torch.randn(n)))  # fmt: skip


def _order(u: np.ndarray, largest: bool) -> list[int]:
    return [int(i) for i in np.argsort(-u if largest else u, kind="stable")]


def _decider(ux: np.ndarray, ur: np.ndarray, j: int, largest: bool) -> int | None:
    """The position that decided rank ``j``, from the rule's sentences (None: no position moved)."""
    ox, orr = _order(ux, largest), _order(ur, largest)
    n = len(ux)
    x_side = [i for i in range(n) if ox.index(i) <= j and orr.index(i) >= j]  # on the value's side of j in x only
    r_side = [i for i in range(n) if orr.index(i) <= j and ox.index(i) >= j]
    up, down = (x_side, r_side) if largest else (r_side, x_side)  # x_i >= y_j and r_i <= y_r,j; the reverse
    rose_at = min(up, key=lambda i: (ux[i], i))  # nearest the rank in x
    fell_at = min(down, key=lambda i: (ur[i], i))  # nearest the rank in r
    y, y_ref = ux[ox[j]], ur[orr[j]]
    if y > y_ref or (y == y_ref and largest):
        first, second = rose_at, fell_at
    else:
        first, second = fell_at, rose_at
    return first if ux[first] != ur[first] else second if ux[second] != ur[second] else None


def _sorted_reference(model: nn.Module, X: Tensor, background: Tensor, largest: bool) -> np.ndarray:
    """The rule's values for ``sort(u)`` weighted by ``w``, float64 numpy: (n, d)."""
    A, a = model.u.weight.detach().numpy(), model.u.bias.detach().numpy()
    w = model.w.detach().numpy()
    values = np.zeros(X.shape)
    for i, x in enumerate(X.numpy()):
        for r in background.numpy():
            ux, ur = A @ x + a, A @ r + a
            ox, orr = _order(ux, largest), _order(ur, largest)
            for j in range(len(ux)):
                change = ux[ox[j]] - ur[orr[j]]
                if change == 0:
                    continue
                d = _decider(ux, ur, j, largest)
                assert d is not None and abs(ux[d] - ur[d]) >= abs(change) - 1e-12  # it rose (fell) past the rank
                values[i] += w[j] * change / (ux[d] - ur[d]) * A[d] * (x - r) / len(background)
    return values


@pytest.mark.parametrize("descending", [True, False])
def test_sorted_values_match_the_rule_written_from_its_equations(descending: bool) -> None:
    torch.manual_seed(1)
    model = ordered(lambda u, h: torch.sort(u, dim=1, descending=descending).values).to(D).eval()
    background, X = torch.randn(6, 5, dtype=D), torch.randn(5, 5, dtype=D)
    orders = model.u(torch.cat([X, background])).argsort(1)
    assert len({tuple(o) for o in orders.tolist()}) > 3  # the orderings differ between samples and references
    values = _explain(model, background, X)[..., 0]
    np.testing.assert_allclose(values, _sorted_reference(model, X, background, descending), rtol=1e-10, atol=1e-12)
    assert_additive(values[..., None], model, X, background, D)


def _routing_reference(model: nn.Module, X: Tensor, background: Tensor, k: int) -> np.ndarray:
    """``Σ_j w_j h[topk(u, k).indices_j]``: the selection's Shapley split (h the mean of the two
    selections, the selector's change credited to the rank's deciding position), float64 numpy."""
    A, a = model.u.weight.detach().numpy(), model.u.bias.detach().numpy()
    B, b = model.h.weight.detach().numpy(), model.h.bias.detach().numpy()
    w = model.w.detach().numpy()
    values = np.zeros(X.shape)
    for i, x in enumerate(X.numpy()):
        for r in background.numpy():
            ux, ur, hx, hr = A @ x + a, A @ r + a, B @ x + b, B @ r + b
            ox, orr = _order(ux, True), _order(ur, True)
            for j in range(k):
                jx, jr = ox[j], orr[j]
                phi = 0.5 * (B[jx] + B[jr]) * (x - r)
                if jx != jr:
                    mean = 0.5 * (hx + hr)
                    d = _decider(ux, ur, j, True)
                    assert d is not None
                    phi = phi + (mean[jx] - mean[jr]) * A[d] * (x - r) / (ux[d] - ur[d])
                values[i] += w[j] * phi / len(background)
    return values


def test_top_k_routing_matches_the_rule_written_from_its_equations() -> None:
    torch.manual_seed(2)
    model = ordered(lambda u, h: h.gather(1, u.topk(3, dim=1).indices)).to(D).eval()
    background, X = torch.randn(6, 5, dtype=D), torch.randn(5, 5, dtype=D)
    values = _explain(model, background, X)[..., 0]
    np.testing.assert_allclose(values, _routing_reference(model, X, background, 3), rtol=1e-10, atol=1e-12)
    assert_additive(values[..., None], model, X, background, D)


SAME: list[tuple[str, Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = [
    ("topk(n) = sort descending", lambda u, h: u.topk(6, 1).values, lambda u, h: u.sort(1, descending=True).values),
    ("topk(3) = the first 3 sorted", lambda u, h: u.topk(3, 1).values, lambda u, h: u.sort(1, descending=True).values[:, :3]),
    ("largest sorted = max", lambda u, h: u.sort(1).values[:, -1:], lambda u, h: u.max(1, keepdim=True).values),
    ("topk(2)[0] = max", lambda u, h: u.topk(2, 1).values[:, :1], lambda u, h: u.amax(1, keepdim=True)),
    ("smallest top-k = min", lambda u, h: u.topk(4, 1, largest=False).values[:, :1], lambda u, h: u.min(1, keepdim=True).values),
    ("kthvalue(n) = max", lambda u, h: u.kthvalue(6, 1, keepdim=True).values, lambda u, h: u.max(1, keepdim=True).values),
    (
        "median = kthvalue",
        lambda u, h: u.median(1, keepdim=True).values,
        lambda u, h: torch.kthvalue(u, 3, 1, keepdim=True).values,
    ),
    ("kthvalue = ascending sort", lambda u, h: u.kthvalue(2, 1).values[:, None], lambda u, h: u.sort(1).values[:, 1:2]),
    (
        "descending sort = ascending sort reversed",
        lambda u, h: u.sort(1, descending=True).values,
        lambda u, h: u.sort(1).values.flip(1),
    ),
    (
        "kthvalue(3) = the 4th largest",
        lambda u, h: u.kthvalue(3, 1, keepdim=True).values,
        lambda u, h: u.topk(4, 1).values[:, -1:],
    ),
    ("top-4 smallest = ascending sort", lambda u, h: u.topk(4, 1, largest=False).values, lambda u, h: u.sort(1).values[:, :4]),
    (
        "argsort = sort's indices",
        lambda u, h: h.gather(1, u.argsort(1, descending=True)),
        lambda u, h: h.gather(1, u.sort(1, descending=True).indices),
    ),
    (
        "top-2 gather = indexing = one-hot",
        lambda u, h: h.gather(1, u.topk(2, 1).indices),
        lambda u, h: (F.one_hot(u.topk(2, 1).indices, 6).to(h.dtype) * h[:, None]).sum(2),
    ),
    # quantiles: two ranks of the sort, interpolated with fixed weights (rnnshap/rules/quantile.py)
    ("quantile(0) = min", lambda u, h: u.quantile(0.0, 1, keepdim=True), lambda u, h: u.min(1, keepdim=True).values),
    ("quantile(1) = max", lambda u, h: torch.quantile(u, 1.0, dim=1, keepdim=True), lambda u, h: u.amax(1, keepdim=True)),
    (
        "lower quantile(0.5) = median",
        lambda u, h: u.quantile(0.5, 1, keepdim=True, interpolation="lower"),
        lambda u, h: u.median(1, keepdim=True).values,
    ),
    (
        "quantile(0.3) = its two ranks of the sort, interpolated",
        lambda u, h: u.quantile(0.3, 1, keepdim=True),
        lambda u, h: torch.lerp(u.sort(1).values[:, 1:2], u.sort(1).values[:, 2:3], torch.tensor(0.5, dtype=u.dtype)),
    ),
    (
        "quantiles at once = one at a time",
        lambda u, h: torch.quantile(u, torch.tensor([0.1, 0.7, 0.9], dtype=u.dtype), dim=1).T,
        lambda u, h: torch.cat([u.quantile(q, 1, keepdim=True) for q in (0.1, 0.7, 0.9)], 1),
    ),
    ("nanquantile without NaN = quantile", lambda u, h: u.nanquantile(0.8, 1, True), lambda u, h: u.quantile(0.8, 1, True)),
    (
        "midpoint quantile = the mean of lower and higher",
        lambda u, h: u.quantile(0.3, 1, keepdim=True, interpolation="midpoint"),
        lambda u, h: (u.quantile(0.3, 1, keepdim=True, interpolation="lower") + u.kthvalue(3, 1, keepdim=True).values) / 2,
    ),
    (
        "median's index = kthvalue's",
        lambda u, h: h.gather(1, u.median(1, keepdim=True).indices),
        lambda u, h: h.gather(1, u.kthvalue(3, 1, keepdim=True).indices),
    ),
]


@pytest.mark.parametrize(("name", "one", "other"), SAME, ids=[s[0] for s in SAME])
def test_the_same_ordering_written_another_way_gets_the_same_values(
    name: str, one: Callable[..., Tensor], other: Callable[..., Tensor]
) -> None:
    torch.manual_seed(3)
    model, twin = ordered(one).to(D).eval(), ordered(other).to(D).eval()
    twin.load_state_dict(model.state_dict())
    background, X = torch.randn(6, 5, dtype=D), torch.randn(5, 5, dtype=D)
    values, expected = _explain(model, background, X), _explain(twin, background, X)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(values, expected, rtol=1e-11, atol=1e-13)
    assert_additive(values, model, X, background, D)


def _k_max_pooled(m: nn.Module, x: Tensor) -> Tensor:
    out, _ = m.lstm(x[..., :-1] * 1.0)  # the last feature is never read
    pooled = out.topk(m.k, dim=1).values.flatten(1)  # (B, k, H): the k largest steps of each unit
    top = m.router(pooled).topk(2, dim=1)
    weights = torch.softmax(top.values, dim=1)
    return (weights * m.experts(pooled).gather(1, top.indices)).sum(1, keepdim=True)


def k_max_pooled(features: int = 4, hidden: int = 6, k: int = 3, experts: int = 4) -> Composite:
    """LSTM over time, k-max pooling over the time steps of each hidden unit, top-2 expert routing."""
    return Composite(_k_max_pooled, k=k, lstm=nn.LSTM(features, hidden, batch_first=True),
                     router=nn.Linear(hidden * k, experts), experts=nn.Linear(hidden * k, experts))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_k_max_pooling_and_top_two_routing_after_an_lstm_are_exact(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    model = k_max_pooled().to(dtype).eval()
    background, X = torch.randn(5, 9, 5, dtype=dtype), torch.randn(4, 9, 5, dtype=dtype)
    values = _explain(model, background, X)
    assert np.all(values[:, :, -1] == 0)  # the unread feature
    assert_additive(values, model, X, background, dtype)


def test_ties_take_the_order_the_operation_itself_gives() -> None:
    """relu makes ties at 0 on both sides; the rule follows the operation's own order."""
    model = ordered(
        lambda u, h: h.gather(1, torch.relu(u).sort(dim=1, descending=True, stable=True).indices)
        + torch.relu(u).topk(3, 1).values.sum(1, keepdim=True)
    ).to(D).eval()
    with torch.no_grad():
        model.u.weight.copy_(torch.eye(6, 5, dtype=D))
        model.u.bias.zero_()
    background = torch.tensor([[1.0, 2.0, 3.0, -1.0, -2.0], [3.0, -1.0, 2.0, 0.0, 1.0]], dtype=D)
    X = torch.tensor([[-1.0, -2.0, -3.0, 1.0, 2.0], [2.0, -1.0, 0.5, -3.0, 0.0]], dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


def identity(how: Callable[[Tensor, Tensor], Tensor]) -> nn.Module:
    """``how(x, h)``: the explained input itself is ordered; ``h`` a fixed linear map of it."""
    return Composite(lambda m, x: m.how(x, m.h(x)).sum(1, keepdim=True), how=how, h=nn.Linear(5, 5))


@pytest.mark.parametrize(
    ("how", "X", "background"),
    [
        # topk orders tied zeros by the other values: index 2 of [1,0,0,0,0] is 4, of [2,0,0,0,-1] another
        (lambda x, h: h.gather(1, x.topk(5, 1).indices), [[1.0, 0, 0, 0, 0]], [[2.0, 0, 0, 0, -1]]),
        (lambda x, h: h.gather(1, torch.relu(x).topk(5, 1).indices), [[1.0, -1, 0, -2, 0]], [[2.0, 0, -3, 0, -1]]),
        # kthvalue's index among tied values is its own, not a stable sort's
        (lambda x, h: h.gather(1, x.kthvalue(2, 1, keepdim=True).indices), [[3.0, 0, 0, 0, -1]], [[0.0, 0, 0, 0, 0]]),
        (lambda x, h: h.gather(1, x.median(1, keepdim=True).indices), [[3.0, 0, 0, 0, -1]], [[0.0, 0, 0, 1, 0]]),
    ],
)
def test_indices_that_ties_move_without_any_value_moving_still_add_up(
    how: Callable[..., Tensor], X: list, background: list
) -> None:
    torch.manual_seed(9)
    model = identity(how).to(D).eval()
    x, b = torch.tensor(X, dtype=D), torch.tensor(background, dtype=D)
    assert_additive(_explain(model, b, x), model, x, b, D)


@pytest.mark.parametrize("seed", range(6))
def test_top_k_of_relu_ties_adds_up(seed: int) -> None:
    """(Found in review: relu makes many exact ties, which topk orders by the other values.)"""
    torch.manual_seed(seed)
    model = ordered(lambda u, h: h.gather(1, torch.relu(u).topk(5, 1).indices)).to(D).eval()
    background, X = torch.randn(4, 5, dtype=D), torch.randn(4, 5, dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


def routed(in_order: bool) -> nn.Module:
    """A router's picks, as a mixture of experts routes each token: the top 2 of 6 scores, softmax-weighted, each
    weighting the value ``h`` holds at its position, summed over the picks (the order of the picks does not matter)."""

    def route(m: nn.Module, x: Tensor) -> Tensor:
        top = m.u(x).topk(2, 1, sorted=in_order)
        return (torch.softmax(top.values, 1) * m.h(x).gather(1, top.indices)).sum(1, keepdim=True)

    return Composite(route, u=nn.Linear(5, 6), h=nn.Linear(5, 6))


@pytest.mark.parametrize("seed", range(3))
def test_an_unsorted_topk_the_output_does_not_read_the_order_of_gets_the_sorted_topks_values(seed: int) -> None:
    """``topk(k, sorted=False)`` returns its picks in an order torch does not specify: one of those orders is the
    ranks' own, which rnnshap takes (the picks paired by rank, as ``sorted=True``), once the model's own forward and one
    with the ranks reversed give the same outputs (the output does not read the order)."""
    torch.manual_seed(seed)
    unsorted = routed(False).to(D).eval()
    torch.manual_seed(seed)
    in_order = routed(True).to(D).eval()
    background, X = torch.randn(4, 5, dtype=D), torch.randn(3, 5, dtype=D)
    values = _explain(unsorted, background, X)
    assert_additive(values, unsorted, X, background, D)
    np.testing.assert_array_equal(values, _explain(in_order, background, X))


def _split_by_order(scores: Callable[[Tensor], Tensor], k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rows where torch's own order of ``topk(k, sorted=False)`` is the ranks' and rows where it is not."""
    pool = torch.randn(400, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        u = scores(pool)
        same = (u.topk(k, 1, sorted=False).indices == u.topk(k, 1).indices).all(1)
    assert same.any() and not same.all()  # (the premise: torch's CPU kernel returns both)
    return pool[same], pool[~same]


@pytest.mark.parametrize("read", ["middle", "weighted"])
def test_an_unsorted_topk_whose_order_is_read_only_where_explained_is_refused(read: str) -> None:
    """The order check runs on the explained samples too, in orders that reach every permutation of the picks (two
    swapped, all rotated): the middle pick of three stays in place where the order is only reversed, and the
    background may sit where every order gives the same outputs (scores that tie, or torch's order the ranks' there)."""
    torch.manual_seed(0)
    u = nn.Linear(5, 6).to(D)

    def forward(m: nn.Module, x: Tensor) -> Tensor:
        values = m.u(x).topk(3, 1, sorted=False).values
        return values[:, 1:2] if read == "middle" else 2.0 * values[:, :1] + values[:, 1:2]

    model = Composite(forward, u=u).eval()
    agree, differ = _split_by_order(u, 3, D)
    background = agree[:4] if read == "middle" else torch.zeros(2, 5, dtype=D)
    if read == "weighted":
        u.bias.data.zero_()  # (every score 0 on the background: every order gives its outputs)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)topk.*order torch does not specify.*sorted=True"):
        rnnshap.DeepExplainer(model, background).shap_values(differ[:3])


def test_an_unsorted_topk_in_a_model_that_rounds_to_16_bits_is_refused_with_advice_that_works() -> None:
    """At 16-bit precision the check cannot tell an order read from rounding: refused, advising float32 or
    sorted=True; the model explained in float32 (its 16-bit step left out) gets its values."""
    torch.manual_seed(0)

    def forward(m: nn.Module, x: Tensor) -> Tensor:
        u = m.u(x)
        rounded = u.to(torch.bfloat16).to(u.dtype) if m.rounds else u
        top = rounded.topk(2, 1, sorted=False)
        return (torch.softmax(top.values, 1) * u.gather(1, top.indices)).sum(1, keepdim=True)

    model = Composite(forward, u=nn.Linear(5, 6), rounds=True).eval()
    background, X = torch.randn(4, 5), torch.randn(3, 5)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)16-bit.*float32.*sorted=True"):
        rnnshap.DeepExplainer(model, background).shap_values(X)
    model.rounds = False
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)


@pytest.mark.parametrize(
    ("how", "named", "says"),
    [
        (lambda u, h: u.topk(2, 1, sorted=False).values, "topk", "sorted=True"),
        (lambda u, h: torch.msort(u), "msort", "depends on the input"),
        (lambda u, h: torch.topk(u, 2, 1, out=(u.new_empty(u.shape[0], 2), u.new_empty(u.shape[0], 2).long()))[0], "topk",
         "without out="),
        (lambda u, h: torch.max(u, 1, True, out=(u.new_empty(u.shape[0], 1), u.new_empty(u.shape[0], 1).long()))[0], "max",
         "without out="),
        (lambda u, h: F.embedding(u.argmax(1), h.detach().new_ones(6, 6) * 3.0, max_norm=1.0), "embedding", "max_norm"),
        (lambda u, h: u - u.median(), "median", "give it the dimension"),
    ],
)
def test_orderings_that_cannot_be_paired_by_rank_are_refused_by_name(how: Callable[..., Tensor], named: str, says: str) -> None:
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(ordered(how).eval(), torch.randn(4, 5))
    assert named in str(info.value) and says in str(info.value)


def test_a_quantile_over_the_whole_batch_or_of_missing_values_is_refused_by_name() -> None:
    """Without a dimension the quantile mixes the rows; with a NaN the ranks it interpolates depend on where the NaNs
    are (quantile gives NaN, nanquantile leaves them out): both refused by name, not attributed."""

    def _whole(x: Tensor) -> Tensor:
        return torch.quantile(x, 0.3).expand(x.shape[0], 1)

    def missing(x: Tensor) -> Tensor:
        return torch.nanquantile(x, 0.3, dim=1, keepdim=True)

    background = torch.randn(4, 5, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)torch\.quantile.*give it the dimension"):
        rnnshap.DeepExplainer(Function(_whole), background)
    X = torch.randn(2, 5, dtype=D)
    X[0, 1] = float("nan")
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"(?s)torch\.nanquantile.*NaN or infinite"):
        rnnshap.DeepExplainer(Function(missing), background).shap_values(X)
