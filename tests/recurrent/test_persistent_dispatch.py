"""When the recurrences' Triton kernels (rnnshap/recurrent/persistent.py) are taken, in the test environment, which has
no Triton (.ci/kernels.sh checks the kernels themselves)."""

from __future__ import annotations

import builtins
import sys
import types

import torch

from rnnshap.recurrent import persistent


def test_triton_is_never_imported_in_a_process_that_loaded_tensorflow(monkeypatch) -> None:
    """Triton's LLVM loaded after TensorFlow's aborts the process: the kernels are then off, Triton left unimported."""
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    imported: list[str] = []
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: imported.append(name) or real(name, *a, **k))
    assert not persistent.available()
    assert not any(name.startswith("triton") for name in imported)


def test_on_the_cpu_the_default_runs_step_by_step() -> None:
    coefficients, d_out, d_h = torch.zeros(3, 2, 4), torch.zeros(3, 2, 4), torch.zeros(2, 4)
    weights = (torch.zeros(4, 2), torch.zeros(4, 4))
    assert persistent.MODE == "cuda"
    assert not persistent.taken("rnn", coefficients, d_out, (d_h,), weights, masked=False, projected=False)
