"""darts' and shap's names the darts door uses, imported in one place: where darts (or shap) is missing, the
install advice is said here, whichever part of the door is imported first. darts' private names are given
public aliases here so that the door's modules import none of them."""

from __future__ import annotations

try:
    import pandas  # noqa: F401 - darts' dependency, checked here for the advice
    import shap
    import torch  # noqa: F401 - checked here for the advice
    from darts import TimeSeries
    from darts.explainability.explainability import _ForecastingModelExplainer as ForecastingModelExplainer
    from darts.explainability.explainability_result import ShapExplainabilityResult, ShapSingleExplainabilityResult
    from darts.explainability.shap_adapters.shap_adapter import MAX_BACKGROUND_SAMPLE, MIN_BACKGROUND_SAMPLE, DartsShapExplanation
    from darts.explainability.shap_adapters.torch_shap_adapter import TorchShapAdapter
    from darts.explainability.shap_explainer import ShapExplainer as DartsShapExplainer
    from darts.explainability.utils import process_horizons_and_targets
    from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel
    from darts.utils.data import TorchInferenceBatch
    from darts.utils.data.tabularization import create_lagged_component_names
    from darts.utils.historical_forecasts.optimized_historical_forecasts_torch import (
        _create_dataset_bounds as create_dataset_bounds,
    )
    from darts.utils.ts_utils import series2seq
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"rnnshap.darts needs darts (and shap, which darts' explainers use): pip install 'rnnshap[darts]' ({_error})"
    ) from _error

__all__ = [
    "MAX_BACKGROUND_SAMPLE", "MIN_BACKGROUND_SAMPLE", "DartsShapExplainer", "DartsShapExplanation", "ForecastingModelExplainer",
    "ShapExplainabilityResult", "ShapSingleExplainabilityResult", "TimeSeries", "TorchForecastingModel", "TorchInferenceBatch",
    "TorchShapAdapter", "create_dataset_bounds", "create_lagged_component_names", "process_horizons_and_targets", "series2seq",
    "shap",
]  # fmt: skip
