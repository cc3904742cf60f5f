"""The foundation forecasters' adapters: the :class:`Adapter` base (one library's forecast, its public call on
windows and the torch function behind it), and the helpers the library modules share (quantile columns, a point
forecast's column, a torch module around a network, the precision asked for)."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ...errors import InputError


class PastCovariates(NamedTuple):
    """Covariates of the models that read them as variates beside their targets (Moirai 2, TimesFM 3)."""

    #: the covariates' names: the past-only ones, then those known into the future
    names: list[str]
    #: per covariate, its past windows (n, L)
    given: list[np.ndarray]
    #: per covariate, its reference windows (B, L), paired with the target's background rows by index
    references: list[np.ndarray]
    #: the target's background
    target_background: Any
    #: per covariate known into the future (the last of ``names``), its future values (n, H) and references (B, H)
    future: list[tuple[np.ndarray, np.ndarray]]


class Adapter:
    """One library's forecast: its public call on windows, and the torch function behind it.

    Subclasses set the class attributes and implement :meth:`library_forecast` and :meth:`module`."""

    #: the distribution whose version is checked (a key of :data:`rnnshap.forecasting.VERIFIED`)
    distribution = ""
    #: the model's name in messages
    label = ""
    #: the rnnshap extra that installs the library, named where it is missing or does not import ("": none names it)
    extra = ""
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
    #: whether the model forecasts several variates from one another's context (the door then takes ``(n, V, L)``)
    multivariate = False
    #: whether the model reads past covariates beside one target (``covariates={"past_covariates": ...}``, through
    #: :meth:`past_covariates_of`)
    past_covariates = False
    #: why a model that forecasts one variate per series takes no multivariate windows (said in the refusal)
    one_variate_why = ""
    #: the variates of the windows given to the forecast forms: 0, univariate windows (m, L); V, multivariate windows
    #: given flat, (m, V·L), each variate's steps after the previous one's (set by :meth:`set_variates`)
    variates = 0
    #: of the variates, the forecast ones (the others past covariates)
    targets = 0
    #: of the covariates, those known into the future (the last ones; their future values after the variates)
    known_variates = 0

    def __init__(self, model: Any) -> None:
        self.model = model

    def set_variates(self, count: int, targets: int, known: int = 0) -> None:
        """Read the windows as ``count`` variates given flat (0: univariate), the first ``targets`` the forecast
        ones (the others past covariates, the last ``known`` of them known into the future: their future values, H
        each, follow the variates in the flat windows); the forecast's columns are then ``(variate, level)`` pairs."""
        self.variates = count
        self.targets = targets
        self.known_variates = known

    def past_covariates_of(self, covariates: Any, background: Any, n: int, L: int, H: int, method: str) -> Any:
        """For multivariate windows: the covariates read as variates beside the targets, a
        :class:`PastCovariates` (names, their windows (n, L), reference
        windows, the target's background, the future values of those known into the future); ``background`` itself
        as the target's where the model reads no covariates."""
        if covariates is not None:
            raise InputError(f"{self.label} reads no covariates: leave covariates=None")
        return PastCovariates([], [], [], background, [])

    def shaped(self, x: Any) -> Any:
        """Windows as the multivariate forecast takes them: (m, V, L) from the flat (m, V·L); (m, 1, L) from
        univariate (m, L). numpy or torch."""
        return x[:, None] if not self.variates else x.reshape(x.shape[0], self.variates, -1)

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


class ObservedMaskAdapter(Adapter):
    """An adapter of a model that takes a missing value as the value 0 with a mask of the observed steps (Toto, Toto
    2): the DeepSHAP module reads the windows with NaN as 0 and the mask as a context input (the explained window's
    for it and its references alike), so that a missing step is no player and gets exactly 0."""

    def observed_tensors(self, windows: np.ndarray, dtype: Any, device: Any) -> tuple[Any, Any]:
        """``windows`` (NaN: missing) as torch tensors on ``device``: the values in ``dtype``, a missing one 0, and
        the mask of the observed ones."""
        import torch

        x = torch.as_tensor(np.nan_to_num(windows, nan=0.0), dtype=dtype, device=device)
        return x, torch.as_tensor(~np.isnan(windows), device=device)

    def deepshap_windows(self, windows: np.ndarray) -> np.ndarray:
        return np.nan_to_num(windows, nan=0.0)  # a missing value: 0, unobserved (the mask is a context input)

    def context_inputs(self, windows: np.ndarray) -> list[np.ndarray]:
        return [~np.isnan(windows)]


def library_missing(adapter: type[Adapter] | Adapter, error: ImportError) -> ImportError:
    """The ImportError for ``adapter``'s library missing or failing to import (``error``), naming the rnnshap extra that
    installs it (:attr:`Adapter.extra`)."""
    return ImportError(
        f"rnnshap.foundation explains {adapter.label} through {adapter.distribution} and needs it: pip install "
        f"'rnnshap[{adapter.extra}]' ({type(error).__name__}: {error})"
    )


def variate_columns(out: Any, columns: Sequence[Any], index: Callable[[Any], int]) -> Any:
    """The explained columns of a forecast ``out`` (m, V, H, Q_all) (numpy or torch): (m, H, C), one per column, a
    level (of the first variate: univariate windows) or a ``(variate, level)`` pair (multivariate windows);
    ``index`` maps a level to its place on the last axis."""
    pairs = [c if isinstance(c, tuple) else (0, c) for c in columns]
    picked = [out[:, v, :, index(level)] for v, level in pairs]
    if isinstance(out, np.ndarray):
        return np.stack(picked, axis=-1)
    import torch

    return torch.stack(picked, dim=-1)


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


def net_module(net: Any, forward: Callable[..., Any], doc: str, dtype: Any = None) -> Any:
    """A torch module holding ``net`` (a submodule, as ``.net``) whose forward on the inputs (the windows ``x``, and
    any the adapter adds) is ``forward(net, *inputs)``; ``doc`` says what it computes; ``dtype`` the one it computes in
    (float32 where None)."""
    import torch
    from torch import nn

    class Forecast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return forward(self.net, *inputs)

    Forecast.dtype = torch.float32 if dtype is None else dtype  # type: ignore[attr-defined]
    Forecast.__doc__ = doc
    return Forecast()


def precision_of(adapter: Adapter, precision: str | None) -> tuple[str, str]:
    """``(precision, label)``: the precision asked for (None: the model's own), refused where the adapter has no such
    twin, and the model in words for it."""
    own = adapter.precisions[0]
    if precision is None:
        precision = own
    if precision not in adapter.precisions:
        raise InputError(
            f"precision={precision!r}: {adapter.label} computes in {own}"
            + (f"; it can also run in {', '.join(adapter.precisions[1:])}" if len(adapter.precisions) > 1 else "")
            + f". Give one of {list(adapter.precisions)}, or leave precision=None (the model's own)"
        )
    return precision, adapter.label if precision == own else f"{adapter.label} ({precision} twin: {adapter.twin_note})"
