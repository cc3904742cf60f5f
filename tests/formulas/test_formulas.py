"""The formulas of rnnshap/formulas/: one namespace per array library, each formula written once.

Truths: the formulas' definitions (the secant equals the float64 difference quotient; the closed forms
of sigmoid and tanh equal it near Δ = 0), torch against keras.ops on the same float64 arrays, and the
source tree itself (no formula defined outside the package; both engines bind the package's)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnshap import formulas
from rnnshap.formulas import marks, namespace, orderings, pairs, secant
from rnnshap.formulas.torch_ops import TORCH
from rnnshap.operations import ELEMENTWISE

from ..models.torch import Composite, Function

PACKAGE = Path(__file__).resolve().parents[2] / "rnnshap"
MEMBERS = [name for name, _ in inspect.getmembers(namespace.Ops) if not name.startswith("_")]
MEMBERS = sorted(set(MEMBERS) | set(namespace.Ops.__annotations__))


def _keras_ops() -> namespace.Ops:
    pytest.importorskip("keras")
    from rnnshap.formulas.keras_ops import KERAS

    return KERAS


def _jax_ops() -> namespace.Ops:
    pytest.importorskip("jax")
    from rnnshap.formulas.jax_ops import JAX

    return JAX


@pytest.mark.parametrize("which", ["torch", "keras", "jax"])
def test_each_namespace_has_every_member_of_the_protocol(which: str) -> None:
    xp = {"torch": lambda: TORCH, "keras": _keras_ops, "jax": _jax_ops}[which]()
    assert xp.name == which
    missing = [m for m in MEMBERS if m != "name" and not callable(getattr(xp, m, None))]
    assert missing == []


def test_torch_members_are_torch_functions_where_the_meaning_is_the_same() -> None:
    # so a formula runs the float operations a torch.* one runs (the bit-identity of the PyTorch engine)
    for name in ("exp", "log", "sqrt", "rsqrt", "sinh", "atanh", "where", "abs", "expm1", "log1p", "full_like"):
        assert getattr(TORCH, name) is getattr(torch, name)


SLOPES = sorted(secant.SLOPES_BY_NAME)
FUNCTIONS = {
    "sqrt": np.sqrt, "rsqrt": lambda t: 1 / np.sqrt(t), "square": np.square, "reciprocal": np.reciprocal,
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log2": np.log2, "log10": np.log10,
    "log1p": np.log1p,
}  # fmt: skip


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 4.0, 64)
    r = np.concatenate([x[:16] * (1 + rng.uniform(-1e-3, 1e-3, 16)), rng.uniform(0.05, 4.0, 48)])
    return x, r


@pytest.mark.parametrize("name", SLOPES)
def test_each_slope_is_the_difference_quotient_on_torch_and_keras(name: str) -> None:
    x, r = _pairs()
    f = FUNCTIONS[name]
    with np.errstate(all="ignore"):
        quotient = (f(x) - f(r)) / (x - r)
    slope = secant.SLOPES_BY_NAME[name]
    on_torch = slope(TORCH, torch.tensor(x), torch.tensor(r)).numpy()
    # far apart the quotient is exact to eps over the relative gap; near, the closed form is the truth
    far = np.abs(x - r) > 1e-2 * np.abs(x)
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(on_torch[far], quotient[far], rtol=1e3 * eps)
    xp = _keras_ops()
    import keras

    on_keras = keras.ops.convert_to_numpy(slope(xp, keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(r)))
    np.testing.assert_allclose(on_keras, on_torch, rtol=16 * eps, atol=0)


def test_exp_slope_is_within_a_few_roundings_of_the_secant_in_float32_near_and_far_alike() -> None:
    """exp's secant on float32 operands, against the float64 secant of the same operands (the closed form
    e^((x+r)/2) sinh(h)/h there, exact to float64's rounding at every gap): within 4 float32 epsilons at gaps
    from 1e-7 to 30 and at none, and arguments up to |x| ~ 30 (1.6 here: exp and expm1 are each within an ulp or
    so; max(x, r) is exact, where the float32 closed form it replaced rounded (x+r)/2 and lost 9 epsilons)."""
    rng = np.random.default_rng(3)
    x = rng.normal(-2.0, 8.0, 60_000).astype(np.float32)
    gaps = np.concatenate([rng.normal(0.0, s, 10_000) for s in (1e-7, 1e-4, 0.05, 0.5, 3.0, 30.0)]).astype(np.float32)
    r = (x + gaps).astype(np.float32)
    r[:100] = x[:100]  # no gap
    slope = secant.exp_slope(TORCH, torch.from_numpy(x), torch.from_numpy(r)).double().numpy()
    x64, r64 = x.astype(np.float64), r.astype(np.float64)
    h = (x64 - r64) / 2
    with np.errstate(all="ignore"):
        truth = np.exp((x64 + r64) / 2) * np.where(h == 0, 1.0, np.sinh(h) / np.where(h == 0, 1.0, h))
    f32 = np.finfo(np.float32)
    normal = (truth > f32.tiny * 1e3) & (truth < f32.max / 1e3)  # (where float32 neither underflows nor overflows)
    assert normal.mean() > 0.9
    relative = np.abs(slope[normal] - truth[normal]) / truth[normal]
    assert relative.max() <= 4 * np.finfo(np.float32).eps


@pytest.mark.parametrize("x, r", [(1.0, -3.0), (1.0, 0.0), (0.0, 2.0), (2.0, 0.5), (0.5, 2.0), (1.0, 1.0), (3.0, 1.0)])
def test_log_slope_needs_no_mask_where_atanh_is_not_finite(x: float, r: float) -> None:
    # where the Keras engine's copy masked atanh's argument (|q| > 1/2) and where atanh is ±inf or NaN
    # (|q| >= 1: x or r at most 0), the slope is the quotient, the same as with the mask, bit for bit
    xt, rt = torch.tensor([x], dtype=torch.float64), torch.tensor([r], dtype=torch.float64)
    slope = secant.log_slope(TORCH, xt, rt)
    q = (xt - rt) / (xt + rt)
    near = q.abs() <= 0.5
    masked_atanh = torch.atanh(torch.where(near, q, torch.zeros_like(q)))
    masked = torch.where(
        near,
        2 / (xt + rt) * secant.ratio(TORCH, masked_atanh, q, 1.0),
        (torch.log(xt) - torch.log(rt)) / torch.where(near, torch.ones_like(xt), xt - rt),
    )
    assert torch.equal(slope, masked) or (slope.isnan().all() and masked.isnan().all())
    with np.errstate(all="ignore"):
        truth = (np.log(x) - np.log(r)) / (x - r) if x != r else 1 / x
    if math.isfinite(truth):
        assert slope.item() == pytest.approx(truth, rel=1e-14)
    else:
        assert not math.isfinite(slope.item())


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_closed_form_near_secants_are_the_exact_secant_near_zero(kind: str) -> None:
    # exact: tanh x − tanh r = tanh(Δ)(1 − tanh x tanh r); σ(x) − σ(r) = tanh(Δ/2)(σx + σr − 2σxσr).
    # The closed forms keep the series to Δ²: within Δ⁴ (relative) of these, plus rounding
    x = torch.linspace(-6, 6, 41, dtype=torch.float64)
    r = x - 1e-3
    delta = x - r  # (the Δ of the rounded r: the identities hold for it)
    if kind == "tanh":
        f = torch.tanh
        exact = torch.tanh(delta) / delta * (1 - f(x) * f(r))
    else:
        f = torch.sigmoid
        exact = torch.tanh(delta / 2) / delta * (f(x) + f(r) - 2 * f(x) * f(r))
    near = secant.NEAR_SECANTS[kind](TORCH, f(x), f(r), delta)
    eps = torch.finfo(torch.float64).eps
    # (1 − tanh x tanh r cancels where both saturate: its rounding is a few eps absolute)
    torch.testing.assert_close(near, exact, rtol=1e-3**4 + 16 * eps, atol=4 * eps)
    xp = _keras_ops()
    import keras

    k = keras.ops
    on_keras = secant.NEAR_SECANTS[kind](xp, *(k.convert_to_tensor(t.numpy()) for t in (f(x), f(r), delta)))
    # (keras has no fused addcmul: the bracket, of terms at most 2, rounds apart by a few eps absolute)
    np.testing.assert_allclose(k.convert_to_numpy(on_keras), near.numpy(), rtol=16 * eps, atol=8 * eps)


def test_still_zero_where_nothing_moves_and_the_slope_is_not_finite() -> None:
    x = torch.tensor([0.0, float("-inf"), 1.0, 0.0], dtype=torch.float64)
    r = torch.tensor([0.0, float("-inf"), 4.0, 1.0], dtype=torch.float64)
    m = secant.still_zero(TORCH, secant.sqrt_slope(TORCH, x, r), x, r)
    assert m.tolist() == [0.0, 0.0, 1 / 3, 1.0]


class _Undecided:
    """TORCH with its ``surely_*`` answering False, as a backend that cannot tell (Keras'): every branch computed."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("surely_"):
            return lambda *_: False
        return getattr(TORCH, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "formula, domain",
    [(secant.exp_slope, "any"), (secant.log_slope, "positive"), (secant.sqrt_slope, "positive"), (secant.expm1_slope, "any")],
)
def test_slopes_take_the_undecided_backends_values_whichever_forms_hold(formula: object, domain: str, dtype: torch.dtype) -> None:
    """Where the torch namespace can tell that one form holds throughout (every |h| near, none near, no zero
    difference, every slope finite), it skips the others: each entry's slope is the one the formula gives with
    every branch computed and the where's choosing, bit for bit, on tensors where each form holds throughout,
    where none does, and with equal, infinite and NaN entries. (exp's and expm1's slopes have one form: for them this
    is still_zero's skip alone.)"""
    g = torch.Generator().manual_seed(0)
    n = 256
    near = torch.rand(n, generator=g, dtype=dtype) * 0.5  # |x - r| small
    far = torch.rand(n, generator=g, dtype=dtype) * 6 + 2  # |x - r| large
    base = torch.rand(n, generator=g, dtype=dtype) * 3 + 0.5
    cases = [(base + near, base), (base + far, base), (base, base.clone())]
    mixed_x = torch.cat([c[0] for c in cases])
    mixed_r = torch.cat([c[1] for c in cases])
    special_x = torch.tensor([float("inf"), float("nan"), 1.0, float("-inf")] * 16, dtype=dtype)
    special_r = torch.tensor([float("inf"), 1.0, float("nan"), float("-inf")] * 16, dtype=dtype)
    cases += [(mixed_x, mixed_r), (torch.cat([mixed_x, special_x]), torch.cat([mixed_r, special_r]))]
    undecided = _Undecided()
    for x, r in cases:
        if domain == "any":
            x, r = x - 2, r - 2
        fast = secant.still_zero(TORCH, formula(TORCH, x, r), x, r)  # type: ignore[operator]
        full = secant.still_zero(undecided, formula(undecided, x, r), x, r)  # type: ignore[arg-type, operator]
        assert torch.equal(fast.isnan(), full.isnan())
        torch.testing.assert_close(fast, full, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rescale_multiplier_takes_the_undecided_backends_values(dtype: torch.dtype) -> None:
    """The Rescale multiplier of sqrt with its derivative where |Δ| is small: the same bits whether the namespace can
    tell that the derivative is finite (and skips isfinite) or computes everything, with the derivative finite
    throughout and infinite at 0."""
    g = torch.Generator().manual_seed(1)
    r = torch.rand(512, generator=g, dtype=dtype) + 0.1
    delta = torch.where(torch.arange(512) % 2 == 0, torch.full_like(r, 1e-4), torch.rand(512, generator=g, dtype=dtype))
    undecided = _Undecided()
    for x, ref in [
        (r + delta, r),
        (torch.cat([r + delta, torch.zeros(64, dtype=dtype)]), torch.cat([r, torch.zeros(64, dtype=dtype)])),
    ]:
        values = [
            secant.rescale_multiplier(xp, torch.sqrt(x), torch.sqrt(ref), x, ref, lambda at: 0.5 / torch.sqrt(at))  # type: ignore[arg-type]
            for xp in (TORCH, undecided)
        ]
        torch.testing.assert_close(values[0], values[1], rtol=0, atol=0, equal_nan=True)


def _defined_functions(path: Path) -> set[str]:
    """The functions ``path`` defines, less those that only bind the package's of the same name
    (a body that calls ``formulas.<name>``: the engine's signature for it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            delegates = any(isinstance(n, ast.Attribute) and n.attr == node.name for n in ast.walk(node))
            if not delegates:
                defined.add(node.name)
    return defined


def test_no_formula_of_the_package_is_defined_again_elsewhere() -> None:
    # `grep` finds no rule formula written twice: the package's formulas by name
    names: set[str] = set()
    for module in (secant, pairs, orderings, marks):
        names |= {n for n in module.__all__ if inspect.isfunction(getattr(module, n))}
    names -= {"rescaled"}
    assert {"exp_slope", "log_slope", "tanh_secant_near", "deciding", "position_ranks", "quotient_multipliers"} <= names
    twice = {}
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "formulas"):
            continue
        again = sorted(names & _defined_functions(path))
        if again:
            twice[str(path.relative_to(PACKAGE))] = again
    assert twice == {}


def test_both_engines_bind_the_package_slopes() -> None:
    from rnnshap.rules import secant as torch_rules

    for name, slope in secant.SLOPES_BY_NAME.items():
        assert torch_rules.SLOPES_BY_NAME[name].formula is slope  # type: ignore[attr-defined]
    pytest.importorskip("keras")
    from rnnshap.engines.keras import dual

    for name, slope in secant.SLOPES_BY_NAME.items():
        assert dual.SLOPES_BY_NAME[name][1].formula is slope


def test_bind_keeps_the_name_for_the_rules_repr() -> None:
    bound = formulas.bind(secant.exp_slope, TORCH)
    assert bound.__name__ == "exp_slope" and bound.formula is secant.exp_slope  # type: ignore[attr-defined]
    assert formulas.bind(secant.SLOPES_BY_NAME["log2"], TORCH).__name__ == "log2_slope"


def _both(fn, *arrays: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """``fn(xp, *arrays)`` on torch and on keras.ops (float64), as lists of numpy arrays."""
    on_torch = fn(TORCH, *(torch.tensor(a) for a in arrays))
    on_torch = [t.numpy() for t in (on_torch if isinstance(on_torch, tuple) else (on_torch,))]
    xp = _keras_ops()
    import keras

    on_keras = fn(xp, *(keras.ops.convert_to_tensor(a) for a in arrays))
    on_keras = [keras.ops.convert_to_numpy(t) for t in (on_keras if isinstance(on_keras, tuple) else (on_keras,))]
    return on_torch, on_keras


EPS = float(np.finfo(np.float64).eps)


def test_scaled_multipliers_add_up_to_the_product_and_fall_back_to_shapley_across_signs() -> None:
    rng = np.random.default_rng(1)
    c, c_r = rng.normal(size=12), rng.normal(size=12)
    s, s_r = rng.uniform(0.1, 5, 12), rng.uniform(0.1, 5, 12)
    s_r[:3] = [0.0, -1.0, 2.0]
    s[:3] = [1.0, 2.0, -0.5]
    (m_c, m_s), keras_side = _both(pairs.scaled_multipliers, c, s, c_r, s_r)
    np.testing.assert_allclose(m_c * (c - c_r) + m_s * (s - s_r), s * c - s_r * c_r, rtol=0, atol=16 * EPS * 25)
    np.testing.assert_array_equal(m_c[:3], (s[:3] + s_r[:3]) / 2)  # not of one sign: the Shapley rule
    np.testing.assert_array_equal(m_s[:3], (c[:3] + c_r[:3]) / 2)
    for a, b in zip((m_c, m_s), keras_side, strict=True):
        np.testing.assert_allclose(b, a, rtol=4 * EPS, atol=0)


def test_log_sum_multiplier_is_the_log_secant_and_finite_where_one_sum_underflows() -> None:
    total = np.array([2.0, 1.5, 1e-320, 3.0, 0.0])
    total_ref = np.array([2.5, 1.5, 1.0, 1e-320, 0.0])
    lse = np.array([np.log(2.0), np.log(1.5), -737.0, np.log(3.0), -np.inf])  # the stable logsumexp of the terms
    lse_ref = np.array([np.log(2.5), np.log(1.5), 0.0, -737.0, -np.inf])

    def multiplier(xp, t, t_r, lg, lg_r):  # type: ignore[no-untyped-def]
        return pairs.log_sum_multiplier(xp, t, t_r, pairs.stable_log(xp, t, lg), pairs.stable_log(xp, t_r, lg_r))

    (m,), (on_keras,) = _both(multiplier, total, total_ref, lse, lse_ref)
    assert m[0] == pytest.approx((np.log(2.0) - np.log(2.5)) / -0.5, rel=4 * EPS)
    assert m[1] == pytest.approx(1 / 1.5, rel=4 * EPS)
    assert m[2] == pytest.approx((-737.0 - 0.0) / (1e-320 - 1.0), rel=4 * EPS)  # the stable logs' quotient
    assert m[3] == pytest.approx((np.log(3.0) + 737.0) / (3.0 - 1e-320), rel=4 * EPS)
    assert m[4] == 0.0  # masked throughout
    np.testing.assert_allclose(on_keras, m, rtol=4 * EPS, atol=0)


def test_max_credits_add_up_to_the_change_of_the_maximum() -> None:
    y = np.array([3.0, 1.0, 2.0, -np.inf, np.inf])
    y_r = np.array([1.0, 3.0, 2.0, -np.inf, np.inf])
    for largest in (True, False):
        (wx, wr), keras_side = _both(lambda xp, a, b: pairs.max_credits(xp, a, b, largest), y, y_r)
        np.testing.assert_array_equal((wx + wr)[:3], y[:3] - y_r[:3])
        assert np.all(wx[2:] == 0) and np.all(wr[2:] == 0)  # unchanged, and the same infinity on both sides
        assert np.all((wx == 0) | (wr == 0))
        for a, b in zip((wx, wr), keras_side, strict=True):
            np.testing.assert_array_equal(b, a)


def test_inverse_delta_and_usable_quotient_are_zero_where_nothing_can_take_the_credit() -> None:
    delta = np.array([2.0, 0.0, np.inf, np.nan, -4.0])
    change = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    (inverse,), (on_keras,) = _both(pairs.inverse_delta, delta)
    np.testing.assert_array_equal(inverse, [0.5, 0.0, 0.0, 0.0, -0.25])
    np.testing.assert_array_equal(on_keras, inverse)
    (q,), (q_keras,) = _both(pairs.usable_quotient, change, delta)
    np.testing.assert_array_equal(q, [0.5, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(q_keras, q)


def test_midpoint_multipliers_are_the_two_player_shapley_values_over_delta() -> None:
    rng = np.random.default_rng(2)
    a, b, a_r, b_r = (rng.normal(size=8) for _ in range(4))
    (m_a, m_b), keras_side = _both(pairs.midpoint_multipliers, a, b, a_r, b_r)
    phi_a = ((a * b_r - a_r * b_r) + (a * b - a_r * b)) / 2  # enumerated: the two orders of the two players
    np.testing.assert_allclose(m_a * (a - a_r), phi_a, rtol=0, atol=16 * EPS * np.abs(a * b).max())
    np.testing.assert_allclose(m_a * (a - a_r) + m_b * (b - b_r), a * b - a_r * b_r, rtol=0, atol=16 * EPS * 10)
    for x, y in zip((m_a, m_b), keras_side, strict=True):
        np.testing.assert_array_equal(y, x)


def test_rescale_multiplier_takes_the_quotient_where_the_midpoint_derivative_is_not_finite() -> None:
    # a signed cube root straddling 0 by less than the threshold: its derivative at the midpoint 0 is
    # 0 · inf (autograd: NaN); the multiplier is the quotient there, so the value adds up (it was NaN on
    # the PyTorch side, the quotient on the Keras side: one formula now)
    from rnnshap.rules.elementwise import rescale_multiplier

    def g(p: list[torch.Tensor]) -> torch.Tensor:
        return torch.sign(p[0]) * p[0].abs() ** (1 / 3)

    x = torch.tensor([1e-7, 0.0], dtype=torch.float64)
    r = torch.tensor([-1e-7, 0.0], dtype=torch.float64)
    output, ref_output, m = rescale_multiplier(g, x, r)
    assert m[0] * (x[0] - r[0]) == pytest.approx(float(output[0] - ref_output[0]), rel=4 * EPS)
    assert m[1] == 0  # nothing moves and the derivative there is not finite: 0


def test_quotient_multipliers_are_the_two_player_shapley_values_over_delta() -> None:
    rng = np.random.default_rng(3)
    a, a_r = rng.normal(size=10), rng.normal(size=10)
    b, b_r = rng.uniform(0.2, 3, 10) * rng.choice([-1, 1], 10), rng.uniform(0.2, 3, 10)
    b_r[0] = b[0]  # b does not move: its multiplier's Δ is 0, its value φ_b = 0
    (m_a, m_b), keras_side = _both(pairs.quotient_multipliers, a, b, a_r, b_r)
    phi_a = ((a / b_r - a_r / b_r) + (a / b - a_r / b)) / 2  # enumerated: the two orders of the two players
    phi_b = ((a_r / b - a_r / b_r) + (a / b - a / b_r)) / 2
    scale = np.abs(a / b).max() + np.abs(a_r / b_r).max()
    np.testing.assert_allclose(m_a * (a - a_r), phi_a, rtol=0, atol=16 * EPS * scale)
    np.testing.assert_allclose(m_b * (b - b_r), phi_b, rtol=0, atol=16 * EPS * scale)
    for x, y in zip((m_a, m_b), keras_side, strict=True):
        np.testing.assert_array_equal(y, x)
    # a constant numerator (its own reference): -c / (b b_r), the change of c / b over Δb
    (m_const,), (m_const_keras,) = _both(lambda xp, u, u_r: pairs.quotient_multipliers(xp, 3.0, u, 3.0, u_r)[1], b, b_r)
    np.testing.assert_allclose(m_const, -3.0 / (b * b_r), rtol=4 * EPS, atol=0)
    np.testing.assert_allclose(m_const_keras, m_const, rtol=4 * EPS, atol=0)


def test_scaled_quotient_multipliers_add_up_and_fall_back_to_shapley_across_signs() -> None:
    rng = np.random.default_rng(4)
    a, a_r = rng.normal(size=10), rng.normal(size=10)
    b, b_r = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    b[:2] = [-1.0, 2.0]
    b_r[:2] = [0.5, -2.0]
    (m_a, m_b), keras_side = _both(pairs.scaled_quotient_multipliers, a, b, a_r, b_r)
    scale = np.abs(a / b).max() + np.abs(a_r / b_r).max()
    np.testing.assert_allclose(m_a * (a - a_r) + m_b * (b - b_r), a / b - a_r / b_r, rtol=0, atol=64 * EPS * scale)
    np.testing.assert_array_equal(m_a[2:], 2 / (b[2:] + b_r[2:]))
    shapley_a, shapley_b = pairs.quotient_multipliers(TORCH, *(torch.tensor(t[:2]) for t in (a, b, a_r, b_r)))
    np.testing.assert_array_equal(m_a[:2], shapley_a.numpy())  # not of one sign: the Shapley rule
    np.testing.assert_array_equal(m_b[:2], shapley_b.numpy())
    for x, y in zip((m_a, m_b), keras_side, strict=True):
        np.testing.assert_allclose(y, x, rtol=4 * EPS, atol=0)


def _division_truth(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The exact Shapley values (float64, enumerated) of x0 / x1 + 3 / x2 with one reference row."""
    truth = np.zeros_like(x)
    truth[:, 0] = ((x[:, 0] / r[1] - r[0] / r[1]) + (x[:, 0] / x[:, 1] - r[0] / x[:, 1])) / 2
    truth[:, 1] = ((r[0] / x[:, 1] - r[0] / r[1]) + (x[:, 0] / x[:, 1] - x[:, 0] / r[1])) / 2
    truth[:, 2] = 3 / x[:, 2] - 3 / r[2]
    return truth


def _division_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(4, 1)), rng.uniform(0.5, 2, (4, 2))], axis=1)
    return x, np.array([[0.3, 1.2, 0.8]])


def test_a_division_on_the_pytorch_engine_gets_the_enumerated_shapley_values() -> None:
    import rnnshap

    def division(t: torch.Tensor) -> torch.Tensor:
        return (t[:, 0] / t[:, 1] + 3 / t[:, 2]).unsqueeze(1)

    x, background = _division_data()
    values = rnnshap.DeepExplainer(Function(division), torch.tensor(background)).shap_values(torch.tensor(x))
    truth = _division_truth(x, background[0])
    np.testing.assert_allclose(np.asarray(values).reshape(truth.shape), truth, rtol=0, atol=16 * EPS * np.abs(truth).max())


def test_a_division_on_the_keras_engine_gets_the_enumerated_shapley_values() -> None:
    keras = pytest.importorskip("keras")
    import rnnshap

    inputs = keras.Input((3,), dtype="float64")
    ops = keras.ops
    out = keras.layers.Lambda(
        lambda t: ops.expand_dims(ops.divide(t[:, 0], t[:, 1]) + ops.true_divide(3.0, t[:, 2]), 1), dtype="float64"
    )(inputs)
    model = keras.Model(inputs, out)
    x, background = _division_data()
    weights_before = [w.copy() for w in model.get_weights()]
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    truth = _division_truth(x, background[0])
    np.testing.assert_allclose(np.asarray(values).reshape(truth.shape), truth, rtol=0, atol=16 * EPS * np.abs(truth).max())
    assert all(np.array_equal(a, b) for a, b in zip(weights_before, model.get_weights(), strict=True))


def test_the_bilinear_rules_take_their_midpoints_from_the_package() -> None:
    # the midpoint rule of a bilinear f (attention's scores and weighted values, matmul, einsum) is
    # formulas.pairs.midpoint_multipliers on both engines, not an average written again
    from rnnshap.rules import attention, elementwise

    sources = [inspect.getsource(attention.bilinear), inspect.getsource(elementwise.Bilinear.attribute)]
    if importlib.util.find_spec("keras") is not None:
        from rnnshap.engines.keras import dual

        sources.append(inspect.getsource(dual.bilinear))
    for source in sources:
        assert "pairs.midpoint_multipliers(" in source and "/ 2" not in source


def _ordered(t: np.ndarray, k: int, largest: bool) -> np.ndarray:
    return np.argsort(-t if largest else t, axis=-1, kind="stable")[..., :k]


def test_ranks_are_the_positions_order_lists_and_k_below_them() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 7))
    order = _ordered(x, 4, True)
    truth = np.full((3, 7), 4)
    for row in range(3):
        for rank, position in enumerate(order[row]):
            truth[row, position] = rank
    (on_torch,), (on_keras,) = _both(lambda xp, o: orderings.position_ranks(xp, o, 7), order)
    np.testing.assert_array_equal(on_torch, truth)
    np.testing.assert_array_equal(on_keras, truth)


@pytest.mark.parametrize("largest", [True, False])
def test_the_deciding_position_moved_past_the_rank_and_is_the_same_on_both_namespaces(largest: bool) -> None:
    rng = np.random.default_rng(7)
    x, r = rng.normal(size=(20, 6)).round(1), rng.normal(size=(20, 6)).round(1)  # (rounded: ties)
    r[0] = x[0]  # nothing moves: every rank's value is unchanged
    k = 6
    order_x, order_r = _ordered(x, k, largest), _ordered(r, k, largest)
    on_torch, on_keras = _both(lambda xp, *a: orderings.deciding(xp, *a, largest), x, r, order_x, order_r)
    for a, b in zip(on_torch, on_keras, strict=True):
        np.testing.assert_array_equal(b, a)
    at, delta, y, y_r = on_torch
    np.testing.assert_array_equal(delta, np.take_along_axis(x - r, at, -1))
    sign = 1 if largest else -1
    rows, ranks_ = np.nonzero(y != y_r)
    for row, j in zip(rows, ranks_, strict=True):  # the value moved: the deciding position moved past rank j
        i = at[row, j]
        rose = (y[row, j] > y_r[row, j]) == largest
        if rose:
            assert sign * x[row, i] >= sign * y[row, j] and sign * r[row, i] <= sign * y_r[row, j]
        else:
            assert sign * r[row, i] >= sign * y_r[row, j] and sign * x[row, i] <= sign * y[row, j]
        assert delta[row, j] != 0 or np.all(x[row] == r[row])
    # a value's change over the deciding Δ adds up: |Δ| there is at least the value's change
    moved = y != y_r
    assert np.all(np.abs(delta[moved]) >= np.abs(y - y_r)[moved] - 1e-12)


def test_an_index_no_position_moved_past_is_credited_to_the_row_that_moved_most() -> None:
    x = np.array([[1.0, 1.0, 0.5]])
    r = np.array([[1.0, 1.0, 0.0]])  # the same maximum, a tie picked differently on the two sides
    deciding, delta = np.array([[0]]), np.array([[0.0]])
    moved = np.array([[1.0]])  # (i_x − i_r: the index moved from 0 to 1)
    (at, factor), keras_side = _both(lambda xp, *a: orderings.index_credit(xp, *a), x, r, deciding, delta, moved)
    assert at.tolist() == [[2]] and factor.tolist() == [[1.0 / 0.5]]
    for a, b in zip((at, factor), keras_side, strict=True):
        np.testing.assert_array_equal(b, a)
    (at2, factor2), _ = _both(lambda xp, *a: orderings.index_credit(xp, *a), x, r, deciding, delta, np.zeros((1, 1)))
    assert at2.tolist() == [[0]] and factor2.tolist() == [[0.0]]  # the index did not move: nothing


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_the_closed_form_constants_are_the_near_secants(kind: str) -> None:
    # CLOSED_FORMS (μ, κ, c): (κ − (a_x − μ)(a_r − μ))(1 − cΔ²), the fused layers' form of NEAR_SECANTS
    rng = np.random.default_rng(8)
    u_r = rng.uniform(-4, 4, 200)
    delta = rng.uniform(-1e-2, 1e-2, 200)
    f = np.tanh if kind == "tanh" else (lambda t: 1 / (1 + np.exp(-t)))
    a_x, a_r = f(u_r + delta), f(u_r)
    mu, kappa, c = secant.CLOSED_FORMS[kind]
    constants = (kappa - (a_x - mu) * (a_r - mu)) * (1 - c * delta**2)
    near = secant.NEAR_SECANTS[kind](TORCH, *(torch.tensor(t) for t in (a_x, a_r, delta))).numpy()
    np.testing.assert_allclose(constants, near, rtol=0, atol=8 * EPS)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_the_fused_steps_where_form_is_nearer_the_float64_secant_than_the_blend(kind: str) -> None:
    # Why the fused recurrent step keeps two forms: the PyTorch engine's branch-free blend
    # (rnnshap.recurrent.fused.smooth_secant; its values must stay bit for bit) and the Keras engine's
    # where-form (the closed form below the threshold, the quotient above: near_rescale_multiplier, as
    # engines/keras/fused.py computes it). Against the exact secant of the same float32 inputs (float64, by
    # the identities tanh x − tanh r = tanh Δ (1 − tanh x tanh r), σx − σr = tanh(Δ/2)(σx + σr − 2σxσr)),
    # the where-form is much the nearer below the threshold (median ~10x), a little farther just above it
    # (ε < |Δ| ≤ 10ε: ~8% in the median), the same far above it, and nearer on average: moving Keras to
    # the blend would move its values away from the truth.
    from rnnshap.recurrent.fused import SIGMOID, TANH, smooth_secant

    rng = np.random.default_rng(0)
    u_r = rng.uniform(-4, 4, 40_000).astype(np.float32)
    u_x = (u_r + 10 ** rng.uniform(-6, -1, 40_000) * rng.choice([-1, 1], 40_000)).astype(np.float32)
    keep = u_x != u_r
    u_x, u_r = u_x[keep], u_r[keep]
    delta = u_x.astype(np.float64) - u_r.astype(np.float64)  # (exact)
    if kind == "tanh":
        x64, r64 = np.tanh(u_x.astype(np.float64)), np.tanh(u_r.astype(np.float64))
        truth = np.tanh(delta) * (1 - x64 * r64) / delta
        f, constants = torch.tanh, TANH
    else:
        x64, r64 = (1 / (1 + np.exp(-u.astype(np.float64))) for u in (u_x, u_r))
        truth = np.tanh(delta / 2) * (x64 + r64 - 2 * x64 * r64) / delta
        f, constants = torch.sigmoid, SIGMOID
    tx, tr = torch.tensor(u_x), torch.tensor(u_r)
    a_x, a_r = f(tx), f(tr)
    blend = smooth_secant(tx, tr, a_x, a_r, *constants).double().numpy()
    near = formulas.bind(secant.NEAR_SECANTS[kind], TORCH)
    where = secant.near_rescale_multiplier(TORCH, near, a_x, a_r, tx, tr).double().numpy()
    error_blend, error_where = np.abs(blend / truth - 1), np.abs(where / truth - 1)
    threshold = secant.small_delta_threshold(TORCH, torch.float32, True)
    about = (np.abs(delta) > threshold / 10) & (np.abs(delta) <= threshold)  # the blend mixes in the quotient here
    assert np.median(error_where[about]) < np.median(error_blend[about]) / 4
    assert error_where[about].max() < error_blend[about].max() / 4
    far = np.abs(delta) > 10 * threshold  # both are the quotient there, to (ε/Δ)⁴
    np.testing.assert_allclose(np.median(error_where[far]), np.median(error_blend[far]), rtol=0.05)
    assert error_where.mean() <= error_blend.mean()


def test_where_a_read_would_wait_the_formulas_skip_no_work_and_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an accelerator a read of a value stalls the host until the device has run its queue. The ``surely_*``
    tests only let a formula skip work whose result would be the same, so there (``readable`` False, as for a
    tensor on a GPU) they answer False without reading: the same values bit for bit, fewer reads."""
    import rnnshap
    from rnnshap.formulas import torch_ops

    torch.manual_seed(0)

    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    net = Composite(lambda m, x: m.head(torch.sqrt(torch.exp(z := m.encoder(x)).mean(1)) + torch.log1p(z.square()).mean(1)),
                    encoder=torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False),
                    head=torch.nn.Linear(8, 2))  # fmt: skip

    model, background, X = net.eval(), torch.randn(4, 6, 8), torch.randn(3, 6, 8)

    def explain() -> tuple[np.ndarray, int]:
        explainer = rnnshap.DeepExplainer(model, background)
        explainer.shap_values(X)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            values = explainer.shap_values(X, check_additivity=False)
        return values, sum(e.name == "aten::_local_scalar_dense" for e in prof.events())

    read, reads = explain()
    monkeypatch.setattr(torch_ops, "readable", lambda t: False)
    unread, fewer = explain()
    assert np.array_equal(read, unread)
    assert fewer < reads, (fewer, reads)


@pytest.mark.parametrize("name", ["lgamma", "digamma"])
def test_a_pair_across_a_pole_of_gamma_takes_the_quotient_not_the_midpoint_derivative(name: str) -> None:
    """lgamma and digamma have poles at 0, -1, -2, ...; a close pair on both sides of one (|Δ| under the smooth
    rules' threshold) has a finite derivative at its midpoint when the pole is off centre, far from the secant
    (at x = -0.9995, r = -1.0025 lgamma's midpoint slope times Δ is about 3 where f(x) - f(r) is 1.6). Δ·m must be
    f(x) - f(r) (float64) to float32's rounding of f, on the PyTorch engine end to end."""
    import rnnshap
    from rnnshap.formulas.secant import POLES_OF_GAMMA

    assert POLES_OF_GAMMA in next(e for e in ELEMENTWISE if e.name == name).kinks
    fn = getattr(torch, name)
    pole = torch.tensor([0.0, -1.0, -2.0, -5.0, -1.0, -3.0])
    x = (pole + torch.tensor([5e-4, 5e-4, -5e-4, 1e-3, -2e-3, 4e-4])).reshape(1, -1)
    r = (pole + torch.tensor([-2.5e-3, -3e-3, 2e-3, -2e-3, 1e-3, -1e-3])).reshape(1, -1)

    values = rnnshap.DeepExplainer(Function(fn), r).shap_values(x, check_additivity=False)  # (1, 6, 6): output j from input j
    own = np.diagonal(values[0], axis1=0, axis2=1)
    exact = (fn(x.double()) - fn(r.double()))[0].numpy()
    scale = np.maximum(np.abs(fn(x.double())), np.abs(fn(r.double())))[0].numpy()
    np.testing.assert_allclose(own, exact, rtol=0, atol=float(16 * np.finfo(np.float32).eps * scale.max()))
