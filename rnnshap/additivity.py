"""The additivity check: the attributions of every sample add up to ``f(x) − E[f]``.

:meth:`rnnshap.DeepExplainer.shap_values` checks it by default (``check_additivity``), against the
tolerance of the model's dtype (:data:`rnnshap.engines.base.RTOL`) relative to the output's scale
``max(|f(x)|, |E[f]|)``, and raises :class:`rnnshap.AdditivityError` with the worst (sample, output) pair
and its likely causes.

The scale is the output's, never the attributions': values whose magnitudes sum to many times the output
cancel to it, and a dtype carries each to its own precision only, so their sum can miss the output by
``eps × Σ|φ|``. Such a sum is ill-conditioned (a window with almost no spread, divided by an instance
normalisation's scale near zero, is the usual cause): the check refuses it, with the conditioning
``Σ|φ| / scale`` measured, rather than accept a miss that grows with the values.

A model whose own outputs are not reproducible to the tolerance (a deep stack of long recurrences in float32, whose
outputs for the same rows move with the batch they run in) cannot be checked tighter than that: where a sum misses the
default tolerance in a dtype coarser than float64, the check asks the engine how far the model's own outputs on the
samples and the background move between running alone and as one batch (:meth:`Engine.outputs_moved`; the PyTorch
engine measures it where no context input enters the pairs). A miss within the tolerance plus twice that spread
(:data:`SPREAD_FACTOR`: the sum and the model's outputs each carry the model's rounding once) passes with an
:class:`~rnnshap.errors.AdditivityWarning` that says so; a larger one is refused, the spread in the message. A
tolerance given (``check_additivity=1e-6``) is kept as given.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable

import numpy as np

from .attribution import Attribution
from .engines.base import EPS, RTOL, TINY, Engine
from .errors import AdditivityError, AdditivityWarning, InputError

#: a sum whose rounding bound (eps × Σ|φ|) exceeds this many tolerances is refused even where it lands within one
UNCHECKABLE = 10
#: where a float32 (or 16-bit) sum misses, it passes within the tolerance plus this many times the most the model's own
#: outputs moved between two batch compositions of the same rows
SPREAD_FACTOR = 2

#: how far the model's own outputs on the samples and on each background row move between running alone and as one
#: batch, or None (Engine.outputs_moved)
Moved = Callable[[], "tuple[np.ndarray, np.ndarray] | None"]


def additivity_option(check: Any) -> bool | float:
    """``check_additivity``: True, False, or a positive relative tolerance."""
    if isinstance(check, (bool, np.bool_)):
        return bool(check)
    if isinstance(check, numbers.Real) and math.isfinite(float(check)) and float(check) > 0:
        return float(check)
    raise InputError(f"check_additivity must be True, False or a positive relative tolerance (such as 1e-6), got {check!r}")


def check_additivity(attribution: Attribution, engine: Engine, rtol: float | None, moved: Moved | None = None) -> None:
    """Raise :class:`AdditivityError` where Σφ misses f(x) − E[f] by more than the tolerance (``rtol``,
    or the one of ``engine``'s dtype); ``moved`` measures how far the model's own outputs move with the batch, asked
    where a sum in a dtype coarser than float64 misses the default tolerance (see the module's docstring)."""
    selected = attribution.selected
    n, k = selected.shape
    rows = np.arange(n)[:, None]
    expected, fx = attribution.base_values[rows, selected], attribution.outputs[rows, selected]
    totals = sum(phi.reshape(n, -1, k).sum(1) for phi in attribution.values)
    magnitude = sum(np.abs(phi.reshape(n, -1, k)).sum(1) for phi in attribution.values)
    error = np.abs(totals - (fx - expected))
    # below the dtype's least normal number its relative precision is gone: that is the scale's floor
    scale = np.maximum(np.maximum(np.abs(fx), np.abs(expected)), TINY.get(engine.dtype, 0.0))
    dtype = engine.dtype
    widened = moved if rtol is None else None  # (a tolerance given is kept as given)
    rtol = rtol if rtol is not None else RTOL.get(dtype, 1e-4)
    failing = ~(error <= rtol * scale)  # NaN fails too
    eps = EPS.get(dtype, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        conditionings = magnitude / scale
    # rounding alone could move the sum by eps × Σ|φ|: where that is far beyond the tolerance, a sum that lands within
    # it does so by chance (another CPU or order of summation need not), and the check cannot vouch for the values
    uncheckable = np.isfinite(totals) & (np.nan_to_num(conditionings) * eps > UNCHECKABLE * rtol)
    spread = None
    if failing.any() and not uncheckable.any() and widened is not None and eps > EPS["float64"] and np.isfinite(totals).all():
        spread = _spread(widened, attribution)
        if spread is not None and bool((error <= rtol * scale + SPREAD_FACTOR * spread).all()):
            _say_within_the_models_rounding(error, scale, spread, selected, dtype)
            return
    if not failing.any() and not uncheckable.any():
        return
    with np.errstate(invalid="ignore", divide="ignore"):
        ranking = np.nan_to_num((error - rtol * scale) / np.maximum(scale, np.finfo(np.float64).tiny), nan=np.inf)
    if not failing.any():
        ranking = np.nan_to_num(conditionings)
    sample, column = np.unravel_index(int(np.argmax(ranking)), error.shape)
    relative = error[sample, column] / scale[sample, column]
    conditioning = magnitude[sample, column] / scale[sample, column]
    ill_conditioned = bool(np.isfinite(totals[sample, column]) and conditioning * eps > rtol / 10)
    if not np.isfinite(totals[sample, column]):
        causes = (
            "The attributions are not finite: an operation produced NaN or inf on the way (an -inf mask "
            "before exp or softmax, a log or division at 0, an overflow in a 16-bit dtype)."
        )
    elif ill_conditioned:
        causes = (
            f"The sum is ill-conditioned: the values' magnitudes sum to {magnitude[sample, column]:.3g}, "
            f"{conditioning:.3g} times the output's scale, and {dtype} carries each value to about {eps:.1g} of "
            "itself, so their sum cannot carry the output to the tolerance. Large values that cancel come from a "
            "sample or background row with almost no spread that the model divides by (an instance "
            "normalisation's scale near zero, a near-flat window) or from large inputs that cancel. Explain a "
            "float64 copy of the model (model.double()), or choose background rows with spread."
        )
    elif dtype in ("float32", "float16", "bfloat16") and relative < 100 * rtol:
        causes = (
            f"The error is small ({relative:.2g} of the scale): {dtype} rounding of a long or ill-conditioned "
            "computation can reach it. Explain a float64 copy of the model (model.double()) to confirm, or "
            "pass a looser check_additivity tolerance."
        )
    else:
        causes = (
            "Likely causes: a custom rule that does not add up, an operation registered as linear that is "
            "not, work done outside the framework (numpy, .item()), or a forward() whose result depends on "
            "something other than its inputs."
        )
    if engine.precision_note:
        causes = f"{engine.precision_note} {causes}"
    if spread is not None and spread[sample, column] > 0:
        causes = (
            f"{causes} The model's own outputs for these rows move by up to {spread[sample, column]:.3g} when they run in "
            f"another batch, so the check allows {SPREAD_FACTOR} times that beside the tolerance; this error is larger."
        )
    verdict = "do not add up" if failing.any() else "cannot be checked (their sum lands within the tolerance by chance)"
    raise AdditivityError(
        f"The attributions {verdict}: for sample {sample}, output {int(selected[sample, column])}, "
        f"sum(phi) = {totals[sample, column]:.6g} but f(x) - E[f] = {fx[sample, column] - expected[sample, column]:.6g} "
        f"(error {error[sample, column]:.3g}, {relative:.3g} of the output's scale {scale[sample, column]:.3g}; "
        f"tolerance {rtol:.1g} for {dtype}); {int(failing.sum())} of {n * k} (sample, output) pairs fail. "
        f"{causes} Pass check_additivity=False to get the values anyway.",
        sample=int(sample),
        ill_conditioned=ill_conditioned,
    )


def _spread(moved: Moved, attribution: Attribution) -> np.ndarray | None:
    """``(n, k)``: how far the model's own outputs move with the batch they run in, for each explained sample and
    attributed output: its own move, and the mean move of the background rows; None where the engine does not say."""
    try:
        measured = moved()
    except Exception:  # noqa: BLE001 (a model that cannot run that batch: the check refuses as it would without it)
        return None
    if measured is None:
        return None
    samples, background = measured
    n = attribution.selected.shape[0]
    rows = np.arange(n)[:, None]
    spread = samples[rows, attribution.selected] + background.mean(0)[attribution.selected]
    return spread if np.isfinite(spread).all() else None


def _say_within_the_models_rounding(
    error: np.ndarray, scale: np.ndarray, spread: np.ndarray, selected: np.ndarray, dtype: str
) -> None:
    """The warning of a sum that misses the tolerance but lies within the model's own rounding (see the docstring)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sample, column = np.unravel_index(int(np.argmax(np.nan_to_num(error / scale))), error.shape)
    warnings.warn(
        f"The attributions add up to within the model's own {dtype} rounding, not to {dtype}'s tolerance: for sample "
        f"{sample}, output {int(selected[sample, column])}, sum(phi) misses f(x) - E[f] by {error[sample, column]:.3g} "
        f"({error[sample, column] / scale[sample, column]:.2g} of the output's scale), and the model's own outputs for "
        f"these rows move by up to {spread[sample, column]:.3g} when they run in another batch (its {dtype} forward is "
        f"that ill-conditioned: a deep stack of long recurrences, say). The check vouches for the values within "
        f"{SPREAD_FACTOR} times that. Explain a float64 copy of the model (model.double()) for values that add up to "
        "1e-9 of the output's scale.",
        AdditivityWarning,
        stacklevel=5,  # (the user's call: shap_values → attribution → check_additivity → here)
    )
