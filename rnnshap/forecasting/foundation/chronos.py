"""chronos-forecasting's Chronos-Bolt and Chronos-2: ``pipeline.predict_quantiles(context, prediction_length, quantile_levels)``.

Chronos-Bolt: ``predict_quantiles`` is torch from end to end (``predict`` under ``no_grad``: the context cut to
its last ``context_length`` steps, ``InstanceNorm`` with ``nanmean`` and a 1e-5 floor, NaN patches masked, the
T5 encoder-decoder, and past the model's own ``prediction_length`` the rollout that feeds every quantile back
and takes ``torch.quantile`` of the results), so DeepSHAP explains that very call: the module is the pipeline's
own ``predict_quantiles`` on the window tensor. A missing value is NaN, as the pipeline takes it (left padding
of shorter series included).

Chronos-2: ``predict_quantiles`` prepares its inputs in numpy (``Chronos2Dataset``), so the module is the batch
the dataset builds, given to the pipeline's own ``_predict_batch`` (the model's forward under ``no_grad``, its
long-horizon unrolling); ``covariates`` are explained beside the target (past covariates: rows of the same
group, as the dataset lays them out).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter
from .chronos_pipeline import ChronosPipelineAdapter


def chronos_adapter(model: Any) -> type[Adapter]:
    """The adapter class for a chronos pipeline or the model inside it."""
    from chronos import ChronosBoltPipeline
    from chronos.chronos_bolt import ChronosBoltModelForForecasting

    if isinstance(model, (ChronosBoltPipeline, ChronosBoltModelForForecasting)):
        return ChronosBoltAdapter
    from chronos import Chronos2Pipeline
    from chronos.chronos2 import Chronos2Model

    if isinstance(model, (Chronos2Pipeline, Chronos2Model)):
        from .chronos2 import Chronos2Adapter

        return Chronos2Adapter
    raise InputError(
        f"rnnshap.foundation takes chronos' ChronosBoltPipeline and Chronos2Pipeline (or the model inside); got "
        f"{type(model).__name__}. The original Chronos (ChronosPipeline) samples token sequences: its forecast is random, "
        "which DeepSHAP and Shapley values of a fixed function do not explain"
    )


class ChronosBoltAdapter(ChronosPipelineAdapter):
    label = "Chronos-Bolt"

    def __init__(self, model: Any) -> None:
        from chronos import ChronosBoltPipeline

        pipeline = model if isinstance(model, ChronosBoltPipeline) else ChronosBoltPipeline(model)
        super().__init__(pipeline)
        self.pipeline = pipeline

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        trained = [float(q) for q in self.pipeline.quantiles]
        if requested is None:
            return trained
        levels = [float(q) for q in requested]
        if not levels or any(not 0 < q < 1 for q in levels):
            raise InputError(f"quantile_levels: give levels in (0, 1); {self.label} was trained on {trained}")
        return levels

    def _predict(self, x: Any, prediction_length: int, levels: list[Any]) -> Any:
        with warnings.catch_warnings():  # the pipeline's advice on long horizons is given once, by library_forecast
            warnings.simplefilter("ignore")
            quantiles, _ = self.pipeline.predict_quantiles(x, prediction_length=prediction_length, quantile_levels=levels)
        return quantiles

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        import torch

        quantiles, _ = self.pipeline.predict_quantiles(
            torch.as_tensor(windows, dtype=torch.float32), prediction_length=prediction_length, quantile_levels=levels
        )
        return quantiles.double().cpu().numpy()

    def refusal_note(self, prediction_length: int, levels: Sequence[Any] = ()) -> str:
        own = int(self.pipeline.model_prediction_length)
        notes = []
        if prediction_length > own:
            notes.append(
                f"prediction_length={prediction_length} is past the model's own {own} steps: predict() rolls out by feeding "
                f"every quantile back and takes torch.quantile of the results; prediction_length<={own} is one forward"
            )
        trained = [float(q) for q in self.pipeline.quantiles]
        other = [q for q in levels if float(q) not in trained]  # predict_quantiles' own test: exact membership
        if other:
            notes.append(
                f"quantile_levels {other} are not among the levels {trained} the model forecasts: predict_quantiles "
                "interpolates them with torch.quantile; levels among them are columns of one forward"
            )
        return f" ({'; '.join(notes)})" if notes else ""

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return windows  # NaN is the pipeline's missing value: masked out by the model, attributed nothing

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch
        from torch import nn

        adapter = self

        class Forecast(nn.Module):
            """``pipeline.predict_quantiles(x, prediction_length, quantile_levels)[0]``: (n, H·Q)."""

            dtype = torch.float32

            def __init__(self) -> None:
                super().__init__()
                self.net = adapter.pipeline.model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return adapter._predict(x, prediction_length, levels).reshape(x.shape[0], -1)

        return Forecast()
