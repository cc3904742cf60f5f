"""Exact explanations inside the forecasting libraries, in their own calls and result types.

One adapter per library, each importing its library only when used:

- :mod:`rnnshap.darts` (``rnnshap/forecasting/darts/``): ``ShapExplainer`` with darts' call, returning
  darts' ``ShapExplainabilityResult``;
- :mod:`rnnshap.neuralforecast` (``rnnshap/forecasting/neuralforecast/``): ``explain(nf, ...)`` with
  ``NeuralForecast.explain``'s arguments and result;
- :mod:`rnnshap.pytorch_forecasting` (``rnnshap/forecasting/pytorch_forecasting.py``): ``explain(model, data)``
  per named variable.

Every adapter does the same three things: it builds, from the library's own data pipeline, the window
tensors its network reads, and a module ``f(*windows) -> (n, k)`` that is the library's forecast (its
scaling included where that is an affine map fixed by the window or a fitted scaler), then
:func:`attribute` explains ``f`` with either of rnnshap's answers, and the adapter puts the values back
into the library's result type. :func:`attribute` is the one place where the method is chosen.

The parts the adapters share (package-internal, public so that the adapters may use them):
:func:`preserved` puts the library's model back as it was after an explanation; :func:`affine_probe`
reads the affine map of a fitted scaler by applying it to 0 and 1; :func:`check_version` refuses a
library version outside the range the adapter was verified on (:data:`VERIFIED`), since every adapter
calls private functions of its library.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import versions
from ..backgrounds import stated
from ..errors import InputError, UnsupportedOperationError
from ..result import AttributionResult
from ..versions import ALSO_PUBLISHED_AS as ALSO_PUBLISHED_AS
from ..versions import UnverifiedVersionError as UnverifiedVersionError
from ..versions import release as release

#: the answers every adapter offers
METHODS = ("deepshap", "shapley")


@dataclass
class WindowAttribution(AttributionResult):
    """Attributions of a batch of forecasts to their window tensors, before the adapter shapes them: the result
    contract (:class:`rnnshap.result.AttributionResult`) of :func:`attribute`.

    Arrays are float64; ``k`` is the number of explained outputs (the module's flat outputs). ``values``: per input,
    ``(n, *input_shape, k)``; ``stderr``: per input, shaped like ``values`` (Shapley mode; 0 where exact), else None;
    ``base_values``: ``(n, k)``, what the values of each forecast add up from (the mean over the background);
    ``outputs``: ``(n, k)``, the module's outputs on the explained windows; ``exact`` and ``n_evals``: per sample
    (Shapley mode)."""


def check_method(method: str) -> str:
    """``method`` lower-cased, or an InputError naming the choices."""
    name = str(method).lower()
    if name not in METHODS:
        raise InputError(
            f"method={method!r}: choose 'deepshap' (one pass, exact in sum) or 'shapley' (Shapley values with standard errors)"
        )
    return name


def deepshap_refusal(error: UnsupportedOperationError, lead: str) -> UnsupportedOperationError:
    """DeepSHAP's refusal ``error`` (the same operations and advice) said by a door: ``lead``, then the refusal."""
    refusal = UnsupportedOperationError([(name, why, error.advice.get(name, "rule")) for name, why in error.ops])
    refusal.args = (f"{lead}\n{error}",)
    return refusal


def attribute(
    module: Any,
    background: Sequence[Any],
    X: Sequence[Any],
    *,
    method: str = "deepshap",
    budget: int | None = None,
    random_state: Any = None,
    batch_size: int = 2048,
    check_additivity: bool | float = True,
    what: str = "this model",
    progress: bool | None = None,
) -> WindowAttribution:
    """Explain ``module(*X) -> (n, k)`` against the background windows, with DeepSHAP or the Shapley mode.

    ``method="deepshap"``: :class:`rnnshap.DeepExplainer`, exact in sum (values add up to the module's
    output minus its mean over the background). ``method="shapley"``: the Shapley values of every
    input entry (players ``"cells"``) against the same background, with standard errors, within
    ``budget`` rows per forecast (exact where the budget covers every coalition);
    ``DeepExplainer.shapley_values`` where DeepExplainer takes the model (its values serve as the
    control variate), else :class:`rnnshap.ShapleyExplainer`, which needs the forward only.

    ``what`` names the model in the refusal DeepSHAP raises for a model it has no exact rule for.
    ``progress``: a tqdm progress bar over the work (None: only when stderr is a terminal).
    """
    import torch

    from ..explainer import DeepExplainer
    from ..shapley import ShapleyExplainer

    method = check_method(method)
    background, X = list(background), list(X)
    said = stated("DeepExplainer", int(background[0].shape[0]), True)
    with torch.no_grad():
        outputs = module(*X).detach().double().cpu().numpy().reshape(X[0].shape[0], -1)
    try:
        explainer: Any = DeepExplainer(module, background, batch_size=batch_size)
    except UnsupportedOperationError as error:
        if method == "deepshap":
            raise deepshap_refusal(
                error, f"{what} has operations DeepSHAP has no exact rule for; method='shapley' explains it from its "
                "forward alone (Shapley values with standard errors, rnnshap.ShapleyExplainer)."
            ) from error
        explainer = ShapleyExplainer(module, background, batch_size=batch_size)
    if method == "deepshap":
        attribution = explainer.first_attribution(X, check_additivity=check_additivity, progress=progress)
        k = outputs.shape[1]
        values = [np.asarray(v, dtype=np.float64).reshape(*x.shape, k) for v, x in zip(attribution.values, X, strict=True)]
        base = np.broadcast_to(np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1), outputs.shape).copy()
        return WindowAttribution(values=values, base_values=base, outputs=outputs, method=method, background=said)
    estimate = explainer.shapley_values(X, players="cells", budget=budget, random_state=random_state, progress=progress)
    k = outputs.shape[1]

    def per_input(a: Any) -> list[np.ndarray]:
        parts = a if isinstance(a, list) else [a]
        return [np.asarray(p, dtype=np.float64).reshape(*x.shape, k) for p, x in zip(parts, X, strict=True)]

    return WindowAttribution(
        background=said,
        values=per_input(estimate.values),
        stderr=per_input(estimate.stderr),
        base_values=np.asarray(estimate.base_values, dtype=np.float64).reshape(-1, k),
        outputs=np.asarray(estimate.outputs, dtype=np.float64).reshape(-1, k),
        method=method,
        exact=np.asarray(estimate.exact),
        n_evals=np.asarray(estimate.n_evals),
    )


# -- the parts the adapters share ----------------------------------------------------------------------------
#: per distribution, the release series each adapter was verified on: ``(lowest, first not verified)``,
#: from the versions pinned in ``constraints/cpu-torch.txt``. Each adapter calls private symbols of its
#: library (darts' ``_get_batch_prediction``, neuralforecast's ``_explain_batch``, pytorch-forecasting's
#: ``_collate_fn``), which may change in any release.
VERIFIED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "darts": ((0, 48), (0, 49)),
    "neuralforecast": ((3, 3), (3, 4)),
    "pytorch-forecasting": ((1, 8), (1, 9)),
    # the foundation forecasters (rnnshap.foundation): each adapter calls the library's public forecast and the
    # torch functions behind it (chronos' model forward, timesfm's decode, tirex's _forecast_tensor, ...)
    "tirex-ts": ((1, 4), (1, 5)),
    "chronos-forecasting": ((2, 3), (2, 4)),
    "timesfm": ((3, 0), (3, 1)),
    "granite-tsfm": ((0, 3, 2), (0, 4)),
    "momentfm": ((0, 1, 4), (0, 2)),
    "uni2ts": ((2, 0), (2, 1)),
    "toto-ts": ((0, 2), (0, 3)),
    "toto-2": ((2, 0), (2, 1)),
}


#: the installed version of a distribution (a key of :data:`VERIFIED`), or an :class:`UnverifiedVersionError` naming it
#: and the versions the adapter was verified on
check_version = versions.checker(
    VERIFIED,
    reads="calls private functions of it that other versions may change",
    advice="explain the model through the recipe path (docs/recipes.md)",
)


@contextlib.contextmanager
def preserved(module: Any) -> Iterator[None]:
    """Put ``module`` and every submodule back as they were on exit, whatever the explanation changed.

    Restored, bit for bit: each submodule's plain attributes (its ``training`` flag and whatever a forward
    or the library's predict caches on it; attributes added inside are removed), its tables of parameters,
    buffers and submodules (the same objects: a buffer replaced inside is put back), and each parameter's
    data (the original tensor, so a ``.double()`` or ``.to()`` inside is undone) and ``requires_grad``.
    Nothing is copied, and what is changed inside an object rather than replaced is not undone: values
    written in place into a parameter's or buffer's storage, a dict (``hparams``, a hook table) mutated in
    place (rnnshap does none of these). A lazy module (``torch.nn.LazyLinear``...) must be initialized (one
    forward) before: its first forward replaces its class and parameters."""
    keep = ("_parameters", "_buffers", "_modules")
    saved = []
    for m in module.modules():
        attributes = {k: v for k, v in m.__dict__.items() if k not in keep}
        parameters = [(p, p.data, p.requires_grad) for p in m._parameters.values() if p is not None]
        saved.append((m, attributes, dict(m._parameters), parameters, dict(m._buffers), dict(m._modules)))
    try:
        yield
    finally:
        for m, attributes, parameter_table, parameters, buffers, modules in saved:
            for k in [k for k in m.__dict__ if k not in keep and k not in attributes]:
                del m.__dict__[k]
            m.__dict__.update(attributes)
            for table, entries in ((m._parameters, parameter_table), (m._buffers, buffers), (m._modules, modules)):
                table.clear()
                table.update(entries)
            for p, data, requires_grad in parameters:
                if p.dtype != data.dtype or p.device != data.device or p.data_ptr() != data.data_ptr() or p.shape != data.shape:
                    p.data = data
                p.requires_grad_(requires_grad)


def affine_probe(apply: Callable[[np.ndarray], np.ndarray], like: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """A scaler's map read as affine, ``apply(x) = intercept + slope · x`` entry by entry, from ``apply`` on
    zeros and ones shaped like ``like``.

    Returns ``(intercept, slope, affine)``: ``apply(0)``, ``apply(1) − apply(0)``, and whether ``apply(2)``
    agrees (``apply(2) − apply(0) = 2 · slope`` to 1e-6, relative), for a caller that does not know the
    map is affine."""
    zero = apply(np.zeros_like(like))
    one = apply(np.ones_like(like))
    two = apply(np.full_like(like, 2.0))
    slope = one - zero
    affine = np.allclose(two - zero, 2 * slope, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(zero).max(initial=0))))
    return zero, slope, bool(affine)
