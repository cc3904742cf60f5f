"""The reference pass on the distinct references where a block's samples share their context inputs.

A context input (a boolean mask, integer lengths: not attributed) takes the explained sample's values on both sides
of its pairs. Where every sample of a block has the same values, the references of all its pairs run with those
values, so the reference pass runs once on the block's distinct references and its tape is repeated for the pairs
(as for a model without context inputs). Truths: every pair run (the engine told not to use distinct references),
to float64 rounding; the model's own outputs (additivity); the rows each reference pass runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...models.torch import Composite


def masked_attention(m: nn.Module, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Self-attention over time whose keys are masked by a boolean input (True: padding), then a tanh head, written
    with torch ops."""
    h = m.embed(x[..., None])
    q, k, v = m.qkv(h).chunk(3, dim=-1)
    scores = (q @ k.transpose(1, 2)).masked_fill(padding[:, None, :], float("-inf"))
    h = torch.softmax(scores / 8**0.5, dim=-1) @ v
    kept = (~padding)[..., None].to(h.dtype)
    return torch.tanh(m.head((h * kept).sum(1) / kept.sum(1)))


def _problem(shared: bool) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = Composite(masked_attention, embed=nn.Linear(1, 8), qkv=nn.Linear(8, 24), head=nn.Linear(8, 3)).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[:, :2] = True  # every sample padded alike
    if not shared:
        padding[1, 2] = True
    background = torch.randn(5, 6, dtype=torch.float64)
    return model, [x, padding], [background, torch.zeros(5, 6, dtype=torch.bool)]


def _every_pair(model: nn.Module, background: list[torch.Tensor], x: list[torch.Tensor]) -> np.ndarray:
    explainer = rnnshap.DeepExplainer(model, background)
    explainer.engine.distinct_references = False
    return np.asarray(explainer.shap_values(x)[0])


def _reference_rows(explainer: Any, x: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, list[int]]:
    """The values of a call and the rows of each reference pass it ran."""
    from rnnshap.engines.pytorch import engine

    rows: list[int] = []
    run = engine.run_pass

    def counted(model: Any, inputs: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        settings = kwargs.get("settings") or next((a for a in args if hasattr(a, "replay")), None)
        if not (kwargs["replay"] if "replay" in kwargs else settings.replay):
            rows.append(int(inputs[0].shape[0]))
        return run(model, inputs, *args, **kwargs)

    monkeypatch.setattr(engine, "run_pass", counted)
    values = np.asarray(explainer.shap_values(x)[0])
    monkeypatch.setattr(engine, "run_pass", run)
    return values, rows


@pytest.mark.parametrize("shared", [True, False])
def test_samples_sharing_a_mask_run_the_reference_pass_on_the_distinct_references(
    shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, background = _problem(shared)
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.context_inputs == [1]
    assert explainer.engine.distinct_references  # (its check's passes, run where a block of several samples first asks)
    values, rows = _reference_rows(explainer, x, monkeypatch)
    # shared: one pass on the 5 references (with the samples' mask); else the reference side of all 4 x 5 pairs
    assert rows == ([5] if shared else [20])
    every = _every_pair(model, background, x)
    np.testing.assert_allclose(values, every, rtol=0, atol=1e-12 * np.abs(every).max())
    with torch.no_grad():  # additivity against the model's own outputs, the references run with each sample's mask
        mean = torch.stack([model(background[0], x[1][i : i + 1].expand(5, -1)).mean(0) for i in range(4)])
        expected = (model(*x) - mean).numpy()
    np.testing.assert_allclose(values.sum(1), expected, rtol=0, atol=1e-12)  # (n, steps, outputs)


def test_a_later_call_with_the_same_mask_reuses_the_pass_another_mask_runs_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, background = _problem(True)
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.distinct_references
    first, rows = _reference_rows(explainer, x, monkeypatch)
    again, rows_again = _reference_rows(explainer, x, monkeypatch)
    assert rows == [5] and rows_again == []  # kept, vetted by a plain forward
    np.testing.assert_array_equal(again, first)
    other = [x[0], torch.zeros_like(x[1])]  # another mask: its own pass, not the kept one
    values, rows = _reference_rows(explainer, other, monkeypatch)
    assert rows == [5]
    every = _every_pair(model, background, other)
    np.testing.assert_allclose(values, every, rtol=0, atol=1e-12 * np.abs(every).max())


@pytest.mark.parametrize("shared", [True, False])
def test_the_captured_pass_runs_the_reference_side_on_the_distinct_references_where_the_samples_share_a_mask(
    shared: bool,
) -> None:
    """The captured pass alike: where the block's samples share their mask, the reference side runs on the 5
    references with it (kept between calls, for that mask only), else on every pair; the values of every pair run to
    float64 rounding."""
    model, x, background = _problem(shared)
    explainer = rnnshap.DeepExplainer(model, background, compile="capture")
    every = _every_pair(model, background, x)
    intercepted = rnnshap.DeepExplainer(model, background, compile=False).shap_values(x)
    for _ in range(2):
        values = np.asarray(explainer.shap_values(x)[0])
        np.testing.assert_allclose(values, every, rtol=0, atol=1e-12 * np.abs(every).max())
        np.testing.assert_array_equal(values, intercepted[0])  # (the intercepted pass's, bit for bit)
        path = explainer.pass_path
        assert path.startswith("captured:"), path
        assert ("its reference side on the block's distinct references" in path) == shared, path
    assert ("kept from an earlier call" in path) == shared, path
    other = [x[0], torch.zeros_like(x[1])]  # another mask shared by the samples: its own reference side, not the kept one
    values = np.asarray(explainer.shap_values(other)[0])
    every = _every_pair(model, background, other)
    np.testing.assert_allclose(values, every, rtol=0, atol=1e-12 * np.abs(every).max())
    np.testing.assert_array_equal(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(other)[0])
    assert "distinct references" in explainer.pass_path and "kept" not in explainer.pass_path, explainer.pass_path
