"""A forward that draws random numbers is refused only where the draws were seen to matter.

tsai's InceptionTimePlus decides stochastic depth by ``keep_prob[i] > random.random() or not self.training``: in
eval mode the draw is made and never reaches the output. The check runs the forward again from other random
states (torch's, numpy's and Python's generators seeded) and refuses only when the outputs differ, or when the
pass followed a torch draw's values into the output; the refusal says which.

The truth of an explained model is a twin with the same weights whose forward draws nothing (its values must be
the same) and the model's own outputs (additivity).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...conftest import assert_additive, assert_rounding_close
from ...models.torch import Composite

Tensor = torch.Tensor
D = torch.float64


def runs(m: nn.Module) -> bool:
    if m.source == "python":
        return m.keep > random.random() or not m.training
    if m.source == "numpy":
        return m.keep > np.random.rand() or not m.training
    if m.source == "torch":
        return bool(torch.rand(()) < m.keep) or not m.training
    return True


def residual_blocks(m: nn.Module, x: Tensor) -> Tensor:
    for block in m.blocks:
        if runs(m):
            x = x + block(x)
    return m.head(x)


def stochastic_depth(source: str, keep: float = 0.5) -> nn.Module:
    """Residual blocks each run with probability ``keep`` in training mode, always in eval mode, as tsai's
    InceptionBlockPlus decides it: the draw comes first, so it is made in eval mode too. ``source`` picks the
    generator drawn from; ``"none"`` is the twin that draws nothing."""
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(3))
    return Composite(residual_blocks, source=source, keep=keep, blocks=blocks, head=nn.Linear(4, 2))


def _twins(source: str) -> tuple[nn.Module, nn.Module]:
    model = stochastic_depth(source).to(D).eval()
    twin = stochastic_depth("none").to(D).eval()
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("source", ["python", "numpy", "torch"])
def test_a_draw_that_never_reaches_the_output_in_eval_mode_is_explained_exactly(source: str) -> None:
    model, twin = _twins(source)
    background, X = torch.randn(6, 4, dtype=D), torch.randn(3, 4, dtype=D)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)  # against the model's own outputs
    expected = rnnshap.DeepExplainer(twin, background).shap_values(X)  # the same function, drawing nothing
    assert_rounding_close(values, expected, D, what="values against the twin without draws")


def test_a_model_in_training_mode_whose_draws_matter_there_is_explained_in_eval_mode() -> None:
    model, twin = _twins("python")
    model.train()
    background, X = torch.randn(6, 4, dtype=D), torch.randn(3, 4, dtype=D)
    with pytest.warns(UserWarning, match="training mode"):
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert model.training  # (left as given)
    expected = rnnshap.DeepExplainer(twin, background).shap_values(X)
    assert_rounding_close(values, expected, D, what="values against the twin without draws")


def doubled_by_a_draw(m: nn.Module, x: Tensor) -> Tensor:
    out = m.linear(x)
    if m.source == "noise":
        return out + 1e-3 * torch.randn_like(out)
    if m.source == "python":
        doubled = random.random() < 0.5
    elif m.source == "numpy":
        doubled = bool(np.random.rand() < 0.5)
    else:
        doubled = bool(torch.rand(()) < 0.5)
    return 2 * out if doubled else out


def draw_decides(source: str) -> nn.Module:
    """The output doubled when a draw says so: from Python's ``random``, numpy's, or torch's ``rand`` read into a
    Python bool; or noise from ``torch.randn`` added (a draw the pass follows into the output)."""
    return Composite(doubled_by_a_draw, source=source, linear=nn.Linear(4, 2))


@pytest.mark.parametrize("source", ["python", "numpy", "torch"])
def test_a_draw_that_changes_the_output_is_refused_saying_what_was_compared(source: str) -> None:
    model = draw_decides(source).to(D).eval()
    background = torch.randn(5, 4, dtype=D)
    python, numpy_state, torch_state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    with pytest.raises(rnnshap.ModelStateError, match="draws random numbers") as refused:
        rnnshap.DeepExplainer(model, background)
    message = str(refused.value)
    assert {"python": "Python's random", "numpy": "numpy", "torch": "torch.rand"}[source] in message
    # what was compared: the model on the background's 5 rows, from another random state, and how far apart
    assert "the model on the 5 background rows" in message, message
    assert "seeded" in message and "differ by up to" in message, message
    # the random states are put back
    assert random.getstate() == python and np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_noise_added_to_the_output_is_refused_as_followed_and_compared() -> None:
    model = draw_decides("noise").to(D).eval()
    with pytest.raises(rnnshap.ModelStateError, match="draws random numbers") as refused:
        rnnshap.DeepExplainer(model, torch.randn(5, 4, dtype=D))
    message = str(refused.value)
    assert "torch.randn_like" in message and "flow into its output" in message, message
    assert "they matter" in message and "differ by up to" in message, message  # (compared: it says how)


def prob_sparse(m: nn.Module, x: Tensor) -> Tensor:
    q, k, v = m.q(x[..., None]), m.k(x[..., None]), m.v(x[..., None])
    if m.keep is None:
        return (torch.softmax(q @ k.transpose(1, 2), -1) @ v).sum(-1)
    scores = x * x[:, torch.randint(0, x.shape[1], (1,))]  # by one sampled key: its sign decides the order
    top = scores.topk(m.keep, -1, sorted=False).indices
    rows = torch.arange(x.shape[0])[:, None]
    out = v.mean(1, keepdim=True).expand_as(v).clone()
    out[rows, top] = torch.softmax(q[rows, top] @ k.transpose(1, 2), -1) @ v
    return out.sum(-1)


def sampled_keys(keep: int | None) -> nn.Module:
    """A ProbSparse attention's selection (Informer): a key sampled with torch.randint scores the queries, and the top
    ``keep`` queries attend while the others take the mean of the values. Keeping every query (``keep`` the row's
    length), ``topk(sorted=False)`` returns every position, the scores only deciding an order torch does not specify,
    and the same indices write back what they gathered: the draws cannot change the output. ``keep=None`` is the twin
    that draws nothing: every query attends, in order."""
    return Composite(prob_sparse, keep=keep, q=nn.Linear(1, 3), k=nn.Linear(1, 3), v=nn.Linear(1, 3))


def test_a_topk_of_every_position_keeps_the_draws_from_the_output_and_is_explained_exactly() -> None:
    """Keeping every query: rnnshap takes the topk's positions in their own order (an order torch may return), so its
    indices are a constant and the sampled key reaches nothing; the values add up to the model's own outputs and equal
    those of the twin that draws nothing (every query attending in order)."""
    model, twin = sampled_keys(keep=6).to(D).eval(), sampled_keys(keep=None).to(D).eval()
    twin.load_state_dict(model.state_dict())
    background, X = torch.randn(5, 6, dtype=D), torch.randn(3, 6, dtype=D)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    expected = rnnshap.DeepExplainer(twin, background).shap_values(X)
    assert_rounding_close(values, expected, D, what="values against the twin without draws")


def draw_cancels() -> nn.Module:
    """Noise drawn with torch.randn_like added times zero: followed into the output, never changing it."""
    return Composite(lambda m, x: (out := m.linear(x)) + 0.0 * torch.randn_like(out), linear=nn.Linear(4, 2))


def test_draws_followed_into_the_output_that_do_not_change_it_are_not_said_to_matter() -> None:
    """The refusal says what it checked: the draws were followed into the output, and the outputs were the same under
    every seed (the draws cancelled) or differed (keeping some queries)."""
    background = torch.randn(5, 6, dtype=D)
    with pytest.raises(rnnshap.ModelStateError, match="draws random numbers") as every:
        rnnshap.DeepExplainer(draw_cancels().to(D).eval(), background[:, :4])
    message = str(every.value)
    assert "torch.randn_like" in message and "flow into its output" in message and "gave the same outputs" in message, message
    assert "they matter" not in message and "differ by up to" not in message, message
    with pytest.raises(rnnshap.ModelStateError, match="they matter") as some:
        rnnshap.DeepExplainer(sampled_keys(keep=2).to(D).eval(), background)
    assert "flow into its output" in str(some.value) and "differ by up to" in str(some.value)


def rare_branch(m: nn.Module, x: Tensor) -> Tensor:
    """A draw that changes the output with probability 1/4 per call: judged from more than two states."""
    out = m.linear(x)
    return 2 * out if random.random() < 0.25 else out


def test_a_draw_that_changes_the_output_one_call_in_four_is_refused() -> None:
    model = Composite(rare_branch, linear=nn.Linear(4, 2)).to(D).eval()
    background = torch.randn(5, 4, dtype=D)
    for seed in range(20):  # from whichever state the call starts in
        random.seed(seed)
        with pytest.raises(rnnshap.ModelStateError, match="differ by up to"):
            rnnshap.DeepExplainer(model, background)


def reads_at_a_draw(m: nn.Module, x: Tensor) -> Tensor:
    """``x[:, drawn]`` read and left unused: a draw that indexes a tensor does not flow into that tensor (an indexing
    ``__getitem__`` was once followed as if it wrote into ``x``, as an in-place method named with a trailing ``_`` does)."""
    m.seen = x[:, torch.randint(0, x.shape[1], (2,))]  # (kept for logging, say; never in the output)
    return m.linear(x)


def test_a_tensor_indexed_by_a_draw_does_not_carry_the_draw() -> None:
    model = Composite(reads_at_a_draw, linear=nn.Linear(4, 2)).to(D).eval()
    background, X = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    weight = model.linear.weight.detach().numpy()  # the closed form of a linear model: W (x - E r)
    expected = np.einsum("oi,ni->nio", weight, (X - background.mean(0)).numpy())
    assert_rounding_close(values, expected, D, what="values against W (x - E r)")


def first_of_unsorted() -> nn.Module:
    """``topk(n, sorted=False).values[:, :2]``: every position, but the output reads the first two of an order torch
    does not specify (torch's CPU kernel returns them partly ordered by value); not a function rnnshap can take in the
    positions' own order."""
    return Composite(lambda m, x: m.linear(x).topk(5, -1, sorted=False).values[:, :2], linear=nn.Linear(5, 5))


def test_a_topk_of_every_position_whose_order_reaches_the_output_is_refused() -> None:
    torch.manual_seed(0)
    model = first_of_unsorted().to(D).eval()
    background = torch.randn(6, 5, dtype=D)
    with torch.no_grad():
        own = model(background)
        in_order = model.linear(background)[:, :2]
    assert not torch.equal(own, in_order)  # (the premise: torch's order is not the positions' own here)
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"topk.*order torch does not specify") as refused:
        rnnshap.DeepExplainer(model, background)
    assert "sorted=True" in str(refused.value), str(refused.value)
