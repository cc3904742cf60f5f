"""Plots of one sequence over time: attribution per step under its running total, and each
feature's raw signal with its steps coloured by φ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .inputs import (
    Output,
    Steps,
    axis_labels,
    from_estimate,
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
    NEGATIVE,
    POSITIVE,
    color_scale,
    extend_arrows,
    identity,
    new_figure,
    number_format,
    plain,
    put_title,
    rgb,
    set_ticks,
    style_axes,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    errors: Any = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Attribution per time step (summed over features) of one sequence, under its running total.

    ``values`` may also be a :class:`rnnshap.ShapleyEstimate` with players ``"steps"``: its values
    are drawn with their 95 % intervals (± 1.96 standard errors) as error bars, and its base values
    start the running total. ``errors=``: standard errors shaped like ``values`` to draw so with
    any other values (per step: with features, the step's error is their root sum of squares, which
    treats the features' errors as independent).

    ``values`` as for :func:`heatmap`: (T, F) or (T,) per sequence, a batch with ``sample``, an
    output axis with ``output``, or a shap.Explanation. The top panel (``cumulative=True``) is the
    running total: it starts at E[f] (0 when E[f] is unknown: pass ``base_value=``), adds each
    step's φ and ends at f(x). ``ax=`` draws the bars only, into your axes. ``feature_names`` is
    accepted for symmetry with the other plots (features are summed here).
    """
    del feature_names  # summed over
    values, errors, base_value = from_estimate(values, errors, base_value, "over_time", sample)
    parts = unpack(values, None, base_value)
    phi, _, label, base = pick_sequence(parts, sample, output, (1, 2), "over_time")
    per_step = phi.sum(-1) if phi.ndim == 2 else phi
    step_errors = None
    if errors is not None:
        se, _, _, _ = pick_sequence(unpack(np.asarray(errors, dtype=np.float64)), sample, output, (1, 2), "over_time (errors)")
        if se.shape != phi.shape:
            raise ValueError(f"errors of shape {np.shape(errors)} do not match the values' shape {np.shape(parts.values)}")
        step_errors = se if se.ndim == 1 else np.sqrt((se**2).sum(-1))
    count = len(per_step)
    times = axis_labels(time_labels, parts.time_labels, count, "", "time labels")
    window = step_window(steps, count)
    n = len(window)
    width = float(np.clip(n * 0.4 + 2.4, 6.0, 14.0))
    if figsize is None:
        figsize = (width, 5.2 if cumulative else 3.6)
    fig: Any
    if ax is not None:
        fig, bars_ax, total_ax = ax.figure, ax, None
    else:
        fig = new_figure(figsize)
        if cumulative:
            total_ax = fig.add_subplot(2, 1, 1)
            bars_ax = fig.add_subplot(2, 1, 2, sharex=total_ax)
        else:
            total_ax, bars_ax = None, fig.add_subplot()
    positions = window.astype(np.float64)
    shown = per_step[window]
    colors = [rgb(POSITIVE) if v >= 0 else rgb(NEGATIVE) for v in shown]
    bars_ax.bar(positions, shown, color=colors, width=0.8 if n <= 60 else 1.0, linewidth=0)
    bars_ax.axhline(0.0, color="#444444", linewidth=0.8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=rgb(POSITIVE), label="raises the output"), Patch(color=rgb(NEGATIVE), label="lowers it")]
    if step_errors is not None:
        bars_ax.errorbar(positions, shown, yerr=1.96 * step_errors[window], fmt="none", ecolor=INK, elinewidth=1.0, capsize=2.5)
        handles.append(Line2D([], [], color=INK, marker="|", linestyle="none", markersize=8, label="95 % interval"))
    bars_ax.legend(
        handles=handles,
        frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(handles), borderaxespad=0.1,
    )  # fmt: skip
    bars_ax.set_ylabel("φ of the step\n(Σ over features)")
    bars_ax.set_xlabel("time step")
    bars_ax.set_xlim(positions[0] - 0.6, positions[-1] + 0.6)
    fig_w = fig.get_figwidth() if ax is None else ax.get_position().width * fig.get_figwidth()
    set_ticks(bars_ax, "x", [times[t] for t in window], fig_w - 1.6, index=window, coords=positions)
    style_axes(bars_ax, "y")
    if total_ax is not None:
        start = 0.0 if base is None else base
        number = number_format(start, float(per_step.sum()), start + float(per_step.sum()))
        running = start + np.concatenate([[0.0], np.cumsum(per_step)])  # running[t]: before step t
        # the total after each step sits on that step's tick, above its bar; the line starts half a step
        # before the first one, at the total before it (E[f] for the whole sequence)
        xs = np.concatenate([[positions[0] - 0.5], positions])
        ys = running[window[0] : window[-1] + 2]
        start_text = "E[f]" if base is not None else "start (E[f] not given)"
        end_text = "f(x)" if base is not None else "Σφ"
        whole = window[-1] == count - 1
        total_ax.plot(
            xs, ys, color=INK, linewidth=1.4, marker="o" if n <= 40 else None, markersize=3.5, markevery=list(range(1, len(xs))),
            label=f"running total, ending at {end_text} = {number(float(running[-1]))}" if whole else "running total",
        )  # fmt: skip
        total_ax.axhline(start, color="#888888", linewidth=0.9, linestyle="--", label=f"{start_text} = {number(start)}")
        # the numbers in a legend that matplotlib places where it hides no line
        total_ax.legend(loc="best", fontsize=8.5, frameon=True, framealpha=0.9, edgecolor="none", handlelength=1.6)
        total_ax.set_ylabel("running total\nE[f] + Σφ so far" if base is not None else "running Σφ")
        style_axes(total_ax, "y")
    if title is None:
        head = f"{label} over time" if label else "Attribution over time"
        title = f"{head}: {identity(base, float(per_step.sum()))}"
        note = window_note(window, count, times)
        if note:
            title += f"\n{note}; Σφ there = {plain(float(shown.sum()))}"
    put_title(fig, ax, title)
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

    One panel per feature (the ``max_features`` with the largest mean ``|φ|`` over the drawn steps,
    largest first; all in input order when they fit): the input as a black line, each step's
    background red where that (step, feature) raises the output and blue where it lowers it, on
    one colour scale for all panels. Beside each name, that feature's Σφ. ``values`` and ``data``
    as for :func:`heatmap`; the input is needed (an Explanation carries it).
    """
    parts = unpack(values, data, base_value)
    phi, x, label, base = pick_sequence(parts, sample, output, (1, 2), "signal")
    if x is None:
        raise ValueError("signal draws the input: pass data= (the input of the explained sequences) or an Explanation")
    if phi.ndim == 1:
        phi, x = phi[:, None], x[:, None]
    x = x.astype(np.float64)
    count, features = phi.shape
    times, names, window = steps_and_features(parts, count, features, time_labels, feature_names, steps)
    n = len(window)
    kept, rest = top_features(np.abs(phi[window]).mean(0), max_features)
    rows = len(kept)
    panel_h = float(np.clip(4.2 / rows, 0.62, 1.1))
    if figsize is None:
        figsize = (float(np.clip(n * 0.4 + 3.4, 6.5, 14.0)), float(np.clip(rows * panel_h + 1.8, 3.0, 16.0)))
    fig = new_figure(figsize)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    scale = color_scale(phi[window][:, kept], vmax, percentile)
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
            f"{names[j]}\nΣφ {plain(float(phi[:, j].sum()))}", rotation=0, ha="right", va="center", fontsize=9, labelpad=6
        )
        panel.yaxis.set_major_locator(_max_locator(2))
        panel.tick_params(axis="y", labelsize=7, length=2)
        panel.tick_params(axis="x", length=0)
        for spine in panel.spines.values():
            spine.set_color("#bbbbbb")
    axes[-1].set_xlim(positions[0] - 0.5, positions[-1] + 0.5)
    set_ticks(axes[-1], "x", [times[t] for t in window], figsize[0] - 2.6, index=window, coords=positions)
    axes[-1].set_xlabel("time step")
    if image is not None:
        fig.colorbar(
            image, ax=list(axes), shrink=min(1.0, 3.0 / (rows * panel_h)), aspect=25,
            extend=extend_arrows(phi[window][:, kept], -scale.limit, scale.limit),
            label=scale.label("φ of (step, feature)\nred raises, blue lowers"),
        )  # fmt: skip
    if title is None:
        head = f"Input and attributions to {label}" if label else "Input and attributions"
        title = f"{head}: {identity(base, float(phi.sum()))}"
        notes = [window_note(window, count, times)]
        if rest.size:
            notes.append(
                f"top {rows} of {features} features by mean |φ|; the other {rest.size} add {plain(float(phi[:, rest].sum()))}"
            )
        if any(notes):
            title += "\n" + "; ".join(n for n in notes if n)
    put_title(fig, None, title)
    return fig


def _max_locator(count: int) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(count)
