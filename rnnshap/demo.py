"""The main job: train a small recurrent model on bundled data and explain it exactly.

Each 8×8 handwritten digit is read row by row (8 time steps of 8 pixels). A small LSTM (or GRU,
or bidirectional LSTM) learns to classify it in about a second on a CPU; rnnshap then explains
held-out digits, prints how exactly the attributions add up, and writes a report folder
(index.html with plots, the PNG files and summary.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .demo_report import DemoRun, example_name, write_report
from .explainer import DeepExplainer

HIDDEN = 32
TEST_SIZE = 300


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images as (1797, 8, 8) floats in [0, 1] (rows = time steps) and their labels."""
    with resources.files("rnnshap.data").joinpath("digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    return (table[:, :-1] / 16.0).reshape(-1, 8, 8).astype(np.float32), table[:, -1].astype(np.int64)


class RowReader(nn.Module):
    """A recurrent layer over the image rows, then a linear read-out of the last hidden state."""

    def __init__(self, layer: str, hidden: int = HIDDEN) -> None:
        super().__init__()
        bidirectional = layer == "bidirectional"
        cls = nn.GRU if layer == "gru" else nn.LSTM
        self.rnn = cls(8, hidden, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@dataclass
class DemoResult:
    model: RowReader
    layer: str
    seed: int
    epochs: int
    device: str
    accuracy: float
    x: np.ndarray  # (n, 8, 8) explained digits
    indices: np.ndarray  # (n,) their positions in the held-out set (see choose_digits)
    held_out_errors: int  # how many of the held-out digits the model gets wrong
    labels: np.ndarray
    predictions: np.ndarray
    outputs: np.ndarray  # (n, 10) model outputs (logits) on the explained digits
    shap_values: np.ndarray  # (n, 8, 8, 10)
    expected_value: np.ndarray  # (10,)
    additivity_error: float  # max |Σφ − (f(x) − E[f])| over samples and classes
    train_seconds: float
    explain_seconds: float
    n_train: int
    n_test: int
    n_background: int

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def kind(self) -> str:
        return {"lstm": "LSTM", "gru": "GRU", "bidirectional": "bidirectional LSTM"}[self.layer]

    def for_report(self) -> DemoRun:
        """The run as plain data, for the report (``demo_report.write_report``)."""
        fields = {f.name for f in dataclasses.fields(DemoRun)}
        given = {name: getattr(self, name) for name in fields - {"model_description", "model_text"}}
        return DemoRun(**given, model_description=self.describe_model(), model_text=str(self.model))

    def describe_model(self) -> str:
        kind = self.kind
        return f"{kind} (8 → {HIDDEN} per direction) over the image's rows, then a linear read-out of its last output to 10 classes; {self.n_parameters:,} parameters"


def choose_digits(labels: np.ndarray, predictions: np.ndarray, samples: int) -> np.ndarray:
    """Which held-out digits to explain: different classes, and one the model gets wrong.

    The first correctly classified digit of each class in turn (so the digits differ from each
    other), then, with at least two samples, the first misclassified digit last; more than ten
    samples are filled up with the next digits in order.
    """
    wrong = np.flatnonzero(predictions != labels)
    mistakes = [int(wrong[0])] if samples >= 2 and wrong.size else []
    chosen: list[int] = []
    classes: set[int] = set()
    for right in np.flatnonzero(predictions == labels).tolist():
        if len(chosen) + len(mistakes) == samples:
            break
        if int(labels[right]) not in classes:
            chosen.append(right)
            classes.add(int(labels[right]))
    chosen.sort(key=lambda i: int(labels[i]))
    for i in range(len(labels)):
        if len(chosen) + len(mistakes) >= samples:
            break
        if i not in chosen and i not in mistakes:
            chosen.append(i)
    return np.asarray(chosen + mistakes, dtype=np.int64)


@contextlib.contextmanager
def _deterministic(device: str) -> Iterator[None]:
    """One CPU thread (the model is tiny: threads only add overhead and run-to-run variation) and
    deterministic cuDNN, restored afterwards."""
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def run(
    samples: int = 11, layer: str = "lstm", seed: int = 0, device: str = "cpu", epochs: int = 40, background: int = 50
) -> DemoResult:
    """Train on all but 300 digits, explain ``samples`` held-out ones (:func:`choose_digits`) against
    ``background`` training digits."""
    if layer not in ("lstm", "gru", "bidirectional"):
        raise ValueError(f"layer must be 'lstm', 'gru' or 'bidirectional', got {layer!r}")
    if not 1 <= samples <= TEST_SIZE:
        raise ValueError(f"samples must be between 1 and {TEST_SIZE}, got {samples}")
    with _deterministic(device):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        images, labels = load_digits()
        order = rng.permutation(len(images))
        test, train = order[:TEST_SIZE], order[TEST_SIZE:]
        x_train = torch.from_numpy(images[train]).to(device)
        y_train = torch.from_numpy(labels[train]).to(device)
        model = RowReader(layer).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in torch.randperm(len(train)).to(device).split(128):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
        train_seconds = time.perf_counter() - start
        model.eval()
        x_test = torch.from_numpy(images[test]).to(device)
        with torch.no_grad():
            test_predictions = model(x_test).argmax(1).cpu().numpy()
        accuracy = float((test_predictions == labels[test]).mean())
        chosen = choose_digits(labels[test], test_predictions, samples)
        explained = x_test[torch.from_numpy(chosen).to(device)]
        reference = x_train[torch.from_numpy(rng.choice(len(train), background, replace=False)).to(device)]
        start = time.perf_counter()
        explainer = DeepExplainer(model, reference, progress=False)
        values = explainer.shap_values(explained)
        explain_seconds = time.perf_counter() - start
        with torch.no_grad():
            outputs = model(explained).cpu().numpy()
    expected = np.asarray(explainer.expected_value)
    error = float(np.abs(values.astype(np.float64).sum((1, 2)) - (outputs.astype(np.float64) - expected)).max())
    return DemoResult(
        model=model,
        layer=layer,
        seed=seed,
        epochs=epochs,
        device=str(device),
        accuracy=accuracy,
        x=explained.cpu().numpy(),
        indices=chosen,
        held_out_errors=int((test_predictions != labels[test]).sum()),
        labels=labels[test][chosen],
        predictions=outputs.argmax(1),
        outputs=outputs,
        shap_values=values,
        expected_value=expected,
        additivity_error=error,
        train_seconds=train_seconds,
        explain_seconds=explain_seconds,
        n_train=len(train),
        n_test=len(test),
        n_background=background,
    )


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
        return f"--device {args.device}: this torch build or machine has no {device.type} device (torch.{device.type}.is_available() is False); use --device cpu"
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, the training and the background (default 0)")
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
    report = write_report(result.for_report(), Path(args.out), command=command.strip(), started=start)
    print(f"\nreport: {report.index} ({len(report.files)} files, {report.total_seconds:.1f} s in all)")
    if not report.has_plots:
        print("matplotlib is not installed, so the report has no plots: pip install 'rnnshap[plot]'")
