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
with the largest mean ``|φ|`` (the others summed into one row), ticks are thinned to round step
numbers, and colour limits are a high percentile of ``|φ|`` (``percentile=``), the colour bar saying
when colours are clipped.

Colours: red raises the output, blue lowers it, on a diverging scale centred at zero. Titles of
one sequence's plots read ``f(x) = E[f] + Σφ = …`` with the numbers (with numpy output, pass
``base_value=explainer.expected_value`` for E[f]).
"""

from __future__ import annotations

from .interactions import interactions
from .interop import flatten
from .many_samples import beeswarm_over_time, global_importance
from .one_sample import heatmap, output_map
from .shapley import shapley_bars
from .style import BAR, DIVERGING, GRID, IMPORTANCE, INK, NEGATIVE, POSITIVE, VALUES  # noqa: F401  (public colours)
from .timeline import over_time, signal
from .tokens import token_html

__all__ = [
    "beeswarm_over_time",
    "flatten",
    "global_importance",
    "interactions",
    "heatmap",
    "shapley_bars",
    "output_map",
    "over_time",
    "signal",
    "token_html",
]
