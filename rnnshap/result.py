"""The one result contract every door keeps: :class:`AttributionResult`.

Every door's result is an :class:`AttributionResult` (a subclass adds what the door knows: a forecast's quantile
levels, a classifier's classes, the variables of a pytorch-forecasting model) and holds, under the same names:

- ``values``: the attributions, laid out as the door documents (an array; a list with one array per input; a
  dict with one array per part);
- ``outputs``: the explained outputs, what the values of each sample add up to from ``base_values`` (the model's,
  the forecast's, ``predict_proba``'s). The names doors used before (``forecast``, ``prediction``) are read-only
  properties equal to it;
- ``base_values``: what the values add up from;
- ``stderr``: the Shapley mode's standard errors, **shaped like ``values``** (the same structure: an array of the
  same shape, a list of arrays of the values' shapes, a dict with the values' keys), 0 where exact; None for
  DeepSHAP, which has none (:func:`stderr_matches` checks the rule, and every result checks it when built);
- ``exact``: per sample, whether the values are exact Shapley values (every coalition enumerated); None for DeepSHAP
  (exact in sum: the values add up to the outputs, but are not Shapley values);
- ``method``: ``"deepshap"`` or ``"shapley"``; ``n_evals``: per sample, the rows run through the model (Shapley mode);
- the game: ``players`` (what a value is given to: ``"cells"``, ``"steps"``, ``"patches"``...) and ``absent``,
  what stands in for an absent player: ``"background"`` (the background rows' values) or ``"dropped"`` (given to the
  model as missing);
- ``background``: the background actually used, in words (:mod:`rnnshap.backgrounds` writes each door's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: what stands in for an absent player, by name
ABSENT = {
    "background": "the background rows' values",
    "dropped": "missing (NaN), the way the model takes a missing value",
}


def stderr_matches(values: Any, stderr: Any) -> bool:
    """Whether ``stderr`` is shaped like ``values`` (None always is): an array of the same shape, a list of as many
    arrays each shaped like its value, a dict with the same keys each shaped like its value."""
    if stderr is None:
        return True
    if isinstance(values, dict):
        return (
            isinstance(stderr, dict) and set(stderr) == set(values) and all(stderr_matches(values[k], stderr[k]) for k in values)
        )
    if isinstance(values, (list, tuple)):
        return (
            isinstance(stderr, (list, tuple))
            and len(stderr) == len(values)
            and all(stderr_matches(v, e) for v, e in zip(values, stderr, strict=True))
        )
    return not isinstance(stderr, (dict, list, tuple)) and np.shape(stderr) == np.shape(values)


@dataclass(kw_only=True)
class AttributionResult:
    """What every door returns: the values, the outputs they explain, where they start, their standard errors, and
    how they were obtained (the method, the background, the game). See :mod:`rnnshap.result`."""

    #: the attributions, laid out as the door documents
    values: Any
    #: the explained outputs: each sample's values add up to ``outputs - base_values``
    outputs: Any
    #: what the values add up from (the mean output over the background, or the output with every player absent)
    base_values: Any
    #: "deepshap" or "shapley"
    method: str
    #: the Shapley mode's standard errors, shaped like ``values`` (0 where exact); None for DeepSHAP
    stderr: Any = None
    #: per sample: whether the values are exact Shapley values (Shapley mode, every coalition enumerated); None for
    #: DeepSHAP
    exact: Any = None
    #: per sample: the rows run through the model (Shapley mode); None for DeepSHAP
    n_evals: Any = None
    #: the game's players: what a value is given to ("cells", "steps", "channels", "patches", "windows of 4", ...)
    players: str = "cells"
    #: the game: what stands in for an absent player, a key of :data:`ABSENT` ("background" or "dropped")
    absent: str = "background"
    #: the background actually used, in words ("" where the door did not say)
    background: str = ""

    def __post_init__(self) -> None:
        if not stderr_matches(self.values, self.stderr):
            raise ValueError(f"{type(self).__name__}: stderr is not shaped like values (the result contract, rnnshap/result.py)")
        if self.absent not in ABSENT:
            raise ValueError(f"{type(self).__name__}: absent={self.absent!r}, not one of {sorted(ABSENT)}")


__all__ = ["ABSENT", "AttributionResult", "stderr_matches"]
