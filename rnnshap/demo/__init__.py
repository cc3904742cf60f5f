"""Train a small recurrent model on bundled data and explain it exactly.

Each 8×8 handwritten digit is read row by row (8 time steps of 8 pixels). A small LSTM (or GRU,
or bidirectional LSTM) learns to classify it in about a second on a CPU; rnnshap then explains
held-out digits, prints how exactly the attributions add up, and writes a report folder
(index.html with plots, the PNG files and summary.json).
"""

# The package: this file is the command line (``rnnshap demo``, :func:`main`); ``run.py`` trains and
# explains (:func:`run`, one :class:`DemoResult`), ``report.py`` writes the HTML report.
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .report import Report, example_name, summarize, write_report
from .run import HIDDEN, TEST_SIZE, DemoResult, RowReader, choose_digits, load_digits, run

__all__ = [
    "HIDDEN", "TEST_SIZE", "DemoResult", "Report", "RowReader", "choose_digits", "example_name", "load_digits", "main",
    "run", "summarize", "write_report",
]  # fmt: skip


def _print(result: DemoResult) -> None:
    print(f"rnnshap demo: {result.layer} over the rows of 8x8 handwritten digits (UCI, CC BY 4.0)")
    print(f"trained in {result.train_seconds:.1f} s; held-out accuracy {result.accuracy:.1%}")
    print(
        f"explained {len(result.x)} digits x {result.shap_values.shape[-1]} classes in {result.explain_seconds:.2f} s; "
        f"largest additivity error |sum(phi) - (f(x) - E[f])| = {result.additivity_error:.2e}"
    )
    shades = " .:-=+*#%@"
    for i in range(len(result.x)):
        phi = result.shap_values[i, :, :, result.predictions[i]]
        scale = np.abs(phi).max() or 1.0
        verdict = "" if result.predictions[i] == result.labels[i] else " (wrong)"
        print(
            f"\n{example_name(i, int(result.labels[i]))}: predicted {result.predictions[i]}{verdict}; "
            "image | attribution to the predicted class (+ / -)"
        )
        for row in range(8):
            image = "".join(shades[min(9, int(v * 9.99))] for v in result.x[i, row])
            attribution = "".join(("+" if v > 0 else "-") if abs(v) > 0.25 * scale else "." for v in phi[row])
            print(f"  t={row}  {image}  |  {attribution}   row total {phi[row].sum():+.3f}")


def _check_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the demo's options, in a sentence, or None."""
    n_train = 1797 - TEST_SIZE
    if not 1 <= args.samples <= TEST_SIZE:
        return f"--samples must be between 1 and {TEST_SIZE} (the held-out digits), got {args.samples}"
    if not 1 <= args.background <= n_train:
        return f"--background must be between 1 and {n_train} (the training digits), got {args.background}"
    if args.epochs < 1:
        return f"--epochs must be at least 1, got {args.epochs}"
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as error:
        return f"--device {args.device!r} is not a torch device ({error}); give cpu, cuda, cuda:0, mps, ..."
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}.get(device.type)
    if available is False:
        return (
            f"--device {args.device}: this torch build or machine has no {device.type} device "
            f"(torch.{device.type}.is_available() is False); use --device cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"--device {args.device}: there are {torch.cuda.device_count()} CUDA device(s)"
    if not args.no_report:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            return f"--out {args.out}: a file of that name exists; give a folder for the report"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="rnnshap demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=11,
        help="held-out digits to explain: one of each class and one the model gets wrong (default 11)",
    )
    parser.add_argument(
        "--layer", choices=["lstm", "gru", "bidirectional"], default="lstm", help="the recurrent layer (default lstm)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data split, the training and the background (default 0)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to train and explain on (default cpu)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    parser.add_argument("--background", type=int, default=50, help="background (reference) digits (default 50)")
    parser.add_argument("--out", default="rnnshap-report", help="folder of the report (default rnnshap-report)")
    parser.add_argument("--no-report", action="store_true", help="print the text output only")
    args = parser.parse_args(argv)
    problem = _check_options(args)
    if problem:
        parser.error(problem)  # (a usage line and the problem on stderr, exit status 2: no traceback)
    start = time.perf_counter()
    result = run(args.samples, args.layer, args.seed, args.device, args.epochs, args.background)
    _print(result)
    if args.no_report:
        return
    command = "rnnshap demo " + " ".join(argv if argv is not None else [])
    report = write_report(result, Path(args.out), command=command.strip(), started=start)
    print(f"\nreport: {report.index} ({len(report.files)} files, {report.total_seconds:.1f} s in all)")
    if not report.has_plots:
        print("matplotlib is not installed, so the report has no plots: pip install 'rnnshap[plot]'")
