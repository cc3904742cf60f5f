"""sktime's time-series classifiers and regressors, explained in one call on sktime's own panels.

::

    from sktime.classification.deep_learning import FCNClassifierTorch
    import rnnshap.sktime

    clf = FCNClassifierTorch(num_epochs=...).fit(X_train, y_train)
    result = rnnshap.sktime.explain(clf, X_test[:5], background=X_train[:30])
    result.values          # (n, channels, time, classes): add up to predict_proba(X) - its background mean
    result.plot(sample=0)  # per-channel saliency over time

DeepSHAP for sktime's torch classifiers (its softmax included), the Shapley mode with standard errors for
the rest (ROCKET, HIVE-COTE, distance-based). sktime's Keras classifiers check for the ``tensorflow``
distribution and refuse to fit where TensorFlow is installed as ``tensorflow-cpu``. See
:mod:`rnnshap.classifiers` and docs/classifiers.md. Importing this module imports nothing of sktime;
``explain`` needs ``pip install 'rnnshap[sktime]'``.
"""

from .classifiers import ClassifierExplanation, PredictMismatchError
from .classifiers.sktime import TENSORFLOW_ADVICE, explain, panels, torch_function

__all__ = ["TENSORFLOW_ADVICE", "ClassifierExplanation", "PredictMismatchError", "explain", "panels", "torch_function"]
