"""pytorch-forecasting's models explained exactly, per named variable: ``explain(model, data)``.

>>> from rnnshap.pytorch_forecasting import explain
>>> result = explain(tft, validation)                   # doctest: +SKIP
>>> result.plot_interpretation()["encoder_variables"]    # doctest: +SKIP

The adapter lives in :mod:`rnnshap.forecasting.pytorch_forecasting`; pytorch-forecasting is imported
only when a model is explained (``pip install 'rnnshap[pytorch-forecasting]'``).
"""

from .forecasting.pytorch_forecasting import MODES, ForecastExplanation, VariableExplanation, explain

__all__ = ["MODES", "ForecastExplanation", "VariableExplanation", "explain"]
