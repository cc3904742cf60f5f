"""rnnshap.ray on a local Ray (2 CPUs): the values and summaries equal the in-process ones."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ray.data")
import ray  # noqa: E402

import rnnshap  # noqa: E402
import rnnshap.ray

from .conftest import assert_rounding_close, rounding_tol  # noqa: E402
from .models.torch import RecurrentHead  # noqa: E402

pytestmark = pytest.mark.cluster  # a step of its own in CI: python -m pytest -q -m cluster




def make_model() -> nn.Module:
    torch.manual_seed(0)
    return RecurrentHead("lstm", 3, 6, 2, names="lstm head").eval()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import the tests
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 5, 3)).astype(np.float32), rng.normal(size=(4, 5, 3)).astype(np.float32)


def test_explain_adds_the_in_process_values_to_every_row(local_ray: Any) -> None:
    x, background = _data()
    dataset = ray.data.from_items([{"id": i, "x": row} for i, row in enumerate(x)])
    explained = rnnshap.ray.explain(dataset, make_model, background, column="x", batch_size=5, concurrency=2)
    rows = sorted(explained.take_all(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(24))
    explainer = rnnshap.DeepExplainer(make_model(), background)
    expected = explainer.shap_values(x)
    assert_rounding_close(np.stack([row["shap_values"] for row in rows]), expected, np.float32, what="φ")
    base_values = np.stack([row["base_values"] for row in rows])
    assert_rounding_close(base_values, np.broadcast_to(explainer.expected_value, (24, 2)), np.float32, what="E[f]")
    np.testing.assert_array_equal(np.stack([row["x"] for row in rows]), x)  # the rows themselves are kept


def test_summarize_equals_the_in_process_summary(local_ray: Any) -> None:
    x, background = _data()
    dataset = ray.data.from_numpy(x).rename_columns({"data": "x"})
    summary = rnnshap.ray.summarize(
        dataset, make_model, background, column="x", batch_size=7, concurrency=2, sample_size=10, outputs=[1]
    )
    explainer = rnnshap.DeepExplainer(make_model(), background)
    local = explainer.summarize(x, outputs=[1])
    assert summary.count == 24
    assert_rounding_close(summary.mean, local.mean, np.float32, what="mean φ")
    assert_rounding_close(summary.mean_abs, local.mean_abs, np.float32, what="mean |φ|")
    assert summary.sample.shape == (10, 5, 3, 1)
    values = explainer.shap_values(x, outputs=[1])
    for sampled in summary.sample:  # each sampled row is one sample's attributions
        relative = np.abs(values - sampled) / np.maximum(1.0, np.abs(values))
        assert relative.reshape(24, -1).max(1).min() <= rounding_tol(np.float32)


def test_missing_column_is_named(local_ray: Any) -> None:
    x, background = _data(4)
    dataset = ray.data.from_items([{"seq": row} for row in x])
    with pytest.raises(Exception, match="no column"):
        rnnshap.ray.explain(dataset, make_model, background, column="x", batch_size=2, concurrency=1).take_all()
