"""timesfm's ``TimesFM_2p5_200M_torch``, compiled with its ``ForecastConfig``: ``model.forecast(horizon, inputs)``.

``forecast`` takes numpy series and returns numpy: per series it strips leading NaNs, interpolates the others,
keeps the last ``max_context`` steps (the earlier ones get exact zeros) or pads the front with zeros and a mask,
then ``compile``'s decode function normalizes, runs the module's torch ``decode`` (under ``no_grad``, a KV cache
written in place, running per-patch statistics), averages it with the decode of the negated series
(``force_flip_invariance``), replaces quantiles by the continuous quantile head, fixes quantile crossing,
un-normalizes and clamps at zero a series that is all non-negative (``infer_is_positive``).

DeepSHAP explains that decode function written in torch over the library's own ``decode`` (with the interpolation
of missing values, a linear map fixed by where they are): the padding mask and
the non-negative flag are context (the explained window's for it and its references alike), so the base value
is the mean forecast over the background with the window's flag and padding. The columns are ``"mean"`` and the
quantile levels 0.1 ... 0.9 (``forecast``'s second output; its point forecast is the 0.5 column).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter, quantile_columns

#: the columns of ``forecast``'s quantile output
COLUMNS: list[Any] = ["mean", 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _leading_missing(windows: np.ndarray) -> np.ndarray:
    """The leading NaNs of each row (what ``forecast`` strips: padding, not missing values)."""
    return np.cumprod(np.isnan(windows), axis=1).astype(bool)


def interpolation_map(missing: np.ndarray) -> np.ndarray | None:
    """The linear map ``(L, L)`` by which timesfm's forecasts fill a window missing the steps ``missing`` (L,) bool:
    each missing step inside the series linearly interpolated between its observed neighbours (np.interp; past the
    last observed value, that value), an observed step itself, a leading missing step (padding) a zero row. None
    where nothing inside the series is missing."""
    leading = np.cumprod(missing).astype(bool)
    inner = missing & ~leading
    if not inner.any():
        return None
    L = missing.size
    fill = np.zeros((L, L))
    observed = np.flatnonzero(~missing)
    for i in range(L):
        if leading[i]:
            continue
        if not missing[i]:
            fill[i, i] = 1.0
            continue
        before, after = observed[observed < i], observed[observed > i]
        a = int(before[-1])
        if after.size == 0:
            fill[i, a] = 1.0
        else:
            b = int(after[0])
            fill[i, a], fill[i, b] = (b - i) / (b - a), (i - a) / (b - a)
    return fill


class TimesFMAdapter(Adapter):
    distribution = "timesfm"
    label = "TimesFM 2.5"
    drops = "NaN (leading NaNs stripped and padded with the mask, inner NaNs interpolated linearly)"

    def __init__(self, model: Any) -> None:
        from timesfm import TimesFM_2p5_200M_torch

        if not isinstance(model, TimesFM_2p5_200M_torch):
            raise InputError(f"rnnshap.foundation takes timesfm's TimesFM_2p5_200M_torch; got {type(model).__name__}")
        if model.forecast_config is None or model.compiled_decode is None:
            raise InputError(
                "TimesFM is not compiled: call model.compile(timesfm.ForecastConfig(max_context=..., max_horizon=...)) "
                "first, as its forecast() requires"
            )
        if model.forecast_config.return_backcast:
            raise InputError("ForecastConfig(return_backcast=True): rnnshap.foundation explains the forecast; compile without it")
        super().__init__(model)

    @property
    def config(self) -> Any:
        return self.model.forecast_config

    def context_length(self) -> int:
        return int(self.config.max_context)

    def patch_length(self) -> int:
        return int(self.model.model.p)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        if requested is None:
            return list(COLUMNS)
        return quantile_columns(COLUMNS[1:], requested, self.label)

    def torch_modules(self) -> list[Any]:
        return [self.model.model]

    def _check_horizon(self, prediction_length: int) -> None:
        if prediction_length > self.config.max_horizon:
            raise InputError(
                f"prediction_length={prediction_length} is beyond ForecastConfig.max_horizon={self.config.max_horizon}"
            )

    def _indices(self, levels: list[Any]) -> list[int]:
        return [COLUMNS.index(q) for q in levels]

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        self._check_horizon(prediction_length)
        _, quantiles = self.model.forecast(horizon=prediction_length, inputs=[row.copy() for row in windows])
        return np.asarray(quantiles, dtype=np.float64)[:, :prediction_length][..., self._indices(levels)]

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return np.where(_leading_missing(windows), 0.0, windows)  # leading NaN: padding (a context mask); others: filled

    def module_for(self, prediction_length: int, levels: list[Any], missing: np.ndarray) -> Any:
        """forecast() fills a missing value inside the series by linear interpolation between its observed neighbours
        (np.interp; past the last observed value, that value): for one missing pattern a fixed linear map."""
        fill = interpolation_map(missing)
        return self.module(prediction_length, levels) if fill is None else self.module(prediction_length, levels, fill)

    def context_inputs(self, windows: np.ndarray) -> list[np.ndarray]:
        from timesfm.timesfm_2p5.timesfm_2p5_base import linear_interpolation, strip_leading_nans

        padding = _leading_missing(windows)
        positive = np.zeros((windows.shape[0], 1), dtype=bool)
        for i, row in enumerate(windows):  # the flag forecast() computes: on the series as it fills and cuts it
            filled = linear_interpolation(strip_leading_nans(row.copy()))[-self.context_length() :]
            positive[i] = bool(np.all(filled >= 0))
        return [padding, positive]

    def module(self, prediction_length: int, levels: list[Any], fill: np.ndarray | None = None) -> Any:
        import torch
        from timesfm.torch import util
        from torch import nn

        self._check_horizon(prediction_length)
        H = prediction_length
        fc = self.config
        columns = self._indices(levels)
        revin = util.revin
        context = self.context_length()
        interpolate = None if fill is None else torch.as_tensor(fill, dtype=torch.float32)

        class Forecast(nn.Module):
            """``compile``'s decode function on torch tensors: windows (n, L), padding (n, L), positive (n, 1)."""

            dtype = torch.float32

            def __init__(self, net: Any) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor, padding: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
                model = self.net
                n, L = x.shape
                if interpolate is not None:  # forecast()'s linear interpolation of the missing values inside the series
                    x = torch.nan_to_num(x, nan=0.0) @ interpolate.T
                inputs = torch.where(padding, 0.0, x)
                if L >= context:
                    inputs, masks = inputs[:, L - context :], padding[:, L - context :]
                else:  # forecast() pads the front with zeros, masked
                    inputs = torch.cat([inputs.new_zeros(n, context - L), inputs], dim=1)
                    masks = torch.cat([padding.new_ones(n, context - L), padding], dim=1)
                if fc.normalize_inputs:
                    mu = torch.mean(inputs, dim=-1, keepdim=True)
                    sigma = torch.std(inputs, dim=-1, keepdim=True)
                    inputs = revin(inputs, mu, sigma, reverse=False)
                pf_outputs, quantile_spreads, ar_outputs = model.decode(fc.max_horizon, inputs, masks)
                to_cat = [pf_outputs[:, -1, ...]]
                if ar_outputs is not None:
                    to_cat.append(ar_outputs.reshape(n, -1, model.q))
                full = torch.cat(to_cat, dim=1)

                def flip(t: torch.Tensor) -> torch.Tensor:
                    return torch.cat([t[..., :1], torch.flip(t[..., 1:], dims=(-1,))], dim=-1)

                if fc.force_flip_invariance:
                    flipped_pf, flipped_spreads, flipped_ar = model.decode(fc.max_horizon, -inputs, masks)
                    flipped_spreads = flip(flipped_spreads)
                    flipped_pf = flip(flipped_pf)
                    to_cat = [flipped_pf[:, -1, ...]]
                    if flipped_ar is not None:
                        to_cat.append(flip(flipped_ar.reshape(n, -1, model.q)))
                    quantile_spreads = (quantile_spreads - flipped_spreads) / 2
                    full = (full - torch.cat(to_cat, dim=1)) / 2
                if fc.use_continuous_quantile_head:
                    for q in [1, 2, 3, 4, 6, 7, 8, 9]:
                        full[:, :, q] = (
                            quantile_spreads[:, : fc.max_horizon, q]
                            - quantile_spreads[:, : fc.max_horizon, 5]
                            + full[:, : fc.max_horizon, 5]
                        )
                full = full[:, :H, :]
                if fc.fix_quantile_crossing:
                    for i in [4, 3, 2, 1]:
                        full[:, :, i] = torch.where(full[:, :, i] < full[:, :, i + 1], full[:, :, i], full[:, :, i + 1])
                    for i in [6, 7, 8, 9]:
                        full[:, :, i] = torch.where(full[:, :, i] > full[:, :, i - 1], full[:, :, i], full[:, :, i - 1])
                if fc.normalize_inputs:
                    full = revin(full, mu, sigma, reverse=True)
                if fc.infer_is_positive:
                    full = torch.where(positive[..., None], torch.maximum(full, torch.zeros_like(full)), full)
                return full[..., columns].reshape(n, -1)

        return Forecast(self.model.model)
