"""neuralforecast's own ``predict`` run with rnnshap answering each batch of windows (:func:`explain_models`), and
each model's explanations collected in ``NeuralForecast.explain``'s layout, in the units of the data, with rnnshap's
result contract over them."""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Mapping

import numpy as np

from ...backgrounds import stated
from ...errors import InputError
from ...result import AttributionResult
from .. import affine_probe, preserved
from .batches import ExplainRun
from .models import model_name


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


def explain_models(
    nf: Any, models: list[Any], method: str, budget: int | None, random_state: Any, batch_size: int,
    check_additivity: bool | float, background: Any, config: dict[str, Any], predict: dict[str, Any],
    iq: Mapping[int, list[float]] | None = None,
) -> tuple[Any, dict[str, dict[str, Any]]]:  # fmt: skip
    """neuralforecast's predict over ``models`` with rnnshap answering each batch's attribution (``iq``: the quantiles
    asked of IQLoss models, by id, see ``ExplainRun.iq``)."""
    run = ExplainRun(method, budget, random_state, batch_size, check_additivity, background)
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
            model_name(model): _collect(model, run, record, config["series"])
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


def _collect(model: Any, run: ExplainRun, record: Mapping[str, Any], series: list[int]) -> dict[str, Any]:
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
    calls = run.calls.get(model_name(model))
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


def _contract(entry: dict[str, Any], run: ExplainRun) -> AttributionResult:
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


def _bound(run: ExplainRun, model: Any) -> Any:
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
