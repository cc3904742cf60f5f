"""neuralforecast's ``NeuralForecast.explain`` call, answered with rnnshap's exact values.

Change the call and keep the rest::

    fcsts_df, explanations = nf.explain(horizons=[0, 1])                     # Captum, inexact, skips RNNs
    fcsts_df, explanations = rnnshap.neuralforecast.explain(nf, horizons=[0, 1])   # rnnshap, exact

See :mod:`rnnshap.forecasting.neuralforecast`. Importing this module does not import neuralforecast;
calling :func:`explain` does.
"""

from __future__ import annotations

from .forecasting.neuralforecast import explain, supported

__all__ = ["explain", "supported"]
