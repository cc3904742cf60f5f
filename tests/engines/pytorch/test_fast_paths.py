"""The engine's per-operation fast paths give what the general paths give, bit for bit."""

from __future__ import annotations

import gc
import math

import mpmath
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import rnnshap
from rnnshap.engines.pytorch.calls import flatten_call
from rnnshap.engines.pytorch.tensor_map import TensorMap
from rnnshap.rules.elementwise import (
    RESULT_SECANTS,
    coalition_multipliers,
    rescale_from_result,
    shapley_multipliers,
    small_delta_threshold,
)

from ...conftest import ADDITIVITY_TOL
from ...models.torch import Composite


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _cases(dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    gates = torch.randn(64, 200, generator=g, dtype=dtype)
    x = gates[:, 50:100]  # a chunk: not contiguous, rows of 50
    cases = [(x, torch.randn(64, 50, generator=g, dtype=dtype)), (x * 8, torch.randn(64, 50, generator=g, dtype=dtype))]
    near = x.clone()
    near[::3] += 1e-4  # |Δ| below the threshold: the secant in closed form
    cases.append((x, near))
    threshold = small_delta_threshold(dtype, True)  # |Δ| up to the threshold, where Δ² shows
    cases.append((x * 3, x * 3 + (torch.rand(x.shape, generator=g, dtype=dtype) * 2 - 1) * threshold))
    odd = x.clone()
    odd[0, 0], odd[1, 1] = float("nan"), float("inf")
    ref = near.clone()
    ref[2, 2] = float("-inf")
    cases.append((odd, ref))
    cases.append((x[0, 0], near[0, 0]))  # 0-d
    cases.append((x.t(), near.t()))
    return cases


def _exact_secants(f: object, x: torch.Tensor, r: torch.Tensor) -> np.ndarray:
    """(f(x) − f(r)) / (x − r) at 40 digits on the floats as given (f'(x) where x == r; nan where
    either side is not finite)."""
    mpmath.mp.dps = 40
    g = mpmath.tanh if f is torch.tanh else (lambda t: 1 / (1 + mpmath.exp(-t)))
    out = []
    for a, b in zip(x.reshape(-1).tolist(), r.reshape(-1).tolist(), strict=True):
        if not (math.isfinite(a) and math.isfinite(b)):
            out.append(math.nan)
        elif a == b:
            out.append(float(mpmath.diff(g, mpmath.mpf(a))))
        else:
            out.append(float((g(mpmath.mpf(a)) - g(mpmath.mpf(b))) / (mpmath.mpf(a) - mpmath.mpf(b))))
    return np.array(out).reshape(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f", [torch.sigmoid, torch.tanh])
def test_rescale_of_sigmoid_and_tanh_is_the_exact_secant(f: object, dtype: torch.dtype) -> None:
    """Where |Δ| is above the threshold, the generic rule's quotient bit for bit; below it, the
    secant in closed form, within a few roundings of the exact secant (the generic rule's
    derivative at the midpoint is within Δ² of it), and everywhere within the quotient's rounding."""
    eps = torch.finfo(dtype).eps
    threshold = small_delta_threshold(dtype, True)
    for x, r in _cases(dtype):
        output, ref_output, multiplier = rescale_from_result(f, RESULT_SECANTS[f], x, r)  # type: ignore[arg-type]
        output_g, ref_output_g, (multiplier_g,) = shapley_multipliers(lambda p: f(p[0]), [x], [r], True)  # type: ignore[operator]
        assert torch.equal(_bits(output), _bits(output_g)) and torch.equal(_bits(ref_output), _bits(ref_output_g))
        delta = (x - r).abs()
        far = delta > threshold
        assert torch.equal(_bits(multiplier[far]), _bits(multiplier_g[far]))
        exact = _exact_secants(f, x, r)
        m = multiplier.double().numpy()
        o, o_r = output.double().abs().numpy(), ref_output.double().abs().numpy()
        near = (delta <= threshold).numpy() & np.isfinite(exact)
        # the closed forms, 1 − tanh(x)tanh(r) or σ(x) + σ(r) − 2σ(x)σ(r) times a series in Δ²,
        # rounded a few times: within 2 eps of the secant (at most 1 in each), where the
        # derivative at the midpoint is 16 eps off in float32 and thousands in float64
        assert (np.abs(m - exact)[near] <= 2 * eps * (1 + np.abs(exact))[near]).all()
        quotient = far.numpy() & np.isfinite(exact)
        assert (np.abs(m - exact)[quotient] <= 4 * eps * (np.abs(exact) + (o + o_r) / delta.double().numpy())[quotient]).all()
        # (a NaN operand: NaN, as the generic rule)
        assert np.isfinite(m[~np.isnan(x.double().numpy() - r.double().numpy())]).all()


def test_flatten_equals_pytree() -> None:
    x, p = torch.randn(2), nn.Parameter(torch.randn(2))
    calls = [
        ((x,), {}),
        ((x, p, 2.0), {"alpha": 3}),
        ((x, (slice(None), 1)), {}),
        (([x, p], 0), {}),
        ((torch.Size([2, 1]),), {}),
        ((x, (1, (2, 3))), {}),
        ((x,), {"out": None, "dims": [1]}),
        ((None, Ellipsis, "s", torch.float32, torch.device("cpu")), {}),
    ]
    for args, kwargs in calls:
        for _ in range(2):  # the second time from the cache
            leaves, spec, layout = flatten_call(args, kwargs)
            expected, expected_spec = tree_flatten((args, kwargs))
            assert len(leaves) == len(expected) and all(a is b for a, b in zip(leaves, expected, strict=True))
            assert spec == expected_spec
            assert layout is None or layout == (len(args), tuple(kwargs))


def test_tensor_map_holds_tensors_weakly_by_identity() -> None:
    seen = TensorMap()
    a = torch.zeros(3)
    seen[a] = "a"
    assert a in seen and seen[a] == "a" and torch.zeros(3) not in seen
    ident = id(a)
    del a
    gc.collect()
    reuse = [torch.zeros(3) for _ in range(1000)]  # one of them may get the dead tensor's id
    assert not any(t in seen for t in reuse if id(t) == ident)
    assert len(seen) == 0


def _writes_into_its_activations(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A loop whose sigmoid outputs are written into in place after use, and a tanh with ``out=``."""
    h = x.new_zeros(x.shape[0], 8)
    for t in range(x.shape[1]):
        z = m.step(x[:, t]) + h
        gate = torch.sigmoid(z)
        gate.mul_(0.5)  # the reference pass's output of sigmoid, kept for the input pass, changes
        h = torch.tanh(z).sigmoid_() * gate + 0.5 * h
        h = torch.tanh(h, out=torch.empty_like(h)) + 0.1 * h
    return m.head(h)


def test_kept_reference_outputs_written_into_are_not_used() -> None:
    torch.manual_seed(0)
    model = Composite(_writes_into_its_activations, step=nn.Linear(6, 8), head=nn.Linear(8, 1)).eval()
    x, background = torch.randn(3, 5, 6), torch.randn(4, 5, 6)
    explainer = rnnshap.DeepExplainer(model, background)
    phi = explainer.shap_values(x, check_additivity=True)
    with torch.no_grad():
        delta = (model(x) - model(background).mean(0)).reshape(-1).numpy()
    assert (abs(phi.reshape(3, -1).sum(1) - delta) / np.maximum(1.0, abs(delta))).max() <= ADDITIVITY_TOL[torch.float32]


def _one_player_functions() -> list[tuple[str, object, bool]]:
    """(name, g over one operand, smooth): unary activations and an extremum with a constant."""
    F = torch.nn.functional
    wall = torch.linspace(-1, 1, 50)  # broadcasts a (64, 1) operand to (64, 50)
    return [
        ("silu", lambda p: F.silu(p[0]), True),
        ("softplus", lambda p: F.softplus(p[0], beta=2.0, threshold=3.0), True),
        ("elu", lambda p: F.elu(p[0], alpha=0.7), True),
        ("gelu", lambda p: F.gelu(p[0]), True),
        ("gelu-tanh", lambda p: F.gelu(p[0], approximate="tanh"), True),
        ("logsigmoid", lambda p: F.logsigmoid(p[0]), True),
        ("sin", lambda p: torch.sin(p[0]), True),
        ("relu", lambda p: F.relu(p[0]), False),
        ("leaky_relu", lambda p: F.leaky_relu(p[0], 0.1), False),
        ("abs", lambda p: p[0].abs(), False),
        ("hardtanh", lambda p: F.hardtanh(p[0], -0.5, 0.5), False),
        ("minimum", lambda p: torch.minimum(p[0], wall), False),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, g, smooth", _one_player_functions(), ids=[name for name, _, _ in _one_player_functions()])
def test_one_operand_rule_equals_the_sum_over_coalitions(name: str, g: object, smooth: bool, dtype: torch.dtype) -> None:
    """The one-operand path of the exact Shapley rule (Rescale: the quotient, the derivative where
    |Δ| is at most the threshold, 0 for a non-finite multiplier where nothing moves) gives what the
    general sum over coalitions gives for one operand, for every Δ: large, small, zero, infinite."""
    cases = _cases(dtype)
    zero = cases[0][0].clone()
    zero[::2] = cases[0][1][::2]  # Δ = 0 exactly on half the rows: the derivative (at the input, for a piecewise g)
    cases.append((zero, cases[0][1]))
    g_ = torch.Generator().manual_seed(1)
    column = torch.randn(64, 1, generator=g_, dtype=dtype)
    cases.append((column, column + torch.randn(64, 1, generator=g_, dtype=dtype) * 1e-4))  # (64, 1): broadcast by `minimum`
    for x, r in cases:
        if name == "minimum" and x.shape[-1:] not in ((1,), (50,)):
            continue
        fast = shapley_multipliers(g, [x], [r], smooth)  # type: ignore[arg-type]
        general = coalition_multipliers(g, [x], [r], smooth)  # type: ignore[arg-type]
        for a, b in zip([fast[0], fast[1], *fast[2]], [general[0], general[1], *general[2]], strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.equal(a.isnan(), b.isnan()), name
            assert torch.equal(a.nan_to_num(0.0, 0.0, 0.0), b.nan_to_num(0.0, 0.0, 0.0)), name
            assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), name
