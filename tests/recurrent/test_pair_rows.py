"""Recurrent layers run both trajectories on the distinct rows of each side of the pair batch, and
the reference pass runs on the distinct references (its tape repeated for the pairs).

The explainer pairs every sample with every reference, so S x R pairs hold S distinct input rows
and R distinct reference rows. These tests check that the fused layers really use that (the
kernel sees S + R rows, not 2 S R), that they check it instead of assuming it (a reference side
made sample-specific by a context input keeps all its rows), and that the values do not depend
on it (the same as with the pair structure unknown, to float64 rounding).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import rnnshap
from rnnshap.recurrent.pairs import Side
from rnnshap.rules import PairGrid

from ..models.torch import Composite, RecurrentHead

_KERNELS = (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu)


class KernelRows(TorchFunctionMode):
    """Records how many rows each call of torch's recurrent kernels gets."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _KERNELS:
            x, batch_first = args[0], args[-1]
            self.rows.append(x.shape[0] if batch_first else x.shape[1])
        return func(*args, **(kwargs or {}))


def net(kind: str, **options: Any) -> RecurrentHead:
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
    width = (options.get("proj_size") or 5) * (2 if options.get("bidirectional") else 1)
    return RecurrentHead.over(cls(3, 5, batch_first=True, **options), 2, head_inputs=width)


def _scaled_by_context(m: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The sequence is masked by an integer context input first (steps ``t < scale + 2`` kept: a
    comparison, so the integers are context, not numbers), so the reference side seen by the
    recurrent layer differs from sample to sample."""
    kept = torch.arange(x.shape[1]) < scale[:, None] + 2
    out, _ = m.rnn(x * kept.unsqueeze(-1).to(x.dtype))
    return m.head(out[:, -1])


ARCHITECTURES = [
    ("lstm", {}),
    ("lstm", {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
    ("gru", {"num_layers": 2}),
    ("gru", {"bidirectional": True, "bias": False}),
    ("rnn", {"nonlinearity": "relu", "num_layers": 2}),
    ("rnn", {"bidirectional": True}),
]


def _problem(
    kind: str, options: dict, n: int = 4, n_refs: int = 3, steps: int = 7
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    model = net(kind, **options).double().eval()
    return model, torch.randn(n, steps, 3, dtype=torch.float64), torch.randn(n_refs, steps, 3, dtype=torch.float64)


@pytest.mark.parametrize(("kind", "options"), ARCHITECTURES)
def test_values_do_not_depend_on_the_pair_structure(kind: str, options: dict) -> None:
    model, x, background = _problem(kind, options)
    whole = rnnshap.DeepExplainer(model, background).shap_values(x)  # 4 samples x 3 references at once
    unknown = rnnshap.DeepExplainer(model, background, batch_size=2).shap_values(x)  # blocks cut each sample's references
    for a, b in zip(whole, unknown, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(a).max())


@pytest.mark.parametrize(("kind", "options"), ARCHITECTURES)
def test_the_kernel_runs_on_the_distinct_rows_only(kind: str, options: dict) -> None:
    model, x, background = _problem(kind, options, n=6, n_refs=5)
    explainer = rnnshap.DeepExplainer(model, background)
    with KernelRows() as spy:
        explainer.shap_values(x)
    assert spy.rows, "torch's recurrent kernel was not called"
    # reference pass: the 5 references; input pass: 6 samples + 5 references (not 2 x 30 pairs)
    assert max(spy.rows) <= 6 + 5, spy.rows
    blocks = rnnshap.DeepExplainer(model, background, batch_size=4)  # (built outside: its checks run other batches)
    with KernelRows() as spy:
        blocks.shap_values(x)
    # a batch smaller than the background cuts each sample's references into blocks of one sample x up to
    # 4 references: still a grid, so the input pass runs 1 sample row + at most 4 reference rows (not 2 x 4 pairs)
    assert max(spy.rows) <= 1 + 4, spy.rows


def test_a_sample_specific_reference_side_keeps_its_rows_and_stays_exact() -> None:
    torch.manual_seed(5)
    model = Composite(_scaled_by_context, rnn=nn.LSTM(3, 5, batch_first=True, num_layers=2), head=nn.Linear(5, 2))
    model = model.double().eval()
    x, background = torch.randn(4, 6, 3, dtype=torch.float64), torch.randn(3, 6, 3, dtype=torch.float64)
    scale = torch.tensor([1, 2, 3, 4])
    explainer = rnnshap.DeepExplainer(model, [background, torch.ones(3, dtype=torch.long)])
    with KernelRows() as spy:
        phi = explainer.shap_values([x, scale])
    assert max(spy.rows) == 4 + 4 * 3, spy.rows  # 4 distinct input rows, all 12 reference rows
    per_pair = rnnshap.DeepExplainer(model, [background, torch.ones(3, dtype=torch.long)], batch_size=1).shap_values([x, scale])
    assert phi[0].shape == (4, 6, 3, 2) and not np.any(phi[1])  # (samples, steps, features, outputs); context: none
    np.testing.assert_allclose(phi[0], per_pair[0], rtol=0, atol=1e-12 * np.abs(phi[0]).max())
    with torch.no_grad():
        fx = model(x, scale)
        base = torch.stack([model(background[j : j + 1].expand_as(x), scale) for j in range(3)]).mean(0)
    totals = phi[0].reshape(4, -1, 2).sum(1)
    np.testing.assert_allclose(totals, (fx - base).numpy(), rtol=0, atol=1e-10)


def _cell_scaled_by_context(m: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """An LSTMCell looped in Python over a sequence masked by an integer context input (as ``_scaled_by_context``):
    each step's reference side differs from sample to sample, so the cells' deferred row checks fail."""
    x = x * (torch.arange(x.shape[1]) < scale[:, None] + 2).unsqueeze(-1).to(x.dtype)
    h = c = x.new_zeros(x.shape[0], 5)
    for t in range(x.shape[1]):
        h, c = m.cell(x[:, t], (h, c))
    return m.head(h)


@pytest.mark.parametrize("on_a_device", [True, False], ids=["as on a device", "on the cpu"])
def test_a_cell_whose_rows_do_not_repeat_keeps_them_with_the_same_values(on_a_device: bool) -> None:
    """Where reading a cell's row checks would wait on a device (as here under ``values_unread``) they are read after
    the passes, and where one fails the passes run again with each check read at once (the reference side then keeps
    its rows); on the CPU each is read at once, and no pass runs again. Either way the values are those of one pair
    per batch, adding up."""
    from rnnshap.formulas.torch_ops import values_unread

    torch.manual_seed(6)
    model = Composite(_cell_scaled_by_context, cell=nn.LSTMCell(3, 5), head=nn.Linear(5, 2)).double().eval()
    x, background = torch.randn(4, 6, 3, dtype=torch.float64), torch.randn(3, 6, 3, dtype=torch.float64)
    scale, context = torch.tensor([1, 2, 3, 4]), torch.ones(3, dtype=torch.long)
    held = []
    original = PairGrid.all_held

    def spy(grid: PairGrid) -> bool:
        held.append(original(grid))
        return held[-1]

    sides: list[tuple[str, int | None]] = []
    of = Side.of.__func__  # type: ignore[attr-defined]

    def recorded(cls: type[Side], which: Any, *args: Any, **kwargs: Any) -> Side:
        side = of(cls, which, *args, **kwargs)
        sides.append((which, side.axis))
        return side

    with pytest.MonkeyPatch.context() as patch, values_unread() if on_a_device else contextlib.nullcontext():
        patch.setattr(PairGrid, "all_held", spy)
        explainer = rnnshap.DeepExplainer(model, [background, context])
        patch.setattr(Side, "of", classmethod(recorded))
        phi = explainer.shap_values([x, scale])
    assert (False in held) == on_a_device  # (the pass that assumed the rows repeat was run again)
    assert ("reference", None) in sides  # (a reference side kept its rows: the check failed and was heeded)
    per_pair = rnnshap.DeepExplainer(model, [background, context], batch_size=1).shap_values([x, scale])
    np.testing.assert_allclose(phi[0], per_pair[0], rtol=0, atol=1e-12 * np.abs(phi[0]).max())
    with torch.no_grad():
        gap = model(x, scale) - torch.stack([model(background[j : j + 1].expand_as(x), scale) for j in range(3)]).mean(0)
    np.testing.assert_allclose(phi[0].reshape(4, -1, 2).sum(1), gap.numpy(), rtol=0, atol=1e-10)


def test_side_reduces_only_rows_that_repeat() -> None:
    grid = PairGrid(samples=3, references=2)
    samples, references = torch.randn(5, 3, 4), torch.randn(5, 2, 4)  # (T, rows, C)
    inputs = samples.repeat_interleave(2, dim=1)  # pair p holds sample p // 2
    refs = references.repeat(1, 3, 1)  # pair p holds reference p % 2
    side_x = Side.of("input", grid, 6, [(inputs, 1)])
    side_r = Side.of("reference", grid, 6, [(refs, 1)])
    assert (side_x.axis, side_x.rows, side_r.axis, side_r.rows) == (0, 3, 1, 2)
    assert torch.equal(side_x.take(inputs, 1), samples) and torch.equal(side_r.take(refs, 1), references)
    assert torch.equal(side_x.spread(samples, 1), inputs) and torch.equal(side_r.spread(references, 1), refs)
    pairs = (side_x.grid(samples) - side_r.grid(references)).flatten(1, 2)
    assert torch.equal(pairs, inputs - refs)
    refs[:, 3] += 1e-6  # one pair's reference differs: the side keeps every row
    kept = Side.of("reference", grid, 6, [(refs, 1)])
    assert kept.axis is None and kept.rows == 6 and torch.equal(kept.take(refs, 1), refs)
    assert Side.of("input", PairGrid(2, 2), 6, [(inputs, 1)]).axis is None  # the grid does not fit the batch


def _packed(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, h = m.rnn(packed)
    h = h[0] if m.kind == "lstm" else h
    return m.head(torch.cat(list(h[-(2 if m.rnn.bidirectional else 1) :]), 1))


def packed_net(kind: str, **options: Any) -> Composite:
    """A recurrent layer over ``pack_padded_sequence`` (unsorted lengths, a context input)."""
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](3, 5, batch_first=True, **options)
    return Composite(_packed, kind=kind, rnn=rnn, head=nn.Linear(5 * (2 if options.get("bidirectional") else 1), 2))


class PaddedKernelRows(KernelRows):
    """Records the rows of the padded (3-D input) kernel calls only."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _KERNELS and args[0].dim() == 3:
            self.rows.append(args[0].shape[0] if args[-1] else args[0].shape[1])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_a_packed_layer_runs_the_forward_direction_on_the_distinct_references(kind: str) -> None:
    torch.manual_seed(7)
    model = packed_net(kind, bidirectional=True).double().eval()
    x, background = torch.randn(6, 8, 3, dtype=torch.float64), torch.randn(5, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 5, 3, 8, 1])  # 4 distinct lengths
    explainer = rnnshap.DeepExplainer(model, [background, torch.full((5,), 8)])
    with PaddedKernelRows() as spy:
        phi = explainer.shap_values([x, lengths])
    # forward: 6 samples + 5 references, each reference truncated at each sample's length sharing the
    # trajectory of the untruncated one; reverse (starts at each length's last step): 6 + 5 x 4 lengths
    assert 6 + 5 in spy.rows and 6 + 5 * 4 in spy.rows, spy.rows
    assert max(spy.rows) <= 6 + 5 * 4, spy.rows  # never 6 x 5 pairs a side
    per_pair = rnnshap.DeepExplainer(model, [background, torch.full((5,), 8)], batch_size=1).shap_values([x, lengths])
    np.testing.assert_allclose(phi[0], per_pair[0], rtol=0, atol=1e-12 * np.abs(phi[0]).max())
    with torch.no_grad():
        fx = model(x, lengths)
        base = torch.stack([model(background[j : j + 1].expand_as(x), lengths) for j in range(5)]).mean(0)
    totals = phi[0].reshape(6, -1, 2).sum(1)
    np.testing.assert_allclose(totals, (fx - base).numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "rnn-relu"])
def test_a_packed_layer_skips_the_finished_pairs_with_the_same_values(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A packed batch is sorted by length, so the pairs still running at step t are a prefix: the
    per-pair coefficients and the backward pass run on those only (as torch's packed kernel does).
    Same values as masking every step (``where``), for several outputs at once (the batched backward)
    and for a stacked bidirectional layer."""
    from rnnshap.recurrent import fused

    torch.manual_seed(8)
    options = {"nonlinearity": "relu"} if kind == "rnn-relu" else {}
    model = packed_net(kind.split("-")[0], bidirectional=True, num_layers=2, **options).double().eval()
    x, background = torch.randn(6, 8, 3, dtype=torch.float64), torch.randn(5, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 5, 3, 7, 1])
    context = torch.full((5,), 8)
    active: list[list[int] | None] = []
    real = fused._active_rows
    monkeypatch.setattr(fused, "_active_rows", lambda mask: active.append(real(mask)) or active[-1])
    skipping = rnnshap.DeepExplainer(model, [background, context]).shap_values([x, lengths])
    assert active and all(a is not None and a[0] > a[-1] for a in active)  # the prefix path ran, finished pairs dropped
    monkeypatch.setattr(fused, "_active_rows", lambda mask: None)
    masking = rnnshap.DeepExplainer(model, [background, context]).shap_values([x, lengths])
    np.testing.assert_allclose(skipping[0], masking[0], rtol=0, atol=1e-13 * np.abs(masking[0]).max())
    assert np.abs(skipping[0][1, 3:]).max() == 0 and np.abs(skipping[0][5, 1:]).max() == 0  # steps past the lengths


# -- the reference pass on the distinct references --------------------------------------------------
class LoopCell(nn.Module):
    """A GRU-like cell written as a Python loop over time: every step runs op by op."""

    def __init__(
        self, features: int = 3, hidden: int = 4, output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        self.hidden, self.output = hidden, output  # output(y, x): a function of the head's output (and the input)
        self.x, self.h, self.head = nn.Linear(features, 2 * hidden), nn.Linear(hidden, 2 * hidden), nn.Linear(hidden, 2)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            z, g = (self.x(x[:, t]) + self.h(h)).chunk(2, 1)
            z = torch.sigmoid(z)
            h = z * h + (1 - z) * torch.tanh(g)
        y = self.head(h)
        return y if self.output is None else self.output(y, x)


def _time_major_fold(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Folds time before the batch (rows t * B + b): a reference pass on the distinct references
    would be repeated block after block along that axis, which is not this layout."""
    steps, batch = x.shape[1], x.shape[0]
    folded = torch.tanh(m.a(x.transpose(0, 1).reshape(steps * batch, 3)))
    return m.head(folded.reshape(steps, batch, 4).mean(0))


def time_major_fold() -> Composite:
    return Composite(_time_major_fold, a=nn.Linear(3, 4), head=nn.Linear(4, 1))


def squashed(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(y)


def size_dependent(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squashed on batches of more than 16 rows only, which the check at construction (on at most
    16) does not see."""
    return torch.sigmoid(y) if x.shape[0] > 16 else y


def _loop_problem(model: nn.Module, n: int = 5, n_refs: int = 4) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    return model.double().eval(), torch.randn(n, 6, 3, dtype=torch.float64), torch.randn(n_refs, 6, 3, dtype=torch.float64)


def _every_pair(model: nn.Module, background: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    explainer = rnnshap.DeepExplainer(model, background)
    explainer.engine.distinct_references = False
    return np.asarray(explainer.shap_values(x))


def test_the_reference_pass_runs_on_the_distinct_references_with_the_same_values() -> None:
    model, x, background = _loop_problem(LoopCell())
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.distinct_references
    model.batches.clear()
    values = np.asarray(explainer.shap_values(x))
    # the reference pass the constructor ran on the references is kept: a plain forward of them (what a
    # kept pass is checked against) vets it, then every pair
    assert model.batches == [4, 5 * 4], model.batches
    np.testing.assert_allclose(values, _every_pair(model, background, x), rtol=0, atol=1e-13 * np.abs(values).max())
    with torch.no_grad():
        expected = (model(x) - model(background).mean(0)).numpy()
    np.testing.assert_allclose(values.reshape(5, -1, 2).sum(1), expected, rtol=0, atol=1e-12)


def test_the_setup_runs_the_model_on_two_backgrounds_worth_of_rows() -> None:
    """The constructor's cost: the probe on the background and the rows check's reversed background in two halves
    (compared with the probe's outputs). The layout check (4 perturbed rows once and twice over) runs where a block of
    several samples first needs it; a block of one sample reuses the probe's pass, vetted by a plain forward."""
    model, x, background = _loop_problem(LoopCell(), n_refs=8)
    explainer = rnnshap.DeepExplainer(model, background)
    assert model.batches == [8, 4, 4], model.batches
    model.batches.clear()
    one = np.asarray(explainer.shap_values(x[:1]))
    assert model.batches == [8, 8], model.batches  # the vetting forward, the input pass
    model.batches.clear()
    several = np.asarray(explainer.shap_values(x))
    assert model.batches == [4, 8, 8, 5 * 8], model.batches  # the layout check, the vetting forward, the input pass
    np.testing.assert_allclose(one[0], several[0], rtol=0, atol=1e-13 * np.abs(several).max())


def test_a_layout_the_repeats_would_break_keeps_every_pair() -> None:
    model, x, background = _loop_problem(time_major_fold())
    explainer = rnnshap.DeepExplainer(model, background)
    assert not explainer.engine.distinct_references  # found at construction, on the values
    values = np.asarray(explainer.shap_values(x))
    with torch.no_grad():
        expected = (model(x) - model(background).mean(0)).numpy()
    np.testing.assert_allclose(values.reshape(5, -1).sum(1), expected[:, 0], rtol=0, atol=1e-12)


def test_equal_background_rows_do_not_hide_a_layout_the_repeats_would_break() -> None:
    """(Found in review: eight all-zero baselines first, the check ran on those only and passed.)"""
    model, x, background = _loop_problem(time_major_fold(), n_refs=4)
    background = torch.cat([torch.zeros(8, 6, 3, dtype=torch.float64), background])
    explainer = rnnshap.DeepExplainer(model, background)
    assert not explainer.engine.distinct_references
    values = np.asarray(explainer.shap_values(x))
    with torch.no_grad():
        expected = (model(x) - model(background).mean(0)).numpy()
    np.testing.assert_allclose(values.reshape(5, -1).sum(1), expected[:, 0], rtol=0, atol=1e-12)


def test_passes_that_diverge_with_the_batch_size_fall_back_to_every_pair() -> None:
    model, x, background = _loop_problem(LoopCell(output=size_dependent))
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.distinct_references  # 8 and 16 rows take the same path
    values = np.asarray(explainer.shap_values(x))  # 20 pairs: the input pass takes the squashed path
    assert not explainer.engine.distinct_references
    squashed_model = LoopCell(output=squashed).double().eval()
    squashed_model.load_state_dict(model.state_dict())
    np.testing.assert_allclose(values, _every_pair(squashed_model, background, x), rtol=0, atol=1e-13 * np.abs(values).max())


class ScaledLoopCell(LoopCell):
    """forward() reads a Python attribute and a tensor attribute, which the user may change (or
    replace) between calls."""

    scale = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.zeros(3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.scale + self.offset)


def _reference_passes(explainer: Any, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, int]:
    """The values of a call, and how many reference passes it ran."""
    from rnnshap.engines.pytorch import engine

    passes: list[bool] = []
    run = engine.run_pass

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes.append(args[4].replay)
        return run(*args, **kwargs)

    monkeypatch.setattr(engine, "run_pass", counted)
    values = np.asarray(explainer.shap_values(x))
    monkeypatch.setattr(engine, "run_pass", run)
    return values, passes.count(False)


def test_a_later_call_reuses_the_reference_pass_with_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, background = _loop_problem(LoopCell())
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.distinct_references  # (its check's two passes, run where a block of several samples asks)
    first, passes = _reference_passes(explainer, x, monkeypatch)
    assert passes == 0  # the constructor's pass on every reference, checked by a plain forward of them
    again, passes = _reference_passes(explainer, x, monkeypatch)
    assert passes == 0  # the same tape, checked again
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(first, _every_pair(model, background, x), rtol=0, atol=1e-13 * np.abs(first).max())
    # blocks of two samples (8 pairs) and the last block, of one sample, share the constructor's reference pass
    blocked = rnnshap.DeepExplainer(model, background, batch_size=8)
    assert blocked.engine.distinct_references
    blocks, passes = _reference_passes(blocked, x, monkeypatch)
    assert passes == 0
    np.testing.assert_allclose(blocks, first, rtol=0, atol=1e-13 * np.abs(first).max())


@pytest.mark.parametrize("change", ["parameters", "attribute", "tensor-attribute", "background"])
def test_a_model_changed_between_calls_runs_the_reference_pass_again(change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept reference tape is reused only while the model still computes its outputs: trained
    parameters, an attribute forward() reads or a background changed in place each change them."""
    model, x, background = _loop_problem(ScaledLoopCell())
    explainer = rnnshap.DeepExplainer(model, background)
    _reference_passes(explainer, x, monkeypatch)
    if change == "parameters":
        with torch.no_grad():
            model.h.weight.mul_(1.5)
    elif change == "attribute":
        model.scale = 2.5
    elif change == "tensor-attribute":
        model.offset = torch.full((3,), 0.5, dtype=torch.float64)  # another object, of the same shape
    else:
        explainer.engine.background[0].mul_(0.5)
        background = explainer.engine.background[0].clone()
    values, passes = _reference_passes(explainer, x, monkeypatch)
    assert passes == 1
    np.testing.assert_allclose(values, _every_pair(model, background, x), rtol=0, atol=1e-13 * np.abs(values).max())
    with torch.no_grad():
        expected = (model(x) - model(background).mean(0)).numpy()
    np.testing.assert_allclose(values.reshape(5, -1, 2).sum(1), expected, rtol=0, atol=1e-12)


def test_a_reference_pass_over_the_bytes_kept_runs_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnshap.engines.pytorch import kept

    monkeypatch.setattr(kept, "KEPT_TAPE_BYTES", 1024)
    model, x, background = _loop_problem(LoopCell())
    explainer = rnnshap.DeepExplainer(model, background)
    first, passes = _reference_passes(explainer, x, monkeypatch)
    model.batches.clear()
    again, passes = _reference_passes(explainer, x, monkeypatch)
    assert passes == 1 and not explainer.engine.kept.tapes
    assert model.batches == [4, 5 * 4]  # no plain forward to check a kept pass against
    np.testing.assert_array_equal(again, first)


def dead_unit() -> nn.Module:
    """A hidden unit that is off (ReLU) on every background row but on for the explained sample: a change of its
    weights that keeps it off on the background moves what a reference pass records, but no bit of the background's
    outputs (what vets a kept pass); ``shift`` moves the second unit's input."""
    model = Composite(lambda m, x: m.l2(torch.relu(m.l1(x) + torch.tensor([0.0, m.shift], dtype=x.dtype))),
                      l1=nn.Linear(3, 2), l2=nn.Linear(2, 1), shift=0.0)  # fmt: skip
    with torch.no_grad():
        model.l1.weight.copy_(torch.tensor([[1.0, 0.5, -0.3], [1.0, 1.0, 1.0]]))
        model.l1.bias.copy_(torch.tensor([0.1, -10.0]))
        model.l2.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.l2.bias.zero_()
    return model


@pytest.mark.parametrize("samples", [1, 2])
def test_a_kept_reference_pass_is_dropped_when_a_parameter_changes_unseen_by_the_background(samples: int) -> None:
    """(Found in review: a kept pass was vetted by the references' outputs alone.)"""
    torch.manual_seed(0)
    model = dead_unit().double().eval()
    background = torch.randn(6, 3, dtype=torch.float64)
    x = torch.full((samples, 3), 5.0, dtype=torch.float64) + torch.arange(samples, dtype=torch.float64)[:, None]
    explainer = rnnshap.DeepExplainer(model, background)
    explainer.shap_values(x)
    with torch.no_grad():
        before = model(background)
        model.l1.bias[1] = -12.0  # still off on every background row
        assert torch.equal(model(background), before)
    values = np.asarray(explainer.shap_values(x))  # (the additivity check passes too)
    fresh = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    np.testing.assert_array_equal(values, fresh)


def test_forget_reference_passes_after_an_attribute_change_unseen_by_the_background() -> None:
    """An attribute forward() reads is not in the model's version: where its change moves no bit of the background's
    outputs, the kept pass is dropped by hand (documented in the engine)."""
    torch.manual_seed(0)
    model = dead_unit().double().eval()
    background = torch.randn(6, 3, dtype=torch.float64)
    x = torch.full((1, 3), 5.0, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    explainer.shap_values(x)
    model.shift = -2.0
    explainer.engine.forget_reference_passes()
    values = np.asarray(explainer.shap_values(x))
    np.testing.assert_array_equal(values, np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x)))


def test_a_call_vets_a_kept_pass_once_for_all_its_blocks() -> None:
    """No code runs between one call's blocks: the plain forward that vets a kept reference pass runs once a call, not
    once a block."""
    model, x, background = _loop_problem(LoopCell())
    explainer = rnnshap.DeepExplainer(model, background, batch_size=8)  # blocks of two samples, two, one
    first = np.asarray(explainer.shap_values(x))
    model.batches.clear()
    again = np.asarray(explainer.shap_values(x))
    assert model.batches == [4, 8, 8, 4], model.batches  # the vetting forward, then the blocks' input passes
    np.testing.assert_array_equal(again, first)


def test_an_explainer_built_for_one_call_takes_its_setups_pass_unvetted() -> None:
    """A door that builds an explainer and calls it at once (nothing runs in between) says so: the reference pass the
    constructor kept is taken without the plain forward that vets it. The values are a vetted call's, bit for bit, and
    a later call vets it as before."""
    model, x, background = _loop_problem(LoopCell(), n_refs=8)
    explainer = rnnshap.DeepExplainer(model, background)
    model.batches.clear()
    inputs = explainer.engine.inputs(x[:1], "X")
    built = explainer.attribution(inputs, just_built=True)
    assert model.batches == [8], model.batches  # the input pass alone
    model.batches.clear()
    later = explainer.attribution(inputs)
    assert model.batches == [8, 8], model.batches  # the vetting forward, the input pass
    for a, b in zip(built.values, later.values, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("samples", [1, 5])
def test_the_setups_pass_over_the_bytes_kept_serves_the_first_call_only(samples: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The constructor's reference pass, over the bytes kept between calls, is held for the first call (which would
    run the same pass again), then dropped."""
    from rnnshap.engines.pytorch import kept

    monkeypatch.setattr(kept, "KEPT_TAPE_BYTES", 1024)
    model, x, background = _loop_problem(LoopCell())
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.distinct_references  # (its check's passes, run where a block of several samples asks)
    first, passes = _reference_passes(explainer, x[:samples], monkeypatch)
    assert passes == 0  # the constructor's pass, vetted by a plain forward
    again, passes = _reference_passes(explainer, x[:samples], monkeypatch)
    assert passes == 1 and not explainer.engine.kept.tapes
    np.testing.assert_array_equal(again, first)


def test_a_held_setup_pass_neither_crowds_out_nor_outlives_blocks_that_do_not_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Found in review.) Blocks of part of the references do not take the constructor's pass on all of them: it is
    dropped at the first such block, and its bytes never count against the passes kept between calls."""
    from rnnshap.engines.pytorch import kept

    model, x, background = _loop_problem(LoopCell(), n=3, n_refs=8)
    full = rnnshap.DeepExplainer(model, background).engine.kept.bytes()
    monkeypatch.setattr(kept, "KEPT_TAPE_BYTES", int(full * 0.75))  # all 8 references' pass over, 4's within
    explainer = rnnshap.DeepExplainer(model, background, batch_size=4)  # blocks of one sample x 4 references
    assert (0, 8) in {key[:2] for key in explainer.engine.kept.tapes}  # held for the first call
    first, passes = _reference_passes(explainer, x, monkeypatch)
    held = {key[:2] for key in explainer.engine.kept.tapes}
    assert held == {(0, 4)}, held  # a block of references 0-4 kept; the pass on all 8 dropped, not taken
    again, passes = _reference_passes(explainer, x, monkeypatch)
    assert passes == 3  # each sample's second block (references 4-8): over the bytes kept beside the first's
    np.testing.assert_array_equal(again, first)
