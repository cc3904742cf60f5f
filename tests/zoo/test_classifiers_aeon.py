"""rnnshap.aeon.explain: aeon 1.6's classifiers and regressors on aeon's own panels and bundled data sets.

Truths: the estimator's own ``predict_proba`` (``predict``): the values add up to its differences from the
background mean, renormalization and ensembles included; exact zeros for a channel the estimator provably
does not read; Shapley values enumerated from the definition of the game on ``predict_proba``.
"""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("aeon")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402
import rnnshap.aeon  # noqa: E402

from .classifier_truths import assert_adds_up, enumerated  # noqa: E402

T = 24  # BasicMotions cut to 24 steps: 40 panels of 6 channels


@pytest.fixture(scope="module")
def motions() -> tuple[np.ndarray, np.ndarray]:
    from aeon.datasets import load_basic_motions

    X, y = load_basic_motions(split="train")
    return np.ascontiguousarray(X[:, :, :T]), y


@pytest.fixture(scope="module")
def italy() -> tuple[np.ndarray, np.ndarray]:
    from aeon.datasets import load_italy_power_demand

    X, y = load_italy_power_demand(split="train")
    return X, y


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(X, y)


def _deep(name: str):
    from aeon.classification import deep_learning as D

    small = {"n_epochs": 1, "batch_size": 16, "random_state": 0, "verbose": False}
    return {
        "TimeCNN": lambda: D.TimeCNNClassifier(n_filters=[3, 4], **small),  # sigmoid outputs, divided by their sum
        "InceptionTime": lambda: D.InceptionTimeClassifier(n_classifiers=2, depth=2, n_filters=4, **small),  # an ensemble
        "LITETime": lambda: D.LITETimeClassifier(n_classifiers=1, n_filters=4, **small),  # SeparableConv1D, DepthwiseConv1D
        "FCN": lambda: D.FCNClassifier(n_layers=2, n_filters=[4, 4], kernel_size=[3, 3], **small),
        # logits of ±170 after one epoch: one side's Σ exp(z − max) of the softmax underflows in float32
        "ResNet": lambda: D.ResNetClassifier(n_residual_blocks=2, n_filters=[32, 64], **small),
    }[name]()


@pytest.mark.parametrize(
    "name",
    [
        "TimeCNN", pytest.param("InceptionTime", marks=pytest.mark.slow), "LITETime", "FCN",
        pytest.param("ResNet", marks=pytest.mark.slow),  # InceptionTime, ResNet: 20 s
    ],
)
def test_deep_classifiers_add_up_to_predict_proba(name: str, motions) -> None:
    X, y = motions
    clf = _fit(_deep(name), X, y)
    if name == "ResNet":  # the premise: a sample's and a reference's largest logits lie further apart than float32's exp spans
        dense = clf.model_.layers[-1]
        kernel, bias = dense.get_weights()
        hidden = np.asarray(keras.Model(clf.model_.input, dense.input)(X.transpose(0, 2, 1)), np.float64)
        top = (hidden @ kernel.astype(np.float64) + bias).max(1)
        assert np.abs(top[:3, None] - top[None, 10:22]).max() > -np.log(np.finfo(np.float32).smallest_subnormal)
    weights = [[w.copy() for w in m.model_.get_weights()] for m in getattr(clf, "classifiers_", [clf])]
    before = clf.predict_proba(X[:3])
    result = rnnshap.aeon.explain(clf, X[:3], background=X[10:22])
    assert result.method == "deepshap" and result.function == "keras"
    assert result.values.shape == (3, 6, T, 4)
    assert result.classes == list(clf.classes_)
    np.testing.assert_array_equal(result.outputs, before)  # the estimator's own predict_proba
    np.testing.assert_allclose(
        result.base_values, np.broadcast_to(clf.predict_proba(X[10:22]).astype(np.float64).mean(0), (3, 4)), rtol=1e-12
    )
    assert_adds_up(result)
    assert np.abs(result.values).max() > 0
    # explaining left the estimator as it was
    for member, saved in zip(getattr(clf, "classifiers_", [clf]), weights, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(member.model_.get_weights(), saved, strict=True))
        assert not any(isinstance(n, type(None)) for n in member.model_._inbound_nodes)
    np.testing.assert_array_equal(clf.predict_proba(X[:3]), before)


def test_timecnn_renormalizes_outside_its_network(motions) -> None:
    """The fact the adapter rebuilds: TimeCNN's Keras model alone is not its predict_proba."""
    X, y = motions
    clf = _fit(_deep("TimeCNN"), X, y)
    network = np.asarray(clf.model_(X[:5].transpose(0, 2, 1)))
    assert np.abs(network - clf.predict_proba(X[:5])).max() > 1e-3


def test_a_channel_the_network_does_not_read_gets_exactly_zero(motions) -> None:
    X, y = motions
    clf = _fit(_deep("FCN"), X, y)
    model = clf.model_
    first = [layer for layer in model.layers if any(t is model.inputs[0] for n in layer._inbound_nodes for t in n.input_tensors)]
    assert [type(layer).__name__ for layer in first] == ["Conv1D"]
    kernel, *rest = first[0].get_weights()
    kernel[:, 2, :] = 0.0  # the only layer reading the input ignores channel 2
    first[0].set_weights([kernel, *rest])
    result = rnnshap.aeon.explain(clf, X[:3], background=X[10:20])
    assert_adds_up(result)
    assert (result.values[:, 2] == 0).all() and np.abs(result.values[:, [0, 1, 3]]).max() > 0


def test_a_deep_regressor_adds_up_to_predict(motions) -> None:
    from aeon.regression.deep_learning import FCNRegressor

    X, _ = motions
    target = X[:, 0].mean(1)
    reg = _fit(
        FCNRegressor(n_layers=1, n_filters=4, kernel_size=3, n_epochs=1, batch_size=16, random_state=0, verbose=False), X, target
    )
    result = rnnshap.aeon.explain(reg, X[:3], background=X[10:20])
    assert result.values.shape == (3, 6, T, 1) and result.classes == ["prediction"]
    np.testing.assert_array_equal(result.outputs[:, 0], reg.predict(X[:3]))
    assert_adds_up(result)


def test_the_shapley_mode_on_a_deep_classifier_is_exact_when_enumerated(motions) -> None:
    X, y = motions
    clf = _fit(_deep("TimeCNN"), X, y)
    background = X[10:13]
    result = rnnshap.aeon.explain(clf, X[:1], background=background, method="shapley", players="channels", budget=10**5)
    assert result.exact.all() and result.values.shape == (1, 6, 1, 4) and (result.stderr == 0).all()
    ids = np.broadcast_to(np.arange(6)[:, None], (6, T))
    truth = enumerated(clf.predict_proba, X[0], background, ids)
    np.testing.assert_allclose(result.values[0, :, 0], truth, rtol=0, atol=1e-5)  # the Keras copy runs in float32


@pytest.fixture(scope="module")
def knn_on_three_channels(motions):
    """A pipeline that keeps channels 0, 3 and 5 and classifies by 3 nearest neighbours: it provably never reads 1, 2, 4."""
    from aeon.classification.compose import ClassifierPipeline
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from aeon.transformations.collection.channel_selection import RandomChannelSelector

    X, y = motions
    pipeline = _fit(
        ClassifierPipeline(
            [RandomChannelSelector(p=0.5, random_state=1)], KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean")
        ),
        X,
        y,
    )
    kept = sorted(int(c) for c in pipeline.steps_[0][1].channels_selected_)
    return pipeline, kept


def test_shapley_values_of_any_classifier_match_the_enumeration(motions, knn_on_three_channels) -> None:
    X, y = motions
    pipeline, kept = knn_on_three_channels
    background = X[[0, 12, 25, 33]]
    before = pickle.dumps(pipeline)
    result = rnnshap.aeon.explain(pipeline, X[20:22], background=background, players="channels", budget=10**5)
    assert result.method == "shapley" and result.function == "predict_proba" and result.exact.all()
    ids = np.broadcast_to(np.arange(6)[:, None], (6, T))
    for i in range(2):
        np.testing.assert_allclose(
            result.values[i, :, 0], enumerated(pipeline.predict_proba, X[20 + i], background, ids), rtol=1e-12, atol=1e-12
        )
    ignored = [c for c in range(6) if c not in kept]
    assert (result.values[:, ignored] == 0).all()
    assert_adds_up(result, "float64")
    assert pickle.dumps(pipeline) == before  # the estimator unchanged


def test_windows_and_cells_on_a_univariate_panel(italy, knn_on_three_channels) -> None:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, y = italy
    clf = _fit(KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), X, y)
    background = X[[1, 8, 30]]
    result = rnnshap.aeon.explain(clf, X[:2], background=background, windows=8, budget=10**5)  # 24 steps, 3 windows
    assert result.values.shape == (2, 1, 3, 2) and result.windows == 8 and result.exact.all()
    ids = (np.arange(24) // 8)[None]
    for i in range(2):
        np.testing.assert_allclose(
            result.values[i, 0], enumerated(clf.predict_proba, X[i], background, ids), rtol=1e-12, atol=1e-12
        )
    # sampled (not enumerated) values carry standard errors; the same seed, the same values
    sampled = rnnshap.aeon.explain(clf, X[:1], background=background, players="cells", windows=2, budget=400, random_state=0)
    assert sampled.values.shape == (1, 1, 12, 2) and not sampled.exact.any() and np.isfinite(sampled.stderr).all()
    again = rnnshap.aeon.explain(clf, X[:1], background=background, players="cells", windows=2, budget=400, random_state=0)
    np.testing.assert_array_equal(sampled.values, again.values)
    assert_adds_up(sampled, "float64")


def test_aeons_other_panel_types_give_the_same_values(italy) -> None:
    import pandas as pd
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, y = italy
    clf = _fit(KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), X, y)
    background = X[[1, 8, 30]]
    reference = rnnshap.aeon.explain(clf, X[:2], background=background, windows=8, budget=10**5)
    as_2d = rnnshap.aeon.explain(clf, X[:2, 0], background=background[:, 0], windows=8, budget=10**5)
    as_list = rnnshap.aeon.explain(clf, list(X[:2]), background=list(background), windows=8, budget=10**5)
    as_wide = rnnshap.aeon.explain(
        clf, pd.DataFrame(X[:2, 0]), background=pd.DataFrame(background[:, 0]), windows=8, budget=10**5
    )
    for other in (as_2d, as_list, as_wide):
        np.testing.assert_array_equal(other.values, reference.values)


def test_refusals_name_the_problem(motions, italy) -> None:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, y = italy
    clf = _fit(KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), X, y)
    with pytest.raises(rnnshap.InputError, match="method='shapley'"):
        rnnshap.aeon.explain(clf, X[:1], method="deepshap")
    with pytest.raises(rnnshap.InputError, match="unequal length"):
        rnnshap.aeon.explain(clf, [X[0], X[1][:, :20]])
    with pytest.raises(rnnshap.InputError, match="players"):
        rnnshap.aeon.explain(clf, X[:1], players="rows")
    with pytest.raises(rnnshap.InputError, match="windows"):
        rnnshap.aeon.explain(clf, X[:1], players="channels", windows=4)
    # a deep classifier whose predict_proba does something the rebuilt function does not: refused by name
    Xm, ym = motions
    deep = _fit(_deep("FCN"), Xm, ym)
    deep._predict_proba = lambda panel: np.full((len(panel), 4), 0.25)
    with pytest.raises(rnnshap.classifiers.PredictMismatchError, match="FCNClassifier"):
        rnnshap.aeon.explain(deep, Xm[:2], background=Xm[10:14])
    # the Shapley mode needs no network: it explains that predict_proba (a constant: every value exactly 0)
    shapley = rnnshap.aeon.explain(deep, Xm[:1], background=Xm[10:12], method="shapley", players="channels", budget=10**4)
    assert shapley.function == "predict_proba" and shapley.exact.all() and (shapley.values == 0).all()


def test_the_saliency_plot_draws_one_panel_per_channel(motions, knn_on_three_channels) -> None:
    pytest.importorskip("matplotlib")
    X, _ = motions
    pipeline, _ = knn_on_three_channels
    result = rnnshap.aeon.explain(
        pipeline, X[20:21], background=X[[0, 12]], players="cells", windows=12, budget=200, random_state=0
    )
    fig = result.plot(0)
    assert len([ax for ax in fig.axes if ax.get_images()]) == 6
    assert result.per_step().shape == (1, 6, T, 4)
    with pytest.raises(rnnshap.InputError, match="class"):
        result.plot(0, label="swimming")


@pytest.mark.slow
def test_the_docs_page_runs() -> None:
    """docs/classifiers.md's examples (after the first, a sketch on the reader's own data), in order."""
    import re
    from pathlib import Path

    pytest.importorskip("sktime")
    pytest.importorskip("matplotlib")
    page = Path(__file__).resolve().parents[2] / "docs" / "classifiers.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    namespace: dict[str, object] = {}
    for number, block in enumerate(blocks[1:], 2):
        if "from tsai" in block:
            continue  # tsai's example runs in tests/test_docs.py, where tsai imports (it is in no extra)
        if "from sktime" in block:
            namespace = {}  # sktime's example stands alone: a reader may skip aeon's
        exec(compile(block, f"classifiers.md, example {number}", "exec"), namespace)  # noqa: S102


def test_one_panel_without_a_background_is_refused_not_explained_as_all_zeros(italy) -> None:
    """background=None takes the explained panels as the reference: for one panel that is the panel itself, and every
    value would be 0 whatever the estimator does."""
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, y = italy
    clf = _fit(KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), X, y)
    with pytest.raises(rnnshap.InputError, match="background"):
        rnnshap.aeon.explain(clf, X[:1], windows=6)
    proba = clf.predict_proba(X)
    other = int(np.flatnonzero(np.abs(proba - proba[0]).max(1) > 0)[0])  # a panel the estimator rates otherwise
    pair = rnnshap.aeon.explain(clf, X[[0, other]], windows=6)  # two panels: each in the other's reference
    assert np.abs(pair.values).max() > 0


def test_panels_unlike_those_fitted_on_are_refused_naming_the_panels(motions, knn_on_three_channels) -> None:
    """A 2-D (n, time) array is aeon's univariate layout: given to a classifier fitted on 6 channels it is the
    explained panels that do not fit (not the background), and the message says what the estimator was fitted on."""
    pipeline, _ = knn_on_three_channels
    X, _ = motions
    with pytest.raises(rnnshap.InputError, match=r"X.*1 channel.*24 steps.*fitted on 6 channels of 24 steps") as refused:
        rnnshap.aeon.explain(pipeline, X[:2, 0, :], background=X[10:14])
    assert "background" not in str(refused.value).split("fitted on")[0]
    with pytest.raises(rnnshap.InputError, match=r"background.*6 channels.*20 steps.*fitted on 6 channels of 24 steps"):
        rnnshap.aeon.explain(pipeline, X[:2], background=X[10:14, :, :20])


def test_an_unfitted_estimator_and_panels_with_missing_values_are_refused_as_rnnshaps_errors(italy) -> None:
    """aeon's own refusals (NotFittedError; a KNN's ValueError on NaN) come as rnnshap's errors, naming the estimator
    or the panels and what to do, with aeon's error as the cause."""
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, y = italy
    with pytest.raises(rnnshap.ModelStateError, match=r"KNeighborsTimeSeriesClassifier is not fitted.*fit\(") as refused:
        rnnshap.aeon.explain(KNeighborsTimeSeriesClassifier(), X[:2], background=X[5:8])
    assert type(refused.value.__cause__).__name__ == "NotFittedError"
    clf = _fit(KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), X, y)
    gappy = X[:3].copy()
    gappy[2, 0, 5] = np.nan
    with pytest.raises(rnnshap.InputError, match=r"X holds missing values \(NaN\) in panel\(s\) \[2\].*predict_proba.*[Ff]ill"
                       ) as refused:  # fmt: skip
        rnnshap.aeon.explain(clf, gappy, background=X[5:8])
    assert isinstance(refused.value.__cause__, ValueError) and not isinstance(refused.value.__cause__, rnnshap.RnnShapError)
    with pytest.raises(rnnshap.InputError, match=r"background holds missing values \(NaN\) in panel\(s\) \[2\]"):
        rnnshap.aeon.explain(clf, X[5:7], background=gappy)
