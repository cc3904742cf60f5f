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


class Routed(nn.Module):
    """Top-1 routing: the expert with the largest router logit gives the output."""

    def __init__(self, how: str = "gather", largest: bool = True, d: int = 5, n: int = 4) -> None:
        super().__init__()
        self.how, self.largest = how, largest
        self.router, self.experts = nn.Linear(d, n), nn.Linear(d, n)
        self.table = nn.Parameter(torch.randn(n, 1))

    def pick(self, u: Tensor) -> Tensor:
        """The index of the largest (smallest) router logit, shape (B,)."""
        if self.how == "max-indices":
            return (u.max(1) if self.largest else u.min(1)).indices
        if self.how == "topk-1":
            return u.topk(1, dim=1, largest=self.largest).indices[:, 0]
        return u.argmax(1) if self.largest else u.argmin(1)

    def forward(self, x: Tensor) -> Tensor:
        u, h = self.router(x), self.experts(x)
        idx = self.pick(u)
        how = self.how
        if how in ("gather", "max-indices", "topk-1"):
            return h.gather(1, idx.unsqueeze(1))
        if how == "index":
            return h[torch.arange(h.shape[0]), idx].unsqueeze(1)
        if how == "take-along":
            return torch.take_along_dim(h, idx[:, None], dim=1)
        if how == "one-hot":
            return (F.one_hot(idx, h.shape[1]).to(h.dtype) * h).sum(1, keepdim=True)
        raise ValueError(how)


def _routed_reference(model: Routed, X: Tensor, background: Tensor) -> np.ndarray:
    """The rule's values for ``Routed`` from its equations, float64 numpy: (n, d)."""
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
    model = Routed("gather", largest).to(D).eval()
    background, X = torch.randn(7, 5, dtype=D), torch.randn(6, 5, dtype=D)
    values = _explain(model, background, X)[..., 0]
    expected = _routed_reference(model, X, background)
    picks = model.router(torch.cat([X, background])).argmax(1) if largest else model.router(torch.cat([X, background])).argmin(1)
    assert len(set(picks.tolist())) > 1  # the routes differ between samples and references
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)
    assert_additive(values[..., None], model, X, background, D)


@pytest.mark.parametrize("how", ["max-indices", "topk-1", "index", "take-along", "one-hot"])
def test_the_same_routing_written_another_way_gets_the_same_values(how: str) -> None:
    reference_model = Routed("gather").to(D).eval()
    model = Routed(how).to(D).eval()
    model.load_state_dict(reference_model.state_dict())
    background, X = torch.randn(6, 5, dtype=D), torch.randn(5, 5, dtype=D)
    np.testing.assert_allclose(_explain(model, background, X), _explain(reference_model, background, X), rtol=1e-11, atol=1e-13)


class Lookup(nn.Module):
    """A picked index looks up a row of a fixed table, written three ways."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.score, self.table, self.head = nn.Linear(4, 6), nn.Parameter(torch.randn(6, 3)), nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        idx = self.score(x).argmax(-1)
        rows = {
            "embedding": lambda: F.embedding(idx, self.table),
            "index": lambda: self.table[idx],
            "one-hot": lambda: F.one_hot(idx, 6).to(x.dtype) @ self.table,
        }[self.how]()
        return self.head(torch.tanh(rows) + x[:, :3])


def test_a_table_lookup_by_a_picked_index_is_the_same_however_written() -> None:
    background, X = torch.randn(8, 4, dtype=D), torch.randn(5, 4, dtype=D)
    models = {how: Lookup(how).to(D).eval() for how in ("embedding", "index", "one-hot")}
    for model in models.values():
        model.load_state_dict(models["embedding"].state_dict())
    values = {how: _explain(model, background, X) for how, model in models.items()}
    assert_additive(values["embedding"], models["embedding"], X, background, D)
    for how in ("index", "one-hot"):
        np.testing.assert_allclose(values[how], values["embedding"], rtol=1e-11, atol=1e-13)


class Greedy(nn.Module):
    """An LSTM encoder and a greedy LSTMCell decoder that feeds back the embedding of its argmax token."""

    def __init__(self, vocab: int = 6, hidden: int = 8, steps: int = 3) -> None:
        super().__init__()
        self.encoder = nn.LSTM(2, hidden, batch_first=True)
        self.embedding = nn.Embedding(vocab, 4)
        self.cell = nn.LSTMCell(4, hidden)
        self.out = nn.Linear(hidden, vocab)
        self.steps = steps

    def decode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The logits of every step, flattened, and the tokens fed back."""
        _, (h, c) = self.encoder(x[..., :2])  # the third feature is never read
        h, c = h[0], c[0]
        token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # start token
        outputs, tokens = [], []
        for _ in range(self.steps):
            h, c = self.cell(self.embedding(token), (h, c))
            logits = self.out(h)
            outputs.append(logits)
            token = logits.argmax(-1)
            tokens.append(token)
        return torch.stack(outputs, 1).flatten(1), torch.stack(tokens, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(x)[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_greedy_decoding_is_exact_and_ignores_an_unread_feature(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = Greedy().to(dtype).eval()
    for name, parameter in model.named_parameters():  # weights large enough that the tokens vary
        nn.init.zeros_(parameter) if "bias" in name else nn.init.normal_(parameter, std=1.0)
    background, X = torch.randn(6, 5, 3, dtype=dtype), torch.randn(4, 5, 3, dtype=dtype)
    with torch.no_grad():
        tokens = model.decode(torch.cat([X, background]))[1]
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

    class TopRoute(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.router, self.experts = nn.Linear(3, 4), nn.Linear(3, 4)

        def forward(self, x: Tensor) -> Tensor:
            u = torch.relu(self.router(x))  # rows where every logit is <= 0 tie at 0
            return self.experts(x).gather(1, u.topk(1, dim=1).indices)

    model = TopRoute().to(D).eval()
    with torch.no_grad():
        model.router.weight.copy_(torch.eye(4, 3, dtype=D))
        model.router.bias.zero_()
    background = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]], dtype=D)
    X = torch.tensor([[-1.0, -2.0, -3.0], [2.0, -1.0, 0.5]], dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


class Cast(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.score, self.h = how, nn.Linear(4, 5), nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        u, h = self.score(x), self.h(x)
        idx = u.argmax(1)
        if self.how == "one-hot-float":
            return (F.one_hot(idx, 5).to(x.dtype) * h).sum(1, keepdim=True)
        if self.how == "index-float":
            return idx.unsqueeze(1).to(x.dtype) * x[:, :1]
        if self.how == "long":
            return h.gather(1, idx.long().unsqueeze(1))
        if self.how == "no-grad":
            with torch.no_grad():
                idx = u.argmax(1)
            return h.gather(1, idx.unsqueeze(1))
        raise ValueError(self.how)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", ["one-hot-float", "index-float", "long", "no-grad"])
def test_casts_of_picked_indices_and_a_pick_under_no_grad_stay_exact(how: str, dtype: torch.dtype) -> None:
    model = Cast(how).to(dtype).eval()
    background, X = torch.randn(6, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, dtype)


@pytest.mark.parametrize(
    "use",
    [
        lambda h, u: h[..., u.argmax(1)],  # an Ellipsis before the index
        lambda h, u: h[:, u.argmax(1)],  # mixes the rows: h[:, idx] is (B, B)
        lambda h, u: torch.zeros_like(h).scatter(1, u.argmax(1, keepdim=True), 1.0) * h,
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
