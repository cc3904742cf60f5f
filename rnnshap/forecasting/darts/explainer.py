"""The darts door: :class:`ShapExplainer`, darts' ``ShapExplainer`` answered by rnnshap (see
:mod:`rnnshap.forecasting.darts`): darts' own explainer where the user names a shap method or the model is not a
network, else rnnshap's adapter (:mod:`rnnshap.forecasting.darts.adapter`) over darts' own prediction code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...backgrounds import stated
from ...errors import InputError
from .. import WindowAttribution, check_method, check_version
from .adapter import RnnshapTorchAdapter, check_lengths
from .forecast import affine_of, scaler_transformer
from .library import (
    DartsShapExplainer,
    ForecastingModelExplainer,
    ShapExplainabilityResult,
    ShapSingleExplainabilityResult,
    TimeSeries,
    TorchForecastingModel,
    process_horizons_and_targets,
    series2seq,
    shap,
)

#: the forecasts ``summary_plot`` explains and draws (a seeded sample, said in the plot's title) when ``num_samples``
#: is not given and the foreground holds more: a beeswarm of more points shows no more, and costs more to explain
SUMMARY_PLOT_POINTS = 500


def count(value: Any, name: str) -> int:
    """``value`` as an int if it is an integer of at least 1 (a Python or numpy integer, not a bool); else an
    InputError naming it: a count given as a float is refused, never truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}={value}: must be an integer, not {type(value).__name__}")
    if value < 1:
        raise InputError(f"{name}={value}: must be at least 1")
    return int(value)


def _checked_horizon(model: Any, n: Any) -> int:
    """``n``, the forecast horizon explained, refused beyond ``output_chunk_length`` where darts cannot auto-regress
    the model or auto-regresses it through random draws."""
    n = count(n, "n")
    ocl = model.output_chunk_length or 1
    if n > ocl and model.output_chunk_shift:
        raise InputError(
            f"n={n} > output_chunk_length={ocl}: darts cannot auto-regress a model with output_chunk_shift="
            f"{model.output_chunk_shift}, so neither can the explanation"
        )
    if n > ocl and model.likelihood is not None:
        raise InputError(
            f"n={n} > output_chunk_length={ocl}: darts forecasts a likelihood model beyond output_chunk_length by "
            "feeding back sampled values (and refuses predict_likelihood_parameters=True there), a random function "
            "with nothing exact to explain; explain its likelihood parameters up to n=output_chunk_length"
        )
    return n


class ShapExplainer(DartsShapExplainer):
    """darts' ``ShapExplainer``, answered by rnnshap: DeepSHAP (exact in sum) or the Shapley mode.

    Parameters
    ----------
    model
        A fitted darts ``TorchForecastingModel`` (``RNNModel``, ``BlockRNNModel``, ``TCNModel``, ``NBEATSModel``,
        ``NHiTSModel``, ``TiDEModel``, ``DLinearModel``, ``NLinearModel``, ``TSMixerModel``, ``TFTModel``, ...). Any
        other model (darts' regression models: shap's Linear and Tree explainers are exact for those) is explained by
        darts' own explainer, as ``darts.explainability.ShapExplainer`` would.
    background_series, background_past_covariates, background_future_covariates
        As for darts' ``ShapExplainer``: the reference windows (default: the series the model was fit on;
        with ``target_scaler``, its unscaled copy ``target_scaler.inverse_transform(model.training_series)``).
        The background series is also the default foreground of ``explain()`` / ``explain_single()``.
    shap_method
        darts' argument: where given, darts' own explainer answers with that shap method, as before (rnnshap's own
        arguments are then refused). Every result says which explainer answered: ``result.explained_by``.
    background_num_samples
        Optionally, the number of background windows drawn at random (darts' argument, at most 1000), without
        replacement, by a numpy Generator seeded with ``random_state`` (default: the fixed seed :data:`BACKGROUND_SEED`),
        so that the same call draws the same background; numpy's global random state is neither used nor moved.
        Default: every window up to :data:`DEFAULT_BACKGROUND_SAMPLES` (100), a draw of that many beyond, said in a
        log warning; every result says the count (``result.background_num_samples`` of ``result.background_windows``).
    batch_size
        The most (sample, reference) pairs rnnshap runs through the model at once (default 2048).
    n
        The forecast horizon explained (default ``output_chunk_length``). Beyond ``output_chunk_length`` the
        forecast is darts' auto-regressive ``predict(n)``: explained exactly, every horizon up to ``n``.
    method
        ``"deepshap"`` (default: one pass; the values of each forecast add up to darts' forecast minus the
        base value) or ``"shapley"`` (the Shapley values of the lag players, with standard errors).
    budget, random_state
        Shapley mode: the most rows per forecast run through the model (default: 16x DeepSHAP's cost; exact
        where it covers every coalition against every background window), and the seed (a non-negative
        integer or a numpy Generator, which is then advanced), also the seed of the background draw.
    target_scaler
        Optionally, a darts ``Scaler`` fitted on the (single) target series the model was trained on after
        scaling. The series passed are then unscaled, and the values are in their units (the default
        background and foreground too: the training series, unscaled by ``target_scaler.inverse_transform``).
    progress
        A tqdm progress bar over the work (default None: only when stderr is a terminal).
    test_stationarity
        darts' argument. Default: darts' own (True) where darts' own explainer answers; False where rnnshap
        answers (the check only logs a warning about the background).

    Raises
    ------
    ValueError
        darts' own checks, in darts' words (an unfitted model, missing covariates, a horizon below 1 or beyond the
        explained one, an invalid ``shap_method``, a model type darts does not explain); an
        :class:`rnnshap.InputError` (a ValueError) for what rnnshap adds: a series shorter than the input
        window, covariates the model was fit without, rnnshap's arguments with darts' own explainer, a count
        (``n``, ``horizons``, ``background_num_samples``, ``batch_size``) that is not an integer of at least 1
        (never truncated), a ``random_state`` that is not a seed.
    rnnshap.forecasting.UnverifiedVersionError
        darts is installed at a version outside the series this adapter was verified on
        (:data:`rnnshap.forecasting.VERIFIED`).
    rnnshap.UnsupportedOperationError
        from ``explain`` with ``method="deepshap"``, for a model with an operation DeepSHAP has no exact
        rule for, naming the operation and ``method="shapley"`` as the fallback.

    Examples
    --------
    >>> from rnnshap.darts import ShapExplainer                       # doctest: +SKIP
    >>> explainer = ShapExplainer(model, background_num_samples=50)  # doctest: +SKIP
    >>> result = explainer.explain(series)                           # doctest: +SKIP
    >>> result.get_explanation(horizon=1)                            # doctest: +SKIP
    """

    background_series: Sequence[TimeSeries]  # set by darts' _ForecastingModelExplainer.__init__

    @property
    def background_num_samples(self) -> int:
        """The number of background windows the values are explained against (drawn from
        :attr:`background_windows_total` where that is more; see ``background_num_samples=``)."""
        return int(np.asarray(self.explainer.background_arr).shape[0])

    @property
    def background_windows_total(self) -> int | None:
        """The number of windows the background series hold (None where darts' own explainer answered)."""
        return None if self.delegated else int(self.explainer.background_windows_total)

    def _said(self, result: Any) -> Any:
        """``result`` with which explainer answered and the background it was explained against, and rnnshap's
        result contract (:class:`rnnshap.result.AttributionResult`) as ``result.attribution``: the
        :attr:`last_attribution`, its background stated (None where darts' own explainer answered)."""
        result.explained_by = self.explained_by
        result.background_num_samples = self.background_num_samples
        result.background_windows = self.background_windows_total
        result.attribution = self.last_attribution
        if result.attribution is not None:
            rows = int(self.explainer.background_windows[0].shape[0])
            result.attribution.background = stated("darts", rows, self.background_given)
        return result

    explainer: Any  # the shap adapter: rnnshap's, or darts' own where darts' own explainer answers

    def __init__(
        self,
        model: Any,
        background_series: Any = None,
        background_past_covariates: Any = None,
        background_future_covariates: Any = None,
        background_num_samples: int | None = None,
        shap_method: str | None = None,
        batch_size: int | None = None,
        test_stationarity: bool | None = None,
        *,
        n: int | None = None,
        method: str = "deepshap",
        budget: int | None = None,
        random_state: Any = None,
        target_scaler: Any = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> None:
        check_version("darts")
        self.delegated = not isinstance(model, TorchForecastingModel) or shap_method is not None
        if self.delegated:
            # darts' own explainer answers, as before: the user named one of shap's methods, or the model is not a
            # network rnnshap explains (darts' SKLearnModels, for which shap's Tree and Linear explainers are exact;
            # anything else darts refuses in its own words)
            ours = {"n": n, "budget": budget, "random_state": random_state, "target_scaler": target_scaler, "progress": progress}
            given = sorted([name for name, value in ours.items() if value is not None] + [
                "method"] * (str(method).lower() != "deepshap"))  # fmt: skip
            if given:
                why = f"shap_method={shap_method!r}" if shap_method is not None else f"a {type(model).__name__}"
                raise InputError(
                    f"{why} is explained by darts' own ShapExplainer, which takes none of rnnshap's arguments {given}; "
                    "leave out shap_method= for rnnshap's values"
                )
            self.method = "darts"
            DartsShapExplainer.__init__(
                self, model, background_series, background_past_covariates, background_future_covariates,
                background_num_samples, shap_method, batch_size, True if test_stationarity is None else test_stationarity,
                **kwargs,
            )  # fmt: skip
            adapter: Any = self.explainer
            self.explained_by = f"darts ({type(adapter).__name__}, shap_method='{adapter.shap_method.name.lower()}')"
            return
        self.method = check_method(method)
        self.explained_by = f"rnnshap ({self.method})"
        if target_scaler is not None:
            scaler_transformer(target_scaler)
        ForecastingModelExplainer.__init__(
            self,
            model=model,
            background_series=background_series,
            background_past_covariates=background_past_covariates,
            background_future_covariates=background_future_covariates,
            requires_background=True,
            requires_covariates_encoding=True,
            check_component_names=True,
            test_stationarity=bool(test_stationarity),
        )
        if background_num_samples is not None:
            background_num_samples = count(background_num_samples, "background_num_samples")
        if batch_size is not None:
            batch_size = count(batch_size, "batch_size")
        if n is not None:
            self.n = _checked_horizon(model, n)
        affine = None if target_scaler is None else self._unscaled(model, target_scaler, background_series is None)
        check_lengths(model, self.n, self.background_series, None, None, "background")
        #: whether background series were given (else darts' default, the series the model was fit on)
        self.background_given = background_series is not None
        self.explainer = RnnshapTorchAdapter(
            model=self.model,
            n=self.n,
            target_components=self.target_components,
            past_covariates_components=self.past_covariates_components,
            future_covariates_components=self.future_covariates_components,
            static_covariates_components=self.static_covariates_components,
            background_series=self.background_series,
            background_past_covariates=self.background_past_covariates,
            background_future_covariates=self.background_future_covariates,
            background_num_samples=background_num_samples,
            shap_method="permutation",  # darts' adapter wants one of its names; the values are rnnshap's
            batch_size=batch_size,
            method=self.method,
            budget=budget,
            random_state=random_state,
            rnnshap_batch_size=batch_size or 2048,
            affine=affine,
            progress=progress,
            **kwargs,
        )

    def _unscaled(self, model: Any, target_scaler: Any, defaulted: bool) -> Any:
        """The affine map of ``target_scaler`` (refused where the likelihood's parameters are not all in the target's
        units); ``defaulted``: the background is darts' default, whose unscaled copy it becomes."""
        if model.likelihood is not None and type(model.likelihood).__name__ != "QuantileRegression":
            raise InputError(
                f"target_scaler with a {type(model.likelihood).__name__}: its parameters are not all in the target's units "
                "(a scale parameter takes the scaler's factor without its offset); explain the scaled model instead"
            )
        affine = affine_of(target_scaler, self.target_components)
        if defaulted:
            # darts fell back to the series the model was fit on (and its covariates): the *scaled* series.
            # The scaler's map is part of the explained function, so the background (and the default
            # foreground, which is the background) is its unscaled copy, in the units explain() takes
            self.background_series = [target_scaler.inverse_transform(s) for s in self.background_series]
        return affine

    def _process_foreground(
        self, foreground_series: Any = None, foreground_past_covariates: Any = None, foreground_future_covariates: Any = None
    ) -> Any:
        if foreground_series is not None and not self.delegated:
            check_lengths(
                self.model, self.n, series2seq(foreground_series), series2seq(foreground_past_covariates),
                series2seq(foreground_future_covariates), "foreground",
            )  # fmt: skip
        return super()._process_foreground(foreground_series, foreground_past_covariates, foreground_future_covariates)

    def _process_horizons_and_targets(
        self, horizons: int | Sequence[int] | None, target_components: str | Sequence[str] | None
    ) -> tuple[Sequence[int], Sequence[str]]:
        """darts' check and words, with the horizon ``n`` this explainer was built for (not ``output_chunk_length``)."""
        if self.delegated:
            return super()._process_horizons_and_targets(horizons, target_components)
        if horizons is not None:
            hs: list[Any]
            try:
                hs = [horizons] if isinstance(horizons, str) else list(horizons)  # type: ignore[arg-type]
            except TypeError:  # one horizon
                hs = [horizons]
            if not hs or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) for h in hs):
                raise InputError(f"horizons={horizons}: give integers between 1 and n={self.n}")
            if max(hs) > self.n:
                ocl = self.model.output_chunk_length
                raise InputError(
                    "At least one of the `horizons` is larger than `output_chunk_length`." if self.n == ocl else
                    f"At least one of the `horizons` is larger than n={self.n}, the horizon this explainer was built for."
                )  # fmt: skip
            if min(hs) < 1:
                raise InputError("All `horizons` must be `>=1`.")
            horizons = [int(h) for h in hs]
        return process_horizons_and_targets(
            horizons=horizons,
            fallback_horizon=self.n,
            target_components=target_components,
            fallback_target_components=self.target_components_likelihood,
            check_component_names=self.check_component_names,
        )

    def explain_single(  # type: ignore[override]
        self,
        foreground_series: Any = None,
        foreground_past_covariates: Any = None,
        foreground_future_covariates: Any = None,
        target_components: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ShapSingleExplainabilityResult:
        """darts' ``explain_single``: the forecast ``model.predict(n, series=...)`` makes from the end of the
        (last) series. darts' own explainer explains the last forecast the covariates allow, which is an
        earlier one where they end too soon; this one raises then, as ``predict`` does."""
        result = self._said(super().explain_single(
            foreground_series, foreground_past_covariates, foreground_future_covariates, target_components, **kwargs
        ))  # fmt: skip
        if self.delegated:
            return result
        last = series2seq(foreground_series if foreground_series is not None else self.background_series)[-1]
        start = result.get_explanation(result.available_components[0]).start_time()
        expected = last.end_time() + (1 + self.model.output_chunk_shift) * last.freq  # where predict's forecast starts
        if start != expected:
            raise InputError(
                f"predict(n={self.n}) from the end of the series forecasts from {expected}, but the covariates end too "
                f"soon for it: the last forecast they allow starts at {start}. Extend the covariates as predict(n={self.n}) "
                "needs them, or explain() every forecast they allow."
            )
        return result

    def explain(  # type: ignore[override]
        self,
        foreground_series: Any = None,
        foreground_past_covariates: Any = None,
        foreground_future_covariates: Any = None,
        horizons: int | Sequence[int] | None = None,
        target_components: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ShapExplainabilityResult:
        """darts' ``explain``: every forecast the foreground allows; the result's ``explained_by`` says which
        explainer answered (``"rnnshap (deepshap)"``, ``"rnnshap (shapley)"``, or darts' own)."""
        return self._said(super().explain(
            foreground_series, foreground_past_covariates, foreground_future_covariates, horizons, target_components, **kwargs
        ))  # fmt: skip

    def summary_plot(  # type: ignore[override]
        self,
        foreground_series: Any = None,
        foreground_past_covariates: Any = None,
        foreground_future_covariates: Any = None,
        horizons: int | Sequence[int] | None = None,
        target_components: str | Sequence[str] | None = None,
        num_samples: int | None = None,
        plot_type: str | None = "dot",
        plot_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[int, dict[str, shap.Explanation]]:
        """darts' ``summary_plot``: one shap summary plot per horizon and target component. Without
        ``num_samples``, a foreground of more than :data:`SUMMARY_PLOT_POINTS` forecasts is sampled to that many
        (seeded, in time order) before it is explained and drawn; each plot's title says how many of how many.
        Returns darts' ``{horizon: {component: explanation}}`` of the forecasts drawn."""
        if self.delegated:
            return super().summary_plot(
                foreground_series, foreground_past_covariates, foreground_future_covariates, horizons, target_components,
                num_samples, plot_type, plot_kwargs, **kwargs,
            )  # fmt: skip
        import matplotlib.pyplot as plt

        if num_samples is not None:
            num_samples = count(num_samples, "num_samples")
        series, past, future, *_ = self._process_foreground(
            foreground_series, foreground_past_covariates, foreground_future_covariates
        )
        horizons, target_components = self._process_horizons_and_targets(horizons, target_components)
        # the foreground's windows (the background series' too, where no foreground is given), a seeded sample in time order
        arr, times = self.explainer.create_shap_input(
            series, past, future, n_samples=num_samples or SUMMARY_PLOT_POINTS, input_type="foreground"
        )
        total = self.explainer.last_windows_total
        explanations = self.explainer.shap_explanations(arr, times, horizons, target_components, **kwargs)
        for t in target_components:
            for h in horizons:
                plt.title(f"Target: `{t}` - Horizon: t+{h + self.model.output_chunk_shift} ({len(arr)} of {total} forecasts)")
                shap.summary_plot(shap_values=explanations[h][t], features=arr, plot_type=plot_type, **(plot_kwargs or {}))
        return explanations

    @property
    def last_attribution(self) -> WindowAttribution | None:
        """The raw :class:`rnnshap.forecasting.WindowAttribution` of the last call (per window tensor; with
        ``n_evals`` and ``exact`` in the Shapley mode); None where darts' own explainer answered."""
        return None if self.delegated else self.explainer.last
