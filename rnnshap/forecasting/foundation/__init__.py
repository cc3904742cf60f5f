"""Pretrained foundation forecasters explained in the objects users hold: :func:`explain` and its result.

``explain(model, context, prediction_length=H)`` takes what the library's own loading call returns
(a chronos ``ChronosBoltPipeline`` / ``Chronos2Pipeline`` or the model inside, a tirex model, a timesfm
``TimesFM_2p5_200M_torch`` compiled with its ``ForecastConfig``, a granite-tsfm
``TinyTimeMixerForPrediction``, a momentfm ``MOMENTPipeline``) and the context its forecast call takes,
and returns a :class:`ForecastExplanation`: values ``(n, L, H, Q)`` per context step, forecast step and
quantile, adding up to the forecast the library's own public call returns on the same context.

One module per library (``tirex.py``, ``chronos.py``, ``timesfm.py``, ``tinytimemixer.py``, ``moment.py``),
each an :class:`Adapter` importing its library only when its model is explained. An adapter gives two
things: the library's public forecast call on windows (numpy in, ``(m, H, Q)`` out; NaN where a value is
missing, handled as the library handles it), and a torch module that computes that forecast from the
window tensor (the library's own torch functions, called as its forecast calls them) for DeepSHAP.

Two answers (``method``):

- ``"deepshap"``: :class:`rnnshap.DeepExplainer` on the adapter's module against ``background`` windows:
  exact in sum (values add up to the forecast minus the base value, the mean forecast over the background);
- ``"shapley"``: :class:`rnnshap.ShapleyExplainer` on the library's public forecast call: Shapley values of
  the context steps (``players="steps"``), of the model's own patches (``"patches"``) or of windows of a
  given length (an int), with standard errors, exact where ``budget`` covers every coalition. With
  ``background=None`` a missing player is *dropped*, given to the model as missing (NaN), the way the
  library takes missing values, instead of replaced from a background window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...errors import AdditivityError, InputError, RnnShapError, UnsupportedOperationError
from .. import check_method, check_version, preserved

__all__ = ["Adapter", "ForecastExplainer", "ForecastExplanation", "adapter_for", "explain"]


class Adapter:
    """One library's forecast: its public call on windows, and the torch function behind it.

    Subclasses set the class attributes and implement :meth:`library_forecast` and :meth:`module`."""

    #: the distribution whose version is checked (a key of :data:`rnnshap.forecasting.VERIFIED`)
    distribution = ""
    #: the model's name in messages
    label = ""
    #: how the library takes a missing value (said in the docs and the result)
    drops = "NaN"
    #: the precision the forecast is computed in (its rounding is the Shapley mode's tolerance for a model whose
    #: output moves with the rows batched beside it, as matrix products in float32 do)
    precision: Any = np.float32
    #: how far (relative to the forecast's scale) the DeepSHAP module's output may be from the library's own call on
    #: the same windows: rounding that moves with the batch beside a row (the module runs the library's functions)
    agreement = 2e-5  # ~170 float32 eps of the forecast's scale
    #: the precisions ``explain(precision=...)`` takes, the first the model's own (the default)
    precisions: tuple[str, ...] = ("float32",)
    #: what a twin in another precision changes (said in the result's ``model``)
    twin_note = ""

    def __init__(self, model: Any) -> None:
        self.model = model

    def computing_in(self, precision: str) -> Any:
        """A context manager in which the model computes in ``precision`` (one of :attr:`precisions`): the
        library's forecast and the DeepSHAP module alike. The model's own precision changes nothing."""
        import contextlib

        return contextlib.nullcontext()

    # -- what the model reads -----------------------------------------------------------------------------
    def context_length(self) -> int | None:
        """The most recent steps the model reads; earlier ones are trimmed (None: no limit)."""
        return None

    def patch_length(self) -> int | None:
        """The model's own patch length (``players="patches"``), None for a model without patches."""
        return None

    def levels(self, requested: Sequence[float] | None) -> list[Any]:
        """The labels of the forecast's last axis for ``quantile_levels=requested`` (validated)."""
        raise NotImplementedError

    def torch_modules(self) -> list[Any]:
        """The torch modules the forecast runs (put back as they were after explaining)."""
        raise NotImplementedError

    # -- the two forms of the forecast ---------------------------------------------------------------------
    def library_forecast(self, windows: np.ndarray, prediction_length: int, levels: list[Any]) -> np.ndarray:
        """The library's public forecast call on ``windows`` (m, L) float64 (NaN: missing): (m, H, Q)."""
        raise NotImplementedError

    def module(self, prediction_length: int, levels: list[Any]) -> Any:
        """A torch module ``f(x, *context) -> (m, H·Q)``: the library's forecast of the windows ``x`` (m, L),
        computed by the library's torch functions; ``context`` are :meth:`context_inputs`."""
        raise NotImplementedError

    def module_for(self, prediction_length: int, levels: list[Any], missing: np.ndarray) -> Any:
        """:meth:`module` for windows missing the steps ``missing`` (L,) bool, all alike (DeepSHAP explains windows
        in groups of one missing pattern): a library that fills missing values by a map fixed by the pattern (TimesFM
        interpolates) builds that map here."""
        return self.module(prediction_length, levels)

    def context_inputs(self, windows: np.ndarray) -> list[np.ndarray]:
        """Per-window inputs that are not attributed (bool arrays, first axis the windows): taken at the
        explained window's values for it and its references alike (DeepSHAP's context inputs)."""
        return []

    def refusal_note(self, prediction_length: int, levels: Sequence[Any] = ()) -> str:
        """What to add to DeepSHAP's refusal of this forecast (e.g. the rollout past the model's horizon, quantile
        levels the library interpolates)."""
        return ""

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        """The explained windows as the DeepSHAP module reads them; NaN refused where the module cannot
        take it."""
        if np.isnan(windows).any():
            raise InputError(
                f"{self.label}: the context holds NaN (missing values or series of different lengths), which DeepSHAP "
                "explains only where rnnshap has exact rules for the model's missing-value handling. Use "
                "method='shapley', which runs the library's own forecast call on them"
            )
        return windows


# -- dispatch ------------------------------------------------------------------------------------------------
def _adapter_class(model: Any) -> type[Adapter] | None:
    """The adapter for ``model``'s type, by the module its class comes from (no library imported first)."""
    modules = [getattr(c, "__module__", "") or "" for c in type(model).__mro__]
    root = {m.split(".")[0] for m in modules}
    if "tsfm_public" in root:
        from .tinytimemixer import TinyTimeMixerAdapter

        return TinyTimeMixerAdapter
    if "timesfm" in root:
        from .timesfm import TimesFMAdapter

        return TimesFMAdapter
    if "chronos" in root:
        from .chronos import chronos_adapter

        return chronos_adapter(model)
    if "tirex" in root:
        from .tirex import TiRexAdapter

        return TiRexAdapter
    if "momentfm" in root:
        from .moment import MomentAdapter

        return MomentAdapter
    return None


SUPPORTED = (
    "a chronos ChronosBoltPipeline or Chronos2Pipeline (or the model inside), a tirex model (tirex.load_model), a timesfm "
    "TimesFM_2p5_200M_torch compiled with its ForecastConfig, a granite-tsfm TinyTimeMixerForPrediction, a momentfm "
    "MOMENTPipeline (task_name='forecasting')"
)


def adapter_for(model: Any) -> Adapter:
    """The :class:`Adapter` of ``model`` (its library's version checked), or an InputError naming what is taken."""
    cls = _adapter_class(model)
    if cls is None:
        raise InputError(
            f"rnnshap.foundation.explain takes {SUPPORTED}; got {type(model).__module__}.{type(model).__name__}. "
            "For another torch forecaster use rnnshap.DeepExplainer on a module from context windows to its forecast "
            "(docs/recipes.md)"
        )
    check_version(cls.distribution)
    return cls(model)


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
        raise InputError(f"{what}: expected (n, L) windows of one series each, got shape {tuple(np.shape(array))}")
    return finite(array, what)


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


# -- the result ------------------------------------------------------------------------------------------------
@dataclass
class ForecastExplanation:
    """The attributions of foundation-model forecasts to their context.

    Arrays are float64. ``n`` windows, ``L`` context steps, ``H = prediction_length``, ``Q`` forecast columns
    (``quantile_levels``: the quantile levels, and ``"mean"`` / ``"point"`` where the library returns those)."""

    #: ``(n, L, H, Q)``: per context step (``players="steps"`` or DeepSHAP); ``(n, P, H, Q)`` per player
    #: (patches, windows: ``player_steps`` maps each to its steps)
    values: np.ndarray
    #: ``(n, H, Q)``: what the values add up from (the mean forecast over the background; with
    #: ``background=None`` in the Shapley mode, the forecast with the whole context dropped)
    base_values: np.ndarray
    #: ``(n, H, Q)``: the library's own public forecast on the context
    forecast: np.ndarray
    quantile_levels: list[Any]
    prediction_length: int
    #: "deepshap" or "shapley"
    method: str
    #: the model, in words
    model: str
    #: ``(n, L)``: the context windows as explained (NaN where missing or padded)
    context: np.ndarray
    #: the Shapley mode's standard errors, shaped like ``values`` (0 where exact)
    stderr: np.ndarray | None = None
    #: per window: every coalition enumerated (Shapley mode)
    exact: np.ndarray | None = None
    #: per window: rows run through the model (Shapley mode)
    n_evals: np.ndarray | None = None
    #: "steps", "patches", "windows of w", or "steps" for DeepSHAP
    players: str = "steps"
    #: per player, the ``(start, stop)`` context steps it holds
    player_steps: list[tuple[int, int]] = field(default_factory=list)
    #: per covariate name, values ``(n, L_c, H, Q)`` (models that read covariates; per player in the Shapley mode)
    covariates: dict[str, np.ndarray] | None = None
    #: their standard errors (Shapley mode)
    covariate_stderr: dict[str, np.ndarray] | None = None
    #: "background" (missing players take background values) or "dropped" (given to the model as missing)
    game: str = "background"
    #: what the explained model computes in: its own precision, or the twin's asked for (``precision=``)
    precision: str = "float32"

    def total(self) -> np.ndarray:
        """``base_values`` plus every value (covariates included): ``(n, H, Q)``, equal to ``forecast``."""
        total = self.base_values + self.values.sum(1)
        for v in (self.covariates or {}).values():
            total = total + v.sum(1)
        return total

    def plot(self, sample: int = 0, horizon: int = 0, quantile: Any = None, *, ax: Any = None) -> Any:
        """The context of one window with the forecast's quantiles, and below it the values of each context step
        (or player) for one forecast step and column (``quantile``: a label of ``quantile_levels``; default the
        median, else the first), with ±2 standard errors in the Shapley mode. Returns the matplotlib Figure."""
        from ...plots.style import BAR, INK, NEGATIVE, POSITIVE, new_figure, rgb

        column = self._column(quantile)
        if not 0 <= horizon < self.prediction_length:
            raise InputError(f"horizon={horizon}: the forecast has {self.prediction_length} steps")
        if not 0 <= sample < self.values.shape[0]:
            raise InputError(f"sample={sample}: {self.values.shape[0]} window(s) were explained")
        if ax is None:
            fig = new_figure((8.0, 4.8))
            top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1))
        else:
            top, bottom = ax
            fig = top.figure
        L = self.context.shape[1]
        steps = np.arange(L)
        future = np.arange(L, L + self.prediction_length)
        top.plot(steps, self.context[sample], color=INK, lw=1.2, label="context")
        top.plot(future, self.forecast[sample, :, column], color=BAR, lw=1.2, label=f"forecast ({self.quantile_levels[column]})")
        numeric = [i for i, q in enumerate(self.quantile_levels) if isinstance(q, float)]
        if len(numeric) >= 2:
            low, high = numeric[0], numeric[-1]
            top.fill_between(future, self.forecast[sample, :, low], self.forecast[sample, :, high], color=BAR, alpha=0.2, lw=0)
        top.axvline(L + horizon, color="#999999", lw=0.8, ls=":")
        top.legend(loc="upper left", fontsize=8, frameon=False)
        top.set_title(
            f"{self.model}: forecast step {horizon + 1}, column {self.quantile_levels[column]} ({self.method})", fontsize=10
        )
        values = self.values[sample, :, horizon, column]
        if self.players == "steps":
            centers, widths = steps, np.ones(L)
        else:
            centers = np.array([(a + b - 1) / 2 for a, b in self.player_steps])
            widths = np.array([b - a for a, b in self.player_steps], dtype=float)
        colors = [rgb(POSITIVE) if v >= 0 else rgb(NEGATIVE) for v in values]
        errors = None if self.stderr is None else 2 * self.stderr[sample, :, horizon, column]
        bottom.bar(centers, values, width=0.9 * widths, color=colors, yerr=errors, ecolor=INK, error_kw={"lw": 0.6})
        bottom.axhline(0, color=INK, lw=0.6)
        bottom.set_xlabel("context step")
        bottom.set_ylabel("contribution")
        if self.covariates:  # the bars are the target's: the covariates' share of the change is elsewhere
            shares = ", ".join(f"{name} {float(v[sample, :, horizon, column].sum()):.3g}" for name, v in self.covariates.items())
            bottom.set_title(f"the target's steps; the covariates add: {shares} (result.covariates)", fontsize=9)
        return fig

    def _column(self, quantile: Any) -> int:
        if quantile is None:
            for target in (0.5, "mean", "point"):
                if target in self.quantile_levels:
                    return self.quantile_levels.index(target)
            return 0
        if quantile not in self.quantile_levels:
            raise InputError(f"quantile={quantile!r}: the forecast's columns are {self.quantile_levels}")
        return self.quantile_levels.index(quantile)


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


# -- the door --------------------------------------------------------------------------------------------------
def explain(
    model: Any,
    context: Any,
    *,
    prediction_length: int,
    background: Any = None,
    quantile_levels: Sequence[float] | None = None,
    covariates: Any = None,
    method: str = "deepshap",
    budget: int | None = None,
    random_state: Any = None,
    players: Any = "steps",
    batch_size: int = 512,
    check_additivity: bool | float = True,
    precision: str | None = None,
) -> ForecastExplanation:
    """Explain a foundation model's forecast of ``context``, in the object its library's loading call returns.

    Each call sets DeepSHAP up anew (a reference pass on the background and the checks that the model computes
    each row alone); to explain many contexts against one background, :class:`ForecastExplainer` keeps that setup.

    Args:
        model: a chronos ``ChronosBoltPipeline`` / ``Chronos2Pipeline`` (or the model inside), a tirex ``TiRexZero``
            (``tirex.load_model``), a timesfm ``TimesFM_2p5_200M_torch`` compiled with its ``ForecastConfig``, a
            granite-tsfm ``TinyTimeMixerForPrediction``, a momentfm ``MOMENTPipeline`` (forecasting head).
        context: what the library's forecast takes: ``(n, L)`` windows (array or tensor), one series, or a list of
            series of different lengths (padded in front with NaN, missing, as the libraries pad). NaN is missing.
        prediction_length: the forecast steps H.
        background: reference windows ``(B, >= L)`` (their last L steps); with ``covariates``, a dict
            ``{"target": ..., "past_covariates": {...}, "future_covariates": {...}}``. None: context dropped the way
            the model drops missing values (the Shapley mode only). Windows constant over what the model reads are
            refused (the models' scale floors).
        quantile_levels: the levels to explain (the model's own; default all its forecast columns).
        covariates: Chronos-2's ``{"past_covariates": {name: (n, L)}, "future_covariates": {name: (n, H)}}``.
        method: ``"deepshap"`` (exact in sum, one pass) or ``"shapley"`` (Shapley values with standard errors
            through the library's own forecast call, exact where ``budget`` covers every coalition).
        budget, random_state: the Shapley mode's rows per window and seed.
        players: the Shapley mode's players: ``"steps"``, ``"patches"`` (the model's patch length) or a window
            length; aligned to the end of the context.
        batch_size: the most rows run through the model at once.
        check_additivity: DeepSHAP's own check (True: the dtype's tolerance; a float: that relative tolerance).
        precision: what the model computes in: None, its own precision (TiRex's sLSTM: bfloat16); ``"float32"`` for
            TiRex explains a float32 twin of its sLSTM (the same weights, the recurrence in float32): the forecast is
            then the twin's, through the library's own call, and the values add up to it to float32 precision.

    Returns:
        A :class:`ForecastExplanation` whose ``total()`` equals ``forecast``, the library's own forecast.

    Raises:
        UnverifiedVersionError: the library is outside the versions the adapter was verified on.
        InputError: a model no adapter takes, a constant background, inputs the model refuses.
        UnsupportedOperationError: DeepSHAP has no exact rule for a step of this forecast (``method="shapley"``).
        RnnShapError: the torch function rnnshap explains does not give the library's own forecast.
    """
    return _explain(
        model, context, prediction_length=prediction_length, background=background, quantile_levels=quantile_levels,
        covariates=covariates, method=method, budget=budget, random_state=random_state, players=players,
        batch_size=batch_size, check_additivity=check_additivity, precision=precision, kept=None,
    )  # fmt: skip


#: the most DeepSHAP explainers a :class:`ForecastExplainer` keeps per precision (one per prediction length, quantile
#: levels and pattern of missing steps; each keeps up to its engine's ``KEPT_TAPE_BYTES`` of reference tapes)
KEPT_EXPLAINERS = 8


class ForecastExplainer:
    """:func:`explain` for one model and one background, keeping DeepSHAP's setup between calls.

    ``ForecastExplainer(model, background=windows).explain(context, prediction_length=H)`` gives what
    ``explain(model, context, prediction_length=H, background=windows)`` gives, bit for bit. The first call for a
    prediction length, quantile levels, precision and pattern of missing steps builds DeepSHAP's explainer: the
    reference pass on the background (its tape kept for later calls, vetted before each reuse by a plain forward
    that must give its outputs bit for bit) and the checks that the model computes every row alone. Later calls
    with the same settings reuse it (the :data:`KEPT_EXPLAINERS` most recently used are kept), as a
    :class:`rnnshap.DeepExplainer` reused on new inputs does: parameters
    trained or replaced in between are seen (the background's outputs are computed again), the setup checks are
    not run again. Build a new one after changing the model's code or its library's forecast settings (TimesFM's
    ``compile``). The Shapley mode keeps nothing (every call runs the library's own forecast).
    """

    def __init__(self, model: Any, *, background: Any) -> None:
        self.model = model
        self.background = background
        #: DeepSHAP's module and explainer by (precision, settings, the references as given to it)
        self._kept: dict[Any, Any] = {}

    def explain(self, context: Any, *, prediction_length: int, **options: Any) -> ForecastExplanation:
        """:func:`explain` of ``context`` against this explainer's model and background (the same options, but
        ``model`` and ``background``)."""
        for name in ("model", "background"):
            if name in options:
                raise InputError(f"{name}= is the ForecastExplainer's own: build another ForecastExplainer for another")
        return _explain(self.model, context, prediction_length=prediction_length, background=self.background, kept=self._kept,
                        **options)  # fmt: skip


def _explain(
    model: Any,
    context: Any,
    *,
    prediction_length: int,
    background: Any = None,
    quantile_levels: Sequence[float] | None = None,
    covariates: Any = None,
    method: str = "deepshap",
    budget: int | None = None,
    random_state: Any = None,
    players: Any = "steps",
    batch_size: int = 512,
    check_additivity: bool | float = True,
    precision: str | None = None,
    kept: dict[Any, Any] | None = None,
) -> ForecastExplanation:
    """:func:`explain`; ``kept``: DeepSHAP's explainers kept between calls (:class:`ForecastExplainer`), or None."""
    method = check_method(method)
    if method == "deepshap":  # the Shapley mode's settings are not taken silently by the one-pass method
        settings = {"budget": (budget, None), "random_state": (random_state, None), "players": (players, "steps")}
        passed = [f"{name}={value!r}" for name, (value, default) in settings.items() if value is not default and value != default]
        if passed:
            raise InputError(f"{', '.join(passed)}: the Shapley mode's settings; pass method='shapley' with them")
    adapter = adapter_for(model)
    own_precision = adapter.precisions[0]
    if precision is None:
        precision = own_precision
    if precision not in adapter.precisions:
        raise InputError(
            f"precision={precision!r}: {adapter.label} computes in {own_precision}"
            + (f"; it can also run in {', '.join(adapter.precisions[1:])}" if len(adapter.precisions) > 1 else "")
            + f". Give one of {list(adapter.precisions)}, or leave precision=None (the model's own)"
        )
    label = adapter.label if precision == own_precision else f"{adapter.label} ({precision} twin: {adapter.twin_note})"
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, (int, np.integer)) or prediction_length < 1:
        raise InputError(f"prediction_length must be a positive integer, got {prediction_length!r}")
    H = int(prediction_length)
    windows = windows_of(context)
    n, L = windows.shape
    levels = adapter.levels(quantile_levels)
    readable = min(L, adapter.context_length() or L)
    target_background = background
    covariate_rows: list[np.ndarray] = []
    covariate_names: list[str] = []
    given_covariates: list[tuple[str, np.ndarray]] = []
    if covariates is not None:
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
        given_covariates = adapter.set_covariates(covariates, n, L, H)  # type: ignore[attr-defined]
        covariate_names = [name for name, _ in given_covariates]
        if target_background is not None:
            if sorted(references) != sorted(covariate_names):
                raise InputError(
                    f"background: give reference windows for the covariates {covariate_names} (past and future alike, under "
                    f"the same names as covariates=); got {list(references)}"
                )
            for name, given in given_covariates:  # a covariate known into the future needs references of its future too
                if references[name].shape[1] != given.shape[1]:
                    has, lacks = ("covariates=", "background") if given.shape[1] > L else ("background", "covariates=")
                    raise InputError(
                        f"covariate {name!r} has future values (future_covariates) in {has} but not in {lacks}: give "
                        f"background['future_covariates'][{name!r}] (B, {H}) for a covariate known into the future, or "
                        "neither"
                    )
            covariate_rows = [references[name] for name in covariate_names]
    rows = None
    if target_background is not None:
        rows = aligned_background(target_background, L)
        check_background(rows, adapter.label, readable)
    elif method == "deepshap":
        raise InputError(
            "method='deepshap' needs background windows: real windows of the series (e.g. earlier windows of the same "
            "series), at least as long as the context. background=None drops missing context the way the model drops "
            "missing values, a game the Shapley mode plays (method='shapley')"
        )
    modules = adapter.torch_modules()
    covariate_values = None
    covariate_stderr = None
    with _preserved_all(modules), adapter.computing_in(precision):
        forecast = _library_forecast(adapter, windows, H, levels)
        if method == "deepshap":
            assert rows is not None
            result = _deepshap(
                adapter, windows, rows, H, levels, batch_size, check_additivity, covariate_rows, forecast,
                None if kept is None else kept.setdefault(precision, {}),
            )  # fmt: skip
            covariate_values = dict(zip(covariate_names, result[-1], strict=True)) if covariate_names else None
            result = result[:-1]
        else:
            result = _shapley(
                adapter, windows, rows, H, levels, players, readable, budget, random_state, batch_size, given_covariates,
                covariate_rows,
            )  # fmt: skip
            if covariate_names:
                covariate_values = dict(zip(covariate_names, result[-2], strict=True))
                covariate_stderr = dict(zip(covariate_names, result[-1], strict=True))
            result = result[:-2]
    values, base, stderr, exact, n_evals, kind, spans = result
    return ForecastExplanation(
        values=values, base_values=base, forecast=forecast, quantile_levels=list(levels), prediction_length=H, method=method,
        model=label, context=windows, precision=precision, stderr=stderr, exact=exact, n_evals=n_evals, players=kind,
        player_steps=spans, game="background" if rows is not None else "dropped", covariates=covariate_values,
        covariate_stderr=covariate_stderr,
    )  # fmt: skip


def _library_forecast(adapter: Adapter, windows: np.ndarray, H: int, levels: list[Any]) -> np.ndarray:
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


def low_precision(adapter: Adapter) -> str:
    """The low-precision floating dtypes (bfloat16, float16) of the parameters of the modules the forecast runs,
    named ("" where there are none)."""
    import torch

    found = {
        str(p.dtype).replace("torch.", "")
        for m in adapter.torch_modules()
        for p in m.parameters()
        if p.dtype in (torch.bfloat16, torch.float16)
    }
    return " and ".join(sorted(found))


class _preserved_all:
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


def _deepshap(
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
    if np.isnan(rows).any():
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
                refusal = UnsupportedOperationError([(name, why, error.advice.get(name, "rule")) for name, why in error.ops])
                refusal.args = (
                    f"{adapter.label}'s forecast{adapter.refusal_note(H, levels)} has operations DeepSHAP has no exact rule for; "
                    "method='shapley' explains it from the library's own forecast call (Shapley values with standard "
                    f"errors).\n{error}",
                )
                raise refusal from error
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
            own = forecast[members].reshape(len(members), -1)
            gap = float(np.abs(attribution.outputs - own).max())
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
        part = attribution.values[0].reshape(len(members), L, H, Q)
        values[members] = part
        for k, c in enumerate(covariate_values):
            c[members] = attribution.values[1 + k].reshape(len(members), c.shape[1], H, Q)
        base[members] = attribution.base_values.reshape(len(members), H, Q)
    return values, base, None, None, None, "steps", [(t, t + 1) for t in range(L)], covariate_values


def _shapley(
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
) -> tuple[Any, ...]:
    """The Shapley mode through the library's own forecast call. Players: the target's context steps (patches,
    windows) the model reads, and the same kind of players over each covariate's steps (Chronos-2)."""
    from ...shapley import ShapleyExplainer

    n, L = windows.shape
    Q = len(levels)
    trimmed = L - readable  # steps the model never reads: exact zeros, not players
    ids, kind, spans = player_ids(players, readable, adapter)
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


def quantile_columns(trained: Sequence[float], requested: Sequence[float] | None, label: str) -> list[float]:
    """Requested levels, each one the model was trained on (no interpolation), default all."""
    if requested is None:
        return [float(q) for q in trained]
    out = []
    for q in requested:
        if not any(math.isclose(float(q), float(t)) for t in trained):
            raise InputError(f"quantile_levels: {label} forecasts the levels {list(trained)}; {q} is not one of them")
        out.append(float(q))
    if not out:
        raise InputError("quantile_levels: give at least one level")
    return out


def point_levels(requested: Sequence[float] | None, label: str) -> list[Any]:
    """The one column of a point forecaster, ``["point"]``; quantile levels are refused."""
    if requested is not None:
        raise InputError(
            f"{label} makes a point forecast (one column, 'point'), no quantiles: leave quantile_levels=None; "
            f"got {list(requested)}"
        )
    return ["point"]


def net_module(net: Any, forward: Callable[[Any, Any], Any], doc: str) -> Any:
    """A float32 torch module holding ``net`` (a submodule, as ``.net``) whose forward on the windows ``x`` is
    ``forward(net, x)``; ``doc`` says what it computes."""
    import torch
    from torch import nn

    class Forecast(nn.Module):
        dtype = torch.float32

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forward(self.net, x)

    Forecast.__doc__ = doc
    return Forecast()
