"""momentfm's ``MOMENTPipeline`` with its forecasting head (``model_kwargs={"task_name": "forecasting", ...}`` and
``model.init()``): ``model(x_enc=(n, 1, seq_len), input_mask=(n, seq_len)).forecast``.

MOMENT reads exactly ``seq_len`` steps (512 for the released models): a longer window is cut to its last
``seq_len`` steps (the earlier ones get exact zeros), a shorter one is padded in front with missing values. A
missing value is NaN in ``x_enc`` with ``input_mask`` 0: RevIN leaves it out of its ``nanmean``/``nanstd``
statistics (detached and stored on the module, as the library computes them) and its normalized value is 0
(``nan_to_num``). One column: the point forecast (``"point"``), the first ``prediction_length`` of the head's
``forecast_horizon`` steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter, net_module, point_levels


class MomentAdapter(Adapter):
    distribution = "momentfm"
    label = "MOMENT"
    drops = "NaN in x_enc, input_mask=0"

    def __init__(self, model: Any) -> None:
        from momentfm.models.moment import MOMENT

        if not isinstance(model, MOMENT):
            raise InputError(f"rnnshap.foundation takes momentfm's MOMENTPipeline; got {type(model).__name__}")
        if model.task_name != "forecasting":
            raise InputError(
                f"MOMENT with task_name={model.task_name!r}: rnnshap.foundation explains its forecasting head. Load it with "
                "MOMENTPipeline.from_pretrained(..., model_kwargs={'task_name': 'forecasting', 'forecast_horizon': H}) and "
                "call model.init()"
            )
        super().__init__(model)

    def context_length(self) -> int:
        return int(self.model.seq_len)

    def patch_length(self) -> int:
        return int(self.model.patch_len)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        return point_levels(requested, self.label)

    def torch_modules(self) -> list[Any]:
        return [self.model]

    def _check_horizon(self, prediction_length: int) -> None:
        horizon = int(self.model.config.forecast_horizon)
        if prediction_length > horizon:
            raise InputError(f"prediction_length={prediction_length}: this MOMENT's head forecasts {horizon} steps")

    def _sequence(self, windows: np.ndarray) -> np.ndarray:
        """The windows as MOMENT reads them: the last seq_len steps, padded in front with NaN (missing)."""
        seq_len = self.context_length()
        if windows.shape[1] >= seq_len:
            return windows[:, windows.shape[1] - seq_len :]
        return np.concatenate([np.full((windows.shape[0], seq_len - windows.shape[1]), np.nan), windows], axis=1)

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        import torch

        self._check_horizon(prediction_length)
        sequence = self._sequence(windows)
        x_enc = torch.as_tensor(sequence, dtype=torch.float32)[:, None]
        input_mask = torch.as_tensor(~np.isnan(sequence), dtype=torch.float32)
        with torch.no_grad():
            forecast = self.model(x_enc=x_enc, input_mask=input_mask).forecast
        return forecast[:, 0, :prediction_length, None].double().cpu().numpy()

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return windows  # NaN: input_mask 0, left out of RevIN's statistics

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch

        self._check_horizon(prediction_length)
        seq_len = self.context_length()

        def forward(net: Any, x: torch.Tensor) -> torch.Tensor:
            n, L = x.shape
            if L >= seq_len:
                x = x[:, L - seq_len :]
            else:
                x = torch.cat([x.new_full((n, seq_len - L), float("nan")), x], dim=1)
            input_mask = (~torch.isnan(x)).to(x.dtype)
            return net(x_enc=x[:, None], input_mask=input_mask).forecast[:, 0, :prediction_length]

        doc = "``model(x_enc, input_mask).forecast`` on the windows brought to seq_len steps: (n, H)."
        return net_module(self.model, forward, doc)
