"""What an explanation costs, structurally: the work a call does beyond its floor (native forward + one backward
per output), counted, not timed (timings are the benchmarks' job: benchmarks/bench_dispatch.py, issue 53)."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

import rnnshap


def test_a_first_call_imports_nothing_its_floor_does_not() -> None:
    """The floor's backward (``autograd.grad`` of a scalar) imports nothing; ``autograd.grad`` given ``grad_outputs``
    imports torch's symbolic shapes and sympy on its first use in a process (0.3-0.4 s, 30 times a tiny model's steady
    call). A first call must not pay that for the outputs' one-hot rows."""
    script = (
        "import sys, torch, rnnshap\n"
        "from torch import nn\n"
        "class Head(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lstm = nn.LSTM(3, 8, batch_first=True); self.fc = nn.Linear(8, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.lstm(x)[0][:, -1])\n"
        "torch.manual_seed(0)\n"
        "model = Head().eval()\n"
        "explainer = rnnshap.DeepExplainer(model, torch.randn(4, 6, 3))\n"
        "explainer.shap_values(torch.randn(2, 6, 3))\n"  # two outputs: the batched backward
        "explainer.shap_values(torch.randn(2, 6, 3), outputs=[0])\n"  # one output
        "assert 'sympy' not in sys.modules, 'sympy imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


class _GRUHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.fc = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gru(x)[0][:, -1])


def test_one_output_and_several_take_the_same_values() -> None:
    """The one-output backward (from a scalar, the plain recurrence) and the batched one (one-hot rows under vmap,
    the recurrence's operator) give the same values bit for bit."""
    torch.manual_seed(1)
    explainer = rnnshap.DeepExplainer(_GRUHead().eval(), torch.randn(5, 7, 3))
    x = torch.randn(3, 7, 3)
    both = explainer.shap_values(x)  # (samples, steps, features, outputs)
    for k in range(2):
        alone = explainer.shap_values(x, outputs=[k])
        assert alone.shape == both.shape[:-1] + (1,)
        assert (alone[..., 0] == both[..., k]).all()
