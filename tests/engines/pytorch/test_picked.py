"""Indices picked by a max or min and used downstream: argmax routing, gathers, greedy decoding.

A picked index is a step function of the tensor it was picked from. Its use
``out = select(h, idx)`` (a gather, an indexing, an embedding lookup, a one-hot) is a product of
the selector and ``h``: the Shapley rule on that product gives ``h`` the multiplier
½(select at idx_x + select at idx_r) and leaves the selector the change
``select(h̄, idx_x) − select(h̄, idx_r)`` with h̄ = ½(h_x + h_r), which goes to the position that
decided the pick (the winner of the larger maximum, as shap's max-pool rule routes a maximum).

Every check compares with an independent reference: a float64 implementation of those equations
written here with numpy, the same function written with other index operations (gather, indexing,
take_along_dim, one-hot products, embedding lookups), the model's own outputs (additivity) and
features the model ignores (exactly 0).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap

from ...conftest import assert_additive
from ...models.torch import Composite

Tensor = torch.Tensor
D = torch.float64


def _explain(model: nn.Module, background: Tensor, X: Tensor) -> np.ndarray:
    return np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))


def pick(m: nn.Module, u: Tensor) -> Tensor:
    """The index of the largest (smallest) router logit, shape (B,)."""
    if m.how == "max-indices":
        return (u.max(1) if m.largest else u.min(1)).indices
    if m.how == "topk-1":
        return u.topk(1, dim=1, largest=m.largest).indices[:, 0]
    return u.argmax(1) if m.largest else u.argmin(1)


def route(m: nn.Module, x: Tensor) -> Tensor:
    u, h = m.router(x), m.experts(x)
    idx = pick(m, u)
    how = m.how
    if how in ("gather", "max-indices", "topk-1"):
        return h.gather(1, idx.unsqueeze(1))
    if how == "index":
        return h[torch.arange(h.shape[0]), idx].unsqueeze(1)
    if how == "take-along":
        return torch.take_along_dim(h, idx[:, None], dim=1)
    if how == "one-hot":
        return (F.one_hot(idx, h.shape[1]).to(h.dtype) * h).sum(1, keepdim=True)
    raise ValueError(how)


def routed(how: str = "gather", largest: bool = True, d: int = 5, n: int = 4) -> nn.Module:
    """Top-1 routing: the expert with the largest router logit gives the output (picked and used as ``how`` says)."""
    return Composite(route, how=how, largest=largest, router=nn.Linear(d, n), experts=nn.Linear(d, n),
                     table=nn.Parameter(torch.randn(n, 1)))  # fmt: skip


def _routed_reference(model: nn.Module, X: Tensor, background: Tensor) -> np.ndarray:
    """The rule's values for ``routed`` from its equations, float64 numpy: (n, d)."""
    A, a = model.router.weight.detach().numpy(), model.router.bias.detach().numpy()
    B, b = model.experts.weight.detach().numpy(), model.experts.bias.detach().numpy()
    pick = np.argmax if model.largest else np.argmin
    values = np.zeros(X.shape)
    for i, x in enumerate(X.numpy()):
        for r in background.numpy():
            ux, ur, hx, hr = A @ x + a, A @ r + a, B @ x + b, B @ r + b
            jx, jr = int(pick(ux)), int(pick(ur))
            delta = x - r
            phi = 0.5 * (B[jx] + B[jr]) * delta  # h's part: the mean of the two selections
            if jx != jr:
                mean = 0.5 * (hx + hr)
                credit = mean[jx] - mean[jr]  # the selector's part
                x_decides = ux[jx] >= ur[jr] if model.largest else ux[jx] <= ur[jr]
                d = jx if x_decides else jr
                phi = phi + credit * A[d] * delta / (ux[d] - ur[d])
            values[i] += phi / len(background)
    return values


@pytest.mark.parametrize("largest", [True, False])
def test_argmax_routing_matches_the_rule_written_from_its_equations(largest: bool) -> None:
    model = routed("gather", largest).to(D).eval()
    background, X = torch.randn(7, 5, dtype=D), torch.randn(6, 5, dtype=D)
    values = _explain(model, background, X)[..., 0]
    expected = _routed_reference(model, X, background)
    picks = model.router(torch.cat([X, background])).argmax(1) if largest else model.router(torch.cat([X, background])).argmin(1)
    assert len(set(picks.tolist())) > 1  # the routes differ between samples and references
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)
    assert_additive(values[..., None], model, X, background, D)


@pytest.mark.parametrize("how", ["max-indices", "topk-1", "index", "take-along", "one-hot"])
def test_the_same_routing_written_another_way_gets_the_same_values(how: str) -> None:
    reference_model = routed("gather").to(D).eval()
    model = routed(how).to(D).eval()
    model.load_state_dict(reference_model.state_dict())
    background, X = torch.randn(6, 5, dtype=D), torch.randn(5, 5, dtype=D)
    np.testing.assert_allclose(_explain(model, background, X), _explain(reference_model, background, X), rtol=1e-11, atol=1e-13)


def look_up(m: nn.Module, x: Tensor) -> Tensor:
    idx = m.score(x).argmax(-1)
    rows = {
        "embedding": lambda: F.embedding(idx, m.table),
        "index": lambda: m.table[idx],
        "one-hot": lambda: F.one_hot(idx, 6).to(x.dtype) @ m.table,
    }[m.how]()
    return m.head(torch.tanh(rows) + x[:, :3])


def lookup(how: str) -> nn.Module:
    """A picked index looks up a row of a fixed table, written three ways."""
    return Composite(look_up, how=how, score=nn.Linear(4, 6), table=nn.Parameter(torch.randn(6, 3)), head=nn.Linear(3, 1))


def test_a_table_lookup_by_a_picked_index_is_the_same_however_written() -> None:
    background, X = torch.randn(8, 4, dtype=D), torch.randn(5, 4, dtype=D)
    models = {how: lookup(how).to(D).eval() for how in ("embedding", "index", "one-hot")}
    for model in models.values():
        model.load_state_dict(models["embedding"].state_dict())
    values = {how: _explain(model, background, X) for how, model in models.items()}
    assert_additive(values["embedding"], models["embedding"], X, background, D)
    for how in ("index", "one-hot"):
        np.testing.assert_allclose(values[how], values["embedding"], rtol=1e-11, atol=1e-13)


def decode(m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The logits of every step, flattened, and the tokens fed back."""
    _, (h, c) = m.encoder(x[..., :2])  # the third feature is never read
    h, c = h[0], c[0]
    token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # start token
    outputs, tokens = [], []
    for _ in range(m.steps):
        h, c = m.cell(m.embedding(token), (h, c))
        logits = m.out(h)
        outputs.append(logits)
        token = logits.argmax(-1)
        tokens.append(token)
    return torch.stack(outputs, 1).flatten(1), torch.stack(tokens, 1)


def greedy(vocab: int = 6, hidden: int = 8, steps: int = 3) -> nn.Module:
    """An LSTM encoder and a greedy LSTMCell decoder that feeds back the embedding of its argmax token."""
    return Composite(lambda m, x: decode(m, x)[0], encoder=nn.LSTM(2, hidden, batch_first=True),
                     embedding=nn.Embedding(vocab, 4), cell=nn.LSTMCell(4, hidden), out=nn.Linear(hidden, vocab),
                     steps=steps)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_greedy_decoding_is_exact_and_ignores_an_unread_feature(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = greedy().to(dtype).eval()
    for name, parameter in model.named_parameters():  # weights large enough that the tokens vary
        nn.init.zeros_(parameter) if "bias" in name else nn.init.normal_(parameter, std=1.0)
    background, X = torch.randn(6, 5, 3, dtype=dtype), torch.randn(4, 5, 3, dtype=dtype)
    with torch.no_grad():
        tokens = decode(model, torch.cat([X, background]))[1]
    assert all(len(set(step.tolist())) > 1 for step in tokens.T)  # the fed-back tokens differ between rows
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, dtype)
    assert np.all(np.asarray(values)[:, :, 2] == 0)  # the feature the model ignores


def test_a_picked_index_used_as_a_number_is_attributed_as_a_step() -> None:
    model = Composite(lambda m, x: m.score(x).argmax(1, keepdim=True).to(x.dtype) * 0.5 + x[:, :1], score=nn.Linear(4, 5))

    model = model.to(D).eval()
    background, X = torch.randn(6, 4, dtype=D), torch.randn(5, 4, dtype=D)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, D)


def selecting(select: Callable[[Tensor], Any]) -> nn.Module:
    return Composite(lambda m, x: m.select(m.a(x)), select=select, a=nn.Linear(5, 4))


def test_a_step_of_a_picked_index_is_refused_by_name() -> None:
    """Orderings are exact (tests/rules/test_orderings.py); floor division of an index is a step of a step."""
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(selecting(lambda a: a.argmax(1, keepdim=True) // 2 * a).eval(), torch.randn(4, 5))
    assert "__floordiv__" in str(info.value)


# -- found in review: ties, casts, the forms that are refused --------------------------------------------------
def test_a_tie_takes_the_index_the_operation_itself_picks() -> None:
    """topk breaks a tie as it does (not as torch.max would): the pass computes the model's function."""

    def top_route(m: nn.Module, x: Tensor) -> Tensor:
        u = torch.relu(m.router(x))  # rows where every logit is <= 0 tie at 0
        return m.experts(x).gather(1, u.topk(1, dim=1).indices)

    model = Composite(top_route, router=nn.Linear(3, 4), experts=nn.Linear(3, 4)).to(D).eval()
    with torch.no_grad():
        model.router.weight.copy_(torch.eye(4, 3, dtype=D))
        model.router.bias.zero_()
    background = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]], dtype=D)
    X = torch.tensor([[-1.0, -2.0, -3.0], [2.0, -1.0, 0.5]], dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


def cast(m: nn.Module, x: Tensor) -> Tensor:
    u, h = m.score(x), m.h(x)
    idx = u.argmax(1)
    if m.how == "one-hot-float":
        return (F.one_hot(idx, 5).to(x.dtype) * h).sum(1, keepdim=True)
    if m.how == "index-float":
        return idx.unsqueeze(1).to(x.dtype) * x[:, :1]
    if m.how == "long":
        return h.gather(1, idx.long().unsqueeze(1))
    if m.how == "no-grad":
        with torch.no_grad():
            idx = u.argmax(1)
        return h.gather(1, idx.unsqueeze(1))
    raise ValueError(m.how)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", ["one-hot-float", "index-float", "long", "no-grad"])
def test_casts_of_picked_indices_and_a_pick_under_no_grad_stay_exact(how: str, dtype: torch.dtype) -> None:
    model = Composite(cast, how=how, score=nn.Linear(4, 5), h=nn.Linear(4, 5)).to(dtype).eval()
    background, X = torch.randn(6, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, dtype)


@pytest.mark.parametrize(
    "use",
    [
        lambda h, u: h[..., u.argmax(1)],  # an Ellipsis before the index
        lambda h, u: h[:, u.argmax(1)],  # mixes the rows: h[:, idx] is (B, B)
        lambda h, u: torch.zeros_like(h).scatter(1, u.argmax(1, keepdim=True), h) * h,  # input-dependent values written
        # picked by picked
        lambda h, u: h.gather(1, u.argmax(1, keepdim=True).expand(-1, 5).gather(1, u.argmin(1, keepdim=True))),
        lambda h, u: h * u.argmax(),  # over the whole batch
        lambda h, u: h[:, u.argmax(1).tolist()[0]],  # Python values
    ],
)
def test_unattributed_uses_of_picked_indices_are_refused_by_name(use: Callable[[Tensor, Tensor], Tensor]) -> None:
    use_model = Composite(lambda m, x: use(m.h(x), m.score(x)).reshape(x.shape[0], -1)[:, :1],
                          score=nn.Linear(4, 5), h=nn.Linear(4, 5))  # fmt: skip

    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(use_model.to(D).eval(), torch.randn(6, 4, dtype=D))
    assert "argmax" in str(info.value) or "picked" in str(info.value)


@pytest.mark.parametrize("compile", [False, "capture"])
def test_picked_indices_cast_to_a_narrower_integer_type_are_refused_by_name(compile: object) -> None:
    """``argmax(...).to(torch.int8)`` of 300 positions wraps (150 becomes -106): the cast's values are not the picks',
    so its handle does not go with it, and a selection by it is refused by name; a cast to 32 or 64 bits keeps it."""
    torch.manual_seed(0)
    model = Composite(lambda m, x: m.table[m.a(x).argmax(1).to(m.dtype).long()], a=nn.Linear(4, 300),
                      table=nn.Parameter(torch.randn(300, 3)), dtype=torch.int8)  # fmt: skip
    background, X = torch.randn(8, 4), torch.randn(5, 4)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="picked"):
        rnnshap.DeepExplainer(model.eval(), background, compile=compile).shap_values(X)
    model.dtype = torch.int32
    values = rnnshap.DeepExplainer(model, background, compile=compile).shap_values(X)
    with torch.no_grad():
        moved = (model(X) - model(background).mean(0)).numpy()
    np.testing.assert_allclose(np.asarray(values).sum(1), moved, rtol=0, atol=1e-5)
