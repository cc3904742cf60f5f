"""Exact explanations inside the forecasting libraries, in their own calls and result types.

One adapter per library, each importing its library only when used:

- :mod:`rnnshap.darts` (``rnnshap/forecasting/darts.py``): ``ShapExplainer`` with darts' call, returning
  darts' ``ShapExplainabilityResult``;
- :mod:`rnnshap.neuralforecast` (``rnnshap/forecasting/neuralforecast.py``): ``explain(nf, ...)`` with
  ``NeuralForecast.explain``'s arguments and result;
- :mod:`rnnshap.pytorch_forecasting` (``rnnshap/forecasting/pytorch_forecasting.py``): ``explain(model, data)``
  per named variable.

Every adapter does the same three things: it builds, from the library's own data pipeline, the window
tensors its network reads, and a module ``f(*windows) -> (n, k)`` that is the library's forecast (its
scaling included where that is an affine map fixed by the window or a fitted scaler), then
:func:`attribute` explains ``f`` with either of rnnshap's answers, and the adapter puts the values back
into the library's result type. :func:`attribute` is the one place where the method is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, UnsupportedOperationError

#: the answers every adapter offers
METHODS = ("deepshap", "shapley")


@dataclass
class WindowAttribution:
    """Attributions of a batch of forecasts to their window tensors, before the adapter shapes them.

    Arrays are float64; ``k`` is the number of explained outputs (the module's flat outputs)."""

    #: per input, ``(n, *input_shape, k)``
    values: list[np.ndarray]
    #: per input, the standard errors shaped like ``values`` (Shapley mode; 0 where exact), else None
    stderr: list[np.ndarray] | None
    #: ``(n, k)``: what the values of each forecast add up from (the mean over the background)
    base_values: np.ndarray
    #: ``(n, k)``: the module's outputs on the explained windows
    outputs: np.ndarray
    #: "deepshap" or "shapley"
    method: str
    #: per sample: whether the values are exact Shapley values (Shapley mode, every coalition enumerated)
    exact: np.ndarray | None = None
    #: per sample: the rows run through the model (Shapley mode)
    n_evals: np.ndarray | None = None


def check_method(method: str) -> str:
    """``method`` lower-cased, or an InputError naming the choices."""
    name = str(method).lower()
    if name not in METHODS:
        raise InputError(f"method={method!r}: choose 'deepshap' (one pass, exact in sum) or 'shapley' (Shapley values with standard errors)")
    return name


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
) -> WindowAttribution:
    """Explain ``module(*X) -> (n, k)`` against the background windows, with DeepSHAP or the Shapley mode.

    ``method="deepshap"``: :class:`rnnshap.DeepExplainer`, exact in sum (values add up to the module's
    output minus its mean over the background). ``method="shapley"``: the Shapley values of every
    input entry (players ``"cells"``) against the same background, with standard errors, within
    ``budget`` rows per forecast (exact where the budget covers every coalition);
    ``DeepExplainer.shapley_values`` where DeepExplainer takes the model (its values serve as the
    control variate), else :class:`rnnshap.ShapleyExplainer`, which needs the forward only.

    ``what`` names the model in the refusal DeepSHAP raises for a model it has no exact rule for.
    """
    import torch

    from ..explainer import DeepExplainer
    from ..shapley import ShapleyExplainer

    method = check_method(method)
    background, X = list(background), list(X)
    with torch.no_grad():
        outputs = module(*X).detach().double().cpu().numpy().reshape(X[0].shape[0], -1)
    try:
        explainer: Any = DeepExplainer(module, background, batch_size=batch_size)
    except UnsupportedOperationError as error:
        if method == "deepshap":
            refusal = UnsupportedOperationError([(name, why, error.advice.get(name, "rule")) for name, why in error.ops])
            refusal.args = (
                f"{what} has operations DeepSHAP has no exact rule for; method='shapley' explains it from its forward "
                f"alone (Shapley values with standard errors, rnnshap.ShapleyExplainer).\n{error}",
            )
            raise refusal from error
        explainer = ShapleyExplainer(module, background, batch_size=batch_size)
    if method == "deepshap":
        raw = explainer.shap_values(X, check_additivity=check_additivity)
        values = [np.asarray(v, dtype=np.float64) for v in (raw if isinstance(raw, list) else [raw])]
        k = outputs.shape[1]
        values = [v.reshape(*x.shape, k) for v, x in zip(values, X, strict=True)]
        base = np.broadcast_to(np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1), outputs.shape).copy()
        return WindowAttribution(values, None, base, outputs, method)
    estimate = explainer.shapley_values(X, players="cells", budget=budget, random_state=random_state)
    k = outputs.shape[1]

    def per_input(a: Any) -> list[np.ndarray]:
        parts = a if isinstance(a, list) else [a]
        return [np.asarray(p, dtype=np.float64).reshape(*x.shape, k) for p, x in zip(parts, X, strict=True)]

    return WindowAttribution(
        values=per_input(estimate.values),
        stderr=per_input(estimate.stderr),
        base_values=np.asarray(estimate.base_values, dtype=np.float64).reshape(-1, k),
        outputs=np.asarray(estimate.outputs, dtype=np.float64).reshape(-1, k),
        method=method,
        exact=np.asarray(estimate.exact),
        n_evals=np.asarray(estimate.n_evals),
    )
