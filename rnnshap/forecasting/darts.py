"""darts: ``ShapExplainer`` with darts' call and result types, answered by rnnshap (exact in sum).

``rnnshap.darts.ShapExplainer`` is a subclass of ``darts.explainability.ShapExplainer``: the same
constructor arguments (model, background series and covariates, ``background_num_samples``,
``batch_size``), the same ``explain()``, ``explain_single()``, ``summary_plot()`` and ``force_plot()``,
and darts' own ``ShapExplainabilityResult`` / ``ShapSingleExplainabilityResult`` with darts' feature
names (``create_lagged_component_names``: ``Y_target_lag-2``, ``month_futcov_lag0``). What differs:

- the values come from rnnshap (:func:`rnnshap.forecasting.attribute`): DeepSHAP by default (one pass;
  the values of each forecast plus its base value add up to darts' own forecast: ``predict`` for
  ``explain_single``, ``historical_forecasts(retrain=False)`` at each window of ``explain``), or
  the Shapley values of the lag players (``method="shapley"``, ``budget=``, ``random_state=``), exact where
  the budget covers every coalition, else unbiased estimates with standard errors;
- the explained function is darts' own prediction code, ``PLForecastingModule._get_batch_prediction`` on
  the windows of darts' own inference dataset: with ``n`` beyond ``output_chunk_length`` it is the
  auto-regressive forecast of ``predict(n)`` (the model's predictions fed back), one function of the input
  window and of the covariates ``predict(n)`` reads, explained exactly for every horizon up to ``n``;
- a likelihood model is explained through its likelihood parameters (quantiles, distribution
  parameters: darts' ``predict_likelihood_parameters=True`` outputs), never a sampled forecast;
- where the user names a shap method (``shap_method=``) or gives a model that is not a darts network (darts'
  regression models), darts' own explainer answers, as before; ``result.explained_by`` says which answered;
- a fitted darts ``Scaler`` of the target (``target_scaler=``) may be given: its affine map is then part of
  the explained function, so that the values are in the units of the unscaled series and add up to
  ``target_scaler.inverse_transform(model.predict(n, series=target_scaler.transform(series)))``.

This module imports darts; ``import rnnshap`` does not. It is one file (over 600 lines) because its parts
are one unit shaped by darts' classes: the explainer and adapter subclasses override darts' methods, which
call each other, and share the window layout (``_layout``) and the window splitting; apart, they would
reach into each other's private members.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

try:
    import pandas as pd
    import shap
    import torch
    from darts import TimeSeries
    from darts.explainability.explainability import _ForecastingModelExplainer
    from darts.explainability.explainability_result import ShapExplainabilityResult, ShapSingleExplainabilityResult
    from darts.explainability.shap_adapters.shap_adapter import MAX_BACKGROUND_SAMPLE, MIN_BACKGROUND_SAMPLE, DartsShapExplanation
    from darts.explainability.shap_adapters.torch_shap_adapter import TorchShapAdapter
    from darts.explainability.shap_explainer import ShapExplainer as _DartsShapExplainer
    from darts.explainability.utils import process_horizons_and_targets
    from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel
    from darts.utils.data import TorchInferenceBatch
    from darts.utils.data.tabularization import create_lagged_component_names
    from darts.utils.historical_forecasts.optimized_historical_forecasts_torch import _create_dataset_bounds
    from darts.utils.ts_utils import series2seq
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"rnnshap.darts needs darts (and shap, which darts' explainers use): pip install 'rnnshap[darts]' ({_error})"
    ) from _error
from torch import nn

from ..backgrounds import stated
from ..errors import InputError
from . import METHODS, WindowAttribution, affine_probe, attribute, check_method, check_version, preserved

__all__ = [
    "METHODS", "ShapExplainabilityResult", "ShapExplainer", "ShapSingleExplainabilityResult", "forecast_module",
    "standard_errors",
]  # fmt: skip

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


#: the seed of the background draw (``background_num_samples``) when no ``random_state`` is given
BACKGROUND_SEED = 0

#: the background windows drawn (seeded, without replacement) when ``background_num_samples`` is not given and
#: the background series hold more: DeepSHAP's cost grows with foreground x background windows, and its values add
#: up to each forecast whatever the background; the background only sets the reference (the base value is the
#: mean forecast over it), which 100 windows estimate well (shap's own advice for its DeepExplainer: 100 to 1000)
DEFAULT_BACKGROUND_SAMPLES = 100

#: the forecasts ``summary_plot`` explains and draws (a seeded sample, said in the plot's title) when ``num_samples``
#: is not given and the foreground holds more: a beeswarm of more points shows no more, and costs more to explain
SUMMARY_PLOT_POINTS = 500

logger = logging.getLogger(__name__)


def _count(value: Any, name: str) -> int:
    """``value`` as an int if it is an integer of at least 1 (a Python or numpy integer, not a bool); else an
    InputError naming it: a count given as a float is refused, never truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}={value}: must be an integer, not {type(value).__name__}")
    if value < 1:
        raise InputError(f"{name}={value}: must be at least 1")
    return int(value)


def _background_rng(random_state: Any) -> np.random.Generator:
    """The generator of the background draw: seeded by ``random_state`` (a non-negative integer, or a numpy
    Generator, used as given), else by :data:`BACKGROUND_SEED`; never numpy's global random state."""
    if random_state is None:
        return np.random.default_rng(BACKGROUND_SEED)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool) and random_state >= 0:
        return np.random.default_rng(int(random_state))
    raise InputError(f"random_state must be a non-negative integer, a numpy Generator or None, not {random_state!r}")


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


def _scaler_transformer(scaler: Any) -> Any:
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


def _affine_of(scaler: Any, target_components: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, offset)`` per component of a fitted darts ``Scaler`` of one target series whose sklearn
    transformer is an affine map (:func:`_scaler_transformer`), read by applying it to 0 and 1 (:func:`affine_probe`)."""
    transformer = _scaler_transformer(scaler)
    zero, scale, _ = affine_probe(lambda x: transformer.transform(x)[0], np.zeros((1, len(target_components))))
    return torch.as_tensor(scale, dtype=torch.float64), torch.as_tensor(zero, dtype=torch.float64)


class _RnnshapTorchAdapter(TorchShapAdapter):
    """darts' TorchShapAdapter with rnnshap's values: darts' window building, names and result
    assembly, with the flat feature array split back into the windows of darts' inference dataset."""

    def __init__(
        self, *args: Any, method: str, budget: int | None, random_state: Any, rnnshap_batch_size: int, affine: Any,
        progress: bool | None = None, **kwargs: Any,
    ):
        self.method, self.budget, self.random_state, self.progress = method, budget, random_state, progress
        # set by create_shap_input: the background's (in darts' __init__) and the last call's count of windows
        self.background_num_samples = self.background_windows_total = self.last_windows_total = 0
        self.rnnshap_batch_size, self.affine = rnnshap_batch_size, affine
        self.rng = _background_rng(random_state)  # the background draw (background_num_samples)
        self.last: WindowAttribution | None = None
        self.last_stderr: np.ndarray | None = None
        super().__init__(*args, **kwargs)

    # -- darts' windows, with the past covariates predict(n > output_chunk_length) reads -----------------------
    def _layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """The window fields the model reads and their shapes per sample, in darts' flat order."""
        model, n, L = self.model, self.n, self.model.input_chunk_length
        ocl = self.output_chunk_length
        layout: list[tuple[str, tuple[int, ...]]] = [("past_target", (L, self.n_targets))]
        if self.n_past_covs:
            layout.append(("past_covariates", (L, self.n_past_covs)))
            if n > ocl:
                layout.append(("future_past_covariates", (n - ocl, self.n_past_covs)))
        if self.n_future_covs:
            layout.append(("historic_future_covariates", (L, self.n_future_covs)))
            layout.append(("future_covariates", (max(n, ocl), self.n_future_covs)))
        if self.n_static_covs and model.uses_static_covariates:
            layout.append(("static_covariates", (-1, self.n_static_covs)))
        return layout

    def create_shap_input(
        self,
        series: Any,
        past_covariates: Any,
        future_covariates: Any,
        n_samples: int | None = None,
        input_type: str = "background",
    ) -> tuple[np.ndarray, pd.Index]:
        """darts' own inference dataset (``_build_inference_dataset`` over ``_create_dataset_bounds``, as
        darts' adapter builds it), flattened in darts' feature order; with ``n > output_chunk_length`` the
        past covariates after the forecast start (``future_past_covariates``) follow the past ones."""
        series, past_covariates = series2seq(series), series2seq(past_covariates)
        future_covariates = series2seq(future_covariates)
        _check_lengths(self.model, self.n, series, past_covariates, future_covariates, input_type)
        bounds, _ = _create_dataset_bounds(
            model=self.model,
            series=series,
            past_covariates=past_covariates,
            future_covariates=future_covariates,
            start=None,
            forecast_horizon=self.n,
            stride=1,
            overlap_end=True,
            show_warnings=False,
        )
        dataset = self.model._build_inference_dataset(
            n=self.n, series=series, past_covariates=past_covariates, future_covariates=future_covariates, stride=1, bounds=bounds
        )
        given = n_samples
        n_samples = n_samples or len(dataset)
        # darts calls the background series' windows "background" also where they are the default foreground
        # (explain() without a foreground); only the first call, in darts' __init__, builds the background
        building_background = input_type == "background" and not self.background_windows_total
        if input_type == "background":
            if len(dataset) < MIN_BACKGROUND_SAMPLE:
                raise InputError(
                    f"Background series must contain at least {MIN_BACKGROUND_SAMPLE} samples to create a valid background "
                    f"(windows of input_chunk_length={self.model.input_chunk_length} followed by n={self.n} forecast steps). "
                    f"Got background dataset length={len(dataset)}."
                )
        self.last_windows_total = len(dataset)
        if building_background:
            n_samples = min(n_samples if given else DEFAULT_BACKGROUND_SAMPLES, len(dataset), MAX_BACKGROUND_SAMPLE)
            self.background_num_samples, self.background_windows_total = n_samples, len(dataset)
            if given is None and n_samples < len(dataset):
                logger.warning(
                    f"rnnshap: the background series hold {len(dataset)} windows; explaining against {n_samples} of them, "
                    f"drawn at random (seeded; DEFAULT_BACKGROUND_SAMPLES). Set background_num_samples= for more "
                    f"(at most {MAX_BACKGROUND_SAMPLE}); the values add up to each forecast either way."
                )
        indices: Any = range(len(dataset))
        if n_samples < len(dataset):
            indices = self.rng.choice(len(dataset), size=n_samples, replace=False)
            if not building_background:  # a foreground sample (num_samples), in time order
                indices = np.sort(indices)
        batch = [dataset[i] for i in indices]
        arrays = []
        for name, shape in self._layout():
            stacked = np.stack([getattr(sample, name) for sample in batch])
            if shape[0] >= 0 and stacked.shape[1:] != shape:
                raise InputError(f"darts built {name} windows of shape {stacked.shape[1:]}, expected {shape}")
            if name == "static_covariates":  # (components, variables) -> darts' names' order, variable-major
                stacked = stacked.transpose(0, 2, 1)
            arrays.append(stacked.reshape(stacked.shape[0], -1))
        self._static_shape = None if batch[0].static_covariates is None else batch[0].static_covariates.shape
        return np.concatenate(arrays, axis=-1), _times([sample.pred_time for sample in batch], series[0].freq)

    def _build_feature_names(self) -> list[str]:
        """darts' names (``create_lagged_component_names``), with the lags after the forecast start that
        ``predict(n > output_chunk_length)`` reads from the covariates."""
        L, ocl = self.model.input_chunk_length, self.output_chunk_length
        lags_past = list(range(-L, 0))
        names, _ = create_lagged_component_names(
            target_series=self.background_series,
            past_covariates=self.background_past_covariates,
            future_covariates=self.background_future_covariates,
            lags=lags_past,
            lags_past_covariates=lags_past + list(range(max(self.n - ocl, 0))),
            lags_future_covariates=lags_past + list(range(max(self.n, ocl))),
            output_chunk_length=ocl,
            concatenate=False,
            use_static_covariates=self.model.uses_static_covariates,
        )
        return list(names)

    # -- rnnshap's values ----------------------------------------------------------------------------------
    def _build_explainer(self, model: Any, background_arr: np.ndarray, shap_method: Any, **kwargs: Any) -> Any:
        if shap_method not in self._supported_shap_methods:  # darts' own check and words
            raise ValueError(
                f"Unknown SHAP method `'{shap_method}'`. Must be one of "
                f"{[el.name.lower() for el in self._supported_shap_methods]}"
            )
        if kwargs:
            raise InputError(f"rnnshap.darts.ShapExplainer takes no shap explainer keyword arguments; got {sorted(kwargs)}")
        self.module = forecast_module(model, self.n, [name for name, _ in self._layout()], self.affine)
        self.background_windows = self._windows(background_arr)
        return self._explain

    def _windows(self, arr: np.ndarray) -> list[torch.Tensor]:
        """Split darts' flat feature array back into the window tensors, in the module's dtype."""
        pl_module = self.model.model
        x = torch.as_tensor(np.asarray(arr), dtype=pl_module.dtype, device=pl_module.device)
        out, offset = [], 0
        for name, shape in self._layout():
            if name == "static_covariates":  # laid out variable-major, as darts names them: back to (components, variables)
                size = int(np.prod(self._static_shape)) if self._static_shape is not None else x.shape[1] - offset
                components, variables = self._static_shape or (-1, shape[1])
                out.append(x[:, offset : offset + size].reshape(x.shape[0], variables, components).transpose(1, 2))
            else:
                size = int(np.prod(shape))
                out.append(x[:, offset : offset + size].reshape(x.shape[0], *shape))
            offset += size
        if offset != x.shape[1]:
            raise InputError(f"the feature array has {x.shape[1]} columns, the model's windows {offset}")
        return out

    def _explain(self, foreground_arr: np.ndarray, **kwargs: Any) -> shap.Explanation:
        """What darts' adapter calls its shap explainer with: the flat foreground array; returns a
        ``shap.Explanation`` with values ``(E, F, n · targets)`` and base values ``(E, n · targets)``."""
        if kwargs:
            raise InputError(f"rnnshap.darts.ShapExplainer takes no shap explainer keyword arguments; got {sorted(kwargs)}")
        X = self._windows(foreground_arr)
        model = self.model
        with self.module.predicting(self.rnnshap_batch_size):
            result = attribute(
                self.module,
                self.background_windows,
                X,
                method=self.method,
                budget=self.budget,
                random_state=self.random_state,
                batch_size=self.rnnshap_batch_size,
                what=f"darts {type(model).__name__}",
                progress=self.progress,
            )
        self.last = result
        E = foreground_arr.shape[0]
        fields = [name for name, _ in self._layout()]

        def flat(parts: list[np.ndarray]) -> np.ndarray:
            """per window tensor (E, *window, k) -> (E, features, k) in darts' feature order (static covariates:
            variable-major, as darts names them)"""
            return np.concatenate(
                [(p.transpose(0, 2, 1, 3) if f == "static_covariates" else p).reshape(E, -1, p.shape[-1]) for f, p in
                 zip(fields, parts, strict=True)], axis=1,
            )  # fmt: skip

        values = flat(result.values)
        stderr = None if result.stderr is None else flat(result.stderr)
        self.last_stderr = stderr
        return shap.Explanation(values=values, base_values=result.base_values, data=np.asarray(foreground_arr), error_std=stderr)

    def shap_explanations(  # type: ignore[override]
        self, foreground_arr: np.ndarray, foreground_times: pd.Index, horizons: Sequence[int], target_components: Sequence[str],
        **kwargs: Any,
    ) -> dict[int, dict[str, DartsShapExplanation]]:
        """darts' assembly per horizon and component, plus the standard errors (``error_std``) in the
        Shapley mode."""
        explanations = super().shap_explanations(foreground_arr, foreground_times, horizons, target_components, **kwargs)
        stderr = self.last_stderr  # (E, features, k) in darts' feature order
        for h in horizons:
            for t_idx, t in enumerate(self.target_components_likelihood):
                if t not in explanations[h]:
                    continue
                e = explanations[h][t]
                column = self.n_targets_likelihood * (h - 1) + t_idx
                explanations[h][t] = DartsShapExplanation(
                    values=e.values,
                    data=e.data,
                    base_values=e.base_values,
                    feature_names=e.feature_names,
                    time_index=e.time_index,
                    error_std=None if stderr is None else stderr[:, :, column],
                )
        return explanations

    def shap_explanations_single(  # type: ignore[override]
        self, foreground_arr: np.ndarray, foreground_times: pd.Index, target_components: Sequence[str], **kwargs: Any
    ) -> dict[str, DartsShapExplanation]:
        """darts' single-forecast assembly (one row per horizon), with ``error_std`` in the Shapley mode."""
        horizons = list(range(1, self.n + 1))
        explanations = self.shap_explanations(foreground_arr[-1:], foreground_times[-1:], horizons, target_components, **kwargs)
        out = {}
        for t in target_components:
            parts = [explanations[h][t] for h in horizons]
            errors = [e.error_std for e in parts]
            out[t] = DartsShapExplanation(
                values=np.concatenate([np.atleast_2d(e.values) for e in parts], axis=0),
                data=np.concatenate([np.atleast_2d(e.data) for e in parts], axis=0),
                base_values=np.concatenate([np.atleast_1d(e.base_values) for e in parts]),
                feature_names=parts[0].feature_names,
                time_index=parts[0].time_index,
                error_std=None if errors[0] is None else np.concatenate([np.atleast_2d(s) for s in errors], axis=0),
            )
        return out


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


def _times(times: list[Any], freq: Any) -> pd.Index:
    """The forecasts' times, carrying the series' frequency where they are consecutive (one or two stamps give pandas
    too little to infer it from, and darts' result assembly needs it); else as they are."""
    if len(times) > 0 and isinstance(times[0], pd.Timestamp):
        with contextlib.suppress(ValueError, TypeError):
            return pd.DatetimeIndex(times, freq=freq)
    elif len(times) > 0 and isinstance(freq, (int, np.integer)):
        step, start = int(freq), int(times[0])
        if [int(t) for t in times] == list(range(start, start + step * len(times), step)):
            return pd.RangeIndex(start, start + step * len(times), step)
    return pd.Index(times)


def _check_lengths(
    model: Any, n: int, series: Sequence[Any], past: Sequence[Any] | None, future: Sequence[Any] | None, input_type: str
) -> None:
    """darts' terms for a series too short for one window, and for covariates the model was not fit with."""
    L = model.input_chunk_length
    for i, s in enumerate(series):
        if len(s) < L:
            raise InputError(
                f"The {input_type} series at index {i} has {len(s)} time steps, shorter than the model's "
                f"input_chunk_length={L}: no forecast can be made from it."
            )
    if past is not None and not model.uses_past_covariates:
        raise InputError(f"{input_type}_past_covariates were given, but the model was fit without past covariates")
    if future is not None and not model.uses_future_covariates:
        raise InputError(f"{input_type}_future_covariates were given, but the model was fit without future covariates")


class ShapExplainer(_DartsShapExplainer):
    """darts' ``ShapExplainer``, answered by rnnshap: DeepSHAP (exact in sum) or the Shapley mode.

    Parameters
    ----------
    model
        A fitted darts ``TorchForecastingModel`` (``RNNModel``, ``BlockRNNModel``, ``TCNModel``, ``NBEATSModel``,
        ``NHiTSModel``, ``TiDEModel``, ``DLinearModel``, ``NLinearModel``, ``TSMixerModel``, ``TFTModel``, ...). Any
        other model (darts' regression models: shap's Linear and Tree explainers are exact for those) is explained by
        darts' own explainer, as ``darts.explainability.ShapExplainer`` would.
    background_series, background_past_covariates, background_future_covariates
        As for darts' ``ShapExplainer``: the reference windows (default: the series the model was fit on;
        with ``target_scaler``, its unscaled copy ``target_scaler.inverse_transform(model.training_series)``).
        The background series is also the default foreground of ``explain()`` / ``explain_single()``.
    shap_method
        darts' argument: where given, darts' own explainer answers with that shap method, as before (rnnshap's own
        arguments are then refused). Every result says which explainer answered: ``result.explained_by``.
    background_num_samples
        Optionally, the number of background windows drawn at random (darts' argument, at most 1000), without
        replacement, by a numpy Generator seeded with ``random_state`` (default: the fixed seed :data:`BACKGROUND_SEED`),
        so that the same call draws the same background; numpy's global random state is neither used nor moved.
        Default: every window up to :data:`DEFAULT_BACKGROUND_SAMPLES` (100), a draw of that many beyond, said in a
        log warning; every result says the count (``result.background_num_samples`` of ``result.background_windows``).
    batch_size
        The most (sample, reference) pairs rnnshap runs through the model at once (default 2048).
    n
        The forecast horizon explained (default ``output_chunk_length``). Beyond ``output_chunk_length`` the
        forecast is darts' auto-regressive ``predict(n)``: explained exactly, every horizon up to ``n``.
    method
        ``"deepshap"`` (default: one pass; the values of each forecast add up to darts' forecast minus the
        base value) or ``"shapley"`` (the Shapley values of the lag players, with standard errors).
    budget, random_state
        Shapley mode: the most rows per forecast run through the model (default: 16x DeepSHAP's cost; exact
        where it covers every coalition against every background window), and the seed (a non-negative
        integer or a numpy Generator, which is then advanced), also the seed of the background draw.
    target_scaler
        Optionally, a darts ``Scaler`` fitted on the (single) target series the model was trained on after
        scaling. The series passed are then unscaled, and the values are in their units (the default
        background and foreground too: the training series, unscaled by ``target_scaler.inverse_transform``).
    progress
        A tqdm progress bar over the work (default None: only when stderr is a terminal).
    test_stationarity
        darts' argument. Default: darts' own (True) where darts' own explainer answers; False where rnnshap
        answers (the check only logs a warning about the background).

    Raises
    ------
    ValueError
        darts' own checks, in darts' words (an unfitted model, missing covariates, a horizon below 1 or beyond the
        explained one, an invalid ``shap_method``, a model type darts does not explain); an
        :class:`rnnshap.InputError` (a ValueError) for what rnnshap adds: a series shorter than the input
        window, covariates the model was fit without, rnnshap's arguments with darts' own explainer, a count
        (``n``, ``horizons``, ``background_num_samples``, ``batch_size``) that is not an integer of at least 1
        (never truncated), a ``random_state`` that is not a seed.
    rnnshap.forecasting.UnverifiedVersionError
        darts is installed at a version outside the series this adapter was verified on
        (:data:`rnnshap.forecasting.VERIFIED`).
    rnnshap.UnsupportedOperationError
        from ``explain`` with ``method="deepshap"``, for a model with an operation DeepSHAP has no exact
        rule for, naming the operation and ``method="shapley"`` as the fallback.

    Examples
    --------
    >>> from rnnshap.darts import ShapExplainer                       # doctest: +SKIP
    >>> explainer = ShapExplainer(model, background_num_samples=50)  # doctest: +SKIP
    >>> result = explainer.explain(series)                           # doctest: +SKIP
    >>> result.get_explanation(horizon=1)                            # doctest: +SKIP
    """

    background_series: Sequence[TimeSeries]  # set by darts' _ForecastingModelExplainer.__init__

    @property
    def background_num_samples(self) -> int:
        """The number of background windows the values are explained against (drawn from
        :attr:`background_windows_total` where that is more; see ``background_num_samples=``)."""
        return int(np.asarray(self.explainer.background_arr).shape[0])

    @property
    def background_windows_total(self) -> int | None:
        """The number of windows the background series hold (None where darts' own explainer answered)."""
        return None if self.delegated else int(self.explainer.background_windows_total)

    def _said(self, result: Any) -> Any:
        """``result`` with which explainer answered and the background it was explained against, and rnnshap's
        result contract (:class:`rnnshap.result.AttributionResult`) as ``result.attribution``: the
        :attr:`last_attribution`, its background stated (None where darts' own explainer answered)."""
        result.explained_by = self.explained_by
        result.background_num_samples = self.background_num_samples
        result.background_windows = self.background_windows_total
        result.attribution = self.last_attribution
        if result.attribution is not None:
            rows = int(self.explainer.background_windows[0].shape[0])
            result.attribution.background = stated("darts", rows, self.background_given)
        return result
    explainer: Any  # the shap adapter: rnnshap's, or darts' own where darts' own explainer answers

    def __init__(
        self,
        model: Any,
        background_series: Any = None,
        background_past_covariates: Any = None,
        background_future_covariates: Any = None,
        background_num_samples: int | None = None,
        shap_method: str | None = None,
        batch_size: int | None = None,
        test_stationarity: bool | None = None,
        *,
        n: int | None = None,
        method: str = "deepshap",
        budget: int | None = None,
        random_state: Any = None,
        target_scaler: Any = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> None:
        check_version("darts")
        self.delegated = not isinstance(model, TorchForecastingModel) or shap_method is not None
        if self.delegated:
            # darts' own explainer answers, as before: the user named one of shap's methods, or the model is not a
            # network rnnshap explains (darts' SKLearnModels, for which shap's Tree and Linear explainers are exact;
            # anything else darts refuses in its own words)
            ours = {"n": n, "budget": budget, "random_state": random_state, "target_scaler": target_scaler, "progress": progress}
            given = sorted([name for name, value in ours.items() if value is not None] + [
                "method"] * (str(method).lower() != "deepshap"))  # fmt: skip
            if given:
                why = f"shap_method={shap_method!r}" if shap_method is not None else f"a {type(model).__name__}"
                raise InputError(
                    f"{why} is explained by darts' own ShapExplainer, which takes none of rnnshap's arguments {given}; "
                    "leave out shap_method= for rnnshap's values"
                )
            self.method = "darts"
            _DartsShapExplainer.__init__(
                self, model, background_series, background_past_covariates, background_future_covariates,
                background_num_samples, shap_method, batch_size, True if test_stationarity is None else test_stationarity,
                **kwargs,
            )  # fmt: skip
            adapter: Any = self.explainer
            self.explained_by = f"darts ({type(adapter).__name__}, shap_method='{adapter.shap_method.name.lower()}')"
            return
        self.method = check_method(method)
        self.explained_by = f"rnnshap ({self.method})"
        if target_scaler is not None:
            _scaler_transformer(target_scaler)
        _ForecastingModelExplainer.__init__(
            self,
            model=model,
            background_series=background_series,
            background_past_covariates=background_past_covariates,
            background_future_covariates=background_future_covariates,
            requires_background=True,
            requires_covariates_encoding=True,
            check_component_names=True,
            test_stationarity=bool(test_stationarity),
        )
        if background_num_samples is not None:
            background_num_samples = _count(background_num_samples, "background_num_samples")
        if batch_size is not None:
            batch_size = _count(batch_size, "batch_size")
        ocl = model.output_chunk_length or 1
        if n is not None:
            n = _count(n, "n")
            if n > ocl and model.output_chunk_shift:
                raise InputError(
                    f"n={n} > output_chunk_length={ocl}: darts cannot auto-regress a model with output_chunk_shift="
                    f"{model.output_chunk_shift}, so neither can the explanation"
                )
            if n > ocl and model.likelihood is not None:
                raise InputError(
                    f"n={n} > output_chunk_length={ocl}: darts forecasts a likelihood model beyond output_chunk_length by "
                    "feeding back sampled values (and refuses predict_likelihood_parameters=True there), a random function "
                    "with nothing exact to explain; explain its likelihood parameters up to n=output_chunk_length"
                )
            self.n = n
        affine = None
        if target_scaler is not None:
            if model.likelihood is not None and type(model.likelihood).__name__ != "QuantileRegression":
                raise InputError(
                    f"target_scaler with a {type(model.likelihood).__name__}: its parameters are not all in the target's units "
                    "(a scale parameter takes the scaler's factor without its offset); explain the scaled model instead"
                )
            affine = _affine_of(target_scaler, self.target_components)
            if background_series is None:
                # darts fell back to the series the model was fit on (and its covariates): the *scaled* series.
                # The scaler's map is part of the explained function, so the background (and the default
                # foreground, which is the background) is its unscaled copy, in the units explain() takes
                self.background_series = [target_scaler.inverse_transform(s) for s in self.background_series]
        _check_lengths(model, self.n, self.background_series, None, None, "background")
        #: whether background series were given (else darts' default, the series the model was fit on)
        self.background_given = background_series is not None
        self.explainer = _RnnshapTorchAdapter(
            model=self.model,
            n=self.n,
            target_components=self.target_components,
            past_covariates_components=self.past_covariates_components,
            future_covariates_components=self.future_covariates_components,
            static_covariates_components=self.static_covariates_components,
            background_series=self.background_series,
            background_past_covariates=self.background_past_covariates,
            background_future_covariates=self.background_future_covariates,
            background_num_samples=background_num_samples,
            shap_method="permutation",  # darts' adapter wants one of its names; the values are rnnshap's
            batch_size=batch_size,
            method=self.method,
            budget=budget,
            random_state=random_state,
            rnnshap_batch_size=batch_size or 2048,
            affine=affine,
            progress=progress,
            **kwargs,
        )

    def _process_foreground(
        self, foreground_series: Any = None, foreground_past_covariates: Any = None, foreground_future_covariates: Any = None
    ) -> Any:
        if foreground_series is not None and not self.delegated:
            _check_lengths(
                self.model, self.n, series2seq(foreground_series), series2seq(foreground_past_covariates),
                series2seq(foreground_future_covariates), "foreground",
            )  # fmt: skip
        return super()._process_foreground(foreground_series, foreground_past_covariates, foreground_future_covariates)

    def _process_horizons_and_targets(
        self, horizons: int | Sequence[int] | None, target_components: str | Sequence[str] | None
    ) -> tuple[Sequence[int], Sequence[str]]:
        """darts' check and words, with the horizon ``n`` this explainer was built for (not ``output_chunk_length``)."""
        if self.delegated:
            return super()._process_horizons_and_targets(horizons, target_components)
        if horizons is not None:
            hs: list[Any]
            try:
                hs = [horizons] if isinstance(horizons, str) else list(horizons)  # type: ignore[arg-type]
            except TypeError:  # one horizon
                hs = [horizons]
            if not hs or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) for h in hs):
                raise InputError(f"horizons={horizons}: give integers between 1 and n={self.n}")
            if max(hs) > self.n:
                ocl = self.model.output_chunk_length
                raise InputError(
                    "At least one of the `horizons` is larger than `output_chunk_length`." if self.n == ocl else
                    f"At least one of the `horizons` is larger than n={self.n}, the horizon this explainer was built for."
                )  # fmt: skip
            if min(hs) < 1:
                raise InputError("All `horizons` must be `>=1`.")
            horizons = [int(h) for h in hs]
        return process_horizons_and_targets(
            horizons=horizons,
            fallback_horizon=self.n,
            target_components=target_components,
            fallback_target_components=self.target_components_likelihood,
            check_component_names=self.check_component_names,
        )

    def explain_single(  # type: ignore[override]
        self,
        foreground_series: Any = None,
        foreground_past_covariates: Any = None,
        foreground_future_covariates: Any = None,
        target_components: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ShapSingleExplainabilityResult:
        """darts' ``explain_single``: the forecast ``model.predict(n, series=...)`` makes from the end of the
        (last) series. darts' own explainer explains the last forecast the covariates allow, which is an
        earlier one where they end too soon; this one raises then, as ``predict`` does."""
        result = self._said(super().explain_single(
            foreground_series, foreground_past_covariates, foreground_future_covariates, target_components, **kwargs
        ))  # fmt: skip
        if self.delegated:
            return result
        last = series2seq(foreground_series if foreground_series is not None else self.background_series)[-1]
        start = result.get_explanation(result.available_components[0]).start_time()
        expected = last.end_time() + (1 + self.model.output_chunk_shift) * last.freq  # where predict's forecast starts
        if start != expected:
            raise InputError(
                f"predict(n={self.n}) from the end of the series forecasts from {expected}, but the covariates end too "
                f"soon for it: the last forecast they allow starts at {start}. Extend the covariates as predict(n={self.n}) "
                "needs them, or explain() every forecast they allow."
            )
        return result

    def explain(  # type: ignore[override]
        self,
        foreground_series: Any = None,
        foreground_past_covariates: Any = None,
        foreground_future_covariates: Any = None,
        horizons: int | Sequence[int] | None = None,
        target_components: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ShapExplainabilityResult:
        """darts' ``explain``: every forecast the foreground allows; the result's ``explained_by`` says which
        explainer answered (``"rnnshap (deepshap)"``, ``"rnnshap (shapley)"``, or darts' own)."""
        return self._said(super().explain(
            foreground_series, foreground_past_covariates, foreground_future_covariates, horizons, target_components, **kwargs
        ))  # fmt: skip

    def summary_plot(  # type: ignore[override]
        self,
        foreground_series: Any = None,
        foreground_past_covariates: Any = None,
        foreground_future_covariates: Any = None,
        horizons: int | Sequence[int] | None = None,
        target_components: str | Sequence[str] | None = None,
        num_samples: int | None = None,
        plot_type: str | None = "dot",
        plot_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[int, dict[str, shap.Explanation]]:
        """darts' ``summary_plot``: one shap summary plot per horizon and target component. Without
        ``num_samples``, a foreground of more than :data:`SUMMARY_PLOT_POINTS` forecasts is sampled to that many
        (seeded, in time order) before it is explained and drawn; each plot's title says how many of how many.
        Returns darts' ``{horizon: {component: explanation}}`` of the forecasts drawn."""
        if self.delegated:
            return super().summary_plot(
                foreground_series, foreground_past_covariates, foreground_future_covariates, horizons, target_components,
                num_samples, plot_type, plot_kwargs, **kwargs,
            )  # fmt: skip
        import matplotlib.pyplot as plt

        if num_samples is not None:
            num_samples = _count(num_samples, "num_samples")
        series, past, future, *_ = self._process_foreground(
            foreground_series, foreground_past_covariates, foreground_future_covariates
        )
        horizons, target_components = self._process_horizons_and_targets(horizons, target_components)
        # the foreground's windows (the background series' too, where no foreground is given), a seeded sample in time order
        arr, times = self.explainer.create_shap_input(
            series, past, future, n_samples=num_samples or SUMMARY_PLOT_POINTS, input_type="foreground"
        )
        total = self.explainer.last_windows_total
        explanations = self.explainer.shap_explanations(arr, times, horizons, target_components, **kwargs)
        for t in target_components:
            for h in horizons:
                plt.title(f"Target: `{t}` - Horizon: t+{h + self.model.output_chunk_shift} ({len(arr)} of {total} forecasts)")
                shap.summary_plot(shap_values=explanations[h][t], features=arr, plot_type=plot_type, **(plot_kwargs or {}))
        return explanations

    @property
    def last_attribution(self) -> WindowAttribution | None:
        """The raw :class:`rnnshap.forecasting.WindowAttribution` of the last call (per window tensor; with
        ``n_evals`` and ``exact`` in the Shapley mode); None where darts' own explainer answered."""
        return None if self.delegated else self.explainer.last


def standard_errors(result: Any, horizon: int | None = None, component: str | None = None) -> TimeSeries | list[TimeSeries]:
    """The standard errors of a Shapley-mode result, as a ``TimeSeries`` shaped like ``get_explanation``'s
    (0 where the values are exact); for a ``ShapSingleExplainabilityResult`` leave ``horizon`` out.

    Raises InputError for a DeepSHAP result (it has no standard errors: its values are exact in sum).

    Example::

        result = ShapExplainer(model, method="shapley", budget=2000, random_state=0).explain(series)
        standard_errors(result, horizon=1)   # a TimeSeries, one column per darts feature name
    """

    def one(e: Any, values: TimeSeries) -> TimeSeries:
        if e.error_std is None:
            raise InputError("this result has no standard errors: explain with method='shapley'")
        return TimeSeries(times=values.time_index, values=np.asarray(e.error_std), components=values.components)

    if isinstance(result, ShapSingleExplainabilityResult):
        return one(result.get_shap_explanation_object(component), result.get_explanation(component))
    if horizon is None:
        raise InputError("give the horizon of the standard errors")
    objects, values = result.get_shap_explanation_object(horizon, component), result.get_explanation(horizon, component)
    if isinstance(objects, list):
        return [one(e, v) for e, v in zip(objects, values, strict=True)]
    return one(objects, values)
