"""pytorch-forecasting: DeepAR, RecurrentNetwork, the Temporal Fusion Transformer and NBeatsKAN, built with
``from_dataset`` on a small ``TimeSeriesDataSet`` with a known real, the target, a time-varying known
categorical and a static categorical (NBeatsKAN's on the target alone), and explained through the
network's own ``forward(x)`` on the dataloader's batch tensors.

Categoricals are token ids, attributed at their embeddings. The encoder and decoder lengths are the
full window (context, made by the wrapper). ``target_scale`` is an input like the others: the
network's output is rescaled by it inside ``forward`` (``transform_output``). DeepAR is explained
with ``n_samples=None``, its teacher-forced distribution parameters; sampling is random.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_zero, check, params

pytest.importorskip("pytorch_forecasting")
import pandas as pd  # noqa: E402
from pytorch_forecasting import DeepAR, NBeatsKAN, RecurrentNetwork, TemporalFusionTransformer, TimeSeriesDataSet  # noqa: E402
from pytorch_forecasting.data import GroupNormalizer  # noqa: E402

L, H = 6, 3  # encoder and decoder lengths
KEYS = ["encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "target_scale"]
VALUE = 1  # the target's column in encoder_cont / decoder_cont: reals are ["temp", "value"]


def _forecast(
    m: nn.Module, encoder_cont: torch.Tensor, decoder_cont: torch.Tensor, encoder_cat: torch.Tensor, decoder_cat: torch.Tensor,
    target_scale: torch.Tensor
) -> torch.Tensor:
    """``f(encoder_cont, decoder_cont, encoder_cat, decoder_cat, target_scale)``: the network's
    ``forward`` on a batch, ``prediction[..., outputs]`` flattened to (N, H·k)."""
    n = encoder_cont.shape[0]
    x = {
        "encoder_cont": encoder_cont, "decoder_cont": decoder_cont, "encoder_cat": encoder_cat, "decoder_cat": decoder_cat,
        "target_scale": target_scale,
        "encoder_lengths": torch.full((n,), encoder_cont.shape[1], dtype=torch.long),
        "decoder_lengths": torch.full((n,), decoder_cont.shape[1], dtype=torch.long),
    }  # fmt: skip
    return m.network(x)["prediction"][..., m.outputs].reshape(n, -1)


def _frame() -> pd.DataFrame:
    """Four series of 12 steps: the target, a real covariate, and two categoricals."""
    rng = np.random.default_rng(0)
    series, length = 4, 12
    return pd.DataFrame({
        "series": np.repeat([f"s{i}" for i in range(series)], length),
        "time_idx": np.tile(np.arange(length), series),
        "value": rng.normal(size=series * length).cumsum() * 0.1 + 5.0,
        "temp": rng.normal(size=series * length),
        "weekday": np.tile([str(d % 7) for d in range(length)], series),
        "group": np.repeat(["a", "a", "b", "b"], length),
    })  # fmt: skip


def _dataset(**kwargs: Any) -> TimeSeriesDataSet:
    return TimeSeriesDataSet(
        _frame(), time_idx="time_idx", target="value", group_ids=["series"],
        max_encoder_length=L, min_encoder_length=L, max_prediction_length=H, min_prediction_length=H,
        time_varying_unknown_reals=["value"], time_varying_known_reals=["temp"],
        time_varying_known_categoricals=["weekday"], static_categoricals=["group"], **kwargs,
    )  # fmt: skip


def _build(make: Callable[[TimeSeriesDataSet], nn.Module], outputs: list[int], **dataset: Any) -> Callable[[], Case]:
    def build() -> Case:
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = _dataset(**dataset)
            network = make(data)
        batch, _ = next(iter(data.to_dataloader(train=False, batch_size=N_BACKGROUND + N_EXPLAINED, shuffle=False)))
        tensors = [batch[key] for key in KEYS]
        model = Composite(_forecast, network=network, outputs=outputs).eval()
        return Case(model, [t[:N_BACKGROUND] for t in tensors], [t[N_BACKGROUND:] for t in tensors])

    return build


ZOO = {
    # DeepAR's prediction: (target_scale center, scale, loc, scale) per step; loc and scale are its own
    "DeepAR": Spec(
        _build(
            lambda d: DeepAR.from_dataset(d, hidden_size=8, rnn_layers=2), [2, 3],
            target_normalizer=GroupNormalizer(groups=["series"])
        )
    ),
    "RecurrentNetwork-LSTM": Spec(
        _build(lambda d: RecurrentNetwork.from_dataset(d, hidden_size=8, rnn_layers=2, cell_type="LSTM"), [0])
    ),
    "RecurrentNetwork-GRU": Spec(
        _build(lambda d: RecurrentNetwork.from_dataset(d, hidden_size=8, rnn_layers=1, cell_type="GRU"), [0])
    ),
    # TFT's prediction: 7 quantiles per step; the median
    "TFT": Spec(
        _build(
            lambda d: TemporalFusionTransformer.from_dataset(d, hidden_size=8, attention_head_size=2, hidden_continuous_size=4),
            [3]
        )
    ),
}


@pytest.mark.parametrize("name", params(ZOO))
def test_exact(name: str) -> None:
    """Exact, and what the forecast for decoder step j must not see gets exactly 0.

    The autoregressive networks (DeepAR, RecurrentNetwork) read the target shifted by one step, so
    the target at decoder step j' ≥ j is not seen by the forecast for j, nor the known inputs after
    j: the decoder is causal. TFT's decoder does not read the target at all (an unknown real), and
    attends to the decoder steps up to j only (a causal mask).
    """
    encoder_cont, decoder_cont, _, decoder_cat, _ = check(ZOO[name]).values  # decoder_*: (N, H, ·, H·k)
    k = decoder_cont.shape[-1] // H
    if name == "TFT":
        assert_zero(decoder_cont[:, :, VALUE], f"{name}: the target in the decoder")
    for j in range(H):
        outputs = slice(j * k, (j + 1) * k)
        assert_zero(decoder_cont[:, j + 1 :, :, outputs], f"{name}: decoder reals after step {j}")
        assert_zero(decoder_cat[:, j + 1 :, :, outputs], f"{name}: decoder categoricals after step {j}")
        assert_zero(decoder_cont[:, j:, VALUE, outputs], f"{name}: the target from step {j} on")
    assert np.abs(encoder_cont).max() > 0


# -- TFT with real covariates only, its lengths passed as inputs ---------------------------
LENGTH_KEYS = ["encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "encoder_lengths", "decoder_lengths", "target_scale"]


def forecast_with_lengths(network: nn.Module) -> Composite:
    """The network's ``forward`` on the batch tensors, the encoder and decoder lengths among them
    (TFT sorts the encoder lengths and indexes with them: context, as lengths compared into masks are)."""
    return Composite(lambda m, *tensors: m.network(dict(zip(LENGTH_KEYS, tensors, strict=True)))["prediction"][..., 3],
                     network=network)  # fmt: skip


def _reals_only() -> Case:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    frame = _frame()[["series", "time_idx", "value", "temp"]]  # no categoricals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = TimeSeriesDataSet(
            frame, time_idx="time_idx", target="value", group_ids=["series"],
            max_encoder_length=L, min_encoder_length=L, max_prediction_length=H, min_prediction_length=H,
            time_varying_unknown_reals=["value"], time_varying_known_reals=["temp"],
        )  # fmt: skip
        network = TemporalFusionTransformer.from_dataset(data, hidden_size=8, attention_head_size=2, hidden_continuous_size=4)
    batch, _ = next(iter(data.to_dataloader(train=False, batch_size=N_BACKGROUND + N_EXPLAINED, shuffle=False)))
    tensors = [batch[key] for key in LENGTH_KEYS]
    # without categoricals TFT makes its static embedding in its LightningModule dtype, which only
    # the network's own .double() sets (not a wrapper's)
    model64 = forecast_with_lengths(copy.deepcopy(network).double())
    return Case(
        forecast_with_lengths(network).eval(), [t[:N_BACKGROUND] for t in tensors], [t[N_BACKGROUND:] for t in tensors], model64
    )


def test_tft_without_categoricals_takes_its_lengths_as_context() -> None:
    """Was refused: 'index_select computes floating-point values from it after torch.sort'."""
    values = check(Spec(_reals_only)).values
    assert_zero(values[4], "TFT: the encoder lengths")
    assert_zero(values[5], "TFT: the decoder lengths")
    assert_zero(values[1][:, :, VALUE], "TFT: the target in the decoder")
    assert np.abs(values[0]).max() > 0


# -- NBeatsKAN: N-BEATS with KAN layers, on the target alone --------------------------------
def _nbeats_kan() -> Case:
    """NBeatsKAN's spline bases are pykan's: comparisons with the grid multiplied into masks, then promoted by
    arithmetic (``(x - g) * mask``): steps of the input (rules/gates.py)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = TimeSeriesDataSet(
            _frame(), time_idx="time_idx", target="value", group_ids=["series"], max_encoder_length=L, min_encoder_length=L,
            max_prediction_length=H, min_prediction_length=H, time_varying_unknown_reals=["value"],
        )  # fmt: skip
        network = NBeatsKAN.from_dataset(
            data, widths=[8, 8], num_blocks=[1, 1], num_block_layers=[1, 1], expansion_coefficient_lengths=[3, 3]
        )
    batch, _ = next(iter(data.to_dataloader(train=False, batch_size=N_BACKGROUND + N_EXPLAINED, shuffle=False)))
    tensors = [batch["encoder_cont"], batch["target_scale"]]

    def forecast(m: nn.Module, encoder_cont: torch.Tensor, target_scale: torch.Tensor) -> torch.Tensor:
        prediction = m.network({"encoder_cont": encoder_cont, "target_scale": target_scale})["prediction"]
        return prediction.reshape(len(encoder_cont), -1)

    model = Composite(forecast, network=network).eval()
    return Case(model, [t[:N_BACKGROUND] for t in tensors], [t[N_BACKGROUND:] for t in tensors])


def test_nbeats_kan_is_exact() -> None:
    values = check(Spec(_nbeats_kan)).values
    assert np.abs(values[0]).max() > 0
