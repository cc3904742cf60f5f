"""The recurrent ops' rules are in the rule registry whatever is imported first: the registry builds
them into its table itself (``default_op_rules`` calls ``recurrent_rules``), not by a side effect of
importing ``rnnshap.recurrent``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnshap.recurrent import RecurrentCell, RecurrentLayer
from rnnshap.rules.registry import DEFAULT_REGISTRY, default_op_rules

RECURRENT_OPS = (
    torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu,
    torch.lstm_cell, torch.gru_cell, torch.rnn_tanh_cell, torch.rnn_relu_cell,
)  # fmt: skip
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "rnnshap"


def test_the_registry_table_holds_every_recurrent_op() -> None:
    table = default_op_rules()  # a fresh table, built without rnnshap.recurrent's __init__ having a say
    for op in RECURRENT_OPS:
        kind = RecurrentCell if op.__name__.endswith("_cell") else RecurrentLayer
        assert isinstance(table.get(op), kind), op.__name__
        assert type(DEFAULT_REGISTRY.op_rule(op)) is type(table[op]), op.__name__


@pytest.mark.parametrize("first", ["rnnshap.rules.registry", "rnnshap.recurrent", "rnnshap.recurrent.fused", "rnnshap.rules"])
def test_recurrent_rules_are_registered_whatever_is_imported_first(first: str) -> None:
    # rnnshap/__init__.py imports everything; a bare package stands in for it, so that only `first`
    # and what it imports are loaded before the registry is read
    script = f"""
import sys, types, importlib, torch
package = types.ModuleType("rnnshap")
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["rnnshap"] = package
importlib.import_module({first!r})
from rnnshap.rules.registry import DEFAULT_REGISTRY
ops = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"]
missing = [name for name in ops if DEFAULT_REGISTRY.op_rule(getattr(torch, name)) is None]
assert not missing, missing
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
