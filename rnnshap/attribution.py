"""What the front door computes for every engine: the sums over blocks of (sample, reference) pairs.

:func:`attribute` runs the blocks of a batch through an engine and averages over the background;
:class:`Attribution` holds the result (float64, the selected outputs last) and shapes it as shap's
DeepExplainer does. The outputs are chosen by :func:`rnnshap.engines.outputs.selected_outputs` and the
result is checked by :func:`rnnshap.additivity.check_additivity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .engines.base import Engine, blocks
from .progress import progress_bar


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
    engine: Engine, inputs: list[Any], selected: np.ndarray, batch_size: int, progress: bool | None, multipliers: bool = False
) -> Attribution:
    """Mean over the background of multiplier × (x − r), for every (sample, selected output): the
    blocks of pairs :func:`rnnshap.engines.base.blocks` cuts for ``batch_size`` rows, run by ``engine``
    (the mean multipliers with ``multipliers``, for an engine that gives them)."""
    n, k = selected.shape
    n_refs = engine.references
    n_outputs = int(np.prod(engine.output_shape)) if engine.output_shape else 1
    sums = [np.zeros((k, n, *x.shape[1:])) for x in inputs]
    model_outputs = np.zeros((n, n_outputs))
    reference_outputs = np.zeros((n, n_outputs))
    pairs = max(1, batch_size // engine.rows_per_pair(k))
    for block in progress_bar(blocks(n, n_refs, pairs), progress):
        result = engine.attribute(inputs, block, selected[block.s0 : block.s1], multipliers=multipliers)
        for total, part in zip(sums, result.sums, strict=True):
            total[:, block.s0 : block.s1] += part
        model_outputs[block.s0 : block.s1] = result.outputs
        reference_outputs[block.s0 : block.s1] += result.reference_outputs
    values = [np.moveaxis(total / n_refs, 0, -1) for total in sums]
    return Attribution(values, selected, model_outputs, reference_outputs / n_refs)
