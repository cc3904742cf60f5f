"""
pytorch-forecasting: a Temporal Fusion Transformer of US unemployment, per named variable
=========================================================================================

What this shows: ``rnnshap.pytorch_forecasting.explain(model, data)`` explains a fitted TFT's forecasts per
named variable, time step, horizon step and quantile, from its ``TimeSeriesDataSet``; base value plus values
equal the library's own ``predict`` in percentage points of unemployment, where TFT's ``interpret_output``
gives attention weights that do not add up to anything. Data: US quarterly macro data, bundled with
statsmodels.
"""

import logging
import warnings

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning_fabric").setLevel(logging.ERROR)

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import statsmodels.api as sm
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.data import GroupNormalizer

from rnnshap.pytorch_forecasting import explain

# US quarterly macro data 1959-2009, bundled with statsmodels: unemployment rate, inflation, T-bill rate
macro = sm.datasets.macrodata.load_pandas().data
frame = pd.DataFrame({
    "country": "US", "time_idx": np.arange(len(macro)), "unemp": macro["unemp"], "infl": macro["infl"],
    "tbilrate": macro["tbilrate"], "quarter": macro["quarter"].astype(int).astype(str),
})
cutoff = len(frame) - 24                                   # the last 6 years are held out
training = TimeSeriesDataSet(
    frame[frame.time_idx < cutoff], time_idx="time_idx", target="unemp", group_ids=["country"],
    max_encoder_length=12, max_prediction_length=4,       # 3 years of history, 1 year ahead
    time_varying_unknown_reals=["unemp", "infl", "tbilrate"], time_varying_known_categoricals=["quarter"],
    target_normalizer=GroupNormalizer(groups=["country"]),
)
validation = TimeSeriesDataSet.from_dataset(training, frame, min_prediction_idx=cutoff)

pl.seed_everything(0)
tft = TemporalFusionTransformer.from_dataset(training, hidden_size=16, attention_head_size=2, hidden_continuous_size=8,
                                             learning_rate=0.03)
pl.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
           enable_model_summary=False).fit(tft, training.to_dataloader(train=True, batch_size=32))

# %%
# Every held-out window, exactly
# ------------------------------
# DeepSHAP, the point forecast (the median quantile) of every held-out window, 50 training windows as reference
result = explain(tft, validation, background=training, mode="prediction")
print(result.encoder.shape)            # (21, 12, 4, 4, 1): window, encoder step, variable, horizon step, output

# exact: base value + attributions = the forecast, which is the library's own predict (float32 rounding apart)
predicted = tft.predict(validation, mode="prediction").numpy()
print(np.abs(result.total()[..., 0] + result.base_values[..., 0] - predicted).max())   # ~1e-6

print(result.importance("encoder"))    # mean |SHAP| per variable, in percentage points of unemployment

# %%
# Plots laid out like TFT's own ``plot_interpretation``, in units of the forecast
# -------------------------------------------------------------------------------
figures = result.plot_interpretation()                     # as tft.plot_interpretation(...) lays them out
encoder_variables = figures["encoder_variables"]
over_time = result.plot_interpretation(sample=-1, horizon=3)["time"]

# %%
# Every quantile, and the Shapley mode
# ------------------------------------
# every quantile of one window (mode="raw", what predict(mode="raw") returns), and the Shapley mode
quantiles = explain(tft, validation, background=training, windows=[-1])
print(quantiles.output_names)          # ['q0.02', 'q0.1', 'q0.25', 'q0.5', 'q0.75', 'q0.9', 'q0.98']
estimate = explain(tft, validation, background=training, windows=[-1], n_background=10, mode="prediction",
                   method="shapley", budget=2000, random_state=0)
print(estimate.encoder[0, :, :, 3, 0].sum(0), estimate.stderr["encoder"][0, :, :, 3, 0].max())
