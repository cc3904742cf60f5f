"""xai4tsc's own experiment runner runs rnnshap's explainers and metric from a configuration file, with no code of the
user's: the dataset and the configuration of docs/metrics.md ("In xai4tsc's runner"), as written there (only
``class_path`` is this install's), run by the runner's ``main`` in this process, and what it saved checked against the
model it trained: the exact Shapley values of the windows computed here from the definition in float64, the model's own
outputs for additivity, the distances recomputed from the saved values.

The runner (``experiment_runner/`` in xai4tsc's repository) is in neither its wheel nor its sdist: the tests run the one
of a clone whose root ``XAI4TSC_RUNNER`` names (``.ci/run`` reads the v1.1.0 tag's source into a scratch folder) and
skip without one."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

RUNNER = os.environ.get("XAI4TSC_RUNNER", "")
if not (RUNNER and (Path(RUNNER) / "experiment_runner" / "main.py").is_file()):
    pytest.skip(
        "xai4tsc's experiment runner is not in its wheel: set XAI4TSC_RUNNER to the root of a clone of "
        "https://github.com/TimeXAIgroup/XAI4TSC at v1.1.0",
        allow_module_level=True,
    )
xai4tsc = pytest.importorskip("xai4tsc")
yaml = pytest.importorskip("yaml")  # xai4tsc's own dependency

import rnnshap.xai4tsc as door  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
PLACEHOLDER = "/path/to/site-packages/rnnshap/xai4tsc_classes.py"
RNNSHAP = ("rnnshap_shapley", "rnnshap_sampled", "rnnshap_deepshap")


def documented() -> tuple[str, str]:
    """The dataset block and the configuration file of the docs' section on the runner."""
    section = DOCS.read_text().split("## In xai4tsc's runner", 1)[1].split("\n## ", 1)[0]
    data = re.search(r"```python\n(# tiny/.*?)```", section, flags=re.S)
    config = re.search(r"```yaml\n(# rnnshap\.yaml\n.*?)```", section, flags=re.S)
    assert data and config, "docs/metrics.md lost its runnable example of the runner"
    return data.group(1), config.group(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("runner")
    data, config = documented()
    assert PLACEHOLDER in config
    here = Path.cwd()
    sys.path.insert(0, RUNNER)
    try:
        os.chdir(folder)  # the configuration's paths are relative to where the runner is started
        exec(compile(data, "docs/metrics.md (dataset)", "exec"), {"np": np})
        (folder / "rnnshap.yaml").write_text(config.replace(PLACEHOLDER, door.CLASS_PATH))
        from experiment_runner.main import main

        main(str(folder / "rnnshap.yaml"))
    finally:
        os.chdir(here)
        sys.path.remove(RUNNER)
        xai4tsc.disable_logging()  # the runner's console and file handlers
    results = folder / "results" / "rnnshap"
    log = (results / "experiment.log").read_text() if (results / "experiment.log").is_file() else "no log"
    assert (results / "metrics.csv").is_file(), f"the runner saved no scores:\n{log[-4000:]}"
    parsed = yaml.safe_load(config)
    yield {"folder": folder, "results": results, "config": parsed, "log": log}


def explainers(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["method"]: entry for entry in run["config"]["explanation_config"]["explainers"]}


def trained(run: dict[str, Any]) -> tuple[torch.nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    """The model the runner trained (its saved checkpoint, in float64), the series it explained, their predicted
    classes (the runner's default target) and the training split."""
    (checkpoint,) = (run["results"] / "Tiny" / "LSTM").glob("*.pt")
    entry = run["config"]["train_config"]["models"][0]
    model = xai4tsc.LSTM(in_channels=1, num_classes=2, **entry["init_params"])
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model = model.double().eval()
    indices = saved(run, "rnnshap_shapley", "indices.npy")
    x = np.load(run["folder"] / "tiny" / "test_data.npy").astype(np.float64)[indices]
    with torch.no_grad():
        targets = model(torch.from_numpy(x)).argmax(1).numpy()
    return model, x, targets, np.load(run["folder"] / "tiny" / "train_data.npy")


def saved(run: dict[str, Any], method: str, name: str = "exp_values.npy") -> np.ndarray:
    """What the runner saved of an explainer's explanation (``save_exp_values``): its values, or their series."""
    return np.load(run["results"] / "Tiny" / "LSTM" / "explanations" / f"explanations_{method}" / name)


def exact_shapley(model: torch.nn.Module, x: np.ndarray, rows: np.ndarray, targets: np.ndarray, windows: int) -> np.ndarray:
    """The Shapley values of ``windows`` windows of steps, from the definition: v(S) the mean over the rows of the
    target's output with the windows in S from x and the rest from the row, every coalition, in float64."""
    n, T = len(x), x.shape[-1]
    width = math.ceil(T / windows)
    owner = np.arange(T) // width
    values = np.zeros((n, windows))
    coalitions = [set(s) for k in range(windows + 1) for s in itertools.combinations(range(windows), k)]
    v = {}
    for s in coalitions:
        keep = np.isin(owner, sorted(s))
        mixed = np.where(keep, x[:, None], rows.astype(np.float64)[None])  # (n, B, 1, T)
        with torch.no_grad():
            out = model(torch.from_numpy(mixed.reshape(-1, 1, T))).numpy().reshape(n, len(rows), -1)
        v[frozenset(s)] = out.mean(1)[np.arange(n), targets]
    for i in range(windows):
        for s in coalitions:
            if i not in s:
                weight = math.factorial(len(s)) * math.factorial(windows - len(s) - 1) / math.factorial(windows)
                values[:, i] += weight * (v[frozenset(s | {i})] - v[frozenset(s)])
    return values


def per_window(values: np.ndarray, windows: int) -> np.ndarray:
    T, values = values.shape[-1], values.astype(np.float64)
    width = math.ceil(T / windows)
    return np.stack([values[..., w * width : (w + 1) * width].sum((-1, -2)) for w in range(windows)], -1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def records(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metric's record, one line per explainer, keyed by the method's name as metrics.csv has it (xai4tsc hands
    a metric the name in lower case)."""
    lines = (run["folder"] / "results" / "rnnshap_distances.jsonl").read_text().splitlines()
    named = {line["explainer"]: line for line in map(json.loads, lines)}
    return {method: named[method.lower()] for method in explainers(run)}


def test_the_runner_saves_every_explainers_scores_from_the_configuration(run: dict[str, Any]) -> None:
    with open(run["results"] / "metrics.csv", newline="") as scores:
        rows = {(row["explainer"], row["metric"]): float(row["score"]) for row in csv.DictReader(scores)}
    methods = [entry["method"] for entry in run["config"]["explanation_config"]["explainers"]]
    metrics = [entry["metric"] for entry in run["config"]["evaluation_config"]["metrics"]]
    assert set(rows) == {(m, k) for m in methods for k in metrics}, run["log"][-4000:]
    # the exact Shapley values, scored on their own game (4 windows x 6 rows): at distance 0
    assert math.isclose(rows["rnnshap_shapley", "Distance to exact"], 1.0, abs_tol=1e-6)
    # each row of metrics.csv is the mean of the per-series distances the record keeps
    kept = records(run)
    for method in methods:
        assert math.isclose(rows[method, "Distance to exact"], float(np.mean(kept[method]["cosine"])), rel_tol=1e-12)


def test_the_saved_attributions_are_the_exact_shapley_values_and_add_up(run: dict[str, Any]) -> None:
    model, x, targets, train = trained(run)
    entries = explainers(run)
    with torch.no_grad():
        f = model(torch.from_numpy(x)).numpy()[np.arange(len(x)), targets]
    for method in RNNSHAP:
        rows = door.background_rows(train, entries[method]["n_background"])
        with torch.no_grad():
            expected = model(torch.from_numpy(rows.astype(np.float64))).numpy().mean(0)[targets]
        values = saved(run, method).astype(np.float64)
        assert values.shape == x.shape
        # every rnnshap explainer adds up to the model's own output minus its mean over the background rows
        np.testing.assert_allclose(values.reshape(len(x), -1).sum(1), f - expected, rtol=0, atol=2e-5, err_msg=method)
    game = entries["rnnshap_shapley"]
    rows = door.background_rows(train, game["n_background"])
    reference = exact_shapley(model, x, rows, targets, game["n_windows"])
    np.testing.assert_allclose(per_window(saved(run, "rnnshap_shapley"), game["n_windows"]), reference, rtol=0, atol=2e-5)
    # the distance the runner saved for every explainer is the cosine of its saved values to these, per series
    kept = records(run)
    indices = saved(run, "rnnshap_shapley", "indices.npy")
    assert len(set(targets.tolist())) == 2  # both classes predicted: each series scored on its own target
    for method in entries:
        assert kept[method]["targets"] == targets.tolist() and kept[method]["indices"] == indices.tolist()
        mine = cosine(per_window(saved(run, method), game["n_windows"]), reference)
        np.testing.assert_allclose(kept[method]["cosine"], mine, rtol=0, atol=1e-4, err_msg=method)


def test_the_standard_errors_and_exactness_are_saved_beside_the_scores(run: dict[str, Any]) -> None:
    kept = records(run)
    n = len(run["config"]["explanation_config"]["default_settings"]["samples"]["indices"])
    for line in kept.values():  # the metric's reference: 4 windows x 6 rows, every coalition
        assert line["exact"] is True and np.array_equal(line["stderr"], np.zeros((n, 4)))
        assert line["game"] == {"players": "windows", "n_players": 4, "background_rows": 6, "windows": 6}
    exact, sampled, deepshap = (kept[m]["explainer_meta"] for m in RNNSHAP)
    assert exact["exact"] == [True] * n and np.array_equal(exact["stderr"], np.zeros((n, 4)))
    assert np.all(np.asarray(kept["rnnshap_shapley"]["relative_l2"]) < 1e-6)  # at distance 0 from the reference
    # 8 windows from 120 rows a series: estimated, each value with its standard error
    errors = np.asarray(sampled["stderr"])
    assert sampled["exact"] == [False] * n and errors.shape == (n, 8) and np.all(errors > 0)
    assert np.asarray(sampled["deepshap_gap"]).shape == (n, 8) and np.all(np.asarray(sampled["n_evals"]) <= 120)
    np.testing.assert_allclose(deepshap["additivity_miss"], 0, atol=2e-5)
    assert deepshap["exact"] is False and "exact" not in kept["Integrated_Gradients"]["explainer_meta"]
