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

from rnnshap import demo
from rnnshap.__main__ import main as cli
from rnnshap.demo_report import summarize

ROOT = Path(__file__).resolve().parents[1]
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
    assert stdout.count("digit ") >= 2 and "row total" in stdout  # the text output is kept
    promised = ["index.html", "summary.json", "global_importance.png", "classes_0.png"]
    promised += [f"{kind}_{i}.png" for kind in ("sample", "over_time") for i in range(2)]
    assert sorted(p.name for p in out.iterdir()) == sorted(promised)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = (out / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert sorted(sources) == sorted(p for p in promised if p.endswith(".png"))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    results = summary["results"]
    assert results["samples"] == 2 and results["epochs"] == 2 and results["layer"] == "lstm"
    assert results["additivity_error"] < 1e-4 and 0.0 <= results["accuracy"] <= 1.0
    for shown in (f"{results['accuracy']:.1%}", f"{results['additivity_error']:.1e}", "Largest additivity error", "LSTM (8 → 32"):
        assert shown in page
    assert {"train_seconds", "explain_seconds", "total_seconds"} <= set(summary["timing"])


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
    assert result.additivity_error < 1e-4


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
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out
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
