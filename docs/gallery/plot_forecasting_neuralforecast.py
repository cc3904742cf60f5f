"""
neuralforecast: a recurrent LSTM on AirPassengers, which neuralforecast's explain skips
=======================================================================================

What this shows: ``rnnshap.neuralforecast.explain(nf)`` takes ``NeuralForecast.explain``'s arguments and
returns its ``(fcsts_df, explanations)``, for a recurrent LSTM that neuralforecast's own Integrated Gradients
skips; the values, in passengers, add up to ``nf.predict``. Data: AirPassengers, bundled with neuralforecast.
"""

import logging
import warnings

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning_fabric").setLevel(logging.ERROR)

import matplotlib.pyplot as plt
import numpy as np
import shap
from neuralforecast import NeuralForecast
from neuralforecast.models import LSTM
from neuralforecast.utils import AirPassengersDF

import rnnshap.neuralforecast

L, H = 24, 12
train = AirPassengersDF[AirPassengersDF.ds < AirPassengersDF.ds.values[-H]]
model = LSTM(h=H, input_size=L, recurrent=True, scaler_type="robust",  # recurrent: nf.explain() skips it
             encoder_hidden_size=32, decoder_hidden_size=32, max_steps=100, random_seed=1,
             enable_progress_bar=False, logger=False, enable_model_summary=False)
nf = NeuralForecast(models=[model], freq="ME")
nf.fit(train)

# %%
# ``NeuralForecast.explain``'s call and result
# --------------------------------------------
fcsts_df, explanations = rnnshap.neuralforecast.explain(nf, verbose=False)
e = explanations["LSTM"]
print(tuple(e["insample"].shape))    # (1, 12, 1, 1, 36, 2): window, horizon step, series, output, position, (y, mask)
total = e["insample"].sum((-1, -2)) + e["baseline_predictions"]
print(np.abs(total[0, :, 0, 0].numpy() - fcsts_df["LSTM"].to_numpy()).max())   # float rounding: adds up to nf.predict

# A recurrent model reads input_size + 1 observed values (positions 0..L of its L + h window)
lags = [f"y[t-{L + 1 - i}]" for i in range(L + 1)]
values = e["insample"][0, :, 0, 0, : L + 1, 0].numpy()           # (horizon step, lag)
observed = train.y.to_numpy()[-(L + 1):]

# %%
# One forecast step, in neuralforecast's tutorial style
# -----------------------------------------------------
# neuralforecast's tutorial style: shap's waterfall of one forecast step (the first month ahead) ...
step = 0
shap.plots.waterfall(shap.Explanation(values[step], base_values=float(e["baseline_predictions"][0, step, 0, 0]),
                                      data=observed, feature_names=lags), max_display=10, show=False)
plt.title(f"LSTM (recurrent), {fcsts_df.ds.iloc[step]:%b %Y}: forecast {fcsts_df['LSTM'].iloc[step]:.1f}", pad=24)

# %%
# Every horizon step at once
# --------------------------
# ... and every horizon step at once: which past month drives which forecast
fig, ax = plt.subplots(figsize=(9, 4))
bound = np.abs(values).max()
im = ax.imshow(values, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
ax.set_xticks(range(0, L + 1, 3), [lags[i] for i in range(0, L + 1, 3)], rotation=45)
ax.set_yticks(range(H), [f"{d:%b %Y}" for d in fcsts_df.ds])
ax.set_xlabel("input lag"), ax.set_ylabel("forecast month")
fig.colorbar(im, label="attribution (passengers)")
