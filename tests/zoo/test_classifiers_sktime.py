"""rnnshap.sktime.explain: sktime 1.2's classifiers on sktime's own panels (aeon's bundled data sets).

Truths: the estimator's own ``predict_proba`` (the values add up to its differences from the background mean,
its softmax included); exact zeros for a channel the estimator provably does not read; Shapley values
enumerated from the definition of the game on ``predict_proba``.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sktime")
pytest.importorskip("aeon")  # the bundled data sets
torch = pytest.importorskip("torch")

import rnnshap  # noqa: E402
import rnnshap.sktime  # noqa: E402

from .classifier_truths import assert_adds_up, enumerated  # noqa: E402

T = 24


@pytest.fixture(scope="module")
def motions() -> tuple[np.ndarray, np.ndarray]:
    from aeon.datasets import load_basic_motions

    X, y = load_basic_motions(split="train")
    return np.ascontiguousarray(X[:, :, :T]), y


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return estimator.fit(X, y)


def _lstm_fcn(**options):
    from sktime.classification.deep_learning.lstmfcn._lstmfcn_torch import LSTMFCNClassifierTorch

    return LSTMFCNClassifierTorch(**options)


def _state(network) -> tuple[dict, list[bool]]:
    return {k: v.clone() for k, v in network.state_dict().items()}, [m.training for m in network.modules()]


@pytest.mark.parametrize("name", ["FCNClassifierTorch", "GRUClassifier", "LSTMFCNClassifierTorch"])
def test_torch_classifiers_add_up_to_predict_proba(name: str, motions) -> None:
    from sktime.classification import deep_learning as D

    X, y = motions
    make = {
        "FCNClassifierTorch": lambda: D.FCNClassifierTorch(num_epochs=1, batch_size=16),
        "GRUClassifier": lambda: D.GRUClassifier(num_epochs=1, hidden_dim=4, batch_first=True, batch_size=16),
        "LSTMFCNClassifierTorch": lambda: _lstm_fcn(num_epochs=1, batch_size=16),
    }[name]
    clf = _fit(make(), X, y)
    weights, modes = _state(clf.network)
    result = rnnshap.sktime.explain(clf, X[:3], background=X[10:20])
    assert result.method == "deepshap" and result.function == "torch"
    assert result.values.shape == (3, 6, T, 4) and result.classes == list(clf.classes_)
    assert_adds_up(result)
    assert np.abs(result.values).max() > 0
    after_weights, after_modes = _state(clf.network)
    assert after_modes == modes and all(torch.equal(weights[k], v) for k, v in after_weights.items())


def test_the_door_takes_its_setups_reference_pass_without_a_vetting_forward(motions, monkeypatch) -> None:
    """explain() builds its DeepExplainer and uses it at once: the reference pass its setup kept is taken without the
    plain forward that vets a kept pass at a user's first call, and the values are those of a vetted call, bit for bit."""
    from sktime.classification.deep_learning import GRUClassifier

    from rnnshap.engines.pytorch.kept import KeptReferencePasses
    from rnnshap.explainer import DeepExplainer

    X, y = motions
    clf = _fit(GRUClassifier(num_epochs=1, hidden_dim=4, batch_first=True, batch_size=16), X, y)
    vettings: list[int] = []
    computes = KeptReferencePasses.computes

    def counted(self, *args):
        vettings.append(1)
        return computes(self, *args)

    monkeypatch.setattr(KeptReferencePasses, "computes", counted)
    once = rnnshap.sktime.explain(clf, X[:3], background=X[10:20])
    assert vettings == []

    def vetted(self, X, **options):  # the user's path: the first call vets the kept pass
        with rnnshap.engines.base.normal_mode():
            return self.attribution(self.engine.inputs(X, "X"), **options)

    monkeypatch.setattr(DeepExplainer, "first_attribution", vetted)
    again = rnnshap.sktime.explain(clf, X[:3], background=X[10:20])
    assert len(vettings) == 1
    np.testing.assert_array_equal(again.values, once.values)


def test_a_gru_that_reads_the_batch_as_time_is_refused(motions) -> None:
    """sktime's GRUClassifier defaults to batch_first=False on (batch, time, channels) input: one panel's
    predict_proba then depends on the panels before it in its batch."""
    from sktime.classification.deep_learning import GRUClassifier

    X, y = motions
    clf = _fit(GRUClassifier(num_epochs=1, hidden_dim=4, batch_size=8), X, y)
    alone = clf.predict_proba(X[1:2])
    beside = clf.predict_proba(X[:8])[1:2]
    assert np.abs(alone - beside).max() > 1e-6  # the fact: not a function of the panel
    for method in ("deepshap", "shapley"):
        with pytest.raises(rnnshap.InputError, match="batch_first"):
            rnnshap.sktime.explain(clf, X[:2], background=X[10:14], method=method)


def test_a_channel_the_network_does_not_read_gets_exactly_zero(motions) -> None:
    from sktime.classification.deep_learning import FCNClassifierTorch

    X, y = motions
    clf = _fit(FCNClassifierTorch(num_epochs=1, batch_size=16), X, y)
    first = next(m for m in clf.network.modules() if isinstance(m, torch.nn.Conv1d))
    assert first.in_channels == 6
    with torch.no_grad():
        first.weight[:, 4] = 0.0  # the first convolution, the only reader of the input, ignores channel 4
    result = rnnshap.sktime.explain(clf, X[:3], background=X[10:20])
    assert_adds_up(result)
    assert (result.values[:, 4] == 0).all() and np.abs(result.values[:, :4]).max() > 0


@pytest.fixture(scope="module")
def knn_on_channels_0_and_3(motions):
    """A pipeline that keeps channels 0 and 3 and classifies by 3 nearest neighbours: it provably never reads the rest."""
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier
    from sktime.transformations.subset import ColumnSelect

    X, y = motions
    return _fit(ColumnSelect([0, 3]) * KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), X, y)


def test_shapley_values_of_a_pipeline_match_the_enumeration(motions, knn_on_channels_0_and_3) -> None:
    X, _ = motions
    pipeline = knn_on_channels_0_and_3
    background = X[[0, 12, 25, 33]]
    before = pickle.dumps(pipeline)
    result = rnnshap.sktime.explain(pipeline, X[20:22], background=background, players="channels", budget=10**5)
    assert result.method == "shapley" and result.exact.all() and result.values.shape == (2, 6, 1, 4)
    ids = np.broadcast_to(np.arange(6)[:, None], (6, T))
    for i in range(2):
        np.testing.assert_allclose(
            result.values[i, :, 0], enumerated(pipeline.predict_proba, X[20 + i], background, ids), rtol=1e-12, atol=1e-12
        )
    assert (result.values[:, [1, 2, 4, 5]] == 0).all()
    assert_adds_up(result, "float64")
    assert pickle.dumps(pipeline) == before


def test_sktime_panel_mtypes_give_the_same_values(motions, knn_on_channels_0_and_3) -> None:
    from sktime.datatypes import convert_to

    X, _ = motions
    pipeline = knn_on_channels_0_and_3
    background = X[[0, 12, 25]]
    reference = rnnshap.sktime.explain(pipeline, X[20:21], background=background, players="channels", budget=10**5)
    frame = convert_to(X[20:21], to_type="pd-multiindex")
    frames = rnnshap.sktime.explain(
        pipeline, frame, background=convert_to(background, to_type="pd-multiindex"), players="channels", budget=10**5
    )
    np.testing.assert_array_equal(frames.values, reference.values)
    assert frames.channel_names == [str(c) for c in frame.columns]


def test_keras_classifiers_without_the_tensorflow_distribution_are_explained_in_the_message(motions) -> None:
    from sktime.classification.deep_learning import CNNClassifier

    X, _ = motions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = CNNClassifier(n_epochs=1)
    with pytest.raises(rnnshap.InputError, match="tensorflow-cpu"):
        rnnshap.sktime.explain(clf, X[:1])


def test_the_shapley_mode_takes_a_float32_predict_proba_with_its_own_rounding(motions) -> None:
    """MVTSTransformerClassifier's predict_proba is float32 and differs between batch sizes by float32 rounding:
    the Shapley mode plays it (on its network, checked equal to predict_proba, whose rows check allows float32
    rounding) and matches the enumeration on predict_proba."""
    from sktime.classification.deep_learning.mvts_transformer import MVTSTransformerClassifier

    X, y = motions
    clf = _fit(
        MVTSTransformerClassifier(d_model=8, n_heads=1, num_layers=1, dim_feedforward=8, num_epochs=1, batch_size=16), X, y
    )
    background = X[[0, 12, 25]]
    result = rnnshap.sktime.explain(clf, X[20:21], background=background, method="shapley", players="channels", budget=10**4)
    assert result.function == "torch" and result.exact.all()  # its network, checked equal to predict_proba
    ids = np.broadcast_to(np.arange(6)[:, None], (6, T))
    truth = enumerated(clf.predict_proba, X[20], background, ids)
    # each value is a weighted mean (weights summing to 1) of differences of two v(S), each a mean of float32
    # probabilities computed in other batches: a few float32 eps of the probabilities' scale, 1
    np.testing.assert_allclose(result.values[0, :, 0], truth, rtol=0, atol=16 * np.finfo(np.float32).eps)
    assert_adds_up(result)


def test_a_univariate_numpyflat_panel_is_the_numpy3d_one(motions) -> None:
    """The docs list numpyflat ((n, time), univariate) among the panels taken; sktime's own predict_proba takes it."""
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, y = motions
    flat = np.ascontiguousarray(X[:, 0])
    knn = _fit(KNeighborsTimeSeriesClassifier(n_neighbors=3, distance="euclidean"), flat, y)
    kwargs = dict(windows=6, budget=10**5)
    reference = rnnshap.sktime.explain(knn, flat[20:22, None], background=flat[[0, 12, 25], None], **kwargs)
    result = rnnshap.sktime.explain(knn, flat[20:22], background=flat[[0, 12, 25]], **kwargs)
    np.testing.assert_array_equal(result.values, reference.values)
    np.testing.assert_array_equal(result.outputs, knn.predict_proba(flat[20:22]))
    assert result.data.shape == (2, 1, T)


def test_the_result_holds_its_own_copy_of_the_panels(motions, knn_on_channels_0_and_3) -> None:
    """The explained panels in the result are a copy: the caller's array, changed later, does not change the plot."""
    X, _ = motions
    x = X[20:21].copy()
    result = rnnshap.sktime.explain(knn_on_channels_0_and_3, x, background=X[[0, 12]], players="channels", budget=10**5)
    x[:] = 0.0
    np.testing.assert_array_equal(result.data, X[20:21])


def test_the_mvts_transformer_adds_up_to_predict_proba(motions) -> None:
    """MVTSTransformerClassifier's dataloader feeds its network the panel and an all-True padding mask: DeepSHAP
    on the network with that mask, its values adding up to predict_proba (float32: its batched and row-wise
    outputs differ by rounding, which DeepExplainer's rows check allows)."""
    from sktime.classification.deep_learning.mvts_transformer import MVTSTransformerClassifier

    X, y = motions
    clf = _fit(
        MVTSTransformerClassifier(d_model=8, n_heads=1, num_layers=1, dim_feedforward=8, num_epochs=1, batch_size=16), X, y
    )
    weights, modes = _state(clf.network)
    result = rnnshap.sktime.explain(clf, X[:3], background=X[10:20], method="deepshap")
    after_weights, after_modes = _state(clf.network)
    assert after_modes == modes and all(torch.equal(weights[k], v) for k, v in after_weights.items())
    assert result.method == "deepshap" and result.function == "torch"
    assert result.values.shape == (3, 6, T, 4) and result.classes == list(clf.classes_)
    np.testing.assert_array_equal(result.outputs, clf.predict_proba(X[:3]))  # the estimator's own
    np.testing.assert_allclose(result.base_values[0], clf.predict_proba(X[10:20]).astype(np.float64).mean(0), rtol=1e-12)
    assert_adds_up(result)
    assert np.abs(result.values).max() > 0


def test_one_panel_without_a_background_is_refused_not_explained_as_all_zeros(motions, knn_on_channels_0_and_3) -> None:
    X, _ = motions
    with pytest.raises(rnnshap.InputError, match="background"):
        rnnshap.sktime.explain(knn_on_channels_0_and_3, X[20:21], players="channels")


def test_panels_with_other_channels_than_fitted_on_are_refused_naming_the_panels(motions, knn_on_channels_0_and_3) -> None:
    """A 2-D (n, time) array is one channel: given to a pipeline fitted on several, it is X that does not fit."""
    X, _ = motions
    fitted = X.shape[1]
    with pytest.raises(rnnshap.InputError, match=rf"X holds 1 channel of .*fitted on {fitted} channels") as refused:
        rnnshap.sktime.explain(knn_on_channels_0_and_3, X[:2, 0, :], background=X[10:14])
    assert "background" not in str(refused.value).split("fitted on")[0]
    with pytest.raises(rnnshap.InputError, match=rf"background holds 2 channels .*fitted on {fitted} channels"):
        rnnshap.sktime.explain(knn_on_channels_0_and_3, X[:2], background=X[10:14, :2])


def test_an_unfitted_estimator_is_refused_as_rnnshaps_error_with_sktimes_as_its_cause(motions) -> None:
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

    X, _ = motions
    with pytest.raises(rnnshap.ModelStateError, match=r"KNeighborsTimeSeriesClassifier is not fitted.*fit\(") as refused:
        rnnshap.sktime.explain(KNeighborsTimeSeriesClassifier(), X[:2], background=X[10:14])
    assert type(refused.value.__cause__).__name__ == "NotFittedError"
