"""Plots over many samples: the spread of each step's attribution, and mean ``|φ|`` by time and feature."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..summary import Summary
from .inputs import (
    Parts,
    Steps,
    axis_labels,
    pick_batch,
    step_window,
    steps_and_features,
    top_features,
    unpack,
    window_note,
)
from .style import (
    BAR,
    IMPORTANCE,
    VALUES,
    choose_time_axis,
    color_scale,
    figure_and_axes,
    new_figure,
    put_title,
    set_ticks,
    style_axes,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _swarm_offsets(heights: np.ndarray, rng: np.random.Generator, width: float) -> np.ndarray:
    """Sideways offsets of a beeswarm's dots, (samples, steps): random within ``width``, wider where the step's
    heights are dense (a histogram of them); none for a step whose heights are all one."""
    samples = heights.shape[0]
    offsets = np.zeros_like(heights)
    for column in range(heights.shape[1]):
        ys = heights[:, column]
        if samples > 1 and np.ptp(ys) > 0:
            bins = max(4, min(40, int(np.sqrt(samples) * 2)))
            counts, edges = np.histogram(ys, bins=bins)
            density = counts[np.clip(np.searchsorted(edges, ys, side="right") - 1, 0, bins - 1)] / counts.max()
            offsets[:, column] = (rng.random(samples) - 0.5) * width * (0.15 + 0.85 * density)
    return offsets


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
    the feature with the largest mean ``|φ|``, or ``color_by``), dots spread sideways where they are
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
        parts = Parts(
            np.asarray(values.sample_values[0], dtype=np.float64),
            np.asarray(values.sample_data[0]) if data is None else np.asarray(data),
            len(values.output_shape), None, None, values.output_names, None, True,
        )  # fmt: skip
        count_note = f" (a uniform sample of the {values.count} summarized)"
    else:
        parts = unpack(values, data)
    phi, x, label = pick_batch(parts, output, "beeswarm_over_time")
    samples, count, features = phi.shape
    if samples == 0:
        raise ValueError("beeswarm_over_time needs at least one sample")
    times, names, window = steps_and_features(parts, count, features, time_labels, feature_names, steps)
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
    fig, panel = figure_and_axes(ax, figsize)
    rng = np.random.default_rng(seed)
    width = 0.8 if n <= 60 else 1.0
    xs = window[None, :] + _swarm_offsets(heights, rng, width)
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
    set_ticks(panel, "x", [times[t] for t in window], inches, index=window, coords=window.astype(np.float64))
    panel.set_xlabel("time step")
    panel.set_ylabel(what)
    style_axes(panel, "y")
    if title is None:
        title = f"Attribution of each step across {samples} samples{count_note}" + (f" ({label})" if label else "")
        title += f"\n{'Σφ over features' if feature is None and features > 1 else what}"
        title += f", coloured by the value of {names[colour]}" if colours is not None else ""
        note = window_note(window, count, times)
        title += f"; {note}" if note else ""
    put_title(fig, ax, title)
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
    """Mean ``|φ|`` over many samples: a time × feature map with its sums by time step and by feature.

    Args:
        values: (N, T, F) or (N, T) attributions of N samples, with a last output axis (…, K) chosen
            by ``output``; a shap.Explanation; or a :class:`rnnshap.Summary` of a whole dataset.
        output: one output for all samples (index or name), or one index per sample (for instance
            each sample's predicted class).
        steps, max_features: a window of time steps; the features with the largest mean ``|φ|`` (the
            others summed into one row), as for :func:`heatmap`.
        time_axis: ``"y"``, ``"x"`` or ``"auto"``, as for :func:`heatmap`.
    """
    count: int | None = None
    if isinstance(values, Summary):
        # mean |φ| of a streamed summary: one row whose mean over samples is itself
        if values.multi_input:
            raise ValueError("the summary is of a multi-input model: pass one input's mean_abs[i][None] with its labels")
        count = values.count
        parts = Parts(np.asarray(values.mean_abs)[None], None, len(values.output_shape), None, None, values.output_names, None)
        if output is not None and not isinstance(output, (int, np.integer, str)):
            raise ValueError("a Summary holds no per-sample outputs: choose one output for all samples")
    else:
        parts = unpack(values)
    phi, _, label = pick_batch(parts, output, "global_importance")
    importance = np.abs(phi).mean(0)
    steps_total, features = importance.shape
    times = axis_labels(time_labels, parts.time_labels, steps_total, "", "time labels")
    names = axis_labels(feature_names, parts.feature_names, features, "f", "feature names")
    window = step_window(steps, steps_total)
    part = importance[window]
    kept, rest = top_features(part.mean(0), max_features)
    shown = part[:, kept]
    columns_names = [names[j] for j in kept]
    if rest.size:
        shown = np.concatenate([shown, part[:, rest].sum(1, keepdims=True)], axis=1)
        columns_names.append(f"Σ {rest.size} others")
    shown_times = [times[t] for t in window]
    n = len(window)
    if title is None:
        title = f"Mean |φ| over {count if count is not None else phi.shape[0]} samples" + (f" ({label})" if label else "")
        notes = [window_note(window, steps_total, times)]
        if rest.size:
            notes.append(f"top {len(kept)} of {features} features")
        if any(notes):
            title += "\n" + "; ".join(t for t in notes if t)
    if features == 1:
        fig = new_figure(figsize or (float(np.clip(n * 0.4 + 2.4, 6.0, 14.0)), 3.8))
        ax = fig.add_subplot()
        ax.bar(window, part[:, 0], color=BAR, width=0.8 if n <= 60 else 1.0, linewidth=0)
        set_ticks(ax, "x", shown_times, fig.get_figwidth() - 1.4, index=window, coords=window.astype(np.float64))
        ax.set_xlim(window[0] - 0.6, window[-1] + 0.6)
        ax.set_xlabel("time step")
        ax.set_ylabel("mean |φ|")
        style_axes(ax, "y")
        put_title(fig, None, title)
        return fig
    time_axis = choose_time_axis(time_axis, n, shown.shape[1])
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
    fig = new_figure(figsize)
    layout = fig.add_gridspec(2, 3, width_ratios=[4, 1.4, 0.18], height_ratios=[4, 1.3])
    ax_map = fig.add_subplot(layout[0, 0])
    ax_rows = fig.add_subplot(layout[0, 1], sharey=ax_map)
    ax_columns = fig.add_subplot(layout[1, 0], sharex=ax_map)
    ax_bar = fig.add_subplot(layout[0, 2])
    scale = color_scale(grid, vmax, percentile)
    image = ax_map.imshow(grid, cmap=IMPORTANCE, vmin=0, vmax=scale.limit, aspect="auto", interpolation="nearest")
    fig.colorbar(image, cax=ax_bar, extend="max" if scale.clipped else "neither", label=scale.label("mean |φ|", symmetric=False))
    ax_map.set_ylabel(row_axis)
    set_ticks(ax_map, "y", rows, map_h, index=row_index)
    ax_map.tick_params(labelbottom=False, length=0)
    ax_rows.barh(np.arange(height), row_sums, color=BAR, height=0.8 if height <= 60 else 1.0, linewidth=0)
    ax_rows.set_xlabel(f"sum over {column_axis}s")
    ax_rows.tick_params(labelleft=False, length=0)
    ax_columns.bar(np.arange(width), column_sums, color=BAR, width=0.8 if width <= 60 else 1.0, linewidth=0)
    ax_columns.set_ylabel(f"sum over\n{row_axis}s")
    ax_columns.set_xlabel(column_axis)
    set_ticks(ax_columns, "x", columns, map_w, index=column_index)
    for ax in (ax_rows, ax_columns):
        style_axes(ax, "x" if ax is ax_rows else "y")
    for spine in ax_map.spines.values():
        spine.set_visible(False)
    put_title(fig, None, title)
    return fig
