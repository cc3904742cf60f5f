"""darts: ``ShapExplainer`` with darts' call and result types, answered by rnnshap (exact in sum).

``rnnshap.darts.ShapExplainer`` is a subclass of ``darts.explainability.ShapExplainer``: the same
constructor arguments (model, background series and covariates, ``background_num_samples``,
``batch_size``), the same ``explain()``, ``explain_single()``, ``summary_plot()`` and ``force_plot()``,
and darts' own ``ShapExplainabilityResult`` / ``ShapSingleExplainabilityResult`` with darts' feature
names (``create_lagged_component_names``: ``Y_target_lag-2``, ``month_futcov_lag0``). What differs:

- the values come from rnnshap (:func:`rnnshap.forecasting.attribute`): DeepSHAP by default (one pass;
  the values of each forecast plus its base value add up to darts' own forecast: ``predict`` for
  ``explain_single``, ``historical_forecasts(retrain=False)`` at each window of ``explain``), or
  the Shapley values of the lag players (``method="shapley"``, ``budget=``, ``random_state=``), exact where
  the budget covers every coalition, else unbiased estimates with standard errors;
- the explained function is darts' own prediction code, ``PLForecastingModule._get_batch_prediction`` on
  the windows of darts' own inference dataset: with ``n`` beyond ``output_chunk_length`` it is the
  auto-regressive forecast of ``predict(n)`` (the model's predictions fed back), one function of the input
  window and of the covariates ``predict(n)`` reads, explained exactly for every horizon up to ``n``;
- a likelihood model is explained through its likelihood parameters (quantiles, distribution
  parameters: darts' ``predict_likelihood_parameters=True`` outputs), never a sampled forecast;
- where the user names a shap method (``shap_method=``) or gives a model that is not a darts network (darts'
  regression models), darts' own explainer answers, as before; ``result.explained_by`` says which answered;
- a fitted darts ``Scaler`` of the target (``target_scaler=``) may be given: its affine map is then part of
  the explained function, so that the values are in the units of the unscaled series and add up to
  ``target_scaler.inverse_transform(model.predict(n, series=target_scaler.transform(series)))``.

The door is a package, split by what it holds: the door itself, darts' ``ShapExplainer`` subclass
(:mod:`~rnnshap.forecasting.darts.explainer`); darts' shap adapter with rnnshap's values, its window layout and
window splitting (:mod:`~rnnshap.forecasting.darts.adapter`); the function explained, darts' own prediction loop
(:mod:`~rnnshap.forecasting.darts.forecast`); the standard errors of a result (:mod:`~rnnshap.forecasting.darts.result`);
and darts' names, imported once with the install advice where darts is missing
(:mod:`~rnnshap.forecasting.darts.library`). It imports darts; ``import rnnshap`` does not.
"""

from __future__ import annotations

from .. import METHODS
from .adapter import BACKGROUND_SEED as BACKGROUND_SEED
from .adapter import DEFAULT_BACKGROUND_SAMPLES as DEFAULT_BACKGROUND_SAMPLES
from .explainer import SUMMARY_PLOT_POINTS as SUMMARY_PLOT_POINTS
from .explainer import ShapExplainer
from .forecast import FIELDS as FIELDS
from .forecast import forecast_module
from .library import ShapExplainabilityResult, ShapSingleExplainabilityResult
from .result import standard_errors

__all__ = [
    "METHODS", "ShapExplainabilityResult", "ShapExplainer", "ShapSingleExplainabilityResult", "forecast_module",
    "standard_errors",
]  # fmt: skip
