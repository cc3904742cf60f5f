"""Shared helpers for the rnnshap test suite.

Everything here is an *independent* reference: model outputs are computed by calling the model
directly, never through rnnshap, so that a test comparing rnnshap's attributions with them can
fail.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]

# Derandomised by default so that a run is reproducible; HYPOTHESIS_PROFILE=thorough explores more.
settings.register_profile(
    "rnnshap",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=500,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rnnshap"))

#: additivity tolerances of the issue: |Σφ − Δ| ≤ TOL·max(1, |Δ|)
ADDITIVITY_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    np.random.seed(0)


def as_list(x: object) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def model_outputs(model: torch.nn.Module, inputs: object) -> np.ndarray:
    """The model's outputs on ``inputs`` (a tensor or a list of tensors), as float64 ``(n, k)``."""
    tensors = [torch.as_tensor(t).clone() for t in as_list(inputs)]  # a model may modify its input in place
    with torch.no_grad():
        out = model(*tensors)
    return out.reshape(out.shape[0], -1).detach().to(torch.float64).cpu().numpy()


def output_gap(model: torch.nn.Module, X: object, background: object) -> np.ndarray:
    """f(x) − mean_r f(r) for every sample and output, float64 ``(n, k)``, computed directly."""
    return model_outputs(model, X) - model_outputs(model, background).mean(0, keepdims=True)


def phi_totals(values: ArrayOrList, n: int, k: int) -> np.ndarray:
    """Σφ over every input feature (and every input of a multi-input model): ``(n, k)``."""
    total = np.zeros((n, k))
    for v in as_list(values):
        v = np.asarray(v, dtype=np.float64)
        total += v.reshape(n, -1, k).sum(1)
    return total


def additivity_excess(values: ArrayOrList, model: torch.nn.Module, X: object, background: object) -> np.ndarray:
    """|Σφ − Δ| / max(1, |Δ|) per (sample, output)."""
    gap = output_gap(model, X, background)
    n, k = gap.shape
    return np.abs(phi_totals(values, n, k) - gap) / np.maximum(1.0, np.abs(gap))


def assert_additive(values: ArrayOrList, model: torch.nn.Module, X: object, background: object, dtype: torch.dtype) -> float:
    """Assert the issue's additivity tolerance; return the worst relative error."""
    excess = additivity_excess(values, model, X, background)
    worst = float(excess.max())
    tol = ADDITIVITY_TOL[dtype]
    assert worst <= tol, f"additivity error {worst:.3g} > {tol:g} (worst at {np.unravel_index(excess.argmax(), excess.shape)})"
    return worst


def relative_to_max(a: ArrayOrList, b: ArrayOrList) -> float:
    """max|a − b| / max|b| over every array of a (list of) array(s)."""
    diff = max(
        float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
        for x, y in zip(as_list(a), as_list(b), strict=True)
    )
    scale = max(float(np.abs(np.asarray(y, np.float64)).max()) for y in as_list(b))
    return diff / max(scale, np.finfo(np.float64).tiny)
