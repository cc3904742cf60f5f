"""rnnshap: exact DeepSHAP attributions for recurrent neural networks.

>>> import rnnshap
>>> explainer = rnnshap.DeepExplainer(model, background)      # doctest: +SKIP
>>> shap_values = explainer.shap_values(x)                      # doctest: +SKIP
"""

from . import plots, recurrent, rules
from .errors import (
    AdditivityError,
    InputError,
    ModelStateError,
    RnnShapError,
    TapeMismatchError,
    UnsupportedOperationError,
)
from .explainer import DeepExplainer
from .rules.registry import register_rule
from .shapley import ShapleyEstimate, ShapleyExplainer
from .summary import Summary

__version__ = "0.1.0"

__all__ = [
    "AdditivityError",
    "DeepExplainer",
    "InputError",
    "ModelStateError",
    "RnnShapError",
    "ShapleyEstimate",
    "ShapleyExplainer",
    "Summary",
    "TapeMismatchError",
    "UnsupportedOperationError",
    "plots",
    "recurrent",
    "register_rule",
    "rules",
]
