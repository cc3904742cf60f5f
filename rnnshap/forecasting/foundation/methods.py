"""The foundation forecasters' two answers: DeepSHAP on the adapter's torch module against background windows
(:func:`deepshap_values`, in groups of one missing pattern), and the Shapley mode through the library's own forecast call
(:func:`shapley_values`); with the library's own forecast of the explained windows and the torch modules put back after."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ...errors import AdditivityError, InputError, RnnShapError, UnsupportedOperationError
from .. import deepshap_refusal, preserved
from .adapters import Adapter, low_precision
from .inputs import player_ids

#: the most DeepSHAP explainers a :class:`ForecastExplainer` keeps per precision (one per prediction length, quantile
#: levels and pattern of missing steps; each keeps up to ``rnnshap.engines.pytorch.kept.KEPT_TAPE_BYTES`` of reference tapes)
KEPT_EXPLAINERS = 8


def library_forecast(adapter: Adapter, windows: np.ndarray, H: int, levels: list[Any]) -> np.ndarray:
    """The library's own forecast of the explained windows; where its call fails on a window with no observed value
    (timesfm's forecast() raises numpy's "truth value of an empty array"), an InputError naming the window."""
    try:
        return adapter.library_forecast(windows.copy(), H, levels)
    except RnnShapError:
        raise
    except Exception as error:
        empty = np.flatnonzero(np.isnan(windows).all(axis=1))
        if not empty.size:
            raise
        raise InputError(
            f"context window(s) {empty[:5].tolist()} have no observed value (every step NaN, missing), and "
            f"{adapter.label}'s own forecast call fails on them ({type(error).__name__}: {error}): there is nothing to "
            "explain. Drop those windows from the context, or give windows of the series with observed values"
        ) from error


class preserved_all:
    """:func:`rnnshap.forecasting.preserved` over several modules."""

    def __init__(self, modules: list[Any]) -> None:
        import contextlib

        self.stack = contextlib.ExitStack()
        self.modules = modules

    def __enter__(self) -> None:
        for m in self.modules:
            self.stack.enter_context(preserved(m))

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()


def _refuse_gaps_in(rows: np.ndarray, L: int) -> None:
    """DeepSHAP's background windows (of ``L`` steps) must hold no missing value: an InputError naming the first."""
    if not np.isnan(rows).any():
        return
    gappy = np.flatnonzero(np.isnan(rows).any(axis=1))
    step = int(np.flatnonzero(np.isnan(rows[gappy[0]]))[0])
    raise InputError(
        f"background window(s) {gappy[:5].tolist()} hold missing values (NaN; the first at step {step} of the last "
        f"{L} steps): DeepSHAP's reference windows must hold none, since a step missing in a reference but not in the "
        "explained window has no difference to attribute (the explained windows' own missing steps are given to "
        "their references: a missing step is no player). Give background windows without gaps (windows of the "
        "series where every step is observed), fill their gaps as the model would (interpolation), or use "
        "method='shapley', which takes background windows with gaps (the library's own forecast call reads them "
        "as missing)"
    )


def _check_agreement(adapter: Adapter, outputs: np.ndarray, own: np.ndarray) -> None:
    """The explained module's forecasts (``outputs``) against the library's own forecast call (``own``) on the same
    windows: an RnnShapError where they are further apart than the adapter's agreement, naming the model's low
    precision where it has one."""
    gap = float(np.abs(outputs - own).max())
    scale = max(1.0, float(np.abs(own).max()))
    if gap > adapter.agreement * scale:
        low = low_precision(adapter)
        if low:  # the model's own rounding, not the library's forecast path, moves the module off its call
            raise RnnShapError(
                f"{adapter.label}: the model's parameters are {low} (cast to low precision), and its rounding in "
                f"{low} moves with what is batched beside a window: the function rnnshap explains gives forecasts "
                f"{gap:.3g} away from the library's own forecast call on the same context (scale {scale:.3g}), more "
                "than DeepSHAP's sum can be held to. Explain the float32 model (model.float(), or load it in "
                "float32: torch_dtype=torch.float32), or use method='shapley', which runs the library's own call "
                f"in {low} and adds up to it"
            )
        raise RnnShapError(
            f"{adapter.label}: the function rnnshap explains gives forecasts {gap:.3g} away from the library's own "
            f"forecast call on the same context (scale {scale:.3g}); the library's forecast path may have changed "
            "since the version rnnshap was verified on. Use method='shapley', which runs the library's own call"
        )


def deepshap_values(
    adapter: Adapter,
    windows: np.ndarray,
    rows: np.ndarray,
    H: int,
    levels: list[Any],
    batch_size: int,
    check: bool | float,
    covariate_rows: Sequence[np.ndarray] = (),
    forecast: np.ndarray | None = None,
    kept: dict[Any, Any] | None = None,
) -> tuple[Any, ...]:
    """DeepSHAP against the background windows. Windows with missing values (NaN: gaps, the padding of shorter
    series) are explained in groups of one missing pattern, against background windows missing at the same
    steps: a missing step is no player (no difference to attribute) and gets exactly 0. ``kept``: the module and
    explainer of each group's settings and references, kept between calls (None: built for this call only)."""
    import torch

    from ...explainer import DeepExplainer

    n, L = windows.shape
    _refuse_gaps_in(rows, L)
    Q = len(levels)
    values = np.zeros((n, L, H, Q))
    base = np.zeros((n, H, Q))
    covariate_x = list(getattr(adapter, "covariate_values", {}).values()) if covariate_rows else []
    covariate_values = [np.zeros((n, c.shape[1], H, Q)) for c in covariate_x]
    dtype = torch.float32
    missing = np.isnan(windows)
    groups: dict[bytes, list[int]] = {}
    for i in range(n):
        groups.setdefault(missing[i].tobytes(), []).append(i)
    for members in groups.values():
        gap = missing[members[0]]
        own = windows[members]
        references = np.where(gap[None], np.nan, rows)
        r = adapter.deepshap_windows(references)
        given = [r, *covariate_rows, *adapter.context_inputs(references)]
        # everything the explainer is built from: the settings and the references, as bytes
        key = (H, tuple(map(str, levels)), gap.tobytes(), batch_size, tuple((g.dtype.str, g.shape, g.tobytes()) for g in given))
        found = None if kept is None else kept.get(key)
        module = found[0] if found is not None else adapter.module_for(H, levels, gap)
        dtype = getattr(module, "dtype", torch.float32)
        x = adapter.deepshap_windows(own)
        X = [torch.as_tensor(x, dtype=dtype)] + [torch.as_tensor(c[members], dtype=dtype) for c in covariate_x]
        X += [torch.as_tensor(c) for c in adapter.context_inputs(own)]
        bg = [torch.as_tensor(r, dtype=dtype)] + [torch.as_tensor(c, dtype=dtype) for c in covariate_rows]
        bg += [torch.as_tensor(c) for c in adapter.context_inputs(references)]
        with torch.enable_grad():
            try:
                if found is not None:
                    explainer = found[1]
                else:
                    explainer = DeepExplainer(module, bg if len(bg) > 1 else bg[0], batch_size=batch_size)
            except UnsupportedOperationError as error:
                raise deepshap_refusal(
                    error, f"{adapter.label}'s forecast{adapter.refusal_note(H, levels)} has operations DeepSHAP has no "
                    "exact rule for; method='shapley' explains it from the library's own forecast call (Shapley values "
                    "with standard errors)."
                ) from error
            if kept is not None:  # the most recently used first out last; at most KEPT_EXPLAINERS
                kept.pop(key, None)
                kept[key] = (module, explainer)
                while len(kept) > KEPT_EXPLAINERS:
                    del kept[next(iter(kept))]
            try:
                attribution = explainer.attribution(
                    explainer.engine.inputs(X if len(X) > 1 else X[0], "X"), check_additivity=check, just_built=found is None
                )  # (built here just before: its setup's reference pass is taken without the plain forward that vets it)
            except AdditivityError as error:
                if not error.ill_conditioned:
                    raise
                window = int(members[error.sample]) if 0 <= error.sample < len(members) else error.sample
                raise AdditivityError(
                    f"{adapter.label}: the DeepSHAP values of context window {window} cannot add up to its forecast in "
                    "the model's precision: they are far larger than the forecast and cancel. The model scales each "
                    "window by its own spread, and this window or a background window has almost none (near-flat: "
                    "the scale's floor divides everything). Use background windows with spread, or "
                    "method='shapley', which plays the library's own forecast call and adds up to it.\n"
                    f"{error}",
                    sample=window,
                    ill_conditioned=True,
                ) from error
        if forecast is not None:  # the module is the library's forecast: refuse rather than explain another function
            _check_agreement(adapter, attribution.outputs, forecast[members].reshape(len(members), -1))
        part = attribution.values[0].reshape(len(members), L, H, Q)
        values[members] = part
        for k, c in enumerate(covariate_values):
            c[members] = attribution.values[1 + k].reshape(len(members), c.shape[1], H, Q)
        base[members] = attribution.base_values.reshape(len(members), H, Q)
    return values, base, None, None, None, "steps", [(t, t + 1) for t in range(L)], covariate_values


def _check_empty_coalition(adapter: Adapter, forward: Callable[..., np.ndarray], reference: list[np.ndarray]) -> None:
    """The game that drops context (no background) needs a finite forecast from a context with every value missing
    (``reference``): an InputError where the library's own call fails on it or forecasts a non-finite value."""
    try:  # the empty coalition: every step the model reads given as missing
        empty = forward(*reference)
    except Exception as error:
        raise InputError(
            f"{adapter.label}'s own forecast call fails on a context with every value missing ({type(error).__name__}: "
            f"{error}), so the game that drops context has no value for the empty coalition. Give background windows"
        ) from error
    if not np.isfinite(empty).all():  # MOMENT forecasts NaN from an empty context
        raise InputError(
            f"{adapter.label} forecasts {empty.flat[np.argmin(np.isfinite(empty))]} from a context with every value "
            "missing (its own forecast call), so background=None, the game that drops context the way the model "
            "drops missing values, has no value for the empty coalition. Give background windows (background=: real "
            "windows of the series, at least as long as the context), whose values then stand in for the dropped ones"
        )


def shapley_values(
    adapter: Adapter,
    windows: np.ndarray,
    rows: np.ndarray | None,
    H: int,
    levels: list[Any],
    players: Any,
    readable: int,
    budget: int | None,
    random_state: Any,
    batch_size: int,
    covariates: Sequence[tuple[str, np.ndarray]] = (),
    covariate_rows: Sequence[np.ndarray] = (),
    variates: int = 1,
) -> tuple[Any, ...]:
    """The Shapley mode through the library's own forecast call. Players: the target's context steps (patches,
    windows) the model reads, and the same kind of players over each covariate's steps (Chronos-2). ``variates``:
    the windows are ``variates`` variates of ``readable // variates`` steps each, one after the other (every step
    read): each variate has its own players."""
    from ...shapley import ShapleyExplainer

    n, L = windows.shape
    Q = len(levels)
    trimmed = L - readable  # steps the model never reads: exact zeros, not players
    ids, kind, spans = player_ids(players, readable // variates, adapter)
    if variates > 1:  # each variate's players, numbered after the previous variate's
        count = int(ids.max()) + 1
        ids = np.concatenate([ids + v * count for v in range(variates)])
        spans = spans * variates
    spans = [(a + trimmed, b + trimmed) for a, b in spans]
    prefix = windows[:, :trimmed]
    names = [name for name, _ in covariates]
    # a covariate's steps before the context length are cut with the target's (its future steps after): no players
    plans = [player_ids(players, c.shape[1] - trimmed, adapter) for _, c in covariates]
    covariate_prefix = [c[:1, :trimmed] for _, c in covariates]
    offsets = np.cumsum([int(ids.max()) + 1] + [int(p[0].max()) + 1 for p in plans])
    all_ids = [ids] + [p[0] + offsets[k] for k, p in enumerate(plans)]
    forecast_with = getattr(adapter, "forecast_with", None)
    observed: np.ndarray | None = None  # the explained window's observed steps (its missing ones are no players)

    def forward(seen: np.ndarray, *covariate_seen: np.ndarray) -> np.ndarray:
        if observed is not None:  # the window's missing steps given as missing to every coalition
            given = np.full((seen.shape[0], readable), np.nan)
            given[:, observed] = seen
            seen = given
        full = np.concatenate([np.broadcast_to(prefix[:1], (seen.shape[0], trimmed)), seen], axis=1) if trimmed else seen
        if trimmed:
            covariate_seen = tuple(
                np.concatenate([np.broadcast_to(p, (c.shape[0], trimmed)), c], axis=1)
                for p, c in zip(covariate_prefix, covariate_seen, strict=True)
            )
        if covariate_seen:
            assert forecast_with is not None
            out = forecast_with(full, dict(zip(names, covariate_seen, strict=True)), H, levels)
        else:
            out = adapter.library_forecast(full, H, levels)
        return out.reshape(seen.shape[0], H * Q).astype(adapter.precision)

    def per_player(count: int, length: int, plan_kind: str) -> np.ndarray:
        return np.zeros((n, length if plan_kind == "steps" else count, H, Q))

    values = per_player(len(spans), L, kind)
    stderr = np.zeros_like(values)
    covariate_values = [per_player(int(p[0].max()) + 1, c.shape[1], p[1]) for p, (_, c) in zip(plans, covariates, strict=True)]
    covariate_stderr = [np.zeros_like(v) for v in covariate_values]
    base = np.zeros((n, H, Q))
    exact = np.zeros(n, dtype=bool)
    n_evals = np.zeros(n, dtype=np.int64)
    if rows is None:  # dropped: every step of every series given as missing
        reference = [np.full((1, readable), np.nan)] + [np.full((1, c.shape[1] - trimmed), np.nan) for _, c in covariates]
        _check_empty_coalition(adapter, forward, reference)
    else:
        reference = [rows[:, trimmed:]] + [r[:, trimmed:] for r in covariate_rows]
    for i in range(n):  # the trimmed prefix is the window's own (the model never reads it)
        prefix = windows[i : i + 1, :trimmed]
        covariate_prefix = [c[i : i + 1, :trimmed] for _, c in covariates]
        inputs = [windows[i : i + 1, trimmed:]] + [c[i : i + 1, trimmed:] for _, c in covariates]
        window_ids, window_reference, present = ids, reference, np.arange(len(spans))
        missing = np.isnan(inputs[0][0])
        observed = None
        if missing.any():  # missing steps (a gap, the padding of a shorter series): no players, exactly 0, as in DeepSHAP
            observed = np.flatnonzero(~missing)  # (covariates= refuses a target with missing values)
            if observed.size == 0:
                raise InputError(
                    f"window {i} has no observed value in the {readable} steps {adapter.label} reads: nothing to explain"
                )
            present, window_ids = np.unique(ids[observed], return_inverse=True)
            inputs[0] = inputs[0][:, observed]
            window_reference = [reference[0][:, observed]]
        explainer = ShapleyExplainer(
            _Forward(forward), window_reference if covariates else window_reference[0], batch_size=batch_size
        )
        estimate = explainer.shapley_values(
            inputs if covariates else inputs[0], players=all_ids if covariates else window_ids.astype(np.int64),
            budget=budget, random_state=random_state,
        )  # fmt: skip
        v = np.asarray(estimate.values).reshape(-1, H, Q)
        e = np.asarray(estimate.stderr).reshape(-1, H, Q)
        if observed is not None:
            at = trimmed + observed if kind == "steps" else present
            values[i, at] = v
            stderr[i, at] = e
        else:
            start = trimmed if kind == "steps" else 0
            values[i, start:] = v[: offsets[0]]
            stderr[i, start:] = e[: offsets[0]]
        for k in range(len(covariates)):
            covariate_values[k][i, trimmed if kind == "steps" else 0 :] = v[offsets[k] : offsets[k + 1]]
            covariate_stderr[k][i, trimmed if kind == "steps" else 0 :] = e[offsets[k] : offsets[k + 1]]
        base[i] = np.asarray(estimate.base_values).reshape(H, Q)
        exact[i] = bool(np.asarray(estimate.exact).reshape(-1)[0])
        n_evals[i] = int(np.asarray(estimate.n_evals).reshape(-1)[0])
    if kind == "steps":
        spans = [(t, t + 1) for t in range(L)]
    return values, base, stderr, exact, n_evals, kind, spans, covariate_values, covariate_stderr


class _Forward:
    """A numpy function of the inputs for :class:`rnnshap.ShapleyExplainer` (the library's own call)."""

    def __init__(self, function: Callable[..., np.ndarray]) -> None:
        self.function = function

    def __call__(self, *rows: np.ndarray) -> np.ndarray:
        return self.function(*(np.asarray(r, dtype=np.float64) for r in rows))
