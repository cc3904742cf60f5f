"""darts: RNNModel (LSTM, future covariates) and BlockRNNModel (GRU, past covariates), with and
without reversible instance normalization, explained through the fitted Lightning module's own
``forward(PLModuleInput)`` in the predict stage, as darts' ONNX export calls it.

darts builds its network in ``fit``; each model is fitted for one epoch on a short random series
(a couple of optimizer steps). ``RNNModel`` ignores ``use_reversible_instance_norm`` (it fixes it
to False), so only ``BlockRNNModel`` has the RIN variant.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_zero, check, params

pytest.importorskip("darts")
from darts import TimeSeries  # noqa: E402
from darts.models import BlockRNNModel, RNNModel  # noqa: E402
from darts.utils.data.torch_datasets.utils import ModuleStage, PLModuleInput  # noqa: E402

L, H = 6, 2  # input and output chunk lengths
TRAINER = dict(
    pl_trainer_kwargs=dict(
        enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False, accelerator="cpu"
    ),
    random_state=0, n_epochs=1, batch_size=16,
)  # fmt: skip

def _module(m: nn.Module, *tensors: torch.Tensor) -> torch.Tensor:
    """``f(*tensors)``: the fitted module's ``forward`` on ``PLModuleInput(**tensors)`` in the predict
    stage (what darts' ``predict`` and ONNX export call), the prediction flattened to (N, k)."""
    x_in = PLModuleInput(**dict(zip(m.names, tensors, strict=True)), stage=ModuleStage.PREDICT)
    return m.module(x_in).prediction.flatten(1)


def _series() -> tuple[TimeSeries, TimeSeries]:
    rng = np.random.default_rng(0)
    target = TimeSeries.from_values(rng.normal(size=(30, 1)).cumsum(0).astype(np.float32))
    covariates = TimeSeries.from_values(rng.normal(size=(40, 2)).astype(np.float32))
    return target, covariates


def _build(kind: str, **kwargs: Any) -> Callable[[], Case]:
    def build() -> Case:
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        torch.manual_seed(0)
        target, covariates = _series()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "RNNModel":
                model = RNNModel(input_chunk_length=L, model="LSTM", hidden_dim=8, training_length=L + 2, **TRAINER, **kwargs)
                model.fit(target, future_covariates=covariates, verbose=False)
                names = ["past_target", "historic_future_covariates", "future_covariates"]
                shapes = [(L, 1), (L, 2), (1, 2)]
            else:
                model = BlockRNNModel(input_chunk_length=L, output_chunk_length=H, model="GRU", hidden_dim=8, **TRAINER, **kwargs)
                model.fit(target, past_covariates=covariates, verbose=False)
                names, shapes = ["past_target", "past_covariates"], [(L, 1), (L, 2)]
        wrapper = Composite(_module, module=model.model, names=names).eval()
        return Case(wrapper, [torch.randn(N_BACKGROUND, *s) for s in shapes], [torch.randn(N_EXPLAINED, *s) for s in shapes])

    return build


ZOO = {
    "RNNModel-LSTM": Spec(_build("RNNModel")),
    "BlockRNNModel-GRU": Spec(_build("BlockRNNModel")),
    "BlockRNNModel-GRU-RIN": Spec(_build("BlockRNNModel", use_reversible_instance_norm=True)),  # .detach()ed statistics
}


@pytest.mark.parametrize("name", params(ZOO))
def test_zoo(name: str) -> None:
    """Exact or refused by name; and what the model does not read gets exactly 0.

    RNNModel pairs the target at t with the covariates at t + 1: in the predict stage it drops the
    first historic future covariate. BlockRNNModel reads the GRU's last H states, each through the
    same head: the forecast for step j does not see the window after position L − H + j (unless a
    reversible instance norm standardizes the window by its statistics, read from every position).
    """
    result = check(ZOO[name])
    if ZOO[name].refused is not None:
        return
    if name.startswith("RNNModel"):
        assert_zero(result.values[1][:, 0], f"{name}: the first historic future covariate")
    elif not name.endswith("-RIN"):  # reversible instance norm: mean and std of the whole window
        for phi in result.values:  # (N, L, features, H)
            for j in range(H):
                assert_zero(phi[:, L - H + j + 1 :, :, j], f"{name}: the window after position {L - H + j} for step {j}")
