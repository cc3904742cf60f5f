"""README.md's blocks for the doors into other libraries run as printed, on tiny models of each library:
the forecasting block (darts and neuralforecast), the time-series classifier block (aeon). The reader's own objects
(``model``, ``series``, ``nf``, ``clf``, ``X_test``, ``X_train``) are given; nothing else is."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def block_with(text: str) -> str:
    return next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if text in b)


def _quiet() -> None:
    warnings.simplefilter("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "darts"):
        logging.getLogger(name).setLevel(logging.ERROR)


def test_the_forecasting_block_runs_as_printed() -> None:
    pytest.importorskip("darts")
    pytest.importorskip("neuralforecast")
    pytest.importorskip("shap")
    import pandas as pd
    import torch
    from darts import TimeSeries
    from darts.models import BlockRNNModel
    from neuralforecast import NeuralForecast
    from neuralforecast.models import MLP

    _quiet()
    trainer = dict(enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False)
    walk = np.random.default_rng(0).normal(size=(30, 1)).cumsum(0).astype(np.float32) + 10.0
    months = pd.date_range("2000-01-01", periods=30, freq="MS")
    series = TimeSeries.from_times_and_values(months, walk, columns=["y"])
    torch.manual_seed(0)
    model = BlockRNNModel(
        input_chunk_length=6, output_chunk_length=2, model="GRU", hidden_dim=4, n_epochs=1, random_state=0,
        pl_trainer_kwargs=dict(accelerator="cpu", **trainer),
    ).fit(series, verbose=False)  # fmt: skip
    df = pd.DataFrame({"unique_id": "a", "ds": months, "y": walk[:, 0]})
    nf = NeuralForecast(models=[MLP(h=2, input_size=6, hidden_size=8, num_layers=1, max_steps=2, random_seed=0, **trainer)],
                        freq="MS")  # fmt: skip
    nf.fit(df)
    namespace: dict[str, Any] = {"model": model, "series": series, "nf": nf}
    exec(compile(block_with("rnnshap.darts"), "README.md, forecasting", "exec"), namespace)  # noqa: S102
    assert type(namespace["result"]).__name__ == "ShapExplainabilityResult"
    assert namespace["explanations"]["MLP"]["explained_by"] == "rnnshap (deepshap)"


def test_the_classifier_block_runs_as_printed() -> None:
    pytest.importorskip("aeon")
    pytest.importorskip("matplotlib")
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from aeon.datasets import load_italy_power_demand

    _quiet()
    X_train, y_train = load_italy_power_demand(split="train")
    X_test, _ = load_italy_power_demand(split="test")
    clf = KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean").fit(X_train, y_train)
    namespace: dict[str, Any] = {"clf": clf, "X_test": X_test, "X_train": X_train}
    exec(compile(block_with("rnnshap.aeon.explain"), "README.md, classifiers", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.values.shape[:3] == (5, 1, 24)
    np.testing.assert_allclose(result.values.sum((1, 2)), result.outputs - result.base_values, atol=1e-8)
