"""The demo's run: the bundled digits, the small recurrent classifier, its training and its explanation.

:func:`run` trains a :class:`RowReader` on all but 300 digits, explains held-out ones
(:func:`choose_digits`) and returns one :class:`DemoResult`, which the console output and the report
(:mod:`rnnshap.demo.report`) read.
"""

from __future__ import annotations

import contextlib
import gzip
import time
from dataclasses import dataclass
from importlib import resources
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..explainer import DeepExplainer

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
    """One run of the demo: the trained model, the explained digits and their attributions, and timings.

    The console output, :func:`rnnshap.demo.report.summarize` and :func:`rnnshap.demo.report.write_report`
    all read this one object."""

    model: RowReader
    layer: str  # "lstm", "gru" or "bidirectional"
    seed: int
    epochs: int
    device: str
    accuracy: float
    x: np.ndarray  # (n, 8, 8) explained digits
    indices: np.ndarray  # (n,) their positions in the held-out set (see choose_digits)
    held_out_errors: int  # how many of the held-out digits the model gets wrong
    labels: np.ndarray  # (n,)
    predictions: np.ndarray  # (n,)
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
        """The layer as the page names it ("LSTM")."""
        return {"lstm": "LSTM", "gru": "GRU", "bidirectional": "bidirectional LSTM"}[self.layer]

    @property
    def model_description(self) -> str:
        """One sentence on the model."""
        width = f"8 → {HIDDEN} per direction" if self.layer == "bidirectional" else f"8 → {HIDDEN}"
        return (
            f"{self.kind} ({width}) over the image's rows, then a linear read-out of its last output "
            f"to 10 classes; {self.n_parameters:,} parameters"
        )

    @property
    def model_text(self) -> str:
        """The model as torch prints it."""
        return str(self.model)


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
