#!/usr/bin/env bash
# The recurrences' Triton kernels (rnnshap/recurrent/persistent.py) checked on the CPU through Triton's interpreter, in
# an environment of their own: the pinned CPU torch, Triton, numpy, pytest and hypothesis (tests/conftest.py). Not in the test environment: Triton's
# LLVM and TensorFlow's abort a process that loads both (TensorFlow first), which torch.compile does where Triton is
# installed. On a GPU, `pytest -m gpu` runs the same tests compiled (benchmarks/on_device.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
"$work/venv/bin/python" -m pip install --quiet triton numpy pytest hypothesis -c constraints/cpu-torch.txt
PYTHONPATH=. "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/recurrent/test_persistent.py
