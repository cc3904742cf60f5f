"""Exact explanations of pytorch-forecasting models, per named variable, time step, horizon and output.

``explain(model, data)`` takes a fitted model (``Model.from_dataset(...)``, trained or not) and the
windows of a ``TimeSeriesDataSet`` (or its dataloader, or a data frame as ``model.predict`` takes
it), builds the window tensors with the data set's own ``__getitem__`` and collate function, and
explains the model's own ``forward`` followed by its own output conversion:

- ``mode="raw"``: every column of ``forward(x)["prediction"]``, what ``model.predict(data,
  mode="raw")`` returns: the quantiles of a ``QuantileLoss`` (TFT), the point forecast of a point
  loss (RecurrentNetwork, NBeats, NHiTS), the distribution parameters of a ``DistributionLoss``
  (DeepAR, run with ``n_samples=None``; the copies of ``target_scale`` in front of them are left out);
- ``mode="prediction"``: ``model.to_prediction(out)``, the point forecast ``predict`` returns (the
  median quantile of a ``QuantileLoss``); for a ``DistributionLoss`` the distribution's mean where
  it is a closed form of the parameters (affine target scaling), refused where pytorch-forecasting
  samples it;
- ``mode="quantiles"``: ``model.to_quantiles(out)``, refused for a ``DistributionLoss`` (sampled).

The target normalizer's rescaling (``transform_output`` with ``target_scale``, including a log or
softplus transformation) runs inside ``forward``, so it is part of the explained function: the
values are in the units of the user's target and add up to ``model.predict``'s output.
``target_scale`` (the normalizer's center and scale of each window's series) is an input like the
others and gets its own share, reported apart (:attr:`ForecastExplanation.target_scale`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, UnsupportedOperationError
from . import WindowAttribution, attribute, check_method

MODES = ("raw", "prediction", "quantiles")
#: the batch entries whose values are attributed to variables; the lengths are context
_ATTRIBUTED = ("encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "encoder_target", "decoder_target", "target_scale")
_CONTEXT = ("encoder_lengths", "decoder_lengths")


def _library() -> Any:
    try:
        import pytorch_forecasting
    except ImportError as error:  # pragma: no cover - the extra is installed where this module is used
        raise ImportError(
            "rnnshap.pytorch_forecasting explains pytorch-forecasting models and needs it: pip install 'rnnshap[pytorch-forecasting]'"
        ) from error
    return pytorch_forecasting


@dataclass
class ForecastExplanation:
    """The attributions of pytorch-forecasting forecasts to their named inputs.

    Shapes: ``n`` explained windows, ``L`` encoder steps, ``H`` decoder steps (the prediction length),
    ``J`` explained horizon steps (:attr:`horizons`: all ``H`` by default), ``K`` outputs per horizon
    step (quantiles, distribution parameters, or one point forecast). The last two axes of every value
    array are ``(J, K)``: the forecast being explained. The encoder axis is right-aligned: position
    ``p`` is relative step ``p - L`` for every window (``-1`` the last observed step); a window with a
    shorter encoder of ``l`` steps has them at ``L - l .. L - 1`` and exact zeros in front. For every
    window, explained horizon step and output::

        encoder.sum((1, 2)) + decoder.sum((1, 2)) + static.sum(1) + target_scale == prediction - base_values
    """

    #: ``(n, L, V, J, K)``: per encoder step (right-aligned: position p is step p - L) and time-varying
    #: variable (``time_varying_variables``)
    encoder: np.ndarray
    #: ``(n, H, V, J, K)``: per decoder step (the known future) and time-varying variable
    decoder: np.ndarray
    #: ``(n, S, J, K)``: per static variable (``static_variables``), summed over the steps it is repeated at
    static: np.ndarray
    #: ``(n, J, K)``: the share of ``target_scale``, the target normalizer's center and scale of each window
    target_scale: np.ndarray
    #: ``(n, J, K)``: what each forecast's values add up from: the mean forecast over the background windows
    base_values: np.ndarray
    #: ``(n, J, K)``: the explained forecasts (what ``model.predict`` returns in this ``mode``)
    prediction: np.ndarray
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
    #: "deepshap" or "shapley"
    method: str
    mode: str
    #: Shapley mode: per part ("encoder", "decoder", "static", "target_scale"), an uncertainty scale
    #: shaped like the values (0 where exact), else None. It is NOT the standard error of a variable's
    #: value: each entry is the root of the sum of the squared standard errors of the input cells
    #: summed into it (a static variable's repeated steps, target_scale's entries, a variable read
    #: through two batch tensors such as the target in encoder_cont and encoder_target, a group of
    #: categoricals), and those cells' estimates come from the same sampled walks and are correlated,
    #: so the standard error of their sum can be smaller or larger. Where one cell maps to one entry
    #: it is that cell's standard error.
    stderr: dict[str, np.ndarray] | None = None
    #: per window: whether the values are exact Shapley values (Shapley mode)
    exact: np.ndarray | None = None
    #: per window: the rows run through the model (Shapley mode)
    n_evals: np.ndarray | None = None
    #: the input tensors' own attributions, before they were mapped to variables (encoder tensors
    #: right-aligned like ``encoder``)
    raw: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: ``(J,)``: the explained horizon steps (0 the first forecast step), in the order of the ``J`` axis;
    #: None: all ``H``. The accessors' ``horizon=`` takes these step numbers.
    horizons: np.ndarray | None = None

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
                        "step": np.tile(np.repeat(np.asarray(list(steps)), V), n), "horizon": int(steps_explained[h]), "output": self.output_names[k],
                        "value": block.reshape(-1),
                    }))  # fmt: skip
        for h in positions:
            for k in outputs:
                block = np.concatenate([self.static[..., h, k], self.target_scale[:, None, h, k]], axis=1)
                n, S = block.shape
                names = [*self.static_variables, "target_scale"]
                rows.append(pd.DataFrame({
                    "window": np.repeat(np.arange(n), S), "part": np.tile(np.asarray(["static"] * (S - 1) + ["target_scale"], dtype=object), n),
                    "variable": np.tile(np.asarray(names, dtype=object), n), "step": 0, "horizon": int(steps_explained[h]), "output": self.output_names[k],
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

    def _sample(self, i: int) -> ForecastExplanation:
        n = self.prediction.shape[0]
        if not -n <= i < n:
            raise InputError(f"sample {i} out of range: {n} explained windows")
        pick = slice(i % n, i % n + 1)
        return ForecastExplanation(
            self.encoder[pick], self.decoder[pick], self.static[pick], self.target_scale[pick], self.base_values[pick],
            self.prediction[pick], self.time_varying_variables, self.static_variables, self.output_names, self.encoder_variables,
            self.decoder_variables, self.encoder_lengths[pick], self.decoder_lengths[pick], None, self.method, self.mode,
            horizons=self.horizons,
        )  # fmt: skip


# -- the explained function ---------------------------------------------------------------------------
class _Recorder(dict):  # type: ignore[type-arg]
    """A batch dict that remembers which entries ``forward`` reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.read.add(key)
        return super().get(key, default)


def _leaves(x: dict[str, Any], keys: Sequence[str]) -> list[tuple[str, int | None]]:
    """(key, list position or None) for every tensor of the read entries (a multi-target entry is a list)."""
    out: list[tuple[str, int | None]] = []
    for key in keys:
        value = x[key]
        if isinstance(value, (list, tuple)):
            out.extend((key, i) for i in range(len(value)))
        else:
            out.append((key, None))
    return out


def _module(
    model: Any, leaves: list[tuple[str, int | None]], mode: str, distribution_columns: int, columns: list[int] | None = None
) -> Any:
    import torch
    from torch import nn

    class Forecast(nn.Module):
        """``f(*window tensors) -> (n, H·K)``: the model's forward and its output conversion (only the
        ``columns`` of the explained horizon steps where given)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            x: dict[str, Any] = {}
            for (key, position), tensor in zip(leaves, tensors, strict=True):
                if position is None:
                    x[key] = tensor
                else:
                    x.setdefault(key, []).append(tensor)
            out = _convert(self.model, self.model(x), mode, distribution_columns)
            return out if columns is None else out[:, columns]

    return Forecast()


def _convert(model: Any, out: Any, mode: str, distribution_columns: int) -> Any:
    """The (n, H·K) outputs of ``mode`` from the network's output dict."""
    import torch

    if mode == "raw":
        parts = out["prediction"] if isinstance(out["prediction"], (list, tuple)) else [out["prediction"]]
        if distribution_columns:
            parts = [p[..., -distribution_columns:] for p in parts]
    elif mode == "prediction":
        if distribution_columns:  # NormalDistributionLoss: Normal(x2, x3) under AffineTransform(x0, x1), mean x0 + x1 · x2
            p = out["prediction"]
            parts = [p[..., 0] + p[..., 1] * p[..., 2]]
        else:
            value = model.to_prediction(out)
            parts = value if isinstance(value, (list, tuple)) else [value]
    else:
        value = model.to_quantiles(out)
        parts = value if isinstance(value, (list, tuple)) else [value]
    parts = [p if p.ndim == 3 else p.unsqueeze(-1) for p in parts]
    joined = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    return joined.reshape(joined.shape[0], -1)


def _check_distribution_mean(loss: Any, parameters: Any) -> None:
    """Refuse mode="prediction" where the mean of a DistributionLoss's distribution is not the closed
    form :func:`_convert` computes (pytorch-forecasting's own ``to_prediction`` samples it)."""
    from torch import distributions

    distribution = loss.map_x_to_distribution(parameters)  # the library's own distribution, to read its structure
    transforms = list(distribution.transforms) if isinstance(distribution, distributions.TransformedDistribution) else []
    base = distribution.base_dist if transforms else distribution
    normal = type(loss).__name__ == "NormalDistributionLoss" and type(base) is distributions.Normal
    if not (normal and len(transforms) == 1 and isinstance(transforms[0], distributions.AffineTransform)):
        raise InputError(
            f"mode='prediction': pytorch-forecasting's point forecast of {type(loss).__name__}"
            f"{' with a target transformation' if len(transforms) > 1 else ''} is the mean of samples it draws (random); "
            "explain mode='raw' (the distribution's parameters) instead"
        )


# -- data ---------------------------------------------------------------------------------------------
def _dataset(data: Any, model: Any, what: str, predict: bool = True) -> Any:
    """The TimeSeriesDataSet behind ``data``: a data set, its dataloader, or a data frame (the last window of
    each series as ``predict`` takes it, or with ``predict=False`` every window, for a background)."""
    pf = _library()
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        parameters = getattr(model, "dataset_parameters", None)
        if parameters is None:
            raise InputError(
                f"{what}: a data frame needs the model's dataset_parameters (a model made with from_dataset); pass a TimeSeriesDataSet"
            )
        try:
            data = pf.TimeSeriesDataSet.from_parameters(parameters, data, predict=predict)
        except (AssertionError, ValueError, KeyError) as error:
            need = (
                parameters.get("min_encoder_length") or parameters.get("max_encoder_length"),
                parameters.get("min_prediction_length"),
            )
            raise InputError(
                f"{what}: pytorch-forecasting cannot make windows of this data frame for {type(model).__name__} ({error}). Every series needs "
                f"at least min_encoder_length + min_prediction_length = {need[0]} + {need[1]} rows, and the data frame the columns "
                "the model was built with."
            ) from error
    dataset = getattr(data, "dataset", data)
    if not isinstance(dataset, pf.TimeSeriesDataSet):
        raise InputError(
            f"{what} must be a TimeSeriesDataSet, a dataloader made by its to_dataloader(), or a data frame; got {type(data).__name__}"
        )
    if len(dataset) == 0:
        raise InputError(
            f"{what}: the TimeSeriesDataSet has no windows (every series is shorter than min_encoder_length + min_prediction_length, "
            "or the filter left none)"
        )
    if dataset.randomize_length is not None:  # its windows would be random: read them as predict would, unrandomized
        dataset = copy.copy(dataset)
        dataset.randomize_length = None
    return dataset


def _check_fits(model: Any, dataset: Any) -> None:
    """Refuse a data set whose variables or lengths differ from the ones the model was built from."""
    hparams = getattr(model, "hparams", {})
    parameters = getattr(model, "dataset_parameters", None) or {}
    checks = [
        ("continuous variables (x_reals)", hparams.get("x_reals"), list(dataset.reals)),
        ("categorical variables (x_categoricals)", hparams.get("x_categoricals"), list(dataset.flat_categoricals)),
        ("target", parameters.get("target"), dataset.target),
        ("max_encoder_length", parameters.get("max_encoder_length"), dataset.max_encoder_length),
        ("max_prediction_length", parameters.get("max_prediction_length"), dataset.max_prediction_length),
    ]
    if parameters.get("time_varying_known_reals") is not None or parameters.get("static_categoricals") is not None:
        for name in ("static_categoricals", "static_reals", "time_varying_known_categoricals", "time_varying_known_reals",
                     "time_varying_unknown_categoricals", "time_varying_unknown_reals"):  # fmt: skip
            checks.append((name, list(parameters.get(name) or []), list(getattr(dataset, name) or [])))
    for name, expected, found in checks:
        if expected is not None and list(np.atleast_1d(expected)) != list(np.atleast_1d(found)):
            raise InputError(
                f"{type(model).__name__} was built from a TimeSeriesDataSet whose {name} are {expected!r}, but this data set's are {found!r}. "
                "Build the data to explain from the training set: TimeSeriesDataSet.from_dataset(training, df) (or from_parameters(model.dataset_parameters, df))."
            )


def _float64_copy(model: Any) -> Any:
    """A float64 deep copy of the model, without the Lightning trainer a fitted model keeps, and with
    the graph-holding tensors of its metrics (torchmetrics' ``_forward_cache``) detached."""
    import torch

    memo: dict[int, Any] = {}
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        memo[id(trainer)] = None
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach()
    return copy.deepcopy(model, memo).double()


def _cast(value: Any, dtype: Any, device: Any) -> Any:
    """Floating-point tensors in the model's dtype, every tensor on its device."""
    if isinstance(value, (list, tuple)):
        return [_cast(v, dtype, device) for v in value]
    return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)


def _windows(dataset: Any, indices: Any) -> list[Any]:
    return [dataset[int(i)] for i in indices]


def _split(x: dict[str, Any], leaves: list[tuple[str, int | None]], rows: slice) -> list[Any]:
    out = []
    for key, position in leaves:
        value = x[key] if position is None else x[key][position]
        out.append(value[rows])
    return out


def _check_model(model: Any) -> None:
    _library()
    from pytorch_forecasting.models.base import BaseModel

    if isinstance(model, type):
        raise InputError(
            f"{model.__name__} is a class: pass a model made with {model.__name__}.from_dataset(dataset, ...) (trained or not)"
        )
    if not isinstance(model, BaseModel):
        raise UnsupportedOperationError([
            (type(model).__name__, "not a pytorch-forecasting model with the TimeSeriesDataSet interface (a BaseModel made with from_dataset); "
             "the v2 models (pytorch_forecasting.models.base._base_model_v2) read a different batch and are not supported yet", "shapley"),
        ])  # fmt: skip


def _output_names(model: Any, mode: str, distribution_columns: int, targets: list[str]) -> list[str]:
    from pytorch_forecasting.metrics import DistributionLoss, MultiLoss, QuantileLoss

    losses = list(model.loss.metrics) if isinstance(model.loss, MultiLoss) else [model.loss]
    names: list[str] = []
    for target, loss in zip(targets, losses, strict=False):
        if mode == "prediction":
            own = [target]
        elif mode == "quantiles" or (mode == "raw" and isinstance(loss, QuantileLoss)):
            own = [f"q{q:g}" for q in loss.quantiles]
        elif mode == "raw" and isinstance(loss, DistributionLoss):
            own = list(loss.distribution_arguments)
        else:
            own = [target]
        names.extend(own if len(losses) == 1 else [f"{target}:{n}" for n in own])
    return names


def explain(
    model: Any,
    data: Any,
    *,
    method: str = "deepshap",
    mode: str = "raw",
    background: Any = None,
    windows: Sequence[int] | None = None,
    horizons: Sequence[int] | None = None,
    n_background: int = 50,
    budget: int | None = None,
    random_state: Any = None,
    batch_size: int = 2048,
    check_additivity: bool | float = True,
    dtype: str | None = "float64",
    teacher_forced: bool = False,
) -> ForecastExplanation:
    """Explain a pytorch-forecasting model's forecasts per named variable, step, horizon and output.

    Args:
        model: a model made with ``Model.from_dataset(dataset, ...)`` (trained or not): DeepAR,
            RecurrentNetwork (LSTM, GRU), TemporalFusionTransformer, NBeats, NHiTS, DecoderMLP, ...
            It is not changed (its training flags are restored afterwards).
        data: the windows to explain: a ``TimeSeriesDataSet`` made from the training set's
            parameters, its dataloader (the windows of the data set behind it, in order), or a data
            frame as ``model.predict`` takes it (one window per series, the last).
        method: "deepshap" (one pass, exact in sum) or "shapley" (Shapley values of every input
            entry with standard errors, within ``budget`` rows per window; exact where it covers
            every coalition).
        mode: "raw" (every column of the network's ``prediction``: quantiles, distribution
            parameters or the point forecast, as ``model.predict(mode="raw")``), "prediction" (the
            point forecast, ``model.predict(mode="prediction")``) or "quantiles".
        background: the reference windows (same forms as ``data``). Default: ``data``'s own windows.
            At most ``n_background`` of them are used, drawn at random where there are more, always
            with seed 0 (the Shapley mode's ``random_state`` does not change the reference).
        windows: indices of ``data``'s windows to explain (default: all).
        horizons: the horizon steps to explain (0: the first forecast step; negative from the last;
            default: all). The result's horizon axis holds these steps, in this order.
        budget, random_state: the Shapley mode's rows per window and seed.
        batch_size: the most (window, reference) pairs per pass.
        check_additivity: DeepSHAP's own check (True, False, or a relative tolerance).
        dtype: "float64" (default): explain a float64 copy of the model, so that the values add up
            to float64 precision (a deep float32 network such as TFT rounds to ~1e-4 of its forecast);
            the forecasts are the model's own up to float32 rounding. None: the model's own dtype
            (faster; the model itself is explained, its training flags restored afterwards).
        teacher_forced: DeepAR only. Its ``n_samples=None`` forward (what ``predict(n_samples=None)``
            runs) is teacher-forced: the parameters of horizon step j >= 1 are computed from the
            realized target at decoder step j - 1 (the future, or whatever filler a prediction frame
            holds there), not from DeepAR's own forecast, which feeds back sampled draws. So by default
            only the first step (``horizons=[0]``, which reads no future) is explained for DeepAR, and
            later steps are refused; ``teacher_forced=True`` explains the teacher-forced function for
            every step, knowingly: its values on the decoder's target are reads of the realized future.

    Returns:
        A :class:`ForecastExplanation`.

    Raises:
        InputError: a data set the model was not built from, no windows, a bad mode, window, horizon,
            ``n_background`` or output; DeepAR horizon steps after the first without ``teacher_forced=True``.
        UnsupportedOperationError: a model type that is not supported, or operations DeepSHAP has no
            exact rule for (``method="shapley"`` explains those from the forward alone).

    Example:
        >>> from rnnshap.pytorch_forecasting import explain
        >>> result = explain(tft, validation)                       # doctest: +SKIP
        >>> result.importance("encoder", output="q0.5")              # doctest: +SKIP
        >>> result.plot_interpretation()["encoder_variables"]        # doctest: +SKIP
    """
    _library()
    import torch
    from pytorch_forecasting.metrics import DistributionLoss, MultiLoss

    method = check_method(method)
    if mode not in MODES:
        raise InputError(f"mode={mode!r}: choose one of {MODES} (as model.predict's mode)")
    if isinstance(n_background, (bool, np.bool_)) or not isinstance(n_background, (int, np.integer)) or n_background < 1:
        raise InputError(f"n_background must be a positive integer (the most background windows used), got {n_background!r}")
    _check_model(model)
    deepar = isinstance(model, _library().DeepAR)
    if teacher_forced and not deepar:
        raise InputError(
            f"teacher_forced=True applies to DeepAR's teacher-forced decoder only; {type(model).__name__} does not read the realized "
            "future target: leave it out"
        )
    dataset = _dataset(data, model, "data")
    _check_fits(model, dataset)
    reference = dataset if background is None else _dataset(background, model, "background", predict=False)
    if background is not None:
        _check_fits(model, reference)
    if windows is None:
        explained = np.arange(len(dataset))
    else:
        explained = _indices(windows, "windows")
        if explained.size == 0 or explained.min() < -len(dataset) or explained.max() >= len(dataset):
            raise InputError(f"windows must index the data set's {len(dataset)} windows, got {list(explained)[:10]}")
        explained = explained % len(dataset)
    rng = np.random.default_rng(0)  # a fixed draw: the Shapley mode's random_state does not change the game
    chosen = np.arange(len(reference))
    if len(chosen) > n_background:
        chosen = np.sort(rng.choice(len(chosen), size=int(n_background), replace=False))

    losses = list(model.loss.metrics) if isinstance(model.loss, MultiLoss) else [model.loss]
    distribution = isinstance(losses[0], DistributionLoss)
    distribution_columns = len(losses[0].distribution_arguments) if distribution else 0
    if distribution and len(losses) > 1:
        raise UnsupportedOperationError(
            [(f"{type(model).__name__} with a MultiLoss of distributions", "not supported yet", "shapley")]
        )
    if distribution and mode == "quantiles":
        raise InputError(
            f"mode='quantiles': pytorch-forecasting samples the quantiles of {type(losses[0]).__name__}; explain mode='raw' (its parameters)"
        )

    if dtype not in (None, "float64"):
        raise InputError(f"dtype={dtype!r}: choose 'float64' (a float64 copy of the model) or None (the model's own dtype)")
    if dtype == "float64" and any(p.dtype != torch.float64 for p in model.parameters() if p.is_floating_point()):
        model = _float64_copy(model)
    items = _windows(reference, chosen) + _windows(dataset, explained)
    x, _ = dataset._collate_fn(items)  # the library's own batch: one padding for both sides
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    float_dtype = torch.float32 if first is None else first.dtype
    device = torch.device("cpu") if first is None else first.device
    x = {k: _cast(v, float_dtype, device) for k, v in x.items()}  # a float64 model (model.double()) reads float64 windows
    B, n = len(chosen), len(explained)
    H = int(x["decoder_lengths"][B:].max())  # the explained prediction length (one for all windows, checked below)
    if horizons is None:
        steps = np.arange(H)
    else:
        steps = _indices(horizons, "horizons")
        if steps.size == 0 or steps.min() < -H or steps.max() >= H or len(set((steps % H).tolist())) < steps.size:
            raise InputError(
                f"horizons must be distinct horizon steps of the {H} forecast (0 to {H - 1}, or negative from the last), got {steps.tolist()}"
            )
        steps = steps % H
    if deepar and not teacher_forced and steps.max() >= 1:
        raise InputError(
            f"DeepAR: horizon steps {[int(j) for j in steps if j >= 1]} cannot be explained as its forecast. Its n_samples=None forward "
            "(predict(n_samples=None)) is teacher-forced: the parameters of step j >= 1 are computed from the realized target at decoder "
            "step j - 1 (the actual future, or a prediction frame's filler), while DeepAR's forecast feeds back its own sampled draws "
            "(random, not explainable exactly). Exact: the first step's distribution parameters, which read no future: pass "
            "horizons=[0]. To explain the teacher-forced function anyway (its decoder-target values are reads of the realized "
            "future), pass teacher_forced=True."
        )
    states = {name: module.training for name, module in model.named_modules()}
    try:
        model.eval()
        recorder = _Recorder(x)
        with torch.no_grad():
            try:
                out = model(recorder)
                if distribution and mode == "prediction":
                    _check_distribution_mean(model.loss, out["prediction"])
                converted = _convert(model, out, mode, distribution_columns)
            except KeyError as error:  # pragma: no cover - a forward that reads what a batch does not have
                raise InputError(
                    f"{type(model).__name__}.forward reads {error} which this TimeSeriesDataSet's batches do not have"
                ) from error
        extra = sorted(k for k in recorder.read if k not in _ATTRIBUTED + _CONTEXT)
        if extra:
            raise UnsupportedOperationError(
                [(type(model).__name__, f"its forward reads the batch entries {extra}, which are not variables", "shapley")]
            )
        keys = [k for k in _ATTRIBUTED + _CONTEXT if k in recorder.read]
        leaves = _leaves(x, keys)
        K = int(converted.shape[1]) // int(x["decoder_lengths"].max())  # outputs per horizon step
        columns = None if horizons is None else [int(j) * K + k for j in steps for k in range(K)]
        module = _module(model, leaves, mode, distribution_columns, columns)
        attribution = _by_encoder_length(
            module, leaves, x, B, n, method=method, budget=budget, random_state=random_state, batch_size=batch_size,
            check_additivity=check_additivity, what=type(model).__name__,
        )  # fmt: skip
    finally:
        for name, module_ in model.named_modules():
            module_.train(states[name])

    names = _output_names(model, mode, distribution_columns, list(dataset.target_names))
    K = attribution.outputs.shape[1] // len(steps)
    if K != len(names):  # pragma: no cover - a loss with outputs this adapter does not name
        names = [f"output{i}" for i in range(K)]
    result = _assemble(model, dataset, x, leaves, attribution, B, n, H, len(steps), K, names, method, mode)
    result.horizons = steps
    return result


def _indices(values: Any, what: str) -> np.ndarray:
    """``values`` as a 1-d int64 array, or an InputError (floats, booleans and other objects are refused, not truncated)."""
    array = np.asarray(list(np.atleast_1d(values) if np.ndim(values) == 0 else values), dtype=object).reshape(-1)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in array):
        raise InputError(f"{what} must be integer indices, got {array.tolist()[:10]}")
    return array.astype(np.int64)


def _by_encoder_length(
    module: Any, leaves: list[tuple[str, int | None]], x: dict[str, Any], B: int, n: int, **options: Any
) -> WindowAttribution:
    """:func:`attribute` once per encoder length of the explained windows (the rows ``B:`` of the batch
    ``x``; the background: rows ``:B``).

    pytorch-forecasting's batches pad shorter encoders after their steps, so position p of a window of
    length l in the batch is its step p - l. For the windows of length l, every reference longer than
    that gives its last l steps (the same time before the forecast), the tensors are cut to l steps,
    and all lengths are l: the values pair equal times, the base value is the mean forecast over the
    references at that length, and TFT, which reads the batch's longest length as its width, sees the
    width it expects. The returned encoder values are right-aligned: a window's l steps sit at
    positions L - l .. L - 1 (zeros in front), so position p is step p - L for every window."""
    import torch

    lengths = x["encoder_lengths"]
    decoder = x["decoder_lengths"]
    if bool((decoder[B:] != decoder[B:].max()).any()):
        raise InputError(
            "the explained windows have decoder lengths "
            f"{sorted(set(decoder[B:].tolist()))}: explain windows of one prediction length (min_prediction_length = max_prediction_length, "
            "or pick them with windows=)"
        )
    full = int(decoder[B:].max())

    def tensor(key: str, position: int | None) -> Any:
        return x[key] if position is None else x[key][position]

    parts: list[tuple[np.ndarray, WindowAttribution]] = []
    for length in sorted(set(lengths[B:].tolist())):
        rows = np.flatnonzero(lengths[B:].cpu().numpy() == length)
        references = [b for b in range(B) if int(lengths[b]) >= length and int(decoder[b]) >= full]
        if not references:
            raise InputError(
                f"no background window has an encoder of {length} steps or more and {full} decoder steps: pass a background "
                "with longer windows (e.g. the training set)"
            )
        background, X = [], []
        for key, position in leaves:
            value = tensor(key, position)
            if key.startswith("encoder_") and key != "encoder_lengths":
                ends = [int(lengths[b]) for b in references]
                background.append(torch.stack([value[b, end - length : end] for b, end in zip(references, ends, strict=True)]))
                X.append(value[B + rows, :length])
            elif key.startswith("decoder_") and key != "decoder_lengths":
                background.append(value[references, :full])
                X.append(value[B + rows, :full])
            elif key == "encoder_lengths":
                background.append(torch.full((len(references),), length, dtype=value.dtype, device=value.device))
                X.append(value[B + rows])
            elif key == "decoder_lengths":
                background.append(torch.full((len(references),), full, dtype=value.dtype, device=value.device))
                X.append(value[B + rows])
            else:
                background.append(value[references])
                X.append(value[B + rows])
        parts.append((rows, attribute(module, background, X, **options)))
    shapes = []  # per leaf, one window's shape: the decoder's cut to the explained prediction length
    for key, position in leaves:
        shape = tuple(tensor(key, position).shape[1:])
        decoder_step = key.startswith("decoder_") and key != "decoder_lengths"
        shapes.append((full, *shape[1:]) if decoder_step else shape)
    if len(parts) == 1 and all(v.shape[1:-1] == shape for v, shape in zip(parts[0][1].values, shapes, strict=True)):
        return parts[0][1]  # one encoder length, the full one: nothing to place
    first = parts[0][1]
    k = first.outputs.shape[1]

    def merged(arrays: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, ...], encoder_steps: bool) -> np.ndarray:
        """Each part's rows in the full shape: a window's l encoder steps at the end of the encoder axis
        (positions L - l .. L - 1, so position p is step p - L for every window; zeros in front), every
        other axis from its start."""
        out = np.zeros((n, *shape, k))
        for rows, v in arrays:
            sizes = v.shape[1:-1]
            index: tuple[Any, ...] = (rows, *(slice(0, size) for size in sizes))
            if encoder_steps:
                index = (rows, slice(shape[0] - sizes[0], shape[0]), *index[2:])
            out[index] = v
        return out

    steps = [key.startswith("encoder_") and key != "encoder_lengths" for key, _ in leaves]
    values = [merged([(rows, part.values[i]) for rows, part in parts], shape, steps[i]) for i, shape in enumerate(shapes)]
    stderr = None
    if first.stderr is not None:
        stderr = [
            merged([(rows, part.stderr[i]) for rows, part in parts if part.stderr is not None], shape, steps[i])
            for i, shape in enumerate(shapes)
        ]

    def joined(name: str, shape: tuple[int, ...]) -> Any:
        if getattr(first, name) is None:
            return None
        out = np.zeros(shape, dtype=np.asarray(getattr(first, name)).dtype)
        for rows, part in parts:
            out[rows] = getattr(part, name)
        return out

    return WindowAttribution(
        values=values, stderr=stderr, base_values=joined("base_values", (n, k)), outputs=joined("outputs", (n, k)), method=first.method,
        exact=joined("exact", (n,)), n_evals=joined("n_evals", (n,)),
    )  # fmt: skip


def _assemble(
    model: Any, dataset: Any, x: dict[str, Any], leaves: list[tuple[str, int | None]], attribution: WindowAttribution,
    B: int, n: int, H: int, J: int, K: int, names: list[str], method: str, mode: str,
) -> ForecastExplanation:  # fmt: skip
    """Map the tensors' values to the data set's named variables (``H`` decoder steps, ``J`` explained
    horizon steps of ``K`` outputs each)."""
    reals, cats = list(dataset.reals), list(dataset.flat_categoricals)
    groups = dataset.variable_to_group_mapping
    static = list(dataset.static_categoricals or []) + list(dataset.static_reals or [])
    targets = list(dataset.target_names)
    time_varying: list[str] = []
    for name in [*(groups.get(c, c) for c in cats), *reals, *targets]:
        if name not in static and name not in time_varying:
            time_varying.append(name)
    L = int(x["encoder_cont"].shape[1])
    HK = J * K

    def parts(values: list[np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for (key, position), v in zip(leaves, values, strict=True):
            label = key if position is None else f"{key}[{position}]"
            out[label] = v
        return out

    raw = parts(attribution.values)
    errors = parts(attribution.stderr) if attribution.stderr is not None else None

    def mapped(source: dict[str, np.ndarray], square: bool) -> dict[str, np.ndarray]:
        enc = np.zeros((n, L, len(time_varying), HK))
        dec = np.zeros((n, H, len(time_varying), HK))
        stat = np.zeros((n, len(static), HK))
        scale = np.zeros((n, HK))
        f = (lambda a: a**2) if square else (lambda a: a)
        for label, v in source.items():
            key = label.split("[")[0]
            if key in ("encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat"):
                columns = reals if key.endswith("cont") else [groups.get(c, c) for c in cats]
                target = enc if key.startswith("encoder") else dec
                for c, name in enumerate(columns):
                    if name in static:
                        stat[:, static.index(name)] += f(v[:, :, c]).sum(1)
                    else:
                        target[:, :, time_varying.index(name)] += f(v[:, :, c])
            elif key in ("encoder_target", "decoder_target"):
                position = int(label[label.index("[") + 1 : -1]) if "[" in label else 0
                target = enc if key.startswith("encoder") else dec
                target[:, :, time_varying.index(targets[position])] += f(v)
            elif key == "target_scale":
                scale += f(v.reshape(n, -1, HK)).sum(1)
            # lengths: context, 0 by construction
        shape = (J, K)
        return {
            "encoder": enc.reshape(n, L, -1, *shape), "decoder": dec.reshape(n, H, -1, *shape), "static": stat.reshape(n, -1, *shape),
            "target_scale": scale.reshape(n, *shape),
        }  # fmt: skip

    values = mapped(raw, False)
    stderr = None
    # a variable's standard error: the root of the sum of its entries' squared errors (their estimates
    # come from the same walks, so this is a scale, not an exact standard error of the sum)
    if errors is not None:
        stderr = {k: np.sqrt(v) for k, v in mapped(errors, True).items()}
    try:
        index = dataset.x_to_index({k: x[k][B : B + n] for k in ("decoder_time_idx", "groups")})
    except Exception:  # pragma: no cover - an index the data set cannot decode
        index = None
    encoder_variables = [v for v in getattr(model, "encoder_variables", time_varying) if v in time_varying]
    decoder_variables = [v for v in getattr(model, "decoder_variables", time_varying) if v in time_varying]
    return ForecastExplanation(
        encoder=values["encoder"], decoder=values["decoder"], static=values["static"], target_scale=values["target_scale"],
        base_values=attribution.base_values.reshape(n, J, K), prediction=attribution.outputs.reshape(n, J, K), time_varying_variables=time_varying,
        static_variables=static, output_names=names, encoder_variables=encoder_variables, decoder_variables=decoder_variables,
        encoder_lengths=x["encoder_lengths"][B : B + n].cpu().numpy(), decoder_lengths=x["decoder_lengths"][B : B + n].cpu().numpy(), index=index,
        method=method, mode=mode, stderr=stderr, exact=attribution.exact, n_evals=attribution.n_evals, raw=raw,
    )  # fmt: skip
