"""The background each door uses when none is given, written once, and the words every result states it in.

A background sets the reference the values are measured from (``base_values``: the mean output over it, or the output
with every player absent). The front doors require one; each library door has a default that fits its data, named
here (:data:`DEFAULTS`) and stated in its result's ``background`` (:func:`stated`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

#: per door, the background it uses when none is given
DEFAULTS = {
    "DeepExplainer": "none: a background is required",
    "ShapleyExplainer": "none: a background is required",
    "foundation": (
        "none: method='deepshap' requires background windows; method='shapley' drops the absent context (given to the "
        "model as missing, NaN)"
    ),
    "classifiers": "the explained panels themselves (refused for a single panel)",
    "pytorch-forecasting": "the data's own windows (at most n_background, drawn at random with seed 0)",
    "neuralforecast": "one all-zero window per input tensor",
    "darts": "the series the model was fit on, as darts' ShapExplainer takes them (at most 100 windows drawn, seeded)",
}


def stated(door: str, rows: int | None, given: bool) -> str:
    """The background a result states: the number of rows used, and whether they were given or ``door``'s default
    (``rows=None``: none, the absent players dropped)."""
    if rows is None:
        return f"dropped (no background rows; the default of {door}: {DEFAULTS[door]})"
    count = f"{rows} row{'s' * (rows != 1)}"
    return f"{count} given" if given else f"{count}: the default of {door}, {DEFAULTS[door]}"


# -- the classifier doors' default: the explained panels themselves ----------------------------------------------
def panels_or_own(X: np.ndarray, background: np.ndarray | None, what: str) -> np.ndarray:
    """The classifier doors' background: the panels given, checked against ``X``'s channels and length, else ``X``
    itself."""
    if background is None:
        return X
    if background.shape[1:] != X.shape[1:]:
        raise InputError(
            f"the background panels are shaped {background.shape} (n, channels, time) and X {X.shape}: channels and "
            f"length must agree ({what})"
        )
    return background


def check_own_reference(background: Any, n: int) -> None:
    """Refuse ``background=None`` for one panel: the reference would be the panel itself, every value 0."""
    if background is None and n == 1:
        raise InputError(
            "background=None takes the explained panels as the reference: for one panel that is the panel itself, so "
            "every value would be 0 whatever the estimator does. Give background panels (a few dozen training panels)"
        )


__all__ = ["DEFAULTS", "check_own_reference", "panels_or_own", "stated"]
