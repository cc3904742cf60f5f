"""darts' ``ShapExplainer`` call, answered by rnnshap's exact values.

Change one import and keep the code that calls darts::

    from darts.explainability import ShapExplainer      # before
    from rnnshap.darts import ShapExplainer             # after

    explainer = ShapExplainer(model, background_num_samples=50)
    result = explainer.explain(series)                   # darts' ShapExplainabilityResult
    result.get_explanation(horizon=1)                    # a TimeSeries of values per darts feature name

See :mod:`rnnshap.forecasting.darts`. Importing this module imports darts (``pip install 'rnnshap[darts]'``).
"""

from .forecasting.darts import (
    ShapExplainabilityResult,
    ShapExplainer,
    ShapSingleExplainabilityResult,
    forecast_module,
    standard_errors,
)

__all__ = ["ShapExplainabilityResult", "ShapExplainer", "ShapSingleExplainabilityResult", "forecast_module", "standard_errors"]
