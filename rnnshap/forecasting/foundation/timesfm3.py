"""timesfm's TimesFM 3 (``timesfm3.TimesFM3Forecaster``, timesfm 3.0.2): ``forecaster.predict_batch(contexts,
horizon, return_quantiles=True)``.

``predict_batch`` takes numpy series and returns numpy: per series it strips the leading steps missing in every
variate (NaN), fills the others by linear interpolation (``np.interp``: past the last observed value, that value)
and casts to float32; per batch of ``per_core_batch_size`` series it rounds the longest length up to whole patches
(at most ``global_context``, the last 15,360 steps rounded to patches: the earlier ones get exact zeros), pads the
front of the shorter ones with zeros under ``mask``, and runs the model's torch ``decode`` (under ``no_grad``, in
``inference_mode``: linear detrending gated per window, running RevIN statistics over the patches, CPM refinement of
the horizon's statistics, stitched output patches) for the horizon rounded up to whole output patches; it then
sorts each step's quantiles (``sort_quantiles=True``) and keeps the first ``horizon`` steps.

DeepSHAP explains that path written in torch over the library's own ``decode``: the windows of one missing pattern
cut after their leading missing steps, filled by the interpolation (a linear map fixed by the pattern), padded or
cut to the batch's context and ``decode``'d with the library's mask; the sort is the order-statistic rule. A leading
missing step is no player (exactly 0), nor is one inside the series (the interpolation reads its neighbours). The
columns are the model's quantile levels (``predict_batch``'s ``forecast``, its point forecast, is the median's).

What is explained is ``predict_batch`` with its defaults: ``use_symmetric_averaging``, ``make_positive`` and
``use_znorm`` off, ``sort_quantiles`` on; one target variate per series or several, and covariates: its
``past_only_covariates`` (variates beside the targets, cut, padded and interpolated with them, given to ``decode`` as
its own argument) and ``past_future_covariates`` (their past likewise, their H future values after every variate in
the flat windows the module reads: inputs of the forecast, attributed too; DeepSHAP only, without missing values).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import Adapter, net_module, quantile_columns, variate_columns
from .inputs import past_covariates
from .timesfm import interpolation_map


class TimesFM3Adapter(Adapter):
    distribution = "timesfm"
    label = "TimesFM 3"
    drops = "NaN (leading NaNs stripped and padded with the mask, inner NaNs interpolated linearly)"
    multivariate = True
    past_covariates = True

    def __init__(self, model: Any) -> None:
        from timesfm3.torch import TimesFM3Forecaster, TimesFM3Torch

        if isinstance(model, TimesFM3Torch):
            raise InputError(
                "rnnshap.foundation takes TimesFM 3's forecaster (timesfm3.TimesFM3Forecaster.from_pretrained(...)), whose "
                "predict_batch() is the forecast it explains; a bare TimesFM3Torch has no forecast call of its own (decode "
                "takes batches the forecaster lays out). Give the forecaster, or explain decode with rnnshap.DeepExplainer "
                "on a module from context windows to its output (docs/recipes.md)"
            )
        if not isinstance(model, TimesFM3Forecaster):
            raise InputError(f"rnnshap.foundation takes timesfm3's TimesFM3Forecaster; got {type(model).__name__}")
        super().__init__(model)

    @property
    def net(self) -> Any:
        return self.model.model

    def context_length(self) -> int:
        return int(self.model.global_context)

    def patch_length(self) -> int:
        return int(self.net.input_patch_len)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        return list(quantile_columns(self.net.quantiles, requested, self.label))

    def torch_modules(self) -> list[Any]:
        return [self.net]

    def _index(self, level: Any) -> int:
        trained = [float(q) for q in self.net.quantiles]
        return min(range(len(trained)), key=lambda j: abs(trained[j] - float(level)))

    def past_covariates_of(self, covariates: Any, background: Any, n: int, L: int, H: int, method: str) -> Any:
        return past_covariates(
            self.label, covariates, background, n, L, H, method,
            None,  # past_future_covariates: taken
        )  # fmt: skip

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        H, T, K = prediction_length, self.targets, self.known_variates
        cut = windows.shape[1] - K * H  # the known covariates' future values follow the variates
        rows = self.shaped(windows[:, :cut]) if self.variates else windows  # (V, L) per context, or one series (L,)
        contexts = [row[:T].copy() for row in rows] if self.variates else [row.copy() for row in rows]
        past, known = None, None
        if self.variates and T < self.variates - K:  # predict_batch's past_only_covariates
            past = [row[T : self.variates - K].copy() for row in rows]
        if K:  # predict_batch's past_future_covariates: (K, L + H) each
            ahead = windows[:, cut:].reshape(len(windows), K, H)
            known = [np.concatenate([row[self.variates - K :], a], axis=1) for row, a in zip(rows, ahead, strict=True)]
        outputs = self.model.predict_batch(
            contexts=contexts, horizon=H, past_only_covariates=past, past_future_covariates=known, return_quantiles=True
        )
        quantiles = np.stack([np.asarray(out.quantiles, dtype=np.float64) for out in outputs])
        if not self.variates:
            quantiles = quantiles[:, None]  # univariate contexts: (n, H, Q)
        return variate_columns(quantiles, levels, self._index)

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return np.nan_to_num(windows, nan=0.0)  # a missing step is never read (cut off, or filled from its neighbours)

    def module_for(self, prediction_length: int, levels: list[Any], missing: np.ndarray) -> Any:
        if self.variates:
            steps = missing.size - self.known_variates * prediction_length  # the known covariates' future steps: never missing
            return self._variates_module(prediction_length, levels, missing[:steps].reshape(self.variates, -1))
        leading = int(np.cumprod(missing).sum())
        if leading == missing.size:  # nothing observed: predict_batch forecasts from zeros over the whole window
            return self.module(prediction_length, levels)
        return self.module(prediction_length, levels, leading, interpolation_map(missing[leading:]))

    def module(self, prediction_length: int, levels: list[Any], leading: int = 0, fill: np.ndarray | None = None) -> Any:
        import torch

        H = prediction_length
        columns = [self._index(level) for level in levels]
        patch = int(self.model.config.input_patch_length)
        output_patch = int(self.model.config.output_patch_length)
        horizon = math.ceil(H / output_patch) * output_patch  # predict_batch's global_horizon
        longest = self.context_length()
        interpolate = None if fill is None else torch.as_tensor(fill, dtype=torch.float32)

        def forward(net: Any, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            x = x[:, leading:]  # the leading missing steps, stripped
            if interpolate is not None:  # the missing steps inside the series, interpolated
                x = x @ interpolate.to(x.device).T
            length = x.shape[1]
            context = max(min(math.ceil(length / patch) * patch, longest), patch)
            if length >= context:  # the batch's context: the last steps, or the front padded with masked zeros
                target = x[:, length - context :]
                mask = torch.zeros(n, context, dtype=torch.bool, device=x.device)
            else:
                target = torch.cat([x.new_zeros(n, context - length), x], dim=1)
                mask = torch.arange(context, device=x.device)[None].expand(n, -1) < context - length
            out = net.decode(target=target[:, None], horizon=horizon, mask=mask)[:, :1]
            out = torch.sort(out, dim=-1).values  # sort_quantiles
            return out[:, 0, :H][..., columns].reshape(n, -1)

        doc = "``predict_batch``'s path on torch tensors: windows (n, L) of one missing pattern -> (n, H·Q)."
        return net_module(self.net, forward, doc)

    def _variates_module(self, prediction_length: int, columns: list[Any], missing: np.ndarray) -> Any:
        """``predict_batch``'s path for flat windows (n, V·L) of V target variates missing the steps ``missing``
        (V, L): the steps missing in every variate stripped, each variate's other missing steps filled by the
        library's own ``linear_interpolation`` (a linear map per variate fixed by the pattern, taken from it), the
        batch's context padded with masked zeros, ``decode`` and the sort."""
        import torch
        from timesfm3.torch.timesfm3_forecaster import linear_interpolation

        V, L = missing.shape
        T, K = self.targets, self.known_variates  # the target variates; the others past covariates, the last K known ahead
        leading = int(np.cumprod(missing[:T].all(axis=0)).sum())

        def fill_of(gaps: np.ndarray) -> np.ndarray:  # (to, from): the library's fill of each unit window
            return np.stack([linear_interpolation(np.where(gaps, np.nan, e)) for e in np.eye(gaps.size)], axis=1)

        if leading == L:  # no target observed: predict_batch forecasts from zeros over the whole window
            leading = 0
            maps = [np.zeros((L, L))] * T + [fill_of(gaps) for gaps in missing[T:]]
        else:
            maps = [fill_of(gaps) for gaps in missing[:, leading:]]
        fill = torch.as_tensor(np.stack(maps), dtype=torch.float32)  # (V, to, from)
        H = prediction_length
        patch = int(self.model.config.input_patch_length)
        output_patch = int(self.model.config.output_patch_length)
        horizon = math.ceil(H / output_patch) * output_patch
        longest = self.context_length()
        adapter = self

        def forward(net: Any, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            ahead = x[:, V * L :].reshape(n, K, H)  # the known covariates' future values
            x = x[:, : V * L].reshape(n, V, L)[..., leading:]
            x = torch.einsum("vtf,nvf->nvt", fill.to(x.device, x.dtype), x)
            length = x.shape[-1]
            context = max(min(math.ceil(length / patch) * patch, longest), patch)
            if length >= context:
                target = x[..., length - context :]
                mask = torch.zeros(n, context, dtype=torch.bool, device=x.device)
            else:
                target = torch.cat([x.new_zeros(n, V, context - length), x], dim=-1)
                mask = torch.arange(context, device=x.device)[None].expand(n, -1) < context - length
            past = target[:, T : V - K] if T < V - K else None  # predict_batch's past_only_covariates
            known = torch.cat([target[:, V - K :], ahead], dim=-1) if K else None  # its past_future_covariates
            out = net.decode(
                target=target[:, :T], horizon=horizon, past_only_covariates=past, past_future_covariates=known, mask=mask
            )[:, :T]
            out = torch.sort(out, dim=-1).values  # sort_quantiles
            return variate_columns(out[:, :, :H], columns, adapter._index).reshape(n, -1)

        doc = "``predict_batch``'s path on torch tensors: flat windows (n, V·L) of one missing pattern -> (n, H·C)."
        return net_module(self.net, forward, doc)
