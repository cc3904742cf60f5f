"""Shapley estimates with their error bars, beside DeepSHAP's values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .inputs import is_estimate
from .style import INK, NEGATIVE, POSITIVE, figure_and_axes, identity, put_title, rgb, style_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def shapley_bars(
    estimate: Any,
    *,
    sample: int = 0,
    output: int | tuple[int, ...] | None = None,
    player_names: Sequence[Any] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One sample's Shapley values per player (a :class:`rnnshap.ShapleyEstimate`), with their 95 %
    intervals (± 1.96 standard errors; none where the values are exact), and DeepSHAP's values for
    the same players beside them where the estimate has them (``DeepExplainer.shapley_values``).

    ``output``: the output to draw (an index into the outputs' shape; needed for several outputs).
    Players ``"cells"`` are drawn one bar per entry (flattened)."""
    if not is_estimate(estimate):
        raise TypeError(f"shapley_bars draws a ShapleyEstimate (explainer.shapley_values(X)), not {type(estimate).__name__}")
    if isinstance(estimate.values, list):
        raise ValueError(
            "shapley_bars draws one input's players: this estimate has a list per input (players='cells' on several inputs)"
        )
    n = estimate.values.shape[0]
    if not -n <= sample < n:
        raise ValueError(f"sample={sample} for an estimate of {n} samples")

    def pick(a: np.ndarray) -> np.ndarray:
        one = np.asarray(a, dtype=np.float64)[sample]
        outputs = np.asarray(estimate.base_values).ndim - 1  # the output axes after the players'
        if estimate.players == "cells":
            one = one.reshape(-1, *one.shape[one.ndim - outputs :]) if outputs else one.reshape(-1)
        if outputs:
            if output is None:
                if int(np.prod(one.shape[1:])) != 1:
                    raise ValueError(f"the estimate has outputs of shape {one.shape[1:]}: choose one with output=")
                return one.reshape(len(one))
            index = (output,) if isinstance(output, (int, np.integer)) else tuple(output)
            return one[(slice(None), *index)]
        return one

    values, stderr = pick(estimate.values), pick(estimate.stderr)
    deepshap = None if estimate.deepshap is None else pick(estimate.deepshap)
    count = len(values)
    names = [str(p) for p in player_names] if player_names is not None else _names(estimate.players, count)
    if len(names) != count:
        raise ValueError(f"{len(names)} player_names for {count} players")
    if figsize is None:
        figsize = (float(np.clip(count * 0.45 + 2.5, 5.0, 14.0)), 3.8)
    fig, axes = figure_and_axes(ax, figsize)
    positions = np.arange(count, dtype=np.float64)
    width = 0.38 if deepshap is not None else 0.7
    shift = width / 2 if deepshap is not None else 0.0
    colors = [rgb(POSITIVE) if v >= 0 else rgb(NEGATIVE) for v in values]
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    exact = bool(np.asarray(estimate.exact)[sample])
    axes.bar(positions - shift, values, width=width, color=colors, linewidth=0)
    handles: list[Any] = [
        Patch(color=rgb(POSITIVE), label="Shapley value, raises the output" if exact else "Shapley estimate, raises the output"),
        Patch(color=rgb(NEGATIVE), label="lowers it"),
    ]
    finite = np.isfinite(stderr) & (stderr > 0)
    if finite.any():
        axes.errorbar(
            positions[finite] - shift, values[finite], yerr=1.96 * stderr[finite], fmt="none", ecolor=INK, elinewidth=1.0,
            capsize=2.5,
        )
        handles.append(Line2D([], [], color=INK, marker="|", linestyle="none", markersize=8, label="95 % interval"))
    if deepshap is not None:
        axes.bar(positions + shift, deepshap, width=width, color="none", edgecolor="#666666", linewidth=1.0, hatch="////")
        handles.append(Patch(facecolor="none", edgecolor="#666666", hatch="////", label="DeepSHAP"))
    axes.axhline(0.0, color="#444444", linewidth=0.8)
    axes.set_xticks(positions, names, rotation=0 if count <= 16 else 90, fontsize=8.5)
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylabel("φ")
    axes.set_xlabel({"steps": "time step", "features": "feature", "cells": "input entry"}.get(estimate.players, "player"))
    axes.legend(handles=handles, frameon=False, fontsize=8, loc="best")
    style_axes(axes, "y")
    if title is None:
        total = float(values.sum())
        base = np.asarray(estimate.base_values, dtype=np.float64)[sample]
        base_value = float(base.reshape(-1)[0]) if base.size == 1 else (float(base[output]) if output is not None else None)
        how = "exact (every coalition)" if exact else f"estimated from {int(np.asarray(estimate.n_evals)[sample])} rows"
        which = "" if output is None else f", output {output}"
        title = f"Shapley values of sample {sample}{which}, {how}: {identity(base_value, total)}"
    put_title(fig, ax, title)
    return fig


def _names(players: str, count: int) -> list[str]:
    prefix = {"steps": "t", "features": "f", "cells": "cell "}.get(players, "player ")
    return [f"{prefix}{i}" for i in range(count)]
