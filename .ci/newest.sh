#!/usr/bin/env bash
# The releases users install today: a fresh venv with the pinned CPU torch and the newest releases of the libraries
# rnnshap's doors meet most (shap, Captum, transformers, matplotlib), no constraints file; the shap, Captum, API and
# token tests, the language models and the text door run against them, and the versions are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet torch==2.13.0
echo "torch==2.13.0" > "$work/torch.txt"
"$py" -m pip install --quiet --upgrade -c "$work/torch.txt" -e . shap captum transformers matplotlib tqdm \
    pytest pytest-xdist hypothesis mpmath
"$py" - <<'PY'
import importlib.metadata as m
print("newest releases:", ", ".join(f"{d} {m.version(d)}" for d in ("torch", "numpy", "shap", "captum", "transformers", "matplotlib")))
PY
"$py" -m pytest -q -n 2 -p no:cacheprovider tests/test_parity_shap.py tests/captum tests/test_api.py tests/test_explanation.py \
    tests/engines/pytorch/test_tokens.py tests/engines/pytorch/test_captured.py tests/zoo/test_language_models.py \
    tests/test_text.py
