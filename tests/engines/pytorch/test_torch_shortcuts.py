"""The PyTorch rules' shortcuts give the bits of the long way: the torch namespace's decisions on large boolean masks
(read as bytes) answer what ``all()`` / ``any()`` answer, and the midpoint derivative of gelu and silu taken as one
backward kernel is autograd's, bit for bit, also through the Rescale rule and the whole explainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap
from rnnshap.formulas.torch_ops import TORCH, surely_all, surely_none
from rnnshap.rules import elementwise

from ...models.torch import Composite


def _masks() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = []
    for n in (0, 1, 17, 4095, 4096, 5000, 98304):
        dense = torch.rand(n, generator=g) < 0.5
        one_true = torch.zeros(n, dtype=torch.bool)
        one_false = torch.ones(n, dtype=torch.bool)
        if n:
            one_true[n // 2] = True
            one_false[-1] = False
        masks += [dense, one_true, one_false, torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
    grid = torch.rand(64, 8, 192, generator=g) < 0.999
    masks += [grid, grid[:, :, ::2], grid.transpose(0, 2), grid[:, :1].expand(64, 8, 192)]
    masks += [torch.tensor(True), torch.tensor(False)]
    return masks



def _nan_to_num(inner: nn.Module) -> nn.Module:
    """``inner`` on the input with its NaN replaced (the mask read as a constant of the explained function)."""
    return Composite(lambda m, x: m.inner(torch.nan_to_num(x)), inner=inner)

def test_decisions_on_masks_answer_what_all_and_any_answer() -> None:
    for mask in _masks():
        assert surely_all(mask) is bool(mask.all()), (mask.shape, mask.stride())
        assert surely_none(mask) is (not bool(mask.any())), (mask.shape, mask.stride())
        assert TORCH.surely_all(mask) is bool(mask.all())
        assert TORCH.surely_none(mask) is (not bool(mask.any()))


def _autograd_derivative(f: object, at: torch.Tensor) -> torch.Tensor:
    point = at.detach().clone().requires_grad_(True)
    value = f(point)  # type: ignore[operator]
    (grad,) = torch.autograd.grad(value, point, torch.ones_like(value))
    return grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "f", [F.gelu, lambda t: F.gelu(t, approximate="tanh"), F.silu], ids=["gelu", "tanh", "silu"]
)
def test_direct_derivative_is_autogrades_bit_for_bit(f: object, dtype: torch.dtype) -> None:
    """The one-kernel derivative equals autograd's on the same point, over a range where gelu's two forms and silu
    differ from each other (so a wrong kernel or a dropped ``approximate`` fails)."""
    g = torch.Generator().manual_seed(1)
    at = torch.randn(64, 8, 193, generator=g, dtype=dtype) * 4
    calls = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in (F.gelu, F.silu):
                calls.append((func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Spy():
        f(at)  # type: ignore[operator]
    func, args, kwargs = calls[0]
    leaves = [*args, *kwargs.values()]
    call = rnnshap.rules.OpCall(func, "op", leaves, leaves, None, (0,), None, (len(args), tuple(kwargs)))  # type: ignore[arg-type]
    derivative = elementwise.direct_derivative(call)
    assert derivative is not None
    direct = derivative(at)
    assert torch.equal(direct, _autograd_derivative(f, at))
    other = F.silu if func is F.gelu else F.gelu
    assert not torch.equal(direct, _autograd_derivative(other, at))


@pytest.mark.parametrize("activation", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU()], ids=["gelu", "tanh", "silu"])
def test_explainer_values_are_those_of_the_autograd_derivative(activation: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributions through gelu / silu with many |Δ| below the Rescale threshold (the midpoint derivative taken):
    the same bits with the one-kernel derivative as with autograd's (the table emptied); the model unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), activation, nn.Linear(64, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    background = torch.randn(8, 6)
    X = background[:4] + 1e-3 * torch.randn(4, 6)  # pre-activations within ~1e-3 of the references': the derivative
    X[0] = torch.randn(6)  # and a sample far from every reference: the quotient
    fast = rnnshap.DeepExplainer(model, background).shap_values(X)
    monkeypatch.setattr(elementwise, "_DIRECT_DERIVATIVES", {})
    slow = rnnshap.DeepExplainer(model, background).shap_values(X)
    for a, b in zip(fast, slow, strict=True):
        assert (a == b).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class _Counted(nn.Module):
    """A row-wise model that counts its forwards; with ``drift``, its output changes from call to call."""

    def __init__(self, drift: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.drift = drift
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * (1 + self.drift * self.calls)


def _probed(model: nn.Module, background: torch.Tensor) -> torch.Tensor:
    """The model's outputs on the background (what the check takes from the probe), without counting the call."""
    with torch.no_grad():
        outputs = model(background)
    model.calls = 0
    return outputs


def test_rows_check_runs_one_forwards_worth_of_rows_where_the_rows_pass() -> None:
    """The check that rows are computed alone: where they are, the reversed rows in two halves, compared with the
    probe's outputs (each order and the halves apart, and the repeats that tell a forward changing from call to call,
    run only where they differ)."""
    torch.manual_seed(0)
    model, background = _Counted().eval(), torch.randn(8, 4)
    engine = rnnshap.DeepExplainer(model, background).engine
    engine.checks.rows_independent(torch.finfo(torch.float32).eps, _probed(model, background))  # type: ignore[attr-defined]
    assert model.calls == 2


def test_a_forward_that_changes_from_call_to_call_is_not_refused_as_mixing_rows() -> None:
    """Its reversed outputs are not the outputs reversed (each call scales them anew), but each order run again
    does not give its outputs again either: not judged (no refusal), and the halves apart are not run."""
    torch.manual_seed(0)
    model, background = _Counted(drift=1e-2).eval(), torch.randn(8, 4)
    engine = rnnshap.DeepExplainer(model, background).engine
    engine.checks.rows_independent(torch.finfo(torch.float32).eps, _probed(model, background))  # type: ignore[attr-defined]
    assert model.calls == 6  # the reversed halves, each order, then each again


def _attend(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 7, 5)
    scores = m.q(x) @ m.k(x).transpose(1, 2) * 3.0
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    if m.dead:
        mask[2] = False
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1, dtype=m.dtype)
    weights = torch.nan_to_num(weights) if m.dead else weights
    return (weights.to(x.dtype) @ m.v(x)).flatten(1)[:, :6]


def _attention(dead: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """Scores, a mask of -inf entries (some rows masked throughout when ``dead``), softmax (in ``dtype``), values:
    enough heads and keys that the softmax's chain has work in every branch."""
    return Composite(_attend, q=nn.Linear(5, 16), k=nn.Linear(5, 16), v=nn.Linear(5, 16), dead=dead, dtype=dtype)


@pytest.mark.parametrize("case", ["plain", "dead_rows", "float64_softmax", "nan_masked"])
def test_softmax_as_one_node_gives_the_chains_bits(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Softmax's decomposition run as one autograd node: the attributions (several outputs: the batched backward)
    are the chain's bit for bit, with masked entries, rows masked throughout (the chain handles them), a softmax
    computed in float64, and missing values the model masks (each multiplier stops 0 · NaN)."""
    from rnnshap.rules import structured

    torch.manual_seed(0)
    model: nn.Module = _attention(dead=case == "dead_rows", dtype=torch.float64 if case == "float64_softmax" else None).eval()
    background, X = torch.randn(6, 7, 5), torch.randn(3, 7, 5) * 2
    if case == "nan_masked":
        model = _nan_to_num(model).eval()
        X[:, 1, 2] = background[:, 1, 2] = float("nan")
    fused_calls: list[bool] = []
    fused = structured._fused_softmax

    def counted(*args: object) -> object:
        out = fused(*args)  # type: ignore[arg-type]
        fused_calls.append(out is not None)
        return out

    monkeypatch.setattr(structured, "_fused_softmax", counted)
    one_node = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert fused_calls and all(fused_calls) is (case != "dead_rows")
    monkeypatch.setattr(structured, "_fused_softmax", lambda *args: None)
    chain = rnnshap.DeepExplainer(model, background).shap_values(X)
    for a, b in zip(one_node, chain, strict=True):
        np.testing.assert_array_equal(a, b)


def _residual_norms(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(m.inp(x))
    h = h + m.ln(h)
    h = h * 0.5 + m.ln_plain(h)
    h = h + m.rms(h)
    h = h + m.gn(h)
    return m.out(h)


def _norms() -> nn.Module:
    """layer_norm (with and without its affine part), rms_norm and group_norm, each after a residual use of its
    input (a second consumer of the norm's input: the order autograd accumulates in matters)."""
    return Composite(_residual_norms, inp=nn.Linear(6, 16), ln=nn.LayerNorm(16),
                     ln_plain=nn.LayerNorm(16, elementwise_affine=False), rms=nn.RMSNorm(16, eps=1e-6), gn=nn.GroupNorm(4, 16),
                     out=nn.Linear(16, 5))  # fmt: skip


@pytest.mark.parametrize("case", ["plain", "nan_masked"])
def test_norms_as_one_node_give_the_chains_bits(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """standardize's chain (c ⊙ c, mean, rsqrt secant, the scale-weighted product) as one autograd node: the
    attributions of layer / RMS / group norms (several outputs: the batched backward) are the chain's bit for bit,
    also where the pass meets missing values the model masks."""
    from rnnshap.rules import structured

    torch.manual_seed(0)
    model = _norms().eval()
    with torch.no_grad():
        for norm in (model.ln, model.rms, model.gn):
            norm.weight.normal_()
    background, X = torch.randn(6, 6), torch.randn(3, 6) * 2
    if case == "nan_masked":
        model = _nan_to_num(model).eval()
        X[:, 2] = background[:, 2] = float("nan")
    one_node = rnnshap.DeepExplainer(model, background).shap_values(X)
    def chain_of(x: torch.Tensor, r: torch.Tensor, dims: tuple[int, ...], eps: float, reference: bool) -> object:
        return structured._standardized_chain(x, r, dims, eps, True, reference)

    monkeypatch.setattr(structured, "_standardized", chain_of)
    chain = rnnshap.DeepExplainer(model, background).shap_values(X)
    np.testing.assert_array_equal(one_node, chain)


def _sdpa(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 7, 5)
    """scaled_dot_product_attention with a boolean mask (rows masked throughout with ``m.dead``)."""
    q, k, v = m.qkv(x).reshape(x.shape[0], 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    if m.dead:
        mask[3] = False
    out = F.scaled_dot_product_attention(q * 2, k, v, attn_mask=mask)
    return out.nan_to_num().flatten(1)[:, :6]


@pytest.mark.parametrize("dead", [False, True], ids=["plain", "dead_rows"])
def test_attention_softmax_as_one_node_gives_the_chains_bits(dead: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attention rule's softmax (scaled_dot_product_attention) as one node: the chain's attributions bit for bit."""
    from rnnshap.rules import attention

    torch.manual_seed(0)
    model = Composite(_sdpa, qkv=nn.Linear(5, 48), dead=dead).eval()
    background, X = torch.randn(6, 7, 5), torch.randn(3, 7, 5) * 2
    fused = attention.fused_softmax
    answers: list[bool] = []

    def counted(*args: object, **kwargs: object) -> object:
        out = fused(*args, **kwargs)  # type: ignore[arg-type]
        answers.append(out is not None)
        return out

    monkeypatch.setattr(attention, "fused_softmax", counted)
    one_node = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert answers and all(answers) is not dead
    monkeypatch.setattr(attention, "fused_softmax", lambda *args, **kwargs: None)
    chain = rnnshap.DeepExplainer(model, background).shap_values(X)
    np.testing.assert_array_equal(one_node, chain)
