"""Interactions between players of one sequence: a player × player map with the main effects on the diagonal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .style import DIVERGING, cell_text, color_scale, extend_arrows, figure_and_axes, frame_axes, identity, put_title

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def interactions(
    result: Any,
    *,
    sample: int = 0,
    output: int = 0,
    player_names: Sequence[Any] | None = None,
    annotate: bool | None = None,
    vmax: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One sample's order-2 Shapley interactions (``explainer.shapley_interactions(X)``) as a map: the
    first-order values on the diagonal, each pair's interaction split in half over its two cells (so
    for an efficient index the map adds up to f(x) − E[f], as shap's interaction values do).

    Red raises the output, blue lowers it; ``output`` is the position among the explained outputs;
    ``annotate`` writes each cell's value (default: up to 16 players)."""
    if not hasattr(result, "matrix") or not hasattr(result, "interactions"):
        raise TypeError(f"interactions draws the result of explainer.shapley_interactions(X), not {type(result).__name__}")
    matrix = result.matrix()
    n, P, _, k = matrix.shape
    if not -n <= sample < n:
        raise ValueError(f"sample={sample} for a result of {n} samples")
    if not -k <= output < k:
        raise ValueError(f"output={output} for a result of {k} explained outputs")
    values = matrix[sample, :, :, output]
    names = [str(p) for p in player_names] if player_names is not None else _names(result, P)
    if len(names) != P:
        raise ValueError(f"{len(names)} player_names for {P} players")
    side = float(np.clip(0.45 * P + 2.0, 4.0, 12.0))
    given = ax
    fig, ax = figure_and_axes(ax, figsize or (side + 1.2, side))
    scale = color_scale(values, vmax, None)
    image = ax.imshow(values, cmap=DIVERGING, vmin=-scale.limit, vmax=scale.limit, interpolation="nearest")
    ax.set_xticks(range(P), names, rotation=90 if max(len(s) for s in names) > 3 else 0, fontsize=8)
    ax.set_yticks(range(P), names, fontsize=8)
    frame_axes(ax)
    if annotate if annotate is not None else P <= 16:
        for i in range(P):
            for j in range(P):
                if values[i, j] != 0:
                    strong = abs(values[i, j]) > 0.6 * scale.limit
                    ax.text(j, i, cell_text(values[i, j], scale.limit), ha="center", va="center", fontsize=7,
                            color="white" if strong else "#333333", fontweight="bold" if i == j else "normal")  # fmt: skip
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, extend=extend_arrows(values, -scale.limit, scale.limit))
    bar.set_label(scale.label("main effect (diagonal), half an interaction (off)"), fontsize=8)
    base = float(result.base_values[sample, output])
    total = float(result.outputs[sample, output]) - base
    exact = "exact" if bool(result.exact[sample]) else f"estimated, {int(result.n_evals[sample])} rows"
    put_title(fig, given, title or f"{result.index} interactions ({exact}): {identity(base, total)}")
    return fig


def _names(result: Any, count: int) -> list[str]:
    prefix = {"steps": "t", "features": "f"}.get(result.players, "p")
    return [f"{prefix}{i}" for i in range(count)]
