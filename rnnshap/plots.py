"""Plots of rnnshap's attributions: per sequence, over time, over many samples, and per token.

Every function takes rnnshap's numpy output (``explainer.shap_values(X)``, shape ``(N, T, F)`` or
``(N, T, F, K)`` with K outputs) or a ``shap.Explanation`` (``explainer(X)``, with or without a
trailing output axis for a model with one output). Pick one sequence of a batch with ``sample=``
and one output with ``output=`` (an index, a tuple of indices for a sequence output, or an output
name of an Explanation).

The matplotlib functions return a ``matplotlib.figure.Figure`` made without pyplot: they never
change pyplot's current figure, so a ``shap.plots.*`` call after them draws on a figure of its own.
Save one with ``fig.savefig(...)``; a notebook shows it as the cell's value. The single-panel
plots also draw into an ``ax=`` of yours (made with pyplot, say). matplotlib is imported only when
one of them is called (``pip install 'rnnshap[plot]'``). :func:`token_html` needs nothing beyond
numpy.

Long and wide sequences: ``steps=`` draws a window of time steps (``slice(100, 200)`` or
``(100, 200)``; tick labels keep the original step numbers), ``max_features=`` keeps the features
with the largest mean |φ| (the others summed into one row), ticks are thinned to round step
numbers, and colour limits are a high percentile of |φ| (``percentile=``), the colour bar saying
when colours are clipped.

Colours: red raises the output, blue lowers it, on a diverging scale centred at zero. Titles of
one sequence's plots read ``f(x) = E[f] + Σφ = …`` with the numbers (with numpy output, pass
``base_value=explainer.expected_value`` for E[f]).
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from .summary import Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "beeswarm_over_time",
    "flatten",
    "global_importance",
    "heatmap",
    "output_map",
    "over_time",
    "signal",
    "token_html",
]

#: the ends of matplotlib's ``RdBu_r``, used for signed bars and token highlights
POSITIVE = (178, 24, 43)
NEGATIVE = (33, 102, 172)
DIVERGING = "RdBu_r"
#: the colour map of input values (beeswarm colours): deliberately not red/blue, which mean the sign of φ
VALUES = "viridis"
IMPORTANCE = "Purples"
BAR = "#5e4fa2"
INK = "#222222"
GRID = "#dddddd"

Output = Union[int, str, tuple, None]
Steps = Union[slice, tuple, list, None]

TICK_SIZE = 9.0


# -- helpers ------------------------------------------------------------------------------------------------------------
def _figure(figsize: tuple[float, float]) -> Figure:
    """A Figure outside pyplot (pyplot's current figure stays what it was), with an Agg canvas."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError("rnnshap's plots need matplotlib: pip install 'rnnshap[plot]'") from error
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _is_explanation(obj: Any) -> bool:
    """A shap.Explanation or a subclass of it (rnnshap's SequenceExplanation), without importing shap."""
    return (
        any(klass.__name__ == "Explanation" for klass in type(obj).__mro__)
        and hasattr(obj, "values")
        and hasattr(obj, "base_values")
    )


@dataclass
class _Parts:
    """What a plot needs from its argument, numpy output or shap.Explanation alike."""

    values: np.ndarray
    data: np.ndarray | None
    output_axes: int | None  # trailing output axes of values, when known (Explanations)
    time_labels: list[str] | None
    feature_names: list[str] | None
    output_names: list[str] | None
    base_values: np.ndarray | None
    explanation: bool = False


def _unpack(values: Any, data: Any = None, base_value: Any = None) -> _Parts:
    if not _is_explanation(values):
        return _Parts(
            np.asarray(values, dtype=np.float64),
            None if data is None else np.asarray(data),
            None,
            None,
            None,
            None,
            None if base_value is None else np.asarray(base_value, dtype=np.float64),
        )
    explanation = values
    array = np.asarray(explanation.values, dtype=np.float64)
    if data is None and explanation.data is not None:
        data = np.asarray(explanation.data)
    elif data is not None:
        data = np.asarray(data)
    base = explanation.base_values if base_value is None else base_value
    base = None if base is None else np.asarray(base, dtype=np.float64)
    if data is not None and data.ndim <= array.ndim:
        output_axes: int | None = array.ndim - data.ndim
    elif base is not None:
        output_axes = max(base.ndim - 1, 0)  # a batch: one base value per sample (and output)
    else:
        output_axes = None
    time_labels, feature_names = _names(explanation.feature_names)
    names = explanation.output_names
    output_names = [str(name) for name in names] if isinstance(names, (list, tuple, np.ndarray)) and np.ndim(names) == 1 else None
    axes, labels = getattr(explanation, "axes", None), getattr(explanation, "labels", None)
    if isinstance(axes, list) and len(axes) == array.ndim and all(isinstance(a, str) for a in axes):
        # rnnshap's SequenceExplanation names its axes: no guessing which are outputs, times, features
        outputs = [a for a in axes if a.startswith("output")]
        output_axes = len(outputs)
        if isinstance(labels, dict):
            time_labels = _strings(labels.get("time")) or time_labels
            feature_names = _strings(labels.get("feature")) or feature_names
            output_names = (_strings(labels.get(outputs[-1])) if outputs else None) or output_names
    return _Parts(array, data, output_axes, time_labels, feature_names, output_names, base, True)


def _strings(labels: Any) -> list[str] | None:
    return None if labels is None else [str(label) for label in labels]


def _names(names: Any) -> tuple[list[str] | None, list[str] | None]:
    """(time labels, feature names) from an Explanation's feature_names."""
    if names is None:
        return None, None
    array = np.asarray(names, dtype=object)
    if array.ndim == 1:
        return None, [str(name) for name in array]
    if array.ndim >= 2:
        grid = array.reshape(-1, *array.shape[-2:])[0]
        split = _split_grid(grid)
        if split is not None:
            return split
    return None, None


def _split_grid(grid: np.ndarray) -> tuple[list[str], list[str]] | None:
    """Time labels and feature names of a (T, F) grid of ``"time:feature"`` names, or None."""
    texts = [[str(name) for name in row] for row in grid]
    for k in range(texts[0][0].count(":")):  # the time label may itself hold colons: try every split
        pieces = [[name.split(":") for name in row] for row in texts]
        if any(len(p) <= k + 1 for row in pieces for p in row):
            return None
        times = [[":".join(p[: k + 1]) for p in row] for row in pieces]
        features = [[":".join(p[k + 1 :]) for p in row] for row in pieces]
        if all(len(set(row)) == 1 for row in times) and all(row == features[0] for row in features):
            return [row[0] for row in times], features[0]
    return None


def _output_index(parts: _Parts, output: Any) -> tuple[int, ...]:
    if isinstance(output, str):
        if parts.output_names is None or output not in parts.output_names:
            raise ValueError(f"no output named {output!r}; the outputs are {parts.output_names}")
        return (parts.output_names.index(output),)
    if isinstance(output, tuple):
        return tuple(int(i) for i in output)
    return (int(output),)


def _output_label(parts: _Parts, index: tuple[int, ...]) -> str:
    if len(index) == 1 and parts.output_names:
        return parts.output_names[index[0]]
    return f"output {index[0] if len(index) == 1 else index}"


def _choose_output(parts: _Parts, values: np.ndarray, output: Any) -> tuple[np.ndarray, tuple[int, ...] | None, str | None]:
    """``values`` with the chosen output taken (or a lone output axis of size 1 dropped)."""
    axes = parts.output_axes
    if output is not None:
        if axes == 0:
            if output in (0, -1):  # a single-output model without an output axis: nothing to choose
                return values, None, None
            raise ValueError("this explanation has one output and no output axis: leave output=None")
        index = _output_index(parts, output)
        where: tuple[Any, ...] = (Ellipsis, *index)
        return values[where], index, _output_label(parts, index)
    while axes and values.shape[-1] == 1:
        values, axes = values[..., 0], axes - 1
    if axes:
        raise ValueError(f"the explanation has {values.shape[-1]} outputs: choose one with output=")
    return values, None, None


def _pick(
    parts: _Parts, sample: int | None, output: Output, ndims: tuple[int, ...], what: str
) -> tuple[np.ndarray, np.ndarray | None, str | None, float | None]:
    """One sequence's attributions (with ``ndim`` in ``ndims``), its input, the output's label and E[f]."""
    values, index, label = _choose_output(parts, parts.values, output)
    data = parts.data
    if sample is not None:
        values = values[sample]
        if data is not None and data.ndim >= max(values.ndim, 2) and data.shape[0] == parts.values.shape[0]:
            data = data[sample]
    if values.ndim - 1 in ndims and values.shape[-1] == 1 and parts.output_axes is None:
        values = values[..., 0]  # numpy output of a single-output model with a trailing output axis
    if values.ndim not in ndims:
        raise ValueError(
            f"{what} draws one sequence, shape {' or '.join(_shape_names(n) for n in ndims)}, and got values of shape "
            f"{tuple(parts.values.shape)}: pick a sequence of a batch with sample=i and an output with output=k "
            "(rnnshap's output is (N, T, F) per input, with a last axis of K outputs for a model with several)."
        )
    if data is not None and data.shape != values.shape:
        if data.ndim == values.ndim + 1 and sample is None:
            raise ValueError(f"data has shape {data.shape}, a batch: pick its sequence with sample=")
        raise ValueError(f"data of shape {data.shape} does not match the attributions' shape {values.shape}")
    return values, data, label, _base(parts, sample, index)


def _base(parts: _Parts, sample: int | None, index: tuple[int, ...] | None) -> float | None:
    """E[f] of the drawn sequence and output, when known."""
    base = parts.base_values
    if base is None:
        return None
    if parts.explanation:
        axes = parts.output_axes if parts.output_axes is not None else max(base.ndim - 1, 0)
        if base.ndim == axes + 1:  # one per sample
            if sample is None:
                return None
            base = base[sample]
    if index is not None and base.ndim >= len(index):
        where: tuple[Any, ...] = (Ellipsis, *index)
        base = base[where]
    if base.size != 1:
        if not parts.explanation:
            raise ValueError(f"base_value has {base.size} values: give E[f] of the drawn output, or choose it with output=")
        return None
    return float(base.reshape(()))


def _shape_names(ndim: int) -> str:
    return {1: "(T,)", 2: "(T, F)", 3: "(N, T, F)"}.get(ndim, f"{ndim}-D")


def _labels(given: Sequence[Any] | None, found: list[str] | None, size: int, prefix: str, what: str) -> list[str]:
    if given is not None:
        if len(given) != size:
            raise ValueError(f"{len(given)} {what} for an axis of {size}")
        return [str(label) for label in given]
    if found is not None and len(found) == size:
        return found
    return [f"{prefix}{i}" for i in range(size)]


def _window(steps: Steps, count: int) -> np.ndarray:
    """The indices of the time steps to draw: all, or ``steps`` as a slice or ``(start, stop)``."""
    if steps is None:
        return np.arange(count)
    if isinstance(steps, slice):
        chosen = np.arange(count)[steps]
    elif isinstance(steps, (tuple, list)) and len(steps) == 2:
        chosen = np.arange(count)[slice(*steps)]
    else:
        raise ValueError(f"steps must be a slice or (start, stop), got {steps!r}")
    if chosen.size == 0:
        raise ValueError(f"steps={steps!r} selects no time step of {count}")
    return chosen


def _window_text(window: np.ndarray, count: int, times: list[str]) -> str:
    if len(window) == count:
        return ""
    return f"steps {times[window[0]]}–{times[window[-1]]} of {count}"


def _top(importance: np.ndarray, max_features: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, rest) feature indices: all in input order when they fit, else the ``max_features``
    largest by importance, largest first. A single left-over feature is kept rather than summed."""
    count = len(importance)
    if max_features is None or count <= max_features + 1:
        return np.arange(count), np.arange(0)
    if max_features < 1:
        raise ValueError(f"max_features must be at least 1, got {max_features}")
    order = np.argsort(-importance, kind="stable")
    return order[:max_features], np.sort(order[max_features:])


def _nice_step(count: int, max_ticks: int) -> int:
    if count <= max_ticks:
        return 1
    raw = count / max(max_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return int(factor * magnitude)
    return int(10 * magnitude)


def _set_ticks(
    ax: Axes,
    axis: str,
    labels: list[str],
    inches: float,
    *,
    index: np.ndarray | None = None,
    coords: np.ndarray | None = None,
    fontsize: float = TICK_SIZE,
) -> None:
    """Tick labels that never overlap: all when they fit in ``inches``, else thinned (to round step
    numbers when ``index`` gives each label's step), slanted when long."""
    count = len(labels)
    if count == 0:
        return
    coords = np.arange(count) if coords is None else np.asarray(coords)
    longest = max(len(s) for s in labels)
    char, line = 0.6 * fontsize / 72, 1.6 * fontsize / 72
    rotate = False
    if axis == "x":
        slot = longest * char + 0.12
        if inches / slot < (min(count, 5) if index is not None else count):  # names slant before they thin out
            rotate, slot = True, line * 1.1
    else:
        slot = line
    max_ticks = max(2, int(inches / slot))
    if index is not None:
        step = _nice_step(count, max_ticks)
        positions = np.flatnonzero(np.asarray(index) % step == 0)
        if positions.size == 0:
            positions = np.array([0])
    else:
        positions = np.arange(0, count, max(1, math.ceil(count / max_ticks)))
    shown = [labels[i] for i in positions]
    if axis == "x":
        ax.set_xticks(coords[positions])
        ax.set_xticklabels(
            shown, rotation=45 if rotate else 0, ha="right" if rotate else "center", rotation_mode="anchor", fontsize=fontsize
        )
    else:
        ax.set_yticks(coords[positions])
        ax.set_yticklabels(shown, fontsize=fontsize)


def _time_axis(time_axis: str, steps: int, features: int) -> str:
    if time_axis == "auto":
        return "x" if steps > 16 and steps > 2 * features else "y"
    if time_axis not in ("x", "y"):
        raise ValueError(f"time_axis must be 'x', 'y' or 'auto', got {time_axis!r}")
    return time_axis


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def _symmetric_limit(values: np.ndarray) -> float:
    limit = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return limit if limit > 0 else 1.0


@dataclass
class _Scale:
    """A colour limit: a high percentile of |values| unless that is close to the largest."""

    limit: float
    largest: float
    percentile: float | None  # the percentile the limit is, None when given or the largest

    @property
    def clipped(self) -> bool:
        return self.largest > self.limit * (1 + 1e-12)

    def label(self, what: str, symmetric: bool = True) -> str:
        if not self.clipped:
            return what
        source = f" (the {self.percentile:g}th percentile)" if self.percentile is not None else ""
        bound = f"±{_plain(self.limit)}" if symmetric else _plain(self.limit)
        return f"{what}\nclipped at {bound}{source}; largest {_plain(self.largest)}"


#: below this many cells a percentile is no better than the largest value
MIN_CELLS_TO_CLIP = 100


def _scale(values: np.ndarray, vmax: float | None, percentile: float | None) -> _Scale:
    magnitude = np.abs(values[np.isfinite(values)])
    largest = float(magnitude.max()) if magnitude.size else 0.0
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be positive, got {vmax}")
        return _Scale(float(vmax), largest, None)
    if percentile is None or percentile >= 100 or magnitude.size < MIN_CELLS_TO_CLIP:
        return _Scale(largest if largest > 0 else 1.0, largest, None)
    limit = float(np.percentile(magnitude, percentile))
    if limit >= 0.9 * largest or limit <= 0:  # nothing worth clipping
        return _Scale(largest if largest > 0 else 1.0, largest, None)
    return _Scale(limit, largest, float(percentile))


def _extend(values: np.ndarray, low: float, high: float) -> str:
    finite = values[np.isfinite(values)]
    below, above = bool((finite < low).any()), bool((finite > high).any())
    return "both" if below and above else "min" if below else "max" if above else "neither"


def _plain(value: float) -> str:
    """A number with 3 significant digits, a true minus sign, no exponent for everyday sizes."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if not 1e-4 <= abs(value) < 1e6:
        return f"{value:.2e}".replace("-", "−")
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}".replace("-", "−")


def _format(value: float, scale: float) -> str:
    """A cell's value, to 2 significant digits of the colour limit."""
    decimals = int(np.clip(1 - np.floor(np.log10(scale)), 0, 6)) if scale > 0 else 2
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text.replace("-", "−")


def _numbers(*values: float) -> Any:
    """A formatter that writes all of ``values`` alike: 3 significant digits of the largest (at least
    2 of the smallest non-zero one), a true minus sign."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return lambda v: f"{v:g}".replace("-", "−")
    scale = max(finite)
    if not 1e-4 <= scale < 1e6:
        return lambda v: f"{v:.3g}".replace("-", "−")
    decimals = max(2 - math.floor(math.log10(scale)), 1 - math.floor(math.log10(min(finite))))
    decimals = int(np.clip(decimals, 0, 6))
    return lambda v: ("0" if round(v, decimals) == 0 else f"{v:.{decimals}f}").replace("-", "−")


def _identity(base: float | None, total: float) -> str:
    """The title convention: ``f(x) = E[f] + Σφ = 0.12 + 0.85 = 0.97`` (``Σφ = f(x) − E[f] = …`` without E[f])."""
    if base is None:
        return f"Σφ = f(x) − E[f] = {_plain(total)}"
    fx = base + total
    number = _numbers(base, total, fx)
    return f"f(x) = E[f] + Σφ = {number(base)} {'+' if total >= 0 else '−'} {number(abs(total))} = {number(fx)}"


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``inches`` at ``fontsize``: first after a ``": "``, then
    between words (existing line breaks kept)."""
    width = max(20, int(inches * 72 / (0.58 * fontsize)))
    lines: list[str] = []
    for line in text.split("\n"):
        if len(line) > width and ": " in line:
            head, tail = line.split(": ", 1)
            lines += [head + ":", tail]
        else:
            lines.append(line)
    return "\n".join(textwrap.fill(line, width, break_long_words=False) for line in lines)


def _title(fig: Figure, ax: Axes | None, text: str, fontsize: float = 11.0) -> None:
    """The figure's title, or the axes' title when drawing into the caller's axes."""
    if ax is not None:
        box = ax.get_position()
        ax.set_title(_wrap(text, box.width * fig.get_figwidth(), fontsize), fontsize=fontsize)
    else:
        fig.suptitle(_wrap(text, fig.get_figwidth() - 0.2, fontsize), fontsize=fontsize)


def _style(ax: Axes, grid: Any = None) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid:
        ax.grid(axis=grid, color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)


def _frame(ax: Axes) -> None:
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_color("#bbbbbb")
        spine.set_linewidth(0.8)


def _own_figure(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = _figure(figsize)
    return fig, fig.add_subplot()


def _batch(parts: _Parts, output: Any, what: str) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(N, T, F) attributions of several samples for one output (one per sample allowed), their inputs and a label."""
    phi, data = parts.values, parts.data
    label = None
    if output is not None and not isinstance(output, (int, np.integer, str, tuple)):
        chosen = np.asarray(output, dtype=np.int64)
        if chosen.shape != (phi.shape[0],):
            raise ValueError(f"output has shape {chosen.shape}: give one index, or one per sample ({phi.shape[0]})")
        if parts.output_axes == 0:
            raise ValueError("this explanation has one output and no output axis: leave output=None")
        phi = phi[np.arange(phi.shape[0]), ..., chosen]
        label = "each sample's chosen output"
    else:
        phi, _, label = _choose_output(parts, phi, output)
    if parts.output_axes is None and phi.ndim == 4 and phi.shape[-1] == 1:
        phi = phi[..., 0]
    if phi.ndim == 2:
        phi = phi[:, :, None]
        if data is not None and data.ndim == 2:
            data = data[:, :, None]
    if phi.ndim != 3:
        raise ValueError(
            f"{what} needs attributions of several sequences, (N, T, F) or (N, T), and got shape {tuple(parts.values.shape)}"
            " after choosing the output: for a model with several outputs pass output=k."
        )
    if data is not None and data.shape != phi.shape:
        data = None if data.size != phi.size else data.reshape(phi.shape)
    return phi, data, label


# -- plots of one sequence ----------------------------------------------------------------------------------------------
def heatmap(
    values: Any,
    data: Any = None,
    *,
    sample: int | None = None,
    output: Output = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    steps: Steps = None,
    max_features: int | None = 20,
    base_value: Any = None,
    title: str | None = None,
    annotate: bool | None = None,
    time_axis: str = "auto",
    vmax: float | None = None,
    percentile: float | None = 99.0,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Time × feature heatmap of one sequence's attributions, with its input beside it.

    Args:
        values: attributions of one sequence, (T, F), or of a batch (N, T, F) with ``sample``, with a
            last output axis (…, K) chosen by ``output``; or a shap.Explanation.
        data: the input, same shape as ``values`` without the output axis (an Explanation's own
            data by default). Drawn in grey beside the attributions when given.
        sample: which sequence of a batch.
        output: which output (index, tuple of indices, or name for an Explanation with output names).
        feature_names, time_labels: axis labels (default: the Explanation's, else f0…, 0…).
        steps: a window of time steps, ``slice(a, b)`` or ``(a, b)``.
        max_features: draw the features with the largest mean |φ| over the drawn steps, largest
            first, and sum the others into one row; ``None`` draws all.
        base_value: E[f] for the title, with numpy output (``explainer.expected_value``; indexed
            by ``output``). An Explanation brings its own.
        title: the figure title (default: which output, and ``f(x) = E[f] + Σφ`` with the numbers).
        annotate: write each cell's value (default: when there are at most 100 cells).
        time_axis: ``"y"`` (time runs down the rows), ``"x"`` (time runs left to right) or
            ``"auto"``: ``"x"`` for sequences much longer than they are wide, else ``"y"``.
        vmax: the colour limit (default: the ``percentile`` of |φ|, or the largest |φ| when that
            is within 10 % of it; pass a common ``vmax`` to compare sequences).
        ax: draw the attributions (without the input) into this axes.
    """
    parts = _unpack(values, data, base_value)
    phi, x, label, base = _pick(parts, sample, output, (1, 2), "heatmap")
    if phi.ndim == 1:
        phi, x = phi[:, None], None if x is None else x[:, None]
    count, features = phi.shape
    times = _labels(time_labels, parts.time_labels, count, "", "time labels")
    names = _labels(feature_names, parts.feature_names, features, "f", "feature names")
    window = _window(steps, count)
    part = phi[window]
    kept, rest = _top(np.abs(part).mean(0), max_features)
    shown = part[:, kept]
    row_names = [names[j] for j in kept]
    shown_x = None if x is None or ax is not None else x[window][:, kept].astype(np.float64)
    if rest.size:
        shown = np.concatenate([shown, part[:, rest].sum(1, keepdims=True)], axis=1)
        row_names.append(f"Σ {rest.size} others")
        if shown_x is not None:
            shown_x = np.concatenate([shown_x, np.full((len(window), 1), np.nan)], axis=1)
    shown_times = [times[t] for t in window]
    time_axis = _time_axis(time_axis, len(window), shown.shape[1])
    grid = shown if time_axis == "y" else shown.T
    grid_x = None if shown_x is None else (shown_x if time_axis == "y" else shown_x.T)
    height, width = grid.shape
    panels = 1 if grid_x is None else 2
    if time_axis == "y":
        cell = float(np.clip(5.0 / max(height, width), 0.24, 0.6))
        map_w, map_h = width * cell, height * cell
        size = (panels * (map_w + 1.9) + 0.3, map_h + 1.9)
    else:
        row = float(np.clip(3.6 / height, 0.2, 0.5))
        map_w, map_h = float(np.clip(len(window) * 0.45, 5.0, 12.5)), height * row
        size = (map_w + 3.4, panels * (map_h + 0.55) + 1.7)
    if figsize is None:
        figsize = (float(np.clip(size[0], 5.0, 16.0)), float(np.clip(size[1], 3.0, 16.0)))
    if ax is None:
        fig = _figure(figsize)
        if panels == 1:
            axes = [fig.add_subplot()]
        elif time_axis == "y":
            first = fig.add_subplot(1, 2, 1)
            axes = [first, fig.add_subplot(1, 2, 2, sharey=first)]
        else:
            first = fig.add_subplot(2, 1, 1)
            axes = [first, fig.add_subplot(2, 1, 2, sharex=first)]
        map_w, map_h = (figsize[0] - 0.3) / panels - 1.9, figsize[1] - 1.9
        if time_axis == "x":
            map_w, map_h = figsize[0] - 3.4, (figsize[1] - 1.7) / panels - 0.55
    else:
        fig, axes = ax.figure, [ax]  # type: ignore[assignment]
        box = ax.get_position()
        map_w, map_h = box.width * fig.get_figwidth() * 0.8, box.height * fig.get_figheight()
    aspect: Any = "equal" if time_axis == "y" and max(height, width) <= 4 * min(height, width) else "auto"
    ylabel, xlabel = ("time step", "feature") if time_axis == "y" else ("feature", "time step")
    if grid_x is not None:
        panel = axes[0]
        finite = grid_x[np.isfinite(grid_x)]
        image = panel.imshow(
            grid_x, cmap="Greys", aspect=aspect, interpolation="nearest",
            vmin=float(finite.min()) if finite.size else 0.0, vmax=float(finite.max()) if finite.size else 1.0,
        )  # fmt: skip
        panel.set_title("input x", fontsize=10)
        fig.colorbar(image, ax=panel, shrink=0.9, label="input value", aspect=25)
    panel = axes[-1]
    scale = _scale(grid, vmax, percentile)
    image = panel.imshow(grid, cmap=DIVERGING, vmin=-scale.limit, vmax=scale.limit, aspect=aspect, interpolation="nearest")
    panel.set_title("attribution φ", fontsize=10)
    fig.colorbar(
        image, ax=panel, shrink=0.9, aspect=25, extend=_extend(grid, -scale.limit, scale.limit),
        label=scale.label("φ (red raises the output, blue lowers it)"),
    )  # fmt: skip
    cell_w, cell_h = map_w / width, map_h / height
    if annotate is None:
        annotate = height * width <= 100 and min(cell_w, cell_h) >= 0.28
    if annotate:
        texts = [[_format(v, scale.limit) for v in row] for row in grid]
        longest = max(len(t) for row in texts for t in row)
        size_pt = float(np.clip(min(cell_w * 72 / (0.62 * longest + 0.4), cell_h * 72 * 0.45), 5.5, 10.0))
        for (i, j), value in np.ndenumerate(grid):
            if texts[i][j] != "0":
                panel.text(
                    j, i, texts[i][j], ha="center", va="center", fontsize=size_pt,
                    color="white" if abs(value) > 0.6 * scale.limit else INK,
                )  # fmt: skip
    index = np.asarray(window)
    for panel in axes:
        if time_axis == "y":
            _set_ticks(panel, "x", row_names, map_w)
            _set_ticks(panel, "y", shown_times, map_h, index=index)
        else:
            _set_ticks(panel, "x", shown_times, map_w, index=index)
            _set_ticks(panel, "y", row_names, map_h)
        panel.set_xlabel(xlabel)
        panel.set_ylabel(ylabel)
        _frame(panel)
    if panels == 2 and time_axis == "y":
        axes[1].set_ylabel("")
        axes[1].tick_params(labelleft=False)
    if panels == 2 and time_axis == "x":
        axes[0].set_xlabel("")
        axes[0].tick_params(labelbottom=False)
    if title is None:
        head = f"Attributions to {label}" if label else "Attributions"
        title = f"{head}: {_identity(base, float(phi.sum()))}"
        notes = [_window_text(window, count, times)]
        if len(window) < count:
            notes.append(f"Σφ there = {_plain(float(part.sum()))}")
        if rest.size:
            notes.append(f"top {len(kept)} of {features} features by mean |φ|")
        title += "".join(f"\n{n}" for n in ["; ".join(n for n in notes if n)] if n)
    _title(fig, ax, title)
    return fig


def over_time(
    values: Any,
    *,
    sample: int | None = None,
    output: Output = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    steps: Steps = None,
    base_value: Any = None,
    title: str | None = None,
    cumulative: bool = True,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Attribution per time step (summed over features) of one sequence, under its running total.

    ``values`` as for :func:`heatmap`: (T, F) or (T,) per sequence, a batch with ``sample``, an
    output axis with ``output``, or a shap.Explanation. The top panel (``cumulative=True``) is the
    running total: it starts at E[f] (0 when E[f] is unknown: pass ``base_value=``), adds each
    step's φ and ends at f(x). ``ax=`` draws the bars only, into your axes. ``feature_names`` is
    accepted for symmetry with the other plots (features are summed here).
    """
    del feature_names  # summed over
    parts = _unpack(values, None, base_value)
    phi, _, label, base = _pick(parts, sample, output, (1, 2), "over_time")
    per_step = phi.sum(-1) if phi.ndim == 2 else phi
    count = len(per_step)
    times = _labels(time_labels, parts.time_labels, count, "", "time labels")
    window = _window(steps, count)
    n = len(window)
    width = float(np.clip(n * 0.4 + 2.4, 6.0, 14.0))
    if figsize is None:
        figsize = (width, 5.2 if cumulative else 3.6)
    fig: Any
    if ax is not None:
        fig, bars_ax, total_ax = ax.figure, ax, None
    else:
        fig = _figure(figsize)
        if cumulative:
            total_ax = fig.add_subplot(2, 1, 1)
            bars_ax = fig.add_subplot(2, 1, 2, sharex=total_ax)
        else:
            total_ax, bars_ax = None, fig.add_subplot()
    positions = window.astype(np.float64)
    shown = per_step[window]
    colors = [_rgb(POSITIVE) if v >= 0 else _rgb(NEGATIVE) for v in shown]
    bars_ax.bar(positions, shown, color=colors, width=0.8 if n <= 60 else 1.0, linewidth=0)
    bars_ax.axhline(0.0, color="#444444", linewidth=0.8)
    from matplotlib.patches import Patch

    bars_ax.legend(
        handles=[Patch(color=_rgb(POSITIVE), label="raises the output"), Patch(color=_rgb(NEGATIVE), label="lowers it")],
        frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, borderaxespad=0.1,
    )  # fmt: skip
    bars_ax.set_ylabel("φ of the step\n(Σ over features)")
    bars_ax.set_xlabel("time step")
    bars_ax.set_xlim(positions[0] - 0.6, positions[-1] + 0.6)
    fig_w = fig.get_figwidth() if ax is None else ax.get_position().width * fig.get_figwidth()
    _set_ticks(bars_ax, "x", [times[t] for t in window], fig_w - 1.6, index=window, coords=positions)
    _style(bars_ax, "y")
    if total_ax is not None:
        start = 0.0 if base is None else base
        number = _numbers(start, float(per_step.sum()), start + float(per_step.sum()))
        running = start + np.concatenate([[0.0], np.cumsum(per_step)])  # running[t]: before step t
        xs = np.concatenate([[positions[0] - 0.5], positions + 0.5])
        ys = running[window[0] : window[-1] + 2]
        total_ax.plot(xs, ys, color=INK, linewidth=1.4, marker="o" if n <= 40 else None, markersize=3.5, drawstyle="default")
        total_ax.axhline(start, color="#888888", linewidth=0.9, linestyle="--")
        start_text = "E[f]" if base is not None else "start (E[f] not given)"
        end_gap = float(running[window[-1] + 1] - start)
        span = float(np.ptp(running[window[0] : window[-1] + 2])) or 1.0
        below = 0 <= end_gap < 0.15 * span  # at the right end, above the line unless the curve ends just above it
        total_ax.annotate(
            f"{start_text} = {number(start)}", (1.0, start), xycoords=("axes fraction", "data"), xytext=(-2, -3 if below else 3),
            textcoords="offset points", fontsize=9, color="#555555", ha="right", va="top" if below else "bottom",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0}, annotation_clip=False,
        )  # fmt: skip
        if window[-1] == count - 1:
            end = float(running[-1])
            end_text = "f(x)" if base is not None else "Σφ"
            total_ax.annotate(
                f"{end_text} =\n{number(end)}",
                (1.0, end),
                xycoords=("axes fraction", "data"),
                xytext=(5, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=9,
                fontweight="bold",
                color=INK,
                annotation_clip=False,
            )  # fmt: skip  (in the right margin, clear of the curve)
        total_ax.set_ylabel("running total\nE[f] + Σφ so far" if base is not None else "running Σφ")
        total_ax.tick_params(labelbottom=False)
        _style(total_ax, "y")
    if title is None:
        head = f"{label} over time" if label else "Attribution over time"
        title = f"{head}: {_identity(base, float(per_step.sum()))}"
        note = _window_text(window, count, times)
        if note:
            title += f"\n{note}; Σφ there = {_plain(float(shown.sum()))}"
    _title(fig, ax, title)
    return fig


def signal(
    values: Any,
    data: Any = None,
    *,
    sample: int | None = None,
    output: Output = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    steps: Steps = None,
    max_features: int | None = 8,
    base_value: Any = None,
    title: str | None = None,
    vmax: float | None = None,
    percentile: float | None = 99.0,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Each feature's raw signal over time, with the time steps behind it coloured by their φ.

    One panel per feature (the ``max_features`` with the largest mean |φ| over the drawn steps,
    largest first; all in input order when they fit): the input as a black line, each step's
    background red where that (step, feature) raises the output and blue where it lowers it, on
    one colour scale for all panels. Beside each name, that feature's Σφ. ``values`` and ``data``
    as for :func:`heatmap`; the input is needed (an Explanation carries it).
    """
    parts = _unpack(values, data, base_value)
    phi, x, label, base = _pick(parts, sample, output, (1, 2), "signal")
    if x is None:
        raise ValueError("signal draws the input: pass data= (the input of the explained sequences) or an Explanation")
    if phi.ndim == 1:
        phi, x = phi[:, None], x[:, None]
    x = x.astype(np.float64)
    count, features = phi.shape
    times = _labels(time_labels, parts.time_labels, count, "", "time labels")
    names = _labels(feature_names, parts.feature_names, features, "f", "feature names")
    window = _window(steps, count)
    n = len(window)
    kept, rest = _top(np.abs(phi[window]).mean(0), max_features)
    rows = len(kept)
    panel_h = float(np.clip(4.2 / rows, 0.62, 1.1))
    if figsize is None:
        figsize = (float(np.clip(n * 0.4 + 3.4, 6.5, 14.0)), float(np.clip(rows * panel_h + 1.8, 3.0, 16.0)))
    fig = _figure(figsize)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    scale = _scale(phi[window][:, kept], vmax, percentile)
    positions = window.astype(np.float64)
    image = None
    for panel, j in zip(axes, kept, strict=True):
        line = x[window, j]
        finite = line[np.isfinite(line)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = 0.12 * (high - low) if high > low else 0.5
        low, high = low - pad, high + pad
        image = panel.imshow(
            phi[window, j][None, :], cmap=DIVERGING, vmin=-scale.limit, vmax=scale.limit, aspect="auto",
            interpolation="nearest", extent=(positions[0] - 0.5, positions[-1] + 0.5, low, high), alpha=0.9, zorder=0,
        )  # fmt: skip
        panel.plot(positions, line, color="black", linewidth=1.3, marker="o" if n <= 40 else None, markersize=3, zorder=2)
        panel.set_ylim(low, high)
        panel.set_ylabel(
            f"{names[j]}\nΣφ {_plain(float(phi[:, j].sum()))}", rotation=0, ha="right", va="center", fontsize=9, labelpad=6
        )
        panel.yaxis.set_major_locator(_max_locator(2))
        panel.tick_params(axis="y", labelsize=7, length=2)
        panel.tick_params(axis="x", length=0)
        for spine in panel.spines.values():
            spine.set_color("#bbbbbb")
    axes[-1].set_xlim(positions[0] - 0.5, positions[-1] + 0.5)
    _set_ticks(axes[-1], "x", [times[t] for t in window], figsize[0] - 2.6, index=window, coords=positions)
    axes[-1].set_xlabel("time step")
    if image is not None:
        fig.colorbar(
            image, ax=list(axes), shrink=min(1.0, 3.0 / (rows * panel_h)), aspect=25,
            extend=_extend(phi[window][:, kept], -scale.limit, scale.limit),
            label=scale.label("φ of (step, feature)\nred raises, blue lowers"),
        )  # fmt: skip
    if title is None:
        head = f"Input and attributions to {label}" if label else "Input and attributions"
        title = f"{head}: {_identity(base, float(phi.sum()))}"
        notes = [_window_text(window, count, times)]
        if rest.size:
            notes.append(
                f"top {rows} of {features} features by mean |φ|; the other {rest.size} add {_plain(float(phi[:, rest].sum()))}"
            )
        if any(notes):
            title += "\n" + "; ".join(n for n in notes if n)
    _title(fig, None, title)
    return fig


def _max_locator(count: int) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(count)


def output_map(
    values: Any,
    *,
    sample: int | None = None,
    output: Output = None,
    outputs: Sequence[Any] | None = None,
    output_labels: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    steps: Steps = None,
    diagonal: bool | None = None,
    title: str | None = None,
    vmax: float | None = None,
    percentile: float | None = 99.0,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A forecaster's map: which input steps each explained output step draws on.

    For a model with a sequence output (N, T_out, K), explain some output steps with
    ``shap_values(X, outputs=[(t, k), ...])``: values (N, T, F, J), one column per listed output.
    Rows are the explained outputs, columns the input steps, each cell φ summed over the input's
    features; each row adds up to that output's f(x) − E[f] (written on the right).

    Args:
        values: (N, T, F, J) with ``sample``, or one sequence's (T, F, J); (T, J) for token inputs.
            The full layout of ``shap_values(X)`` for a sequence output, (N, T, F, T_out, K), takes
            ``output=k`` for the channel (rows are then every output step).
        outputs: the list given to ``shap_values(outputs=...)``: names the rows by output step.
        output_labels: row labels (default: from ``outputs``).
        diagonal: mark where the input step equals the output step (default: when ``outputs``
            tells the output steps).
    """
    if isinstance(values, Summary):
        raise ValueError("output_map draws one sequence; a Summary holds means: pass values of one sample")
    parts = _unpack(values)
    phi = parts.values
    if sample is not None:
        phi = phi[sample]
    label = None
    if output is not None:
        index = _output_index(parts, output)
        where: tuple[Any, ...] = (Ellipsis, *index)
        phi = phi[where]
        label = _output_label(parts, index)
    if phi.ndim == 4 and parts.output_axes is not None and parts.output_axes >= 2 and phi.shape[-1] == 1:
        phi = phi[..., 0]
    if phi.ndim == 3:
        per_step = phi.sum(1)  # (T_in, J)
    elif phi.ndim == 2:
        per_step = phi
    else:
        raise ValueError(
            f"output_map draws one sequence's attributions to several outputs, (T, F, J) or (T, J), and got shape "
            f"{tuple(parts.values.shape)}: pick a sequence of a batch with sample=i (and the channel of a (T_out, K) "
            "output with output=k)."
        )
    count, rows = per_step.shape
    output_steps: list[int] | None = None
    if outputs is not None:
        listed = [tuple(o) if isinstance(o, (tuple, list)) else (int(o),) for o in outputs]
        if len(listed) != rows:
            raise ValueError(f"{len(listed)} outputs for {rows} explained outputs in values")
        channels = {o[1:] for o in listed}
        output_steps = [int(o[0]) for o in listed]
        default = [str(o[0]) if len(channels) == 1 else str(o) for o in listed]
    elif output is not None or (parts.output_axes is not None and parts.output_axes >= 2):
        output_steps = list(range(rows))
        default = [str(t) for t in output_steps]
    else:
        default = [f"output {j}" for j in range(rows)]
    row_labels = _labels(output_labels, None, rows, "", "output labels") if output_labels is not None else default
    times = _labels(time_labels, parts.time_labels, count, "", "time labels")
    window = _window(steps, count)
    grid = per_step[window].T  # (J, n)
    n = len(window)
    if figsize is None:
        row_h = float(np.clip(4.5 / rows, 0.14, 0.45))
        figsize = (float(np.clip(n * 0.45 + 3.6, 6.5, 14.0)), float(np.clip(rows * row_h + 2.6, 4.0, 14.0)))
    fig, panel = _own_figure(ax, figsize)
    scale = _scale(grid, vmax, percentile)
    extent = (window[0] - 0.5, window[-1] + 0.5, rows - 0.5, -0.5)
    image = panel.imshow(
        grid, cmap=DIVERGING, vmin=-scale.limit, vmax=scale.limit, aspect="auto", interpolation="nearest", extent=extent
    )
    inches_w = figsize[0] - 3.0 if ax is None else ax.get_position().width * fig.get_figwidth()
    inches_h = figsize[1] - 2.4 if ax is None else ax.get_position().height * fig.get_figheight()
    _set_ticks(panel, "x", [times[t] for t in window], inches_w, index=window, coords=window.astype(np.float64))
    _set_ticks(panel, "y", row_labels, inches_h)
    panel.set_xlabel("input step")
    panel.set_ylabel("explained output step" if output_steps is not None else "explained output")
    _frame(panel)
    if diagonal is None:
        diagonal = output_steps is not None
    if diagonal and output_steps is not None:
        inside = [(t, r) for r, t in enumerate(output_steps) if window[0] <= t <= window[-1]]
        if inside:
            panel.plot(
                [t for t, _ in inside], [r for _, r in inside], linestyle="none", marker="s", markersize=max(2.5, min(7.0, 150 / rows)),
                markerfacecolor="none", markeredgecolor=INK, markeredgewidth=0.9,
            )  # fmt: skip
    totals = per_step.sum(0)
    if rows <= 40:
        twin = panel.twinx()
        twin.set_ylim(panel.get_ylim())
        _set_ticks(twin, "y", [f"Σφ {_plain(float(t))}" for t in totals], inches_h, fontsize=8)
        twin.tick_params(length=0)
        for spine in twin.spines.values():
            spine.set_visible(False)
    fig.colorbar(
        image, ax=panel, location="bottom", shrink=0.6, aspect=40, pad=0.02,
        extend=_extend(grid, -scale.limit, scale.limit), label=scale.label("φ summed over features: red raises the output, blue lowers it"),
    )  # fmt: skip
    if title is None:
        title = "Which input steps each explained output draws on"
        title += f" ({label})" if label else ""
        title += f", sample {sample}" if sample is not None else ""
        title += "\neach row adds up to its f(x) − E[f] (right)"
        title += "; □ input step = output step" if diagonal and output_steps is not None else ""
        note = _window_text(window, count, times)
        title += f"; {note}" if note else ""
    _title(fig, ax, title)
    return fig


# -- plots of many samples ----------------------------------------------------------------------------------------------
def beeswarm_over_time(
    values: Any,
    data: Any = None,
    *,
    output: Any = None,
    feature: int | str | None = None,
    color_by: int | str | None = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    steps: Steps = None,
    title: str | None = None,
    seed: int = 0,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Per time step, the spread over samples of that step's attribution, coloured by an input value.

    Each dot is one sample at one step: its height the step's φ (summed over features, or of
    ``feature``), its colour the sample's value of ``feature`` at that step (default when summing:
    the feature with the largest mean |φ|, or ``color_by``), dots spread sideways where they are
    dense. The black line is the mean over samples.

    Args:
        values: (N, T, F) or (N, T) attributions with a last output axis (…, K) chosen by
            ``output`` (one index for all samples, or one per sample); a shap.Explanation; or a
            :class:`rnnshap.Summary`, whose uniform sample is drawn.
        data: the inputs, (N, T, F) (an Explanation's or Summary's own by default). Without it the
            dots are grey.
        feature: draw φ of this feature (index or name) instead of the sum over features.
        color_by: the feature whose value colours the dots (default ``feature``, else the most
            important one).
    """
    count_note = ""
    if isinstance(values, Summary):
        if values.multi_input:
            raise ValueError("the summary is of a multi-input model: pass one input's sample_values[i] and sample_data[i]")
        parts = _Parts(
            np.asarray(values.sample_values[0], dtype=np.float64),
            np.asarray(values.sample_data[0]) if data is None else np.asarray(data),
            len(values.output_shape), None, None, values.output_names, None, True,
        )  # fmt: skip
        count_note = f" (a uniform sample of the {values.count} summarized)"
    else:
        parts = _unpack(values, data)
    phi, x, label = _batch(parts, output, "beeswarm_over_time")
    samples, count, features = phi.shape
    if samples == 0:
        raise ValueError("beeswarm_over_time needs at least one sample")
    times = _labels(time_labels, parts.time_labels, count, "", "time labels")
    names = _labels(feature_names, parts.feature_names, features, "f", "feature names")
    window = _window(steps, count)
    n = len(window)

    def feature_index(chosen: int | str) -> int:
        if isinstance(chosen, str):
            if chosen not in names:
                raise ValueError(f"no feature named {chosen!r}; the features are {names}")
            return names.index(chosen)
        return int(chosen) % features

    part = phi[:, window]
    if feature is not None:
        j = feature_index(feature)
        heights = part[:, :, j]
        what = f"φ of {names[j]}"
        colour = j if color_by is None else feature_index(color_by)
    else:
        heights = part.sum(-1)
        what = "φ of the step (Σ over features)" if features > 1 else "φ of the step"
        colour = int(np.argmax(np.abs(part).mean((0, 1)))) if color_by is None else feature_index(color_by)
    colours = None
    if x is not None and np.issubdtype(x.dtype, np.floating):
        colours = x[:, window, colour].astype(np.float64)
    if figsize is None:
        figsize = (float(np.clip(n * 0.45 + 3.0, 6.5, 14.0)), 4.6)
    fig, panel = _own_figure(ax, figsize)
    rng = np.random.default_rng(seed)
    width = 0.8 if n <= 60 else 1.0
    offsets = np.zeros_like(heights)
    for column in range(n):
        ys = heights[:, column]
        if samples > 1 and np.ptp(ys) > 0:
            bins = max(4, min(40, int(np.sqrt(samples) * 2)))
            counts, edges = np.histogram(ys, bins=bins)
            density = counts[np.clip(np.searchsorted(edges, ys, side="right") - 1, 0, bins - 1)] / counts.max()
            offsets[:, column] = (rng.random(samples) - 0.5) * width * (0.15 + 0.85 * density)
    xs = window[None, :] + offsets
    size = float(np.clip(1800.0 / (n * max(samples, 1)) ** 0.5, 1.0, 18.0))
    order = rng.permutation(samples * n)
    if colours is not None:
        finite = colours[np.isfinite(colours)]
        low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        points = panel.scatter(
            xs.ravel()[order], heights.ravel()[order], c=colours.ravel()[order], cmap=VALUES, vmin=low, vmax=high,
            s=size, linewidths=0, alpha=0.85, rasterized=True,
        )  # fmt: skip
        bar = fig.colorbar(points, ax=panel, shrink=0.9, aspect=25, pad=0.01)
        bar.set_label(f"value of {names[colour]}")
        bar.set_ticks([low, high], labels=["low", "high"])
    else:
        panel.scatter(xs.ravel(), heights.ravel(), color="#777777", s=size, linewidths=0, alpha=0.7, rasterized=True)
    panel.plot(window, heights.mean(0), color="black", linewidth=1.2, label="mean over samples")
    panel.axhline(0.0, color="#666666", linewidth=0.8)
    panel.legend(loc="best", fontsize=8, frameon=True, framealpha=0.85, edgecolor="none")
    panel.set_xlim(window[0] - 0.6, window[-1] + 0.6)
    inches = figsize[0] - 2.8 if ax is None else ax.get_position().width * fig.get_figwidth()
    _set_ticks(panel, "x", [times[t] for t in window], inches, index=window, coords=window.astype(np.float64))
    panel.set_xlabel("time step")
    panel.set_ylabel(what)
    _style(panel, "y")
    if title is None:
        title = f"Attribution of each step across {samples} samples{count_note}" + (f" ({label})" if label else "")
        title += f"\n{'Σφ over features' if feature is None and features > 1 else what}"
        title += f", coloured by the value of {names[colour]}" if colours is not None else ""
        note = _window_text(window, count, times)
        title += f"; {note}" if note else ""
    _title(fig, ax, title)
    return fig


def global_importance(
    values: Any,
    *,
    output: int | str | Sequence[int] | np.ndarray | None = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    steps: Steps = None,
    max_features: int | None = 20,
    title: str | None = None,
    time_axis: str = "auto",
    vmax: float | None = None,
    percentile: float | None = 99.0,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Mean |φ| over many samples: a time × feature map with its sums by time step and by feature.

    Args:
        values: (N, T, F) or (N, T) attributions of N samples, with a last output axis (…, K) chosen
            by ``output``; a shap.Explanation; or a :class:`rnnshap.Summary` of a whole dataset.
        output: one output for all samples (index or name), or one index per sample (for instance
            each sample's predicted class).
        steps, max_features: a window of time steps; the features with the largest mean |φ| (the
            others summed into one row), as for :func:`heatmap`.
        time_axis: ``"y"``, ``"x"`` or ``"auto"``, as for :func:`heatmap`.
    """
    count: int | None = None
    if isinstance(values, Summary):
        # mean |φ| of a streamed summary: one row whose mean over samples is itself
        if values.multi_input:
            raise ValueError("the summary is of a multi-input model: pass one input's mean_abs[i][None] with its labels")
        count = values.count
        parts = _Parts(np.asarray(values.mean_abs)[None], None, len(values.output_shape), None, None, values.output_names, None)
        if output is not None and not isinstance(output, (int, np.integer, str)):
            raise ValueError("a Summary holds no per-sample outputs: choose one output for all samples")
    else:
        parts = _unpack(values)
    phi, _, label = _batch(parts, output, "global_importance")
    importance = np.abs(phi).mean(0)
    steps_total, features = importance.shape
    times = _labels(time_labels, parts.time_labels, steps_total, "", "time labels")
    names = _labels(feature_names, parts.feature_names, features, "f", "feature names")
    window = _window(steps, steps_total)
    part = importance[window]
    kept, rest = _top(part.mean(0), max_features)
    shown = part[:, kept]
    columns_names = [names[j] for j in kept]
    if rest.size:
        shown = np.concatenate([shown, part[:, rest].sum(1, keepdims=True)], axis=1)
        columns_names.append(f"Σ {rest.size} others")
    shown_times = [times[t] for t in window]
    n = len(window)
    if title is None:
        title = f"Mean |φ| over {count if count is not None else phi.shape[0]} samples" + (f" ({label})" if label else "")
        notes = [_window_text(window, steps_total, times)]
        if rest.size:
            notes.append(f"top {len(kept)} of {features} features")
        if any(notes):
            title += "\n" + "; ".join(t for t in notes if t)
    if features == 1:
        fig = _figure(figsize or (float(np.clip(n * 0.4 + 2.4, 6.0, 14.0)), 3.8))
        ax = fig.add_subplot()
        ax.bar(window, part[:, 0], color=BAR, width=0.8 if n <= 60 else 1.0, linewidth=0)
        _set_ticks(ax, "x", shown_times, fig.get_figwidth() - 1.4, index=window, coords=window.astype(np.float64))
        ax.set_xlim(window[0] - 0.6, window[-1] + 0.6)
        ax.set_xlabel("time step")
        ax.set_ylabel("mean |φ|")
        _style(ax, "y")
        _title(fig, None, title)
        return fig
    time_axis = _time_axis(time_axis, n, shown.shape[1])
    index = np.asarray(window)
    if time_axis == "y":
        grid, rows, columns, row_sums, column_sums = shown, shown_times, columns_names, shown.sum(1), shown.sum(0)
        row_axis, column_axis, row_index, column_index = "time step", "feature", index, None
    else:
        grid, rows, columns, row_sums, column_sums = shown.T, columns_names, shown_times, shown.sum(0), shown.sum(1)
        row_axis, column_axis, row_index, column_index = "feature", "time step", None, index
    height, width = grid.shape
    if figsize is None:
        if time_axis == "y":
            cell = float(np.clip(5.5 / max(height, width), 0.24, 0.55))
            map_w, map_h = width * cell, height * cell
        else:
            map_w, map_h = float(np.clip(n * 0.45, 5.0, 11.0)), height * float(np.clip(3.6 / height, 0.26, 0.45))
        figsize = (float(np.clip(map_w + 4.4, 6.0, 16.0)), float(np.clip(map_h + 3.2, 4.5, 14.0)))
    map_w, map_h = (figsize[0] - 1.4) * 4 / 5.58, (figsize[1] - 1.8) * 4 / 5.3  # the map's share of the grid
    fig = _figure(figsize)
    layout = fig.add_gridspec(2, 3, width_ratios=[4, 1.4, 0.18], height_ratios=[4, 1.3])
    ax_map = fig.add_subplot(layout[0, 0])
    ax_rows = fig.add_subplot(layout[0, 1], sharey=ax_map)
    ax_columns = fig.add_subplot(layout[1, 0], sharex=ax_map)
    ax_bar = fig.add_subplot(layout[0, 2])
    scale = _scale(grid, vmax, percentile)
    image = ax_map.imshow(grid, cmap=IMPORTANCE, vmin=0, vmax=scale.limit, aspect="auto", interpolation="nearest")
    fig.colorbar(image, cax=ax_bar, extend="max" if scale.clipped else "neither", label=scale.label("mean |φ|", symmetric=False))
    ax_map.set_ylabel(row_axis)
    _set_ticks(ax_map, "y", rows, map_h, index=row_index)
    ax_map.tick_params(labelbottom=False, length=0)
    ax_rows.barh(np.arange(height), row_sums, color=BAR, height=0.8 if height <= 60 else 1.0, linewidth=0)
    ax_rows.set_xlabel(f"sum over {column_axis}s")
    ax_rows.tick_params(labelleft=False, length=0)
    ax_columns.bar(np.arange(width), column_sums, color=BAR, width=0.8 if width <= 60 else 1.0, linewidth=0)
    ax_columns.set_ylabel(f"sum over\n{row_axis}s")
    ax_columns.set_xlabel(column_axis)
    _set_ticks(ax_columns, "x", columns, map_w, index=column_index)
    for ax in (ax_rows, ax_columns):
        _style(ax, "x" if ax is ax_rows else "y")
    for spine in ax_map.spines.values():
        spine.set_visible(False)
    _title(fig, None, title)
    return fig


# -- HTML ---------------------------------------------------------------------------------------------------------------
def token_html(
    tokens: Sequence[Any],
    values: Any,
    *,
    sample: int | None = None,
    output: Output = None,
    max_abs: float | None = None,
    separator: str = " ",
    legend: bool = True,
) -> str:
    """Tokens highlighted by their attribution, as an HTML fragment (inline styles, no matplotlib).

    Red tokens raise the output, blue ones lower it; the colour's strength is |φ| / ``max_abs``
    (default: the largest |φ| of these tokens; pass a common value to compare several sequences).
    Each token carries its value in a tooltip and a ``data-phi`` attribute, and the class
    ``rnnshap-pos`` or ``rnnshap-neg``. ``values``: (T,) per token, a batch with ``sample``, an
    output axis with ``output``, or a shap.Explanation. In a notebook:
    ``IPython.display.HTML(token_html(tokens, phi))``.
    """
    parts = _unpack(values)
    phi, _, _, _ = _pick(parts, sample, output, (1,), "token_html")
    tokens = list(tokens)
    if len(tokens) != len(phi):
        raise ValueError(f"{len(tokens)} tokens and {len(phi)} attributions")
    scale = float(max_abs) if max_abs is not None else _symmetric_limit(phi)
    spans = []
    for token, value in zip(tokens, phi, strict=True):
        strength = float(np.clip(abs(value) / scale, 0.0, 1.0)) if scale > 0 else 0.0
        sign = "pos" if value > 0 else "neg" if value < 0 else "zero"
        red, green, blue = POSITIVE if value >= 0 else NEGATIVE
        text = "#ffffff" if strength > 0.55 else "#1a1a1a"
        spans.append(
            f'<span class="rnnshap-token rnnshap-{sign}" data-phi="{value:.6g}" title="φ = {value:+.4g}" '
            f'style="background-color: rgba({red}, {green}, {blue}, {0.85 * strength:.3f}); color: {text}; '
            f'padding: 0.15em 0.3em; margin: 0 1px; border-radius: 0.25em; white-space: pre">{html.escape(str(token))}</span>'
        )
    body = html.escape(separator).join(spans)
    note = ""
    if legend:
        note = (
            '<div style="font-size: 0.8em; color: #555555; margin-top: 0.35em">'
            f'<span style="color: rgb{POSITIVE}">■</span> raises the output, '
            f'<span style="color: rgb{NEGATIVE}">■</span> lowers it; <span style="white-space: nowrap">full colour at |φ| = {scale:.3g}</span></div>'
        )
    return f'<div class="rnnshap-tokens" style="line-height: 2.1; font-family: ui-monospace, Menlo, Consolas, monospace">{body}{note}</div>'


# -- shap interop -------------------------------------------------------------------------------------------------------
def flatten(explanation: Any, *, feature_names: Sequence[Any] | None = None, time_labels: Sequence[Any] | None = None) -> Any:
    """A shap.Explanation of sequences, (N, T, F[, K]), as (N, T·F[, K]) with features named ``"t3:f2"``.

    shap's plots (``shap.plots.bar``, ``heatmap``, ``waterfall``, ``beeswarm``) take one axis of
    features; this flattens time × feature into it, row-major (all features of step 0, then of
    step 1, ...). The names come from ``feature_names`` / ``time_labels``, else from the
    Explanation (``explainer(X, feature_names=..., time_labels=...)``), else ``t0:f0, ...``. A single
    sequence (``explanation[i]``, (T, F[, K])) becomes (T·F[, K]). Base values, data and output names
    are kept.
    """
    shap = _shap()
    if not _is_explanation(explanation):
        raise TypeError(f"flatten takes a shap.Explanation, got {type(explanation).__name__}")
    values = np.asarray(explanation.values)
    data = None if explanation.data is None else np.asarray(explanation.data)
    base = explanation.base_values
    if data is not None:
        output_axes = values.ndim - data.ndim
    else:
        output_axes = max(np.ndim(base) - 1, 0) if base is not None else 0
    batched = base is None or np.ndim(base) == output_axes + 1
    input_axes = values.ndim - output_axes - (1 if batched else 0)
    if input_axes != 2:
        if input_axes == 1:
            return explanation
        raise ValueError(f"flatten expects sequences (T, F) per sample; the explanation's values have shape {values.shape}")
    lead = 1 if batched else 0
    steps, features = values.shape[lead], values.shape[lead + 1]
    found_times, found_features = _names(explanation.feature_names)
    grid_names = np.asarray(explanation.feature_names, dtype=object) if explanation.feature_names is not None else None
    if feature_names is None and time_labels is None and grid_names is not None and grid_names.shape[-2:] == (steps, features):
        names = [str(name) for name in grid_names.reshape(-1, steps * features)[0]]
    else:
        times = _labels(time_labels, found_times, steps, "t", "time labels")
        feats = _labels(feature_names, found_features, features, "f", "feature names")
        names = [f"{t}:{f}" for t in times for f in feats]
    new_shape = (*values.shape[:lead], steps * features, *values.shape[lead + 2 :])
    output_names = explanation.output_names
    keep_outputs = output_axes == 1 and isinstance(output_names, (list, tuple, np.ndarray)) and np.ndim(output_names) == 1
    return shap.Explanation(
        values=values.reshape(new_shape),
        base_values=base,
        data=None if data is None else data.reshape(*data.shape[:lead], steps * features),
        feature_names=names,
        output_names=list(output_names) if keep_outputs else None,
    )


def _shap() -> Any:
    try:
        import shap
    except ImportError as error:
        raise ImportError("flatten works on shap.Explanation objects and needs shap: pip install 'rnnshap[shap]'") from error
    return shap
