"""What the front door computes for every engine: the sums over blocks of (sample, reference) pairs.

:func:`attribute` runs the blocks of a batch through an engine and averages over the background;
:class:`Attribution` holds the result (float64, the selected outputs last) and shapes it as shap's
DeepExplainer does. The outputs are chosen by :func:`rnnshap.engines.outputs.selected_outputs` and the
result is checked by :func:`rnnshap.additivity.check_additivity`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from .engines.base import Block, Engine, blocks
from .progress import progress_bar, progress_counter

#: rows of the first block under ``batch_size="auto"``, and everywhere but on a CUDA device (the explainer's default)
AUTO_ROWS = 2048
#: the share of the device's available memory (free, and held by torch's allocator unused) a block is sized to fill
AUTO_SHARE = 0.7


@dataclass
class Attribution:
    """The attributions of a batch of samples, before shaping: float64 arrays."""

    #: per input, ``(n, *input_shape, k)``: mean over the background of multiplier × (x − r)
    values: list[np.ndarray]
    #: ``(n, k)`` flat indices of the attributed outputs
    selected: np.ndarray
    #: ``(n, n_outputs)``: the model's outputs
    outputs: np.ndarray
    #: ``(n, n_outputs)``: the mean output over each sample's references (E[f], per sample)
    base_values: np.ndarray

    def shaped(self, output_shape: tuple[int, ...], chosen: bool) -> list[np.ndarray]:
        """Per input, the values in shap's layout for a model of ``output_shape``: the outputs on the last
        axes (none for a 1-D output), or the ``k`` chosen or ranked outputs on the last axis."""
        return [shape_values(phi, output_shape, chosen) for phi in self.values]

    def per_sample(self, output_shape: tuple[int, ...], chosen: bool) -> tuple[list[np.ndarray], np.ndarray]:
        """Per input, the values in shap's layout (:meth:`shaped`), and the base values:
        ``(n, *output_shape)``, or ``(n, k)`` for chosen outputs."""
        values = self.shaped(output_shape, chosen)
        n = self.base_values.shape[0]
        if chosen:
            return values, self.base_values[np.arange(n)[:, None], self.selected]
        return values, self.base_values.reshape(n, *output_shape)


def shape_values(phi: np.ndarray, output_shape: tuple[int, ...], ranked: bool) -> np.ndarray:
    """(n, *input_shape, k) → the output layout of shap for a model of ``output_shape``."""
    if ranked:
        return phi
    if not output_shape:
        return phi[..., 0]
    return phi.reshape(*phi.shape[:-1], *output_shape)


def attribute(
    engine: Engine,
    inputs: list[Any],
    selected: np.ndarray,
    batch_size: int | Literal["auto"],
    progress: bool | None,
    multipliers: bool = False,
) -> Attribution:
    """Mean over the background of multiplier × (x − r), for every (sample, selected output): the
    blocks of pairs :func:`rnnshap.engines.base.blocks` cuts for ``batch_size`` rows, run by ``engine``
    (the mean multipliers with ``multipliers``, for an engine that gives them). ``batch_size="auto"``: on a CUDA
    device, blocks sized from the memory the device has (:class:`MemorySizedBlocks`), elsewhere :data:`AUTO_ROWS`."""
    n, k = selected.shape
    n_refs = engine.references
    n_outputs = int(np.prod(engine.output_shape)) if engine.output_shape else 1
    sums = [np.zeros((k, n, *x.shape[1:])) for x in inputs]
    model_outputs = np.zeros((n, n_outputs))
    reference_outputs = np.zeros((n, n_outputs))
    rows = engine.rows_per_pair(k)

    def run(block: Block) -> None:
        result = engine.attribute(inputs, block, selected[block.s0 : block.s1], multipliers=multipliers)
        for total, part in zip(sums, result.sums, strict=True):
            total[:, block.s0 : block.s1] += part
        model_outputs[block.s0 : block.s1] = result.outputs
        reference_outputs[block.s0 : block.s1] += result.reference_outputs

    device = engine.cuda_device() if batch_size == "auto" else None
    if device is None:
        pairs = max(1, (AUTO_ROWS if batch_size == "auto" else int(batch_size)) // rows)
        for block in progress_bar(blocks(n, n_refs, pairs), progress):
            run(block)
    else:
        MemorySizedBlocks(n, n_refs, rows, device).run(run, progress)
    values = [np.moveaxis(total / n_refs, 0, -1) for total in sums]
    return Attribution(values, selected, model_outputs, reference_outputs / n_refs)


class MemorySizedBlocks:
    """The blocks of ``samples × references`` pairs under ``batch_size="auto"`` on a CUDA device.

    The first block holds :data:`AUTO_ROWS` rows. Each block's memory is measured without resetting torch's counters
    (a user's to read): the allocator's peak after it less what was allocated before it, an upper bound (the peak may
    be an earlier one's). The next block gets as many pairs as :data:`AUTO_SHARE` of the memory then available (free
    on the device, and held by torch's allocator unused) takes at that cost per pair. A block that runs out of device
    memory is run again at half its pairs (down to one pair; then the error is raised), and no later block is larger.
    Blocks hold whole samples where they hold all references, else one sample's references a part at a time, as fixed
    blocks do; the values do not depend on the blocks.
    """

    def __init__(self, samples: int, references: int, rows_per_pair: int, device: Any) -> None:
        self.samples, self.references, self.device = samples, references, device
        self.pairs = max(1, AUTO_ROWS // rows_per_pair)
        #: the most pairs a block may hold: half of the last block that ran out of memory
        self.ceiling = samples * references

    def _next(self, s: int, r: int) -> Block:
        if r == 0 and self.pairs >= self.references:
            return Block(s, min(s + self.pairs // self.references, self.samples), 0, self.references)
        return Block(s, s + 1, r, min(r + self.pairs, self.references))

    def run(self, run: Callable[[Block], None], progress: bool | None) -> None:
        """``run`` every block, in order, sized as the class says; ``progress`` counts the pairs done."""
        import torch

        counter = progress_counter(self.samples * self.references, progress, unit="pair")
        s = r = 0
        try:
            while s < self.samples:
                block = self._next(s, r)
                if self._ran(run, block, torch):
                    counter.update(block.samples * block.references)
                    s, r = (block.s1, 0) if block.r1 == self.references else (s, block.r1)
        finally:
            counter.close()

    def _ran(self, run: Callable[[Block], None], block: Block, torch: Any) -> bool:
        """Whether ``block`` ran (else it ran out of memory, and the next block is half its size); sizes the next."""
        pairs = block.samples * block.references
        allocated = torch.cuda.memory_allocated(self.device)
        try:
            run(block)
        except torch.cuda.OutOfMemoryError:
            if pairs <= 1:
                raise
            self.pairs = self.ceiling = max(1, pairs // 2)
            gc.collect()  # (what the failed block made, held in reference cycles)
            return False
        used = max(1, torch.cuda.max_memory_allocated(self.device) - allocated)  # (the peak never falls: an upper bound)
        free, _ = torch.cuda.mem_get_info(self.device)
        unused = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        self.pairs = max(1, min(self.ceiling, int(AUTO_SHARE * (free + unused) * pairs / used)))
        return True
