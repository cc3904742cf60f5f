"""granite-tsfm's ``TinyTimeMixerForPrediction`` (TTM): ``model(past_values, past_observed_mask).prediction_outputs``.

The forecast is the model's own forward, its std scaler inside: windows longer than ``context_length`` are
cut to their last ``context_length`` steps by the forward itself (the earlier steps get exact zeros), shorter
ones are refused as the model refuses them. A missing value is given the way granite-tsfm's datasets give it:
0 in ``past_values`` and False in ``past_observed_mask`` (``~isnan``), which the scaler leaves out of its
statistics. One column: the point forecast (``"point"``) of the first channel of a univariate model.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter, library_missing, point_levels


class TinyTimeMixerAdapter(Adapter):
    distribution = "granite-tsfm"
    label = "TinyTimeMixer"
    drops = "past_observed_mask=False (the value set to 0)"
    # not the foundation extra: granite-tsfm 0.3.2, the release that installs beside torch 2.13, pins transformers 4.56
    extra = "foundation-ttm"

    def __init__(self, model: Any) -> None:
        try:
            from tsfm_public.models.tinytimemixer import TinyTimeMixerForPrediction
        except ImportError as error:
            raise library_missing(self, error) from error

        if not isinstance(model, TinyTimeMixerForPrediction):
            raise InputError(f"rnnshap.foundation takes granite-tsfm's TinyTimeMixerForPrediction; got {type(model).__name__}")
        config = model.config
        if int(config.num_input_channels) != 1:
            raise InputError(
                f"{self.label} with {config.num_input_channels} input channels: rnnshap.foundation explains univariate "
                "forecasters (num_input_channels=1); for channel mixing use rnnshap.DeepExplainer on the model with "
                "(n, L, C) windows (docs/recipes.md)"
            )
        if getattr(model, "distribution_output", None) is not None:
            raise InputError(f"{self.label} with a distribution head (loss='nll'): rnnshap.foundation explains its point head")
        super().__init__(model)

    def context_length(self) -> int:
        config = self.model.config
        return int(config.masked_context_length or config.context_length)

    def patch_length(self) -> int:
        return int(self.model.config.patch_length)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        return point_levels(requested, self.label)

    def torch_modules(self) -> list[Any]:
        return [self.model]

    def _horizon(self, prediction_length: int) -> int:
        produced = int(self.model.config.prediction_filter_length or self.model.config.prediction_length)
        if prediction_length > produced:
            raise InputError(
                f"prediction_length={prediction_length}: this {self.label} forecasts {produced} steps (its prediction_length)"
            )
        return prediction_length

    def _check_length(self, length: int) -> None:
        if length < self.context_length():
            need = self.context_length()
            raise InputError(
                f"{self.label} reads {need} steps (context_length) and refuses shorter context; the context has {length}. "
                f"Give windows of at least {need} steps (more of the series' past), or pad them in front with NaN to {need} "
                "steps (missing: given to the model as past_observed_mask=False, left out of its scaling, and attributed "
                f"exactly 0): np.pad(context, ((0, 0), ({need} - L, 0)), constant_values=np.nan)"
            )

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return windows  # NaN: past_observed_mask=False, left out of the scaler's statistics

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        import torch

        H = self._horizon(prediction_length)
        self._check_length(windows.shape[1])
        dtype = next(self.model.parameters()).dtype
        windows = windows[:, -self.context_length() :]  # the forward cuts past_values so, but not past_observed_mask
        missing = np.isnan(windows)
        past = torch.as_tensor(np.where(missing, 0.0, windows), dtype=dtype)[..., None]
        observed = torch.as_tensor(~missing)[..., None]
        with torch.no_grad():
            out = self.model(past_values=past, past_observed_mask=observed).prediction_outputs
        return out[:, :H, :1].double().cpu().numpy()

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch
        from torch import nn

        H = self._horizon(prediction_length)
        adapter = self

        class Forecast(nn.Module):
            """``model(past_values, past_observed_mask).prediction_outputs``, the first H steps: (n, H)."""

            def __init__(self) -> None:
                super().__init__()
                self.net = adapter.model
                self.dtype = next(adapter.model.parameters()).dtype

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                adapter._check_length(x.shape[1])
                x = x[:, x.shape[1] - adapter.context_length() :, None]
                observed = ~torch.isnan(x)  # granite-tsfm's datasets: past_observed_mask = ~isnan, the value 0
                past = torch.nan_to_num(x, nan=0.0)
                return self.net(past_values=past, past_observed_mask=observed).prediction_outputs[:, :H, 0]

        return Forecast()
