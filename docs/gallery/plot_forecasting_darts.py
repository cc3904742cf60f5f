"""
darts: an LSTM forecaster of US unemployment, in darts' own call
================================================================

What this shows: ``rnnshap.darts.ShapExplainer`` takes darts' ``ShapExplainer`` call and returns darts' own
result types, with exact values that add up to darts' ``predict`` in the data's units, for a horizon beyond
``output_chunk_length`` (darts feeds its own predictions back) and a target scaled outside the model; darts'
summary plot draws them. Data: US quarterly unemployment, inflation and T-bill rates, 1959-2009, bundled with
statsmodels (no download).
"""

import logging
import warnings

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import statsmodels.api as sm
from darts import TimeSeries
from darts.dataprocessing.transformers import Scaler
from darts.models import BlockRNNModel

from rnnshap.darts import ShapExplainer, standard_errors

frame = sm.datasets.macrodata.load_pandas().data
times = pd.period_range("1959Q1", periods=len(frame), freq="Q").to_timestamp()
unemp = TimeSeries.from_times_and_values(times, frame[["unemp"]].to_numpy("float32"), columns=["unemp"])
rates = TimeSeries.from_times_and_values(times, frame[["infl", "tbilrate"]].to_numpy("float32"), columns=["infl", "tbilrate"])

scaler = Scaler().fit(unemp[:160])             # the model learns on the scaled target
model = BlockRNNModel(input_chunk_length=8, output_chunk_length=2, model="LSTM", hidden_dim=16, n_epochs=30,
                      random_state=0, pl_trainer_kwargs={"enable_progress_bar": False, "logger": False})
model.fit(scaler.transform(unemp[:160]), past_covariates=rates, verbose=False)

# %%
# darts' call: ``n=4`` explains ``predict(4)``
# --------------------------------------------
# darts' call; n=4 explains predict(4), which feeds the model's own predictions back (output_chunk_length=2);
# target_scaler puts the scaler's affine map into the explained function: values in percent unemployment
explainer = ShapExplainer(model, unemp[:160], background_past_covariates=rates, background_num_samples=50,
                          n=4, target_scaler=scaler)
result = explainer.explain(unemp[150:], foreground_past_covariates=rates)   # darts' ShapExplainabilityResult
values = result.get_explanation(horizon=4)        # a TimeSeries: one column per darts feature name
print(values.components[:3].tolist(), values.components[-2:].tolist())
# ['unemp_target_lag-8', 'unemp_target_lag-7', 'unemp_target_lag-6'] ['infl_pastcov_lag1', 'tbilrate_pastcov_lag1']

# %%
# Every forecast adds up to darts' own forecast, in the data's units
# ------------------------------------------------------------------
single = explainer.explain_single(unemp[:190], foreground_past_covariates=rates)
e = single.get_shap_explanation_object()
forecast = scaler.inverse_transform(model.predict(4, series=scaler.transform(unemp[:190]), past_covariates=rates))
print(np.abs(e.values.sum(1) + e.base_values - forecast.values()[:, 0]).max())   # 3e-07

# %%
# darts' own plot of the result: horizon t+4
# ------------------------------------------
explainer.summary_plot(unemp[150:], foreground_past_covariates=rates, horizons=4, plot_kwargs={"show": False, "max_display": 12})

# %%
# The Shapley values of the lag players, with standard errors
# -----------------------------------------------------------
shapley = ShapExplainer(model, unemp[:160], background_past_covariates=rates, background_num_samples=50,
                        method="shapley", budget=4000, random_state=0, target_scaler=scaler)
estimate = shapley.explain_single(unemp[:190], foreground_past_covariates=rates)
print(estimate.get_explanation()["unemp_target_lag-2"].values().ravel())   # per horizon
print(standard_errors(estimate)["unemp_target_lag-2"].values().ravel())    # their standard errors (also error_std)
