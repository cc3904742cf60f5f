"""Every rnnshap plot, small (T=8 steps, F=3 features) and large (T=500, F=50), as PNG files.

    python docs/examples/plots_gallery.py OUT_FOLDER [--sizes small,large]

Writes ``OUT_FOLDER/<plot>_<size>.png`` for each plot and size, and ``token_html.html``. The models
are small untrained PyTorch networks on synthetic sequences (random walks and sine waves), so the
gallery runs in seconds on a CPU without downloads: it shows what each plot looks like, not a model
worth explaining. Runs headless (matplotlib's Agg backend, no window).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rnnshap
from rnnshap import plots

SIZES = {"small": (8, 3), "large": (500, 50)}


class Classifier(nn.Module):
    """A GRU over the sequence, then a linear read-out of the last state to 3 classes."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.gru = nn.GRU(features, 12, batch_first=True)
        self.head = nn.Linear(12, 3)
        with torch.no_grad():  # untrained, but with a slow update gate: it remembers far back
            self.gru.weight_ih_l0.mul_(3.0 / np.sqrt(features))
            self.gru.bias_ih_l0[12:24].fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -1])


class Forecaster(nn.Module):
    """A sequence-to-sequence LSTM: one forecast (1 channel) per input step, (N, T, 1)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, 12, batch_first=True)
        self.head = nn.Linear(12, 1)
        with torch.no_grad():  # untrained, but with a high forget-gate bias: it remembers far back
            self.lstm.weight_ih_l0.mul_(3.0 / np.sqrt(features))
            self.lstm.bias_ih_l0[12:24].fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def sequences(n: int, steps: int, features: int, rng: np.random.Generator) -> torch.Tensor:
    """Random walks and noisy sine waves of various periods, one kind per feature."""
    t = np.arange(steps)[None, :, None]
    period = rng.uniform(4, max(8, steps / 3), size=(1, 1, features))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, features))
    waves = np.sin(2 * np.pi * t / period + phase) + 0.2 * rng.standard_normal((n, steps, features))
    walks = np.cumsum(rng.standard_normal((n, steps, features)), axis=1) / np.sqrt(max(steps, 1) / 8)
    kind = np.arange(features) % 2 == 0
    return torch.from_numpy(np.where(kind, waves, walks))


def gallery(out: Path, sizes: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:  # type: ignore[no-untyped-def]
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100, facecolor="white")
        written.append(path)

    for size in sizes:
        steps, features = SIZES[size]
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        names = [f"sensor {j}" for j in range(features)]
        model = Classifier(features).double().eval()
        background = sequences(6 if size == "small" else 4, steps, features, rng)
        x = sequences(16 if size == "small" else 12, steps, features, rng)
        explainer = rnnshap.DeepExplainer(model, background)
        values = explainer.shap_values(x)  # (N, T, F, 3)
        data = x.numpy()
        base = explainer.expected_value
        save(plots.heatmap(values, data, sample=0, output=1, feature_names=names, base_value=base), f"heatmap_{size}")
        if size == "large":
            window = plots.heatmap(values, data, sample=0, output=1, feature_names=names, base_value=base, steps=(440, 500))
            save(window, f"heatmap_window_{size}")
        save(plots.over_time(values, sample=0, output=1, base_value=base), f"over_time_{size}")
        save(plots.signal(values, data, sample=0, output=1, feature_names=names, base_value=base), f"signal_{size}")
        save(plots.beeswarm_over_time(values, data, output=1, feature_names=names), f"beeswarm_over_time_{size}")
        save(plots.global_importance(values, output=1, feature_names=names), f"global_importance_{size}")
        forecaster = Forecaster(features).double().eval()
        forecast = rnnshap.DeepExplainer(forecaster, background)
        explained = list(range(0, steps, max(1, steps // 20)))  # about 20 output steps
        per_output = forecast.shap_values(x[:1], outputs=[(t, 0) for t in explained])  # (1, T, F, J)
        save(plots.output_map(per_output, sample=0, outputs=[(t, 0) for t in explained]), f"output_map_{size}")
    words = "the service was slow but the staff were lovely".split()
    phi = np.array([0.0, 0.1, 0.05, -0.9, 0.02, 0.0, 0.3, 0.05, 1.2])
    page = out / "token_html.html"
    page.write_text(f"<!doctype html><meta charset='utf-8'><body>{plots.token_html(words, phi)}</body>\n", encoding="utf-8")
    written.append(page)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the PNG files into")
    parser.add_argument("--sizes", default="small,large", help="comma-separated: small (T=8, F=3), large (T=500, F=50)")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        parser.error(f"unknown sizes {sorted(unknown)}; choose from {sorted(SIZES)}")
    start = time.perf_counter()
    written = gallery(args.out, sizes)
    print(f"wrote {len(written)} files to {args.out} in {time.perf_counter() - start:.1f} s")
    for path in written:
        print(f"  {path.name}")


if __name__ == "__main__":
    main()
