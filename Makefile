# From a fresh clone:
#   make demo   makes the environment .venv (the CPU build of torch, rnnshap with its plots) and runs the demo
#   make test   makes the test environment .venv-ci and runs every stage CI runs (.ci/run), in CI's order
#
# The CPU build of torch is installed first: on Linux a bare `torch` requirement pulls several GB of CUDA
# libraries. For a CUDA GPU: make demo TORCH_INDEX=https://download.pytorch.org/whl/cu126

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CONSTRAINTS ?= constraints/cpu-torch.txt

.PHONY: demo test help

help:
	@sed -n '2,3p' Makefile

$(VENV)/.installed-demo: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH) --index-url $(TORCH_INDEX)
	$(VENV)/bin/python -m pip install --quiet -e '.[plot]' -c $(CONSTRAINTS)
	touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/python -m rnnshap demo

test:
	bash .ci/run
