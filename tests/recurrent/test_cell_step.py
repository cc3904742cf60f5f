"""One cell step fully decomposed: rows add up, and agree with DeepExplainer on the same step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.recurrent import explain_cell_step

from ..models.torch import Composite


def lstm_step(cell: nn.LSTMCell, which: str) -> nn.Module:
    """The cell's new h or its new c."""
    return Composite(lambda m, x, h, c: m.cell(x, (h, c))[0 if m.which == "h" else 1], cell=cell, which=which)


def _data(batch: int, features: int, hidden: int, n: int):
    torch.manual_seed(7)
    return [2 * torch.randn(batch, size, dtype=torch.float64) for size in (features, hidden, hidden)][:n]


@pytest.mark.parametrize("which", ["h", "c"])
def test_lstm_step_rows_sum_to_each_unit_change_and_match_deep_explainer(which: str) -> None:
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 4).double()
    x, h, c = _data(5, 3, 4, 3)
    x_r, h_r, c_r = _data(1, 3, 4, 3)
    result = explain_cell_step(cell, x, (h, c), x_r, (h_r, c_r))
    parts, delta = (result.hidden, result.delta_hidden) if which == "h" else (result.cell, result.delta_cell)
    assert parts is not None and delta is not None
    total = parts["x"].sum(2) + parts["h"].sum(2) + parts["c"].sum(2)
    torch.testing.assert_close(total, delta, rtol=0, atol=1e-12)
    # the same step through the engine, one reference: per-input attributions are the matrix rows
    phi_x, phi_h, phi_c = rnnshap.DeepExplainer(lstm_step(cell, which).eval(), [x_r, h_r, c_r]).shap_values([x, h, c])
    np.testing.assert_allclose(phi_x, parts["x"].transpose(1, 2).numpy(), atol=1e-12)
    np.testing.assert_allclose(phi_h, parts["h"].transpose(1, 2).numpy(), atol=1e-12)
    np.testing.assert_allclose(phi_c, parts["c"].transpose(1, 2).numpy(), atol=1e-12)


def test_gru_step_rows_sum_to_each_unit_change_and_match_deep_explainer() -> None:
    torch.manual_seed(1)
    cell = nn.GRUCell(3, 4).double()
    x, h = _data(5, 3, 4, 2)
    x_r, h_r = _data(1, 3, 4, 2)
    result = explain_cell_step(cell, x, h, x_r, h_r)
    torch.testing.assert_close(result.hidden["x"].sum(2) + result.hidden["h"].sum(2), result.delta_hidden, rtol=0, atol=1e-12)
    step = Composite(lambda m, x, h: m.cell(x, h), cell=cell).eval()
    phi_x, phi_h = rnnshap.DeepExplainer(step, [x_r, h_r]).shap_values([x, h])
    np.testing.assert_allclose(phi_x, result.hidden["x"].transpose(1, 2).numpy(), atol=1e-12)
    np.testing.assert_allclose(phi_h, result.hidden["h"].transpose(1, 2).numpy(), atol=1e-12)
