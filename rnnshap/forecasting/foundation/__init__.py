"""Pretrained foundation forecasters explained in the objects users hold: :func:`explain` and its result.

``explain(model, context, prediction_length=H)`` takes what the library's own loading call returns (a chronos
``ChronosBoltPipeline`` / ``Chronos2Pipeline`` or the model inside, a tirex model, a timesfm ``TimesFM_2p5_200M_torch``
compiled with its ``ForecastConfig``, a timesfm3 ``TimesFM3Forecaster``, a granite-tsfm ``TinyTimeMixerForPrediction``,
a momentfm ``MOMENTPipeline``, a uni2ts ``Moirai2Forecast``, a toto ``TotoForecaster``, a toto2 ``Toto2Model``) and the
context its forecast call takes, and returns a :class:`ForecastExplanation`: values ``(n, L, H, Q)`` per context step,
forecast step and quantile, adding up to the forecast the library's own public call returns on the same context.

The package, by what it holds: this module, the door (:func:`explain`, :class:`ForecastExplainer`);
``adapters.py``, the :class:`Adapter` base; ``dispatch.py``, a model to its adapter; ``inputs.py``, the context,
background, players and covariates made into windows; ``result.py``, :class:`ForecastExplanation`; ``methods.py``,
the two answers below. One module per library (``tirex.py``, ``chronos.py``, ``timesfm.py``, ``timesfm3.py``,
``tinytimemixer.py``, ``moment.py``, ``moirai2.py``, ``toto.py``, ``toto2.py``), each an :class:`Adapter` importing
its library only when its model is explained. An adapter gives two things: the library's public forecast call on
windows (numpy in, ``(m, H, Q)`` out; NaN where a value is missing, handled as the library handles it), and a torch
module that computes that forecast from the window tensor (the library's own torch functions, called as its forecast
calls them) for DeepSHAP.

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

from typing import Any, NamedTuple, Sequence

import numpy as np

from ...backgrounds import stated
from ...errors import InputError
from .. import check_method
from .adapters import Adapter as Adapter
from .adapters import low_precision as low_precision
from .adapters import net_module as net_module
from .adapters import point_levels as point_levels
from .adapters import precision_of
from .adapters import quantile_columns as quantile_columns
from .dispatch import SUPPORTED as SUPPORTED
from .dispatch import adapter_for as adapter_for
from .inputs import aligned_background as aligned_background
from .inputs import check_background as check_background
from .inputs import covariates_of, variate_background, variate_windows
from .inputs import finite as finite
from .inputs import player_ids as player_ids
from .inputs import windows_of as windows_of
from .methods import KEPT_EXPLAINERS as KEPT_EXPLAINERS
from .methods import deepshap_values, library_forecast, preserved_all, shapley_values
from .result import ForecastExplanation as ForecastExplanation


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
            timesfm3 ``TimesFM3Forecaster`` (its ``predict_batch`` with the defaults), a granite-tsfm
            ``TinyTimeMixerForPrediction``, a momentfm ``MOMENTPipeline`` (forecasting head), a uni2ts ``Moirai2Forecast``
            (one target, past covariates), a toto ``TotoForecaster`` or its ``Toto`` (the mean forecast), a toto2
            ``Toto2Model``.
        context: what the library's forecast takes: ``(n, L)`` windows (array or tensor), one series, or a list of
            series of different lengths (padded in front with NaN, missing, as the libraries pad). NaN is missing.
            Toto, Toto 2 and TimesFM 3 also take ``(n, V, L)``: V variates a window, each forecast from all (the result
            then has a variate axis: ``values`` ``(n, V, L, V, H, Q)``; ``background`` ``(B, V, >= L)``).
        prediction_length: the forecast steps H.
        background: reference windows ``(B, >= L)`` (their last L steps); with ``covariates``, a dict
            ``{"target": ..., "past_covariates": {...}, "future_covariates": {...}}``. None: context dropped the way
            the model drops missing values (the Shapley mode only). Windows constant over what the model reads are
            refused (the models' scale floors).
        quantile_levels: the levels to explain (the model's own; default all its forecast columns).
        covariates: ``{"past_covariates": {name: (n, L)}, "future_covariates": {name: (n, H)}}`` (Chronos-2's names):
            Chronos-2's; Moirai 2's past covariates (``past_feat_dynamic_real``); TimesFM 3's ``past_only_covariates``
            and (DeepSHAP) ``past_future_covariates``. Values in ``result.covariates``: ``(n, L, H, Q)`` each (``L + H``
            steps for one known into the future; ``(n, L, V, H, Q)`` beside V targets).
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
    background, kept = (background.windows, background.explainers) if isinstance(background, Kept) else (background, None)
    method = check_method(method)
    if method == "deepshap":  # the Shapley mode's settings are not taken silently by the one-pass method
        settings = {"budget": (budget, None), "random_state": (random_state, None), "players": (players, "steps")}
        passed = [f"{name}={value!r}" for name, (value, default) in settings.items() if value is not default and value != default]
        if passed:
            raise InputError(f"{', '.join(passed)}: the Shapley mode's settings; pass method='shapley' with them")
    adapter = adapter_for(model)
    precision, label = precision_of(adapter, precision)
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, (int, np.integer)) or prediction_length < 1:
        raise InputError(f"prediction_length must be a positive integer, got {prediction_length!r}")
    H = int(prediction_length)
    variates = variate_windows(context)
    if variates is not None or (covariates is not None and (adapter.multivariate or adapter.past_covariates)):
        if variates is None:  # one target variate with past covariates (Moirai 2's past_feat_dynamic_real)
            variates = windows_of(context)[:, None]
        return _explain_variates(
            adapter, label, precision, variates, H, background, quantile_levels, covariates, method, budget,
            random_state, players, batch_size, check_additivity, None if kept is None else kept.setdefault(precision, {}),
        )  # fmt: skip
    windows = windows_of(context)
    n, L = windows.shape
    levels = adapter.levels(quantile_levels)
    readable = min(L, adapter.context_length() or L)
    covariate = covariates_of(adapter, windows, background, covariates, method, H)
    rows = None
    if covariate.target_background is not None:
        rows = aligned_background(covariate.target_background, L)
        check_background(rows, adapter.label, readable)
    elif method == "deepshap":
        raise InputError(NO_BACKGROUND)
    names = covariate.names
    covariate_values = None
    covariate_stderr = None
    with preserved_all(adapter.torch_modules()), adapter.computing_in(precision):
        forecast = library_forecast(adapter, windows, H, levels)
        if method == "deepshap":
            assert rows is not None
            result = deepshap_values(
                adapter, windows, rows, H, levels, batch_size, check_additivity, covariate.rows, forecast,
                None if kept is None else kept.setdefault(precision, {}),
            )  # fmt: skip
            covariate_values = dict(zip(names, result[-1], strict=True)) if names else None
            result = result[:-1]
        else:
            result = shapley_values(
                adapter, windows, rows, H, levels, players, readable, budget, random_state, batch_size, covariate.given,
                covariate.rows,
            )  # fmt: skip
            if names:
                covariate_values = dict(zip(names, result[-2], strict=True))
                covariate_stderr = dict(zip(names, result[-1], strict=True))
            result = result[:-2]
    values, base, stderr, exact, n_evals, kind, spans = result
    return ForecastExplanation(
        values=values, base_values=base, outputs=forecast, quantile_levels=list(levels), prediction_length=H, method=method,
        model=label, context=windows, precision=precision, stderr=stderr, exact=exact, n_evals=n_evals, players=kind,
        player_steps=spans, absent="background" if rows is not None else "dropped",
        background=stated("foundation", None if rows is None else len(rows), background is not None), covariates=covariate_values,
        covariate_stderr=covariate_stderr,
    )  # fmt: skip


NO_BACKGROUND = (
    "method='deepshap' needs background windows: real windows of the series (e.g. earlier windows of the same "
    "series), at least as long as the context. background=None drops missing context the way the model drops "
    "missing values, a game the Shapley mode plays (method='shapley')"
)


def _explain_variates(
    adapter: Adapter,
    label: str,
    precision: str,
    context: np.ndarray,
    H: int,
    background: Any,
    quantile_levels: Sequence[float] | None,
    covariates: Any,
    method: str,
    budget: int | None,
    random_state: Any,
    players: Any,
    batch_size: int,
    check_additivity: bool | float,
    kept: dict[Any, Any] | None,
) -> ForecastExplanation:
    """:func:`explain` of multivariate windows ``context`` (n, V, L) (and past covariates, for the models that read
    them): the variates (then the covariates) given to the methods flat, (n, (V + C)·R), R the steps the model reads
    (the earlier ones exact zeros); each forecast column a (variate, level) pair."""
    if not adapter.multivariate and not (context.shape[1] == 1 and covariates is not None and adapter.past_covariates):
        raise InputError(
            f"context of shape {context.shape}: {adapter.label} forecasts one variate per series{adapter.one_variate_why}; "
            "give (n, L) windows (one series each). Multivariate windows (n, V, L) are taken by Toto, Toto 2 and TimesFM 3"
        )
    n, V, L = context.shape
    levels = adapter.levels(quantile_levels)
    readable = min(L, adapter.context_length() or L)
    trimmed = L - readable
    names, given, references, target_background, future = adapter.past_covariates_of(covariates, background, n, L, H, method)
    count, K = V + len(names), len(future)  # the last K covariates known into the future: their H future steps at the end
    adapter.set_variates(count, V, K)
    columns = [(v, q) for v in range(V) for q in levels]
    full = np.concatenate([context, *(c[:, None] for c in given)], axis=1) if names else context
    ahead = np.concatenate([f for f, _ in future], axis=1) if K else np.zeros((n, 0))
    flat = np.concatenate([full[..., trimmed:].reshape(n, count * readable), ahead], axis=1)
    rows = None
    if target_background is not None:
        if V == 1 and names and variate_windows(target_background) is None:  # one target: its background (B, L)
            target_background = windows_of(target_background, "background['target']")[:, None]
        rows = variate_background(target_background, V, L, readable, adapter.label)
        for name, r in zip(names, references, strict=True):  # paired with the target's rows by index
            if len(r) != len(rows):
                raise InputError(
                    f"background['past_covariates'][{name!r}] has {len(r)} windows; background['target'] has {len(rows)}: "
                    "give one reference window of each input per background row"
                )
            check_background(r, f"{adapter.label} (covariate {name!r})", readable)
        if names:
            rows = np.concatenate([rows, *(r[:, r.shape[1] - readable :] for r in references), *(r for _, r in future)], axis=1)
    elif method == "deepshap":
        raise InputError(NO_BACKGROUND)
    with preserved_all(adapter.torch_modules()), adapter.computing_in(precision):
        forecast = library_forecast(adapter, np.concatenate([full.reshape(n, count * L), ahead], axis=1), H, columns)
        if method == "deepshap":
            assert rows is not None
            result = deepshap_values(adapter, flat, rows, H, columns, batch_size, check_additivity, (), forecast, kept)[:-1]
        else:
            result = shapley_values(
                adapter, flat, rows, H, columns, players, count * readable, budget, random_state, batch_size, variates=count
            )[:-2]
    values, base, stderr, exact, n_evals, kind, _ = result
    # the known covariates' future steps (DeepSHAP only): (n, K·H, H, V·Q) -> (n, K, H, V, H, Q)
    values, later = values[:, : values.shape[1] - K * H], values[:, values.shape[1] - K * H :]
    later = later.reshape(n, K, H, H, V, len(levels)).transpose(0, 1, 2, 4, 3, 5)
    _, _, spans = player_ids(players, readable, adapter) if kind != "steps" else (None, None, [(t, t + 1) for t in range(L)])
    if kind != "steps":
        spans = [(a + trimmed, b + trimmed) for a, b in spans]

    def outputs(a: np.ndarray) -> np.ndarray:  # (n, H, V·Q) -> (n, V, H, Q)
        return a.reshape(n, H, V, len(levels)).transpose(0, 2, 1, 3)

    def per_variate(a: np.ndarray) -> np.ndarray:  # (n, count·X, H, V·Q) -> (n, count, L or P, V, H, Q)
        a = a.reshape(n, count, -1, H, V, len(levels)).transpose(0, 1, 2, 4, 3, 5)
        if kind == "steps" and trimmed:
            a = np.concatenate([np.zeros((n, count, trimmed, *a.shape[3:])), a], axis=2)
        return a

    values = per_variate(values)
    stderr = None if stderr is None else per_variate(stderr)
    univariate = V == 1 and names  # one target with covariates: the univariate layout, the covariates beside it
    covariate_values = {name: values[:, V + k] for k, name in enumerate(names)} or None
    for k, name in enumerate(names[len(names) - K :]):  # its past steps, then its future steps
        assert covariate_values is not None
        covariate_values[name] = np.concatenate([covariate_values[name], later[:, k]], axis=1)
    covariate_stderr = None if stderr is None else ({name: stderr[:, V + k] for k, name in enumerate(names)} or None)
    values, stderr = values[:, :V], None if stderr is None else stderr[:, :V]
    forecast, base = outputs(forecast), outputs(base)
    if univariate:
        values, stderr = values[:, 0, :, 0], None if stderr is None else stderr[:, 0, :, 0]
        forecast, base = forecast[:, 0], base[:, 0]
        covariate_values = {k: v[:, :, 0] for k, v in (covariate_values or {}).items()}
        covariate_stderr = None if covariate_stderr is None else {k: v[:, :, 0] for k, v in covariate_stderr.items()}
    return ForecastExplanation(
        values=values, base_values=base, outputs=forecast, quantile_levels=list(levels), prediction_length=H, method=method,
        model=label, context=context[:, 0] if univariate else context, precision=precision, stderr=stderr, exact=exact,
        n_evals=n_evals, players=kind, player_steps=spans, absent="background" if rows is not None else "dropped",
        background=stated("foundation", None if rows is None else len(rows), background is not None),
        covariates=covariate_values, covariate_stderr=covariate_stderr, variates=None if univariate else V,
    )  # fmt: skip


class Kept(NamedTuple):
    """A :class:`ForecastExplainer`'s background windows, with the DeepSHAP explainers built against them kept between
    calls: what it gives :func:`explain` as ``background`` (by precision, then by the settings and the references as
    given to DeepSHAP; at most :data:`KEPT_EXPLAINERS` per precision, the most recently used)."""

    windows: Any
    explainers: dict[Any, Any]


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
        return explain(
            self.model, context, prediction_length=prediction_length, background=Kept(self.background, self._kept), **options
        )
