"""``torch.linalg.solve_triangular`` (rnnshap/rules/triangular.py): each entry's value against the exact Shapley split of
the solve between its matrix and its right-hand side, written here in float64 from the equations; each operand's sum
against the two players' Shapley values enumerated through the model's own forward; the entries the solve does not
read get exactly 0."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import rnnshap

from ..models.torch import Function

N, R, n, k = 3, 4, 4, 2


def _matrices(rows: int, seed: int) -> torch.Tensor:
    """Matrices far from singular in both triangles, with random entries everywhere (the unread ones too)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, n, generator=g, dtype=torch.float64) * 0.3 + 2.0 * torch.eye(n, dtype=torch.float64)


def _rhs(rows: int, seed: int, left: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, *((n, k) if left else (k, n)), generator=g, dtype=torch.float64)


def _effective(a: np.ndarray, upper: bool, unit: bool) -> np.ndarray:
    """The matrix the solve reads: its triangle, ones on the diagonal where unitriangular."""
    part = np.triu(a, 1 if unit else 0) if upper else np.tril(a, -1 if unit else 0)
    return part + np.eye(n) if unit else part


def _expected(A, B, A_r, B_r, upper: bool, left: bool, unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """The split of one (sample, reference) pair per entry of A and of B, (n, n, outputs) and (*B's shape, outputs),
    from the equations (module docstring of rnnshap/rules/triangular.py)."""
    inv, inv_r = (np.linalg.inv(_effective(m, upper, unit)) for m in (A, A_r))
    d_a = _effective(A, upper, unit) - _effective(A_r, upper, unit)
    mid, d_b = (B + B_r) / 2, B - B_r
    if left:  # X = A⁻¹B: φ_A[i, j → p, q] = −A⁻¹[p, i] ΔA[i, j] (A_r⁻¹B̄)[j, q]; φ_B[i, q → p, q] = ½(A⁻¹ + A_r⁻¹)[p, i] ΔB[i, q]
        y = inv_r @ mid
        phi_a = -np.einsum("pi,ij,jq->ijpq", inv, d_a, y)
        phi_b = np.einsum("pi,iq,qs->iqps", (inv + inv_r) / 2, d_b, np.eye(k))
    else:  # X = BA⁻¹: φ_A[i, j → p, q] = −(B̄A_r⁻¹)[p, i] ΔA[i, j] A⁻¹[j, q]
        z = mid @ inv_r
        phi_a = -np.einsum("pi,ij,jq->ijpq", z, d_a, inv)
        phi_b = np.einsum("sp,pj,jq->pjsq", np.eye(k), d_b, (inv + inv_r) / 2)
    return phi_a.reshape(n, n, -1), phi_b.reshape(*B.shape, -1)


FORMS = [dict(upper=u, left=left, unitriangular=unit) for u, left, unit in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize("form", FORMS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_each_entry_gets_the_exact_split_of_the_solve(form: dict[str, bool]) -> None:
    left = form["left"]
    model = Function(lambda a, b: torch.linalg.solve_triangular(a, b, **form).flatten(1))
    background = [_matrices(R, 0), _rhs(R, 1, left)]
    X = [_matrices(N, 2), _rhs(N, 3, left)]
    got_a, got_b = rnnshap.DeepExplainer(model, background).shap_values(X)
    for s in range(N):
        pairs = [_expected(X[0][s].numpy(), X[1][s].numpy(), background[0][r].numpy(), background[1][r].numpy(),
                           form["upper"], left, form["unitriangular"]) for r in range(R)]  # fmt: skip
        want_a = np.mean([p[0] for p in pairs], axis=0)
        want_b = np.mean([p[1] for p in pairs], axis=0)
        np.testing.assert_allclose(got_a[s], want_a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got_b[s], want_b, rtol=0, atol=1e-12)
    unread = ~_effective(np.ones((n, n)), form["upper"], False).astype(bool)
    if form["unitriangular"]:
        unread |= np.eye(n, dtype=bool)
    assert np.all(got_a[:, unread] == 0.0)  # (entries the solve does not read: exactly 0)


def _output(model: torch.nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(*inputs).numpy()


def test_each_operands_sum_is_its_shapley_value_over_coalitions_of_the_models_own_forward() -> None:
    """With the matrix and the right-hand side as two players, each one's attributions summed are its Shapley value,
    the four coalitions of every pair run through the model's own forward."""
    model = Function(lambda a, b: torch.linalg.solve_triangular(a, b, upper=True).flatten(1))
    background, X = [_matrices(R, 4), _rhs(R, 5, True)], [_matrices(N, 6), _rhs(N, 7, True)]
    got_a, got_b = rnnshap.DeepExplainer(model, background).shap_values(X)
    for s in range(N):
        phi_a, phi_b = np.zeros(n * k), np.zeros(n * k)
        for r in range(R):
            a, b = (X[0][[s]], background[0][[r]]), (X[1][[s]], background[1][[r]])
            f = {(i, j): _output(model, a[1 - i], b[1 - j])[0] for i in (0, 1) for j in (0, 1)}
            phi_a += ((f[1, 1] - f[0, 1]) + (f[1, 0] - f[0, 0])) / 2 / R
            phi_b += ((f[1, 1] - f[1, 0]) + (f[0, 1] - f[0, 0])) / 2 / R
        np.testing.assert_allclose(got_a[s].reshape(n * n, -1).sum(0), phi_a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got_b[s].reshape(n * k, -1).sum(0), phi_b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("explained", ["both", "matrix", "rhs"])
def test_inside_a_model_the_values_add_up_to_its_own_outputs(explained: str) -> None:
    """A linear layer makes the operands (one of them a constant but for ``explained == "both"``), tanh after the
    solve: the values add up to the model's own outputs in float64."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, n * n + n * k, dtype=torch.float64)
    fixed = torch.randn(n, n + k, dtype=torch.float64)
    eye = 3.0 * torch.eye(n, dtype=torch.float64)

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = layer(x)
        a = h[:, : n * n].reshape(-1, n, n) + eye if explained != "rhs" else (fixed[:, :n] + eye).expand(len(x), n, n)
        b = h[:, n * n :].reshape(-1, n, k) if explained != "matrix" else fixed[:, n:].expand(len(x), n, k)
        return torch.tanh(torch.linalg.solve_triangular(a, b, upper=True)).flatten(1)

    model = Function(forward)
    background, X = torch.randn(R, 3, dtype=torch.float64), torch.randn(N, 3, dtype=torch.float64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    np.testing.assert_allclose(values.sum(1), _output(model, X) - _output(model, background).mean(0), rtol=0, atol=1e-12)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    np.testing.assert_array_equal(captured.shap_values(X), values)  # (the captured pass: the same rule, the same values)
    assert captured.pass_path.startswith("captured:"), captured.pass_path
