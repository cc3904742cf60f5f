"""The result of :func:`rnnshap.pytorch_forecasting.explain`: :class:`VariableExplanation` (also named
``ForecastExplanation``, its name before rnnshap's result contract), the values per named variable, time step,
horizon step and output, with their accessors (importance, values over time, a long data frame) and TFT-like
figures. Plain numpy: it imports neither torch nor pytorch-forecasting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..result import AttributionResult


@dataclass
class VariableExplanation(AttributionResult):
    """The attributions of pytorch-forecasting forecasts to their named inputs: the result contract
    (:class:`rnnshap.result.AttributionResult`) with the variables' names.

    Shapes: ``n`` explained windows, ``L`` encoder steps, ``H`` decoder steps (the prediction length),
    ``J`` explained horizon steps (:attr:`horizons`: all ``H`` by default), ``K`` outputs per horizon
    step (quantiles, distribution parameters, or one point forecast). The last two axes of every value
    array are ``(J, K)``: the forecast being explained. The encoder axis is right-aligned: position
    ``p`` is relative step ``p - L`` for every window (``-1`` the last observed step); a window with a
    shorter encoder of ``l`` steps has them at ``L - l .. L - 1`` and exact zeros in front. For every
    window, explained horizon step and output::

        encoder.sum((1, 2)) + decoder.sum((1, 2)) + static.sum(1) + target_scale == outputs - base_values

    ``values``: a dict by part, ``"encoder"`` ``(n, L, V, J, K)`` (per encoder step and time-varying variable,
    ``time_varying_variables``), ``"decoder"`` ``(n, H, V, J, K)`` (per decoder step, the known future),
    ``"static"`` ``(n, S, J, K)`` (per static variable, ``static_variables``, summed over the steps it is repeated
    at) and ``"target_scale"`` ``(n, J, K)`` (the share of the target normalizer's center and scale of each
    window); each is also an attribute of its name (:attr:`encoder`, ...). ``base_values`` ``(n, J, K)``: the mean
    forecast over the background windows. ``outputs`` ``(n, J, K)``: the explained forecasts (what
    ``model.predict`` returns in this ``mode``), also named :attr:`prediction`.

    ``stderr`` (Shapley mode): a dict by part shaped like ``values`` (0 where exact), else None. It is NOT the
    standard error of a variable's value: each entry is the root of the sum of the squared standard errors of the
    input cells summed into it (a static variable's repeated steps, target_scale's entries, a variable read
    through two batch tensors such as the target in encoder_cont and encoder_target, a group of categoricals),
    and those cells' estimates come from the same sampled walks and are correlated, so the standard error of
    their sum can be smaller or larger. Where one cell maps to one entry it is that cell's standard error.
    """

    time_varying_variables: list[str]
    static_variables: list[str]
    #: the names of the K outputs: quantiles (``q0.5``), distribution parameters (``loc``), or the target
    output_names: list[str]
    #: the variables the model reads in its encoder and decoder (pytorch-forecasting's lists)
    encoder_variables: list[str]
    decoder_variables: list[str]
    #: ``(n,)``: each window's encoder and decoder length (a shorter encoder is right-aligned in
    #: ``encoder``, zeros in front; all explained windows have ``H`` decoder steps)
    encoder_lengths: np.ndarray
    decoder_lengths: np.ndarray
    #: the data set's index of the explained windows: time index of the first forecast and group ids
    index: Any
    mode: str
    #: the input tensors' own attributions, before they were mapped to variables (encoder tensors
    #: right-aligned like ``encoder``)
    raw: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: ``(J,)``: the explained horizon steps (0 the first forecast step), in the order of the ``J`` axis;
    #: None: all ``H``. The accessors' ``horizon=`` takes these step numbers.
    horizons: np.ndarray | None = None

    # -- the parts of ``values`` and the forecast, by the names they had before the result contract ----------
    @property
    def encoder(self) -> np.ndarray:
        """``values["encoder"]``: ``(n, L, V, J, K)``, per encoder step (right-aligned) and time-varying variable."""
        return self.values["encoder"]

    @property
    def decoder(self) -> np.ndarray:
        """``values["decoder"]``: ``(n, H, V, J, K)``, per decoder step and time-varying variable."""
        return self.values["decoder"]

    @property
    def static(self) -> np.ndarray:
        """``values["static"]``: ``(n, S, J, K)``, per static variable."""
        return self.values["static"]

    @property
    def target_scale(self) -> np.ndarray:
        """``values["target_scale"]``: ``(n, J, K)``, the share of the target normalizer's center and scale."""
        return self.values["target_scale"]

    @property
    def prediction(self) -> np.ndarray:
        """``outputs``: ``(n, J, K)``, the explained forecasts."""
        return self.outputs

    def _horizon_steps(self) -> np.ndarray:
        return np.arange(self.prediction.shape[1]) if self.horizons is None else np.asarray(self.horizons)

    def _horizon_position(self, horizon: int) -> int:
        """The position on the ``J`` axis of horizon step ``horizon`` (negative: from the last of the ``H`` steps)."""
        steps = self._horizon_steps()
        H = self.decoder.shape[1]
        if not -H <= int(horizon) < H:
            raise InputError(f"horizon {horizon} out of range: the model forecasts {H} steps (0 to {H - 1})")
        step = int(horizon) % H
        if step not in steps:
            raise InputError(
                f"horizon {horizon} was not explained: explained horizon steps {steps.tolist()} (explain's horizons=)"
            )
        return int(np.flatnonzero(steps == step)[0])

    # -- accessors ------------------------------------------------------------------------------
    def total(self) -> np.ndarray:
        """``(n, H, K)``: the sum of every value of each forecast (``prediction - base_values``)."""
        return self.encoder.sum((1, 2)) + self.decoder.sum((1, 2)) + self.static.sum(1) + self.target_scale

    def output_index(self, output: int | str | None) -> int:
        """The position of ``output`` (an index or a name of :attr:`output_names`; None: the median
        quantile, or the only or first output)."""
        if output is None:
            return self.output_names.index("q0.5") if "q0.5" in self.output_names else 0
        if isinstance(output, str):
            if output not in self.output_names:
                raise InputError(f"output {output!r} is not one of the explained outputs {self.output_names}")
            return self.output_names.index(output)
        if not -len(self.output_names) <= int(output) < len(self.output_names):
            raise InputError(f"output {output} out of range: {len(self.output_names)} outputs {self.output_names}")
        return int(output) % len(self.output_names)

    def _select(self, values: np.ndarray, horizon: int | None, output: int | str | None) -> np.ndarray:
        """``values[..., horizon, output]``; all explained horizon steps (a new last axis) when ``horizon`` is None."""
        k = self.output_index(output)
        if horizon is None:
            return values[..., k]
        return values[..., self._horizon_position(horizon), k][..., None]

    def importance(
        self, part: str = "encoder", *, horizon: int | None = None, output: int | str | None = None
    ) -> dict[str, float]:
        """Mean absolute value per variable of ``part`` ("encoder", "decoder" or "static"), summed over its
        time steps, averaged over windows and the chosen horizon steps (all by default).

        Units: the forecast's (the target's) units. Returns ``{variable: importance}``."""
        if part == "static":
            per = np.abs(self._select(self.static, horizon, output))  # (n, S, h)
            return {name: float(per[:, i].mean()) for i, name in enumerate(self.static_variables)}
        if part not in ("encoder", "decoder"):
            raise InputError(f"part={part!r}: choose 'encoder', 'decoder' or 'static'")
        values = self.encoder if part == "encoder" else self.decoder
        per = np.abs(self._select(values, horizon, output).sum(1))  # (n, V, h)
        names = self.encoder_variables if part == "encoder" else self.decoder_variables
        return {name: float(per[:, self.time_varying_variables.index(name)].mean()) for name in names}

    def over_time(self, *, sample: int | None = None, horizon: int | None = None, output: int | str | None = None) -> np.ndarray:
        """``(L + H,)``: the values summed over variables at each step, relative time ``-L .. H-1``
        (position p is step p - L for every window, whatever its encoder length): signed for one
        ``sample``, else the mean absolute value over windows (and horizon steps)."""
        steps = np.concatenate(
            [self._select(self.encoder, horizon, output), self._select(self.decoder, horizon, output)], axis=1
        ).sum(2)
        if sample is not None:
            return steps[int(sample)].mean(-1)
        return np.abs(steps).mean((0, 2))

    def to_dataframe(self, *, horizon: int | None = None, output: int | str | None = None) -> Any:
        """A long pandas DataFrame: one row per window, part, variable, step, horizon step and output.

        ``step``: relative time, ``-L .. -1`` in the encoder (-1 the last observed step, for every
        window: a shorter encoder's missing steps are rows of exact zeros), ``0 .. H-1`` in the decoder,
        0 for the static and ``target_scale`` rows. ``horizon``: the explained horizon step."""
        import pandas as pd

        rows: list[Any] = []
        K = self.prediction.shape[2]
        steps_explained = self._horizon_steps()
        positions = range(len(steps_explained)) if horizon is None else [self._horizon_position(horizon)]
        outputs = range(K) if output is None else [self.output_index(output)]
        for part, values, steps in (
            ("encoder", self.encoder, range(-self.encoder.shape[1], 0)),
            ("decoder", self.decoder, range(self.decoder.shape[1])),
        ):
            for h in positions:
                for k in outputs:
                    block = values[..., h, k]  # (n, T, V)
                    n, T, V = block.shape
                    rows.append(pd.DataFrame({
                        "window": np.repeat(np.arange(n), T * V), "part": part,
                        "variable": np.tile(np.asarray(self.time_varying_variables, dtype=object), n * T),
                        "step": np.tile(np.repeat(np.asarray(list(steps)), V), n), "horizon": int(steps_explained[h]),
                        "output": self.output_names[k],
                        "value": block.reshape(-1),
                    }))  # fmt: skip
        for h in positions:
            for k in outputs:
                block = np.concatenate([self.static[..., h, k], self.target_scale[:, None, h, k]], axis=1)
                n, S = block.shape
                names = [*self.static_variables, "target_scale"]
                rows.append(pd.DataFrame({
                    "window": np.repeat(np.arange(n), S),
                    "part": np.tile(np.asarray(["static"] * (S - 1) + ["target_scale"], dtype=object), n),
                    "variable": np.tile(np.asarray(names, dtype=object), n), "step": 0, "horizon": int(steps_explained[h]),
                    "output": self.output_names[k],
                    "value": block.reshape(-1),
                }))  # fmt: skip
        return pd.concat(rows, ignore_index=True)

    def plot_interpretation(
        self, *, sample: int | None = None, horizon: int | None = None, output: int | str | None = None
    ) -> dict[str, Any]:
        """Figures like TFT's ``plot_interpretation``: ``"static_variables"``, ``"encoder_variables"``
        and ``"decoder_variables"`` (bars of mean absolute value per variable, in the target's units, largest
        on top) and ``"time"`` (the values summed over variables per relative time step; signed for
        one ``sample``, mean absolute value otherwise). Needs matplotlib. Returns ``{name: Figure}``."""
        from matplotlib.figure import Figure

        figs: dict[str, Any] = {}
        name = self.output_names[self.output_index(output)]
        where = "all horizon steps" if horizon is None else f"horizon step {horizon}"
        if sample is not None:
            where += f", window {sample}"
        for part in ("static", "encoder", "decoder"):
            if sample is None:
                scores = self.importance(part, horizon=horizon, output=output)
            else:
                one = self._sample(int(sample))
                scores = one.importance(part, horizon=horizon, output=output)
            labels = list(scores)
            values = np.asarray([scores[v] for v in labels])
            fig = Figure(figsize=(7, len(labels) * 0.3 + 1.8))
            ax = fig.add_subplot()
            order = np.argsort(values)
            ax.barh(np.arange(len(labels)), values[order], tick_label=np.asarray(labels, dtype=object)[order] if labels else None)
            ax.set_title(f"{part.capitalize()} variables: mean |SHAP| ({self.method}, {name}, {where})")
            ax.set_xlabel("mean |SHAP value| (units of the forecast)")
            fig.tight_layout()
            figs[f"{part}_variables"] = fig
        fig = Figure(figsize=(7, 3.2))
        ax = fig.add_subplot()
        L, H = self.encoder.shape[1], self.decoder.shape[1]
        steps = np.arange(-L, H)
        values = self.over_time(sample=sample, horizon=horizon, output=output)
        colors = ["#1f77b4" if s < 0 else "#ff7f0e" for s in steps]
        ax.bar(steps, values, color=colors)
        ax.axvline(-0.5, color="grey", linewidth=0.8)
        ax.set_xlabel("Time index (encoder < 0 ≤ decoder)")
        ax.set_ylabel("SHAP value" if sample is not None else "mean |SHAP value|")
        ax.set_title(f"Attribution over time ({name}, {where})")
        fig.tight_layout()
        figs["time"] = fig
        return figs

    def _sample(self, i: int) -> VariableExplanation:
        n = self.prediction.shape[0]
        if not -n <= i < n:
            raise InputError(f"sample {i} out of range: {n} explained windows")
        pick = slice(i % n, i % n + 1)
        return VariableExplanation(
            values={part: v[pick] for part, v in self.values.items()}, base_values=self.base_values[pick],
            outputs=self.outputs[pick], method=self.method, time_varying_variables=self.time_varying_variables,
            static_variables=self.static_variables, output_names=self.output_names, encoder_variables=self.encoder_variables,
            decoder_variables=self.decoder_variables, encoder_lengths=self.encoder_lengths[pick],
            decoder_lengths=self.decoder_lengths[pick], index=None, mode=self.mode, horizons=self.horizons,
        )  # fmt: skip


#: the name :class:`VariableExplanation` had before rnnshap's result contract (kept: ``rnnshap.pytorch_forecasting``
#: exports it under both names)
ForecastExplanation = VariableExplanation
