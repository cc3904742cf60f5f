"""shap interop: sequences flattened into the one feature axis shap's plots take."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .inputs import (
    axis_labels,
    is_explanation,
    split_names,
)

if TYPE_CHECKING:
    pass


def flatten(explanation: Any, *, feature_names: Sequence[Any] | None = None, time_labels: Sequence[Any] | None = None) -> Any:
    """A shap.Explanation of sequences, (N, T, F[, K]), as (N, T·F[, K]) with features named ``"t3:f2"``.

    shap's plots (``shap.plots.bar``, ``heatmap``, ``waterfall``, ``beeswarm``) take one axis of
    features; this flattens time × feature into it, row-major (all features of step 0, then of
    step 1, ...). The names come from ``feature_names`` / ``time_labels``, else from the
    Explanation (``explainer(X, feature_names=..., time_labels=...)``), else ``t0:f0, ...``. A single
    sequence (``explanation[i]``, (T, F[, K])) becomes (T·F[, K]). Base values, data and output names
    are kept.
    """
    shap = _shap()
    if not is_explanation(explanation):
        raise TypeError(f"flatten takes a shap.Explanation, got {type(explanation).__name__}")
    values = np.asarray(explanation.values)
    data = None if explanation.data is None else np.asarray(explanation.data)
    base = explanation.base_values
    if data is not None:
        output_axes = values.ndim - data.ndim
    else:
        output_axes = max(np.ndim(base) - 1, 0) if base is not None else 0
    batched = base is None or np.ndim(base) == output_axes + 1
    input_axes = values.ndim - output_axes - (1 if batched else 0)
    if input_axes != 2:
        if input_axes == 1:
            return explanation
        raise ValueError(f"flatten expects sequences (T, F) per sample; the explanation's values have shape {values.shape}")
    lead = 1 if batched else 0
    steps, features = values.shape[lead], values.shape[lead + 1]
    found_times, found_features = split_names(explanation.feature_names)
    grid_names = np.asarray(explanation.feature_names, dtype=object) if explanation.feature_names is not None else None
    if feature_names is None and time_labels is None and grid_names is not None and grid_names.shape[-2:] == (steps, features):
        names = [str(name) for name in grid_names.reshape(-1, steps * features)[0]]
    else:
        times = axis_labels(time_labels, found_times, steps, "t", "time labels")
        feats = axis_labels(feature_names, found_features, features, "f", "feature names")
        names = [f"{t}:{f}" for t in times for f in feats]
    new_shape = (*values.shape[:lead], steps * features, *values.shape[lead + 2 :])
    output_names = explanation.output_names
    keep_outputs = output_axes == 1 and isinstance(output_names, (list, tuple, np.ndarray)) and np.ndim(output_names) == 1
    return shap.Explanation(
        values=values.reshape(new_shape),
        base_values=base,
        data=None if data is None else data.reshape(*data.shape[:lead], steps * features),
        feature_names=names,
        output_names=list(output_names) if keep_outputs else None,
    )


def _shap() -> Any:
    try:
        import shap
    except ImportError as error:
        raise ImportError("flatten works on shap.Explanation objects and needs shap: pip install 'rnnshap[shap]'") from error
    return shap
