"""
Handwritten digits read row by row by an LSTM
=============================================

What this shows: an LSTM classifier of the UCI handwritten digits bundled with rnnshap (each 8×8 image
read as 8 time steps of 8 pixels), explained exactly: every digit's attributions add up to the model's
logit minus its mean over the background, and the heatmap shows which pixels of which rows moved the
predicted class. This is the model of ``python -m rnnshap demo``.
"""

import numpy as np
import torch

import rnnshap
from rnnshap import plots
from rnnshap.demo import RowReader, load_digits

torch.manual_seed(0)
rng = np.random.default_rng(0)
images, labels = load_digits()
order = rng.permutation(len(images))
test, train = order[:300], order[300:]
x_train, y_train = torch.from_numpy(images[train]), torch.from_numpy(labels[train])

model = RowReader("lstm")
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(30):
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
# Explain six held-out digits against 50 training digits
# ------------------------------------------------------
# ``shap_values`` returns one value per pixel, row and class: (samples, rows, pixels, classes).

background = x_train[rng.choice(len(train), 50, replace=False)]
x = x_test[:6]
explainer = rnnshap.DeepExplainer(model, background)
values = explainer.shap_values(x)
with torch.no_grad():
    logits = model(x).numpy()
gap = logits - explainer.expected_value
print("values:", values.shape, " largest additivity error:", np.abs(values.sum((1, 2)) - gap).max())

# %%
# One digit: which pixels of which rows raised its predicted class
# ----------------------------------------------------------------
predicted = int(logits[0].argmax())
heatmap = plots.heatmap(values, x.numpy(), sample=0, output=predicted, base_value=explainer.expected_value)

# %%
# The same digit over time: the running total of the attributions, row by row
# ---------------------------------------------------------------------------
timeline = plots.over_time(values, sample=0, output=predicted, base_value=explainer.expected_value)
