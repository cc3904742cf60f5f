"""Tokens highlighted by their attribution, as HTML (no matplotlib)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .inputs import (
    Output,
    pick_sequence,
    unpack,
)
from .style import (
    NEGATIVE,
    POSITIVE,
    symmetric_limit,
)

if TYPE_CHECKING:
    pass


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

    Red tokens raise the output, blue ones lower it; the colour's strength is ``|φ|`` / ``max_abs``
    (default: the largest ``|φ|`` of these tokens; pass a common value to compare several sequences).
    Each token carries its value in a tooltip and a ``data-phi`` attribute, and the class
    ``rnnshap-pos`` or ``rnnshap-neg``. ``values``: (T,) per token, a batch with ``sample``, an
    output axis with ``output``, or a shap.Explanation. In a notebook:
    ``IPython.display.HTML(token_html(tokens, phi))``.
    """
    parts = unpack(values)
    phi, _, _, _ = pick_sequence(parts, sample, output, (1,), "token_html")
    tokens = list(tokens)
    if len(tokens) != len(phi):
        raise ValueError(f"{len(tokens)} tokens and {len(phi)} attributions")
    scale = float(max_abs) if max_abs is not None else symmetric_limit(phi)
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
            f'<span style="color: rgb{NEGATIVE}">■</span> lowers it; '
            f'<span style="white-space: nowrap">full colour at |φ| = {scale:.3g}</span></div>'
        )
    font = "ui-monospace, Menlo, Consolas, monospace"
    return f'<div class="rnnshap-tokens" style="line-height: 2.1; font-family: {font}">{body}{note}</div>'
