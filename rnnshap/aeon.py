"""aeon's time-series classifiers and regressors, explained in one call on aeon's own panels.

::

    from aeon.classification.deep_learning import InceptionTimeClassifier
    import rnnshap.aeon

    clf = InceptionTimeClassifier(n_epochs=...).fit(X_train, y_train)
    result = rnnshap.aeon.explain(clf, X_test[:5], background=X_train[:30])
    result.values          # (n, channels, time, classes): add up to predict_proba(X) - its background mean
    result.plot(sample=0)  # per-channel saliency over time

DeepSHAP for aeon's Keras deep learners (ensembles and renormalization included), the Shapley mode with
standard errors for the rest (ROCKET, HIVE-COTE, distance-based). See :mod:`rnnshap.classifiers` and
docs/classifiers.md. Importing this module imports nothing of aeon; ``explain`` needs
``pip install 'rnnshap[aeon]'``.
"""

from .classifiers import ClassifierExplanation, PredictMismatchError
from .classifiers.aeon import explain, keras_function, panels

__all__ = ["ClassifierExplanation", "PredictMismatchError", "explain", "keras_function", "panels"]
