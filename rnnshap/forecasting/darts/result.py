"""The standard errors of a Shapley-mode darts result, read back as darts' own ``TimeSeries``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError
from .library import ShapSingleExplainabilityResult, TimeSeries


def standard_errors(result: Any, horizon: int | None = None, component: str | None = None) -> TimeSeries | list[TimeSeries]:
    """The standard errors of a Shapley-mode result, as a ``TimeSeries`` shaped like ``get_explanation``'s
    (0 where the values are exact); for a ``ShapSingleExplainabilityResult`` leave ``horizon`` out.

    Raises InputError for a DeepSHAP result (it has no standard errors: its values are exact in sum).

    Example::

        result = ShapExplainer(model, method="shapley", budget=2000, random_state=0).explain(series)
        standard_errors(result, horizon=1)   # a TimeSeries, one column per darts feature name
    """

    def one(e: Any, values: TimeSeries) -> TimeSeries:
        if e.error_std is None:
            raise InputError("this result has no standard errors: explain with method='shapley'")
        return TimeSeries(times=values.time_index, values=np.asarray(e.error_std), components=values.components)

    if isinstance(result, ShapSingleExplainabilityResult):
        return one(result.get_shap_explanation_object(component), result.get_explanation(component))
    if horizon is None:
        raise InputError("give the horizon of the standard errors")
    objects, values = result.get_shap_explanation_object(horizon, component), result.get_explanation(horizon, component)
    if isinstance(objects, list):
        return [one(e, v) for e, v in zip(objects, values, strict=True)]
    return one(objects, values)
