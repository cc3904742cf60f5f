"""
A foundation forecaster, explained in its own pipeline: Chronos-Bolt on sunspots
================================================================================

What this shows: a Chronos-Bolt pipeline (here a tiny one built from chronos' own config classes with random
weights, the code path of ``ChronosBoltPipeline.from_pretrained("amazon/chronos-bolt-small")``) forecasting the
yearly sunspot numbers that ship with statsmodels, explained in one call: ``rnnshap.foundation.explain``
attributes every quantile of ``pipeline.predict_quantiles`` to the context steps against earlier windows of the
same series (DeepSHAP, exact in sum), then plays the model's own patches in the Shapley mode, once against the
same windows and once dropping context the way Chronos drops missing values (NaN).
"""

import warnings

import numpy as np
import statsmodels.api as sm
import torch
from chronos import ChronosBoltPipeline
from chronos.chronos_bolt import ChronosBoltModelForForecasting
from transformers import T5Config

import rnnshap.foundation

warnings.filterwarnings("ignore")
series = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=float) + 1.0

# pipeline = ChronosBoltPipeline.from_pretrained("amazon/chronos-bolt-small")   # with internet access
config = T5Config(
    d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, vocab_size=2, decoder_start_token_id=0,
    pad_token_id=0, chronos_config=dict(context_length=48, prediction_length=6, input_patch_size=8, input_patch_stride=8,
                                        quantiles=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], use_reg_token=True),
)  # fmt: skip
torch.manual_seed(0)
pipeline = ChronosBoltPipeline(ChronosBoltModelForForecasting(config).eval())

context = series[None, 250:306]  # 56 years: the model reads the last 48, the first 8 get exactly 0
background = np.stack([series[s : s + 56] for s in range(0, 190, 10)])  # 19 earlier windows

# %%
# DeepSHAP through ``predict_quantiles``
# --------------------------------------
# The values of every forecast step and quantile add up to chronos' own forecast minus the mean forecast over
# the background windows.
result = rnnshap.foundation.explain(pipeline, context, prediction_length=6, background=background)
quantiles, _ = pipeline.predict_quantiles(torch.tensor(context, dtype=torch.float32), prediction_length=6)
print(result.values.shape, f"largest gap to predict_quantiles: {np.abs(result.total() - quantiles.numpy()).max():.1e}")
print("steps the model never reads:", np.abs(result.values[0, :8]).max())
fig = result.plot(sample=0, horizon=0, quantile=0.5)

# %%
# The model's own patches as players, with standard errors
# ---------------------------------------------------------
# Six patches of 8 years (the 48 the model reads); 2^6 coalitions against every background window fit in the
# budget: exact.
patches = rnnshap.foundation.explain(
    pipeline, context, prediction_length=6, background=background, method="shapley", players="patches", budget=5000
)
print(patches.values.shape, "exact:", patches.exact[0])
fig = patches.plot(sample=0, horizon=0, quantile=0.5)

# %%
# Context dropped, not replaced
# -----------------------------
# ``background=None``: a patch outside the coalition is given to Chronos as missing (NaN), as it takes missing
# values; the base value is the forecast with no context at all.
dropped = rnnshap.foundation.explain(pipeline, context, prediction_length=6, method="shapley", players="patches", budget=5000)
print(dropped.game, "base value (median, step 1):", round(float(dropped.base_values[0, 0, 4]), 3))
fig = dropped.plot(sample=0, horizon=0, quantile=0.5)
