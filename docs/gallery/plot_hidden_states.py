"""
Which hidden units and which steps of the hidden state carry a decision
=======================================================================

What this shows: attributions to the hidden states of an LSTM, not to its inputs. A two-layer LSTM reads
the bundled handwritten digits row by row; ``DeepExplainer((model, model.lower), background,
layer_output=True)`` attributes each class's logit to the lower layer's output, its hidden state at every
row (time step) and unit. The values add up exactly to the logit minus its mean over the background, so
the heatmap splits the decision over steps × units; ``rnnshap.captum.NeuronDeepLiftShap`` then traces one
hidden unit back to the pixels that drive it.
"""

import numpy as np
import torch
from torch import nn

import rnnshap
from rnnshap import plots
from rnnshap.captum import NeuronDeepLiftShap
from rnnshap.demo import load_digits


class StackedReader(nn.Module):
    """Two LSTM layers over the image rows, then a linear read-out of the last hidden state."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.lower = nn.LSTM(8, hidden, batch_first=True)
        self.upper = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.lower(x)  # (N, 8 rows, 16 units): the hidden state at every row
        out, _ = self.upper(states)
        return self.head(out[:, -1])


torch.manual_seed(0)
rng = np.random.default_rng(0)
images, labels = load_digits()
order = rng.permutation(len(images))
test, train = order[:300], order[300:]
x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])

model = StackedReader()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(20):
    for batch in torch.randperm(len(train)).split(128):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
        optimizer.step()
model.eval()
x_test = torch.from_numpy(images[test])
with torch.no_grad():
    accuracy = (model(x_test).argmax(1).numpy() == labels[test]).mean()
print(f"held-out accuracy: {accuracy:.3f}")

# %%
# Attribute the logits to the lower layer's hidden states
# -------------------------------------------------------
# With ``layer_output=True`` the values are for every tensor the layer returns: ``out`` (its hidden state
# at each row, shaped (samples, rows, units, classes)), then ``h_n`` and ``c_n``. The model reads only
# ``out``, so ``h_n`` and ``c_n`` get exactly zero, and the values on ``out`` alone add up.

background = x_train[rng.choice(len(train), 50, replace=False)]
x = x_test[:100]
explainer = rnnshap.DeepExplainer((model, model.lower), background, layer_output=True)
states_values, h_values, c_values = explainer.shap_values(x)
with torch.no_grad():
    logits = model(x).numpy()
    states = model.lower(x)[0].numpy()
gap = logits - explainer.expected_value
print("values on the hidden states:", states_values.shape)
print("largest additivity error:", np.abs(states_values.sum((1, 2)) - gap).max())
print("largest |value| on h_n and c_n:", max(np.abs(h_values).max(), np.abs(c_values).max()))

# %%
# One digit: which units at which rows raised its predicted class
# ---------------------------------------------------------------
# Rows are time steps, columns hidden units (the hidden state beside it, in grey).
predicted = logits.argmax(1)
units = [f"unit {j}" for j in range(states.shape[2])]
rows = [f"row {t}" for t in range(8)]
one_digit = plots.heatmap(
    states_values, states, sample=0, output=int(predicted[0]), feature_names=units, time_labels=rows,
    base_value=explainer.expected_value, max_features=None,
)  # fmt: skip

# %%
# Over 100 digits: where the decision is carried
# ----------------------------------------------
# Mean ``|φ|`` for each digit's predicted class, by row and unit, with the sums by row and by unit:
# a few units carry most of it, and the later rows more than the first ones.
everywhere = plots.global_importance(states_values, output=predicted, feature_names=units, time_labels=rows, max_features=None)
by_unit = np.abs(states_values[np.arange(len(x)), ..., predicted]).mean(0).sum(0)
top_unit = int(by_unit.argmax())
print("units ranked by mean |φ| (summed over rows):", np.argsort(-by_unit)[:5].tolist())

# %%
# Why the lower layer: the upper layer's steps
# --------------------------------------------
# The values measure each hidden state's effect *from the layer on*. The head reads only the last step of
# the upper layer, so there every earlier step gets exactly zero: its influence is already inside the
# last state, made by the recurrence before the cut. Cut a layer whose every step is read afterwards.
upper_states = rnnshap.DeepExplainer((model, model.upper), background, layer_output=True).shap_values(x[:10])[0]
print("upper layer, largest |φ| before the last row:", np.abs(upper_states[:, :-1]).max())

# %%
# What drives the most important unit
# -----------------------------------
# ``NeuronDeepLiftShap`` (Captum's call) attributes one hidden unit at one row to the input pixels: here
# the top unit at the last row. It is exactly causal (a unit at row t gets exactly zero from the pixels
# of later rows), and each digit's values add up to the unit's value minus its mean over the background.
neuron = NeuronDeepLiftShap(model, model.lower)
pixels = neuron.attribute(x[:6], lambda out: out[0][:, -1, top_unit], baselines=background).numpy()
with torch.no_grad():
    unit_value = model.lower(x[:6])[0][:, -1, top_unit] - model.lower(background)[0][:, -1, top_unit].mean()
print("largest additivity error of the unit:", np.abs(pixels.sum((1, 2)) - unit_value.numpy()).max())
unit_map = plots.heatmap(
    pixels, x[:6].numpy(), sample=0, feature_names=[f"px {j}" for j in range(8)], time_labels=rows,
    title=f"unit {top_unit} at row 7: which pixels drive it (digit {labels[test[0]]})",
)  # fmt: skip
