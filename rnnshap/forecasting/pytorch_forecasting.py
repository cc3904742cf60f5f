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
others and gets its own share, reported apart (:attr:`VariableExplanation.target_scale`).

This file holds the entry point, its checks of the model and data and the explained function; the result
type is in ``pytorch_forecasting_result.py``, the mapping of the tensors' values to named variables (per
encoder length) in ``pytorch_forecasting_variables.py``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Sequence

import numpy as np

from ..backgrounds import stated
from ..errors import InputError, UnsupportedOperationError
from . import check_method, check_version, preserved
from .pytorch_forecasting_result import ForecastExplanation as ForecastExplanation
from .pytorch_forecasting_result import VariableExplanation
from .pytorch_forecasting_variables import attribute_by_encoder_length, to_variables

MODES = ("raw", "prediction", "quantiles")
#: the batch entries whose values are attributed to variables; the lengths are context
_ATTRIBUTED = ("encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "encoder_target", "decoder_target", "target_scale")
_CONTEXT = ("encoder_lengths", "decoder_lengths")


def _library() -> Any:
    try:
        import pytorch_forecasting
    except ImportError as error:  # pragma: no cover - the extra is installed where this module is used
        raise ImportError(
            "rnnshap.pytorch_forecasting explains pytorch-forecasting models and needs it: pip install "
            "'rnnshap[pytorch-forecasting]'"
        ) from error
    return pytorch_forecasting


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
                f"{what}: a data frame needs the model's dataset_parameters (a model made with from_dataset); pass a "
                "TimeSeriesDataSet"
            )
        try:
            data = pf.TimeSeriesDataSet.from_parameters(parameters, data, predict=predict)
        except (AssertionError, ValueError, KeyError) as error:
            need = (
                parameters.get("min_encoder_length") or parameters.get("max_encoder_length"),
                parameters.get("min_prediction_length"),
            )
            raise InputError(
                f"{what}: pytorch-forecasting cannot make windows of this data frame for {type(model).__name__} ({error}). "
                "Every series needs "
                f"at least min_encoder_length + min_prediction_length = {need[0]} + {need[1]} rows, and the data frame the "
                "columns "
                "the model was built with."
            ) from error
    dataset = getattr(data, "dataset", data)
    if not isinstance(dataset, pf.TimeSeriesDataSet):
        raise InputError(
            f"{what} must be a TimeSeriesDataSet, a dataloader made by its to_dataloader(), or a data frame; got "
            f"{type(data).__name__}"
        )
    if len(dataset) == 0:
        raise InputError(
            f"{what}: the TimeSeriesDataSet has no windows (every series is shorter than min_encoder_length + "
            "min_prediction_length, "
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
                f"{type(model).__name__} was built from a TimeSeriesDataSet whose {name} are {expected!r}, but this data set's "
                f"are {found!r}. "
                "Build the data to explain from the training set: TimeSeriesDataSet.from_dataset(training, df) (or "
                "from_parameters(model.dataset_parameters, df))."
            )


def _float64_copy(model: Any) -> Any:
    """A float64 deep copy of the model, without the Lightning trainer a fitted model keeps, and with
    the graph-holding tensors of its metrics (torchmetrics' ``_forward_cache``) detached, wherever they
    are held: on a module, or on a metric kept in a plain list (a ``MultiLoss``'s ``metrics``, for several
    targets), which ``model.modules()`` does not reach."""
    import torch

    memo: dict[int, Any] = {}
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        memo[id(trainer)] = None
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if id(value) in seen or depth > 8:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None:
                memo[id(value)] = value.detach()
            return
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, (list, tuple, set)):
            children = value
        elif isinstance(value, torch.nn.Module):
            children = vars(value).values()
        else:
            return
        for child in list(children):
            visit(child, depth + 1)

    for module in model.modules():
        visit(module, 0)
    return copy.deepcopy(model, memo).double()


def _fails_in_float64(model: Any, items: list[Any], dataset: Any) -> str | None:
    """Why a float64 copy of a model cannot run a batch of ``items`` (a module that makes its own float32 state, as
    xLSTMTime's sLSTM does, meets the float64 weights), in words; None where it runs, or fails otherwise (the
    explanation then meets that failure itself)."""
    import torch

    x, _ = dataset._collate_fn(items)
    x = {k: _cast(v, torch.float64, torch.device("cpu")) for k, v in x.items()}
    with preserved(model), torch.no_grad():
        model.eval()
        try:
            model(x)
        except RuntimeError as error:
            line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return line if "dtype" in line.lower() or "scalar type" in line.lower() else None
    return None


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
            (type(model).__name__, "not a pytorch-forecasting model with the TimeSeriesDataSet interface (a BaseModel made "
             "with from_dataset); the v2 models (pytorch_forecasting.models.base._base_model_v2) read a different batch and "
             "are not supported yet", "shapley"),
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


def _explained_windows(windows: Sequence[int] | None, count: int) -> np.ndarray:
    """The indices of the explained windows among the data set's ``count`` (all by default; negative from the last)."""
    if windows is None:
        return np.arange(count)
    explained = _indices(windows, "windows")
    if explained.size == 0 or explained.min() < -count or explained.max() >= count:
        raise InputError(f"windows must index the data set's {count} windows, got {list(explained)[:10]}")
    return explained % count


def _background_windows(count: int, n_background: int) -> np.ndarray:
    """The background's windows among its ``count``: all, or ``n_background`` of them drawn with seed 0 (a fixed draw:
    the Shapley mode's random_state does not change the game), in order."""
    rng = np.random.default_rng(0)
    chosen = np.arange(count)
    if len(chosen) > n_background:
        chosen = np.sort(rng.choice(len(chosen), size=int(n_background), replace=False))
    return chosen


def _distribution(model: Any, mode: str) -> tuple[bool, int]:
    """Whether ``model``'s loss is a DistributionLoss, and its number of parameters (0 for another loss); a MultiLoss
    of distributions and their sampled quantiles are refused."""
    from pytorch_forecasting.metrics import DistributionLoss, MultiLoss

    losses = list(model.loss.metrics) if isinstance(model.loss, MultiLoss) else [model.loss]
    distribution = isinstance(losses[0], DistributionLoss)
    distribution_columns = len(losses[0].distribution_arguments) if distribution else 0
    if distribution and len(losses) > 1:
        raise UnsupportedOperationError(
            [(f"{type(model).__name__} with a MultiLoss of distributions", "not supported yet", "shapley")]
        )
    if distribution and mode == "quantiles":
        raise InputError(
            f"mode='quantiles': pytorch-forecasting samples the quantiles of {type(losses[0]).__name__}; explain mode='raw' "
            "(its parameters)"
        )
    return distribution, distribution_columns


def _explained_steps(horizons: Sequence[int] | None, H: int, first_only: bool) -> np.ndarray:
    """The explained horizon steps of an ``H``-step forecast (all by default; negative from the last); with
    ``first_only`` (DeepAR's teacher-forced decoder), any step after the first is refused."""
    if horizons is None:
        steps = np.arange(H)
    else:
        steps = _indices(horizons, "horizons")
        if steps.size == 0 or steps.min() < -H or steps.max() >= H or len(set((steps % H).tolist())) < steps.size:
            raise InputError(
                f"horizons must be distinct horizon steps of the {H} forecast (0 to {H - 1}, or negative from the last), got "
                f"{steps.tolist()}"
            )
        steps = steps % H
    if first_only and steps.max() >= 1:
        raise InputError(
            f"DeepAR: horizon steps {[int(j) for j in steps if j >= 1]} cannot be explained as its forecast. Its "
            "n_samples=None forward "
            "(predict(n_samples=None)) is teacher-forced: the parameters of step j >= 1 are computed from the realized target "
            "at decoder "
            "step j - 1 (the actual future, or a prediction frame's filler), while DeepAR's forecast feeds back its own "
            "sampled draws "
            "(random, not explainable exactly). Exact: the first step's distribution parameters, which read no future: pass "
            "horizons=[0]. To explain the teacher-forced function anyway (its decoder-target values are reads of the realized "
            "future), pass teacher_forced=True."
        )
    return steps


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
) -> VariableExplanation:
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
        A :class:`VariableExplanation` (also named ``ForecastExplanation``).

    Raises:
        UnverifiedVersionError: pytorch-forecasting is installed at a version outside the series this adapter
            was verified on (:data:`rnnshap.forecasting.VERIFIED`).
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
    check_version("pytorch-forecasting")
    import torch

    method = check_method(method)
    if mode not in MODES:
        raise InputError(f"mode={mode!r}: choose one of {MODES} (as model.predict's mode)")
    if isinstance(n_background, (bool, np.bool_)) or not isinstance(n_background, (int, np.integer)) or n_background < 1:
        raise InputError(f"n_background must be a positive integer (the most background windows used), got {n_background!r}")
    _check_model(model)
    deepar = isinstance(model, _library().DeepAR)
    if teacher_forced and not deepar:
        raise InputError(
            f"teacher_forced=True applies to DeepAR's teacher-forced decoder only; {type(model).__name__} does not read the "
            "realized "
            "future target: leave it out"
        )
    dataset = _dataset(data, model, "data")
    _check_fits(model, dataset)
    reference = dataset if background is None else _dataset(background, model, "background", predict=False)
    if background is not None:
        _check_fits(model, reference)
    explained = _explained_windows(windows, len(dataset))
    chosen = _background_windows(len(reference), n_background)
    distribution, distribution_columns = _distribution(model, mode)

    if dtype not in (None, "float64"):
        raise InputError(f"dtype={dtype!r}: choose 'float64' (a float64 copy of the model) or None (the model's own dtype)")
    if dtype == "float64" and any(p.dtype != torch.float64 for p in model.parameters() if p.is_floating_point()):
        double = _float64_copy(model)
        failure = _fails_in_float64(double, _windows(reference, chosen[:1]) + _windows(dataset, explained[:1]), dataset)
        if failure is None:
            model = double
        else:  # (the model's own dtype: its values add up to that dtype's precision, and its own refusals are met)
            warnings.warn(
                f"{type(model).__name__}'s float64 copy does not run ({failure}): it is explained in its own dtype; "
                "its values add up to that dtype's precision",
                stacklevel=2,
            )
    items = _windows(reference, chosen) + _windows(dataset, explained)
    x, _ = dataset._collate_fn(items)  # the library's own batch: one padding for both sides
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    float_dtype = torch.float32 if first is None else first.dtype
    device = torch.device("cpu") if first is None else first.device
    x = {k: _cast(v, float_dtype, device) for k, v in x.items()}  # a float64 model (model.double()) reads float64 windows
    B, n = len(chosen), len(explained)
    H = int(x["decoder_lengths"][B:].max())  # the explained prediction length (one for all windows, checked below)
    steps = _explained_steps(horizons, H, first_only=deepar and not teacher_forced)
    with preserved(model):  # its training flags, and whatever its forward caches, put back afterwards
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
        attribution = attribute_by_encoder_length(
            module, leaves, x, B, n, method=method, budget=budget, random_state=random_state, batch_size=batch_size,
            check_additivity=check_additivity, what=type(model).__name__,
        )  # fmt: skip

    names = _output_names(model, mode, distribution_columns, list(dataset.target_names))
    K = attribution.outputs.shape[1] // len(steps)
    if K != len(names):  # pragma: no cover - a loss with outputs this adapter does not name
        names = [f"output{i}" for i in range(K)]
    result = to_variables(model, dataset, x, leaves, attribution, B, n, H, len(steps), K, names, method, mode)
    result.horizons = steps
    result.background = stated("pytorch-forecasting", B, background is not None)
    return result


def _indices(values: Any, what: str) -> np.ndarray:
    """``values`` as a 1-d int64 array, or an InputError (floats, booleans and other objects are refused, not truncated)."""
    array = np.asarray(list(np.atleast_1d(values) if np.ndim(values) == 0 else values), dtype=object).reshape(-1)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in array):
        raise InputError(f"{what} must be integer indices, got {array.tolist()[:10]}")
    return array.astype(np.int64)
