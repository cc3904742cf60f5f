"""toto-ts' Toto (``toto.inference.forecaster.TotoForecaster``, toto-ts 0.2.0, or the ``Toto`` it wraps):
``forecaster.forecast(MaskedTimeseries(...), prediction_length).mean``.

``forecast`` takes a ``MaskedTimeseries`` (series, ``padding_mask`` True where a value is observed, ``id_mask`` the
variates' groups, timestamps) and, with ``num_samples=None``, returns the mean forecast: it left-pads the series
to whole patches (zeros, unobserved) and decodes autoregressively under ``no_grad`` (a KV cache written in place, the
causal patch scaler over the observed steps, the mixture of Student-t heads, whose mean, with its extreme values
dropped by ``replace_extreme_values``, is fed back patch by patch), returning the output detached.

Each window is one series (one variate in a group of its own), or, given ``(n, V, L)``, V variates in one group
(``id_mask`` 0: every variate's forecast reads every variate's context); a missing value (NaN) is given as
``padding_mask`` False with the value 0, as Toto takes padding. DeepSHAP explains ``forecast`` itself on the
MaskedTimeseries built from the windows, the observed mask a context input (the explained window's for it and its
references alike): a missing step is no player and gets exactly 0. One column: ``"mean"`` (with ``num_samples``
the forecast samples at random; the Shapley mode too plays only the mean).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .adapters import ObservedMaskAdapter, net_module, variate_columns


class TotoAdapter(ObservedMaskAdapter):
    distribution = "toto-ts"
    label = "Toto"
    drops = "NaN (padding_mask False, the value 0)"
    multivariate = True

    def __init__(self, model: Any) -> None:
        from toto.inference.forecaster import TotoForecaster
        from toto.model.toto import Toto

        if isinstance(model, Toto):  # the loaded model: forecast through the library's own forecaster around it
            model = TotoForecaster(model.model)
        if not isinstance(model, TotoForecaster):
            raise InputError(f"rnnshap.foundation takes toto's TotoForecaster (or the Toto it wraps); got {type(model).__name__}")
        super().__init__(model)
        own = str(self.dtype).replace("torch.", "")
        self.precisions = (own,)  # the model's own dtype (Toto runs in float32 or float64 alike)
        self.precision = np.float64 if own == "float64" else np.float32

    @property
    def backbone(self) -> Any:
        return self.model.model

    @property
    def dtype(self) -> Any:
        return next(self.backbone.parameters()).dtype

    def patch_length(self) -> int:
        return int(self.backbone.patch_embed.stride)

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        if requested is not None:
            raise InputError(
                "Toto's forecast without samples is its mean (one column, 'mean'): leave quantile_levels=None; its "
                f"quantiles come from random samples (num_samples), which rnnshap does not explain. Got {list(requested)}"
            )
        return ["mean"]

    def torch_modules(self) -> list[Any]:
        return [self.backbone]

    def _inputs(self, x: Any, observed: Any) -> Any:
        """The MaskedTimeseries of windows ``x`` with the observed mask, alike shaped: (n, L), one variate each, or
        flat multivariate windows (n, V·L), the V variates in one group (``id_mask`` 0: each attends to every other)."""
        import torch
        from toto.data.util.dataset import MaskedTimeseries

        series, seen = self.shaped(x), self.shaped(observed)
        n, V, L = series.shape
        return MaskedTimeseries(
            series=series,
            padding_mask=seen,
            id_mask=torch.zeros(n, V, L, dtype=torch.int, device=x.device),
            timestamp_seconds=torch.zeros(n, V, L, dtype=torch.int, device=x.device),
            time_interval_seconds=torch.ones(n, V, dtype=torch.int, device=x.device),
        )

    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        device = next(self.backbone.parameters()).device
        x, observed = self.observed_tensors(windows, self.dtype, device)
        mean = self.model.forecast(self._inputs(x, observed), prediction_length=prediction_length).mean
        return variate_columns(mean[..., None].double().cpu().numpy(), levels, lambda level: 0)

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch

        adapter = self

        def forward(net: Any, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
            mean = adapter.model.forecast(adapter._inputs(x, observed), prediction_length=prediction_length).mean
            return variate_columns(mean[..., None], levels, lambda level: 0).reshape(x.shape[0], -1)

        doc = "``TotoForecaster.forecast(...).mean`` of windows (n, L) or (n, V·L) with their observed mask: (n, H·C)."
        return net_module(self.backbone, forward, doc, adapter.dtype)
