"""The foundation forecasters' result: :class:`ForecastExplanation`, its sum and its plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InputError
from ...result import AttributionResult, stderr_matches


@dataclass
class ForecastExplanation(AttributionResult):
    """The attributions of foundation-model forecasts to their context: the result contract
    (:class:`rnnshap.result.AttributionResult`) with the forecast's columns and the context.

    Arrays are float64. ``n`` windows, ``L`` context steps, ``H = prediction_length``, ``Q`` forecast columns
    (``quantile_levels``: the quantile levels, and ``"mean"`` / ``"point"`` where the library returns those).
    ``values``: ``(n, L, H, Q)`` per context step (``players="steps"`` or DeepSHAP); ``(n, P, H, Q)`` per player
    (patches, windows: ``player_steps`` maps each to its steps). Multivariate windows (``variates`` V, a context
    ``(n, V, L)``): a variate axis before the steps and before the forecast steps, ``values`` ``(n, V, L, V, H, Q)``
    (context variate, step, forecast variate, forecast step, column; ``(n, V, P, V, H, Q)`` per player, each variate's
    own), ``base_values`` and ``outputs`` ``(n, V, H, Q)``, covariates' values ``(n, L_c, V, H, Q)``.
    ``base_values``: ``(n, H, Q)``, what the values add up from (the mean forecast over the background; with
    ``background=None`` in the Shapley mode, the forecast with the whole context dropped). ``outputs``: ``(n, H, Q)``,
    the library's own public forecast on the context, also named :attr:`forecast`. ``stderr``: the Shapley mode's
    standard errors, shaped like ``values`` (0 where exact). ``players``: "steps", "patches", "windows of w"
    (DeepSHAP: "steps"). ``absent``: "background" (missing players take background values) or "dropped" (given to
    the model as missing), also named :attr:`game`.
    """

    quantile_levels: list[Any]
    prediction_length: int
    #: the model, in words
    model: str
    #: ``(n, L)``: the context windows as explained (NaN where missing or padded)
    context: np.ndarray
    #: per player, the ``(start, stop)`` context steps it holds
    player_steps: list[tuple[int, int]] = field(default_factory=list)
    #: per covariate name, values ``(n, L_c, H, Q)`` (models that read covariates; per player in the Shapley mode)
    covariates: dict[str, np.ndarray] | None = None
    #: their standard errors (Shapley mode), shaped like ``covariates`` (the same rule as ``stderr``)
    covariate_stderr: dict[str, np.ndarray] | None = None
    #: what the explained model computes in: its own precision, or the twin's asked for (``precision=``)
    precision: str = "float32"
    #: the variates V of multivariate windows (a context ``(n, V, L)``); None for univariate windows
    variates: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not stderr_matches(self.covariates, self.covariate_stderr):
            raise ValueError("ForecastExplanation: covariate_stderr is not shaped like covariates (rnnshap/result.py)")

    # -- the names the result had before the result contract ---------------------------------------------------
    @property
    def forecast(self) -> np.ndarray:
        """``outputs``: ``(n, H, Q)``, the library's own public forecast on the context."""
        return self.outputs

    @property
    def game(self) -> str:
        """``absent``: "background" (missing players take background values) or "dropped" (given as missing)."""
        return self.absent

    def total(self) -> np.ndarray:
        """``base_values`` plus every value (covariates included): ``(n, H, Q)``, equal to ``forecast``."""
        total = self.base_values + (self.values.sum(1) if self.variates is None else self.values.sum((1, 2)))
        for v in (self.covariates or {}).values():
            total = total + v.sum(1)
        return total

    def plot(
        self, sample: int = 0, horizon: int = 0, quantile: Any = None, *, variate: int = 0, ax: Any = None
    ) -> Any:
        """The context of one window with the forecast's quantiles, and below it the values of each context step
        (or player) for one forecast step and column (``quantile``: a label of ``quantile_levels``; default the
        median, else the first), with ±2 standard errors in the Shapley mode. Multivariate windows: the forecast of
        ``variate``, and the values of every variate's steps side by side. Returns the matplotlib Figure."""
        from ...plots.style import BAR, INK, NEGATIVE, POSITIVE, new_figure, rgb

        column = self._column(quantile)
        count = 1 if self.variates is None else self.variates
        if not 0 <= variate < count:
            raise InputError(f"variate={variate}: the forecast has {count} variate(s)")
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
        L = self.context.shape[-1]
        steps = np.arange(L)
        future = np.arange(L, L + self.prediction_length)
        context = self.context[sample] if self.variates is None else self.context[sample, variate]
        forecast = self.outputs[sample] if self.variates is None else self.outputs[sample, variate]
        top.plot(steps, context, color=INK, lw=1.2, label="context" if self.variates is None else f"variate {variate}")
        top.plot(future, forecast[:, column], color=BAR, lw=1.2, label=f"forecast ({self.quantile_levels[column]})")
        numeric = [i for i, q in enumerate(self.quantile_levels) if isinstance(q, float)]
        if len(numeric) >= 2:
            low, high = numeric[0], numeric[-1]
            top.fill_between(future, forecast[:, low], forecast[:, high], color=BAR, alpha=0.2, lw=0)
        top.axvline(L + horizon, color="#999999", lw=0.8, ls=":")
        top.legend(loc="upper left", fontsize=8, frameon=False)
        top.set_title(
            f"{self.model}: forecast step {horizon + 1}, column {self.quantile_levels[column]} ({self.method})", fontsize=10
        )
        if self.players == "steps":
            centers, widths = steps, np.ones(L)
        else:
            centers = np.array([(a + b - 1) / 2 for a, b in self.player_steps])
            widths = np.array([b - a for a, b in self.player_steps], dtype=float)
        for v in range(count):  # each context variate's bars, side by side within a step (or player)
            whole = slice(None)
            at = (sample, whole, horizon, column) if self.variates is None else (sample, v, whole, variate, horizon, column)
            values = self.values[at]
            colors = [rgb(POSITIVE) if x >= 0 else rgb(NEGATIVE) for x in values]
            errors = None if self.stderr is None else 2 * self.stderr[at]
            width = 0.9 * widths / count
            offset = centers - 0.45 * widths + (v + 0.5) * width
            bottom.bar(
                offset, values, width=width, color=colors, alpha=1.0 - 0.6 * v / count, yerr=errors, ecolor=INK,
                error_kw={"lw": 0.6},
            )  # fmt: skip
        bottom.axhline(0, color=INK, lw=0.6)
        sides = "" if self.variates is None else f" (bars: variates 0 to {count - 1}, left to right)"
        bottom.set_xlabel("context step" + sides)
        bottom.set_ylabel("contribution")
        if self.covariates:  # the bars are the target's: the covariates' share of the change is elsewhere
            share: tuple[Any, ...] = (sample, slice(None), horizon, column)
            if self.variates is not None:
                share = (sample, slice(None), variate, horizon, column)
            shares = ", ".join(f"{name} {float(v[share].sum()):.3g}" for name, v in self.covariates.items())
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
