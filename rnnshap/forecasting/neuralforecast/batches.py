"""One ``explain`` call inside neuralforecast's predict loop (:class:`ExplainRun`): each batch of windows answered in one
rnnshap call, in the shapes of neuralforecast's ``_explain_batch``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError, UnsupportedOperationError
from .. import attribute, preserved
from .forecast import ForecastBuilder
from .models import IQ_GRID, WINDOW_KEYS, is_distribution, model_name


class ExplainRun:
    """What one ``explain`` call needs inside neuralforecast's predict loop."""

    def __init__(
        self, method: str, budget: int | None, random_state: Any, batch_size: int, check_additivity: bool | float, background: Any
    ) -> None:
        self.method, self.budget, self.random_state = method, budget, random_state
        self.batch_size, self.check_additivity, self.background = batch_size, check_additivity, background
        #: per model name: (recursive step, the explained outputs, and in the Shapley mode the standard errors and rows
        #: per window) of each call
        self.calls: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        #: IQLoss models asked quantiles= / level= (by id): the quantiles asked (see ``ForecastBuilder.iq_quantiles``)
        self.iq: dict[int, list[float]] = {}

    def explain_batch(
        self,
        model: Any,
        insample_y: Any,
        insample_mask: Any,
        futr_exog: Any,
        hist_exog: Any,
        stat_exog: Any,
        y_idx: Any,
        y_hat_shape: Any,
        recursive_step: int = 0,
    ) -> tuple[Any, Any, Any, Any, Any]:
        """``model._explain_batch``'s contract: attributions of one batch of windows, in its shapes."""
        import torch

        if model.RECURRENT:  # one rollout over the whole horizon (model.h is back at the fitted h by now)
            step_start, step_end = 0, model.predict_horizon
        else:  # neuralforecast's recursion for h > model.h: explained chunk by chunk, as its own explain does
            step_start = recursive_step * model.h
            step_end = min((recursive_step + 1) * model.h, model.predict_horizon)
        wanted = model.explainer_config.get("horizons", list(range(model.predict_horizon)))
        local = [h - step_start for h in wanted if step_start <= h < step_end]
        outputs = list(model.explainer_config.get("output_index", [0]))
        if not local:  # neuralforecast's own empty answer for a recursive step with nothing to explain
            return type(model)._explain_batch(
                model, insample_y, insample_mask, futr_exog, hist_exog, stat_exog, y_idx, y_hat_shape, recursive_step
            )
        given = {
            "insample_y": insample_y, "insample_mask": insample_mask, "futr_exog": futr_exog, "hist_exog": hist_exog,
            "stat_exog": stat_exog,
        }  # fmt: skip
        present = [key for key in WINDOW_KEYS if given[key] is not None]
        _refuse_read_nans(model, given, present)
        multivariate = bool(model.MULTIVARIATE)
        series = [int(k) for k in model.explainer_config.get("series", [0])] if multivariate else [0]
        X = [torch.nan_to_num(given[key].detach().clone(), nan=0.0) for key in present]
        n = X[0].shape[0]
        if multivariate and "stat_exog" in present:  # one [n_series, S] table for the batch: a copy per window
            i = present.index("stat_exog")
            X[i] = X[i].unsqueeze(0).expand(n, *X[i].shape).clone()
        background = self._background(present, X)
        iq_quantiles = self.iq.get(id(model))
        if iq_quantiles is not None and model.loss.q != IQ_GRID[-1]:
            # neuralforecast's predict runs an IQLoss model once per quantile of IQ_GRID, each run's explanations
            # replacing the last: the asked quantiles (which read all 11) are explained in the last run, the others
            # answer zeros of its shapes
            zeros = [np.zeros((n, *x.shape[1:], len(local) * len(series) * len(outputs))) for x in X]
            shaped = self._shape(model, present, zeros, len(local), len(series), len(outputs), X)
            return self._answer(shaped, np.zeros((n, len(local), len(series), len(outputs))), insample_y)
        build = ForecastBuilder(model, y_idx, local, outputs, present, series, iq_quantiles)
        y_loc, y_scale = (t.detach().clone() for t in model._get_loc_scale(y_idx))  # (n, 1, 1); multivariate (n, 1, n_series)
        what = f"neuralforecast's {model_name(model)}"
        with torch.enable_grad():
            if is_distribution(model):
                parts = []
                for i in range(n):
                    module = build.distribution_module(y_loc[i : i + 1], y_scale[i : i + 1])
                    parts.append(self._attribute(module, background, [x[i : i + 1] for x in X], what))
                values = [np.concatenate([p.values[j] for p in parts]) for j in range(len(X))]
                stderr = None
                if parts[0].stderr is not None:
                    stderr = [np.concatenate([p.stderr[j] for p in parts]) for j in range(len(X))]  # type: ignore[index]
                base = np.concatenate([p.base_values for p in parts])
                forecast = np.concatenate([p.outputs for p in parts])
                n_evals = None if parts[0].n_evals is None else np.concatenate([p.n_evals for p in parts])  # type: ignore[misc]
                exact = None if parts[0].exact is None else np.concatenate([p.exact for p in parts])  # type: ignore[misc]
            else:
                scaler = model.scaler
                with preserved(scaler):  # the forecast in the network's units; the window's fixed affine map is applied below
                    scaler.x_shift = torch.zeros_like(scaler.x_shift[:1]).detach()
                    scaler.x_scale = torch.ones_like(scaler.x_scale[:1]).detach()
                    result = self._attribute(build.point_module(), background, X, what)
                # the window's affine map per explained output column (horizon, series, output)
                per = (n, len(local), len(series), len(outputs))
                def per_output(t: Any) -> np.ndarray:
                    chosen = t.reshape(n, -1)[:, series].double().cpu().numpy()  # (n, S)
                    return np.broadcast_to(chosen[:, None, :, None], per).reshape(n, -1)

                a, b = per_output(y_loc), per_output(y_scale)

                def scaled(v: np.ndarray) -> np.ndarray:
                    return v * b.reshape(n, *([1] * (v.ndim - 2)), b.shape[1])

                values = [scaled(v) for v in result.values]
                stderr = None if result.stderr is None else [np.abs(scaled(s)) for s in result.stderr]
                base = a + b * result.base_values
                forecast = a + b * result.outputs
                n_evals, exact = result.n_evals, result.exact
        shaped = self._shape(model, present, values, len(local), len(series), len(outputs), X)
        part: dict[str, Any] = {}
        if stderr is not None:
            part = self._shape(model, present, stderr, len(local), len(series), len(outputs), X)
            part["n_evals"], part["exact"] = np.asarray(n_evals), np.asarray(exact)
        part["outputs"] = forecast.reshape(n, len(local), len(series), len(outputs))
        self.calls.setdefault(model_name(model), []).append((recursive_step, part))
        return self._answer(shaped, base.reshape(n, len(local), len(series), len(outputs)), insample_y)

    @staticmethod
    def _answer(shaped: dict[str, np.ndarray], base: np.ndarray, like: Any) -> tuple[Any, Any, Any, Any, Any]:
        """``_explain_batch``'s answer: each stream's attributions (None for a stream the model does not read) and the
        baseline, as tensors in ``like``'s dtype and device."""
        import torch

        def tensor(key: str) -> Any:
            return None if key not in shaped else torch.as_tensor(shaped[key], dtype=like.dtype, device=like.device)

        baseline = torch.as_tensor(base, dtype=like.dtype, device=like.device)
        return tensor("insample"), tensor("futr_exog"), tensor("hist_exog"), tensor("stat_exog"), baseline

    def _attribute(self, module: Any, background: list[Any], X: list[Any], what: str) -> Any:
        try:
            return attribute(
                module, background, X, method=self.method, budget=self.budget, random_state=self.random_state,
                batch_size=self.batch_size, check_additivity=self.check_additivity, what=what,
            )  # fmt: skip
        except UnsupportedOperationError as error:
            raise Refused(module.net, error) from error

    def _background(self, present: list[str], X: list[Any]) -> list[Any]:
        import torch

        if self.background is None:
            return [torch.zeros_like(x[:1]) for x in X]
        rows = []
        for key, x in zip(present, X, strict=True):
            if key not in self.background:
                raise InputError(f"background has no {key!r}: give every window tensor the model reads ({', '.join(present)})")
            r = torch.as_tensor(self.background[key], dtype=x.dtype, device=x.device)
            if tuple(r.shape[1:]) != tuple(x.shape[1:]):
                raise InputError(
                    f"background[{key!r}] has windows shaped {tuple(r.shape[1:])}; the model reads {tuple(x.shape[1:])}"
                )
            rows.append(r)
        if len({r.shape[0] for r in rows}) != 1:
            raise InputError("background: every window tensor needs the same number of rows")
        return rows

    @staticmethod
    def _shape(
        model: Any, present: list[str], values: list[np.ndarray], n_h: int, n_s: int, n_o: int, X: list[Any]
    ) -> dict[str, np.ndarray]:
        """rnnshap's ``(n, *input_shape, H·S·O)`` per input -> neuralforecast's ``[n, H, S, O, ...]`` per stream
        (univariate: S = 1 and ``insample`` ``[n, H, 1, O, L, 2]``; multivariate: ``insample`` ``[n, H, S, O, L,
        n_series, 2]``, exogenous ``[n, H, S, O, features, temporal, n_series]``, ``stat_exog`` ``[n, H, S, O, n_series,
        S_features]``, as neuralforecast's own explain lays them out)."""
        import torch

        out: dict[str, np.ndarray] = {}
        moved = {}
        for key, v, x in zip(present, values, X, strict=True):
            v = v.reshape(x.shape[0], *x.shape[1:], n_h, n_s, n_o)
            moved[key] = np.moveaxis(v, (-3, -2, -1), (1, 2, 3))  # (n, H, S, O, *input_shape)
        y = moved["insample_y"]
        if not model.MULTIVARIATE:
            y = y.reshape(*y.shape[:5])  # univariate: (n, H, 1, O, L)
        mask = moved["insample_mask"].reshape(y.shape)
        out["insample"] = np.stack([y, mask], axis=-1)
        lists = {
            "futr_exog": (model.futr_exog_list, model.futr_cat_exog_list),
            "hist_exog": (model.hist_exog_list, model.hist_cat_exog_list),
            "stat_exog": (model.stat_exog_list, model.stat_cat_exog_list),
        }
        for key in ("futr_exog", "hist_exog", "stat_exog"):
            if key in moved:
                names, cats = lists[key]
                axis = 4 if model.MULTIVARIATE and key != "stat_exog" else -1  # the (embedded) feature axis
                out[key] = model._reduce_cat_attr(torch.as_tensor(moved[key]), names, cats, axis).numpy()
        return out


def _refuse_read_nans(model: Any, given: dict[str, Any], present: list[str]) -> None:
    """Refuse a NaN the model reads. Recurrent models carry the horizon's unknown (NaN) targets after the input
    window (positions input_size and on of their longer windows) and never read them: they are set to 0 (the
    reference's value), so they get exactly 0. A NaN anywhere else is data the model reads, which makes nf.predict
    NaN too: refused, not papered over."""
    import torch

    for key in present:
        missing = torch.isnan(given[key])
        if key == "insample_y" and model.RECURRENT:
            missing[:, model.input_size :] = False
        if bool(missing.any()):
            raise InputError(
                f"{model_name(model)}'s {key} holds {int(missing.sum())} NaN value(s) that the model reads (not marked "
                "unavailable by insample_mask): its forecast would be NaN too. Fill or drop them in df / futr_df / static_df."
            )


class Refused(Exception):
    """DeepSHAP refused an operation of one model inside neuralforecast's predict loop."""

    def __init__(self, model: Any, error: Exception) -> None:
        super().__init__(str(error))
        self.model, self.error = model, error
