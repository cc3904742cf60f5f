"""
Shapley values with error bars, beside DeepSHAP
===============================================

What this shows: DeepSHAP adds up exactly but is an approximation of the Shapley values of the time
steps. ``shapley_values`` estimates those with standard errors (exact where the budget covers every
coalition), and says how far DeepSHAP's values are from them, on the digits GRU.
"""

import numpy as np
import torch

import rnnshap
from rnnshap import plots
from rnnshap.demo import RowReader, load_digits

torch.manual_seed(0)
rng = np.random.default_rng(0)
images, labels = load_digits()
x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
model = RowReader("gru")
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(20):
    for batch in torch.randperm(1500).split(128):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x_all[batch]), y_all[batch]).backward()
        optimizer.step()
model.eval()
background = x_all[rng.choice(1500, 30, replace=False)]
x = x_all[1500:1503]
explainer = rnnshap.DeepExplainer(model, background)

# %%
# Estimates at 8x DeepSHAP's cost, and the exact values
# -----------------------------------------------------
# Players are the 8 rows (time steps). 2^8 coalitions against 30 references fit in 7,680 rows: the
# second call enumerates them and is exact.
estimate = explainer.shapley_values(x, players="steps", budget=8 * 3 * 30, random_state=0)
exact = explainer.shapley_values(x, players="steps", budget=2**8 * 30)
digit = int(labels[1500])
for name, values in [("estimate (8x)", estimate.values), ("DeepSHAP", estimate.deepshap)]:
    error = np.linalg.norm(values[0, :, digit] - exact.values[0, :, digit]) / np.linalg.norm(exact.values[0, :, digit])
    print(f"{name:>14}: relative L2 distance to the exact Shapley values {error:.3f}")
print("largest standard error:", estimate.stderr[0, :, digit].max())

# %%
# The estimate, its error bars and DeepSHAP's values, per row
# -----------------------------------------------------------
bars = plots.shapley_bars(estimate, sample=0, output=digit, player_names=[f"row {t}" for t in range(8)])
