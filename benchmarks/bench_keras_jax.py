"""Keras engine cost on the JAX and TensorFlow backends: explainer build, first call, repeat call.

Each backend runs in its own process (KERAS_BACKEND is read when keras is imported). Models: a Keras
LSTM, GRU and Bidirectional LSTM (float32, 16 steps, 3 features, 8 units), 8 background rows,
4 explained rows. Usage: ``python benchmarks/bench_keras_jax.py [--backends jax tensorflow]``;
the tree measured is the one on PYTHONPATH (``PYTHONPATH=$PWD``, or ``PYTHONPATH=/tmp/base`` for the tree before a change),
else the installed rnnshap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time, numpy as np, keras
from keras import layers as L
import rnnshap

T, F, U = 16, 3, 8
def model(kind):
    keras.utils.set_random_seed(0)
    rec = {"lstm": lambda: L.LSTM(U), "gru": lambda: L.GRU(U), "bilstm": lambda: L.Bidirectional(L.LSTM(U))}[kind]()
    return keras.Sequential([keras.Input((T, F)), rec, L.Dense(1)])

rng = np.random.default_rng(0)
bg, x = rng.normal(size=(8, T, F)).astype("float32"), rng.normal(size=(4, T, F)).astype("float32")
rows = []
for kind in ("lstm", "gru", "bilstm"):
    m = model(kind)
    t0 = time.perf_counter(); e = rnnshap.DeepExplainer(m, bg); t1 = time.perf_counter()
    v = e.shap_values(x); t2 = time.perf_counter()
    v = e.shap_values(x); t3 = time.perf_counter()
    gap = float(np.abs(v.reshape(4, -1).sum(1) - (np.asarray(m(x)).reshape(-1) - np.asarray(m(bg)).mean())).max())
    rows.append(dict(model=kind, build=t1 - t0, first=t2 - t1, repeat=t3 - t2, gap=gap))
print("RESULT" + json.dumps(rows))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    args = parser.parse_args()
    print("| backend | model | build (s) | first call (s) | repeat call (s) | additivity gap |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend)
        # (run outside the checkout: ``python -c`` puts its working directory first on sys.path, before PYTHONPATH's tree)
        done = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir()
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
        if not lines:
            print(done.stderr[-3000:])
            raise SystemExit(f"{backend}: no result")
        for row in json.loads(lines[0][6:]):
            cells = f"{row['build']:.2f} | {row['first']:.2f} | {row['repeat']:.3f} | {row['gap']:.1e}"
            print(f"| {backend} | {row['model']} | {cells} |")


if __name__ == "__main__":
    main()
