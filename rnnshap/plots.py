"""Plots of rnnshap's attributions: per sequence, over time, over many samples, and per token.

Every function takes rnnshap's numpy output (``explainer.shap_values(X)``, shape ``(N, T, F)`` or
``(N, T, F, K)`` with K outputs) or a ``shap.Explanation`` (``explainer(X)``). Pick one sequence of a
batch with ``sample=`` and one output with ``output=`` (an index, or an output name of an
Explanation). The matplotlib functions return the ``matplotlib.figure.Figure``; matplotlib is
imported only when one of them is called (``pip install 'rnnshap[plot]'``), with the Agg backend
when there is no display. :func:`token_html` needs nothing beyond numpy.

Colours: red raises the output, blue lowers it, on a diverging scale centred at zero.
"""

from __future__ import annotations

import html
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from .summary import Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["flatten", "global_importance", "heatmap", "over_time", "token_html"]

#: the ends of matplotlib's ``RdBu_r``, used for signed bars and token highlights
POSITIVE = (178, 24, 43)
NEGATIVE = (33, 102, 172)
DIVERGING = "RdBu_r"

Output = Union[int, str, None]


# -- helpers ------------------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """matplotlib.pyplot, on the Agg backend when nothing could show a window."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("rnnshap's plots need matplotlib: pip install 'rnnshap[plot]'") from error
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and _headless():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _headless() -> bool:
    if sys.platform in ("win32", "darwin"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _is_explanation(obj: Any) -> bool:
    """A shap.Explanation or a subclass of it (rnnshap's SequenceExplanation), without importing shap."""
    return any(klass.__name__ == "Explanation" for klass in type(obj).__mro__) and hasattr(obj, "values") and hasattr(obj, "base_values")


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


def _unpack(values: Any, data: Any = None) -> _Parts:
    if not _is_explanation(values):
        return _Parts(
            np.asarray(values, dtype=np.float64), None if data is None else np.asarray(data), None, None, None, None, None
        )
    explanation = values
    array = np.asarray(explanation.values, dtype=np.float64)
    if data is None and explanation.data is not None:
        data = np.asarray(explanation.data)
    elif data is not None:
        data = np.asarray(data)
    output_axes = array.ndim - data.ndim if data is not None and data.ndim <= array.ndim else None
    time_labels, feature_names = _names(explanation.feature_names)
    names = explanation.output_names
    output_names = [str(name) for name in names] if isinstance(names, (list, tuple, np.ndarray)) and np.ndim(names) == 1 else None
    base = None if explanation.base_values is None else np.asarray(explanation.base_values, dtype=np.float64)
    return _Parts(array, data, output_axes, time_labels, feature_names, output_names, base)


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


def _output_index(parts: _Parts, output: int | str) -> int:
    if isinstance(output, str):
        if parts.output_names is None or output not in parts.output_names:
            raise ValueError(f"no output named {output!r}; the outputs are {parts.output_names}")
        return parts.output_names.index(output)
    return int(output)


def _pick(
    parts: _Parts, sample: int | None, output: Output, ndims: tuple[int, ...], what: str
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """One sequence's attributions (with ``ndim`` in ``ndims``), its input and the output's label."""
    values, data = parts.values, parts.data
    label = None
    if output is not None:
        if parts.output_axes == 0:
            raise ValueError("this explanation has no output axis: leave output=None")
        index = _output_index(parts, output)
        values = values[..., index]
        label = parts.output_names[index] if parts.output_names else f"output {index}"
    elif parts.output_axes and values.shape[-1] == 1:
        values = values[..., 0]
    elif parts.output_axes:
        raise ValueError(f"the explanation has {values.shape[-1]} outputs: choose one with output=")
    if sample is not None:
        values = values[sample]
        if data is not None and data.ndim == values.ndim + 1:
            data = data[sample]
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
    return values, data, label


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


def _set_ticks(ax: Axes, axis: str, labels: list[str], max_ticks: int = 32) -> None:
    """All labels when they fit, every k-th otherwise; slanted when long."""
    step = max(1, int(np.ceil(len(labels) / max_ticks)))
    positions = np.arange(0, len(labels), step)
    shown = [labels[i] for i in positions]
    if axis == "x":
        long = max((len(s) for s in shown), default=0) > 3 and len(shown) > 4
        ax.set_xticks(positions)
        ax.set_xticklabels(shown, rotation=45 if long else 0, ha="right" if long else "center", rotation_mode="anchor")
    else:
        ax.set_yticks(positions)
        ax.set_yticklabels(shown)


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


def _format(value: float, scale: float) -> str:
    decimals = int(np.clip(2 - np.floor(np.log10(scale)), 0, 6)) if scale > 0 else 2
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _gap_text(parts: _Parts, values: np.ndarray, sample: int | None, output: Output) -> str:
    """``f(x) = E[f] + Σφ`` when the base value is known, else ``Σφ``."""
    total = float(values.sum())
    base = parts.base_values
    if base is not None and parts.output_axes is not None:
        if output is not None and parts.output_axes:
            base = base[..., _output_index(parts, output)]
        if sample is not None and base.ndim >= 1:
            base = base[sample]
        if base.ndim == 0:
            return f"f(x) = {float(base):.3g} {'+' if total >= 0 else '−'} {abs(total):.3g} = {float(base) + total:.3g}"
    return f"Σφ = f(x) − E[f] = {total:+.3g}"


# -- plots --------------------------------------------------------------------------------------------------------------
def heatmap(
    values: Any,
    data: Any = None,
    *,
    sample: int | None = None,
    output: Output = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    title: str | None = None,
    annotate: bool | None = None,
    time_axis: str = "auto",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Time × feature heatmap of one sequence's attributions, with its input beside it.

    Args:
        values: attributions of one sequence, (T, F), or of a batch (N, T, F) with ``sample``, with a
            last output axis (…, K) chosen by ``output``; or a shap.Explanation.
        data: the input, same shape as ``values`` without the output axis (an Explanation's own
            data by default). Drawn on the left in grey when given.
        sample: which sequence of a batch.
        output: which output (index, or name for an Explanation with output names).
        feature_names, time_labels: axis labels (default: the Explanation's, else f0…, t0…).
        title: the figure title (default: which output, and how the attributions add up).
        annotate: write each cell's value (default: when there are at most 100 cells).
        time_axis: ``"y"`` (time runs down the rows), ``"x"`` (time runs left to right) or
            ``"auto"``: ``"x"`` for sequences much longer than they are wide, else ``"y"``.
    """
    plt = _pyplot()
    parts = _unpack(values, data)
    phi, x, label = _pick(parts, sample, output, (1, 2), "heatmap")
    if phi.ndim == 1:
        phi, x = phi[:, None], None if x is None else x[:, None]
    steps, features = phi.shape
    times = _labels(time_labels, parts.time_labels, steps, "t", "time labels")
    names = _labels(feature_names, parts.feature_names, features, "f", "feature names")
    time_axis = _time_axis(time_axis, steps, features)
    rows, columns = (times, names) if time_axis == "y" else (names, times)
    shown_phi = phi if time_axis == "y" else phi.T
    shown_x = None if x is None else (x if time_axis == "y" else x.T)
    panels = 1 if shown_x is None else 2
    height, width = shown_phi.shape
    if figsize is None:
        cell = float(np.clip(6.0 / max(height, width), 0.12, 0.6))
        figsize = (float(np.clip(panels * (width * cell + 1.9) + 0.3, 5.0, 16.0)), float(np.clip(height * cell + 1.6, 3.0, 12.0)))
    fig, axes = plt.subplots(1, panels, figsize=figsize, layout="constrained", squeeze=False)
    axes = axes[0]
    aspect = "equal" if max(height, width) <= 4 * min(height, width) else "auto"
    ylabel, xlabel = ("time step", "feature") if time_axis == "y" else ("feature", "time step")
    if shown_x is not None:
        ax = axes[0]
        image = ax.imshow(shown_x.astype(np.float64), cmap="Greys", aspect=aspect, interpolation="nearest")
        ax.set_title("input", fontsize=11)
        fig.colorbar(image, ax=ax, shrink=0.85, label="value")
    ax = axes[-1]
    limit = _symmetric_limit(shown_phi)
    image = ax.imshow(shown_phi, cmap=DIVERGING, vmin=-limit, vmax=limit, aspect=aspect, interpolation="nearest")
    ax.set_title("attribution φ", fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.85, label="φ (red raises the output, blue lowers it)")
    if annotate is None:
        annotate = height * width <= 100
    if annotate:
        for (i, j), value in np.ndenumerate(shown_phi):
            if abs(value) >= 0.005 * limit:
                ax.text(
                    j,
                    i,
                    _format(value, limit),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(value) > 0.6 * limit else "#222222",
                )
    for ax in axes:
        _set_ticks(ax, "x", columns)
        _set_ticks(ax, "y", rows)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_color("#bbbbbb")
            spine.set_linewidth(0.8)
    if title is None:
        title = f"Attributions to {label or 'the output'}: {_gap_text(parts, phi, sample, output)}"
    fig.suptitle(title, fontsize=12)
    return fig


def over_time(
    values: Any,
    *,
    sample: int | None = None,
    output: Output = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    title: str | None = None,
    cumulative: bool = True,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Attribution per time step (summed over features) of one sequence, with the running total.

    ``values`` as for :func:`heatmap`: (T, F) or (T,) per sequence, a batch with ``sample``, an
    output axis with ``output``, or a shap.Explanation. The running total ends at
    ``f(x) − E[f]``. ``feature_names`` is accepted for symmetry with the other plots (features are
    summed here).
    """
    del feature_names  # summed over
    plt = _pyplot()
    parts = _unpack(values)
    phi, _, label = _pick(parts, sample, output, (1, 2), "over_time")
    per_step = phi.sum(-1) if phi.ndim == 2 else phi
    steps = len(per_step)
    times = _labels(time_labels, parts.time_labels, steps, "t", "time labels")
    if figsize is None:
        figsize = (float(np.clip(steps * 0.45 + 2.0, 6.0, 14.0)), 3.8)
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    positions = np.arange(steps)
    colors = [_rgb(POSITIVE) if v >= 0 else _rgb(NEGATIVE) for v in per_step]
    ax.bar(positions, per_step, color=colors, width=0.75)
    ax.axhline(0.0, color="#444444", linewidth=0.8)
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(color=_rgb(POSITIVE), label="step raises the output"),
        Patch(color=_rgb(NEGATIVE), label="step lowers it"),
    ]
    if cumulative:
        (line,) = ax.plot(
            positions, np.cumsum(per_step), color="#333333", marker="o", markersize=3.5, linewidth=1.3, label="running total"
        )
        handles.append(line)
    ax.legend(handles=handles, frameon=False, fontsize=9, loc="best")
    _set_ticks(ax, "x", times)
    ax.set_xlim(-0.6, steps - 0.4)
    ax.set_xlabel("time step")
    ax.set_ylabel("φ summed over features")
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title is None:
        title = f"Attribution to {label or 'the output'} over time: {_gap_text(parts, phi, sample, output)}"
    ax.set_title(title, fontsize=12)
    return fig


def global_importance(
    values: Any,
    *,
    output: int | str | Sequence[int] | np.ndarray | None = None,
    feature_names: Sequence[Any] | None = None,
    time_labels: Sequence[Any] | None = None,
    title: str | None = None,
    time_axis: str = "auto",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Mean |φ| over many samples: a time × feature map with its sums by time step and by feature.

    Args:
        values: (N, T, F) or (N, T) attributions of N samples, with a last output axis (…, K) chosen
            by ``output``; a shap.Explanation; or a :class:`rnnshap.Summary` of a whole dataset.
        output: one output for all samples (index or name), or one index per sample (for instance
            each sample's predicted class).
        time_axis: ``"y"``, ``"x"`` or ``"auto"``, as for :func:`heatmap`.
    """
    plt = _pyplot()
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
    phi = parts.values
    label = None
    if output is not None:
        if isinstance(output, (int, np.integer, str)):
            index = _output_index(parts, output)
            phi = phi[..., index]
            label = parts.output_names[index] if parts.output_names else f"output {index}"
        else:
            chosen = np.asarray(output, dtype=np.int64)
            if chosen.shape != (phi.shape[0],):
                raise ValueError(f"output has shape {chosen.shape}: give one index, or one per sample ({phi.shape[0]})")
            phi = phi[np.arange(phi.shape[0]), ..., chosen]
            label = "each sample's chosen output"
    elif parts.output_axes:
        if phi.shape[-1] != 1:
            raise ValueError(f"the explanation has {phi.shape[-1]} outputs: choose with output=")
        phi = phi[..., 0]
    if phi.ndim == 2:
        phi = phi[:, :, None]
    if phi.ndim != 3:
        raise ValueError(
            f"global_importance needs attributions of several sequences, (N, T, F) or (N, T), and got shape {tuple(parts.values.shape)}"
            " after choosing the output: for a model with several outputs pass output=k."
        )
    importance = np.abs(phi).mean(0)
    steps, features = importance.shape
    times = _labels(time_labels, parts.time_labels, steps, "t", "time labels")
    names = _labels(feature_names, parts.feature_names, features, "f", "feature names")
    by_time, by_feature = importance.sum(1), importance.sum(0)
    bar_color = "#5e4fa2"
    if title is None:
        title = f"Mean |φ| over {count if count is not None else phi.shape[0]} samples" + (f" ({label})" if label else "")
    if features == 1:
        fig, ax = plt.subplots(figsize=figsize or (float(np.clip(steps * 0.4 + 2.0, 6.0, 14.0)), 3.6), layout="constrained")
        ax.bar(np.arange(steps), by_time, color=bar_color, width=0.75)
        _set_ticks(ax, "x", times)
        ax.set_xlabel("time step")
        ax.set_ylabel("mean |φ|")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_title(title, fontsize=12)
        return fig
    time_axis = _time_axis(time_axis, steps, features)
    if time_axis == "y":
        shown, rows, columns, row_sums, column_sums = importance, times, names, by_time, by_feature
        row_axis, column_axis = "time step", "feature"
    else:
        shown, rows, columns, row_sums, column_sums = importance.T, names, times, by_feature, by_time
        row_axis, column_axis = "feature", "time step"
    height, width = shown.shape
    if figsize is None:
        cell = float(np.clip(5.5 / max(height, width), 0.08, 0.55))
        figsize = (float(np.clip(width * cell + 4.2, 6.0, 16.0)), float(np.clip(height * cell + 3.2, 4.5, 12.0)))
    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[4, 1.4, 0.18], height_ratios=[4, 1.3])
    ax_map = fig.add_subplot(grid[0, 0])
    ax_rows = fig.add_subplot(grid[0, 1], sharey=ax_map)
    ax_columns = fig.add_subplot(grid[1, 0], sharex=ax_map)
    ax_bar = fig.add_subplot(grid[0, 2])
    image = ax_map.imshow(shown, cmap="Purples", vmin=0, aspect="auto", interpolation="nearest")
    fig.colorbar(image, cax=ax_bar, label="mean |φ|")
    ax_map.set_ylabel(row_axis)
    _set_ticks(ax_map, "y", rows)
    ax_map.tick_params(labelbottom=False, length=0)
    ax_rows.barh(np.arange(height), row_sums, color=bar_color, height=0.75)
    ax_rows.set_xlabel(f"sum over {column_axis}s")
    ax_rows.tick_params(labelleft=False, length=0)
    ax_columns.bar(np.arange(width), column_sums, color=bar_color, width=0.75)
    ax_columns.set_ylabel(f"sum over {row_axis}s")
    ax_columns.set_xlabel(column_axis)
    _set_ticks(ax_columns, "x", columns)
    for ax in (ax_rows, ax_columns):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="x" if ax is ax_rows else "y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
    for spine in ax_map.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=12)
    return fig


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
    phi, _, _ = _pick(parts, sample, output, (1,), "token_html")
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
            f'padding: 0.15em 0.3em; margin: 0 1px; border-radius: 0.25em; white-space: pre-wrap">{html.escape(str(token))}</span>'
        )
    body = html.escape(separator).join(spans)
    note = ""
    if legend:
        note = (
            '<div style="font-size: 0.8em; color: #555555; margin-top: 0.35em">'
            f'<span style="color: rgb{POSITIVE}">■</span> raises the output, '
            f'<span style="color: rgb{NEGATIVE}">■</span> lowers it; full colour at |φ| = {scale:.3g}</div>'
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
