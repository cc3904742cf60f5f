"""The demo's report folder: ``index.html``, its PNG plots and ``summary.json``.

The plots need matplotlib (``pip install 'rnnshap[plot]'``); without it the report is written
without them and says how to get them. ``summary.json`` holds the numbers of the summary:
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

from . import __version__, plots
from .demo import DemoResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
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
    figures: dict[str, str] = {}
    try:
        plt = plots._pyplot()
    except ImportError:
        plt = None
    if plt is not None:
        report.has_plots = True
        for name, make in _figures(result):
            fig = make()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=DPI, facecolor="white")
            plt.close(fig)
            figures[name] = path.name
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
def _figures(result: DemoResult) -> list[tuple[str, Any]]:
    made: list[tuple[str, Any]] = [
        (
            "global_importance",
            lambda: plots.global_importance(
                result.shap_values,
                output=result.predictions,
                feature_names=COLUMN_LABELS,
                time_labels=ROW_LABELS,
                title=f"Mean |φ| over the {len(result.x)} explained digits, each for its predicted class",
                figsize=(7.5, 6.2),
            ),
        ),
        ("classes_0", lambda: _classes(result, 0)),
    ]
    for i in range(len(result.x)):
        made.append((f"sample_{i}", lambda i=i: _sample(result, i)))
        made.append((f"over_time_{i}", lambda i=i: _over_time(result, i)))
    return made


def _sample(result: DemoResult, i: int) -> Figure:
    predicted = int(result.predictions[i])
    gap = float(result.shap_values[i, :, :, predicted].sum())
    return plots.heatmap(
        result.shap_values,
        result.x,
        sample=i,
        output=predicted,
        feature_names=COLUMN_LABELS,
        time_labels=ROW_LABELS,
        title=f"Digit {i}: attributions to class {predicted}, Σφ = f(x) − E[f] = {gap:+.3f}",
        figsize=(9.6, 4.4),
    )


def _over_time(result: DemoResult, i: int) -> Figure:
    predicted = int(result.predictions[i])
    return plots.over_time(
        result.shap_values,
        sample=i,
        output=predicted,
        time_labels=ROW_LABELS,
        title=f"Digit {i}: class {predicted} row by row",
        figsize=(5.4, 4.4),
    )


def _classes(result: DemoResult, i: int) -> Figure:
    """Attributions of one digit to each of the 10 classes, on one colour scale, with the digit's outline."""
    plt = plots._pyplot()
    phi = result.shap_values[i]
    limit = float(np.abs(phi).max()) or 1.0
    fig, axes = plt.subplots(2, 5, figsize=(11, 5.2), layout="constrained")
    image = None
    for k, ax in enumerate(axes.flat):
        image = ax.imshow(phi[:, :, k], cmap=plots.DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.contour(result.x[i], levels=[0.35], colors="#222222", linewidths=0.8)
        weight = "bold" if k == result.predictions[i] else "normal"
        ax.set_title(
            f"class {k}: f(x) = {result.outputs[i, k]:+.2f}\n= E[f] {result.expected_value[k]:+.2f} + Σφ {phi[:, :, k].sum():+.2f}",
            fontsize=9,
            fontweight=weight,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#bbbbbb")
    fig.colorbar(image, ax=axes, shrink=0.8, label="φ (red raises the class, blue lowers it)")
    fig.suptitle(
        f"Digit {i} (label {result.labels[i]}, predicted {result.predictions[i]}): attributions to every class; f(x) = E[f] + Σφ",
        fontsize=12,
    )
    return fig


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
  h3 { font-size: 16px; margin: 0 0 8px; }
  p.lead { color: var(--muted); margin: 0; max-width: 900px; }
  .stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 14px; }
  .stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
  .stat .value { font-size: 26px; font-weight: 650; }
  .stat .label { color: var(--muted); font-size: 13px; }
  .stat.good .value { color: #1a7f37; }
  table { border-collapse: collapse; width: 100%; font-size: 14px; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { width: 260px; color: var(--muted); font-weight: 500; }
  td.num { font-variant-numeric: tabular-nums; }
  .sample { border: 1px solid var(--line); border-radius: 10px; padding: 16px; margin: 0 0 18px; }
  .figures { display: grid; grid-template-columns: 960fr 540fr; gap: 10px; align-items: start; }
  .figures img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
  @media (max-width: 800px) { .figures { grid-template-columns: 1fr; } }
  img.wide { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
  .tokens { margin-top: 10px; }
  .tokens .caption { color: var(--muted); font-size: 13px; }
  .notice { background: #fff6e5; border: 1px solid #f0c36d; border-radius: 8px; padding: 12px 16px; margin: 18px 0; }
  code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
  pre { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto; }
  footer { margin-top: 40px; color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding-top: 12px; }
"""


def _html(result: DemoResult, summary: dict[str, Any], figures: dict[str, str], command: str) -> str:
    results, timing, environment = summary["results"], summary["timing"], summary["environment"]
    e = html.escape
    n = len(result.x)
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
    rows = [
        ("Model", e(result.describe_model())),
        (
            "Data",
            f"UCI optical handwritten digits (CC BY 4.0): {results['train_size']} for training, {results['test_size']} held out; each 8×8 image read row by row as 8 time steps of 8 pixels",
        ),
        ("Held-out accuracy", f"{results['accuracy']:.2%}"),
        (
            "Explained",
            f"the first {n} held-out digits, all 10 classes, against {results['background']} training digits as background",
        ),
        (
            "Largest additivity error",
            f"{results['additivity_error']:.3e} absolute; {results['relative_additivity_error']:.2e} relative to the output's scale",
        ),
        ("Expected value E[f]", ", ".join(f"{k}: {v:+.3f}" for k, v in enumerate(results["expected_value"]))),
        (
            "Time",
            f"training {timing['train_seconds']:.2f} s, explaining {timing['explain_seconds']:.3f} s, report {timing['report_seconds']:.2f} s, total {timing['total_seconds']:.1f} s",
        ),
        (
            "Settings",
            f"layer {results['layer']}, seed {results['seed']}, epochs {results['epochs']}, device {e(environment['device'])}",
        ),
        (
            "Versions",
            f"rnnshap {environment['rnnshap']}, torch {e(environment['torch'])}, numpy {environment['numpy']}, Python {environment['python']}",
        ),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rnnshap demo report: {e(result.layer)}, seed {result.seed}</title><style>{_STYLE}</style></head><body><main>",
        "<header><h1>rnnshap demo report</h1>",
        f'<p class="lead">{"An" if result.layer == "lstm" else "A"} {e(result.kind)} reads handwritten digits row by row. rnnshap explains its '
        "predictions with DeepSHAP and exact rules through the recurrent layer: for every digit and class the attributions φ "
        "add up to the model's output minus its mean over the background, f(x) − E[f], to float precision.</p></header>",
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
    if "global_importance" in figures:
        parts += [
            "<h2>What the model looks at</h2>",
            "<p>Mean |φ| of the explained digits for their predicted class, per row (time step) and pixel column (feature).</p>",
            f'<img class="wide" src="{figures["global_importance"]}" alt="mean absolute attribution by time step and feature">',
        ]
    parts.append("<h2>Explained digits</h2>")
    scale = float(np.abs([result.shap_values[i, :, :, p].sum(-1) for i, p in enumerate(result.predictions)]).max()) or 1.0
    for i in range(n):
        predicted = int(result.predictions[i])
        phi = result.shap_values[i, :, :, predicted]
        verdict = "correct" if predicted == result.labels[i] else "wrong"
        parts.append(
            f'<article class="sample" id="sample-{i}"><h3>Digit {i}: label {result.labels[i]}, predicted {predicted} ({verdict}); '
            f"f(x) = {result.outputs[i, predicted]:+.3f} = E[f] {result.expected_value[predicted]:+.3f} + Σφ {phi.sum():+.3f}</h3>"
        )
        images = [figures.get(f"sample_{i}"), figures.get(f"over_time_{i}")]
        if any(images):
            parts.append('<div class="figures">')
            parts += [f'<img src="{src}" alt="attributions of digit {i}">' for src in images if src]
            parts.append("</div>")
        parts.append(
            '<div class="tokens"><div class="caption">Each row\'s total attribution to the predicted class '
            "(hover for the value; one colour scale for all digits):</div>"
            f"{plots.token_html(ROW_LABELS, phi.sum(-1), max_abs=scale)}</div></article>"
        )
    if "classes_0" in figures:
        parts += [
            "<h2>Every class at once</h2>",
            "<p>The attributions of digit 0 to each of the ten classes, on one colour scale, with the digit's outline. "
            "Each class's attributions add up to its own f(x) − E[f].</p>",
            f'<img class="wide" src="{figures["classes_0"]}" alt="attributions of digit 0 to every class">',
        ]
    parts += [
        "<h2>Model</h2>",
        f"<pre>{e(str(result.model))}</pre>",
        f"<footer>Made by <code>{e(command)}</code> with rnnshap {environment['rnnshap']} on Python {e(sys.version.split()[0])}. "
        "The numbers under <em>results</em> in <code>summary.json</code> are the same on every run with the same seed and settings.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
