"""Time-series classifiers and regressors in their own toolkits, explained in one call.

- :mod:`rnnshap.aeon` (``rnnshap/classifiers/aeon.py``): ``explain(clf, X, background=None, ...)`` for a
  fitted aeon estimator and aeon's panels;
- :mod:`rnnshap.sktime` (``rnnshap/classifiers/sktime.py``): the same for sktime.

What is explained is the estimator's own public ``predict_proba`` (``predict`` for a regressor), with
whatever it does outside its network: an ensemble's average (InceptionTime's members), a renormalization
(aeon divides sigmoid outputs by their sum), a softmax applied after the network (sktime's torch
classifiers). Each adapter answers one of two ways:

- **DeepSHAP** for the deep learners: the adapter builds a Keras or torch function equal to
  ``predict_proba`` (checked against it on the explained panels and the background before anything is
  explained; a function that differs is refused, naming the estimator), and explains it with
  :class:`rnnshap.DeepExplainer`: values per channel and step that add up to ``predict_proba(x)`` minus
  its mean over the background;
- **the Shapley mode** for every other estimator (ROCKET, MiniRocket, HIVE-COTE, distance-based):
  :class:`rnnshap.ShapleyExplainer` on ``predict_proba`` itself (numpy panels), with steps, channels,
  windows of steps or cells as players, and standard errors (exact where the budget covers every coalition).

The values are laid out ``(n, channels, time, classes)`` (:class:`ClassifierExplanation`); a player that
spans every channel (``"steps"``) has a channel axis of 1, one that spans every step (``"channels"``) a
time axis of 1, windows one entry per window.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import versions
from ..backgrounds import panels_or_own, stated
from ..engines.base import RTOL
from ..errors import InputError, ModelStateError, RnnShapError
from ..result import AttributionResult

#: the answers the adapters offer ("auto": DeepSHAP for a deep learner, else the Shapley mode)
METHODS = ("auto", "deepshap", "shapley")
#: what a Shapley value is given to
PLAYERS = ("steps", "channels", "cells")

#: per toolkit, the releases the adapter was verified on: ``(lowest, first not verified)``, from the
#: versions pinned in ``constraints/cpu-torch.txt``. The adapters read private parts of the toolkits
#: (aeon's ``classifiers_`` and ``model_``, sktime's ``network`` and ``_build_dataloader``).
VERIFIED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "aeon": ((1, 6), (1, 7)),
    "sktime": ((1, 2), (1, 3)),
}


class PredictMismatchError(RnnShapError):
    """The function rnnshap built from an estimator's network is not its ``predict_proba``."""


#: the installed version of a distribution (a key of :data:`VERIFIED`), or an :class:`UnverifiedVersionError` naming it
#: and the versions the adapter was verified on
check_version = versions.checker(
    VERIFIED,
    reads="reads private parts of it that other versions may change",
    advice="explain the estimator's predict_proba with rnnshap.ShapleyExplainer(function, background) and time_axis=2",
)


@dataclass
class ClassifierExplanation(AttributionResult):
    """Attributions of a time-series estimator's ``predict_proba`` (or ``predict``) to its panels: the result
    contract (:class:`rnnshap.result.AttributionResult`) with the estimator's classes and panels.

    ``values[i, c, t, k]``: the share of channel c at step t (or of the player holding them) in
    ``outputs[i, k] - base_values[i, k]``; the values of each sample and class add up to that difference.
    ``values``: ``(n, channels, time, classes)``; grouped players keep an axis of 1 (``"steps"``: one value per step
    for every channel; ``"channels"``: one per channel for every step), windows one entry per window.
    ``base_values``: ``(n, classes)``, the mean of ``predict_proba`` over the background (what the values add up from).
    ``outputs``: ``(n, classes)``, the estimator's own ``predict_proba(X)`` (``predict`` for a regressor).
    ``players``: "cells" (DeepSHAP: every channel at every step), "steps", "channels" or "cells" (Shapley mode).
    ``stderr``: the Shapley mode's standard errors, shaped like ``values`` (0 where exact); None for DeepSHAP.
    """

    #: the class labels of the last axis (``clf.classes_``); ``["prediction"]`` for a regressor
    classes: list[Any]
    #: the explained panels, ``(n, channels, time)`` float64
    data: np.ndarray
    #: steps per window along time (Shapley mode with ``windows=``), else None
    windows: int | None = None
    #: the names of the channels (a DataFrame's columns), else None
    channel_names: list[str] | None = None
    #: the estimator's class name
    estimator: str = ""
    #: what was run: "keras", "torch" (DeepSHAP on a function equal to predict_proba) or "predict_proba"
    function: str = ""

    def per_step(self, values: np.ndarray | None = None) -> np.ndarray:
        """``values`` (default: :attr:`values`) spread onto ``(n, channels, time, classes)``: a step's
        value repeated on every channel, a window's on every step of it, a channel's on every step
        (for drawing; the sums of the spread array are not the values' sums)."""
        a = self.values if values is None else values
        n, C, T = self.data.shape
        if a.shape[2] != T:
            if self.windows is not None:
                a = np.repeat(a, self.windows, axis=2)[:, :, :T]
            else:
                a = np.broadcast_to(a, (a.shape[0], a.shape[1], T, a.shape[3]))
        return np.broadcast_to(a, (n, C, T, a.shape[3]))

    def class_index(self, label: Any = None, sample: int = 0) -> int:
        """The index of class ``label`` (default: the class ``predict_proba`` rates highest for ``sample``)."""
        if label is None:
            return int(np.argmax(self.outputs[sample]))
        for k, c in enumerate(self.classes):
            if c == label or str(c) == str(label):
                return k
        raise InputError(f"class {label!r} is not one of the estimator's classes {list(self.classes)}")

    def plot(self, sample: int = 0, label: Any = None, *, figsize: tuple[float, float] | None = None) -> Any:
        """Per-channel saliency over time: one panel per channel, the series drawn over its values for
        class ``label`` (default: the predicted class) as a red (raises) / blue (lowers) band. Returns a
        matplotlib Figure (made outside pyplot)."""
        from ..plots.style import DIVERGING, INK, new_figure

        n, C, T = self.data.shape
        if not 0 <= sample < n:
            raise InputError(f"sample={sample}: the explanation holds {n} samples")
        k = self.class_index(label, sample)
        grid = self.per_step()[sample, :, :, k]
        scale = float(np.abs(grid).max()) or 1.0
        fig = new_figure(figsize or (7.0, 1.0 + 1.1 * C))
        axes = fig.subplots(C, 1, sharex=True, squeeze=False)[:, 0]
        names = self.channel_names or [f"channel {c}" for c in range(C)]
        image = None
        for c, ax in enumerate(axes):
            series = self.data[sample, c]
            low, high = float(series.min()), float(series.max())
            pad = 0.05 * (high - low or 1.0)
            image = ax.imshow(
                grid[c][None], aspect="auto", cmap=DIVERGING, vmin=-scale, vmax=scale,
                extent=(-0.5, T - 0.5, low - pad, high + pad), origin="lower", interpolation="nearest",
            )  # fmt: skip
            ax.plot(np.arange(T), series, color=INK, linewidth=1.0)
            ax.set_ylabel(str(names[c]), rotation=0, ha="right", va="center", fontsize=9)
            ax.tick_params(labelsize=8)
        axes[-1].set_xlabel("time step")
        what = {"steps": "one value per step, all channels", "channels": "one value per channel", "cells": "per channel and step"}
        grouping = what.get(self.players, self.players) + (f", windows of {self.windows} steps" if self.windows else "")
        fig.suptitle(
            f"{self.estimator}, sample {sample}: class {self.classes[k]!s} (output {self.outputs[sample, k]:.3g}, "
            f"base {self.base_values[sample, k]:.3g})\n{self.method}, {grouping}",
            fontsize=10,
        )
        if image is not None:
            fig.colorbar(image, ax=list(axes), label="attribution", shrink=0.9)
        return fig


# -- the parts the adapters share --------------------------------------------------------------------------
def check_choices(method: str, players: str, windows: int | None) -> str:
    name = str(method).lower()
    if name not in METHODS:
        raise InputError(
            f"method={method!r}: choose 'auto' (DeepSHAP for a deep learner, else the Shapley mode), 'deepshap' or 'shapley'"
        )
    if players not in PLAYERS:
        raise InputError(f"players={players!r}: choose 'steps', 'channels' or 'cells' (each channel at each step)")
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, (int, np.integer)) or windows < 1):
        raise InputError(f"windows must be a positive number of steps per player, got {windows!r}")
    if windows is not None and players == "channels":
        raise InputError("windows= groups steps; players='channels' has one player per channel across every step")
    return name


def player_grid(players: str, windows: int | None, channels: int, steps: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Player ids shaped like one panel ``(channels, steps)``, and the grid ``(rows, columns)`` their
    values are laid out on: ``"steps"`` (1, T or windows), ``"channels"`` (C, 1), ``"cells"`` (C, T or windows)."""
    along_time = np.arange(steps) if windows is None else np.arange(steps) // int(windows)
    width = int(along_time[-1]) + 1
    if players == "steps":
        return np.broadcast_to(along_time[None], (channels, steps)).copy(), (1, width)
    if players == "channels":
        return np.broadcast_to(np.arange(channels)[:, None], (channels, steps)).copy(), (channels, 1)
    return (np.arange(channels)[:, None] * width + along_time[None]).astype(np.int64), (channels, width)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keras' progress bars (``model.predict`` inside ``predict_proba``) kept off the caller's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def check_equal(built: np.ndarray, truth: np.ndarray, estimator: str, what: str, dtype: str = "float32") -> None:
    """Refuse a function that is not the estimator's ``predict_proba``: every entry within the dtype's
    tolerance (:data:`rnnshap.engines.base.RTOL`) of ``max(1, |p|)``."""
    built, truth = np.asarray(built, np.float64), np.asarray(truth, np.float64)
    if built.shape != truth.shape:
        raise PredictMismatchError(
            f"{estimator}: the function rnnshap built from its network gives outputs of shape {built.shape}, "
            f"its {what} {truth.shape}: not explained. Use method='shapley' (the estimator's own {what}, from its forward)."
        )
    gap = np.abs(built - truth) / np.maximum(1.0, np.abs(truth))
    worst = float(gap.max(initial=0.0))
    if not worst <= RTOL[dtype]:
        raise PredictMismatchError(
            f"{estimator}: the function rnnshap built from its network differs from its {what} by {worst:.3g} "
            f"(more than {dtype} rounding, {RTOL[dtype]:g}): its {what} does something rnnshap does not rebuild, so the "
            f"values would not explain it. Use method='shapley' (the estimator's own {what}, from its forward)."
        )


def with_advice(error: RnnShapError, estimator: str, what: str) -> RnnShapError:
    """``error`` (DeepSHAP's refusal of an estimator's network) with a note naming the estimator and the
    answer that needs no network."""
    error.add_note(
        f"rnnshap's DeepSHAP cannot explain {estimator}'s network (above); method='shapley' explains its {what} from its "
        "forward alone (Shapley values with standard errors)."
    )
    return error


@contextlib.contextmanager
def deepshap_refusals(chosen: str, estimator: str, what: str) -> Iterator[None]:
    """DeepSHAP on the estimator's network, whose refusals are the caller's (an :class:`RnnShapError` with
    :func:`with_advice`'s note) unless the Shapley mode was chosen: it needs no network (DeepSHAP's pass is only its
    control variate), so there they are passed over and the code after the ``with`` runs the Shapley mode on the
    estimator's own outputs."""
    try:
        yield
    except PredictMismatchError:
        if chosen != "shapley":
            raise
    except RnnShapError as error:
        if chosen != "shapley":
            with_advice(error, estimator, what)
            raise


def explain_shapley(
    function: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    background: np.ndarray,
    *,
    players: str,
    windows: int | None,
    budget: int | None,
    random_state: Any,
    batch_size: int,
    progress: bool | None,
    deep: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Shapley mode on panels: ``function`` (numpy ``(m, C, T)`` → ``(m, K)``) by
    :class:`rnnshap.ShapleyExplainer`, or ``deep`` (a :class:`rnnshap.DeepExplainer` of an equal
    function, whose DeepSHAP values then serve as the control variate). Returns values and standard
    errors on the players' grid ``(n, rows, columns, K)``, base values, outputs, exact, n_evals."""
    from ..shapley import ShapleyExplainer

    n, C, T = X.shape
    ids, (rows, columns) = player_grid(players, windows, C, T)
    explainer = deep if deep is not None else ShapleyExplainer(function, background, batch_size=batch_size, progress=progress)
    estimate = explainer.shapley_values(X, ids, budget, random_state=random_state, batch_size=batch_size, progress=progress)
    values = np.asarray(estimate.values, np.float64)
    k = values.size // (n * rows * columns)
    shape = (n, rows, columns, k)
    return (
        values.reshape(shape),
        np.asarray(estimate.stderr, np.float64).reshape(shape),
        np.asarray(estimate.base_values, np.float64).reshape(n, k),
        np.asarray(estimate.outputs, np.float64).reshape(n, k),
        np.asarray(estimate.exact),
        np.asarray(estimate.n_evals),
    )


def shapley_on_own(
    estimator: Any,
    own: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    background: np.ndarray,
    outputs: np.ndarray,
    what: str,
    names: list[str] | None,
    said: str,
    **options: Any,
) -> ClassifierExplanation:
    """The Shapley mode on the estimator's own ``what`` (``own``: numpy panels → its outputs), no network needed;
    ``said``: the background, as the result states it; ``options``: those of :func:`explain_shapley`."""

    def function(a: np.ndarray) -> np.ndarray:
        return own(np.ascontiguousarray(a))

    values, stderr, base, _, exact, n_evals = explain_shapley(function, X, background, **options)
    return explanation(estimator, X, values, base, outputs, "shapley", players=options["players"], windows=options["windows"],
                       stderr=stderr, exact=exact, n_evals=n_evals, function=what, channel_names=names,
                       background=said)  # fmt: skip


def as_outputs(a: Any, n: int) -> np.ndarray:
    """``predict_proba``'s (n, K) or ``predict``'s (n,) as float64 (n, K)."""
    return np.asarray(a, np.float64).reshape(n, -1)


def own_outputs(
    truth: Callable[[np.ndarray], np.ndarray], panel: np.ndarray, estimator: str, what: str, which: str
) -> np.ndarray:
    """``truth(panel)``, the estimator's own ``what`` on ``which`` ("X", "background"), with the toolkit's refusals
    given as rnnshap's errors (the toolkit's as their cause): an estimator not fitted, panels with missing values
    it does not take."""
    try:
        return truth(panel)
    except RnnShapError:
        raise
    except Exception as error:
        if any(k.__name__ == "NotFittedError" for k in type(error).__mro__):  # aeon's (scikit-learn's), skbase's
            raise ModelStateError(
                f"{estimator} is not fitted: its {what} refuses to run ({error}). Fit it first (clf.fit(X_train, y_train)) "
                "and explain the fitted estimator"
            ) from error
        missing = np.flatnonzero(np.isnan(panel).any(axis=(1, 2)))
        if missing.size:
            raise InputError(
                f"{which} holds missing values (NaN) in panel(s) {missing[:5].tolist()}, and {estimator}'s {what} refuses "
                f"them ({type(error).__name__}: {error}). Fill them the way the estimator's training panels were (for "
                "instance by interpolation along time), or explain an estimator that takes missing values"
            ) from error
        raise


def read_panels(
    panels: Callable[..., tuple[np.ndarray, list[str] | None]],
    X: Any,
    background: Any,
    channels: int | None,
    steps: int | None,
    estimator: str,
    toolkit: str,
) -> tuple[np.ndarray, list[str] | None, np.ndarray]:
    """``X`` and ``background`` read by the toolkit's ``panels``, each checked against what the estimator was fitted
    on: the float64 panels, their channel names and the reference panels (``X`` itself where there is no background)."""
    x, names = panels(X)
    check_fitted(x.shape, channels, steps, estimator)
    given = None if background is None else panels(background, "background")[0]
    if given is not None:
        check_fitted(given.shape, channels, steps, estimator, "background")
    return x, names, panels_or_own(x, given, toolkit)


def outputs_on_both(
    own: Callable[[np.ndarray], np.ndarray], x: np.ndarray, reference: np.ndarray, background: Any, estimator: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """The estimator's own ``what`` (``own``: numpy panels → its outputs) as float64 (n, K) on ``x`` and on the
    reference panels, with the toolkit's refusals given as rnnshap's errors (:func:`own_outputs`)."""

    def truth(panel: np.ndarray) -> np.ndarray:
        return as_outputs(own(panel), len(panel))

    outputs = own_outputs(truth, x, estimator, what, "X")
    return outputs, own_outputs(truth, reference, estimator, what, "X" if background is None else "background")


def check_fitted(shape: tuple[int, ...], channels: int | None, steps: int | None, estimator: str, what: str = "X") -> None:
    """Refuse panels whose channels or length differ from what the estimator was fitted on, naming the panels
    (a 2-D ``(n, time)`` array is one channel: given to a multivariate estimator, it is ``X`` that does not fit)."""
    C, T = shape[1:]
    if (channels is None or channels == C) and (steps is None or steps == T):
        return
    fitted = f"{channels} channel{'s' * (channels != 1)}" if channels is not None else f"{C} channels"
    raise InputError(
        f"{what} holds {C} channel{'s' * (C != 1)} of {T} steps per panel (read as (n, channels, time); a 2-D array is "
        f"(n, time), one channel), and {estimator} was fitted on {fitted}"
        + (f" of {steps} steps" if steps else "")
        + f": give {what} in the layout the estimator was fitted on"
    )


def labels(estimator: Any, k: int) -> list[Any]:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return ["prediction"] if k == 1 else list(range(k))
    return [c.item() if hasattr(c, "item") else c for c in np.asarray(classes)]


def background_said(reference: np.ndarray, background: Any) -> str:
    """The background a classifier's result states: the panels given, or the explained panels themselves."""
    return stated("classifiers", len(reference), background is not None)


def explanation(
    estimator: Any, X: np.ndarray, values: np.ndarray, base: np.ndarray, outputs: np.ndarray, method: str, **extra: Any
) -> ClassifierExplanation:
    return ClassifierExplanation(
        values=values, base_values=base, outputs=outputs, classes=labels(estimator, outputs.shape[1]), data=X, method=method,
        estimator=type(estimator).__name__, **extra,
    )  # fmt: skip


__all__: Sequence[str] = ["ClassifierExplanation", "PredictMismatchError", "VERIFIED", "check_version"]
