"""sktime's classifiers and regressors, explained on sktime's panels: see :mod:`rnnshap.classifiers`.

sktime 1.2's torch classifiers (``GRUClassifier``, ``MVTSTransformerClassifier``, the ``...ClassifierTorch``
family: FCN, LSTM-FCN, ResNet, InceptionTime, CNN, MLP, ...) hold a ``network`` (an ``nn.Module``) fed
by their ``_build_dataloader``: each panel transposed to ``(time, channels)``, float32, as the keyword
``X``; their ``predict_proba`` applies a softmax to the network's output unless the network applies an
activation itself (``_validated_activation``). :func:`torch_function` rebuilds exactly that as one module
taking sktime's ``(n, channels, time)`` panels, after checking that the estimator's dataloader feeds the
network that and nothing else.

sktime's Keras classifiers (``CNNClassifier``, ``FCNClassifier``, ...) declare the ``tensorflow``
distribution as a dependency: where TensorFlow is installed as ``tensorflow-cpu``, sktime refuses to fit
them although TensorFlow imports. Where they are fitted, their ``predict_proba`` is aeon's (the same code:
transpose, ``[1 − p, p]`` for one column, rows divided by their sum) and rnnshap explains it the same way.
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

TENSORFLOW_ADVICE = (
    "sktime's Keras classifiers (CNNClassifier, FCNClassifier, ResNetClassifier, ...) check for the 'tensorflow' "
    "distribution and refuse to fit where TensorFlow is installed as 'tensorflow-cpu' (which imports as tensorflow "
    "all the same). Install the 'tensorflow' package, or use sktime's torch classifiers (FCNClassifierTorch, "
    "ResNetClassifierTorch, ...) or aeon's Keras ones (rnnshap.aeon), which rnnshap explains by DeepSHAP alike."
)


def _sktime() -> Any:
    try:
        import sktime
    except ImportError as error:
        raise ImportError(
            "rnnshap.sktime explains sktime's estimators and needs sktime: pip install 'rnnshap[sktime]'"
        ) from error
    check_version("sktime")
    return sktime


def panels(X: Any, what: str = "X") -> tuple[np.ndarray, list[str] | None]:
    """Any of sktime's Panel mtypes (numpy3D, numpyflat, pd-multiindex, nested_univ, df-list, ...) as a
    float64 ``(n, channels, time)`` array, with the channel names of a DataFrame's columns."""
    import pandas as pd
    from sktime.datatypes import check_is_scitype, convert_to

    if isinstance(X, np.ndarray) and X.ndim == 2:  # numpyflat: (n, time), univariate, as sktime's estimators take it
        X = X[:, None, :]
    valid, messages, metadata = check_is_scitype(X, scitype="Panel", return_metadata=["is_equal_length"])
    if not valid:
        raise InputError(f"{what} is not one of sktime's Panel mtypes: {messages}")
    if not metadata.get("is_equal_length", True):
        raise InputError(
            f"{what} holds series of unequal length; rnnshap explains equal-length panels (the values are laid out "
            "(n, channels, time)): pad or truncate them as the estimator was fitted"
        )
    array = np.array(convert_to(X, to_type="numpy3D", as_scitype="Panel"), dtype=np.float64)  # a copy: the caller's stays theirs
    names = [str(c) for c in X.columns] if isinstance(X, pd.DataFrame) else None
    return array, names


def _is_keras_deep(clf: Any) -> bool:
    return any(k.__module__.endswith("deep_learning.base._base_tf") for k in type(clf).__mro__)


def _torch_network(clf: Any) -> tuple[Any, bool] | None:
    """``clf``'s torch network and whether ``predict_proba`` applies a softmax to it; None where ``clf`` is
    not one of sktime's torch classifiers."""
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a core dependency
        return None
    network = getattr(clf, "network", None)
    if not isinstance(network, nn.Module) or not hasattr(clf, "_build_dataloader"):
        return None
    if not any(k.__name__ == "BaseDeepClassifierPytorch" for k in type(clf).__mro__):
        return None
    return network, getattr(clf, "_validated_activation", None) is None


def _refuse_batch_mixing(network: Any, estimator: str) -> None:
    """A recurrent layer with ``batch_first=False`` fed ``(batch, time, channels)`` runs across the panels of a
    batch (sktime's ``GRUClassifier`` default): one panel's ``predict_proba`` then depends on the panels beside it
    in its batch, so it is not a function of the panel and has no explanation."""
    if network is None:
        return
    from torch import nn

    for name, module in network.named_modules():
        if isinstance(module, nn.RNNBase) and not module.batch_first:
            raise InputError(
                f"{estimator}'s network runs {type(module).__name__} {name!r} with batch_first=False on (batch, time, channels) "
                "input: it reads the panels of a batch as one sequence, so a panel's predict_proba depends on the panels "
                "beside it in its batch (of batch_size) and is not a function of the panel. Neither DeepSHAP nor the Shapley "
                "mode can explain it; fit the estimator with batch_first=True."
            )


def _feeds_only_the_panel(clf: Any, x: np.ndarray) -> bool | None:
    """Whether the estimator's own dataloader feeds its network exactly ``X=panel.transpose(0, 2, 1)``
    (float32) and, if anything, an all-True ``padding_masks`` of ``(n, time)`` (``MVTSTransformerClassifier``'s):
    None where it feeds anything else, else whether it feeds that mask."""
    import torch

    batch = next(iter(clf._build_dataloader(x[:2])))
    if not isinstance(batch, dict) or set(batch) - {"padding_masks"} != {"X"}:
        return None
    expected = torch.tensor(x[:2].transpose(0, 2, 1), dtype=torch.float32)
    fed = batch["X"]
    if not (fed.shape == expected.shape and fed.dtype == expected.dtype and torch.equal(fed, expected)):
        return None
    if "padding_masks" not in batch:
        return False
    masks = batch["padding_masks"]
    return True if masks.dtype == torch.bool and masks.shape == expected.shape[:2] and bool(masks.all()) else None


def torch_function(network: Any, softmax: bool, padding_masks: bool = False) -> Any:
    """A module of sktime's panels ``(n, channels, time)`` equal to the classifier's ``predict_proba``:
    its network on the transposed panel (keyword ``X``; with ``padding_masks``, an all-True mask of
    ``(n, time)`` beside it, as the dataloader feeds), then a softmax where ``predict_proba`` applies one."""
    import torch
    from torch import nn

    class SktimeProbabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if padding_masks:
                masks = torch.ones((x.shape[0], x.shape[2]), dtype=torch.bool, device=x.device)
                out = self.network(X=x.transpose(1, 2), padding_masks=masks)
            else:
                out = self.network(X=x.transpose(1, 2))
            return torch.softmax(out, dim=-1) if softmax else out

    return SktimeProbabilities()


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
    """Explain a fitted sktime classifier's ``predict_proba`` (a regressor's ``predict``) on panels ``X``.

    The arguments and the result are those of :func:`rnnshap.aeon.explain`; ``X`` and ``background`` are any of
    sktime's Panel mtypes (``(n, channels, time)`` numpy, a multi-index DataFrame, a nested DataFrame, ...).
    DeepSHAP (``method="auto"`` or ``"deepshap"``) explains sktime's torch classifiers (and its Keras ones, where
    fitted); the Shapley mode every estimator.
    """

    _sktime()
    chosen = check_choices(method, players, windows)
    estimator = type(clf).__name__
    # sktime records one kind per channel of the panels it was fitted on (not their length)
    kinds = (getattr(clf, "_X_metadata", None) or {}).get("feature_kind")
    channels = len(kinds) if isinstance(kinds, list) else None
    x, names, reference = read_panels(panels, X, background, channels, None, estimator, "sktime")
    n, C, T = x.shape
    if _is_keras_deep(clf) and getattr(clf, "model_", None) is None:
        raise InputError(f"{estimator} is not fitted. {TENSORFLOW_ADVICE}")
    regressor = not hasattr(clf, "predict_proba")
    what = "predict" if regressor else "predict_proba"
    predict = getattr(clf, what)
    found = _torch_network(clf)
    network = found[0] if found is not None else None
    _refuse_batch_mixing(network, estimator)

    def own(panel: np.ndarray) -> np.ndarray:
        with quiet(), _kept(network):  # predict_proba switches the network to eval mode: put back as it was
            return np.asarray(predict(panel)).reshape(len(panel), -1)  # its own dtype: its rounding, in the checks

    outputs, reference_outputs = outputs_on_both(own, x, reference, background, estimator, what)
    keras_deep = _is_keras_deep(clf) and not regressor
    fed = _feeds_only_the_panel(clf, x) if found is not None else None
    torch_deep = found is not None and fed is not None
    if chosen == "deepshap" and not (keras_deep or torch_deep):
        raise InputError(
            f"{estimator} is not one of sktime's deep classifiers whose network rnnshap rebuilds (its network and the "
            f"inputs its dataloader feeds): DeepSHAP has no network to explain. Use method='shapley' (its own {what}, "
            "from its forward)."
        )
    check_own_reference(background, n)
    said = background_said(reference, background)
    if keras_deep or torch_deep:
        with deepshap_refusals(chosen, estimator, what):
            torch_found = (found[0], found[1], bool(fed)) if found is not None and torch_deep else None
            return _deep(clf, x, reference, outputs, reference_outputs, torch_found, chosen, names, said,
                         players=players, windows=windows, budget=budget, random_state=random_state,
                         batch_size=batch_size, progress=progress)  # fmt: skip
        # (DeepSHAP refused: the Shapley mode needs no network, it runs on predict_proba alone)

    return shapley_on_own(clf, own, x, reference, outputs, what, names, said, players=players, windows=windows, budget=budget,
                          random_state=random_state, batch_size=batch_size, progress=progress)  # fmt: skip


def _deep(
    clf: Any,
    x: np.ndarray,
    reference: np.ndarray,
    outputs: np.ndarray,
    reference_outputs: np.ndarray,
    found: tuple[Any, bool, bool] | None,
    chosen: str,
    names: list[str] | None,
    said: str,
    **options: Any,
) -> ClassifierExplanation:
    """DeepSHAP (or the Shapley mode with DeepSHAP as control variate) on a function equal to ``predict_proba``:
    sktime's torch network (``found``) or its Keras ``model_``; ``said``: the background, as the result states it."""
    n, C, T = x.shape
    estimator, what = type(clf).__name__, "predict_proba"
    if found is None:
        from .aeon import keras_explainer, keras_function

        model = keras_function([clf], False, C, T)
        explainer: Any = keras_explainer(model, x, reference, outputs, reference_outputs, estimator, what,
                                         options["batch_size"], options["progress"])  # fmt: skip
        kind, network = "keras", None
    else:
        explainer = _torch_explainer(found, x, reference, outputs, reference_outputs, estimator, what, options["batch_size"],
                                     options["progress"])  # fmt: skip
        kind, network = "torch", found[0]
    x_in, reference_in = x.astype("float32"), reference.astype("float32")
    extra: dict[str, Any] = {"channel_names": names, "function": kind, "background": said}
    if chosen == "shapley":
        values, stderr, base, _, exact, n_evals = explain_shapley(lambda a: a, x_in, reference_in, deep=explainer, **options)
        return explanation(clf, x, values, base, outputs, "shapley", players=options["players"], windows=options["windows"],
                           stderr=stderr, exact=exact, n_evals=n_evals, **extra)  # fmt: skip
    with _kept(network):  # (built just above: first_attribution takes its setup's reference pass unvetted)
        raw = np.asarray(explainer.first_attribution(x_in).values[0], np.float64).reshape(n, C, T, -1)
    base = np.broadcast_to(reference_outputs.mean(0), outputs.shape).copy()
    return explanation(clf, x, raw, base, outputs, "deepshap", players="cells", **extra)


def _kept(network: Any) -> Any:
    """The network put back as it was after an explanation (nothing where there is no torch network)."""
    import contextlib

    from ..forecasting import preserved

    return preserved(network) if network is not None else contextlib.nullcontext()


def _torch_explainer(
    found: tuple[Any, bool, bool],
    x: np.ndarray,
    reference: np.ndarray,
    outputs: np.ndarray,
    reference_outputs: np.ndarray,
    estimator: str,
    what: str,
    batch_size: int,
    progress: bool | None,
) -> Any:
    import torch

    import rnnshap

    from ..forecasting import preserved

    network, softmax, padding_masks = found
    module = torch_function(network, softmax, padding_masks)
    with preserved(network):
        module.eval()
        with torch.no_grad():
            built_x = module(torch.tensor(x, dtype=torch.float32)).double().numpy()
            built_reference = module(torch.tensor(reference, dtype=torch.float32)).double().numpy()
    check_equal(built_x, outputs, estimator, what, "float32")
    check_equal(built_reference, reference_outputs, estimator, what, "float32")
    with preserved(network):
        module.eval()
        explainer = rnnshap.DeepExplainer(
            module, torch.tensor(reference, dtype=torch.float32), batch_size=batch_size, progress=progress
        )
    return _EvalExplainer(explainer, network)


class _EvalExplainer:
    """A DeepExplainer of a sktime network run in eval mode (as ``predict_proba`` runs it), the network's
    training flags put back after each call."""

    def __init__(self, explainer: Any, network: Any) -> None:
        self.explainer, self.network = explainer, network

    def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import torch

        from ..forecasting import preserved

        with preserved(self.network):
            self.network.eval()
            X = args[0]
            converted = torch.tensor(X, dtype=torch.float32) if isinstance(X, np.ndarray) else X
            return getattr(self.explainer, name)(converted, *args[1:], **kwargs)

    def shap_values(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("shap_values", *args, **kwargs)

    def first_attribution(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("first_attribution", *args, **kwargs)  # (in eval mode, as its setup ran)

    def shapley_values(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("shapley_values", *args, **kwargs)
