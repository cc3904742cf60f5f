"""The tiny foundation forecasters the zoo tests and the benchmarks build, written once.

Each builder makes the model from its library's own config classes at a tiny size with seeded random weights
(no weights can be downloaded here; the code path is the pretrained one's). The library is imported inside the
builder: callers skip (``pytest.importorskip``) or report it missing first. Used by tests/zoo/test_foundation.py's
fixtures and benchmarks/identical_values.py (which loads this file by path, so that it runs against another tree's
``rnnshap`` too); no rnnshap import here.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def ttm() -> Any:
    """granite-tsfm's TinyTimeMixerForPrediction: 16 context steps, patches of 4, 4 forecast steps."""
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    torch.manual_seed(0)
    config = TinyTimeMixerConfig(
        context_length=16, patch_length=4, patch_stride=4, prediction_length=4, d_model=8, num_layers=1,
        decoder_num_layers=1, decoder_d_model=8,
    )  # fmt: skip
    return TinyTimeMixerForPrediction(config).eval()


def tirex() -> Any:
    """tirex' TiRexZero (sLSTM blocks): patches of 4, trained context 16; weights spread (std 0.3): the sLSTM's are
    ``torch.empty`` until a checkpoint fills them."""
    from tirex.models.tirex import TiRexZero

    torch.manual_seed(0)
    config = dict(
        input_patch_size=4, output_patch_size=4, quantiles=QUANTILES,
        block_kwargs=dict(embedding_dim=8, num_heads=2, num_blocks=1, ffn_proj_factor=2.0), input_ff_dim=16,
    )  # fmt: skip
    model = TiRexZero(backend="torch", model_config=config, train_ctx_len=16).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return model


def timesfm(compiled: bool = True, **forecast_config: Any) -> Any:
    """timesfm's TimesFM_2p5_200M_torch with a tiny definition (patches of 4, one layer of width 8), weights spread
    (std 0.3: quantiles that differ and cross), compiled with ``ForecastConfig(max_context=16, max_horizon=16,
    per_core_batch_size=8, **forecast_config)`` unless ``compiled=False``."""
    from timesfm import ForecastConfig, TimesFM_2p5_200M_torch, configs
    from timesfm.timesfm_2p5 import timesfm_2p5_base, timesfm_2p5_torch

    p, o, oq, d = 4, 8, 16, 8
    definition = timesfm_2p5_base.TimesFM_2p5_200M_Definition(
        input_patch_len=p, output_patch_len=o, output_quantile_len=oq,
        tokenizer=configs.ResidualBlockConfig(2 * p, d, d, True, "swish"),
        stacked_transformers=configs.StackedTransformersConfig(
            1, configs.TransformerConfig(d, d, 2, "rms", "rms", "rms", False, True, "swish", True)
        ),
        output_projection_point=configs.ResidualBlockConfig(d, d, o * 10, False, "swish"),
        output_projection_quantiles=configs.ResidualBlockConfig(d, d, oq * 10, False, "swish"),
    )  # fmt: skip

    class Tiny(timesfm_2p5_torch.TimesFM_2p5_200M_torch_module):
        config = definition

    torch.manual_seed(0)
    with mock.patch.object(timesfm_2p5_torch, "TimesFM_2p5_200M_torch_module", Tiny):  # the constructor builds the tiny one
        model = TimesFM_2p5_200M_torch(torch_compile=False)
    model.model.eval()
    for parameter in model.model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    settings: dict[str, Any] = dict(max_context=16, max_horizon=16, per_core_batch_size=8)
    settings.update(forecast_config)
    if compiled:
        model.compile(ForecastConfig(**settings))
    return model


def bolt(prediction_length: int = 4) -> Any:
    """chronos' ChronosBoltPipeline: a T5 of width 8, context 16, patches of 4, 4 forecast steps (or
    ``prediction_length``), 3 quantiles."""
    from chronos import ChronosBoltPipeline
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    config = T5Config(
        d_model=8, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=4, vocab_size=2, decoder_start_token_id=0,
        pad_token_id=0, chronos_config=dict(
            context_length=16, prediction_length=prediction_length, input_patch_size=4, input_patch_stride=4,
            quantiles=[0.1, 0.5, 0.9],
            use_reg_token=True,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    return ChronosBoltPipeline(ChronosBoltModelForForecasting(config).eval())


def moment() -> Any:
    """momentfm's MOMENTPipeline (forecasting): a T5 encoder of width 8, 16 steps, patches of 4, 4 forecast steps.
    momentfm warns (UserWarning, "must be fine-tuned") on a forecasting head: the caller decides what to do with it."""
    from momentfm import MOMENTPipeline

    t5 = dict(
        d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4, vocab_size=8, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    config = dict(
        task_name="forecasting", forecast_horizon=4, seq_len=16, patch_len=4, patch_stride_len=4, d_model=8,
        transformer_type="encoder_only",
        transformer_backbone="google/flan-t5-small", t5_config=t5, randomly_initialize_backbone=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MOMENTPipeline(config, model_kwargs=dict(task_name="forecasting", forecast_horizon=4))
    model.init()
    return model.eval()


def chronos2() -> Any:
    """chronos' Chronos2Pipeline: width 8, context 16, patches of 4, two output patches, 9 quantiles."""
    from chronos import Chronos2Pipeline
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    config = Chronos2CoreConfig(
        d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2, chronos_config=dict(
            context_length=16, output_patch_size=4, input_patch_size=4, input_patch_stride=4,
            quantiles=QUANTILES, use_reg_token=True, use_arcsinh=True, max_output_patches=2,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    return Chronos2Pipeline(Chronos2Model(config).eval())


def timesfm3(**settings: Any) -> Any:
    """timesfm's TimesFM 3 forecaster (``timesfm3.TimesFM3Forecaster``, timesfm 3.0.2) with a tiny model (patches of 4,
    output patches of 8, one layer of width 16, the three quantiles 0.1, 0.5, 0.9), built as ``TimesFM3Forecaster(
    ModelConfig(checkpoint_path=a .pth))`` builds it: from the config, its weights loaded from the file, here seeded
    random weights spread (std 0.3: quantiles that differ and cross) saved there first. ``settings``: ModelConfig's."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from timesfm3.torch import (
        ModelConfig,
        ResidualBlockConfig,
        StackedTransformersConfig,
        TimesFM3Forecaster,
        TransformerConfig,
        timesfm3_forecaster,
    )

    layer = TransformerConfig(
        model_dims=16, hidden_dims=16, num_heads=2, attention_norm="rms", feedforward_norm="rms", qk_norm="rms",
        use_bias=False, use_rope_seq=True, use_rope_var=True, ff_activation="relu", deterministic=True,
        use_memory_efficient_attention=False,
    )  # fmt: skip
    config = ModelConfig(
        input_patch_length=4, output_patch_length=8, quantiles=[0.1, 0.5, 0.9], median_quantile_index=1,
        residual_block_config=ResidualBlockConfig(hidden_dims=16, output_dims=16, use_bias=False, activation="relu"),
        transformer_config=StackedTransformersConfig(num_layers=1, transformer=layer), device="cpu",
        per_core_batch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = timesfm3_forecaster._make_torch_model(config)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "tiny.pth")
        torch.save(model.state_dict(), path)
        settings.setdefault("checkpoint_path", path)
        return TimesFM3Forecaster(dataclasses.replace(config, **settings))


def moirai2(prediction_length: int = 4, context_length: int = 16) -> Any:
    """uni2ts' Moirai2Forecast around a tiny ``Moirai2Module`` (patches of 4, one layer of width 64, the quantiles 0.1,
    0.5, 0.9), weights spread (std 0.3)."""
    from uni2ts.model.moirai2 import Moirai2Forecast, Moirai2Module

    torch.manual_seed(0)
    module = Moirai2Module(
        d_model=64, d_ff=64, num_layers=1, patch_size=4, max_seq_len=64, attn_dropout_p=0.0, dropout_p=0.0,
        quantile_levels=(0.1, 0.5, 0.9),
    )  # fmt: skip
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return Moirai2Forecast(
        prediction_length=prediction_length, target_dim=1, feat_dynamic_real_dim=0, past_feat_dynamic_real_dim=0,
        context_length=context_length, module=module,
    ).eval()  # fmt: skip


def toto(dtype: torch.dtype = torch.float32) -> Any:
    """toto-ts' Toto with the released configuration's structure (causal patch scaler, a mixture of Student-t heads),
    tiny: patches of 4, two layers of width 16, weights as its constructor draws them."""
    from toto.model.toto import Toto

    torch.manual_seed(0)
    model = Toto(
        patch_size=4, stride=4, embed_dim=16, num_layers=2, num_heads=2, mlp_hidden_dim=32, dropout=0.0,
        spacewise_every_n_layers=2, scaler_cls="<class 'model.scaler.CausalPatchStdMeanScaler'>",
        output_distribution_classes=["<class 'model.distribution.MixtureOfStudentTsOutput'>"],
        output_distribution_kwargs={"k_components": 3}, use_memory_efficient_attention=False,
    )  # fmt: skip
    return model.to(dtype).eval()


def toto2(context_length: int = 16) -> Any:
    """toto-2's Toto2Model from its own ``Toto2ModelConfig``, tiny: patches of 4, two layers of width 16, weights as its
    constructor draws them."""
    from toto2.configuration import Toto2ModelConfig
    from toto2.model import Toto2Model

    torch.manual_seed(0)
    config = Toto2ModelConfig(
        patch_size=4, d_model=16, num_heads=2, num_layers=2, layer_group_size=2, num_variate_layers_per_group=1,
        variate_layer_first=False, residual_attn_ratio=Toto2ModelConfig.compute_residual_attn_ratio(context_length, 4),
    )  # fmt: skip
    return Toto2Model(config).eval()
