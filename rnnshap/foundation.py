"""Pretrained foundation forecasters (TiRex, Chronos-Bolt, Chronos-2, TimesFM 2.5, TimesFM 3, TinyTimeMixer, MOMENT,
Moirai 2, Toto, Toto 2) explained in the objects their libraries return, exactly::

    import rnnshap.foundation
    result = rnnshap.foundation.explain(pipeline, context, prediction_length=12, background=windows)
    result.values        # (n, L, 12, Q): per context step, forecast step and quantile
    result.total()       # == result.forecast, the library's own forecast on the same context
    result.plot()

See :mod:`rnnshap.forecasting.foundation` and docs/foundation.md. Each library is imported only when its model
is explained (``pip install 'rnnshap[foundation]'``; TinyTimeMixer's granite-tsfm, which pins transformers 4.56
beside torch 2.13, with ``pip install 'rnnshap[foundation-ttm]'``).
"""

from .forecasting.foundation import ForecastExplainer, ForecastExplanation, explain

__all__ = ["ForecastExplainer", "ForecastExplanation", "explain"]
