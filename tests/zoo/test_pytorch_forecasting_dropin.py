"""rnnshap.pytorch_forecasting.explain on cases found by running realistic forecasts.

Truths: pytorch-forecasting's own ``predict`` (values + base add up to it) and the model's own
``static_variables`` (the variables it reads once per window).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("pytorch_forecasting")
import lightning.pytorch as pl  # noqa: E402
from pytorch_forecasting import RecurrentNetwork, TemporalFusionTransformer, TimeSeriesDataSet  # noqa: E402
from pytorch_forecasting.data import GroupNormalizer, MultiNormalizer  # noqa: E402

from rnnshap.pytorch_forecasting import explain  # noqa: E402

L, H = 5, 3
TOL32 = 1e-5  # the float64 copy's forecasts against predict's float32 ones, relative to max(1, |forecast|)


def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _frame(series: int = 4, length: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "series": np.repeat([f"s{i}" for i in range(series)], length),
        "time_idx": np.tile(np.arange(length), series),
        "value": rng.normal(size=series * length).cumsum() * 0.3 + 5.0,
        "other": rng.normal(size=series * length).cumsum() * 0.3 + 3.0,
        "temp": rng.normal(size=series * length),
    })  # fmt: skip


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max())


def test_two_targets_trained_recurrent_network_in_float64() -> None:
    """RecurrentNetwork with two targets, trained, default dtype='float64': its MultiLoss keeps its metrics in a plain
    list, whose forward cache holds a graph (the float64 copy used to fail there); the values add up to predict
    for both targets."""
    _quiet()
    torch.manual_seed(0)
    data = TimeSeriesDataSet(
        _frame(), time_idx="time_idx", target=["value", "other"], group_ids=["series"], max_encoder_length=L,
        max_prediction_length=H, min_prediction_length=H, min_encoder_length=L, time_varying_unknown_reals=["value", "other"],
        time_varying_known_reals=["temp"], target_normalizer=MultiNormalizer([GroupNormalizer(groups=["series"])] * 2),
    )  # fmt: skip
    model = RecurrentNetwork.from_dataset(data, hidden_size=6, rnn_layers=1)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.fit(model, train_dataloaders=data.to_dataloader(train=True, batch_size=8))
    result = explain(model, data, n_background=6)
    out = model.predict(data, mode="raw", trainer_kwargs=dict(logger=False, enable_checkpointing=False))["prediction"]
    truth = np.stack([t.detach().numpy().reshape(len(t), H) for t in out], axis=-1)  # (windows, H, targets)
    total = result.total() + result.base_values  # (windows, H, outputs)
    assert total.shape == truth.shape
    assert _relative(total, truth) <= TOL32


def test_target_scales_and_encoder_length_are_static_variables() -> None:
    """add_target_scales=True and add_encoder_length=True: pytorch-forecasting lists value_center, value_scale and
    encoder_length among the model's static_variables (one value per window); they are static variables of the
    explanation (in importance('static')), not time-varying ones, with the values of every step they are repeated
    at, and the whole still adds up to predict."""
    _quiet()
    torch.manual_seed(0)
    data = TimeSeriesDataSet(
        _frame(), time_idx="time_idx", target="value", group_ids=["series"], max_encoder_length=L, max_prediction_length=H,
        min_prediction_length=H, min_encoder_length=L, time_varying_unknown_reals=["value"], time_varying_known_reals=["temp"],
        target_normalizer=GroupNormalizer(groups=["series"]), add_target_scales=True, add_encoder_length=True,
    )  # fmt: skip
    model = TemporalFusionTransformer.from_dataset(data, hidden_size=8, attention_head_size=2, hidden_continuous_size=4)
    result = explain(model, data, n_background=6)
    assert set(model.static_variables) == {"encoder_length", "value_center", "value_scale"}
    assert result.static_variables == list(model.static_variables)
    assert not set(model.static_variables) & set(result.time_varying_variables)
    assert set(result.importance("static")) == set(model.static_variables)
    reals = list(data.reals)
    for i, name in enumerate(result.static_variables):
        c = reals.index(name)
        steps = result.raw["encoder_cont"][:, :, c].sum(1) + result.raw["decoder_cont"][:, :, c].sum(1)
        np.testing.assert_allclose(result.static[:, i].reshape(len(steps), -1), steps.reshape(len(steps), -1), rtol=0, atol=0)
    truth = model.predict(data, mode="raw", trainer_kwargs=dict(logger=False))["prediction"].detach().numpy()
    assert _relative(result.total() + result.base_values, truth) <= TOL32
