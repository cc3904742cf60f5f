"""What the foundation forecasters' door takes, made into windows: the context and background as ``(n, L)`` float64
windows (NaN: missing), background windows checked against the models' scale floors, the Shapley mode's players, and
Chronos-2's covariates with their reference windows."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from ...errors import InputError
from .adapters import Adapter, PastCovariates


# -- windows ---------------------------------------------------------------------------------------------------
def windows_of(context: Any, what: str = "context") -> np.ndarray:
    """``context`` as (n, L) float64: an (n, L) or (L,) array or tensor, or a list of 1-D series of any lengths,
    left-padded with NaN (missing) to the longest, as the libraries that take lists do."""
    if hasattr(context, "columns") and hasattr(context, "to_numpy"):  # a pandas DataFrame: which axis is time?
        raise InputError(
            f"{what}: a DataFrame does not say whether its rows or its columns are the series; give "
            "df.to_numpy().T where each column is a series (the windows are rows), or a list of the columns' Series"
        )
    if _is_series(context):  # a pandas Series: one series
        context = context.to_numpy(dtype=np.float64)
    if isinstance(context, (list, tuple)):  # pandas Series in a list: series of their own lengths
        context = [c.to_numpy(dtype=np.float64) if _is_series(c) else c for c in context]
    if isinstance(context, (list, tuple)) and context and all(_is_array(c) and np.ndim(_numpy(c)) == 1 for c in context):
        series = [_numpy(c) for c in context]
        if any(s.size == 0 for s in series):
            raise InputError(f"{what}: a series is empty")
        longest = max(s.size for s in series)
        out = np.full((len(series), longest), np.nan)
        for i, s in enumerate(series):
            out[i, longest - s.size :] = s
        return out
    if not _is_array(context):
        raise InputError(f"{what}: give an (n, L) array or tensor, one series (L,), or a list of 1-D series")
    array = _numpy(context)
    if array.ndim == 1:
        array = array[None]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(
            f"{what}: expected (n, L) windows of one series each (or (n, V, L), V variates each, for the models that "
            f"forecast several: Toto, Toto 2, TimesFM 3), got shape {tuple(np.shape(array))}"
        )
    return finite(array, what)


def variate_windows(context: Any, what: str = "context") -> np.ndarray | None:
    """``context`` as (n, V, L) float64 where it is an array or tensor of three axes, the last not of length 1 (an
    (n, L, 1) array is univariate windows, as :func:`windows_of` takes it); None otherwise."""
    if isinstance(context, (list, tuple)) or not _is_array(context) or hasattr(context, "columns"):
        return None
    array = _numpy(context)
    if array.ndim != 3 or array.shape[-1] == 1:
        return None
    if 0 in array.shape:
        raise InputError(f"{what}: expected (n, V, L) windows of V variates, got shape {array.shape}")
    finite(array.reshape(array.shape[0], -1), what)
    return array


def finite(windows: np.ndarray, what: str) -> np.ndarray:
    """``windows``, or an InputError naming the first infinite value (NaN is a missing value, taken)."""
    infinite = np.isinf(windows)
    if infinite.any():
        row, step = (int(i) for i in np.argwhere(infinite)[0])
        raise InputError(
            f"{what} holds an infinite value (window {row}, step {step}: {windows[row, step]}): a forecast from it, and "
            "any attribution to it, is undefined. Give the value it stands for, or NaN where it is missing (the model "
            "takes NaN as a missing value)"
        )
    return windows


def _is_series(a: Any) -> bool:
    return hasattr(a, "to_numpy") and not hasattr(a, "columns") and getattr(a, "ndim", None) == 1


def _is_array(a: Any) -> bool:
    return (
        isinstance(a, np.ndarray) or hasattr(a, "detach") or (isinstance(a, (list, tuple)) and len(a) > 0 and np.isscalar(a[0]))
    )


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.array(a, dtype=np.float64)  # a copy: reversed views, read-only arrays and the caller's data stay as they are


def aligned_background(background: Any, length: int) -> np.ndarray:
    """The background windows brought to the explained windows' length: their last ``length`` steps."""
    rows = windows_of(background, "background")
    if rows.shape[1] < length:
        raise InputError(
            f"background windows have {rows.shape[1]} steps; the explained context has {length}. Give background windows "
            "at least as long as the context (their last steps are used)"
        )
    return rows[:, rows.shape[1] - length :]


def check_background(rows: np.ndarray, label: str, readable: int) -> None:
    """Refuse background windows that are constant over what the model reads: every one of these models scales
    the window by its own spread with a floor (1e-5 and the like), so against a constant window the
    attributions are the output change divided by that floor (measured: ~2,000x the output change)."""
    seen = rows[:, -readable:]
    empty = np.flatnonzero(np.isnan(seen).all(axis=1))
    if empty.size:
        raise InputError(
            f"background row(s) {empty[:5].tolist()} have no observed value over the {readable} steps {label} reads (all "
            "NaN): give real windows of the series, or method='shapley' with background=None to drop context the way "
            "the model drops missing values"
        )
    spread = np.nanmax(seen, axis=1) - np.nanmin(seen, axis=1)
    flat = np.flatnonzero(~(spread > 0))
    if flat.size:
        kind = "all-zero" if np.all(np.nan_to_num(seen[flat]) == 0) else "constant"
        raise InputError(
            f"background row(s) {flat[:5].tolist()} are {kind} over the {readable} steps {label} reads. {label} scales each "
            "window by its own spread (floored near 1e-5), so a constant reference divides the change by that floor: the "
            "values still add up, but each is thousands of times the change it explains. Use real windows of the series "
            "as background (earlier windows of the same or similar series), or method='shapley' with background=None "
            "(missing context dropped the way the model drops it)"
        )


# -- players ---------------------------------------------------------------------------------------------------
def player_ids(players: Any, length: int, adapter: Adapter) -> tuple[np.ndarray, str, list[tuple[int, int]]]:
    """Player id per context step (the last steps of each player aligned to the end of the window, where the
    models cut their patches from) for ``players`` = "steps", "patches" or a window length."""
    if isinstance(players, str) and players == "steps":
        width, kind = 1, "steps"
    elif isinstance(players, str) and players == "patches":
        patch = adapter.patch_length()
        if patch is None:
            raise InputError(f"players='patches': {adapter.label} has no patches; give players='steps' or a window length")
        width, kind = int(patch), "patches"
    elif isinstance(players, (int, np.integer)) and not isinstance(players, bool) and players >= 1:
        width, kind = int(players), f"windows of {int(players)}"
    else:
        raise InputError(f"players={players!r}: give 'steps', 'patches' (the model's own patch length) or a window length (int)")
    offset = (-length) % width
    ids = (np.arange(length) + offset) // width
    spans = [(max(0, p * width - offset), min(length, (p + 1) * width - offset)) for p in range(int(ids[-1]) + 1)]
    return ids.astype(np.int64), kind, spans


class Covariates(NamedTuple):
    """Chronos-2's covariates as the methods take them (empty without ``covariates=``)."""

    #: the target's background (``background["target"]`` with covariates; None: dropped)
    target_background: Any
    #: per covariate, its reference windows ``(B, L_c)`` (empty where the target's background is dropped)
    rows: list[np.ndarray]
    #: the covariates' names, in the order of ``given``
    names: list[str]
    #: per covariate, ``(name, (n, L_c))``: the explained windows' values
    given: list[tuple[str, np.ndarray]]


def covariates_of(adapter: Adapter, windows: np.ndarray, background: Any, covariates: Any, method: str, H: int) -> Covariates:
    """The covariates with their reference windows, and the target's background (with ``covariates=``,
    ``background["target"]``; None for the Shapley mode's dropped game); every mismatch refused by name."""
    if covariates is None:
        return Covariates(background, [], [], [])
    n, L = windows.shape
    if not hasattr(adapter, "set_covariates"):
        raise InputError(f"{adapter.label} reads no covariates; covariates= is taken by Chronos-2 (Chronos2Pipeline)")
    if np.isnan(windows).any():
        raise InputError("covariates= with missing target values (NaN, series of different lengths): give full windows")
    if background is None and method == "shapley":
        background = {"target": None}  # dropped: every series' missing players given as NaN
    elif not isinstance(background, Mapping) or "target" not in background:
        raise InputError(
            'with covariates=, give background={"target": (B, L), "past_covariates": {name: (B, L)}, '
            '"future_covariates": {name: (B, H)}}: reference windows for every input'
        )
    target_background = background["target"]
    B = 0 if target_background is None else windows_of(target_background, "background['target']").shape[0]
    shaped = {
        "past_covariates": {name: aligned_background(v, L) for name, v in (background.get("past_covariates") or {}).items()},
        "future_covariates": dict(background.get("future_covariates") or {}),
    }
    references = dict(adapter.set_covariates(shaped, B, L, H))  # type: ignore[attr-defined]
    given = adapter.set_covariates(covariates, n, L, H)  # type: ignore[attr-defined]
    names = [name for name, _ in given]
    rows: list[np.ndarray] = []
    if target_background is not None:
        if sorted(references) != sorted(names):
            raise InputError(
                f"background: give reference windows for the covariates {names} (past and future alike, under "
                f"the same names as covariates=); got {list(references)}"
            )
        for name, values in given:  # a covariate known into the future needs references of its future too
            if references[name].shape[1] != values.shape[1]:
                has, lacks = ("covariates=", "background") if values.shape[1] > L else ("background", "covariates=")
                raise InputError(
                    f"covariate {name!r} has future values (future_covariates) in {has} but not in {lacks}: give "
                    f"background['future_covariates'][{name!r}] (B, {H}) for a covariate known into the future, or "
                    "neither"
                )
        rows = [references[name] for name in names]
    return Covariates(target_background, rows, names, given)


# -- multivariate windows ----------------------------------------------------------------------------------------
def variate_background(background: Any, variates: int, length: int, readable: int, label: str) -> np.ndarray:
    """Background windows ``(B, V, >= length)`` of the context's ``variates`` variates: their last ``readable`` steps,
    flat (B, V·readable), each variate checked against the scale floor as :func:`check_background` does."""
    rows = variate_windows(background, "background")
    if rows is None or rows.shape[1] != variates:
        shape = tuple(np.shape(background)) if hasattr(background, "shape") else type(background).__name__
        raise InputError(
            f"background: the context has {variates} variates; give background windows (B, {variates}, >= {length}) of "
            f"the same variates in the same order (got {shape})"
        )
    if rows.shape[2] < length:
        raise InputError(
            f"background windows have {rows.shape[2]} steps; the explained context has {length}. Give background windows "
            "at least as long as the context (their last steps are used)"
        )
    rows = rows[:, :, rows.shape[2] - readable :]
    for v in range(variates):
        check_background(rows[:, v], f"{label} (variate {v})", readable)
    return rows.reshape(rows.shape[0], -1)


def past_covariates(
    label: str, covariates: Any, background: Any, n: int, L: int, H: int, method: str, future_note: str | None
) -> PastCovariates:
    """Covariates given as Chronos-2 names them, ``covariates={"past_covariates": {name: (n, L)}, "future_covariates":
    {name: (n, H)}}`` (a known covariate's past under its name in the first, its future in the second) against
    ``background={"target": ..., "past_covariates": {name: (B, >= L)}, "future_covariates": {name: (B, H)}}``.
    ``future_note``: why future-known covariates are refused (None: taken, DeepSHAP only, without missing values). The
    dropped game (background=None) is refused."""
    if covariates is None:
        return PastCovariates([], [], [], background, [])
    if not isinstance(covariates, Mapping) or not set(covariates) <= {"past_covariates", "future_covariates"}:
        raise InputError(f'covariates: give {{"past_covariates": {{name: (n, L)}}}} for {label}')
    future = dict(covariates.get("future_covariates") or {})
    if future and future_note is not None:
        raise InputError(f"covariates: future_covariates are not explained for {label}: {future_note}")
    past = dict(covariates.get("past_covariates") or {})
    if not past:
        raise InputError('covariates: give {"past_covariates": {name: (n, L)}} (none given)')
    if not set(future) <= set(past):
        raise InputError(
            f"covariates: future covariates {sorted(set(future) - set(past))} have no past values; give a known "
            "covariate's past in past_covariates and its future in future_covariates, under the same name"
        )
    if future and method != "deepshap":
        raise InputError(
            f"covariates known into the future ({label}'s past_future_covariates) with method={method!r}: the Shapley "
            "mode's players over their future steps are not built; use method='deepshap' (exact in sum), or give "
            "their past only"
        )
    if background is None:
        raise InputError(
            f"covariates= with background=None: the dropped game (missing players given as NaN) is not played with "
            f"{label}'s covariates. Give background={{'target': ..., 'past_covariates': {{name: ...}}}}, reference "
            "windows for every input"
        )
    if not isinstance(background, Mapping) or "target" not in background:
        raise InputError(
            'with covariates=, give background={"target": (B, L), "past_covariates": {name: (B, L)}, '
            '"future_covariates": {name: (B, H)}}: reference windows for every input'
        )
    references = dict(background.get("past_covariates") or {})
    ahead = dict(background.get("future_covariates") or {})
    if sorted(references) != sorted(past) or sorted(ahead) != sorted(future):
        raise InputError(
            f"background: give reference windows for the covariates {sorted(past)} under background['past_covariates'] "
            f"and for {sorted(future)} under background['future_covariates'] (the same names as covariates=); got "
            f"{sorted(references)} and {sorted(ahead)}"
        )
    names = [name for name in past if name not in future] + [name for name in past if name in future]
    given, rows, known = [], [], []
    for name in names:
        values = windows_of(past[name], f"past_covariates[{name!r}]")
        if values.shape != (n, L):
            raise InputError(f"past_covariates[{name!r}] has shape {values.shape}; the context is {(n, L)}")
        given.append(values)
        rows.append(aligned_background(references[name], L))
        if name in future:
            values_ahead = windows_of(future[name], f"future_covariates[{name!r}]")
            rows_ahead = windows_of(ahead[name], f"background['future_covariates'][{name!r}]")
            if values_ahead.shape != (n, H) or rows_ahead.shape != (rows[-1].shape[0], H):
                raise InputError(
                    f"future_covariates[{name!r}]: give (n, {H}) values and (B, {H}) references (the forecast's steps); "
                    f"got {values_ahead.shape} and {rows_ahead.shape}"
                )
            if np.isnan(values).any() or np.isnan(values_ahead).any():
                raise InputError(
                    f"covariate {name!r} (known into the future) holds NaN: rnnshap.foundation explains covariates known "
                    "into the future without missing values"
                )
            known.append((values_ahead, rows_ahead))
    return PastCovariates(names, given, rows, background["target"], known)
