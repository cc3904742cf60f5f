"""
A multivariate time-series classifier: BasicMotions
===================================================

What this shows: a GRU trained on BasicMotions (a UEA benchmark shipped inside sktime: 3-axis
accelerometer and gyroscope of a smart watch, 100 steps, four activities), explained exactly over the
whole test set, then summarized: which sensor matters when, for each activity.
"""

import numpy as np
import torch
from sktime.datasets import load_basic_motions
from torch import nn

import rnnshap
from rnnshap import plots

X_train, y_train = load_basic_motions(split="train", return_type="numpy3D")  # (40, 6 channels, 100 steps)
X_test, y_test = load_basic_motions(split="test", return_type="numpy3D")
classes = sorted(set(y_train))
channels = ["acc x", "acc y", "acc z", "gyro x", "gyro y", "gyro z"]
# (samples, steps, channels), scaled by the training set's per-channel statistics
mean, std = X_train.mean((0, 2), keepdims=True), X_train.std((0, 2), keepdims=True)
x_train = torch.tensor(((X_train - mean) / std).transpose(0, 2, 1), dtype=torch.float32)
x_test = torch.tensor(((X_test - mean) / std).transpose(0, 2, 1), dtype=torch.float32)
labels_train = torch.tensor([classes.index(c) for c in y_train])
labels_test = np.array([classes.index(c) for c in y_test])


class Activity(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 24, batch_first=True)
        self.head = nn.Linear(24, 4)

    def forward(self, x):  # (N, 100, 6)
        return self.head(self.gru(x)[0][:, -1])


torch.manual_seed(0)
model = Activity()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(60):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x_train), labels_train).backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    predicted = model(x_test).argmax(1).numpy()
print(f"test accuracy: {(predicted == labels_test).mean():.3f} on {len(labels_test)} recordings")

# %%
# Explain every test recording against the training set
# -----------------------------------------------------
# 40 recordings x 40 references, 100 steps: one call. Each recording's values add up to its logits
# minus their mean over the training set.

explainer = rnnshap.DeepExplainer(model, x_train)
values = explainer.shap_values(x_test)  # (40, 100, 6, 4)
with torch.no_grad():
    gap = model(x_test).numpy() - explainer.expected_value
print("largest additivity error:", np.abs(values.sum((1, 2)) - gap).max())

# %%
# Which sensor, when: the mean absolute attribution per activity
# --------------------------------------------------------------
# The attributions to the "running" class of the running recordings.
running = classes.index("running")
mask = labels_test == running
importance = plots.global_importance(values[mask], output=running, feature_names=channels)

# %%
# One recording, step by step
# ---------------------------
first = int(np.flatnonzero(mask)[0])
heatmap = plots.heatmap(values, x_test.numpy(), sample=first, output=running, feature_names=channels,
                        base_value=explainer.expected_value)
