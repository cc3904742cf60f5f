"""darts' shap adapter with rnnshap's values (:class:`RnnshapTorchAdapter`): darts' window building, feature
names and result assembly, with darts' flat feature array split back into the windows of darts' inference
dataset and explained by :func:`rnnshap.forecasting.attribute`; the background draw and darts' length checks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...errors import InputError
from .. import WindowAttribution, attribute
from .forecast import forecast_module
from .library import (
    MAX_BACKGROUND_SAMPLE,
    MIN_BACKGROUND_SAMPLE,
    DartsShapExplanation,
    TorchShapAdapter,
    create_dataset_bounds,
    create_lagged_component_names,
    series2seq,
    shap,
)

#: the seed of the background draw (``background_num_samples``) when no ``random_state`` is given
BACKGROUND_SEED = 0

#: the background windows drawn (seeded, without replacement) when ``background_num_samples`` is not given and
#: the background series hold more: DeepSHAP's cost grows with foreground x background windows, and its values add
#: up to each forecast whatever the background; the background only sets the reference (the base value is the
#: mean forecast over it), which 100 windows estimate well (shap's own advice for its DeepExplainer: 100 to 1000)
DEFAULT_BACKGROUND_SAMPLES = 100

logger = logging.getLogger("rnnshap.forecasting.darts")  # the door's logger, whichever module speaks


def background_rng(random_state: Any) -> np.random.Generator:
    """The generator of the background draw: seeded by ``random_state`` (a non-negative integer, or a numpy
    Generator, used as given), else by :data:`BACKGROUND_SEED`; never numpy's global random state."""
    if random_state is None:
        return np.random.default_rng(BACKGROUND_SEED)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool) and random_state >= 0:
        return np.random.default_rng(int(random_state))
    raise InputError(f"random_state must be a non-negative integer, a numpy Generator or None, not {random_state!r}")


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


def check_lengths(
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


class RnnshapTorchAdapter(TorchShapAdapter):
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
        self.rng = background_rng(random_state)  # the background draw (background_num_samples)
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
        check_lengths(self.model, self.n, series, past_covariates, future_covariates, input_type)
        bounds, _ = create_dataset_bounds(
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
