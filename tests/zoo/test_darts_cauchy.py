"""darts' ``CauchyLikelihood``: its parameters are computed with ``gamma[gamma < MIN] = MIN``, a masked
assignment from a comparison of the tensor with a constant (a clamp), now attributed exactly.

Truth: darts' own ``predict(..., predict_likelihood_parameters=True)`` (x0 and gamma), which the values of
``rnnshap.darts.ShapExplainer.explain_single`` plus their base values must add up to. (darts' minimum is 1e-100,
which a float32 softplus never goes below: that the clamp's values are exact where it acts is checked in
tests/rules/test_missing_values.py with a larger minimum.)
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("darts")
pytest.importorskip("shap")
from darts import TimeSeries  # noqa: E402
from darts.models import BlockRNNModel  # noqa: E402
from darts.utils.likelihood_models import CauchyLikelihood  # noqa: E402

from rnnshap.darts import ShapExplainer  # noqa: E402

from ..conftest import additivity_tol  # noqa: E402

L, H = 6, 2
TOL = additivity_tol(np.float32)  # float32 models: relative to max(1, |forecast|)


def _fitted() -> tuple[BlockRNNModel, TimeSeries]:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("darts").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = BlockRNNModel(
        input_chunk_length=L, output_chunk_length=H, model="GRU", hidden_dim=8, likelihood=CauchyLikelihood(),
        pl_trainer_kwargs=dict(
            enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu"
        ),
        random_state=0, n_epochs=1, batch_size=16,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    series = TimeSeries.from_values((rng.normal(size=(30, 1)).cumsum(0) * 0.01).astype(np.float32), columns=["y"])
    model.fit(series, verbose=False)
    return model, series


def test_cauchy_likelihood_parameters_add_up_to_darts_predict() -> None:
    model, series = _fitted()
    background, foreground = series[:18], series[14:26]
    explainer = ShapExplainer(model, background)
    result = explainer.explain_single(foreground)
    truth = model.predict(H, series=foreground, predict_likelihood_parameters=True, verbose=False, show_warnings=False)
    assert list(result.available_components) == list(truth.components)
    for component in result.available_components:
        e = result.get_shap_explanation_object(component)
        totals, expected = e.values.sum(1) + e.base_values, truth[component].values()[:, 0]
        error = np.abs(totals - expected) / np.maximum(1.0, np.abs(expected))
        assert error.max() <= TOL, f"{component}: values + base miss darts' predict by {error.max():.3g}"
