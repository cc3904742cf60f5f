"""What the plots share in how they look: one colour rule (one scale for one quantity), number
and title formats, tick labels that never overlap, figures made outside pyplot."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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

TICK_SIZE = 9.0


def new_figure(figsize: tuple[float, float]) -> Figure:
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


def nice_step(count: int, max_ticks: int) -> int:
    if count <= max_ticks:
        return 1
    raw = count / max(max_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return int(factor * magnitude)
    return int(10 * magnitude)


def set_ticks(
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
        step = nice_step(count, max_ticks)
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


def choose_time_axis(time_axis: str, steps: int, features: int) -> str:
    if time_axis == "auto":
        return "x" if steps > 16 and steps > 2 * features else "y"
    if time_axis not in ("x", "y"):
        raise ValueError(f"time_axis must be 'x', 'y' or 'auto', got {time_axis!r}")
    return time_axis


def rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def symmetric_limit(values: np.ndarray) -> float:
    limit = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return limit if limit > 0 else 1.0


@dataclass
class Scale:
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
        bound = f"±{plain(self.limit)}" if symmetric else plain(self.limit)
        return f"{what}\nclipped at {bound}{source}; largest {plain(self.largest)}"


#: below this many cells a percentile is no better than the largest value
MIN_CELLS_TO_CLIP = 100


def color_scale(values: np.ndarray, vmax: float | None, percentile: float | None) -> Scale:
    magnitude = np.abs(values[np.isfinite(values)])
    largest = float(magnitude.max()) if magnitude.size else 0.0
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be positive, got {vmax}")
        return Scale(float(vmax), largest, None)
    if percentile is None or percentile >= 100 or magnitude.size < MIN_CELLS_TO_CLIP:
        return Scale(largest if largest > 0 else 1.0, largest, None)
    limit = float(np.percentile(magnitude, percentile))
    if limit >= 0.9 * largest or limit <= 0:  # nothing worth clipping
        return Scale(largest if largest > 0 else 1.0, largest, None)
    return Scale(limit, largest, float(percentile))


def extend_arrows(values: np.ndarray, low: float, high: float) -> str:
    finite = values[np.isfinite(values)]
    below, above = bool((finite < low).any()), bool((finite > high).any())
    return "both" if below and above else "min" if below else "max" if above else "neither"


def plain(value: float) -> str:
    """A number with 3 significant digits, a true minus sign, no exponent for everyday sizes."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if not 1e-4 <= abs(value) < 1e6:
        return f"{value:.2e}".replace("-", "−")
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}".replace("-", "−")


def cell_text(value: float, scale: float) -> str:
    """A cell's value, to 2 significant digits of the colour limit."""
    decimals = int(np.clip(1 - np.floor(np.log10(scale)), 0, 6)) if scale > 0 else 2
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text.replace("-", "−")


def number_format(*values: float) -> Any:
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


def identity(base: float | None, total: float) -> str:
    """The title convention: ``f(x) = E[f] + Σφ = 0.12 + 0.85 = 0.97`` (``Σφ = f(x) − E[f] = …`` without E[f])."""
    if base is None:
        return f"Σφ = f(x) − E[f] = {plain(total)}"
    fx = base + total
    number = number_format(base, total, fx)
    return f"f(x) = E[f] + Σφ = {number(base)} {'+' if total >= 0 else '−'} {number(abs(total))} = {number(fx)}"


def wrap(text: str, inches: float, fontsize: float) -> str:
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


def put_title(fig: Figure, ax: Axes | None, text: str, fontsize: float = 11.0) -> None:
    """The figure's title, or the axes' title when drawing into the caller's axes."""
    if ax is not None:
        box = ax.get_position()
        ax.set_title(wrap(text, box.width * fig.get_figwidth(), fontsize), fontsize=fontsize)
    else:
        fig.suptitle(wrap(text, fig.get_figwidth() - 0.2, fontsize), fontsize=fontsize)


def style_axes(ax: Axes, grid: Any = None) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid:
        ax.grid(axis=grid, color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)


def frame_axes(ax: Axes) -> None:
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_color("#bbbbbb")
        spine.set_linewidth(0.8)


def figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = new_figure(figsize)
    return fig, fig.add_subplot()
