"""
Which time steps act together: Shapley interactions
===================================================

What this shows: the Shapley value of a time step says how much it moved the output, not with which
other steps. ``shapley_interactions`` computes interaction indices between steps (here k-SII of order
2, through shapiq) on the same game as the Shapley mode, exactly when every coalition fits the budget:
on the digits GRU, which pairs of rows the predicted class depends on jointly.
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
explainer = rnnshap.DeepExplainer(model, x_all[rng.choice(1500, 20, replace=False)])

# %%
# Every coalition of the 8 rows against 20 references: 5,120 rows, exact
# ----------------------------------------------------------------------
x = x_all[1500:1501]
digit = int(labels[1500])
result = explainer.shapley_interactions(x, players="steps", index="k-SII", order=2, outputs=[digit])
matrix = result.matrix()  # (1, 8, 8, 1)
print("exact:", result.exact, " rows:", result.n_evals, " sum of the map:", matrix.sum(), "= f(x) - E[f]:",
      (result.outputs - result.base_values)[0, 0])
strongest = np.unravel_index(np.argmax(np.abs(np.triu(matrix[0, :, :, 0], 1))), (8, 8))
print("strongest pair of rows:", strongest)

# %%
# The map: main effects on the diagonal, pairs off it
# ---------------------------------------------------
interaction_map = plots.interactions(result, sample=0, output=0, player_names=[f"row {t}" for t in range(8)])

# %%
# shapiq's own plots take the result's objects
# --------------------------------------------
# ``result.interactions[i][j]`` is shapiq's ``InteractionValues`` of sample i and output j, so shapiq's
# plots (network, upset, force, waterfall) draw it.
import shapiq  # noqa: E402

values = result.interactions[0][0]
network = shapiq.network_plot(values, feature_names=[f"row {t}" for t in range(8)], show=False)[0]
