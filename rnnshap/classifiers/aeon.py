"""aeon's classifiers and regressors, explained on aeon's panels: see :mod:`rnnshap.classifiers`.

aeon 1.6's deep learners are Keras models (``clf.model_``, fed ``(n, time, channels)``: aeon transposes
its ``(n, channels, time)`` panels first). Their ``predict_proba`` (``BaseDeepClassifier._predict_proba``)
makes a single sigmoid column two (``[1 − p, p]``) and divides every row by its sum, which changes
TimeCNN's and Encoder's sigmoid outputs; InceptionTime and LITETime average the ``predict_proba`` of
their members (``classifiers_``); the regressors' ``predict`` is ``model_``'s single output (averaged
over ``regressors_`` for the ensembles). :func:`keras_function` rebuilds exactly that as one Keras model
on a copy of each member's network, taking aeon's panels as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backgrounds import check_own_reference
from ..errors import InputError
from . import (
    ClassifierExplanation,
    background_said,
    check_choices,
    check_equal,
    check_version,
    deepshap_refusals,
    explain_shapley,
    explanation,
    outputs_on_both,
    quiet,
    read_panels,
    shapley_on_own,
)

#: aeon's ensembles of deep learners and the attribute holding their members; each averages its members'
#: ``_predict_proba`` (classifiers) or ``_predict`` (regressors)
ENSEMBLES = {
    "InceptionTimeClassifier": "classifiers_",
    "LITETimeClassifier": "classifiers_",
    "InceptionTimeRegressor": "regressors_",
    "LITETimeRegressor": "regressors_",
}


def _aeon() -> Any:
    try:
        import aeon
    except ImportError as error:
        raise ImportError("rnnshap.aeon explains aeon's estimators and needs aeon: pip install 'rnnshap[aeon]'") from error
    check_version("aeon")
    return aeon


def panels(X: Any, what: str = "X") -> tuple[np.ndarray, list[str] | None]:
    """Any of aeon's collection types (numpy3D, numpy2D, np-list, df-list, pd-wide, pd-multiindex) as a
    float64 ``(n, channels, time)`` array, with the channel names of a multi-index DataFrame."""
    from aeon.utils.conversion import convert_collection
    from aeon.utils.validation.collection import get_type, is_equal_length

    try:
        kind = get_type(X)
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} is not one of aeon's collection types: {error}") from error
    if not is_equal_length(X):
        raise InputError(
            f"{what} holds series of unequal length; rnnshap explains equal-length panels (the values are laid out "
            "(n, channels, time)): pad or truncate them as the estimator was fitted"
        )
    array = np.array(convert_collection(X, "numpy3D"), dtype=np.float64)  # a copy: the caller's stays theirs
    names = [str(c) for c in X.columns] if kind == "pd-multiindex" else None
    return array, names


def _deep_members(clf: Any) -> tuple[list[Any], bool] | None:
    """The deep learners whose networks make up ``clf``'s prediction, and whether it is a regressor;
    None for an estimator that is not one of aeon's Keras deep learners."""
    from aeon.classification.deep_learning.base import BaseDeepClassifier
    from aeon.regression.deep_learning.base import BaseDeepRegressor

    name = type(clf).__name__
    if name in ENSEMBLES:
        members = list(getattr(clf, ENSEMBLES[name], []) or [])
        if not members:
            raise InputError(f"{name} has no fitted members ({ENSEMBLES[name]}): fit it first")
        regressor = name.endswith("Regressor")
    elif isinstance(clf, (BaseDeepClassifier, BaseDeepRegressor)):
        members, regressor = [clf], isinstance(clf, BaseDeepRegressor)
    else:
        return None
    for member in members:
        base = BaseDeepRegressor._predict if regressor else BaseDeepClassifier._predict_proba
        own = type(member)._predict if regressor else type(member)._predict_proba
        if own is not base:
            return None  # post-processing rnnshap has not read: the Shapley mode explains its predict_proba
        if getattr(member, "model_", None) is None:
            raise InputError(f"{type(member).__name__} has no fitted network (model_): fit it first")
    return members, regressor


def keras_function(members: list[Any], regressor: bool, channels: int, steps: int) -> Any:
    """One Keras model of aeon's panels ``(n, channels, time)`` equal to the estimator's ``predict_proba``
    (``predict``): each member's network on the transposed panel (a copy, so that the estimator's own
    models gain no graph nodes), a single column made ``[1 − p, p]`` and each row divided by its sum
    (classifiers), the members averaged."""
    import keras

    dtype = members[0].model_.inputs[0].dtype
    inputs = keras.Input((channels, steps), dtype=dtype)
    transposed = keras.layers.Permute((2, 1), dtype=dtype)(inputs)
    outputs = []
    for member in members:
        network = keras.models.clone_model(member.model_)
        network.set_weights(member.model_.get_weights())
        p = network(transposed)
        if not regressor:
            if p.shape[-1] == 1:
                p = keras.layers.Lambda(lambda t: keras.ops.concatenate([1.0 - t, t], axis=-1), dtype=dtype)(p)
            p = keras.layers.Lambda(lambda t: t / keras.ops.sum(t, axis=-1, keepdims=True), dtype=dtype)(p)
        outputs.append(p)
    out = keras.layers.Average(dtype=dtype)(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, out)


def keras_explainer(
    model: Any,
    x: np.ndarray,
    reference: np.ndarray,
    outputs: np.ndarray,
    reference_outputs: np.ndarray,
    estimator: str,
    what: str,
    batch_size: int,
    progress: bool | None,
) -> Any:
    """DeepSHAP on ``model`` (:func:`keras_function`) against the panels ``reference``, once the model is checked to
    give the estimator's own ``outputs`` on ``x`` and ``reference_outputs`` on ``reference`` (in the model's dtype)."""
    import rnnshap

    dtype = str(model.inputs[0].dtype)
    x_in, reference_in = x.astype(dtype), reference.astype(dtype)
    check_equal(np.asarray(model(x_in)), outputs, estimator, what, dtype)
    check_equal(np.asarray(model(reference_in)), reference_outputs, estimator, what, dtype)
    return rnnshap.DeepExplainer(model, reference_in, batch_size=batch_size, progress=progress)

def explain(
    clf: Any,
    X: Any,
    background: Any = None,
    *,
    method: str = "auto",
    players: str = "steps",
    windows: int | None = None,
    budget: int | None = None,
    random_state: Any = None,
    batch_size: int = 1024,
    progress: bool | None = None,
) -> ClassifierExplanation:
    """Explain a fitted aeon classifier's ``predict_proba`` (a regressor's ``predict``) on panels ``X``.

    Args:
        clf: a fitted aeon classifier or regressor.
        X: the panels to explain, in any of aeon's collection types (``(n, channels, time)`` numpy, a 2-D
            ``(n, time)`` array, a list of 2-D arrays, a multi-index DataFrame, ...), of equal length.
        background: the reference panels (the same types; a few dozen training panels are a good choice).
            None: ``X`` itself.
        method: ``"auto"`` (DeepSHAP for aeon's Keras deep learners, the Shapley mode for the rest),
            ``"deepshap"`` or ``"shapley"``.
        players: for the Shapley mode, ``"steps"`` (one player per step across every channel),
            ``"channels"`` (one per channel across every step) or ``"cells"`` (each channel at each step);
            DeepSHAP gives every cell its value.
        windows: for the Shapley mode, group steps into windows of this many consecutive steps (the last
            shorter): ``players="steps"`` then has one player per window, ``"cells"`` one per channel and window.
        budget, random_state, batch_size, progress: as for :meth:`rnnshap.ShapleyExplainer.shapley_values`
            (``budget``: rows per sample run through the estimator).

    Returns:
        A :class:`rnnshap.classifiers.ClassifierExplanation`: values ``(n, channels, time, classes)`` that add up
        to ``predict_proba(X)`` minus its mean over the background, the class labels (``clf.classes_``),
        standard errors (Shapley mode), and ``plot()``.
    """
    _aeon()
    chosen = check_choices(method, players, windows)
    estimator = type(clf).__name__
    fitted = getattr(clf, "metadata_", None) or {}  # what aeon recorded of the panels it was fitted on
    channels, steps = fitted.get("n_channels"), fitted.get("n_timepoints")
    x, names, reference = read_panels(panels, X, background, channels, steps, estimator, "aeon")
    n, C, T = x.shape
    deep = _deep_members(clf)
    regressor = deep[1] if deep is not None else not hasattr(clf, "predict_proba")
    what = "predict" if regressor else "predict_proba"
    predict = getattr(clf, what)

    def own(panel: np.ndarray) -> np.ndarray:
        with quiet():
            return np.asarray(predict(panel)).reshape(len(panel), -1)  # its own dtype: its rounding, in the checks

    outputs, reference_outputs = outputs_on_both(own, x, reference, background, estimator, what)
    if chosen == "deepshap" and deep is None:
        raise InputError(
            f"{estimator} is not one of aeon's Keras deep learners (or its {what} post-processes in a way rnnshap has "
            "not read): DeepSHAP has no network to explain. Use method='shapley' (its own predict_proba, from its forward)."
        )
    check_own_reference(background, n)
    said = background_said(reference, background)
    extra: dict[str, Any] = {"channel_names": names, "background": said}
    if deep is not None and chosen in ("auto", "deepshap", "shapley"):
        model = keras_function(deep[0], deep[1], C, T)
        dtype = str(model.inputs[0].dtype)
        x_in, reference_in = x.astype(dtype), reference.astype(dtype)
        raw = None
        with deepshap_refusals(chosen, estimator, what):
            explainer = keras_explainer(model, x, reference, outputs, reference_outputs, estimator, what, batch_size, progress)
            if chosen == "shapley":
                values, stderr, base, _, exact, n_evals = explain_shapley(
                    lambda a: a, x_in, reference_in, players=players, windows=windows, budget=budget,
                    random_state=random_state, batch_size=batch_size, progress=progress, deep=explainer,
                )  # fmt: skip
                return explanation(clf, x, values, base, outputs, "shapley", players=players, windows=windows,
                                   stderr=stderr, exact=exact, n_evals=n_evals, function="keras", **extra)  # fmt: skip
            raw = np.asarray(explainer.shap_values(x_in), np.float64).reshape(n, C, T, -1)
        if raw is not None:  # (else DeepSHAP's refusal, passed over for the Shapley mode on predict_proba alone)
            base = np.broadcast_to(reference_outputs.mean(0), outputs.shape).copy()
            return explanation(clf, x, raw, base, outputs, "deepshap", players="cells", function="keras", **extra)

    return shapley_on_own(clf, own, x, reference, outputs, what, names, said, players=players, windows=windows, budget=budget,
                          random_state=random_state, batch_size=batch_size, progress=progress)  # fmt: skip
