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

The door is a package, split by what it holds: this module, the call (:func:`explain`, and neuralforecast's own
explain kept for a Captum ``explainer=``); what the door reads of a model (:mod:`~.models`); the function explained
(:mod:`~.forecast`); each batch of windows inside neuralforecast's predict loop (:mod:`~.batches`); and the predict
run with its explanations collected (:mod:`~.predict`).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.abc
import inspect
import sys
import warnings
from typing import Any, Mapping

from ...errors import InputError
from .. import check_method, check_version
from .batches import Refused
from .models import IQ_GRID as IQ_GRID
from .models import WINDOW_KEYS as WINDOW_KEYS
from .models import asked_quantiles, is_iq, model_name, n_outputs, supported
from .predict import explain_models

__all__ = ["explain", "supported"]


def _import_neuralforecast() -> Any:
    try:
        import neuralforecast
    except ImportError as error:  # pragma: no cover - exercised where neuralforecast is missing
        raise ImportError("rnnshap.neuralforecast needs neuralforecast: pip install 'rnnshap[neuralforecast]'") from error
    return neuralforecast


def _active_models(nf: Any) -> tuple[list[Any], dict[str, str]]:
    """The models of ``nf`` rnnshap explains, and why each other is skipped, by name: a model rnnshap does not take is
    skipped with a warning naming it, as neuralforecast skips the models its explainers do not take; an InputError
    where none is left or ``nf`` is not fitted."""
    active: list[Any] = []
    skipped: dict[str, str] = {}
    for model in nf.models:
        why = supported(model)
        if why is None:
            active.append(model)
        else:
            skipped[model_name(model)] = why
    if not active:
        raise InputError("; ".join(skipped.values()))
    if not getattr(nf, "_fitted", False):
        raise InputError(
            "You must fit the model before explaining: call nf.fit(df) first (the NeuralForecast object is not fitted)."
        )
    return active, skipped


def _explained_indices(
    horizons: list[int] | None, outputs: list[int] | None, series: list[int] | None, h_explain: int, active: list[Any],
    iq: Mapping[int, list[float]],
) -> tuple[list[int], list[int], list[int]]:
    """``horizons``, ``outputs`` and ``series`` checked against the forecast's horizon and the explained models (``iq``:
    the quantiles asked of IQLoss models, by id), with neuralforecast's defaults and words."""
    if horizons is None:
        horizons = list(range(h_explain))
    elif not horizons or len(horizons) > h_explain or any(not 0 <= int(k) < h_explain for k in horizons):
        raise InputError(
            f"Invalid indices. Make sure to select horizon steps within {list(range(h_explain))} or set it to None to explain "
            "all horizon steps"
        )
    horizons = [int(k) for k in horizons]
    n_out = min(len(iq[id(model)]) if id(model) in iq else n_outputs(model) for model in active)
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
    return horizons, outputs, series


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
    # neuralforecast forecasts an IQLoss model asked quantiles= / level= at 11 fixed quantiles and reports np.quantile
    # over them (its monotonization): a sort and a linear interpolation, explained exactly as such (the outputs index
    # the quantiles asked, in the order of predict's columns)
    asked = asked_quantiles(quantiles, level)
    iq = {id(model): asked for model in nf.models if asked is not None and is_iq(model)}
    active, skipped = _active_models(nf)
    for why in skipped.values():
        warnings.warn(f"Skipping {why}", UserWarning, stacklevel=2)
    h_explain = nf.h if h is None else int(h)
    horizons, outputs, series = _explained_indices(horizons, outputs, series, h_explain, active, iq)
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
            fcsts_df, explanations = explain_models(nf, active, method, budget, random_state, batch_size,
                                                     check_additivity, background, config, predict, iq)  # fmt: skip
            break
        except Refused as refused:  # DeepSHAP has no exact rule for an operation of one model: the others go on
            if len(active) == 1:
                raise refused.error from None
            active = [m for m in active if m is not refused.model]
            warnings.warn(f"Skipping {model_name(refused.model)}: {refused.error}", UserWarning, stacklevel=2)
    for entry in explanations.values():
        entry["explained_by"] = f"rnnshap ({method})"
    return fcsts_df, explanations


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
