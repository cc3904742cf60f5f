"""rnnshap's explainers and the distance-to-exact metric through xai4tsc's own doors: the classes its
configuration loads from ``class_path`` (the call its runner makes, ``load_class_from_path``, then
``register_explainer`` / ``register_metric``), run by its ``generate_explanation`` and ``evaluate`` on its own
models, with no code of the user's around them. Skips where xai4tsc is not installed (it declares Python >= 3.12;
on 3.11 it is installed with ``--ignore-requires-python --no-deps``, see docs/metrics.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

xai4tsc = pytest.importorskip("xai4tsc")

from sklearn.preprocessing import LabelEncoder  # noqa: E402  (xai4tsc's own dependency)
from xai4tsc.evaluation.evaluate import register_metric  # noqa: E402
from xai4tsc.utils.utils import load_class_from_path  # noqa: E402
from xai4tsc.xai.explain import generate_explanation, register_explainer  # noqa: E402

import rnnshap.xai4tsc as door  # noqa: E402
from rnnshap.errors import InputError  # noqa: E402

C, T, CLASSES = 1, 24, 2
RNG = np.random.default_rng(0)
TRAIN = RNG.standard_normal((40, C, T)).astype(np.float32)
TEST = RNG.standard_normal((6, C, T)).astype(np.float32)
LABELS = RNG.integers(0, CLASSES, 6)


def registered() -> None:
    """What xai4tsc's runner does for a component of the configuration that names a ``class_path``."""
    for method, name in (("rnnshap_deepshap", "DeepSHAPExplainer"), ("rnnshap_shapley", "ShapleyModeExplainer")):
        register_explainer(method, load_class_from_path(door.CLASS_PATH, name))
    register_metric("Distance to exact", load_class_from_path(door.CLASS_PATH, "DistanceToExactMetric"))


class Linear(xai4tsc.ModelBase):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(C * T, CLASSES)
        self.device = torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def lstm() -> Any:
    torch.manual_seed(0)
    model = xai4tsc.LSTM(in_channels=C, num_classes=CLASSES, hidden_size=8, num_layers=1, bidirectional=True)
    model.device = torch.device("cpu")
    return model.eval()


def explain(method: str, model: Any, **params: Any) -> Any:
    encoder = LabelEncoder().fit(np.arange(CLASSES))
    return generate_explanation(
        method=method, model=model, data=TEST, labels=LABELS, params=params, encoder=encoder,
        indices=list(range(len(TEST))), device="cpu",
    )  # fmt: skip


def score(model: Any, explanation: Any, **params: Any) -> np.ndarray:
    params = {"normalise": True, "abs": True, "disable_warnings": True, **params}  # the runner's defaults, dropped
    return np.asarray(
        xai4tsc.evaluate(model, "Distance to exact", explanation, data=TEST, labels=LABELS, metric_class_params=params)
    )


def test_the_class_path_file_hands_out_the_package_classes() -> None:
    for name in ("DeepSHAPExplainer", "ShapleyModeExplainer", "DistanceToExactMetric"):
        assert load_class_from_path(door.CLASS_PATH, name) is getattr(door, name)
    assert "class_path: " + door.CLASS_PATH in door.config_entries()


def test_the_shapley_explainer_is_exact_adds_up_and_is_at_distance_zero() -> None:
    registered()
    model = lstm()
    explanation = explain("rnnshap_shapley", model, background_data=TRAIN, n_background=6, n_windows=8)
    values = explanation.exp_values.astype(np.float64)
    kept = explanation.meta["rnnshap"]
    assert values.shape == TEST.shape and kept["exact"].all() and (kept["stderr"] == 0).all()
    assert kept["deepshap_gap"].shape == (len(TEST), 8)  # DeepSHAP's gap to the Shapley values, per window
    windows = values.reshape(len(TEST), C, 8, T // 8)  # 3 steps a window, each window's value spread evenly
    assert np.allclose(windows, windows[..., :1], rtol=0, atol=1e-7)
    with torch.no_grad():
        f = model(torch.tensor(TEST)).double().numpy()
        background = door.background_rows(TRAIN, 6)
        base = model(torch.tensor(background)).double().numpy().mean(0)
    targets = f.argmax(1)  # target "predicted"
    assert np.array_equal(kept["targets"], targets)
    expected = f[np.arange(len(TEST)), targets] - base[targets]
    assert np.allclose(values.reshape(len(TEST), -1).sum(1), expected, rtol=0, atol=1e-5)
    cosine = score(model, explanation, n_background=6)
    assert np.allclose(cosine, 1.0, atol=1e-6)
    assert np.all(score(model, explanation, n_background=6, metric="relative_l2") < 1e-5)


def test_a_linear_model_scores_deepshap_and_captum_by_the_closed_form() -> None:
    registered()
    torch.manual_seed(1)
    model = Linear().eval()
    w = model.head.weight.detach().double().numpy().reshape(CLASSES, C, T)
    deepshap = explain("rnnshap_deepshap", model, background_data=TRAIN, n_background=50)
    targets = model.predict(TEST)[0]
    mean = door.background_rows(TRAIN, 50).astype(np.float64).mean(0)  # n_background above the split: every row
    assert np.allclose(deepshap.exp_values, w[targets] * (TEST - mean), rtol=0, atol=1e-6)  # w · (x − E r), per entry
    assert np.allclose(deepshap.meta["rnnshap"]["additivity_miss"], 0, atol=1e-5)
    # Captum's Integrated Gradients through xai4tsc's own explainer (baseline 0): w · x, per entry, exactly for a line
    ig = explain("integrated_gradients", model, baselines=0)
    rows = door.background_rows(TRAIN, 10)
    reference = (w[targets] * (TEST - rows.astype(np.float64).mean(0))).reshape(len(TEST), 8, 3).sum(-1)
    given = (w[targets] * TEST).reshape(len(TEST), 8, 3).sum(-1)
    closed = (given * reference).sum(1) / np.linalg.norm(given, axis=1) / np.linalg.norm(reference, axis=1)
    cosine = score(model, ig)  # the split comes from the rnnshap explainer run on this model before
    assert np.allclose(cosine, closed, rtol=0, atol=1e-5) and not np.allclose(closed, 1.0, atol=1e-3)
    # DeepSHAP's game has all 40 rows, the metric's 10 of them: on a line each is its game's Shapley values, and the
    # distance between them is that of the two games' values
    deep = (w[targets] * (TEST - mean)).reshape(len(TEST), 8, 3).sum(-1)
    closed = (deep * reference).sum(1) / np.linalg.norm(deep, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.allclose(score(model, deepshap), closed, rtol=0, atol=1e-5)
    assert np.allclose(score(model, deepshap, n_background=50), 1.0, atol=1e-6)  # the same game: distance 0


def test_the_metric_without_a_background_says_where_to_get_one(tmp_path: Path) -> None:
    registered()
    model = Linear().eval()  # no rnnshap explainer has run on it
    ig = explain("integrated_gradients", model, baselines=0)
    with pytest.raises(InputError, match="background_data: train_set"):
        score(model, ig)
    np.save(tmp_path / "train.npy", TRAIN)
    assert np.isfinite(score(model, ig, background_data=str(tmp_path / "train.npy"))).all()


def test_the_record_keeps_what_the_runner_has_no_column_for(tmp_path: Path) -> None:
    registered()
    model = lstm()
    explanation = explain("rnnshap_shapley", model, background_data=TRAIN, n_background=4, n_windows=4)
    record = tmp_path / "rnnshap.jsonl"
    score(model, explanation, n_background=4, n_windows=4, record=str(record))
    line = json.loads(record.read_text().splitlines()[0])
    assert line["exact"] is True and line["game"] == {"players": "windows", "n_players": 4, "background_rows": 4, "windows": 6}
    assert len(line["cosine"]) == len(TEST) and all(math.isclose(c, 1.0, abs_tol=1e-6) for c in line["cosine"])
    assert len(line["explainer_meta"]["deepshap_gap"]) == len(TEST) and line["explainer_meta"]["method"] == "shapley"


def test_target_label_scores_each_sample_on_the_label_the_runner_passes() -> None:
    registered()
    torch.manual_seed(2)
    model = Linear().eval()
    explain("rnnshap_deepshap", model, background_data=TRAIN)  # registers the split
    by_label = explain("integrated_gradients", model, baselines=0)  # made for the predicted class
    on_labels = score(model, by_label, target="label")
    on_predicted = score(model, by_label)
    differ = LABELS != model.predict(TEST)[0]
    assert differ.any() and np.allclose(on_labels[~differ], on_predicted[~differ], atol=1e-7)
    assert np.all(on_labels[differ] < 0.999)


def test_an_unknown_metric_is_refused_as_rnnshap_metrics_refuses_it() -> None:
    """xai4tsc's metric and ``rnnshap.metrics.DistanceToExact`` refuse a metric name they do not score with the same
    message, naming the metrics they do."""
    from rnnshap.metrics import METRICS, DistanceToExact

    messages = []
    for make in (lambda: door.DistanceToExactMetric(metric="l1"), lambda: DistanceToExact(TRAIN, metric="l1")):
        with pytest.raises(InputError) as refused:
            make()
        messages.append(str(refused.value))
    assert messages[0] == messages[1] == f"metric must be one of {', '.join(METRICS)}, not 'l1'"
