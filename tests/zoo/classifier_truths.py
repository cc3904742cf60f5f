"""Truths for the classifier-toolkit tests (rnnshap.aeon, rnnshap.sktime), independent of rnnshap:
Shapley values enumerated from the definition of the game on the estimator's own ``predict_proba``,

    v(S) = mean over background panels r of predict_proba(x on the players in S, r elsewhere),
    φ_i = Σ_{S ∌ i} |S|! (P − |S| − 1)! / P! · (v(S ∪ i) − v(S)),

and the additivity of values against ``predict_proba``'s differences from its background mean."""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from ..conftest import additivity_tol


def enumerated(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, background: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact Shapley values of one panel x (channels, time) for player ids shaped like it: (P, K)."""
    P = int(ids.max()) + 1
    coalitions = list(itertools.product([False, True], repeat=P))
    rows = []
    for coalition in coalitions:
        take = np.asarray(coalition)[ids]
        rows.append(np.where(take[None], x[None], background))
    outputs = np.asarray(predict(np.concatenate(rows)), np.float64).reshape(len(coalitions), len(background), -1).mean(1)
    v = {c: outputs[i] for i, c in enumerate(coalitions)}
    values = np.zeros((P, outputs.shape[1]))
    for i in range(P):
        for c in coalitions:
            if c[i]:
                continue
            size = sum(c)
            weight = math.factorial(size) * math.factorial(P - size - 1) / math.factorial(P)
            with_i = tuple(True if j == i else c[j] for j in range(P))
            values[i] += weight * (v[with_i] - v[c])
    return values


def assert_adds_up(result, dtype: str = "float32") -> None:
    """The values of each sample and class add up to predict_proba(x) − its background mean (``outputs`` and
    ``base_values`` are the estimator's own), to the tolerance of the dtype the network computes in."""
    totals = result.values.sum((1, 2))
    gap = result.outputs - result.base_values
    scale = np.maximum(1.0, np.abs(result.values).sum((1, 2)))
    worst = float((np.abs(totals - gap) / scale).max())
    assert worst <= additivity_tol(dtype), worst
