"""Streaming summaries: ``explainer.summarize`` equals the in-memory values, pulls batches lazily,
merges exactly, samples uniformly, and writes Parquet shards that read back as the same values."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import Summary

from .models.torch import Composite


class Net(nn.Module):
    def __init__(self, outputs: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, outputs)
        self.calls: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append("forward")
        return self.head(self.lstm(x)[0][:, -1])


def _problem(n: int = 13, outputs: int = 3) -> tuple[Net, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Net(outputs).double().eval()
    return model, torch.randn(n, 6, 4, dtype=torch.float64), torch.randn(5, 6, 4, dtype=torch.float64)


def test_summary_of_an_array_equals_the_in_memory_values() -> None:
    model, x, background = _problem()
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)  # (13, 6, 4, 3)
    summary = explainer.summarize(x, batch_size=4, sample_size=100)
    assert summary.count == 13
    np.testing.assert_allclose(summary.mean, values.mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(summary.mean_abs, np.abs(values).mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(summary.base_value, explainer.expected_value, rtol=0, atol=1e-13)
    # every sample kept (13 <= 100), each with its own values, data and row number
    order = np.argsort(summary.sample_rows)
    np.testing.assert_array_equal(summary.sample_rows[order], np.arange(13))
    np.testing.assert_allclose(summary.sample[order], values, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(summary.sample_data[0][order], x.numpy())


def test_summary_of_an_iterable_pulls_one_batch_at_a_time() -> None:
    model, x, background = _problem()
    explainer = rnnshap.DeepExplainer(model, background)
    model.calls.clear()

    def batches() -> Iterator[torch.Tensor]:
        for begin in range(0, 13, 5):
            model.calls.append(f"pull {begin}")
            yield x[begin : begin + 5]

    summary = explainer.summarize(batches())
    pulls = [i for i, call in enumerate(model.calls) if call.startswith("pull")]
    assert len(pulls) == 3
    assert all(model.calls[i + 1] == "forward" for i in pulls), model.calls  # each batch explained before the next pull
    np.testing.assert_allclose(summary.mean_abs, np.abs(explainer.shap_values(x)).mean(0), rtol=0, atol=1e-13)


def test_summary_takes_a_dataloader_of_tensors_and_refuses_labels_with_advice() -> None:
    model, x, background = _problem()
    explainer = rnnshap.DeepExplainer(model, background)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)
    summary = explainer.summarize(loader)
    np.testing.assert_allclose(summary.mean, explainer.shap_values(x).mean(0), rtol=0, atol=1e-13)
    labelled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(13)), batch_size=4)
    with pytest.raises(rnnshap.InputError, match=r"\(x for x, _ in loader\)"):
        explainer.summarize(labelled)
    with pytest.raises(rnnshap.InputError, match="no samples"):
        explainer.summarize(iter([]))


def test_summaries_of_two_halves_merge_into_the_summary_of_the_whole() -> None:
    model, x, background = _problem(n=20)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    first = explainer.summarize(x[:8], sample_size=6, seed=1)
    second = explainer.summarize(x[8:], sample_size=6, seed=2)
    whole = explainer.summarize(x, sample_size=6, seed=3)
    merged = first.merge(second)
    assert merged.count == whole.count == 20
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=0, atol=1e-13)
    np.testing.assert_allclose(merged.mean_abs, whole.mean_abs, rtol=0, atol=1e-13)
    assert merged.sample.shape == (6, 6, 4, 3)
    # the sampled rows are rows of the halves (row numbers count within each half), with their own values
    offsets = {id(first): 0, id(second): 8}
    for summary in (first, second):
        for row, sampled in zip(summary.sample_rows, summary.sample, strict=True):
            np.testing.assert_allclose(sampled, values[offsets[id(summary)] + row], rtol=0, atol=1e-13)
    kept = {tuple(np.round(v.ravel()[:3], 12)) for v in merged.sample}
    candidates = {tuple(np.round(v.ravel()[:3], 12)) for v in np.concatenate([first.sample, second.sample])}
    assert kept <= candidates and len(kept) == 6
    assert first.count == 8 and second.count == 12  # merge changes neither operand


def test_merged_samples_are_uniform() -> None:
    """Each of 20 samples, split 7 + 13 over two summaries of sample size 5, ends in the merged
    sample with probability 5/20, whichever half it came from."""
    hits = np.zeros(20)
    trials = 2000
    for seed in range(trials):
        halves = []
        for part, rows in enumerate((np.arange(7), np.arange(7, 20))):
            summary = Summary([(1,)], [(1,)], (), sample_size=5, seed=2 * seed + part)
            summary.update([rows[:, None].astype(float)], np.zeros(len(rows)), [rows[:, None]], rows)
            halves.append(summary)
        merged = halves[0].merge(halves[1])
        hits[merged.sample_rows] += 1
    frequency = hits / trials
    # binomial standard deviation sqrt(0.25 * 0.75 / 2000) ~ 0.0097: 5 sigma
    np.testing.assert_allclose(frequency, 0.25, atol=0.05)
    assert abs(frequency[:7].mean() - frequency[7:].mean()) < 0.03


def test_summary_with_chosen_outputs_and_multi_input() -> None:
    torch.manual_seed(1)
    model = Composite(lambda m, seq, static: m.head(torch.cat([m.gru(seq)[0][:, -1], static], 1)),
                      gru=nn.GRU(3, 5, batch_first=True), head=nn.Linear(5 + 2, 4)).double().eval()  # fmt: skip
    background = [torch.randn(3, 4, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    x = [torch.randn(7, 4, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)]
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x, outputs=[2, 0])
    summary = explainer.summarize(x, batch_size=3, outputs=[2, 0])
    assert isinstance(summary.mean, list) and len(summary.mean) == 2
    for mean, v in zip(summary.mean_abs, values, strict=True):
        np.testing.assert_allclose(mean, np.abs(v).mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(summary.base_value, np.asarray(explainer.expected_value)[[2, 0]], rtol=0, atol=1e-13)


def test_parquet_shards_hold_every_sample_and_read_back() -> None:
    pytest.importorskip("pyarrow")
    from rnnshap.summary import read_shards

    model, x, background = _problem()
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    explanation_base = np.broadcast_to(explainer.expected_value, (13, 3))
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        explainer.summarize(x, batch_size=5, parquet=directory)
        columns = read_shards(directory)
        written = sorted(p.name for p in __import__("pathlib").Path(directory).glob("*.parquet"))
        assert written == [f"part-0000{i}.parquet" for i in range(3)]
        with pytest.raises(FileExistsError):
            explainer.summarize(x, parquet=directory)
    np.testing.assert_array_equal(columns["row"], np.arange(13))
    assert columns["shap_values"].dtype == np.float64  # the model is float64
    np.testing.assert_allclose(columns["shap_values"], values, rtol=0, atol=1e-13)
    np.testing.assert_allclose(columns["base_values"], explanation_base, rtol=0, atol=1e-13)


def test_global_importance_plot_takes_a_summary() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    model, x, background = _problem()
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    from_values = rnnshap.plots.global_importance(values, output=1)
    from_summary = rnnshap.plots.global_importance(explainer.summarize(x, batch_size=4), output=1)

    def shown(fig: Any) -> np.ndarray:
        return np.asarray(fig.axes[0].images[0].get_array())

    np.testing.assert_allclose(shown(from_summary), shown(from_values), rtol=0, atol=1e-12)
    assert "13 samples" in from_summary._suptitle.get_text()
