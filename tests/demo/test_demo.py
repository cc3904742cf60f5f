"""``rnnshap demo``: trains, explains, prints, and writes a report folder that a browser can show."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnshap import demo
from rnnshap.__main__ import main as cli
from rnnshap.demo import report as demo_report
from rnnshap.demo.report import summarize

from ..conftest import ADDITIVITY_TOL

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--samples", "2", "--epochs", "2", "--background", "10"]
CHROMIUM = (
    shutil.which("chromium")
    or shutil.which("chromium-browser")
    or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
)


def _env() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("DISPLAY", None)
    return env


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo run as a user runs it, ``python -m rnnshap demo``, on a small setting."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("demo") / "report"
    done = subprocess.run(
        [sys.executable, "-m", "rnnshap", "demo", *SMALL, "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_demo_prints_and_writes_every_file_it_promises(report: tuple[Path, str]) -> None:
    out, stdout = report
    assert "held-out accuracy" in stdout and "largest additivity error" in stdout
    assert f"report: {out / 'index.html'}" in stdout
    assert stdout.count("example ") >= 2 and "row total" in stdout  # the text output is kept
    assert re.search(r"^example 0 \(an? \d\): predicted \d", stdout, flags=re.M)  # an example, then its class: not "digit 3: a 4"
    assert demo_report.example_name(3, 4) == "example 3 (a 4)" and demo_report.example_name(5, 8) == "example 5 (an 8)"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    results = summary["results"]
    wrong = [i for i, (y, p) in enumerate(zip(results["labels"], results["predictions"], strict=True)) if y != p]
    promised = ["index.html", "summary.json", "global_importance.png", "classes_0.png"]
    promised += [f"{kind}_{i}.png" for kind in ("sample", "over_time") for i in range(2)]
    promised += [f"pushed_{i}.png" for i in wrong]  # what pushed a misclassified digit to its wrong class
    assert sorted(p.name for p in out.iterdir()) == sorted(promised)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = (out / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert sorted(sources) == sorted(p for p in promised if p.endswith(".png"))
    for source, width in re.findall(r'<img src="([^"]+)" width="(\d+)"', page):  # shown at 100 px per inch: text at its size
        assert abs(int(width) * 1.5 - _png_width(out / source)) <= 2
    assert results["samples"] == 2 and results["epochs"] == 2 and results["layer"] == "lstm"
    assert results["additivity_error"] < 1e-4 and 0.0 <= results["accuracy"] <= 1.0
    shown_numbers = (f"{results['accuracy']:.1%}", f"{results['additivity_error']:.1e}")
    for shown in (*shown_numbers, "Largest additivity error", "LSTM (8 → 32"):
        assert shown in page
    assert {"train_seconds", "explain_seconds", "total_seconds"} <= set(summary["timing"])


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_the_explained_digits_differ_and_include_a_misclassified_one() -> None:
    labels = np.array([3, 3, 1, 7, 1, 0, 9, 2, 2, 5])
    predictions = np.array([3, 3, 1, 1, 1, 0, 9, 2, 8, 5])
    chosen = demo.choose_digits(labels, predictions, 5)
    assert list(chosen) == [5, 2, 0, 6, 3]  # the first right digit of four classes, by class, then the first wrong one
    assert list(demo.choose_digits(labels, predictions, 1)) == [0]
    assert len(set(demo.choose_digits(labels, predictions, 10).tolist())) == 10
    all_right = demo.choose_digits(labels, labels, 3)
    assert len(set(labels[all_right])) == 3


def test_the_report_keeps_one_scale_per_family_and_starts_the_running_total_at_the_base() -> None:
    pytest.importorskip("matplotlib")
    result = demo.run(samples=3, seed=1, epochs=1, background=5)
    assert len(set(result.indices.tolist())) == 3
    assert (result.predictions != result.labels).any()  # one epoch: the model gets digits wrong, and one is shown
    scales = demo_report.Scales.of(result)
    figures = dict(demo_report.figure_makers(result, scales))
    for i, predicted in enumerate(result.predictions):
        sample = figures[f"sample_{i}"]()
        (image,) = [ax.images[0] for ax in sample.axes if ax.get_title().startswith("φ to class")]
        assert image.get_clim() == (-scales.phi, scales.phi)
        total_ax, bars_ax = figures[f"over_time_{i}"]().axes
        assert bars_ax.get_ylim() == scales.bars and total_ax.get_ylim() == scales.totals
        running = total_ax.lines[0]
        assert running.get_ydata()[0] == pytest.approx(result.expected_value[predicted])
        assert running.get_ydata()[-1] == pytest.approx(result.outputs[i, predicted], abs=1e-4)
        xs = running.get_xdata()[running.get_markevery()]
        np.testing.assert_array_equal(xs, np.arange(8))  # the dots sit on the bars' ticks
        assert [t.get_text() for t in total_ax.get_xticklabels()] == [str(r) for r in range(8)]  # labelled
        legend = [t.get_text() for t in total_ax.get_legend().get_texts()]
        assert any("f(x) = " in text for text in legend) and any("E[f] = " in text for text in legend)
        assert not [t for t in total_ax.texts]  # no label drawn where a line may run
        assert sample._suptitle.get_text().startswith(f"{demo_report.example_name(i, result.labels[i])}, predicted {predicted}")
    wrong = int(np.flatnonzero(result.predictions != result.labels)[0])
    pushed = figures[f"pushed_{wrong}"]()
    classes = figures["classes_0"]()
    for fig in (pushed, classes):  # φ of a pixel has one colour scale in every figure
        maps = [ax for ax in fig.axes if ax.images]
        assert {ax.images[0].get_clim() for ax in maps} == {(-scales.phi, scales.phi)}
        for ax in maps:
            assert [t.get_text() for t in ax.get_yticklabels()] in ([str(r) for r in range(8)], [""] * 8)
            assert [t.get_text() for t in ax.get_xticklabels()] in ([str(c) for c in range(8)], [""] * 8)
        assert any(t.get_text() for ax in maps for t in ax.get_yticklabels())  # rows numbered on the left
        assert len(fig.axes[-1].get_ylabel().splitlines()) == 1  # a colour bar label of one line
    for fig in (figures["sample_0"](), pushed, classes):  # the outline runs along cell edges: it never crosses a value
        outlines = [c for ax in fig.axes if ax.images for c in ax.collections if hasattr(c, "get_segments")]
        assert outlines and all(c.get_segments() for c in outlines)
        for segment in (s for c in outlines for s in c.get_segments()):
            assert np.all(np.abs(np.asarray(segment) % 1 - 0.5) < 1e-9)
    titles = [ax.get_title().splitlines()[-1] for ax in classes.axes if ax.images]
    assert {len(part.split(".")[-1]) for title in titles for part in title.split() if "." in part} == {2}  # the same decimals


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    first = demo.run(samples=2, seed=3, epochs=2, background=10)
    second = demo.run(samples=2, seed=3, epochs=2, background=10)
    other = demo.run(samples=2, seed=4, epochs=2, background=10)
    assert summarize(first)["results"] == summarize(second)["results"]
    np.testing.assert_array_equal(first.shap_values, second.shap_values)
    assert summarize(first)["results"] != summarize(other)["results"]


@pytest.mark.parametrize("layer", ["gru", "bidirectional"])
def test_other_layers_add_up(layer: str) -> None:
    result = demo.run(samples=2, layer=layer, epochs=1, background=5)
    assert result.shap_values.shape == (2, 8, 8, 10)
    gap = result.outputs - np.asarray(result.expected_value)[None]
    assert result.additivity_error <= ADDITIVITY_TOL[torch.float32] * max(1.0, float(np.abs(gap).max()))
    assert ("per direction" in result.model_description) == (layer == "bidirectional")  # one direction has no "per"


def test_without_matplotlib_the_report_has_no_images_and_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    cli(["demo", *SMALL, "--out", str(tmp_path / "plain")])
    stdout = capsys.readouterr().out
    assert "pip install 'rnnshap[plot]'" in stdout
    files = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert files == ["index.html", "summary.json"]
    page = (tmp_path / "plain" / "index.html").read_text(encoding="utf-8")
    assert "<img" not in page and "pip install 'rnnshap[plot]'" in page
    assert "rnnshap-token" in page  # the per-row highlighting needs no matplotlib


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli([])
    assert exit_.value.code == 2 and "usage: rnnshap demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli(["demo", "--help"])
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0 and "--out" in help_text
    assert help_text.split("\n\n")[1].startswith("Train a small recurrent model")  # what the demo does, first
    with pytest.raises(SystemExit):
        cli(["demo", "--layer", "transformer"])


@pytest.mark.skipif(shutil.which("rnnshap") is None, reason="the rnnshap console script is not installed")
def test_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        ["rnnshap", "demo", "--samples", "1", "--epochs", "1", "--background", "5", "--no-report"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "largest additivity error" in done.stdout and not list(tmp_path.iterdir())


@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package: chromium)")
def test_report_renders_in_headless_chromium(report: tuple[Path, str], tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    out, _ = report
    shot = tmp_path / "shot.png"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,900",
    ]  # fmt: skip
    done = subprocess.run([str(CHROMIUM), *flags, (out / "index.html").as_uri()], capture_output=True, text=True, timeout=90)
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    pixels = image.imread(str(shot))
    assert pixels.shape[:2] == (900, 1200)
    rgb = (np.asarray(pixels)[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb, axis=0)
    assert len(colours) > 20, f"only {len(colours)} distinct colours: a blank page?"
    white = np.all(rgb >= 250, axis=1).mean()
    assert white < 0.97, f"{white:.1%} of the screenshot is white"
    dark = np.all(rgb < 80, axis=1).mean()
    assert dark > 0.002  # text was drawn


@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package: chromium)")
def test_report_fits_a_420_pixel_wide_screen(report: tuple[Path, str], tmp_path: Path) -> None:
    """Nothing is wider than a phone's screen. Headless Chromium's window is at least 500 px wide, so the
    page is opened in a 420 px frame, whose scroll width must stay within it."""
    out, _ = report
    frame = out / "probe.html"
    frame.write_text(
        '<!doctype html><body><iframe id="f" src="index.html" style="width:420px;height:900px;border:0"></iframe><script>'
        "document.getElementById('f').addEventListener('load', () => { const d = document.getElementById('f').contentDocument;"
        "document.body.setAttribute('data-width', d.defaultView.innerWidth);"
        "document.body.setAttribute('data-scroll-width', d.documentElement.scrollWidth); });</script></body>",
        encoding="utf-8",
    )
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,900",
        "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom",
    ]  # fmt: skip
    try:
        done = subprocess.run([str(CHROMIUM), *flags, frame.as_uri()], capture_output=True, text=True, timeout=90)
    finally:
        frame.unlink()
    width, scroll = re.search(r'data-width="(\d+)"', done.stdout), re.search(r'data-scroll-width="(\d+)"', done.stdout)
    assert width and scroll, f"no measurement (exit {done.returncode}): {done.stderr[-2000:]}"
    assert int(width.group(1)) == 420 and int(scroll.group(1)) <= 420
