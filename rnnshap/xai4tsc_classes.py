"""The file xai4tsc's configuration names as ``class_path`` for rnnshap's components (:mod:`rnnshap.xai4tsc`).

xai4tsc executes a ``class_path`` file as a module of its own name; this one hands out the package's own classes
(absolute imports), so that every component of a run shares one module: the metric finds the background split
an rnnshap explainer was given for the same model.
"""

from rnnshap.xai4tsc import DeepSHAPExplainer, DistanceToExactMetric, ShapleyModeExplainer

__all__ = ["DeepSHAPExplainer", "DistanceToExactMetric", "ShapleyModeExplainer"]
