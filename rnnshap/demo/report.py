"""The demo's report folder: ``index.html``, its PNG plots and ``summary.json``.

The plots need matplotlib (``pip install 'rnnshap[plot]'``); without it the report is written
without them and says how to get them. Each family of figures (the digits' heatmaps, their row
charts, the classes of one digit, the misclassified digit's comparison) has one colour scale, so
its figures compare at a glance; the PNGs are drawn at 1.5× for sharp text and shown at their
natural size (about 11 px per point of text) on a wide page. ``summary.json`` holds the numbers of the summary:
``results`` (the same on every run with the same seed and settings), ``timing`` and
``environment`` (which vary).
"""

from __future__ import annotations

import html
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__, plots
from ..plots import style
from .run import DemoResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150  # pixels per inch of the PNG files; the page shows them at 100 per inch (sharp on dense screens)
SHOWN_DPI = 100
ROW_LABELS = [f"row {i}" for i in range(8)]
COLUMN_LABELS = [f"col {i}" for i in range(8)]


@dataclass
class Report:
    index: Path
    files: list[Path] = field(default_factory=list)
    has_plots: bool = False
    total_seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def summarize(result: DemoResult) -> dict[str, Any]:
    """The numbers of the report. ``results`` depends only on the settings and the seed."""
    values = result.shap_values.astype(np.float64)
    gap = result.outputs.astype(np.float64) - result.expected_value
    scale = np.maximum(np.abs(values).reshape(len(values), -1, values.shape[-1]).sum(1), np.abs(gap))
    relative = float((np.abs(values.sum((1, 2)) - gap) / np.maximum(scale, 1e-30)).max())
    return {
        "results": {
            "layer": result.layer,
            "seed": result.seed,
            "epochs": result.epochs,
            "samples": len(result.x),
            "background": result.n_background,
            "train_size": result.n_train,
            "test_size": result.n_test,
            "parameters": result.n_parameters,
            "accuracy": result.accuracy,
            "additivity_error": result.additivity_error,
            "relative_additivity_error": relative,
            "expected_value": [float(v) for v in result.expected_value],
            "held_out_indices": [int(v) for v in result.indices],
            "held_out_errors": result.held_out_errors,
            "labels": [int(v) for v in result.labels],
            "predictions": [int(v) for v in result.predictions],
            "predicted_output": [float(result.outputs[i, p]) for i, p in enumerate(result.predictions)],
            "attribution_sum": [float(values[i, :, :, p].sum()) for i, p in enumerate(result.predictions)],
        },
        "timing": {"train_seconds": result.train_seconds, "explain_seconds": result.explain_seconds},
        "environment": {
            "rnnshap": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "device": result.device,
        },
    }


def write_report(result: DemoResult, out: Path, *, command: str = "rnnshap demo", started: float | None = None) -> Report:
    """Write the report into ``out`` (created if needed); return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    report = Report(index=out / "index.html", summary=summarize(result))
    start = time.perf_counter()
    figures: dict[str, tuple[str, int]] = {}  # name: (file, width shown in CSS pixels)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        report.has_plots = False
    else:
        report.has_plots = True
        scales = Scales.of(result)
        for name, make in figure_makers(result, scales):
            fig = make()  # a Figure outside pyplot: nothing to close
            path = out / f"{name}.png"
            fig.savefig(path, dpi=DPI, facecolor="white")
            figures[name] = (path.name, round(fig.get_figwidth() * SHOWN_DPI))
            report.files.append(path)
    report.summary["timing"]["report_seconds"] = time.perf_counter() - start
    report.total_seconds = time.perf_counter() - (started if started is not None else start)
    report.summary["timing"]["total_seconds"] = report.total_seconds
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(report.summary, indent=2) + "\n", encoding="utf-8")
    report.index.write_text(_html(result, report.summary, figures, command), encoding="utf-8")
    report.files += [summary_path, report.index]
    return report


# -- figures --------------------------------------------------------------------------------------------------------
def _predicted_phi(result: DemoResult) -> np.ndarray:
    """(n, 8, 8): each digit's attributions to its predicted class."""
    return np.stack([result.shap_values[i, :, :, p] for i, p in enumerate(result.predictions)]).astype(np.float64)


def _wrong(result: DemoResult) -> list[int]:
    return [i for i in range(len(result.x)) if result.predictions[i] != result.labels[i]]


@dataclass
class Scales:
    """One scale for one quantity, in every figure that shows it (:meth:`of` reads them off a run)."""

    phi: float  # colour limit of φ per pixel: every heatmap, the classes of example 0, the misclassified digits
    bars: tuple[float, float]  # y range of every row chart's bars (φ per row)
    totals: tuple[float, float]  # y range of every row chart's running total
    rows: float  # colour limit of φ per row (the row chips), the largest |φ of a row|

    @staticmethod
    def of(result: DemoResult) -> Scales:
        phi = _predicted_phi(result)
        per_row = phi.sum(-1)
        base = np.array([result.expected_value[p] for p in result.predictions])
        running = base[:, None] + np.concatenate([np.zeros((len(phi), 1)), np.cumsum(per_row, 1)], axis=1)
        shown = [phi, np.moveaxis(result.shap_values[0], -1, 0)]  # φ to the predicted classes; example 0 to every class
        shown += [result.shap_values[i, :, :, result.labels[i]][None] for i in _wrong(result)]  # and to the true classes
        return Scales(
            style.color_scale(np.concatenate(shown).astype(np.float64), None, 99.0).limit,
            _padded(min(0.0, per_row.min()), max(0.0, per_row.max())),
            _padded(running.min(), running.max()),
            float(np.abs(per_row).max()) or 1.0,
        )


def _padded(low: float, high: float, pad: float = 0.08) -> tuple[float, float]:
    span = (high - low) or 1.0
    return float(low - pad * span), float(high + pad * span)


def figure_makers(result: DemoResult, scales: Scales) -> list[tuple[str, Any]]:
    """The report's figures as ``(file name without .png, a function that draws it)``, in the page's order:
    each draws a matplotlib Figure outside pyplot on the family's scale from ``scales``."""
    made: list[tuple[str, Any]] = [
        (
            "global_importance",
            lambda: plots.global_importance(
                result.shap_values,
                output=result.predictions,
                feature_names=COLUMN_LABELS,
                time_labels=ROW_LABELS,
                title=f"Mean |φ| over the {len(result.x)} explained digits, each for its predicted class",
                figsize=(7.2, 6.0),
            ),
        ),
        ("classes_0", lambda: _classes(result, 0, scales)),
    ]
    for i in range(len(result.x)):
        made.append((f"sample_{i}", lambda i=i: _sample(result, i, scales)))
        made.append((f"over_time_{i}", lambda i=i: _over_time(result, i, scales)))
    for i in _wrong(result):
        made.append((f"pushed_{i}", lambda i=i: _pushed(result, i, scales)))
    return made


def example_name(i: int, label: int) -> str:
    """How the report, its figures and the console name an explained digit: "example 3 (a 4)", "example 5 (an 8)"."""
    return f"example {i} ({'an' if int(label) == 8 else 'a'} {int(label)})"


def _name(result: DemoResult, i: int) -> str:
    return example_name(i, int(result.labels[i]))


def _outline(ax: Any, image: np.ndarray, threshold: float = 0.35) -> None:
    """The digit's outline along the edges of its cells, so that it never crosses a cell's value
    (a contour through the cells would, and draws a small diamond around a lone pixel)."""
    from matplotlib.collections import LineCollection

    ink = np.pad(image >= threshold, 1)
    segments = []
    for r, c in zip(*np.nonzero(ink[1:, 1:-1] != ink[:-1, 1:-1]), strict=True):  # a horizontal edge above cell (r, c)
        segments.append([(c - 0.5, r - 0.5), (c + 0.5, r - 0.5)])
    for r, c in zip(*np.nonzero(ink[1:-1, 1:] != ink[1:-1, :-1]), strict=True):  # a vertical edge left of cell (r, c)
        segments.append([(c - 0.5, r - 0.5), (c - 0.5, r + 0.5)])
    ax.add_collection(LineCollection(segments, colors="#222222", linewidths=1.0, alpha=0.6, capstyle="projecting"))


def _grid_ticks(ax: Any, rows: bool = True, columns: bool = True) -> None:
    """Row and column numbers of an 8 × 8 map."""
    ax.set_xticks(range(8), [str(c) for c in range(8)] if columns else [], fontsize=8)
    ax.set_yticks(range(8), [str(r) for r in range(8)] if rows else [], fontsize=8)
    ax.tick_params(length=0, pad=2)


def _sample(result: DemoResult, i: int, scales: Scales) -> Figure:
    """The digit, and its attributions to the predicted class with their values, on the family's colour scale."""
    predicted = int(result.predictions[i])
    fig = style.new_figure((6.0, 4.8))
    layout = fig.add_gridspec(1, 2, width_ratios=[1.0, 3.6])
    thumb, main = fig.add_subplot(layout[0]), fig.add_subplot(layout[1])
    thumb.imshow(result.x[i], cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    thumb.set_title("the digit", fontsize=10)
    thumb.set_xticks([])
    thumb.set_yticks([])
    plots.heatmap(
        result.shap_values,
        sample=i,
        output=predicted,
        feature_names=[str(c) for c in range(8)],
        time_labels=ROW_LABELS,
        vmax=scales.phi,
        annotate=True,
        ax=main,
        title=f"φ to class {predicted}",
    )
    _outline(main, result.x[i])
    main.set_xlabel("pixel column (feature)")
    main.set_ylabel("image row (time step)")
    verdict = "right" if predicted == result.labels[i] else "wrong"
    fig.suptitle(f"{_name(result, i)}, predicted {predicted} ({verdict})", fontsize=11)
    return fig


def _over_time(result: DemoResult, i: int, scales: Scales) -> Figure:
    predicted = int(result.predictions[i])
    fig = plots.over_time(
        result.shap_values,
        sample=i,
        output=predicted,
        base_value=result.expected_value,
        time_labels=[str(r) for r in range(8)],
        title=f"{_name(result, i)}: φ to class {predicted}, row by row",
        figsize=(4.6, 4.8),
    )
    total_ax, bars_ax = fig.axes
    bars_ax.set_ylim(*scales.bars)
    total_ax.set_ylim(*scales.totals)
    bars_ax.set_xlabel("image row (time step)")
    bars_ax.set_ylabel("φ of the row")
    return fig


def _two_decimals(value: float) -> str:
    text = f"{value:.2f}"
    return ("0.00" if float(text) == 0 else text).replace("-", "−")


def _classes(result: DemoResult, i: int, scales: Scales) -> Figure:
    """Attributions of one digit to each of the 10 classes, on the heatmaps' colour scale, with the digit's outline."""
    phi = result.shap_values[i].astype(np.float64)
    limit = scales.phi
    fig = style.new_figure((11.0, 5.8))
    axes = fig.subplots(2, 5)
    image: Any = None
    for k, ax in enumerate(axes.flat):
        image = ax.imshow(phi[:, :, k], cmap=style.DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest")
        _outline(ax, result.x[i])
        base, total = float(result.expected_value[k]), float(phi[:, :, k].sum())
        sums = f"{_two_decimals(base)} {'+' if total >= 0 else '−'} {_two_decimals(abs(total))} = {_two_decimals(base + total)}"
        chosen = k == result.predictions[i]
        ax.set_title(
            f"class {k}{' (predicted)' if chosen else ''}\n{sums}", fontsize=9, fontweight="bold" if chosen else "normal"
        )
        _grid_ticks(ax, rows=k % 5 == 0, columns=k >= 5)
        for spine in ax.spines.values():
            spine.set_color("#222222" if chosen else "#bbbbbb")
            spine.set_linewidth(2.0 if chosen else 0.8)
    fig.supxlabel("pixel column (feature)", fontsize=10)
    fig.supylabel("image row (time step)", fontsize=10)
    fig.colorbar(
        image,
        ax=axes,
        shrink=0.8,
        extend=style.extend_arrows(phi, -limit, limit),
        label="φ (red raises the class, blue lowers it)",
    )
    fig.suptitle(
        f"{_name(result, i)}, predicted {result.predictions[i]}: its attributions to every class\n"
        "each title: E[f] + Σφ = f(x) for that class",
        fontsize=11,
    )
    return fig


def _pushed(result: DemoResult, i: int, scales: Scales) -> Figure:
    """A misclassified digit: φ to the predicted class, to the true one, and their difference, on one colour scale."""
    predicted, label = int(result.predictions[i]), int(result.labels[i])
    to_predicted = result.shap_values[i, :, :, predicted].astype(np.float64)
    to_label = result.shap_values[i, :, :, label].astype(np.float64)
    difference = to_predicted - to_label
    panels = [
        (to_predicted, f"φ to {predicted} (predicted)\nΣφ = {style.plain(float(to_predicted.sum()))}"),
        (to_label, f"φ to {label} (the true class)\nΣφ = {style.plain(float(to_label.sum()))}"),
        (difference, f"difference: what pushed it to {predicted}\nΣ = {style.plain(float(difference.sum()))}"),
    ]
    limit = scales.phi
    fig = style.new_figure((11.0, 5.0))
    axes = fig.subplots(1, 3)
    image: Any = None
    for k, (ax, (values, title)) in enumerate(zip(axes, panels, strict=True)):
        image = ax.imshow(values, cmap=style.DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest")
        _outline(ax, result.x[i])
        ax.set_title(title, fontsize=10)
        _grid_ticks(ax, rows=k == 0)
        ax.set_xlabel("pixel column (feature)", fontsize=9)
    axes[0].set_ylabel("image row (time step)", fontsize=9)
    for (r, c), value in np.ndenumerate(difference):
        text = style.cell_text(float(value), limit)
        if text != "0":
            axes[2].text(
                c, r, text, ha="center", va="center", fontsize=7.5, color="white" if abs(value) > 0.6 * limit else "#222222"
            )
    fig.colorbar(
        image, ax=axes, shrink=0.85, extend=style.extend_arrows(np.stack([p for p, _ in panels]), -limit, limit),
        label="φ (the heatmaps' scale)",
    )  # fmt: skip
    base_gap = float(result.expected_value[predicted] - result.expected_value[label])
    number = style.number_format(base_gap, float(difference.sum()), base_gap + float(difference.sum()))
    p, q = _subscript(predicted), _subscript(label)
    total = float(difference.sum())
    fig.suptitle(
        f"{_name(result, i)}: the model says {predicted}. Why {predicted} over {label}? "
        f"Red in the difference pushed to {predicted}, blue to {label}\n"
        f"f{p}(x) − f{q}(x) = (E[f{p}] − E[f{q}]) + Σ difference = {number(base_gap)} "
        f"{'+' if total >= 0 else '−'} {number(abs(total))} = {number(base_gap + total)}",
        fontsize=11,
    )
    return fig


def _subscript(number: int) -> str:
    return str(number).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


# -- html -----------------------------------------------------------------------------------------------------------
_STYLE = """
  :root { --ink: #1d232b; --muted: #5b6573; --line: #e3e7ec; --accent: #b2182b; --card: #f7f8fa; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
         color: var(--ink); background: #ffffff; }
  main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
  header { border-bottom: 3px solid var(--accent); padding-bottom: 14px; margin-bottom: 22px; }
  h1 { font-size: 28px; margin: 0 0 6px; }
  h2 { font-size: 20px; margin: 34px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
  h3 { font-size: 16px; margin: 0 0 4px; }
  p { max-width: 900px; }
  p.lead { color: var(--muted); margin: 0; }
  .identity { font-variant-numeric: tabular-nums; color: var(--muted); margin: 0 0 10px; font-size: 14px; }
  .stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 14px; }
  .stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
  .stat .value { font-size: 26px; font-weight: 650; }
  .stat .label { color: var(--muted); font-size: 13px; }
  .stat.good .value { color: #1a7f37; }
  table { border-collapse: collapse; width: 100%; font-size: 14px; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top;
           overflow-wrap: anywhere; }
  th { width: 260px; color: var(--muted); font-weight: 500; }
  td.num { font-variant-numeric: tabular-nums; }
  .sample { border: 1px solid var(--line); border-radius: 10px; padding: 16px; margin: 0 0 18px; }
  .sample.wrong { border-color: #f0c36d; background: #fffbf2; }
  .badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 999px;
           vertical-align: 2px; }
  .badge.right { background: #dcf3e3; color: #1a7f37; }
  .badge.wrong { background: #fde2c4; color: #8a4b00; }
  .figures { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
  figure { margin: 0; max-width: 100%; }
  img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; display: block; }
  .tokens { margin-top: 10px; }
  .tokens .caption, .note { color: var(--muted); font-size: 13px; }
  .notice { background: #fff6e5; border: 1px solid #f0c36d; border-radius: 8px; padding: 12px 16px; margin: 18px 0; }
  code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
  pre { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto; }
  footer { margin-top: 40px; color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding-top: 12px; }
  @media (max-width: 640px) {
    body { font-size: 15px; }
    main { padding: 16px 12px 32px; }
    h1 { font-size: 23px; }
    h2 { font-size: 18px; margin-top: 26px; }
    .stats { grid-template-columns: 1fr 1fr; gap: 8px; }
    .stat { padding: 10px 12px; }
    .stat .value { font-size: 20px; }
    th, td { display: block; width: auto; padding: 2px 4px; }
    th { border-bottom: none; padding-top: 8px; }
    .sample { padding: 10px; }
  }
"""


def _image(figures: dict[str, tuple[str, int]], name: str, alt: str) -> str:
    """The figure at its natural size (never wider than the page), linked to the full-size PNG."""
    source, width = figures[name]
    return f'<figure><a href="{source}"><img src="{source}" width="{width}" alt="{html.escape(alt)}"></a></figure>'


def _summary_rows(result: DemoResult, summary: dict[str, Any], wrong: list[int]) -> list[tuple[str, str]]:
    """The report's summary table: the model, the data, what was explained, the additivity, the time and versions."""
    results, timing, environment = summary["results"], summary["timing"], summary["environment"]
    e = html.escape
    n = len(result.x)
    classes = len(set(result.labels.tolist()))
    right = n - len(wrong)
    chosen = (
        (
            f"one example of each of the {classes} classes that the model gets right"
            if right == classes and classes > 1
            else f"{right} examples the model gets right, of different classes"
            if right > 1
            else "one example the model gets right"
        )
        + (", and the first one it gets wrong" if wrong else "")
        + f" (the model misclassifies {results['held_out_errors']} of the {results['test_size']} held-out digits)"
    )
    rows = [
        ("Model", e(result.model_description)),
        (
            "Data",
            f"UCI optical handwritten digits (CC BY 4.0): {results['train_size']} for training, {results['test_size']} held "
            "out; each 8×8 image read row by row, one row per time step, its pixels the features",
        ),
        ("Held-out accuracy", f"{results['accuracy']:.2%}"),
        ("Explained", f"{chosen}; each explained for every class, against {results['background']} training digits as background"),
        (
            "Largest additivity error",
            f"{results['additivity_error']:.3e} absolute; {results['relative_additivity_error']:.2e} relative to the output's "
            "scale",
        ),
        ("Expected value E[f]", ", ".join(f"{k}: {v:+.3f}" for k, v in enumerate(results["expected_value"]))),
        (
            "Time",
            f"training {timing['train_seconds']:.2f} s, explaining {timing['explain_seconds']:.3f} s, report "
            f"{timing['report_seconds']:.2f} s, total {timing['total_seconds']:.1f} s",
        ),
        (
            "Settings",
            f"layer {results['layer']}, seed {results['seed']}, epochs {results['epochs']}, device {e(environment['device'])}",
        ),
        (
            "Versions",
            f"rnnshap {environment['rnnshap']}, torch {e(environment['torch'])}, numpy {environment['numpy']}, Python "
            f"{environment['python']}",
        ),
    ]
    return rows


def _digit_article(result: DemoResult, figures: dict[str, tuple[str, int]], i: int, scale: float) -> list[str]:
    """The report's article on explained digit ``i``: its identity, its figures, what pushed a wrong prediction, and
    its rows' total attributions on the rows' colour scale ``scale``."""
    e = html.escape
    parts: list[str] = []
    predicted = int(result.predictions[i])
    phi = result.shap_values[i, :, :, predicted]
    right = predicted == result.labels[i]
    badge = '<span class="badge right">right</span>' if right else '<span class="badge wrong">wrong</span>'
    identity = style.identity(float(result.expected_value[predicted]), float(phi.sum()))
    parts.append(
        f'<article class="sample{"" if right else " wrong"}" id="sample-{i}"><h3>{e(_name(result, i)).capitalize()}, '
        f"predicted {predicted} {badge}</h3>"
        f'<p class="identity">score of class {predicted}: {e(identity)}</p>'
    )
    shown = [name for name in (f"sample_{i}", f"over_time_{i}") if name in figures]
    if shown:
        parts.append('<div class="figures">')
        parts += [_image(figures, name, f"attributions of {_name(result, i)}") for name in shown]
        parts.append("</div>")
    if not right and f"pushed_{i}" in figures:
        parts += [
            f"<p>What pushed it to {predicted} rather than {result.labels[i]}: φ to each of the two classes and their "
            f"difference, on one colour scale. Red pixels in the difference favour {predicted}, blue ones "
            f"{result.labels[i]}; "
            "the difference adds up to the gap between the two scores, less the gap between their means over the "
            "background.</p>",
            '<div class="figures">',
            _image(figures, f"pushed_{i}", f"why {_name(result, i)} was classified as {predicted}"),
            "</div>",
        ]
    parts.append(
        '<div class="tokens"><div class="caption">Each row\'s total attribution to the predicted class '
        "(hover for the value; one colour scale for all digits):</div>"
        f"{plots.token_html(ROW_LABELS, phi.sum(-1), max_abs=scale)}</div></article>"
    )
    return parts


def _html(result: DemoResult, summary: dict[str, Any], figures: dict[str, tuple[str, int]], command: str) -> str:
    results, timing, environment = summary["results"], summary["timing"], summary["environment"]
    e = html.escape
    n = len(result.x)
    wrong = _wrong(result)
    stats = [
        ("good", f"{results['accuracy']:.1%}", f"held-out accuracy ({results['test_size']} digits)"),
        ("good", f"{results['additivity_error']:.1e}", "largest |Σφ − (f(x) − E[f])| over all digits and classes"),
        (
            "",
            f"{timing['explain_seconds']:.2f} s",
            f"to explain {n} digits × 10 classes against {results['background']} references",
        ),
        ("", f"{timing['train_seconds']:.1f} s", f"to train, {results['epochs']} epochs on {results['train_size']} digits"),
    ]
    rows = _summary_rows(result, summary, wrong)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rnnshap demo report: {e(result.layer)}, seed {result.seed}</title><style>{_STYLE}</style></head><body><main>",
        "<header><h1>rnnshap demo report</h1>",
        f'<p class="lead">{"An" if result.layer == "lstm" else "A"} {e(result.kind)} reads handwritten digits row by row. '
        "rnnshap explains its "
        "predictions with DeepSHAP and exact rules through the recurrent layer: for every digit and class the attributions φ "
        "add up to the model's output minus its mean over the background, f(x) = E[f] + Σφ, to float precision.</p></header>",
        '<section class="stats">',
        *(
            f'<div class="stat {cls}"><div class="value">{value}</div><div class="label">{e(label)}</div></div>'
            for cls, value, label in stats
        ),
        "</section>",
    ]
    if not figures:
        parts.append(
            '<div class="notice"><strong>No plots:</strong> matplotlib is not installed. Install the plot extra, '
            "<code>pip install 'rnnshap[plot]'</code>, and run the demo again for the heatmaps.</div>"
        )
    parts += ["<h2>Summary</h2><table>", *(f'<tr><th>{k}</th><td class="num">{v}</td></tr>' for k, v in rows), "</table>"]
    parts += [
        "<h2>How to read it</h2>",
        "<p>Each explained digit gets φ, one number per pixel, for the class the model predicts. Red pixels raise that "
        "class's score f(x), blue ones lower it. The numbers always add up: the score is the mean score over the background "
        "E[f] plus the sum of all φ, <strong>f(x) = E[f] + Σφ</strong>, written with its numbers above every figure. "
        "Because the model reads the image row by row, φ summed over a row is what that row (time step) added; the row "
        "chart starts at E[f], adds each row's φ and ends at f(x).</p>",
    ]
    if "global_importance" in figures:
        parts += [
            "<h2>What the model looks at</h2>",
            "<p>Mean |φ| of the explained digits for their predicted class, per row (time step) and pixel column (feature), "
            "with its sums by row and by column.</p>",
            _image(figures, "global_importance", "mean absolute attribution by time step and feature"),
        ]
    parts.append("<h2>Explained digits</h2>")
    scales = Scales.of(result)
    scale = scales.rows
    if figures:
        parts.append(
            "<p>One colour scale for φ of a pixel in every figure of this report "
            f"(full colour at |φ| = {scales.phi:.3g}; beyond "
            "it, colours are clipped and the colour bar's arrows say so), one for φ of a row (the row chips, full colour at "
            f"|φ| = {scale:.3g}), and one pair of y scales for all row charts, so the examples compare at a glance. Click a "
            "figure for its full-size image.</p>"
        )
    for i in range(n):
        parts += _digit_article(result, figures, i, scale)
    if not wrong:
        parts.append(
            f'<p class="note">No explained digit is misclassified: the model gets {results["held_out_errors"]} of the '
            f"{results['test_size']} held-out digits wrong"
            + (", and a single explained digit shows a correct one." if n == 1 else ".")
            + "</p>"
        )
    if "classes_0" in figures:
        parts += [
            "<h2>Every class at once</h2>",
            "<p>The attributions of example 0 to each of the ten classes, on the heatmaps' colour scale, with the digit's "
            "outline. "
            "Each class's attributions add up to its own f(x) − E[f].</p>",
            _image(figures, "classes_0", "attributions of digit 0 to every class"),
        ]
    parts += [
        "<h2>Model</h2>",
        f"<pre>{e(result.model_text)}</pre>",
        f"<footer>Made by <code>{e(command)}</code> with rnnshap {environment['rnnshap']} on Python {e(sys.version.split()[0])}. "
        "The numbers under <em>results</em> in <code>summary.json</code> are the same on every run with the same seed and "
        "settings.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
