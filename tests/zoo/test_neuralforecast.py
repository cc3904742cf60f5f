"""neuralforecast: LSTM, GRU, RNN, DilatedRNN, xLSTM, TFT and KAN, each with historic, future and static
exogenous inputs, and FEDformer with future ones (its frequency attention: complex products, a complex ``tanh``),
explained through the model's own ``forward(windows_batch)``; TimesNet is refused for its period pick.

neuralforecast scales the windows before ``forward`` (``scaler_type``) and maps the network's
output back afterwards, both outside ``forward``: the wrapper explains the network on scaled
inputs, which is what ``forward`` sees. Models are built (not trained): random initial weights
from a fixed seed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from ..conftest import assert_additive
from ..models.torch import Composite
from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_zero, check, explain, params

pytest.importorskip("neuralforecast")
from neuralforecast.models import GRU, KAN, LSTM, RNN, TFT, DilatedRNN, FEDformer, TimesNet  # noqa: E402

try:
    from neuralforecast.models import xLSTM
except ImportError:  # older neuralforecast, or xlstm missing
    xLSTM = None

L, H = 6, 3  # input window, horizon
QUIET = dict(enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False)


def _window(m: nn.Module, y: torch.Tensor, hist: torch.Tensor, futr: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
    """``f(y, hist, futr, stat)``: the model's ``forward`` on one batch of windows, the forecast (N, H).

    y: (N, L, 1) past target; hist: (N, L, X) historic exogenous; futr: (N, L + H, F) future
    exogenous over the window and the horizon; stat: (N, S) static exogenous."""
    batch = {"insample_y": y, "insample_mask": torch.ones_like(y), "hist_exog": hist, "futr_exog": futr, "stat_exog": stat}
    return m.model(batch)[..., 0]  # (N, H, 1 output of the MAE loss) -> (N, H)


def _data(n: int) -> list[torch.Tensor]:
    return [torch.randn(n, L, 1), torch.randn(n, L, 2), torch.randn(n, L + H, 1), torch.randn(n, 1)]


def _build(cls: Any, futr_only: bool = False, **kwargs: Any) -> Callable[[], Case]:
    """The model ``cls`` built with every kind of exogenous input, or the future ones only (``futr_only``: the window
    still holds historic and static ones, which the model does not read)."""

    def build() -> Case:
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        torch.manual_seed(0)
        exogenous = dict(hist_exog_list=["a", "b"], stat_exog_list=["s"]) if not futr_only else {}
        model = cls(
            h=H, input_size=L, futr_exog_list=["c"], max_steps=1, random_seed=0, **exogenous, **QUIET, **kwargs,
        )  # fmt: skip
        return Case(Composite(_window, model=model).eval(), _data(N_BACKGROUND), _data(N_EXPLAINED))

    return build



SMALL_RNN = dict(encoder_hidden_size=8, decoder_hidden_size=8, encoder_n_layers=1)
ZOO = {
    "LSTM": Spec(_build(LSTM, **SMALL_RNN)),
    "GRU": Spec(_build(GRU, **SMALL_RNN)),
    "RNN": Spec(_build(RNN, **SMALL_RNN)),
    "DilatedRNN": Spec(_build(DilatedRNN, encoder_hidden_size=8, decoder_hidden_size=8, dilations=[[1, 2]])),
    "TFT": Spec(_build(TFT, hidden_size=8, n_head=2)),
    # spline bases built from comparisons cast to floating point: steps of the input (rules/gates.py)
    "KAN": Spec(_build(KAN, hidden_size=8)),
    # its period is the top-k frequency of the amplitudes, read into Python ints to reshape by
    "TimesNet": Spec(_build(TimesNet, True, hidden_size=8, conv_hidden_size=8, top_k=1, encoder_layers=1),
                     refused="torch.Tensor.numpy", mentions="topk"),  # fmt: skip
}
if xLSTM is not None:
    ZOO["xLSTM"] = Spec(_build(xLSTM, encoder_hidden_size=8, decoder_hidden_size=8, encoder_n_blocks=1))

#: models whose forecast for horizon step j reads the window only up to position L − H + j (the
#: encoder is causal and the forecast is read off its last H states; DilatedRNN and xLSTM map the
#: whole window to the horizon with a linear layer over time)
CAUSAL = {"LSTM", "GRU", "RNN"}


@pytest.mark.parametrize("name", params(ZOO))
def test_exact(name: str) -> None:
    """Exact, and what the forecast for horizon step j must not see gets exactly 0.

    Every model but KAN reads the future exogenous of horizon step j' only in the forecast for j'. The causal
    encoders also give the past target exactly 0 after position L − H + j. TFT's decoder attends to
    the past and the horizon up to j only (a causal mask). KAN maps the window and the whole horizon's
    exogenous through one stack of KAN layers to every step: exact, with no step it must not see.
    """
    if ZOO[name].refused is not None:
        check(ZOO[name])
        return
    values = check(ZOO[name]).values
    y, futr = values[0], values[2]  # (N, L, 1, H), (N, L + H, 1, H)
    for j in range(H if name != "KAN" else 0):
        later = [L + k for k in range(H) if k > j] if name == "TFT" else [L + k for k in range(H) if k != j]
        assert_zero(futr[:, later, :, j], f"{name}: future exogenous of other horizon steps for step {j}")
        if name in CAUSAL:
            assert_zero(y[:, L - H + j + 1 :, :, j], f"{name}: target after position {L - H + j} for step {j}")


def test_fedformer_s_frequency_attention_adds_up_and_what_it_does_not_read_gets_exactly_zero() -> None:
    """FEDformer's Fourier blocks and frequency cross-attention: complex spectral weights (linear), products of two
    input-dependent spectra (bilinear), a complex ``tanh`` (each part's exact two-player split). Its spectra are
    complex64 whatever its parameters' dtype (buffers made as ``torch.cfloat``), so it runs, and is checked, in
    float32 only."""
    case = _build(FEDformer, True, hidden_size=16, n_head=8, conv_hidden_size=8, encoder_layers=1, decoder_layers=1,
                  modes=2)()  # fmt: skip
    values = explain(case.model, case.background, case.X)
    assert_additive(values, case.model, case.X, case.background, torch.float32)
    assert_zero(values[1], "FEDformer: the historic exogenous it does not read")
    assert_zero(values[3], "FEDformer: the static exogenous it does not read")
    assert min(np.abs(values[0]).max(), np.abs(values[2]).max()) > 1e-4
