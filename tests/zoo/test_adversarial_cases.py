"""Adversarial cases, run as one harness: each case either adds up to the library's own call (exact) or
is refused with an rnnshap error; a silent wrong answer, or a foreign exception escaping, fails it. Each case also
states which of the two it gives today, so that a case that was exact and becomes refused (or the reverse) is seen.

The issue's 106 cases were a session's run on the foundation, classifier and JAX/Flax doors, not kept as code; this
harness holds the ones its text names, runnable with the libraries installed here (tiny models of chronos, tirex,
timesfm, MOMENT, TinyTimeMixer from tests/zoo/foundation_models.py; aeon and sktime; Flax NNX), beside an ordinary
case of each door. Each case skips where its library is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch

import rnnshap
from rnnshap.errors import RnnShapError

from . import foundation_models
from .test_foundation import (
    bolt_forecast,
    moment_forecast,
    tiny_timesfm,
    tirex_float32_forecast,
    tolerance,
    ttm_forecast,
    windows,
)

#: a case returns (rnnshap's total, the library's own answer) to compare, or raises
Answer = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Case:
    name: str
    library: str
    expect: str  # "exact" or "refused"
    run: Callable[[], Answer]


def _bolt() -> Any:
    return foundation_models.bolt()


def bolt_case(context: np.ndarray, background: np.ndarray | None, *, cast: Any = None, **options: Any) -> Answer:
    pipeline = _bolt()
    if cast is not None:
        pipeline.model.to(cast)
    result = rnnshap.foundation.explain(pipeline, context, prediction_length=3, background=background, **options)
    return result.total(), bolt_forecast(pipeline, context, 3)


def stuck(length: int) -> np.ndarray:
    return 5 + 1e-6 * np.random.default_rng(0).standard_normal((1, length))


def tirex_twin_case(background: np.ndarray) -> Answer:
    model = foundation_models.tirex()
    context = windows(16, [300])
    result = rnnshap.foundation.explain(model, context, prediction_length=4, background=background, precision="float32")
    return result.total(), tirex_float32_forecast(model, context, 4)


def timesfm_case(context: np.ndarray, **options: Any) -> Answer:
    model = tiny_timesfm()
    result = rnnshap.foundation.explain(model, context, prediction_length=2, background=windows(16, [0, 50]), **options)
    point, _ = model.forecast(horizon=2, inputs=list(context))
    return result.total()[..., 0] if result.total().ndim == 3 else result.total(), np.asarray(point, dtype=np.float64)


def moment_case(background: np.ndarray | None, **options: Any) -> Answer:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = foundation_models.moment()
    context = windows(20, [300])  # MOMENT reads its last 16 steps (seq_len), the 4 before trimmed
    result = rnnshap.foundation.explain(model, context, prediction_length=3, background=background, **options)
    return result.total()[..., 0], moment_forecast(model, context[:, 4:])[:, :3]


def ttm_case(context: np.ndarray, background: np.ndarray) -> Answer:
    model = foundation_models.ttm()
    result = rnnshap.foundation.explain(model, context, prediction_length=2, background=background)
    return result.total()[..., 0], ttm_forecast(model, context)[:, :2]


def panels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, 1, 12)) + y[:, None, None]
    return X, y.astype(str)


def aeon_case(fitted: bool, gap: bool = False) -> Answer:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    clf = KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean")
    X, y = panels(30, 0)
    if fitted:
        clf.fit(X, y)
    x = X[:2].copy()
    if gap:
        x[1, 0, 4] = np.nan
    result = rnnshap.aeon.explain(clf, x, background=X[10:14], budget=2**12 * 4)
    truth = clf.predict_proba(x) - clf.predict_proba(X[10:14]).mean(0)
    return result.values.reshape(2, -1, truth.shape[1]).sum(1), truth


def sktime_case() -> Answer:
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, _ = panels(30, 1)
    result = rnnshap.sktime.explain(KNeighborsTimeSeriesClassifier(), X[:2], background=X[10:14])
    return result.values, np.zeros(0)


def flax_case(token: int) -> Answer:
    import jax.numpy as jnp
    from flax import nnx

    from ..models.flax import FlaxComposite

    rngs = nnx.Rngs(0)
    model = FlaxComposite(lambda m, ids: m.head(m.rnn(m.embed(ids))[:, -1]), embed=nnx.Embed(11, 3, rngs=rngs),
                          rnn=nnx.RNN(nnx.GRUCell(3, 4, rngs=rngs)), head=nnx.Linear(4, 2, rngs=rngs))  # fmt: skip
    background = np.zeros((2, 6), np.int32)
    x = np.ones((2, 6), np.int32)
    x[1, 3] = token
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    out = np.asarray(model(jnp.asarray(x)), dtype=np.float64)
    base = np.asarray(model(jnp.asarray(background)), dtype=np.float64).mean(0)
    return values.sum(1), out - base


def jitted_case() -> Answer:
    import jax

    @jax.jit
    def f(x: Any) -> Any:
        return x.sum(1)

    rnnshap.DeepExplainer(f, np.zeros((2, 4), np.float32))
    return np.zeros(1), np.ones(1)  # never reached: a jitted function is refused


FLAT = np.full((1, 32), 3.0)
BACKGROUND = windows(32, [0, 50, 100])
GAPPY = BACKGROUND.copy()
GAPPY[1, 3] = np.nan
INF = windows(32, [300])
INF[0, 5] = np.inf
ALL_NAN = windows(16, [300, 320])
ALL_NAN[1] = np.nan

CASES = [
    Case("bolt, ordinary windows", "chronos", "exact", lambda: bolt_case(windows(32, [300, 340]), BACKGROUND)),
    Case("bolt, shapley mode", "chronos", "exact",
         lambda: bolt_case(windows(12, [300]), BACKGROUND[:, :12], method="shapley", players="patches", budget=1000)),
    Case("1. bolt, a flat window at 3.0", "chronos", "refused", lambda: bolt_case(FLAT, BACKGROUND)),
    Case("1. bolt, a flat window at 100", "chronos", "refused", lambda: bolt_case(FLAT / 3 * 100, BACKGROUND)),
    Case("2. bolt, a stuck-sensor background window", "chronos", "refused", lambda: bolt_case(windows(32, [300]), stuck(32))),
    Case("3. tirex float32 twin, a stuck-sensor background window", "tirex", "refused", lambda: tirex_twin_case(stuck(16))),
    Case("tirex float32 twin, ordinary windows", "tirex", "exact", lambda: tirex_twin_case(windows(16, [0, 50, 100]))),
    Case("4. bolt cast to bfloat16", "chronos", "refused", lambda: bolt_case(windows(16, [300]), BACKGROUND[:, :16],
                                                                         cast=torch.bfloat16)),
    Case("bolt cast to bfloat16, shapley mode", "chronos", "exact",
         lambda: bolt_case(windows(8, [300]), BACKGROUND[:2, :8], cast=torch.bfloat16, method="shapley", players="patches",
                           budget=100)),
    Case("5. timesfm, an all-NaN window", "timesfm", "refused", lambda: timesfm_case(ALL_NAN)),
    Case("5. timesfm, an all-NaN window, shapley mode", "timesfm", "refused",
         lambda: timesfm_case(ALL_NAN, method="shapley", players=8)),
    Case("6. moment, shapley mode without background", "momentfm", "refused",
         lambda: moment_case(None, method="shapley", players=8)),
    Case("moment, ordinary windows", "momentfm", "exact", lambda: moment_case(windows(24, [0, 50, 100]))),
    Case("a NaN in a background window", "chronos", "refused", lambda: bolt_case(windows(32, [300]), GAPPY)),
    Case("an inf in the context", "chronos", "refused", lambda: bolt_case(INF, BACKGROUND)),
    Case("ttm, a context shorter than its context_length", "tsfm_public", "refused",
         lambda: ttm_case(windows(8, [300]), windows(16, [0, 50]))),
    Case("ttm, ordinary windows", "tsfm_public", "exact", lambda: ttm_case(windows(16, [300]), windows(16, [0, 50]))),
    Case("ttm, a constant background", "tsfm_public", "refused", lambda: ttm_case(windows(16, [300]), np.full((2, 16), 4.0))),
    Case("7. flax, an out-of-vocabulary id", "flax", "refused", lambda: flax_case(11)),
    Case("flax, token ids in range", "flax", "exact", lambda: flax_case(7)),
    Case("a jitted function given to DeepExplainer", "jax", "refused", jitted_case),
    Case("8. aeon, an unfitted estimator", "aeon", "refused", lambda: aeon_case(False)),
    Case("10. aeon KNN, a panel with NaN", "aeon", "refused", lambda: aeon_case(True, gap=True)),
    Case("aeon KNN, ordinary panels", "aeon", "exact", lambda: aeon_case(True)),
    Case("9. sktime, an unfitted estimator", "sktime", "refused", sktime_case),
]  # fmt: skip


#: cases of half a minute on two cores, run by the slow run (-m slow)
SLOW = {"aeon KNN, ordinary panels"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name in SLOW else []) for c in CASES]
)
def test_each_case_is_exact_or_refused_by_an_rnnshap_error(case: Case) -> None:
    pytest.importorskip(case.library)
    try:
        total, truth = case.run()
    except RnnShapError:
        outcome = "refused"
    else:  # any other exception escapes and fails the case: a foreign error is not a refusal
        assert total.shape == truth.shape, f"{case.name}: {total.shape} against {truth.shape}"
        gap = float(np.abs(total - truth).max())
        assert gap <= tolerance(truth), f"{case.name}: a silent answer {gap:.3g} off the library's own"
        outcome = "exact"
    assert outcome == case.expect, f"{case.name}: {outcome}, {case.expect} before"
