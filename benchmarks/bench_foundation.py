"""rnnshap.foundation.explain on the foundation forecasters: cost against its floor, faithfulness against shap's
PermutationExplainer on the same forecast call, and what an all-zero background does.

Models are built from each library's own config classes at a small size with random weights (no weights can be
downloaded here; the code path is the pretrained one's), on windows of statsmodels' sunspots series.

- **cost**: DeepSHAP through the door (the library's forecast and the check against it included) for 4 windows
  (``--windows``: other counts) against 16 background windows, against the floor: one native forward + backward
  of the same torch function over the same (window, reference) rows (the library's own ``no_grad`` and ``detach``
  lifted), of the summed output and (the floor of one attribution per output) one backward per forecast output,
  batched. Best of ``--repeats``. Beside ``explain()`` (which sets DeepSHAP up on every call), a later call of a
  ``ForecastExplainer`` on the same background (its setup kept). ``--size published``: the models at their published
  checkpoints' sizes (random weights), 512-step windows of statsmodels' co2, the median quantile alone.
- **faithfulness**: one window, 8 players (windows of 4 steps: ``players=4``), 8 background windows. The
  exact Shapley values of the game v(S) = mean over the background of the library's own forecast (every one of
  the 256 coalitions against every background row, through the library's public call); then the distance
  (relative L2 over players, forecast steps and quantiles) of DeepSHAP summed per player, of rnnshap's Shapley
  mode and of shap's PermutationExplainer (a function masker over the same players and background) at the same
  number of model rows, and their times (medians over 5 seeds of both samplers).
- **background**: DeepSHAP against 16 all-zero rows and against 16 real windows: the attributions' size
  (sum of |values|) over the output change they explain (|f(x) - mean f(r)|), the median over outputs.

Run: ``python benchmarks/bench_foundation.py [--repeats 3] [--models TiRex,Chronos-2,...] [--parts cost] [--windows 4 16]
[--size published] [--clock cpu]``; before and
after a change: ``PYTHONPATH=/old/tree python benchmarks/bench_foundation.py --parts cost`` beside the same on this tree.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import time
import warnings
from typing import Any, Callable
from unittest import mock

os.environ.setdefault("USE_TF", "0")  # transformers on torch: shap's transformers probe fails under Keras 3 otherwise

import numpy as np
import torch

import rnnshap
import rnnshap.foundation
from rnnshap.forecasting.foundation import adapter_for

L, H = 32, 4  # context steps, forecast steps
SEEDS = 5  # the samplers' seeds; distances and times are their medians


def sunspots() -> np.ndarray:
    import statsmodels.api as sm

    return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=float) + 1.0


def co2() -> np.ndarray:
    """statsmodels' weekly Mauna Loa CO2 (2,284 weeks; its 59 missing weeks interpolated): long enough for 512-step
    windows (``--size published``)."""
    import statsmodels.api as sm

    return sm.datasets.co2.load_pandas().data["co2"].interpolate().bfill().to_numpy(dtype=float)


#: ``--size published``: the models at their published sizes (PUBLISHED), 512-step windows of co2(), the median only
PUBLISHED_RUN = False


def background_windows(series: np.ndarray) -> np.ndarray:
    """The 16 background windows of the cost table."""
    starts = range(0, 16 * 60, 60) if PUBLISHED_RUN else range(0, 160, 10)
    return np.stack([series[s : s + L] for s in starts])


def explained_levels(model: Any) -> list[float] | None:
    """The quantile levels the cost table explains: all (None), or the median alone at published sizes."""
    if not PUBLISHED_RUN:
        return None
    levels = adapter_for(model).levels(None)
    return [0.5] if 0.5 in levels else None


def spread(model: torch.nn.Module, std: float = 0.2) -> None:
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)


# -- the models ---------------------------------------------------------------------------------------------
def tirex() -> Any:
    from tirex.models.tirex import TiRexZero

    config = dict(
        input_patch_size=8, output_patch_size=8, quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        block_kwargs=dict(embedding_dim=32, num_heads=4, num_blocks=2, ffn_proj_factor=2.0), input_ff_dim=64,
    )  # fmt: skip
    model = TiRexZero(backend="torch", model_config=config, train_ctx_len=L).eval()
    spread(model)
    return model


def chronos_bolt() -> Any:
    from chronos import ChronosBoltPipeline
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    config = T5Config(
        d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, vocab_size=2, decoder_start_token_id=0,
        pad_token_id=0, chronos_config=dict(
            context_length=L, prediction_length=H, input_patch_size=8, input_patch_stride=8,
            quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], use_reg_token=True,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    return ChronosBoltPipeline(ChronosBoltModelForForecasting(config).eval())


def chronos2() -> Any:
    from chronos import Chronos2Pipeline
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    config = Chronos2CoreConfig(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, chronos_config=dict(
            context_length=L, output_patch_size=8, input_patch_size=8, input_patch_stride=8,
            quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], use_reg_token=True, use_arcsinh=True, max_output_patches=1,
        ),
    )  # fmt: skip
    model = Chronos2Model(config).eval()
    spread(model)  # its initializer (factor 0.05) leaves a tiny model near-linear: every method would be exact
    return Chronos2Pipeline(model)


def timesfm() -> Any:
    from timesfm import ForecastConfig, TimesFM_2p5_200M_torch, configs
    from timesfm.timesfm_2p5 import timesfm_2p5_base, timesfm_2p5_torch

    p, o, oq, d = 8, 16, 32, 32
    definition = timesfm_2p5_base.TimesFM_2p5_200M_Definition(
        input_patch_len=p, output_patch_len=o, output_quantile_len=oq,
        tokenizer=configs.ResidualBlockConfig(2 * p, d, d, True, "swish"),
        stacked_transformers=configs.StackedTransformersConfig(
            2, configs.TransformerConfig(d, d, 4, "rms", "rms", "rms", False, True, "swish", True)
        ),
        output_projection_point=configs.ResidualBlockConfig(d, d, o * 10, False, "swish"),
        output_projection_quantiles=configs.ResidualBlockConfig(d, d, oq * 10, False, "swish"),
    )  # fmt: skip

    class Tiny(timesfm_2p5_torch.TimesFM_2p5_200M_torch_module):
        config = definition

    with mock.patch.object(timesfm_2p5_torch, "TimesFM_2p5_200M_torch_module", Tiny):
        model = TimesFM_2p5_200M_torch(torch_compile=False)
    spread(model.model)
    model.model.eval()
    model.compile(ForecastConfig(max_context=L, max_horizon=16, normalize_inputs=True, per_core_batch_size=256))
    return model


def tinytimemixer() -> Any:
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    torch.manual_seed(0)
    config = TinyTimeMixerConfig(
        context_length=L, patch_length=8, patch_stride=8, prediction_length=H, d_model=32, num_layers=2, decoder_num_layers=2,
        decoder_d_model=16,
    )  # fmt: skip
    return TinyTimeMixerForPrediction(config).eval()


def moment() -> Any:
    from momentfm import MOMENTPipeline

    t5 = dict(
        d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=8, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8, relative_attention_max_distance=32,
    )  # fmt: skip
    config = dict(
        task_name="forecasting", forecast_horizon=H, seq_len=L, patch_len=8, patch_stride_len=8, d_model=32,
        transformer_type="encoder_only", transformer_backbone="google/flan-t5-small", t5_config=t5,
        randomly_initialize_backbone=True,
    )  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MOMENTPipeline(config, model_kwargs=dict(task_name="forecasting", forecast_horizon=H))
        model.init()
    return model.eval()


# -- the models at their published checkpoints' sizes (random weights; ``--size published``) --------------------
# The configs below are the published checkpoints' architecture settings (read from their model cards and configs;
# nothing can be downloaded here to check them against): the per-op cost of an intercepted pass amortizes with
# size, so the ratio at these sizes is what a user with the real weights sees. Context L=512 steps (long enough
# for every model's patches), H=4 forecast steps, the median quantile alone (the per-output floor's backward passes
# grow with the outputs explained; the door's with them).
def init_small(model: torch.nn.Module, std: float = 0.02) -> None:
    """Weights as a trained transformer's are in scale (normal, std 0.02; norms' scales 1): tirex's sLSTM kernels are
    ``torch.empty`` until a checkpoint fills them."""
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if p.dim() == 1 and ("norm" in name or name.endswith("weight")):
            torch.nn.init.ones_(p) if "norm" in name else torch.nn.init.normal_(p, std=std)
        else:
            torch.nn.init.normal_(p, std=std)


def tirex_published() -> Any:
    """TiRex (NX-AI/TiRex, 35M): 12 sLSTM blocks of width 512, 4 heads, patches of 32, trained on 2,048 steps."""
    from tirex.models.tirex import TiRexZero

    config = dict(
        input_patch_size=32, output_patch_size=32, quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        block_kwargs=dict(embedding_dim=512, num_heads=4, num_blocks=12, ffn_proj_factor=2.6667), input_ff_dim=2048,
    )  # fmt: skip
    model = TiRexZero(backend="torch", model_config=config, train_ctx_len=2048).eval()
    init_small(model)
    return model


def chronos_bolt_published() -> Any:
    """Chronos-Bolt tiny (amazon/chronos-bolt-tiny, 9M): a T5 of width 256, 4 + 4 layers, 4 heads, context 2,048,
    patches of 16, 64 forecast steps, 9 quantiles."""
    from chronos import ChronosBoltPipeline
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    config = T5Config(
        d_model=256, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4, d_kv=64, vocab_size=2,
        decoder_start_token_id=0, pad_token_id=0, chronos_config=dict(
            context_length=2048, prediction_length=64, input_patch_size=16, input_patch_stride=16,
            quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], use_reg_token=True,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    return ChronosBoltPipeline(ChronosBoltModelForForecasting(config).eval())


def chronos2_published() -> Any:
    """Chronos-2 (amazon/chronos-2, 120M): width 768, 12 layers, 12 heads, context 8,192, patches of 16."""
    from chronos import Chronos2Pipeline
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    config = Chronos2CoreConfig(
        d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, chronos_config=dict(
            context_length=8192, output_patch_size=16, input_patch_size=16, input_patch_stride=16,
            quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], use_reg_token=True, use_arcsinh=True,
            max_output_patches=64,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    return Chronos2Pipeline(Chronos2Model(config).eval())


def timesfm_published() -> Any:
    """TimesFM 2.5 (google/timesfm-2.5-200m-pytorch): the package's own definition (20 layers of width 1,280),
    compiled with the library's default batch (``per_core_batch_size=1``): its ``forecast()``, which ``explain()``
    calls once for the forecast it returns, pads every call to that many series (with 256, one window's forecast
    decodes 256 rows: 30 s of CPU here, three times DeepSHAP's own work)."""
    from timesfm import ForecastConfig, TimesFM_2p5_200M_torch

    torch.manual_seed(0)
    model = TimesFM_2p5_200M_torch(torch_compile=False)
    init_small(model.model)
    model.model.eval()
    model.compile(ForecastConfig(max_context=L, max_horizon=128, normalize_inputs=True))
    return model


def tinytimemixer_published() -> Any:
    """TinyTimeMixer r2 512-96 (ibm-granite/granite-timeseries-ttm-r2, about 1M): context 512, patches of 64, width 192,
    2 layers, 3 adaptive patching levels, decoder of width 128 and 2 layers, 96 forecast steps."""
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    torch.manual_seed(0)
    config = TinyTimeMixerConfig(
        context_length=512, patch_length=64, patch_stride=64, prediction_length=96, d_model=192, num_layers=2,
        adaptive_patching_levels=3, decoder_d_model=128, decoder_num_layers=2, expansion_factor=2, gated_attn=True,
        self_attn=False, scaling="std", mode="common_channel",
    )  # fmt: skip
    return TinyTimeMixerForPrediction(config).eval()


def moment_published() -> Any:
    """MOMENT-1-small (AutonLab/MOMENT-1-small, 40M): a flan-t5-small encoder (width 512, 8 layers, 6 heads), 512
    steps in patches of 8."""
    from momentfm import MOMENTPipeline

    t5 = dict(
        d_model=512, d_ff=1024, num_layers=8, num_heads=6, d_kv=64, vocab_size=8, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
    )  # fmt: skip
    config = dict(
        task_name="forecasting", forecast_horizon=H, seq_len=512, patch_len=8, patch_stride_len=8, d_model=512,
        transformer_type="encoder_only", transformer_backbone="google/flan-t5-small", t5_config=t5,
        randomly_initialize_backbone=True,
    )  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MOMENTPipeline(config, model_kwargs=dict(task_name="forecasting", forecast_horizon=H))
        model.init()
    return model.eval()


PUBLISHED: dict[str, Callable[[], Any]] = {
    "TiRex": tirex_published, "Chronos-Bolt": chronos_bolt_published, "Chronos-2": chronos2_published,
    "TimesFM 2.5": timesfm_published, "TinyTimeMixer": tinytimemixer_published, "MOMENT": moment_published,
}  # fmt: skip


MODELS: dict[str, Callable[[], Any]] = {
    "TiRex": tirex, "Chronos-Bolt": chronos_bolt, "Chronos-2": chronos2, "TimesFM 2.5": timesfm,
    "TinyTimeMixer": tinytimemixer, "MOMENT": moment,
}  # fmt: skip


# -- measurements ---------------------------------------------------------------------------------------------
#: the clock the cost table reads: wall time, or this process's CPU time (``--clock cpu``: on a machine shared with
#: other processes, one thread's CPU time moves less with their load than its wall time)
CLOCK: Callable[[], float] = time.perf_counter


def best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return min(times)


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def cost(model: Any, series: np.ndarray, repeats: int, windows: int = 4) -> tuple[float, float, float, float, float]:
    """(door seconds, ForecastExplainer's later calls' seconds (NaN where the tree lacks it), summed floor seconds,
    per-output floor seconds, additivity: max |total - forecast| / max(1, |forecast|)) for ``windows`` explained
    windows against 16 references. The summed floor is one forward +
    one backward of the summed output; the per-output floor one forward + one backward per forecast output (batched
    by ``torch.func.vmap``), which DeepSHAP needs to give every output its own attribution."""
    first = 1000 if PUBLISHED_RUN else 160
    if windows == 4 and not PUBLISHED_RUN:
        starts: Any = (200, 220, 240, 260)
    else:
        starts = np.linspace(first, len(series) - L, windows).astype(int)
    context = np.stack([series[s : s + L] for s in starts])
    background = background_windows(series)
    levels = explained_levels(model)

    def door_call() -> Any:
        return rnnshap.foundation.explain(model, context, prediction_length=H, background=background, quantile_levels=levels)

    result = door_call()
    additivity = float(np.abs(result.total() - result.forecast).max() / max(1.0, np.abs(result.forecast).max()))
    door = best(door_call, repeats)
    kept = math.nan  # ForecastExplainer's later calls (its setup kept): absent from trees before it
    if hasattr(rnnshap.foundation, "ForecastExplainer"):
        explainer = rnnshap.foundation.ForecastExplainer(model, background=background)

        def kept_call() -> Any:
            return explainer.explain(context, prediction_length=H, quantile_levels=levels)

        np.testing.assert_array_equal(kept_call().values, result.values)  # (the first call sets up)
        kept = best(kept_call, repeats)
    adapter = adapter_for(model)
    module = adapter.module(H, adapter.levels(levels))
    x = torch.tensor(np.repeat(context, len(background), axis=0), dtype=torch.float32)
    extra = [torch.as_tensor(np.repeat(c, len(background), axis=0)) for c in adapter.context_inputs(context)]

    def floor(per_output: bool) -> None:
        # the libraries run their forecast under torch.no_grad(): the floor runs it with gradients
        with mock.patch.object(torch, "no_grad", contextlib.nullcontext), mock.patch.object(torch.Tensor, "detach", _same):
            inputs = x.clone().requires_grad_(True)
            out = module(inputs, *extra).reshape(len(inputs), -1)
            if not per_output:
                torch.autograd.grad(out.sum(), inputs)
                return
            k = out.shape[1]
            seeds = torch.eye(k, dtype=out.dtype)[:, None, :].expand(k, *out.shape).contiguous()
            torch.func.vmap(lambda v: torch.autograd.grad(out, inputs, v, retain_graph=True))(seeds)

    summed = best(lambda: floor(False), repeats)
    return door, kept, summed, best(lambda: floor(True), repeats), additivity


def exact_shapley(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, references: np.ndarray, ids: np.ndarray) -> np.ndarray:
    P = int(ids.max()) + 1
    coalitions = [S for size in range(P + 1) for S in itertools.combinations(range(P), size)]
    rows = np.concatenate([np.where(np.isin(ids, S)[None], x[None], references) for S in coalitions])
    out = f(rows).reshape(len(coalitions), len(references), -1).mean(1)
    value = dict(zip(coalitions, out, strict=True))
    phi = np.zeros((P, out.shape[1]))
    for i in range(P):
        for S, v in value.items():
            if i not in S:
                weight = math.factorial(len(S)) * math.factorial(P - len(S) - 1) / math.factorial(P)
                phi[i] += weight * (value[tuple(sorted((*S, i)))] - v)
    return phi


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def faithfulness(model: Any, series: np.ndarray) -> list[tuple[str, int, float, float]]:
    """Rows of (method, model rows, distance to exact, seconds): 8 players, windows of 4 steps."""
    import shap

    adapter = adapter_for(model)
    levels = adapter.levels(None)
    x = series[230 : 230 + L]
    references = np.stack([series[s : s + L] for s in range(0, 160, 20)])
    ids = np.arange(L) // 4
    P, B = 8, len(references)

    def f(rows: np.ndarray) -> np.ndarray:
        return adapter.library_forecast(rows, H, levels).reshape(len(rows), -1)

    start = time.perf_counter()
    truth = exact_shapley(f, x, references, ids)
    out = [("exact (every coalition, the library's call)", 2**P * B, 0.0, time.perf_counter() - start)]
    start = time.perf_counter()
    deep = rnnshap.foundation.explain(model, x[None], prediction_length=H, background=references)
    summed = np.stack([deep.values[0][ids == p].sum(0) for p in range(P)]).reshape(P, -1)
    out.append(("rnnshap DeepSHAP", 3 * B, relative(summed, truth), time.perf_counter() - start))
    for evals in (2 * (2 * P + 1), 8 * (2 * P + 1)):  # two and eight of shap's permutations
        shap_runs, ours = [], []
        for seed in range(SEEDS):
            calls: list[int] = []

            def model_rows(r: np.ndarray) -> np.ndarray:
                calls.append(len(r))
                return f(r)

            def masker(mask: np.ndarray, z: np.ndarray) -> np.ndarray:
                return np.where(np.asarray(mask, bool)[ids][None], x[None], references)

            masker.shape = (B, P)  # type: ignore[attr-defined]
            start = time.perf_counter()
            explainer = shap.PermutationExplainer(model_rows, masker, seed=seed)
            explanation = explainer(np.ones((1, P)), max_evals=evals, silent=True)
            shap_runs.append((sum(calls), relative(explanation.values[0], truth), time.perf_counter() - start))
            start = time.perf_counter()
            estimate = rnnshap.foundation.explain(
                model, x[None], prediction_length=H, background=references, method="shapley", players=4, budget=sum(calls),
                random_state=seed,
            )  # fmt: skip
            distance = relative(estimate.values[0].reshape(P, -1), truth)
            ours.append((int(estimate.n_evals[0]), distance, time.perf_counter() - start))
        for label, runs in ((f"shap PermutationExplainer (max_evals={evals})", shap_runs), ("rnnshap Shapley mode", ours)):
            out.append((label, runs[0][0], float(np.median([r[1] for r in runs])), float(np.median([r[2] for r in runs]))))
    return out


def background_effect(model: Any, series: np.ndarray) -> tuple[float, float]:
    """Median over outputs of sum|values| / |f(x) - mean f(r)|: against 16 all-zero rows, against 16 real windows."""
    adapter = adapter_for(model)
    levels = adapter.levels(None)
    context = np.stack([series[s : s + L] for s in (200, 240)])
    real = np.stack([series[s : s + L] for s in range(0, 160, 10)])
    ratios = []
    for background in (np.zeros_like(real), real):
        module = adapter.module(H, levels)
        extra = [torch.as_tensor(c) for c in adapter.context_inputs(context)]
        extra_bg = [torch.as_tensor(c) for c in adapter.context_inputs(background)]
        X = [torch.tensor(context, dtype=torch.float32), *extra]
        R = [torch.tensor(background, dtype=torch.float32), *extra_bg]
        explainer = rnnshap.DeepExplainer(module, R if len(R) > 1 else R[0])
        attribution = explainer.attribution(explainer.engine.inputs(X if len(X) > 1 else X[0], "X"), check_additivity=False)
        size = np.abs(attribution.values[0]).sum(1)
        change = np.abs(attribution.outputs - attribution.base_values)
        ratios.append(float(np.median(size / np.maximum(change, 1e-12))))
    return ratios[0], ratios[1]


def _warm_shap() -> None:
    """shap's first explainer call imports and compiles its parts (seconds): done before anything is timed."""
    import shap

    def masker(mask: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.asarray(mask, float)[None]

    masker.shape = (1, 8)  # type: ignore[attr-defined]
    shap.PermutationExplainer(lambda rows: np.stack([rows.sum(1), rows.prod(1)], 1), masker)(
        np.ones((1, 8)), max_evals=34, silent=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--parts", choices=("all", "cost"), default="all", help="'cost': the cost table alone")
    parser.add_argument("--windows", type=int, nargs="+", default=[4], help="the cost table's explained windows (each)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="the cost table's clock (cpu: this process's)")
    parser.add_argument(
        "--size", choices=("small", "published"), default="small",
        help="small: width 32, 32 steps, sunspots; published: the published checkpoints' sizes (random weights), 512 "
        "steps of co2, the median quantile (cost table only)",
    )  # fmt: skip
    args = parser.parse_args()
    global CLOCK, PUBLISHED_RUN, L
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.size == "published":
        PUBLISHED_RUN, L = True, 512
        if args.parts != "cost":
            parser.error("--size published runs the cost table alone: add --parts cost")
    series = co2() if PUBLISHED_RUN else sunspots()
    chosen = [m.strip() for m in args.models.split(",")]
    print(f"torch {torch.__version__}, one thread; L={L}, H={H}; {'co2' if PUBLISHED_RUN else 'sunspots'} (statsmodels); "
          f"{args.size} sizes; {args.clock} clock\n")  # fmt: skip
    print(
        "| model | explain(), windows x 16 references | ForecastExplainer, a later call | floor: forward+backward, summed | "
        "floor: forward + backward per output | explain / per-output | later call / per-output | additivity (relative) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    built = {name: (PUBLISHED if PUBLISHED_RUN else MODELS)[name]() for name in chosen}
    if args.parts != "cost":
        _warm_shap()
    for name, model in built.items():
        for windows in args.windows:
            door, kept, summed, per_output, additivity = cost(model, series, args.repeats, windows)
            print(
                f"| {name}, {windows} windows | {door * 1e3:.1f} ms | {kept * 1e3:.1f} ms | {summed * 1e3:.1f} ms | "
                f"{per_output * 1e3:.1f} ms | {door / per_output:.2f}x | {kept / per_output:.2f}x | {additivity:.1e} |",
                flush=True,
            )
    if args.parts == "cost":
        return
    print("\n| model | method | model rows | rel. L2 to exact Shapley | time |")
    print("|---|---|---:|---:|---:|")
    for name, model in built.items():
        for method, rows, distance, seconds in faithfulness(model, series):
            print(f"| {name} | {method} | {rows} | {distance:.3f} | {seconds * 1e3:.0f} ms |")
    print("\n| model | sum abs(values) / abs(output change): all-zero background | real windows |")
    print("|---|---:|---:|")
    for name, model in built.items():
        zero, real = background_effect(model, series)
        print(f"| {name} | {zero:.3g} | {real:.3g} |")


if __name__ == "__main__":
    main()
