"""The foundation forecasters' own missing-value code through ``rnnshap.DeepExplainer``.

The libraries' own classes (TiRex's ``StandardScaler``, Chronos-Bolt's ``InstanceNorm``, MOMENT's ``RevIN``) and
tiny models built from each library's own config classes with random weights (the code path the pretrained
models run: the ``isnan`` mask as a feature, ``nanmean`` scaling, NaN padding inside the model), explained on
real windows of statsmodels' CO2 series, complete or with the same gap in every window. Truths: the model's
own output (additivity, at the tolerance of the precision it computes in), exact zeros for the missing entries,
the model unchanged; refused by name where a window misses values its reference has.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ..models.torch import Composite

F32 = torch.float32
NAN = float("nan")
L, GAP = 32, slice(10, 13)


def _co2_windows() -> torch.Tensor:
    datasets = pytest.importorskip("statsmodels.datasets")
    series = datasets.co2.load_pandas().data["co2"].interpolate().to_numpy()
    return torch.tensor(np.stack([series[i : i + L] for i in range(0, 1100, 100)]), dtype=F32)


@pytest.fixture(scope="module")
def co2() -> tuple[torch.Tensor, torch.Tensor]:
    """(background (8, L), explained (2, L)): real windows of the CO2 series, ppm around 320."""
    windows = _co2_windows()
    return windows[3:], windows[:2]


def _with_gap(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[:, GAP] = NAN
    return t


def _outputs(f: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return f(x.clone()).reshape(x.shape[0], -1).double().numpy()


def _assert_explained(
    f: nn.Module, background: torch.Tensor, X: torch.Tensor, rtol: float, compile: Any = None
) -> np.ndarray:
    """Values of ``f`` (the explainer's own additivity check on), Σφ against f's own output within ``rtol`` of the
    largest |f|, exact zeros where the windows miss values, the model's weights unchanged."""
    before = {k: v.clone() for k, v in f.state_dict().items()}
    values = np.asarray(rnnshap.DeepExplainer(f, background, compile=compile).shap_values(X))
    gap = _outputs(f, X) - _outputs(f, background).mean(0)
    scale = max(1.0, float(np.abs(_outputs(f, X)).max()))
    assert np.abs(values.sum(1) - gap).max() <= rtol * scale
    missing = torch.isnan(X).numpy()
    assert np.all(values[missing] == 0.0) and np.isfinite(values).all()
    assert all(torch.equal(before[k], v) for k, v in f.state_dict().items())
    return values


FLOAT32_RTOL = 256 * float(np.finfo(np.float32).eps)


# -- the libraries' scalers ------------------------------------------------------------------------------------------
def _scalers() -> dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]]:
    def tirex() -> Callable[[torch.Tensor], torch.Tensor]:
        patcher = pytest.importorskip("tirex.models.patcher")
        return lambda x: patcher.StandardScaler().scale(x)[0]

    def chronos() -> Callable[[torch.Tensor], torch.Tensor]:
        bolt = pytest.importorskip("chronos.chronos_bolt")
        return lambda x: bolt.InstanceNorm()(x)[0]

    def moment() -> Callable[[torch.Tensor], torch.Tensor]:
        revin = pytest.importorskip("momentfm.models.layers.revin")
        norm = revin.RevIN(num_features=1)
        return lambda x: norm(x[:, None, :], mode="norm")[:, 0]

    return {"tirex": tirex, "chronos": chronos, "moment": moment}


def _scaled_mask_network(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A library's scaler, then TiRex's input: the filled window beside the ``isnan`` mask, into a small network."""
    token = m.scale(x)
    mask = torch.isnan(token).logical_not().to(token.dtype)
    return m.net(torch.cat((torch.nan_to_num(token, nan=0.0), mask), dim=-1))


@pytest.mark.parametrize("library", ["tirex", "chronos", "moment"])
@pytest.mark.parametrize("gap", [False, True], ids=["complete", "gap"])
def test_library_scalers_with_the_mask_as_a_feature(library: str, gap: bool, co2: Any) -> None:
    torch.manual_seed(0)
    scale = _scalers()[library]()
    f = Composite(_scaled_mask_network, scale=scale, net=nn.Sequential(nn.Linear(2 * L, 8), nn.Tanh(), nn.Linear(8, 3))).eval()
    background, X = co2
    if gap:
        background, X = _with_gap(background), _with_gap(X)
    values = _assert_explained(f, background, X, FLOAT32_RTOL)
    assert np.abs(values).max() > 0


# -- tiny real models ---------------------------------------------------------------------------------------------------
def _tirex() -> nn.Module:
    tirex = pytest.importorskip("tirex.models.tirex")
    torch.manual_seed(0)
    config = dict(
        input_patch_size=4, output_patch_size=4, quantiles=[0.1, 0.5, 0.9], input_ff_dim=32,
        block_kwargs=dict(embedding_dim=16, num_heads=2, num_blocks=2, ffn_proj_factor=2.0),
    )
    model = tirex.TiRexZero("torch", config, train_ctx_len=L)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    model.eval()

    # TiRex's own forecast function (``_forecast_tensor``, what ``forecast()`` runs under inference_mode)
    return Composite(lambda m, context: m.model._forecast_tensor(context, prediction_length=8).flatten(1), model=model)


def _chronos_bolt() -> nn.Module:
    bolt = pytest.importorskip("chronos.chronos_bolt")
    from transformers import T5Config

    torch.manual_seed(0)
    chronos = dict(context_length=L, prediction_length=8, input_patch_size=4, input_patch_stride=4, quantiles=[0.1, 0.5, 0.9])
    config = T5Config(
        d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, chronos_config={**chronos, "use_reg_token": True},
    )
    model = bolt.ChronosBoltModelForForecasting(config).eval()

    return Composite(lambda m, context: m.model(context).quantile_preds.flatten(1), model=model)


def _chronos2() -> nn.Module:
    pytest.importorskip("chronos.chronos2")
    from chronos.chronos2.config import Chronos2CoreConfig
    from chronos.chronos2.model import Chronos2Model

    torch.manual_seed(0)
    chronos = dict(
        context_length=L, output_patch_size=4, input_patch_size=4, input_patch_stride=4, quantiles=[0.1, 0.5, 0.9],
        use_reg_token=True, use_arcsinh=True, max_output_patches=2,
    )
    config = Chronos2CoreConfig(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0, chronos_config=chronos)
    model = Chronos2Model(config).eval()

    return Composite(lambda m, context: m.model(context, num_output_patches=2).quantile_preds.flatten(1), model=model)


def _moment() -> nn.Module:
    momentfm = pytest.importorskip("momentfm")
    torch.manual_seed(0)
    t5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0, feed_forward_proj="relu", vocab_size=8)
    config = dict(
        task_name="forecasting", seq_len=L, patch_len=8, patch_stride_len=8, d_model=16, transformer_type="encoder_only",
        transformer_backbone="google/flan-t5-small", t5_config=t5, randomly_initialize_backbone=True, forecast_horizon=8,
        patch_dropout=0.0, head_dropout=0.0,
    )
    with pytest.warns(UserWarning):  # (only the reconstruction head is pre-trained: momentfm says so)
        model = momentfm.MOMENTPipeline(config, model_kwargs={"task_name": "forecasting", "forecast_horizon": 8})
        model.init()
    model.eval()

    def forecast(m: nn.Module, context: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(context.shape[0], context.shape[-1])
        return m.model(x_enc=context[:, None, :], input_mask=mask).forecast.flatten(1)

    return Composite(forecast, model=model)


MODELS: dict[str, Callable[[], nn.Module]] = {"tirex": _tirex, "chronos_bolt": _chronos_bolt, "chronos2": _chronos2}
#: TiRex's sLSTM computes in bfloat16 (both passes alike): its values add up to one bfloat16 eps of the forecast
RTOL = {"tirex": float(torch.finfo(torch.bfloat16).eps), "chronos_bolt": FLOAT32_RTOL, "chronos2": FLOAT32_RTOL}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("gap", [False, True], ids=["complete", "gap"])
def test_tiny_foundation_models_are_exact_with_and_without_missing_values(name: str, gap: bool, co2: Any) -> None:
    """TiRex computes its sLSTM in bfloat16: its values add up to bfloat16 precision (what the explainer's check,
    which names that precision, allows); the Chronos models compute in float32."""
    f = MODELS[name]()
    background, X = co2
    if gap:
        background, X = _with_gap(background), _with_gap(X)
    _assert_explained(f, background, X, RTOL[name])


def test_tiny_moment_with_revin_nanmean_is_exact(co2: Any) -> None:
    f = _moment()
    background, X = co2
    _assert_explained(f, background, X, FLOAT32_RTOL)


@pytest.mark.parametrize("name", ["tirex", "chronos_bolt"])
def test_context_shorter_than_the_model_takes_is_padded_with_nan_inside_and_exact(name: str, co2: Any) -> None:
    """TiRex and Chronos-Bolt pad a short context with NaN (and mask it): exact, the padding attributes nothing."""
    f = MODELS[name]()
    background, X = co2
    _assert_explained(f, background[:, 6:], X[:, 6:], RTOL[name])


def test_chronos_bolts_padding_on_the_captured_pass(co2: Any) -> None:
    """Chronos-Bolt's mask of observed entries (``isnan``) becomes patches, a comparison and an attention mask: the same
    on both sides of every pair, a constant of the function on the captured pass too."""
    f = MODELS["chronos_bolt"]()
    background, X = co2
    _assert_explained(f, background[:, 6:], X[:, 6:], RTOL["chronos_bolt"], compile="capture")


def test_a_window_missing_values_its_reference_has_is_refused_by_name(co2: Any) -> None:
    f = MODELS["chronos_bolt"]()
    background, X = co2
    X = _with_gap(X)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="different entries") as info:
        rnnshap.DeepExplainer(f, background).shap_values(X)
    assert "Choose background rows" in str(info.value)


def test_tirex_names_bfloat16_as_the_precision_its_values_add_up_to(co2: Any) -> None:
    f = MODELS["tirex"]()
    background, X = co2
    explainer = rnnshap.DeepExplainer(f, background)
    assert explainer.engine.dtype == "bfloat16"
    with pytest.raises(rnnshap.AdditivityError, match="computes in bfloat16 inside"):
        explainer.shap_values(X, check_additivity=1e-9)
