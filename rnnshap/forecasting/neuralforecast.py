"""neuralforecast's ``NeuralForecast.explain`` call, answered with rnnshap's exact DeepSHAP or Shapley values.

``explain(nf, ...)`` takes ``NeuralForecast.explain``'s arguments and returns what it returns,
``(fcsts_df, explanations)``, with ``explanations[model_name]`` a dict of ``insample``, ``futr_exog``,
``hist_exog``, ``stat_exog`` and ``baseline_predictions`` in neuralforecast's shapes. It runs
neuralforecast's own ``predict`` (its windows, its scaling, its recursion over horizons and its
forecast frame) and answers the attribution of each batch of windows in one rnnshap call, in place of
Captum's loop over horizons and outputs.

What it covers beyond neuralforecast's own explainers: recurrent models (``recurrent=True``, LSTM, GRU,
RNN, DilatedRNN, xLSTM: the forecast rolled out with its own predictions fed back is one function of
the window, explained exactly), ``DistributionLoss`` models (their distribution parameters, in the
units of the data), MQLoss / IQLoss outputs by index, and multivariate models (``MULTIVARIATE=True``:
every series' forecast attributed to every series' inputs, in neuralforecast's multivariate layout).

Where the user names one of neuralforecast's Captum explainers (``explainer="IntegratedGradients"``,
...), neuralforecast's own ``explain`` answers, as before. Each model's entry says which answered
(``"explained_by"``). A model rnnshap does not take is skipped with a warning naming it, as
neuralforecast skips the models its explainers do not take; the others are explained.

Semantics are neuralforecast's: the inputs are the windows as the network reads them (scaled by the
model's ``scaler_type`` with the statistics of the explained window, held fixed, as neuralforecast's
explainers do), the reference is every input at zero, and ``baseline_predictions`` is the forecast
at that reference, in the units of the data. For each explained forecast the attributions summed over
``insample`` (target and mask), ``futr_exog``, ``hist_exog`` and ``stat_exog``, plus
``baseline_predictions``, equal the forecast ``nf.predict`` returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib.abc
import inspect
import sys
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ..backgrounds import stated
from ..errors import InputError, UnsupportedOperationError
from ..result import AttributionResult
from . import affine_probe, attribute, check_method, check_version, preserved

__all__ = ["explain", "supported"]

#: the window tensors neuralforecast's networks read, in the order they are explained
WINDOW_KEYS = ("insample_y", "insample_mask", "futr_exog", "hist_exog", "stat_exog")


def _import_neuralforecast() -> Any:
    try:
        import neuralforecast
    except ImportError as error:  # pragma: no cover - exercised where neuralforecast is missing
        raise ImportError("rnnshap.neuralforecast needs neuralforecast: pip install 'rnnshap[neuralforecast]'") from error
    return neuralforecast


def _name(model: Any) -> str:
    alias = getattr(model.hparams, "alias", None) if hasattr(model, "hparams") else None
    return str(alias) if alias else type(model).__name__


def _is_distribution(model: Any) -> bool:
    return bool(getattr(model.loss, "is_distribution_output", False))


def _n_outputs(model: Any) -> int:
    """How many outputs ``outputs=`` indexes: the distribution's parameters, else the loss's outputs."""
    if _is_distribution(model):
        return len(model.loss.param_names)
    return len(model.loss.output_names)


#: the mean of each distribution neuralforecast's recurrent rollout feeds back, from its parameters
_MEANS = {
    "Normal": lambda args: args[0],
    "StudentT": lambda args: args[1],  # df = 3 + softplus(...) > 1
    "Poisson": lambda args: args[0],
    "Bernoulli": lambda args: args[0],
    "NegativeBinomial": lambda args: args[0] * args[1] / (1 - args[1]),
}


def _distribution_mean(distribution: str, args: Sequence[Any]) -> Any:
    return _MEANS[distribution](args)


#: the quantiles at which ``NeuralForecast.predict`` runs an IQLoss network when asked quantiles= or level=, in its
#: order (it reports ``np.quantile`` over these 11 forecasts: neuralforecast 3.3's core.py, "case 2: IQLoss")
IQ_GRID = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def _is_iq(model: Any) -> bool:
    return type(model.loss).__name__ in ("IQLoss", "HuberIQLoss")


def _asked_quantiles(quantiles: Sequence[float] | None, level: Sequence[float] | None) -> list[float] | None:
    """The quantiles ``NeuralForecast.predict`` forecasts for ``quantiles=`` / ``level=``, in its column order."""
    if level is not None:
        from neuralforecast.utils import level_to_quantiles

        return [float(q) for q in level_to_quantiles(sorted(set(level)))]
    return None if quantiles is None else [float(q) for q in sorted(set(quantiles))]


def supported(model: Any) -> str | None:
    """None where :func:`explain` takes ``model``, else why not (in neuralforecast's terms)."""
    name = _name(model)
    if getattr(model, "MULTIVARIATE", False) and _is_distribution(model):
        return (
            f"{name} is a multivariate model (MULTIVARIATE=True) with a {type(model.loss).__name__}: rnnshap.neuralforecast "
            "explains multivariate models with point, MQLoss or IQLoss outputs"
        )
    if _is_distribution(model):
        loss = model.loss
        if getattr(loss, "distribution", None) in ("ISQF", "Tweedie") or type(loss).__name__ in ("PMM", "GMM", "NBMM"):
            return (
                f"{name} uses {type(loss).__name__}({getattr(loss, 'distribution', '')}), whose parameters have no fixed "
                "per-window mapping rnnshap follows; explain a point, MQLoss/IQLoss or Normal/StudentT/Poisson/"
                "NegativeBinomial DistributionLoss model"
            )
        if model.RECURRENT and getattr(loss, "distribution", None) not in _MEANS:
            return f"{name} is recurrent with a {loss.distribution} DistributionLoss, whose mean rnnshap does not roll out"
    return None


class _ForecastBuilder:
    """Builds the module ``f(*windows) -> (n, k)`` explained for one batch of windows of one model."""

    def __init__(
        self, model: Any, y_idx: Any, horizons: list[int], outputs: list[int], present: list[str], series: list[int],
        iq_quantiles: list[float] | None = None,
    ) -> None:
        self.model, self.y_idx, self.horizons, self.outputs, self.present = model, y_idx, horizons, outputs, present
        #: the explained series of a multivariate model ([0] for a univariate one)
        self.series = series
        #: an IQLoss model asked quantiles= / level=: those quantiles, each ``np.quantile`` (linear) over the network's
        #: forecasts at :data:`IQ_GRID`, as ``NeuralForecast.predict`` reports them (the outputs then index them)
        self.iq_quantiles = iq_quantiles

    def point_module(self) -> Any:
        """The forecast in the network's scaled units (the scaler neutralized by the caller): (n, H·S·O), horizon-major,
        then series (one for a univariate model), then output.

        A multivariate model's ``stat_exog`` is one ``[n_series, S]`` table for the whole batch in neuralforecast; here
        each window carries its own copy (``[n, n_series, S]``) and the network runs window by window, so that the
        copy of each window is attributed."""
        import torch
        from torch import nn

        parent = self

        class Forecast(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = parent.model

            def forward(self, *windows: Any) -> Any:
                batch = parent._batch(windows)
                if parent.model.MULTIVARIATE and batch["stat_exog"] is not None:
                    rows = []
                    for r in range(batch["stat_exog"].shape[0]):
                        one = {k: None if v is None else v[r] if k == "stat_exog" else v[r : r + 1] for k, v in batch.items()}
                        rows.append(self.one(one))
                    return torch.cat(rows)
                return self.one(batch)

            def one(self, batch: dict[str, Any]) -> Any:
                model = self.net
                step = model._predict_step_recurrent_batch if model.RECURRENT else model._predict_step_direct_batch
                if parent.iq_quantiles is not None:
                    y_hat = self.iq(step, batch)
                else:
                    # (n, H, n_outputs), MQLoss direct: (n, H, 1, Q); multivariate: (n, H, n_series[, Q])
                    y_hat = step(y_idx=parent.y_idx, **batch)
                n_series = model.n_series if model.MULTIVARIATE else 1
                y_hat = y_hat.reshape(y_hat.shape[0], y_hat.shape[1], n_series, -1)
                y_hat = y_hat[:, parent.horizons][:, :, parent.series][:, :, :, parent.outputs]
                return y_hat.reshape(y_hat.shape[0], -1)

            def iq(self, step: Any, batch: dict[str, Any]) -> Any:
                """The asked quantiles as predict reports them: the network run at each quantile of
                :data:`IQ_GRID` (the quantile an input of its IQN head), then ``np.quantile``'s linear interpolation
                over those forecasts, written as ``torch.quantile`` (sort and interpolation: exact rules).
                (n, H[, n_series], Q)"""
                loss, kept = self.net.loss, self.net.loss.q
                try:
                    forecasts = []
                    for q in IQ_GRID:
                        loss.update_quantile(q=[q])
                        forecasts.append(step(y_idx=parent.y_idx, **batch).reshape(batch["insample_y"].shape[0], -1))
                finally:
                    loss.update_quantile(q=[kept])
                grid = torch.stack(forecasts, dim=-1)  # (n, H·n_series, 11)
                quantiles = list(parent.iq_quantiles or ())
                asked = torch.tensor(quantiles, dtype=grid.dtype, device=grid.device)
                y_hat = torch.quantile(grid, asked, dim=-1, interpolation="linear")  # (Q, n, H·n_series)
                n_series = self.net.n_series if self.net.MULTIVARIATE else 1
                return y_hat.permute(1, 2, 0).reshape(grid.shape[0], -1, n_series, len(quantiles))

        return Forecast()

    def distribution_module(self, loc: Any, scale: Any) -> Any:
        """The distribution's parameters in the data's units for one window (its loc, scale fixed): (n, H·O)."""
        import torch
        from torch import nn

        parent = self

        class Parameters(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = parent.model

            def forward(self, *windows: Any) -> Any:
                batch = parent._batch(windows)
                model = self.net
                n = batch["insample_y"].shape[0]
                where = {"loc": loc.expand(n, *loc.shape[1:]), "scale": scale.expand(n, *scale.shape[1:])}
                if model.RECURRENT:
                    params = parent._rollout(batch, where)
                else:
                    output = model.loss.domain_map(model(batch))
                    args = model.loss.scale_decouple(output=output, **where)
                    params = torch.stack([a.reshape(n, a.shape[1]) for a in args], dim=-1)  # (n, H, P)
                return params[:, parent.horizons][:, :, parent.outputs].reshape(n, -1)

        return Parameters()

    def _rollout(self, batch: dict[str, Any], where: dict[str, Any]) -> Any:
        """``_predict_step_recurrent_batch`` with a DistributionLoss, the sampling left out: each step's
        distribution parameters, the distribution's mean (scaled) fed back as the next input. (n, H, P)"""
        import torch

        model = self.model
        loss, L = model.loss, model.input_size
        model.rnn_state, model.maintain_state, model.h = None, True, 1
        try:
            steps = []
            y = batch["insample_y"][:, :L]
            mask = None if batch["insample_mask"] is None else batch["insample_mask"][:, :L]
            for tau in range(model.predict_horizon):
                def exog(key: str) -> Any:
                    x = batch[key]
                    if x is None or key == "stat_exog":
                        return x
                    return x[:, :L] if tau == 0 else x[:, L + tau - 1].unsqueeze(1)

                windows = {
                    "insample_y": y, "insample_mask": mask, "futr_exog": exog("futr_exog"), "hist_exog": exog("hist_exog"),
                    "stat_exog": batch["stat_exog"],
                }  # fmt: skip
                args = loss.scale_decouple(output=loss.domain_map(model(windows)), **where)
                steps.append(torch.stack([a.reshape(a.shape[0], -1)[:, -1] for a in args], dim=-1))  # (n, P)
                mean = _distribution_mean(loss.distribution, args)
                y, mask = model.scaler.scaler(mean, where["loc"], where["scale"]), None
            return torch.stack(steps, dim=1)
        finally:
            model.maintain_state, model.rnn_state, model.h = False, None, model.horizon_backup

    def _batch(self, windows: Sequence[Any]) -> dict[str, Any]:
        batch: dict[str, Any] = {key: None for key in WINDOW_KEYS}
        batch.update(zip(self.present, windows, strict=True))
        return batch


class _Run:
    """What one ``explain`` call needs inside neuralforecast's predict loop."""

    def __init__(
        self, method: str, budget: int | None, random_state: Any, batch_size: int, check_additivity: bool | float, background: Any
    ) -> None:
        self.method, self.budget, self.random_state = method, budget, random_state
        self.batch_size, self.check_additivity, self.background = batch_size, check_additivity, background
        #: per model name: (recursive step, the explained outputs, and in the Shapley mode the standard errors and rows
        #: per window) of each call
        self.calls: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        #: IQLoss models asked quantiles= / level= (by id): the quantiles asked (see ``_ForecastBuilder.iq_quantiles``)
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
        # recurrent models carry the horizon's unknown (NaN) targets after the input window (positions input_size and
        # on of their longer windows) and never read them: they are set to 0 here, the reference's value, so they get
        # exactly 0. A NaN anywhere else is data the model reads, which makes nf.predict NaN too: refused, not
        # papered over.
        for key in present:
            missing = torch.isnan(given[key])
            if key == "insample_y" and model.RECURRENT:
                missing[:, model.input_size :] = False
            if bool(missing.any()):
                raise InputError(
                    f"{_name(model)}'s {key} holds {int(missing.sum())} NaN value(s) that the model reads (not marked "
                    "unavailable by insample_mask): its forecast would be NaN too. Fill or drop them in df / futr_df / static_df."
                )
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
            dtype, device = insample_y.dtype, insample_y.device

            def zero(key: str) -> Any:
                return None if key not in shaped else torch.as_tensor(shaped[key], dtype=dtype, device=device)

            base = torch.zeros(n, len(local), len(series), len(outputs), dtype=dtype, device=device)
            return zero("insample"), zero("futr_exog"), zero("hist_exog"), zero("stat_exog"), base
        build = _ForecastBuilder(model, y_idx, local, outputs, present, series, iq_quantiles)
        y_loc, y_scale = (t.detach().clone() for t in model._get_loc_scale(y_idx))  # (n, 1, 1); multivariate (n, 1, n_series)
        what = f"neuralforecast's {_name(model)}"
        with torch.enable_grad():
            if _is_distribution(model):
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
        self.calls.setdefault(_name(model), []).append((recursive_step, part))
        dtype, device = insample_y.dtype, insample_y.device
        baseline = torch.as_tensor(base.reshape(n, len(local), len(series), len(outputs)), dtype=dtype, device=device)
        return (
            torch.as_tensor(shaped["insample"], dtype=dtype, device=device),
            None if "futr_exog" not in shaped else torch.as_tensor(shaped["futr_exog"], dtype=dtype, device=device),
            None if "hist_exog" not in shaped else torch.as_tensor(shaped["hist_exog"], dtype=dtype, device=device),
            None if "stat_exog" not in shaped else torch.as_tensor(shaped["stat_exog"], dtype=dtype, device=device),
            baseline,
        )

    def _attribute(self, module: Any, background: list[Any], X: list[Any], what: str) -> Any:
        try:
            return attribute(
                module, background, X, method=self.method, budget=self.budget, random_state=self.random_state,
                batch_size=self.batch_size, check_additivity=self.check_additivity, what=what,
            )  # fmt: skip
        except UnsupportedOperationError as error:
            raise _Refused(module.net, error) from error

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


def _affine_target_scaler(nf: Any, record: dict[str, Any]) -> Any:
    """A stand-in for ``nf._scalers_target_inverse_transform`` that also records, per series, the affine
    map it applies (``local_scaler_type``): intercept and slope, from the scaler itself (:func:`affine_probe`)."""
    original = nf._scalers_target_inverse_transform

    def inverse(data: np.ndarray, indptr: np.ndarray) -> np.ndarray:
        zero, slope, affine = affine_probe(lambda x: original(x, indptr)[:, :1], data)
        if not affine:
            raise InputError(
                f"local_scaler_type={nf.local_scaler_type!r} is not an affine map of the forecast: the attributions "
                "cannot be put in the units of the data. Use an affine local_scaler_type (standard, robust, minmax) "
                "or the model's scaler_type"
            )
        starts = np.asarray(indptr[:-1], dtype=np.int64)
        record["intercept"], record["slope"] = zero[starts, 0], slope[starts, 0]
        return original(data, indptr)

    return inverse


def explain(
    nf: Any,
    horizons: list[int] | None = None,
    outputs: list[int] | None = [0],  # noqa: B006 - neuralforecast's default, never mutated
    series: list[int] | None = None,
    explainer: str | None = None,
    df: Any = None,
    static_df: Any = None,
    futr_df: Any = None,
    h: int | None = None,
    verbose: bool = True,
    engine: Any = None,
    level: list[int | float] | None = None,
    quantiles: list[float] | None = None,
    *,
    method: str = "deepshap",
    budget: int | None = None,
    random_state: Any = None,
    background: Mapping[str, Any] | None = None,
    batch_size: int = 2048,
    check_additivity: bool | float = True,
    **data_kwargs: Any,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """``NeuralForecast.explain``, answered exactly by rnnshap: ``(fcsts_df, explanations)``.

    Args:
        nf: a fitted ``NeuralForecast``.
        horizons, outputs, series, df, static_df, futr_df, h, verbose, engine, level, quantiles, data_kwargs:
            as for ``NeuralForecast.explain``. ``outputs`` indexes the loss's outputs (MQLoss / IQLoss
            quantiles in ``loss.output_names`` order; for an IQLoss model asked ``quantiles=`` / ``level=``, the
            quantiles asked, in the order of predict's columns, each ``np.quantile`` over the network's forecasts at
            :data:`IQ_GRID` as predict reports it) and, for a ``DistributionLoss``, its distribution
            parameters (``loss.param_names`` order: Normal's loc and scale, in the data's units).
        explainer: None, ``"DeepSHAP"`` or ``"Shapley"`` (an alias of ``method``); any other name is passed to
            neuralforecast's own ``explain`` (its Captum explainers: ``"IntegratedGradients"``,
            ``"InputXGradient"``, ``"ShapleyValueSampling"``), which then answers the whole call.
        method: ``"deepshap"`` (one pass, exact in sum) or ``"shapley"`` (Shapley values of every window
            entry with standard errors, exact where ``budget`` covers every coalition).
        budget, random_state: the Shapley mode's rows per forecast and seed.
        background: reference windows in the network's layout (scaled, as ``forward`` reads them):
            ``{"insample_y": (B, L, 1), "insample_mask": (B, L, 1), "futr_exog": ..., "hist_exog": ...,
            "stat_exog": ...}``; None (neuralforecast's reference): every input at zero.
        batch_size: the most (window, reference) pairs run through the network at once.
        check_additivity: DeepSHAP's own check that each forecast's values add up (True: rnnshap's
            tolerance; a float: that relative tolerance; False: off).

    Returns:
        ``fcsts_df``, neuralforecast's forecast frame, and ``explanations[model_name]``: ``insample``
        [batch, horizon, 1, output, L, 2] (target, availability mask), ``futr_exog`` [..., F, L + h],
        ``hist_exog`` [..., X, L], ``stat_exog`` [..., S], ``baseline_predictions`` [batch, horizon, 1,
        output] (recurrent models' windows are L + h − 1 long, as neuralforecast's), ``outputs`` (the explained
        forecasts, shaped like ``baseline_predictions``) and ``attribution`` (rnnshap's result contract,
        :class:`rnnshap.result.AttributionResult`, over the same tensors, by part); in the Shapley mode
        also ``insample_stderr``, ``futr_exog_stderr``, ``hist_exog_stderr``, ``stat_exog_stderr`` (shaped
        like the values), ``n_evals`` (rows run per window) and ``exact`` (per window). Torch tensors, as
        neuralforecast returns them.
        Multivariate models: ``insample`` [batch, horizon, series, output, L, n_series, 2], ``futr_exog`` [...,
        F, L + h, n_series], ``hist_exog`` [..., X, L, n_series], ``stat_exog`` [..., n_series, S],
        ``baseline_predictions`` [batch, horizon, series, output]. Every entry also has ``explained_by``:
        ``"rnnshap (deepshap)"``, ``"rnnshap (shapley)"`` or ``"neuralforecast (captum.attr.<name>)"``.

    Warns:
        UserWarning: ``Skipping <model>: ...`` for each model rnnshap does not take in a call with others.

    Raises:
        UnverifiedVersionError: neuralforecast is installed at a version outside the series this adapter was
            verified on (:data:`rnnshap.forecasting.VERIFIED`).
        InputError: an unfitted ``nf``, a horizon, output or series out of range, no model rnnshap.neuralforecast
            takes (each named, with the alternative), a non-affine global scaler, rnnshap's arguments with a Captum
            ``explainer=``.
        UnsupportedOperationError: DeepSHAP has no exact rule for an operation of the (only) model (method='shapley'
            explains it from its forward alone).
        ValueError: neuralforecast's own, where its explain answers (a Captum ``explainer=``).

    Example:
        >>> from rnnshap.neuralforecast import explain
        >>> fcsts_df, explanations = explain(nf, horizons=[0, 2], outputs=[0])
        >>> e = explanations["LSTM"]
        >>> total = e["insample"].sum((-1, -2)) + e["baseline_predictions"]   # + futr/hist/stat exog sums
    """
    _import_neuralforecast()
    check_version("neuralforecast")

    name = getattr(explainer, "value", explainer)  # neuralforecast's ExplainerEnum members are str enums
    if name is not None and str(name).lower() not in ("deepshap", "shapley"):
        # the user named one of neuralforecast's explainers (Captum's): neuralforecast answers, as before, in its own
        # terms and with its own checks; each model's entry says so ("explained_by")
        ours = {
            "method": method != "deepshap", "budget": budget is not None, "random_state": random_state is not None,
            "background": background is not None, "batch_size": batch_size != 2048,
            "check_additivity": check_additivity is not True,
        }  # fmt: skip
        if any(ours.values()):
            raise InputError(
                f"explainer={name!r} is neuralforecast's own (Captum's), which takes none of rnnshap's arguments "
                f"{sorted(k for k, v in ours.items() if v)}; leave explainer= out for rnnshap's values"
            )
        own = _own_explain()
        if _CALLING_OWN.get():  # the function in NeuralForecast.explain's place called this one again: a loop
            raise InputError(_LOOP.format(own=f"{getattr(own, '__module__', '?')}.{getattr(own, '__qualname__', own)}"))
        calling = _CALLING_OWN.set(True)
        try:
            fcsts_df, explanations = own(
                nf, horizons, outputs, series, explainer, df, static_df, futr_df, h, verbose, engine, level, quantiles,
                **data_kwargs,
            )  # fmt: skip
        finally:
            _CALLING_OWN.reset(calling)
        for entry in explanations.values():
            entry["explained_by"] = f"neuralforecast (captum.attr.{name})"
        return fcsts_df, explanations
    if name is not None:
        method = str(name).lower()
    method = check_method(method)
    # a model rnnshap does not take is skipped with a warning naming it, as neuralforecast skips the models its
    # explainers do not take; the others are explained
    active, skipped = [], {}
    # neuralforecast forecasts an IQLoss model asked quantiles= / level= at 11 fixed quantiles and reports np.quantile
    # over them (its monotonization): a sort and a linear interpolation, explained exactly as such (the outputs index
    # the quantiles asked, in the order of predict's columns)
    asked = _asked_quantiles(quantiles, level)
    iq = {id(model): asked for model in nf.models if asked is not None and _is_iq(model)}
    for model in nf.models:
        why = supported(model)
        if why is None:
            active.append(model)
        else:
            skipped[_name(model)] = why
    if not active:
        raise InputError("; ".join(skipped.values()))
    if not getattr(nf, "_fitted", False):
        raise InputError(
            "You must fit the model before explaining: call nf.fit(df) first (the NeuralForecast object is not fitted)."
        )
    for why in skipped.values():
        warnings.warn(f"Skipping {why}", UserWarning, stacklevel=2)
    h_explain = nf.h if h is None else int(h)
    if horizons is None:
        horizons = list(range(h_explain))
    elif not horizons or len(horizons) > h_explain or any(not 0 <= int(k) < h_explain for k in horizons):
        raise InputError(
            f"Invalid indices. Make sure to select horizon steps within {list(range(h_explain))} or set it to None to explain "
            "all horizon steps"
        )
    horizons = [int(k) for k in horizons]
    n_out = min(len(iq[id(model)]) if id(model) in iq else _n_outputs(model) for model in active)
    if outputs is None:
        outputs = [0]
    elif not outputs or any(not 0 <= int(o) < n_out for o in outputs):
        raise InputError(
            f"Invalid output indices. Based on the models being explained, valid outputs are in {list(range(n_out))} "
            "(distribution parameters for a DistributionLoss model, loss outputs otherwise)."
        )
    # neuralforecast's rule: every multivariate model shares n_series; univariate models explain series [0]
    multivariate = [m for m in active if m.MULTIVARIATE]
    n_series = multivariate[0].n_series if multivariate else 1
    if series is None:
        series = list(range(n_series))
    elif not series or any(not 0 <= int(k) < n_series for k in series):
        raise InputError(
            f"Invalid series indices. Valid indices are {list(range(n_series))}. Set series=None to explain all series."
        )
    series = [int(k) for k in series]
    if nf.scalers_ and getattr(nf, "local_scaler_type", None) == "boxcox":
        raise InputError(
            "local_scaler_type='boxcox' is not an affine map of the forecast: the attributions cannot be put in the units "
            "of the data. Use an affine local_scaler_type (standard, robust, minmax) or the model's scaler_type"
        )

    config = {"explainer": None, "horizons": horizons, "output_index": [int(o) for o in outputs], "series": series}
    predict = {
        "df": df, "static_df": static_df, "futr_df": futr_df, "h": h_explain, "verbose": verbose, "engine": engine,
        "level": level, "quantiles": quantiles, **data_kwargs,
    }  # fmt: skip
    while True:
        try:
            fcsts_df, explanations = _explain_models(nf, active, method, budget, random_state, batch_size,
                                                     check_additivity, background, config, predict, iq)  # fmt: skip
            break
        except _Refused as refused:  # DeepSHAP has no exact rule for an operation of one model: the others go on
            if len(active) == 1:
                raise refused.error from None
            active = [m for m in active if m is not refused.model]
            warnings.warn(f"Skipping {_name(refused.model)}: {refused.error}", UserWarning, stacklevel=2)
    for entry in explanations.values():
        entry["explained_by"] = f"rnnshap ({method})"
    return fcsts_df, explanations


class _Refused(Exception):
    """DeepSHAP refused an operation of one model inside neuralforecast's predict loop."""

    def __init__(self, model: Any, error: Exception) -> None:
        super().__init__(str(error))
        self.model, self.error = model, error


def _own_explain() -> Any:
    """neuralforecast's own ``NeuralForecast.explain``: the one kept when this module or neuralforecast.core was
    imported (:func:`_keep_own_explain`), else what is in its place now (a wrapper made with ``functools.wraps``, one
    that routes it to this module, unwrapped)."""
    from neuralforecast.core import NeuralForecast

    _keep_own_explain(NeuralForecast)
    if _kept_explain is not None:
        return _kept_explain
    own = inspect.unwrap(NeuralForecast.explain)
    if getattr(own, "__module__", "").startswith("rnnshap"):
        raise InputError("NeuralForecast.explain was replaced by rnnshap's without functools.wraps: its own is out of reach")
    return own


#: neuralforecast's own ``NeuralForecast.explain``, kept from the moment this module is imported (or, where
#: neuralforecast is imported later, as neuralforecast.core is): a Captum ``explainer=`` is answered by it even where a
#: wrapper without ``functools.wraps`` routes ``NeuralForecast.explain`` to :func:`explain` (it would call itself)
_kept_explain: Any = None
#: set while neuralforecast's own explain runs for :func:`explain`: a call back into it is a loop
_CALLING_OWN: contextvars.ContextVar[bool] = contextvars.ContextVar("rnnshap_calling_neuralforecast_explain", default=False)
_LOOP = (
    "NeuralForecast.explain is {own}, a function that calls rnnshap.neuralforecast.explain (put in its place without "
    "functools.wraps), and neuralforecast's own explain, which a Captum explainer= needs, was replaced before rnnshap "
    "could keep it: calling it would call rnnshap again, without end. Make the wrapper with "
    "functools.wraps(NeuralForecast.explain) (rnnshap then finds the own one inside it), or import rnnshap.neuralforecast "
    "before replacing NeuralForecast.explain (rnnshap keeps the own one from then on)"
)


def _keep_own_explain(cls: Any) -> None:
    """Keep ``cls.explain`` (unwrapped) where it is neuralforecast's own and none is kept yet."""
    global _kept_explain
    if _kept_explain is None:
        own = inspect.unwrap(cls.explain)
        if getattr(own, "__module__", "").startswith("neuralforecast"):
            _kept_explain = own


class _KeepOwnExplain(importlib.abc.MetaPathFinder):
    """On sys.meta_path until neuralforecast.core is imported (where this module came first): it finds the module as
    the other finders do, and keeps ``NeuralForecast.explain`` right after the module has run. Nothing else changes."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "neuralforecast.core":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = next((s for f in sys.meta_path if (s := _spec(f, fullname, path, target)) is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _KeepingLoader(spec.loader)
        return spec


def _spec(finder: Any, fullname: str, path: Any, target: Any) -> Any:
    find = getattr(finder, "find_spec", None)
    return find(fullname, path, target) if find is not None else None


class _KeepingLoader(importlib.abc.Loader):
    """The loader found for neuralforecast.core, which keeps ``NeuralForecast.explain`` once the module has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        if hasattr(module, "NeuralForecast"):
            _keep_own_explain(module.NeuralForecast)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...: the loader's own
        return getattr(self.loader, name)


if "neuralforecast.core" in sys.modules:
    _keep_own_explain(sys.modules["neuralforecast.core"].NeuralForecast)
elif not any(isinstance(f, _KeepOwnExplain) for f in sys.meta_path):
    sys.meta_path.insert(0, _KeepOwnExplain())


def _explain_models(
    nf: Any, models: list[Any], method: str, budget: int | None, random_state: Any, batch_size: int,
    check_additivity: bool | float, background: Any, config: dict[str, Any], predict: dict[str, Any],
    iq: Mapping[int, list[float]] | None = None,
) -> tuple[Any, dict[str, dict[str, Any]]]:  # fmt: skip
    """neuralforecast's predict over ``models`` with rnnshap answering each batch's attribution (``iq``: the quantiles
    asked of IQLoss models, by id, see ``_Run.iq``)."""
    run = _Run(method, budget, random_state, batch_size, check_additivity, background)
    run.iq = dict(iq or {})
    record: dict[str, Any] = {}
    verbose = predict["verbose"]
    with contextlib.ExitStack() as restore:
        for model in models:  # neuralforecast's explain path sets explain, explainer_config and explanations on them
            restore.enter_context(preserved(model))
            model._explain_batch = _bound(run, model)
        restore.callback(nf.__dict__.pop, "_scalers_target_inverse_transform", None)
        if nf.scalers_:
            nf._scalers_target_inverse_transform = _affine_target_scaler(nf, record)
        # neuralforecast's predict leaves the chunks of a direct model's recursion (h > model.h) unsliced when it
        # explains (ceil(h / model.h) * model.h rows per series: a misaligned frame, and an error beside other
        # models): such models are explained one at a time, and the frame is a plain predict's
        chunked = any(not m.RECURRENT and predict["h"] > m.h for m in models)
        for group in [[m] for m in models] if chunked else [models]:
            one = copy.copy(nf)
            one.models = group
            with warnings.catch_warnings():
                if not verbose:
                    warnings.simplefilter("ignore")
                fcsts_df = one.predict(explainer_config=config, **predict)
        explanations = {
            _name(model): _collect(model, run, record, config["series"])
            for model in models
            if model.__dict__.get("explanations") is not None
        }
        if chunked:
            one = copy.copy(nf)
            one.models = models
            with warnings.catch_warnings():
                if not verbose:
                    warnings.simplefilter("ignore")
                fcsts_df = one.predict(**predict)
    return fcsts_df, explanations


def _collect(model: Any, run: _Run, record: Mapping[str, Any], series: list[int]) -> dict[str, Any]:
    """One model's explanations in ``NeuralForecast.explain``'s layout (exogenous as [..., features, temporal])."""
    import torch

    stored = model.__dict__["explanations"]
    futr, hist = stored["futr_exog_explanations"], stored["hist_exog_explanations"]
    if not model.MULTIVARIATE:  # univariate exogenous as [..., features, temporal], as neuralforecast returns them
        futr = None if futr is None else futr.transpose(-2, -1)
        hist = None if hist is None else hist.transpose(-2, -1)
    entry: dict[str, Any] = {
        "insample": stored["insample_explanations"],
        "futr_exog": futr,
        "hist_exog": hist,
        "stat_exog": stored["stat_exog_explanations"],
        "baseline_predictions": stored["baseline_predictions"],
    }
    calls = run.calls.get(_name(model))
    if calls:
        # calls in neuralforecast's order: per dataloader batch, per recursive step (a chunk of the horizon), per
        # batch of windows; neuralforecast stacks windows on axis 0, the steps' chunks on axis 1, then the batches
        groups: list[dict[int, list[dict[str, Any]]]] = []
        previous = None
        for step, part in calls:
            if not groups or (step == 0 and previous != 0):
                groups.append({})
            groups[-1].setdefault(step, []).append(part)
            previous = step

        def stack(key: str) -> Any:
            def steps(g: dict[int, list[dict[str, Any]]]) -> Any:
                return torch.cat([torch.cat([torch.as_tensor(p[key]) for p in g[k]], dim=0) for k in sorted(g)], dim=1)

            return torch.cat([steps(g) for g in groups], dim=0)

        entry["outputs"] = stack("outputs")
        for key in ("insample", "futr_exog", "hist_exog", "stat_exog"):
            if key in calls[0][1]:
                err = stack(key)
                transpose = key in ("futr_exog", "hist_exog") and not model.MULTIVARIATE
                entry[f"{key}_stderr"] = err.transpose(-2, -1) if transpose else err
        if "n_evals" in calls[0][1]:
            n_evals = [sum(np.concatenate([np.asarray(p["n_evals"]) for p in g[k]]) for k in sorted(g)) for g in groups]
            entry["n_evals"] = np.concatenate(n_evals)  # rows per window, summed over the horizon's chunks
            exact = [np.logical_and.reduce([np.concatenate([p["exact"] for p in g[k]]) for k in sorted(g)]) for g in groups]
            entry["exact"] = np.concatenate(exact)  # per window: every chunk of its horizon exact
    if record:
        _to_data_units(entry, record, series if model.MULTIVARIATE else None)
    entry["attribution"] = _contract(entry, run)
    return entry


def _contract(entry: dict[str, Any], run: _Run) -> AttributionResult:
    """rnnshap's result contract over one model's entry (the same tensors): values and standard errors by part."""
    parts = [key for key in ("insample", "futr_exog", "hist_exog", "stat_exog") if entry[key] is not None]
    shapley = f"{parts[0]}_stderr" in entry
    rows = None if run.background is None else len(next(iter(run.background.values())))
    return AttributionResult(
        values={key: entry[key] for key in parts},
        outputs=entry["outputs"],
        base_values=entry["baseline_predictions"],
        method="shapley" if shapley else "deepshap",
        stderr={key: entry[f"{key}_stderr"] for key in parts} if shapley else None,
        n_evals=entry.get("n_evals"),
        exact=entry.get("exact"),
        background=stated("neuralforecast", 1 if rows is None else rows, run.background is not None),
    )


def _bound(run: _Run, model: Any) -> Any:
    def explain_batch(*args: Any, **kwargs: Any) -> Any:
        return run.explain_batch(model, *args, **kwargs)

    return explain_batch


def _to_data_units(entry: dict[str, Any], record: Mapping[str, Any], series: list[int] | None = None) -> None:
    """Apply a global ``local_scaler_type``'s per-series affine map (intercept a, slope b) to the values: per window
    (one series each) for a univariate model; per explained series (axis 2, ``series``) for a multivariate one."""
    import torch

    intercept, slope = np.asarray(record["intercept"]), np.asarray(record["slope"])
    n = len(slope)
    for key, value in list(entry.items()):
        if value is None or key in ("n_evals", "exact", "explained_by"):
            continue
        t = torch.as_tensor(value)
        if series is not None:  # [windows, horizon, series_out, output, ...]: the map of each output series
            shape = (1, 1, len(series), *([1] * (t.ndim - 3)))
            a_s, b_s = intercept[series], slope[series]
        elif t.shape[0] != n:  # recursive steps or a batch layout this map does not follow: refuse rather than guess
            raise InputError(f"the global scaler's map has {n} series; the explanations have {t.shape[0]} windows")
        else:
            shape, a_s, b_s = (n, *([1] * (t.ndim - 1))), intercept, slope
        b = torch.as_tensor(b_s, dtype=t.dtype).reshape(shape)
        if key in ("baseline_predictions", "outputs"):
            entry[key] = torch.as_tensor(a_s, dtype=t.dtype).reshape(shape) + b * t
        else:
            entry[key] = t * b.abs() if key.endswith("_stderr") else t * b
