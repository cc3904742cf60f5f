"""Additivity Σφ = f(x) − E[f] on models built from every supported nonlinear op, in every form.

Each op appears in module form (``nn.ReLU()``), functional form (``F.relu``, ``torch.sigmoid``) and
tensor-method / operator / in-place form (``x.tanh()``, ``x * y``, ``x.relu_()``, ``x *= y``,
``F.relu(x, inplace=True)``). Models are small ``nn.Module``\\ s of Linear layers feeding the op;
f(x) and E[f] are computed by calling the model directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import rnnshap

from ..conftest import (
    ADDITIVITY_TOL,
    additivity_excess,
    assert_additive,
    model_outputs,
    output_gap,
    phi_totals,
    secant_rounding_tol,
)
from ..models.torch import Composite

Tensor = torch.Tensor


# -- the op table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Form:
    op: str
    form: str  # "module", "functional", "method", "operator", "inplace"
    arity: int
    make: Callable[[], Any]  # a fresh nn.Module or function taking `arity` tensors
    width: int = 16  # features each Linear feeds the op

    @property
    def id(self) -> str:
        return f"{self.op}-{self.form}"


def _pos(z: Tensor) -> Tensor:
    """A positive, input-dependent tensor (the domain of log, sqrt, rsqrt, pow's base)."""
    return F.softplus(z) + 0.1


def _den(z: Tensor) -> Tensor:
    """A safe, input-dependent denominator in [0.5, 1.5]."""
    return torch.sigmoid(z) + 0.5


def _inplace(
    method: str, *extra: Any, prepare: Callable[[Tensor], Tensor] = lambda z: z, **kw: Any
) -> Callable[[Tensor], Tensor]:
    def f(z: Tensor) -> Tensor:
        z = prepare(z)
        getattr(z, method)(*extra, **kw)
        return z

    return f


def _imul(a: Tensor, b: Tensor) -> Tensor:
    a *= b
    return a


def _idiv(a: Tensor, b: Tensor) -> Tensor:
    a /= _den(b)
    return a


def _ipow(a: Tensor, b: Tensor) -> Tensor:
    base = _pos(a)
    base **= torch.tanh(b)
    return base


def _pool(fn: Callable[[Tensor], Tensor], *shape: int) -> Callable[[Tensor], Tensor]:
    return lambda z: fn(z.reshape(z.shape[0], *shape))


def _seq(*modules: nn.Module) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*modules)


U, B = 1, 2
FORMS: list[Form] = [
    # unary elementwise
    Form("sigmoid", "module", U, nn.Sigmoid),
    Form("sigmoid", "functional", U, lambda: torch.sigmoid),
    Form("sigmoid", "functional-F", U, lambda: F.sigmoid),
    Form("sigmoid", "functional-special", U, lambda: torch.special.expit),
    Form("sigmoid", "method", U, lambda: Tensor.sigmoid),
    Form("sigmoid", "inplace", U, lambda: _inplace("sigmoid_")),
    Form("tanh", "module", U, nn.Tanh),
    Form("tanh", "functional", U, lambda: torch.tanh),
    Form("tanh", "method", U, lambda: lambda z: z.tanh()),
    Form("tanh", "inplace", U, lambda: _inplace("tanh_")),
    Form("relu", "module", U, nn.ReLU),
    Form("relu", "module-inplace", U, lambda: nn.ReLU(inplace=True)),
    Form("relu", "functional", U, lambda: F.relu),
    Form("relu", "functional-torch", U, lambda: torch.relu),
    Form("relu", "method", U, lambda: lambda z: z.relu()),
    Form("relu", "inplace", U, lambda: _inplace("relu_")),
    Form("relu", "functional-inplace", U, lambda: lambda z: F.relu(z, inplace=True)),
    Form("relu", "functional-underscore", U, lambda: F.relu_),
    Form("leaky_relu", "module", U, lambda: nn.LeakyReLU(0.1)),
    Form("leaky_relu", "module-inplace", U, lambda: nn.LeakyReLU(0.2, inplace=True)),
    Form("leaky_relu", "functional", U, lambda: lambda z: F.leaky_relu(z, 0.05)),
    Form("leaky_relu", "functional-inplace", U, lambda: lambda z: F.leaky_relu(z, 0.1, inplace=True)),
    Form("elu", "module", U, nn.ELU),
    Form("elu", "functional", U, lambda: lambda z: F.elu(z, alpha=0.7)),
    Form("elu", "functional-inplace", U, lambda: lambda z: F.elu(z, inplace=True)),
    Form("selu", "module", U, nn.SELU),
    Form("selu", "functional", U, lambda: F.selu),
    Form("selu", "functional-torch", U, lambda: torch.selu),
    Form("selu", "functional-inplace", U, lambda: lambda z: F.selu(z, inplace=True)),
    Form("gelu", "module", U, nn.GELU),
    Form("gelu", "module-tanh", U, lambda: nn.GELU(approximate="tanh")),
    Form("gelu", "functional", U, lambda: F.gelu),
    Form("silu", "module", U, nn.SiLU),
    Form("silu", "functional", U, lambda: F.silu),
    Form("silu", "functional-inplace", U, lambda: lambda z: F.silu(z, inplace=True)),
    Form("softplus", "module", U, lambda: nn.Softplus(beta=2.0)),
    Form("softplus", "functional", U, lambda: F.softplus),
    Form("exp", "functional", U, lambda: torch.exp),
    Form("exp", "method", U, lambda: lambda z: z.exp()),
    Form("exp", "inplace", U, lambda: _inplace("exp_")),
    Form("log", "functional", U, lambda: lambda z: torch.log(_pos(z))),
    Form("log", "method", U, lambda: lambda z: _pos(z).log()),
    Form("log", "inplace", U, lambda: _inplace("log_", prepare=_pos)),
    Form("sqrt", "functional", U, lambda: lambda z: torch.sqrt(_pos(z))),
    Form("sqrt", "method", U, lambda: lambda z: _pos(z).sqrt()),
    Form("sqrt", "inplace", U, lambda: _inplace("sqrt_", prepare=_pos)),
    Form("rsqrt", "functional", U, lambda: lambda z: torch.rsqrt(_pos(z))),
    Form("rsqrt", "method", U, lambda: lambda z: _pos(z).rsqrt()),
    Form("rsqrt", "inplace", U, lambda: _inplace("rsqrt_", prepare=_pos)),
    Form("hardtanh", "module", U, lambda: nn.Hardtanh(-0.5, 0.5)),
    Form("hardtanh", "functional", U, lambda: F.hardtanh),
    Form("hardtanh", "functional-inplace", U, lambda: lambda z: F.hardtanh(z, -0.3, 0.6, inplace=True)),
    Form("hardtanh", "functional-underscore", U, lambda: F.hardtanh_),
    Form("elu", "functional-underscore", U, lambda: F.elu_),
    Form("leaky_relu", "functional-underscore", U, lambda: lambda z: F.leaky_relu_(z, 0.1)),
    Form("clamp", "functional", U, lambda: lambda z: torch.clamp(z, -0.4, 0.5)),
    Form("clamp", "functional-clip", U, lambda: lambda z: torch.clip(z, min=-0.2)),
    Form("clamp", "method", U, lambda: lambda z: z.clamp(max=0.3)),
    Form("clamp", "inplace", U, lambda: _inplace("clamp_", -0.5, 0.2)),
    Form("pow_scalar_base", "functional", U, lambda: lambda z: torch.pow(2.0, z)),
    Form("pow_scalar_exponent", "operator", U, lambda: lambda z: _pos(z) ** 1.5),
    # binary, both operands input-dependent
    Form("mul", "functional", B, lambda: torch.mul),
    Form("mul", "operator", B, lambda: lambda a, b: a * b),
    Form("mul", "method", B, lambda: lambda a, b: a.mul(b)),
    Form("mul", "inplace", B, lambda: lambda a, b: a.mul_(b)),
    Form("mul", "inplace-operator", B, lambda: _imul),
    Form("mul", "square", U, lambda: lambda z: z * z),
    Form("div", "functional", B, lambda: lambda a, b: torch.div(a, _den(b))),
    Form("div", "operator", B, lambda: lambda a, b: a / _den(b)),
    Form("div", "method", B, lambda: lambda a, b: a.div(_den(b))),
    Form("div", "inplace", B, lambda: lambda a, b: a.div_(_den(b))),
    Form("div", "inplace-operator", B, lambda: _idiv),
    Form("div", "reciprocal-operator", U, lambda: lambda z: 1.0 / _den(z)),
    Form("maximum", "functional", B, lambda: torch.maximum),
    Form("maximum", "functional-max", B, lambda: torch.max),
    Form("maximum", "method", B, lambda: lambda a, b: a.maximum(b)),
    Form("minimum", "functional", B, lambda: torch.minimum),
    Form("minimum", "functional-min", B, lambda: torch.min),
    Form("minimum", "method", B, lambda: lambda a, b: a.minimum(b)),
    Form("pow", "functional", B, lambda: lambda a, b: torch.pow(_pos(a), torch.tanh(b))),
    Form("pow", "operator", B, lambda: lambda a, b: _pos(a) ** torch.tanh(b)),
    Form("pow", "method", B, lambda: lambda a, b: _pos(a).pow(b.tanh())),
    Form("pow", "inplace", B, lambda: lambda a, b: _pos(a).pow_(torch.tanh(b))),
    Form("pow", "inplace-operator", B, lambda: _ipow),
    # softmax family
    Form("softmax", "module", U, lambda: nn.Softmax(dim=-1)),
    Form("softmax", "functional", U, lambda: lambda z: F.softmax(z, dim=1)),
    Form("softmax", "functional-torch", U, lambda: lambda z: torch.softmax(z, -1)),
    Form("softmax", "method", U, lambda: lambda z: z.softmax(-1)),
    Form("softmax", "functional-inner-dim", U, lambda: lambda z: F.softmax(z.reshape(-1, 4, 4), dim=1)),
    Form("log_softmax", "module", U, lambda: nn.LogSoftmax(dim=1)),
    Form("log_softmax", "functional", U, lambda: lambda z: F.log_softmax(z, dim=-1)),
    Form("log_softmax", "method", U, lambda: lambda z: z.log_softmax(-1)),
    # max-pool (overlapping windows included: the rule adds up for them too)
    Form("max_pool1d", "module", U, _seq(nn.Unflatten(1, (2, 8)), nn.MaxPool1d(2))),
    Form("max_pool1d", "functional", U, lambda: _pool(lambda t: F.max_pool1d(t, 3, stride=2), 2, 8)),
    Form("max_pool1d", "functional-padded", U, lambda: _pool(lambda t: F.max_pool1d(t, 2, padding=1), 2, 8)),
    Form("max_pool2d", "module", U, _seq(nn.Unflatten(1, (1, 4, 4)), nn.MaxPool2d(2))),
    Form("max_pool2d", "functional", U, lambda: _pool(lambda t: F.max_pool2d(t, 2, stride=1), 1, 4, 4)),
    Form("max_pool2d", "functional-indices", U, lambda: _pool(lambda t: F.max_pool2d(t, 2, return_indices=True)[0], 1, 4, 4)),
    Form("max_pool3d", "module", U, _seq(nn.Unflatten(1, (2, 2, 2, 2)), nn.MaxPool3d(2))),
    Form("max_pool3d", "functional", U, lambda: _pool(lambda t: F.max_pool3d(t, 2, stride=1), 1, 2, 2, 4)),
    Form("adaptive_max_pool1d", "module", U, _seq(nn.Unflatten(1, (2, 8)), nn.AdaptiveMaxPool1d(3))),
    # max / min reductions
    Form("max", "functional-dim", U, lambda: _pool(lambda t: torch.max(t, dim=2).values, 4, 4)),
    Form("max", "method-dim", U, lambda: _pool(lambda t: t.max(-1)[0], 4, 4)),
    Form("max", "functional-keepdim", U, lambda: _pool(lambda t: torch.max(t, 1, keepdim=True)[0], 4, 4)),
    Form("amax", "functional", U, lambda: _pool(lambda t: torch.amax(t, dim=-1), 4, 4)),
    Form("amax", "method-dims", U, lambda: _pool(lambda t: t.amax(dim=(1, 2)), 2, 2, 4)),
    Form("amax", "functional-all-features", U, lambda: lambda z: torch.amax(z, dim=1, keepdim=True)),
    Form("min", "functional-dim", U, lambda: _pool(lambda t: torch.min(t, dim=1).values, 4, 4)),
    Form("amin", "method", U, lambda: _pool(lambda t: t.amin(-1), 4, 4)),
]


#: forms that expose library bugs: strict xfail in the per-form test, left out of the random draws
KNOWN_BUGS: dict[str, str] = {}
WORKING_FORMS = [f for f in FORMS if f.id not in KNOWN_BUGS]


def _with_known_bugs(forms: list[Form]) -> list[Any]:
    return [
        pytest.param(f, id=f.id, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[f.id]))
        if f.id in KNOWN_BUGS
        else pytest.param(f, id=f.id)
        for f in forms
    ]


def _block(m: nn.Module, x: Tensor) -> Tensor:
    op = m.op_module if hasattr(m, "op_module") else m.op_fn
    a = m.a(x)
    y = op(a) if m.b is None else op(a, m.b(x))
    return y.reshape(y.shape[0], -1)


def op_block(d_in: int, spec: Form) -> Composite:
    """Linear layer(s) feeding one op; the result is flattened to (n, features)."""
    a = nn.Linear(d_in, spec.width)
    b = nn.Linear(d_in, spec.width) if spec.arity == 2 else None
    op = spec.make()
    name = "op_module" if isinstance(op, nn.Module) else "op_fn"
    return Composite(_block, spec_id=spec.id, arity=spec.arity, a=a, b=b, **{name: op})


def _blocks_then_head(m: nn.Module, x: Tensor) -> Tensor:
    for block in m.blocks:
        x = block(x)
    return m.head(x)


def op_net(d: int, specs: list[Form], k: int, dtype: torch.dtype, scale: float = 1.0) -> Composite:
    """Blocks in sequence, then a Linear head with k outputs."""
    blocks = []
    width = d
    for spec in specs:
        block = op_block(width, spec)
        with torch.no_grad():
            width = block(torch.zeros(1, width)).shape[1]
        blocks.append(block)
    model = Composite(_blocks_then_head, blocks=nn.ModuleList(blocks), head=nn.Linear(width, k))
    with torch.no_grad():  # spread the pre-activations so saturation and kinks are exercised
        for block in model.blocks:
            block.a.weight.mul_(scale)
            if block.b is not None:
                block.b.weight.mul_(scale)
    return model.to(dtype).eval()


def _inputs(
    seed: int, d: int, n_bg: int, n_x: int, dtype: torch.dtype, spread: float, with_edge_cases: bool
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(n_bg, d, generator=g, dtype=dtype) * spread
    X = torch.randn(n_x, d, generator=g, dtype=dtype) * spread
    if with_edge_cases:
        X[0] = background[0]  # Δ = 0 for one pair: every op sees x == r
        if n_x > 1:  # tiny Δ for one pair: the small-Δ branch of the smooth rules
            X[1] = background[-1] + 1e-4 * torch.randn(d, generator=g, dtype=dtype)
    return background, X


def _explain(
    specs: list[Form],
    dtype: torch.dtype,
    seed: int = 0,
    d: int = 5,
    k: int = 3,
    n_bg: int = 6,
    n_x: int = 4,
    spread: float = 1.0,
    scale: float = 1.0,
    edge: bool = True,
    **kw: Any,
) -> tuple[np.ndarray, nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = op_net(d, specs, k, dtype, scale)
    background, X = _inputs(seed, d, n_bg, n_x, dtype, spread, edge)
    values = rnnshap.DeepExplainer(model, background, **kw).shap_values(X, check_additivity=False)
    return values, model, X, background


#: chunked vs unchunked, relative to max|φ| + max(1, |f(x)|): see secant_rounding_tol (measured worst
#: over 400 random chains on one machine: 1.7e-6 in float32 and 2.6e-13 in float64)
CHUNK_TOL = {dtype: secant_rounding_tol(dtype) for dtype in (torch.float32, torch.float64)}
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]


# -- every op in every form ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("spec", _with_known_bugs(FORMS))
def test_every_op_form_is_additive(spec: Form, dtype: torch.dtype) -> None:
    values, model, X, background = _explain([spec], dtype, scale=2.0)
    assert values.shape == (*X.shape, 3)
    assert_additive(values, model, X, background, dtype)


def test_op_table_covers_every_op_in_every_form_kind() -> None:
    """Bookkeeping: the issue's op list is fully present, with module/functional/method forms."""
    ops = {f.op for f in FORMS}
    required = {
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "silu",
        "softplus",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "hardtanh",
        "clamp",
        "mul",
        "div",
        "maximum",
        "minimum",
        "pow",
        "softmax",
        "log_softmax",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max",
        "amax",
    }
    assert required <= ops
    kinds = {f.form.split("-")[0] for f in FORMS}
    assert {"module", "functional", "method", "operator", "inplace"} <= kinds


# -- random models ---------------------------------------------------------------------------------
@st.composite
def random_models(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        specs=draw(st.lists(st.sampled_from(WORKING_FORMS), min_size=1, max_size=3)),
        dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**16)),
        d=draw(st.integers(1, 6)),
        k=draw(st.integers(1, 3)),
        n_bg=draw(st.integers(1, 5)),
        n_x=draw(st.integers(1, 4)),
        spread=draw(st.sampled_from([0.1, 1.0, 2.5])),
        scale=draw(st.sampled_from([0.5, 1.0, 2.0])),
        edge=draw(st.booleans()),
    )


@given(config=random_models())
def test_random_op_chains_are_additive(config: dict[str, Any]) -> None:
    values, model, X, background = _explain(**config)
    assert np.all(np.isfinite(values))
    assert_additive(values, model, X, background, config["dtype"])


@given(config=random_models())
def test_chunked_equals_unchunked(config: dict[str, Any]) -> None:
    """batch_size=3 splits the background of a sample across chunks; the result must not change.

    Only float rounding may differ: a Linear layer run on 3 rows rounds differently from one run on
    24, and the Rescale quotient amplifies that where Δx is small (by up to eps**(-1/3)), so the
    tolerance is relative to the size of the numbers the model computes, max|φ| + max(1, |f(x)|).
    """
    config = {**config, "n_bg": max(config["n_bg"], 4), "n_x": max(config["n_x"], 2)}
    chunked, model, X, _ = _explain(**config, batch_size=3)
    whole, *_ = _explain(**config, batch_size=4096)
    scale = np.abs(whole).max() + max(1.0, np.abs(model_outputs(model, X)).max())
    tol = CHUNK_TOL[config["dtype"]]
    assert np.abs(chunked - whole).max() <= tol * scale


# -- the rules matter ------------------------------------------------------------------------------
def _gradient_times_delta(model: nn.Module, X: Tensor, background: Tensor) -> np.ndarray:
    """Plain gradient at x times (x − r), averaged over the background (no DeepLIFT rules)."""
    x = X.clone().requires_grad_(True)
    out = model(x)
    grads = [torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0] for j in range(out.shape[1])]
    grad = torch.stack(grads, -1)  # (n, d, k)
    delta = (X[:, None, :] - background[None, :, :]).mean(1)  # (n, d)
    return (grad * delta[..., None]).detach().numpy()


def test_gradient_times_delta_misses_additivity_but_rules_do_not() -> None:
    spec = next(f for f in FORMS if f.id == "tanh-functional")
    values, model, X, background = _explain([spec, spec], torch.float64, scale=2.0, spread=2.0, edge=False)
    naive = _gradient_times_delta(model, X, background)
    gap = output_gap(model, X, background)
    naive_error = np.abs(phi_totals(naive, *gap.shape) - gap).max() / np.abs(gap).max()
    assert naive_error > 1e-2, "gradient×Δ happened to add up: the model is too close to linear to show anything"
    assert additivity_excess(values, model, X, background).max() <= ADDITIVITY_TOL[torch.float64]


def test_gradient_rule_on_a_nonlinearity_breaks_additivity() -> None:
    """DeepSHAP with the plain gradient through tanh (a Linear rule) does not add up."""
    spec = next(f for f in FORMS if f.id == "tanh-functional")
    values, model, X, background = _explain(
        [spec], torch.float64, scale=2.0, spread=2.0, edge=False, rules={torch.tanh: rnnshap.rules.Linear()}
    )
    assert additivity_excess(values, model, X, background).max() > 1e-3


# -- structures shap gets wrong ----------------------------------------------------------------------
def shared_modules() -> nn.Module:
    """The same Linear and the same Tanh module applied twice (shap's module hooks mix them up)."""
    return Composite(lambda m, x: m.head(m.act(m.lin(m.act(m.lin(x))))),
                     lin=nn.Linear(4, 4), act=nn.Tanh(), head=nn.Linear(4, 2))  # fmt: skip


def input_product() -> nn.Module:
    """Two model inputs meeting in a product and a division."""
    return Composite(lambda m, a, b: (u := m.a(a)) * torch.sigmoid(v := m.b(b)) + u / (v.exp() + 1.0),
                     a=nn.Linear(4, 3), b=nn.Linear(2, 3))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_module_used_twice_is_additive(dtype: torch.dtype) -> None:
    model = shared_modules().to(dtype).eval()
    background, X = torch.randn(6, 4, dtype=dtype) * 2, torch.randn(4, 4, dtype=dtype) * 2
    values = rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False)
    assert_additive(values, model, X, background, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_two_inputs_meeting_in_nonlinear_ops_are_additive(dtype: torch.dtype) -> None:
    model = input_product().to(dtype).eval()
    background = [torch.randn(6, 4, dtype=dtype), torch.randn(6, 2, dtype=dtype)]
    X = [torch.randn(3, 4, dtype=dtype), torch.randn(3, 2, dtype=dtype)]
    values = rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False)
    assert [v.shape for v in values] == [(3, 4, 3), (3, 2, 3)]
    assert_additive(values, model, X, background, dtype)
