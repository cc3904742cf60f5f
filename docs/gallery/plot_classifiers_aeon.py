"""
An aeon classifier, explained on aeon's panels: BasicMotions
=============================================================

What this shows: aeon's TimeCNN classifier (a Keras network whose sigmoid outputs ``predict_proba``
divides by their sum, outside the network) trained on BasicMotions, a data set that ships with aeon
(3-axis accelerometer and gyroscope of a smart watch, 100 steps, four activities), explained in one
call: ``rnnshap.aeon.explain`` builds a Keras function equal to ``predict_proba`` (checked), explains it
by DeepSHAP, and lays the values out ``(n, channels, time, classes)``. Then a nearest-neighbour
classifier, which has no network, explained in the Shapley mode with windows of steps as players.
"""

import warnings

import numpy as np
from aeon.classification.deep_learning import TimeCNNClassifier
from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
from aeon.datasets import load_basic_motions

import rnnshap.aeon

warnings.filterwarnings("ignore")
X_train, y_train = load_basic_motions(split="train")  # (40, 6 channels, 100 steps), aeon's own layout
X_test, y_test = load_basic_motions(split="test")

clf = TimeCNNClassifier(n_epochs=150, batch_size=8, random_state=0, verbose=False).fit(X_train, y_train)
print(f"test accuracy: {(clf.predict(X_test) == y_test).mean():.3f}")

# %%
# DeepSHAP on the estimator's own predict_proba
# ---------------------------------------------
# The background: 20 training recordings. The values of each recording and class add up to
# ``predict_proba(x)`` minus its mean over the background (renormalization included).
result = rnnshap.aeon.explain(clf, X_test[:4], background=X_train[::2])
print(result.values.shape, result.classes)
gap = result.values.sum((1, 2)) - (result.outputs - result.base_values)
print(f"largest additivity gap: {np.abs(gap).max():.1e}")

# %%
# Per-channel saliency over time for the predicted class (red raises its probability, blue lowers it).
result.plot(sample=0)

# %%
# A classifier without a network: the Shapley mode
# ------------------------------------------------
# Three nearest neighbours (Euclidean) read ``predict_proba`` only. Players: each channel in each window
# of 25 steps (24 players); 2,000 rows per recording buy estimates with standard errors.
knn = KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean").fit(X_train, y_train)
shapley = rnnshap.aeon.explain(knn, X_test[:1], background=X_train[::4], players="cells", windows=25, budget=2000, random_state=0)
print(shapley.values.shape, f"largest standard error: {shapley.stderr.max():.3f}")
shapley.plot(sample=0)
