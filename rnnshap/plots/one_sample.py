"""Plots of one sequence: its time × feature heatmap, and a forecaster's map of input steps against
explained output steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..summary import Summary
from .inputs import (
    Output,
    Steps,
    axis_labels,
    output_index,
    output_label,
    pick_sequence,
    step_window,
    steps_and_features,
    top_features,
    unpack,
    window_note,
)
from .style import (
    DIVERGING,
    INK,
    cell_text,
    choose_time_axis,
    color_scale,
    extend_arrows,
    figure_and_axes,
    frame_axes,
    identity,
    new_figure,
    plain,
    put_title,
    set_ticks,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
        max_features: draw the features with the largest mean ``|φ|`` over the drawn steps, largest
            first, and sum the others into one row; ``None`` draws all.
        base_value: E[f] for the title, with numpy output (``explainer.expected_value``; indexed
            by ``output``). An Explanation brings its own.
        title: the figure title (default: which output, and ``f(x) = E[f] + Σφ`` with the numbers).
        annotate: write each cell's value (default: when there are at most 100 cells).
        time_axis: ``"y"`` (time runs down the rows), ``"x"`` (time runs left to right) or
            ``"auto"``: ``"x"`` for sequences much longer than they are wide, else ``"y"``.
        vmax: the colour limit (default: the ``percentile`` of ``|φ|``, or the largest ``|φ|`` when that
            is within 10 % of it; pass a common ``vmax`` to compare sequences).
        ax: draw the attributions (without the input) into this axes.
    """
    parts = unpack(values, data, base_value)
    phi, x, label, base = pick_sequence(parts, sample, output, (1, 2), "heatmap")
    if phi.ndim == 1:
        phi, x = phi[:, None], None if x is None else x[:, None]
    count, features = phi.shape
    times, names, window = steps_and_features(parts, count, features, time_labels, feature_names, steps)
    part = phi[window]
    kept, rest = top_features(np.abs(part).mean(0), max_features)
    shown = part[:, kept]
    row_names = [names[j] for j in kept]
    shown_x = None if x is None or ax is not None else x[window][:, kept].astype(np.float64)
    if rest.size:
        shown = np.concatenate([shown, part[:, rest].sum(1, keepdims=True)], axis=1)
        row_names.append(f"Σ {rest.size} others")
        if shown_x is not None:
            shown_x = np.concatenate([shown_x, np.full((len(window), 1), np.nan)], axis=1)
    shown_times = [times[t] for t in window]
    time_axis = choose_time_axis(time_axis, len(window), shown.shape[1])
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
    fig, axes, map_w, map_h = _heatmap_figure(ax, figsize, panels, time_axis)
    aspect: Any = "equal" if time_axis == "y" and max(height, width) <= 4 * min(height, width) else "auto"
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
    scale = color_scale(grid, vmax, percentile)
    image = panel.imshow(grid, cmap=DIVERGING, vmin=-scale.limit, vmax=scale.limit, aspect=aspect, interpolation="nearest")
    panel.set_title("attribution φ", fontsize=10)
    fig.colorbar(
        image, ax=panel, shrink=0.9, aspect=25, extend=extend_arrows(grid, -scale.limit, scale.limit),
        label=scale.label("φ (red raises the output, blue lowers it)"),
    )  # fmt: skip
    cell_w, cell_h = map_w / width, map_h / height
    if annotate is None:
        annotate = height * width <= 100 and min(cell_w, cell_h) >= 0.28
    if annotate:
        _write_cells(panel, grid, scale.limit, cell_w, cell_h)
    _label_panels(axes, time_axis, row_names, shown_times, np.asarray(window), (map_w, map_h))
    if title is None:
        head = f"Attributions to {label}" if label else "Attributions"
        title = f"{head}: {identity(base, float(phi.sum()))}"
        notes = [window_note(window, count, times)]
        if len(window) < count:
            notes.append(f"Σφ there = {plain(float(part.sum()))}")
        if rest.size:
            notes.append(f"top {len(kept)} of {features} features by mean |φ|")
        title += "".join(f"\n{n}" for n in ["; ".join(n for n in notes if n)] if n)
    put_title(fig, ax, title)
    return fig


def _heatmap_figure(
    ax: Axes | None, figsize: tuple[float, float], panels: int, time_axis: str
) -> tuple[Figure, list[Axes], float, float]:
    """The heatmap's figure and panels (the input's first, where drawn, sharing the time axis), and one map's width
    and height in inches; into ``ax`` where given."""
    if ax is None:
        fig = new_figure(figsize)
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
    return fig, axes, map_w, map_h


def _label_panels(
    axes: list[Axes], time_axis: str, row_names: list[str], shown_times: list[Any], index: np.ndarray,
    size: tuple[float, float],
) -> None:
    """The heatmap's ticks and axis labels on each panel (``size``: one map's width and height in inches), said once
    where two panels share an axis."""
    map_w, map_h = size
    ylabel, xlabel = ("time step", "feature") if time_axis == "y" else ("feature", "time step")
    for panel in axes:
        if time_axis == "y":
            set_ticks(panel, "x", row_names, map_w)
            set_ticks(panel, "y", shown_times, map_h, index=index)
        else:
            set_ticks(panel, "x", shown_times, map_w, index=index)
            set_ticks(panel, "y", row_names, map_h)
        panel.set_xlabel(xlabel)
        panel.set_ylabel(ylabel)
        frame_axes(panel)
    if len(axes) == 2 and time_axis == "y":
        axes[1].set_ylabel("")
        axes[1].tick_params(labelleft=False)
    if len(axes) == 2 and time_axis == "x":
        axes[0].set_xlabel("")
        axes[0].tick_params(labelbottom=False)


def _write_cells(panel: Axes, grid: np.ndarray, limit: float, cell_w: float, cell_h: float) -> None:
    """Each cell's value written in it (none where it reads 0), in a size its cells of ``cell_w`` x ``cell_h`` inches
    hold, white on the darkest colours."""
    texts = [[cell_text(v, limit) for v in row] for row in grid]
    longest = max(len(t) for row in texts for t in row)
    size_pt = float(np.clip(min(cell_w * 72 / (0.62 * longest + 0.4), cell_h * 72 * 0.45), 5.5, 10.0))
    for (i, j), value in np.ndenumerate(grid):
        if texts[i][j] != "0":
            panel.text(
                j, i, texts[i][j], ha="center", va="center", fontsize=size_pt,
                color="white" if abs(value) > 0.6 * limit else INK,
            )  # fmt: skip


def _output_rows(parts: Any, outputs: Sequence[Any] | None, picked: bool, rows: int) -> tuple[list[int] | None, list[str]]:
    """The output step of each of an output map's ``rows`` (None where nothing tells them) and the rows' default
    labels: from the ``outputs`` listed, else every output step of a sequence output (``picked``: one channel of
    it chosen by ``output=``)."""
    if outputs is not None:
        listed = [tuple(o) if isinstance(o, (tuple, list)) else (int(o),) for o in outputs]
        if len(listed) != rows:
            raise ValueError(f"{len(listed)} outputs for {rows} explained outputs in values")
        channels = {o[1:] for o in listed}
        return [int(o[0]) for o in listed], [str(o[0]) if len(channels) == 1 else str(o) for o in listed]
    if picked or (parts.output_axes is not None and parts.output_axes >= 2):
        return list(range(rows)), [str(t) for t in range(rows)]
    return None, [f"output {j}" for j in range(rows)]


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
    parts = unpack(values)
    phi = parts.values
    if sample is not None:
        phi = phi[sample]
    label = None
    if output is not None:
        index = output_index(parts, output)
        where: tuple[Any, ...] = (Ellipsis, *index)
        phi = phi[where]
        label = output_label(parts, index)
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
    output_steps, default = _output_rows(parts, outputs, output is not None, rows)
    row_labels = axis_labels(output_labels, None, rows, "", "output labels") if output_labels is not None else default
    times = axis_labels(time_labels, parts.time_labels, count, "", "time labels")
    window = step_window(steps, count)
    grid = per_step[window].T  # (J, n)
    n = len(window)
    if figsize is None:
        row_h = float(np.clip(4.5 / rows, 0.14, 0.45))
        figsize = (float(np.clip(n * 0.45 + 3.6, 6.5, 14.0)), float(np.clip(rows * row_h + 2.6, 4.0, 14.0)))
    fig, panel = figure_and_axes(ax, figsize)
    scale = color_scale(grid, vmax, percentile)
    extent = (window[0] - 0.5, window[-1] + 0.5, rows - 0.5, -0.5)
    image = panel.imshow(
        grid, cmap=DIVERGING, vmin=-scale.limit, vmax=scale.limit, aspect="auto", interpolation="nearest", extent=extent
    )
    inches_w = figsize[0] - 3.0 if ax is None else ax.get_position().width * fig.get_figwidth()
    inches_h = figsize[1] - 2.4 if ax is None else ax.get_position().height * fig.get_figheight()
    set_ticks(panel, "x", [times[t] for t in window], inches_w, index=window, coords=window.astype(np.float64))
    set_ticks(panel, "y", row_labels, inches_h)
    panel.set_xlabel("input step")
    panel.set_ylabel("explained output step" if output_steps is not None else "explained output")
    frame_axes(panel)
    if diagonal is None:
        diagonal = output_steps is not None
    if diagonal and output_steps is not None:
        inside = [(t, r) for r, t in enumerate(output_steps) if window[0] <= t <= window[-1]]
        if inside:
            panel.plot(
                [t for t, _ in inside], [r for _, r in inside], linestyle="none", marker="s",
                markersize=max(2.5, min(7.0, 150 / rows)), markerfacecolor="none", markeredgecolor=INK, markeredgewidth=0.9,
            )  # fmt: skip
    totals = per_step.sum(0)
    if rows <= 40:
        twin = panel.twinx()
        twin.set_ylim(panel.get_ylim())
        set_ticks(twin, "y", [f"Σφ {plain(float(t))}" for t in totals], inches_h, fontsize=8)
        twin.tick_params(length=0)
        for spine in twin.spines.values():
            spine.set_visible(False)
    fig.colorbar(
        image, ax=panel, location="bottom", shrink=0.6, aspect=40, pad=0.02,
        extend=extend_arrows(grid, -scale.limit, scale.limit),
        label=scale.label("φ summed over features: red raises the output, blue lowers it"),
    )  # fmt: skip
    if title is None:
        title = "Which input steps each explained output draws on"
        title += f" ({label})" if label else ""
        title += f", sample {sample}" if sample is not None else ""
        title += "\neach row adds up to its f(x) − E[f] (right)"
        title += "; □ input step = output step" if diagonal and output_steps is not None else ""
        note = window_note(window, count, times)
        title += f"; {note}" if note else ""
    put_title(fig, ax, title)
    return fig
