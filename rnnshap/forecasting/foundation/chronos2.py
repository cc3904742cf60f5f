"""chronos-forecasting's Chronos-2: ``pipeline.predict_quantiles(inputs, prediction_length, quantile_levels)``.

``predict_quantiles`` turns its inputs into batches in numpy (``Chronos2Dataset``): per series one group of
rows, the target first, then the past-only covariates, then the covariates known into the future (their future
values in ``future_covariates``, NaN for the others), each cut to the last ``context_length`` steps; then
``_predict_batch`` runs the model under ``no_grad`` (``InstanceNorm`` with ``nanmean`` and ``arcsinh``, group
attention across the rows of one group, the long-horizon unrolling). DeepSHAP explains the pipeline's own
``_predict_batch`` on the batch laid out as the dataset lays it out
(its output is checked against ``predict_quantiles`` on the same inputs).

``covariates`` take Chronos-2's own names: ``{"past_covariates": {name: (n, L)}, "future_covariates": {name:
(n, H)}}`` (every future covariate also past, as chronos requires; numeric only). Their values come back per
covariate name, ``(n, L, H, Q)`` for a past-only covariate and ``(n, L + H, H, Q)`` for a known one (its past
steps, then its future steps).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import InputError
from .chronos_pipeline import ChronosPipelineAdapter
from .inputs import windows_of

#: the quantiles ``predict`` unrolls long horizons on (its default)
UNROLLED = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class Chronos2Adapter(ChronosPipelineAdapter):
    label = "Chronos-2"

    def __init__(self, model: Any) -> None:
        from chronos import Chronos2Pipeline

        pipeline = model if isinstance(model, Chronos2Pipeline) else Chronos2Pipeline(model)
        super().__init__(pipeline)
        self.pipeline = pipeline
        #: covariate names in the batch's row order (past-only first, then known), and which are known
        self.past_only: list[str] = []
        self.known: list[str] = []
        self.covariate_values: dict[str, np.ndarray] = {}

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        trained = [float(q) for q in self.pipeline.quantiles]
        if requested is None:
            return trained
        levels = [float(q) for q in requested]
        missing = [q for q in levels if not any(abs(q - t) < 1e-12 for t in trained)]
        if missing or not levels:
            raise InputError(f"quantile_levels: {self.label} forecasts the levels {trained}; {missing} are not among them")
        return levels

    # -- covariates ---------------------------------------------------------------------------------------------
    def set_covariates(self, covariates: Any, n: int, L: int, H: int) -> list[tuple[str, np.ndarray]]:
        """Read ``covariates`` (Chronos-2's names); returns the attributed inputs in order: per covariate its
        windows, (n, L) past-only, (n, L + H) known into the future."""
        if covariates is None:
            return []
        if not isinstance(covariates, Mapping) or not set(covariates) <= {"past_covariates", "future_covariates"}:
            raise InputError('covariates: give {"past_covariates": {name: (n, L)}, "future_covariates": {name: (n, H)}}')
        past = dict(covariates.get("past_covariates") or {})
        future = dict(covariates.get("future_covariates") or {})
        if not set(future) <= set(past):
            raise InputError(
                f"covariates: future covariates {sorted(set(future) - set(past))} have no past values; Chronos-2 takes a "
                "known covariate's past in past_covariates and its future in future_covariates"
            )
        self.past_only = [name for name in past if name not in future]
        self.known = [name for name in past if name in future]
        out = []
        for name in self.past_only + self.known:
            values = windows_of(past[name], f"past_covariates[{name!r}]")
            if values.shape != (n, L):
                raise InputError(f"past_covariates[{name!r}] has shape {values.shape}; the context is {(n, L)}")
            if name in future:
                ahead = windows_of(future[name], f"future_covariates[{name!r}]")
                if ahead.shape != (n, H):
                    raise InputError(f"future_covariates[{name!r}] has shape {ahead.shape}; expected {(n, H)}")
                values = np.concatenate([values, ahead], axis=1)
            if np.isnan(values).any():
                raise InputError(f"covariate {name!r} holds NaN: rnnshap.foundation explains covariates without missing values")
            out.append((name, values))
        self.covariate_values = dict(out)
        return out

    def _inputs(self, windows: np.ndarray, covariates: Mapping[str, np.ndarray], H: int) -> list[dict[str, Any]]:
        """Chronos-2's list-of-dicts input for the windows and covariate windows (the public call's form)."""
        L = windows.shape[1]
        tasks = []
        for i in range(windows.shape[0]):
            task: dict[str, Any] = {"target": windows[i]}  # NaN (missing, the padding of a shorter series) as chronos takes it
            if covariates:
                task["past_covariates"] = {name: covariates[name][i, :L] for name in self.past_only + self.known}
                if self.known:
                    task["future_covariates"] = {name: covariates[name][i, L : L + H] for name in self.known}
            tasks.append(task)
        return tasks

    # -- the two forms of the forecast ---------------------------------------------------------------------------
    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        return self.forecast_with(windows, self.covariate_values, prediction_length, levels)

    def forecast_with(self, windows: np.ndarray, covariates: Mapping[str, np.ndarray], H: int, levels: list[Any]) -> np.ndarray:
        if covariates or np.isnan(windows[:, 0]).any():
            inputs: Any = self._inputs(windows, covariates, H)
        else:
            import torch

            inputs = torch.as_tensor(windows, dtype=torch.float32)[:, None]
        quantiles, _ = self.pipeline.predict_quantiles(inputs, prediction_length=H, quantile_levels=levels)
        return np.stack([q.reshape(H, len(levels)).double().cpu().numpy() for q in quantiles])

    def refusal_note(self, prediction_length: int, levels: Sequence[Any] = ()) -> str:
        own = int(self.pipeline.model_prediction_length)
        if prediction_length <= own:
            return ""
        return (
            f" (prediction_length={prediction_length} is past the model's own {own} steps: predict() unrolls by feeding "
            f"quantiles back and interpolates the resulting quantiles with searchsorted; prediction_length<={own} is one "
            "forward)"
        )

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return windows  # NaN is chronos' missing value

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        import torch
        from torch import nn

        adapter = self
        pipeline = self.pipeline
        trained = [float(q) for q in pipeline.quantiles]
        columns = [min(range(len(trained)), key=lambda j: abs(trained[j] - q)) for q in levels]
        H = prediction_length
        context_length = self.context_length()
        n_past_only, n_known = len(self.past_only), len(self.known)

        class Forecast(nn.Module):
            """``_predict_batch`` on the dataset's batch of the target (n, L) and covariate windows: (n, H·Q)."""

            dtype = torch.float32

            def __init__(self) -> None:
                super().__init__()
                self.net = pipeline.model

            def forward(self, x: torch.Tensor, *covariates: torch.Tensor) -> torch.Tensor:
                n, L = x.shape
                rows = [x] + [c[:, :L] for c in covariates]
                group = len(rows)
                context = torch.stack(rows, dim=1).reshape(n * group, L)[:, max(0, L - context_length) :]
                nan = x.new_full((n, H), float("nan"))
                future = [nan] * (1 + n_past_only) + [c[:, L : L + H] for c in covariates[n_past_only:]]
                future_covariates = torch.stack(future, dim=1).reshape(n * group, H)
                group_ids = torch.arange(n).repeat_interleave(group)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    predictions = pipeline._predict_batch(
                        context=context, group_ids=group_ids, future_covariates=future_covariates,
                        unrolled_quantiles_tensor=torch.tensor(UNROLLED), prediction_length=H,
                        max_output_patches=pipeline.max_output_patches,
                        target_idx_ranges=[(g * group, g * group + 1) for g in range(n)],
                    )  # fmt: skip
                quantiles = torch.cat(predictions, dim=0).swapaxes(1, 2)  # (n, H, Q)
                return quantiles[..., columns].reshape(n, -1)

        assert n_known + n_past_only == len(adapter.covariate_values)
        return Forecast()
