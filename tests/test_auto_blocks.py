"""``batch_size="auto"``: blocks of pairs sized from a CUDA device's memory, and a block that runs out of memory run
again at half its pairs (rnnshap/attribution.py, MemorySizedBlocks). Where no GPU is, the device's memory is a stand-in
that follows the blocks run: each block of p pairs needs ``PER_PAIR * p`` bytes beyond what is allocated, and one of
more than ``limit`` pairs raises torch's out-of-memory error, as a device would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap import attribution

from .models.torch import RecurrentHead

PER_PAIR = 1000


class StandInDevice:
    """torch.cuda's memory counters for the blocks the engine runs: ``free`` bytes on the device, ``held`` by the
    allocator unused, a peak that only grows, and out of memory past ``limit`` pairs."""

    def __init__(self, free: int, limit: int, held: int = 0, peak: int = 0) -> None:
        self.free, self.limit, self.held, self.peak = free, limit, held, peak
        self.ran: list[int] = []
        self.failed: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch, explainer: rnnshap.DeepExplainer) -> None:
        monkeypatch.setattr(explainer.engine, "cuda_device", lambda: "stand-in")
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.held)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.free, 10 * self.free))
        engine = explainer.engine
        attribute = engine.attribute

        def sized(inputs, block, selected, **kwargs):
            pairs = block.samples * block.references
            if pairs > self.limit:
                self.failed.append(pairs)
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
            self.ran.append(pairs)
            self.peak = max(self.peak, PER_PAIR * pairs)
            return attribute(inputs, block, selected, **kwargs)

        monkeypatch.setattr(engine, "attribute", sized)


def _lstm(outputs: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = RecurrentHead("lstm", 3, 8, outputs).double().eval()
    return model, torch.randn(40, 6, 3, dtype=torch.float64), torch.randn(10, 6, 3, dtype=torch.float64)


def test_blocks_grow_to_the_share_of_memory_each_measured_block_says(monkeypatch) -> None:
    model, x, background = _lstm()
    fixed = np.asarray(rnnshap.DeepExplainer(model, background, batch_size=2048).shap_values(x))
    explainer = rnnshap.DeepExplainer(model, background, batch_size="auto")
    rows = explainer.engine.rows_per_pair(2)
    monkeypatch.setattr(attribution, "AUTO_ROWS", 20 * rows)  # (a first block of 20 pairs: two samples' references)
    device = StandInDevice(free=100 * PER_PAIR, limit=10**9)
    device.install(monkeypatch, explainer)
    got = np.asarray(explainer.shap_values(x))
    # the first block: 20 pairs; it used 20 * PER_PAIR, so the next gets 0.7 * 100 * PER_PAIR / PER_PAIR = 70 pairs,
    # 7 samples whole; and so on until the 400 pairs are done
    assert device.ran == [20, 70, 70, 70, 70, 70, 30], device.ran
    np.testing.assert_allclose(got, fixed, rtol=1e-12, atol=1e-15)


def test_a_block_that_runs_out_of_memory_runs_again_at_half_its_pairs(monkeypatch) -> None:
    model, x, background = _lstm()
    fixed = np.asarray(rnnshap.DeepExplainer(model, background, batch_size=2048).shap_values(x))
    explainer = rnnshap.DeepExplainer(model, background, batch_size="auto")
    device = StandInDevice(free=10**12, limit=25)  # (the memory says more than the device holds: the errors tell)
    device.install(monkeypatch, explainer)
    got = np.asarray(explainer.shap_values(x))
    assert device.failed == [400, 200, 100, 50], device.failed  # (and no later block larger than the one that ran)
    assert max(device.ran) <= 25 and sum(device.ran) == 400
    np.testing.assert_allclose(got, fixed, rtol=1e-12, atol=1e-15)


def test_out_of_memory_at_one_pair_is_raised(monkeypatch) -> None:
    model, x, background = _lstm()
    explainer = rnnshap.DeepExplainer(model, background, batch_size="auto")
    device = StandInDevice(free=10**12, limit=0)
    device.install(monkeypatch, explainer)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        explainer.shap_values(x[:2])
    assert device.failed[-1] == 1


def test_a_peak_from_before_bounds_a_blocks_measure_from_above(monkeypatch) -> None:
    """The allocator's peak is not reset (a user's counter): a block below an earlier peak is measured at that peak,
    which sizes the next block smaller than the memory allows, never larger."""
    model, x, background = _lstm()
    explainer = rnnshap.DeepExplainer(model, background, batch_size="auto")
    rows = explainer.engine.rows_per_pair(2)
    monkeypatch.setattr(attribution, "AUTO_ROWS", 20 * rows)
    device = StandInDevice(free=100 * PER_PAIR, limit=10**9, peak=40 * PER_PAIR)
    device.install(monkeypatch, explainer)
    explainer.shap_values(x)
    assert device.ran[:2] == [20, 30], device.ran  # (0.7 * 100 * 20 / 40 = 35 pairs: 3 samples whole)


def test_auto_off_a_cuda_device_runs_the_default_blocks() -> None:
    model, x, background = _lstm()
    fixed = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    np.testing.assert_array_equal(np.asarray(rnnshap.DeepExplainer(model, background, batch_size="auto").shap_values(x)), fixed)
    np.testing.assert_array_equal(
        np.asarray(rnnshap.DeepExplainer(model, background, batch_size=7).shap_values(x, batch_size="auto")), fixed
    )


@pytest.mark.parametrize("bad", [0, -3, 2.5, "big", True, None])
def test_a_batch_size_neither_pairs_nor_auto_is_refused(bad) -> None:
    model, _, background = _lstm()
    with pytest.raises(rnnshap.InputError, match='batch_size must be a number of pairs of at least 1, or "auto"'):
        rnnshap.DeepExplainer(model, background, batch_size=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_auto_on_a_cuda_device_gives_the_fixed_blocks_values() -> None:
    model, x, background = _lstm()
    model, x, background = model.float().cuda(), x.float().cuda(), background.float().cuda()
    fixed = np.asarray(rnnshap.DeepExplainer(model, background, batch_size=2048).shap_values(x))
    got = np.asarray(rnnshap.DeepExplainer(model, background, batch_size="auto").shap_values(x))
    scale = np.abs(fixed).max()
    np.testing.assert_allclose(got, fixed, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)  # (blocks' sizes: rounding)
