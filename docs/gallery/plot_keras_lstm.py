"""
A Keras LSTM, explained exactly on TensorFlow
=============================================

What this shows: the same explainer takes a Keras 3 model. A Keras LSTM on the bundled digits (rows as
time steps), trained for 15 epochs on the TensorFlow backend, explained exactly where
``shap.DeepExplainer`` crashes on Keras recurrent layers.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import rnnshap  # noqa: E402
from rnnshap import plots  # noqa: E402
from rnnshap.demo import load_digits  # noqa: E402

keras.utils.set_random_seed(0)
images, labels = load_digits()
model = keras.Sequential([keras.Input((8, 8)), keras.layers.LSTM(32), keras.layers.Dense(10)])
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(images[:1500], labels[:1500], epochs=15, batch_size=128, verbose=0)
accuracy = (model.predict(images[1500:], verbose=0).argmax(1) == labels[1500:]).mean()
print(f"held-out accuracy: {accuracy:.3f}")

# %%
# Explain four digits against 50 training digits
# ----------------------------------------------
rng = np.random.default_rng(0)
explainer = rnnshap.DeepExplainer(model, images[rng.choice(1500, 50, replace=False)])
x = images[1500:1504]
values = explainer.shap_values(x)  # (4, 8, 8, 10)
gap = model.predict(x, verbose=0) - explainer.expected_value
print("largest additivity error:", np.abs(values.sum((1, 2)) - gap).max())

# %%
# The first digit's map for its predicted class
# ---------------------------------------------
predicted = int(model.predict(x[:1], verbose=0)[0].argmax())
heatmap = plots.heatmap(values, x, sample=0, output=predicted, base_value=explainer.expected_value)
