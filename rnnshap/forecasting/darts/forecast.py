"""The function rnnshap explains for a darts network: darts' own prediction loop for one batch on the window
tensors of darts' inference dataset (:func:`forecast_module`), and a target scaler's affine map made part of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import InputError
from .. import affine_probe, check_version, preserved
from .library import TorchInferenceBatch

#: darts' inference sample fields, in the order of darts' flat feature array (``future_past_covariates``,
#: the past covariates ``predict(n > output_chunk_length)`` reads after the forecast start, after the past ones)
FIELDS = (
    "past_target",
    "past_covariates",
    "future_past_covariates",
    "historic_future_covariates",
    "future_covariates",
    "static_covariates",
)


class _Forecast(nn.Module):
    """``f(*windows) -> (N, n · targets)``: darts' own ``_get_batch_prediction(n, batch, roll_size)`` on the
    windows (darts' ``predict`` loop for one batch: the network's forward in the predict stage, rolled
    forward with its predictions fed back when ``n > output_chunk_length``), flattened horizon-major as
    darts' ShapExplainer lays its outputs out; optionally followed by a target scaler's inverse.

    Call it inside ``with module.predicting():`` (darts' predict parameters and eval mode, put back after)."""

    def __init__(
        self, module: nn.Module, fields: Sequence[str], n: int, roll_size: int, affine: Any = None,
        likelihood_parameters: bool = False,
    ) -> None:
        super().__init__()
        self.module: Any = module
        self.fields = list(fields)
        self.n = n
        self.roll_size = roll_size
        self.likelihood_parameters = likelihood_parameters
        # (scale, offset) per target component: x_scaled = x · scale + offset, applied to the past target;
        # the forecast (per likelihood parameter) is mapped back with (y − offset) / scale
        self.affine = affine
        # darts' TFT caches its attention mask and relative index (buffers) per batch size (``batch_size_last``, a
        # plain attribute); rnnshap puts a model's buffers back after each pass but not plain attributes, so the
        # cache would hold one batch size's tensors under another's key: it is emptied before each forward
        self._caches: list[Any] = [m for m in module.modules() if hasattr(m, "batch_size_last")]

    def forward(self, *windows: torch.Tensor) -> torch.Tensor:
        for m in self._caches:
            m.batch_size_last = -1
        tensors = dict(zip(self.fields, windows, strict=True))
        if self.affine is not None:
            scale, offset = self.affine
            tensors["past_target"] = tensors["past_target"] * scale.to(windows[0]) + offset.to(windows[0])
        batch = TorchInferenceBatch(**tensors)
        prediction = self.module._get_batch_prediction(self.n, batch, self.roll_size)  # (N, n, targets[, params])
        if self.affine is not None:
            scale, offset = self.affine
            per = prediction.shape[2] // scale.shape[0]  # likelihood parameters per target component
            prediction = (prediction - offset.repeat_interleave(per).to(prediction)) / scale.repeat_interleave(per).to(prediction)
        return prediction.flatten(1)

    @contextlib.contextmanager
    def predicting(self, batch_size: int = 2048) -> Iterator[None]:
        """A context manager: darts' predict parameters for this forecast (``n``, one sample, the roll size,
        the likelihood's parameters where the model has any) and eval mode set on the Lightning module, and
        everything it or the forward changed put back on exit (:func:`rnnshap.forecasting.preserved`:
        darts' TFT caches its attention mask and batch size in the forward): explaining never changes the model.

        Buffers made under ``torch.inference_mode`` by an earlier ``predict`` are replaced by plain copies
        while explaining (autograd cannot save inference tensors), and put back on exit."""
        with preserved(self.module):
            for m in self.module.modules():
                for name, buffer in m._buffers.items():
                    if buffer is not None and buffer.is_inference():
                        m._buffers[name] = buffer.clone()
            self.module.set_predict_parameters(self.n, 1, self.roll_size, batch_size, self.likelihood_parameters, False)
            self.module.eval()
            yield


def forecast_module(model: Any, n: int, fields: Sequence[str], affine: Any = None) -> _Forecast:
    """The function rnnshap explains for a fitted darts ``TorchForecastingModel``: darts' own prediction
    loop for one batch (``_get_batch_prediction(n, batch, output_chunk_length)``) on the window tensors
    named by ``fields`` (darts' ``TorchInferenceBatch`` fields), flattened to ``(N, n · targets)``; a
    likelihood model's outputs are its likelihood parameters (darts' ``predict_likelihood_parameters=True``).

    Call it inside ``with module.predicting():``, which sets darts' predict parameters and eval mode on
    ``model.model`` and puts back on exit everything they and the forward changed (``ShapExplainer`` does
    this): the model is left as it was.

    Example::

        module = forecast_module(model, 4, ["past_target", "past_covariates", "future_past_covariates"])
        with module.predicting():
            module(past_target, past_covariates, future_past_covariates)   # (N, 4 · targets): predict(4)
    """
    check_version("darts")
    likelihood_parameters = model.supports_likelihood_parameter_prediction
    return _Forecast(model.model, fields, n, model.output_chunk_length or 1, affine, likelihood_parameters)


def scaler_transformer(scaler: Any) -> Any:
    """The sklearn transformer of a fitted darts ``Scaler`` of one target series, if it is an affine map
    (``MinMaxScaler``, ``StandardScaler``, ``MaxAbsScaler``, ``RobustScaler``); anything else is refused by name."""
    transformers = getattr(scaler, "_fitted_params", None)
    if not transformers:
        raise InputError("target_scaler: give a darts Scaler fitted on the target series (Scaler(...).fit(series))")
    if len(transformers) != 1:
        raise InputError(f"target_scaler was fitted on {len(transformers)} series; give one fitted on a single target series")
    transformer = transformers[0]
    name = type(transformer).__name__
    if name not in ("MinMaxScaler", "StandardScaler", "MaxAbsScaler", "RobustScaler"):
        raise InputError(f"target_scaler: {name} is not an affine map rnnshap can include; explain the scaled model instead")
    return transformer


def affine_of(scaler: Any, target_components: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, offset)`` per component of a fitted darts ``Scaler`` of one target series whose sklearn
    transformer is an affine map (:func:`scaler_transformer`), read by applying it to 0 and 1 (:func:`affine_probe`)."""
    transformer = scaler_transformer(scaler)
    zero, scale, _ = affine_probe(lambda x: transformer.transform(x)[0], np.zeros((1, len(target_components))))
    return torch.as_tensor(scale, dtype=torch.float64), torch.as_tensor(zero, dtype=torch.float64)
