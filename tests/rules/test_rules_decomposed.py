"""The rules by decomposition into exact parts: normalizations (layer, RMS, group norm, normalize, and the
same written by hand), variance and deviation, log-sum-exp and its cumulative form (minGRU / minLSTM scans),
GLU, lerp, where gates, and the closed-form secants, as minGRU / minLSTM, TFT and xLSTM use them.

Every op: additivity in float32 and float64 at input scales 1e-2 .. 1e2, attributions within 1e-3 of
a float64 copy of the model, and, in float64, against a closed form written out with numpy.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap

from ..conftest import FLOAT32_VS_FLOAT64, assert_additive, eps, relative_to_max
from ..models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64
SCALES = [1e-2, 1.0, 1e2]


def _lstm_layer_norm() -> nn.Module:
    return Composite(lambda m, x: m.head(m.norm(m.lstm(x)[0][:, -1])),
                     lstm=nn.LSTM(8, 16, batch_first=True), norm=nn.LayerNorm(16), head=nn.Linear(16, 3))  # fmt: skip


# -- layer norm after an LSTM: the float32 conditioning fix ------------------------------------------------
@pytest.mark.parametrize("scale", [1e-2, 1e-1, 0.3, 1.0])
def test_layer_norm_after_lstm_is_exact_in_float32(scale: float) -> None:
    """The generic Rescale on (v + eps)^(-1/2) switched to the midpoint derivative below an absolute
    |Δv| of 5e-3: wrong by (Δv / v)² on small variances (1.5e-3 of Δ measured at scale 0.3)."""
    torch.manual_seed(1)
    model = _lstm_layer_norm().eval()
    g = torch.Generator().manual_seed(1)
    background, X = torch.randn(6, 5, 8, generator=g) * scale, torch.randn(3, 5, 8, generator=g) * scale
    values = {}
    for dtype in (torch.float32, F64):
        m, b, x = model.to(dtype), background.to(dtype), X.to(dtype)
        values[dtype] = rnnshap.DeepExplainer(m, b).shap_values(x, check_additivity=False)
        assert_additive(values[dtype], m, x, b, dtype)
    assert relative_to_max(values[torch.float32], values[F64]) < FLOAT32_VS_FLOAT64


# -- every new op, in a small model, at every scale ---------------------------------------------------------
def _lerp_gate(z: Tensor) -> Tensor:
    return torch.lerp(z[:, :4], z[:, 4:8], torch.sigmoid(z[:, 8:12]))


def _group_norm() -> nn.Module:
    norm = nn.GroupNorm(2, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return Composite(lambda m, z: m.norm(z.reshape(-1, 4, 4)).flatten(1), norm=norm)


def _min_gru_scan(z: Tensor) -> Tensor:
    """minGRU's log-space scan: log h_t = a*_t + logcumsumexp(log v − a*) (heinsen_associative_scan_log)."""
    log_coeffs = -F.softplus(z[:, :8]).reshape(-1, 8, 1)
    log_values = (F.logsigmoid(z[:, 8:]) + torch.arange(8, dtype=z.dtype) * 3.0).reshape(-1, 8, 1)
    a_star = log_coeffs.cumsum(1)
    return (a_star + torch.logcumsumexp(log_values - a_star, dim=1)).flatten(1)


OPS: dict[str, Callable[[], Any]] = {
    "glu": lambda: lambda z: F.glu(z, -1),
    "glu-module": lambda: nn.GLU(dim=1),
    "lerp-tracked-weight": lambda: _lerp_gate,
    "lerp-method-scalar-weight": lambda: lambda z: z[:, :8].lerp(z[:, 8:], 0.3),
    "var": lambda: lambda z: z.reshape(-1, 4, 4).var(-1),
    "var-correction0-keepdim": lambda: lambda z: torch.var(z.reshape(-1, 4, 4), dim=1, correction=0, keepdim=True).flatten(1),
    "var-all": lambda: lambda z: torch.var(z, 1, keepdim=True),
    "std": lambda: lambda z: z.reshape(-1, 4, 4).std(-1),
    "std-unbiased-false": lambda: lambda z: torch.std(z.reshape(-1, 4, 4), 1, False),
    "var_mean": lambda: lambda z: torch.cat(torch.var_mean(z.reshape(-1, 4, 4), -1), 1),
    "std_mean": lambda: lambda z: torch.cat(torch.std_mean(z.reshape(-1, 4, 4), dim=2), 1),
    "rms_norm-module": lambda: nn.RMSNorm(16),
    "rms_norm-functional": lambda: lambda z: F.rms_norm(z.reshape(-1, 2, 8), (2, 8), eps=1e-6).flatten(1),
    "group_norm": _group_norm,
    "group_norm-functional": lambda: lambda z: F.group_norm(z.reshape(-1, 4, 2, 2), 4).flatten(1),
    "normalize": lambda: lambda z: F.normalize(z.reshape(-1, 4, 4), dim=-1).flatten(1),
    "normalize-p1": lambda: lambda z: F.normalize(z.reshape(-1, 4, 4), p=1, dim=1).flatten(1),
    "logcumsumexp": lambda: lambda z: torch.logcumsumexp(z.reshape(-1, 4, 4), 1).flatten(1),
    "logcumsumexp-min_gru": lambda: _min_gru_scan,
    "logsumexp": lambda: lambda z: torch.logsumexp(z.reshape(-1, 4, 4), 1),
    # normalizations written by hand, as xLSTM, mambapy and minLM write them: the curvature of
    # rsqrt / sqrt / pow / reciprocal / log is on the scale of their (small) argument
    "layer_norm-by-hand-rsqrt": lambda: lambda z: _by_hand(z, lambda c, v: c * torch.rsqrt(v + 1e-5)),
    "layer_norm-by-hand-pow": lambda: lambda z: _by_hand(z, lambda c, v: c * (v + 1e-5).pow(-0.5)),
    "layer_norm-by-hand-div-sqrt": lambda: lambda z: _by_hand(z, lambda c, v: c / torch.sqrt(v + 1e-5)),
    "layer_norm-by-hand-div-pow": lambda: lambda z: _by_hand(z, lambda c, v: c / (v + 1e-5) ** 0.5),
    "rms_norm-by-hand-rsqrt-method": lambda: lambda z: _by_hand(z, lambda c, v: c * (v + 1e-6).rsqrt(), centre=False),
    "rms_norm-by-hand-reciprocal": lambda: lambda z: _by_hand(
        z, lambda c, v: c * torch.reciprocal(torch.sqrt(v + 1e-6)), centre=False
    ),
    "rms_norm-by-hand-rdiv": lambda: lambda z: _by_hand(z, lambda c, v: c * (1.0 / (v + 1e-6).sqrt()), centre=False),
    "log-of-mean-square": lambda: lambda z: torch.log(z.reshape(-1, 4, 4).square().mean(-1) + 1e-6),
}


#: ops whose block has no bias, so that their arguments are as small as the inputs (variances of 1e-5)
SMALL_AT_SMALL_SCALES = {name for name in OPS if "by-hand" in name or name.startswith("log-of")}


def _by_hand(z: Tensor, scale: Callable[[Tensor, Tensor], Tensor], centre: bool = True) -> Tensor:
    """``scale(c, v)`` over groups of 4: ``c`` the (centred) group, ``v`` its mean square."""
    groups = z.reshape(-1, 4, 4)
    c = groups - groups.mean(-1, keepdim=True) if centre else groups
    return scale(c, (c * c).mean(-1, keepdim=True)).flatten(1)


def block(op: Any, bias: bool = True) -> nn.Module:
    """Linear(5 → 16) → op → a fixed linear read-out to 2 outputs."""
    return Composite(
        lambda m, x: (y := m.op(m.lin(x))) @ torch.linspace(-1, 1, 2 * y.shape[1], dtype=y.dtype).reshape(y.shape[1], 2),
        lin=nn.Linear(5, 16, bias=bias), op=op,
    )  # fmt: skip


#: the model itself cancels large terms in float32 above this input scale: at 1e2 the scan's
#: outputs are a*_t + L_t with |a*_t| ≈ |L_t| ≈ 800, which float32 rounds to 5e-5 before any rule runs
FLOAT32_ADDITIVITY_UP_TO = {"logcumsumexp-min_gru": 1.0}


@pytest.mark.parametrize("name", list(OPS))
def test_decomposed_op_is_exact_across_scales(name: str) -> None:
    for scale in SCALES:
        values = {}
        for dtype in (torch.float32, F64):
            torch.manual_seed(0)
            model = block(OPS[name](), bias=name not in SMALL_AT_SMALL_SCALES).to(dtype).eval()
            g = torch.Generator().manual_seed(1)
            background = (torch.randn(5, 5, generator=g, dtype=F64) * scale).to(dtype)
            X = (torch.randn(3, 5, generator=g, dtype=F64) * scale).to(dtype)
            X[0] = background[0]  # Δ = 0 for one pair
            values[dtype] = rnnshap.DeepExplainer(model, background).shap_values(X, check_additivity=False)
            assert np.isfinite(values[dtype]).all()
            if dtype == F64 or scale <= FLOAT32_ADDITIVITY_UP_TO.get(name, np.inf):
                assert_additive(values[dtype], model, X, background, dtype)
        assert relative_to_max(values[torch.float32], values[F64]) < FLOAT32_VS_FLOAT64, f"scale {scale}"


# -- closed forms, float64 ---------------------------------------------------------------------------------
def _data(d: int, n_bg: int = 4, n_x: int = 3, seed: int = 0, low: float | None = None) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    if low is not None:
        return torch.rand(n_bg, d, generator=g, dtype=F64) + low, torch.rand(n_x, d, generator=g, dtype=F64) + low
    return torch.randn(n_bg, d, generator=g, dtype=F64) * 1.5, torch.randn(n_x, d, generator=g, dtype=F64) * 1.5


def _explain(op: Callable[[Tensor], Tensor], background: Tensor, X: Tensor) -> np.ndarray:
    return rnnshap.DeepExplainer(Function(op), background).shap_values(X)  # (n, d, k)


def _closed(per_pair: Callable[[np.ndarray, np.ndarray], np.ndarray], background: Tensor, X: Tensor) -> np.ndarray:
    """mean over references of ``per_pair(x, r)``: (d, k) attributions of one pair."""
    R = background.numpy()
    return np.stack([np.mean([per_pair(x, r) for r in R], axis=0) for x in X.numpy()])


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-t))


def test_glu_closed_form() -> None:
    """glu(x) = a σ(b): φ_a = (σ(b) + σ(b_r))/2 Δa, φ_b = (a + a_r)/2 (σ(b) − σ(b_r))."""
    background, X = _data(6)

    def pair(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        a, b, ar, br = x[:3], x[3:], r[:3], r[3:]
        out = np.zeros((6, 3))
        out[np.arange(3), np.arange(3)] = (_sigmoid(b) + _sigmoid(br)) / 2 * (a - ar)
        out[3 + np.arange(3), np.arange(3)] = (a + ar) / 2 * (_sigmoid(b) - _sigmoid(br))
        return out

    values = _explain(lambda t: F.glu(t, -1), background, X)
    np.testing.assert_allclose(values, _closed(pair, background, X), rtol=1e-10, atol=1e-13)


def test_lerp_with_tracked_weight_closed_form() -> None:
    """lerp(a, b, w) = a + w (b − a): Shapley on w ⊙ (b − a), m_w = (s + s_r)/2, m_s = (w + w_r)/2."""
    background, X = _data(9)

    def pair(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        a, b, w, ar, br, wr = x[:3], x[3:6], x[6:], r[:3], r[3:6], r[6:]
        mw = (w + wr) / 2
        out = np.zeros((9, 3))
        i = np.arange(3)
        out[i, i] = (1 - mw) * (a - ar)
        out[3 + i, i] = mw * (b - br)
        out[6 + i, i] = ((b - a) + (br - ar)) / 2 * (w - wr)
        return out

    values = _explain(lambda t: torch.lerp(t[:, :3], t[:, 3:6], t[:, 6:]), background, X)
    np.testing.assert_allclose(values, _closed(pair, background, X), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("root", [False, True], ids=["var", "std"])
def test_variance_and_std_closed_form(correction: int, root: bool) -> None:
    """var: φ_i = (c_i + c_r,i) Δx_i / (n − correction) (the midpoint gradient); std: that / (s + s_r)."""
    background, X = _data(5)

    def pair(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        c, cr = x - x.mean(), r - r.mean()
        phi = (c + cr) * (x - r) / (5 - correction)
        if root:
            phi = phi / (np.sqrt((c @ c) / (5 - correction)) + np.sqrt((cr @ cr) / (5 - correction)))
        return phi[:, None]

    op = torch.std if root else torch.var
    values = _explain(lambda t: op(t, 1, correction=correction, keepdim=True), background, X)
    np.testing.assert_allclose(values, _closed(pair, background, X), rtol=1e-10, atol=1e-13)


def _standardize_pair(x: np.ndarray, r: np.ndarray, eps: float, centre: bool) -> np.ndarray:
    """(d, d) attributions of y = c · s, s = 1 / sqrt(mean(c²) + eps) (c centred or not), by the decomposition:
    φ(x_j → y_k) = δ'_jk H Δx_j + (s c_k + s_r c_r,k)/(s + s_r) · m_s · (c_j + c_r,j)/n · Δx_j,
    with H = 2 s s_r / (s + s_r) the harmonic mean of the scales, m_s the secant of
    v ↦ v^(-1/2) and δ' the centring (the scale-weighted product rule of rules.structured.scaled)."""
    n = len(x)
    c, cr = (x - x.mean(), r - r.mean()) if centre else (x, r)
    v, vr = (c @ c) / n + eps, (cr @ cr) / n + eps
    s, sr = v**-0.5, vr**-0.5
    m_s = (s - sr) / (v - vr)
    centring = np.eye(n) - (1 / n if centre else 0.0)
    direct = 2 * s * sr / (s + sr) * centring * (x - r)[:, None]  # (j, k): δ'_jk Δx_j
    through_scale = np.outer((c + cr) / n * (x - r), (s * c + sr * cr) / (s + sr)) * m_s
    return direct + through_scale


def test_rms_norm_closed_form() -> None:
    background, X = _data(6)
    values = _explain(lambda t: F.rms_norm(t, (6,), eps=1e-3), background, X)
    expected = _closed(lambda x, r: _standardize_pair(x, r, 1e-3, centre=False), background, X)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-13)


def test_group_norm_closed_form() -> None:
    """GroupNorm(2 groups of 2 channels × 3 positions): each group standardized as a layer norm."""
    background, X = _data(12)

    def pair(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        out = np.zeros((12, 12))
        for group in (slice(0, 6), slice(6, 12)):
            out[group, group] = _standardize_pair(x[group], r[group], 1e-5, centre=True)
        return out

    values = _explain(lambda t: F.group_norm(t.reshape(-1, 4, 3), 2).flatten(1), background, X)
    np.testing.assert_allclose(values, _closed(pair, background, X), rtol=1e-10, atol=1e-13)


def test_layer_norm_closed_form() -> None:
    background, X = _data(6)
    values = _explain(lambda t: F.layer_norm(t, (6,)), background, X)
    expected = _closed(lambda x, r: _standardize_pair(x, r, 1e-5, centre=True), background, X)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-13)


def test_normalize_closed_form() -> None:
    """y = x / d, d = ‖x‖:
    φ(x_j → y_k) = δ_jk (1/d + 1/d_r)/2 Δx_j − (x_k + x_r,k)/(2 d d_r) (x_j + x_r,j) Δx_j / (d + d_r)."""
    background, X = _data(5)

    def pair(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        # y = x · u, u = 1/d: φ(x_j → y_k) = δ_jk 2/(d + d_r) Δx_j
        #   + (u x_k + u_r r_k)/(u + u_r) · (−1/(d d_r)) · (x_j + r_j) Δx_j/(d + d_r)
        d, dr = np.linalg.norm(x), np.linalg.norm(r)
        u, ur = 1 / d, 1 / dr
        direct = np.diag(2 / (d + dr) * (x - r))
        through_norm = -np.outer((x + r) * (x - r) / (d + dr), (u * x + ur * r) / (u + ur)) / (d * dr)
        return direct + through_norm

    values = _explain(lambda t: F.normalize(t, dim=1), background, X)
    np.testing.assert_allclose(values, _closed(pair, background, X), rtol=1e-10, atol=1e-13)


# -- all-zero rows under a normalization (found by the fuzzer) -----------------------------------------------
ZERO_ROW_NORMS: dict[str, Callable[[Tensor], Tensor]] = {
    "rms_norm-default-eps": lambda t: F.rms_norm(t, (3,)),  # eps = finfo.eps: s = 6.7e7 on a zero row
    "normalize-p2": lambda t: F.normalize(t, dim=-1),  # clamped at eps = 1e-12
    "normalize-p1": lambda t: F.normalize(t, p=1, dim=-1),
    "layer_norm": lambda t: F.layer_norm(t, (3,)),
}


@pytest.mark.parametrize("name", list(ZERO_ROW_NORMS))
@pytest.mark.parametrize("side", ["sample", "reference"])
def test_zero_row_under_a_normalization_is_exact_and_bounded(name: str, side: str) -> None:
    """A zero row (a padding_idx embedding, a masked step) makes the scale 1/sqrt(eps) on its side.
    The symmetric Shapley rule on c ⊙ s then gave terms of that order (φ ≈ ±5e6 for an output moving
    by 0.86, sums off by 1e-8 in float64, 1e-5 for F.normalize), hidden from rnnshap's own check by its
    Σ|φ| scale. The scale-weighted rule keeps φ of the size of the output's change."""
    model = block(ZERO_ROW_NORMS[name]).double().eval()
    model.lin = nn.Linear(5, 3, bias=False).double()
    model.lin.weight.data = torch.eye(3, 5, dtype=F64)
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3, 5, generator=g, dtype=F64)
    zero = torch.zeros(1, 5, dtype=F64)
    background, X = (rows, zero) if side == "sample" else (zero, rows)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, F64)
    with torch.no_grad():
        moves = (model(X)[:, None] - model(background)[None]).abs().max().item()
    assert np.abs(values).max() <= 2 * moves
    # float32: additive at its own tolerance, within 1e-3 of the float64 values
    values32 = rnnshap.DeepExplainer(model.float(), background.float()).shap_values(X.float())
    assert_additive(values32, model, X.float(), background.float(), torch.float32)
    assert relative_to_max(values32, values) < FLOAT32_VS_FLOAT64


def _log_sum_exp_pair(x: np.ndarray, r: np.ndarray, cumulative: bool) -> np.ndarray:
    """W_st = (e^x_s − e^r_s)/(x_s − r_s) · (L_t − L_r,t)/(e^L_t − e^L_r,t) for s ≤ t (Rescale, sum, Rescale)."""
    n = len(x)
    m_exp = (np.exp(x) - np.exp(r)) / (x - r)
    if cumulative:
        L, Lr = np.logaddexp.accumulate(x), np.logaddexp.accumulate(r)
    else:
        L, Lr = np.logaddexp.reduce(x)[None], np.logaddexp.reduce(r)[None]
    m_log = (L - Lr) / (np.exp(L) - np.exp(Lr))
    reach = np.triu(np.ones((n, n))) if cumulative else np.ones((n, 1))
    return reach * np.outer(m_exp * (x - r), m_log)


@pytest.mark.parametrize("cumulative", [True, False], ids=["logcumsumexp", "logsumexp"])
def test_log_sum_exp_closed_form(cumulative: bool) -> None:
    background, X = _data(6)
    op = (lambda t: torch.logcumsumexp(t, 1)) if cumulative else (lambda t: torch.logsumexp(t, 1, keepdim=True))
    values = _explain(op, background, X)
    expected = _closed(lambda x, r: _log_sum_exp_pair(x, r, cumulative), background, X)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-13)


def test_logcumsumexp_with_far_drifting_totals_is_finite_and_exact() -> None:
    """Steps 100 apart (e^100 overflows float32): the multipliers stay bounded and exact.

    The outputs reach 500, which float32 itself rounds to 3e-5, so in float32 additivity is held to
    the tolerance relative to the outputs' size rather than to Δ."""
    drift = torch.arange(6, dtype=F64) * 100.0
    background, X = _data(6)
    values = {}
    for dtype in (torch.float32, F64):
        model = Function(lambda t: torch.logcumsumexp(t + drift.to(t.dtype), 1))
        values[dtype] = rnnshap.DeepExplainer(model, background.to(dtype)).shap_values(X.to(dtype), check_additivity=False)
        assert np.isfinite(values[dtype]).all()
    assert_additive(values[F64], model, X, background, F64)
    gap = model(X).numpy() - model(background).mean(0).numpy()
    excess = np.abs(values[torch.float32].sum(1) - gap) / np.maximum(1.0, np.abs(model(X).numpy()))
    assert excess.max() < 1e-5
    assert relative_to_max(values[torch.float32], values[F64]) < FLOAT32_VS_FLOAT64


# -- what stays refused -------------------------------------------------------------------------------------
def test_normalize_with_other_p_is_refused_by_name() -> None:
    with pytest.raises(rnnshap.UnsupportedOperationError, match="normalize"):
        rnnshap.DeepExplainer(Function(lambda t: F.normalize(t, p=3.0, dim=1)), torch.randn(3, 4, dtype=F64))


def test_layer_norm_rules_refuse_an_input_dependent_weight() -> None:
    def op(t: Tensor) -> Tensor:
        return F.rms_norm(t, (4,), weight=torch.sigmoid(t[0]))

    with pytest.raises(rnnshap.UnsupportedOperationError, match="rms_norm"):
        rnnshap.DeepExplainer(Function(op), torch.randn(3, 4, dtype=F64))


# -- comparisons used as gates: torch.where(x >= 0, f(x), g(x)) ---------------------------------------------
def _min_gru_g(t: Tensor) -> Tensor:
    """minGRU's g: x + 0.5 for x ≥ 0, σ(x) below (continuous at 0)."""
    return torch.where(t >= 0, t + 0.5, torch.sigmoid(t))


def _gated(fn: Callable[..., Any], x: Tensor, r: Tensor, *rest: Any) -> Tensor:
    """The gate rules run as the engine runs them: the comparison, then the where on its mask."""
    from torch.utils._pytree import tree_flatten

    from rnnshap.rules import rescale
    from rnnshap.rules.base import OpCall
    from rnnshap.rules.gates import Comparison, Where

    leaves, spec = tree_flatten(((x, *rest), {}))
    mask = Comparison().attribute(OpCall(fn, "ge", leaves, [r, *leaves[1:]], spec, (0,)))
    a, a_ref = x + 0.5, r + 0.5
    b, b_ref = rescale(torch.sigmoid, x, r)
    leaves, spec = tree_flatten(((mask, a, b), {}))
    return Where().attribute(OpCall(torch.where, "where", leaves, [mask, a_ref, b_ref], spec, (1, 2)))


@pytest.mark.parametrize("comparison", [torch.Tensor.__ge__, torch.ge, torch.Tensor.ge], ids=["operator", "functional", "method"])
def test_where_gate_multiplier_is_rescale_of_the_piecewise_function(comparison: Callable[..., Tensor]) -> None:
    """Closed form: the step (Rescale), where (Shapley over step and branches) and the branches'
    rules compose to (h(x) − h(r)) / (x − r) for h = where(x ≥ 0, x + 0.5, σ(x)), crossings included."""
    g = torch.Generator().manual_seed(9)
    x, r = torch.randn(200, generator=g, dtype=F64) * 2, torch.randn(200, generator=g, dtype=F64) * 2
    r[:20] = x[:20]  # Δ = 0
    x = x.requires_grad_(True)
    out = _gated(comparison, x, r, 0.0)
    torch.testing.assert_close(out.detach(), _min_gru_g(x.detach()), rtol=0, atol=0)
    (m,) = torch.autograd.grad(out, x, torch.ones_like(out))
    xd = x.detach()
    crossing = (xd >= 0) != (r >= 0)
    assert crossing.sum() > 50
    expected = (_min_gru_g(xd) - _min_gru_g(r)) / (xd - r)
    torch.testing.assert_close(m[20:], expected[20:], rtol=1e-10, atol=1e-13)
    assert torch.isfinite(m).all()


def min_gru_gate() -> nn.Module:
    return Composite(lambda m, x: m.head(_min_gru_g(m.lin(x))), lin=nn.Linear(5, 8), head=nn.Linear(8, 2))


def test_min_gru_gate_through_the_engine_is_exact() -> None:
    from rnnshap.rules.gates import gate_rules
    from rnnshap.rules.registry import forms

    torch.manual_seed(3)
    model = min_gru_gate().double().eval()
    background, X = torch.randn(6, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    values = rnnshap.DeepExplainer(model, background, rules=gate_rules(forms)).shap_values(X)
    assert_additive(values, model, X, background, F64)
    # registered by default: the same values without passing the rules
    np.testing.assert_array_equal(rnnshap.DeepExplainer(model, background).shap_values(X), values)


# -- the closed-form secants -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["sqrt", "rsqrt", "square", "reciprocal", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p"]
)
def test_closed_form_secants_equal_the_difference_quotient(name: str) -> None:
    from rnnshap.rules.secant import SLOPES_BY_NAME, secant

    f, slope = getattr(torch, name), SLOPES_BY_NAME[name]
    g = torch.Generator().manual_seed(10)
    x, r = torch.rand(400, generator=g, dtype=F64) * 4 + 0.05, torch.rand(400, generator=g, dtype=F64) * 4 + 0.05
    x = x.requires_grad_(True)
    out, ref_out = secant(f, x, r, slope)
    torch.testing.assert_close(out.detach(), f(x.detach()), rtol=0, atol=0)
    torch.testing.assert_close(ref_out, f(r), rtol=0, atol=0)
    (m,) = torch.autograd.grad(out, x, torch.ones_like(out))
    torch.testing.assert_close(m, (f(x.detach()) - f(r)) / (x.detach() - r), rtol=1e-9, atol=1e-12)
    # Δ = 0: the derivative, from the same closed form; Δ = 1e-9: within Δ·|f''/f'| (≤ 1e-8 here) of it
    at = torch.linspace(0.1, 3.0, 30, dtype=F64).requires_grad_(True)
    (derivative,) = torch.autograd.grad(f(at).sum(), at)
    for delta, rtol in ((0.0, 1e-12), (1e-9, 1e-7)):
        torch.testing.assert_close(slope(at.detach() + delta, at.detach()), derivative, rtol=rtol, atol=0)


def powered(p: float, how: str) -> nn.Module:
    """``(W x − 1) ** p``, written with ``**`` (the Power rule) or with ``torch.float_power`` (the
    generic exact Shapley rule, float64): the same function, so the same values."""
    return Composite(
        lambda m, x: ((m.lin(x) - 1) ** m.p if m.how == "pow" else torch.float_power(m.lin(x) - 1, m.p)).sum(1, keepdim=True),
        p=p, how=how, lin=nn.Linear(3, 4),
    )  # fmt: skip


@pytest.mark.parametrize("p", [-2.0, -1.0, 1.0, 2.0, 3.0, 0.5, 1.5, -0.5])
def test_power_rule_equals_the_generic_rule_on_any_base(p: float) -> None:
    """Positive, negative and zero bases, and pairs where the sample is its reference (Δ = 0), for
    integer p; positive bases for fractional p (a regression: Δ = 0 at a base ≤ 0 got multiplier 0)."""
    torch.manual_seed(3)
    power, generic = powered(p, "pow").double().eval(), powered(p, "float_power").double().eval()
    generic.load_state_dict(power.state_dict())
    g = torch.Generator().manual_seed(4)
    background, X = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    if p != int(p):  # fractional powers: positive bases only
        with torch.no_grad():
            power.lin.weight.abs_(), power.lin.bias.fill_(3.0)
            generic.load_state_dict(power.state_dict())
        background, X = background.abs(), X.abs()
    X[0] = background[0]
    values = rnnshap.DeepExplainer(power, background).shap_values(X)
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(generic, background).shap_values(X), rtol=1e-9, atol=1e-12)


def test_log1p_at_a_zero_delta_takes_its_derivative() -> None:
    """log1p(x0 + x1 + 3) at x = (1, −1), r = 0: the argument does not move, φ = 1/(1 + 3) · Δx (was Δx)."""
    background, X = torch.zeros(1, 2, dtype=F64), torch.tensor([[1.0, -1.0]], dtype=F64)
    values = _explain(lambda t: torch.log1p(t.sum(1, keepdim=True) + 3), background, X)
    np.testing.assert_allclose(values.reshape(2), [0.25, -0.25], rtol=1e-12)


def test_rsqrt_secant_in_float32_at_small_variances() -> None:
    """The case of the layer-norm fix: v ≈ 1e-3, Δv ≈ 1e-4, float32; the generic Rescale took the
    midpoint derivative there (|Δ| < eps^(1/3)) and was off by (Δv/v)²."""
    from rnnshap.rules.secant import rsqrt_slope

    g = torch.Generator().manual_seed(11)
    v = torch.rand(1000, generator=g, dtype=F64) * 1e-3 + 1e-4
    w = v * (1 + (torch.rand(1000, generator=g, dtype=F64) - 0.5) * 0.4)
    exact = (torch.rsqrt(v) - torch.rsqrt(w)) / (v - w)
    closed = rsqrt_slope(v.float(), w.float()).double()
    assert ((closed - exact).abs() / exact.abs()).max() < 8 * eps(torch.float32)  # a few roundings of float32
