"""Shapley values of time-series classifiers: rnnshap's Shapley mode against tsCaptum and TSHAP, at equal
model evaluations, by their distance to the exact Shapley values.

The game is the same for every method: players are each channel's windows of equal length (tsCaptum's
``n_segments`` chunks; rnnshap's ``players="cells", windows=k``), the reference one baseline panel (zeros,
tsCaptum's default: it takes a single baseline; ItalyPowerDemand is z-normalized; for BasicMotions, against
whose zeros no coalition changes MiniRocket's class, a training recording), the output the
predicted class's ``predict_proba``. The
exact values come from enumerating every coalition (rnnshap's Shapley mode with a budget that covers them,
``exact`` True). Rows run through ``predict_proba`` are counted by a wrapper around the classifier.

- tsCaptum 0.0.8 (``Shapley_Value_Sampling``: Captum's ShapleyValueSampling, 25 permutations, no budget
  argument): rnnshap gets the same rows per sample. tsCaptum encodes the labels it is given with a
  LabelEncoder fitted on those labels, so its target is the code of the predicted label among the predicted
  labels (all samples predicted '2' explain class index 0); its values are compared with that class's.
- TSHAP 0.0.1 (``TSHAPExplainer``, windows as long as its stride: each window's value is the two-player
  Shapley value of the window against the rest, exact only for that two-player game): its window scores
  (``_calculate_window_attrib_scores``) against the same exact values; rnnshap gets the same rows.

The peers are optional: ``pip install --no-deps tsCaptum==0.0.8 tshap==0.0.1`` (neither changes a pinned
version; tsCaptum needs captum, which the captum extra installs), or ``--peers DIR`` for a folder they were
installed into with ``pip install --target DIR``.

    python benchmarks/bench_classifiers.py [--samples 10] [--peers /tmp/peers]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnshap.aeon  # noqa: E402


class Counted:
    """A classifier whose ``predict_proba`` counts the rows it is run on."""

    def __init__(self, clf: Any) -> None:
        self.clf, self.rows = clf, 0
        self.classes_ = clf.classes_

    def predict_proba(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        self.rows += len(X)
        return self.clf.predict_proba(X)


def relative_error(estimate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - exact) / max(np.linalg.norm(exact), 1e-12))


def cases(samples: int) -> list[tuple[str, Any, np.ndarray, np.ndarray, int]]:
    """(name, fitted classifier, explained panels, baseline (1, C, T), window length)."""
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from aeon.datasets import load_basic_motions, load_italy_power_demand

    out = []
    X, y = load_italy_power_demand(split="train")
    X_test, _ = load_italy_power_demand(split="test")
    knn = KNeighborsTimeSeriesClassifier(n_neighbors=5, distance="euclidean").fit(X, y)
    out.append(("ItalyPowerDemand, 5-NN, 8 windows of 3", knn, X_test[:samples], np.zeros((1, *X.shape[1:])), 3))
    rocket = MiniRocketClassifier(n_kernels=500, random_state=0, estimator=None).fit(X, y)
    out.append(("ItalyPowerDemand, MiniRocket, 8 windows of 3", rocket, X_test[:samples], np.zeros((1, *X.shape[1:])), 3))
    X, y = load_basic_motions(split="train")
    X_test, _ = load_basic_motions(split="test")
    rocket = MiniRocketClassifier(n_kernels=500, random_state=0).fit(X, y)
    # a reference recording (of class y[0]): against zeros every coalition keeps the predicted class; the test
    # set is sorted by class, so every fourth recording
    name = f"BasicMotions, MiniRocket, 6 channels x 2 windows of 50, vs a {y[0]} recording"
    out.append((name, rocket, X_test[::4][:samples], X[:1], 50))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--peers", default=None, help="a folder tsCaptum and tshap were pip-installed into (--target)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.peers:
        sys.path.insert(0, args.peers)
    try:
        from tsCaptum.explainers import Shapley_Value_Sampling
    except ImportError:
        Shapley_Value_Sampling = None
    try:
        from tshap.tshap import TSHAPExplainer
    except ImportError:
        TSHAPExplainer = None
    found = {"tsCaptum": Shapley_Value_Sampling is not None, "TSHAP": TSHAPExplainer is not None}
    print("; ".join(f"{peer}: {'found' if there else 'not installed'}" for peer, there in found.items()))
    header = "| case | method | rows per sample | seconds per sample | median relative error | worst |"
    print(header)
    print("|---|---|---|---|---|---|")
    for name, clf, X, baseline, width in cases(args.samples):
        n, C, T = X.shape
        W = T // width
        counted = Counted(clf)
        predicted = np.argmax(clf.predict_proba(X), 1)
        start = time.perf_counter()
        exact = rnnshap.aeon.explain(counted, X, baseline, players="cells", windows=width, budget=2 ** (C * W) + 1)
        exact_time = (time.perf_counter() - start) / n
        assert exact.exact.all()
        truth = exact.values[np.arange(n), :, :, predicted]  # (n, C, W)
        results = [("exact (rnnshap, every coalition)", float(exact.n_evals.mean()), exact_time, 0.0, 0.0)]

        def rnnshap_at(budget: int) -> tuple[float, float, list[float]]:
            counted.rows = 0
            start = time.perf_counter()
            estimate = rnnshap.aeon.explain(counted, X, baseline, players="cells", windows=width, budget=budget, random_state=0)
            seconds = (time.perf_counter() - start) / n
            values = estimate.values[np.arange(n), :, :, predicted]
            return float(estimate.n_evals.mean()), seconds, [relative_error(values[i], truth[i]) for i in range(n)]

        if Shapley_Value_Sampling is not None:
            import torch

            torch.manual_seed(0)  # Captum draws its permutations from torch's generator
            explainer = Shapley_Value_Sampling(counted, clf_type="classifier")
            counted.rows = 0
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                maps = explainer.explain(X, labels=clf.classes_[predicted], batch_size=1, n_segments=W, baseline=baseline)
            seconds = (time.perf_counter() - start) / n
            spent = counted.rows / n
            values = maps[:, :, ::width][:, :, :W]  # each group's value sits on every one of its steps
            # tsCaptum encodes the labels it is given with a LabelEncoder fitted on them, not on the classifier's
            # classes: its target is that code. Its values are compared with the exact values of that class.
            from sklearn.preprocessing import LabelEncoder

            target = LabelEncoder().fit_transform(clf.classes_[predicted])
            targeted = exact.values[np.arange(n), :, :, target]
            errors = [relative_error(values[i], targeted[i]) for i in range(n)]
            results.append(("tsCaptum ShapleyValueSampling", spent, seconds, float(np.median(errors)), float(max(errors))))
            used, secs, errs = rnnshap_at(int(spent))
            results.append(("rnnshap Shapley mode, same rows", used, secs, float(np.median(errs)), float(max(errs))))
        if TSHAPExplainer is not None:
            tshap = TSHAPExplainer(window_length=width, stride=width, interpolation=False, roi=False)
            positions = [(c, w * width) for c in range(C) for w in range(W)]
            counted.rows = 0
            start = time.perf_counter()
            scores = np.stack(
                [
                    tshap._calculate_window_attrib_scores(
                        lambda a, k=k: counted.predict_proba(a)[:, k], X[i], baseline, positions
                    )
                    for i, k in enumerate(predicted)
                ]
            ).reshape(n, C, W)
            seconds = (time.perf_counter() - start) / n
            spent = counted.rows / n
            errors = [relative_error(scores[i], truth[i]) for i in range(n)]
            results.append(("TSHAP window scores", spent, seconds, float(np.median(errors)), float(max(errors))))
            try:
                used, secs, errs = rnnshap_at(max(int(spent), C * W + 2))
                results.append(("rnnshap Shapley mode, same rows", used, secs, float(np.median(errs)), float(max(errs))))
            except rnnshap.InputError as error:
                print(f"| {name} | rnnshap at {int(spent)} rows | refused: {error} | | | |")
        for method, spent, seconds, median, worst in results:
            print(f"| {name} | {method} | {spent:.0f} | {seconds:.3f} | {median:.3f} | {worst:.3f} |")


if __name__ == "__main__":
    main()
